"""The transmitter profile of ``tocsin simulate modem``: its knobs, the settings block it
prints, and the simulator as an installer runs it (a separate process the adapter probes and
sends through)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.serial_link.simulator import apply_common_knobs, parser_for
from adapters.serial_transmitter import simulator as transmitter_profile
from adapters.serial_transmitter.adapter import SerialTransmitterAdapter
from adapters.serial_transmitter.settings import SerialTransmitterSettings
from adapters.serial_transmitter.simulator import TransmitterBusDevice, parse_transmitters
from dispatcher.adapter import Accepted, DeviceStatus, Dispatch, Report, WarningContent
from dispatcher.domain import Audience, Channel, Level, MsgType, Status


class Context:
    def __init__(self) -> None:
        self.reports: list[Report] = []

    @property
    def adapter_name(self) -> str:
        return "transmitters"

    def report(self, report: Report) -> None:
        self.reports.append(report)

    def device_status(self, status: DeviceStatus) -> None:
        pass


def test_the_profile_knobs_build_the_simulator(tmp_path: Path) -> None:
    argv = [
        "--profile=transmitter",
        "--transmitters=3=611002101201,611002101202;0x10=611002",
        "--answer=busy",
        "--busy-for=45",
        "--bad-crc=0.25",
        "--latency=0.2",
        "--garbage=0.1",
    ]
    parser, module = parser_for(argv)
    assert module is transmitter_profile
    args = parser.parse_args(argv)
    device = transmitter_profile.build(args, link=str(tmp_path / "tx"))
    apply_common_knobs(device, args)
    assert isinstance(device, TransmitterBusDevice)
    assert sorted(device.transmitters) == [3, 16]
    assert device[16].villages == ("611002000000",)
    assert device[3].answer == "busy"
    assert device[3].busy_for == 45
    assert (device.bad_crc, device.latency, device.garbage) == (0.25, 0.2, 0.1)


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("x=611002101201", "not an address"),
        ("0=611002101201", "outside"),
        ("3=", "give the villages"),
        ("3=6110", "not 12"),
        ("", "no transmitter"),
    ],
)
def test_bad_transmitter_specs(spec: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_transmitters(spec)


def test_unknown_framing_is_a_usage_error(tmp_path: Path) -> None:
    argv = ["--profile=transmitter", "--framing=acme-v9"]
    parser, _ = parser_for(argv)
    with pytest.raises(ValueError, match="unknown framing profile"):
        transmitter_profile.build(parser.parse_args(argv), link=str(tmp_path / "tx"))


def test_the_printed_settings_block_is_valid_config() -> None:
    hint = transmitter_profile.settings_hint("/dev/serial/by-id/usb-FTDI_RS485-if00")
    block = tomllib.loads(hint)["adapters"]["transmitters"]
    assert block["kind"] == "serial_transmitter"
    assert block["channels"] == ["transmitter"]
    settings = SerialTransmitterSettings.model_validate(block["settings"])
    assert settings.port == "/dev/serial/by-id/usb-FTDI_RS485-if00"
    assert settings.transmitters == ("1", "2")


async def test_the_simulator_process_answers_the_adapter(tmp_path: Path) -> None:
    link = tmp_path / "tx"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.serial_link.simulator",
        "--profile",
        "transmitter",
        "--link",
        str(link),
        "--latency",
        "0",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(10):
            banner = (await process.stdout.readline()).decode()
            assert "transmitter" in banner
            assert str(link) in banner
            while not link.exists():  # noqa: ASYNC110 — the banner precedes nothing else
                await asyncio.sleep(0.02)
            settings = SerialTransmitterSettings(
                port=str(link), transmitters=("1", "2"), command_timeout=0.5, open_timeout=3
            )
            adapter = SerialTransmitterAdapter(name="transmitters", settings=settings)
            probe = await adapter.probe()
            assert probe.ok, probe.summary
            assert "2 of 2 transmitters answered" in probe.summary
            context = Context()
            await adapter.start(context)
            now = datetime.now(UTC)
            warning = WarningContent(
                id="w1",
                status=Status.TEST,
                msg_type=MsgType.ALERT,
                level=Level.BLUE,
                event="设备测试",
                headline="设备测试",
                description="",
                instruction="",
                area_codes=("611002101201",),
                sent=now,
                expires=now + timedelta(hours=1),
            )
            [outcome] = await adapter.send(
                [
                    Dispatch(
                        delivery_id=1,
                        warning=warning,
                        channel=Channel.TRANSMITTER,
                        audience=Audience.DEVICE,
                        target_id="TX-1",
                        address="1",
                        area_code="611002101201",
                        attempt=1,
                        text="【测试】预警系统测试。",
                    )
                ]
            )
            assert isinstance(outcome, Accepted), outcome
            assert outcome.detail["command"] == "test"
            assert context.reports[0].detail["device_state"] == "played"
            await adapter.stop()
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await process.wait()

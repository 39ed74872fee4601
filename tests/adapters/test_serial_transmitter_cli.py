"""The transmitter profile of ``tocsin simulate modem``: its knobs, the settings block it
prints, and the simulator as an installer runs it (a separate process the adapter probes and
sends through)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from dispatches import make_dispatch, make_warning
from recording import RecordingContext
from waiting import wait_until

from adapters.serial_link.simulator import apply_common_knobs, parser_for
from adapters.serial_transmitter import simulator as transmitter_profile
from adapters.serial_transmitter.adapter import SerialTransmitterAdapter
from adapters.serial_transmitter.settings import SerialTransmitterSettings
from adapters.serial_transmitter.simulator import TransmitterBusDevice, parse_transmitters
from dispatcher.adapter import Accepted
from dispatcher.domain import Channel, Level, Status


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
            await wait_until(link.exists, within=10, what="the simulator's link")
            settings = SerialTransmitterSettings(
                port=str(link), transmitters=("1", "2"), command_timeout=0.5, open_timeout=3
            )
            adapter = SerialTransmitterAdapter(name="transmitters", settings=settings)
            probe = await adapter.probe()
            assert probe.ok, probe.summary
            assert "2 of 2 transmitters answered" in probe.summary
            context = RecordingContext(name="transmitters")
            await adapter.start(context)
            device_test = make_warning(
                status=Status.TEST,
                level=Level.BLUE,
                event="设备测试",
                headline="设备测试",
                instruction="",
                area_codes=("611002101201",),
                lasting=timedelta(hours=1),
            )
            dispatch = make_dispatch(
                channel=Channel.TRANSMITTER,
                address="1",
                target_id="TX-1",
                warning=device_test,
                text="【测试】预警系统测试。",
            )
            [outcome] = await adapter.send([dispatch])
            assert isinstance(outcome, Accepted), outcome
            assert outcome.detail["command"] == "test"
            assert context.reports[0].detail["device_state"] == "played"
            await adapter.stop()
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await process.wait()


def test_the_printed_block_lists_the_simulated_transmitters(tmp_path: Path) -> None:
    argv = ["--profile=transmitter", "--transmitters=3=611002101000;7=611002102000"]
    parser, _ = parser_for(argv)
    device = transmitter_profile.build(parser.parse_args(argv), link=str(tmp_path / "tx"))
    block = tomllib.loads(transmitter_profile.settings_hint(device.path, device=device))
    assert block["adapters"]["transmitters"]["settings"]["transmitters"] == ["3", "7"]

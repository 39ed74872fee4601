"""The gsm profile of ``tocsin simulate modem``: its knobs, the settings block it prints, and the
simulator as an installer runs it (a separate process the adapter probes and sends through)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tomllib
from datetime import timedelta
from pathlib import Path

from dispatches import make_dispatch, make_warning
from recording import RecordingContext
from waiting import wait_until

from adapters.gsm_modem import simulator as gsm_profile
from adapters.gsm_modem.adapter import GsmModemAdapter
from adapters.gsm_modem.settings import GsmModemSettings
from adapters.gsm_modem.simulator import GsmModemSimulator
from adapters.serial_link.simulator import apply_common_knobs, parser_for
from dispatcher.adapter import (
    Accepted,
    ReportState,
    WarningContent,
)
from dispatcher.domain import Channel, Level, Status


def device_test() -> WarningContent:
    """What an installer sends to check the line: a Test, blue, in force for an hour."""
    return make_warning(
        status=Status.TEST,
        level=Level.BLUE,
        event="测试",
        headline="测试",
        instruction="",
        area_codes=(),
        lasting=timedelta(hours=1),
    )


def test_the_profile_knobs_build_the_simulator(tmp_path: Path) -> None:
    argv = [
        "--profile=gsm",
        "--tiantong",
        "--no-signal",
        "--sim=pin",
        "--sim-pin=2468",
        "--fail=+8613812345678",
        "--fail=+8613912345678=62",
        "--cms-error=42",
        "--cms-error=331",
        "--reply=+8617400000001=收到",
        "--latency=0.2",
    ]
    parser, module = parser_for(argv)
    assert module is gsm_profile
    args = parser.parse_args(argv)
    device = gsm_profile.build(args, link=str(tmp_path / "tt"))
    apply_common_knobs(device, args)
    assert isinstance(device, GsmModemSimulator)
    assert device.identity.manufacturer == "China Satcom"
    assert "Tiantong" in device.description
    assert (device.registered, device.rssi, device.sim_pin) == (False, 99, "2468")
    assert device.statuses == {"+8613812345678": [0x41], "+8613912345678": [0x62]}
    assert list(device.cms_errors) == [42, 331]
    assert device.scheduled_replies == [("+8617400000001", "收到")]
    assert device.latency == 0.2


def test_the_printed_settings_block_is_valid_config() -> None:
    hint = gsm_profile.settings_hint("/dev/serial/by-id/usb-Quectel_EC20-if02")
    config = tomllib.loads(hint)
    block = config["adapters"]["modem"]
    assert block["kind"] == "gsm_modem"
    settings = GsmModemSettings.model_validate(block["settings"])
    assert settings.port == "/dev/serial/by-id/usb-Quectel_EC20-if02"


async def test_the_simulator_process_answers_the_adapter(tmp_path: Path) -> None:
    link = tmp_path / "gsm"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.serial_link.simulator",
        "--profile",
        "gsm",
        "--link",
        str(link),
        "--latency",
        "0",
        "--submit-delay",
        "0.05",
        "--report-delay",
        "0.05",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(10):
            banner = (await process.stdout.readline()).decode()
            assert "GSM/4G modem" in banner
            assert str(link) in banner
            settings = GsmModemSettings(port=str(link), command_timeout=1, open_timeout=3)
            adapter = GsmModemAdapter(name="modem", settings=settings)
            probe = await adapter.probe()
            assert probe.ok, probe.summary
            context = RecordingContext(name="modem")
            await adapter.start(context)
            dispatch = make_dispatch(
                channel=Channel.SMS,
                address="+8613812345678",
                target_id="P1",
                warning=device_test(),
                text="【测试】预警系统测试。收到请回复1。",
            )
            [outcome] = await adapter.send([dispatch])
            assert isinstance(outcome, Accepted)
            await wait_until(lambda: context.reports, within=10, what="the delivery report")
            await adapter.stop()
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            await process.wait()
    assert process.returncode == 0


async def test_recipients_reply_after_delivery_at_the_reply_rate(tmp_path: Path) -> None:
    """The knobs the demo uses: a delivered message is answered by its recipient."""
    argv = ["--profile=gsm", "--reply-rate=1", "--reply-delay=0.01", "--reply-text=收到"]
    parser, _ = parser_for(argv)
    sim = gsm_profile.build(parser.parse_args(argv), link=str(tmp_path / "gsm"))
    sim.report_delay = sim.submit_delay = 0.01
    async with sim:
        context = RecordingContext(name="modem")
        settings = GsmModemSettings(port=sim.path, command_timeout=1, open_timeout=3)
        adapter = GsmModemAdapter(name="modem", settings=settings)
        await adapter.start(context)
        try:
            dispatch = make_dispatch(
                channel=Channel.MODEM,
                delivery_id=7,
                address="+8617400000001",
                target_id="MDM-1",
                area_code="611002101000",
                warning=device_test(),
                text="【测试】预警系统测试。收到请回复1。",
            )
            [outcome] = await adapter.send([dispatch])
            assert isinstance(outcome, Accepted)
            await wait_until(
                lambda: any(r.state is ReportState.ACKNOWLEDGED for r in context.reports),
                within=5,
                what="the recipient's reply",
            )
        finally:
            await adapter.stop()
    [ack] = [r for r in context.reports if r.state is ReportState.ACKNOWLEDGED]
    assert (ack.delivery_id, ack.from_address) == (7, "+8617400000001")

"""The daemon with serial hardware as a user runs it: `tocsin serve` on config/demo-serial.toml,
the towns' Tiantong phones behind a simulated GSM modem and their transmitters on a simulated
serial line, each on a real pseudo-terminal. A warning posted over HTTP reaches both; the modem
unplugged in the middle of the fan-out makes the adapter not ready (the daemon stays healthy,
the API says why), and once it is plugged back in every delivery goes out: nothing lost, no
town messaged more than the at-least-once bound allows. A transmitter line missing when the
daemon starts is waited for."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from test_daemon import DUTY, OPERATOR, Daemon, _call, _demo_config, _free_port
from waiting import wait_until

from adapters.gsm_modem.simulator import GsmModemSimulator
from adapters.serial_transmitter.simulator import SimulatedTransmitter, TransmitterBusDevice

TOWNS = ("611002101000", "611002102000")
PHONES = ("+8617400000001", "+8617400000002")


def _config(tmp_path: Path, port: int) -> Path:
    return _demo_config(
        tmp_path,
        "demo-serial",
        port=port,
        towns=2,
        villages=2,
        grids=2,
        households=3,
        replacements=(
            ('port = "/tmp/tocsin-gsm"', f'port = "{tmp_path / "gsm"}"'),
            ('port = "/tmp/tocsin-transmitter"', f'port = "{tmp_path / "tx"}"'),
            ('transmitters = ["1", "2", "3", "4"]', 'transmitters = ["1", "2"]'),
        ),
    )


def _device_states(db: Path, warning_id: str) -> dict[tuple[str, str], int]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return {
            (channel, state): n
            for channel, state, n in conn.execute(
                "SELECT d.channel, d.state, count(*) FROM deliveries d JOIN warnings w "
                "ON w.seq = d.warning_seq WHERE w.id = ? AND d.channel IN ('modem', "
                "'transmitter') GROUP BY 1, 2",
                (warning_id,),
            )
        }
    finally:
        conn.close()


def _reasons(db: Path, channel: str) -> list[str]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return [
            str(r[0])
            for r in conn.execute(
                "SELECT e.reason FROM delivery_events e JOIN deliveries d ON d.id = e.delivery_id "
                "WHERE d.channel = ? AND e.state = 'retry_wait'",
                (channel,),
            )
        ]
    finally:
        conn.close()


async def _adapter(url: str, name: str) -> dict[str, object]:
    status, body, _ = await _call("GET", f"{url}/v1/adapters", OPERATOR)
    assert status == 200, body
    adapters = body["adapters"]
    assert isinstance(adapters, list)
    found: dict[str, object] = next(a for a in adapters if a["name"] == name)
    return found


async def _warn(url: str) -> str:
    status, body, _ = await _call(
        "POST",
        f"{url}/v1/warnings",
        DUTY,
        {
            "level": "red",
            "status": "Exercise",
            "event": "山洪",
            "headline": "山洪红色预警",
            "instruction": "请立即转移",
            "area_codes": ["611002000000"],
        },
    )
    assert status == 202, body
    return str(body["id"])


def _transmitters() -> list[SimulatedTransmitter]:
    return [SimulatedTransmitter(n, (town,)) for n, town in enumerate(TOWNS, start=1)]


async def test_unplugged_modem_mid_fan_out_loses_nothing(tmp_path: Path) -> None:
    port = _free_port()
    gsm = GsmModemSimulator(link=tmp_path / "gsm", submit_delay=0.4, report_delay=0.05)
    gsm.reply_rate, gsm.reply_delay = 1.0, 0.2
    line = TransmitterBusDevice(transmitters=_transmitters(), link=tmp_path / "tx")
    async with gsm, line:
        daemon = Daemon(_config(tmp_path, port), port)
        await daemon.start()
        try:
            await wait_until(
                lambda: _adapter_ready(daemon.url, "modems"), within=20, what="modem set up"
            )
            warning_id = await _warn(daemon.url)
            # The first town's message is in the modem's hands: pull the cable.
            await wait_until(lambda: gsm.sent, within=20, what="the first SMS")
            gsm.unplug()
            await wait_until(
                lambda: _adapter_state(daemon.url, "modems", "not_ready"),
                within=10,
                what="the modem adapter not ready",
            )
            modems = await _adapter(daemon.url, "modems")
            assert str(tmp_path / "gsm") in str(modems["reason"])
            status, health, _ = await _call("GET", f"{daemon.url}/healthz", OPERATOR)
            assert status == 200, health
            await asyncio.sleep(2)  # the daemon keeps running without the modem
            gsm.replug()
            db = tmp_path / "tocsin.db"
            await wait_until(
                lambda: (
                    _device_states(db, warning_id)
                    == {("modem", "acknowledged"): 2, ("transmitter", "acknowledged"): 2}
                ),
                within=60,
                what=f"every town reached (now {_device_states(db, warning_id)})",
            )
        finally:
            code, out = daemon.stop()
        assert code == 0, out
    numbers = [part.submit.destination for part in gsm.sent]
    assert set(numbers) == set(PHONES)
    # At least once, and at most twice: the message in flight at the unplug may have reached
    # the network before the cable went.
    assert all(1 <= numbers.count(phone) <= 2 for phone in PHONES), numbers
    assert any("device disconnected" in r or "not ready" in r for r in _reasons(db, "modem")), (
        "the delivery log says why the modem delivery waited"
    )
    assert all(len(t.broadcasts) == 1 for t in line.transmitters.values())


async def test_a_transmitter_line_missing_at_start_is_waited_for(tmp_path: Path) -> None:
    port = _free_port()
    gsm = GsmModemSimulator(link=tmp_path / "gsm", report_delay=0.05)
    gsm.reply_rate, gsm.reply_delay = 1.0, 0.1
    line = TransmitterBusDevice(transmitters=_transmitters(), link=tmp_path / "tx")
    async with gsm:
        daemon = Daemon(_config(tmp_path, port), port)
        await daemon.start()  # ready without its transmitter line
        try:
            warning_id = await _warn(daemon.url)
            await wait_until(
                lambda: _adapter_state(daemon.url, "transmitters", "not_ready"),
                within=20,
                what="the transmitter adapter not ready",
            )
            db = tmp_path / "tocsin.db"
            await wait_until(
                lambda: _device_states(db, warning_id).get(("modem", "acknowledged")) == 2,
                within=30,
                what="the modems reached meanwhile",
            )
            assert _device_states(db, warning_id).get(("transmitter", "acknowledged")) is None
            async with line:  # plugged in: the adapter's start is retried with backoff
                await wait_until(
                    lambda: (
                        _device_states(db, warning_id).get(("transmitter", "acknowledged")) == 2
                    ),
                    within=90,
                    what=f"the transmitters reached (now {_device_states(db, warning_id)})",
                )
        finally:
            code, out = daemon.stop()
        assert code == 0, out
    assert all(len(t.broadcasts) == 1 for t in line.transmitters.values())


async def _adapter_state(url: str, name: str, state: str) -> bool:
    return (await _adapter(url, name))["state"] == state


async def _adapter_ready(url: str, name: str) -> bool:
    return await _adapter_state(url, name, "ready")

"""The daemon as a user runs it: `tocsin serve` on a config like the demo's, a warning posted over
HTTP, its plan read back; SIGTERM stops it cleanly; an accepted but unplanned warning is planned
after a restart."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent
DUTY = "demo-duty-officer"
OPERATOR = "demo-operator"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _demo_config(
    tmp_path: Path,
    demo: str,
    *,
    port: int,
    towns: int,
    villages: int,
    grids: int = 4,
    households: int,
    replacements: Sequence[tuple[str, str]] = (),
    files: Sequence[str] = ("policy.toml",),
) -> Path:
    """config/<demo>.toml as tmp_path/tocsin.toml, with the ``files`` it names copied beside
    it: HTTP on ``port``, the store in tocsin.db there, the synthetic county shrunk to the
    given towns per county, villages per town, grids per village and households per grid,
    then the test's own ``replacements``. Each text replaced must be in the demo config."""
    for name in files:
        shutil.copy(ROOT / "config" / name, tmp_path / name)
    text = (ROOT / "config" / f"{demo}.toml").read_text(encoding="utf-8")
    for old, new in (
        ("port = 8080", f"port = {port}"),
        (f'path = "../var/{demo}.db"', 'path = "tocsin.db"'),
        ("towns_per_county = 4", f"towns_per_county = {towns}"),
        ("villages_per_town = 6", f"villages_per_town = {villages}"),
        ("grids_per_village = 4", f"grids_per_village = {grids}"),
        ("households_per_grid = 25", f"households_per_grid = {households}"),
        *replacements,
    ):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "tocsin.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _config(tmp_path: Path, port: int) -> Path:
    return _demo_config(tmp_path, "demo", port=port, towns=2, villages=3, households=5)


class Daemon:
    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "serve", "--config", str(self.config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                    raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{out}")
                try:
                    async with session.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("daemon did not become ready within 60 s")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=30)
        return self.proc.returncode, out.decode()


async def _call(
    method: str, url: str, token: str, json: object | None = None
) -> tuple[int, dict[str, object], dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, url, json=json, headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        return response.status, await response.json(), dict(response.headers)


async def _wait_planned(url: str, warning_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, plan, _ = await _call("GET", f"{url}/v1/warnings/{warning_id}/plan", OPERATOR)
        if status == 200 and plan.get("planned", True) and plan.get("total"):
            return plan
        await asyncio.sleep(0.1)
    raise AssertionError(f"warning {warning_id} was not planned within 30 s")


def _expected_red_deliveries(db: Path, county: str) -> int:
    """Independent count for config/policy.toml's red level over a whole county."""
    conn = sqlite3.connect(db)
    try:
        prefix = county[:6]
        devices = conn.execute(
            "SELECT count(DISTINCT d.id) FROM devices d JOIN device_areas da ON da.device_id = "
            "d.id WHERE substr(da.area_code, 1, 6) = ? OR da.area_code IN (?, ?, ?)",
            (prefix, county, county[:4] + "00000000", county[:2] + "0000000000"),
        ).fetchone()[0]
        with_phone = "phone IS NOT NULL AND substr(village_code, 1, 6) = ?"
        sms = conn.execute(f"SELECT count(*) FROM persons WHERE {with_phone}", (prefix,))
        voice = conn.execute(
            f"SELECT count(*) FROM persons WHERE {with_phone} AND ((roles & 3) != 0 OR "
            "vulnerable = 1 OR lives_alone = 1)",
            (prefix,),
        )
        return int(devices) + int(sms.fetchone()[0]) + int(voice.fetchone()[0])
    finally:
        conn.close()


def _cli(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
    env.update(TOCSIN_URL=url, TOCSIN_TOKEN=token)
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _check_cli_warn_and_status(url: str, tmp_path: Path) -> int:
    posted = await asyncio.to_thread(
        _cli,
        url,
        DUTY,
        "warn",
        "--level",
        "blue",
        "--event",
        "大风",
        "--headline",
        "大风蓝色预警",
        "--area",
        "611002",
        "--status",
        "Exercise",
    )
    assert posted.returncode == 0, posted.stderr
    warning_id = json.loads(posted.stdout)["id"]
    plan = await _wait_planned(url, warning_id)
    shown = await asyncio.to_thread(_cli, url, OPERATOR, "status", warning_id, "--depth", "town")
    assert shown.returncode == 0, shown.stderr
    assert f"plan: {plan['total']} deliveries" in shown.stdout
    assert "grid_member" in shown.stdout and "level blue" in shown.stdout
    # An operator may read but not post.
    refused = await asyncio.to_thread(
        _cli,
        url,
        OPERATOR,
        "warn",
        "--level",
        "blue",
        "--event",
        "x",
        "--headline",
        "x",
        "--area",
        "611002",
    )
    assert refused.returncode == 1
    assert "forbidden" in refused.stdout
    return int(plan["total"])  # type: ignore[call-overload]


@pytest.mark.slow
async def test_serve_post_plan_restart(tmp_path: Path) -> None:
    port = _free_port()
    daemon = Daemon(_config(tmp_path, port), port)
    await daemon.start()
    try:
        status, body, headers = await _call(
            "POST",
            f"{daemon.url}/v1/warnings",
            DUTY,
            {
                "level": "red",
                "status": "Exercise",
                "event": "暴雨",
                "headline": "暴雨红色预警",
                "area_codes": ["611002"],
            },
        )
        assert status == 202, body
        warning_id = str(body["id"])
        assert headers["Location"] == f"/v1/warnings/{warning_id}"
        plan = await _wait_planned(daemon.url, warning_id)
        assert plan["total"] == _expected_red_deliveries(tmp_path / "tocsin.db", "611002000000")
        blue_total = await _check_cli_warn_and_status(daemon.url, tmp_path)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{daemon.url}/metrics") as response,
        ):
            metrics = await response.text()
        planned = [
            line
            for line in metrics.splitlines()
            if line.startswith("tocsin_deliveries_planned_total ")
        ]
        assert planned == [f"tocsin_deliveries_planned_total {float(plan['total'] + blue_total)}"]
    finally:
        code, output = daemon.stop()
    assert code == 0, output
    assert '"event": "stopped"' in output

    # A warning accepted but never planned (a crash between the two) is planned on restart.
    conn = sqlite3.connect(tmp_path / "tocsin.db")
    conn.execute("PRAGMA foreign_keys = ON")
    row = conn.execute("SELECT * FROM warnings WHERE id = ?", (warning_id,)).fetchone()
    columns = [c[1] for c in conn.execute("PRAGMA table_info(warnings)")]
    copy = dict(zip(columns, row, strict=True))
    copy.update(
        seq=None,
        id="crashed",
        identifier="crashed-1",
        planned_at=None,
        plan_stage=0,
        completed_at=None,
    )
    conn.execute(
        f"INSERT INTO warnings ({', '.join(copy)}) VALUES ({', '.join('?' * len(copy))})",
        list(copy.values()),
    )
    conn.execute(
        "INSERT INTO warning_areas SELECT 'crashed', area_code FROM warning_areas "
        "WHERE warning_id = ?",
        (warning_id,),
    )
    conn.commit()
    conn.close()
    await daemon.start()
    try:
        replanned = await _wait_planned(daemon.url, "crashed")
        assert replanned["total"] == plan["total"]
    finally:
        code, output = daemon.stop(signal.SIGINT)
    assert code == 0, output


async def test_a_second_daemon_on_the_same_store_is_refused(tmp_path: Path) -> None:
    """The engine takes back every leased delivery at start; a second daemon on the same store
    would resend what the first is sending, so it must not start."""
    port = _free_port()
    config = _config(tmp_path, port)
    daemon = Daemon(config, port)
    await daemon.start()
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "dispatcher.cli",
                "serve",
                "--config",
                str(config),
                "--port",
                "0",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1
        assert "another tocsin daemon is running on" in second.stderr
        assert "Traceback" not in second.stderr
        # The first one is unharmed.
        status, _, _ = await _call("GET", f"{daemon.url}/v1/warnings", OPERATOR)
        assert status == 200
    finally:
        code, _ = daemon.stop()
    assert code == 0


async def test_adapters_endpoint_shows_each_instance_as_the_engine_sees_it(
    tmp_path: Path,
) -> None:
    port = _free_port()
    config = _config(tmp_path, port)
    with config.open("a", encoding="utf-8") as handle:
        handle.write(
            '\n[adapters.broken_modem]\nkind = "simulated"\nchannels = ["modem"]\n'
            "[adapters.broken_modem.settings]\nnot_ready_starts = 1000\n"
        )
    daemon = Daemon(config, port)
    await daemon.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            status, body, _ = await _call("GET", f"{daemon.url}/v1/adapters", "demo-installer")
            assert status == 200, body
            adapters = {a["name"]: a for a in body["adapters"]}  # type: ignore[union-attr]
            if adapters["demo_sms"]["state"] == "ready" and (
                adapters["broken_modem"]["state"] == "not_ready"
            ):
                break
            assert time.monotonic() < deadline, adapters
            await asyncio.sleep(0.1)
        assert list(adapters) == ["demo_devices", "demo_sms", "demo_voice", "broken_modem"]
        assert adapters["demo_sms"]["channels"] == ["sms"]
        assert adapters["demo_sms"]["rate_per_second"] == 200
        assert adapters["demo_devices"]["breaker"] == "closed"
        assert adapters["broken_modem"]["start_failures"] >= 1
        status, _, _ = await _call("GET", f"{daemon.url}/v1/adapters", "no-such-token")
        assert status == 401
    finally:
        code, _ = daemon.stop()
    assert code == 0

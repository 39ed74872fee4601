"""`tocsin status` against a running daemon: a red warning is planned, sent through simulated
devices and providers that acknowledge at once, and completes; the status shows the plan,
progress and a coverage table per area that agrees with the API and with what the engine
recorded; `--watch` redraws until the warning is complete and clears the screen only on a
terminal."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_daemon import DUTY, OPERATOR, ROOT, _free_port
from test_daemon import Daemon as BaseDaemon

COUNTY = "611002000000"
CLEAR = "\x1b[H\x1b[2J"

#: Every device plays and every person answers at once: the warning completes in seconds.
ADAPTERS = """
[adapters.devices]
kind = "simulated"
channels = ["speaker", "transmitter", "modem"]

[adapters.people]
kind = "simulated"
channels = ["sms", "voice"]
"""


def _config(tmp_path: Path, port: int) -> Path:
    shutil.copy(ROOT / "config" / "policy.toml", tmp_path / "policy.toml")
    lines = (ROOT / "config" / "demo.toml").read_text(encoding="utf-8").splitlines()
    # The demo's own adapters (and the comment above them) make way for ADAPTERS.
    cut = next(i for i, line in enumerate(lines) if line.startswith("[adapters."))
    while cut > 0 and lines[cut - 1].startswith("#"):
        cut -= 1
    text = "\n".join(lines[:cut]) + "\n"
    text = text.replace("port = 8080", f"port = {port}")
    text = text.replace('path = "../var/demo.db"', 'path = "tocsin.db"')
    text = text.replace("towns_per_county = 4", "towns_per_county = 2")
    text = text.replace("villages_per_town = 6", "villages_per_town = 3")
    text = text.replace("households_per_grid = 25", "households_per_grid = 5")
    path = tmp_path / "tocsin.toml"
    path.write_text(text + ADAPTERS, encoding="utf-8")
    return path


def _env(url: str, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
    env.update(TOCSIN_URL=url, TOCSIN_TOKEN=token)
    return env


def _cli(url: str, *args: str, token: str = OPERATOR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", *args],
        cwd=ROOT,
        env=_env(url, token),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _call(method: str, url: str, token: str, body: object | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        return response.status, await response.json()


class Daemon(BaseDaemon):
    """The daemon of tests/test_daemon.py on this file's config, with its database's path."""

    def __init__(self, tmp_path: Path) -> None:
        port = _free_port()
        super().__init__(_config(tmp_path, port), port)
        self.db = tmp_path / "tocsin.db"


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    running = Daemon(tmp_path)
    await running.start()
    try:
        yield running
    finally:
        code, output = running.stop()
        assert code == 0, output


async def _post_red(daemon: Daemon) -> str:
    status, body = await _call(
        "POST",
        f"{daemon.url}/v1/warnings",
        DUTY,
        {
            "level": "red",
            "status": "Exercise",
            "event": "暴雨",
            "headline": "暴雨红色预警",
            "area_codes": [COUNTY[:6]],
        },
    )
    assert status == 202, body
    return str(body["id"])


def _cell(measure: dict[str, Any]) -> str:
    shown = "-" if measure["percent"] is None else f"{measure['percent']:.1f}%"
    return f"{measure['reached']}/{measure['total']} {shown}"


@pytest.mark.slow
async def test_status_shows_progress_and_coverage_until_complete(daemon: Daemon) -> None:
    warning_id = await _post_red(daemon)

    # --watch redraws until every delivery is terminal, then ends by itself; not on a
    # terminal, it never clears the screen.
    watched = await asyncio.to_thread(_cli, daemon.url, "status", warning_id, "--watch", "0.3")
    assert watched.returncode == 0, watched.stderr
    assert CLEAR not in watched.stdout
    shows = watched.stdout.count(f"{warning_id}  Exercise Alert")
    assert shows >= 1
    last = watched.stdout[watched.stdout.rindex(f"{warning_id}  Exercise Alert") :]
    assert "complete at" in last

    shown = await asyncio.to_thread(_cli, daemon.url, "status", warning_id, "--depth", "village")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    status, warning = await _call("GET", f"{daemon.url}/v1/warnings/{warning_id}", OPERATOR)
    assert status == 200
    status, coverage = await _call(
        "GET", f"{daemon.url}/v1/warnings/{warning_id}/coverage?depth=village", OPERATOR
    )
    assert status == 200
    progress = warning["progress"]
    assert progress["complete"] is True
    assert progress["terminal"] == progress["total"] > 0
    # The plan part is kept, progress and coverage are added.
    assert "plan: " in text and "deliveries" in text
    assert f"progress: {progress['total']}/{progress['total']} deliveries terminal" in text
    assert "coverage (reached in time / total)" in text
    for name in ("villages", "grid members", "households", "persons"):
        assert name in text
    table = text[text.index("coverage (reached in time / total)") :].splitlines()
    totals_line = next(line for line in table if "whole warning" in line)
    for key in ("villages", "grid_members", "households", "persons"):
        assert _cell(coverage["totals"][key]) in totals_line
    assert len(coverage["areas"]) == 6
    for area in coverage["areas"]:
        line = next(line for line in table if f"{area['code']} {area['name']}" in line)
        for key in ("villages", "grid_members", "households", "persons"):
            assert _cell(area[key]) in line, (line, key)

    # Every loudspeaker played and everyone with a phone answered: the counts are the
    # engine's own records.
    conn = sqlite3.connect(daemon.db)
    try:
        recorded = dict(
            conn.execute(
                "SELECT r.kind, count(*) FROM reached r JOIN warnings w ON w.seq = r.warning_seq "
                "WHERE w.id = ? AND r.in_time = 1 GROUP BY r.kind",
                (warning_id,),
            ).fetchall()
        )
        with_phone = conn.execute(
            "SELECT count(*) FROM persons WHERE phone IS NOT NULL AND village_code LIKE ?",
            (COUNTY[:6] + "%",),
        ).fetchone()[0]
    finally:
        conn.close()
    totals = coverage["totals"]
    assert totals["villages"]["reached"] == totals["villages"]["total"] == 6
    assert totals["persons"]["reached"] == recorded["person"] == with_phone
    assert totals["households"]["reached"] == recorded["household"]
    assert totals["grid_members"]["reached"] == recorded["grid_member"]
    assert totals["grid_members"]["percent"] == 100.0

    # --json: the three documents, as the API gives them.
    raw = await asyncio.to_thread(_cli, daemon.url, "status", warning_id, "--json")
    assert raw.returncode == 0, raw.stderr
    data = json.loads(raw.stdout)
    assert set(data) == {"warning", "plan", "coverage"}
    assert data["warning"]["progress"]["complete"] is True
    assert data["coverage"]["depth"] == "county"
    assert data["coverage"]["totals"] == totals


def _on_a_terminal(url: str, *args: str) -> tuple[int, str]:
    """Run the CLI with its output on a pseudo-terminal; (exit code, what it wrote)."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", *args],
            cwd=ROOT,
            env=_env(url, OPERATOR),
            stdout=follower,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the CLI exited and closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    return proc.wait(timeout=120), b"".join(chunks).decode()


@pytest.mark.slow
async def test_watch_on_a_terminal_clears_the_screen_and_unknown_warnings_fail(
    daemon: Daemon,
) -> None:
    warning_id = await _post_red(daemon)
    code, output = await asyncio.to_thread(
        _on_a_terminal, daemon.url, "status", warning_id, "--watch", "0.3"
    )
    assert code == 0, output
    assert output.startswith(CLEAR)
    assert output.count(CLEAR) == output.count(f"{warning_id}  Exercise Alert") >= 1
    assert "complete at" in output

    missing = await asyncio.to_thread(_cli, daemon.url, "status", "no-such-warning")
    assert missing.returncode == 1
    assert "not_found" in missing.stderr

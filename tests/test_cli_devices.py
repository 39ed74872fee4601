"""`tocsin devices` against the API on a real port (the small synthetic city of the API tests,
with a few devices' statuses written into its store): the table and its counts, JSON lines,
every page, unregistered addresses, and options refused before the daemon is asked."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api.harness import CITY_SHAPE, COUNTY, OTHER_COUNTY, TOKENS
from api.live_server import LiveServer

from dispatcher.cli import main
from dispatcher.config import ApiRole
from dispatcher.synthetic import load_synthetic


def _speakers(db: Path, county: str) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT id FROM devices WHERE kind = 'loudspeaker' AND area_code LIKE ? ORDER BY id",
            (county[:6] + "%",),
        )
        return [r[0] for r in rows]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    """The API, and the state written for some speakers: device id → state."""
    folder = tmp_path_factory.mktemp("cli-devices")
    city = folder / "city.db"
    load_synthetic(city, CITY_SHAPE, progress=False)
    with LiveServer(city, folder) as server:
        ids = _speakers(server.db, COUNTY)
        other = _speakers(server.db, OTHER_COUNTY)
        now = time.time()
        rows = [
            ("speakers", ids[0], 1, now - 2, '{"firmware":"2.1.0"}'),
            ("speakers", ids[1], 0, now - 60, "{}"),
            ("speakers", ids[2], 1, now - 7200, "{}"),  # two hours quiet: silent
            ("speakers", other[0], 0, now - 10, "{}"),
            ("speakers", "SPK-STRAY-1", 1, now - 3, "{}"),
        ]
        conn = sqlite3.connect(server.db)
        try:
            conn.executemany(
                "INSERT INTO device_status VALUES (?, ?, ?, ?, ?, ?)",
                [(*row, now) for row in rows],
            )
            conn.commit()
        finally:
            conn.close()
        states = {ids[0]: "online", ids[1]: "offline", ids[2]: "silent", other[0]: "offline"}
        yield server, states


@pytest.fixture
def staff_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOCSIN_TOKEN", TOKENS[ApiRole.INSTALLER])


def _devices(server: LiveServer, *args: str) -> int:
    return main(["devices", "--url", server.url, *args])


@pytest.mark.usefixtures("staff_token")
def test_the_table_shows_a_county_s_offline_devices_and_the_counts(
    live: tuple[LiveServer, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    server, states = live
    assert _devices(server, "--area", COUNTY[:6], "--state", "offline") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["id", "kind", "state", "last"]
    offline_here = [i for i, s in states.items() if s == "offline" and i.startswith("SPK-611002")]
    assert [line.split()[0] for line in out[1:-1]] == offline_here
    assert "offline" in out[1]
    assert "1m" in out[1]  # heard from a minute ago
    devices_here = sum(1 for _ in _all_ids(server.db, COUNTY))
    # The counts are the county's, every state, whatever the state filter shows.
    assert out[-1] == (
        f"1 online, 1 offline, 1 silent, {devices_here - 3:,} unknown "
        "(silent: online but not heard from for 5m)"
    )


def _all_ids(db: Path, county: str) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT id FROM devices WHERE area_code LIKE ? ORDER BY id", (county[:6] + "%",)
        )
        return [r[0] for r in rows]
    finally:
        conn.close()


@pytest.mark.usefixtures("staff_token")
def test_json_lines_of_every_page(
    live: tuple[LiveServer, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    server, states = live
    assert _devices(server, "--json", "--all", "--limit", "4", "--area", COUNTY) == 0
    captured = capsys.readouterr()
    devices = [json.loads(line) for line in captured.out.splitlines()]
    assert [d["id"] for d in devices] == _all_ids(server.db, COUNTY)
    for device in devices:
        assert device["state"] == states.get(device["id"], "unknown")
    assert "1 online, 1 offline, 1 silent" in captured.err
    # One page only without --all, and where to go on.
    assert _devices(server, "--json", "--limit", "4", "--area", COUNTY) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 4
    assert "--after " in captured.err


@pytest.mark.usefixtures("staff_token")
def test_unregistered_addresses(
    live: tuple[LiveServer, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = live
    assert _devices(server, "--unregistered") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert out[1].split()[:2] == ["(unregistered)", "online"]
    assert "SPK-STRAY-1" in out[1]
    assert out[-1].startswith("1 online, 0 offline, 0 silent, 0 unknown")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--area", "61100"], "--area"),
        (["--limit", "0"], "--limit"),
        (["--unregistered", "--kind", "modem"], "do not apply with --unregistered"),
    ],
)
def test_bad_options_are_refused_before_asking_the_daemon(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOCSIN_TOKEN", "unused")
    # Nothing listens on port 9: asking would be exit status 1, not 2.
    assert main(["devices", "--url", "http://127.0.0.1:9", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_grid_member_token_is_refused(
    live: tuple[LiveServer, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _ = live
    monkeypatch.setenv("TOCSIN_TOKEN", TOKENS[ApiRole.GRID_MEMBER])
    assert _devices(server) == 1
    assert "tocsin devices: forbidden" in capsys.readouterr().err


def test_no_daemon_is_exit_status_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOCSIN_TOKEN", "unused")
    assert main(["devices", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot read the devices" in capsys.readouterr().err

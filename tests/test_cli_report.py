"""`tocsin report coverage|followup|test` against the API on a real port (the small synthetic
city of the API tests, with a drill and an actual warning planned but nothing sent): what each
prints by default, as CSV and as JSON, and the refusals (a bad option before asking, a warning
that is no test, a token that may not read reports)."""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from api.harness import CITY_SHAPE, COUNTY, TOKENS, VILLAGE, red_warning
from api.live_server import LiveServer

from dispatcher.cli import main
from dispatcher.config import ApiRole
from dispatcher.reports.coverage_report import COVERAGE_CSV_COLUMNS
from dispatcher.reports.followup import FOLLOWUP_CSV_COLUMNS
from dispatcher.reports.test_report import MAINTENANCE_CSV_COLUMNS
from dispatcher.synthetic import load_synthetic


@dataclass
class Live:
    server: LiveServer
    drill: str
    actual: str


def _http(url: str, role: ApiRole, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Authorization": f"Bearer {TOKENS[role]}",
            **({"Content-Type": "application/json"} if body is not None else {}),
        },
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.load(response)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("cli-report")
    city = folder / "city.db"
    load_synthetic(city, CITY_SHAPE, progress=False)
    with LiveServer(city, folder) as server:
        ids = [
            _http(f"{server.url}/v1/warnings", ApiRole.DUTY_OFFICER, red_warning(status=status))[
                "id"
            ]
            for status in ("Exercise", "Actual")
        ]
        deadline = time.monotonic() + 30
        for warning_id in ids:
            while not _http(f"{server.url}/v1/warnings/{warning_id}/plan", ApiRole.OPERATOR)[
                "planned"
            ]:
                assert time.monotonic() < deadline, "the warnings were not planned"
                time.sleep(0.05)
        yield Live(server, *ids)


@pytest.fixture(autouse=True)
def operator_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOCSIN_TOKEN", TOKENS[ApiRole.OPERATOR])


def _report(live: Live, *args: str) -> int:
    return main(["report", *args, "--url", live.server.url])


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))


def test_coverage_prints_the_summary_per_county_and_town(
    live: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _report(live, "coverage", live.drill) == 0
    out = capsys.readouterr().out
    assert out.startswith("【演练】")
    assert "分区覆盖：" in out
    lines = out.splitlines()
    table = lines[lines.index("分区覆盖：") + 1 :]
    county = next(line for line in table if "（611002000000）" in line)
    assert not county.startswith(" ")
    towns = [line for line in table if line.startswith("  ") and "（611002" in line]
    assert len(towns) == CITY_SHAPE.towns_per_county
    assert not any("（611002101201）" in line for line in table)  # no villages by default

    assert _report(live, "coverage", live.drill, "--depth", "village", "--csv") == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[0] == list(COVERAGE_CSV_COLUMNS)
    assert {row[0] for row in rows[1:]} == {"county", "town", "village", "total"}
    assert VILLAGE in {row[1] for row in rows}

    assert _report(live, "coverage", live.drill, "--json", "--under", COUNTY[:6]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["under"]["code"] == COUNTY
    assert [a["level"] for a in body["areas"]][:2] == ["county", "town"]


def test_followup_prints_a_sheet_per_grid_member(
    live: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _report(live, "followup", live.drill, "--area", VILLAGE) == 0
    out = capsys.readouterr().out
    sheets = [s for s in out.split("=" * 72) if s.strip()]
    assert len(sheets) == CITY_SHAPE.grids_per_village
    for sheet in sheets:
        assert f"（{VILLAGE}）" in sheet and "网格员：" in sheet
        assert sheet.count("□ 户 ") == CITY_SHAPE.households_per_grid
    assert "+86" in out and "****" not in out

    assert _report(live, "followup", live.drill, "--area", VILLAGE, "--masked", "--json") == 0
    sheets_json = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(sheets_json) == CITY_SHAPE.grids_per_village
    phones = [
        p["phone"]
        for s in sheets_json
        for g in s["grids"]
        for h in g["households"]
        for p in h["persons"]
        if p["phone"]
    ]
    assert phones and all("****" in phone for phone in phones)

    assert _report(live, "followup", live.drill, "--csv") == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[0] == list(FOLLOWUP_CSV_COLUMNS)
    # Every household of the warned county, each on its one grid member's sheet.
    households = {row[8] for row in rows[1:]}
    assert len(households) == (
        CITY_SHAPE.towns_per_county
        * CITY_SHAPE.villages_per_town
        * CITY_SHAPE.grids_per_village
        * CITY_SHAPE.households_per_grid
    )


def test_the_test_report_and_its_maintenance_list(
    live: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _report(live, "test", live.drill) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Exercise broadcast {live.drill}")
    assert "maintenance list (" in out and "not_sent" in out

    assert _report(live, "test", live.drill, "--csv") == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[0] == list(MAINTENANCE_CSV_COLUMNS)
    assert len(rows) > 1 and {row[7] for row in rows[1:]} == {"not_sent"}

    assert _report(live, "test", live.drill, "--json") == 0
    body = json.loads(capsys.readouterr().out)
    assert len(body["maintenance"]) == len(rows) - 1


def test_refusals(
    live: Live, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _report(live, "test", live.actual) == 1
    assert "tocsin report: not_a_test: " in capsys.readouterr().err
    assert _report(live, "coverage", "no-such-warning") == 1
    assert "not_found" in capsys.readouterr().err
    assert (
        main(["report", "followup", live.drill, "--area", "6110", "--url", "http://127.0.0.1:9"])
        == 2
    )
    assert "--area" in capsys.readouterr().err
    monkeypatch.setenv("TOCSIN_TOKEN", TOKENS[ApiRole.GRID_MEMBER])
    assert _report(live, "followup", live.drill) == 1
    assert "forbidden" in capsys.readouterr().err
    monkeypatch.setenv("TOCSIN_TOKEN", "unused")
    assert main(["report", "test", live.drill, "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot read the report" in capsys.readouterr().err


def test_report_without_a_kind_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report"]) == 2
    assert "usage" in capsys.readouterr().out

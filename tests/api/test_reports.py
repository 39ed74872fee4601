"""Operators' reports over HTTP on the small synthetic city: the coverage report as CSV and as a
printable summary (both saying what the JSON says), the door-to-door follow-up list grouped by
grid member (reached households left out, whole villages per page, JSON and CSV), the test
report's refusals, and who may read them."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from api.harness import COUNTY, OTHER_COUNTY, TOWN, Api, red_warning
from api.test_coverage import GM_TOKEN, STAFF, Setup, _setup
from dispatcher.api.routes_reports import MAX_FOLLOWUP_PAGE
from dispatcher.config import ApiRole
from dispatcher.coverage_view import MEASURES
from dispatcher.reports.coverage_report import COVERAGE_CSV_COLUMNS
from dispatcher.reports.csv_out import unguard
from dispatcher.reports.followup import FOLLOWUP_CSV_COLUMNS
from dispatcher.reports.text import width


@pytest.fixture
async def setup(
    tmp_path: Any, city_db: Any, aiohttp_client: Callable[..., Any]
) -> AsyncIterator[Setup]:
    async for s in _setup(tmp_path, city_db, aiohttp_client, engine=True):
        yield s


async def _get(api: Api, path: str, role: ApiRole = ApiRole.OPERATOR) -> tuple[int, Any, str]:
    status, body, headers = await api.call("GET", path, role=role)
    return status, body, headers.get("Content-Type", "")


def _csv(text: str) -> list[dict[str, str]]:
    assert text.startswith("\ufeff"), "no byte-order mark"
    assert "\r\n" in text
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


async def _reach_some(setup: Setup, warning_id: str) -> list[str]:
    """Two households of the grid member's grid confirmed door-to-door."""
    for household in setup.own[:2]:
        status, body = await setup.confirm(warning_id, household)
        assert status == 200 and body["result"] == "applied", body
    return setup.own[:2]


# -- coverage: CSV and the printable summary ------------------------------------------------


async def test_the_coverage_csv_says_what_the_json_says(setup: Setup) -> None:
    wid = await setup.warning(area_codes=[COUNTY, OTHER_COUNTY])
    await _reach_some(setup, wid)
    status, text, content_type = await _get(
        setup.api, f"/v1/warnings/{wid}/coverage?format=csv&depth=village&tree=true"
    )
    assert status == 200 and content_type.startswith("text/csv")
    header = next(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    assert header == list(COVERAGE_CSV_COLUMNS)
    rows = _csv(text)
    assert rows[-1]["level"] == "total" and rows[-1]["name"] == "合计"
    by_level: dict[str, list[dict[str, str]]] = {}
    for row in rows[:-1]:
        by_level.setdefault(row["level"], []).append(row)
    assert set(by_level) == {"county", "town", "village"}
    # Each area right after its parent (the tree), villages under their town.
    codes = [row["code"] for row in rows[:-1]]
    parents = {row["code"]: row["parent_code"] for row in rows[:-1]}
    for i, code in enumerate(codes[1:], start=1):
        assert parents[code] in codes[:i] or parents[code] not in parents

    for level, listed in by_level.items():
        body = await setup.coverage(wid, f"?depth={level}")
        assert [r["code"] for r in listed] == [a["code"] for a in body["areas"]]
        for row, area in zip(listed, body["areas"], strict=True):
            assert row["name"] == area["name"]
            for key, _, _ in MEASURES:
                assert int(row[f"{key}_reached"]) == area[key]["reached"]
                assert int(row[f"{key}_total"]) == area[key]["total"]
                shown = row[f"{key}_percent"]
                assert (float(shown) if shown else None) == area[key]["percent"]
        for key, _, _ in MEASURES:
            assert int(rows[-1][f"{key}_reached"]) == body["totals"][key]["reached"]
            assert int(rows[-1][f"{key}_total"]) == body["totals"][key]["total"]
    households = (await setup.coverage(wid))["totals"]["households"]
    assert households["reached"] == 2
    assert rows[-1]["households_percent"] == str(households["percent"])


async def test_the_printable_summary(setup: Setup) -> None:
    wid = await setup.warning(area_codes=[COUNTY, OTHER_COUNTY])
    await _reach_some(setup, wid)
    status, text, content_type = await _get(
        setup.api, f"/v1/warnings/{wid}/coverage?format=text&depth=town&tree=true"
    )
    assert status == 200 and content_type.startswith("text/plain"), text
    lines = text.splitlines()
    assert lines[0] == "【演练】" + red_warning()["headline"]
    assert "预警级别：红色预警" in text and "事件：暴雨" in text and "状态：生效中" in text
    assert f"预警编号：{wid}" in text
    assert re.search(r"发布时间：\d{4}-\d\d-\d\d \d\d:\d\d", text)
    assert "商州区（611002000000）" in text
    body = await setup.coverage(wid, "?depth=town&tree=true")
    totals = body["totals"]
    overall = next(line for line in lines if line.startswith("  行政村 "))
    for key, label in (("villages", "行政村"), ("households", "户"), ("persons", "人")):
        measure = totals[key]
        assert f"{label} {measure['reached']}/{measure['total']} {measure['percent']:.1f}%" in (
            overall
        )
    start = lines.index("分区覆盖：") + 1
    table = lines[start : start + 1 + len(body["areas"]) + 1]
    assert table[0].split() == ["区域", "行政村", "网格员", "户", "人"]
    for line, area in zip(table[1:-1], body["areas"], strict=True):
        assert f"{area['name']}（{area['code']}）" in line
        indent = len(line) - len(line.lstrip(" "))
        assert indent == (0 if area["level"] == "county" else 2)
        h = area["households"]
        assert line.endswith(
            f"{area['persons']['reached']}/{area['persons']['total']} "
            f"{area['persons']['percent']:.1f}%"
        )
        assert f"{h['reached']}/{h['total']} {h['percent']:.1f}%" in line
    assert table[-1].startswith("合计")
    # Aligned: every row of the table as wide as the heading, Chinese characters counted double.
    assert len({width(line) for line in table}) == 1, table
    levels = [a["level"] for a in body["areas"]]
    assert levels.count("county") == 2 and levels.count("town") == 4


async def test_coverage_format_and_tree_are_checked(setup: Setup) -> None:
    wid = await setup.warning()
    for query, field in (("?format=pdf", "format"), ("?tree=yes", "tree")):
        status, body, _ = await _get(setup.api, f"/v1/warnings/{wid}/coverage{query}")
        assert status == 400, body
        assert body["error"]["field"] == field
    status, _, _ = await _get(setup.api, "/v1/warnings/nope/coverage?format=text")
    assert status == 404
    # Without tree, the JSON is as before: one level.
    body = await setup.coverage(wid, "?depth=town")
    assert {a["level"] for a in body["areas"]} == {"town"}
    tree = await setup.coverage(wid, f"?depth=village&tree=true&under={TOWN}")
    assert tree["areas"][0]["level"] == "town"
    assert {a["level"] for a in tree["areas"][1:]} == {"village"}


# -- the follow-up list ------------------------------------------------------------------------


def _directory(api: Api, village: str) -> dict[str, Any]:
    """The village's grids → households, their members, and grid → grid members."""
    households: dict[str, list[str]] = {}
    for grid, household in api.sql(
        "SELECT h.grid_id, h.id FROM households h JOIN grids g ON g.id = h.grid_id "
        "WHERE g.village_code = ? ORDER BY h.id",
        (village,),
    ):
        households.setdefault(grid, []).append(household)
    persons: dict[str, list[tuple[str, str | None]]] = {}
    for household, person, phone in api.sql(
        "SELECT household_id, id, phone FROM persons WHERE village_code = ? ORDER BY id",
        (village,),
    ):
        persons.setdefault(household, []).append((person, phone))
    members: dict[str, list[str]] = {}
    for grid, person in api.sql(
        "SELECT gm.grid_id, gm.person_id FROM grid_members gm JOIN grids g ON g.id = gm.grid_id "
        "WHERE g.village_code = ? ORDER BY gm.person_id",
        (village,),
    ):
        members.setdefault(grid, []).append(person)
    return {"households": households, "persons": persons, "members": members}


async def test_the_followup_list_groups_households_by_grid_member(setup: Setup) -> None:
    wid = await setup.warning()
    reached = await _reach_some(setup, wid)
    status, page, _ = await _get(
        setup.api, f"/v1/warnings/{wid}/followup?area={setup.village}", ApiRole.DUTY_OFFICER
    )
    assert status == 200, page
    assert page["area"] == setup.village and page["next"] is None and page["masked"] is False
    expected = _directory(setup.api, setup.village)
    sheets = page["sheets"]
    assert {s["village_code"] for s in sheets} == {setup.village}
    # Each grid of the village is on the sheet of each of its grid members, with exactly the
    # households not reached.
    seen: dict[tuple[str | None, str], list[str]] = {}
    for sheet in sheets:
        member = sheet["grid_member"]
        assert sheet["households"] == sum(len(g["households"]) for g in sheet["grids"])
        for grid in sheet["grids"]:
            assert member is None or member["id"] in expected["members"][grid["id"]]
            seen[(member["id"] if member else None, grid["id"])] = [
                h["id"] for h in grid["households"]
            ]
            for household in grid["households"]:
                assert [(p["id"], p["phone"]) for p in household["persons"]] == expected["persons"][
                    household["id"]
                ]
    wanted = {
        (member, grid): [h for h in households if h not in reached]
        for grid, households in expected["households"].items()
        for member in expected["members"].get(grid, [None])
    }
    assert seen == {k: v for k, v in wanted.items() if v}
    mine = next(s for s in sheets if s["grid_member"] and s["grid_member"]["id"] == setup.person_id)
    own = next(g for g in mine["grids"] if g["id"] == setup.grid_id)
    assert [h["id"] for h in own["households"]] == setup.own[2:]
    assert page["households"] == sum(len(v) for v in expected["households"].values()) - 2
    # Sheets are in the order of their first grid.
    firsts = [s["grids"][0]["id"] for s in sheets]
    assert firsts == sorted(firsts)

    # Masked on request.
    status, masked, _ = await _get(
        setup.api, f"/v1/warnings/{wid}/followup?area={setup.village}&masked=true"
    )
    assert status == 200 and masked["masked"] is True
    phones = [
        p["phone"]
        for s in masked["sheets"]
        for g in s["grids"]
        for h in g["households"]
        for p in h["persons"]
        if p["phone"]
    ]
    assert phones and all("****" in phone for phone in phones)

    # The CSV: one row per person of each household on each sheet, as the JSON.
    status, text, content_type = await _get(
        setup.api, f"/v1/warnings/{wid}/followup?area={setup.village}&format=csv"
    )
    assert status == 200 and content_type.startswith("text/csv")
    assert next(csv.reader(io.StringIO(text.removeprefix("\ufeff")))) == list(FOLLOWUP_CSV_COLUMNS)
    rows = _csv(text)
    from_json = [
        (
            s["grid_member"]["id"] if s["grid_member"] else "",
            g["id"],
            h["id"],
            p["id"],
            p["phone"] or "",
        )
        for s in sheets
        for g in s["grids"]
        for h in g["households"]
        for p in h["persons"]
    ]
    from_csv = [
        (
            r["grid_member_id"],
            r["grid_id"],
            r["household_id"],
            r["person_id"],
            unguard(r["person_phone"]),
        )
        for r in rows
    ]
    assert from_csv == from_json
    assert all(r["person_phone"].startswith("'+86") for r in rows if r["person_phone"])
    assert not set(reached) & {r["household_id"] for r in rows}


async def test_followup_pages_are_whole_villages(setup: Setup) -> None:
    wid = await setup.warning()
    await _reach_some(setup, wid)
    every: list[tuple[str, str]] = []
    villages_seen: list[list[str]] = []
    after = None
    while True:
        query = f"?limit=4&area={COUNTY}" + (f"&after={after}" if after else "")
        status, page, _ = await _get(setup.api, f"/v1/warnings/{wid}/followup{query}")
        assert status == 200, page
        villages = sorted({s["village_code"] for s in page["sheets"]})
        villages_seen.append(villages)
        unique = {
            (s["village_code"], h["id"])
            for s in page["sheets"]
            for g in s["grids"]
            for h in g["households"]
        }
        assert page["households"] == len(unique)
        every += sorted(unique)
        after = page["next"]
        if after is None:
            break
        assert after == villages[-1]
    # Each village on one page only (the small city's villages hold 10 households: one a page).
    flat = [v for page in villages_seen for v in page]
    assert len(flat) == len(set(flat)) and all(len(v) == 1 for v in villages_seen)
    unreached = setup.api.sql(
        "SELECT g.village_code, h.id FROM households h JOIN grids g ON g.id = h.grid_id "
        "WHERE g.village_code LIKE ? ORDER BY 1, 2",
        (COUNTY[:6] + "%",),
    )
    assert sorted(every) == [r for r in unreached if r[1] not in setup.own[:2]]
    # A big page holds every village of the county.
    status, page, _ = await _get(
        setup.api, f"/v1/warnings/{wid}/followup?area={COUNTY}&limit={MAX_FOLLOWUP_PAGE}"
    )
    assert status == 200 and page["next"] is None and page["households"] == len(every)

    for query, field in (
        ("?after=abc", "after"),
        ("?after=6110021012011", "after"),
        ("?area=999999000000", "area"),
        ("?limit=0", "limit"),
        ("?masked=maybe", "masked"),
        ("?format=text", "format"),
    ):
        status, body, _ = await _get(setup.api, f"/v1/warnings/{wid}/followup{query}")
        assert status == 400, (query, body)
        assert body["error"]["field"] == field
    status, body, _ = await _get(setup.api, "/v1/warnings/nope/followup?format=csv")
    assert status == 404 and body["error"]["code"] == "not_found"


# -- who may read them ------------------------------------------------------------------------


async def test_grid_members_cannot_read_the_reports(setup: Setup) -> None:
    wid = await setup.warning()
    paths = (
        f"/v1/warnings/{wid}/coverage?format=csv",
        f"/v1/warnings/{wid}/coverage?format=text",
        f"/v1/warnings/{wid}/followup",
        f"/v1/warnings/{wid}/followup?format=csv",
        f"/v1/warnings/{wid}/test-report",
    )
    for path in paths:
        status, body = await setup.as_gm("GET", path, token=GM_TOKEN)
        assert status == 403, (path, body)
        for role in STAFF:
            status, body, _ = await _get(setup.api, path, role)
            assert status == 200, (path, role, body)


async def test_the_test_report_is_only_for_tests_and_drills(setup: Setup) -> None:
    actual = await setup.warning(status="Actual")
    status, body, _ = await _get(setup.api, f"/v1/warnings/{actual}/test-report")
    assert status == 409, body
    assert body["error"]["code"] == "not_a_test"
    assert "Actual" in body["error"]["message"]
    drill = await setup.warning()  # Exercise: nothing sent yet (no engine sends here)
    status, body, _ = await _get(setup.api, f"/v1/warnings/{drill}/test-report")
    assert status == 200, body
    devices = setup.api.sql(
        "SELECT count(*) FROM devices d WHERE EXISTS (SELECT 1 FROM device_areas da "
        "JOIN area_closure c ON c.descendant = da.area_code WHERE da.device_id = d.id "
        "AND c.ancestor = ?) OR d.area_code IN (SELECT ancestor FROM area_closure "
        "WHERE descendant = ?)",
        (COUNTY, COUNTY),
    )[0][0]
    assert body["devices"]["targeted"] == len(body["maintenance"]) > 0
    assert body["devices"]["targeted"] <= devices
    assert {item["problem"] for item in body["maintenance"]} == {"not_sent"}
    assert body["devices"]["problems"]["not_sent"] == body["devices"]["silent"]

"""The store's reads for the follow-up list on the small directory: households grouped into
grid members' sheets (a grid with two members on both sheets, a grid without one on a sheet of
its own), reached households left out and late ones marked, pages of whole villages, and the
query plans (every read through an index, never a scan)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from small_directory import (
    CITY,
    COUNTY_A,
    VILLAGE_A1a,
    VILLAGE_A1b,
    VILLAGE_B1a,
    fill_small_directory,
    make_warning,
)

from dispatcher.config import load_policy
from dispatcher.planning_worker import PlanningWorker
from dispatcher.store import report_queries
from dispatcher.store.base import InvalidCursor
from dispatcher.store.reports_base import FollowupSheet
from dispatcher.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    db = tmp_path / "reports.db"
    opened = await SqliteStore.open(db)
    fill_small_directory(db)
    conn = sqlite3.connect(db)
    with conn:
        # p02 serves g-a beside p01; g-d (东村二组) has nobody.
        conn.execute("INSERT INTO grid_members VALUES ('g-a', 'p02')")
        conn.execute("INSERT INTO grids VALUES ('g-d', ?, '二组')", (VILLAGE_A1a,))
        conn.execute(
            "INSERT INTO households VALUES ('h5', 'g-d', ?, '东村二组5号')", (VILLAGE_A1a,)
        )
        conn.execute(
            "INSERT INTO persons (id, name, phone, household_id, village_code) "
            "VALUES ('p09', '人p09', '+8613800000009', 'h5', ?)",
            (VILLAGE_A1a,),
        )
    conn.close()
    yield opened
    await opened.close()


async def _warning(store: SqliteStore) -> tuple[str, int]:
    warning = make_warning((CITY,))
    await store.create_warning(warning, idempotency=None, now=time.time())
    policy = load_policy(ROOT / "config" / "policy.toml")
    planner = PlanningWorker(store, lambda: policy)
    await planner.start()
    planner.enqueue(warning.id)
    await planner.wait_idle()
    await planner.stop()
    conn = sqlite3.connect(store.path)
    (seq,) = conn.execute("SELECT seq FROM warnings WHERE id = ?", (warning.id,)).fetchone()
    conn.close()
    return warning.id, int(seq)


def _reach(db: Path, seq: int, kind: str, target: str, village: str, *, in_time: bool) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO reached VALUES (?, ?, ?, ?, ?, ?, 'test', NULL)",
            (seq, kind, target, village, time.time(), int(in_time)),
        )
    conn.close()


def _shape(
    sheets: list[FollowupSheet],
) -> list[tuple[str, str | None, list[tuple[str, list[str]]]]]:
    return [
        (
            s.village_code,
            s.grid_member.id if s.grid_member else None,
            [(g.id, [h.id for h in g.households]) for g in s.grids],
        )
        for s in sheets
    ]


async def test_sheets_by_grid_member(store: SqliteStore) -> None:
    warning_id, seq = await _warning(store)
    _reach(store.path, seq, "household", "h2", VILLAGE_A1a, in_time=True)
    _reach(store.path, seq, "household", "h1", VILLAGE_A1a, in_time=False)
    _reach(store.path, seq, "person", "p01", VILLAGE_A1a, in_time=False)
    _reach(store.path, seq, "grid_member", "p06", VILLAGE_A1b, in_time=True)

    page = await store.followup(warning_id, limit=100)
    assert page is not None and page.next is None
    assert _shape(page.sheets) == [
        (VILLAGE_A1a, "p01", [("g-a", ["h1"])]),
        (VILLAGE_A1a, "p02", [("g-a", ["h1"])]),
        (VILLAGE_A1a, None, [("g-d", ["h5"])]),
        (VILLAGE_A1b, "p06", [("g-b", ["h3"])]),
        (VILLAGE_B1a, "p07", [("g-c", ["h4"])]),
    ]
    assert page.households == 4  # h1 once, on both its grid members' sheets
    first = page.sheets[0]
    assert (first.village_name, first.grids[0].name) == ("东村", "一组")
    h1 = first.grids[0].households[0]
    assert h1.reached_late
    assert [(p.id, p.phone, p.reached_late, p.vulnerable) for p in h1.persons] == [
        ("p01", "+8613800000001", True, True),
        ("p02", "+8613800000002", False, False),
        ("p03", None, False, True),
    ]
    assert page.sheets[3].grid_member is not None and page.sheets[3].grid_member.acknowledged
    assert page.sheets[0].grid_member is not None
    assert not page.sheets[0].grid_member.acknowledged

    # An area: one county's villages only.
    in_a = await store.followup(warning_id, area=COUNTY_A, limit=100)
    assert in_a is not None
    assert {s.village_code for s in in_a.sheets} == {VILLAGE_A1a, VILLAGE_A1b}


async def test_pages_hold_whole_villages(store: SqliteStore) -> None:
    warning_id, _ = await _warning(store)
    villages: list[list[str]] = []
    after = None
    while True:
        page = await store.followup(warning_id, after=after, limit=1)
        assert page is not None
        villages.append(sorted({s.village_code for s in page.sheets}))
        after = page.next
        if after is None:
            break
    # 东村 has three households: larger than the page, it is given whole.
    assert villages == [[VILLAGE_A1a], [VILLAGE_A1b], [VILLAGE_B1a]]
    first = await store.followup(warning_id, limit=1)
    assert first is not None and first.households == 3
    both = await store.followup(warning_id, limit=4)
    assert both is not None and both.next == VILLAGE_A1b
    assert {s.village_code for s in both.sheets} == {VILLAGE_A1a, VILLAGE_A1b}
    with pytest.raises(InvalidCursor):
        await store.followup(warning_id, after="nope", limit=1)
    assert await store.followup("no-such-warning", limit=1) is None


def test_query_plans_use_indexes(tmp_path: Path) -> None:
    db = tmp_path / "plans.db"
    import asyncio

    async def make() -> None:
        opened = await SqliteStore.open(db)
        await opened.close()

    asyncio.run(make())
    fill_small_directory(db)
    conn = sqlite3.connect(db)
    conn.execute("ANALYZE")
    statements = [
        (
            report_queries.FOLLOWUP_HOUSEHOLDS.format(
                village="> :after", area=report_queries._AREA
            ),
            {"seq": 1, "after": "", "area": CITY, "limit": 10},
        ),
        (report_queries._GRID_MEMBERS.format(marks="?,?"), (1, "g-a", "g-b")),
        (report_queries._PERSONS.format(marks="?,?"), (1, "h1", "h2")),
        (report_queries._DEVICE_DELIVERIES, {"seq": 1}),
        (report_queries._PEOPLE_BY_CHANNEL, {"seq": 1}),
        (report_queries._EVENTS, ("spk-a1a", 1, 0)),
        (report_queries._DEVICES.format(marks=":d0"), {"d0": "spk-a1a", "silent_before": 0}),
    ]
    for sql, params in statements:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        assert not [step for step in plan if step.startswith("SCAN")], (sql, plan)
    conn.close()

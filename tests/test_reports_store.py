"""The store's reads for the follow-up list on the small directory: households grouped into
grid members' sheets (a grid with two members on both sheets, a grid without one on a sheet of
its own), reached households left out and late ones marked, pages of whole villages, on SQLite
and on PostgreSQL; and SQLite's query plans (every read through an index, never a scan)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from small_directory import (
    CITY,
    COUNTY_A,
    TOWN_A1,
    VILLAGE_A1a,
    VILLAGE_A1b,
    VILLAGE_B1a,
    fill_small_directory,
    make_warning,
)
from stores import StoreTarget

from dispatcher.config import load_policy
from dispatcher.planning_worker import PlanningWorker
from dispatcher.store import report_queries
from dispatcher.store.base import DeviceStatusRecord, InvalidCursor
from dispatcher.store.reports_base import FollowupSheet
from dispatcher.store.sql_store import SqlStore
from dispatcher.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def store(store_target: StoreTarget) -> AsyncIterator[SqlStore]:
    opened = await store_target.open()
    fill_small_directory(store_target)
    conn = store_target.connect()
    try:
        conn.execute("BEGIN IMMEDIATE")
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
        conn.execute("COMMIT")
    finally:
        conn.close()
    yield opened
    await opened.close()


async def _warning(store: SqlStore, target: StoreTarget) -> tuple[str, int]:
    warning = make_warning((CITY,))
    await store.create_warning(warning, idempotency=None, now=time.time())
    policy = load_policy(ROOT / "config" / "policy.toml")
    planner = PlanningWorker(store, lambda: policy)
    await planner.start()
    planner.enqueue(warning.id)
    await planner.wait_idle()
    await planner.stop()
    conn = target.connect()
    try:
        (seq,) = conn.execute("SELECT seq FROM warnings WHERE id = ?", (warning.id,)).fetchone()
    finally:
        conn.close()
    return warning.id, int(seq)


def _reach(
    db: StoreTarget, seq: int, kind: str, target: str, village: str, *, in_time: bool
) -> None:
    conn = db.connect()
    try:
        conn.execute(
            "INSERT INTO reached VALUES (?, ?, ?, ?, ?, ?, 'test', NULL)",
            (seq, kind, target, village, time.time(), int(in_time)),
        )
    finally:
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


async def test_sheets_by_grid_member(store: SqlStore, store_target: StoreTarget) -> None:
    warning_id, seq = await _warning(store, store_target)
    _reach(store_target, seq, "household", "h2", VILLAGE_A1a, in_time=True)
    _reach(store_target, seq, "household", "h1", VILLAGE_A1a, in_time=False)
    _reach(store_target, seq, "person", "p01", VILLAGE_A1a, in_time=False)
    _reach(store_target, seq, "grid_member", "p06", VILLAGE_A1b, in_time=True)

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


async def test_pages_hold_whole_villages(store: SqlStore, store_target: StoreTarget) -> None:
    warning_id, _ = await _warning(store, store_target)
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


def _set_delivery(db: StoreTarget, seq: int, target: str, channel: str, state: str, n: int) -> int:
    """Put the warning's delivery to ``target`` on ``channel`` in ``state`` after ``n`` sends
    (as the engine leaves it); its id."""
    conn = db.connect()
    try:
        (delivery_id,) = conn.execute(
            "UPDATE deliveries SET state = ?, attempts = ? WHERE id IN (SELECT d.id "
            "FROM delivery_ranges r JOIN deliveries d ON d.id BETWEEN r.first_id AND r.last_id "
            "WHERE r.warning_seq = ? AND d.target_id = ? AND d.channel = ?) RETURNING id",
            (state, n, seq, target, channel),
        ).fetchone()
    finally:
        conn.close()
    return int(delivery_id)


async def test_what_a_test_report_is_made_of(store: SqlStore, store_target: StoreTarget) -> None:
    warning_id, seq = await _warning(store, store_target)
    now = time.time()
    db = store_target
    # Devices: one acknowledged, one that never answered its two sends (the log says why),
    # one refused, one sent and waiting, two never sent.
    _set_delivery(db, seq, "spk-a1a", "speaker", "acknowledged", 1)
    no_ack = _set_delivery(db, seq, "spk-a1b", "speaker", "unacknowledged", 2)
    _set_delivery(db, seq, "spk-b1a", "speaker", "failed", 1)
    _set_delivery(db, seq, "tx-a", "transmitter", "sent", 1)
    conn = db.connect()
    try:
        conn.executemany(
            "INSERT INTO delivery_events (at, warning_id, delivery_id, state, attempt, reason, "
            "target_id, channel, area_code) VALUES (?, ?, ?, ?, ?, ?, 'spk-a1b', 'speaker', ?)",
            [
                (now - 30, warning_id, no_ack, "sent", 2, "", VILLAGE_A1b),
                (now - 20, warning_id, no_ack, "unacknowledged", 2, "timeout", VILLAGE_A1b),
            ],
        )
    finally:
        conn.close()
    await store.record_device_status(
        [
            DeviceStatusRecord("loudspeaker", "spk-a1b", True, now - 1000, "{}", now),
            DeviceStatusRecord("loudspeaker", "spk-b1a", False, now - 10, "{}", now),
        ]
    )
    # People: p01 acknowledged by SMS; p05's and p06's SMS sent once and twice (both
    # waiting); p07's stopped after a send (unacknowledged); every other one never sent.
    _set_delivery(db, seq, "p01", "sms", "acknowledged", 1)
    _reach(db, seq, "person", "p01", VILLAGE_A1a, in_time=True)
    _set_delivery(db, seq, "p05", "sms", "sent", 1)
    _set_delivery(db, seq, "p06", "sms", "sent", 2)
    _set_delivery(db, seq, "p07", "sms", "cancelled", 1)

    data = await store.test_report_data(warning_id, now=now, heartbeat_timeout=300)
    assert data is not None
    people = dict(
        _read(
            db,
            "SELECT d.channel, count(*) FROM delivery_ranges r JOIN deliveries d "
            "ON d.id BETWEEN r.first_id AND r.last_id WHERE r.warning_seq = ? "
            "AND d.audience NOT IN ('device', 'visit') GROUP BY d.channel",
            (seq,),
        )
    )
    assert data.people_by_channel == {
        "sms": {
            "acknowledged": 1,
            "waiting": 2,
            "unacknowledged": 1,
            "not_sent": people["sms"] - 4,
        },
        "voice": {"not_sent": people["voice"]},
    }
    assert (data.people_acknowledged, data.devices_targeted, data.devices_acknowledged) == (1, 6, 1)
    [(targeted,)] = _read(
        db,
        "SELECT count(DISTINCT d.target_id) FROM delivery_ranges r JOIN deliveries d "
        "ON d.id BETWEEN r.first_id AND r.last_id WHERE r.warning_seq = ? "
        "AND d.audience NOT IN ('device', 'visit')",
        (seq,),
    )
    assert data.people_targeted == targeted > 4
    assert data.delivery_states == dict(
        _read(db, "SELECT state, n FROM delivery_state_counts WHERE warning_seq = ?", (seq,))
    )
    silent = [
        (d.device_id, d.area_code, d.outcome.value, d.attempts, d.device_state.value)
        for d in data.silent
    ]
    assert silent == [  # by area, then id
        ("tx-a", COUNTY_A, "waiting", 1, "unknown"),
        ("mdm-a1", TOWN_A1, "not_sent", 0, "unknown"),
        ("tx-a1", TOWN_A1, "not_sent", 0, "unknown"),
        ("spk-a1b", VILLAGE_A1b, "no_ack", 2, "silent"),
        ("spk-b1a", VILLAGE_B1a, "failed", 1, "offline"),
    ]
    quiet = data.silent[3]
    assert (quiet.reason, quiet.last_event, quiet.last_event_at) == (
        "timeout",
        "unacknowledged",
        now - 20,
    )
    assert (quiet.area_name, quiet.last_seen, quiet.address) == ("西村", now - 1000, "spk-a1b")
    assert await store.test_report_data("no-such-warning", now=now, heartbeat_timeout=1) is None


def _read(db: StoreTarget, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    conn = db.connect()
    try:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


def test_query_plans_use_indexes(tmp_path: Path) -> None:
    """On SQLite (the plans are SQLite's)."""
    db = tmp_path / "plans.db"

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
                village="> :after", area=report_queries._AREA, limit=report_queries._LIMIT
            ),
            {"seq": 1, "after": "", "area": CITY, "limit": 10},
        ),
        (report_queries._GRID_MEMBERS.format(marks="?,?"), (1, "g-a", "g-b")),
        (report_queries._PERSONS.format(marks="?2,?3"), (1, "h1", "h2")),
        (report_queries._DEVICE_DELIVERIES, {"seq": 1}),
        (report_queries._PEOPLE_BY_CHANNEL, {"seq": 1}),
        (report_queries._EVENTS, ("spk-a1a", 1, 0)),
        (report_queries._DEVICES.format(marks=":d0"), {"d0": "spk-a1a", "silent_before": 0}),
    ]
    for sql, params in statements:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        assert not [step for step in plan if step.startswith("SCAN")], (sql, plan)
    conn.close()

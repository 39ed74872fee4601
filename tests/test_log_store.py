"""The delivery log's store queries (dispatcher/store/log_queries.py) against a reference filter
written here over every row: each filter alone and combined, pages both ways without gaps or
duplicates, time windows with events stamped out of order, on SQLite and on PostgreSQL; and, on
SQLite, query plans that walk an index instead of scanning or sorting the log."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from small_directory import (
    CITY,
    COUNTY_A,
    COUNTY_B,
    TOWN_A1,
    Target,
    VILLAGE_A1a,
    VILLAGE_A1b,
    VILLAGE_B1a,
    fill_small_directory,
    make_warning,
    open_db,
)
from stores import StoreTarget

from dispatcher.domain import Channel, Level
from dispatcher.log_query import TIME_SLACK, LogEvent, LogFilter, LogFilterError
from dispatcher.store.connections import Db, DbCursor
from dispatcher.store.log_queries import page_statement, read_log
from dispatcher.store.sql_store import SqlStore

T0 = 1_780_000_000.0  # 2026-05-28, well away from now: nothing here depends on the clock

#: Tests about SQLite itself (its query plans, its virtual machine's steps).
sqlite_only = pytest.mark.parametrize("store_kind", ["sqlite"])


@dataclass(frozen=True)
class EventRow:
    """A delivery event as the engine writes it."""

    at: float
    warning_id: str
    state: str
    delivery_id: int | None = None
    attempt: int = 0
    adapter: str = ""
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    target_id: str | None = None
    channel: str | None = None
    area_code: str | None = None


def insert_events(target: Target, rows: Sequence[EventRow]) -> list[int]:
    """Append events straight into the store's database (a StoreTarget, or a SQLite file) as
    the engine would: in one write transaction, holding the writer lock; their ids in order."""
    conn = open_db(target)
    try:
        ids = []
        conn.execute("BEGIN IMMEDIATE")
        for r in rows:
            (event_id,) = conn.execute(
                "INSERT INTO delivery_events (at, warning_id, delivery_id, state, attempt, "
                "adapter, reason, detail, target_id, channel, area_code) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (
                    r.at,
                    r.warning_id,
                    r.delivery_id,
                    r.state,
                    r.attempt,
                    r.adapter,
                    r.reason,
                    json.dumps(r.detail, ensure_ascii=False),
                    r.target_id,
                    r.channel,
                    r.area_code,
                ),
            ).fetchone()
            ids.append(int(event_id))
        conn.execute("COMMIT")
        return ids
    finally:
        conn.close()


class Recording:
    """A connection that records each statement run through it, with its parameters."""

    def __init__(self, conn: Db) -> None:
        self.conn = conn
        self.statements: list[tuple[str, Any]] = []

    def execute(self, sql: str, parameters: Any = (), /) -> DbCursor:
        self.statements.append((sql, parameters))
        return self.conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> DbCursor:
        raise AssertionError("a read runs no executemany")

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def close(self) -> None:
        self.conn.close()

    def pages_read(self) -> list[tuple[str, Any]]:
        return [(sql, p) for sql, p in self.statements if sql.startswith("SELECT e.id")]


# -- a small log over the small directory -----------------------------------------------------

RED_A, RED_CITY, ORANGE_B, BLUE_A = "w-red-a", "w-red-city", "w-orange-b", "w-blue-a"
LEVELS = {RED_A: "red", RED_CITY: "red", ORANGE_B: "orange", BLUE_A: "blue"}
#: Targets: (id, channel, area where the target is).
TARGETS = [
    ("p01", "sms", VILLAGE_A1a),
    ("p01", "voice", VILLAGE_A1a),
    ("p02", "sms", VILLAGE_A1a),
    ("p05", "voice", VILLAGE_A1b),
    ("p06", "sms", VILLAGE_A1b),
    ("p07", "sms", VILLAGE_B1a),
    ("spk-a1a", "speaker", VILLAGE_A1a),
    ("spk-b1a", "speaker", VILLAGE_B1a),
    ("tx-a1", "transmitter", TOWN_A1),
    ("tx-a", "transmitter", COUNTY_A),
    ("mdm-a1", "modem", TOWN_A1),
]
STATES = ["sent", "delivered", "acknowledged", "retry_wait", "failed", "unacknowledged", "skipped"]


def synthetic_log(n: int, seed: int = 11) -> list[EventRow]:
    """``n`` events over the four warnings, stamped in order with some jitter, a few stamped
    minutes early (within TIME_SLACK), and whole-warning events among them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        warning = rng.choice(list(LEVELS))
        at = T0 + 10 * i + rng.uniform(-20, 20)
        if rng.random() < 0.03:
            at -= 0.8 * TIME_SLACK
        if rng.random() < 0.05:
            rows.append(EventRow(at, warning, rng.choice(["planned", "completed", "cancelled"])))
            continue
        target, channel, area = rng.choice(TARGETS)
        rows.append(
            EventRow(
                at,
                warning,
                rng.choice(STATES),
                delivery_id=rng.randrange(1, 10_000),
                attempt=rng.randrange(0, 4),
                adapter=rng.choice(["speakers", "sms", "modems"]),
                reason=rng.choice(["", "timeout", "busy", "收到"]),
                detail={"n": i},
                target_id=target,
                channel=channel,
                area_code=area,
            )
        )
    return rows


async def open_log(target: StoreTarget, *, node: str = "test") -> SqlStore:
    opened = await target.open(node=node)
    fill_small_directory(target)
    areas = {RED_A: (COUNTY_A,), RED_CITY: (CITY,), ORANGE_B: (COUNTY_B,), BLUE_A: (COUNTY_A,)}
    for warning_id, level in LEVELS.items():
        warning = make_warning(areas[warning_id], ident=warning_id, level=Level(level))
        await opened.create_warning(warning, idempotency=None, now=T0 - 100)
    insert_events(target, synthetic_log(700))
    return opened


@pytest.fixture
async def store(store_target: StoreTarget) -> AsyncIterator[SqlStore]:
    opened = await open_log(store_target)
    yield opened
    await opened.close()


def all_rows(target: StoreTarget) -> list[tuple[Any, ...]]:
    conn = target.connect()
    try:
        return [
            tuple(row)
            for row in conn.execute(
                "SELECT id, at, warning_id, state, target_id, channel, area_code "
                "FROM delivery_events ORDER BY id"
            ).fetchall()
        ]
    finally:
        conn.close()


def beneath(target: StoreTarget, area: str) -> set[str]:
    """Area codes beneath ``area`` by walking parent links (not area_closure)."""
    conn = target.connect()
    try:
        parents = dict(conn.execute("SELECT code, parent_code FROM areas").fetchall())
    finally:
        conn.close()
    found = set()
    for code in parents:
        node: str | None = code
        while node is not None:
            if node == area:
                found.add(code)
                break
            node = parents[node]
    return found


def expected_ids(db: StoreTarget, query: LogFilter) -> list[int]:
    """The reference: every event checked against every condition, oldest first."""
    area = beneath(db, query.area) if query.area is not None else None
    ids = []
    for event_id, at, warning, state, target, channel, area_code in all_rows(db):
        checks = [
            query.warning is None or warning == query.warning,
            query.level is None or LEVELS.get(warning) == query.level.value,
            query.person is None or target == query.person,
            query.device is None or target == query.device,
            query.channel is None or channel == query.channel.value,
            query.state is None or state == query.state,
            query.since is None or at >= query.since,
            query.until is None or at < query.until,
            area is None or area_code in area,
        ]
        if all(checks):
            ids.append(event_id)
    return ids


async def pages(store: SqlStore, query: LogFilter, *, oldest_first: bool, limit: int) -> list[int]:
    """Every page, each asked with the previous page's last id, concatenated."""
    seen: list[int] = []
    cursor: int | None = 0 if oldest_first else None
    while True:
        if oldest_first:
            page = await store.log_events(query, after=cursor, limit=limit)
        else:
            page = await store.log_events(query, before=cursor, limit=limit)
        seen += [e.id for e in page]
        if len(page) < limit:
            return seen
        cursor = page[-1].id


MID = T0 + 3500
FILTERS = [
    LogFilter(),
    LogFilter(warning=RED_A),
    LogFilter(warning="no-such-warning"),
    LogFilter(level=Level.RED),
    LogFilter(level=Level.BLUE),
    LogFilter(person="p01"),
    LogFilter(device="spk-a1a"),
    LogFilter(person="p01", device="p01"),
    LogFilter(person="p01", device="spk-a1a"),
    LogFilter(area=CITY),
    LogFilter(area=COUNTY_A),
    LogFilter(area=TOWN_A1),
    LogFilter(area=VILLAGE_B1a),
    LogFilter(channel=Channel.SMS),
    LogFilter(state="failed"),
    LogFilter(state="cancelled"),
    LogFilter(since=MID),
    LogFilter(until=MID),
    LogFilter(since=MID, until=MID + 1200),
    LogFilter(warning=RED_A, person="p01"),
    LogFilter(warning=RED_A, level=Level.ORANGE),
    LogFilter(warning=RED_A, level=Level.RED, state="acknowledged"),
    LogFilter(level=Level.RED, area=COUNTY_A, channel=Channel.SMS),
    LogFilter(level=Level.RED, since=MID, until=MID + 2000),
    LogFilter(device="tx-a1", level=Level.BLUE, until=MID),
    LogFilter(person="p07", area=COUNTY_A),
    LogFilter(area=TOWN_A1, state="delivered", since=T0 + 1000),
]


def _random_filters(n: int, seed: int = 5) -> list[LogFilter]:
    rng = random.Random(seed)
    choices: dict[str, list[Any]] = {
        "warning": list(LEVELS),
        "level": list(Level),
        "person": ["p01", "p05", "p07"],
        "device": ["spk-a1a", "tx-a"],
        "area": [CITY, COUNTY_A, COUNTY_B, TOWN_A1, VILLAGE_A1b],
        "channel": list(Channel),
        "state": STATES,
        "since": [T0 + 600 * k for k in range(12)],
    }
    filters = []
    for _ in range(n):
        picked = rng.sample(sorted(choices), rng.randrange(1, 4))
        values = {name: rng.choice(choices[name]) for name in picked}
        if "since" in values and rng.random() < 0.5:
            values["until"] = values["since"] + rng.choice([600, 3000])
        filters.append(LogFilter(**values))
    return filters


@pytest.mark.parametrize("query", FILTERS + _random_filters(30), ids=repr)
async def test_every_page_both_ways_matches_the_reference(
    store: SqlStore, store_target: StoreTarget, query: LogFilter
) -> None:
    expected = expected_ids(store_target, query)
    for limit in (7, 1000):
        assert await pages(store, query, oldest_first=True, limit=limit) == expected
        assert await pages(store, query, oldest_first=False, limit=limit) == expected[::-1]


async def test_filters_narrow(store: SqlStore, store_target: StoreTarget) -> None:
    """The fixture's log gives each filter something to leave out, and something to keep."""
    db = store_target
    everything = len(expected_ids(db, LogFilter()))
    for query in FILTERS[1:]:
        assert len(expected_ids(db, query)) < everything, query
    assert expected_ids(db, LogFilter(level=Level.BLUE))
    assert expected_ids(db, LogFilter(area=TOWN_A1, state="delivered", since=T0 + 1000))
    # A county's area filter takes in its towns' and villages' events, and nothing else.
    county = expected_ids(db, LogFilter(area=COUNTY_A))
    exactly = [_at_area(db, code) for code in (COUNTY_A, TOWN_A1, VILLAGE_A1a, VILLAGE_A1b)]
    assert sorted(county) == sorted(i for ids in exactly for i in ids)
    assert all(exactly)


def _at_area(db: StoreTarget, code: str) -> list[int]:
    return [row[0] for row in all_rows(db) if row[6] == code]


async def test_an_event_as_read(store: SqlStore, store_target: StoreTarget) -> None:
    [event_id] = insert_events(
        store_target,
        [
            EventRow(
                T0 + 99_999,
                ORANGE_B,
                "acknowledged",
                delivery_id=42,
                attempt=2,
                adapter="sms",
                reason="收到",
                detail={"from": "+8613800000007", "reply": "1"},
                target_id="p07",
                channel="sms",
                area_code=VILLAGE_B1a,
            )
        ],
    )
    [event] = await store.log_events(LogFilter(person="p07"), limit=1)
    assert event == LogEvent(
        id=event_id,
        at=T0 + 99_999,
        warning_id=ORANGE_B,
        delivery_id=42,
        state="acknowledged",
        attempt=2,
        adapter="sms",
        reason="收到",
        detail={"from": "+8613800000007", "reply": "1"},
        target_id="p07",
        channel="sms",
        area_code=VILLAGE_B1a,
        level="orange",
    )
    assert event.as_json()["at"] == datetime.fromtimestamp(T0 + 99_999, UTC).isoformat(
        timespec="microseconds"
    )
    assert event.as_json()["at"].endswith(".000000+00:00")
    assert await store.log_last_id() == event_id
    # The whole-warning events written when the warnings were stored.
    received = await store.log_events(LogFilter(state="received"), after=0, limit=10)
    assert [(e.warning_id, e.delivery_id, e.target_id, e.level) for e in received] == [
        (w, None, None, level) for w, level in LEVELS.items()
    ]


async def test_cursors_bound_a_window(store: SqlStore, store_target: StoreTarget) -> None:
    ids = expected_ids(store_target, LogFilter(channel=Channel.SPEAKER))
    low, high = ids[3], ids[-4]
    window = await store.log_events(
        LogFilter(channel=Channel.SPEAKER), after=low, before=high, limit=1000
    )
    assert [e.id for e in window] == ids[4:-4]


async def test_the_level_merge_stops_at_the_warnings_that_can_reach_the_page(
    store: SqlStore, store_target: StoreTarget
) -> None:
    """A page of one level reads the newest warning's events and no more once the page is
    full and the other warnings' events are all older."""
    latest = insert_events(
        store_target,
        [EventRow(T0 + 50_000 + i, RED_CITY, "sent", target_id="p01") for i in range(5)],
    )
    hints = store._planner_hints
    conn = Recording(store_target.connect())
    try:
        page = read_log(conn, LogFilter(level=Level.RED), limit=5, hints=hints)
        assert [e.id for e in page] == latest[::-1]
        assert len(conn.pages_read()) == 1, conn.pages_read()
        conn.statements.clear()
        page = read_log(conn, LogFilter(level=Level.RED), limit=8, hints=hints)
        assert [e.id for e in page][:5] == latest[::-1]
        assert {e.warning_id for e in page[5:]} <= {RED_A, RED_CITY}
        assert len(conn.pages_read()) == 2
    finally:
        conn.close()


async def test_time_windows_use_id_bounds_and_keep_events_stamped_out_of_order(
    store: SqlStore, store_target: StoreTarget
) -> None:
    last_at = max(row[1] for row in all_rows(store_target))
    # An acknowledgement written after every event so far, stamped minutes before the last of
    # them, then more events: it lies well inside the log and inside the window.
    early = last_at - 0.8 * TIME_SLACK
    [late_ack] = insert_events(
        store_target, [EventRow(early, RED_A, "acknowledged", target_id="p02", channel="sms")]
    )
    insert_events(
        store_target, [EventRow(last_at + 10 * (i + 1), RED_A, "sent") for i in range(60)]
    )
    window = LogFilter(since=early - 5, until=early + 5)
    for cursor in ({"after": 0}, {}):
        found = [e.id for e in await store.log_events(window, limit=1000, **cursor)]
        assert late_ack in found
        assert sorted(found) == expected_ids(store_target, window)
    # A window's id bounds leave out the log's start and end: the page statement's first two
    # parameters (no person, device or warning: the primary key's range).
    conn = Recording(store_target.connect())
    try:
        read_log(
            conn,
            LogFilter(since=T0 + 3000, until=T0 + 4000),
            limit=10,
            hints=store._planner_hints,
        )
    finally:
        conn.close()
    [(_, params)] = conn.pages_read()
    low, high = params[0], params[1]
    assert 100 < low < high < 600


def test_filter_parameters_round_trip_and_refuse_bad_values() -> None:
    query = LogFilter.from_params(
        {
            "warning": RED_A,
            "area": "611002",
            "level": "red",
            "person": "p01",
            "channel": "sms",
            "state": "failed",
            "since": "2026-07-12T08:00:00+08:00",
            "until": "2026-07-12t01:00:00.5z",
            "ignored": "x",
        }
    )
    assert query.area == "611002000000"
    assert query.since == time.mktime((2026, 7, 12, 0, 0, 0, 0, 0, 0)) - time.timezone
    assert query.until == query.since + 3600.5
    assert LogFilter.from_params(query.to_params()) == query
    bad = {
        "warning": "",
        "person": "x" * 201,
        "device": "a\nb",
        "area": "61100",
        "level": "purple",
        "channel": "fax",
        "state": "lost",
        "since": "2026-07-12T08:00:00",
        "until": "yesterday",
    }
    for name, value in bad.items():
        with pytest.raises(LogFilterError) as caught:
            LogFilter.from_params({name: value})
        assert caught.value.parameter == name
    with pytest.raises(LogFilterError) as caught:
        LogFilter.from_params({"since": "2026-07-12T08:00:00Z", "until": "2026-07-12T07:00:00Z"})
    assert caught.value.parameter == "until"


# -- query plans ---------------------------------------------------------------------------------

EVERY_NARROWING = LogFilter(
    area=COUNTY_A, channel=Channel.SMS, state="failed", since=T0, until=T0 + 10
)


def plan(db: Path, sql: str, params: Sequence[Any]) -> list[str]:
    """SQLite's plan of ``sql``."""
    conn = sqlite3.connect(db)
    try:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    finally:
        conn.close()


def assert_walks_index(steps: list[str], index: str) -> None:
    """The log is reached through ``index`` (in id order: no sort), every other table by key;
    the only scan allowed is of the (few) warnings, for a level."""
    assert any(s.startswith("SEARCH e USING") and index in s for s in steps), steps
    for step in steps:
        assert "TEMP B-TREE" not in step, steps
        assert "AUTOMATIC" not in step, steps
        if step.startswith("SCAN"):
            assert step == "SCAN warnings", steps
    assert any("SEARCH w USING INDEX sqlite_autoindex_warnings" in s for s in steps), steps


@pytest.mark.parametrize("ascending", [False, True])
@pytest.mark.parametrize(
    ("query", "key", "index"),
    [
        (LogFilter(person="p01"), ("target", "p01"), "INDEX delivery_events_target"),
        (LogFilter(device="tx-a"), ("target", "tx-a"), "INDEX delivery_events_target"),
        (
            replace(EVERY_NARROWING, person="p01", warning=RED_A, level=Level.RED),
            ("target", "p01"),
            "INDEX delivery_events_target (target_id=? AND id>? AND id<?)",
        ),
        (LogFilter(warning=RED_A), ("warning", RED_A), "INDEX delivery_events_warning"),
        (
            replace(EVERY_NARROWING, warning=RED_A),
            ("warning", RED_A),
            "INDEX delivery_events_warning (warning_id=? AND id>? AND id<?)",
        ),
        (LogFilter(), None, "INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
        (EVERY_NARROWING, None, "INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
    ],
    ids=["person", "device", "person+all", "warning", "warning+all", "none", "no key+all"],
)
@sqlite_only
async def test_query_plans_walk_an_index(
    store: SqlStore,
    store_target: StoreTarget,
    query: LogFilter,
    key: Any,
    index: str,
    ascending: bool,
) -> None:
    sql, params = page_statement(
        query, key=key, lo=5, hi=500, ascending=ascending, limit=100, hints=True
    )
    assert_walks_index(plan(store_target.path, sql, params), index)


@sqlite_only
async def test_the_level_merge_and_the_time_search_seek(
    store: SqlStore, store_target: StoreTarget
) -> None:
    conn = sqlite3.connect(store_target.path)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        read_log(conn, LogFilter(level=Level.RED, since=T0 + 100), limit=10, hints=True)
    finally:
        conn.close()
    seeks = {s.split(" WHERE ")[0] + " WHERE …" for s in statements if "LIMIT 1" in s}
    assert seeks, statements
    conn = sqlite3.connect(store_target.path)
    try:
        for statement in statements:
            if not statement.startswith("SELECT") or "FROM warnings" in statement:
                continue
            steps = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {statement}")]
            for step in steps:
                assert not step.startswith("SCAN"), (statement, steps)
                assert "TEMP B-TREE" not in step, (statement, steps)
    finally:
        conn.close()


@sqlite_only
async def test_a_rare_level_among_many_events_reads_little(
    store: SqlStore, store_target: StoreTarget
) -> None:
    """100,000 red events after a few hundred blue ones: the newest blue page, a person's page
    and the last 20 seconds' page each read a few hundred rows, not the log (SQLite's VM
    steps, counted in thousands)."""
    bulk = [
        EventRow(T0 + 10_000 + i * 0.1, RED_A, "sent", target_id=f"x{i % 997}", channel="sms")
        for i in range(100_000)
    ]
    insert_events(store_target, bulk)
    conn = sqlite3.connect(store_target.path)
    try:

        def measured(query: LogFilter) -> tuple[int, list[LogEvent]]:
            steps = [0]

            def tick() -> int:
                steps[0] += 1
                return 0

            conn.set_progress_handler(tick, 1000)
            try:
                events = read_log(conn, query, limit=100, hints=True)
            finally:
                conn.set_progress_handler(None, 0)
            return steps[0], events

        scan_all, _ = measured(LogFilter(state="no-such-state"))
        blue, events = measured(LogFilter(level=Level.BLUE))
        assert events and {e.level for e in events} == {"blue"}
        person, events = measured(LogFilter(person="p05"))
        assert events and {e.target_id for e in events} == {"p05"}
        recent, events = measured(LogFilter(since=T0 + 10_000 + 9_980))
        assert len(events) == 100
        assert scan_all > 500, scan_all  # the whole log: hundreds of thousands of steps
        for name, steps in {"blue": blue, "person": person, "recent": recent}.items():
            assert steps < scan_all / 50, (name, steps, scan_all)
    finally:
        conn.close()

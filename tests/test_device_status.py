"""Devices' connection state: the book that coalesces adapters' statuses and writes them in
batches, the store that keeps the newest per device, and the listing that joins the directory
(states, silent devices, filters, pages, counts, unregistered addresses).

The store is a real database, SQLite and PostgreSQL, holding the small directory
(tests/small_directory.py): six devices whose adapter is their kind's name and whose address is
their id. The query plans checked are SQLite's."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from engine.harness import make_engine, sim
from small_directory import (
    COUNTY_A,
    COUNTY_B,
    TOWN_A1,
    VILLAGE_A1a,
    VILLAGE_A1b,
    VILLAGE_B1a,
    fill_small_directory,
)
from stores import StoreTarget
from waiting import wait_until

from dispatcher.adapter import DeviceStatus
from dispatcher.engine.device_status import MAX_DETAIL_BYTES, DeviceStatusBook
from dispatcher.store.base import (
    DevicePage,
    DeviceQuery,
    DeviceRow,
    DeviceState,
    DeviceStatusRecord,
    InvalidCursor,
)
from dispatcher.store.connections import StoreUnavailable
from dispatcher.store.device_queries import encode_cursor, read_devices
from dispatcher.store.sql_store import SqlStore

NOW = 1_750_000_000.0
TIMEOUT = 300.0
ALL_DEVICES = ["mdm-a1", "spk-a1a", "spk-a1b", "spk-b1a", "tx-a", "tx-a1"]


@pytest.fixture
async def store(store_target: StoreTarget) -> AsyncIterator[SqlStore]:
    opened = await store_target.open()
    fill_small_directory(store_target)
    yield opened
    await opened.close()


def status(
    adapter: str,
    address: str,
    *,
    online: bool = True,
    seen: float = NOW,
    detail: dict[str, object] | None = None,
) -> DeviceStatusRecord:
    return DeviceStatusRecord(
        adapter=adapter,
        address=address,
        online=online,
        last_seen=seen,
        detail_json=json.dumps(detail or {}),
        updated_at=NOW,
    )


def stored(db: StoreTarget) -> dict[tuple[str, str], tuple[int, float, str]]:
    conn = db.connect()
    try:
        rows = conn.execute("SELECT adapter, address, online, last_seen, detail FROM device_status")
        return {(a, addr): (online, seen, detail) for a, addr, online, seen, detail in rows}
    finally:
        conn.close()


def sql(db: StoreTarget, statement: str, params: tuple[object, ...] = ()) -> None:
    conn = db.connect()  # autocommit
    try:
        conn.execute(statement, params)
    finally:
        conn.close()


async def page(
    store: SqlStore,
    *,
    after: str | None = None,
    limit: int = 100,
    now: float = NOW,
    **query: object,
) -> DevicePage:
    return await store.list_devices(
        DeviceQuery(**query),  # type: ignore[arg-type]
        now=now,
        heartbeat_timeout=TIMEOUT,
        after=after,
        limit=limit,
    )


def by_id(rows: Sequence[DeviceRow]) -> dict[str | None, DeviceRow]:
    return {row.id: row for row in rows}


async def fleet(store: SqlStore) -> None:
    """One device in each state: spk-a1a online, spk-a1b silent (online, but last heard
    from longer ago than the timeout), spk-b1a offline (long ago: still offline, not silent),
    tx-a1 online just inside the timeout; tx-a and mdm-a1 never heard from."""
    await store.record_device_status(
        [
            status("loudspeaker", "spk-a1a", seen=NOW - 5, detail={"firmware": "2.1"}),
            status("loudspeaker", "spk-a1b", seen=NOW - TIMEOUT - 1),
            status("loudspeaker", "spk-b1a", online=False, seen=NOW - 10 * TIMEOUT),
            status("transmitter", "tx-a1", seen=NOW - TIMEOUT + 1),
        ]
    )


# -- the store ---------------------------------------------------------------------------------


async def test_an_older_status_never_replaces_a_newer_one(
    store: SqlStore, store_target: StoreTarget
) -> None:
    key = ("loudspeaker", "spk-a1a")
    assert await store.record_device_status([status(*key, seen=NOW)]) == 1
    # A late or replayed "offline" from before the stored heartbeat changes nothing.
    assert await store.record_device_status([status(*key, online=False, seen=NOW - 60)]) == 0
    assert stored(store_target)[key][:2] == (1, NOW)
    # A newer one does, whatever it says.
    written = await store.record_device_status([status(*key, online=False, seen=NOW + 60)])
    assert written == 1
    assert stored(store_target)[key][:2] == (0, NOW + 60)
    # A batch counts the rows it wrote: a newer status and two new devices', then two older
    # ones and a newer.
    batch = [
        status(*key, seen=NOW + 61),
        status("loudspeaker", "spk-a1b", seen=NOW),
        status("transmitter", "tx-a", seen=NOW),
    ]
    assert await store.record_device_status(batch) == 3
    older = [status(*key, seen=NOW), status("loudspeaker", "spk-a1b", seen=NOW - 1)]
    assert await store.record_device_status([*older, status(*key, seen=NOW + 62)]) == 1
    assert stored(store_target)[key][1] == NOW + 62


async def test_states_joined_from_the_directory(store: SqlStore) -> None:
    await fleet(store)
    listed = await page(store)
    states = {row.id: row.state for row in listed.devices}
    assert states == {
        "mdm-a1": DeviceState.UNKNOWN,
        "spk-a1a": DeviceState.ONLINE,
        "spk-a1b": DeviceState.SILENT,
        "spk-b1a": DeviceState.OFFLINE,
        "tx-a": DeviceState.UNKNOWN,
        "tx-a1": DeviceState.ONLINE,
    }
    assert listed.counts == {"online": 2, "offline": 1, "silent": 1, "unknown": 2}
    rows = by_id(listed.devices)
    assert rows["spk-a1a"].last_seen == NOW - 5
    assert rows["spk-a1a"].detail == {"firmware": "2.1"}
    assert rows["tx-a"].last_seen is None
    assert rows["tx-a"].detail == {}
    # Where it is installed, and every area its broadcast reaches.
    assert rows["tx-a1"].area_code == TOWN_A1
    assert rows["tx-a1"].areas == (VILLAGE_A1a, VILLAGE_A1b)
    assert rows["tx-a1"].kind == "transmitter"


async def test_silent_is_measured_from_the_time_asked(store: SqlStore) -> None:
    await fleet(store)
    # Ten minutes later the speaker heard 5 s before NOW has gone quiet too.
    later = await page(store, now=NOW + 2 * TIMEOUT)
    assert by_id(later.devices)["spk-a1a"].state is DeviceState.SILENT
    # An offline device stays offline, however long ago it was heard from.
    assert by_id(later.devices)["spk-b1a"].state is DeviceState.OFFLINE


async def test_a_status_matches_by_adapter_and_the_address_the_engine_sends_to(
    store: SqlStore, store_target: StoreTarget
) -> None:
    # spk-a1a is known to its adapter as "mqtt-7"; tx-a has no address (its id is used).
    sql(store_target, "UPDATE devices SET address = 'mqtt-7' WHERE id = 'spk-a1a'")
    sql(store_target, "UPDATE devices SET address = '' WHERE id = 'tx-a'")
    await store.record_device_status(
        [
            status("loudspeaker", "mqtt-7"),
            status("transmitter", "tx-a"),
            # Its id under the right adapter, or its address under another adapter: not it.
            status("loudspeaker", "spk-a1a", online=False, seen=NOW + 1),
            status("other-broker", "mqtt-7", online=False, seen=NOW + 1),
        ]
    )
    rows = by_id((await page(store)).devices)
    assert rows["spk-a1a"].state is DeviceState.ONLINE
    assert rows["spk-a1a"].address == "mqtt-7"
    assert rows["tx-a"].state is DeviceState.ONLINE
    assert rows["tx-a"].address == "tx-a"
    unregistered = await page(store, unregistered=True)
    assert {(r.adapter, r.address) for r in unregistered.devices} == {
        ("loudspeaker", "spk-a1a"),
        ("other-broker", "mqtt-7"),
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"area": COUNTY_A}, ["mdm-a1", "spk-a1a", "spk-a1b", "tx-a", "tx-a1"]),
        ({"area": COUNTY_B}, ["spk-b1a"]),
        # Installed in the town itself, or in a village below it; not the county's transmitter.
        ({"area": TOWN_A1}, ["mdm-a1", "spk-a1a", "spk-a1b", "tx-a1"]),
        ({"area": VILLAGE_B1a}, ["spk-b1a"]),
        ({"kind": "loudspeaker"}, ["spk-a1a", "spk-a1b", "spk-b1a"]),
        ({"adapter": "transmitter"}, ["tx-a", "tx-a1"]),
        ({"state": DeviceState.UNKNOWN}, ["mdm-a1", "tx-a"]),
        ({"state": DeviceState.SILENT}, ["spk-a1b"]),
        ({"area": COUNTY_A, "kind": "loudspeaker", "state": DeviceState.ONLINE}, ["spk-a1a"]),
        ({"area": COUNTY_B, "kind": "transmitter"}, []),
    ],
)
async def test_filters(store: SqlStore, query: dict[str, object], expected: list[str]) -> None:
    await fleet(store)
    listed = await page(store, **query)
    assert [row.id for row in listed.devices] == expected


async def test_counts_follow_the_filters_but_not_the_state(store: SqlStore) -> None:
    await fleet(store)
    offline_in_a = await page(store, area=COUNTY_A, state=DeviceState.OFFLINE)
    assert offline_in_a.devices == []
    # County A: spk-a1a and tx-a1 online, spk-a1b silent, tx-a and mdm-a1 never heard from.
    assert offline_in_a.counts == {"online": 2, "offline": 0, "silent": 1, "unknown": 2}
    speakers = await page(store, kind="loudspeaker", state=DeviceState.OFFLINE)
    assert [row.id for row in speakers.devices] == ["spk-b1a"]
    assert speakers.counts == {"online": 1, "offline": 1, "silent": 1, "unknown": 0}


@pytest.mark.parametrize("state", [None, DeviceState.UNKNOWN])
async def test_pages_walk_every_device_once_in_id_order(
    store: SqlStore, state: DeviceState | None
) -> None:
    await fleet(store)
    seen: list[str | None] = []
    after = None
    pages = 0
    while True:
        listed = await page(store, after=after, limit=2, state=state)
        pages += 1
        seen += [row.id for row in listed.devices]
        assert len(listed.devices) <= 2
        if listed.next is None:
            break
        after = listed.next
        assert pages < 10
    everything = [row.id for row in (await page(store, state=state)).devices]
    assert seen == everything
    assert seen == (ALL_DEVICES if state is None else ["mdm-a1", "tx-a"])
    assert pages == (3 if state is None else 1)
    with pytest.raises(InvalidCursor):
        await page(store, after="bm90IGEgY3Vyc29y")  # base64, but of no cursor
    # An unregistered page's cursor is not a directory page's.
    unregistered = encode_cursor("loudspeaker", "spk-a1a")
    with pytest.raises(InvalidCursor):
        await page(store, after=unregistered)


async def test_unregistered_addresses_are_listed_apart(store: SqlStore) -> None:
    await fleet(store)
    strays = [
        status("loudspeaker", f"SPK-NEW-{n}", seen=NOW - (TIMEOUT * 2 if n == 3 else 1))
        for n in range(1, 6)
    ] + [status("loudspeaker", "SPK-GONE", online=False)]
    await store.record_device_status(strays)
    listed = await page(store, unregistered=True)
    assert [r.address for r in listed.devices] == [
        "SPK-GONE",
        *(f"SPK-NEW-{n}" for n in range(1, 6)),
    ]
    assert all(r.id is None and r.kind is None and r.area_code is None for r in listed.devices)
    assert listed.counts == {"online": 4, "offline": 1, "silent": 1, "unknown": 0}
    assert by_id(listed.devices).keys() == {None}
    # The directory's listing does not show them, nor count them.
    assert (await page(store)).counts == {"online": 2, "offline": 1, "silent": 1, "unknown": 2}
    # Their state filters and pages too.
    silent = await page(store, unregistered=True, state=DeviceState.SILENT)
    assert [r.address for r in silent.devices] == ["SPK-NEW-3"]
    walked: list[str] = []
    after = None
    for _ in range(10):
        listed = await page(store, unregistered=True, after=after, limit=4)
        walked += [r.address for r in listed.devices]
        if listed.next is None:
            break
        after = listed.next
    assert walked == ["SPK-GONE", *(f"SPK-NEW-{n}" for n in range(1, 6))]
    with pytest.raises(InvalidCursor):
        await page(store, unregistered=True, after="not a cursor!")


async def test_one_device(store: SqlStore) -> None:
    await fleet(store)
    row = await store.get_device("spk-a1b", now=NOW, heartbeat_timeout=TIMEOUT)
    assert row is not None
    assert (row.state, row.area_code, row.areas) == (
        DeviceState.SILENT,
        VILLAGE_A1b,
        (VILLAGE_A1b,),
    )
    assert await store.get_device("nope", now=NOW, heartbeat_timeout=TIMEOUT) is None


def plans(db: Path, query: DeviceQuery) -> list[list[str]]:
    """SQLite's query plan of every SELECT one page of ``query`` runs."""
    conn = sqlite3.connect(db, isolation_level=None)
    statements: list[str] = []
    try:
        conn.set_trace_callback(statements.append)
        read_devices(conn, query, silent_before=NOW - TIMEOUT, after=None, limit=10, hints=True)
        conn.set_trace_callback(None)
        return [
            [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}")]
            for statement in statements
            if statement.lstrip().upper().startswith("SELECT")
        ]
    finally:
        conn.close()


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_statuses_are_found_by_key(store: SqlStore, store_target: StoreTarget) -> None:
    """A directory device's status is one primary-key lookup; an unregistered status is
    checked against the directory through the expression index on (adapter, address), not
    by reading every device of its adapter."""
    await fleet(store)
    for query in (DeviceQuery(), DeviceQuery(area=COUNTY_A, kind="loudspeaker")):
        # The page and the counts (the third statement reads the page's device_areas).
        joined = [
            steps
            for steps in plans(store_target.path, query)
            if any(s == "SCAN d" or s.startswith("SEARCH d ") for s in steps)
        ]
        assert len(joined) == 2
        for steps in joined:
            assert "SEARCH ds USING PRIMARY KEY (adapter=? AND address=?) LEFT-JOIN" in steps
    for steps in plans(store_target.path, DeviceQuery(unregistered=True)):
        assert any("devices_adapter_address (adapter=? AND <expr>=?)" in step for step in steps), (
            steps
        )


# -- the book ---------------------------------------------------------------------------------


class CountingStore:
    """The real store, counting the write calls and the statuses handed to it; it can be told
    to fail the next writes."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.calls = 0
        self.rows = 0
        self.fail = 0

    async def record_device_status(self, statuses: Sequence[DeviceStatusRecord]) -> int:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("lost the connection to the database")
        self.rows += len(statuses)
        return await self.store.record_device_status(statuses)


async def test_the_book_coalesces_heartbeats_into_one_write_per_device(
    store: SqlStore, store_target: StoreTarget
) -> None:
    counting = CountingStore(store)
    book = DeviceStatusBook(counting)
    # A minute of heartbeats: 5,000 from 50 speakers, arriving a little out of order.
    for n in range(5000):
        device = n % 50
        seen = NOW + n // 50 + (0.5 if n % 7 == 0 else 0.0)
        book.record("loudspeaker", DeviceStatus(f"S-{device:02d}", True, seen, {"beat": n}))
    book.record("loudspeaker", DeviceStatus("S-00", False, NOW - 1))  # late: older than kept
    assert book.pending == 50
    assert await book.flush() == 50
    assert (counting.calls, counting.rows) == (1, 50)
    rows = stored(store_target)
    assert len(rows) == 50
    for device in range(50):
        online, seen, detail = rows[("loudspeaker", f"S-{device:02d}")]
        newest = max(
            (NOW + n // 50 + (0.5 if n % 7 == 0 else 0.0), n) for n in range(device, 5000, 50)
        )
        assert (online, seen) == (1, newest[0])
        assert json.loads(detail) == {"beat": newest[1]}
    assert book.pending == 0
    assert await book.flush() == 0
    assert counting.calls == 1  # nothing waiting: no write


async def test_a_running_book_writes_about_every_interval_and_at_stop(
    store: SqlStore, store_target: StoreTarget
) -> None:
    counting = CountingStore(store)
    book = DeviceStatusBook(counting, interval=0.05)
    book.start()
    try:
        book.record("loudspeaker", DeviceStatus("spk-a1a", True, NOW))
        await wait_until(
            lambda: ("loudspeaker", "spk-a1a") in stored(store_target),
            within=5,
            what="the book's write",
        )
    finally:
        await book.stop()
    # Stopped with a long interval pending: stop writes what waits.
    slow = DeviceStatusBook(counting, interval=3600)
    slow.start()
    slow.record("loudspeaker", DeviceStatus("spk-a1b", False, NOW))
    await asyncio.sleep(0.05)  # not a wait for something: a chance for a wrong early write
    assert ("loudspeaker", "spk-a1b") not in stored(store_target)
    await slow.stop()
    assert stored(store_target)[("loudspeaker", "spk-a1b")][0] == 0


async def test_a_failed_write_keeps_the_statuses_and_a_newer_one_wins(
    store: SqlStore, store_target: StoreTarget
) -> None:
    counting = CountingStore(store)
    book = DeviceStatusBook(counting)
    book.record("loudspeaker", DeviceStatus("spk-a1a", True, NOW))
    book.record("loudspeaker", DeviceStatus("spk-a1b", True, NOW))
    counting.fail = 1
    with pytest.raises(StoreUnavailable):
        await book.flush()
    assert book.pending == 2
    # Meanwhile spk-a1a went offline: the failed batch's older status must not replace that.
    book.record("loudspeaker", DeviceStatus("spk-a1a", False, NOW + 1))
    assert await book.flush() == 2
    rows = stored(store_target)
    assert rows[("loudspeaker", "spk-a1a")][:2] == (0, NOW + 1)
    assert rows[("loudspeaker", "spk-a1b")][:2] == (1, NOW)


async def test_a_malformed_status_is_dropped_without_raising(
    store: SqlStore, store_target: StoreTarget
) -> None:
    book = DeviceStatusBook(store)
    book.record("loudspeaker", DeviceStatus("", True, NOW))
    book.record("loudspeaker", DeviceStatus("spk-a1a", True, math.nan))
    book.record("loudspeaker", DeviceStatus("spk-a1a", True, "soon"))  # type: ignore[arg-type]
    book.record("loudspeaker", "online")  # type: ignore[arg-type]
    book.record("loudspeaker", DeviceStatus("spk-\udc80", True, NOW))  # not UTF-8
    book.record("loudspeaker", DeviceStatus("spk-a1a", True, NOW, {"name": "\ud800"}))
    book.record("loudspeaker", DeviceStatus("x" * 129, True, NOW))

    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

        __str__ = __repr__

    book.record("loudspeaker", DeviceStatus("spk-a1a", True, NOW, {"x": Hostile()}))
    book.record("loudspeaker", DeviceStatus("spk-a1b", True, NOW, {"x": "y" * MAX_DETAIL_BYTES}))
    book.record("loudspeaker", DeviceStatus("spk-b1a", True, NOW, {"since": object()}))
    assert book.pending == 2
    await book.flush()
    rows = stored(store_target)
    assert set(rows) == {("loudspeaker", "spk-a1b"), ("loudspeaker", "spk-b1a")}
    assert "left out" in json.loads(rows[("loudspeaker", "spk-a1b")][2])["error"]
    assert json.loads(rows[("loudspeaker", "spk-b1a")][2])["since"].startswith("<object")


async def test_the_engine_hands_adapters_statuses_to_its_book(
    store: SqlStore, store_target: StoreTarget
) -> None:
    engine = make_engine(store, {"loudspeaker": sim(["speaker"])})
    await engine.start()
    try:
        host = engine.hosts[0]
        await wait_until(lambda: host.ready, within=5, what="the adapter to start")
        # What the adapter was given in start(): its context.
        context = host.adapter._context  # type: ignore[attr-defined]
        context.device_status(DeviceStatus("spk-a1a", True, time.time(), {"volume": 80}))
        context.device_status(DeviceStatus("SPK-STRAY", True, time.time()))
        # About a second later it is written, while the engine runs.
        await wait_until(
            lambda: ("loudspeaker", "spk-a1a") in stored(store_target),
            within=5,
            what="the engine's book to write",
        )
        context.device_status(DeviceStatus("spk-a1a", False, time.time() + 1))
    finally:
        await engine.stop()
    # Stopping wrote the last one.
    assert stored(store_target)[("loudspeaker", "spk-a1a")][0] == 0
    listed = await page(store, now=time.time())
    assert by_id(listed.devices)["spk-a1a"].state is DeviceState.OFFLINE
    strays = await page(store, unregistered=True, now=time.time())
    assert [(r.adapter, r.address, r.state) for r in strays.devices] == [
        ("loudspeaker", "SPK-STRAY", DeviceState.ONLINE)
    ]

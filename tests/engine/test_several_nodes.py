"""Several dispatcher nodes on one PostgreSQL database: each node's store claims due
deliveries beside the others' (FOR UPDATE SKIP LOCKED, no writer lock), never the same one
twice; a lease names its node, a node starting again takes back only its own leases, and the
sweep ends the leases of a node that is gone.

Two stores opened on one database with different node names are two nodes: each has its own
writer thread and connections. What holds on either database (a lease names its node) runs on
both."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import postgres_server
import pytest
import structlog
from small_directory import VILLAGE_A1a, fill_small_directory, make_warning
from stores import StoreTarget
from waiting import wait_until

from dispatcher.adapter import Report, ReportState
from dispatcher.domain import DeliveryState
from dispatcher.engine.engine import level_rules
from dispatcher.engine.types import AckResult, AdapterAck, ClaimedDelivery, Transition
from dispatcher.store.connections import Db
from dispatcher.store.pg_connection import WRITER_LOCK, PgConnection
from dispatcher.store.sql_store import SqlStore
from engine.harness import FAST, POLICY

LEVELS = level_rules(POLICY, FAST)
PEOPLE = ("p01", "p02", "p04", "p05", "p06", "p07", "p08")


@pytest.fixture(params=["postgresql"])
def pg_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreTarget]:
    """A fresh migrated PostgreSQL database (the test id says ``[postgresql]``)."""
    postgres_server.require_server()
    with postgres_server.fresh_database(template=postgres_server.migrated_template()) as dsn:
        yield StoreTarget("postgresql", tmp_path / "unused.db", dsn)


@pytest.fixture
async def nodes(pg_target: StoreTarget) -> AsyncIterator[dict[str, SqlStore]]:
    """Nodes ``a`` and ``b`` on one database holding the small directory."""
    opened: dict[str, SqlStore] = {}
    try:
        for name in ("a", "b"):
            opened[name] = await pg_target.open(node=name)
        fill_small_directory(pg_target)
        yield opened
    finally:
        for store in opened.values():
            await store.close()


async def add_warning(store: SqlStore, db: Db) -> int:
    warning = make_warning((VILLAGE_A1a,))
    await store.create_warning(warning, idempotency=None, now=time.time())
    (seq,) = db.execute("SELECT seq FROM warnings WHERE id = ?", (warning.id,)).fetchone()
    return int(seq)


def add_deliveries(
    db: Db, seq: int, n: int, *, state: str = "pending", due_at: float, channel: str = "sms"
) -> list[int]:
    """``n`` deliveries of warning ``seq``, kept in its state counts, priorities 0 and 10."""
    ids = []
    db.execute("BEGIN")
    for i in range(n):
        (delivery_id,) = db.execute(
            "INSERT INTO deliveries (warning_seq, audience, target_id, channel, area_code, "
            "priority, state, attempts, due_at, updated_at) "
            "VALUES (?, 'person', ?, ?, ?, ?, ?, 0, ?, ?) RETURNING id",
            (seq, PEOPLE[i % len(PEOPLE)], channel, VILLAGE_A1a, 10 * (i % 2), state, due_at, 0),
        ).fetchone()
        ids.append(int(delivery_id))
    db.execute(
        "INSERT INTO delivery_ranges (warning_seq, first_id, last_id) VALUES (?, ?, ?)",
        (seq, ids[0], ids[-1]),
    )
    db.execute(
        "INSERT INTO delivery_state_counts (warning_seq, state, n) VALUES (?, ?, ?) "
        "ON CONFLICT (warning_seq, state) DO UPDATE "
        "SET n = delivery_state_counts.n + excluded.n",
        (seq, state, n),
    )
    db.execute("COMMIT")
    return ids


def assert_counts_true(db: Db) -> None:
    """Every warning's kept state counts equal a count of its deliveries."""
    kept = {
        (int(seq), state): int(n)
        for seq, state, n in db.execute(
            "SELECT warning_seq, state, n FROM delivery_state_counts WHERE n <> 0"
        )
    }
    real = {
        (int(seq), state): int(n)
        for seq, state, n in db.execute(
            "SELECT warning_seq, state, count(*) FROM deliveries GROUP BY warning_seq, state"
        )
    }
    assert kept == real


def leases(db: Db) -> dict[int, tuple[str, str | None]]:
    """Delivery id → (state, leased_by)."""
    return {
        int(i): (state, by)
        for i, state, by in db.execute("SELECT id, state, leased_by FROM deliveries")
    }


async def claim_until_none(store: SqlStore, now: float, batch: int) -> list[ClaimedDelivery]:
    claimed: list[ClaimedDelivery] = []
    while True:
        got = await store.claim_due("sms", batch, now=now, lease=60, priorities=[0, 10])
        if not got:
            return claimed
        claimed.extend(got)


async def test_two_nodes_claiming_at_once_never_take_the_same_delivery(
    nodes: dict[str, SqlStore], pg_target: StoreTarget
) -> None:
    db = pg_target.connect()
    try:
        now = time.time()
        due: list[int] = []
        seqs = [await add_warning(nodes["a"], db) for _ in range(3)]
        # Warnings and states mixed in due order: a batch bumps several warnings' counters
        # of several states, which the other node's batches bump too.
        rng = random.Random(5)
        for _ in range(60):
            state = rng.choice(["pending", "retry_wait"])
            seq = rng.choice(seqs)
            due += add_deliveries(
                db, seq, rng.randint(1, 6), state=state, due_at=now - 60 * rng.random()
            )
        later = add_deliveries(db, seqs[0], 10, due_at=now + 3600)
        voice = add_deliveries(db, seqs[1], 10, due_at=now - 60, channel="voice")

        with structlog.testing.capture_logs() as logs:
            by_a, by_b = await asyncio.gather(
                claim_until_none(nodes["a"], now, 7), claim_until_none(nodes["b"], now, 5)
            )

        ids_a = [c.id for c in by_a]
        ids_b = [c.id for c in by_b]
        assert len(set(ids_a)) == len(ids_a)
        assert len(set(ids_b)) == len(ids_b)
        assert not set(ids_a) & set(ids_b), "a delivery was claimed by both nodes"
        assert sorted(ids_a + ids_b) == sorted(due)
        # Both nodes took part.
        assert ids_a and ids_b
        assert all(c.attempt == 1 for c in by_a + by_b)
        held = leases(db)
        assert {held[i] for i in ids_a} == {("sending", "a")}
        assert {held[i] for i in ids_b} == {("sending", "b")}
        assert {held[i] for i in later + voice} == {("pending", None)}
        assert_counts_true(db)
        # The claims updated the same counter rows in one order: no deadlock was broken.
        assert not [e for e in logs if e["event"] == "store transaction run again"], logs
    finally:
        db.close()


async def test_a_claim_takes_what_a_claim_in_progress_left_and_a_write_waits_for_it(
    nodes: dict[str, SqlStore], pg_target: StoreTarget
) -> None:
    """Node b claims while a claim on another connection holds its rows: b takes the others
    at once (it waits neither for the rows nor for the lock); a write transaction (the
    sweep) waits until the claim in progress ends."""
    db = pg_target.connect()
    other = PgConnection.connect(pg_target.dsn or "")
    try:
        now = time.time()
        seq = await add_warning(nodes["a"], db)
        due = add_deliveries(db, seq, 10, due_at=now - 60)

        other.begin_claim()
        taken = [
            int(r[0])
            for r in other.execute(
                "SELECT id FROM deliveries WHERE channel = 'sms' AND state = 'pending' "
                "AND due_at <= ? ORDER BY due_at, id LIMIT 4 FOR UPDATE SKIP LOCKED",
                (now,),
            )
        ]
        assert len(taken) == 4

        claimed = await asyncio.wait_for(
            nodes["b"].claim_due("sms", 100, now=now, lease=60, priorities=[0, 10]), 10
        )
        assert sorted(c.id for c in claimed) == sorted(set(due) - set(taken))

        sweep = asyncio.ensure_future(nodes["a"].sweep(now=now, levels=LEVELS, visit_delay=0.1))

        def sweep_waits_for_the_lock() -> bool:
            (waiting,) = db.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND objid = ?",
                (WRITER_LOCK,),
            ).fetchone()
            return int(waiting) == 1

        await wait_until(sweep_waits_for_the_lock, what="the sweep waiting for the writer lock")
        assert not sweep.done()
        other.execute("ROLLBACK")
        await asyncio.wait_for(sweep, 10)
        assert {leases(db)[i] for i in taken} == {("pending", None)}
    finally:
        other.close()
        db.close()


async def test_a_node_starting_again_takes_back_only_its_own_leases(
    nodes: dict[str, SqlStore], pg_target: StoreTarget
) -> None:
    db = pg_target.connect()
    try:
        now = time.time()
        seq = await add_warning(nodes["a"], db)
        add_deliveries(db, seq, 12, due_at=now - 60)
        own = [
            c.id for c in await nodes["a"].claim_due("sms", 4, now=now, lease=60, priorities=[0])
        ]
        theirs = [
            c.id for c in await nodes["b"].claim_due("sms", 4, now=now, lease=60, priorities=[0])
        ]
        # A lease taken before leases named their node (schema 9): anyone's, so the first
        # node to start takes it back.
        db.execute("UPDATE deliveries SET leased_by = NULL WHERE id = ?", (own[0],))
        await nodes["a"].close()
        restarted = nodes["a"] = await pg_target.open(node="a")

        assert await restarted.reclaim_own_leases(now=now + 1) == len(own)

        held = leases(db)
        assert {held[i] for i in own} == {("retry_wait", None)}
        assert {held[i] for i in theirs} == {("sending", "b")}
        assert_counts_true(db)
        (reason,) = {
            r[0]
            for r in db.execute(
                f"SELECT reason FROM delivery_events WHERE delivery_id IN "
                f"({','.join(str(i) for i in own)})"
            )
        }
        assert reason == "lease expired: the daemon stopped during the send"
        # Node b's own start takes back its leases.
        assert await nodes["b"].reclaim_own_leases(now=now + 1) == len(theirs)
        assert {leases(db)[i] for i in theirs} == {("retry_wait", None)}
    finally:
        db.close()


async def test_the_sweep_ends_the_leases_of_a_node_that_is_gone(
    nodes: dict[str, SqlStore], pg_target: StoreTarget
) -> None:
    db = pg_target.connect()
    try:
        now = time.time()
        seq = await add_warning(nodes["a"], db)
        add_deliveries(db, seq, 6, due_at=now - 60)
        gone = [
            c.id for c in await nodes["b"].claim_due("sms", 3, now=now, lease=5, priorities=[0])
        ]
        assert len(gone) == 3
        await nodes["b"].close()
        del nodes["b"]

        early = await nodes["a"].sweep(now=now + 4, levels=LEVELS, visit_delay=0.1)
        assert early.leases_reclaimed == 0
        assert {leases(db)[i] for i in gone} == {("sending", "b")}

        result = await nodes["a"].sweep(now=now + 6, levels=LEVELS, visit_delay=0.1)

        assert result.leases_reclaimed == len(gone)
        assert {leases(db)[i] for i in gone} == {("retry_wait", None)}
        assert_counts_true(db)
        again = await nodes["a"].claim_due("sms", 10, now=now + 6, lease=60, priorities=[0])
        assert {c.id for c in again} == set(gone)
        assert {c.attempt for c in again} == {2}
        assert {leases(db)[i] for i in gone} == {("sending", "a")}
    finally:
        db.close()


# -- on either database --------------------------------------------------------------------------
@pytest.fixture
async def store(store_target: StoreTarget) -> AsyncIterator[SqlStore]:
    opened = await store_target.open(node="n1")
    fill_small_directory(store_target)
    yield opened
    await opened.close()


async def test_a_lease_names_its_node_until_the_delivery_leaves_sending(
    store: SqlStore, store_target: StoreTarget
) -> None:
    db = store_target.connect()
    try:
        now = time.time()
        seq = await add_warning(store, db)
        add_deliveries(db, seq, 4, due_at=now - 60)
        claimed = await store.claim_due("sms", 4, now=now, lease=60, priorities=[0, 10])
        assert {leases(db)[c.id] for c in claimed} == {("sending", "n1")}

        sent, failed, *_ = claimed
        await store.record_transitions(
            [
                Transition(sent.id, DeliveryState.SENT, now + 600, 1, "sms"),
                Transition(failed.id, DeliveryState.RETRY_WAIT, now + 5, 1, "sms", "busy"),
            ],
            now=now,
            levels=LEVELS,
            visit_delay=0.1,
        )
        held = leases(db)
        assert held[sent.id] == ("sent", None)
        assert held[failed.id] == ("retry_wait", None)
        assert_counts_true(db)
    finally:
        db.close()


async def test_a_late_outcome_of_a_lease_taken_over_does_not_decide(
    nodes: dict[str, SqlStore], pg_target: StoreTarget
) -> None:
    """Node b's send outlasted its lease (or the store was away when it ended): node a swept
    and claimed the delivery again. b's late outcome is logged; a's attempt decides."""
    db = pg_target.connect()
    try:
        now = time.time()
        seq = await add_warning(nodes["a"], db)
        (delivery,) = add_deliveries(db, seq, 1, due_at=now - 60)
        (first,) = await nodes["b"].claim_due("sms", 1, now=now, lease=5, priorities=[0, 10])
        await nodes["a"].sweep(now=now + 6, levels=LEVELS, visit_delay=0.1)
        (second,) = await nodes["a"].claim_due("sms", 1, now=now + 6, lease=60, priorities=[0, 10])
        assert (first.attempt, second.attempt) == (1, 2)

        late = await nodes["b"].record_transitions(
            [Transition(delivery, DeliveryState.FAILED, None, first.attempt, "sms", "refused")],
            now=now + 7,
            levels=LEVELS,
            visit_delay=0.1,
        )
        assert late.stale == 1
        assert leases(db)[delivery] == ("sending", "a")
        (reason,) = db.execute(
            "SELECT reason FROM delivery_events WHERE delivery_id = ? ORDER BY id DESC LIMIT 1",
            (delivery,),
        ).fetchone()
        assert reason == "refused; lease taken over: attempt 2 is sending"

        await nodes["a"].record_transitions(
            [Transition(delivery, DeliveryState.SENT, now + 600, second.attempt, "sms")],
            now=now + 8,
            levels=LEVELS,
            visit_delay=0.1,
        )
        assert leases(db)[delivery] == ("sent", None)
        assert_counts_true(db)
    finally:
        db.close()


async def test_a_reply_posted_to_two_nodes_confirms_one_delivery(
    nodes: dict[str, SqlStore], pg_target: StoreTarget
) -> None:
    """Twilio posts a reply again (a webhook retry) and the load balancer sends the copy to
    the other node: the person has two open warnings; the copy must not confirm the second."""
    db = pg_target.connect()
    try:
        now = time.time()
        deliveries = []
        for _ in range(2):
            seq = await add_warning(nodes["a"], db)
            (delivery,) = add_deliveries(db, seq, 1, due_at=now - 60)
            deliveries.append(delivery)
        claimed = await claim_until_none(nodes["a"], now, 10)
        assert {c.id for c in claimed} == set(deliveries)
        await nodes["a"].record_transitions(
            [Transition(c.id, DeliveryState.SENT, now + 600, c.attempt, "sms") for c in claimed],
            now=now,
            levels=LEVELS,
            visit_delay=0.1,
        )
        reply = Report(ReportState.ACKNOWLEDGED, from_address="+8613800000001", reply_id="SM0123")
        outcomes = []
        for node in ("a", "b", "b"):
            (outcome,) = await nodes[node].apply_acks(
                [AdapterAck("sms", reply, received_at=now + 5)],
                now=now + 5,
                levels=LEVELS,
                visit_delay=0.1,
                retry_delay=lambda attempt, after: 0.1,
            )
            outcomes.append(outcome)
        assert [o.result for o in outcomes] == [
            AckResult.APPLIED,
            AckResult.REJECTED,
            AckResult.REJECTED,
        ]
        assert "reply SM0123 was applied already" in outcomes[1].reason
        states = dict(
            db.execute(
                "SELECT id, state FROM deliveries WHERE id IN (?, ?)", tuple(deliveries)
            ).fetchall()
        )
        # The newest open delivery was confirmed; the older one still waits.
        assert states == {deliveries[1]: "acknowledged", deliveries[0]: "sent"}
    finally:
        db.close()

"""One scheduler leader among the nodes on a PostgreSQL database (a session advisory lock),
with failover: on the real PostgreSQL server, nodes in one process, each with its own store
and leader connection. A leader whose connection dies (its backend terminated, its connection
closed) is replaced within the check interval, and the schedule runners fire only on the
leader: a fire time passed while the leader was lost runs once, on the new leader."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from small_directory import COUNTY_A, fill_small_directory
from stores import StoreTarget
from waiting import wait_until

from dispatcher.config import ApiRole, CapConfig, load_policy
from dispatcher.planning_worker import PlanningWorker
from dispatcher.schedules.leader import SCHEDULER_LOCK, SchedulerLeader, application_name, node_of
from dispatcher.schedules.runner import ScheduleRunner
from dispatcher.schedules.service import ScheduleService, warning_identifier
from dispatcher.schedules.spec import ScheduleInput
from dispatcher.schedules.timing import SHANGHAI
from dispatcher.store.migrations import MIGRATION_LOCK
from dispatcher.store.pg_connection import WRITER_LOCK
from dispatcher.store.postgres import PostgresStore
from dispatcher.store.schedules_base import RunKind, RunState, ScheduleRunRow
from dispatcher.store.sqlite import SqliteStore
from dispatcher.warning_service import Principal, WarningService

ROOT = Path(__file__).resolve().parent.parent
POLICY = load_policy(ROOT / "config" / "policy.toml")
SENDER = "yjj@test.tocsin"
DUTY = Principal("desk-1", ApiRole.DUTY_OFFICER)
#: The leaders' check interval in these tests, and what a takeover may take beyond it on a
#: loaded machine.
CHECK = 0.3
SLACK = 5.0
#: A node that lost its connection stays out this long: the other node must take over.
STAY_OUT = 600.0


def _a_monday_ahead() -> datetime:
    day = datetime.now(SHANGHAI).date() + timedelta(days=8)
    day += timedelta(days=(7 - day.weekday()) % 7)
    return datetime.combine(day, time(10), tzinfo=SHANGHAI)


MONDAY_10 = _a_monday_ahead()
NEXT_MONDAY_10 = MONDAY_10 + timedelta(weeks=1)


def terminate(dsn: str, node: str) -> int:
    """pg_terminate_backend on the node's leader connection: how many were ended."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (application_name(node),),
        ).fetchall()
    return sum(1 for (ended,) in rows if ended)


def lock_holders(dsn: str) -> list[str]:
    """The application names of the sessions holding the scheduler lock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objid::bigint = %s "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (SCHEDULER_LOCK,),
        ).fetchall()
    return sorted(str(r[0]) for r in rows)


MakeLeader = Callable[..., Awaitable[SchedulerLeader]]


@pytest.fixture
async def make_leader(postgres_dsn: str) -> AsyncIterator[MakeLeader]:
    """make(node, **options) → a started leader on a store of its own (one database)."""
    made: list[tuple[SchedulerLeader, PostgresStore]] = []

    async def make(node: str, *, start: bool = True, **options: Any) -> SchedulerLeader:
        store = await PostgresStore.open(postgres_dsn, node=node)
        leader = SchedulerLeader(store, check_every=CHECK, **options)
        made.append((leader, store))
        if start:
            await leader.start()
        return leader

    yield make
    for leader, store in made:
        await leader.stop()
        await store.close()


def test_the_lock_is_its_own() -> None:
    assert len({SCHEDULER_LOCK, WRITER_LOCK, MIGRATION_LOCK}) == 3
    assert node_of(application_name("node-a")) == "node-a"
    # PostgreSQL keeps 63 bytes of an application name: a long node name loses the suffix.
    assert node_of(application_name("n" * 60)[:63]) == "n" * 56


async def test_two_nodes_on_one_database_elect_exactly_one(
    make_leader: MakeLeader, postgres_dsn: str
) -> None:
    a = await make_leader("node-a", start=False)
    b = await make_leader("node-b", start=False)
    both: list[str] = []

    def watch(_leading: bool) -> None:
        if a.leading and b.leading:
            both.append("both lead")

    a.subscribe(watch)
    b.subscribe(watch)
    await asyncio.gather(a.start(), b.start())
    # Several checks each: the one that holds the lock keeps it, the other keeps failing.
    await wait_until(lambda: a.checks >= 5 and b.checks >= 5, what="five checks on each node")
    assert sorted([a.leading, b.leading]) == [False, True]
    assert both == []
    winner, loser = (a, b) if a.leading else (b, a)
    assert winner.since is not None and loser.since is None
    assert await a.current_leader() == winner.node
    assert await b.current_leader() == winner.node
    assert lock_holders(postgres_dsn) == [application_name(winner.node)]


async def test_a_terminated_leader_is_replaced_within_the_check_interval(
    make_leader: MakeLeader, postgres_dsn: str
) -> None:
    a = await make_leader("node-a", rejoin_after=STAY_OUT)
    b = await make_leader("node-b")
    changes: list[tuple[str, bool]] = []
    a.subscribe(lambda leading: changes.append(("node-a", leading)))
    b.subscribe(lambda leading: changes.append(("node-b", leading)))
    # The first to start leads; the other waits.
    assert a.elected.is_set() and not b.elected.is_set()
    await wait_until(lambda: b.checks >= 2, what="node-b to check again")
    assert not b.elected.is_set()

    assert terminate(postgres_dsn, "node-a") == 1
    await wait_until(a.lost.is_set, within=CHECK + SLACK, what="node-a to report lost")
    assert not a.leading
    await wait_until(lambda: b.leading, within=CHECK + SLACK, what="node-b to be elected")
    assert await b.current_leader() == "node-b"
    assert await a.current_leader() == "node-b"
    assert lock_holders(postgres_dsn) == [application_name("node-b")]
    assert changes == [("node-a", False), ("node-b", True)]


async def test_a_leader_that_closes_its_connection_is_replaced(
    make_leader: MakeLeader, postgres_dsn: str
) -> None:
    a = await make_leader("node-a")
    b = await make_leader("node-b")
    assert a.elected.is_set() and not b.elected.is_set()
    # The leader's process ends: its connection closes, and PostgreSQL frees the lock.
    await a.stop()
    assert not a.leading
    await wait_until(lambda: b.leading, within=CHECK + SLACK, what="node-b to be elected")
    assert await b.current_leader() == "node-b"


async def test_a_lone_node_leads_again_after_losing_its_connection(
    make_leader: MakeLeader, postgres_dsn: str
) -> None:
    # As after a database restart: the session is gone, the node stops leading, then takes
    # the lead again on a new connection.
    a = await make_leader("node-a")
    changes: list[bool] = []
    a.subscribe(changes.append)
    assert a.elected.is_set()
    assert terminate(postgres_dsn, "node-a") == 1
    await wait_until(lambda: changes[:1] == [False], what="node-a to lose the lead")
    await wait_until(lambda: changes == [False, True], what="node-a to lead again")
    assert a.leading and not a.lost.is_set()
    assert await a.current_leader() == "node-a"


async def test_on_sqlite_the_node_always_leads(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "t.db")
    try:
        leader = SchedulerLeader(store, node="solo")
        assert leader.dsn is None and not leader.elected.is_set()
        await leader.start()
        assert leader.leading and leader.elected.is_set()
        assert await leader.current_leader() == "solo"
        await leader.stop()
        assert not leader.leading
    finally:
        await store.close()


# -- schedule runners on two nodes -----------------------------------------------------------


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, at: datetime) -> None:
        self.now = at.timestamp()


WEEKLY = ScheduleInput.model_validate(
    {
        "id": "weekly",
        "cron": "0 10 * * 1",
        "areas": [COUNTY_A],
        "rules": [{"audience": "devices", "device_kinds": ["loudspeaker"]}],
        "headline": "应急广播例行测试",
    }
)


@dataclass
class Node:
    name: str
    store: PostgresStore
    planner: PlanningWorker
    service: ScheduleService
    runner: ScheduleRunner

    @property
    def leader(self) -> SchedulerLeader:
        assert self.runner.leader is not None
        return self.runner.leader


@dataclass
class Cluster:
    target: StoreTarget
    clock: Clock
    nodes: list[Node]
    make: Callable[..., Awaitable[Node]]

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self.target.connect()
        try:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()

    async def runs(self) -> list[ScheduleRunRow]:
        return list(reversed(await self.nodes[0].store.list_schedule_runs("weekly", limit=100)))

    def warnings_for(self, fire_at: datetime) -> int:
        identifier = warning_identifier("weekly", fire_at, RunKind.CRON)
        ((count,),) = self.rows("SELECT count(*) FROM warnings WHERE identifier = ?", (identifier,))
        return int(count)


@pytest.fixture
async def cluster(postgres_dsn: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    target = StoreTarget("postgresql", tmp_path / "unused.db", postgres_dsn)
    clock = Clock(MONDAY_10 - timedelta(hours=1))
    nodes: list[Node] = []

    async def make(name: str, **leader_options: Any) -> Node:
        refresh_every = leader_options.pop("refresh_every", None)
        store = await PostgresStore.open(postgres_dsn, node=name)
        if not nodes:
            fill_small_directory(target)
        planner = PlanningWorker(store, lambda: POLICY, clock=clock)
        await planner.start()
        warnings = WarningService(
            store, CapConfig(sender=SENDER), on_created=planner.enqueue, clock=clock
        )
        service = ScheduleService(store, warnings, sender=SENDER, clock=clock, node=name)
        runner = ScheduleRunner(
            service,
            policy=lambda: POLICY,
            device_ack_timeout=120.0,
            report_store=store,
            clock=clock,
            leader=SchedulerLeader(store, check_every=CHECK, **leader_options),
            refresh_every=refresh_every,
        )
        await runner.start()
        node = Node(name, store, planner, service, runner)
        nodes.append(node)
        return node

    yield Cluster(target, clock, nodes, make)
    for node in nodes:
        await node.runner.stop()
        await node.planner.stop()
        await node.store.close()


async def test_the_next_fire_time_runs_once_after_the_leader_is_lost(
    cluster: Cluster, postgres_dsn: str
) -> None:
    a = await cluster.make("node-a", rejoin_after=STAY_OUT)
    b = await cluster.make("node-b")
    assert a.runner.leading and not b.runner.leading
    await a.service.create(WEEKLY, principal=DUTY)
    # node-a installs the cron job (node-b would at its refresh; its job is called below).
    await wait_until(lambda: a.runner.next_fire_at("weekly") is not None, what="node-a's job")

    # 10:00: both nodes' cron jobs fire; only the leader runs it.
    cluster.clock.set(MONDAY_10 + timedelta(seconds=1))
    on_a, on_b = await asyncio.gather(a.runner.on_cron("weekly"), b.runner.on_cron("weekly"))
    assert on_b is None
    assert on_a is not None and on_a.outcome is not None and on_a.outcome.run is not None
    assert on_a.outcome.run.node == "node-a"

    # A week later, the next fire time has just passed — and the leader's connection dies
    # before it fires (its backend terminated, as when its node is cut off or killed).
    cluster.clock.set(NEXT_MONDAY_10 + timedelta(seconds=1))
    assert terminate(postgres_dsn, "node-a") == 1
    await wait_until(a.leader.lost.is_set, within=CHECK + SLACK, what="node-a to lose the lead")
    await wait_until(lambda: b.leader.leading, within=CHECK + SLACK, what="node-b to lead")

    # node-b, elected, catches up on the fire time within its grace window.
    async def next_ran() -> bool:
        return any(
            r.fire_at == NEXT_MONDAY_10 and r.state is RunState.RAN for r in await cluster.runs()
        )

    await wait_until(next_ran, what="node-b to run the next fire time")
    # The cron jobs fire late on both nodes: nothing more runs.
    on_a, on_b = await asyncio.gather(a.runner.on_cron("weekly"), b.runner.on_cron("weekly"))
    assert on_a is None
    assert on_b is not None and on_b.outcome is None and on_b.missed == 0

    runs = await cluster.runs()
    assert [(r.fire_at, r.state, r.node) for r in runs] == [
        (MONDAY_10, RunState.RAN, "node-a"),
        (NEXT_MONDAY_10, RunState.RAN, "node-b"),
    ]
    assert cluster.warnings_for(MONDAY_10) == 1
    assert cluster.warnings_for(NEXT_MONDAY_10) == 1
    assert cluster.rows("SELECT count(*) FROM warnings") == [(2,)]
    assert await a.leader.current_leader() == "node-b"


async def test_a_schedule_added_on_another_node_is_fired_by_the_leader(cluster: Cluster) -> None:
    a = await cluster.make("node-a", refresh_every=CHECK)
    b = await cluster.make("node-b", refresh_every=CHECK)
    assert a.runner.leading and not b.runner.leading
    # Added through node-b's API: node-b installs its job at once, node-a at its refresh.
    await b.service.create(WEEKLY, principal=DUTY)
    await wait_until(
        lambda: a.runner.next_fire_at("weekly") is not None, what="node-a to install the job"
    )
    assert b.runner.next_fire_at("weekly") is not None
    cluster.clock.set(MONDAY_10 + timedelta(seconds=1))

    async def ran() -> bool:
        return [r.state for r in await cluster.runs()] == [RunState.RAN]

    # The leader's refresh catches up on it; node-b, not leading, never fires it.
    await wait_until(ran, what="the leader to run the fire time")
    (run,) = await cluster.runs()
    assert run.node == "node-a"
    assert cluster.warnings_for(MONDAY_10) == 1
    # Removed through node-b: node-a drops the job at its refresh.
    await b.service.delete("weekly", principal=DUTY)
    await wait_until(
        lambda: a.runner.next_fire_at("weekly") is None, what="node-a to remove the job"
    )

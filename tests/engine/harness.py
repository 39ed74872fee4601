"""An engine on a real store (SQLite or PostgreSQL) with the small directory and simulated
adapters.

:class:`Tocsin` is what the engine tests drive: it plans warnings with the real planning
worker, runs a real :class:`Engine` with real simulated adapters, and reads the database the
way an operator would (deliveries, events, reached, coverage counts) through a connection of
its own beside the store's (:class:`Peek`). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from small_directory import make_warning
from stores import StoreTarget
from waiting import wait_until

from adapters.simulated.adapter import SimulatedAdapter, SimulatedSettings
from dispatcher.adapter import Dispatch, Outcome, adapter_kinds
from dispatcher.adapter_config import AdapterSpec, build_adapter_specs
from dispatcher.config import AdapterInstanceConfig, EngineConfig, load_policy
from dispatcher.domain import TERMINAL_DELIVERY_STATES, Level, MsgType, Status, WarningRecord
from dispatcher.engine.engine import Engine
from dispatcher.planning_worker import PlanningWorker
from dispatcher.policy import Policy
from dispatcher.store.connections import Db
from dispatcher.store.sql_store import SqlStore

ROOT = Path(__file__).resolve().parents[2]
POLICY = load_policy(ROOT / "config" / "policy.toml")

#: Fast timers so a whole ladder runs in a test.
FAST = EngineConfig(
    batch_size=200,
    lease=30.0,
    retry_base=0.05,
    retry_cap=0.2,
    device_ack_timeout=0.5,
    visit_delay=0.1,
    drain_timeout=2.0,
)

TERMINAL = frozenset(s.value for s in TERMINAL_DELIVERY_STATES)

#: The small directory's phones (tests/small_directory.py).
PHONE = {f"p0{i}": f"+861380000000{i}" for i in range(1, 9)}


class RecordingSimulated(SimulatedAdapter):
    """The real simulated adapter, also keeping every dispatch it was handed (what the
    person or device was told)."""

    def __init__(
        self, *, name: str, settings: SimulatedSettings | Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(name=name, settings=settings)
        self.dispatched: list[Dispatch] = []
        #: send() calls running now, and the most there ever were at once.
        self.concurrent = 0
        self.peak_concurrent = 0

    async def send(self, batch: Sequence[Dispatch]) -> Sequence[Outcome]:
        self.dispatched.extend(batch)
        self.concurrent += 1
        self.peak_concurrent = max(self.peak_concurrent, self.concurrent)
        try:
            return await super().send(batch)
        finally:
            self.concurrent -= 1


def sim(channels: list[str], **settings: Any) -> AdapterInstanceConfig:
    instance = {k: settings.pop(k) for k in list(settings) if k in _INSTANCE_KEYS}
    return AdapterInstanceConfig(
        kind="simulated",
        channels=channels,  # type: ignore[arg-type]
        settings=settings,
        **instance,
    )


#: Keys of ``sim(...)`` that configure the instance rather than the simulated device.
_INSTANCE_KEYS = frozenset(
    {
        "rate_per_second",
        "burst",
        "batch_size",
        "send_timeout",
        "concurrency",
        "breaker_failures",
        "breaker_pause",
    }
)


def specs(instances: Mapping[str, AdapterInstanceConfig]) -> tuple[AdapterSpec, ...]:
    built, problems = build_adapter_specs(
        Path("test.toml"),
        instances,
        Path("."),
        kinds={**adapter_kinds(), "simulated": RecordingSimulated},
    )
    assert not problems, problems
    return built


def all_channels(**settings: Any) -> dict[str, AdapterInstanceConfig]:
    return {
        "loudspeaker": sim(["speaker"], **settings),
        "transmitter": sim(["transmitter"], **settings),
        "modem": sim(["modem"], **settings),
        "sms": sim(["sms"], **settings),
        "voice": sim(["voice"], **settings),
    }


def policy(level: str = "red", **changes: Any) -> Policy:
    """The shipped policy with one level changed, e.g. ``policy(ack_timeout="0.3s",
    rules=[...])``; no visits unless asked for (``visit=True``)."""
    data = POLICY.model_dump(mode="json")
    data["levels"][level].update({"visit": False, **changes})
    return Policy.model_validate(data)


def rule(audience: str, *channels: str) -> dict[str, Any]:
    if audience == "devices":
        return {"audience": audience, "device_kinds": list(channels)}
    return {"audience": audience, "channels": list(channels)}


def config(**changes: Any) -> EngineConfig:
    return FAST.model_copy(update=changes)


class MaxRandom(random.Random):
    """Jitter that always takes the whole delay (so backoff delays are exact)."""

    def random(self) -> float:
        return 1.0


@dataclass
class Running:
    store: SqlStore
    engine: Engine
    planner: PlanningWorker
    db: StoreTarget

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return read(self.db, sql, params)

    def delivery_states(self, warning_id: str) -> dict[tuple[str, str], str]:
        """(target, channel) → state."""
        return {
            (t, c): s
            for t, c, s in self.rows(
                "SELECT d.target_id, d.channel, d.state FROM deliveries d "
                "JOIN warnings w ON w.seq = d.warning_seq WHERE w.id = ?",
                (warning_id,),
            )
        }


def read(db: StoreTarget, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One query on a connection of its own (opened and closed for it)."""
    conn = db.connect()
    try:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


class Peek:
    """A connection beside the store's, kept open for a test's many reads (polling a state
    every few milliseconds): opened on first use, autocommit, so each read sees what the store
    has committed."""

    def __init__(self, db: StoreTarget) -> None:
        self.db = db
        self._conn: Db | None = None

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._conn is None:
            self._conn = self.db.connect()
        return [tuple(r) for r in self._conn.execute(sql, params).fetchall()]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def make_engine(
    store: SqlStore,
    instances: Mapping[str, AdapterInstanceConfig],
    *,
    config: EngineConfig = FAST,
    policy: Policy = POLICY,
    registry: CollectorRegistry | None = None,
    rng: random.Random | None = None,
) -> Engine:
    return Engine(
        store,
        config=config,
        policy=lambda: policy,
        adapters=specs(instances),
        registry=registry,
        rng=rng,
    )


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    audience: str
    target_id: str
    channel: str
    area_code: str
    priority: int
    state: str
    attempts: int
    due_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    at: float
    delivery_id: int | None
    state: str
    attempt: int
    adapter: str
    reason: str
    detail: str


_DELIVERY_COLUMNS = (
    "d.id, d.audience, d.target_id, d.channel, d.area_code, d.priority, d.state, d.attempts, "
    "d.due_at, d.updated_at"
)


@dataclass
class Tocsin:
    """A store with the small directory, a planner and an engine, driven by a test."""

    store: SqlStore
    db: StoreTarget
    instances: Mapping[str, AdapterInstanceConfig]
    policy: Policy = POLICY
    config: EngineConfig = FAST
    rng: random.Random | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    engine: Engine = field(init=False)
    planner: PlanningWorker = field(init=False)
    started: bool = False
    peek: Peek = field(init=False)

    def __post_init__(self) -> None:
        self.peek = Peek(self.db)
        self.engine = make_engine(
            self.store,
            self.instances,
            config=self.config,
            policy=self.policy,
            registry=self.registry,
            rng=self.rng,
        )
        self.planner = PlanningWorker(self.store, lambda: self.policy)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.engine.start()
        self.started = True

    async def stop(self) -> None:
        if self.started:
            self.started = False
            await self.engine.stop()

    async def close(self) -> None:
        """Stop the engine and close the reading connection."""
        await self.stop()
        self.peek.close()

    def new_engine(self, instances: Mapping[str, AdapterInstanceConfig]) -> Engine:
        """Another engine on the same store (a restart)."""
        self.instances = instances
        self.registry = CollectorRegistry()
        self.engine = make_engine(
            self.store, instances, config=self.config, policy=self.policy, registry=self.registry
        )
        return self.engine

    def adapter(self, name: str) -> RecordingSimulated:
        for host in self.engine.hosts:
            if host.name == name:
                adapter = host.adapter
                assert isinstance(adapter, RecordingSimulated)
                return adapter
        raise KeyError(name)

    def host(self, name: str) -> Any:
        return next(h for h in self.engine.hosts if h.name == name)

    # -- warnings ------------------------------------------------------------------------------
    async def warn(
        self,
        areas: tuple[str, ...],
        *,
        level: Level = Level.RED,
        status: Status = Status.EXERCISE,
        expires_in: timedelta = timedelta(hours=1),
        plan: bool = True,
    ) -> WarningRecord:
        """Store and plan a warning (before the engine starts, so the whole plan is there)."""
        warning = make_warning(areas, level=level, status=status, expires_in=expires_in)
        await self.store.create_warning(warning, idempotency=None, now=time.time())
        if plan:
            await self.plan(warning.id)
        return warning

    async def plan(self, warning_id: str) -> None:
        await self.planner.start()
        try:
            self.planner.enqueue(warning_id)
            await asyncio.wait_for(self.planner.wait_idle(), 10)
        finally:
            await self.planner.stop()
        assert self.rows("SELECT planned_at FROM warnings WHERE id = ?", (warning_id,))[0][0]
        if self.started:
            self.engine.wake()

    async def stop_warning(self, old: WarningRecord, msg_type: MsgType) -> WarningRecord:
        """Cancel (or update) ``old`` the way the warning service does: a new warning that
        references it, stored in the same transaction that stops the old one."""
        new = make_warning(old.area_codes, level=old.level, msg_type=msg_type)
        await self.store.create_warning(
            new,
            idempotency=None,
            supersedes=[old.id] if msg_type is MsgType.UPDATE else [],
            cancels=[old.id] if msg_type is MsgType.CANCEL else [],
            now=time.time(),
        )
        return new

    # -- reading -------------------------------------------------------------------------------
    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.peek.rows(sql, params)

    def deliveries(self, warning_id: str) -> list[Delivery]:
        return [
            Delivery(*r)
            for r in self.rows(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d JOIN warnings w "
                "ON w.seq = d.warning_seq WHERE w.id = ? ORDER BY d.id",
                (warning_id,),
            )
        ]

    def delivery(self, warning_id: str, target: str, channel: str, audience: str = "") -> Delivery:
        found = [
            d
            for d in self.deliveries(warning_id)
            if d.target_id == target
            and d.channel == channel
            and (d.audience == audience if audience else d.audience != "visit")
        ]
        assert len(found) == 1, (target, channel, found)
        return found[0]

    def state(self, warning_id: str, target: str, channel: str, audience: str = "") -> str:
        return self.delivery(warning_id, target, channel, audience).state

    def states(self, warning_id: str) -> dict[tuple[str, str, str], str]:
        """(audience, target, channel) → state."""
        return {(d.audience, d.target_id, d.channel): d.state for d in self.deliveries(warning_id)}

    def events(self, delivery_id: int) -> list[Event]:
        return [
            Event(*r)
            for r in self.rows(
                "SELECT id, at, delivery_id, state, attempt, adapter, reason, detail "
                "FROM delivery_events WHERE delivery_id = ? ORDER BY id",
                (delivery_id,),
            )
        ]

    def reached(self, warning_id: str) -> dict[tuple[str, str], int]:
        """(kind, target) → in_time."""
        return {
            (kind, target): in_time
            for kind, target, in_time in self.rows(
                "SELECT r.kind, r.target_id, r.in_time FROM reached r JOIN warnings w "
                "ON w.seq = r.warning_seq WHERE w.id = ?",
                (warning_id,),
            )
        }

    def coverage(self, warning_id: str) -> dict[tuple[str, str], int]:
        """(village, kind) → n, from coverage_counts (zeros left out)."""
        return {
            (village, kind): n
            for village, kind, n in self.rows(
                "SELECT c.village_code, c.kind, c.n FROM coverage_counts c JOIN warnings w "
                "ON w.seq = c.warning_seq WHERE w.id = ? AND c.n != 0",
                (warning_id,),
            )
        }

    def completed(self, warning_id: str) -> bool:
        return bool(
            self.rows(
                "SELECT 1 FROM warnings WHERE id = ? AND completed_at IS NOT NULL", (warning_id,)
            )
        )

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every table the engine writes, in full."""
        return {
            table: self.rows(f"SELECT * FROM {table} ORDER BY 1, 2, 3")
            for table in (
                "deliveries",
                "delivery_events",
                "delivery_state_counts",
                "delivery_refs",
                "reached",
                "coverage_counts",
                "visit_tasks",
                "visit_households",
            )
        }

    async def wait(
        self, predicate: Callable[[], Any], *, within: float = 10.0, what: str = "condition"
    ) -> None:
        await wait_until(predicate, within=within, what=what)

    async def wait_state(
        self,
        warning_id: str,
        target: str,
        channel: str,
        states: str | set[str],
        *,
        audience: str = "",
        within: float = 10.0,
    ) -> Delivery:
        wanted = {states} if isinstance(states, str) else states
        found: list[Delivery] = []

        def check() -> bool:
            rows = [
                d
                for d in self.deliveries(warning_id)
                if d.target_id == target
                and d.channel == channel
                and (d.audience == audience if audience else d.audience != "visit")
            ]
            if rows and rows[0].state in wanted:
                found[:] = rows[:1]
                return True
            return False

        await wait_until(
            check, within=within, what=f"{target} {channel} {audience} in {sorted(wanted)}"
        )
        return found[0]

    async def assert_counts_consistent(self, warning_id: str) -> None:
        await assert_counts_consistent(self.store, self.db, warning_id)


async def assert_counts_consistent(store: SqlStore, db: StoreTarget, warning_id: str) -> None:
    """The kept counters equal a real count: delivery_state_counts (as the store reads it) a
    GROUP BY over the warning's deliveries, coverage_counts one over its in-time reached."""
    kept = await store.delivery_state_counts(warning_id)
    states, real, coverage, reached = counted(db, warning_id)
    assert kept == states, f"store's delivery_state_counts {kept} != the table's {states}"
    assert states == real, f"delivery_state_counts {states} != GROUP BY {real}"
    assert coverage == reached, f"coverage_counts {coverage} != reached {reached}"


def counted(
    db: StoreTarget, warning_id: str
) -> tuple[dict[str, int], dict[str, int], dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """In one read transaction (one snapshot, so it can be taken while the engine runs):
    the kept state counts, a GROUP BY over deliveries, the kept coverage counts, a GROUP BY
    over reached in time. Zero counts are left out; a negative one fails."""
    conn = db.connect()
    try:
        # PostgreSQL's default (read committed) would take a snapshot per statement.
        snapshot = "BEGIN ISOLATION LEVEL REPEATABLE READ" if db.kind == "postgresql" else "BEGIN"
        conn.execute(snapshot)
        (seq,) = conn.execute("SELECT seq FROM warnings WHERE id = ?", (warning_id,)).fetchone()
        kept = conn.execute(
            "SELECT state, n FROM delivery_state_counts WHERE warning_seq = ? AND n != 0", (seq,)
        ).fetchall()
        real = conn.execute(
            "SELECT state, count(*) FROM deliveries WHERE warning_seq = ? GROUP BY state", (seq,)
        ).fetchall()
        coverage = conn.execute(
            "SELECT village_code, kind, n FROM coverage_counts WHERE warning_seq = ? AND n != 0",
            (seq,),
        ).fetchall()
        reached = conn.execute(
            "SELECT village_code, kind, count(*) FROM reached WHERE warning_seq = ? "
            "AND in_time = 1 GROUP BY village_code, kind",
            (seq,),
        ).fetchall()
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert all(n > 0 for _, n in kept), kept
    assert all(n > 0 for _, _, n in coverage), coverage
    return (
        dict(kept),
        dict(real),
        {(v, k): n for v, k, n in coverage},
        {(v, k): n for v, k, n in reached},
    )

"""Benchmark: how long a red warning's SMS to the whole city take at a given sender capacity,
and whether the priority order holds.

SMS capacity is set by the provider, not by software: a long code sends about one message a
second, a short code about 100. This simulates it on the real planned deliveries. A red warning
for the whole synthetic city (Shangluo, ~2.0M people; ``--scale`` shrinks its households) is
planned into a copy of bench/data/ through the planning worker with config/policy.toml (as
bench/plan_city.py does); then, for each sender capacity, on a fresh copy of that plan, the
store's claim path is driven with a virtual clock as the engine's ``_channel_step`` drives it:
a token bucket at the capacity (burst: one engine batch, 500) says how many SMS may be claimed
now, ``claim_due("sms", n, now=virtual, lease=…, priorities=PRIORITIES)`` leases them, every
one is accepted (``decide`` with an ``Accepted``) and recorded through ``record_transitions``
at ``virtual + n / capacity`` (when the batch has gone out at that capacity), and the sweep
runs at that time, as the engine's timer does. Only the first SMS pass is sent: no one
acknowledges, and no call is made (an SMS held behind a call stays held). Capacities that
coincide (100 long codes, one short code) are simulated once.

By default the level's ack_timeout and the warning's expiry are set beyond the simulated
window, so nothing escalates or expires while the SMS go out (the pure first pass);
``--ack-timeouts shipped`` keeps config/policy.toml's (red: 5 min), and the sweep then marks
the SMS unacknowledged as their deadlines pass (to within one batch): calls are released (not
simulated) and the visit tasks it creates go out on SMS at the grid members' priority, ahead
of the residents still waiting.

From the delivery log it then prints, per priority and per kind of person (the directory's
roles and flags), the count and the virtual times of the first and last send; checks that
every grid member's and vulnerable person's SMS left before the first resident's (PASS/FAIL)
and that no SMS left after one of a less urgent priority; and, per capacity, the time to send
them all and until every grid member and vulnerable person had theirs, beside the
simulation's own wall time and deliveries claimed per wall second. Below scale 1 the figures
are also extrapolated to the whole city: --scale shrinks the households per grid, so role
holders (grid members, cadres, rescue teams, hazard monitors: per grid or per village) stay as
they are and everyone else grows with the households; the k-th SMS leaves at k / capacity, in
the order the run measured.

    .venv/bin/python bench/sms_capacity.py             # scale 0.1: ~170k SMS a capacity; ~1 min
    .venv/bin/python bench/sms_capacity.py --scale 1   # the city: ~1.8M a capacity; ~9 min
    .venv/bin/python bench/sms_capacity.py --senders 10,100,1000 --sender-rate 1 \\
        --short-codes 1 --short-code-rate 100            # the default capacities
    .venv/bin/python bench/sms_capacity.py --ack-timeouts shipped   # the policy's 5 min
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_city import DATA, ROOT, base_database, fresh_copy, red_warning, scaled

from dispatcher.adapter import Accepted
from dispatcher.config import EngineConfig, load_policy
from dispatcher.domain import Channel, DeliveryState, Level, Role
from dispatcher.engine.backoff import Backoff
from dispatcher.engine.decide import decide
from dispatcher.engine.engine import PRIORITIES, level_rules
from dispatcher.engine.rate_limit import TokenBucket
from dispatcher.engine.types import ClaimedDelivery, LevelRules, SweepResult, Transition
from dispatcher.logging_setup import configure_logging
from dispatcher.planning_worker import PlanningWorker
from dispatcher.policy import AudienceSelector
from dispatcher.store.sqlite import SqliteStore, connect
from dispatcher.synthetic import SHANGLUO

POLICY = ROOT / "config" / "policy.toml"
SMS = Channel.SMS.value
ADAPTER = "sms-sim"
#: Timeouts and expiry "beyond the window": longer than any simulated run (1 SMS/s for the
#: whole city is 21 days).
HORIZON = 365 * 86400.0
#: The sweep's batch (EngineOps.sweep's default): it is called again while it is full.
SWEEP_LIMIT = 5000
#: Kinds of person, from the directory (first match wins), and whether --scale shrinks them.
KINDS: tuple[tuple[str, bool], ...] = (
    ("visit task", False),
    ("grid member", False),
    ("village cadre", False),
    ("rescue team / hazard monitor", False),
    ("vulnerable", True),
    ("lives alone", True),
    ("resident", True),
)
SCALES_WITH_HOUSEHOLDS = dict(KINDS)
KIND_SQL = (
    "CASE WHEN d.audience = 'visit' THEN 'visit task' "
    f"WHEN p.roles & {Role.GRID_MEMBER.bit} THEN 'grid member' "
    f"WHEN p.roles & {Role.VILLAGE_CADRE.bit} THEN 'village cadre' "
    "WHEN p.roles != 0 THEN 'rescue team / hazard monitor' "
    "WHEN p.vulnerable THEN 'vulnerable' WHEN p.lives_alone THEN 'lives alone' "
    "ELSE 'resident' END"
)
#: The check: each of these leaves before the first resident's SMS.
BEFORE_RESIDENTS = ("grid member", "vulnerable")


@dataclass(frozen=True)
class Line:
    """A sender configuration: ``senders`` numbers sending ``rate`` SMS a second each."""

    label: str
    senders: int
    rate: float

    @property
    def capacity(self) -> float:
        return self.senders * self.rate


class VirtualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Group:
    count: int = 0
    first_at: float = float("inf")
    last_at: float = 0.0
    first_event: int = 0

    def add(self, at: float, event_id: int) -> None:
        if self.count == 0:
            self.first_event = event_id
        self.count += 1
        self.first_at = min(self.first_at, at)
        self.last_at = max(self.last_at, at)


@dataclass
class Run:
    capacity: float
    claimed: int = 0
    steps: int = 0
    end: float = 0.0
    wall: float = 0.0
    claim_wall: float = 0.0
    record_wall: float = 0.0
    sweep_wall: float = 0.0
    sweep: SweepResult = field(default_factory=SweepResult)
    #: (priority, rule, kind) → sends; ordered by their first send.
    groups: dict[tuple[int, str, str], Group] = field(default_factory=dict)
    #: First-pass SMS sent after one of a less urgent priority.
    inversions: int = 0
    #: Kinds in BEFORE_RESIDENTS sent after the first resident: kind → count.
    late: dict[str, int] = field(default_factory=dict)
    first_resident: float | None = None
    sent_by: dict[float, int] = field(default_factory=dict)
    held_sms: int = 0
    pending_sms: int = 0


# -- planning -------------------------------------------------------------------------------------
async def plan(db: Path) -> tuple[str, float, int]:
    """Plan the red warning through the planning worker; (warning id, seconds, deliveries).
    Its expiry is beyond the window (plan_city's warning expires after 6 h)."""
    store = await SqliteStore.open(db)
    try:
        base = red_warning(f"bench-sms-{time.time_ns()}")
        warning = replace(base, expires=base.sent + timedelta(seconds=HORIZON))
        await store.create_warning(warning, idempotency=None, now=time.time())
        policy = load_policy(POLICY)
        result = await PlanningWorker(store, lambda: policy).plan_now(warning.id)
        assert result.planned, result
        return warning.id, result.seconds, result.total_deliveries
    finally:
        await store.close()


# -- the simulation -------------------------------------------------------------------------------
def rules_for(shipped: bool) -> dict[str, LevelRules]:
    rules = level_rules(load_policy(POLICY), EngineConfig())
    if shipped:
        return rules
    return {level: replace(r, ack_timeout=HORIZON) for level, r in rules.items()}


async def drive(db: Path, capacity: float, *, batch: int, shipped: bool) -> tuple[Run, float]:
    """Send every SMS due through the store at ``capacity`` per virtual second; (run, t0)."""
    config = EngineConfig(batch_size=batch)
    levels = rules_for(shipped)
    backoff = Backoff(config.retry_base, config.retry_cap, random.Random(0))
    run = Run(capacity)
    store = await SqliteStore.open(db)
    reader = connect(db)
    clock = VirtualClock()
    bucket = TokenBucket(capacity, batch, clock=clock)
    t0 = time.time()  # the plan is committed: every planned SMS is due
    started = time.perf_counter()
    try:
        while True:
            # Wait for a batch's tokens, as the engine waits for capacity (a hair more, so the
            # bucket's float refill does not leave it one token short).
            clock.t += bucket.seconds_until(batch) + 1e-9
            n = max(1, bucket.available(batch))
            tick = time.perf_counter()
            claimed = await store.claim_due(
                SMS, n, now=t0 + clock.t, lease=config.lease, priorities=PRIORITIES
            )
            run.claim_wall += time.perf_counter() - tick
            if not claimed:
                later = await next_work(store, reader, shipped)
                if later is None or later - t0 > HORIZON:
                    break
                clock.t = max(clock.t, later - t0)
                await sweep(store, run, t0 + clock.t, levels, config)
                continue
            bucket.take(len(claimed))
            run.claimed += len(claimed)
            run.steps += 1
            # The batch goes out at the sender capacity; recorded when its last one has.
            clock.t += len(claimed) / capacity
            now = t0 + clock.t
            tick = time.perf_counter()
            await store.record_transitions(
                [outcome(c, levels, now, backoff) for c in claimed],
                now=now,
                levels=levels,
                visit_delay=config.visit_delay,
                addresses={c.id: c.address for c in claimed if c.address},
            )
            run.record_wall += time.perf_counter() - tick
            run.end = clock.t
            await sweep(store, run, now, levels, config)
        run.wall = time.perf_counter() - started
    finally:
        reader.close()
        await store.close()
    return run, t0


def outcome(
    c: ClaimedDelivery, levels: dict[str, LevelRules], now: float, backoff: Backoff
) -> Transition:
    """As the engine's ``_send_batch``: no address fails at once; the rest are accepted."""
    if c.address is None:
        return Transition(
            c.id,
            DeliveryState.FAILED,
            None,
            c.attempt,
            ADAPTER,
            reason="the directory has no address for the target",
            escalate=True,
        )
    return decide(
        c,
        Accepted(reference=f"SM{c.id:032x}"),
        rules=levels[c.level],
        now=now,
        adapter=ADAPTER,
        retry_delay=backoff.delay,
    )


async def sweep(
    store: SqliteStore,
    run: Run,
    now: float,
    levels: dict[str, LevelRules],
    config: EngineConfig,
) -> None:
    """The engine's timer at virtual ``now``, again while a sweep comes back full."""
    tick = time.perf_counter()
    while True:
        r = await store.sweep(now=now, levels=levels, visit_delay=config.visit_delay)
        s = run.sweep
        run.sweep = SweepResult(
            leases_reclaimed=s.leases_reclaimed + r.leases_reclaimed,
            unacknowledged=s.unacknowledged + r.unacknowledged,
            device_resends=s.device_resends + r.device_resends,
            escalated=s.escalated + r.escalated,
            visits_created=s.visits_created + r.visits_created,
            warnings_expired=s.warnings_expired + r.warnings_expired,
            warnings_completed=s.warnings_completed + r.warnings_completed,
        )
        if r.unacknowledged + r.leases_reclaimed + r.device_resends < SWEEP_LIMIT:
            break
    run.sweep_wall += time.perf_counter() - tick


async def next_work(store: SqliteStore, reader: sqlite3.Connection, shipped: bool) -> float | None:
    """When something may next be sent: an SMS due later (a visit task collecting households),
    or, with the shipped timeouts, an SMS deadline whose sweep may create one."""
    times = [await store.next_due_at(SMS, PRIORITIES)]
    if shipped:
        (deadline,) = reader.execute(
            "SELECT min(due_at) FROM deliveries WHERE state IN ('sending','sent','delivered') "
            "AND channel = 'sms'"
        ).fetchone()
        times.append(deadline)
    found = [t for t in times if t is not None]
    return min(found) if found else None


# -- reading the log ------------------------------------------------------------------------------
def read_log(db: Path, warning_id: str, run: Run, t0: float) -> None:
    """Each SMS sent, in the order the log recorded them (the order they left)."""
    conn = connect(db)
    try:
        (seq,) = conn.execute("SELECT seq FROM warnings WHERE id = ?", (warning_id,)).fetchone()
        marks = (3600.0, 6 * 3600.0)
        run.sent_by = dict.fromkeys(marks, 0)
        least_urgent_so_far = -1
        for event_id, at, priority, audience, kind in conn.execute(
            f"SELECT e.id, e.at, d.priority, d.audience, {KIND_SQL} FROM delivery_events e "
            "JOIN deliveries d ON d.id = e.delivery_id LEFT JOIN persons p ON p.id = d.target_id "
            "WHERE e.warning_id = ? AND e.state = 'sent' AND e.channel = 'sms' ORDER BY e.id",
            (warning_id,),
        ):
            v = at - t0
            rule = "visit" if audience == "visit" else rule_name(priority)
            run.groups.setdefault((priority, rule, kind), Group()).add(v, event_id)
            if kind == "visit task":
                continue
            for mark in marks:
                if v <= mark:
                    run.sent_by[mark] += 1
            if priority < least_urgent_so_far:
                run.inversions += 1
            least_urgent_so_far = max(least_urgent_so_far, priority)
            if kind == "resident" and run.first_resident is None:
                run.first_resident = v
            elif kind in BEFORE_RESIDENTS and run.first_resident is not None:
                run.late[kind] = run.late.get(kind, 0) + 1
        run.held_sms, run.pending_sms = conn.execute(
            "SELECT coalesce(sum(state = 'held'), 0), "
            "coalesce(sum(state IN ('pending','retry_wait')), 0) FROM deliveries "
            "WHERE warning_seq = ? AND channel = 'sms'",
            (seq,),
        ).fetchone()
    finally:
        conn.close()


_RULES: dict[int, str] = {}


def rule_name(priority: int) -> str:
    """The red level's SMS rules with this priority (e.g. ``grid_members``)."""
    if not _RULES:
        red = load_policy(POLICY).levels[Level.RED]
        for rule in red.rules:
            if Channel.SMS in rule.channels:
                p = rule.audience.priority
                _RULES[p] = "+".join(filter(None, (_RULES.get(p), rule.audience.value)))
        for selector in AudienceSelector:
            _RULES.setdefault(selector.priority, selector.value)
    return _RULES.get(priority, f"priority {priority}")


# -- printing -------------------------------------------------------------------------------------
def hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def extrapolated(run: Run, grow: float) -> tuple[list[tuple[int, str, int, float, float]], int]:
    """Per priority tier, in the order sent: (priority, rule, count, first, last) for the
    whole city, the k-th SMS leaving at k / capacity; and the first pass's total. Role holders
    stay as measured, everyone else is multiplied by ``grow``; visit tasks are left out."""
    tiers: dict[tuple[int, str], float] = {}
    order: dict[tuple[int, str], int] = {}
    for (priority, rule, kind), g in run.groups.items():
        if kind == "visit task":
            continue
        key = (priority, rule)
        tiers[key] = tiers.get(key, 0.0) + g.count * (grow if SCALES_WITH_HOUSEHOLDS[kind] else 1)
        order[key] = min(order.get(key, g.first_event), g.first_event)
    out = []
    done = 0.0
    cap = run.capacity
    for key in sorted(tiers, key=order.__getitem__):
        count = tiers[key]
        out.append((key[0], key[1], round(count), (done + 1) / cap, (done + count) / cap))
        done += count
    return out, round(done)


def first_pass(run: Run) -> tuple[int, float]:
    """The first pass's SMS (no visit tasks): how many, and when the last one left."""
    groups = [g for (_, _, k), g in run.groups.items() if k != "visit task"]
    return sum(g.count for g in groups), max((g.last_at for g in groups), default=0.0)


def until(run: Run, kinds: tuple[str, ...]) -> float:
    return max((g.last_at for (_, _, k), g in run.groups.items() if k in kinds), default=0.0)


def rate(run: Run) -> float:
    return run.claimed / run.wall if run.wall else 0.0


def print_run(labels: list[str], run: Run, grow: float, scale: float, batch: int) -> None:
    cap = run.capacity
    print(f"\n== {cap:,.0f} SMS/s ({'; '.join(labels)}) ==")
    print(
        f"  simulated: {run.claimed:,} SMS claimed and recorded in {run.steps:,} claims; "
        f"virtual {hms(run.end)}; wall {run.wall:.1f} s = {rate(run):,.0f} claimed per wall "
        f"second (claim {run.claim_wall:.1f} s, record {run.record_wall:.1f} s, sweep "
        f"{run.sweep_wall:.1f} s); virtual/wall {run.end / run.wall:,.0f}x"
    )
    print(
        f"  times: virtual h:mm:ss after the plan, when the batch carrying the SMS had gone out "
        f"(resolution {batch / cap:g} s = {batch} / {cap:g})"
    )
    print(
        f"  {'priority':>8}  {'rule':<14} {'who (directory)':<29} {'count':>9}  "
        f"{'first':>9}  {'last':>9}"
    )
    for (priority, rule, kind), g in sorted(run.groups.items(), key=lambda kv: kv[1].first_event):
        print(
            f"  {priority:>8}  {rule:<14} {kind:<29} {g.count:>9,}  {hms(g.first_at):>9}  "
            f"{hms(g.last_at):>9}"
        )
    print(f"  not sent in the first pass: {run.held_sms:,} SMS held behind a call (not made)")
    if run.pending_sms:
        print(f"  still pending at the end: {run.pending_sms:,}")
    late = sum(run.late.values())
    first = "none" if run.first_resident is None else hms(run.first_resident)
    who = ", ".join(f"{k}: {run.late.get(k, 0):,}" for k in BEFORE_RESIDENTS)
    print(
        f"  order: every grid member's and vulnerable person's SMS before the first resident's "
        f"(at {first}): {'PASS' if late == 0 else 'FAIL'} ({who} after it)"
    )
    print(
        f"  order: no first-pass SMS after one of a less urgent priority: "
        f"{'PASS' if run.inversions == 0 else 'FAIL'} ({run.inversions:,} out of order)"
    )
    s = run.sweep
    print(
        f"  sweep over the window: {s.unacknowledged:,} SMS unacknowledged at their deadline, "
        f"{s.escalated:,} held steps released (calls, not simulated), {s.visits_created:,} "
        f"visit tasks created, {len(s.warnings_expired)} warnings expired"
    )
    if scale != 1.0:
        tiers, total = extrapolated(run, grow)
        print(
            f"  extrapolated to the whole city (role holders as measured, everyone else "
            f"x{grow:.3f}; the k-th SMS at k / {cap:g}):"
        )
        for priority, rule, count, first_at, last_at in tiers:
            print(
                f"  {priority:>8}  {rule:<14} {'':<29} {count:>9,}  {hms(first_at):>9}  "
                f"{hms(last_at):>9}"
            )
        print(
            f"  {'':>8}  {'first pass':<14} {'':<29} {total:>9,}  {'':>9}  "
            f"{hms(total / cap):>9}   (simulating it: ~{total / rate(run):.0f} s wall)"
        )
        if s.visits_created:
            print(
                f"  visit tasks ({s.visits_created:,} here) are not in it: at most one pending "
                f"per grid, they go ahead of the residents and delay them by their number / {cap:g}"
            )


def summary(lines: list[Line], runs: dict[float, Run], grow: float, scale: float) -> None:
    head = (
        f"  {'senders':<28} {'SMS/s':>7} {'SMS':>10} {'all sent':>10} {'grid+vuln':>10} "
        f"{'by 1 h':>7} {'by 6 h':>7}"
    )
    where = "the whole city" if scale == 1.0 else f"scale {scale:g}"
    print(f"\nsummary, measured at {where} (virtual times after the plan; grid+vuln: until")
    print("every grid member and vulnerable person has had theirs)")
    print(f"{head} {'wall':>7} {'claimed/wall s':>14}")
    for line in lines:
        run = runs[line.capacity]
        sms, sent_all = first_pass(run)
        print(
            f"  {line.label:<28} {line.capacity:>7,.0f} {sms:>10,} {hms(sent_all):>10} "
            f"{hms(until(run, BEFORE_RESIDENTS)):>10} {run.sent_by[3600.0] / sms:>7.1%} "
            f"{run.sent_by[6 * 3600.0] / sms:>7.1%} {run.wall:>6.0f}s {rate(run):>14,.0f}"
        )
    if scale == 1.0:
        return
    print(f"\nsummary, extrapolated to the whole city from scale {scale:g}")
    print(f"{head} {'wall (est.)':>11}")
    for line in lines:
        run = runs[line.capacity]
        tiers, total = extrapolated(run, grow)
        cap = line.capacity
        vuln = max(last for p, _, _, _, last in tiers if p <= AudienceSelector.VULNERABLE.priority)
        print(
            f"  {line.label:<28} {cap:>7,.0f} {total:>10,} {hms(total / cap):>10} "
            f"{hms(vuln):>10} {min(1.0, cap * 3600 / total):>7.1%} "
            f"{min(1.0, cap * 6 * 3600 / total):>7.1%} {total / rate(run):>10.0f}s"
        )


def parse_lines(args: argparse.Namespace) -> list[Line]:
    rate = args.sender_rate
    lines = [
        Line(f"{n:,} long code{'s' if n != 1 else ''} x {rate:g}/s", n, rate)
        for n in (int(x) for x in args.senders.split(",") if x.strip())
    ]
    if args.short_codes:
        n = args.short_codes
        lines.append(
            Line(
                f"{n:,} short code{'s' if n != 1 else ''} x {args.short_code_rate:g}/s",
                n,
                args.short_code_rate,
            )
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=float, default=0.1, help="fraction of Shangluo's households (default 0.1)"
    )
    parser.add_argument("--senders", default="10,100,1000", help="long codes, comma-separated")
    parser.add_argument("--sender-rate", type=float, default=1.0, help="SMS/s per long code")
    parser.add_argument("--short-codes", type=int, default=1)
    parser.add_argument("--short-code-rate", type=float, default=100.0)
    parser.add_argument(
        "--batch", type=int, default=EngineConfig().batch_size, help="claim size (engine default)"
    )
    parser.add_argument(
        "--ack-timeouts",
        choices=("beyond-window", "shipped"),
        default="beyond-window",
        help="the level's ack_timeout: longer than the run (default) or config/policy.toml's",
    )
    args = parser.parse_args()
    configure_logging("warning")
    lines = parse_lines(args)
    shipped = args.ack_timeouts == "shipped"
    params = scaled(args.scale)
    base = base_database(params, args.scale)

    planned = fresh_copy(base, "sms-plan.db")
    print(f"planning a red warning for the whole city on {planned.name} ...", flush=True)
    warning_id, plan_s, deliveries = asyncio.run(plan(planned))
    conn = connect(planned)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    persons, role_holders = conn.execute(
        "SELECT count(*), coalesce(sum(roles != 0), 0) FROM persons"
    ).fetchone()
    sms = dict(
        conn.execute(
            "SELECT state, count(*) FROM deliveries WHERE channel = 'sms' GROUP BY state"
        ).fetchall()
    )
    conn.close()
    # --scale shrinks the households per grid: people grow with the households back to the
    # whole city; role holders (per grid, per village) are there at every scale.
    households = SHANGLUO.households_per_grid / params.households_per_grid
    grow = (persons * households - role_holders) / (persons - role_holders)
    print(
        f"  {persons:,} persons; {deliveries:,} deliveries planned in {plan_s:.1f} s; SMS: "
        + ", ".join(f"{n:,} {s}" for s, n in sorted(sms.items()))
    )
    print(
        "  ack timeouts: "
        + (
            "config/policy.toml's (red: 5 min); the sweep escalates as they pass"
            if shipped
            else "beyond the window (nothing escalates); warning expiry beyond the window"
        )
    )

    runs: dict[float, Run] = {}
    for capacity in sorted({line.capacity for line in lines}):
        work = DATA / "sms-run.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{work}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(planned, work)
        print(f"\nsending at {capacity:,.0f} SMS/s ...", flush=True)
        run, t0 = asyncio.run(drive(work, capacity, batch=args.batch, shipped=shipped))
        read_log(work, warning_id, run, t0)
        runs[capacity] = run
        labels = [line.label for line in lines if line.capacity == capacity]
        print_run(labels, run, grow, args.scale, args.batch)
    summary(lines, runs, grow, args.scale)
    for name in ("sms-plan.db", "sms-run.db"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{DATA / name}{suffix}").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scheduled test broadcasts on a real store (SQLite and PostgreSQL) with the real warning
service and planning worker, driven by a controllable clock: a run makes a Test warning
planned by the schedule's rules, missed fire times run late within the grace window or are
recorded missed, quiet hours skip, a second runner on the same store cannot claim a fire
time, and the config's schedules are kept in step with the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from small_directory import CITY, COUNTY_A, VILLAGE_A1a, fill_small_directory
from stores import StoreTarget

from dispatcher.config import ApiRole, CapConfig, load_policy
from dispatcher.domain import Level, MsgType, Status, WarningState
from dispatcher.planning_worker import PlanningWorker
from dispatcher.policy import Policy
from dispatcher.schedules.runner import ScheduleRunner
from dispatcher.schedules.service import (
    ScheduleRejected,
    ScheduleService,
    warning_identifier,
)
from dispatcher.schedules.spec import ScheduleInput, ScheduleSpec
from dispatcher.schedules.timing import SHANGHAI
from dispatcher.store.schedules_base import (
    RunClaim,
    RunKind,
    RunState,
    ScheduleRunRow,
    ScheduleSource,
)
from dispatcher.store.sql_store import SqlStore
from dispatcher.store.sqlite import SqliteStore
from dispatcher.warning_input import CancelRequest, WarningInput
from dispatcher.warning_service import Principal, WarningRejected, WarningService

ROOT = Path(__file__).resolve().parent.parent
POLICY = load_policy(ROOT / "config" / "policy.toml")
SENDER = "yjj@test.tocsin"
DUTY = Principal("desk-1", ApiRole.DUTY_OFFICER)


def _a_monday_ahead() -> datetime:
    """A Monday, 10:00 in China (02:00 UTC), over a week ahead: the report jobs the runner
    plans from the test's clock must still be in the future for the real scheduler."""
    day = datetime.now(SHANGHAI).date() + timedelta(days=8)
    day += timedelta(days=(7 - day.weekday()) % 7)
    return datetime.combine(day, time(10), tzinfo=SHANGHAI)


MONDAY_10 = _a_monday_ahead()
MINUTE = timedelta(minutes=1)
SPEAKERS_A = ["spk-a1a", "spk-a1b"]


class Clock:
    """The time every part of the rig goes by."""

    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, at: datetime) -> None:
        self.now = at.timestamp()


def weekly(**changes: Any) -> ScheduleInput:
    body: dict[str, Any] = {
        "id": "weekly",
        "name": "每周一喇叭测试",
        "cron": "0 10 * * 1",
        "areas": [COUNTY_A],
        "rules": [{"audience": "devices", "device_kinds": ["loudspeaker"]}],
        "headline": "应急广播例行测试",
    }
    body.update(changes)
    return ScheduleInput.model_validate(body)


@dataclass
class Node:
    """One dispatcher node: its store connection, planner, warning service and runner."""

    store: SqlStore
    planner: PlanningWorker
    warnings: WarningService
    service: ScheduleService
    runner: ScheduleRunner

    async def stop(self) -> None:
        await self.runner.stop()
        await self.planner.stop()
        await self.store.close()


@dataclass
class Rig:
    target: StoreTarget
    clock: Clock
    make: Callable[..., Any]
    nodes: list[Node]

    @property
    def node(self) -> Node:
        return self.nodes[0]

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self.target.connect()
        try:
            return [tuple(row) for row in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()

    async def runs(self, schedule_id: str = "weekly") -> list[ScheduleRunRow]:
        return list(reversed(await self.node.store.list_schedule_runs(schedule_id, limit=1000)))

    def planned(self, warning_id: str) -> list[tuple[str, str, str]]:
        """(audience, target, channel) of the warning's deliveries."""
        return sorted(
            self.rows(
                "SELECT d.audience, d.target_id, d.channel FROM deliveries d "
                "JOIN warnings w ON w.seq = d.warning_seq WHERE w.id = ?",
                (warning_id,),
            )
        )


@pytest.fixture
async def rig(store_target: StoreTarget) -> AsyncIterator[Rig]:
    first = await store_target.open(node="node-a")
    fill_small_directory(store_target)
    clock = Clock(MONDAY_10 - timedelta(hours=1))
    nodes: list[Node] = []

    async def make(name: str, *, store: SqlStore | None = None, policy: Policy = POLICY) -> Node:
        opened = store or await store_target.open(node=name)
        planner = PlanningWorker(opened, lambda: policy, clock=clock)
        await planner.start()
        warnings = WarningService(
            opened, CapConfig(sender=SENDER), on_created=planner.enqueue, clock=clock
        )
        service = ScheduleService(opened, warnings, sender=SENDER, clock=clock, node=name)
        runner = ScheduleRunner(
            service,
            policy=lambda: policy,
            device_ack_timeout=120.0,
            report_store=opened,
            clock=clock,
        )
        node = Node(opened, planner, warnings, service, runner)
        nodes.append(node)
        return node

    await make("node-a", store=first)
    yield Rig(store_target, clock, make, nodes)
    for node in nodes:
        await node.stop()


async def test_a_run_makes_a_test_warning_planned_by_the_schedules_rules(rig: Rig) -> None:
    node = rig.node
    await node.service.create(weekly(), principal=DUTY)
    rig.clock.set(MONDAY_10 + timedelta(seconds=3))
    caught = await node.runner.catch_up("weekly")
    assert caught is not None and caught.outcome is not None
    run = caught.outcome.run
    assert run is not None
    assert (run.state, run.kind, run.fire_at) == (RunState.RAN, RunKind.CRON, MONDAY_10)
    assert run.note == "" and run.node == "node-a" and run.principal == "scheduler"
    assert run.warning_id is not None
    warning = await node.store.get_warning(run.warning_id)
    assert warning is not None
    assert (warning.status, warning.msg_type, warning.level) == (
        Status.TEST,
        MsgType.ALERT,
        Level.BLUE,
    )
    stamp = MONDAY_10.astimezone(UTC).strftime("%Y%m%dT020000Z")
    assert warning.identifier == f"tocsin-schedule-weekly-{stamp}"
    assert warning.created_by == "scheduler"
    assert warning.expires == MONDAY_10 + timedelta(hours=2, seconds=3)
    await node.planner.wait_idle()
    # The blue level policy texts grid members; the schedule's rules reach loudspeakers only.
    assert rig.planned(warning.id) == [("device", s, "speaker") for s in SPEAKERS_A]
    audit = await node.store.list_audit(limit=10)
    assert [(e.action, e.principal) for e in audit][:2] == [
        ("warning.alert", "scheduler"),
        ("schedule.create", "desk-1"),
    ]
    assert audit[0].detail["plan_rules"] == [
        {"audience": "devices", "device_kinds": ["loudspeaker"]}
    ]


async def test_a_drill_with_people_rules(rig: Rig) -> None:
    node = rig.node
    drill = weekly(
        id="drill",
        cron="0 9 12 5 *",
        status="Exercise",
        level="yellow",
        areas=[VILLAGE_A1a],
        rules=[
            {"audience": "devices", "device_kinds": ["loudspeaker"]},
            {"audience": "grid_members", "channels": ["sms", "voice"]},
        ],
    )
    schedule = await node.service.create(drill, principal=DUTY)
    outcome = await node.service.fire(schedule, MONDAY_10, kind=RunKind.MANUAL, principal=DUTY)
    assert outcome.run is not None and outcome.run.warning_id is not None
    warning = await node.store.get_warning(outcome.run.warning_id)
    assert warning is not None and warning.status is Status.EXERCISE
    await node.planner.wait_idle()
    assert rig.planned(warning.id) == [
        ("device", "spk-a1a", "speaker"),
        ("grid_member", "p01", "sms"),
        ("grid_member", "p01", "voice"),
    ]


async def test_a_missed_fire_time_within_grace_runs_late(rig: Rig) -> None:
    node = rig.node
    await node.service.create(weekly(), principal=DUTY)
    # The daemon was down at 10:00 and is back at 10:40.
    rig.clock.set(MONDAY_10 + timedelta(minutes=40))
    caught = await node.runner.catch_up("weekly")
    assert caught is not None and caught.outcome is not None
    run = caught.outcome.run
    assert run is not None and run.state is RunState.RAN
    assert run.fire_at == MONDAY_10
    assert run.started_at == MONDAY_10 + timedelta(minutes=40)
    assert run.note == "ran 40m late: the daemon was not running at the fire time"


async def test_older_missed_fire_times_are_recorded_missed(rig: Rig) -> None:
    node = rig.node
    rig.clock.set(MONDAY_10 - timedelta(weeks=3, hours=1))
    await node.service.create(weekly(), principal=DUTY)
    rig.clock.set(MONDAY_10 + timedelta(minutes=20))
    caught = await node.runner.catch_up("weekly")
    assert caught is not None and caught.missed == 3
    runs = await rig.runs()
    assert [(r.fire_at, r.state) for r in runs] == [
        (MONDAY_10 - timedelta(weeks=3), RunState.MISSED),
        (MONDAY_10 - timedelta(weeks=2), RunState.MISSED),
        (MONDAY_10 - timedelta(weeks=1), RunState.MISSED),
        (MONDAY_10, RunState.RAN),
    ]
    assert all("a later fire time ran instead" in r.note for r in runs[:3])
    assert all(r.warning_id is None for r in runs[:3])
    # Looking again changes nothing: every fire time is recorded.
    again = await node.runner.catch_up("weekly")
    assert again is not None and again.outcome is None and again.missed == 0
    assert len(await rig.runs()) == 4


async def test_past_the_grace_window_nothing_is_sent(rig: Rig) -> None:
    node = rig.node
    await node.service.create(weekly(grace="30m"), principal=DUTY)
    rig.clock.set(MONDAY_10 + timedelta(minutes=31))
    caught = await node.runner.catch_up("weekly")
    assert caught is not None and caught.outcome is None
    (run,) = await rig.runs()
    assert (run.fire_at, run.state, run.warning_id) == (MONDAY_10, RunState.MISSED, None)
    assert "past the grace window (0:30:00)" in run.note
    assert rig.rows("SELECT count(*) FROM warnings") == [(0,)]


async def test_a_run_inside_quiet_hours_is_skipped(rig: Rig) -> None:
    node = rig.node
    await node.service.create(
        weekly(id="nightly", cron="0 23 * * *", quiet_hours="22:00-07:00"), principal=DUTY
    )
    rig.clock.set(MONDAY_10.replace(hour=23) + timedelta(seconds=1))
    caught = await node.runner.catch_up("nightly")
    assert caught is not None and caught.outcome is not None
    run = caught.outcome.run
    assert run is not None and run.state is RunState.SKIPPED_QUIET
    assert run.warning_id is None
    assert "quiet hours 22:00-07:00" in run.note
    assert rig.rows("SELECT count(*) FROM warnings") == [(0,)]


async def test_a_late_run_that_would_fall_into_quiet_hours_is_skipped(rig: Rig) -> None:
    node = rig.node
    await node.service.create(
        weekly(id="evening", cron="30 21 * * *", quiet_hours="22:00-07:00"), principal=DUTY
    )
    # Missed at 21:30; back at 22:10, within the grace window but inside the quiet hours.
    rig.clock.set(MONDAY_10.replace(hour=22, minute=10))
    caught = await node.runner.catch_up("evening")
    assert caught is not None and caught.outcome is not None
    run = caught.outcome.run
    assert run is not None
    assert (run.fire_at, run.state) == (
        MONDAY_10.replace(hour=21, minute=30),
        RunState.SKIPPED_QUIET,
    )


async def test_run_now_is_refused_inside_quiet_hours_unless_forced(rig: Rig) -> None:
    node = rig.node
    await node.service.create(weekly(quiet_hours="09:00-11:00"), principal=DUTY)
    with pytest.raises(ScheduleRejected) as refused:
        await node.service.run_now("weekly", principal=DUTY)
    assert (refused.value.code, refused.value.http_status) == ("quiet_hours", 409)
    assert "09:00" in refused.value.message
    forced = await node.service.run_now("weekly", principal=DUTY, force=True)
    assert forced.run is not None and forced.run.state is RunState.RAN
    assert forced.run.kind is RunKind.MANUAL
    audit = await node.store.list_audit(limit=1)
    assert audit[0].action == "schedule.run" and audit[0].detail["force"] is True


async def test_a_second_runner_cannot_claim_the_same_fire_time(rig: Rig) -> None:
    a = rig.node
    b = await rig.make("node-b")
    await a.service.create(weekly(), principal=DUTY)
    rig.clock.set(MONDAY_10 + timedelta(seconds=1))
    # Both nodes' cron jobs fire at once.
    caught = await asyncio.gather(a.runner.catch_up("weekly"), b.runner.catch_up("weekly"))
    outcomes = [c.outcome for c in caught if c is not None and c.outcome is not None]
    ran = [o.run for o in outcomes if o.run is not None]
    assert len(ran) == 1
    # The other either found its claim taken or, when the first had finished before it
    # looked (a loaded machine), nothing due: never a second run. (The claim alone deciding
    # is pinned down without a race below.)
    assert all(o.run is None for o in outcomes if o.run is not ran[0])
    (run,) = await rig.runs()
    assert run.state is RunState.RAN and run.node == ran[0].node
    assert rig.rows("SELECT count(*) FROM warnings") == [(1,)]
    # And a node that looks later finds nothing due.
    later = await b.runner.catch_up("weekly")
    assert later is not None and later.outcome is None


async def test_the_claim_alone_decides(rig: Rig) -> None:
    """A node whose catch-up thinks a fire time is due still cannot run it once another
    node has recorded it (the unique key, not the catch-up's view, decides)."""
    a = rig.node
    b = await rig.make("node-b")
    schedule = await a.service.create(weekly(), principal=DUTY)
    first = await a.service.fire(schedule, MONDAY_10, kind=RunKind.CRON)
    second = await b.service.fire(schedule, MONDAY_10, kind=RunKind.CRON)
    assert first.run is not None and second.run is None
    assert await b.service.record_missed(schedule, [(MONDAY_10, "late")]) == 0
    assert [r.state for r in await rig.runs()] == [RunState.RAN]


async def test_a_restart_does_not_run_a_fire_time_again(rig: Rig) -> None:
    node = rig.node
    await node.service.create(weekly(), principal=DUTY)
    rig.clock.set(MONDAY_10 + timedelta(seconds=1))
    await node.runner.start()
    await node.runner.stop()
    again = await rig.make("node-a-again")
    await again.runner.start()
    assert [r.state for r in await rig.runs()] == [RunState.RAN]
    assert rig.rows("SELECT count(*) FROM warnings") == [(1,)]


async def test_the_cron_job_is_installed_in_asia_shanghai(rig: Rig) -> None:
    node = rig.node
    await node.service.create(weekly(), principal=DUTY)
    await node.runner.start()
    upcoming = node.runner.next_fire_at("weekly")
    assert upcoming is not None and upcoming > datetime.now(UTC)
    local = upcoming.astimezone(SHANGHAI)
    assert (local.strftime("%A"), local.hour, local.minute) == ("Monday", 10, 0)
    assert upcoming.astimezone(UTC).hour == 2
    assert upcoming - datetime.now(UTC) <= timedelta(days=7)


async def test_the_cron_job_runs_the_due_fire_time(rig: Rig) -> None:
    """The APScheduler job itself, made due now instead of waited for."""
    node = rig.node
    await node.service.create(weekly(), principal=DUTY)
    await node.runner.start()
    rig.clock.set(MONDAY_10 + timedelta(seconds=2))
    scheduler = node.runner._scheduler
    assert scheduler is not None
    scheduler.get_job("schedule:weekly").modify(next_run_time=datetime.now(UTC))
    scheduler.wakeup()
    for _ in range(250):
        runs = await rig.runs()
        if runs and runs[0].state is RunState.RAN:
            break
        await asyncio.sleep(0.02)
    assert [(r.fire_at, r.state) for r in await rig.runs()] == [(MONDAY_10, RunState.RAN)]


async def test_a_schedule_added_while_running_gets_a_job(rig: Rig) -> None:
    node = rig.node
    await node.runner.start()
    assert node.runner.next_fire_at("weekly") is None
    await node.service.create(weekly(), principal=DUTY)
    for _ in range(100):
        if node.runner.next_fire_at("weekly") is not None:
            break
        await asyncio.sleep(0.01)
    assert node.runner.next_fire_at("weekly") is not None
    await node.service.delete("weekly", principal=DUTY)
    for _ in range(100):
        if node.runner.next_fire_at("weekly") is None:
            break
        await asyncio.sleep(0.01)
    assert node.runner.next_fire_at("weekly") is None


async def test_config_schedules_are_kept_in_step(rig: Rig) -> None:
    node = rig.node
    spec = ScheduleSpec.model_validate({**weekly().model_dump(), "id": "weekly"})
    await node.runner.start([spec])
    (stored,) = await node.service.schedules()
    assert stored.row.source is ScheduleSource.CONFIG
    assert stored.row.active_since == MONDAY_10 - timedelta(hours=1)
    # The API cannot remove it.
    with pytest.raises(ScheduleRejected) as refused:
        await node.service.delete("weekly", principal=DUTY)
    assert refused.value.code == "config_schedule" and "config file" in refused.value.message
    await node.runner.stop()
    # A new cron: active anew from now, so the old cron's times are not missed runs.
    rig.clock.set(MONDAY_10 + timedelta(days=2))
    changed = spec.model_copy(update={"cron": "0 9 * * 3"})
    await node.runner.start([changed])
    (stored,) = await node.service.schedules()
    assert stored.spec.cron == "0 9 * * 3"
    assert stored.row.active_since == MONDAY_10 + timedelta(days=2)
    await node.runner.stop()
    # Gone from the config: removed, its history kept.
    await node.runner.start([])
    assert await node.service.schedules() == []
    actions = [e.action for e in await node.store.list_audit(limit=10)]
    assert actions[:3] == ["schedule.delete", "schedule.change", "schedule.create"]


async def test_a_reloaded_config_changes_the_jobs(rig: Rig) -> None:
    node = rig.node
    spec = ScheduleSpec.model_validate({**weekly().model_dump(), "id": "weekly"})
    await node.runner.start([spec])
    assert node.runner.next_fire_at("weekly") is not None
    other = spec.model_copy(update={"id": "daily", "cron": "0 8 * * *"})
    await node.runner.apply_config([other])
    assert node.runner.next_fire_at("weekly") is None
    upcoming = node.runner.next_fire_at("daily")
    assert upcoming is not None and upcoming.astimezone(SHANGHAI).hour == 8
    await node.runner.apply_config([other.model_copy(update={"enabled": False})])
    assert node.runner.next_fire_at("daily") is None
    assert [s.id for s in await node.service.schedules()] == ["daily"]


async def test_the_config_takes_over_an_api_schedule_of_the_same_id(rig: Rig) -> None:
    node = rig.node
    await node.service.create(weekly(headline="从接口添加"), principal=DUTY)
    spec = ScheduleSpec.model_validate({**weekly().model_dump(), "id": "weekly"})
    await node.runner.start([spec])
    (stored,) = await node.service.schedules()
    assert stored.row.source is ScheduleSource.CONFIG
    assert stored.spec.headline == "应急广播例行测试"


async def test_an_interrupted_claim_is_settled_at_the_next_start(rig: Rig) -> None:
    node = rig.node
    await node.service.create(weekly(), principal=DUTY)
    now = datetime.fromtimestamp(rig.clock(), UTC)
    # A node stopped after claiming 10:00 — before making its warning.
    await node.store.claim_schedule_run(
        RunClaim("weekly", MONDAY_10, RunKind.CRON, RunState.RUNNING, "gone"), now=now
    )
    # And one stopped after its warning was stored, before recording it.
    later = MONDAY_10 + timedelta(weeks=1)
    await node.store.claim_schedule_run(
        RunClaim("weekly", later, RunKind.CRON, RunState.RUNNING, "gone"), now=now
    )
    made = await node.warnings.submit(
        WarningInput(
            level=Level.BLUE,
            event="应急广播测试",
            headline="应急广播例行测试",
            area_codes=[COUNTY_A],
            status=Status.TEST,
            identifier=warning_identifier("weekly", later, RunKind.CRON),
            sender=SENDER,
        ),
        principal=Principal("scheduler", ApiRole.ADMIN),
    )
    rig.clock.set(MONDAY_10 - timedelta(minutes=50))
    settled = await node.service.settle_stale_runs()
    assert {(r.fire_at, r.state, r.warning_id) for r in settled} == {
        (MONDAY_10, RunState.FAILED, None),
        (later, RunState.RAN, made.warning.id),
    }


async def test_a_refused_warning_is_a_failed_run(rig: Rig) -> None:
    node = rig.node
    # A county added for the schedule, and gone from the directory since (it has nothing
    # beneath it, so it can be removed without turning the foreign keys off).
    gone = "611099000000"
    conn = rig.target.connect()
    conn.execute("BEGIN")
    conn.execute("INSERT INTO areas VALUES (?,?,?,?)", (gone, "已撤销县", "county", CITY))
    conn.executemany("INSERT INTO area_closure VALUES (?,?,?)", [(gone, gone, 0), (CITY, gone, 1)])
    conn.execute("COMMIT")
    schedule = await node.service.create(weekly(areas=[gone]), principal=DUTY)
    conn.execute("BEGIN")
    conn.execute("DELETE FROM area_closure WHERE descendant = ?", (gone,))
    conn.execute("DELETE FROM areas WHERE code = ?", (gone,))
    conn.execute("COMMIT")
    conn.close()
    outcome = await node.service.fire(schedule, MONDAY_10, kind=RunKind.CRON)
    assert outcome.run is not None and outcome.run.state is RunState.FAILED
    assert outcome.run.note.startswith(f"unknown_area: unknown area code(s): {gone}")
    assert outcome.rejection is not None and outcome.rejection.field == "areas"


async def test_a_cancel_of_a_scheduled_run_stops_the_same_devices(rig: Rig) -> None:
    node = rig.node
    schedule = await node.service.create(weekly(), principal=DUTY)
    outcome = await node.service.fire(schedule, MONDAY_10, kind=RunKind.CRON)
    assert outcome.run is not None and outcome.run.warning_id is not None
    await node.planner.wait_idle()
    cancel = await node.warnings.cancel(outcome.run.warning_id, CancelRequest(), principal=DUTY)
    assert cancel.warning.status is Status.TEST
    assert cancel.warning.plan_rules is not None
    await node.planner.wait_idle()
    # Blue has no devices rule: without the schedule's rules the Cancel would reach nothing.
    assert rig.planned(cancel.warning.id) == [("device", s, "speaker") for s in SPEAKERS_A]
    old = await node.store.get_warning(outcome.run.warning_id)
    assert old is not None and old.state is WarningState.CANCELLED


async def test_an_actual_warning_cannot_carry_plan_rules(rig: Rig) -> None:
    spec = ScheduleSpec.model_validate({**weekly().model_dump(), "id": "weekly"})
    with pytest.raises(WarningRejected) as refused:
        await rig.node.warnings.submit(
            WarningInput(
                level=Level.RED,
                event="暴雨",
                headline="暴雨红色预警",
                area_codes=[COUNTY_A],
                status=Status.ACTUAL,
            ),
            principal=DUTY,
            plan_rules=spec.rules,
        )
    assert refused.value.code == "plan_rules_not_allowed"


async def test_the_report_is_planned_after_the_devices_had_time(rig: Rig) -> None:
    node = rig.node
    await node.service.create(weekly(), principal=DUTY)
    await node.runner.start()
    # Blue sets no device_ack_timeout: the engine's 120 s, and a minute more.
    schedule = await node.service.get("weekly")
    assert node.runner.report_delay(schedule.spec) == 180.0
    assert node.runner.report_delay(weekly(report_after="10m").with_id("x")) == 600.0
    rig.clock.set(MONDAY_10 + timedelta(seconds=5))
    caught = await node.runner.catch_up("weekly")
    assert caught is not None and caught.outcome is not None and caught.outcome.run is not None
    run = caught.outcome.run
    assert node.runner.scheduled_reports() == {run.id: run.started_at + timedelta(seconds=180)}


async def test_report_delay_follows_the_levels_device_timeout(tmp_path: Path) -> None:
    data = POLICY.model_dump(mode="json")
    data["levels"]["red"]["device_ack_timeout"] = "5m"
    policy = Policy.model_validate(data)
    store = await SqliteStore.open(tmp_path / "t.db")
    try:
        warnings = WarningService(store, CapConfig(), on_created=lambda _: None)
        service = ScheduleService(store, warnings, sender="x@y")
        runner = ScheduleRunner(
            service, policy=lambda: policy, device_ack_timeout=120.0, report_store=store
        )
        red = weekly(level="red").with_id("red")
        assert runner.report_delay(red) == 360.0
    finally:
        await store.close()

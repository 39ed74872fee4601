"""Fires the schedules: an APScheduler ``AsyncIOScheduler`` with one ``CronTrigger`` (in
Asia/Shanghai) per enabled schedule, a catch-up at start and whenever a schedule is added, and
the test report a while after each run.

A cron job does not trust that it fires exactly once per fire time: each firing (and each
catch-up) asks :func:`dispatcher.schedules.timing.due_fires` which fire times since the last
one handled are due now — the newest runs if within the schedule's grace window, the others
are recorded missed — and every one is claimed through the store's unique key, so a second
runner on the same store, a restart or a repeated firing never makes a second warning.

With several nodes on one PostgreSQL database every node keeps the cron jobs, but only the
scheduler leader (:mod:`dispatcher.schedules.leader`) fires them and makes the reports. A node
that becomes the leader does what a start does — settles interrupted claims, catches up on
the fire times due (those within the grace window run, once: the claim decides), plans the
reports still to be made — and one that loses the lead stops firing. Every node also looks
at the store every ``refresh_every`` seconds for schedules added, changed or removed through
another node's API (the leader catches up on them).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry

from dispatcher.config import LoadedConfig
from dispatcher.policy import Policy
from dispatcher.reports.test_report import (
    DEFAULT_HEARTBEAT_TIMEOUT,
    LOG_DEVICE_IDS,
    TestReport,
    build_test_report,
    format_test_report_log,
)
from dispatcher.schedules.leader import SchedulerLeader
from dispatcher.schedules.service import RunOutcome, Schedule, ScheduleService, node_name
from dispatcher.schedules.spec import ScheduleSpec
from dispatcher.schedules.timing import SHANGHAI, DueFires, crontab_trigger, due_fires
from dispatcher.store.reports_base import ReportStore
from dispatcher.store.schedules_base import RunKind, ScheduleRunRow
from dispatcher.store.sql_store import SqlStore
from dispatcher.warning_service import WarningService

log = structlog.get_logger(__name__)

#: After the level's device acknowledgement timeout, this much more before the report: the
#: last "played" reports are in by then.
REPORT_MARGIN = 60.0
#: How long stop() waits for runs in progress (a run is one store transaction or two).
STOP_TIMEOUT = 10.0
#: With several nodes: how often the runner looks at the store for schedules changed through
#: another node (and, on the leader, for fire times and reports left undone).
REFRESH_EVERY = 15.0
#: A claim still ``running`` this long after it was made is settled by the leader's refresh (a
#: run takes well under a second; the node that made it stopped).
STALE_CLAIM = 300.0
_JOB = "schedule:{id}"
_REPORT_JOB = "report:{id}"
_REFRESH_JOB = "refresh"


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What one look at a schedule found and did."""

    due: DueFires
    #: The outcome of running the newest due fire time, if one was due within the grace.
    outcome: RunOutcome | None = None
    #: Missed fire times recorded now (those recorded before are not counted again).
    missed: int = 0


class ScheduleRunner:
    def __init__(
        self,
        service: ScheduleService,
        *,
        policy: Callable[[], Policy],
        device_ack_timeout: float,
        report_store: ReportStore,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        leader: SchedulerLeader | None = None,
        refresh_every: float | None = None,
    ) -> None:
        """``device_ack_timeout``: the engine's default (a level's policy may override it);
        ``report_store``: what the test reports read (the store); ``heartbeat_timeout``: the
        engine's device_heartbeat_timeout, for the reports' silent devices; ``clock``: the
        time the catch-up and the reports go by; ``leader``: this node's part in the election
        of the node that fires (the runner starts and stops it; None: this node always
        fires); ``refresh_every``: how often to look for schedules changed by other nodes
        (None: never — no other node changes them)."""
        self.service = service
        service.listener = self
        self._policy = policy
        self._device_ack_timeout = device_ack_timeout
        self._report_store = report_store
        self._heartbeat_timeout = heartbeat_timeout
        self._clock = clock
        self._scheduler: AsyncIOScheduler | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.leader = leader
        self._refresh_every = refresh_every
        self._follower: asyncio.Task[None] | None = None
        #: The cron expression of each installed job, by schedule id.
        self._crons: dict[str, str] = {}
        #: Runs whose report job was planned while this node leads.
        self._reports_planned: set[int] = set()

    @property
    def running(self) -> bool:
        return self._scheduler is not None and bool(self._scheduler.running)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @property
    def leading(self) -> bool:
        """Whether this node fires the schedules now."""
        return self.leader is None or self.leader.leading

    async def start(self, config: Sequence[ScheduleSpec] = ()) -> None:
        """Sync the config's schedules into the store and install a cron job per enabled
        schedule; then, if this node leads (it always does without a leader), settle claims a
        stopped daemon left, catch up on what was missed, and plan the reports still to be
        made. A node that does not lead does so when it is elected."""
        await self.service.sync_config(config)
        self._scheduler = AsyncIOScheduler(
            timezone=SHANGHAI,
            # The catch-up decides about late and missed fire times, not APScheduler.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._scheduler.start()
        for schedule in await self.service.schedules():
            self._install(schedule)
        if self._refresh_every is not None:
            self._scheduler.add_job(
                self._on_refresh,
                trigger=IntervalTrigger(seconds=self._refresh_every),
                id=_REFRESH_JOB,
                name="schedules changed elsewhere",
            )
        if self.leader is not None:
            await self.leader.start()
        led = self.leading
        if led:
            await self._lead()
        if self.leader is not None:
            self._follower = asyncio.get_running_loop().create_task(
                self._follow(self.leader, led=led), context=contextvars.Context()
            )
            self._follower.add_done_callback(self._done)
        jobs = [job.id for job in self._scheduler.get_jobs() if job.id.startswith("schedule:")]
        log.info("schedules running", jobs=len(jobs), leading=led)

    async def stop(self) -> None:
        """No more firings; runs in progress finish (within STOP_TIMEOUT); then this node
        gives up the lead."""
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self._scheduler is not None and self._scheduler.running:
            # pause, not shutdown, first: shutdown cancels the jobs' tasks mid-run.
            self._scheduler.pause()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=STOP_TIMEOUT)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None
        self._crons.clear()
        if self.leader is not None:
            await self.leader.stop()

    async def apply_config(self, config: Sequence[ScheduleSpec]) -> None:
        """Take a reloaded config's ``[[schedules]]`` (SIGHUP): sync them into the store,
        then install, change or remove the cron jobs to match, catching up on each."""
        await self.service.sync_config(config)
        current = {s.id for s in await self.service.schedules()}
        installed: set[str] = set()
        if self._scheduler is not None:
            prefix = _JOB.format(id="")
            installed = {
                job.id.removeprefix(prefix)
                for job in self._scheduler.get_jobs()
                if job.id.startswith(prefix)
            }
        for schedule_id in sorted(installed | current):
            await self._refresh(schedule_id)

    def next_fire_at(self, schedule_id: str) -> datetime | None:
        """When the schedule's cron job fires next (None: no job)."""
        if self._scheduler is None:
            return None
        job = self._scheduler.get_job(_JOB.format(id=schedule_id))
        return job.next_run_time if job is not None else None

    def scheduled_reports(self) -> dict[int, datetime]:
        """Run id → when its test report is due, for the reports not made yet."""
        if self._scheduler is None:
            return {}
        prefix = _REPORT_JOB.format(id="")
        return {
            int(job.id.removeprefix(prefix)): job.next_run_time
            for job in self._scheduler.get_jobs()
            if job.id.startswith(prefix)
        }

    # -- the lead ---------------------------------------------------------------------------------
    async def _lead(self) -> None:
        """What a node does when it starts to fire the schedules: settle the claims a stopped
        node left, catch up on every schedule, plan the reports still to be made."""
        await self.service.settle_stale_runs()
        for schedule in await self.service.schedules():
            self._install(schedule)
            await self.catch_up(schedule.id)
        self._reports_planned.clear()
        await self._plan_unreported()

    async def _follow(self, leader: SchedulerLeader, *, led: bool) -> None:
        """Lead whenever ``leader`` is elected (``led``: start() has led already)."""
        while True:
            if not led:
                await leader.elected.wait()
                log.info("this node fires the schedules now: catching up", node=leader.node)
                while self.leading:
                    try:
                        await self._lead()
                        break
                    except Exception:
                        # The database is likely back a moment later: try again while leading.
                        log.exception("catching up as the new scheduler leader failed")
                        await asyncio.sleep(leader.check_every)
            led = False
            await leader.lost.wait()
            log.warning("this node no longer fires the schedules", node=leader.node)

    async def _on_refresh(self) -> None:
        task = self._spawn(self.refresh())
        with contextlib.suppress(Exception):
            await asyncio.shield(task)

    async def refresh(self) -> None:
        """Bring the cron jobs in step with the store (schedules added, changed or removed
        through another node); on the leader, also catch up on every schedule, settle claims
        left by a node that stopped mid-run, and plan the reports not planned yet."""
        schedules = {s.id: s for s in await self.service.schedules() if s.row.enabled}
        for schedule_id in sorted(set(self._crons) - set(schedules)):
            self._uninstall(schedule_id)
        for schedule in schedules.values():
            if self._crons.get(schedule.id) != schedule.spec.cron:
                self._install(schedule)
        if not self.leading:
            return
        await self.service.settle_stale_runs(older_than=STALE_CLAIM)
        for schedule_id in sorted(schedules):
            await self.catch_up(schedule_id)
        await self._plan_unreported()

    async def _plan_unreported(self) -> None:
        for run in await self.service.store.unreported_schedule_runs():
            if run.id in self._reports_planned:
                continue
            reported = await self.service.find(run.schedule_id)
            # A removed schedule's last run is still reported, at once.
            self._plan_report(
                run, self.report_due_at(reported.spec, run) if reported else run.started_at
            )

    # -- catch-up and runs ----------------------------------------------------------------------
    async def on_cron(self, schedule_id: str) -> CatchUp | None:
        """What the schedule's cron job does: catch up if this node leads (None: it does not,
        or there is no such enabled schedule)."""
        if not self.leading:
            log.debug("fire time left to the scheduler leader", schedule_id=schedule_id)
            return None
        return await self.catch_up(schedule_id)

    async def catch_up(self, schedule_id: str) -> CatchUp | None:
        """Handle the schedule's fire times due now (None: no such enabled schedule)."""
        lock = self._locks.setdefault(schedule_id, asyncio.Lock())
        async with lock:
            schedule = await self.service.find(schedule_id)
            if schedule is None or not schedule.row.enabled:
                return None
            now = self.now()
            last = await self.service.store.last_cron_fire(schedule_id)
            since = max(schedule.row.active_since, last) if last else schedule.row.active_since
            spec = schedule.spec
            # Thousands of fire times after a long stop: enumerate them off the event loop.
            due = await asyncio.to_thread(
                due_fires,
                crontab_trigger(spec.cron),
                since=since,
                now=now,
                grace=timedelta(seconds=spec.grace),
            )
            missed = 0
            if due.missed:
                missed = await self.service.record_missed(schedule, _missed_notes(spec, due))
                log.warning(
                    "scheduled runs missed",
                    schedule_id=schedule_id,
                    missed=len(due.missed) + due.earlier,
                    first=due.missed[0].isoformat(),
                    last=due.missed[-1].isoformat(),
                )
            outcome = None
            if due.run is not None:
                outcome = await self.service.fire(schedule, due.run, kind=RunKind.CRON)
            return CatchUp(due, outcome, missed)

    def schedule_changed(self, schedule_id: str) -> None:
        """A schedule was added or removed (ScheduleListener)."""
        self._spawn(self._refresh(schedule_id))

    def run_recorded(self, schedule: Schedule, run: ScheduleRunRow) -> None:
        """A run made its warning (ScheduleListener): its report is due later."""
        self._plan_report(run, self.report_due_at(schedule.spec, run))

    async def _refresh(self, schedule_id: str) -> None:
        schedule = await self.service.find(schedule_id)
        if schedule is None or not schedule.row.enabled:
            self._uninstall(schedule_id)
            return
        self._install(schedule)
        if self.leading:
            await self.catch_up(schedule_id)

    def _install(self, schedule: Schedule) -> None:
        if self._scheduler is None:
            return
        if not schedule.row.enabled:
            self._uninstall(schedule.id)
            return
        self._scheduler.add_job(
            self._on_fire,
            trigger=crontab_trigger(schedule.spec.cron),
            args=[schedule.id],
            id=_JOB.format(id=schedule.id),
            name=f"schedule {schedule.id}",
            replace_existing=True,
        )
        self._crons[schedule.id] = schedule.spec.cron

    def _uninstall(self, schedule_id: str) -> None:
        self._crons.pop(schedule_id, None)
        if self._scheduler is not None:
            with contextlib.suppress(LookupError):
                self._scheduler.remove_job(_JOB.format(id=schedule_id))

    async def _on_fire(self, schedule_id: str) -> None:
        # Shielded: a scheduler shutdown cancels its job's task, not the run inside it. A
        # failure is logged by _done.
        task = self._spawn(self.on_cron(schedule_id))
        with contextlib.suppress(Exception):
            await asyncio.shield(task)

    # -- reports --------------------------------------------------------------------------------
    def report_delay(self, spec: ScheduleSpec) -> float:
        """Seconds from a run to its report: the schedule's report_after, or the level's
        device acknowledgement timeout (the engine's, unless the policy sets one) + 1 min."""
        if spec.report_after is not None:
            return spec.report_after
        level_timeout = self._policy().for_level(spec.level).device_ack_timeout
        timeout = self._device_ack_timeout if level_timeout is None else level_timeout
        return timeout + REPORT_MARGIN

    def report_due_at(self, spec: ScheduleSpec, run: ScheduleRunRow) -> datetime:
        return run.started_at + timedelta(seconds=self.report_delay(spec))

    def _plan_report(self, run: ScheduleRunRow, due_at: datetime) -> None:
        if self._scheduler is None or run.warning_id is None:
            return
        self._scheduler.add_job(
            self._on_report,
            # A time already past runs at once (a report left over from before a restart).
            trigger=DateTrigger(run_date=due_at, timezone=UTC),
            args=[run.id],
            id=_REPORT_JOB.format(id=run.id),
            name=f"report of run {run.id}",
            replace_existing=True,
        )
        self._reports_planned.add(run.id)

    async def _on_report(self, run_id: int) -> None:
        if not self.leading:
            # The leader makes it (it plans the runs not reported yet when it is elected).
            self._reports_planned.discard(run_id)
            return
        task = self._spawn(self.report(run_id))
        with contextlib.suppress(Exception):
            await asyncio.shield(task)

    async def report(self, run_id: int) -> TestReport | None:
        """Make the run's test report (dispatcher.reports.test_report): log one line with its
        counts and silent devices, keep the counts on the run. None when the run made no
        warning, or the report could not be made (the next start tries again)."""
        run = await self.service.store.get_schedule_run(run_id)
        if run is None or run.warning_id is None:
            return None
        try:
            report = await build_test_report(
                self._report_store,
                run.warning_id,
                now=self._clock(),
                heartbeat_timeout=self._heartbeat_timeout,
            )
        except Exception:
            log.exception("test report failed", run_id=run_id, warning_id=run.warning_id)
            return None
        await self.service.store.set_schedule_run_report(
            run_id, report_summary(report), now=self.now()
        )
        log.info(
            "test broadcast report",
            schedule_id=run.schedule_id,
            run_id=run_id,
            fire_at=run.fire_at.isoformat(),
            **format_test_report_log(report),
        )
        return report

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        # A context of its own: what a request bound for its log lines (the caller's token)
        # does not follow the runner's work.
        task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("schedule task failed", exc_info=task.exception())


def report_summary(report: TestReport) -> dict[str, Any]:
    """What a run keeps of its test report: the counts and the first silent devices' ids
    (GET /v1/warnings/{id}/test-report has the whole report)."""
    silent = [item.device_id for item in report.maintenance]
    return {
        "complete": report.complete,
        "devices_targeted": report.devices_targeted,
        "devices_acknowledged": report.acknowledged_devices,
        "devices_silent": len(silent),
        "device_problems": report.problems,
        "people_targeted": report.people_targeted,
        "people_acknowledged": report.acknowledged_people,
        "silent_devices": silent[:LOG_DEVICE_IDS],
    }


def _missed_notes(spec: ScheduleSpec, due: DueFires) -> list[tuple[datetime, str]]:
    grace = timedelta(seconds=spec.grace)
    reason = f"the daemon was not running at this time, and it is past the grace window ({grace})"
    if due.run is not None:
        reason = "the daemon was not running at this time; a later fire time ran instead"
    notes = [(fire, reason) for fire in due.missed]
    if due.earlier:
        first, note = notes[0]
        notes[0] = (first, f"{note}; {due.earlier} earlier fire time(s) were missed too")
    return notes


async def start_schedules(
    store: SqlStore,
    warnings: WarningService,
    config: LoadedConfig,
    *,
    policy: Callable[[], Policy],
    registry: CollectorRegistry,
) -> ScheduleRunner:
    """The daemon's runner, started on the config's ``[[schedules]]``; on PostgreSQL it fires
    the schedules while this node is the scheduler leader (``runner.leader``)."""
    service = ScheduleService(
        store,
        warnings,
        sender=config.settings.cap.sender,
        registry=registry,
        node=f"{config.node_name} ({node_name()})",
    )
    leader = SchedulerLeader(
        store, node=config.node_name, check_every=config.settings.node.leader_check
    )
    runner = ScheduleRunner(
        service,
        policy=policy,
        device_ack_timeout=config.settings.engine.device_ack_timeout,
        report_store=store,
        heartbeat_timeout=config.settings.engine.device_heartbeat_timeout,
        leader=leader,
        # On SQLite this node is the only one: nothing changes the schedules behind its back.
        refresh_every=REFRESH_EVERY if leader.dsn is not None else None,
    )
    await runner.start(config.settings.schedules)
    return runner

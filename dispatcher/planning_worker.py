"""Plans accepted warnings in the background, one at a time, in arrival order.

A warning is stored (and answered 202) before it is planned; if the daemon stops in between,
the next start finds it unplanned and plans it, so nothing accepted is lost.

A plan is a sequence of stages (:func:`dispatcher.planner.plan_stages`), each committed in its
own short write transaction, so the engine starts on the devices while people are still being
planned. The devices stage is committed while the covered villages are counted (to size the
later stages' chunks); a warning stopped between two stages (Cancel, Update) stops its plan; a
plan interrupted by a crash resumes after its last committed stage at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dispatcher.domain import AreaLevel, WarningRecord
from dispatcher.planner import device_stage, plan_stages
from dispatcher.policy import Policy, plan_policy
from dispatcher.store.base import PlanResult, PlanStage, Store

log = structlog.get_logger(__name__)

#: Called after each stage the store committed, with that stage's result.
StageCallback = Callable[[PlanResult], Awaitable[None]]

# More villages than any warned area holds (a province has about 30,000).
_MAX_VILLAGES = 10_000_000


class PlanningWorker:
    def __init__(
        self,
        store: Store,
        policy: Callable[[], Policy],
        *,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
        chunk_persons: int | None = None,
        on_stage_committed: Callable[[], None] = lambda: None,
    ) -> None:
        """``chunk_persons`` overrides the planner's chunk sizes (tests);
        ``on_stage_committed`` is called when a stage's deliveries are in the store (the
        engine's wake-up: the first loudspeaker rows are due before the plan is finished)."""
        self._on_stage_committed = on_stage_committed
        self._metrics = _PlanningMetrics(registry or CollectorRegistry())
        self._store = store
        self._policy = policy
        self._clock = clock
        self._chunk_persons = chunk_persons
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> bool:
        """Whether the background task is alive (readiness)."""
        return self._task is not None and not self._task.done()

    def enqueue(self, warning_id: str) -> None:
        self._idle.clear()
        self._queue.put_nowait(warning_id)
        self._metrics.queued.set(self._queue.qsize())

    async def start(self) -> None:
        for warning_id in await self._store.unplanned_warning_ids():
            self.enqueue(warning_id)
        self._task = asyncio.create_task(self._run(), name="tocsin-planner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_idle(self) -> None:
        """Until every queued warning has been planned (for tests and the CLI)."""
        await self._idle.wait()

    async def plan_now(
        self, warning_id: str, *, on_stage: StageCallback | None = None
    ) -> PlanResult:
        """Plan ``warning_id`` stage by stage, from the stage after the last one committed.

        The result counts what this call wrote; ``seconds`` is the wall time from the start
        to the last stage committed. ``on_stage`` is awaited after each committed stage."""
        started = time.perf_counter()
        warning = await self._store.get_warning(warning_id)
        if warning is None:
            raise LookupError(warning_id)
        now = self._clock()
        if warning.expires.timestamp() <= now:
            # Accepted, then the daemon was down past its expiry: sending it now would warn
            # people of something that is over. Recorded, never silently dropped.
            if await self._store.expire_warning(warning_id, now=now):
                log.warning("warning expired before it was planned", warning_id=warning_id)
            return PlanResult(warning_id, 0, 0.0, planned=False, stopped=True)
        # A scheduled test broadcast carries its own rules in place of its level's.
        policy = plan_policy(self._policy(), warning)
        run = _Run(warning_id, started)
        # Devices first: their stage needs no directory counts, so it is committed while the
        # covered villages are counted (on the reader) to size the later stages.
        first = device_stage(warning, policy, now=now)
        sizing = asyncio.create_task(self._covered_villages(warning))
        try:
            if first is not None:
                await self._stage(run, first, on_stage)
                if run.finished:
                    return run.result()
            villages = await sizing
        finally:
            if not sizing.done():
                sizing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sizing
        stages = plan_stages(
            warning, policy, now=now, villages=villages, chunk_persons=self._chunk_persons
        )
        for stage in stages:
            if stage.number > run.stage:
                await self._stage(run, stage, on_stage)
                if run.finished:
                    return run.result()
        # Every stage of the list is committed but not the last one: the list is shorter
        # than when the plan began (a directory import in between changed the chunks).
        # Close the plan rather than leave the warning unplanned for ever.
        log.error(
            "plan stages changed since the plan began; closing it",
            stage=run.stage,
            stages=len(stages),
        )
        await self._stage(run, PlanStage(run.stage + 1, (), last=True, label="close"), on_stage)
        return run.result()

    async def _stage(self, run: _Run, stage: PlanStage, on_stage: StageCallback | None) -> None:
        result = await self._store.execute_plan(run.warning_id, stage, now=self._clock())
        run.add(result)
        if not result.committed:
            return
        if run.stages == 1:
            self._metrics.first_stage.observe(run.first_stage_seconds or 0.0)
        self._metrics.deliveries.inc(result.deliveries)
        log.debug(
            "plan stage committed",
            stage=result.stage,
            label=stage.label,
            deliveries=result.deliveries,
            seconds=round(result.seconds, 3),
        )
        if on_stage is not None:
            await on_stage(result)

    async def _covered_villages(self, warning: WarningRecord) -> list[tuple[str, int]]:
        """The villages under the warning's areas with their number of persons."""
        codes = set(warning.area_codes)
        villages = {
            area.code
            for area in await self._store.areas_with_ancestors(sorted(codes))
            if area.code in codes and area.level == AreaLevel.VILLAGE.value
        }
        for code in sorted(codes - villages):
            below = await self._store.search_areas(
                under=code, level=AreaLevel.VILLAGE.value, limit=_MAX_VILLAGES
            )
            villages.update(area.code for area in below)
        counts = await self._store.area_counts(sorted(villages))
        return [(code, counts[code].persons) for code in sorted(villages)]

    async def _stage_committed(self, result: PlanResult) -> None:
        if result.committed and result.deliveries:
            self._on_stage_committed()

    async def _run(self) -> None:
        while True:
            warning_id = await self._queue.get()
            bound = structlog.contextvars.bind_contextvars(warning_id=warning_id)
            try:
                result = await self.plan_now(warning_id, on_stage=self._stage_committed)
                if result.planned:
                    self._metrics.seconds.observe(result.seconds)
                    log.info(
                        "warning planned",
                        deliveries=result.total_deliveries,
                        written=result.deliveries,
                        stages=result.stage,
                        seconds=round(result.seconds, 3),
                    )
                elif result.committed:
                    log.info(
                        "planning stopped: the warning is no longer active",
                        written=result.deliveries,
                        stages=result.stage,
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                # The warning stays unplanned in the store; the next start retries it.
                self._metrics.failures.inc()
                log.exception("planning failed")
            finally:
                structlog.contextvars.reset_contextvars(**bound)
                self._queue.task_done()
                self._metrics.queued.set(self._queue.qsize())
                if self._queue.empty():
                    self._idle.set()


class _PlanningMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            "tocsin_plan_seconds",
            "Time to plan one warning, from its start to its last stage committed.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 20, 60),
            registry=registry,
        )
        self.first_stage = Histogram(
            "tocsin_plan_first_stage_seconds",
            "Time from the start of a plan to its first stage committed (devices first).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.deliveries = Counter(
            "tocsin_deliveries_planned", "Delivery rows created by the planner.", registry=registry
        )
        self.failures = Counter(
            "tocsin_plan_failures",
            "Plans that failed (retried at the next start).",
            registry=registry,
        )
        self.queued = Gauge(
            "tocsin_plan_queue", "Accepted warnings waiting to be planned.", registry=registry
        )


@dataclass(slots=True)
class _Run:
    """What one plan_now call has done so far."""

    warning_id: str
    started: float
    #: The warning's last committed stage, as the store last reported it.
    stage: int = 0
    stages: int = 0
    deliveries: int = 0
    total_deliveries: int = 0
    planned: bool = False
    stopped: bool = False
    first_stage_seconds: float | None = None
    longest_stage_seconds: float = 0.0

    @property
    def finished(self) -> bool:
        return self.planned or self.stopped

    def add(self, result: PlanResult) -> None:
        self.stage = result.stage
        self.planned = result.planned
        self.stopped = result.stopped
        if result.committed:
            self.stages += 1
            self.deliveries += result.deliveries
            self.total_deliveries = result.total_deliveries
            self.longest_stage_seconds = max(self.longest_stage_seconds, result.seconds)
            if self.first_stage_seconds is None:
                self.first_stage_seconds = time.perf_counter() - self.started

    def result(self) -> PlanResult:
        return PlanResult(
            self.warning_id,
            self.deliveries,
            time.perf_counter() - self.started,
            self.planned,
            stage=self.stage,
            committed=self.stages > 0,
            stopped=self.stopped,
            total_deliveries=self.total_deliveries,
        )

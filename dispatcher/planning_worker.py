"""Plans accepted warnings in the background, one at a time, in arrival order.

A warning is stored (and answered 202) before it is planned; if the daemon stops in between,
the next start finds it unplanned and plans it, so nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dispatcher.planner import plan_statements
from dispatcher.policy import Policy
from dispatcher.store.base import PlanResult, Store

log = structlog.get_logger(__name__)


class PlanningWorker:
    def __init__(
        self,
        store: Store,
        policy: Callable[[], Policy],
        *,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._metrics = _PlanningMetrics(registry or CollectorRegistry())
        self._store = store
        self._policy = policy
        self._clock = clock
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

    async def plan_now(self, warning_id: str) -> PlanResult:
        warning = await self._store.get_warning(warning_id)
        if warning is None:
            raise LookupError(warning_id)
        now = self._clock()
        if warning.expires.timestamp() <= now:
            # Accepted, then the daemon was down past its expiry: sending it now would warn
            # people of something that is over. Recorded, never silently dropped.
            if await self._store.expire_warning(warning_id, now=now):
                log.warning("warning expired before it was planned", warning_id=warning_id)
            return PlanResult(warning_id, 0, 0.0, planned=False)
        statements = plan_statements(warning, self._policy(), now=now)
        return await self._store.execute_plan(warning_id, statements, now=now)

    async def _run(self) -> None:
        while True:
            warning_id = await self._queue.get()
            bound = structlog.contextvars.bind_contextvars(warning_id=warning_id)
            try:
                result = await self.plan_now(warning_id)
                if result.planned:
                    self._metrics.seconds.observe(result.seconds)
                    self._metrics.deliveries.inc(result.deliveries)
                    log.info(
                        "warning planned",
                        deliveries=result.deliveries,
                        seconds=round(result.seconds, 3),
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
            "Time to plan one warning (one transaction).",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 20, 60),
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

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
    ) -> None:
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
        statements = plan_statements(warning, self._policy(), now=now)
        return await self._store.execute_plan(warning_id, statements, now=now)

    async def _run(self) -> None:
        while True:
            warning_id = await self._queue.get()
            bound = structlog.contextvars.bind_contextvars(warning_id=warning_id)
            try:
                result = await self.plan_now(warning_id)
                if result.planned:
                    log.info(
                        "warning planned",
                        deliveries=result.deliveries,
                        seconds=round(result.seconds, 3),
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                # The warning stays unplanned in the store; the next start retries it.
                log.exception("planning failed")
            finally:
                structlog.contextvars.reset_contextvars(**bound)
                self._queue.task_done()
                if self._queue.empty():
                    self._idle.set()

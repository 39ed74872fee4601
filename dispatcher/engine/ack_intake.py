"""One intake for every acknowledgement and status report: adapters (MQTT acks, provider
callbacks, modem reports) and HTTP confirmations. Reports are queued without blocking the
reporter and applied in batches, each batch one transaction; a batch that fails to commit is
retried, so an accepted report is never lost. Applying is idempotent in the store."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from dispatcher.adapter import Report
from dispatcher.engine.backoff import Backoff
from dispatcher.engine.types import Ack, AckOutcome, AckResult, AdapterAck, LevelRules
from dispatcher.store.sqlite_engine import RetryDelay, SqliteEngineOps

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Queued:
    ack: Ack
    future: asyncio.Future[AckOutcome] | None


class AckIntake:
    def __init__(
        self,
        store: SqliteEngineOps,
        *,
        levels: Callable[[], Mapping[str, LevelRules]],
        visit_delay: float,
        retry_delay: RetryDelay,
        batch_size: int = 2000,
        registry: CollectorRegistry | None = None,
        on_applied: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._levels = levels
        self._visit_delay = visit_delay
        self._retry_delay = retry_delay
        self._batch_size = batch_size
        self._on_applied = on_applied
        self._clock = clock
        self._queue: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        registry = registry or CollectorRegistry()
        self._results = Counter(
            "tocsin_acks",
            "Acknowledgements and status reports by result.",
            ["result"],
            registry=registry,
        )
        self._queued = Gauge(
            "tocsin_ack_queue", "Reports waiting to be recorded.", registry=registry
        )
        self._rejected_logged = 0.0

    # -- submitting -------------------------------------------------------------------------
    def report(self, adapter: str, report: Report) -> None:
        """An adapter's report (the adapter context calls this); never blocks."""
        self.submit(AdapterAck(adapter, report, self._clock()))

    def submit(self, ack: Ack) -> None:
        self._queue.append(_Queued(ack, None))
        self._kick()

    async def submit_and_wait(self, ack: Ack) -> AckOutcome:
        """Submit and wait until it is recorded (for the HTTP API, which answers with it)."""
        future: asyncio.Future[AckOutcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(ack, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        self._idle.clear()
        self._queued.set(len(self._queue))
        self._wake.set()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tocsin-ack-intake")

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def stop(self, *, drain_seconds: float = 10.0) -> None:
        """Record what is queued (for at most ``drain_seconds``), then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_seconds)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue:
            log.warning("reports not recorded at shutdown", count=len(self._queue))

    async def _run(self) -> None:
        failures = 0
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
            try:
                outcomes = await self._store.apply_acks(
                    [q.ack for q in batch],
                    now=self._clock(),
                    levels=self._levels(),
                    visit_delay=self._visit_delay,
                    retry_delay=self._retry_delay,
                )
            except asyncio.CancelledError:
                self._queue.extendleft(reversed(batch))
                raise
            except Exception:
                # Put them back in order and try again: never lose an acknowledgement.
                self._queue.extendleft(reversed(batch))
                failures += 1
                log.exception("recording reports failed; retrying", batch=len(batch))
                await asyncio.sleep(backoff.delay(failures))
                continue
            failures = 0
            self._queued.set(len(self._queue))
            self._account(batch, outcomes)

    def _account(self, batch: list[_Queued], outcomes: list[AckOutcome]) -> None:
        applied = False
        rejected: list[str] = []
        for queued, outcome in zip(batch, outcomes, strict=True):
            self._results.labels(outcome.result.value).inc()
            if outcome.result in (AckResult.APPLIED, AckResult.LATE):
                applied = True
            elif outcome.result is AckResult.REJECTED:
                rejected.append(_describe(queued.ack, outcome))
            if queued.future is not None and not queued.future.done():
                queued.future.set_result(outcome)
        if rejected:
            # A flood of forged or stray reports must not flood the log either: one line per
            # batch with a sample, at most once a second.
            now = time.monotonic()
            if now - self._rejected_logged >= 1.0:
                self._rejected_logged = now
                log.warning("reports rejected", count=len(rejected), sample=rejected[:3])
        if applied:
            self._on_applied()


def _describe(ack: Ack, outcome: AckOutcome) -> str:
    if isinstance(ack, AdapterAck):
        r = ack.report
        who = r.delivery_id if r.delivery_id is not None else (r.reference or r.from_address)
        return f"{ack.adapter}: {r.state.value} for {who}: {outcome.reason}"
    return f"{ack.source}: household {ack.household_id}: {outcome.reason}"

"""One intake for every acknowledgement and status report: adapters (MQTT acks, provider
callbacks, modem reports) and HTTP confirmations. Reports are queued without blocking the
reporter and applied in batches, each batch one transaction; a batch that fails to commit is
retried, so an accepted report is never lost. Applying is idempotent in the store."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from dispatcher.adapter import Report
from dispatcher.engine.backoff import Backoff
from dispatcher.engine.types import Ack, AckOutcome, AckResult, AdapterAck, LevelRules
from dispatcher.store.connections import StoreUnavailable
from dispatcher.store.engine_ops import EngineOps, RetryDelay

log = structlog.get_logger(__name__)

#: How long a report naming an unknown provider reference is retried before it is rejected
#: (its send's outcome, which records the reference, may not be recorded yet), and how often.
REFERENCE_GRACE = 30.0
REFERENCE_RETRY = 1.0

#: The store cannot take a batch now (SQLite locked or out of disk, PostgreSQL unreachable):
#: the batch is kept and tried again, never dropped.
_STORE_BUSY = (sqlite3.OperationalError, StoreUnavailable)


@dataclass(slots=True)
class _Queued:
    ack: Ack
    future: asyncio.Future[AckOutcome] | None


class AckIntake:
    def __init__(
        self,
        store: EngineOps,
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
        self._parked: list[list[_Queued]] = []

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
        parked = sum(len(p) for p in self._parked)
        if self._queue or parked:
            log.warning(
                "reports not recorded at shutdown",
                queued=len(self._queue),
                waiting_for_reference=parked,
            )

    async def _run(self) -> None:
        failures = 0
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            if not self._queue:
                if not self._parked:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
            try:
                outcomes = await self._apply(batch)
            except asyncio.CancelledError:
                self._queue.extendleft(reversed(batch))
                raise
            except _STORE_BUSY:
                # The store is busy or failing (locked, disk full, unreachable): put them
                # back in order and try again later — never lose an acknowledgement.
                self._queue.extendleft(reversed(batch))
                failures += 1
                log.exception("recording reports failed; retrying", batch=len(batch))
                await asyncio.sleep(backoff.delay(failures))
                continue
            except Exception:
                # Something in the batch cannot be applied: apply them one by one so one bad
                # report cannot hold back the others.
                log.exception("recording a batch of reports failed; isolating", batch=len(batch))
                outcomes = [await self._apply_alone(q) for q in batch]
            failures = 0
            self._queued.set(len(self._queue))
            self._account(batch, outcomes)

    async def _apply(self, batch: list[_Queued]) -> list[AckOutcome]:
        return await self._store.apply_acks(
            [q.ack for q in batch],
            now=self._clock(),
            levels=self._levels(),
            visit_delay=self._visit_delay,
            retry_delay=self._retry_delay,
        )

    async def _apply_alone(self, queued: _Queued) -> AckOutcome:
        while True:
            try:
                return (await self._apply([queued]))[0]
            except _STORE_BUSY:
                log.exception("recording a report failed; retrying")
                await asyncio.sleep(1.0)
            except Exception as exc:
                log.exception("a report cannot be recorded; dropped", report=repr(queued.ack))
                self._results.labels("error").inc()
                return AckOutcome(AckResult.REJECTED, f"cannot be recorded: {exc!r}")

    def _account(self, batch: list[_Queued], outcomes: list[AckOutcome]) -> None:
        applied = False
        rejected: list[str] = []
        parked: list[_Queued] = []
        now = self._clock()
        for queued, outcome in zip(batch, outcomes, strict=True):
            if _reference_not_yet_known(queued.ack, outcome, now):
                # A provider's callback can overtake the send's own outcome, which is what
                # records the reference: try again shortly instead of rejecting it.
                parked.append(queued)
                continue
            self._results.labels(outcome.result.value).inc()
            if outcome.result in (AckResult.APPLIED, AckResult.LATE):
                applied = True
            elif outcome.result is AckResult.REJECTED:
                rejected.append(_describe(queued.ack, outcome))
            if queued.future is not None and not queued.future.done():
                queued.future.set_result(outcome)
        if parked:
            self._park(parked)
        if rejected:
            # A flood of forged or stray reports must not flood the log either: one line per
            # batch with a sample, at most once a second.
            mono = time.monotonic()
            if mono - self._rejected_logged >= 1.0:
                self._rejected_logged = mono
                log.warning("reports rejected", count=len(rejected), sample=rejected[:3])
        if applied:
            self._on_applied()

    def _park(self, parked: list[_Queued]) -> None:
        self._parked.append(parked)

        def requeue() -> None:
            self._parked.remove(parked)
            self._queue.extend(parked)
            self._kick()

        asyncio.get_running_loop().call_later(REFERENCE_RETRY, requeue)


def _reference_not_yet_known(ack: Ack, outcome: AckOutcome, now: float) -> bool:
    return (
        isinstance(ack, AdapterAck)
        and outcome.result is AckResult.REJECTED
        and outcome.delivery_id is None
        and ack.report.delivery_id is None
        and bool(ack.report.reference)
        and now - ack.received_at < REFERENCE_GRACE
    )


def _describe(ack: Ack, outcome: AckOutcome) -> str:
    if isinstance(ack, AdapterAck):
        r = ack.report
        who = r.delivery_id if r.delivery_id is not None else (r.reference or r.from_address)
        return f"{ack.adapter}: {r.state.value} for {who}: {outcome.reason}"
    return f"{ack.source}: household {ack.household_id}: {outcome.reason}"

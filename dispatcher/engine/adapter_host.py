"""One configured adapter instance inside the engine: its lifecycle (start, "not ready" and
retry with backoff, stop), its rate limit, its circuit breaker, and the narrow context it
reports through (acknowledgements, and its devices' state)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import structlog

from dispatcher.adapter import (
    Accepted,
    Adapter,
    AdapterNotReady,
    DeviceStatus,
    Dispatch,
    Failed,
    Outcome,
    PacesItself,
    Report,
    ReportsReadiness,
    Retry,
    check_outcomes,
)
from dispatcher.adapter_config import AdapterSpec
from dispatcher.engine.backoff import Backoff
from dispatcher.engine.breaker import BreakerState, CircuitBreaker
from dispatcher.engine.rate_limit import TokenBucket

log = structlog.get_logger(__name__)

#: How often a started instance whose connection went away is looked at again.
RECONNECT_POLL = 2.0


class _Context:
    """What the adapter sees of the daemon: its name and this node's, a way to report, and a
    way to tell its devices' state."""

    def __init__(
        self,
        name: str,
        sink: Callable[[str, Report], None],
        status_sink: Callable[[str, DeviceStatus], None] | None = None,
        *,
        node_name: str = "tocsin",
    ) -> None:
        self._name = name
        self._node_name = node_name
        self._sink = sink
        self._status_sink = status_sink

    @property
    def adapter_name(self) -> str:
        return self._name

    @property
    def node_name(self) -> str:
        return self._node_name

    def report(self, report: Report) -> None:
        self._sink(self._name, report)

    def device_status(self, status: DeviceStatus) -> None:
        if self._status_sink is not None:
            self._status_sink(self._name, status)


class AdapterHost:
    def __init__(
        self,
        spec: AdapterSpec,
        report_sink: Callable[[str, Report], None],
        *,
        start_backoff: Backoff | None = None,
        status_sink: Callable[[str, DeviceStatus], None] | None = None,
        node_name: str = "tocsin",
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.adapter: Adapter = spec.create()
        self.rate_per_second, burst = spec.send_rate(self.adapter)
        self.bucket = TokenBucket(self.rate_per_second, burst)
        self.breaker = CircuitBreaker(
            failures=spec.config.breaker_failures, pause=spec.config.breaker_pause
        )
        self.in_flight = 0
        self.max_in_flight = spec.config.concurrency
        self._context = _Context(spec.name, report_sink, status_sink, node_name=node_name)
        self._start_backoff = start_backoff or Backoff(base=1.0, cap=60.0)
        self._ready = False
        self.start_failures = 0
        #: When the next start is tried (time.monotonic()), after a failed one.
        self._next_start = 0.0
        self._task: asyncio.Task[None] | None = None
        self.on_ready: Callable[[], None] = lambda: None
        self._readiness = self.adapter if isinstance(self.adapter, ReportsReadiness) else None

    def not_ready_reason(self) -> str | None:
        """Why a started instance cannot send now (its connection went away), if it says."""
        if not self._ready or self._readiness is None:
            return None
        try:
            return self._readiness.not_ready_reason()
        except Exception as exc:  # a buggy adapter is not ready, not a crashed engine
            return f"not_ready_reason() raised {type(exc).__name__}"

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def paused(self) -> bool:
        """Cannot send and is not about to: failed to start, or its breaker is open."""
        if not self._ready:
            return self.start_failures > 0
        if self.not_ready_reason() is not None:
            return True
        return self.breaker.state is BreakerState.OPEN

    @property
    def seconds_until_usable(self) -> float:
        """How long a paused instance stays paused: until its next start, or until its
        breaker lets a probe through."""
        if not self._ready:
            return max(0.0, self._next_start - time.monotonic())
        if self.not_ready_reason() is not None:
            return RECONNECT_POLL
        return self.breaker.seconds_until_probe

    @property
    def min_batch(self) -> int:
        """A rate-limited instance gets batches of about 0.1 s of its rate, not a trickle of
        one-delivery batches (each batch costs a claim and a record transaction)."""
        rate = self.rate_per_second
        if rate is None:
            return 1
        return max(1, min(self.spec.batch_size, int(rate * 0.1), int(self.bucket.burst)))

    def capacity(self) -> int:
        """How many deliveries may be handed to this instance now."""
        if not self._ready or self.in_flight >= self.max_in_flight or not self.breaker.allow():
            return 0
        if self.not_ready_reason() is not None:
            return 0
        available = self.bucket.available(self.spec.batch_size)
        if isinstance(self.adapter, PacesItself):
            room = self.adapter.room()
            if room is not None:
                # Free call slots: a batch of whatever fits, however small.
                return max(0, min(available, room))
        return available if available >= self.min_batch else 0

    def seconds_until_capacity(self) -> float:
        return self.bucket.seconds_until(self.min_batch)

    def status(self) -> dict[str, object]:
        """What an operator or installer needs to see about this instance."""
        state = "ready" if self._ready else ("not_ready" if self.start_failures else "starting")
        if self._ready and self.breaker.state is not BreakerState.CLOSED:
            state = "paused"
        reason = self.not_ready_reason()
        if reason is not None:
            state = "not_ready"
        return {
            "name": self.name,
            "kind": self.spec.factory.kind,
            "channels": sorted(c.value for c in self.spec.channels),
            "state": state,
            "breaker": self.breaker.state.value,
            "start_failures": self.start_failures,
            "batches_in_flight": self.in_flight,
            "rate_per_second": self.rate_per_second,
            **({"reason": reason} if reason is not None else {}),
        }

    def start(self) -> None:
        self._task = asyncio.create_task(
            self._start_loop(), name=f"tocsin-adapter-start-{self.name}"
        )

    async def _start_loop(self) -> None:
        while True:
            try:
                await self.adapter.start(self._context)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a start that raises anything is "not ready"
                self.start_failures += 1
                delay = self._start_backoff.delay(self.start_failures)
                self._next_start = time.monotonic() + delay
                log.warning(
                    "adapter not ready",
                    adapter=self.name,
                    kind=self.spec.factory.kind,
                    error=str(exc) if isinstance(exc, AdapterNotReady) else repr(exc),
                    retry_in=round(delay, 1),
                )
                await asyncio.sleep(delay)
                continue
            self._ready = True
            log.info("adapter started", adapter=self.name, kind=self.spec.factory.kind)
            self.on_ready()
            return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._ready:
            self._ready = False
            try:
                await asyncio.wait_for(self.adapter.stop(), timeout=10)
            except Exception:
                log.exception("adapter stop failed", adapter=self.name)

    async def send(self, batch: Sequence[Dispatch]) -> tuple[list[Outcome], bool]:
        """Send through the adapter; never raises and never hangs past send_timeout.

        Returns the outcomes and whether the batch counts as a failure for the breaker
        (the adapter raised, hung, returned garbage, or asked to retry every dispatch)."""
        self.in_flight += 1
        self.breaker.started()
        started = time.monotonic()
        task = asyncio.create_task(self.adapter.send(batch), name=f"tocsin-send-{self.name}")
        try:
            try:
                done, _ = await asyncio.wait({task}, timeout=self.spec.config.send_timeout)
            except asyncio.CancelledError:
                # Shutdown gave up on this batch (it stays leased): do not leave the adapter's
                # send running behind the stopped engine.
                task.cancel()
                task.add_done_callback(_consume)
                raise
            if not done:
                task.cancel()  # not awaited: an adapter that ignores cancellation cannot hang us
                task.add_done_callback(_consume)
                reason = (
                    f"adapter {self.name} did not answer within {self.spec.config.send_timeout:g}s"
                )
                log.warning("adapter send timed out", adapter=self.name, batch=len(batch))
                return [Retry(reason) for _ in batch], True
            try:
                raw = task.result()
            except Exception as exc:
                log.warning("adapter send raised", adapter=self.name, error=repr(exc))
                return [
                    Retry(f"adapter {self.name} raised {type(exc).__name__}") for _ in batch
                ], True
            outcomes = check_outcomes(batch, raw)
            garbage = not _well_formed(raw, len(batch))
            if garbage:
                log.warning("adapter returned garbage", adapter=self.name, batch=len(batch))
            all_retry = bool(outcomes) and all(isinstance(o, Retry) for o in outcomes)
            return outcomes, garbage or all_retry
        finally:
            self.in_flight -= 1
            log.debug(
                "batch sent", adapter=self.name, n=len(batch), seconds=time.monotonic() - started
            )


def _well_formed(raw: object, n: int) -> bool:
    return (
        isinstance(raw, Sequence)
        and not isinstance(raw, (str, bytes))
        and len(raw) == n
        and all(isinstance(o, (Accepted, Retry, Failed)) for o in raw)
    )


def _consume(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()

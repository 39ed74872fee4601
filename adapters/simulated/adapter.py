"""The ``simulated`` adapter kind: a fake device or provider for every channel.

It answers :meth:`SimulatedAdapter.send` by the rates in its settings (accepted, retry, failed),
reports acknowledgements after a delay, and can misbehave on purpose (raise, hang, return the
wrong number of outcomes, refuse to start) so the engine's defences can be exercised. The
embedded demo, the engine's tests and the benchmarks use it, so it is cheap: no task or timer
per delivery (pending acknowledgements wait in one deque drained by one background task) and
deterministic for a given ``seed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from dispatcher.adapter import (
    Accepted,
    Adapter,
    AdapterContext,
    AdapterNotReady,
    DeviceStatus,
    Dispatch,
    Failed,
    Outcome,
    ProbeResult,
    Report,
    ReportState,
    Retry,
)
from dispatcher.domain import PERSON_CHANNELS, Channel, MsgType
from dispatcher.durations import Seconds

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

_PLAYED: Mapping[str, Any] = MappingProxyType({"device_state": "played"})
_STOPPED: Mapping[str, Any] = MappingProxyType({"device_state": "stopped"})
_NO_DETAIL: Mapping[str, Any] = MappingProxyType({})
_SIMULATED_DEVICE: Mapping[str, Any] = MappingProxyType({"simulated": True})

_PendingAck = tuple[float, int, str, str, Mapping[str, Any]]

_NOT_STARTED = Retry("adapter not started")
_STOPPED_DURING_SEND = Retry("adapter stopped during send")
_UNKNOWN_NUMBER = Failed("unknown number")
_SIMULATED_FAILURE = Failed("simulated failure")


class SimulatedSettings(BaseModel):
    """``[adapters.<name>.settings]`` of a ``simulated`` instance. Rates are fractions 0–1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Seconds each send() call takes before it answers ("5ms", "2s" or a number).
    latency: Seconds = 0.0
    #: Fraction of dispatches answered Failed (permanent).
    failure_rate: Fraction = 0.0
    #: Fraction of dispatches answered Retry.
    retry_rate: Fraction = 0.0
    #: Seconds given as Retry.after (a Retry-After), or None for the engine's own backoff.
    retry_after: Seconds | None = None
    #: Fraction of accepted dispatches later acknowledged.
    ack_probability: Fraction = 1.0
    #: Seconds between acceptance and the acknowledgement report.
    ack_delay: Seconds = 0.0
    #: Report DELIVERED for every accepted dispatch, at acceptance (before any ack).
    delivered_report: bool = False
    #: Fraction of send() calls that raise RuntimeError.
    raise_rate: Fraction = 0.0
    #: Fraction of send() calls that never return (until cancelled).
    hang_rate: Fraction = 0.0
    #: Fraction of send() calls that return a list of the wrong length.
    garbage_rate: Fraction = 0.0
    #: How many start() calls raise AdapterNotReady before one succeeds.
    not_ready_starts: Annotated[int, Field(ge=0)] = 0
    #: Addresses always answered Failed("unknown number").
    fail_addresses: tuple[str, ...] = ()
    #: Seed of the random generator; None for a different run every time.
    seed: int | None = None

    # Checked on the later field so a config error names a key (adapters.x.settings.<key>).
    @field_validator("retry_rate")
    @classmethod
    def _outcome_rates(cls, value: float, info: ValidationInfo) -> float:
        if value + info.data.get("failure_rate", 0.0) > 1.0:
            raise ValueError("failure_rate + retry_rate cannot exceed 1")
        return value

    @field_validator("garbage_rate")
    @classmethod
    def _misbehaviour_rates(cls, value: float, info: ValidationInfo) -> float:
        if value + info.data.get("raise_rate", 0.0) + info.data.get("hang_rate", 0.0) > 1.0:
            raise ValueError("raise_rate + hang_rate + garbage_rate cannot exceed 1")
        return value


@dataclass(frozen=True, slots=True)
class SimulatedStats:
    """Counters since the instance was created (they survive stop and start)."""

    #: send() calls, whatever came of them.
    sends: int = 0
    #: Dispatches answered with an outcome (not those of raised, hung or garbage sends).
    dispatches: int = 0
    accepted: int = 0
    retried: int = 0
    failed: int = 0
    #: DELIVERED reports given to the context.
    delivered_reported: int = 0
    #: ACKNOWLEDGED reports given to the context.
    acks_reported: int = 0
    #: send() calls that raised, hung or returned the wrong number of outcomes on purpose.
    raised: int = 0
    hung: int = 0
    garbage: int = 0
    #: start() calls refused with AdapterNotReady.
    not_ready: int = 0
    #: Reports the context refused by raising (dropped; the context should never raise).
    report_errors: int = 0


class SimulatedAdapter:
    """A simulated device or provider for any channel (see adapters/simulated/README.md)."""

    kind: ClassVar[str] = "simulated"
    channels: ClassVar[frozenset[Channel]] = frozenset(Channel)
    settings_model: ClassVar[type[BaseModel]] = SimulatedSettings
    max_batch: ClassVar[int] = 1000
    description: ClassVar[str] = (
        "Simulated devices and providers for every channel, with configurable latency, "
        "failures, retries, acknowledgements and misbehaviour (demo, tests, benchmarks)"
    )

    def __init__(
        self, *, name: str, settings: SimulatedSettings | Mapping[str, Any] | None = None
    ) -> None:
        if settings is None:
            settings = SimulatedSettings()
        elif not isinstance(settings, SimulatedSettings):
            settings = SimulatedSettings.model_validate(settings)
        self._name = name
        self._settings = settings
        self._rng = random.Random(settings.seed)  # noqa: S311 — a simulation, not security
        self._fail_addresses = frozenset(settings.fail_addresses)
        self._ref_prefix = f"sim-{name}-"
        self._context: AdapterContext | None = None
        self._started = False
        #: Counts stops, so a send that slept across a stop can tell.
        self._run = 0
        self._start_refusals = 0
        #: Acknowledgements to give: (due on the loop clock, delivery id, address, warning id,
        #: detail), due times ascending since the delay is constant.
        self._pending: deque[_PendingAck] = deque()
        self._wake = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._sends = 0
        self._dispatches = 0
        self._accepted = 0
        self._retried = 0
        self._failed = 0
        self._delivered_reported = 0
        self._acks_reported = 0
        self._raised = 0
        self._hung = 0
        self._garbage = 0
        self._report_errors = 0
        #: Set to a reason to act as a connection that went away after the start (a modem
        #: unplugged): the engine then hands this instance nothing (see not_ready_reason).
        self.connection_lost: str | None = None

    def __repr__(self) -> str:
        return f"SimulatedAdapter(name={self._name!r}, settings={self._settings!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def settings(self) -> SimulatedSettings:
        return self._settings

    @property
    def started(self) -> bool:
        return self._started

    @property
    def pending_reports(self) -> int:
        """Acknowledgements scheduled but not yet reported."""
        return len(self._pending)

    @property
    def stats(self) -> SimulatedStats:
        return SimulatedStats(
            sends=self._sends,
            dispatches=self._dispatches,
            accepted=self._accepted,
            retried=self._retried,
            failed=self._failed,
            delivered_reported=self._delivered_reported,
            acks_reported=self._acks_reported,
            raised=self._raised,
            hung=self._hung,
            garbage=self._garbage,
            not_ready=self._start_refusals,
            report_errors=self._report_errors,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, context: AdapterContext) -> None:
        if self._started:
            self._context = context
            return
        if self._start_refusals < self._settings.not_ready_starts:
            self._start_refusals += 1
            raise AdapterNotReady(
                f"simulated adapter {self._name} not ready "
                f"({self._start_refusals} of {self._settings.not_ready_starts} refusals)"
            )
        self._context = context
        self._pending.clear()
        self._wake = asyncio.Event()
        self._drainer = asyncio.get_running_loop().create_task(
            self._drain(), name=f"tocsin-simulated-acks-{self._name}"
        )
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._run += 1
        self._started = False
        self._context = None
        self._pending.clear()
        drainer, self._drainer = self._drainer, None
        if drainer is not None and not drainer.done():
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drainer

    def not_ready_reason(self) -> str | None:
        return self.connection_lost

    async def probe(self) -> ProbeResult:
        stats = self.stats
        state = "started" if self._started else "stopped"
        summary = (
            f"simulated adapter {self._name} ({state}): {stats.sends} sends, "
            f"{stats.dispatches} dispatches, {stats.accepted} accepted, {stats.retried} retried, "
            f"{stats.failed} failed, {stats.acks_reported} acks reported"
        )
        return ProbeResult(
            ok=True,
            summary=summary,
            details={
                "started": self._started,
                "channels": sorted(c.value for c in self.channels),
                "settings": self._settings.model_dump(mode="json"),
                "stats": asdict(stats),
                "pending_reports": len(self._pending),
            },
        )

    # -- sending -----------------------------------------------------------------------------

    async def send(self, batch: Sequence[Dispatch]) -> Sequence[Outcome]:
        self._sends += 1
        if not self._started:
            self._dispatches += len(batch)
            self._retried += len(batch)
            return [_NOT_STARTED] * len(batch)
        settings = self._settings
        if settings.latency > 0:
            run = self._run
            await asyncio.sleep(settings.latency)
            if self._run != run:
                # Stopped while "on the wire": the engine sends these again.
                self._dispatches += len(batch)
                self._retried += len(batch)
                return [_STOPPED_DURING_SEND] * len(batch)
        misbehave = settings.raise_rate + settings.hang_rate + settings.garbage_rate
        if misbehave > 0:
            roll = self._rng.random()
            if roll < settings.raise_rate:
                self._raised += 1
                raise RuntimeError(f"simulated adapter {self._name}: simulated crash in send()")
            if roll < settings.raise_rate + settings.hang_rate:
                self._hung += 1
                await asyncio.get_running_loop().create_future()  # until cancelled
            elif roll < misbehave:
                self._garbage += 1
                return [Accepted(reference="sim-garbage")] * (len(batch) + 1)
        return self._answer(batch)

    def _answer(self, batch: Sequence[Dispatch]) -> list[Outcome]:
        settings = self._settings
        rng_random = self._rng.random
        fail_edge = settings.failure_rate
        retry_edge = fail_edge + settings.retry_rate
        roll_outcome = retry_edge > 0
        retry = Retry("simulated retry", after=settings.retry_after)
        ack_probability = settings.ack_probability
        acks = ack_probability > 0
        roll_ack = ack_probability < 1
        immediate = settings.ack_delay <= 0
        delivered_report = settings.delivered_report
        fail_addresses = self._fail_addresses
        prefix = self._ref_prefix
        pending = self._pending
        emit = self._emit
        now = time.time()
        due = asyncio.get_running_loop().time() + settings.ack_delay
        accepted = failed = retried = 0
        outcomes: list[Outcome] = []
        append = outcomes.append
        devices_seen: set[str] = set()
        for dispatch in batch:
            if fail_addresses and dispatch.address in fail_addresses:
                append(_UNKNOWN_NUMBER)
                failed += 1
                continue
            if roll_outcome:
                roll = rng_random()
                if roll < fail_edge:
                    append(_SIMULATED_FAILURE)
                    failed += 1
                    continue
                if roll < retry_edge:
                    append(retry)
                    retried += 1
                    continue
            delivery_id = dispatch.delivery_id
            append(Accepted(reference=f"{prefix}{delivery_id}-{dispatch.attempt}"))
            accepted += 1
            if dispatch.channel not in PERSON_CHANNELS:
                devices_seen.add(dispatch.address)
            warning = dispatch.warning
            if delivered_report:
                emit(
                    Report(
                        state=ReportState.DELIVERED,
                        delivery_id=delivery_id,
                        from_address=dispatch.address,
                        warning_id=warning.id,
                        at=now,
                    )
                )
            if not acks or (roll_ack and rng_random() >= ack_probability):
                continue
            if dispatch.channel in PERSON_CHANNELS:
                detail = _NO_DETAIL
            elif warning.msg_type is MsgType.CANCEL:
                detail = _STOPPED
            else:
                detail = _PLAYED
            if immediate:
                emit(
                    Report(
                        state=ReportState.ACKNOWLEDGED,
                        delivery_id=delivery_id,
                        from_address=dispatch.address,
                        warning_id=warning.id,
                        at=now,
                        detail=detail,
                    )
                )
            else:
                pending.append((due, delivery_id, dispatch.address, warning.id, detail))
        self._dispatches += len(batch)
        self._accepted += accepted
        self._failed += failed
        self._retried += retried
        if pending and not immediate:
            self._wake.set()
        if devices_seen:
            self._devices_online(devices_seen, now)
        return outcomes

    def _devices_online(self, addresses: set[str], now: float) -> None:
        """A simulated device that took a message is online: say so, as a real adapter does
        from its devices' heartbeats (``/v1/devices`` then shows the demo's devices)."""
        context = self._context
        if context is None:
            return
        for address in addresses:
            try:
                context.device_status(DeviceStatus(address, True, now, _SIMULATED_DEVICE))
            except Exception:  # the context should never raise; a device state is not worth it
                self._report_errors += 1

    # -- reports -----------------------------------------------------------------------------

    def _emit(self, report: Report) -> None:
        context = self._context
        if context is None:
            return
        try:
            context.report(report)
        except Exception:
            self._report_errors += 1
            return
        if report.state is ReportState.ACKNOWLEDGED:
            self._acks_reported += 1
        else:
            self._delivered_reported += 1

    async def _drain(self) -> None:
        """The one background task: report each pending acknowledgement when it is due."""
        loop = asyncio.get_running_loop()
        pending = self._pending
        wake = self._wake
        while True:
            if not pending:
                wake.clear()
                await wake.wait()
                continue
            delay = pending[0][0] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            wall = time.time()
            emit = self._emit
            while pending and pending[0][0] <= now:
                _, delivery_id, address, warning_id, detail = pending.popleft()
                emit(
                    Report(
                        state=ReportState.ACKNOWLEDGED,
                        delivery_id=delivery_id,
                        from_address=address,
                        warning_id=warning_id,
                        at=wall,
                        detail=detail,
                    )
                )


if TYPE_CHECKING:

    def _conforms(adapter: SimulatedAdapter) -> Adapter:
        """mypy checks here that the adapter satisfies the contract."""
        return adapter

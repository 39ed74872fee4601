"""Devices' connection state as their adapters report it (online, offline, heartbeats), kept
in memory and written to the store in batches.

Speakers send a heartbeat every few seconds; thousands of them would be thousands of writes a
minute on the one writer that also records deliveries. :class:`DeviceStatusBook` keeps only
the newest status per (adapter, address) — a later heartbeat of a device replaces the earlier
one in a dict — and writes what changed about once a second, in one transaction, and what is
left at shutdown. The store skips a status older than the one it holds, so a replayed or late
one never hides a newer state.

Adapters call :meth:`DeviceStatusBook.record` through their context
(``context.device_status``); it never blocks and never raises."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from dispatcher.adapter import DeviceStatus
from dispatcher.engine.backoff import Backoff
from dispatcher.store.base import DeviceStatusRecord

log = structlog.get_logger(__name__)

#: How often what was reported is written.
FLUSH_INTERVAL = 1.0
#: Longest detail kept, as JSON; a larger one is replaced by a note saying so.
MAX_DETAIL_BYTES = 4096
#: Longest address kept (a device id, a serial port, a phone number): a page's cursor
#: carries one.
MAX_ADDRESS = 128
#: Devices waiting to be written at most: beyond this, statuses of further devices are
#: dropped (a flood of made-up device ids must not exhaust memory while the store is down).
MAX_PENDING = 200_000


@runtime_checkable
class DeviceStatusStore(Protocol):
    async def record_device_status(self, statuses: Sequence[DeviceStatusRecord]) -> int: ...


class DeviceStatusBook:
    """The newest status per device, flushed to the store every ``interval`` seconds."""

    def __init__(
        self,
        store: DeviceStatusStore | None,
        *,
        interval: float = FLUSH_INTERVAL,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._interval = interval
        self._clock = clock
        self._pending: dict[tuple[str, str], DeviceStatusRecord] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._dropped_logged = 0.0
        registry = registry or CollectorRegistry()
        self._reports = Counter(
            "tocsin_device_status_reports",
            "Device status reports from adapters, by result (kept: waiting to be written; "
            "dropped: malformed or too many devices).",
            ["result"],
            registry=registry,
        )
        self._written = Counter(
            "tocsin_device_status_writes",
            "Device status rows written to the store (older statuses are skipped).",
            registry=registry,
        )
        self._waiting = Gauge(
            "tocsin_device_status_pending",
            "Devices whose status waits to be written.",
            registry=registry,
        )

    @property
    def pending(self) -> int:
        """Devices whose newest status is not written yet."""
        return len(self._pending)

    # -- reporting ------------------------------------------------------------------------------
    def record(self, adapter: str, status: DeviceStatus) -> None:
        """Keep ``status`` as the device's newest unless a newer one is waiting; never blocks
        and never raises (an adapter's malformed status is dropped and logged)."""
        try:
            record = self._checked(adapter, status)
        except Exception as exc:  # whatever an adapter hands over, the daemon carries on
            self._drop(adapter, status, str(exc))
            return
        key = (record.adapter, record.address)
        waiting = self._pending.get(key)
        if waiting is None and len(self._pending) >= MAX_PENDING:
            self._drop(adapter, status, f"more than {MAX_PENDING} devices wait to be written")
            return
        if waiting is None or record.last_seen >= waiting.last_seen:
            self._pending[key] = record
        self._reports.labels("kept").inc()
        self._waiting.set(len(self._pending))

    def _checked(self, adapter: str, status: DeviceStatus) -> DeviceStatusRecord:
        if not isinstance(status, DeviceStatus):
            raise TypeError(f"a {type(status).__name__}, not a DeviceStatus")
        address = status.address
        if not isinstance(address, str) or not 1 <= len(address) <= MAX_ADDRESS:
            raise ValueError(f"the address must be 1 to {MAX_ADDRESS} characters")
        address.encode()  # UnicodeEncodeError (a ValueError) for a lone surrogate
        last_seen = float(status.last_seen)
        if not math.isfinite(last_seen):
            raise ValueError(f"last_seen {status.last_seen!r} is not a time")
        detail = json.dumps(
            dict(status.detail), ensure_ascii=False, separators=(",", ":"), default=str
        )
        if len(detail.encode()) > MAX_DETAIL_BYTES:  # (also refuses lone surrogates)
            detail = json.dumps({"error": f"detail larger than {MAX_DETAIL_BYTES} bytes left out"})
        return DeviceStatusRecord(
            adapter=adapter,
            address=address,
            online=bool(status.online),
            last_seen=last_seen,
            detail_json=detail,
            updated_at=self._clock(),
        )

    def _drop(self, adapter: str, status: object, why: str) -> None:
        self._reports.labels("dropped").inc()
        # A misbehaving adapter must not flood the log: one line a second at most.
        now = time.monotonic()
        if now - self._dropped_logged >= 1.0:
            self._dropped_logged = now
            try:
                shown = repr(status)[:200]
            except Exception:  # a detail whose repr raises
                shown = f"a {type(status).__name__}"
            log.warning("device status dropped", adapter=adapter, status=shown, why=why)

    # -- writing --------------------------------------------------------------------------------
    async def flush(self) -> int:
        """Write every waiting status in one transaction; return the rows written. On failure
        the statuses wait again (unless a newer one arrived meanwhile) and the error is
        raised."""
        async with self._lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, {}
            if self._store is None:
                # No store keeps device state (an engine on a bare store, in tests).
                self._waiting.set(0)
                return 0
            try:
                written = await self._store.record_device_status(list(batch.values()))
            except BaseException:
                for key, record in batch.items():
                    newer = self._pending.get(key)
                    if newer is None or newer.last_seen < record.last_seen:
                        self._pending[key] = record
                self._waiting.set(len(self._pending))
                raise
            self._written.inc(written)
            self._waiting.set(len(self._pending))
            return written

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tocsin-device-status")

    async def stop(self) -> None:
        """Stop the periodic writes and write what is waiting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except Exception:
            log.exception("device status not recorded at shutdown", devices=self.pending)

    async def _run(self) -> None:
        failures = 0
        backoff = Backoff(base=self._interval, cap=30.0)
        while True:
            await asyncio.sleep(self._interval if failures == 0 else backoff.delay(failures))
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception("recording device status failed; retrying", devices=self.pending)
            else:
                failures = 0

"""One serial port, owned by one task for its whole life.

The task opens the port (exclusively: a second program on a modem garbles both), runs the
kind's ``on_open`` set-up (echo off, PDU mode…; a modem that rebooted needs it again), then
waits until the port goes away — the USB cable pulled, the pty closed — and opens it again
with capped exponential backoff. Received bytes go to ``on_bytes`` as they arrive; the kind
frames them itself (lines, sentences, binary frames). Nothing here blocks the event loop:
pyserial-asyncio-fast reads through the loop's reader callbacks, and the open itself runs in
an executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable

import serial
import serial_asyncio_fast
import structlog

from adapters.serial_link.errors import PortClosed, PortUnavailable, describe_open_error

log = structlog.get_logger(__name__)

#: The first pause before reopening a port that went away (a USB modem re-enumerates in ~1 s).
REOPEN_INITIAL = 0.2
#: How long close() waits for the port to be released.
CLOSE_WAIT = 2.0


class _PortProtocol(asyncio.Protocol):
    def __init__(self, on_bytes: Callable[[bytes], None]) -> None:
        self._on_bytes = on_bytes
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        try:
            self._on_bytes(data)
        except Exception:  # a framing bug must not kill the port's reader
            log.exception("serial data handler failed")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(_why_lost(exc))


def _same(protocol: _PortProtocol) -> _PortProtocol:
    return protocol


def _why_lost(exc: Exception | None) -> str:
    if exc is None:
        return "port closed"
    text = str(exc)
    if "returned no data" in text or "Input/output error" in text:
        return "device disconnected"
    return text or type(exc).__name__


class SerialLink:
    """Keeps one port open. ``write`` while it is open; :attr:`ready` once ``on_open`` has
    set the device up; ``on_close(reason)`` each time it goes away."""

    def __init__(
        self,
        *,
        port: str,
        baudrate: int,
        name: str,
        on_bytes: Callable[[bytes], None],
        on_open: Callable[[], Awaitable[None]] | None = None,
        on_close: Callable[[str], None] | None = None,
        reopen_max: float = 30.0,
    ) -> None:
        self.port = port
        self._baudrate = baudrate
        self._name = name
        self._on_bytes = on_bytes
        self._on_open = on_open
        self._on_close = on_close
        self._reopen_max = reopen_max
        self._transport: asyncio.Transport | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._closing = False
        self._lost_future: asyncio.Future[str] | None = None
        self.last_error = "not opened yet"
        #: How many times the port has been opened (a command can tell it was reopened).
        self.generation = 0

    # -- state ----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    async def wait_ready(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._ready.wait()
        return self._ready.is_set()

    # -- lifecycle ------------------------------------------------------------------------------
    async def open(self, *, within: float) -> None:
        """Open the port and set the device up, or raise :class:`PortUnavailable` naming the
        port and the cause (nothing keeps running then: the caller retries the start)."""
        if self._task is not None:
            raise RuntimeError(f"serial link {self._name} already opened")
        self._closing = False
        self._first = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._own(), name=f"tocsin-serial-{self._name}")
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(self._first)
        except TimeoutError:
            await self.close()
            raise PortUnavailable(
                self.port, f"no answer within {within:g}s ({self.last_error})"
            ) from None
        except PortUnavailable:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the port and stop reopening it; prompt, never raises."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        lost = self._lost_future
        self._drop_transport()
        self._ready.clear()
        if lost is not None and not lost.done():
            # pyserial-asyncio-fast closes the device in an executor: only once the protocol
            # hears of it is the port free for the next open (a probe, then a start).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT):
                    await asyncio.shield(lost)
        first = self._first
        if first is not None and not first.done():
            first.cancel()

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise PortClosed(f"{self.port}: not open ({self.last_error})")
        transport.write(data)

    # -- the owning task --------------------------------------------------------------------------
    async def _own(self) -> None:
        delay = REOPEN_INITIAL
        while not self._closing:
            protocol = _PortProtocol(self._on_bytes)
            try:
                transport, _ = await serial_asyncio_fast.create_serial_connection(
                    asyncio.get_running_loop(),
                    functools.partial(_same, protocol),
                    self.port,
                    baudrate=self._baudrate,
                    exclusive=True,
                )
            except (serial.SerialException, OSError, ValueError) as exc:
                self._failed(describe_open_error(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._reopen_max)
                continue
            self._transport = transport
            self._lost_future = protocol.lost
            self.generation += 1
            # Told at once, even during the set-up: a command waiting on the device fails now
            # rather than at its timeout.
            protocol.lost.add_done_callback(self._notify_close)
            if self._on_open is not None:
                try:
                    await self._on_open()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # The kind's errors name the port already; the message names it once.
                    why = str(exc).removeprefix(f"{self.port}: ")
                    self._failed(f"device did not set up: {why}")
                    self._drop_transport()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._reopen_max)
                    continue
            if protocol.lost.done():  # unplugged during the set-up
                self._lost(protocol.lost.result())
                continue
            self.last_error = ""
            self._ready.set()
            if self._first is not None and not self._first.done():
                self._first.set_result(None)
            log.info(
                "serial port open", adapter=self._name, port=self.port, generation=self.generation
            )
            delay = REOPEN_INITIAL
            # Shielded: cancelling this task (close) must not cancel the port's own future,
            # which close() waits on to know the port is released.
            self._lost(await asyncio.shield(protocol.lost))

    def _lost(self, reason: str) -> None:
        self._ready.clear()
        self._drop_transport()
        self.last_error = reason
        if not self._closing:
            log.warning("serial port lost", adapter=self._name, port=self.port, reason=reason)

    def _notify_close(self, lost: asyncio.Future[str]) -> None:
        # A close asked for (stop, the end of a probe) is no news to the kind.
        if self._on_close is None or lost.cancelled() or self._closing:
            return
        try:
            self._on_close(lost.result())
        except Exception:
            log.exception("serial close handler failed", adapter=self._name)

    def _failed(self, cause: str) -> None:
        changed = cause != self.last_error
        self.last_error = cause
        first = self._first
        if first is not None and not first.done():
            # The first open answers the start at once: the engine's start backoff retries
            # it, and an installer sees the cause now rather than after the timeout.
            first.set_exception(PortUnavailable(self.port, cause))
            self._closing = True
            return
        if changed:  # one line per new cause, not one per reopen attempt
            log.warning("serial port unavailable", adapter=self._name, port=self.port, cause=cause)

    def _drop_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

"""Simulated serial devices on pseudo-terminals, for the tests and for installers' rehearsals
(``tocsin simulate modem``).

A :class:`PtyDevice` holds the master side of a pty (``os.openpty``, raw mode) in the caller's
event loop; the adapter opens the slave side as it would open ``/dev/ttyUSB0``. With a
``link`` path the device keeps a symlink to its slave there, so a config can name a stable
path, as ``/dev/serial/by-id/…`` is for real hardware. :meth:`PtyDevice.unplug` closes the pty
and removes the link — to the adapter exactly what pulling the USB cable is: its reads fail at
once — and :meth:`PtyDevice.replug` opens a new pty behind the same link, as udev re-creates
the by-id link when the cable goes back in.

:class:`AtDevice` adds an AT command interpreter (command lines ended by CR, echo until
``ATE0``, ``<CR><LF>`` around every answer, payload modes for ``AT+CMGS`` / ``AT+SBDWB``).
Fault knobs shared by every simulator: ``latency`` (seconds before each answer), ``silent``
(answer nothing), ``garbage`` (the fraction of answers replaced by noise), and for AT devices
``error_rate`` (the fraction of commands answered ``ERROR``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import time
import tty
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

CTRL_Z = b"\x1a"
ESC = b"\x1b"
_CRLF = b"\r\n"


class PtyDevice:
    """A device on a pseudo-terminal. Subclasses implement :meth:`received` and answer with
    :meth:`reply`."""

    #: One line for ``tocsin simulate modem``'s banner.
    description = "a serial device"

    def __init__(
        self,
        *,
        link: str | Path | None = None,
        latency: float = 0.0,
        garbage: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.link = Path(link) if link is not None else None
        self.latency = latency
        self.silent = False
        self.garbage = garbage
        self.random = random.Random(seed)  # noqa: S311 — a simulation, not security
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_path = ""
        self._outgoing: deque[tuple[float, bytes]] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        #: Every byte the adapter wrote, for tests that check what went over the line.
        self.received_bytes = bytearray()
        self.plugged = False
        self.unplugs = 0

    # -- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="tocsin-pty-device-writer")
        self.replug()

    async def stop(self) -> None:
        self.unplug()
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    @property
    def path(self) -> str:
        """What the adapter's ``port`` setting names: the link, else the pty's own path."""
        return str(self.link) if self.link is not None else self._slave_path

    @property
    def pty_path(self) -> str:
        return self._slave_path

    # -- plugging -------------------------------------------------------------------------------
    def unplug(self) -> None:
        """Close the pty and remove the link, as pulling the cable does. Answers not yet
        written are lost with it."""
        if not self.plugged:
            return
        self.plugged = False
        self.unplugs += 1
        master, slave = self._master, self._slave
        self._master = self._slave = None
        if master is not None:
            asyncio.get_running_loop().remove_reader(master)
            os.close(master)
        if slave is not None:
            os.close(slave)
        self._outgoing.clear()
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        self.on_unplug()

    def replug(self) -> None:
        """A new pty behind the same link (a fresh device: the subclass forgets its session
        state in :meth:`on_plug`)."""
        if self.plugged:
            return
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._slave_path = os.ttyname(slave)
        if self.link is not None:
            staging = self.link.with_name(f".{self.link.name}.{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            staging.symlink_to(self._slave_path)
            os.replace(staging, self.link)
        asyncio.get_running_loop().add_reader(master, self._readable)
        self.plugged = True
        self.on_plug()

    def on_plug(self) -> None:
        """Called with each new pty (a device that was off starts in its power-on state)."""

    def on_unplug(self) -> None:
        """Called when the pty is closed."""

    # -- traffic --------------------------------------------------------------------------------
    def received(self, data: bytes) -> None:
        """Bytes the adapter wrote; subclasses interpret them."""
        raise NotImplementedError

    def reply(self, data: bytes, *, delay: float | None = None) -> None:
        """Send ``data`` to the adapter after ``delay`` (the ``latency`` knob by default), in
        order. Dropped while ``silent``; replaced by noise at the ``garbage`` rate."""
        if self.silent or not self.plugged or not data:
            return
        if self.garbage and self.random.random() < self.garbage:
            data = self.noise(len(data))
        wait = self.latency if delay is None else delay
        due = time.monotonic() + wait
        if self._outgoing and self._outgoing[-1][0] > due:
            due = self._outgoing[-1][0]  # never overtake an earlier answer
        self._outgoing.append((due, data))
        self._wake.set()

    def noise(self, size: int) -> bytes:
        """Line noise: random bytes, with no CR/LF so it never looks like a whole line."""
        return bytes(self.random.choice(range(0x20, 0xFF)) for _ in range(max(1, size)))

    def _readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EAGAIN):
                return
            raise
        if data:
            self.received_bytes += data
            self.received(data)

    async def _write_loop(self) -> None:
        while True:
            if not self._outgoing:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, data = self._outgoing[0]
            wait = due - time.monotonic()
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            self._outgoing.popleft()
            view = memoryview(data)
            while view and self.plugged and self._master is not None:
                try:
                    written = os.write(self._master, view)
                except BlockingIOError:
                    await asyncio.sleep(0.005)
                    continue
                except OSError:
                    break
                view = view[written:]


PayloadHandler = Callable[[bytes], Sequence[str] | None]


class AtDevice(PtyDevice):
    """An AT modem: command lines, echo, ``<CR><LF>``-framed answers, payload modes.

    Subclasses implement :meth:`handle` (the answer lines to one command, or None for
    ``ERROR``; an empty sequence answers just ``OK``) and may call :meth:`expect_payload`
    from it to read bytes after a prompt.
    """

    description = "an AT modem"

    def __init__(
        self,
        *,
        link: str | Path | None = None,
        latency: float = 0.0,
        garbage: float = 0.0,
        error_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(link=link, latency=latency, garbage=garbage, seed=seed)
        self.error_rate = error_rate
        self.echo = True
        self._line = bytearray()
        self._payload: tuple[bytes | None, int | None, PayloadHandler] | None = None
        self._payload_data = bytearray()
        self._answered = False
        #: Every command line received, in order (for tests).
        self.commands: list[str] = []

    def on_plug(self) -> None:
        self.echo = True  # the power-on default
        self._line.clear()
        self._payload = None
        self._payload_data.clear()

    # -- what subclasses use --------------------------------------------------------------------
    def handle(self, command: str) -> Sequence[str] | None:
        """The answer to ``command`` (information lines; ``OK`` follows), or None: ``ERROR``."""
        return None

    def expect_payload(
        self,
        prompt: bytes,
        on_payload: PayloadHandler,
        *,
        terminator: bytes | None = None,
        length: int | None = None,
    ) -> None:
        """After the current command: send ``prompt``, then read bytes up to ``terminator``
        (Ctrl-Z for ``AT+CMGS``) or exactly ``length`` bytes (``AT+SBDWB``), then answer
        with ``on_payload``'s lines (None: ``ERROR``). ESC abandons the payload."""
        if (terminator is None) == (length is None):
            raise ValueError("give a terminator or a length")
        self._payload = (terminator, length, on_payload)
        self._payload_data.clear()
        self.reply(prompt)

    def answer(self, lines: Sequence[str] | None, *, final: str = "OK") -> None:
        """Information lines then a final result code, each framed by ``<CR><LF>``."""
        if lines is None:
            self.reply(b"\r\nERROR\r\n")
            return
        body = b"".join(_CRLF + line.encode() + _CRLF for line in lines)
        self.reply(body + _CRLF + final.encode() + _CRLF)

    def raw_answer(self, data: bytes) -> None:
        """Answer the current command with these bytes instead (a binary block and its own
        result code, as ``AT+SBDRB`` does): :meth:`handle`'s return value is then ignored."""
        self._answered = True
        self.reply(data)

    def unsolicited(self, line: str, *extra: str) -> None:
        """An unsolicited result code (``+CMT: ,<n>`` and its PDU line, ``SBDRING``…)."""
        self.reply(b"".join(_CRLF + text.encode() + _CRLF for text in (line, *extra)))

    # -- parsing --------------------------------------------------------------------------------
    def received(self, data: bytes) -> None:
        for offset in range(len(data)):
            if self._payload is not None:
                self._payload_byte(data[offset : offset + 1])
                continue
            byte = data[offset : offset + 1]
            if byte == b"\r":
                line = self._line.decode("ascii", errors="replace").strip()
                self._line.clear()
                if line:
                    self._command(line)
            elif byte >= b" ":  # a modem ignores control characters (a stray ESC) in commands
                self._line += byte
                if len(self._line) > 4096:
                    self._line.clear()

    def _payload_byte(self, byte: bytes) -> None:
        if self._payload is None:
            return
        terminator, length, handler = self._payload
        if terminator is not None and byte == ESC:
            self._payload = None
            self._payload_data.clear()
            return
        if terminator is not None and byte == terminator:
            data = bytes(self._payload_data)
        else:
            self._payload_data += byte
            if length is None or len(self._payload_data) < length:
                return
            data = bytes(self._payload_data)
        self._payload = None
        self._payload_data.clear()
        self.answer(handler(data))

    def _command(self, line: str) -> None:
        self.commands.append(line)
        if self.echo:
            self.reply(line.encode() + b"\r")
        upper = line.upper()
        if self.error_rate and self.random.random() < self.error_rate:
            self.answer(None)
            return
        if upper in ("ATE0", "ATE1"):
            self.echo = upper == "ATE1"
            self.answer(())
            return
        if upper == "AT":
            self.answer(())
            return
        self._answered = False
        answer = self.handle(line)
        if self._payload is not None or self._answered:
            return  # answered after the payload, or by the handler itself
        self.answer(answer)

"""AT commands over a serial port (3GPP TS 27.007/27.005 modems, Iridium SBD transceivers).

One command at a time: a modem answers one command with information lines then one final
result code (``OK``, ``ERROR``, ``+CMS ERROR: <n>``, ``+CME ERROR: <n>``), and two commands in
flight would have their answers interleaved. Unsolicited result codes (``+CMT``, ``+CDS``,
``SBDRING``, ``RDY`` after a reset…) can arrive at any moment, even between a command and its
answer: lines starting with a registered URC prefix are handed to ``on_urc`` whatever is in
flight (with the number of lines that belong to them, e.g. the PDU after ``+CMT:``), and every
line that arrives while no command is in flight goes there too, so the kind can spot a modem
that rebooted. A line whose prefix is the in-flight command's own response (``+CREG:`` for
``AT+CREG?``) belongs to that command.

Commands with a payload (``AT+CMGS=<n>`` then the PDU and Ctrl-Z after the ``> `` prompt;
``AT+SBDWB=<n>`` then the bytes and checksum after ``READY``) wait for the prompt before
writing it. ``AT+SBDRB`` answers with a binary block (2-byte big-endian length, the message,
2-byte checksum) before its ``OK``: ``binary_reply=True`` reads it.

Every command has a timeout. A command that timed out may still be answered later, so the
next command first resynchronises (``AT`` until ``OK``) and a late answer is not mistaken for
its own; a prompt that never came is cancelled with ESC so the modem leaves payload mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog

from adapters.serial_link.errors import PortClosed, ResponseTimeout, SerialLinkError
from adapters.serial_link.link import SerialLink

log = structlog.get_logger(__name__)

_FINAL_OK = frozenset({"OK"})
_FINAL_ERROR = frozenset({"ERROR", "NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE"})
_FINAL_ERROR_CODE = re.compile(r"^\+(CMS|CME) ERROR:\s*(.*)$")
_RESPONSE_NAME = re.compile(r"^AT([+^$&%][A-Z0-9]+)", re.IGNORECASE)
#: Lines longer than this are noise, not modem output.
MAX_LINE = 4096
#: The longest binary block a device sends (Iridium MT messages: 1,890 bytes).
MAX_BLOCK = 2047
ESC = b"\x1b"
#: How long the resynchronising ``AT`` after a timeout may take.
RESYNC_TIMEOUT = 2.0
RESYNC_QUIET = 0.05

#: Set while the channel's own set-up runs: its commands go ahead of everyone's.
_IN_SETUP: contextvars.ContextVar[bool] = contextvars.ContextVar("at_in_setup", default=False)


@dataclass(frozen=True, slots=True)
class AtReply:
    """A command's information lines (without echo and final code), and its binary block."""

    lines: tuple[str, ...]
    binary: bytes | None = None

    def value(self, prefix: str) -> str | None:
        """The first line starting with ``prefix`` (e.g. ``+CSQ:``), without it."""
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        return None


@dataclass(frozen=True, slots=True)
class Urc:
    """An unsolicited line and the lines that belong to it (a PDU after ``+CMT:``)."""

    line: str
    extra: tuple[str, ...] = ()


class AtError(SerialLinkError):
    """The modem answered a command with an error result code."""

    def __init__(self, command: str, final: str) -> None:
        super().__init__(f"{command} answered {final}")
        self.command = command
        self.final = final
        match = _FINAL_ERROR_CODE.match(final)
        #: "CMS" (SMS service errors) or "CME" (equipment errors), or None for plain ERROR.
        self.family: str | None = match.group(1) if match else None
        self.code: int | None = int(match.group(2)) if match and match.group(2).isdigit() else None
        #: The text of a verbose error (``+CME ERROR: SIM not inserted``).
        self.text: str = match.group(2) if match and not match.group(2).isdigit() else ""


@dataclass(slots=True)
class _Pending:
    command: str
    response_prefix: str | None
    future: asyncio.Future[AtReply]
    prompt: bytes | None
    prompt_seen: asyncio.Event
    binary: bool
    lines: list[str]
    block: bytes | None = None


class AtChannel:
    """AT command exchange over one :class:`SerialLink`."""

    def __init__(
        self,
        *,
        port: str,
        baudrate: int,
        name: str,
        on_urc: Callable[[Urc], None],
        urcs: Mapping[str, int] | None = None,
        on_open: Callable[[], Awaitable[None]] | None = None,
        on_close: Callable[[str], None] | None = None,
        command_timeout: float = 10.0,
        reopen_max: float = 30.0,
    ) -> None:
        self._name = name
        self._on_urc = on_urc
        self._urcs = dict(urcs or {})
        self._user_open = on_open
        self._user_close = on_close
        self.command_timeout = command_timeout
        self.link = SerialLink(
            port=port,
            baudrate=baudrate,
            name=name,
            on_bytes=self._received,
            on_open=self._opened,
            on_close=self._closed,
            reopen_max=reopen_max,
        )
        self._buffer = bytearray()
        self._lock = asyncio.Lock()
        self._pending: _Pending | None = None
        self._urc: tuple[str, list[str], int] | None = None
        self._resync = False

    # -- lifecycle, delegated ---------------------------------------------------------------------
    @property
    def port(self) -> str:
        return self.link.port

    @property
    def ready(self) -> bool:
        return self.link.ready

    @property
    def last_error(self) -> str:
        return self.link.last_error

    async def open(self, *, within: float) -> None:
        await self.link.open(within=within)

    async def wait_ready(self, within: float) -> bool:
        return await self.link.wait_ready(within)

    async def close(self) -> None:
        self._fail_pending(PortClosed(f"{self.port}: closed"))
        await self.link.close()

    # -- commands ---------------------------------------------------------------------------------
    async def command(
        self,
        command: str,
        *,
        within: float | None = None,
        payload: bytes | None = None,
        prompt: bytes = b"> ",
        binary_reply: bool = False,
    ) -> AtReply:
        """Send ``command`` and return its answer; raises :class:`AtError` for an error result,
        :class:`ResponseTimeout` when unanswered, :class:`PortClosed` when the port is gone or
        goes away meanwhile."""
        seconds = self.command_timeout if within is None else within
        async with self._lock:
            self._check_ready()
            if self._resync:
                generation = self.link.generation
                await self._resynchronise(min(RESYNC_TIMEOUT, seconds))
                # The port may have gone and come back during the resync's pause: the device
                # is then being set up again, and this command must not go ahead of that.
                if self.link.generation != generation:
                    raise PortClosed(f"{self.port}: reopened while resynchronising")
                self._check_ready()
            return await self._exchange(command, seconds, payload, prompt, binary_reply)

    def _check_ready(self) -> None:
        if not (self.link.ready or (_IN_SETUP.get() and self.link.is_open)):
            raise PortClosed(f"{self.port}: not ready ({self.last_error})")

    async def _exchange(
        self, command: str, seconds: float, payload: bytes | None, prompt: bytes, binary: bool
    ) -> AtReply:
        name = _RESPONSE_NAME.match(command)
        pending = _Pending(
            command=command,
            response_prefix=f"{name.group(1).upper()}:" if name else None,
            future=asyncio.get_running_loop().create_future(),
            prompt=prompt if payload is not None else None,
            prompt_seen=asyncio.Event(),
            binary=binary,
            lines=[],
        )
        self._pending = pending
        stage = "answer"
        try:
            async with asyncio.timeout(seconds):
                self.link.write(command.encode("ascii") + b"\r")
                if payload is not None:
                    stage = "prompt"
                    # Set by the prompt, and by an answer that comes instead (ERROR).
                    await pending.prompt_seen.wait()
                    if not pending.future.done():
                        stage = "answer"
                        self.link.write(payload)
                return await pending.future
        except asyncio.CancelledError:
            # Given up by the caller (the engine's send timeout): the answer may still come
            # and must not be taken for the next command's.
            self._resync = True
            raise
        except TimeoutError:
            self._resync = True
            if stage == "prompt":
                self._write_quietly(ESC)
            raise ResponseTimeout(
                f"{self.port}: no {stage} to {command} within {seconds:g}s"
            ) from None
        finally:
            self._pending = None

    async def _resynchronise(self, seconds: float) -> None:
        """After a timeout: ``AT`` until ``OK``, so a late answer to the old command is read
        and dropped here rather than taken for the next command's."""
        self._buffer.clear()
        try:
            await self._exchange("AT", seconds, None, b"", False)
        except AtError:
            pass  # it answers (ERROR: leftovers of the old command in its line buffer)
        except PortClosed:
            raise
        except SerialLinkError:
            raise ResponseTimeout(f"{self.port}: the device does not answer AT") from None
        # The OK may have been the old command's; this one's then arrives in the pause, with
        # no command in flight, and goes to the URC handler instead of the next command.
        await asyncio.sleep(RESYNC_QUIET)
        self._resync = False

    def _write_quietly(self, data: bytes) -> None:
        with contextlib.suppress(PortClosed):
            self.link.write(data)

    # -- the link's callbacks ---------------------------------------------------------------------
    async def _opened(self) -> None:
        self._buffer.clear()
        self._urc = None
        self._resync = False
        if self._user_open is None:
            return
        token = _IN_SETUP.set(True)
        try:
            await self._user_open()
        finally:
            _IN_SETUP.reset(token)

    def _closed(self, reason: str) -> None:
        self._fail_pending(PortClosed(f"{self.port}: {reason}"))
        if self._user_close is not None:
            self._user_close(reason)

    def _fail_pending(self, exc: Exception) -> None:
        pending = self._pending
        if pending is not None and not pending.future.done():
            _settle(pending, exc)
            # Nobody may await it when it was failed between two awaits of the exchange.
            pending.future.add_done_callback(_retrieve)

    # -- parsing ----------------------------------------------------------------------------------
    def _received(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            pending = self._pending
            if pending is not None and pending.binary and pending.block is None:
                if not self._take_block(pending):
                    return
                continue
            awaiting_prompt = (
                pending is not None
                and pending.prompt is not None
                and not pending.prompt_seen.is_set()
            )
            if awaiting_prompt and pending is not None and self._take_prompt(pending):
                continue
            end = _line_end(self._buffer)
            if end is None:
                if len(self._buffer) > MAX_LINE:
                    log.warning("serial noise dropped", adapter=self._name, size=len(self._buffer))
                    self._buffer.clear()
                return
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            line = raw.decode("ascii", errors="replace").strip()
            if line:
                self._line(line)

    def _take_prompt(self, pending: _Pending) -> bool:
        if pending.prompt is None:
            return False
        at = self._buffer.find(pending.prompt)
        if at < 0:
            return False
        # Lines before the prompt (the echo) are read first.
        before = _line_end(self._buffer)
        if before is not None and before < at:
            return False
        del self._buffer[: at + len(pending.prompt)]
        pending.prompt_seen.set()
        return True

    def _take_block(self, pending: _Pending) -> bool:
        """Read the binary block of ``AT+SBDRB``; False while more bytes are needed."""
        echo = pending.command.encode("ascii")
        if self._buffer.startswith(echo):
            end = _line_end(self._buffer)
            if end is None:
                return False
            del self._buffer[: end + 1]
            return True
        if bytes(self._buffer[:1]) in (b"\r", b"\n"):
            del self._buffer[:1]
            return True
        if self._buffer.startswith((b"ERROR", b"+CME", b"+CMS")):
            pending.binary = False  # an error result instead of a block: read it as a line
            return True
        if self._buffer[0] > MAX_BLOCK >> 8:
            # No block is that long (SBD messages are under 2 KB): text, e.g. a late answer
            # to an earlier command. Dropped as a line, not read as a 20 KB length.
            end = _line_end(self._buffer)
            if end is None:
                if len(self._buffer) <= MAX_LINE:
                    return False
                self._buffer.clear()  # noise
                return True
            log.warning(
                "line before a binary block dropped",
                adapter=self._name,
                line=bytes(self._buffer[:end])[:40].decode("ascii", errors="replace"),
            )
            del self._buffer[: end + 1]
            return True
        if len(self._buffer) < 2:
            return False
        size = int.from_bytes(self._buffer[:2], "big")
        if len(self._buffer) < 2 + size + 2:
            return False
        block = bytes(self._buffer[: 2 + size + 2])
        del self._buffer[: 2 + size + 2]
        message, checksum = block[2 : 2 + size], int.from_bytes(block[-2:], "big")
        if sum(message) & 0xFFFF != checksum:
            if not pending.future.done():
                _settle(pending, AtError(pending.command, "binary block with a wrong checksum"))
            pending.block = b""
            return True
        pending.block = message
        return True

    def _line(self, line: str) -> None:
        if self._urc is not None:
            head, extra, wanted = self._urc
            extra.append(line)
            if len(extra) >= wanted:
                self._urc = None
                self._emit(Urc(head, tuple(extra)))
            return
        pending = self._pending
        if pending is not None:
            if line == pending.command:
                return  # echo
            if line in _FINAL_OK:
                if not pending.future.done():
                    _settle(pending, AtReply(tuple(pending.lines), pending.block))
                return
            if line in _FINAL_ERROR or _FINAL_ERROR_CODE.match(line):
                if not pending.future.done():
                    _settle(pending, AtError(pending.command, line))
                return
            own = pending.response_prefix is not None and line.startswith(pending.response_prefix)
            if own or self._urc_prefix(line) is None:
                pending.lines.append(line)
                return
        prefix = self._urc_prefix(line)
        wanted = self._urcs.get(prefix, 0) if prefix is not None else 0
        if wanted:
            self._urc = (line, [], wanted)
            return
        self._emit(Urc(line))

    def _urc_prefix(self, line: str) -> str | None:
        for prefix in self._urcs:
            if line.startswith(prefix):
                return prefix
        return None

    def _emit(self, urc: Urc) -> None:
        try:
            self._on_urc(urc)
        except Exception:  # a kind's handler bug must not stop the reader
            log.exception("URC handler failed", adapter=self._name, urc=urc.line[:40])


def _line_end(buffer: bytearray) -> int | None:
    """The index of the first CR or LF (modems end lines with CR LF, some with CR alone)."""
    cr = buffer.find(b"\r")
    lf = buffer.find(b"\n")
    ends = [i for i in (cr, lf) if i >= 0]
    return min(ends) if ends else None


def _settle(pending: _Pending, result: AtReply | Exception) -> None:
    """Answer the command (and stop it waiting for a prompt that will not come now)."""
    if isinstance(result, Exception):
        pending.future.set_exception(result)
    else:
        pending.future.set_result(result)
    pending.prompt_seen.set()


def _retrieve(future: asyncio.Future[AtReply]) -> None:
    if not future.cancelled():
        future.exception()

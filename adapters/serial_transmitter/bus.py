"""The serial line to the transmitters, as the adapter drives it: one command in flight at a
time (an RS-485 bus is half duplex, and a transmitter answers only when spoken to), each
answer matched to its command by sequence number and address, unanswered frames sent again.

The port itself is owned by a :class:`~adapters.serial_link.link.SerialLink` task, which
reopens it after an unplug; a command waiting when the port goes away fails at once with
:class:`~adapters.serial_link.errors.PortClosed`, never at its timeout.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass

import structlog

from adapters.serial_link.errors import PortClosed
from adapters.serial_link.link import SerialLink
from adapters.serial_transmitter.messages import (
    Ack,
    Command,
    Garbled,
    Received,
    ResultCode,
    StatusReport,
)
from adapters.serial_transmitter.profiles import FrameDecoder, FramingProfile

log = structlog.get_logger(__name__)

#: Sequence numbers of the last commands to each transmitter that a new command never reuses:
#: a transmitter takes a frame with the SEQ of the last command it acted on for a resend and
#: does not broadcast it (PROTOCOL.md), and the one counter of the bus wraps every 65536
#: commands (hours, with status polls of many transmitters). Several, not one: the last
#: commands sent may never have reached it, and it still remembers an older one.
RECENT_SEQS = 8


class NoAnswer(Exception):
    """No valid answer after every send of a frame; the message says what was heard."""

    def __init__(self, message: str, *, sends: int, garbled: int) -> None:
        super().__init__(message)
        self.sends = sends
        self.garbled = garbled


@dataclass(frozen=True, slots=True)
class Exchange:
    """A command and the answer it got."""

    seq: int
    reply: Ack | StatusReport
    #: How many times the frame was written (1 + resends).
    sends: int
    #: Seconds from the first send to the answer.
    elapsed: float


@dataclass(slots=True)
class LineCounters:
    commands: int = 0
    resends: int = 0
    timeouts: int = 0
    #: Frames that started but could not be read (noise, bad CRC).
    garbled: int = 0
    #: Valid frames that answer nothing awaited (late answers, other masters, echoes).
    unmatched: int = 0


class TransmitterBus:
    """One serial line and the transmitters on it."""

    def __init__(
        self,
        *,
        port: str,
        baudrate: int,
        name: str,
        profile: FramingProfile,
        ack_timeout: float,
        resends: int,
        reopen_max: float,
    ) -> None:
        self.port = port
        self.profile = profile
        self._ack_timeout = ack_timeout
        self._resends = resends
        self._name = name
        self._decoder: FrameDecoder = profile.decoder()
        self._lock = asyncio.Lock()
        # A random start: a transmitter that remembers the last sequence number of an earlier
        # run must not take the first command of this one for a resend.
        self._seq = random.randrange(profile.seq_modulus)  # noqa: S311 — not security
        #: Line address → the sequence numbers of the last commands sent to it.
        self._recent: dict[int, deque[int]] = {}
        self._awaited: tuple[int, int] | None = None
        self._answer: asyncio.Future[Received | Garbled] | None = None
        self.counters = LineCounters()
        self.link = SerialLink(
            port=port,
            baudrate=baudrate,
            name=name,
            on_bytes=self._on_bytes,
            on_open=self._on_open,
            on_close=self._on_close,
            reopen_max=reopen_max,
        )

    # -- state ----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.link.ready

    @property
    def last_error(self) -> str:
        return self.link.last_error

    @property
    def discarded(self) -> int:
        """Bytes of line noise skipped outside any frame."""
        return self._decoder.discarded

    async def open(self, within: float) -> None:
        """Open the port (``PortUnavailable`` naming the port and the cause)."""
        await self.link.open(within=within)

    async def close(self) -> None:
        """Close the port; a command waiting fails at once with ``PortClosed``."""
        self._fail_waiting("adapter stopping")
        await self.link.close()

    # -- the exchange ---------------------------------------------------------------------------
    async def exchange(self, command: Command, address: int) -> Exchange:
        """Send ``command`` to the transmitter at ``address`` and wait for its answer: the
        same frame is sent again (same sequence number) after each ``ack_timeout`` without a
        valid answer, or at once after a garbled one or a BAD_CRC, up to ``resends`` times.

        Raises :class:`NoAnswer` when every send went unanswered, ``PortClosed`` when the port
        is not open or goes away meanwhile, ``ProtocolError`` when the command cannot be
        framed."""
        async with self._lock:
            seq = self._next_seq(address)
            frame = self.profile.encode_command(command, seq=seq, address=address)
            self._recent.setdefault(address, deque(maxlen=RECENT_SEQS)).append(seq)
            self.counters.commands += 1
            started = time.monotonic()
            garbled = 0
            heard = ""
            sends = 1 + self._resends
            for attempt in range(1, sends + 1):
                if attempt > 1:
                    self.counters.resends += 1
                loop = asyncio.get_running_loop()
                answer: asyncio.Future[Received | Garbled] = loop.create_future()
                self._awaited, self._answer = (seq, address), answer
                try:
                    self.link.write(frame)
                    try:
                        async with asyncio.timeout(self._ack_timeout):
                            item = await answer
                    except TimeoutError:
                        self.counters.timeouts += 1
                        continue
                finally:
                    self._awaited = self._answer = None
                if isinstance(item, Garbled):
                    garbled += 1
                    heard = f"an unreadable answer ({item.reason})"
                    continue
                reply = item.message
                if isinstance(reply, Command):  # _on_bytes passes only replies
                    continue
                if isinstance(reply, Ack) and reply.result is ResultCode.BAD_CRC:
                    garbled += 1
                    heard = "the transmitter reported our frame's CRC bad"
                    continue
                return Exchange(seq, reply, attempt, time.monotonic() - started)
            waited = time.monotonic() - started
            what = heard or "nothing"
            raise NoAnswer(
                f"transmitter {address} did not answer {sends} sends in {waited:.1f}s "
                f"(heard {what})",
                sends=sends,
                garbled=garbled,
            )

    def _next_seq(self, address: int) -> int:
        """The next sequence number that is none of the last ones sent to ``address``."""
        recent = self._recent.get(address, ())
        for _ in range(self.profile.seq_modulus):  # bounded: a profile with few numbers
            self._seq = (self._seq + 1) % self.profile.seq_modulus
            if self._seq not in recent:
                break
        return self._seq

    # -- the link's callbacks ---------------------------------------------------------------------
    async def _on_open(self) -> None:
        # A partial frame from before the unplug is not the start of anything now.
        self._decoder.reset()

    def _on_close(self, reason: str) -> None:
        self._fail_waiting(reason)

    def _fail_waiting(self, reason: str) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(PortClosed(f"{self.port}: {reason}"))

    def _on_bytes(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            awaited, answer = self._awaited, self._answer
            if isinstance(item, Garbled):
                self.counters.garbled += 1
                # A readable header that names the awaited command: resend now rather than
                # after the timeout.
                if (
                    awaited is not None
                    and answer is not None
                    and not answer.done()
                    and (item.seq, item.address) == awaited
                ):
                    answer.set_result(item)
                else:
                    log.debug("garbled frame on the line", port=self.port, reason=item.reason)
                continue
            if isinstance(item.message, Command):
                # Our own frame, echoed by an RS-485 adapter that hears itself.
                continue
            if (
                awaited is not None
                and answer is not None
                and not answer.done()
                and (item.seq, item.address) == awaited
            ):
                answer.set_result(item)
            else:
                self.counters.unmatched += 1
                log.debug(
                    "answer to nothing awaited (late, or another master)",
                    port=self.port,
                    seq=item.seq,
                    address=item.address,
                )

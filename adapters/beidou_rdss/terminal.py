"""One BeiDou terminal on a serial port: sentences in and out, one exchange at a time.

The terminal answers a command with one sentence (``$CCICA`` → ``$BDICI``, ``$CCTXA`` →
``$BDFKI,TXA,…``) and prints others whenever it likes (``$BDTXR`` messages, ``$BDBSI`` beam
reports, GNSS sentences). Lines are split by the shared :class:`LineSplitter`, parsed here and
routed: an answer to whoever waits for it, an inbound message to ``on_message``, a beam report
kept as the latest. Feedback names the command but no message, so exchanges are serialised
(:meth:`Terminal.exchange` under one lock): a ``$BDFKI,TXA`` answers the one ``$CCTXA`` in
flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from adapters.beidou_rdss.sentences import (
    MAX_SENTENCE,
    BeamInfo,
    CardInfo,
    CardQuery,
    Feedback,
    InboundMessage,
    OutputRequest,
    RawSentence,
    Sentence,
    SentenceError,
    read,
)
from adapters.beidou_rdss.settings import BeidouRdssSettings
from adapters.log_throttle import ThrottledWarning
from adapters.serial_link.errors import PortClosed, ResponseTimeout
from adapters.serial_link.lines import LineSplitter
from adapters.serial_link.link import SerialLink

log = structlog.get_logger(__name__)


class CardMissing(Exception):
    """The terminal answered for an empty card slot (user id 0)."""


@dataclass(slots=True)
class Counters:
    lines: int = 0
    #: Lines that were not a valid sentence (noise, bad checksum, a field out of range).
    malformed: int = 0
    #: Answers nobody waited for (late, after a timeout) and dropped.
    unexpected: int = 0
    inbound: int = 0


class Terminal:
    """The port (kept open by :class:`SerialLink`) and the sentence exchange over it."""

    def __init__(
        self,
        *,
        name: str,
        settings: BeidouRdssSettings,
        on_message: Callable[[InboundMessage], None] | None = None,
        on_ready: Callable[[CardInfo], None] | None = None,
        on_close: Callable[[str], None] | None = None,
        set_up: bool = True,
    ) -> None:
        self._name = name
        self._settings = settings
        self._on_message = on_message
        self._on_ready = on_ready
        self._on_close_cb = on_close
        self._splitter = LineSplitter(self._on_line, max_line=MAX_SENTENCE)
        self.link = SerialLink(
            port=settings.port,
            baudrate=settings.baudrate,
            name=name,
            on_bytes=self._splitter.feed,
            on_open=self._set_up if set_up else None,
            on_close=self._closed,
            reopen_max=settings.reopen_max,
        )
        self._waiting: dict[str, asyncio.Future[Sentence]] = {}
        self._lock = asyncio.Lock()
        self.card: CardInfo | None = None
        self.beams: BeamInfo | None = None
        self.beams_at = 0.0
        self.counters = Counters()
        self._warn_malformed = ThrottledWarning(
            log, "malformed line from the BeiDou terminal dropped"
        )

    @property
    def port(self) -> str:
        return self._settings.port

    @property
    def lock(self) -> asyncio.Lock:
        """Held for a whole exchange (or a send's pacing wait and exchange)."""
        return self._lock

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    # -- lifecycle ------------------------------------------------------------------------------
    async def open(self, *, within: float) -> None:
        """Open the port (and read the card); raises PortUnavailable."""
        await self.link.open(within=within)

    async def close(self) -> None:
        self._fail_waiting(PortClosed(f"{self.port}: closed"))
        await self.link.close()

    async def _set_up(self) -> None:
        """After each (re)open: read the card, ask for beam reports. An exception here makes the
        link close the port and try again with backoff (a terminal still booting)."""
        self._splitter.clear()
        card = await self.read_card(lock=False)
        if not card.present:
            raise CardMissing("the terminal reports no user card (user id 0)")
        interval = self._settings.beam_report_interval
        if interval:
            # Answered by $BDFKI,RMO; not waited for: some terminals do not answer it at all.
            self.link.write(OutputRequest("BSI", 2, interval).encode())
        if self._on_ready is not None:
            self._on_ready(card)

    def _closed(self, reason: str) -> None:
        self._fail_waiting(PortClosed(f"{self.port}: {reason}"))
        if self._on_close_cb is not None:
            self._on_close_cb(reason)

    # -- exchanges ------------------------------------------------------------------------------
    async def read_card(self, *, lock: bool = True) -> CardInfo:
        answer = await self.exchange(CardQuery().encode(), "ICI", lock=lock)
        assert isinstance(answer, CardInfo)  # noqa: S101 — routed by kind
        self.card = answer
        return answer

    async def exchange(
        self, sentence: bytes, answer: str, *, within: float | None = None, lock: bool = True
    ) -> Sentence:
        """Write ``sentence`` and wait for the answer of kind ``answer`` (``ICI``, ``FKI:TXA``).
        Raises PortClosed (also when the port goes away meanwhile) or ResponseTimeout."""
        if within is None:
            within = self._settings.command_timeout
        if not lock:
            return await self._exchange(sentence, answer, within)
        async with self._lock:
            return await self._exchange(sentence, answer, within)

    async def _exchange(self, sentence: bytes, answer: str, within: float) -> Sentence:
        if answer in self._waiting:
            raise RuntimeError(f"already waiting for {answer}")
        future: asyncio.Future[Sentence] = asyncio.get_running_loop().create_future()
        self._waiting[answer] = future
        try:
            self.link.write(sentence)
            try:
                async with asyncio.timeout(within):
                    return await future
            except TimeoutError:
                what = sentence[1:6].decode("ascii", "replace")
                raise ResponseTimeout(
                    f"{self.port}: no answer to ${what} within {within:g}s"
                ) from None
        finally:
            if self._waiting.get(answer) is future:
                del self._waiting[answer]

    def _fail_waiting(self, error: Exception) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: nobody may be left to await it
        self._waiting.clear()

    # -- incoming -------------------------------------------------------------------------------
    def _on_line(self, line: str) -> None:
        self.counters.lines += 1
        try:
            sentence = read(line.encode("utf-8", "replace"))
        except SentenceError as exc:
            self.counters.malformed += 1
            self._warn_malformed(adapter=self._name, port=self.port, error=str(exc))
            return
        if isinstance(sentence, RawSentence):
            return  # GNSS output and sentences Tocsin does not use
        if isinstance(sentence, InboundMessage):
            self.counters.inbound += 1
            if self._on_message is not None:
                self._on_message(sentence)
            return
        if isinstance(sentence, BeamInfo):
            self.beams, self.beams_at = sentence, time.time()
            self._resolve("BSI", sentence)
            return
        if isinstance(sentence, CardInfo):
            self._resolve("ICI", sentence)
            return
        if isinstance(sentence, Feedback):
            self._resolve(f"FKI:{sentence.command}", sentence)
            return
        # A $CC… sentence coming back: a terminal echoing, or a loop-back cable. Ignored.

    def _resolve(self, key: str, sentence: Sentence) -> None:
        future = self._waiting.get(key)
        if future is None or future.done():
            # Beam reports come unasked; $CCRMO's feedback is not waited for.
            if key not in ("BSI", "FKI:RMO"):
                self.counters.unexpected += 1
                log.info("unexpected answer from the BeiDou terminal", port=self.port, kind=key)
            return
        future.set_result(sentence)

    async def sample_beams(self, within: float) -> BeamInfo | None:
        """Ask for a beam report every second, take the next one (or the latest within
        ``within``), then set the output back to the configured interval (or off)."""
        with contextlib.suppress(PortClosed):
            self.link.write(OutputRequest("BSI", 2, 1).encode())
        beams = await self.wait_beams(within)
        interval = self._settings.beam_report_interval
        restore = OutputRequest("BSI", 2, interval) if interval else OutputRequest("BSI", 1)
        with contextlib.suppress(PortClosed):
            self.link.write(restore.encode())
        return beams

    async def wait_beams(self, within: float) -> BeamInfo | None:
        """The next beam report within ``within`` seconds (the latest one if none comes)."""
        if "BSI" in self._waiting:
            return self.beams
        future: asyncio.Future[Sentence] = asyncio.get_running_loop().create_future()
        self._waiting["BSI"] = future
        try:
            with contextlib.suppress(TimeoutError, PortClosed):
                async with asyncio.timeout(within):
                    answer = await future
                    assert isinstance(answer, BeamInfo)  # noqa: S101 — routed by kind
                    return answer
        finally:
            if self._waiting.get("BSI") is future:
                del self._waiting["BSI"]
        return self.beams

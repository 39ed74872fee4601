"""A BeiDou RDSS terminal on a pseudo-terminal, speaking the sentences the adapter does: for the
tests and for ``tocsin simulate modem --profile beidou``.

It answers ``$CCICA`` with its card (``$BDICI``), ``$CCRMO,BSI`` with ``$BDFKI,RMO`` and then
beam reports (``$BDBSI``) at the asked interval, and ``$CCTXA`` with ``$BDFKI,TXA``: ``Y`` when
it transmits, ``N`` with the reason otherwise — sent before the card's service interval passed
(code 1 and the seconds to wait), no signal (code 4), or the refusal the ``refuse`` knob sets.
Messages from other terminals arrive as ``$BDTXR`` through :meth:`receive_message` (the tests
call it; ``auto_reply`` makes every destination answer by itself, for rehearsals).

Knobs, besides the common ``latency`` / ``silent`` / ``garbage`` / ``unplug()``: ``interval``
(the card's service interval), ``level``, ``beam_power`` (0: no signal), ``refuse`` (a
:class:`Suppression` every ``$CCTXA`` is refused with), ``drop_feedback`` (transmit but never
answer, like a terminal that hangs after the radio burst), ``auto_reply``/``reply_delay``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path

from adapters.beidou_rdss.sentences import (
    COMM_LEVEL_BITS,
    BeamInfo,
    CardInfo,
    CardQuery,
    Encoding,
    Feedback,
    InboundMessage,
    OutputRequest,
    SendRequest,
    SentenceError,
    Suppression,
    content_bits,
    read,
    user_id,
)
from adapters.serial_link.lines import LineSplitter
from adapters.serial_link.pty_device import PtyDevice
from adapters.simulator_args import seconds

#: The simulated card's user id unless told otherwise.
DEFAULT_CARD = "0208460"


@dataclass(frozen=True, slots=True)
class Transmitted:
    """A message the terminal transmitted."""

    request: SendRequest
    at: float


class BeidouTerminal(PtyDevice):
    description = "a BeiDou RDSS terminal"

    def __init__(
        self,
        *,
        link: str | Path | None = None,
        card: str = DEFAULT_CARD,
        interval: float = 60.0,
        level: int = 3,
        beam_power: int = 4,
        refuse: Suppression | None = None,
        auto_reply: str | None = None,
        reply_delay: float = 3.0,
        latency: float = 0.0,
        garbage: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(link=link, latency=latency, garbage=garbage, seed=seed)
        self.card = user_id(card, allow_zero=True)
        self.interval = interval
        self.level = level
        self.beam_power = beam_power
        self.refuse = refuse
        self.drop_feedback = False
        self.auto_reply = auto_reply
        self.reply_delay = reply_delay
        self._splitter = LineSplitter(self._line)
        self._last_transmission: float | None = None
        self._beam_timer: asyncio.TimerHandle | None = None
        self._beam_interval = 0.0
        #: Every message transmitted, in order (for tests).
        self.transmitted: list[Transmitted] = []
        #: Every $CCTXA received, transmitted or refused.
        self.requests: list[SendRequest] = []
        self.bad_lines = 0

    # -- power-on state -------------------------------------------------------------------------
    def on_plug(self) -> None:
        self._splitter.clear()
        self._stop_beams()
        # The service interval is the centre's: it survives the terminal's power cycle.

    def on_unplug(self) -> None:
        self._stop_beams()

    # -- what the tests and the CLI drive -------------------------------------------------------
    def receive_message(
        self, sender_id: str, text: str, *, encoding: Encoding = Encoding.MIXED
    ) -> None:
        """A message from another terminal arrives: ``$BDTXR``."""
        self.reply(InboundMessage(user_id(sender_id), text, encoding).encode())

    def card_info(self) -> CardInfo:
        return CardInfo(
            user_id=self.card,
            serial="20240601",
            broadcast_id="1934946",
            user_type=2,
            interval=self.interval,
            level=self.level,
        )

    def beam_info(self) -> BeamInfo:
        power = max(0, min(4, self.beam_power))
        powers = tuple(max(0, power - abs(i - 3)) for i in range(10))
        best = powers.index(max(powers)) + 1 if power else 0
        return BeamInfo(best, best, powers)

    def wait_left(self) -> float:
        """Seconds until the card may transmit again."""
        if self._last_transmission is None:
            return 0.0
        return max(0.0, self._last_transmission + self.interval - time.monotonic())

    # -- protocol -------------------------------------------------------------------------------
    def received(self, data: bytes) -> None:
        self._splitter.feed(data)

    def _line(self, line: str) -> None:
        try:
            sentence = read(line.encode("utf-8", "replace"))
        except SentenceError:
            self.bad_lines += 1  # a real terminal ignores what it cannot read
            return
        if isinstance(sentence, CardQuery):
            self.reply(self.card_info().encode())
        elif isinstance(sentence, OutputRequest):
            self._output(sentence)
        elif isinstance(sentence, SendRequest):
            self._send(sentence)

    def _output(self, request: OutputRequest) -> None:
        if request.target not in ("BSI", ""):
            self.reply(Feedback("RMO", ok=False).encode())
            return
        self.reply(Feedback("RMO", ok=True).encode())
        self._stop_beams()
        if request.mode in (2, 4) and request.interval > 0:
            self._beam_interval = float(request.interval)
            self._beam_tick()

    def _beam_tick(self) -> None:
        self.reply(self.beam_info().encode())
        loop = asyncio.get_running_loop()
        self._beam_timer = loop.call_later(self._beam_interval, self._beam_tick)

    def _stop_beams(self) -> None:
        if self._beam_timer is not None:
            self._beam_timer.cancel()
            self._beam_timer = None

    def _send(self, request: SendRequest) -> None:
        self.requests.append(request)
        refusal = self._refusal(request)
        if refusal is not None:
            if not self.drop_feedback:
                self.reply(refusal.encode())
            return
        self._last_transmission = time.monotonic()
        self.transmitted.append(Transmitted(request, time.time()))
        if not self.drop_feedback:
            self.reply(Feedback("TXA", ok=True).encode())
        if self.auto_reply:
            loop = asyncio.get_running_loop()
            loop.call_later(
                self.reply_delay, self.receive_message, request.destination, self.auto_reply
            )

    def _refusal(self, request: SendRequest) -> Feedback | None:
        if self.refuse is not None:
            return Feedback("TXA", ok=False, suppression=self.refuse)
        if self.beam_power <= 0:
            return Feedback("TXA", ok=False, suppression=Suppression.NO_SIGNAL)
        wait = self.wait_left()
        if wait > 0:
            return Feedback(
                "TXA", ok=False, suppression=Suppression.FREQUENCY, wait=math.ceil(wait)
            )
        if content_bits(request.text, request.encoding) > COMM_LEVEL_BITS.get(self.level, 0):
            return Feedback("TXA", ok=False)  # longer than the card's level: not transmitted
        return None


# -- tocsin simulate modem --profile beidou -----------------------------------------------------
_REFUSALS = {
    "system": Suppression.SYSTEM,
    "silence": Suppression.SILENCE,
    "no-card": Suppression.NO_CARD,
    "not-permitted": Suppression.NOT_PERMITTED,
}


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--card", default=DEFAULT_CARD, help="the terminal's user (card) id")
    parser.add_argument(
        "--interval",
        type=seconds,
        default=60.0,
        help="the card's service interval: seconds between two transmissions (default 60)",
    )
    parser.add_argument(
        "--level",
        type=int,
        choices=sorted(COMM_LEVEL_BITS),
        default=3,
        help="communication level: message length "
        + ", ".join(f"{k}={v} bits" for k, v in COMM_LEVEL_BITS.items()),
    )
    parser.add_argument("--beam-power", type=int, choices=range(5), default=4, help="0 = no signal")
    parser.add_argument(
        "--refuse", choices=sorted(_REFUSALS), help="refuse every message with this reason"
    )
    parser.add_argument(
        "--auto-reply",
        default="1",
        help="each destination answers with this text (default '1'); '' for none",
    )
    parser.add_argument("--reply-delay", type=seconds, default=3.0)


def build(args: argparse.Namespace, *, link: str) -> BeidouTerminal:
    try:
        card = user_id(args.card)
    except ValueError as exc:
        raise ValueError(f"--card: {exc}") from None
    return BeidouTerminal(
        link=link,
        card=card,
        interval=args.interval,
        level=args.level,
        beam_power=args.beam_power,
        refuse=_REFUSALS[args.refuse] if args.refuse else None,
        auto_reply=args.auto_reply or None,
        reply_delay=args.reply_delay,
        seed=args.seed,
    )


def settings_hint(path: str, *, device: PtyDevice | None = None) -> str:
    return "\n".join(
        (
            "[adapters.beidou]",
            'kind = "beidou_rdss"',
            'channels = ["modem"]',
            "# one message per service interval: one batch at a time",
            "concurrency = 1",
            'send_timeout = "60s"',
            "[adapters.beidou.settings]",
            f'port = "{path}"',
            "baudrate = 115200",
        )
    )

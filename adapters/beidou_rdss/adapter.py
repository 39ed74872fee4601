"""The ``beidou_rdss`` adapter: town and village BeiDou terminals reached by RDSS short message
from a BeiDou terminal on the dispatcher's serial port.

``Dispatch.address`` is the target terminal's user (card) id. Each warning goes out as one
``$CCTXA`` message, shortened headline-first to the card's message length when it is longer;
the terminal answers ``$BDFKI,TXA,Y`` once it transmitted (→ Accepted) or ``N`` with the reason
(→ Retry). The card allows one transmission per service interval (服务频度, typically 60 s):
the adapter paces itself — it waits for the next slot when it is due within ``pacing_wait``,
else answers Retry with the seconds left, and tells the engine it has no room meanwhile
(:meth:`BeidouRdssAdapter.room`) — so a refusal for being early is the exception, and is
answered Retry after the wait the terminal names.

The target terminal's operator confirms by replying "1" (or 收到, Y…): the ``$BDTXR`` from
that user id acknowledges the newest message sent to it (remembered by address, bounded,
forgotten a while after the warning expires).

The port is owned by a :class:`SerialLink` that reopens it after an unplug and re-reads the
card; meanwhile :meth:`not_ready_reason` says why, and a send in flight answers Retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog

from adapters.beidou_rdss.sentences import (
    COMM_LEVEL_BITS,
    REPLY_PROMPT,
    CardInfo,
    CommType,
    Encoding,
    Feedback,
    InboundMessage,
    MessageTooLong,
    SendRequest,
    Suppression,
    content_bits,
    fit_message,
    prepare_text,
    user_id,
)
from adapters.beidou_rdss.settings import BeidouRdssSettings
from adapters.beidou_rdss.terminal import Terminal
from adapters.serial_link.errors import PortClosed, PortUnavailable, ResponseTimeout
from adapters.sms_text.replies import normalise_reply
from dispatcher.adapter import (
    Accepted,
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
    SendRate,
    WarningContent,
)
from dispatcher.domain import Channel, MsgType, Status
from dispatcher.engine.message_text import LEVEL_NAMES

log = structlog.get_logger(__name__)

#: Short status marks for the shortened form: Test and Exercise are never confused with Actual.
_STATUS_MARK = {
    Status.TEST: "【测试】",
    Status.EXERCISE: "【演练】",
    Status.DRAFT: "【草稿】",
    Status.ACTUAL: "",
}
#: Sent messages remembered for replies (address → the newest one); the oldest go first.
_REMEMBERED = 10_000
#: Retry after a port that went away: the link reopens it with backoff meanwhile.
_PORT_RETRY = 5.0


@dataclass(frozen=True, slots=True)
class _Sent:
    delivery_id: int
    warning_id: str
    reference: str
    address: str
    forget_at: float


class BeidouRdssAdapter:
    kind: ClassVar[str] = "beidou_rdss"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.MODEM})
    settings_model: ClassVar[type[BeidouRdssSettings]] = BeidouRdssSettings
    #: One transmission per service interval: a batch is mostly one message; a few for cards
    #: with a short interval (commander cards).
    max_batch: ClassVar[int] = 4
    description: ClassVar[str] = (
        "BeiDou RDSS short messages from a terminal on a serial port ($CCTXA/$BDFKI/$BDTXR), "
        "paced to the card's service interval; a reply 1/收到 confirms"
    )

    def __init__(self, *, name: str, settings: BeidouRdssSettings) -> None:
        self._name = name
        self._settings = settings
        self._encoding = Encoding.MIXED if settings.encoding == "mixed" else Encoding.CHINESE
        self._comm = CommType.NORMAL if settings.comm_type == "normal" else CommType.URGENT
        self._confirm = {normalise_reply(word) for word in settings.confirm_words} - {""}
        self._context: AdapterContext | None = None
        self._terminal: Terminal | None = None
        self._stopping = asyncio.Event()
        #: When the next transmission is allowed (time.monotonic()).
        self._next_slot = 0.0
        self._sent: OrderedDict[str, _Sent] = OrderedDict()
        self._sequence = 0
        self.counters: dict[str, int] = {
            "accepted": 0,
            "refused": 0,
            "frequency_limited": 0,
            "timeouts": 0,
            "replies": 0,
            "acknowledged": 0,
            "unmatched_replies": 0,
        }

    @property
    def name(self) -> str:
        return self._name

    # -- what the card allows -------------------------------------------------------------------
    @property
    def card(self) -> CardInfo | None:
        return self._terminal.card if self._terminal is not None else None

    def interval(self) -> float:
        """Seconds between two transmissions: the setting, else the card's (0 before it is
        read: the terminal's own feedback then says when)."""
        if self._settings.send_interval is not None:
            return self._settings.send_interval
        card = self.card
        return card.interval if card is not None else 0.0

    def max_bits(self) -> int:
        return _bits_for(self.card, self._settings)

    # -- pacing (PacesItself, ReportsReadiness) -------------------------------------------------
    def _gap(self) -> float:
        """Seconds from one transmission to the next: the interval and the margin (none when
        the card has no interval)."""
        interval = self.interval()
        return interval + self._settings.interval_margin if interval > 0 else 0.0

    def send_rate(self) -> SendRate | None:
        """Known before start only when ``send_interval`` is set; otherwise :meth:`room` paces
        by the card's interval once it is read."""
        interval = self._settings.send_interval
        if not interval:
            return None
        return SendRate(per_second=1.0 / interval, burst=1)

    def room(self) -> int | None:
        terminal = self._terminal
        if terminal is None or not terminal.link.ready:
            return 0
        if self.interval() <= 0:
            return None
        if terminal.busy:
            return 0
        return 1 if self._next_slot - time.monotonic() <= self._settings.pacing_wait else 0

    def not_ready_reason(self) -> str | None:
        terminal = self._terminal
        if terminal is None or terminal.link.ready:
            return None
        return f"{terminal.port}: {terminal.link.last_error or 'opening'}, reopening"

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, context: AdapterContext) -> None:
        self._context = context
        self._stopping.clear()
        terminal = Terminal(
            name=self._name,
            settings=self._settings,
            on_message=self._on_message,
            on_ready=self._on_card,
            on_close=self._on_port_closed,
        )
        try:
            await terminal.open(within=self._settings.open_timeout)
        except PortUnavailable as exc:
            raise AdapterNotReady(str(exc)) from None
        self._terminal = terminal

    async def stop(self) -> None:
        self._stopping.set()
        terminal, self._terminal = self._terminal, None
        if terminal is not None:
            with contextlib.suppress(Exception):
                await terminal.close()

    def _on_card(self, card: CardInfo) -> None:
        log.info(
            "BeiDou terminal ready",
            adapter=self._name,
            port=self._settings.port,
            card=card.user_id,
            interval=card.interval,
            level=card.level,
        )

    def _on_port_closed(self, reason: str) -> None:
        log.warning("BeiDou terminal port lost", adapter=self._name, reason=reason)

    # -- sending --------------------------------------------------------------------------------
    async def send(self, batch: Sequence[Dispatch]) -> Sequence[Outcome]:
        outcomes: list[Outcome] = []
        started = time.monotonic()
        for index, dispatch in enumerate(batch):
            if time.monotonic() - started > self._settings.batch_budget:
                rest = Retry("the batch took too long; sent later", after=0)
                return outcomes + [rest] * (len(batch) - index)
            try:
                outcome, stop_batch = await self._send_one(dispatch)
            except Exception as exc:  # never raise out of send(): the delivery is retried
                log.exception("BeiDou send failed", adapter=self._name)
                outcome, stop_batch = Retry(f"adapter error: {type(exc).__name__}: {exc}"), True
            outcomes.append(outcome)
            if stop_batch:
                # What stopped this one stops the rest (port gone, no signal, a wait).
                rest = outcome if isinstance(outcome, Retry) else Retry("not sent", after=0)
                return outcomes + [rest] * (len(batch) - index - 1)
        return outcomes

    async def _send_one(self, d: Dispatch) -> tuple[Outcome, bool]:
        """The outcome, and whether the rest of the batch gets the same answer."""
        try:
            destination = user_id(d.address)
        except ValueError as exc:
            return Failed(str(exc), detail={"address": d.address}), False
        if d.warning.expires.timestamp() <= time.time():
            return Failed("the warning expired before it was sent"), False
        terminal = self._terminal
        if terminal is None or self._stopping.is_set():
            return Retry("adapter not started", after=_PORT_RETRY), True
        if not terminal.link.ready:
            return Retry(self.not_ready_reason() or "port not open", after=_PORT_RETRY), True
        max_bits = self.max_bits()
        try:
            text = self._compose(d, max_bits)
        except (MessageTooLong, ValueError) as exc:
            return Failed(f"cannot fit the warning in one message: {exc}"), False
        async with terminal.lock:
            for _ in range(2):  # a frequency refusal with a short wait is tried once more
                wait = self._next_slot - time.monotonic()
                if wait > self._settings.pacing_wait:
                    return self._too_early(wait), True
                if wait > 0 and await self._stopped_within(wait):
                    return Retry("adapter stopping", after=_PORT_RETRY), True
                outcome = await self._transmit(terminal, d, destination, text, max_bits)
                if outcome is not None:
                    return outcome
            wait = max(0.0, self._next_slot - time.monotonic())
            return self._too_early(wait), True

    def _too_early(self, wait: float) -> Retry:
        return Retry(
            f"service interval: the next transmission is allowed in {wait:.0f}s",
            after=round(wait, 1),
            detail={"interval": self.interval()},
        )

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return self._stopping.is_set()

    async def _transmit(
        self, terminal: Terminal, d: Dispatch, destination: str, text: str, max_bits: int
    ) -> tuple[Outcome, bool] | None:
        """One $CCTXA and its feedback; None when refused for being early with a wait short
        enough to wait out (the caller tries again)."""
        request = SendRequest(destination, text, self._encoding, self._comm)
        try:
            answer = await terminal.exchange(request.encode(), "FKI:TXA", lock=False)
        except PortClosed as exc:
            return Retry(f"port went away during the send: {exc}", after=_PORT_RETRY), True
        except ResponseTimeout as exc:
            self.counters["timeouts"] += 1
            # It may have transmitted: keep the next one an interval away, so a late feedback
            # finds nobody waiting rather than being taken for the next message's — and at
            # least another timeout away when the card has no (or a short) interval.
            pause = max(self._gap(), self._settings.command_timeout)
            self._next_slot = time.monotonic() + pause
            return Retry(str(exc), after=1.0), True
        assert isinstance(answer, Feedback)  # noqa: S101 — routed by kind
        now = time.monotonic()
        if answer.ok:
            self._next_slot = now + self._gap()
            return self._accepted(d, destination, text, max_bits), False
        if answer.frequency_limited:
            self.counters["frequency_limited"] += 1
            wait = float(answer.wait) if answer.wait > 0 else self.interval()
            after = wait + self._settings.interval_margin
            self._next_slot = now + after
            if after <= self._settings.pacing_wait:
                return None
            return Retry(
                f"terminal refused the message: {answer.reason}; next transmission in {after:.0f}s",
                after=round(after, 1),
                detail={"suppression": answer.suppression, "wait": answer.wait},
            ), True
        self.counters["refused"] += 1
        detail = {"suppression": answer.suppression, "reason": answer.reason}
        reason = f"terminal refused the message: {answer.reason}"
        log.warning("BeiDou terminal refused a message", adapter=self._name, reason=answer.reason)
        if answer.suppression == Suppression.NO_SIGNAL:
            return Retry(reason, after=self._settings.no_signal_retry, detail=detail), True
        if answer.suppression == Suppression.NONE:
            return Retry(reason, after=max(self.interval(), 1.0), detail=detail), False
        return Retry(reason, after=self._settings.suppressed_retry, detail=detail), True

    def _accepted(self, d: Dispatch, destination: str, text: str, max_bits: int) -> Accepted:
        self.counters["accepted"] += 1
        self._sequence += 1
        reference = f"{destination}-{self._sequence}"
        self._remember(
            destination,
            _Sent(
                d.delivery_id,
                d.warning.id,
                reference,
                d.address,
                d.warning.expires.timestamp() + self._settings.reply_window,
            ),
        )
        card = self.card
        return Accepted(
            reference=reference,
            detail={
                "from": card.user_id if card is not None else None,
                "to": destination,
                "bits": content_bits(text, self._encoding),
                "max_bits": max_bits,
                "shortened": text != prepare_text(self._full_text(d), self._encoding),
                "encoding": self._settings.encoding,
            },
        )

    def _full_text(self, d: Dispatch) -> str:
        """The engine's text, asking for a reply when it does not (a device's text does not);
        the marked headline when there is no text."""
        text = d.text or f"{_lead(d.warning)}。"
        if REPLY_PROMPT not in text:
            text = f"{text}{REPLY_PROMPT}。"
        return text

    def _compose(self, d: Dispatch, max_bits: int) -> str:
        """The message: the whole text when it fits, else headline-first (sentences.fit_message)
        — with the instruction too when all of it fits beside the headline and the prompt."""
        w = d.warning
        mark = _STATUS_MARK[w.status]
        lead = _lead(w)
        if w.msg_type is not MsgType.CANCEL and w.instruction:
            longer = f"{lead}。{w.instruction.rstrip('。')}"
            whole = prepare_text(f"{longer}。{REPLY_PROMPT}", self._encoding)
            if content_bits(whole, self._encoding) <= max_bits:
                lead = longer
        return fit_message(
            self._full_text(d), lead=lead, keep=mark, max_bits=max_bits, encoding=self._encoding
        )

    def _remember(self, destination: str, sent: _Sent) -> None:
        now = time.time()
        self._sent.pop(destination, None)
        self._sent[destination] = sent
        while self._sent:
            oldest = next(iter(self._sent.values()))
            if len(self._sent) <= _REMEMBERED and oldest.forget_at > now:
                break
            self._sent.popitem(last=False)

    # -- replies --------------------------------------------------------------------------------
    def _on_message(self, message: InboundMessage) -> None:
        self.counters["replies"] += 1
        now = time.time()
        sent = self._sent.get(message.sender)
        if sent is not None and self._context is not None:
            self._context.device_status(
                DeviceStatus(address=sent.address, online=True, last_seen=now)
            )
        if normalise_reply(message.text) not in self._confirm:
            log.info(
                "message from a BeiDou terminal is not a confirmation",
                adapter=self._name,
                sender=message.sender,
                text=message.text[:40],
            )
            return
        if sent is None or sent.forget_at <= now:
            self.counters["unmatched_replies"] += 1
            log.info(
                "confirmation from a BeiDou terminal with no message awaiting one",
                adapter=self._name,
                sender=message.sender,
            )
            return
        del self._sent[message.sender]
        self.counters["acknowledged"] += 1
        if self._context is not None:
            self._context.report(
                Report(
                    state=ReportState.ACKNOWLEDGED,
                    delivery_id=sent.delivery_id,
                    reference=sent.reference,
                    from_address=sent.address,
                    warning_id=sent.warning_id,
                    at=now,
                    detail={"reply": message.text[:40], "info_type": int(message.info_type)},
                )
            )

    # -- probe ----------------------------------------------------------------------------------
    async def probe(self) -> ProbeResult:
        terminal = self._terminal
        if terminal is not None and terminal.link.ready:
            return await self._probe(terminal, own=False)
        if terminal is not None:
            return ProbeResult(
                ok=False,
                summary=self.not_ready_reason() or f"{self._settings.port}: not open",
                details={"port": self._settings.port},
            )
        probing = Terminal(name=f"{self._name}-probe", settings=self._settings, set_up=False)
        try:
            await probing.open(within=self._settings.open_timeout)
        except PortUnavailable as exc:
            return ProbeResult(ok=False, summary=str(exc), details={"port": self._settings.port})
        try:
            return await self._probe(probing, own=True)
        finally:
            await probing.close()

    async def _probe(self, terminal: Terminal, *, own: bool) -> ProbeResult:
        port = self._settings.port
        try:
            card = await terminal.read_card()
            if own or terminal.beams is None:
                await terminal.sample_beams(self._settings.probe_listen)
        except (PortClosed, ResponseTimeout, RuntimeError) as exc:
            return ProbeResult(
                ok=False,
                summary=f"{port}: the BeiDou terminal did not answer ($CCICA): {exc}",
                details={"port": port},
            )
        beams = terminal.beams
        interval = self._settings.send_interval
        interval = card.interval if interval is None else interval
        bits = _bits_for(card, self._settings)
        power = beams.best if beams is not None else None
        details: dict[str, Any] = {
            "port": port,
            "card": card.user_id,
            "serial": card.serial,
            "broadcast_id": card.broadcast_id,
            "user_type": card.user_type,
            "service_interval": card.interval,
            "send_interval": interval,
            "comm_level": card.level,
            "max_message_bits": bits,
            "encrypted": card.encrypted,
            "beam_power": list(beams.powers) if beams is not None else None,
            "best_beam_power": power,
            "counters": dict(self.counters)
            | {
                "malformed_lines": terminal.counters.malformed,
                "inbound": terminal.counters.inbound,
            },
        }
        if not card.present:
            return ProbeResult(
                ok=False, summary=f"{port}: the terminal reports no user card", details=details
            )
        signal = "no beam report" if power is None else f"best beam power {power}/4"
        if power == 0:
            signal = "no signal (every beam at power 0)"
        summary = (
            f"BeiDou terminal on {port}: card {card.user_id}, level {card.level} "
            f"({bits} bits a message), one message every {interval:g}s; {signal}"
        )
        return ProbeResult(ok=power != 0, summary=summary, details=details)


def _lead(w: WarningContent) -> str:
    """The warning headline-first: status mark (never cut), level or cancellation, headline."""
    mark = _STATUS_MARK[w.status]
    if w.msg_type is MsgType.CANCEL:
        return f"{mark}【解除】{w.event}预警已解除。{w.headline}"
    update = "【更新】" if w.msg_type is MsgType.UPDATE else ""
    return f"{mark}{update}{LEVEL_NAMES[w.level]}：{w.headline}"


def _bits_for(card: CardInfo | None, settings: BeidouRdssSettings) -> int:
    """The message length: the setting, else the card's level's (COMM_LEVEL_BITS)."""
    if settings.max_message_bits is not None:
        return settings.max_message_bits
    level = settings.comm_level or (card.level if card is not None else 0)
    # An unknown level (0, 5+: BeiDou-3 cards) gets the smallest civil length: it fits.
    return COMM_LEVEL_BITS.get(level, COMM_LEVEL_BITS[1])

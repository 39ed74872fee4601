"""The ``gsm_modem`` adapter: SMS through a GSM/4G module or a Tiantong satellite phone on a
serial port (3GPP TS 27.005 in PDU mode), to people (``sms``) and to devices (``modem``: a
town's satellite phone, addressed by its number).

One :class:`~adapters.serial_link.at.AtChannel` owns the port; every (re)open runs the set-up
(echo off, numeric errors, SIM PIN, PDU mode, new-message indications), and so does a modem
that announces a restart (``RDY``, an unsolicited ``+CPIN: READY``). A text goes out as one or
more SMS-SUBMIT PDUs, one ``AT+CMGS`` at a time; the ``+CMGS: <mr>`` references of its parts
are remembered with the recipient, because references wrap at 256: a ``+CDS`` status report is
matched by (reference, recipient). When every part is reported delivered the delivery is
``delivered``; a part the SMS centre gave up on fails it. A reply "1" / "收到" / "Y" (``+CMT``,
or ``+CMTI`` then ``AT+CMGR``) acknowledges the newest open delivery to that number.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, ClassVar

import structlog

from adapters.gsm_modem.errors import ErrorVerdict, cme_error, cms_error, described
from adapters.gsm_modem.pdu import (
    DeliveryStatus,
    PduError,
    StatusReport,
    decode_deliver,
    decode_status_report,
    e164,
    encode_submit,
)
from adapters.gsm_modem.reassembly import Reassembler
from adapters.gsm_modem.settings import GsmModemSettings
from adapters.serial_link.at import AtChannel, AtError, AtReply, Urc
from adapters.serial_link.errors import PortClosed, PortUnavailable, ResponseTimeout
from adapters.sms_text.replies import masked, normalise_reply
from adapters.sms_text.segments import fit
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
)
from dispatcher.domain import Audience, Channel

log = structlog.get_logger(__name__)

#: The end of every text: kept when a long text is shortened.
CONFIRM_TAIL = "收到请回复1。"
CTRL_Z = b"\x1a"
#: Unsolicited result codes and how many lines follow each (the PDU after +CMT / +CDS).
URCS = {
    "+CMT:": 1,
    "+CDS:": 1,
    "+CMTI:": 0,
    "+CDSI:": 0,
    "RDY": 0,
    "+CPIN:": 0,
    "+CFUN:": 0,
}
#: Lines by which a modem says it has just restarted (and forgotten its set-up).
_RESTART_MARKERS = ("RDY", "+CPIN: READY", "+CFUN: 1")
#: Registration states (+CREG <stat>) and what they mean.
_CREG = {
    0: "not registered, not searching",
    1: "registered, home network",
    2: "not registered, searching",
    3: "registration denied",
    4: "unknown",
    5: "registered, roaming",
}
#: Remembered sends awaiting reports / replies, at most (oldest forgotten first).
_MAX_AWAITING = 4096
_MAX_RECENT = 20_000
#: What is remembered of a delivery outlives its warning by this much (late replies).
_KEEP_AFTER_EXPIRY = 600.0
#: A status report naming a reference not (yet) known is kept this long, at most this many:
#: some modems put the ``+CDS`` on the line before the ``+CMGS: <mr>`` it reports on. Short
#: enough that references (0-255, at most 120 sends a minute) cannot have wrapped meanwhile.
_EARLY_REPORT_WINDOW = 60.0
_MAX_EARLY_REPORTS = 64
_REINIT_ATTEMPTS = 5


class SetupError(Exception):
    """The modem cannot be set up (no SIM, PIN refused): said in an installer's words."""


@dataclass(slots=True)
class _Message:
    """A message awaiting its parts' status reports. Each part is awaited from its own
    ``+CMGS`` answer on: a part's report can come while the next part is still going out."""

    delivery_id: int
    address: str
    number: str
    warning_id: str
    mrs: list[int]
    sent_at: float
    delivered: set[int] = field(default_factory=set)
    finished: bool = False
    #: Every part has been accepted by the SMS centre (until then "all delivered" is not).
    complete: bool = False
    #: The newest "completed" status report of a part.
    last_report: StatusReport | None = None


@dataclass(slots=True)
class _Open:
    """The newest delivery to a number, for matching its replies."""

    delivery_id: int
    address: str
    warning_id: str
    device: bool
    keep_until: float


@dataclass(slots=True)
class Counters:
    parts_sent: int = 0
    status_reports: int = 0
    unmatched_reports: int = 0
    replies: int = 0
    acknowledgements: int = 0
    malformed: int = 0
    initialisations: int = 0
    restarts_seen: int = 0


class GsmModemAdapter:
    kind: ClassVar[str] = "gsm_modem"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.SMS, Channel.MODEM})
    settings_model: ClassVar[type[GsmModemSettings]] = GsmModemSettings
    max_batch: ClassVar[int] = 5
    description: ClassVar[str] = (
        "SMS through a serial GSM/4G modem or Tiantong satellite phone (27.005 PDU mode, "
        "status reports, replies 1/收到/Y confirm)"
    )

    def __init__(self, *, name: str, settings: GsmModemSettings) -> None:
        self._name = name
        self.settings = settings
        self._context: AdapterContext | None = None
        self._channel: AtChannel | None = None
        self._confirm = {normalise_reply(w) for w in settings.confirm_words}
        self._awaiting: OrderedDict[tuple[int, str], _Message] = OrderedDict()
        self._early: OrderedDict[tuple[int, str], tuple[StatusReport, float]] = OrderedDict()
        self._recent: OrderedDict[str, _Open] = OrderedDict()
        self._reassembler = Reassembler()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reinit: asyncio.Task[None] | None = None
        self._init_lock = asyncio.Lock()
        self._storage_lock = asyncio.Lock()
        self._pin_refused = False
        self._concat_reference = int(time.time()) % 256
        self._registered_at = -1e9
        self._registration: int | None = None
        self._next_prune = 0.0
        self.cnmi = settings.cnmi
        self.counters = Counters()

    @property
    def name(self) -> str:
        return self._name

    # -- pacing (PacesItself) ---------------------------------------------------------------------
    def send_rate(self) -> SendRate:
        return SendRate(self.settings.messages_per_minute / 60.0, 1)

    def room(self) -> int | None:
        return None

    # -- readiness (ReportsReadiness) -------------------------------------------------------------
    def not_ready_reason(self) -> str | None:
        """Why the started adapter cannot send now: the port went away and is being reopened,
        or the modem restarted and is being set up again."""
        channel = self._channel
        if channel is None:
            return None
        if not channel.ready:
            return f"{channel.port}: {channel.last_error or 'not open'}, reopening"
        if self._reinit is not None and not self._reinit.done():
            return f"{channel.port}: the modem restarted and is being set up again"
        return None

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, context: AdapterContext) -> None:
        self._context = context
        channel = self._new_channel(self._on_urc, self._initialise)
        self._channel = channel
        try:
            await channel.open(within=self.settings.open_timeout)
        except PortUnavailable as exc:
            self._channel = None
            raise AdapterNotReady(str(exc)) from None

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                # Fails a command in flight at once (PortClosed): its send answers Retry.
                await channel.close()

    def _new_channel(self, on_urc: Any, on_open: Any) -> AtChannel:
        s = self.settings
        return AtChannel(
            port=s.port,
            baudrate=s.baudrate,
            name=self._name,
            on_urc=on_urc,
            urcs=URCS,
            on_open=on_open,
            on_close=self._on_close,
            command_timeout=s.command_timeout,
            reopen_max=s.reopen_max,
        )

    def _on_close(self, reason: str) -> None:
        self._registration = None
        log.warning("modem port lost", adapter=self._name, port=self.settings.port, reason=reason)

    # -- set-up -----------------------------------------------------------------------------------
    async def _initialise(self) -> None:
        """The set-up after every (re)open and after the modem restarts."""
        channel = self._channel
        if channel is None:
            return
        async with self._init_lock:
            await channel.command("ATE0")
            await channel.command("AT+CMEE=1")
            await self._unlock_sim(channel)
            await channel.command("AT+CMGF=0")
            # Phase 2 service: no +CNMA acknowledgements expected for +CMT / +CDS.
            with contextlib.suppress(AtError):
                await channel.command("AT+CSMS=0")
            try:
                await channel.command(f"AT+CNMI={self.settings.cnmi}")
                self.cnmi = self.settings.cnmi
            except AtError:
                # Some modules cannot route messages straight to the port: store and announce.
                await channel.command("AT+CNMI=2,1,0,2,0")
                self.cnmi = "2,1,0,2,0"
            await self._read_registration(channel)
            self.counters.initialisations += 1
            log.info(
                "modem set up",
                adapter=self._name,
                port=self.settings.port,
                cnmi=self.cnmi,
                registration=_CREG.get(self._registration or 0, "unknown"),
            )

    async def _unlock_sim(self, channel: AtChannel) -> None:
        try:
            state = (await channel.command("AT+CPIN?")).value("+CPIN:") or ""
        except AtError as exc:
            raise SetupError(self._error_text(exc)) from None
        if state == "READY":
            return
        if state != "SIM PIN":
            raise SetupError(f"the SIM asks for {state or 'something unknown'}; unblock it")
        pin = self.settings.sim_pin
        if pin is None:
            raise SetupError("the SIM asks for its PIN; set sim_pin")
        if self._pin_refused:
            raise SetupError("the SIM refused sim_pin; correct it and restart (not retried)")
        try:
            await channel.command(f'AT+CPIN="{pin.get_secret_value()}"')
        except AtError as exc:
            if exc.code == 16:
                self._pin_refused = True
                raise SetupError(
                    "the SIM refused sim_pin (incorrect password); not retried, so the SIM "
                    "is not blocked: correct it and restart"
                ) from None
            raise SetupError(self._error_text(exc)) from None
        # The SIM takes a moment after its PIN before SMS commands work.
        for _ in range(20):
            with contextlib.suppress(AtError):
                if (await channel.command("AT+CPIN?")).value("+CPIN:") == "READY":
                    return
            await asyncio.sleep(0.25)
        raise SetupError("the SIM did not become ready after its PIN")

    async def _read_registration(self, channel: AtChannel) -> int | None:
        try:
            reply = await channel.command("AT+CREG?")
        except AtError:
            return None
        value = reply.value("+CREG:") or ""
        fields = [f.strip() for f in value.split(",")]
        stat = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
        self._registration = stat
        self._registered_at = time.monotonic()
        return stat

    def _error_text(self, exc: AtError) -> str:
        if exc.family == "CME" and exc.code is not None:
            return described(cme_error(exc.code), "+CME ERROR")
        if exc.family == "CMS" and exc.code is not None:
            return described(cms_error(exc.code), "+CMS ERROR")
        return f"{exc.command} answered {exc.final}"

    def _modem_restarted(self, line: str) -> None:
        """The modem announced a restart: set it up again (once, however many markers)."""
        self.counters.restarts_seen += 1
        channel = self._channel
        if channel is None or not channel.ready:
            return  # the link's own set-up runs when the port (re)opens
        if self._reinit is not None and not self._reinit.done():
            return
        log.warning("modem restarted; setting it up again", adapter=self._name, marker=line)
        self._reinit = self._spawn(self._reinitialise(), "reinit")

    async def _reinitialise(self) -> None:
        delay = 0.5
        for attempt in range(1, _REINIT_ATTEMPTS + 1):
            try:
                await self._initialise()
                return
            except (AtError, ResponseTimeout, SetupError) as exc:
                log.warning(
                    "modem set-up after restart failed",
                    adapter=self._name,
                    attempt=attempt,
                    error=str(exc),
                )
            except PortClosed:
                return  # the link's reopen runs the set-up
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _spawn(self, coroutine: Any, what: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(
            coroutine, name=f"gsm_modem:{self._name}:{what}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- sending ----------------------------------------------------------------------------------
    async def send(self, batch: Sequence[Dispatch]) -> Sequence[Outcome]:
        now = time.time()
        if now >= self._next_prune:
            self._prune(now)
        blocked = await self._not_ready()
        if blocked is not None:
            return [blocked for _ in batch]
        deadline = time.monotonic() + self.settings.send_budget
        outcomes: list[Outcome] = []
        for dispatch in batch:
            if blocked is not None:
                outcomes.append(blocked)
                continue
            if time.monotonic() >= deadline:
                outcomes.append(Retry("the modem's time for this batch is used up", after=0))
                continue
            outcome, blocks_rest = await self._send_one(dispatch)
            outcomes.append(outcome)
            if blocks_rest:
                blocked = outcome if isinstance(outcome, Retry | Failed) else None
        return outcomes

    async def _not_ready(self) -> Outcome | None:
        """Why nothing can be sent now (port gone, modem restarting, not registered)."""
        channel = self._channel
        if channel is None:
            return Retry("adapter not started")
        if not channel.ready:
            return Retry(f"{channel.port}: not ready ({channel.last_error})", after=5)
        if self._reinit is not None and not self._reinit.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.command_timeout):
                    await asyncio.shield(self._reinit)
            if not self._reinit.done():
                return Retry("the modem restarted and is being set up again", after=5)
        fresh = time.monotonic() - self._registered_at < self.settings.registration_check
        stat = self._registration
        if not fresh or stat not in (1, 5):
            try:
                stat = await self._read_registration(channel)
            except (PortClosed, ResponseTimeout) as exc:
                return Retry(f"{channel.port}: {exc}", after=5)
        if stat not in (1, 5):
            what = _CREG.get(stat, "unknown") if stat is not None else "unknown"
            return Retry(
                f"the modem is not registered on a network ({what})",
                after=30,
                detail={"creg": stat},
            )
        return None

    async def _send_one(self, dispatch: Dispatch) -> tuple[Outcome, bool]:
        """The outcome of one dispatch, and whether the rest of the batch would fare the same
        (the port is gone, the SIM is missing)."""
        channel = self._channel
        if channel is None:
            return Retry("adapter stopped"), True
        try:
            number = e164(dispatch.address, region=self.settings.default_region)
        except PduError as exc:
            return Failed(f"invalid number {masked(dispatch.address)}: {exc}"), False
        left = dispatch.warning.expires.timestamp() - time.time()
        if left <= 0:
            return Failed("the warning expired before it was sent"), False
        original = dispatch.text or dispatch.warning.headline
        text = fit(original, self.settings.max_parts, keep_tail=CONFIRM_TAIL)
        self._concat_reference = (self._concat_reference + 1) % 65536
        try:
            encoding, pdus = encode_submit(
                number,
                text,
                reference=self._concat_reference,
                validity=timedelta(seconds=min(self.settings.validity, left)),
                status_report=self.settings.status_reports,
                reference_16bit=self.settings.concat_16bit,
            )
        except PduError as exc:
            return Failed(f"cannot encode the message: {exc}"), False
        detail: dict[str, Any] = {"parts": len(pdus), "encoding": encoding}
        if text != original:
            detail["shortened"] = True
        message = _Message(
            dispatch.delivery_id, dispatch.address, number, dispatch.warning.id, [], time.time()
        )
        mrs = message.mrs
        for pdu in pdus:
            blocked = await self._restarting()
            if blocked is not None:
                self._abandon(message)
                detail["parts_sent"] = len(mrs)
                return replace(blocked, detail=detail), True
            try:
                reply = await channel.command(
                    f"AT+CMGS={pdu.length}",
                    payload=pdu.hex.encode("ascii") + CTRL_Z,
                    within=self.settings.submit_timeout,
                )
            except AtError as exc:
                self._abandon(message)
                return self._send_error(exc, detail, sent=len(mrs))
            except ResponseTimeout as exc:
                self._abandon(message)
                detail["parts_sent"] = len(mrs)
                return Retry(str(exc), after=10, detail=detail), True
            except PortClosed as exc:
                self._abandon(message)
                detail["parts_sent"] = len(mrs)
                return Retry(str(exc), after=5, detail=detail), True
            mr = _message_reference(reply)
            if mr is None:
                self._abandon(message)
                detail["parts_sent"] = len(mrs)
                return Retry("the modem's answer to AT+CMGS had no reference", detail=detail), False
            self.counters.parts_sent += 1
            if not mrs:
                # From the first part on, the person may answer it: a reply "1" now is for
                # this delivery, not for the previous one to the same number.
                self._remember_recipient(dispatch, number)
            mrs.append(mr)
            self._await_part(message, mr)
        message.complete = True
        self._check_delivered(message, None)
        detail["mr"] = list(mrs)
        reference = f"mr={','.join(str(m) for m in mrs)};t={int(time.time() * 1000)}"
        return Accepted(reference=reference, detail=detail), False

    def _send_error(
        self, exc: AtError, detail: dict[str, Any], *, sent: int
    ) -> tuple[Outcome, bool]:
        detail["parts_sent"] = sent
        if exc.family is None or exc.code is None:
            # A plain ERROR although numeric errors were asked for: the modem may have
            # restarted silently and forgotten its set-up.
            self._modem_restarted("ERROR")
            return Retry(
                f"the modem answered {exc.final} to AT+CMGS", after=10, detail=detail
            ), False
        verdict: ErrorVerdict
        if exc.family == "CMS":
            verdict, prefix = cms_error(exc.code), "+CMS ERROR"
            detail["cms_error"] = exc.code
        else:
            verdict, prefix = cme_error(exc.code), "+CME ERROR"
            detail["cme_error"] = exc.code
        reason = described(verdict, prefix)
        outcome: Outcome = (
            Retry(reason, after=verdict.after, detail=detail)
            if verdict.retry
            else Failed(reason, detail=detail)
        )
        if verdict.modem_problem:
            log.warning("modem cannot send", adapter=self._name, error=reason)
        return outcome, verdict.modem_problem

    async def _restarting(self) -> Retry | None:
        """Waits (bounded) for a re-initialisation under way before a part goes out: a modem
        that restarted is in text mode without ``+CDS`` routing until it is set up again."""
        reinit = self._reinit
        if reinit is None or reinit.done():
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.command_timeout):
                await asyncio.shield(reinit)
        if not reinit.done():
            return Retry("the modem restarted and is being set up again", after=5)
        channel = self._channel
        if channel is None or not channel.ready:
            return Retry("the modem restarted and its port is being reopened", after=5)
        return None

    def _await_part(self, message: _Message, mr: int) -> None:
        """Await the status report of a part the SMS centre just accepted (or take the one
        that came before the ``+CMGS`` answer)."""
        if not self.settings.status_reports:
            return
        key = (mr, message.number)
        self._awaiting.pop(key, None)  # a reference reused: the newer send wins
        self._awaiting[key] = message
        while len(self._awaiting) > _MAX_AWAITING:
            self._awaiting.popitem(last=False)
        early = self._early.pop(key, None)
        if early is not None and time.monotonic() - early[1] <= _EARLY_REPORT_WINDOW:
            self.counters.unmatched_reports -= 1  # counted when it came: matched after all
            self._on_status_report(early[0], again=True)

    def _abandon(self, message: _Message) -> None:
        """A send that ends in Retry/Failed: its parts' reports are no longer awaited."""
        message.finished = True
        for mr in message.mrs:
            if self._awaiting.get((mr, message.number)) is message:
                del self._awaiting[(mr, message.number)]

    def _remember_recipient(self, dispatch: Dispatch, number: str) -> None:
        self._recent.pop(number, None)
        self._recent[number] = _Open(
            dispatch.delivery_id,
            dispatch.address,
            dispatch.warning.id,
            dispatch.audience is Audience.DEVICE or dispatch.channel is Channel.MODEM,
            dispatch.warning.expires.timestamp() + _KEEP_AFTER_EXPIRY,
        )
        while len(self._recent) > _MAX_RECENT:
            self._recent.popitem(last=False)

    def _prune(self, now: float) -> None:
        self._next_prune = now + 60.0
        horizon = now - self.settings.report_wait
        self._awaiting = OrderedDict(
            (k, m) for k, m in self._awaiting.items() if m.sent_at >= horizon and not m.finished
        )
        self._recent = OrderedDict((n, o) for n, o in self._recent.items() if o.keep_until > now)
        self._prune_early()

    def _prune_early(self) -> None:
        horizon = time.monotonic() - _EARLY_REPORT_WINDOW
        while self._early and (
            len(self._early) > _MAX_EARLY_REPORTS or next(iter(self._early.values()))[1] < horizon
        ):
            self._early.popitem(last=False)

    # -- what the modem says by itself ------------------------------------------------------------
    def _on_urc(self, urc: Urc) -> None:
        line = urc.line
        if line.startswith("+CMT:") or line.startswith("+CDS:"):
            if urc.extra:
                self._inbound_pdu(urc.extra[0], _last_number(line))
        elif line.startswith(("+CMTI:", "+CDSI:")):
            index = _last_number(line)
            storage = _storage_named(line)
            if index is not None:
                self._spawn(self._read_stored(index, storage), f"read-{storage}-{index}")
        elif line.startswith(_RESTART_MARKERS):
            self._modem_restarted(line)
        else:
            log.debug("modem line ignored", adapter=self._name, line=line[:60])

    def _inbound_pdu(self, pdu: str, length: int | None) -> None:
        """A PDU the modem showed: a status report or a message (tried in that order)."""
        try:
            self._on_status_report(decode_status_report(pdu, length=length))
            return
        except PduError as exc:
            if "not an SMS-STATUS-REPORT" not in str(exc):
                self._malformed(pdu, exc)
                return
        try:
            message = decode_deliver(pdu, length=length)
        except PduError as exc:
            self._malformed(pdu, exc)
            return
        whole = self._reassembler.add(message, time.monotonic())
        if whole is not None:
            self._on_reply(whole.sender, whole.text, whole.timestamp_utc)

    def _malformed(self, pdu: str, exc: PduError) -> None:
        self.counters.malformed += 1
        log.warning(
            "malformed PDU from the modem dropped",
            adapter=self._name,
            error=str(exc),
            size=len(pdu),
        )

    async def _read_stored(self, index: int, storage: str | None) -> None:
        """A message or report the modem stored (``+CMTI`` / ``+CDSI``): read, then delete —
        in the storage the announcement names (``"SR"``, ``"ME"``…): AT+CMGR reads whichever
        storage AT+CPMS chose last, where the same index may hold another message."""
        channel = self._channel
        if channel is None:
            return
        try:
            # One read at a time: another announcement's AT+CPMS between this one's and its
            # AT+CMGR would make it read the other storage.
            async with self._storage_lock:
                if storage is not None:
                    await channel.command(f'AT+CPMS="{storage}"')
                reply = await channel.command(f"AT+CMGR={index}")
                header = next((ln for ln in reply.lines if ln.startswith("+CMGR:")), None)
                body = [ln for ln in reply.lines if not ln.startswith("+CMGR:")]
                if header is not None and body:
                    self._inbound_pdu(body[0], _last_number(header))
                await channel.command(f"AT+CMGD={index}")
        except (AtError, PortClosed, ResponseTimeout) as exc:
            log.warning("stored message not read", adapter=self._name, index=index, error=str(exc))

    def _number(self, address: str) -> str:
        try:
            return e164(address, region=self.settings.default_region)
        except PduError:
            return address

    def _on_status_report(self, report: StatusReport, *, again: bool = False) -> None:
        if not again:
            self.counters.status_reports += 1
        number = self._number(report.recipient)
        key = (report.reference, number)
        message = self._awaiting.get(key)
        if message is None or message.finished:
            self.counters.unmatched_reports += 1
            if message is None:
                # Perhaps its +CMGS answer is still to come: kept a short while for it.
                self._early.pop(key, None)
                self._early[key] = (report, time.monotonic())
                self._prune_early()
            log.info(
                "status report for no message awaiting one",
                adapter=self._name,
                mr=report.reference,
                recipient=masked(number),
                status=f"0x{report.status:02X}",
            )
            return
        outcome = report.outcome
        if outcome is DeliveryStatus.TRYING:
            log.info(
                "SMS centre still trying",
                adapter=self._name,
                delivery_id=message.delivery_id,
                reason=report.reason,
            )
            return
        del self._awaiting[key]
        detail = {"mr": report.reference, "tp_st": f"0x{report.status:02X}"}
        if outcome is DeliveryStatus.COMPLETED:
            message.delivered.add(report.reference)
            message.last_report = report
            self._check_delivered(message, report)
            return
        message.finished = True
        for mr in message.mrs:
            self._awaiting.pop((mr, number), None)
        self._report(
            Report(
                ReportState.FAILED,
                delivery_id=message.delivery_id,
                from_address=message.address,
                at=_timestamp(report),
                reason=f"SMS centre: {report.reason}",
                retryable=report.retryable,
                detail=detail,
            )
        )

    def _check_delivered(self, message: _Message, report: StatusReport | None) -> None:
        """Report the message delivered once every part of it is, and all are sent."""
        if message.finished or not message.complete or not message.mrs:
            return
        if not message.delivered.issuperset(message.mrs):
            return
        message.finished = True
        last = report or message.last_report
        self._report(
            Report(
                ReportState.DELIVERED,
                delivery_id=message.delivery_id,
                from_address=message.address,
                at=None if last is None else _timestamp(last),
                reason="" if last is None else last.reason,
                detail={
                    "mr": message.mrs[-1] if last is None else last.reference,
                    "tp_st": "0x00" if last is None else f"0x{last.status:02X}",
                    "parts": len(message.mrs),
                },
            )
        )

    def _on_reply(self, sender: str, text: str, at: float | None) -> None:
        self.counters.replies += 1
        number = self._number(sender)
        if normalise_reply(text) not in self._confirm:
            log.info(
                "reply is not a confirmation",
                adapter=self._name,
                sender=masked(number),
                length=len(text),
            )
            return
        self.counters.acknowledgements += 1
        detail = {"reply": text[:20]}
        known = self._recent.get(number)
        if known is not None and known.keep_until > time.time():
            self._report(
                Report(
                    ReportState.ACKNOWLEDGED,
                    delivery_id=known.delivery_id,
                    from_address=known.address,
                    warning_id=known.warning_id,
                    at=at,
                    detail=detail,
                )
            )
            if known.device and self._context is not None:
                self._context.device_status(
                    DeviceStatus(known.address, online=True, last_seen=time.time())
                )
            return
        # A person's reply to a message sent before a restart: the engine matches the
        # sender's newest open delivery (never a device's).
        self._report(Report(ReportState.ACKNOWLEDGED, from_address=number, at=at, detail=detail))

    def _report(self, report: Report) -> None:
        if self._context is not None:
            self._context.report(report)

    # -- probe ------------------------------------------------------------------------------------
    async def probe(self) -> ProbeResult:
        channel = self._channel
        if channel is not None and channel.ready:
            return await self._probe(channel)

        # Before start(): a channel of its own, set up only enough to ask (no PIN entered, no
        # message routing changed), closed again after.
        async def quiet_setup() -> None:
            await probing.command("ATE0")
            await probing.command("AT+CMEE=1")

        probing = AtChannel(
            port=self.settings.port,
            baudrate=self.settings.baudrate,
            name=f"{self._name}-probe",
            on_urc=lambda _urc: None,
            urcs=URCS,
            on_open=quiet_setup,
            command_timeout=self.settings.command_timeout,
            reopen_max=self.settings.reopen_max,
        )
        try:
            await probing.open(within=self.settings.open_timeout)
        except PortUnavailable as exc:
            return ProbeResult(ok=False, summary=str(exc), details={"port": self.settings.port})
        try:
            return await self._probe(probing)
        finally:
            await probing.close()

    async def _probe(self, channel: AtChannel) -> ProbeResult:
        details: dict[str, Any] = {"port": self.settings.port}
        problems: list[str] = []

        async def ask(command: str, prefix: str | None = None) -> str | None:
            try:
                reply = await channel.command(command)
            except AtError as exc:
                problems.append(self._error_text(exc))
                return None
            if prefix is not None:
                return reply.value(prefix)
            return reply.lines[0] if reply.lines else ""

        try:
            details["manufacturer"] = await ask("AT+CGMI")
            details["model"] = await ask("AT+CGMM")
            details["revision"] = await ask("AT+CGMR")
            details["imei"] = await ask("AT+CGSN")
            sim = await ask("AT+CPIN?", "+CPIN:")
            details["sim"] = sim
            csq = await ask("AT+CSQ", "+CSQ:")
            creg = await ask("AT+CREG?", "+CREG:")
            cops = await ask("AT+COPS?", "+COPS:")
            csca = await ask("AT+CSCA?", "+CSCA:")
        except (PortClosed, ResponseTimeout) as exc:
            return ProbeResult(ok=False, summary=f"{self.settings.port}: {exc}", details=details)
        rssi = _first_int(csq)
        details["signal"] = {"csq": rssi, "dbm": csq_dbm(rssi)}
        stat = _field_int(creg, 1)
        details["registration"] = _CREG.get(stat, "unknown") if stat is not None else "unknown"
        operator = _quoted(cops)
        details["operator"] = operator
        details["smsc"] = _quoted(csca)
        if problems:
            details["errors"] = problems
        registered = stat in (1, 5)
        dbm = csq_dbm(rssi)
        signal = "no signal" if dbm is None else f"signal {dbm} dBm (CSQ {rssi})"
        identity = " ".join(str(details[k]) for k in ("manufacturer", "model") if details.get(k))
        summary = (
            f"{identity or 'modem'} on {self.settings.port} (IMEI {details.get('imei') or '?'}): "
            f"SIM {sim or 'unknown'}, {signal}, {details['registration']}"
            + (f" on {operator}" if operator and registered else "")
        )
        if not details["smsc"]:
            summary += "; no SMS centre number set (AT+CSCA)"
        ok = sim == "READY" and registered and bool(details["smsc"])
        return ProbeResult(ok=ok, summary=summary, details=details)


# -- small readers ------------------------------------------------------------------------------
def csq_dbm(rssi: int | None) -> int | None:
    """AT+CSQ <rssi> as dBm (27.007 §8.5): 0 → -113 or less, 31 → -51 or more, 99 unknown."""
    if rssi is None or not 0 <= rssi <= 31:
        return None
    return -113 + 2 * rssi


def _message_reference(reply: AtReply) -> int | None:
    value = reply.value("+CMGS:")
    return _first_int(value)


def _first_int(value: str | None) -> int | None:
    if not value:
        return None
    head = value.split(",")[0].strip()
    return int(head) if head.isdigit() else None


def _field_int(value: str | None, index: int) -> int | None:
    if not value:
        return None
    fields = [f.strip() for f in value.split(",")]
    return int(fields[index]) if len(fields) > index and fields[index].isdigit() else None


def _quoted(value: str | None) -> str | None:
    if not value or '"' not in value:
        return None
    inner = value.split('"')[1]
    return inner or None


def _storage_named(line: str) -> str | None:
    """The storage in ``+CMTI: "SM",3`` (None when the modem names none)."""
    match = re.search(r':\s*"([A-Z]{2})"', line)
    return match.group(1) if match else None


def _last_number(line: str) -> int | None:
    tail = line.rsplit(",", 1)[-1] if "," in line else line.split(":", 1)[-1]
    tail = tail.strip()
    return int(tail) if tail.isdigit() else None


def _timestamp(report: StatusReport) -> float | None:
    moment = report.discharged or report.submitted
    return None if moment is None else moment.timestamp()

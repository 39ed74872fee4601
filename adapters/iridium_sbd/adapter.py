"""The ``iridium_sbd`` adapter: village satellite terminals reached through an Iridium
9602/9603 Short Burst Data transceiver on a serial port.

Each dispatch is one SBD session, one at a time (the transceiver holds one MO message and runs
one session; the gateway dislikes being hammered, so sessions are paced — ``send_rate()``):

1. ``AT+CSQ``: with fewer bars than ``min_signal`` no session is tried (Retry, no credit spent).
2. ``AT+SBDWB=<n>``, ``READY``, the compact warning (compact.py; ≤ 270 bytes with any routing
   prefix: the terminal receives it as an MT message, and a 9602/9603 takes no more, although
   an MO message may be 340) and its 2-byte checksum; the transceiver answers 0 (written), 1,
   2 or 3.
3. ``AT+SBDIX``: the session. MO status 0-4 is Accepted with the MOMSN as its reference (and
   ``AT+SBDD0`` clears the MO buffer, so a later mailbox check cannot send it twice); the other
   codes are Retry (with Iridium's cause and a pause that suits it) or Failed (status.py).

Replies come back as mobile-terminated messages: ``SBDRING`` (ring alerts are switched on at
every open) starts a mailbox check (``AT+SBDD0``, ``AT+SBDIXA``), and any session may bring
one (MT status 1); ``AT+SBDRB`` reads it. A valid reply (compact.py) that confirms becomes an
ACKNOWLEDGED report for the delivery it names, with the terminal's IMEI as ``from_address``
(the engine checks it is that delivery's target). The adapter remembers what it sent to which
terminal — bounded, pruned after the warning expires — for replies that name only the warning.

The port is owned by serial_link's task: unplugged, the adapter reports not ready
(``not_ready_reason``), sessions answer Retry, and the transceiver is set up again when the
port comes back (``ATE0``, ``AT&K0``, ``AT+SBDMTA=1``, ``AT+SBDD2``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog

from adapters.iridium_sbd.compact import (
    MO_LIMIT,
    MT_LIMIT,
    CompactError,
    decode_reply,
    encode_warning,
    rockblock_prefix,
    sbd_checksum,
    warning_ref,
)
from adapters.iridium_sbd.settings import IridiumSbdSettings
from adapters.iridium_sbd.status import (
    MtStatus,
    SbdixResult,
    SbdStatusError,
    Verdict,
    WriteResult,
    parse_csq,
    parse_sbdix,
    parse_write_result,
)
from adapters.log_throttle import ThrottledWarning
from adapters.serial_link.at import AtChannel, AtReply, Urc
from adapters.serial_link.errors import PortClosed, PortUnavailable, SerialLinkError
from adapters.sms_text.replies import masked, normalise_reply
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
from dispatcher.domain import Channel

log = structlog.get_logger(__name__)

_IMEI = re.compile(r"^[0-9]{15}$")
#: What the adapter remembers of a warning outlives its expiry by this much (late replies).
_KEEP_AFTER_EXPIRY = 600.0
#: Mailbox checks after one ring alert, at most (each fetches one MT message).
_MAILBOX_ROUNDS = 10
#: A failed mailbox check is tried again this many times.
_MAILBOX_RETRIES = 5
#: Retry pause when the port is gone (it is being reopened).
_PORT_RETRY = 5.0
#: The largest message a village terminal can be given, routing prefix included: the gateway
#: hands it over as a mobile-terminated message, and a 9602/9603 takes at most 270 bytes of
#: those (an MO message of up to 340 bytes is accepted, and then never delivered).
DELIVERABLE = min(MO_LIMIT, MT_LIMIT)
#: Reads of a received MT message (``AT+SBDRB``) before it is given up.
_MT_READS = 2


@dataclass(frozen=True, slots=True)
class _Sent:
    delivery_id: int
    warning_id: str
    expires: float
    #: The MOMSN of the session that sent it.
    reference: str


@dataclass(slots=True)
class _Counters:
    sessions: int = 0
    sent: int = 0
    mo_failures: int = 0
    no_signal: int = 0
    mailbox_checks: int = 0
    replies: int = 0
    acknowledged: int = 0
    malformed: int = 0
    unmatched: int = 0


class IridiumSbdAdapter:
    kind: ClassVar[str] = "iridium_sbd"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.MODEM})
    settings_model: ClassVar[type[IridiumSbdSettings]] = IridiumSbdSettings
    #: One SBD session per send: a session takes seconds to a minute.
    max_batch: ClassVar[int] = 1
    description: ClassVar[str] = (
        "Iridium 9602/9603 SBD transceiver: compact warnings to village satellite terminals, "
        "their replies confirm"
    )

    def __init__(self, *, name: str, settings: IridiumSbdSettings) -> None:
        self._name = name
        self._settings = settings
        self._context: AdapterContext | None = None
        self._channel: AtChannel | None = None
        self._session = asyncio.Lock()
        self._last_session_end = float("-inf")
        self._sent: OrderedDict[tuple[str, bytes], _Sent] = OrderedDict()
        self._mailbox_wanted = asyncio.Event()
        self._mailbox_task: asyncio.Task[None] | None = None
        #: When a session last left nothing waiting at the gateway.
        self._mailbox_emptied = float("-inf")
        self._opens = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._confirm = {normalise_reply(word) for word in settings.confirm_words}
        #: What the transceiver says of itself (read at every open).
        self.identity: dict[str, str] = {}
        self.signal: int | None = None
        self.counters = _Counters()
        self._warn_malformed = ThrottledWarning(
            log, "malformed SBD message from a terminal dropped"
        )

    @property
    def name(self) -> str:
        return self._name

    # -- pacing and readiness -------------------------------------------------------------------
    def send_rate(self) -> SendRate:
        interval = self._settings.session_interval
        return SendRate(per_second=1.0 / interval if interval > 0 else 1.0, burst=1)

    def room(self) -> int | None:
        return 0 if self._session.locked() else 1

    def not_ready_reason(self) -> str | None:
        channel = self._channel
        if channel is None:
            return "not started"
        if channel.ready:
            return None
        return f"{channel.port}: {channel.last_error or 'not open'}, reopening"

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, context: AdapterContext) -> None:
        self._context = context
        # A fresh lock per run: a session task that stop() cancelled before it ran never
        # released the old one.
        self._session = asyncio.Lock()
        channel = self._new_channel(self._on_urc, setup=True)
        self._channel = channel
        try:
            await channel.open(within=self._settings.open_timeout)
        except PortUnavailable as exc:
            self._channel = None
            raise AdapterNotReady(str(exc)) from None
        self._mailbox_task = asyncio.create_task(
            self._mailbox_loop(), name=f"iridium_sbd:{self._name}:mailbox"
        )

    async def stop(self) -> None:
        mailbox, self._mailbox_task = self._mailbox_task, None
        if mailbox is not None:
            mailbox.cancel()
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                # Fails a command in flight at once (PortClosed): a session ends with Retry.
                await channel.close()
        for task in [t for t in (mailbox, *self._background) if t is not None]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _new_channel(self, on_urc: Any, *, setup: bool) -> AtChannel:
        s = self._settings
        channel: AtChannel

        async def opened() -> None:
            await self._set_up(channel, full=setup)

        channel = AtChannel(
            port=s.port,
            baudrate=s.baudrate,
            name=f"iridium_sbd:{self._name}",
            on_urc=on_urc,
            urcs={"SBDRING": 0, "+CIEV:": 0},
            on_open=opened,
            on_close=self._on_close if setup else None,
            command_timeout=s.command_timeout,
            reopen_max=s.reopen_max,
        )
        return channel

    async def _set_up(self, channel: AtChannel, *, full: bool) -> None:
        """Run at every (re)open: a transceiver that lost power forgot its settings."""
        await channel.command("ATE0")
        if not full:
            return
        await channel.command("AT&K0")  # three-wire serial: no RTS/CTS flow control
        await channel.command("AT+SBDMTA=1")  # SBDRING when a reply waits at the gateway
        await channel.command("AT+SBDD2")  # nothing left over from before
        imei = (await channel.command("AT+CGSN")).lines
        if imei:
            self.identity["imei"] = imei[-1]
        self._opens += 1
        if self._opens > 1 and self._sent:
            # A ring alert may have come while the port was away.
            self._mailbox_wanted.set()
        log.info("iridium transceiver set up", adapter=self._name, port=channel.port)

    def _on_close(self, reason: str) -> None:
        log.warning("iridium transceiver port lost", adapter=self._name, reason=reason)

    # -- sending --------------------------------------------------------------------------------
    async def send(self, batch: Sequence[Dispatch]) -> Sequence[Outcome]:
        outcomes: list[Outcome] = []
        for dispatch in batch:
            try:
                outcomes.append(await self._send_one(dispatch))
            except Exception as exc:  # never raise out of send(): the delivery is retried
                log.exception("iridium send failed", adapter=self._name)
                outcomes.append(Retry(f"internal error: {type(exc).__name__}: {exc}"))
        return outcomes

    async def _send_one(self, d: Dispatch) -> Outcome:
        now = time.time()
        self._prune(now)
        if not _IMEI.match(d.address):
            return Failed(f"{d.address!r} is not an Iridium terminal's IMEI (15 digits)")
        if d.warning.expires.timestamp() <= now:
            return Failed("the warning expired before it was sent")
        try:
            message = self._message(d)
        except CompactError as exc:
            return Failed(f"cannot encode the warning: {exc}")
        channel = self._channel
        if channel is None:
            return Retry("adapter not started")
        if not channel.ready:
            return Retry(f"{channel.port}: not ready ({channel.last_error})", after=_PORT_RETRY)
        try:
            async with asyncio.timeout(self._settings.session_timeout):
                await self._session.acquire()
        except TimeoutError:
            return Retry(
                "the transceiver is busy with another session",
                after=self._settings.session_interval,
            )
        # The session runs as its own task, holding the lock until the transceiver has
        # answered: if the engine abandons this send (its send_timeout), the session still
        # ends cleanly instead of leaving a late answer on the line for the next command.
        session = asyncio.create_task(
            self._session_for(channel, d, message), name=f"iridium_sbd:{self._name}:session"
        )
        self._background.add(session)
        session.add_done_callback(self._background.discard)
        try:
            return await asyncio.shield(session)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if session.cancelled() and (current is None or not current.cancelling()):
                return Retry("the adapter stopped during the session")  # stop(), not our caller
            raise

    async def _session_for(self, channel: AtChannel, d: Dispatch, message: bytes) -> Outcome:
        """One MO session; called holding the session lock, which it releases."""
        stage = "signal"
        try:
            await self._pace()
            self.counters.sessions += 1
            bars = await self._read_signal(channel)
            if bars < self._settings.min_signal:
                self.counters.no_signal += 1
                return Retry(
                    f"no satellite signal ({bars} of 5 bars; {self._settings.min_signal} needed)",
                    after=self._settings.no_signal_retry,
                    detail={"signal": bars},
                )
            stage = "write"
            written = await self._write(channel, message)
            if written is not WriteResult.OK:
                detail = {"sbdwb": int(written)}
                if written is WriteResult.WRONG_SIZE:
                    return Failed(f"AT+SBDWB: {written.reason}", detail=detail)
                return Retry(f"AT+SBDWB: {written.reason}", detail=detail)
            stage = "session"
            result = await self._sbd_session(channel, "AT+SBDIX")
            return await self._outcome(channel, d, result, bars, len(message))
        except PortClosed as exc:
            return Retry(str(exc), after=_PORT_RETRY, detail={"stage": stage})
        except SerialLinkError as exc:  # no answer, ERROR
            return Retry(f"{type(exc).__name__}: {exc}", detail={"stage": stage})
        except SbdStatusError as exc:  # an answer that makes no sense (line noise)
            return Retry(f"unexpected answer: {exc}", detail={"stage": stage})
        finally:
            self._last_session_end = time.monotonic()
            self._session.release()

    def _message(self, d: Dispatch) -> bytes:
        prefix = b""
        if self._settings.routing == "rockblock":
            serial = self._settings.rockblock_serials.get(d.address)
            if serial is None:
                raise CompactError(
                    f"no RockBLOCK serial for terminal {d.address}: add it to rockblock_serials"
                )
            prefix = rockblock_prefix(serial)
        w = d.warning
        return prefix + encode_warning(
            msg_type=w.msg_type,
            status=w.status,
            level=w.level,
            delivery_id=max(0, d.delivery_id),
            warning_id=w.id,
            sent=w.sent,
            expires=w.expires,
            recipient=d.address,
            areas=(d.area_code, *w.area_codes),
            text=d.text or w.headline,
            references=w.references,
            limit=DELIVERABLE - len(prefix),
        )

    async def _outcome(
        self, channel: AtChannel, d: Dispatch, result: SbdixResult, bars: int, size: int
    ) -> Outcome:
        mo = result.mo
        detail: dict[str, Any] = {
            "mo_status": result.mo_status,
            "momsn": result.momsn,
            "signal": bars,
            "bytes": size,
        }
        if mo.verdict is Verdict.SUCCESS:
            self.counters.sent += 1
            # The MO buffer keeps the message after a session: clear it so a mailbox check
            # (AT+SBDIXA) does not send it again.
            with contextlib.suppress(SerialLinkError):
                await channel.command("AT+SBDD0")
            reference = str(result.momsn)
            self._remember(d, reference)
            log.info(
                "warning sent over iridium",
                adapter=self._name,
                terminal=masked(d.address),
                delivery_id=d.delivery_id,
                momsn=result.momsn,
                bytes=size,
            )
            return Accepted(reference=reference, detail=detail)
        self.counters.mo_failures += 1
        reason = f"MO status {result.mo_status}: {mo.reason}"
        if mo.verdict is Verdict.RETRY:
            return Retry(reason, after=mo.after, detail=detail)
        return Failed(reason, detail=detail)

    async def _pace(self) -> None:
        wait = self._last_session_end + self._settings.session_interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _read_signal(self, channel: AtChannel) -> int:
        reply = await channel.command("AT+CSQ")
        line = reply.value("+CSQ:")
        bars = parse_csq(f"+CSQ:{line}" if line is not None else " ".join(reply.lines))
        self.signal = bars
        return bars

    async def _write(self, channel: AtChannel, message: bytes) -> WriteResult:
        reply = await channel.command(
            f"AT+SBDWB={len(message)}",
            payload=message + sbd_checksum(message),
            prompt=b"READY\r\n",
        )
        codes = [line for line in reply.lines if line.strip().isdigit()]
        return parse_write_result(codes[-1] if codes else " ".join(reply.lines))

    async def _sbd_session(self, channel: AtChannel, command: str) -> SbdixResult:
        """One session (``AT+SBDIX``, or ``AT+SBDIXA`` answering a ring alert); an MT message
        it brings is read and handled."""
        reply = await channel.command(command, within=self._settings.session_timeout)
        result = parse_sbdix(_sbdix_line(reply))
        # Before reading the MT message: a ring alert arriving meanwhile is for a newer one.
        if result.mt_queued > 0:
            self._mailbox_wanted.set()
        elif result.sent and result.mt_status is not MtStatus.ERROR:
            self._mailbox_wanted.clear()  # this session already asked the gateway
            self._mailbox_emptied = time.monotonic()
        if result.mt_status is MtStatus.RECEIVED:
            await self._read_mt(channel, result)
        return result

    # -- replies --------------------------------------------------------------------------------
    async def _read_mt(self, channel: AtChannel, result: SbdixResult) -> None:
        """Read the MT message a session brought. It stays in the transceiver's MT buffer, so
        a read spoilt by line noise is tried again; a read that fails loses the reply but never
        the session's own result (an MO message that went must not be sent twice)."""
        why = ""
        for attempt in range(1, _MT_READS + 1):
            try:
                reply = await channel.command("AT+SBDRB", binary_reply=True)
            except PortClosed as exc:
                why = str(exc)
                break
            except SerialLinkError as exc:
                why = str(exc)
                log.warning(
                    "reading a reply failed", adapter=self._name, attempt=attempt, error=why
                )
                continue
            self._on_mt(reply.binary or b"", result.mtmsn)
            return
        self.counters.malformed += 1
        log.warning(
            "a reply from a terminal could not be read and is lost",
            adapter=self._name,
            mtmsn=result.mtmsn,
            error=why,
        )

    def _on_mt(self, data: bytes, mtmsn: int) -> None:
        self.counters.replies += 1
        try:
            reply = decode_reply(data)
        except CompactError as exc:
            self.counters.malformed += 1
            self._warn_malformed(adapter=self._name, mtmsn=mtmsn, size=len(data), error=str(exc))
            return
        now = time.time()
        if self._context is not None:
            self._context.device_status(
                DeviceStatus(address=reply.imei, online=True, last_seen=now)
            )
        if normalise_reply(reply.answer) not in self._confirm:
            log.info(
                "terminal replied without confirming",
                adapter=self._name,
                terminal=masked(reply.imei),
                answer=reply.answer[:20],
            )
            return
        sent = self._sent.get((reply.imei, reply.ref))
        delivery_id = reply.delivery_id or (sent.delivery_id if sent is not None else 0)
        detail = {"answer": reply.answer, "mtmsn": mtmsn, "ref": reply.ref.hex()}
        if delivery_id > 0:
            report = Report(
                ReportState.ACKNOWLEDGED,
                delivery_id=delivery_id,
                from_address=reply.imei,
                warning_id=sent.warning_id if sent is not None else None,
                detail=detail,
            )
        elif sent is not None:  # a test send (no delivery of the store): by its reference
            report = Report(
                ReportState.ACKNOWLEDGED,
                reference=sent.reference,
                from_address=reply.imei,
                warning_id=sent.warning_id,
                detail=detail,
            )
        else:
            # A device is never matched by its address alone: without a delivery there is
            # nothing this reply can confirm.
            self.counters.unmatched += 1
            log.warning(
                "reply names no delivery Tocsin remembers",
                adapter=self._name,
                terminal=masked(reply.imei),
                ref=reply.ref.hex(),
            )
            return
        self.counters.acknowledged += 1
        if self._context is not None:
            self._context.report(report)

    def _on_urc(self, urc: Urc) -> None:
        if urc.line.startswith("SBDRING"):
            self._mailbox_wanted.set()
        elif urc.line.startswith("+CIEV:0,"):
            with contextlib.suppress(ValueError):
                self.signal = int(urc.line.split(",", 1)[1])

    async def _mailbox_loop(self) -> None:
        interval = self._settings.mailbox_interval or None
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._mailbox_wanted.wait()
            self._mailbox_wanted.clear()
            pause = await self._check_mailbox(requested=time.monotonic())
            if pause is None:
                failures = 0
                continue
            failures += 1
            if failures <= _MAILBOX_RETRIES:
                await asyncio.sleep(pause)
                self._mailbox_wanted.set()
            else:
                failures = 0  # a later ring alert, send or mailbox_interval tries again

    async def _check_mailbox(self, *, requested: float) -> float | None:
        """Fetch the replies waiting at the gateway; the pause before trying again when the
        check failed, None when it worked. A send session that ended after the request and
        left nothing waiting already did the check (each session costs credit)."""
        channel = self._channel
        if channel is None:
            return None
        if not await channel.wait_ready(self._settings.open_timeout):
            return _PORT_RETRY
        for _ in range(_MAILBOX_ROUNDS):
            async with self._session:
                if self._mailbox_emptied > requested:
                    return None
                await self._pace()
                self.counters.mailbox_checks += 1
                try:
                    await channel.command("AT+SBDD0")  # send nothing: only fetch
                    result = await self._sbd_session(channel, "AT+SBDIXA")
                except (SerialLinkError, SbdStatusError) as exc:
                    log.warning("mailbox check failed", adapter=self._name, error=str(exc))
                    return _PORT_RETRY
                finally:
                    self._last_session_end = time.monotonic()
            if not result.sent:
                log.info(
                    "mailbox check failed",
                    adapter=self._name,
                    mo_status=result.mo_status,
                    reason=result.mo.reason,
                )
                return result.mo.after or self._settings.no_signal_retry
            if result.mt_queued == 0:
                return None
        return None

    def _remember(self, d: Dispatch, reference: str) -> None:
        key = (d.address, warning_ref(d.warning.id))
        self._sent.pop(key, None)
        self._sent[key] = _Sent(
            delivery_id=max(0, d.delivery_id),
            warning_id=d.warning.id,
            expires=d.warning.expires.timestamp(),
            reference=reference,
        )
        while len(self._sent) > self._settings.remember:
            self._sent.popitem(last=False)

    def _prune(self, now: float) -> None:
        gone = [k for k, s in self._sent.items() if s.expires + _KEEP_AFTER_EXPIRY < now]
        for key in gone:
            del self._sent[key]

    # -- probe ----------------------------------------------------------------------------------
    async def probe(self) -> ProbeResult:
        port = self._settings.port
        channel = self._channel
        if channel is not None and channel.ready:
            return await self._probe_with(channel, running=True)
        temporary = self._new_channel(lambda _urc: None, setup=False)
        try:
            await temporary.open(within=self._settings.open_timeout)
        except PortUnavailable as exc:
            return ProbeResult(ok=False, summary=str(exc), details={"port": port})
        try:
            return await self._probe_with(temporary, running=False)
        finally:
            await temporary.close()

    async def _probe_with(self, channel: AtChannel, *, running: bool) -> ProbeResult:
        port = self._settings.port
        try:
            # Behind a session in progress, the commands wait their turn: bounded here.
            async with asyncio.timeout(self._settings.session_timeout):
                maker = _first(await channel.command("AT+CGMI"))
                model = _first(await channel.command("AT+CGMM"))
                firmware = _firmware(await channel.command("AT+CGMR"))
                imei = _first(await channel.command("AT+CGSN"))
                bars = await self._read_signal(channel)
        except (SerialLinkError, SbdStatusError, TimeoutError) as exc:
            reason = str(exc) or "no answer"
            return ProbeResult(
                ok=False, summary=f"{port}: the transceiver does not answer: {reason}"
            )
        details: dict[str, Any] = {
            "port": port,
            "manufacturer": maker,
            "model": model,
            "imei": imei,
            "firmware": firmware,
            "signal_bars": bars,
            "routing": self._settings.routing,
        }
        if running:
            details["counters"] = {
                k: getattr(self.counters, k) for k in self.counters.__dataclass_fields__
            }
            details["remembered_deliveries"] = len(self._sent)
        summary = f"{port}: {maker} {model}, IMEI {imei}, firmware {firmware}, signal {bars}/5"
        ok = bars >= self._settings.min_signal
        if not ok:
            summary += " — no satellite signal: check the antenna and its view of the sky"
        return ProbeResult(ok=ok, summary=summary, details=details)


def _sbdix_line(reply: AtReply) -> str:
    for line in reply.lines:
        if line.startswith("+SBDIX"):
            return line
    return " ".join(reply.lines) or "(nothing)"


def _first(reply: AtReply) -> str:
    return reply.lines[0].strip() if reply.lines else ""


def _firmware(reply: AtReply) -> str:
    """The call processor version (``Call Processor Version: TA16005``), else the first line."""
    for line in reply.lines:
        if line.startswith("Call Processor Version:"):
            return line.split(":", 1)[1].strip()
    return _first(reply)

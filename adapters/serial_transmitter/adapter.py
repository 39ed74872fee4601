"""The ``serial_transmitter`` adapter: wireless warning-broadcast transmitters (无线预警广播)
on a serial line — RS-232 to one, or an RS-485 bus shared by several, each with its own
address (``Dispatch.address``).

A warning becomes one command per transmitter: PLAY for an Actual Alert or Update, TEST for
anything whose status is Test, Exercise or Draft (never broadcast as a real warning), STOP for
a Cancel. The command addresses the warning's areas; the transmitter's receivers in those
villages broadcast it. Commands go one at a time (half duplex); each waits for the
transmitter's acknowledgement frame, the frame is sent again when none comes, and an ``OK``
acknowledges the delivery at once (``played`` / ``stopped``): acceptance is receipt.

The framing on the line is a *profile* (``profile`` setting, ``tocsin-v1`` by default; see
PROTOCOL.md and ``profiles.py``), so a vendor's framing is another profile, not another
adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import structlog
from pydantic import BaseModel

from adapters.serial_link.errors import PortClosed, PortUnavailable
from adapters.serial_transmitter.bus import Exchange, NoAnswer, TransmitterBus
from adapters.serial_transmitter.messages import (
    RESULT_REASONS,
    TEXT_CODECS,
    Ack,
    Command,
    CommandKind,
    Content,
    Flags,
    Level,
    ProtocolError,
    ResultCode,
    StatusReport,
    select_areas,
)
from adapters.serial_transmitter.profiles import FramingProfile, get_profile
from adapters.serial_transmitter.settings import TEXT_ENCODINGS, SerialTransmitterSettings
from dispatcher.adapter import (
    Accepted,
    Adapter,
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
)
from dispatcher.domain import Channel, MsgType, Status
from dispatcher.domain import Level as WarningLevel

log = structlog.get_logger(__name__)

_LEVELS = {
    WarningLevel.RED: Level.RED,
    WarningLevel.ORANGE: Level.ORANGE,
    WarningLevel.YELLOW: Level.YELLOW,
    WarningLevel.BLUE: Level.BLUE,
}
_DEVICE_STATE = {
    CommandKind.PLAY: "played",
    CommandKind.TEST: "played",
    CommandKind.STOP: "stopped",
}
#: A transmitter's online state is passed on at most this often while it keeps acknowledging.
_SEEN_REPORT_INTERVAL = 10.0
#: Most transmitters remembered for the status poll and probe (ids seen in dispatches).
_MAX_KNOWN = 1000
#: How long a FAULT answer keeps a transmitter from being tried again.
_FAULT_RETRY_AFTER = 60.0


@dataclass(slots=True)
class TransmitterState:
    """What the adapter knows of one transmitter."""

    online: bool = False
    last_seen: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    reported_at: float = 0.0


class SerialTransmitterAdapter:
    kind: ClassVar[str] = "serial_transmitter"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.TRANSMITTER})
    settings_model: ClassVar[type[BaseModel]] = SerialTransmitterSettings
    #: Commands go one at a time, about 0.1–0.5 s each: a batch is a few seconds of line time.
    max_batch: ClassVar[int] = 50
    description: ClassVar[str] = (
        "Wireless-broadcast transmitters on a serial line (RS-232/RS-485): framed play, stop, "
        "test and status commands, acknowledged per transmitter"
    )

    def __init__(self, *, name: str, settings: SerialTransmitterSettings) -> None:
        self._name = name
        self._settings = settings
        self._profile: FramingProfile = get_profile(settings.profile)
        self._context: AdapterContext | None = None
        self._bus: TransmitterBus | None = None
        self._poller: asyncio.Task[None] | None = None
        #: Transmitter address, as dispatches give it (the directory's) → what is known of it.
        self.transmitters: dict[str, TransmitterState] = {
            address: TransmitterState() for address in settings.transmitters
        }
        self._text_kind = TEXT_ENCODINGS[settings.text_encoding]

    def __repr__(self) -> str:
        return f"SerialTransmitterAdapter(name={self._name!r}, port={self._settings.port!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def bus(self) -> TransmitterBus | None:
        """The running line (for tests and diagnostics)."""
        return self._bus

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, context: AdapterContext) -> None:
        self._context = context
        if self._bus is not None:
            return
        bus = self._new_bus()
        try:
            await bus.open(self._settings.open_timeout)
        except PortUnavailable as exc:
            raise AdapterNotReady(str(exc)) from None
        self._bus = bus
        configured = list(self._settings.transmitters)
        if configured:
            answered = [a for a, ok in (await self._poll(configured)).items() if ok]
            if not answered:
                why = bus.last_error or "no answer to a status query"
                await self.stop()
                raise AdapterNotReady(
                    f"{self._settings.port}: no transmitter answered "
                    f"(ids {', '.join(configured)}; {why})"
                )
        if self._settings.status_interval > 0:
            self._poller = asyncio.create_task(
                self._poll_forever(), name=f"tocsin-serial_transmitter-{self._name}-poll"
            )

    async def stop(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await poller
        bus, self._bus = self._bus, None
        if bus is not None:
            await bus.close()

    def not_ready_reason(self) -> str | None:
        """Why the started adapter cannot send now: the port went away and is being reopened."""
        bus = self._bus
        if bus is None or bus.ready:
            return None
        return f"{bus.port}: {bus.last_error or 'not open'}, reopening"

    def _new_bus(self) -> TransmitterBus:
        s = self._settings
        return TransmitterBus(
            port=s.port,
            baudrate=s.baudrate,
            name=f"serial_transmitter:{self._name}",
            profile=self._profile,
            ack_timeout=s.command_timeout,
            resends=s.resends,
            reopen_max=s.reopen_max,
        )

    def line_address(self, address: str) -> int:
        """The line id of a directory address (``addresses`` setting, else the address
        itself); ``ProtocolError`` when it is not one."""
        mapped = self._settings.addresses.get(address)
        if mapped is not None:
            return mapped
        return self._profile.parse_address(address)

    # -- sending --------------------------------------------------------------------------------
    async def send(self, batch: Sequence[Dispatch]) -> Sequence[Outcome]:
        outcomes: list[Outcome] = []
        bus = self._bus
        deadline = time.monotonic() + self._settings.batch_budget
        #: Transmitters that did not answer earlier in this batch: not waited for again.
        silent: dict[int, str] = {}
        gone: str | None = None
        for d in batch:
            if bus is None:
                outcomes.append(Retry("adapter not started"))
                continue
            if gone is not None:
                outcomes.append(Retry(gone, after=1.0))
                continue
            if not bus.ready:
                gone = f"{bus.port}: {bus.last_error or 'not open'}, reopening"
                outcomes.append(Retry(gone, after=1.0))
                continue
            if time.monotonic() >= deadline:
                outcomes.append(Retry("the batch used its time on the line; sent next", after=0))
                continue
            try:
                outcome = await self._send_one(bus, d, silent)
            except PortClosed as exc:
                gone = str(exc)
                outcome = Retry(gone, after=1.0)
            except Exception as exc:  # never raise out of send(): the rest still get answers
                log.exception("sending to a transmitter failed", adapter=self._name)
                outcome = Retry(f"{type(exc).__name__}: {exc}")
            outcomes.append(outcome)
        return outcomes

    async def _send_one(self, bus: TransmitterBus, d: Dispatch, silent: dict[int, str]) -> Outcome:
        try:
            address = self.line_address(d.address)
        except ProtocolError as exc:
            if d.address.startswith("area:"):
                return Failed("a transmitter is addressed by its id on the line (--to ID)")
            return Failed(str(exc))
        if d.warning.expires.timestamp() <= time.time():
            return Failed("the warning expired before it was sent")
        if address in silent:
            return Retry(silent[address])
        try:
            command, detail = self.command_for(d)
        except ProtocolError as exc:
            return Failed(f"cannot be expressed in {self._profile.name}: {exc}")
        self._remember(d.address)
        try:
            done = await bus.exchange(command, address)
        except NoAnswer as exc:
            silent[address] = str(exc)
            self._offline(d.address, str(exc))
            return Retry(str(exc), detail={"transmitter": address, "sends": exc.sends})
        except ProtocolError as exc:
            return Failed(f"cannot be expressed in {self._profile.name}: {exc}")
        return self._outcome(d, command, address, done, detail)

    def command_for(self, d: Dispatch) -> tuple[Command, dict[str, Any]]:
        """The command a dispatch becomes, and what the delivery log shows of it."""
        w = d.warning
        areas = select_areas(w.area_codes, d.area_code, self._profile.max_areas)
        # A test that names no area (an installer's `tocsin adapters test … --to 1`) goes to
        # every area the transmitter serves (an empty list, PROTOCOL.md); a real warning or a
        # stop must say where.
        whole_coverage_test = w.status is not Status.ACTUAL and w.msg_type is not MsgType.CANCEL
        if not areas and not whole_coverage_test:
            raise ProtocolError(
                f"no 12-digit area code among the warning's {list(w.area_codes)} "
                f"or the target's {d.area_code!r}"
            )
        flags = Flags.NONE
        if w.status is Status.EXERCISE:
            flags |= Flags.EXERCISE
        elif w.status is not Status.ACTUAL:
            flags |= Flags.TEST  # Test, and a Draft that reached a device: never the real thing
        if w.msg_type is MsgType.UPDATE:
            flags |= Flags.UPDATE
        detail: dict[str, Any] = {"areas": list(areas[:20]) or "all it serves"}
        common: dict[str, Any] = {
            "warning_id": w.id,
            "delivery_id": max(0, d.delivery_id),
            "flags": flags,
            "expires": max(0, int(w.expires.timestamp())),
            "areas": areas,
        }
        if w.msg_type is MsgType.CANCEL:
            references = w.references[: self._profile.max_references]
            detail["command"] = "stop"
            return Command(CommandKind.STOP, references=references, **common), detail
        kind = CommandKind.PLAY if w.status is Status.ACTUAL else CommandKind.TEST
        content = self._content(d, detail)
        detail["command"] = kind.name.lower()
        return (
            Command(
                kind,
                level=_LEVELS.get(w.level, Level.NONE),
                repeat=self._settings.repeat,
                volume=self._settings.volume,
                content=content,
                references=w.references[: self._profile.max_references]
                if w.msg_type is MsgType.UPDATE
                else (),
                **common,
            ),
            detail,
        )

    def _content(self, d: Dispatch, detail: dict[str, Any]) -> Content:
        clips = self._settings.audio_clips
        clip = clips.get(d.warning.event, clips.get(d.warning.level.value))
        # A stored clip is the real thing (a siren, a recorded evacuation order): a Test or
        # Exercise says its text, which is marked as one, never the clip.
        if clip is not None and d.warning.status is Status.ACTUAL:
            detail["audio_id"] = clip
            return Content.of_audio(clip)
        text = d.text or d.warning.headline
        codec = TEXT_CODECS[self._text_kind]
        cut = _cut_text(text, codec, self._settings.max_text_bytes)
        if len(cut) < len(text):
            detail["text_cut_at"] = len(cut)
        detail["text_encoding"] = self._settings.text_encoding
        return Content.of_text(cut, self._text_kind)

    def _outcome(
        self, d: Dispatch, command: Command, address: int, done: Exchange, detail: dict[str, Any]
    ) -> Outcome:
        reply = done.reply
        now = time.time()
        key = d.address
        self._seen(key, now)
        detail |= {"transmitter": address, "seq": done.seq, "sends": done.sends}
        if isinstance(reply, StatusReport):  # a status for a play: a confused device
            return Retry(f"transmitter {address} answered with a status report", detail=detail)
        detail["result"] = reply.result.name.lower()
        if reply.result is ResultCode.OK:
            state = _DEVICE_STATE[command.kind]
            if self._context is not None:
                self._context.report(
                    Report(
                        state=ReportState.ACKNOWLEDGED,
                        delivery_id=d.delivery_id,
                        from_address=d.address,
                        warning_id=d.warning.id,
                        at=now,
                        detail={
                            "device_state": state,
                            "command": command.kind.name.lower(),
                            "transmitter": address,
                        },
                    )
                )
            return Accepted(reference=f"{address}:{done.seq}", delivered=True, detail=detail)
        reason = f"transmitter {address}: {_reason(reply)}"
        if reply.result is ResultCode.BUSY:
            return Retry(reason, after=float(reply.retry_after) or None, detail=detail)
        if reply.result is ResultCode.FAULT:
            state_detail = self.transmitters[key].detail
            state_detail["faults"] = reply.faults.names()
            self._report_status(key, self.transmitters[key], now)
            detail["faults"] = reply.faults.names()
            return Retry(reason, after=_FAULT_RETRY_AFTER, detail=detail)
        if reply.result is ResultCode.UNKNOWN_AREA:
            detail["unknown_areas"] = list(reply.unknown_areas[:20])
            return Failed(reason + " (is the directory's coverage of it right?)", detail=detail)
        return Failed(reason, detail=detail)

    # -- transmitter states ---------------------------------------------------------------------
    def _remember(self, key: str) -> None:
        if key not in self.transmitters and len(self.transmitters) < _MAX_KNOWN:
            self.transmitters[key] = TransmitterState()

    def _seen(self, key: str, now: float, detail: Mapping[str, Any] | None = None) -> None:
        state = self.transmitters.setdefault(key, TransmitterState())
        came_online = not state.online
        state.online = True
        state.last_seen = now
        state.detail.pop("error", None)
        if detail is not None:
            state.detail = dict(detail)
        if came_online or detail is not None or now - state.reported_at >= _SEEN_REPORT_INTERVAL:
            self._report_status(key, state, now)

    def _offline(self, key: str, reason: str) -> None:
        state = self.transmitters.setdefault(key, TransmitterState())
        was_online = state.online
        state.online = False
        state.detail["error"] = reason
        if was_online or state.reported_at == 0.0:
            self._report_status(key, state, time.time())

    def _report_status(self, key: str, state: TransmitterState, now: float) -> None:
        state.reported_at = now
        if self._context is not None:
            self._context.device_status(
                DeviceStatus(
                    address=key,
                    online=state.online,
                    # Never heard from: offline as of now.
                    last_seen=state.last_seen or now,
                    detail=dict(state.detail),
                )
            )

    async def _query(self, bus: TransmitterBus, key: str) -> tuple[bool, str]:
        """Ask one transmitter for its status; (answered, what to show)."""
        try:
            done = await bus.exchange(Command(CommandKind.STATUS), self.line_address(key))
        except NoAnswer as exc:
            self._offline(key, str(exc))
            return False, "no answer"
        reply = done.reply
        if isinstance(reply, StatusReport):
            self._seen(key, time.time(), reply.detail())
            return True, _status_line(reply)
        self._seen(key, time.time())
        return True, f"answered {reply.result.name.lower()} to a status query"

    async def _poll(self, keys: Sequence[str]) -> dict[str, bool]:
        bus = self._bus
        answered: dict[str, bool] = {}
        for key in keys:
            if bus is None or not bus.ready:
                break
            try:
                answered[key] = (await self._query(bus, key))[0]
            except PortClosed:
                break
        return answered

    async def _poll_forever(self) -> None:
        interval = self._settings.status_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self._poll(list(self.transmitters))
            except Exception:  # the poll must outlive any one bad answer
                log.exception("transmitter status poll failed", adapter=self._name)

    # -- probe ----------------------------------------------------------------------------------
    async def probe(self) -> ProbeResult:
        s = self._settings
        where = f"{s.port} at {s.baudrate} baud, profile {s.profile}"
        details: dict[str, Any] = {"port": s.port, "baudrate": s.baudrate, "profile": s.profile}
        bus = self._bus
        own = bus is None
        if bus is None:
            bus = self._new_bus()
            try:
                await bus.open(s.open_timeout)
            except PortUnavailable as exc:
                return ProbeResult(ok=False, summary=f"cannot open {exc}", details=details)
        try:
            if not bus.ready:
                reason = f"{bus.port}: {bus.last_error or 'not open'}, reopening"
                return ProbeResult(ok=False, summary=reason, details=details)
            keys = list(self.transmitters)
            if not keys:
                return ProbeResult(
                    ok=True,
                    summary=f"{where}: port open; no transmitters configured to query "
                    "(list their ids in `transmitters`)",
                    details=details,
                )
            shown: dict[str, Any] = {}
            lines: list[str] = []
            answered = 0
            for key in keys[:100]:
                try:
                    ok, line = await self._query(bus, key)
                except PortClosed as exc:
                    ok, line = False, str(exc)
                answered += ok
                lines.append(f"{key}: {line}")
                shown[key] = {"online": ok, **self.transmitters[key].detail}
            details["transmitters"] = shown
            details["line"] = {
                "garbled_frames": bus.counters.garbled,
                "noise_bytes": bus.discarded,
                "resends": bus.counters.resends,
            }
            summary = f"{where}: {answered} of {len(keys)} transmitters answered; " + "; ".join(
                lines[:10]
            )
            return ProbeResult(ok=answered > 0, summary=summary, details=details)
        finally:
            if own:
                await bus.close()


def _reason(reply: Ack) -> str:
    reason = RESULT_REASONS[reply.result]
    if reply.result is ResultCode.BUSY and reply.retry_after:
        reason += f", free in {reply.retry_after}s"
    elif reply.result is ResultCode.FAULT and reply.faults:
        reason += f": {', '.join(reply.faults.names())}"
    elif reply.result is ResultCode.UNKNOWN_AREA and reply.unknown_areas:
        reason += f" ({', '.join(reply.unknown_areas[:5])})"
    return reason


def _status_line(report: StatusReport) -> str:
    faults = ", ".join(report.faults.names()) or "no faults"
    return (
        f"{report.state.name.lower()}, {report.frequency_hz / 1e6:.3f} MHz, "
        f"{report.forward_power_w:.1f} W forward / {report.reflected_power_w:.1f} W reflected, "
        f"{faults}, firmware {report.firmware}"
    )


def _cut_text(text: str, codec: str, limit: int) -> str:
    """``text`` cut so its encoding fits ``limit`` bytes, at a character boundary."""
    if len(text.encode(codec)) <= limit:
        return text
    size = 0
    for index, char in enumerate(text):
        size += len(char.encode(codec))
        if size > limit:
            return text[:index]
    return text


if TYPE_CHECKING:

    def _conforms(adapter: SerialTransmitterAdapter) -> Adapter:
        """mypy checks here that the adapter satisfies the contract."""
        return adapter

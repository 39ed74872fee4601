"""An Iridium 9602/9603 SBD transceiver on a pseudo-terminal, with the Iridium gateway and the
village terminals behind it (``tocsin simulate modem --profile iridium``; the tests use it too).

It speaks the transceiver's AT commands as the ISU AT Command Reference gives them: ``AT``,
``ATE0/1``, ``AT&K0/3``, ``AT+CGMI/CGMM/CGMR/CGSN``, ``AT+CSQ`` (0-5 bars), ``AT+CIER``,
``AT+SBDMTA`` (ring alerts), ``AT+SBDWB=<n>`` (``READY``, then n bytes and the 2-byte
checksum, answered 0/1/2/3), ``AT+SBDIX``/``AT+SBDIXA`` (a session: the MO message goes to the
"gateway", one queued MT message comes back), ``AT+SBDRB`` (the binary block: 2-byte length,
message, 2-byte checksum), ``AT+SBDD0/1/2``. A reply queued with :meth:`queue_reply` rings
(``SBDRING``) when ring alerts are on. One session at a time: an ``AT+SBDIX`` while another is
in progress answers MO status 35 (busy).

Knobs: ``signal`` (0-5), ``mo_script`` (the MO status of the next sessions, then 0),
``session_time``, ``hang_sessions`` (an ``AT+SBDIX`` that never answers), ``write_timeout``,
``auto_reply`` (each terminal confirms the warnings addressed to it after ``reply_delay``),
plus the common ``latency``, ``silent``, ``garbage``, ``error_rate``, ``unplug()``/``replug()``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from adapters.iridium_sbd.compact import (
    MO_LIMIT,
    MT_LIMIT,
    CompactError,
    CompactWarning,
    decode_warning,
    encode_reply,
    sbd_checksum,
    strip_rockblock_prefix,
)
from adapters.serial_link.pty_device import AtDevice, PtyDevice
from adapters.simulator_args import seconds

DEFAULT_IMEI = "300234010753370"
MODEL = "IRIDIUM 9600 Family SBD Transceiver"
FIRMWARE = (
    "Call Processor Version: TA16005",
    "Modem DSP Version: 1.7 svn: 2358",
    "DBB Version: 0x0001 (ASIC)",
    "RFA VersionSrev: 0x0007 LMX:0x0011 (2 9 3)",
    "NVM Version: KVS",
    "Hardware Version: BOOST9602",
    "BOOT Version: TA16005 (rev exported)",
)

_SBDWB = re.compile(r"^AT\+SBDWB=(\d+)$", re.IGNORECASE)
_SBDD = re.compile(r"^AT\+SBDD([012])$", re.IGNORECASE)
_SBDMTA = re.compile(r"^AT\+SBDMTA=([01])$", re.IGNORECASE)
_CIER = re.compile(r"^AT\+CIER=([01])(?:,([01]))?(?:,([01]))?(?:,([01]))?$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class GatewayMessage:
    """An MO message the simulated gateway took, as it arrived."""

    momsn: int
    data: bytes

    def warning(self) -> CompactWarning:
        """The compact warning in it (a RockBLOCK routing prefix skipped)."""
        return decode_warning(strip_rockblock_prefix(self.data))


class IridiumSimulator(AtDevice):
    description = "an Iridium 9602 SBD transceiver"

    def __init__(
        self,
        *,
        link: str | Path | None = None,
        imei: str = DEFAULT_IMEI,
        signal: int = 5,
        session_time: float = 0.0,
        latency: float = 0.0,
        garbage: float = 0.0,
        error_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            link=link, latency=latency, garbage=garbage, error_rate=error_rate, seed=seed
        )
        self.imei = imei
        self.signal = signal
        self.session_time = session_time
        #: MO status codes of the next sessions (then 0: success).
        self.mo_script: deque[int] = deque()
        #: Sessions that never answer (the transceiver stuck): for stop() and timeout tests.
        self.hang_sessions = False
        #: Seconds the transceiver waits for the bytes of AT+SBDWB before answering 1.
        self.write_timeout = 60.0
        #: Terminals confirm the warnings addressed to them, after reply_delay seconds.
        self.auto_reply = False
        self.reply_delay = 0.0
        #: What the gateway took, in order.
        self.gateway: list[GatewayMessage] = []
        #: What the gateway took but could not hand a 9602/9603 terminal (over 270 bytes).
        self.undeliverable: list[GatewayMessage] = []
        #: Replies waiting at the gateway for this transceiver (mobile-terminated).
        self.mt_queue: deque[bytes] = deque()
        self.sessions = 0
        self.busy_refusals = 0
        self.momsn = 0
        self.mtmsn = 0
        self.ring_alerts = False
        self.indicators = False
        self.mo_buffer = b""
        self.mt_buffer = b""
        self.in_session = False
        self._plug_generation = 0
        self._write_timer: asyncio.TimerHandle | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    # -- power ----------------------------------------------------------------------------------
    def on_plug(self) -> None:
        super().on_plug()
        # A transceiver that lost power: buffers and settings gone, the gateway's queue kept.
        self._plug_generation += 1
        self.ring_alerts = False
        self.indicators = False
        self.mo_buffer = b""
        self.mt_buffer = b""
        self.in_session = False
        self._cancel_write_timer()

    def on_unplug(self) -> None:
        self._cancel_write_timer()
        self.in_session = False

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        await super().stop()

    # -- knobs ----------------------------------------------------------------------------------
    def script_mo(self, *codes: int) -> None:
        """The MO status of the next sessions, in order (then success again)."""
        self.mo_script.extend(codes)

    def set_signal(self, bars: int) -> None:
        self.signal = max(0, min(5, bars))
        if self.indicators and self.plugged:
            self.unsolicited(f"+CIEV:0,{self.signal}")

    def queue_reply(self, data: bytes) -> None:
        """A terminal's message reaches the gateway for this transceiver: it waits there for
        the next session, and the transceiver rings when ring alerts are on."""
        if not 1 <= len(data) <= MT_LIMIT:
            raise ValueError(f"an MT message is 1 to {MT_LIMIT} bytes")
        self.mt_queue.append(data)
        if self.ring_alerts and self.plugged:
            self.unsolicited("SBDRING")

    def warnings(self) -> list[CompactWarning]:
        """Every warning the gateway took, decoded."""
        return [m.warning() for m in self.gateway]

    # -- commands -------------------------------------------------------------------------------
    def handle(self, command: str) -> Sequence[str] | None:
        upper = command.upper()
        if upper in ("AT&K0", "AT&K3", "AT&D0", "AT&D2"):
            return ()
        if upper == "AT+CGMI":
            return ("Iridium",)
        if upper == "AT+CGMM":
            return (MODEL,)
        if upper == "AT+CGMR":
            return FIRMWARE
        if upper == "AT+CGSN":
            return (self.imei,)
        if upper in ("AT+CSQ", "AT+CSQF"):
            return (f"+CSQ:{self.signal}",)
        if (match := _CIER.match(command)) is not None:
            self.indicators = match.group(1) == "1" and match.group(2) == "1"
            return ()
        if (match := _SBDMTA.match(command)) is not None:
            self.ring_alerts = match.group(1) == "1"
            return ()
        if upper == "AT+SBDMTA?":
            return (f"+SBDMTA:{int(self.ring_alerts)}",)
        if (match := _SBDD.match(command)) is not None:
            which = match.group(1)
            if which in "02":
                self.mo_buffer = b""
            if which in "12":
                self.mt_buffer = b""
            return ("0",)
        if (match := _SBDWB.match(command)) is not None:
            return self._write_binary(int(match.group(1)))
        if upper in ("AT+SBDIX", "AT+SBDIXA"):
            self._session(upper)
            return ()
        if upper == "AT+SBDRB":
            block = len(self.mt_buffer).to_bytes(2, "big") + self.mt_buffer
            self.raw_answer(block + sbd_checksum(self.mt_buffer) + b"\r\nOK\r\n")
            return ()
        return None

    def _write_binary(self, size: int) -> Sequence[str] | None:
        if not 1 <= size <= MO_LIMIT:
            return ("3",)  # at once, no READY
        generation = self._plug_generation

        def written(data: bytes) -> Sequence[str]:
            self._cancel_write_timer()
            message, checksum = data[:size], data[size:]
            if sbd_checksum(message) != checksum:
                return ("2",)
            self.mo_buffer = message
            return ("0",)

        self.expect_payload(b"READY\r\n", written, length=size + 2)
        loop = asyncio.get_running_loop()
        self._write_timer = loop.call_later(self.write_timeout, self._write_timed_out, generation)
        return None

    def _write_timed_out(self, generation: int) -> None:
        self._write_timer = None
        if generation != self._plug_generation or self._payload is None:
            return
        self._payload = None  # the transceiver leaves binary mode after 60 s
        self._payload_data.clear()
        self.answer(("1",))

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _session(self, command: str) -> None:
        self.raw_answer(b"")  # answered when the session ends
        if self.in_session:
            # A real transceiver reads no command during a session; one that gets here
            # anyway (a second caller) is refused as busy.
            self.busy_refusals += 1
            self.reply(_sbdix_line(35, self.momsn, 0, self.mtmsn, 0, len(self.mt_queue)))
            return
        self.in_session = True
        self.sessions += 1
        if self.hang_sessions:
            return
        self._later(self.session_time, self._end_session, self._plug_generation)

    def _later(self, delay: float, action: Callable[..., None], *args: object) -> None:
        """Run ``action`` after ``delay`` (cancelled when the simulator stops)."""

        def run() -> None:
            self._timers.discard(handle)
            action(*args)

        handle = asyncio.get_running_loop().call_later(delay, run)
        self._timers.add(handle)

    def _end_session(self, generation: int) -> None:
        if generation != self._plug_generation or not self.plugged:
            return  # the transceiver lost power mid-session
        self.in_session = False
        code = self.mo_script.popleft() if self.mo_script else 0
        if self.signal == 0 and code == 0:
            code = 32  # no network service
        if code > 4:
            self.reply(_sbdix_line(code, self.momsn, 0, self.mtmsn, 0, len(self.mt_queue)))
            return
        momsn = self.momsn
        if self.mo_buffer:
            self.gateway.append(GatewayMessage(momsn, self.mo_buffer))
            if len(self.mo_buffer) > MT_LIMIT:
                # A terminal gets it as an MT message: the gateway cannot deliver it.
                self.undeliverable.append(self.gateway[-1])
            else:
                self._terminal_reads(self.mo_buffer)
            self.momsn = (self.momsn + 1) % 65536
        mt_status, mt_length = 0, 0
        if self.mt_queue:
            self.mt_buffer = self.mt_queue.popleft()
            self.mtmsn = (self.mtmsn + 1) % 65536
            mt_status, mt_length = 1, len(self.mt_buffer)
        self.reply(_sbdix_line(code, momsn, mt_status, self.mtmsn, mt_length, len(self.mt_queue)))

    def _terminal_reads(self, data: bytes) -> None:
        """The village terminal gets the warning; with ``auto_reply`` it confirms it."""
        if not self.auto_reply:
            return
        try:
            warning = decode_warning(strip_rockblock_prefix(data))
        except CompactError:
            return
        if not warning.recipient:
            return
        reply = encode_reply(
            delivery_id=warning.delivery_id, ref=warning.ref, imei=warning.recipient, answer="1"
        )
        self._later(self.reply_delay, self.queue_reply, reply)


def _sbdix_line(mo: int, momsn: int, mt: int, mtmsn: int, length: int, queued: int) -> bytes:
    return f"\r\n+SBDIX: {mo}, {momsn}, {mt}, {mtmsn}, {length}, {queued}\r\n\r\nOK\r\n".encode()


# -- tocsin simulate modem --profile iridium --------------------------------------------------
def _mo_codes(raw: str) -> list[int]:
    try:
        codes = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("give MO status codes separated by commas") from None
    if any(not 0 <= c <= 255 for c in codes):
        raise argparse.ArgumentTypeError("MO status codes are 0 to 255")
    return codes


def _bars(raw: str) -> int:
    if raw not in {"0", "1", "2", "3", "4", "5"}:
        raise argparse.ArgumentTypeError("signal is 0 to 5 bars")
    return int(raw)


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--imei", default=DEFAULT_IMEI, help="the transceiver's IMEI")
    parser.add_argument("--signal", type=_bars, default=5, help="signal bars, 0-5 (0: no service)")
    parser.add_argument(
        "--mo-status",
        type=_mo_codes,
        default=[],
        metavar="CODES",
        help="MO status of the next sessions, e.g. 32,32,0 (then success)",
    )
    parser.add_argument(
        "--session-time", type=seconds, default=3.0, help="seconds an AT+SBDIX session takes"
    )
    parser.add_argument(
        "--hang-sessions", action="store_true", help="sessions never end (a stuck transceiver)"
    )
    parser.add_argument(
        "--no-auto-reply",
        dest="auto_reply",
        action="store_false",
        help="terminals do not confirm (by default each confirms the warnings sent to it)",
    )
    parser.add_argument(
        "--reply-delay", type=seconds, default=5.0, help="seconds before a terminal confirms"
    )


def build(args: argparse.Namespace, *, link: str) -> IridiumSimulator:
    if not re.fullmatch(r"[0-9]{15}", args.imei):
        raise ValueError(f"--imei {args.imei!r} is not 15 digits")
    device = IridiumSimulator(
        link=link,
        imei=args.imei,
        signal=args.signal,
        session_time=args.session_time,
        seed=args.seed,
    )
    device.script_mo(*args.mo_status)
    device.hang_sessions = args.hang_sessions
    device.auto_reply = args.auto_reply
    device.reply_delay = args.reply_delay
    return device


def settings_hint(path: str, *, device: PtyDevice | None = None) -> str:
    return "\n".join(
        (
            "[adapters.satellite]",
            'kind = "iridium_sbd"',
            'channels = ["modem"]',
            "# one SBD session per dispatch; sessions are slow",
            'send_timeout = "100s"',
            "[adapters.satellite.settings]",
            f'port = "{path}"',
            "baudrate = 19200",
            'routing = "provisioned"',
            "session_timeout = 75",
            "session_interval = 10",
        )
    )

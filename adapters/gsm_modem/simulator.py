"""A GSM/4G modem (or a Tiantong satellite phone) on a pseudo-terminal, speaking 3GPP TS
27.007/27.005 in PDU mode: what the tests run the adapter against and what an installer runs
with ``tocsin simulate modem --profile gsm``.

It behaves as a module does after power-on: echo on, text mode (``AT+CMGF=1``), no new-message
indications (``AT+CNMI=0,0,0,0,0``), error results as plain ``ERROR`` (``AT+CMEE=0``), so an
adapter that does not set the modem up fails here as it would on hardware. ``AT+CMGS`` reads
the PDU after the ``> `` prompt with :mod:`adapters.gsm_modem.pdu`, answers ``+CMGS: <mr>``
(references cycling 0–255), and later sends a ``+CDS`` status report per part when the
adapter asked for them (``AT+CNMI`` ``<ds>`` = 1; stored with ``+CDSI`` for 2).

Fault knobs, besides the shared ``latency`` / ``silent`` / ``garbage`` / ``error_rate`` and
``unplug()`` / ``replug()``: ``registered`` and ``rssi`` (no signal, not registered),
``cms_errors`` (the next sends answered ``+CMS ERROR: <n>``), ``statuses`` (the TP-ST values
a number's reports carry, e.g. ``[0x21, 0x00]``: still trying, then delivered; ``[0x41]``:
failed), ``no_reports`` (numbers that never get one), ``submit_delay`` / ``report_delay``,
``sim`` (``ready`` / ``pin`` / ``absent``), ``smsc`` (None: no SMS centre set), and
:meth:`reset` (``RDY``, ``+CPIN: READY``; every setting forgotten). :meth:`receive_sms`
injects an inbound message as the network would deliver it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from adapters.gsm_modem.pdu import (
    PduError,
    Submit,
    decode_submit,
    encode_deliver,
    encode_status_report,
    tpdu_length,
)
from adapters.serial_link.pty_device import CTRL_Z, AtDevice, PtyDevice
from adapters.simulator_args import fraction, seconds

CHINA = timezone(timedelta(hours=8))
_CRLF = b"\r\n"
_SET = re.compile(r"^AT\+([A-Z]+)=(.*)$", re.IGNORECASE)
_QUERY = re.compile(r"^AT\+([A-Z]+)\?$", re.IGNORECASE)
_PLAIN = re.compile(r"^AT\+([A-Z]+)$", re.IGNORECASE)

SimState = Literal["ready", "pin", "absent"]


@dataclass(frozen=True, slots=True)
class Identity:
    manufacturer: str
    model: str
    revision: str
    imei: str
    imsi: str
    operator: str


GSM_IDENTITY = Identity(
    "Quectel", "EC20F", "EC20CEFAR06A03M4G", "861234567890123", "460001234567890", "CHINA MOBILE"
)
TIANTONG_IDENTITY = Identity(
    "China Satcom",
    "TT-SAT SM100",
    "TTSAT_V2.1.7",
    "867400012345678",
    "460400123456789",
    "CHINA TIANTONG",
)


@dataclass(frozen=True, slots=True)
class SentPart:
    """One AT+CMGS the simulator accepted: the PDU as written and what it decoded."""

    mr: int
    pdu: str
    submit: Submit


class GsmModemSimulator(AtDevice):
    description = "a GSM/4G modem (3GPP TS 27.005, PDU mode)"

    def __init__(
        self,
        *,
        link: str | Path | None = None,
        identity: Identity = GSM_IDENTITY,
        latency: float = 0.0,
        submit_delay: float = 0.0,
        report_delay: float = 0.05,
        sim_pin: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(link=link, latency=latency, seed=seed)
        self.identity = identity
        self.submit_delay = submit_delay
        self.report_delay = report_delay
        self.sim_pin = sim_pin
        self.sim: SimState = "ready"
        self.registered = True
        self.roaming = False
        #: 0–31, or 99 (not known) as AT+CSQ reports it.
        self.rssi = 21
        self.smsc: str | None = "+8613800290500"
        #: ``+CMS ERROR`` codes the next AT+CMGS answer with, in order.
        self.cms_errors: deque[int] = deque()
        #: E.164 number → the TP-ST values its status reports carry, in order (default 0x00).
        self.statuses: dict[str, list[int]] = {}
        #: Numbers whose messages never get a status report.
        self.no_reports: set[str] = set()
        #: Numbers whose messages the network refuses at once (+CMS ERROR 1, unassigned).
        self.unassigned: set[str] = set()
        #: Every part accepted, in order.
        self.sent: list[SentPart] = []
        #: Stored messages: index → (stat, PDU) (``REC UNREAD`` 0, ``REC READ`` 1).
        #: Message storages by name (SIM, modem memory, status reports): index → (stat, PDU).
        self.storages: dict[str, dict[int, tuple[int, str]]] = {"SM": {}, "ME": {}, "SR": {}}
        #: Where received messages and status reports are stored (as many modules do, reports
        #: apart from messages), and the storage AT+CMGR/CMGD/CMGL work on (AT+CPMS's first).
        self.receive_storage = "SM"
        self.report_storage = "SR"
        self.read_storage = "SM"
        self.resets = 0
        #: (sender, text) delivered a few seconds after start (``--reply``).
        self.scheduled_replies: list[tuple[str, str]] = []
        #: The share of recipients who answer ``reply_text`` ``reply_delay`` seconds after their
        #: message is delivered (a duty officer confirming on the town's satellite phone).
        self.reply_rate = 0.0
        self.reply_delay = 5.0
        self.reply_text = "1"
        self._timers: set[asyncio.TimerHandle] = set()
        self._final_override: str | None = None
        self._answer_delay = 0.0
        self._next_mr = 0
        self._pin_attempts = 3
        self._power_on()

    # -- power-on state ---------------------------------------------------------------------------
    def _power_on(self) -> None:
        self.echo = True
        self.cmee = 0
        self.cmgf = 1
        self.cnmi = (0, 0, 0, 0, 0)
        self.creg_n = 0
        self.pin_entered = self.sim_pin is None

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        for number, text in self.scheduled_replies:
            self._timers.add(loop.call_later(5.0, self.receive_sms, number, text))

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        await super().stop()

    def on_plug(self) -> None:
        super().on_plug()
        self._power_on()

    def reset(self) -> None:
        """The modem restarts (a watchdog, a brown-out): its settings are gone, and it says so
        with ``RDY`` and ``+CPIN: READY`` as modules do."""
        self.resets += 1
        self._power_on()
        self.unsolicited("RDY")
        if self.sim == "ready" and self.pin_entered:
            self.unsolicited("+CPIN: READY")
        elif self.sim == "ready":
            self.unsolicited("+CPIN: SIM PIN")

    # -- inbound traffic ---------------------------------------------------------------------------
    def receive_sms(self, sender: str, text: str, *, at: datetime | None = None) -> list[str]:
        """The network delivers a message (a reply) to the modem: shown at once as ``+CMT``
        (``AT+CNMI`` ``<mt>`` = 2), or stored and announced with ``+CMTI`` (1), or stored
        silently (0). Returns the PDUs."""
        moment = at or datetime.now(CHINA).replace(microsecond=0)
        pdus = encode_deliver(sender, text, timestamp=moment, reference=self.random.randrange(256))
        for pdu in pdus:
            mt = self.cnmi[1]
            if mt == 2 and self.cmgf == 0:
                self.unsolicited(f"+CMT: ,{tpdu_length(pdu)}", pdu)
                continue
            index = self._store(0, pdu, self.receive_storage)
            if mt in (1, 2):
                self.unsolicited(f'+CMTI: "{self.receive_storage}",{index}')
        return pdus

    @property
    def storage(self) -> dict[int, tuple[int, str]]:
        """The storage AT+CMGR/CMGD/CMGL work on now."""
        return self.storages[self.read_storage]

    @property
    def stored(self) -> int:
        """Messages and reports held in every storage."""
        return sum(len(box) for box in self.storages.values())

    def _store(self, stat: int, pdu: str, name: str) -> int:
        box = self.storages[name]
        index = next(i for i in range(1, 1000) if i not in box)
        box[index] = (stat, pdu)
        return index

    def _status_report(self, part: SentPart, status: int) -> None:
        if not self.plugged:
            return
        moment = datetime.now(CHINA).replace(microsecond=0)
        pdu = encode_status_report(
            part.mr, part.submit.destination, status, submitted=moment, discharged=moment
        )
        ds = self.cnmi[3]
        if ds == 1 and self.cmgf == 0:
            self.unsolicited(f"+CDS: {tpdu_length(pdu)}", pdu)
        elif ds == 2:
            index = self._store(0, pdu, self.report_storage)
            self.unsolicited(f'+CDSI: "{self.report_storage}",{index}')
        concatenation = part.submit.concatenation
        last_part = concatenation is None or concatenation.part == concatenation.parts
        if status < 0x20 and last_part and self.random.random() < self.reply_rate:
            handle = asyncio.get_running_loop().call_later(
                self.reply_delay, self._auto_reply, part.submit.destination
            )
            self._timers.add(handle)

    def _auto_reply(self, number: str) -> None:
        if self.plugged:
            self.receive_sms(number, self.reply_text)

    def report_later(self, part: SentPart) -> None:
        """Schedule the status reports of an accepted part, ``report_delay`` apart, after the
        ``+CMGS`` answer (a report never overtakes the reference it names)."""
        number = part.submit.destination
        if number in self.no_reports or not part.submit.status_report:
            return
        loop = asyncio.get_running_loop()
        first = self.latency + self.submit_delay
        for step, status in enumerate(self.statuses.get(number, [0x00]), start=1):
            handle = loop.call_later(
                first + self.report_delay * step, self._status_report, part, status
            )
            self._timers.add(handle)

    # -- answers ----------------------------------------------------------------------------------
    def answer(self, lines: Sequence[str] | None, *, final: str = "OK") -> None:
        # After a payload the handler may have chosen the final (``+CMS ERROR: n``) and a delay
        # (the network's round trip).
        delay = self.latency + self._answer_delay
        self._answer_delay = 0.0
        if self._final_override is not None:
            final, lines, self._final_override = self._final_override, (), None
        if lines is None:
            self.reply(b"\r\nERROR\r\n", delay=delay)
            return
        body = b"".join(_CRLF + line.encode() + _CRLF for line in lines)
        self.reply(body + _CRLF + final.encode() + _CRLF, delay=delay)

    def _error(self, family: Literal["CMS", "CME"], code: int) -> Sequence[str]:
        """Answer the current command with an error, as AT+CMEE asks for."""
        final = "ERROR" if self.cmee == 0 else f"+{family} ERROR: {code}"
        self.raw_answer(_CRLF + final.encode() + _CRLF)
        return ()

    def handle(self, command: str) -> Sequence[str] | None:
        upper = command.upper()
        if upper == "ATI":
            return [self.identity.manufacturer, self.identity.model, self.identity.revision]
        if upper.startswith("ATZ") or upper == "AT&F":
            self._power_on()
            return ()
        plain = _PLAIN.match(command)
        if plain:
            return self._plain(plain.group(1).upper())
        query = _QUERY.match(command)
        if query:
            return self._query(query.group(1).upper())
        setting = _SET.match(command)
        if setting:
            return self._set(setting.group(1).upper(), setting.group(2))
        return None

    def _plain(self, name: str) -> Sequence[str] | None:
        ident = self.identity
        if name == "CGMI":
            return [ident.manufacturer]
        if name == "CGMM":
            return [ident.model]
        if name == "CGMR":
            return [ident.revision]
        if name == "CGSN":
            return [ident.imei]
        if name == "CIMI":
            if self.sim == "absent":
                return self._error("CME", 10)
            if not self.pin_entered:
                return self._error("CME", 11)
            return [ident.imsi]
        if name == "CSQ":
            return [f"+CSQ: {self.rssi},99"]
        return None

    def _query(self, name: str) -> Sequence[str] | None:
        if name == "CPIN":
            if self.sim == "absent":
                return self._error("CME", 10)
            if self._pin_attempts == 0:
                return ["+CPIN: SIM PUK"]
            return ["+CPIN: READY" if self.pin_entered else "+CPIN: SIM PIN"]
        if name == "CREG":
            return [f"+CREG: {self.creg_n},{self._registration()}"]
        if name == "COPS":
            if self._registration() not in (1, 5):
                return ["+COPS: 0"]
            return [f'+COPS: 0,0,"{self.identity.operator}",7']
        if name == "CMGF":
            return [f"+CMGF: {self.cmgf}"]
        if name == "CNMI":
            return ["+CNMI: " + ",".join(str(v) for v in self.cnmi)]
        if name == "CSCA":
            if self.smsc is None:
                return ['+CSCA: "",129']
            return [f'+CSCA: "{self.smsc}",145']
        if name == "CSMS":
            return ["+CSMS: 0,1,1,1"]
        if name == "CMEE":
            return [f"+CMEE: {self.cmee}"]
        return None

    def _registration(self) -> int:
        if self.sim != "ready" or not self.pin_entered:
            return 0
        if not self.registered:
            return 2  # not registered, searching
        return 5 if self.roaming else 1

    def _set(self, name: str, value: str) -> Sequence[str] | None:
        args = [a.strip().strip('"') for a in value.split(",")]
        if name == "CMEE" and args[0] in ("0", "1", "2"):
            self.cmee = int(args[0])
            return ()
        if name == "CMGF" and args[0] in ("0", "1"):
            self.cmgf = int(args[0])
            return ()
        if name == "CREG" and args[0] in ("0", "1", "2"):
            self.creg_n = int(args[0])
            return ()
        if name == "CSMS" and args[0] in ("0", "1"):
            return ["+CSMS: 1,1,1"]
        if name == "CNMI":
            return self._set_cnmi(args)
        if name == "CSCA":
            self.smsc = args[0] or None
            return ()
        if name == "CPIN":
            return self._enter_pin(args[0])
        if name == "CMGS":
            return self._cmgs(args[0])
        if name == "CPMS":
            if args[0] not in self.storages:
                return self._error("CMS", 302)
            self.read_storage = args[0]
            used = ",".join(f"{len(self.storages[m])},255" for m in (args[0], "SM", "SM"))
            return [f"+CPMS: {used}"]
        if name == "CMGR":
            return self._cmgr(args[0])
        if name == "CMGD":
            return self._cmgd(args)
        if name == "CMGL":
            return self._cmgl(args[0])
        return None

    def _set_cnmi(self, args: list[str]) -> Sequence[str] | None:
        try:
            values = [int(a) if a else 0 for a in args] + [0] * (5 - len(args))
        except ValueError:
            return None
        mode, mt, bm, ds, bfr = values[:5]
        if mode not in (0, 1, 2) or mt not in (0, 1, 2, 3) or ds not in (0, 1, 2):
            return self._error("CMS", 303)
        self.cnmi = (mode, mt, bm, ds, bfr)
        return ()

    def _enter_pin(self, pin: str) -> Sequence[str] | None:
        if self.sim == "absent":
            return self._error("CME", 10)
        if self.pin_entered:
            return self._error("CME", 3)
        if self._pin_attempts == 0:
            return self._error("CME", 12)
        if pin != self.sim_pin:
            self._pin_attempts -= 1
            return self._error("CME", 16)
        self.pin_entered = True
        self._pin_attempts = 3
        return ()

    def _cmgs(self, length_text: str) -> Sequence[str] | None:
        if self.sim == "absent":
            return self._error("CMS", 310)
        if not self.pin_entered:
            return self._error("CMS", 311)
        if self.cmgf != 0:
            return self._error("CMS", 302)  # text mode: a PDU length is not a number
        if not length_text.isdigit() or not 7 <= int(length_text) <= 164:
            return self._error("CMS", 304)
        length = int(length_text)
        self.expect_payload(b"> ", lambda data: self._submitted(data, length), terminator=CTRL_Z)
        return ()

    def _submitted(self, data: bytes, length: int) -> Sequence[str] | None:
        if self.cms_errors:
            return self._payload_error(self.cms_errors.popleft())
        if self._registration() not in (1, 5) or self.rssi == 99:
            return self._payload_error(331)
        if self.smsc is None:
            return self._payload_error(330)
        pdu = data.decode("ascii", errors="replace").strip()
        try:
            submit = decode_submit(pdu, length=length)
        except PduError:
            return self._payload_error(304)
        if submit.destination in self.unassigned:
            return self._payload_error(1)
        part = SentPart(self._next_mr, pdu, submit)
        self._next_mr = (self._next_mr + 1) % 256
        self.sent.append(part)
        self.report_later(part)
        self._answer_delay = self.submit_delay
        return [f"+CMGS: {part.mr}"]

    def _payload_error(self, code: int) -> Sequence[str]:
        self._final_override = "ERROR" if self.cmee == 0 else f"+CMS ERROR: {code}"
        self._answer_delay = self.submit_delay
        return ()

    def _cmgr(self, index_text: str) -> Sequence[str] | None:
        if self.cmgf != 0:
            return self._error("CMS", 302)
        stored = self.storage.get(int(index_text)) if index_text.isdigit() else None
        if stored is None:
            return self._error("CMS", 321)
        stat, pdu = stored
        self.storage[int(index_text)] = (1, pdu)
        return [f"+CMGR: {stat},,{tpdu_length(pdu)}", pdu]

    def _cmgd(self, args: list[str]) -> Sequence[str] | None:
        if not args[0].isdigit():
            return None
        flag = int(args[1]) if len(args) > 1 and args[1].isdigit() else 0
        if flag == 4:
            self.storage.clear()
        elif flag == 1:
            for index in [i for i, m in self.storage.items() if m[0] != 0]:
                del self.storage[index]
        else:
            self.storage.pop(int(args[0]), None)
        return ()

    def _cmgl(self, stat_text: str) -> Sequence[str] | None:
        if self.cmgf != 0:
            return self._error("CMS", 302)
        wanted = int(stat_text) if stat_text.isdigit() else -1
        lines: list[str] = []
        for index, (stat, pdu) in sorted(self.storage.items()):
            if wanted in (4, stat):
                lines += [f"+CMGL: {index},{stat},,{tpdu_length(pdu)}", pdu]
                self.storage[index] = (1, pdu)
        return lines


# -- tocsin simulate modem --profile gsm --------------------------------------------------------
def add_arguments(parser: Any) -> None:
    """The gsm profile's knobs (an argparse parser or argument group)."""
    parser.add_argument(
        "--tiantong", action="store_true", help="identify as a Tiantong satellite phone"
    )
    parser.add_argument("--no-signal", action="store_true", help="no signal, not registered")
    parser.add_argument("--sim", choices=["ready", "pin", "absent"], default="ready")
    parser.add_argument("--sim-pin", default="1234", help="the PIN when --sim pin")
    parser.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="NUMBER[=STATUS]",
        help="status reports for NUMBER carry TP-ST STATUS (hex, default 41: failed); repeat",
    )
    parser.add_argument(
        "--cms-error",
        action="append",
        type=int,
        default=[],
        metavar="CODE",
        help="answer the next send +CMS ERROR: CODE (repeat for several sends)",
    )
    parser.add_argument(
        "--submit-delay", type=float, default=1.0, help="seconds the network takes per message"
    )
    parser.add_argument(
        "--report-delay", type=float, default=3.0, help="seconds until the status report"
    )
    parser.add_argument(
        "--reply",
        action="append",
        default=[],
        metavar="NUMBER=TEXT",
        help="deliver this SMS to the modem 5 s after start (a reply like 1 or 收到)",
    )
    parser.add_argument(
        "--reply-rate",
        type=fraction,
        default=0.0,
        help="share of recipients who reply after their message is delivered (default 0)",
    )
    parser.add_argument(
        "--reply-delay", type=seconds, default=5.0, help="seconds from delivery to the reply"
    )
    parser.add_argument("--reply-text", default="1", help="what they reply (default 1)")


def build(args: argparse.Namespace, *, link: str) -> GsmModemSimulator:
    sim_pin = args.sim_pin if args.sim == "pin" else None
    device = GsmModemSimulator(
        link=link,
        identity=TIANTONG_IDENTITY if args.tiantong else GSM_IDENTITY,
        submit_delay=args.submit_delay,
        report_delay=args.report_delay,
        sim_pin=sim_pin,
        seed=args.seed,
    )
    if args.tiantong:
        device.description = "a Tiantong satellite phone (3GPP TS 27.005, PDU mode)"
    device.sim = "absent" if args.sim == "absent" else "ready"
    if args.no_signal:
        device.registered = False
        device.rssi = 99
    for item in args.fail:
        number, _, status = item.partition("=")
        try:
            device.statuses[number] = [int(status or "41", 16)]
        except ValueError:
            raise ValueError(f"--fail {item}: the status is a hex TP-ST value") from None
    device.cms_errors.extend(args.cms_error)
    device.reply_rate = args.reply_rate
    device.reply_delay = args.reply_delay
    device.reply_text = args.reply_text
    for item in args.reply:
        number, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--reply {item}: write NUMBER=TEXT")
        device.scheduled_replies.append((number, text))
    return device


def settings_hint(path: str, *, device: PtyDevice | None = None) -> str:
    return "\n".join(
        [
            "[adapters.modem]",
            'kind = "gsm_modem"',
            'channels = ["sms", "modem"]',
            "rate_per_second = 0.2",
            "[adapters.modem.settings]",
            f'port = "{path}"',
            "baudrate = 115200",
        ]
    )

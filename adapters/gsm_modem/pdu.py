"""SMS PDUs as a 3GPP TS 27.005 modem takes and gives them in PDU mode (``AT+CMGF=0``).

* :func:`encode_submit` builds the SMS-SUBMIT TPDUs (3GPP TS 23.040 §9.2.2.2) of one text:
  status report requested (TP-SRR), TP-MR 0 (the modem assigns the reference and answers it in
  ``+CMGS: <mr>``), an international destination, GSM 7-bit packed when every character is in
  the default alphabet (or its extension table) and UCS-2 otherwise, a relative validity period,
  and for a long text a concatenation header (IEI 0x00 with an 8-bit reference, or 0x08 with a
  16-bit one) in every part.
* :func:`decode_deliver` reads an SMS-DELIVER (``+CMT`` / ``+CMGR`` / ``+CMGL``): originator,
  service-centre timestamp, text, concatenation header.
* :func:`decode_status_report` reads an SMS-STATUS-REPORT (``+CDS``): message reference,
  recipient, TP-ST.

The SMSC address: a PDU Tocsin writes starts with ``00`` ("use the SMSC stored in the modem",
``AT+CSCA``), and the ``<length>`` of ``AT+CMGS=<length>`` counts the TPDU only, without that
octet (27.005 §3.5.1). PDUs from the modem usually start with the SMSC address too; the
decoders take the ``<length>`` the URC gave to tell whether they do (a few modems leave it out
of ``+CDS``) and otherwise assume they do.

Hand-written rather than taken from a library: the PyPI SMS PDU packages are either decoders
only (smspdudecoder, which the tests use as the independent check) or unmaintained encoders
that neither request status reports nor keep a surrogate pair or a GSM escape within one part.
The formats are fixed by the specifications and fit in this module.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import phonenumbers

from adapters.sms_text.segments import Encoding, split

#: GSM 03.38 default alphabet, by septet value.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: The extension table, reached with the escape septet 0x1B.
GSM7_EXTENSION = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}
_ESCAPE = 0x1B
_BASIC_INDEX = {c: i for i, c in enumerate(GSM7_BASIC) if i != _ESCAPE}
_EXTENSION_INDEX = {c: i for i, c in GSM7_EXTENSION.items()}

#: Type of address: international number, ISDN numbering plan.
_TOA_INTERNATIONAL = 0x91
_TON_INTERNATIONAL = 0x1
_TON_ALPHANUMERIC = 0x5

#: Concatenation information elements (23.040 §9.2.3.24.1 and .8).
IEI_CONCAT_8 = 0x00
IEI_CONCAT_16 = 0x08

#: Largest TP-User-Data, octets.
_MAX_UD = 140


class PduError(ValueError):
    """A PDU that cannot be built (an invalid number) or read (malformed hex, truncated)."""


# -- numbers ------------------------------------------------------------------------------------
def e164(address: str, *, region: str | None = None) -> str:
    """``address`` as an E.164 number (``+8613812345678``). A number without ``+`` is read as a
    national number of ``region`` (e.g. ``CN``); without a region it must be international.
    Only the number's shape is checked (``is_possible_number``), not its allocation: new
    ranges (a Tiantong ``1740…``) must not be refused by an old metadata table."""
    try:
        parsed = phonenumbers.parse(address, region)
    except phonenumbers.NumberParseException as exc:
        raise PduError(f"not a phone number: {exc}") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise PduError("not a possible phone number (too short or too long)")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _encode_address(number: str) -> bytes:
    digits = number.removeprefix("+")
    if not number.startswith("+") or not digits.isdigit() or not 1 <= len(digits) <= 20:
        raise PduError(f"destination {number!r} is not an international number")
    return bytes([len(digits), _TOA_INTERNATIONAL]) + _semi_octets(digits)


def _semi_octets(digits: str) -> bytes:
    padded = digits + "F" * (len(digits) % 2)
    return bytes(int(padded[i + 1] + padded[i], 16) for i in range(0, len(padded), 2))


def _swapped_digits(data: bytes) -> str:
    """Semi-octets as a digit string; ``*``/``#``/``a``/``b``/``c`` for 0xA–0xE (23.040
    §9.1.2.3), the 0xF filler dropped."""
    out = []
    for octet in data:
        for nibble in (octet & 0x0F, octet >> 4):
            if nibble != 0xF:
                out.append("0123456789*#abc"[nibble])
    return "".join(out)


# -- GSM 7-bit ---------------------------------------------------------------------------------
def gsm7_septets(text: str) -> list[int]:
    """``text`` as septets (an extension character is the escape and its septet)."""
    septets: list[int] = []
    for char in text:
        index = _BASIC_INDEX.get(char)
        if index is not None:
            septets.append(index)
            continue
        extended = _EXTENSION_INDEX.get(char)
        if extended is None:
            raise PduError(f"{char!r} is not in the GSM 7-bit alphabet")
        septets += (_ESCAPE, extended)
    return septets


def pack_septets(septets: list[int], *, skip: int = 0) -> bytes:
    """Septets packed into octets (23.038 §6.1.2.1.1), placed after ``skip`` septets' worth of
    room (the user-data header and its fill bits, which the caller overwrites)."""
    value = 0
    for i, septet in enumerate(septets):
        value |= (septet & 0x7F) << (7 * (i + skip))
    length = -(-(len(septets) + skip) * 7 // 8)
    return value.to_bytes(length, "little")


def unpack_septets(data: bytes, count: int) -> list[int]:
    value = int.from_bytes(data, "little")
    return [(value >> (7 * i)) & 0x7F for i in range(count)]


def gsm7_text(septets: list[int]) -> str:
    out = []
    escaped = False
    for septet in septets:
        if escaped:
            # An unknown extension shows as its default-alphabet character (23.038 §6.2.1.1).
            out.append(GSM7_EXTENSION.get(septet, GSM7_BASIC[septet]))
            escaped = False
        elif septet == _ESCAPE:
            escaped = True
        else:
            out.append(GSM7_BASIC[septet])
    return "".join(out)


# -- SMS-SUBMIT --------------------------------------------------------------------------------
def relative_validity(period: timedelta) -> int:
    """TP-VP in the relative format (23.040 §9.2.3.12.1): the smallest value that covers
    ``period`` (5 minutes to 63 weeks)."""
    minutes = max(0.0, period.total_seconds() / 60)
    if minutes <= 12 * 60:
        return max(0, min(143, -(-int(minutes) // 5) - 1))
    if minutes <= 24 * 60:
        return 143 + -(-int(minutes - 12 * 60) // 30)
    days = -(-minutes // (24 * 60))
    if days <= 30:
        return int(166 + days)
    return int(min(255, 192 + -(-days // 7)))


def validity_of(vp: int) -> timedelta:
    """How long a relative TP-VP value lets the SMSC try."""
    if vp <= 143:
        return timedelta(minutes=(vp + 1) * 5)
    if vp <= 167:
        return timedelta(hours=12, minutes=(vp - 143) * 30)
    if vp <= 196:
        return timedelta(days=vp - 166)
    return timedelta(weeks=vp - 192)


@dataclass(frozen=True, slots=True)
class SubmitPdu:
    """One part as written after ``AT+CMGS=<length>``."""

    #: The TPDU, hex, upper case (without the SMSC octet).
    tpdu: str
    #: Part number (1-based) and count; (1, 1) for a single message.
    part: int
    parts: int

    @property
    def length(self) -> int:
        """The ``<length>`` of ``AT+CMGS``: TPDU octets, the SMSC octet not counted."""
        return len(self.tpdu) // 2

    @property
    def hex(self) -> str:
        """What is written to the modem before Ctrl-Z: ``00`` (the modem's SMSC) + TPDU."""
        return "00" + self.tpdu


def encode_submit(
    number: str,
    text: str,
    *,
    reference: int = 0,
    validity: timedelta = timedelta(days=1),
    status_report: bool = True,
    reference_16bit: bool = False,
) -> tuple[Encoding, list[SubmitPdu]]:
    """The SMS-SUBMIT TPDUs of ``text`` to the international ``number``: one, or the parts of
    a concatenated message sharing the concatenation ``reference`` (taken modulo 256, or 65536
    with ``reference_16bit``; the modem's own TP-MR is a different number)."""
    if not text:
        raise PduError("empty text")
    address = _encode_address(number)
    udh_octets = 7 if reference_16bit else 6
    encoding, texts = split(text, udh_octets=udh_octets)
    if len(texts) > 255:
        raise PduError(f"text needs {len(texts)} parts; at most 255")
    first_octet = 0x01 | 0x10  # SMS-SUBMIT, relative validity period
    if status_report:
        first_octet |= 0x20
    dcs = 0x00 if encoding == "GSM-7" else 0x08
    vp = relative_validity(validity)
    pdus = []
    for index, part_text in enumerate(texts, start=1):
        header = b""
        if len(texts) > 1:
            if reference_16bit:
                ie = bytes([IEI_CONCAT_16, 4]) + (reference % 65536).to_bytes(2, "big")
            else:
                ie = bytes([IEI_CONCAT_8, 3, reference % 256])
            ie += bytes([len(texts), index])
            header = bytes([len(ie)]) + ie
        if encoding == "GSM-7":
            septets = gsm7_septets(part_text)
            skip = -(-len(header) * 8 // 7)
            packed = bytearray(pack_septets(septets, skip=skip))
            packed[: len(header)] = header
            user_data, udl = bytes(packed), skip + len(septets)
        else:
            user_data = header + part_text.encode("utf-16-be")
            udl = len(user_data)
        if len(user_data) > _MAX_UD:  # split() sizes the parts; this is an invariant
            raise PduError(f"part {index} has {len(user_data)} octets of user data")
        first = first_octet | (0x40 if header else 0)
        tpdu = bytes([first, 0x00]) + address + bytes([0x00, dcs, vp, udl]) + user_data
        pdus.append(SubmitPdu(tpdu.hex().upper(), index, len(texts)))
    return encoding, pdus


# -- reading ------------------------------------------------------------------------------------
class _Reader:
    """Octets read in order, with an error naming the field when they run out."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, count: int, field: str) -> bytes:
        if count < 0 or self.pos + count > len(self.data):
            raise PduError(
                f"PDU truncated in {field} (needs {count} octets at {self.pos}, "
                f"has {len(self.data)})"
            )
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def octet(self, field: str) -> int:
        return self.take(1, field)[0]

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk


def _octets(hex_text: str) -> bytes:
    cleaned = hex_text.strip()
    if not cleaned:
        raise PduError("empty PDU")
    if len(cleaned) % 2:
        raise PduError(f"PDU has an odd number of hex digits ({len(cleaned)})")
    try:
        return bytes.fromhex(cleaned)
    except ValueError as exc:
        raise PduError(f"PDU is not hex: {cleaned[:40]!r}") from exc


def _tpdu(hex_text: str, length: int | None) -> bytes:
    """The TPDU of a PDU from the modem: the SMSC address dropped when there is one (always,
    unless ``length``, the TPDU length the URC announced, says the PDU is only the TPDU)."""
    data = _octets(hex_text)
    if length is not None and len(data) == length:
        return data
    smsc_length = data[0]
    if 1 + smsc_length >= len(data):
        raise PduError(f"PDU too short for its SMSC address of {smsc_length} octets")
    tpdu = data[1 + smsc_length :]
    if length is not None and len(tpdu) != length:
        raise PduError(f"PDU has {len(tpdu)} TPDU octets; the modem announced {length}")
    return tpdu


def _read_address(reader: _Reader, field: str) -> str:
    digits = reader.octet(f"{field} length")
    toa = reader.octet(f"{field} type")
    raw = reader.take((digits + 1) // 2, field)
    ton = (toa >> 4) & 0x7
    if ton == _TON_ALPHANUMERIC:
        return gsm7_text(unpack_septets(raw, digits * 4 // 7))
    number = _swapped_digits(raw)[:digits]
    return "+" + number if ton == _TON_INTERNATIONAL else number


def _read_timestamp(reader: _Reader, field: str) -> datetime | None:
    """A service-centre timestamp (23.040 §9.2.3.11); None when its digits are not a date."""
    raw = reader.take(7, field)
    try:
        year, month, day, hour, minute, second = (int(f"{b & 0x0F}{b >> 4}") for b in raw[:6])
        tz_octet = raw[6]
        quarters = (tz_octet & 0x07) * 10 + (tz_octet >> 4)
        offset = timedelta(minutes=15 * quarters) * (-1 if tz_octet & 0x08 else 1)
        century = 1900 if year >= 90 else 2000  # 23.040 gives two digits; SMS began in 1992
        return datetime(century + year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError:
        return None


class Alphabet(enum.StrEnum):
    GSM7 = "gsm7"
    EIGHT_BIT = "8bit"
    UCS2 = "ucs2"


def _alphabet(dcs: int) -> Alphabet:
    """The alphabet of a TP-DCS (23.038 §4); a compressed or unknown scheme is refused."""
    group = dcs >> 4
    if group <= 0x7:  # general data coding (with or without automatic deletion)
        if dcs & 0x20:
            raise PduError(f"compressed text (DCS 0x{dcs:02X}) is not supported")
        return (Alphabet.GSM7, Alphabet.EIGHT_BIT, Alphabet.UCS2, Alphabet.GSM7)[(dcs >> 2) & 3]
    if group in (0xC, 0xD):  # message waiting, discard/store: GSM 7-bit
        return Alphabet.GSM7
    if group == 0xE:  # message waiting, store: UCS-2
        return Alphabet.UCS2
    if group == 0xF:
        return Alphabet.EIGHT_BIT if dcs & 0x04 else Alphabet.GSM7
    raise PduError(f"reserved data coding scheme 0x{dcs:02X}")


@dataclass(frozen=True, slots=True)
class Concatenation:
    """Which part of a concatenated message a PDU is."""

    reference: int
    parts: int
    part: int


def _read_user_data(
    reader: _Reader, alphabet: Alphabet, *, has_header: bool
) -> tuple[str, Concatenation | None]:
    udl = reader.octet("TP-UDL")
    if alphabet is Alphabet.GSM7:
        ud = reader.take(-(-udl * 7 // 8), "TP-UD")
    else:
        ud = reader.take(udl, "TP-UD")
    concat: Concatenation | None = None
    header_octets = 0
    if has_header:
        if not ud:
            raise PduError("user-data header indicated but the user data is empty")
        header_octets = 1 + ud[0]
        if header_octets > len(ud):
            raise PduError(f"user-data header of {ud[0]} octets is longer than the user data")
        concat = _concatenation(ud[1:header_octets])
    if alphabet is Alphabet.GSM7:
        skip = -(-header_octets * 8 // 7)
        return gsm7_text(unpack_septets(ud, udl)[skip:]), concat
    body = ud[header_octets:]
    if alphabet is Alphabet.UCS2:
        # utf-16 rather than ucs-2: phones send emoji as surrogate pairs; a pair split across
        # parts by a careless sender is replaced rather than refused.
        return body.decode("utf-16-be", errors="replace"), concat
    return body.decode("latin-1"), concat


def _concatenation(header: bytes) -> Concatenation | None:
    pos = 0
    found: Concatenation | None = None
    while pos + 2 <= len(header):
        iei, length = header[pos], header[pos + 1]
        value = header[pos + 2 : pos + 2 + length]
        if len(value) != length:
            raise PduError(f"information element 0x{iei:02X} is truncated")
        if iei == IEI_CONCAT_8 and length == 3:
            found = Concatenation(value[0], value[1], value[2])
        elif iei == IEI_CONCAT_16 and length == 4:
            found = Concatenation(int.from_bytes(value[:2], "big"), value[2], value[3])
        pos += 2 + length
    if found is not None and not 1 <= found.part <= found.parts:
        return None  # 23.040: an invalid sequence number means "treat as single"
    return found


@dataclass(frozen=True, slots=True)
class Deliver:
    """An SMS-DELIVER: a message someone sent to the modem's number."""

    sender: str
    timestamp: datetime | None
    text: str
    concatenation: Concatenation | None = None

    @property
    def timestamp_utc(self) -> float | None:
        return None if self.timestamp is None else self.timestamp.astimezone(UTC).timestamp()


def decode_deliver(hex_text: str, *, length: int | None = None) -> Deliver:
    """An SMS-DELIVER from ``+CMT``, ``+CMGR`` or ``+CMGL`` (hex, with the SMSC address;
    ``length`` is the TPDU length the modem announced, when it gave one)."""
    reader = _Reader(_tpdu(hex_text, length))
    first = reader.octet("first octet")
    if first & 0x03 != 0x00:
        raise PduError(f"not an SMS-DELIVER (message type {first & 0x03})")
    sender = _read_address(reader, "TP-OA")
    reader.octet("TP-PID")
    alphabet = _alphabet(reader.octet("TP-DCS"))
    timestamp = _read_timestamp(reader, "TP-SCTS")
    text, concat = _read_user_data(reader, alphabet, has_header=bool(first & 0x40))
    return Deliver(sender, timestamp, text, concat)


class DeliveryStatus(enum.StrEnum):
    """What a TP-ST value says (23.040 §9.2.3.15)."""

    #: 0x00–0x1F: the short message transaction completed (delivered, or replaced).
    COMPLETED = "completed"
    #: 0x20–0x3F: temporary error, the SMSC is still trying.
    TRYING = "trying"
    #: 0x40–0x5F: permanent error, the SMSC has given up.
    PERMANENT = "permanent"
    #: 0x60–0x7F (and reserved values): temporary error, but the SMSC is no longer trying.
    GAVE_UP = "gave_up"


#: TP-ST values and what they mean (23.040 §9.2.3.15).
TP_STATUS_TEXT = {
    0x00: "received by the handset",
    0x01: "forwarded by the SMSC, delivery not confirmed",
    0x02: "replaced by the SMSC",
    0x20: "congestion",
    0x21: "handset busy",
    0x22: "no response from the handset",
    0x23: "service rejected",
    0x24: "quality of service not available",
    0x25: "error in the handset",
    0x40: "remote procedure error",
    0x41: "incompatible destination",
    0x42: "connection rejected by the handset",
    0x43: "not obtainable",
    0x44: "quality of service not available",
    0x45: "no interworking available",
    0x46: "validity period expired",
    0x47: "deleted by the sender",
    0x48: "deleted by the SMSC administration",
    0x49: "message does not exist",
    0x60: "congestion",
    0x61: "handset busy",
    0x62: "no response from the handset",
    0x63: "service rejected",
    0x64: "quality of service not available",
    0x65: "error in the handset",
}


def status_class(tp_st: int) -> DeliveryStatus:
    if tp_st <= 0x1F:
        return DeliveryStatus.COMPLETED
    if tp_st <= 0x3F:
        return DeliveryStatus.TRYING
    if tp_st <= 0x5F:
        return DeliveryStatus.PERMANENT
    # 0x60–0x7F, and reserved values, which 23.040 says to treat as "service rejected" (0x63).
    return DeliveryStatus.GAVE_UP


def status_text(tp_st: int) -> str:
    known = TP_STATUS_TEXT.get(tp_st)
    if known is not None:
        return known
    return f"status 0x{tp_st:02X} ({status_class(tp_st).value}, SMSC-specific or reserved)"


@dataclass(frozen=True, slots=True)
class StatusReport:
    """An SMS-STATUS-REPORT: what became of a message the modem sent (``+CDS``)."""

    #: The TP-MR of the SMS-SUBMIT it reports on (what ``+CMGS`` answered).
    reference: int
    recipient: str
    status: int
    submitted: datetime | None
    discharged: datetime | None

    @property
    def outcome(self) -> DeliveryStatus:
        return status_class(self.status)

    @property
    def reason(self) -> str:
        return status_text(self.status)

    @property
    def retryable(self) -> bool:
        """Whether sending again may work: not for an unknown or incompatible destination, yes
        for a handset that was busy, off or out of reach until the validity ran out."""
        return self.outcome is DeliveryStatus.GAVE_UP or self.status in {0x46, 0x47, 0x48, 0x49}


def decode_status_report(hex_text: str, *, length: int | None = None) -> StatusReport:
    """An SMS-STATUS-REPORT from ``+CDS`` (or ``+CMGR`` of a stored report)."""
    reader = _Reader(_tpdu(hex_text, length))
    first = reader.octet("first octet")
    if first & 0x03 != 0x02:
        raise PduError(f"not an SMS-STATUS-REPORT (message type {first & 0x03})")
    reference = reader.octet("TP-MR")
    recipient = _read_address(reader, "TP-RA")
    submitted = _read_timestamp(reader, "TP-SCTS")
    discharged = _read_timestamp(reader, "TP-DT")
    status = reader.octet("TP-ST")
    reader.rest()  # TP-PI and what it announces: not needed
    return StatusReport(reference, recipient, status, submitted, discharged)


def encode_deliver(
    sender: str,
    text: str,
    *,
    timestamp: datetime,
    reference: int = 0,
    smsc: str = "+8613800290500",
) -> list[str]:
    """The SMS-DELIVER PDUs (with an SMSC address, as a modem shows them) of ``text`` from
    ``sender``: what the simulator gives for an inbound message, and test material."""
    encoding, texts = split(text)
    smsc_address = _encode_address(smsc)[1:]  # type octet and digits; length in octets
    sender_address = _encode_address(sender)
    dcs = 0x00 if encoding == "GSM-7" else 0x08
    pdus = []
    for index, part_text in enumerate(texts, start=1):
        header = b""
        if len(texts) > 1:
            header = bytes([5, IEI_CONCAT_8, 3, reference % 256, len(texts), index])
        if encoding == "GSM-7":
            septets = gsm7_septets(part_text)
            skip = -(-len(header) * 8 // 7)
            packed = bytearray(pack_septets(septets, skip=skip))
            packed[: len(header)] = header
            user_data, udl = bytes(packed), skip + len(septets)
        else:
            user_data = header + part_text.encode("utf-16-be")
            udl = len(user_data)
        first = 0x04 | (0x40 if header else 0)  # SMS-DELIVER, no more messages to send
        tpdu = (
            bytes([first])
            + sender_address
            + bytes([0x00, dcs])
            + encode_timestamp(timestamp)
            + bytes([udl])
            + user_data
        )
        pdus.append((bytes([len(smsc_address)]) + smsc_address + tpdu).hex().upper())
    return pdus


def encode_status_report(
    reference: int,
    recipient: str,
    status: int,
    *,
    submitted: datetime,
    discharged: datetime,
    smsc: str = "+8613800290500",
) -> str:
    """An SMS-STATUS-REPORT PDU (with an SMSC address), as a modem gives it in ``+CDS``."""
    smsc_address = _encode_address(smsc)[1:]
    tpdu = (
        bytes([0x06, reference % 256])  # SMS-STATUS-REPORT, TP-SRQ 0 (result of a SUBMIT)
        + _encode_address(recipient)
        + encode_timestamp(submitted)
        + encode_timestamp(discharged)
        + bytes([status])
    )
    return (bytes([len(smsc_address)]) + smsc_address + tpdu).hex().upper()


def tpdu_length(pdu_hex: str) -> int:
    """The ``<length>`` a modem announces for a PDU it shows (SMSC address not counted)."""
    data = _octets(pdu_hex)
    return len(data) - 1 - data[0]


def encode_timestamp(moment: datetime) -> bytes:
    offset = moment.utcoffset() or timedelta()
    quarters = int(abs(offset.total_seconds()) // 900)
    fields = [moment.year % 100, moment.month, moment.day, moment.hour, moment.minute]
    out = bytes(((v % 10) << 4) | (v // 10) for v in [*fields, moment.second])
    tz = ((quarters % 10) << 4) | (quarters // 10) | (0x08 if offset < timedelta() else 0)
    return out + bytes([tz])


@dataclass(frozen=True, slots=True)
class Submit:
    """An SMS-SUBMIT as a modem reads it (what the simulator checks Tocsin wrote)."""

    destination: str
    text: str
    status_report: bool
    message_reference: int
    #: Relative TP-VP, or None when absent (other formats are refused).
    validity: int | None
    concatenation: Concatenation | None
    encoding: Alphabet


def decode_submit(hex_text: str, *, length: int | None = None) -> Submit:
    """An SMS-SUBMIT written after ``AT+CMGS=<length>`` (with its SMSC part, ``00`` for the
    modem's own SMSC; ``length`` counts the TPDU, as ``AT+CMGS`` does)."""
    reader = _Reader(_tpdu(hex_text, None))
    if length is not None and len(reader.data) != length:
        raise PduError(f"TPDU has {len(reader.data)} octets; AT+CMGS announced {length}")
    first = reader.octet("first octet")
    if first & 0x03 != 0x01:
        raise PduError(f"not an SMS-SUBMIT (message type {first & 0x03})")
    reference = reader.octet("TP-MR")
    destination = _read_address(reader, "TP-DA")
    reader.octet("TP-PID")
    alphabet = _alphabet(reader.octet("TP-DCS"))
    vpf = (first >> 3) & 0x03
    validity: int | None = None
    if vpf == 0x02:
        validity = reader.octet("TP-VP")
    elif vpf != 0x00:
        raise PduError(f"validity period format {vpf} is not supported (relative only)")
    text, concat = _read_user_data(reader, alphabet, has_header=bool(first & 0x40))
    if reader.rest():
        raise PduError("octets after the user data")
    return Submit(destination, text, bool(first & 0x20), reference, validity, concat, alphabet)

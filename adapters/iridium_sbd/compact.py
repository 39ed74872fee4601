"""Tocsin's compact binary warning for Iridium SBD (version 1), the reply a terminal sends back,
and the SBD checksum. Pure functions, no I/O; the byte-by-byte layout is in README.md.

An Iridium 9602/9603 mobile-originated (MO) message holds at most 340 bytes, so a warning
cannot travel as JSON or CAP. The layout is fixed-width big-endian fields, then the areas, then
the text, then a CRC-16:

* **Text in GB18030**, not UTF-8: the common Chinese characters take 2 bytes instead of 3, so
  about 150 characters fit instead of about 100, and GB18030 is the national standard every
  Chinese terminal must support. It is a complete Unicode encoding (rare characters take 4
  bytes), so nothing is lost that UTF-8 would keep.
* **Status is a letter** (``A``ctual, ``E``xercise, ``T``est), never 0/1/2: a zeroed or
  bit-flipped byte does not read as Actual, and an unknown value is rejected outright. The
  engine's text for a test or exercise also starts with 【测试，非真实预警】 / 【演练…】.
* **CRC-16/CCITT-FALSE** over the whole message (``binascii.crc_hqx``, init 0xFFFF): the SBD
  checksum only covers the serial line to the transceiver; this one holds from Tocsin to the
  terminal's application, through the gateway and whatever the provider relays it through.

Hand-written: the format is Tocsin's own, and ``struct`` plus ``binascii`` are all it needs.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import re
import struct
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dispatcher.domain import Level, MsgType, Status

#: The largest mobile-originated message of a 9602/9603 (bytes).
MO_LIMIT = 340
#: The largest mobile-terminated message a 9602/9603 takes (bytes): a reply must fit.
MT_LIMIT = 270
#: First byte of every Tocsin SBD message (``T``).
MAGIC = 0x54
VERSION = 1
#: The text encoding of version 1 (see the module docstring).
TEXT_ENCODING = "gb18030"
#: The end of the engine's text for people: kept when a long text is shortened.
CONFIRM_TAIL = "收到请回复1。"
ELLIPSIS = "…"
#: How many areas (and bytes of them) a warning carries at most, so the text keeps its room;
#: the first is the recipient's own village.
MAX_AREAS = 8
MAX_AREA_BYTES = 64
#: How many warnings an Update or Cancel names at most.
MAX_REFERENCES = 8
MAX_DELIVERY_ID = 2**64 - 1
#: The longest answer a reply carries (bytes).
MAX_ANSWER_BYTES = 64

#: magic, version, type, status, level, flags, delivery id, warning ref, sent, expires; the
#: recipient's IMEI follows as a 7-byte integer (struct has no 7-byte field).
_HEADER = struct.Struct(">BBBBBBQ4sII")
_IMEI_BYTES = 7
_CRC_BYTES = 2
#: Header + IMEI + reference count + area count + CRC: a warning with no areas and no text.
FIXED_BYTES = _HEADER.size + _IMEI_BYTES + 1 + 1 + _CRC_BYTES
#: magic, version, type, delivery id, warning ref; then the IMEI, the answer and the CRC.
_REPLY_HEADER = struct.Struct(">BBBQ4s")
#: A reply with a one-byte answer.
REPLY_MIN_BYTES = _REPLY_HEADER.size + _IMEI_BYTES + 1 + _CRC_BYTES

_IMEI = re.compile(r"^[0-9]{15}$")


class CompactError(ValueError):
    """A message that cannot be encoded, or bytes that are not a valid Tocsin message."""


class MessageType(enum.IntEnum):
    ALERT = 0x01
    UPDATE = 0x02
    CANCEL = 0x03
    #: A terminal's reply (the other direction: mobile-terminated at Tocsin's transceiver).
    REPLY = 0x81


class WireStatus(enum.IntEnum):
    """CAP status as a letter: no single bit error turns Test or Exercise into Actual."""

    ACTUAL = ord("A")
    EXERCISE = ord("E")
    TEST = ord("T")


class Flag(enum.IntFlag):
    #: The text was shortened to fit (it ends with "…", or "…收到请回复1。").
    TEXT_SHORTENED = 0x01
    #: The warning covers more areas than the message lists.
    AREAS_OMITTED = 0x02


_MSG_TYPE = {
    MsgType.ALERT: MessageType.ALERT,
    MsgType.UPDATE: MessageType.UPDATE,
    MsgType.CANCEL: MessageType.CANCEL,
}
_STATUS = {
    Status.ACTUAL: WireStatus.ACTUAL,
    Status.EXERCISE: WireStatus.EXERCISE,
    Status.TEST: WireStatus.TEST,
}
_LEVEL = {Level.RED: 1, Level.ORANGE: 2, Level.YELLOW: 3, Level.BLUE: 4}
_LEVEL_OF = {v: k for k, v in _LEVEL.items()}
_MSG_TYPE_OF = {v: k for k, v in _MSG_TYPE.items()}
_STATUS_OF = {v: k for k, v in _STATUS.items()}


# -- checksums ---------------------------------------------------------------------------------
def sbd_checksum(data: bytes) -> bytes:
    """The checksum ``AT+SBDWB`` wants after the message and ``AT+SBDRB`` sends after it: the
    least significant 16 bits of the sum of the bytes, high byte first."""
    return (sum(data) & 0xFFFF).to_bytes(2, "big")


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): the trailer of Tocsin's messages."""
    return binascii.crc_hqx(data, 0xFFFF)


def warning_ref(warning_id: str) -> bytes:
    """The 4-byte short reference of a warning: the first bytes of SHA-256 of its id (UTF-8).
    Enough for a terminal to tell warnings apart and to name one in its reply."""
    return hashlib.sha256(warning_id.encode("utf-8", "surrogatepass")).digest()[:4]


# -- warnings (Tocsin → terminal) -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CompactWarning:
    """A warning as it travels in one MO message."""

    msg_type: MsgType
    status: Status
    level: Level
    delivery_id: int
    #: warning_ref() of the warning id.
    ref: bytes
    sent: datetime
    expires: datetime
    #: The terminal this message is for (15 digits), or "" when not named.
    recipient: str
    #: The short references of the warnings an Update or Cancel replaces.
    references: tuple[bytes, ...] = ()
    areas: tuple[str, ...] = ()
    text: str = ""
    flags: Flag = field(default=Flag(0))

    @property
    def text_shortened(self) -> bool:
        return Flag.TEXT_SHORTENED in self.flags

    @property
    def areas_omitted(self) -> bool:
        return Flag.AREAS_OMITTED in self.flags


def encode_warning(
    *,
    msg_type: MsgType,
    status: Status,
    level: Level,
    delivery_id: int,
    warning_id: str,
    sent: datetime,
    expires: datetime,
    recipient: str,
    areas: Sequence[str],
    text: str,
    references: Sequence[str] = (),
    limit: int = MO_LIMIT,
) -> bytes:
    """The compact message, at most ``limit`` bytes (340, less any routing prefix).

    ``areas`` in order of importance (the recipient's village first); as many as fit within
    :data:`MAX_AREAS` / :data:`MAX_AREA_BYTES` are kept. The text is shortened on a character
    boundary with "…" when it does not fit, keeping the confirmation request at its end when
    that fits. Raises :class:`CompactError` for what cannot be sent at all (a Draft, a
    recipient that is not an IMEI, a limit below the fixed fields)."""
    wire_status = _STATUS.get(status)
    if wire_status is None:
        raise CompactError(f"a {status.value} warning is not sent to terminals")
    if not 0 <= delivery_id <= MAX_DELIVERY_ID:
        raise CompactError(f"delivery id {delivery_id} does not fit 8 bytes")
    flags = Flag(0)
    refs = [warning_ref(r) for r in dict.fromkeys(references)][:MAX_REFERENCES]
    area_bytes: list[bytes] = []
    used = 0
    wanted = [a for a in dict.fromkeys(areas) if a]
    for area in wanted:
        encoded = _encode_area(area)
        if len(area_bytes) == MAX_AREAS or used + len(encoded) > MAX_AREA_BYTES:
            break
        area_bytes.append(encoded)
        used += len(encoded)
    if len(area_bytes) < len(wanted):
        flags |= Flag.AREAS_OMITTED
    head = _HEADER.pack(
        MAGIC,
        VERSION,
        _MSG_TYPE[msg_type],
        wire_status,
        _LEVEL[level],
        0,  # flags, filled in below
        delivery_id,
        warning_ref(warning_id),
        _u32_time(sent, "sent"),
        _u32_time(expires, "expires"),
    )
    body = bytearray(head)
    body += _imei_bytes(recipient)
    body.append(len(refs))
    body += b"".join(refs)
    body.append(len(area_bytes))
    body += b"".join(area_bytes)
    room = limit - len(body) - _CRC_BYTES
    if room < 0:
        raise CompactError(f"{limit} bytes cannot hold the {len(body) + _CRC_BYTES} fixed bytes")
    fitted, shortened = fit_text(text, room)
    if shortened:
        flags |= Flag.TEXT_SHORTENED
    body[5] = int(flags)
    body += encode_text(fitted)
    body += crc16(bytes(body)).to_bytes(2, "big")
    return bytes(body)


def decode_warning(data: bytes) -> CompactWarning:
    """Read a message :func:`encode_warning` wrote (what a terminal does); raises
    :class:`CompactError` naming what is wrong."""
    _check_frame(data, FIXED_BYTES, "warning")
    (_, _, kind, status, level, flags, delivery_id, ref, sent, expires) = _HEADER.unpack_from(data)
    msg_type = _MSG_TYPE_OF.get(kind)
    if msg_type is None:
        raise CompactError(f"not a warning (message type 0x{kind:02x})")
    wire_status = _STATUS_OF.get(status)
    if wire_status is None:
        raise CompactError(f"unknown status byte 0x{status:02x} (expected A, E or T)")
    wire_level = _LEVEL_OF.get(level)
    if wire_level is None:
        raise CompactError(f"unknown level {level} (expected 1 red … 4 blue)")
    pos = _HEADER.size
    recipient = _imei_text(data[pos : pos + _IMEI_BYTES])
    pos += _IMEI_BYTES
    end = len(data) - _CRC_BYTES
    count = data[pos]
    pos += 1
    if pos + 4 * count + 1 > end:
        raise CompactError(f"{count} references do not fit in {len(data)} bytes")
    references = tuple(data[pos + 4 * i : pos + 4 * i + 4] for i in range(count))
    pos += 4 * count
    area_count = data[pos]
    pos += 1
    areas: list[str] = []
    for _ in range(area_count):
        area, pos = _decode_area(data, pos, end)
        areas.append(area)
    try:
        text = data[pos:end].decode(TEXT_ENCODING)
    except UnicodeDecodeError as exc:
        raise CompactError(f"text is not valid GB18030 at byte {pos + exc.start}") from None
    return CompactWarning(
        msg_type=msg_type,
        status=wire_status,
        level=wire_level,
        delivery_id=delivery_id,
        ref=ref,
        sent=datetime.fromtimestamp(sent, UTC),
        expires=datetime.fromtimestamp(expires, UTC),
        recipient=recipient,
        references=references,
        areas=tuple(areas),
        text=text,
        flags=Flag(flags & (Flag.TEXT_SHORTENED | Flag.AREAS_OMITTED)),
    )


# -- replies (terminal → Tocsin) --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CompactReply:
    """A terminal's answer to a warning: ``answer`` "1" confirms it."""

    #: The delivery id from the warning, or 0 when the terminal does not know it.
    delivery_id: int
    ref: bytes
    #: The replying terminal's IMEI (the SBD payload does not say who sent it otherwise).
    imei: str
    answer: str


def encode_reply(*, delivery_id: int, ref: bytes, imei: str, answer: str = "1") -> bytes:
    """The reply a terminal sends (what the simulator and a terminal's firmware write)."""
    if len(ref) != 4:
        raise CompactError("a warning reference is 4 bytes")
    if not 0 <= delivery_id <= MAX_DELIVERY_ID:
        raise CompactError(f"delivery id {delivery_id} does not fit 8 bytes")
    encoded = encode_text(answer)
    if not 1 <= len(encoded) <= MAX_ANSWER_BYTES:
        raise CompactError(f"an answer is 1 to {MAX_ANSWER_BYTES} bytes")
    if not _IMEI.match(imei):
        raise CompactError(f"{imei!r} is not an IMEI (15 digits)")
    body = _REPLY_HEADER.pack(MAGIC, VERSION, MessageType.REPLY, delivery_id, ref)
    body += _imei_bytes(imei) + encoded
    return body + crc16(body).to_bytes(2, "big")


def decode_reply(data: bytes) -> CompactReply:
    """A terminal's reply, from the bytes ``AT+SBDRB`` gave; raises :class:`CompactError`
    naming what is wrong. A RockBLOCK delivery prefix (``RB`` + 7 digits) is skipped."""
    data = strip_rockblock_prefix(data)
    _check_frame(data, REPLY_MIN_BYTES, "reply")
    _, _, kind, delivery_id, ref = _REPLY_HEADER.unpack_from(data)
    if kind != MessageType.REPLY:
        raise CompactError(f"not a reply (message type 0x{kind:02x})")
    pos = _REPLY_HEADER.size
    imei = _imei_text(data[pos : pos + _IMEI_BYTES])
    if not imei:
        raise CompactError("the reply names no IMEI")
    raw = data[pos + _IMEI_BYTES : -_CRC_BYTES]
    if len(raw) > MAX_ANSWER_BYTES:
        raise CompactError(f"answer of {len(raw)} bytes (at most {MAX_ANSWER_BYTES})")
    try:
        answer = raw.decode(TEXT_ENCODING)
    except UnicodeDecodeError:
        raise CompactError("the answer is not valid GB18030 text") from None
    return CompactReply(delivery_id=delivery_id, ref=ref, imei=imei, answer=answer)


# -- RockBLOCK routing prefix -----------------------------------------------------------------
_ROCKBLOCK_PREFIX = re.compile(rb"^RB[0-9]{7}")


def rockblock_prefix(serial: str) -> bytes:
    """``RB`` + the destination's serial number as 7 ASCII digits (leading zeros): Rock7's
    gateway forwards such an MO message to that RockBLOCK of the same delivery group."""
    if not serial.isdigit() or not 1 <= len(serial) <= 7:
        raise CompactError(f"RockBLOCK serial {serial!r} is not 1 to 7 digits")
    return b"RB" + serial.zfill(7).encode("ascii")


def strip_rockblock_prefix(data: bytes) -> bytes:
    if _ROCKBLOCK_PREFIX.match(data) and len(data) > 9 and data[9] == MAGIC:
        return data[9:]
    return data


# -- text --------------------------------------------------------------------------------------
def encode_text(text: str) -> bytes:
    """GB18030; a lone surrogate (not a character) becomes ``?``."""
    return text.encode(TEXT_ENCODING, "replace")


def fit_text(text: str, room: int) -> tuple[str, bool]:
    """``text`` when its encoding fits ``room`` bytes; else its longest start that fits with
    "…" (and the confirmation request after it when both fit), cut between characters and
    never between a character and the mark combining with it. Returns (text, shortened)."""
    if len(encode_text(text)) <= room:
        return text, False
    tail = ELLIPSIS
    body = text
    if text.endswith(CONFIRM_TAIL):
        with_confirm = ELLIPSIS + CONFIRM_TAIL
        if len(encode_text(with_confirm)) <= room:
            tail = with_confirm
            body = text[: -len(CONFIRM_TAIL)]
    keep = room - len(encode_text(tail))
    if keep < 0:
        return "", True
    used = 0
    cut = 0
    for i, char in enumerate(body):
        size = len(encode_text(char))
        if used + size > keep:
            break
        used += size
        cut = i + 1
    while 0 < cut < len(body) and _joins_previous(body[cut]):
        cut -= 1
    return body[:cut] + tail, True


def _joins_previous(char: str) -> bool:
    """A combining mark, variation selector or joiner: belongs with the character before."""
    return (
        unicodedata.combining(char) != 0
        or unicodedata.category(char) in ("Mn", "Me")
        or char in "\u200d\ufe0e\ufe0f"
    )


# -- fields ------------------------------------------------------------------------------------
def _check_frame(data: bytes, minimum: int, what: str) -> None:
    if len(data) < minimum:
        raise CompactError(f"{len(data)} bytes is too short for a {what} (at least {minimum})")
    if data[0] != MAGIC:
        raise CompactError(f"not a Tocsin message (first byte 0x{data[0]:02x}, expected 0x54 'T')")
    if data[1] != VERSION:
        raise CompactError(f"unsupported version {data[1]} (this Tocsin reads version {VERSION})")
    said = int.from_bytes(data[-_CRC_BYTES:], "big")
    computed = crc16(data[:-_CRC_BYTES])
    if said != computed:
        raise CompactError(f"CRC mismatch (message says 0x{said:04x}, computed 0x{computed:04x})")


def _u32_time(moment: datetime, what: str) -> int:
    seconds = int(moment.timestamp())
    if not 0 <= seconds <= 0xFFFFFFFF:
        raise CompactError(f"{what} {moment.isoformat()} does not fit 4 bytes of Unix time")
    return seconds


def _imei_bytes(imei: str) -> bytes:
    if imei == "":
        return bytes(_IMEI_BYTES)
    if not _IMEI.match(imei):
        raise CompactError(f"{imei!r} is not an IMEI (15 digits)")
    return int(imei).to_bytes(_IMEI_BYTES, "big")


def _imei_text(raw: bytes) -> str:
    value = int.from_bytes(raw, "big")
    if value == 0:
        return ""
    if value >= 10**15:
        raise CompactError(f"IMEI field holds {value}, more than 15 digits")
    return str(value).zfill(15)


def _encode_area(area: str) -> bytes:
    """One area: a length byte, then packed BCD digits (bit 7 clear: the low bits count
    digits) or UTF-8 (bit 7 set: the low bits count bytes)."""
    if area.isascii() and area.isdigit() and len(area) <= 32:
        digits = area + ("F" if len(area) % 2 else "")
        return bytes([len(area)]) + bytes.fromhex(digits)
    raw = area.encode("utf-8", "replace")
    if len(raw) > 63:
        raise CompactError(f"area code {area!r} is longer than 63 bytes")
    return bytes([0x80 | len(raw)]) + raw


def _decode_area(data: bytes, pos: int, end: int) -> tuple[str, int]:
    if pos >= end:
        raise CompactError("the message ends inside its area list")
    head = data[pos]
    pos += 1
    if head & 0x80:
        size = head & 0x7F
        raw = data[pos : pos + size]
        if len(raw) < size or pos + size > end:
            raise CompactError("the message ends inside an area code")
        try:
            return raw.decode("utf-8"), pos + size
        except UnicodeDecodeError:
            raise CompactError(f"area code at byte {pos} is not UTF-8") from None
    digits = head & 0x7F
    size = (digits + 1) // 2
    if digits == 0 or pos + size > end:
        raise CompactError(f"bad area code length {digits} at byte {pos - 1}")
    text = data[pos : pos + size].hex().upper()[:digits]
    if not text.isdigit() or (digits % 2 and data[pos + size - 1] & 0x0F != 0x0F):
        raise CompactError(f"area code at byte {pos} is not packed decimal digits")
    return text, pos + size

"""The ``tocsin-v1`` framing: Tocsin's own serial protocol for wireless-broadcast transmitter
controllers, byte by byte as documented in ``adapters/serial_transmitter/PROTOCOL.md``.

A frame on the wire::

    7E | escaped( VER SEQ(2) ADDR(2) TYPE LEN(2) BODY(LEN) CRC(2) )

* ``7E`` starts every frame and appears nowhere else: inside the frame ``7E`` is sent as
  ``7D 5E`` and ``7D`` as ``7D 5D`` (the byte stuffing of RFC 1662, PPP in HDLC-like framing).
  So a receiver that lost its place — noise, a frame cut off by an unplugged cable — starts
  afresh at the next ``7E`` and can never be held up by a corrupt length.
* Integers are big-endian. ``CRC`` is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value
  0xFFFF, not reflected, no final XOR; check value 0x29B1 for ``"123456789"``) over the
  unescaped bytes from ``VER`` to the end of ``BODY``: stdlib :func:`binascii.crc_hqx` with
  0xFFFF as its start value. Not the 0x0000 start (XMODEM): with it, leading zero bytes would
  not change the CRC.
* ``TYPE`` is the command (01 play, 02 stop, 03 test, 04 status); a reply has the command's
  type with the high bit set (81–84) and echoes its ``SEQ`` and ``ADDR``.

Hand-written: it is Tocsin's own protocol, small, and no library frames it; the CRC is
the stdlib's.
"""

from __future__ import annotations

import binascii
import struct

from adapters.serial_transmitter.messages import (
    AREA_CODE_DIGITS,
    Ack,
    Command,
    CommandKind,
    Content,
    ContentKind,
    Decoded,
    FaultFlag,
    Flags,
    Garbled,
    Level,
    ProtocolError,
    Received,
    Reply,
    ResultCode,
    StatusReport,
    TransmitterState,
    normalise_area,
)

SOF = 0x7E
ESC = 0x7D
ESC_XOR = 0x20
VERSION = 0x01
#: The high bit of TYPE marks a reply.
REPLY_BIT = 0x80
#: VER SEQ ADDR TYPE LEN.
HEADER = struct.Struct(">BHHBH")
CRC_SIZE = 2
CRC_INIT = 0xFFFF
#: Largest BODY a frame may have; a longer LEN is rejected as soon as the header is read.
MAX_BODY = 4096
#: Largest content (text bytes) in a command: leaves room for the rest of the body.
MAX_CONTENT = 3072
MAX_AREAS = 255
MAX_ID_BYTES = 64
MAX_REFERENCES = 16
#: Line addresses of transmitters; 0x0000 and 0xFFFF are reserved (controller, broadcast).
ADDRESS_MIN = 0x0001
ADDRESS_MAX = 0xFFFE
SEQ_MODULUS = 0x1_0000
VOLUME_DEFAULT = 0xFF

_MESSAGE_HEAD = struct.Struct(">BBBBIQ")  # flags level repeat volume expires delivery
_STATUS_BODY = struct.Struct(">BBIHHHb")  # result state freq fwd refl faults temperature


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data``."""
    return binascii.crc_hqx(data, CRC_INIT)


def escape(data: bytes) -> bytes:
    """Byte stuffing: ``7D`` → ``7D 5D`` first, then ``7E`` → ``7D 5E``."""
    return data.replace(b"\x7d", b"\x7d\x5d").replace(b"\x7e", b"\x7d\x5e")


def bcd_area(code: str) -> bytes:
    """A 12-digit area code as 6 bytes of packed BCD, high nibble first:
    ``611002101201`` → ``61 10 02 10 12 01``."""
    code = normalise_area(code)
    return bytes.fromhex(code)  # the digits 0–9 are their own hex nibbles


def area_of_bcd(raw: bytes) -> str:
    text = raw.hex()
    if len(text) != AREA_CODE_DIGITS or not text.isdigit():
        raise ProtocolError(f"area code bytes {raw.hex(' ')} are not 12 BCD digits")
    return text


def frame(seq: int, address: int, kind: int, body: bytes) -> bytes:
    """One complete frame, escaped, ready for the line."""
    if not 0 <= seq < SEQ_MODULUS:
        raise ProtocolError(f"sequence number {seq} is outside 0–65535")
    if not 0 <= address <= 0xFFFF:
        raise ProtocolError(f"address {address} is outside 0–65535")
    if len(body) > MAX_BODY:
        raise ProtocolError(f"frame body of {len(body)} bytes is over the {MAX_BODY}-byte limit")
    inner = HEADER.pack(VERSION, seq, address, kind, len(body)) + body
    inner += crc16(inner).to_bytes(CRC_SIZE, "big")
    return bytes([SOF]) + escape(inner)


# -- bodies --------------------------------------------------------------------------------------
def _short_string(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > MAX_ID_BYTES:
        raise ProtocolError(f"{what} {text!r} is over {MAX_ID_BYTES} bytes")
    return bytes([len(raw)]) + raw


def _content_bytes(content: Content) -> bytes:
    if content.kind is ContentKind.NONE:
        return b""
    if content.kind is ContentKind.AUDIO_ID:
        return content.audio_id.to_bytes(4, "big")
    codec = "gb18030" if content.kind is ContentKind.TEXT_GB18030 else "utf-8"
    return content.text.encode(codec)


def message_body(command: Command) -> bytes:
    """The body of PLAY, TEST and STOP (one layout for all three); STATUS has none."""
    if command.kind is CommandKind.STATUS:
        return b""
    if not 1 <= command.repeat <= 255 and command.kind is not CommandKind.STOP:
        raise ProtocolError(f"repeat {command.repeat} is outside 1–255")
    volume = VOLUME_DEFAULT if command.volume is None else command.volume
    if not 0 <= volume <= 100 and volume != VOLUME_DEFAULT:
        raise ProtocolError(f"volume {command.volume} is outside 0–100")
    if not 0 <= command.expires <= 0xFFFF_FFFF:
        raise ProtocolError(f"expiry {command.expires} does not fit 32 bits")
    if not 0 <= command.delivery_id <= 0xFFFF_FFFF_FFFF_FFFF:
        raise ProtocolError(f"delivery id {command.delivery_id} does not fit 64 bits")
    if len(command.areas) > MAX_AREAS:
        raise ProtocolError(f"{len(command.areas)} areas; a frame carries at most {MAX_AREAS}")
    if len(command.references) > MAX_REFERENCES:
        raise ProtocolError(
            f"{len(command.references)} references; a frame carries at most {MAX_REFERENCES}"
        )
    content = _content_bytes(command.content)
    if len(content) > MAX_CONTENT:
        raise ProtocolError(f"content of {len(content)} bytes is over {MAX_CONTENT}")
    parts = [
        _MESSAGE_HEAD.pack(
            int(command.flags),
            int(command.level),
            command.repeat & 0xFF,
            volume,
            command.expires,
            command.delivery_id,
        ),
        _short_string(command.warning_id, "warning id"),
        bytes([len(command.areas)]),
        *(bcd_area(a) for a in command.areas),
        struct.pack(">BH", int(command.content.kind), len(content)),
        content,
        bytes([len(command.references)]),
        *(_short_string(r, "reference") for r in command.references),
    ]
    return b"".join(parts)


def reply_body(reply: Reply) -> bytes:
    if isinstance(reply, StatusReport):
        firmware = reply.firmware.encode("ascii", "replace")[:255]
        return (
            _STATUS_BODY.pack(
                ResultCode.OK,
                int(reply.state),
                reply.frequency_hz,
                round(reply.forward_power_w * 10),
                round(reply.reflected_power_w * 10),
                int(reply.faults),
                reply.temperature_c,
            )
            + bytes([len(firmware)])
            + firmware
        )
    body = bytes([int(reply.result)])
    if reply.result is ResultCode.BUSY:
        body += reply.retry_after.to_bytes(2, "big")
    elif reply.result is ResultCode.UNKNOWN_AREA:
        body += bytes([len(reply.unknown_areas)]) + b"".join(
            bcd_area(a) for a in reply.unknown_areas[:MAX_AREAS]
        )
    elif reply.result is ResultCode.FAULT:
        body += int(reply.faults).to_bytes(2, "big")
    return body


class _Reader:
    """Reads a body front to back; running off its end is a :class:`ProtocolError`."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._data):
            raise ProtocolError(f"body ends after {len(self._data)} bytes; a field is missing")
        chunk = self._data[self._at : self._at + size]
        self._at += size
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def short_string(self) -> str:
        raw = self.take(self.byte())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"string {raw!r} is not UTF-8") from exc

    @property
    def left(self) -> int:
        return len(self._data) - self._at


def parse_message_body(kind: CommandKind, body: bytes) -> Command:
    if kind is CommandKind.STATUS:
        return Command(kind)
    reader = _Reader(body)
    flags, level, repeat, volume, expires, delivery = _MESSAGE_HEAD.unpack(
        reader.take(_MESSAGE_HEAD.size)
    )
    warning_id = reader.short_string()
    areas = tuple(area_of_bcd(reader.take(6)) for _ in range(reader.byte()))
    content_kind_byte, size = struct.unpack(">BH", reader.take(3))
    raw = reader.take(size)
    try:
        content_kind = ContentKind(content_kind_byte)
    except ValueError as exc:
        raise ProtocolError(f"unknown content type {content_kind_byte:#04x}") from exc
    if content_kind is ContentKind.NONE:
        content = Content()
    elif content_kind is ContentKind.AUDIO_ID:
        if size != 4:
            raise ProtocolError(f"audio id of {size} bytes; it is 4")
        content = Content.of_audio(int.from_bytes(raw, "big"))
    else:
        codec = "gb18030" if content_kind is ContentKind.TEXT_GB18030 else "utf-8"
        try:
            content = Content.of_text(raw.decode(codec), content_kind)
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"text is not valid {codec}") from exc
    references = tuple(reader.short_string() for _ in range(reader.byte()))
    try:
        level_value = Level(level)
    except ValueError as exc:
        raise ProtocolError(f"unknown level {level}") from exc
    return Command(
        kind=kind,
        warning_id=warning_id,
        delivery_id=delivery,
        level=level_value,
        flags=Flags(flags),
        expires=expires,
        repeat=repeat,
        volume=None if volume == VOLUME_DEFAULT else volume,
        areas=areas,
        content=content,
        references=references,
    )


def parse_reply_body(kind: CommandKind, body: bytes) -> Ack | StatusReport:
    reader = _Reader(body)
    try:
        result = ResultCode(reader.byte())
    except ValueError as exc:
        raise ProtocolError(f"unknown result code {body[0]:#04x}") from exc
    if kind is CommandKind.STATUS and result is ResultCode.OK:
        reader = _Reader(body)
        _, state, frequency, forward, reflected, faults, temperature = _STATUS_BODY.unpack(
            reader.take(_STATUS_BODY.size)
        )
        firmware = reader.take(reader.byte()).decode("ascii", "replace")
        try:
            state_value = TransmitterState(state)
        except ValueError as exc:
            raise ProtocolError(f"unknown transmitter state {state:#04x}") from exc
        return StatusReport(
            state=state_value,
            frequency_hz=frequency,
            forward_power_w=forward / 10,
            reflected_power_w=reflected / 10,
            faults=FaultFlag(faults),
            temperature_c=temperature,
            firmware=firmware,
        )
    # The extras are optional: a minimal device may answer with the result byte alone.
    if result is ResultCode.BUSY and reader.left >= 2:
        return Ack(kind, result, retry_after=reader.uint(2))
    if result is ResultCode.UNKNOWN_AREA and reader.left >= 1:
        count = reader.byte()
        areas = tuple(area_of_bcd(reader.take(6)) for _ in range(count))
        return Ack(kind, result, unknown_areas=areas)
    if result is ResultCode.FAULT and reader.left >= 2:
        return Ack(kind, result, faults=FaultFlag(reader.uint(2)))
    return Ack(kind, result)


def parse_frame(kind_byte: int, body: bytes) -> Command | Ack | StatusReport:
    """The message of a frame whose CRC checked out."""
    try:
        kind = CommandKind(kind_byte & ~REPLY_BIT)
    except ValueError as exc:
        raise ProtocolError(f"unknown frame type {kind_byte:#04x}") from exc
    if kind_byte & REPLY_BIT:
        return parse_reply_body(kind, body)
    return parse_message_body(kind, body)


# -- the streaming decoder ---------------------------------------------------------------------
class TocsinV1Decoder:
    """Turns the bytes of a serial line, in chunks split anywhere, into frames.

    Its memory is bounded: it holds at most one frame (``HEADER + MAX_BODY + CRC`` unescaped
    bytes). Bytes outside a frame are skipped and counted in :attr:`discarded`; a frame that
    cannot be read is reported as :class:`Garbled` (never raised), and the decoder waits for
    the next start marker. A ``7E`` always starts a new frame, so no corruption can hold up
    the frames that follow it.
    """

    def __init__(self, *, max_body: int = MAX_BODY) -> None:
        self._max_body = max_body
        self._buf = bytearray()
        self._in_frame = False
        self._escaped = False
        self._need = 0
        #: Bytes skipped while looking for a start marker.
        self.discarded = 0

    @property
    def buffered(self) -> int:
        """Bytes of a partial frame held (never more than one frame's worth)."""
        return len(self._buf) if self._in_frame else 0

    def reset(self) -> None:
        """Forget a partial frame (the port was reopened)."""
        self._buf.clear()
        self._in_frame = False
        self._escaped = False

    def _start(self) -> None:
        self._buf.clear()
        self._in_frame = True
        self._escaped = False
        self._need = HEADER.size

    def _garbled(self, reason: str) -> Garbled:
        self._in_frame = False
        if len(self._buf) < HEADER.size:
            return Garbled(reason)
        _, seq, address, kind, _ = HEADER.unpack_from(self._buf)
        return Garbled(reason, seq, address, kind)

    def feed(self, data: bytes) -> list[Decoded]:
        out: list[Decoded] = []
        at, end = 0, len(data)
        buf = self._buf
        while at < end:
            if not self._in_frame:
                found = data.find(SOF, at)
                if found < 0:
                    self.discarded += end - at
                    break
                self.discarded += found - at
                at = found + 1
                self._start()
                continue
            byte = data[at]
            at += 1
            if byte == SOF:
                if buf or self._escaped:
                    out.append(self._garbled(f"frame cut short after {len(buf)} bytes"))
                self._start()
                continue
            if self._escaped:
                self._escaped = False
                if byte not in (SOF ^ ESC_XOR, ESC ^ ESC_XOR):
                    out.append(self._garbled(f"invalid escape 7d {byte:02x}"))
                    continue
                byte ^= ESC_XOR
            elif byte == ESC:
                self._escaped = True
                continue
            buf.append(byte)
            if len(buf) < self._need:
                continue
            if len(buf) == HEADER.size:
                version, _, _, _, length = HEADER.unpack_from(buf)
                if version != VERSION:
                    out.append(self._garbled(f"unknown version {version:#04x}"))
                    continue
                if length > self._max_body:
                    out.append(self._garbled(f"length {length} over the {self._max_body} limit"))
                    continue
                self._need = HEADER.size + length + CRC_SIZE
                if len(buf) < self._need:
                    continue
            out.append(self._finish())
        return out

    def _finish(self) -> Decoded:
        buf = bytes(self._buf)
        self._in_frame = False
        _, seq, address, kind, _ = HEADER.unpack_from(buf)
        inner, crc = buf[:-CRC_SIZE], int.from_bytes(buf[-CRC_SIZE:], "big")
        if crc16(inner) != crc:
            return Garbled(f"bad CRC {crc:04x}, expected {crc16(inner):04x}", seq, address, kind)
        try:
            message = parse_frame(kind, inner[HEADER.size :])
        except ProtocolError as exc:
            return Garbled(f"malformed frame: {exc}", seq, address, kind)
        except (struct.error, ValueError) as exc:  # a value no field can hold
            return Garbled(f"malformed frame: {exc}", seq, address, kind)
        return Received(seq, address, message)


class TocsinV1Profile:
    """Tocsin's own framing (see the module docstring and PROTOCOL.md)."""

    name: str = "tocsin-v1"
    description: str = (
        "Tocsin framed serial protocol v1: 7E start marker with byte stuffing, CRC-16/CCITT-FALSE"
    )
    max_areas: int = MAX_AREAS
    max_content_bytes: int = MAX_CONTENT
    max_references: int = MAX_REFERENCES
    content_kinds: frozenset[ContentKind] = frozenset(ContentKind)
    seq_modulus: int = SEQ_MODULUS

    def parse_address(self, text: str) -> int:
        """A transmitter's address as the directory gives it: decimal (``"12"``) or hex
        (``"0x000c"``), 1–65534."""
        raw = text.strip()
        try:
            value = int(raw, 16) if raw.lower().startswith("0x") else int(raw, 10)
        except ValueError:
            raise ProtocolError(
                f"transmitter address {text!r} is not a number (decimal, or hex as 0x…)"
            ) from None
        if not ADDRESS_MIN <= value <= ADDRESS_MAX:
            raise ProtocolError(f"transmitter address {text!r} is outside 1–65534")
        return value

    def encode_command(self, command: Command, *, seq: int, address: int) -> bytes:
        return frame(seq, address, int(command.kind), message_body(command))

    def encode_reply(self, reply: Reply, *, seq: int, address: int) -> bytes:
        kind = CommandKind.STATUS if isinstance(reply, StatusReport) else reply.command
        return frame(seq, address, int(kind) | REPLY_BIT, reply_body(reply))

    def decoder(self) -> TocsinV1Decoder:
        return TocsinV1Decoder()

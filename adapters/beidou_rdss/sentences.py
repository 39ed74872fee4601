"""BeiDou RDSS terminal sentences: the NMEA-style text protocol of the BeiDou-2 RDSS user
terminal interface ("通用数据接口 2.1"), which vendors often call the "4.0" protocol after the
BeiDou-1 binary one it replaced (``$TXSQ``/``$FKXX``…). See README.md for the layouts, the
sources and where a choice had to be made.

A sentence is ``$`` + address (talker ``CC`` from the computer, ``BD`` from the terminal, then
the three-letter type) + ``,field`` … + ``*hh`` + CR LF, where ``hh`` is the XOR of every byte
between ``$`` and ``*`` in upper-case hex. Everything on the wire is ASCII: message content is
carried as hex of its GB2312/GB18030 bytes, so no GB byte can be mistaken for a delimiter.

Written here rather than taken from a library: the NMEA 0183 packages on PyPI (pynmea2,
pynmeagps) know GNSS sentences but none of the RDSS ones, and the framing is a few lines; the
tests check it against sentences published by terminal vendors.

Parsing is strict and bounded: a sentence longer than :data:`MAX_SENTENCE`, with non-ASCII
bytes, a wrong checksum, a missing field or a field out of range raises
:class:`SentenceError` naming the sentence and the field.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

#: Longest sentence accepted, CR LF included. A level-4 message is 106 bytes (212 hex digits);
#: the longest inbound message the system delivers (1680 bits) is 420 hex digits.
MAX_SENTENCE = 1024
#: At most this many fields in one sentence (the widest, $BDBSI, has 12).
MAX_FIELDS = 40
#: User (card) ids are 21-bit numbers, written with 7 digits.
MAX_USER_ID = 2_097_151
#: First byte of a mixed-mode (混发) message: marks the content as GB bytes mixed with ASCII.
MIXED_MARKER = 0xA4
#: The request to reply that a warning ends with (the engine's "收到请回复1。" without the stop).
REPLY_PROMPT = "收到请回复1"
#: Message length per communication level (通信等级) of the card, in bits of message content.
#: Level 1–4 are the civil levels of the RDSS service; see README.md ("Message length").
COMM_LEVEL_BITS: dict[int, int] = {1: 110, 2: 408, 3: 628, 4: 848}

_ADDRESS = re.compile(r"[A-Z]{5}")
_HEX = re.compile(r"[0-9A-Fa-f]*")
_FORBIDDEN_IN_FIELD = frozenset(",*$!\r\n")


class SentenceError(ValueError):
    """A sentence that cannot be read or written; names the sentence and the field."""

    def __init__(self, message: str, *, sentence: str = "", field: str = "") -> None:
        where = " ".join(part for part in (sentence and f"${sentence}", field) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.sentence = sentence
        self.field = field


class MessageTooLong(ValueError):
    """Not even the part of a message that must be kept fits the card's message length."""


# -- framing ------------------------------------------------------------------------------------
def checksum(body: bytes) -> int:
    """XOR of the bytes between ``$`` and ``*``."""
    return reduce(lambda acc, byte: acc ^ byte, body, 0)


def encode(address: str, fields: Sequence[str]) -> bytes:
    """One sentence, checksum and CR LF included."""
    if not _ADDRESS.fullmatch(address):
        raise SentenceError("address must be five capital letters", sentence=address)
    for i, value in enumerate(fields, start=1):
        if not value.isascii() or _FORBIDDEN_IN_FIELD.intersection(value):
            raise SentenceError(
                f"field {i} {value[:20]!r} must be ASCII without , * $ ! CR LF", sentence=address
            )
    body = ",".join((address, *fields)).encode("ascii")
    sentence = b"$" + body + b"*" + f"{checksum(body):02X}".encode() + b"\r\n"
    if len(sentence) > MAX_SENTENCE:
        raise SentenceError(f"{len(sentence)} bytes, longer than {MAX_SENTENCE}", sentence=address)
    return sentence


@dataclass(frozen=True, slots=True)
class RawSentence:
    """A sentence whose framing and checksum are right: its address and fields."""

    address: str
    fields: tuple[str, ...]

    @property
    def kind(self) -> str:
        """The sentence type without the talker: ``TXA`` for ``CCTXA``."""
        return self.address[2:]

    def field(self, index: int, name: str) -> str:
        """Field ``index`` (1-based, as the protocol numbers them); missing → SentenceError."""
        if index > len(self.fields):
            raise SentenceError(
                f"missing (the sentence has {len(self.fields)} fields)",
                sentence=self.address,
                field=f"field {index} ({name})",
            )
        return self.fields[index - 1]

    def error(self, message: str, index: int, name: str) -> SentenceError:
        return SentenceError(message, sentence=self.address, field=f"field {index} ({name})")


def parse(line: bytes) -> RawSentence:
    """A sentence from one line (CR LF optional). Raises :class:`SentenceError`."""
    if len(line) > MAX_SENTENCE:
        raise SentenceError(f"{len(line)} bytes, longer than {MAX_SENTENCE}")
    line = line.rstrip(b"\r\n")
    if not line.startswith(b"$"):
        raise SentenceError(f"does not start with '$': {line[:16]!r}")
    star = line.rfind(b"*")
    if star < 0 or len(line) - star != 3:
        raise SentenceError(f"no '*hh' checksum at the end: {line[-8:]!r}")
    body = line[1:star]
    address = body.split(b",", 1)[0].decode("ascii", "replace")
    if not line.isascii():
        at = next(i for i, byte in enumerate(line) if byte > 0x7F)
        raise SentenceError(
            f"non-ASCII byte 0x{line[at]:02X} at offset {at}", sentence=address, field="text"
        )
    text = body.decode("ascii")
    if not _ADDRESS.fullmatch(address):
        raise SentenceError(f"address {address[:10]!r} is not five capital letters")
    try:
        expected = int(line[star + 1 :], 16)
    except ValueError:
        raise SentenceError(
            f"checksum {line[star + 1 :]!r} is not hex", sentence=address, field="checksum"
        ) from None
    actual = checksum(body)
    if actual != expected:
        raise SentenceError(
            f"checksum {expected:02X} does not match the content ({actual:02X})",
            sentence=address,
            field="checksum",
        )
    parts = text.split(",")
    if len(parts) - 1 > MAX_FIELDS:
        raise SentenceError(f"more than {MAX_FIELDS} fields", sentence=address)
    return RawSentence(address, tuple(parts[1:]))


# -- field helpers ------------------------------------------------------------------------------
def _int(raw: RawSentence, index: int, name: str, *, low: int, high: int) -> int:
    value = raw.field(index, name)
    if not value.isdigit() or not value.isascii():
        raise raw.error(f"{value[:12]!r} is not a number", index, name)
    number = int(value)
    if not low <= number <= high:
        raise raw.error(f"{number} is outside {low}–{high}", index, name)
    return number


def _flag(raw: RawSentence, index: int, name: str, *, yes: str = "Y", no: str = "N") -> bool:
    value = raw.field(index, name)
    if value not in (yes, no):
        raise raw.error(f"{value[:12]!r} is neither {yes} nor {no}", index, name)
    return value == yes


def _user_id(raw: RawSentence, index: int, name: str) -> str:
    return f"{_int(raw, index, name, low=0, high=MAX_USER_ID):07d}"


def _expect(raw: RawSentence, kind: str) -> None:
    if raw.kind != kind:
        raise SentenceError(f"expected a {kind} sentence", sentence=raw.address)


def user_id(value: str, *, allow_zero: bool = False) -> str:
    """A BeiDou user (card) id as the sentences write it (7 digits); ValueError when it is none.
    0 is no card (a terminal's empty slot, a vendor's placeholder): never a destination."""
    text = value.strip()
    low = 0 if allow_zero else 1
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= MAX_USER_ID:
        raise ValueError(f"{value!r} is not a BeiDou user id (a number 1–{MAX_USER_ID})")
    return f"{int(text):07d}"


# -- message content ----------------------------------------------------------------------------
class CommType(enum.IntEnum):
    """通信类别 of a $CCTXA: what the centre is asked to do with the message."""

    URGENT = 0  # 特快
    NORMAL = 1  # 普通


class Encoding(enum.IntEnum):
    """传输方式: how the content field is written."""

    #: 汉字: GB2312 double-byte characters only (ASCII is widened to its full-width form).
    CHINESE = 0
    #: 代码: bytes (ASCII in practice); some terminals send bare digits.
    CODE = 1
    #: 混发: the marker byte A4, then GB18030 text mixing Chinese and ASCII.
    MIXED = 2


def _widen(text: str) -> str:
    """ASCII as GB2312 full-width characters (Chinese mode carries double-byte codes only)."""
    return "".join(
        "\u3000" if c == " " else chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text
    )


def prepare_text(text: str, encoding: Encoding) -> str:
    """The text as the mode can carry it: Chinese mode widens ASCII; line breaks become spaces
    (a terminal shows one paragraph). Raises ValueError for characters the mode cannot carry."""
    flat = " ".join(text.split("\n")).replace("\r", "")
    if encoding is Encoding.CHINESE:
        flat = _widen(flat)
    content_bytes(flat, encoding)  # raises when a character cannot be carried
    return flat


def content_bytes(text: str, encoding: Encoding) -> bytes:
    """The message bytes as the terminal transmits them (marker included)."""
    try:
        if encoding is Encoding.CHINESE:
            data = text.encode("gb2312")
            if len(data) != 2 * len(text):
                bad = next(c for c in text if len(c.encode("gb2312")) != 2)
                raise ValueError(f"{bad!r} is not a double-byte GB2312 character")
            return data
        data = text.encode("gb18030")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{exc.object[exc.start : exc.end]!r} cannot be sent as GB text") from None
    return bytes([MIXED_MARKER]) + data if encoding is Encoding.MIXED else data


def content_bits(text: str, encoding: Encoding) -> int:
    """What the text costs of the card's message length: 8 bits per byte sent (see README)."""
    return 8 * len(content_bytes(text, encoding))


def encode_content(text: str, encoding: Encoding) -> str:
    """The content field of a $CCTXA: the message bytes in upper-case hex."""
    return content_bytes(text, encoding).hex().upper()


def decode_content(content: str, encoding: Encoding, *, sentence: str = "BDTXR") -> str:
    """The text of a content field. Code mode tolerates bare digits (terminals that send a
    reply "1" as the digit itself): content that is not whole printable bytes is the text."""
    field = "content"
    if not _HEX.fullmatch(content):
        if encoding is Encoding.CODE and content.isascii() and content.isprintable():
            return content
        raise SentenceError(f"{content[:20]!r} is not hex", sentence=sentence, field=field)
    if len(content) % 2:
        if encoding is Encoding.CODE:
            return content
        raise SentenceError("odd number of hex digits", sentence=sentence, field=field)
    data = bytes.fromhex(content)
    if encoding is Encoding.MIXED and data[:1] == bytes([MIXED_MARKER]):
        data = data[1:]
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError as exc:
        if encoding is Encoding.CODE:
            return content
        raise SentenceError(
            f"not GB18030 text (byte {exc.start})", sentence=sentence, field=field
        ) from None
    if encoding is Encoding.CODE and not text.isprintable():
        return content
    return text


# -- sentences ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SendRequest:
    """$CCTXA (通信申请): send ``text`` to the terminal with user id ``destination``."""

    destination: str
    text: str
    encoding: Encoding = Encoding.MIXED
    comm_type: CommType = CommType.NORMAL

    def encode(self) -> bytes:
        return encode(
            "CCTXA",
            (
                user_id(self.destination, allow_zero=True),
                str(int(self.comm_type)),
                str(int(self.encoding)),
                encode_content(self.text, self.encoding),
            ),
        )

    @classmethod
    def parse(cls, raw: RawSentence) -> SendRequest:
        _expect(raw, "TXA")
        destination = _user_id(raw, 1, "destination user id")
        comm = CommType(_int(raw, 2, "communication type", low=0, high=1))
        encoding = Encoding(_int(raw, 3, "encoding", low=0, high=2))
        content = raw.field(4, "content")
        if encoding is not Encoding.CODE and not content:
            raise raw.error("empty", 4, "content")
        text = decode_content(content, encoding, sentence=raw.address)
        return cls(destination, text, encoding, comm)


class Suppression(enum.IntEnum):
    """发射抑制指示 of a $BDFKI: why a transmission was held back."""

    NONE = 0
    #: 频度未到: the card's service interval since the last transmission has not passed.
    FREQUENCY = 1
    #: 接收到系统的抑制指令: the centre told the terminal to stop transmitting.
    SYSTEM = 2
    #: 无线电静默: the terminal is set to radio silence.
    SILENCE = 3
    #: 功率未锁定: no beam received well enough to transmit (no signal).
    NO_SIGNAL = 4
    #: 未检测到IC模块: no card (or it cannot be read).
    NO_CARD = 5
    #: 权限不足: the card may not send this (BeiDou-3 terminals).
    NOT_PERMITTED = 6


SUPPRESSION_REASONS: dict[int, str] = {
    Suppression.NONE: "refused without a reason",
    Suppression.FREQUENCY: "service interval not yet passed (频度未到)",
    Suppression.SYSTEM: "transmission suppressed by the centre (系统抑制)",
    Suppression.SILENCE: "terminal set to radio silence (无线电静默)",
    Suppression.NO_SIGNAL: "no signal: beam power not locked (功率未锁定)",
    Suppression.NO_CARD: "no user card detected (未检测到IC模块)",
    Suppression.NOT_PERMITTED: "the card is not permitted to send this (权限不足)",
}


@dataclass(frozen=True, slots=True)
class Feedback:
    """$BDFKI (反馈信息): the terminal's answer to a command (``TXA``, ``ICA``, ``RMO``…)."""

    command: str
    #: 指令执行情况: Y = done (the message was transmitted).
    ok: bool
    #: 频度设置指示: Y = the frequency setting was right.
    frequency_ok: bool = True
    suppression: int = Suppression.NONE
    #: 等待时间: seconds until the next transmission is allowed.
    wait: int = 0

    @property
    def frequency_limited(self) -> bool:
        return not self.ok and (
            self.suppression == Suppression.FREQUENCY
            or (self.suppression == Suppression.NONE and (self.wait > 0 or not self.frequency_ok))
        )

    @property
    def reason(self) -> str:
        if self.ok:
            return ""
        if self.frequency_limited:
            return SUPPRESSION_REASONS[Suppression.FREQUENCY]
        return SUPPRESSION_REASONS.get(
            self.suppression, f"refused with suppression code {self.suppression}"
        )

    def encode(self) -> bytes:
        minutes, seconds = divmod(self.wait, 60)
        return encode(
            "BDFKI",
            (
                self.command,
                "Y" if self.ok else "N",
                "Y" if self.frequency_ok else "N",
                str(int(self.suppression)),
                f"{minutes:02d}{seconds:02d}",
            ),
        )

    @classmethod
    def parse(cls, raw: RawSentence) -> Feedback:
        _expect(raw, "FKI")
        first = raw.field(1, "command")
        if len(first) == 6 and first.isdigit():
            # BeiDou-3 terminals put the time first: time, command, Y/N, reason, wait (seconds).
            command = raw.field(2, "command")
            if not re.fullmatch(r"[A-Z]{3}", command):
                raise raw.error(f"{command[:8]!r} is not a command name", 2, "command")
            return cls(
                command=command,
                ok=_flag(raw, 3, "result"),
                suppression=_int(raw, 4, "suppression", low=0, high=99),
                wait=_int(raw, 5, "wait seconds", low=0, high=86_400),
            )
        if not re.fullmatch(r"[A-Z]{3}", first):
            raise raw.error(f"{first[:8]!r} is not a command name", 1, "command")
        return cls(
            command=first,
            ok=_flag(raw, 2, "result"),
            frequency_ok=_flag(raw, 3, "frequency setting"),
            suppression=_int(raw, 4, "suppression", low=0, high=99),
            wait=_wait(raw, 5),
        )


def _wait(raw: RawSentence, index: int) -> int:
    """等待时间 as seconds. Written ``mmss`` (minutes, seconds); a terminal that writes plain
    seconds is read right whenever the last two digits reach 60 or the field is not 4 long."""
    value = raw.field(index, "wait time")
    if value == "":
        return 0
    number = _int(raw, index, "wait time", low=0, high=9999)
    if len(value) == 4 and number % 100 < 60:
        return (number // 100) * 60 + number % 100
    return number


@dataclass(frozen=True, slots=True)
class CardQuery:
    """$CCICA (IC检测): ask the terminal for its card (answered by $BDICI)."""

    #: 0 = this terminal's card; 1 = a commander's subordinates.
    query: int = 0
    frame: int = 0

    def encode(self) -> bytes:
        return encode("CCICA", (str(self.query), str(self.frame)))

    @classmethod
    def parse(cls, raw: RawSentence) -> CardQuery:
        _expect(raw, "ICA")
        return cls(
            _int(raw, 1, "query type", low=0, high=9),
            _int(raw, 2, "frame number", low=0, high=99),
        )


@dataclass(frozen=True, slots=True)
class CardInfo:
    """$BDICI (IC信息): the card in the terminal."""

    user_id: str
    serial: str
    broadcast_id: str
    user_type: int
    #: 服务频度: the least time between two transmissions, in seconds.
    interval: float
    #: 通信等级: decides the message length (:data:`COMM_LEVEL_BITS`).
    level: int
    encrypted: bool = False
    subordinates: int = 0

    @property
    def present(self) -> bool:
        """False when the terminal answers for an empty slot (user id 0)."""
        return int(self.user_id) != 0

    @property
    def max_bits(self) -> int | None:
        return COMM_LEVEL_BITS.get(self.level)

    def encode(self) -> bytes:
        interval = f"{self.interval:g}"
        return encode(
            "BDICI",
            (
                self.user_id,
                self.serial,
                self.broadcast_id,
                str(self.user_type),
                interval,
                str(self.level),
                "E" if self.encrypted else "N",
                str(self.subordinates),
            ),
        )

    @classmethod
    def parse(cls, raw: RawSentence) -> CardInfo:
        _expect(raw, "ICI")
        interval_text = raw.field(5, "service interval")
        try:
            interval = float(interval_text)
        except ValueError:
            what = f"{interval_text[:12]!r} is not a number"
            raise raw.error(what, 5, "service interval") from None
        if not 0 <= interval <= 86_400:
            raise raw.error(f"{interval:g} s is outside 0–86400", 5, "service interval")
        serial = raw.field(2, "serial number")
        if not serial.isalnum() or not serial.isascii():
            raise raw.error(f"{serial[:12]!r} is not a serial number", 2, "serial number")
        return cls(
            user_id=_user_id(raw, 1, "user id"),
            serial=serial,
            broadcast_id=_user_id(raw, 3, "broadcast id"),
            user_type=_int(raw, 4, "user type", low=0, high=99),
            interval=interval,
            level=_int(raw, 6, "communication level", low=0, high=9),
            encrypted=_flag(raw, 7, "encryption", yes="E", no="N"),
            subordinates=_int(raw, 8, "subordinate users", low=0, high=99_999),
        )


@dataclass(frozen=True, slots=True)
class OutputRequest:
    """$CCRMO: switch a sentence's periodic output on or off (``$CCRMO,BSI,2,5``: power every
    5 s). Mode 1 = off, 2 = on, 3 = all off, 4 = all on."""

    target: str
    mode: int
    interval: int = 0

    def encode(self) -> bytes:
        interval = str(self.interval) if self.mode in (2, 4) else ""
        return encode("CCRMO", (self.target, str(self.mode), interval))

    @classmethod
    def parse(cls, raw: RawSentence) -> OutputRequest:
        _expect(raw, "RMO")
        target = raw.field(1, "target sentence")
        if target and not re.fullmatch(r"[A-Z]{3}", target):
            raise raw.error(f"{target[:8]!r} is not a sentence type", 1, "target sentence")
        mode = _int(raw, 2, "mode", low=1, high=4)
        interval = 0
        if len(raw.fields) >= 3 and raw.fields[2] != "":
            text = raw.fields[2]
            try:
                interval = round(float(text))
            except ValueError:
                raise raw.error(f"{text[:12]!r} is not a number", 3, "interval") from None
        return cls(target, mode, interval)


@dataclass(frozen=True, slots=True)
class BeamInfo:
    """$BDBSI (波束信息): the beams the terminal responds on and each beam's power (0–4)."""

    response_beam: int
    time_diff_beam: int
    powers: tuple[int, ...]

    @property
    def best(self) -> int:
        return max(self.powers, default=0)

    def encode(self) -> bytes:
        return encode(
            "BDBSI",
            (str(self.response_beam), str(self.time_diff_beam), *(str(p) for p in self.powers)),
        )

    @classmethod
    def parse(cls, raw: RawSentence) -> BeamInfo:
        _expect(raw, "BSI")
        powers = tuple(_int(raw, 3 + i, f"beam {i + 1} power", low=0, high=4) for i in range(10))
        return cls(
            _int(raw, 1, "response beam", low=0, high=10),
            _int(raw, 2, "time-difference beam", low=0, high=10),
            powers,
        )


class InfoType(enum.IntEnum):
    """信息类别 of a $BDTXR."""

    NORMAL = 1
    URGENT = 2
    BROADCAST = 3
    #: 4, 5: messages fetched from the centre by a query (by newest / by sender).
    QUERY_LATEST = 4
    QUERY_SENDER = 5


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """$BDTXR (通信信息): a message received from another terminal."""

    sender: str
    text: str
    encoding: Encoding = Encoding.MIXED
    info_type: InfoType = InfoType.NORMAL
    #: 发信时间 ``hhmm``: only for messages fetched by a query (types 4 and 5), else empty.
    sent_at: str = ""

    def encode(self) -> bytes:
        return encode(
            "BDTXR",
            (
                str(int(self.info_type)),
                user_id(self.sender, allow_zero=True),
                str(int(self.encoding)),
                self.sent_at,
                encode_content(self.text, self.encoding),
            ),
        )

    @classmethod
    def parse(cls, raw: RawSentence) -> InboundMessage:
        _expect(raw, "TXR")
        info = InfoType(_int(raw, 1, "information type", low=1, high=5))
        sender = _user_id(raw, 2, "sender user id")
        encoding = Encoding(_int(raw, 3, "encoding", low=0, high=2))
        sent_at = raw.field(4, "send time")
        if sent_at and not re.fullmatch(r"([01][0-9]|2[0-3])[0-5][0-9]", sent_at):
            raise raw.error(f"{sent_at[:8]!r} is not hhmm", 4, "send time")
        text = decode_content(raw.field(5, "content"), encoding, sentence=raw.address)
        return cls(sender, text, encoding, info, sent_at)


Sentence = SendRequest | Feedback | CardQuery | CardInfo | OutputRequest | BeamInfo | InboundMessage

_PARSERS: dict[str, type[Sentence]] = {
    "TXA": SendRequest,
    "FKI": Feedback,
    "ICA": CardQuery,
    "ICI": CardInfo,
    "RMO": OutputRequest,
    "BSI": BeamInfo,
    "TXR": InboundMessage,
}


def read(line: bytes) -> Sentence | RawSentence:
    """A line as the typed sentence it holds; a well-formed sentence of another type (a GNSS
    ``$GNRMC`` the terminal also prints) comes back as :class:`RawSentence`."""
    raw = parse(line)
    parser = _PARSERS.get(raw.kind)
    return raw if parser is None else parser.parse(raw)


# -- fitting a warning into one message ---------------------------------------------------------
def fit_message(
    full: str,
    *,
    lead: str,
    max_bits: int,
    encoding: Encoding,
    keep: str = "",
    prompt: str = REPLY_PROMPT,
    min_lead: int = 8,
) -> str:
    """The message to send when only ``max_bits`` fit in one RDSS message.

    ``full`` when it fits. Otherwise the warning headline-first: ``lead`` (status mark, level
    and headline), then ``。`` and the reply ``prompt``. A lead too long is cut on a character
    boundary and marked ``…``; the prompt stays as long as at least ``min_lead`` characters of
    the lead fit beside it, else it goes and the lead takes the room. ``keep`` (the start of
    ``lead``: a 【测试】 mark) is never cut: when not even it fits, :class:`MessageTooLong`.
    """
    full = prepare_text(full, encoding)
    if content_bits(full, encoding) <= max_bits:
        return full
    lead = prepare_text(lead, encoding)
    keep = prepare_text(keep, encoding)
    if not lead.startswith(keep):
        raise ValueError("keep must be the start of lead")
    tail = prepare_text(f"。{prompt}", encoding) if prompt else ""

    def fits(text: str) -> bool:
        return content_bits(text, encoding) <= max_bits

    if fits(lead + tail):
        return lead + tail
    ellipsis = prepare_text("…", encoding)
    if fits(lead) and len(lead) < len(keep) + min_lead:
        return lead  # a short lead whole rather than cut for the prompt
    for suffix, floor in ((tail, min(len(lead), len(keep) + min_lead)), ("", len(keep))):
        # The longest cut that fits: bits grow with the cut, so a binary search finds it.
        low, high = floor, len(lead) - 1
        best = -1
        while low <= high:
            middle = (low + high) // 2
            if fits(lead[:middle] + ellipsis + suffix):
                best, low = middle, middle + 1
            else:
                high = middle - 1
        if best >= 0:
            return lead[:best] + ellipsis + suffix
    if fits(keep):
        return keep
    raise MessageTooLong(
        f"not even {keep!r} fits in {max_bits} bits ({content_bits(keep, encoding)} needed)"
    )

"""What Tocsin and a wireless-broadcast transmitter say to each other, independent of how the
bytes are framed on the line: commands (play, stop, test, status query), their
acknowledgements and the status report. A framing profile (``profiles.py``) turns these into
bytes and back; the adapter, the simulator and every profile share them, so a vendor profile
only has to describe its byte layout.

Pure data and validation, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

#: A 12-digit statistical area code (province 2, city 2, county 2, town 3, village 3 digits).
AREA_CODE_DIGITS = 12


class ProtocolError(ValueError):
    """A command or reply that cannot be expressed or was received malformed; the message
    says what is wrong."""


class CommandKind(enum.IntEnum):
    """What a transmitter is asked to do. The values are tocsin-v1's command bytes."""

    #: Broadcast a warning (its text by TTS, or a pre-recorded clip) to the given areas.
    PLAY = 0x01
    #: Stop broadcasting (a Cancel): the listed warnings, or whatever plays when none listed.
    STOP = 0x02
    #: A test or exercise broadcast: announced as a test, never with the real alarm.
    TEST = 0x03
    #: Ask for the transmitter's state (frequency, power, faults, firmware).
    STATUS = 0x04


class ResultCode(enum.IntEnum):
    """A transmitter's answer to a command (tocsin-v1's result byte)."""

    OK = 0x00
    #: Already broadcasting something it will not interrupt; may say when to try again.
    BUSY = 0x01
    #: The command arrived with a bad CRC (the header was readable): send it again.
    BAD_CRC = 0x02
    #: None of the areas is served by this transmitter; lists the codes it does not know.
    UNKNOWN_AREA = 0x03
    #: The transmitter does not implement this command, content type or version.
    UNSUPPORTED = 0x04
    #: The transmitter cannot broadcast (power amplifier, antenna, TTS…); gives fault flags.
    FAULT = 0x05


#: What an installer reads in the delivery log for each result.
RESULT_REASONS: dict[ResultCode, str] = {
    ResultCode.OK: "ok",
    ResultCode.BUSY: "transmitter busy (broadcasting something else)",
    ResultCode.BAD_CRC: "transmitter received the command with a bad CRC",
    ResultCode.UNKNOWN_AREA: "transmitter serves none of the areas",
    ResultCode.UNSUPPORTED: "transmitter does not support the command",
    ResultCode.FAULT: "transmitter fault",
}


class FaultFlag(enum.IntFlag):
    """Faults a transmitter reports (a 16-bit mask in tocsin-v1)."""

    NONE = 0
    HIGH_VSWR = 0x0001  # antenna or feeder mismatch: reflected power too high
    OVER_TEMPERATURE = 0x0002
    AMPLIFIER = 0x0004  # power amplifier failed
    MAINS_LOST = 0x0008  # running on battery
    LOW_BATTERY = 0x0010
    AUDIO = 0x0020  # TTS engine or audio path failed
    PLL_UNLOCKED = 0x0040  # the exciter is off frequency
    STORAGE = 0x0080  # the pre-recorded clips cannot be read

    def names(self) -> list[str]:
        """The set flags' names, lower case (``["high_vswr", "mains_lost"]``)."""
        return [f.name.lower() for f in FaultFlag if f and f in self and f.name is not None]


class TransmitterState(enum.IntEnum):
    """What a transmitter is doing (the status report's state byte)."""

    IDLE = 0x00
    PLAYING = 0x01
    TESTING = 0x02
    FAULT = 0x03
    #: Powered but not on air (e.g. a maintenance switch).
    STANDBY = 0x04


class Level(enum.IntEnum):
    """Warning level byte: the national scale, Ⅰ (red, most severe) to Ⅳ (blue)."""

    NONE = 0
    RED = 1
    ORANGE = 2
    YELLOW = 3
    BLUE = 4


class ContentKind(enum.IntEnum):
    """What the transmitter broadcasts (the content type byte)."""

    #: No content: a STOP, a STATUS query, or a TEST that plays the built-in test tone.
    NONE = 0x00
    #: Text for the transmitter's TTS engine, GB18030-encoded (the default).
    TEXT_GB18030 = 0x01
    #: Text for the TTS engine, UTF-8-encoded.
    TEXT_UTF8 = 0x02
    #: A clip stored on the transmitter, by number (32-bit).
    AUDIO_ID = 0x03


#: Python codec of each text content kind.
TEXT_CODECS: dict[ContentKind, str] = {
    ContentKind.TEXT_GB18030: "gb18030",
    ContentKind.TEXT_UTF8: "utf-8",
}


class Flags(enum.IntFlag):
    """The command's flags byte."""

    NONE = 0
    #: The warning's status is Exercise (a drill).
    EXERCISE = 0x01
    #: The warning's status is Test (or Draft): a technical test.
    TEST = 0x02
    #: An Update: it replaces what is broadcast for the warnings it references.
    UPDATE = 0x04


@dataclass(frozen=True, slots=True)
class Content:
    """What to broadcast: text (for TTS) or the number of a stored clip, or nothing."""

    kind: ContentKind = ContentKind.NONE
    text: str = ""
    audio_id: int = 0

    @classmethod
    def of_text(cls, text: str, encoding: ContentKind = ContentKind.TEXT_GB18030) -> Content:
        if encoding not in TEXT_CODECS:
            raise ProtocolError(f"{encoding.name} is not a text content kind")
        return cls(kind=encoding, text=text)

    @classmethod
    def of_audio(cls, audio_id: int) -> Content:
        if not 0 <= audio_id <= 0xFFFF_FFFF:
            raise ProtocolError(f"audio id {audio_id} is outside 0–4294967295")
        return cls(kind=ContentKind.AUDIO_ID, audio_id=audio_id)


@dataclass(frozen=True, slots=True)
class Command:
    """One command to one transmitter. Which fields a kind uses:

    * PLAY / TEST: ``warning_id``, ``delivery_id``, ``level``, ``flags``, ``expires``,
      ``repeat``, ``volume``, ``areas``, ``content`` (a TEST without content plays the
      transmitter's built-in test announcement).
    * STOP: ``warning_id`` (the Cancel's own id), ``delivery_id``, ``areas``, ``references``
      (the warnings to stop; none: stop whatever is on air in those areas).
    * STATUS: nothing.
    """

    kind: CommandKind
    warning_id: str = ""
    #: The store's delivery id (0: none, e.g. a probe), so a device can log what it acted on.
    delivery_id: int = 0
    level: Level = Level.NONE
    flags: Flags = Flags.NONE
    #: Unix seconds after which the transmitter must not start broadcasting it (0: no limit).
    expires: int = 0
    #: How many times to broadcast it (1–255).
    repeat: int = 1
    #: 0–100, or None for the transmitter's own setting.
    volume: int | None = None
    #: 12-digit area codes; a code covers every area beneath it (trailing zero groups).
    areas: tuple[str, ...] = ()
    content: Content = field(default_factory=Content)
    references: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """A transmitter's answer to PLAY, STOP or TEST (and to a STATUS it cannot answer)."""

    #: The command it answers (tocsin-v1 echoes it as the reply type).
    command: CommandKind
    result: ResultCode
    #: For UNKNOWN_AREA: the codes of the command it does not serve.
    unknown_areas: tuple[str, ...] = ()
    #: For BUSY: seconds until it expects to be free (0: unknown).
    retry_after: int = 0
    #: For FAULT: what is wrong.
    faults: FaultFlag = FaultFlag.NONE


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A transmitter's answer to STATUS with result OK."""

    state: TransmitterState
    frequency_hz: int
    #: Forward and reflected power in watts (tocsin-v1 carries tenths of a watt).
    forward_power_w: float
    reflected_power_w: float
    faults: FaultFlag
    temperature_c: int
    firmware: str

    def detail(self) -> dict[str, object]:
        """As a device status detail (small, JSON-serialisable)."""
        return {
            "state": self.state.name.lower(),
            "frequency_mhz": round(self.frequency_hz / 1e6, 4),
            "forward_power_w": round(self.forward_power_w, 1),
            "reflected_power_w": round(self.reflected_power_w, 1),
            "faults": self.faults.names(),
            "temperature_c": self.temperature_c,
            "firmware": self.firmware,
        }


Reply = Ack | StatusReport


# -- area codes ----------------------------------------------------------------------------------
def normalise_area(code: str) -> str:
    """A 12-digit code; a 6-digit GB2260 county code is padded with zeros (the county itself).

    Raises :class:`ProtocolError` for anything else."""
    code = code.strip()
    if code.isascii() and code.isdigit():
        if len(code) == 6:
            return code + "000000"
        if len(code) == AREA_CODE_DIGITS:
            return code
    raise ProtocolError(f"area code {code!r} is not 12 (or 6) digits")


def area_prefix(code: str) -> str:
    """The significant part of a code: a county ``611002000000`` → ``611002``; the code
    covers every code starting with it."""
    for cut in (2, 4, 6, 9):
        if code[cut:] == "0" * (AREA_CODE_DIGITS - cut):
            return code[:cut]
    return code


def covers(outer: str, inner: str) -> bool:
    """Whether area ``outer`` is ``inner`` or one of its ancestors."""
    return inner.startswith(area_prefix(outer))


def overlaps(a: str, b: str) -> bool:
    """Whether one of the two areas lies within the other."""
    return covers(a, b) or covers(b, a)


def select_areas(warning_areas: tuple[str, ...], target_area: str, limit: int) -> tuple[str, ...]:
    """The areas a command addresses: the warning's own (normalised, deduplicated) — the
    transmitter's receivers match them hierarchically — or the target's village when the
    warning names none. When there are more than ``limit``, only those that cover the target
    or lie in its county are kept (or just the target's area)."""
    valid: list[str] = []
    for code in warning_areas:
        try:
            valid.append(normalise_area(code))
        except ProtocolError:
            continue
    areas = tuple(dict.fromkeys(valid))
    target = ""
    if target_area:
        try:
            target = normalise_area(target_area)
        except ProtocolError:
            target = ""
    if not areas:
        return (target,) if target else ()
    if len(areas) <= limit:
        return areas
    if not target:
        return areas[:limit]
    county = target[:6]
    near = tuple(a for a in areas if covers(a, target) or a.startswith(county))
    return near if 0 < len(near) <= limit else (target,)


# -- what a decoder yields -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Received:
    """A well-formed frame from the line: a command (what a device reads) or a reply (what
    Tocsin reads), with the sequence number and transmitter address of its header."""

    seq: int
    address: int
    message: Command | Ack | StatusReport


@dataclass(frozen=True, slots=True)
class Garbled:
    """A frame that started but could not be read (bad CRC, cut short, malformed). ``seq``
    and ``address`` are those of its header when the header was complete — untrusted, but
    enough to answer "bad CRC" or to resend early instead of waiting for a timeout."""

    reason: str
    seq: int | None = None
    address: int | None = None
    #: The header's frame type byte (a reply echoes it), when the header was complete.
    kind: int | None = None


Decoded = Received | Garbled

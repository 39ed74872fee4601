"""``[adapters.<name>.settings]`` of a ``serial_transmitter`` instance."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from adapters.serial_link.settings import SerialPortSettings
from adapters.serial_transmitter.messages import ContentKind, ProtocolError
from adapters.serial_transmitter.profiles import (
    DEFAULT_PROFILE,
    UnknownProfile,
    get_profile,
)
from dispatcher.durations import Seconds

#: Settings value → the content kind of text commands.
TEXT_ENCODINGS: dict[str, ContentKind] = {
    "gb18030": ContentKind.TEXT_GB18030,
    "utf-8": ContentKind.TEXT_UTF8,
}


class SerialTransmitterSettings(SerialPortSettings):
    """The serial line, its framing, and how Tocsin drives the transmitters on it."""

    #: Transmitter controllers mostly ship at 9600 baud.
    baudrate: int = 9600
    #: How long Tocsin waits for each acknowledgement before sending the frame again.
    command_timeout: Seconds = Field(default=2.0, gt=0, le=60)
    #: The framing the transmitters speak (``tocsin-v1``, or a vendor profile's name).
    profile: str = DEFAULT_PROFILE
    #: How many times an unanswered frame is sent again before the delivery is retried later.
    resends: int = Field(2, ge=0, le=10)
    #: The transmitters' ids on the line (decimal, or hex as ``0x…``): queried at start
    #: (none answering = not ready), by probe and by the status poll. Transmitters the adapter
    #: sends to are added to the poll by themselves.
    transmitters: tuple[str, ...] = ()
    #: Directory addresses that are not line ids (``"TX-611002101000" = 3``): address → id.
    addresses: dict[str, int] = Field(default_factory=dict)
    #: How often every known transmitter is asked for its status (0: never).
    status_interval: Seconds = Field(300.0, ge=0)
    #: How the warning text is encoded for the transmitters' TTS.
    text_encoding: Literal["gb18030", "utf-8"] = "gb18030"
    #: Longest text sent, in encoded bytes; a longer text is cut at a character boundary.
    max_text_bytes: int = Field(1024, ge=16, le=65535)
    #: Stored clips to broadcast instead of text: warning event (``"山洪"``) or level
    #: (``"red"``) → clip number on the transmitter. The event wins over the level.
    audio_clips: dict[str, int] = Field(default_factory=dict)
    #: How many times a transmitter broadcasts each warning.
    repeat: int = Field(2, ge=1, le=255)
    #: 0–100; the transmitter's own setting when absent.
    volume: int | None = Field(None, ge=0, le=100)
    #: A send() stops starting commands after this long (the rest are retried at once): keep
    #: it below the instance's send_timeout (30 s by default).
    batch_budget: Seconds = Field(20.0, gt=0)

    @field_validator("transmitters", mode="before")
    @classmethod
    def _ids_as_text(cls, value: object) -> object:
        # TOML gives ``[12, 13]`` as integers; hex ids come as strings.
        if isinstance(value, list | tuple):
            return tuple(
                str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value
            )
        return value

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        try:
            get_profile(value)
        except UnknownProfile as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("audio_clips")
    @classmethod
    def _clip_numbers(cls, value: dict[str, int]) -> dict[str, int]:
        for key, clip in value.items():
            if not 0 <= clip <= 0xFFFF_FFFF:
                raise ValueError(f"clip {key!r} = {clip} is outside 0–4294967295")
        return value

    @model_validator(mode="after")
    def _fits_the_profile(self) -> Self:
        profile = get_profile(self.profile)
        for alias, line_id in self.addresses.items():
            try:
                profile.parse_address(str(line_id))
            except ProtocolError as exc:
                raise ValueError(f"addresses: {alias!r}: {exc}") from None
        for address in self.transmitters:
            if address in self.addresses:
                continue
            try:
                profile.parse_address(address)
            except ProtocolError as exc:
                raise ValueError(f"transmitters: {exc} (or map it in addresses)") from None
        if TEXT_ENCODINGS[self.text_encoding] not in profile.content_kinds:
            raise ValueError(f"profile {self.profile} cannot carry {self.text_encoding} text")
        if self.audio_clips and ContentKind.AUDIO_ID not in profile.content_kinds:
            raise ValueError(f"profile {self.profile} cannot carry stored clips (audio_clips)")
        if self.max_text_bytes > profile.max_content_bytes:
            raise ValueError(
                f"max_text_bytes {self.max_text_bytes} is over profile {self.profile}'s "
                f"{profile.max_content_bytes}"
            )
        return self

    def send_time_needed(self) -> tuple[float, str]:
        """What one send() may take: the batch's budget (config checks send_timeout)."""
        return self.batch_budget, "batch_budget"

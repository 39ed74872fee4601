"""``[adapters.<name>.settings]`` of an ``iridium_sbd`` instance."""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from adapters.serial_link.settings import SerialPortSettings
from dispatcher.durations import Seconds

_IMEI = re.compile(r"^[0-9]{15}$")
_SERIAL = re.compile(r"^[0-9]{1,7}$")

#: How a mobile-originated message from Tocsin's transceiver reaches a village terminal.
Routing = Literal["provisioned", "rockblock"]


class IridiumSbdSettings(SerialPortSettings):
    """The transceiver's port and how Tocsin uses its SBD sessions."""

    #: The 9602/9603 talks at 19200 baud out of the box.
    baudrate: int = 19200
    #: ``provisioned``: the message is sent as it is and Iridium delivers it to the
    #: destinations the service provider provisioned for this transceiver's IMEI (each village
    #: terminal's IMEI, "ISU to ISU"); the message names its recipient so a terminal that gets
    #: another's message knows it is not asked to confirm. ``rockblock``: Rock7's gateway
    #: forwards a message that starts with ``RB`` + the destination's 7-digit serial to that
    #: RockBLOCK (same delivery group), so each message goes to one terminal; the 9 bytes come
    #: out of the 270 a terminal can receive.
    routing: Routing = "provisioned"
    #: For ``rockblock``: each terminal's IMEI (the directory address) → its RockBLOCK serial.
    rockblock_serials: dict[str, str] = Field(default_factory=dict)
    #: Seconds one ``AT+SBDIX`` session may take before it counts as failed (the transceiver
    #: gives up by itself after about a minute with an MO status of 10-19).
    session_timeout: Seconds = Field(default=75.0, gt=0, le=600)
    #: The least time between two SBD sessions: the pace Tocsin asks of the engine (one
    #: session per interval) and keeps itself between mailbox checks.
    session_interval: Seconds = Field(default=10.0, ge=0, le=3600)
    #: Signal bars (``AT+CSQ``, 0-5) below which no session is tried: the delivery is retried.
    min_signal: int = Field(default=1, ge=0, le=5)
    #: Seconds to wait before retrying when the signal is too weak.
    no_signal_retry: Seconds = Field(default=30.0, gt=0, le=3600)
    #: Replies that confirm a warning (compared after NFKC, case-folding, no punctuation).
    confirm_words: list[str] = Field(default_factory=lambda: ["1", "收到", "Y"], min_length=1)
    #: Seconds between mailbox checks (a session that only fetches replies) when no ring alert
    #: came; 0: only on a ring alert or after a send. Every session costs credit.
    mailbox_interval: Seconds = Field(default=0.0, ge=0, le=86400)
    #: Deliveries remembered for matching replies (newest kept; expired warnings pruned).
    remember: int = Field(default=10_000, ge=10, le=1_000_000)

    @field_validator("rockblock_serials")
    @classmethod
    def _serials(cls, value: dict[str, str]) -> dict[str, str]:
        for imei, serial in value.items():
            if not _IMEI.match(imei):
                raise ValueError(f"{imei!r} is not an IMEI (15 digits)")
            if not _SERIAL.match(serial):
                raise ValueError(f"RockBLOCK serial {serial!r} for {imei} is not 1 to 7 digits")
        return value

    @model_validator(mode="after")
    def _routing(self) -> Self:
        if self.routing == "provisioned" and self.rockblock_serials:
            raise ValueError('rockblock_serials is given but routing is not "rockblock"')
        if self.session_timeout <= self.command_timeout:
            raise ValueError("session_timeout must be longer than command_timeout")
        return self

    def send_time_needed(self) -> tuple[float, str]:
        """What one send() may take: an SBD session and the commands around it."""
        return (
            self.session_timeout + 3 * self.command_timeout,
            "session_timeout + 3 × command_timeout",
        )

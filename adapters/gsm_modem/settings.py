"""``[adapters.<name>.settings]`` of a ``gsm_modem`` instance: the port (from the shared serial
settings) and how Tocsin uses the modem."""

from __future__ import annotations

import re
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator

from adapters.serial_link.settings import SerialPortSettings
from dispatcher.durations import Seconds

_CNMI = re.compile(r"^[0-3](,[0-3]?){0,4}$")


class GsmModemSettings(SerialPortSettings):
    """A GSM/4G modem or a Tiantong satellite phone on a serial port."""

    #: The SIM's PIN when it asks for one (a secret reference: ``credential:modem-pin``).
    #: Entered once per power-on; a PIN the SIM refuses is never tried again until restart, so
    #: a wrong setting cannot use up the SIM's three attempts.
    sim_pin: SecretStr | None = None
    #: Region of addresses written without ``+`` (``13812345678``), and of replies from
    #: national-format senders.
    default_region: str = Field("CN", min_length=2, max_length=2)
    #: How long the SMS centre keeps trying an undelivered message (TP-VP), at most; never
    #: beyond the warning's expiry.
    validity: Seconds = Field(86400.0, ge=300, le=63 * 7 * 86400)
    #: Ask for a status report per part (``+CDS``): what makes a delivery ``delivered``.
    status_reports: bool = True
    #: A longer text is shortened to this many parts, keeping "收到请回复1。".
    max_parts: int = Field(4, ge=1, le=10)
    #: Use 16-bit concatenation references (IEI 0x08: 66 UCS-2 units a part, not 67).
    concat_16bit: bool = False
    #: Sustained sending rate: a module sends about 10–20 SMS a minute; a satellite phone fewer.
    messages_per_minute: float = Field(12.0, gt=0, le=120)
    #: How long ``AT+CMGS`` may take to be answered ``+CMGS: <mr>`` (the network's round trip;
    #: a satellite phone can take half a minute).
    submit_timeout: Seconds = Field(20.0, gt=0, le=300)
    #: The most one ``send()`` spends on the modem before answering Retry for the rest of the
    #: batch; keep it below the instance's ``send_timeout``.
    send_budget: Seconds = Field(25.0, gt=0, le=600)
    #: ``AT+CNMI`` values: inbound SMS shown at once (``+CMT``, mt=2) and status reports too
    #: (``+CDS``, ds=1). ``2,1,0,2,0`` for modems that can only store (``+CMTI``/``+CDSI``).
    cnmi: str = "2,2,0,1,0"
    #: Replies that acknowledge (compared after NFKC, case folding and dropping punctuation).
    confirm_words: list[str] = Field(default_factory=lambda: ["1", "收到", "Y"], min_length=1)
    #: Status reports are awaited this long after sending; then the message is forgotten
    #: (the engine's own timeouts decide what happens to the delivery).
    report_wait: Seconds = Field(2 * 86400.0, ge=60)
    #: The registration state is asked (``AT+CREG?``) before a batch unless asked this recently.
    registration_check: Seconds = Field(10.0, ge=0)

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        return value.upper()

    @field_validator("cnmi")
    @classmethod
    def _cnmi(cls, value: str) -> str:
        cleaned = value.replace(" ", "")
        if not _CNMI.match(cleaned):
            raise ValueError(f"{value!r} is not AT+CNMI values like 2,2,0,1,0")
        return cleaned

    @field_validator("sim_pin")
    @classmethod
    def _pin(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"\d{4,8}", value.get_secret_value()):
            raise ValueError("a SIM PIN is 4 to 8 digits")
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> Self:
        if self.submit_timeout > self.send_budget:
            raise ValueError("submit_timeout is longer than send_budget")
        return self

    def send_time_needed(self) -> tuple[float, str]:
        """What one send() may take: the batch's budget (config checks send_timeout)."""
        return self.send_budget, "send_budget"

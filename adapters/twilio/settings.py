"""The settings of the ``twilio_sms`` and ``twilio_voice`` kinds (``[adapters.<name>.settings]``).

Both name the account, the token (a secret reference: ``env:``, ``file:``, ``credential:``) and
the public URL Twilio calls back on; SMS adds its senders or a messaging service and their
rates, voice its caller ids, call rate and concurrent-call cap."""

from __future__ import annotations

from typing import Annotated, Self

import phonenumbers
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)


def _e164(value: str) -> str:
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"{value!r} is not a phone number in E.164 (+86…): {exc}") from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError(f"{value!r} is not a possible phone number")
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if formatted != value:
        raise ValueError(f"{value!r} must be written in E.164: {formatted}")
    return value


def _no_trailing_slash(value: AnyHttpUrl) -> AnyHttpUrl:
    if str(value).endswith("/") and value.path not in (None, "/"):
        raise ValueError("write the URL without a trailing slash")
    return value


E164 = Annotated[str, AfterValidator(_e164)]
BaseUrl = Annotated[AnyHttpUrl, AfterValidator(_no_trailing_slash)]


class TwilioAccountSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$", description="the account SID")
    #: Authenticates API calls and is the key Twilio signs its callbacks with.
    auth_token: SecretStr
    #: The daemon's base URL as Twilio reaches it (through the reverse proxy), e.g.
    #: ``https://tocsin.example.cn``; webhooks are ``<public_url>/hooks/<adapter name>/…``.
    #: Signatures are checked against it, so it must be exactly what Twilio calls.
    public_url: BaseUrl
    #: Twilio's REST API; set only for the fake server (``tocsin simulate twilio``).
    api_base_url: BaseUrl | None = None
    #: Seconds one API request may take before it is retried.
    request_timeout: float = Field(default=10.0, gt=0, le=120)
    #: API requests in flight at once (all batches together).
    max_concurrent_requests: int = Field(default=50, ge=1, le=1000)

    def hook_url(self, adapter_name: str, path: str) -> str:
        from dispatcher.adapter import webhook_path

        return str(self.public_url).rstrip("/") + webhook_path(adapter_name, path)


class TwilioSmsSettings(TwilioAccountSettings):
    #: Long codes (or short codes) to send from, in E.164; or use a messaging service.
    senders: list[E164] = Field(default_factory=list)
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    #: Messages a second one sender may send (a long code: about 1; a short code: ~100).
    sender_rate: float = Field(default=1.0, gt=0, le=1000)
    #: Messages a second through the messaging service (all its senders together).
    messaging_service_rate: float = Field(default=1.0, gt=0, le=10000)
    #: Longest message, in segments; longer text is shortened (its confirmation request kept).
    max_segments: int = Field(default=10, ge=1, le=24)
    #: A reply that confirms, compared after Unicode normalisation (full-width ``１`` is ``1``),
    #: ignoring case, spaces and punctuation.
    confirm_words: list[str] = Field(default_factory=lambda: ["1", "收到", "Y"], min_length=1)
    #: Answered to a confirming reply (costs one SMS each); empty: answer nothing.
    reply_confirmation: str = ""

    @model_validator(mode="after")
    def _one_way_to_send(self) -> Self:
        if not self.senders and self.messaging_service_sid is None:
            raise ValueError("give senders (E.164 numbers) or a messaging_service_sid")
        if self.senders and self.messaging_service_sid is not None:
            raise ValueError("give senders or a messaging_service_sid, not both")
        if len(set(self.senders)) != len(self.senders):
            raise ValueError("senders lists a number twice")
        return self


class TwilioVoiceSettings(TwilioAccountSettings):
    #: Caller ids (numbers of the account) to call from, in E.164.
    callers: list[E164] = Field(min_length=1)
    #: New calls a second for the whole account (Twilio's default CPS is 1).
    calls_per_second: float = Field(default=1.0, gt=0, le=100)
    #: Calls in progress at once; a new call waits for a free slot.
    max_concurrent_calls: int = Field(default=10, ge=1, le=10000)
    #: Seconds the phone rings before the call counts as not answered.
    ring_timeout: int = Field(default=30, ge=5, le=600)
    #: How many times the warning is read.
    repeat: int = Field(default=2, ge=1, le=5)
    #: Seconds to wait for the key press after the reading.
    gather_timeout: int = Field(default=8, ge=1, le=60)
    language: str = "cmn-CN"
    voice: str = "Polly.Zhiyu"
    #: A call whose completion Twilio never reports frees its slot after this many seconds.
    call_slot_timeout: float = Field(default=900.0, gt=0)

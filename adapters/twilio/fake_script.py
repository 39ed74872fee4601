"""The script of the fake Twilio server (:mod:`adapters.twilio.fake_server`): what the fake
network and the fake people do — API latency, injected errors and rate limits, how messages
and calls end, who replies and which key they press.

:class:`FakeScript` is a frozen dataclass: tests build one, change it at run time with
``fake.script = dataclasses.replace(fake.script, …)`` (or ``POST /_fake/script`` with the
changed fields as JSON), and pin single numbers with :class:`NumberScript` so they are
deterministic whatever the random draws say.

Outcomes are written as strings, an error code after a colon where one applies:
``"delivered"``, ``"undelivered:30005"``, ``"failed"`` for SMS; ``"answered"``, ``"busy"``,
``"no-answer"``, ``"failed:32009"`` for calls. Without a code, undelivered is 30003
(unreachable handset), a failed SMS 30008 (unknown error), a failed call 13224 (number not
valid for calls).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, cast

SmsOutcome = Literal["delivered", "undelivered", "failed"]
CallOutcome = Literal["answered", "busy", "no-answer", "failed"]
SMS_OUTCOMES: tuple[SmsOutcome, ...] = ("delivered", "undelivered", "failed")
CALL_OUTCOMES: tuple[CallOutcome, ...] = ("answered", "busy", "no-answer", "failed")

#: The error code an outcome carries when the script names none.
DEFAULT_SMS_ERROR: dict[str, int] = {"undelivered": 30003, "failed": 30008}
DEFAULT_CALL_ERROR: dict[str, int] = {"failed": 13224}

#: Twilio's words for the error codes the fake reports (``error_message`` of a resource).
ERROR_MESSAGES: dict[int, str] = {
    30001: "Queue overflow",
    30002: "Account suspended",
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
    30009: "Missing segment",
    30010: "Message price exceeds max price",
    13224: "Twilio does not support calling this number or the number is invalid",
    13227: "No international authorization",
    32009: "Call failed: the carrier could not connect the call",
}

_DIGITS = re.compile(r"[0-9*#]*")


def parse_outcome(text: str, *, kinds: tuple[str, ...], defaults: Mapping[str, int]) -> Outcome:
    """``"undelivered:30005"`` → ``Outcome("undelivered", 30005)``; ValueError if malformed."""
    name, _, code_text = text.strip().partition(":")
    if name not in kinds:
        raise ValueError(f"unknown outcome {text!r} (one of {', '.join(kinds)}, code after ':')")
    code: int | None = defaults.get(name)
    if code_text:
        if name not in defaults:
            raise ValueError(f"outcome {name!r} carries no error code: {text!r}")
        try:
            code = int(code_text)
        except ValueError:
            raise ValueError(f"bad error code in outcome {text!r}") from None
    return Outcome(name, code)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one message or call ends: its final status, and its error code if it failed."""

    name: str
    error_code: int | None = None


class _Weighted:
    """Outcomes with their weights, drawn with a caller's generator."""

    __slots__ = ("cumulative", "outcomes", "total")

    def __init__(
        self, weights: Mapping[str, float], *, kinds: tuple[str, ...], defaults: Mapping[str, int]
    ) -> None:
        self.outcomes: list[Outcome] = []
        self.cumulative: list[float] = []
        total = 0.0
        for text, weight in weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"weight of {text!r} must be a number ≥ 0, not {weight!r}")
            outcome = parse_outcome(text, kinds=kinds, defaults=defaults)
            if weight == 0:
                continue
            total += weight
            self.outcomes.append(outcome)
            self.cumulative.append(total)
        if total <= 0:
            raise ValueError(f"give at least one outcome a weight above 0: {dict(weights)!r}")
        self.total = total

    def draw(self, rng: random.Random) -> Outcome:
        if len(self.outcomes) == 1:
            return self.outcomes[0]  # no draw: a fixed outcome keeps the generator for the rest
        point = rng.random() * self.total
        for outcome, bound in zip(self.outcomes, self.cumulative, strict=True):
            if point < bound:
                return outcome
        return self.outcomes[-1]


@dataclass(frozen=True, slots=True, kw_only=True)
class NumberScript:
    """What happens to one recipient's number, whatever the script's odds say (None: the
    script decides)."""

    #: How its messages end: ``"delivered"``, ``"undelivered[:code]"``, ``"failed[:code]"``.
    sms: str | None = None
    #: How calls to it end: ``"answered"``, ``"busy"``, ``"no-answer"``, ``"failed[:code]"``.
    call: str | None = None
    #: The keys the person presses at a ``<Gather>`` ("": none).
    digits: str | None = None
    #: Replied after every delivered message ("": never replies).
    reply: str | None = None

    def __post_init__(self) -> None:
        if self.sms is not None:
            parse_outcome(self.sms, kinds=SMS_OUTCOMES, defaults=DEFAULT_SMS_ERROR)
        if self.call is not None:
            parse_outcome(self.call, kinds=CALL_OUTCOMES, defaults=DEFAULT_CALL_ERROR)
        if self.digits is not None and not _DIGITS.fullmatch(self.digits):
            raise ValueError(f"digits are keys 0-9, * and #, not {self.digits!r}")

    def to_json(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


def _rate(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a fraction from 0 to 1, not {value!r}")


def _seconds(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a number of seconds ≥ 0, not {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeScript:
    """How the fake Twilio behaves. Rates are fractions from 0 to 1; delays are seconds."""

    # -- the API ---------------------------------------------------------------------------
    #: Added to every API answer.
    latency: float = 0.0
    #: API requests answered 500 or 503 (Twilio error 20500 / 20503).
    error_rate: float = 0.0
    #: The next N message/call creates are answered 429 (error 20429) with ``Retry-After``.
    #: Counted from when the script is set.
    rate_limit_burst: int = 0
    #: The ``Retry-After`` of those 429s, whole seconds.
    retry_after: int = 1
    #: Creates that never answer (until the client gives up): nothing is created.
    timeout_rate: float = 0.0
    #: How long such a create hangs at most (longer than any client's timeout).
    hang_seconds: float = 3600.0
    # -- what happens after a create ---------------------------------------------------------
    #: How messages end, by weight (see the module doc for the strings).
    sms_outcomes: Mapping[str, float] = field(default_factory=lambda: {"delivered": 1.0})
    #: How calls end, by weight.
    call_outcomes: Mapping[str, float] = field(default_factory=lambda: {"answered": 1.0})
    #: Keys pressed at a ``<Gather>`` ("": nobody presses; the Gather times out).
    digits: str = "1"
    #: People who reply to a delivered message, and what they write (one drawn at random).
    reply_rate: float = 0.0
    reply_texts: tuple[str, ...] = ("1", "收到", "Y")
    #: From delivery to the reply.
    reply_delay: float = 0.0
    #: Between one status of a message or call and the next.
    callback_delay: float = 0.0
    #: A call's speech before the person presses (or the call hangs up after the TwiML).
    speak_delay: float = 0.0
    #: How long a ``<Gather>`` waits when nobody presses.
    gather_timeout: float = 1.0
    #: Send the first status callback before answering the create (Twilio can: its callback
    #: may reach the webhook before the create's answer reaches the sender).
    callback_before_response: bool = False
    #: Send every status callback and reply twice (Twilio retries; webhooks must be
    #: idempotent).
    duplicate_callbacks: bool = False
    #: Off: no status callbacks, replies or TwiML at all, a message or call takes its final
    #: status at once (a pure API throughput benchmark).
    callbacks: bool = True
    #: Recipients that behave as told whatever the odds, by E.164 number.
    per_number: Mapping[str, NumberScript] = field(default_factory=dict)
    #: Recipients who replied STOP: sending to them is refused with 21610.
    unsubscribed: frozenset[str] = frozenset()
    #: Seeds the fake's generator each time the script is set.
    seed: int = 1
    _sms: _Weighted = field(init=False, repr=False, compare=False)
    _call: _Weighted = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("error_rate", "timeout_rate", "reply_rate"):
            _rate(name, getattr(self, name))
        for name in (
            "latency",
            "hang_seconds",
            "reply_delay",
            "callback_delay",
            "speak_delay",
            "gather_timeout",
        ):
            _seconds(name, getattr(self, name))
        if self.rate_limit_burst < 0 or self.retry_after < 0:
            raise ValueError("rate_limit_burst and retry_after must be ≥ 0")
        if not _DIGITS.fullmatch(self.digits):
            raise ValueError(f"digits are keys 0-9, * and #, not {self.digits!r}")
        if not self.reply_texts:
            raise ValueError("reply_texts needs at least one text")
        # Accept any iterable of numbers and any mapping; keep immutable copies.
        object.__setattr__(self, "unsubscribed", frozenset(self.unsubscribed))
        object.__setattr__(self, "reply_texts", tuple(self.reply_texts))
        per_number = dict(self.per_number)
        for number, script in per_number.items():
            if not isinstance(script, NumberScript):
                raise TypeError(f"per_number[{number!r}] must be a NumberScript")
        object.__setattr__(self, "per_number", per_number)
        object.__setattr__(
            self,
            "_sms",
            _Weighted(self.sms_outcomes, kinds=SMS_OUTCOMES, defaults=DEFAULT_SMS_ERROR),
        )
        object.__setattr__(
            self,
            "_call",
            _Weighted(self.call_outcomes, kinds=CALL_OUTCOMES, defaults=DEFAULT_CALL_ERROR),
        )

    def sms_outcome(self, to: str, rng: random.Random) -> Outcome:
        """How a message to ``to`` ends."""
        pinned = self.per_number.get(to)
        if pinned is not None and pinned.sms is not None:
            return parse_outcome(pinned.sms, kinds=SMS_OUTCOMES, defaults=DEFAULT_SMS_ERROR)
        return self._sms.draw(rng)

    def call_outcome(self, to: str, rng: random.Random) -> Outcome:
        """How a call to ``to`` ends."""
        pinned = self.per_number.get(to)
        if pinned is not None and pinned.call is not None:
            return parse_outcome(pinned.call, kinds=CALL_OUTCOMES, defaults=DEFAULT_CALL_ERROR)
        return self._call.draw(rng)

    def digits_for(self, to: str) -> str:
        pinned = self.per_number.get(to)
        if pinned is not None and pinned.digits is not None:
            return pinned.digits
        return self.digits

    def reply_for(self, to: str, rng: random.Random) -> str | None:
        """What the person at ``to`` replies to a delivered message, or None."""
        pinned = self.per_number.get(to)
        if pinned is not None and pinned.reply is not None:
            return pinned.reply or None
        if self.reply_rate <= 0 or rng.random() >= self.reply_rate:
            return None
        return rng.choice(self.reply_texts)

    # -- JSON (the control endpoint) -----------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            if f.name == "per_number":
                value = {number: script.to_json() for number, script in value.items()}
            elif f.name == "unsubscribed":
                value = sorted(value)
            elif f.name == "reply_texts":
                value = list(value)
            elif f.name in ("sms_outcomes", "call_outcomes"):
                value = dict(value)
            out[f.name] = value
        return out

    def updated(self, changes: Mapping[str, Any]) -> FakeScript:
        """This script with ``changes`` (JSON values, as ``to_json`` writes them) applied;
        ValueError names a field that is unknown or of the wrong type."""
        known = {f.name: f for f in fields(self) if not f.name.startswith("_")}
        values: dict[str, Any] = {}
        for name, raw in changes.items():
            if name not in known:
                raise ValueError(f"unknown script field {name!r}")
            values[name] = _from_json(name, raw, getattr(self, name))
        return replace(self, **values)


def _from_json(name: str, raw: Any, current: Any) -> Any:
    if name == "per_number":
        if not isinstance(raw, Mapping):
            raise ValueError("per_number is an object: number → {sms, call, digits, reply}")
        return {str(k): NumberScript(**_str_fields(k, v)) for k, v in raw.items()}
    if name in ("unsubscribed", "reply_texts"):
        if isinstance(raw, str) or not isinstance(raw, Iterable):
            raise ValueError(f"{name} is a list of strings")
        items = [str(item) for item in raw]
        return frozenset(items) if name == "unsubscribed" else tuple(items)
    if name in ("sms_outcomes", "call_outcomes"):
        if not isinstance(raw, Mapping):
            raise ValueError(f"{name} is an object: outcome → weight")
        return {str(k): float(v) for k, v in raw.items()}
    if isinstance(current, bool):
        if not isinstance(raw, bool):
            raise ValueError(f"{name} is true or false")
        return raw
    if isinstance(current, int):
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"{name} is a whole number")
        return raw
    if isinstance(current, float):
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError(f"{name} is a number")
        return float(raw)
    if isinstance(current, str):
        if not isinstance(raw, str):
            raise ValueError(f"{name} is a string")
        return raw
    raise ValueError(f"cannot set {name} from JSON")  # pragma: no cover — every field is above


def _str_fields(number: object, raw: object) -> dict[str, str | None]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"per_number[{number!r}] is an object: sms, call, digits, reply")
    allowed = {f.name for f in fields(NumberScript)}
    out: dict[str, str | None] = {}
    for key, value in cast(Mapping[str, object], raw).items():
        if key not in allowed:
            raise ValueError(f"per_number[{number!r}]: unknown field {key!r}")
        if value is not None and not isinstance(value, str):
            raise ValueError(f"per_number[{number!r}].{key} is a string")
        out[key] = value
    return out

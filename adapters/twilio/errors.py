"""What Twilio's error codes mean for a delivery: try again, or give up on this person.

Two families: errors of the REST API when creating a message or call (the request was refused),
and the error code a status callback carries when a message was accepted but not delivered.
Errors of the account or the configuration (credentials, a sender not on the account, rate
limits, Twilio down) are retried: they are nobody's number's fault, and the engine's breaker
pauses the adapter so its deliveries fall over to another channel meanwhile. Errors that name the
recipient (invalid number, unsubscribed, landline) fail that delivery at once, so the ladder
moves on to a call or a visit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TwilioError:
    code: int
    retryable: bool
    reason: str

    def describe(self) -> str:
        return f"Twilio {self.code}: {self.reason}"


def _table(*rows: tuple[int, bool, str]) -> dict[int, TwilioError]:
    return {code: TwilioError(code, retryable, reason) for code, retryable, reason in rows}


#: REST API errors on create (https://www.twilio.com/docs/api/errors).
REQUEST_ERRORS = _table(
    (20003, True, "authentication failed: check account_sid and auth_token"),
    (20005, True, "the account is not active"),
    (20429, True, "too many requests"),
    (20500, True, "Twilio internal error"),
    (20503, True, "Twilio service unavailable"),
    (21210, True, "the caller id is not a verified number of the account"),
    (21212, True, "the sender number is not valid"),
    (21606, True, "the sender is not a number of this account able to send SMS"),
    (21611, True, "the sender's queue is full"),
    (21211, False, "invalid 'To' phone number"),
    (21214, False, "the number cannot be reached by a call"),
    (21215, False, "calls to this region are not enabled on the account"),
    (21217, False, "the phone number is not valid"),
    (21219, False, "a trial account can only call verified numbers"),
    (21401, False, "invalid phone number"),
    (21407, False, "this number is not supported"),
    (21408, False, "SMS to this region is not enabled on the account"),
    (21610, False, "the recipient unsubscribed (replied STOP)"),
    (21612, False, "Twilio cannot route to this number"),
    (21614, False, "the number is not a mobile number"),
    (21617, False, "the message is longer than 1600 characters"),
    (13224, False, "the number is not valid for calls"),
)

#: Error codes in status callbacks (message undelivered or failed, call failed).
DELIVERY_ERRORS = _table(
    (30001, True, "the sender's queue overflowed"),
    (30002, True, "the account was suspended"),
    (30003, True, "the handset is unreachable (off or out of coverage)"),
    (30004, False, "the message is blocked (the recipient blocks it)"),
    (30005, False, "unknown destination handset (the number does not exist)"),
    (30006, False, "landline or unreachable carrier"),
    (30007, False, "filtered by the carrier"),
    (30008, True, "unknown delivery error"),
    (30009, True, "a part of the message is missing"),
    (30010, False, "the message price exceeds the account's maximum"),
    (13227, False, "calls to this country are not allowed"),
    (32009, True, "the carrier could not connect the call"),
)


def request_error(status: int, code: int | None, message: str) -> TwilioError:
    """A refused create: by Twilio's code when it is known, else by the HTTP status."""
    if code is not None and code in REQUEST_ERRORS:
        return REQUEST_ERRORS[code]
    text = message.strip() or f"HTTP {status}"
    # An unknown refusal is retried (the engine gives up after the level's attempts): an
    # error we do not know must not drop a warning on the first try.
    return TwilioError(code or status, True, text)


def delivery_error(code: int | None, status: str) -> TwilioError:
    if code is not None and code in DELIVERY_ERRORS:
        return DELIVERY_ERRORS[code]
    if code is None:
        return TwilioError(0, True, f"Twilio reported {status} without an error code")
    return TwilioError(code, True, f"Twilio reported {status} (error {code})")

"""A fake Twilio REST API (2010-04-01) on aiohttp that the real ``twilio`` client talks to:
the tests, the benchmarks and ``tocsin simulate twilio`` point an adapter at it.

It answers like Twilio — the same JSON resources, list envelopes and error bodies (code,
message, more_info, status), HTTP Basic authentication with the account SID and auth token —
for messages, calls, the account and its incoming phone numbers, and then plays the other
side: it posts status callbacks, people's replies and key presses to the URLs it was given,
form-encoded and signed with ``X-Twilio-Signature`` exactly as Twilio signs them (over the
full URL, query string included), in Twilio's order:

- a message: ``sent`` then ``delivered`` (or ``undelivered`` with an ErrorCode, or only
  ``failed``); after a delivery the person may reply, which is posted to the sender number's
  ``sms_url`` (and recorded as an inbound message either way);
- a call: ``initiated``, ``ringing``, ``answered`` (those asked for in StatusCallbackEvent) and
  ``completed`` (always; ``busy``, ``no-answer`` or ``failed`` when it was not answered); when
  answered, its TwiML (``Twiml``, or fetched from ``Url`` with a signed request) is parsed,
  and at a ``<Gather>`` the person presses the scripted keys, which is posted to the Gather's
  action; the TwiML that answers is recorded.

What happens is scripted (:class:`~adapters.twilio.fake_script.FakeScript`): latency, injected
500/503s, 429 bursts, creates that hang, how messages and calls end, replies, keys, the race
of a callback before the create's answer, duplicate callbacks, and numbers pinned to an
outcome. Callbacks go out through one shared client session and a fixed pool of workers fed
from a timer heap (no task per message), so a benchmark of tens of thousands of messages
costs a bounded number of tasks; with callbacks off a create is one dictionary insert.

The fake's numbers: ``numbers=[…]`` makes exactly those numbers the account's (every account
of the fake has them); without, any E.164 number used as From becomes one of the account's
numbers on first use. ``sms_url`` is every number's inbound SMS webhook until set per number
(``POST …/IncomingPhoneNumbers/{PN…}.json`` with SmsUrl, or :meth:`FakeTwilio.add_number`).

Test hooks are methods of :class:`FakeTwilio` and the same under ``/_fake/…`` (JSON, no
authentication) for the CLI's users: records of messages, calls, replies and callbacks with
their answers, counters, the script, a reply now, a key press now, an arbitrary (unsigned,
forged, unknown-SID) callback, waiting until every scheduled callback is done.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import heapq
import hmac
import itertools
import json
import logging
import math
import random
import re
import secrets
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlencode, urljoin
from xml.etree.ElementTree import ParseError

import aiohttp
import defusedxml
import defusedxml.ElementTree
import phonenumbers
from aiohttp import web
from twilio.request_validator import RequestValidator
from yarl import URL

from adapters.twilio.fake_script import ERROR_MESSAGES, FakeScript, NumberScript, Outcome

__all__ = [
    "CallbackRecord",
    "FakeCall",
    "FakeMessage",
    "FakeNumber",
    "FakeScript",
    "FakeTwilio",
    "GatherRecord",
    "NumberScript",
    "sms_segments",
]

log = logging.getLogger("tocsin.simulator.twilio")

API_VERSION = "2010-04-01"
_API = f"/{API_VERSION}/Accounts"
#: Sends a message through a messaging service when the fake has no numbers of its own.
DEFAULT_SERVICE_SENDER = "+8610690000000"
#: Workers posting callbacks, and so callbacks in flight at once.
DEFAULT_WORKERS = 32
#: Twilio gives up on a webhook after 15 s.
DEFAULT_CALLBACK_TIMEOUT = 15.0
#: Oldest records are forgotten beyond this many messages (and as many calls): a long run of
#: ``tocsin simulate twilio`` must not grow without bound.
DEFAULT_MAX_RECORDS = 100_000
#: Gathers one call answers in a row (a TwiML answering a Gather with another Gather).
MAX_GATHERS = 3
#: Twilio's limit on a message body, in characters.
MAX_BODY = 1600
#: Kept of a callback's answer (TwiML answers are kept whole up to this).
_ANSWER_LIMIT = 64 * 1024
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
_CALL_EVENTS = frozenset(("initiated", "ringing", "answered", "completed"))
#: SIP codes in a call's completed callback, by how it ended.
_SIP = {"completed": "200", "busy": "486", "no-answer": "487", "failed": "503"}

Job = Callable[[], Awaitable[None]]
Sign = bool | Literal["forged"]


# -- segments ------------------------------------------------------------------------------------
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Written with an escape (ESC) in front: two septets each.
_GSM_EXTENSION = frozenset("\f^{}\\[~]|€")


def sms_segments(body: str) -> int:
    """How many segments ``body`` is sent in: GSM-7 (160 septets, 153 a part, an extension
    character 2) when every character is in the GSM alphabet, else UCS-2 (70 UTF-16 units,
    67 a part, a character beyond the BMP 2). A part never splits an escape or a surrogate
    pair, so a character that does not fit starts the next part."""
    costs: list[int] = []
    gsm = True
    for char in body:
        if char in _GSM_BASIC:
            costs.append(1)
        elif char in _GSM_EXTENSION:
            costs.append(2)
        else:
            gsm = False
            break
    if not gsm:
        costs = [2 if ord(char) > 0xFFFF else 1 for char in body]
    single, part = (160, 153) if gsm else (70, 67)
    if sum(costs) <= single:
        return 1
    parts, used = 1, 0
    for cost in costs:
        if used + cost > part:
            parts += 1
            used = 0
        used += cost
    return parts


# -- small helpers --------------------------------------------------------------------------------
_last_date: tuple[int, str] = (-1, "")


def rfc2822(timestamp: float) -> str:
    """Twilio's dates: ``Thu, 24 Aug 2023 05:01:45 +0000`` (cached per second: creates in a
    burst share it)."""
    global _last_date  # noqa: PLW0603 — a one-entry cache
    second = int(timestamp)
    if _last_date[0] != second:
        text = datetime.fromtimestamp(second, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
        _last_date = (second, text)
    return _last_date[1]


def _optional_date(timestamp: float | None) -> str | None:
    return None if timestamp is None else rfc2822(timestamp)


@functools.lru_cache(maxsize=65536)
def _country(number: str) -> str:
    """ISO country of an E.164 number (FromCountry/ToCountry), "" if unknown."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return ""
    return phonenumbers.region_code_for_country_code(parsed.country_code or 0) or ""


def _error(
    status: int, code: int, message: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Twilio's error body."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return _json(status, body, headers=headers)


def _json(status: int, payload: Any, *, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload, ensure_ascii=False).encode(),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def _field(form: Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _absolute_url(url: str) -> bool:
    return url.startswith(("http://", "https://")) and len(url) > 8


# -- records ---------------------------------------------------------------------------------------
@dataclass(slots=True, kw_only=True)
class CallbackRecord:
    """One request the fake made to someone's webhook, and its answer."""

    seq: int
    #: ``sms-status``, ``sms-inbound``, ``call-status``, ``twiml`` (fetching a call's Url),
    #: ``gather`` (a key press posted to a Gather's action) or ``manual`` (post_callback).
    kind: str
    #: The message or call it is about (None for a manual one).
    sid: str | None
    method: str
    #: Exactly the URL requested (a GET's parameters in its query).
    url: str
    params: dict[str, str]
    #: The X-Twilio-Signature sent (None: unsigned).
    signature: str | None
    at: float
    #: The HTTP status of the answer; None when there was none (see ``error``).
    status: int | None = None
    answer: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "sid": self.sid,
            "method": self.method,
            "url": self.url,
            "params": self.params,
            "signature": self.signature,
            "at": self.at,
            "status": self.status,
            "answer": self.answer,
            "error": self.error,
        }


@dataclass(slots=True, kw_only=True)
class FakeMessage:
    """A message sent through the fake (``direction`` ``outbound-api``) or a person's reply
    (``inbound``)."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    body: str
    messaging_service_sid: str | None
    status_callback: str | None
    direction: str
    status: str
    num_segments: int
    date_created: float
    date_updated: float
    date_sent: float | None = None
    error_code: int | None = None
    #: How it is scripted to end (outbound only).
    outcome: Outcome | None = None
    #: The status callbacks (outbound) or the webhook request (inbound) made for it.
    callbacks: list[CallbackRecord] = field(default_factory=list)
    #: The sender a messaging service picked (``from_`` stays None in the create answer).
    sender: str | None = None

    def resource(self, *, status: str | None = None) -> dict[str, Any]:
        """Twilio's Message JSON (``status`` overrides, for the create's answer)."""
        base = f"{_API}/{self.account_sid}/Messages/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": rfc2822(self.date_created),
            "date_sent": _optional_date(self.date_sent),
            "date_updated": rfc2822(self.date_updated),
            "direction": self.direction,
            "error_code": self.error_code,
            "error_message": ERROR_MESSAGES.get(self.error_code) if self.error_code else None,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(self.num_segments),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": status or self.status,
            "subresource_uris": {
                "media": f"{base}/Media.json",
                "feedback": f"{base}/Feedback.json",
            },
            "to": self.to,
            "uri": f"{base}.json",
        }

    def to_json(self) -> dict[str, Any]:
        out = self.resource()
        out["outcome"] = None if self.outcome is None else self.outcome.name
        out["sender"] = self.sender
        out["status_callback"] = self.status_callback
        out["callbacks"] = [record.to_json() for record in self.callbacks]
        return out


@dataclass(slots=True, kw_only=True)
class GatherRecord:
    """A ``<Gather>`` of a call: the keys pressed and the TwiML its action answered."""

    action: str | None
    method: str
    num_digits: int | None
    #: Keys pressed; None when nobody pressed (the Gather timed out).
    digits: str | None
    #: The HTTP status of the action's answer (None: not posted, or no answer).
    status: int | None = None
    #: The TwiML the action answered.
    twiml: str = ""
    error: str | None = None
    at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "method": self.method,
            "num_digits": self.num_digits,
            "digits": self.digits,
            "status": self.status,
            "twiml": self.twiml,
            "error": self.error,
            "at": self.at,
        }


@dataclass(slots=True, kw_only=True)
class _Gather:
    action: str | None
    method: str
    num_digits: int | None
    action_on_empty: bool


@dataclass(slots=True, kw_only=True)
class FakeCall:
    """A call made through the fake."""

    sid: str
    account_sid: str
    to: str
    from_: str
    phone_number_sid: str | None
    #: The ``Twiml`` parameter, or None (then ``url``).
    twiml: str | None
    url: str | None
    method: str
    status_callback: str | None
    status_callback_method: str
    #: StatusCallbackEvent (``completed`` always).
    events: frozenset[str]
    timeout: int
    status: str
    outcome: Outcome
    date_created: float
    date_updated: float
    start_time: float | None = None
    end_time: float | None = None
    duration: int | None = None
    error_code: int | None = None
    #: The TwiML the call ran (``twiml``, or what ``url`` answered).
    twiml_run: str | None = None
    gathers: list[GatherRecord] = field(default_factory=list)
    callbacks: list[CallbackRecord] = field(default_factory=list)
    #: What went wrong running its TwiML (an unreachable Url, TwiML that does not parse…).
    errors: list[str] = field(default_factory=list)
    sequence: int = 0
    # The Gather it waits at, the URL its TwiML came from (for relative actions), and the
    # timer that moves it on (cancelled by a press).
    pending: _Gather | None = field(default=None, repr=False)
    document_url: str | None = field(default=None, repr=False)
    timer: _Timer | None = field(default=None, repr=False)
    ended: bool = False

    @property
    def waiting_at_gather(self) -> bool:
        """Whether the call waits at a ``<Gather>`` (a :meth:`FakeTwilio.press` answers it)."""
        return self.pending is not None and not self.ended

    def resource(self, *, status: str | None = None) -> dict[str, Any]:
        base = f"{_API}/{self.account_sid}/Calls/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "annotation": None,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": rfc2822(self.date_created),
            "date_updated": rfc2822(self.date_updated),
            "direction": "outbound-api",
            "duration": None if self.duration is None else str(self.duration),
            "end_time": _optional_date(self.end_time),
            "forwarded_from": None,
            "from": self.from_,
            "from_formatted": self.from_,
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": self.phone_number_sid,
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": self.sid,
            "start_time": _optional_date(self.start_time),
            "status": status or self.status,
            "subresource_uris": {
                "events": f"{base}/Events.json",
                "notifications": f"{base}/Notifications.json",
                "recordings": f"{base}/Recordings.json",
            },
            "to": self.to,
            "to_formatted": self.to,
            "trunk_sid": None,
            "uri": f"{base}.json",
        }

    def to_json(self) -> dict[str, Any]:
        out = self.resource()
        out["outcome"] = self.outcome.name
        out["error_code"] = self.error_code
        out["twiml"] = self.twiml
        out["url"] = self.url
        out["twiml_run"] = self.twiml_run
        out["events"] = sorted(self.events)
        out["gathers"] = [gather.to_json() for gather in self.gathers]
        out["callbacks"] = [record.to_json() for record in self.callbacks]
        out["errors"] = list(self.errors)
        out["waiting_at_gather"] = self.waiting_at_gather
        return out


@dataclass(slots=True, kw_only=True)
class FakeNumber:
    """An incoming phone number of an account."""

    sid: str
    account_sid: str
    phone_number: str
    sms_url: str = ""
    sms_method: str = "POST"
    voice_url: str = ""
    voice_method: str = "POST"
    status_callback: str = ""
    friendly_name: str = ""
    date_created: float = 0.0
    date_updated: float = 0.0

    def resource(self) -> dict[str, Any]:
        base = f"{_API}/{self.account_sid}/IncomingPhoneNumbers/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "address_requirements": "none",
            "address_sid": None,
            "api_version": API_VERSION,
            "beta": False,
            "bundle_sid": None,
            "capabilities": {"fax": False, "mms": False, "sms": True, "voice": True},
            "date_created": rfc2822(self.date_created),
            "date_updated": rfc2822(self.date_updated),
            "emergency_address_sid": None,
            "emergency_address_status": "unregistered",
            "emergency_status": "Inactive",
            "friendly_name": self.friendly_name or self.phone_number,
            "identity_sid": None,
            "origin": "twilio",
            "phone_number": self.phone_number,
            "sid": self.sid,
            "sms_application_sid": "",
            "sms_fallback_method": "POST",
            "sms_fallback_url": "",
            "sms_method": self.sms_method,
            "sms_url": self.sms_url,
            "status": "in-use",
            "status_callback": self.status_callback,
            "status_callback_method": "POST",
            "subresource_uris": {"assigned_add_ons": f"{base}/AssignedAddOns.json"},
            "trunk_sid": None,
            "type": "local",
            "uri": f"{base}.json",
            "voice_application_sid": "",
            "voice_caller_id_lookup": False,
            "voice_fallback_method": "POST",
            "voice_fallback_url": "",
            "voice_method": self.voice_method,
            "voice_receive_mode": "voice",
            "voice_url": self.voice_url,
        }


class _Timer:
    """A job due at a time; cancelled ones are skipped when they come due."""

    __slots__ = ("alive", "due", "job", "seq")

    def __init__(self, due: float, seq: int, job: Job) -> None:
        self.due = due
        self.seq = seq
        self.job = job
        self.alive = True

    def __lt__(self, other: _Timer) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


# -- the server ------------------------------------------------------------------------------------
class FakeTwilio:
    """The fake Twilio API server; an async context manager (``async with FakeTwilio(…) as
    fake:`` starts it on ``host``/``port``, ``fake.url`` is its address)."""

    def __init__(
        self,
        *,
        accounts: Mapping[str, str],
        script: FakeScript | None = None,
        numbers: Iterable[str] | None = None,
        sms_url: str | None = None,
        voice_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        workers: int = DEFAULT_WORKERS,
        callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT,
        max_records: int = DEFAULT_MAX_RECORDS,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if not accounts:
            raise ValueError("give at least one account: {account_sid: auth_token}")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._accounts = dict(accounts)
        self._validators = {sid: RequestValidator(token) for sid, token in self._accounts.items()}
        self._auth_cache: dict[str, str] = {}
        self._fixed = None if numbers is None else tuple(dict.fromkeys(numbers))
        for number in self._fixed or ():
            if not _E164.fullmatch(number):
                raise ValueError(f"{number!r} is not an E.164 number (+86…)")
        self._default_sms_url = sms_url or ""
        self._default_voice_url = voice_url or ""
        self.host = host
        self.port = port
        self._workers_wanted = workers
        self._callback_timeout = aiohttp.ClientTimeout(total=callback_timeout)
        self._max_records = max_records
        self.on_event = on_event
        self._script = script or FakeScript()
        self._rng = random.Random(self._script.seed)  # noqa: S311 — a simulation, not crypto
        self._burst_left = self._script.rate_limit_burst
        # SIDs: a random prefix per fake and a counter (unique, and cheap to make).
        self._sid_prefix = secrets.token_hex(8)
        self._sid_counter = itertools.count(1)
        self._seq = itertools.count(1)
        # Ordered: the oldest record is dropped past max_records (a dict's first key, deleted
        # again and again, costs a scan over the dead slots in front of it).
        self._messages: OrderedDict[str, FakeMessage] = OrderedDict()
        self._calls: OrderedDict[str, FakeCall] = OrderedDict()
        self._manual: list[CallbackRecord] = []
        self._numbers: dict[str, dict[str, FakeNumber]] = {sid: {} for sid in self._accounts}
        self._numbers_by_sid: dict[str, FakeNumber] = {}
        for account in self._accounts:
            for number in self._fixed or ():
                self._add_number(account, number)
        self._counts: Counter[str] = Counter()
        # The callback machinery (see start).
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._timers: list[_Timer] = []
        self._armed: asyncio.TimerHandle | None = None
        self._armed_due = math.inf
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self, *, host: str | None = None, port: int | None = None) -> str:
        """Listen (port 0: any free port) and start the callback workers; returns the URL."""
        if self._runner is not None:
            raise RuntimeError("the fake is already running")
        self.host = host if host is not None else self.host
        port = self.port if port is None else port
        self._closing.clear()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._workers_wanted * 2),
            timeout=self._callback_timeout,
        )
        self._workers = [
            asyncio.create_task(self._worker(), name=f"fake-twilio-worker-{i}")
            for i in range(self._workers_wanted)
        ]
        # handler_cancellation: a create hanging on purpose ends when its client gives up.
        self._runner = web.AppRunner(
            self._app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port, backlog=1024)
        await site.start()
        bound = self._runner.addresses[0]
        self.port = int(bound[1])
        shown = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # noqa: S104
        if ":" in shown:
            shown = f"[{shown}]"
        self.url = f"http://{shown}:{self.port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening, drop the callbacks not yet sent, close the session. Idempotent."""
        self._closing.set()
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None
        self._armed_due = math.inf
        self._timers.clear()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while not self._queue.empty():
            self._queue.get_nowait()
        self._pending = 0
        self._idle.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the script ----------------------------------------------------------------------------
    @property
    def script(self) -> FakeScript:
        return self._script

    @script.setter
    def script(self, script: FakeScript) -> None:
        """A new script takes effect for the next request; its burst of 429s starts now and
        the generator is seeded again (the same script replays the same draws)."""
        self._script = script
        self._burst_left = script.rate_limit_burst
        self._rng = random.Random(script.seed)  # noqa: S311 — a simulation, not crypto

    # -- records (test hooks) ------------------------------------------------------------------
    @property
    def messages(self) -> list[FakeMessage]:
        """Every message, sent and received (replies), oldest first."""
        return list(self._messages.values())

    @property
    def sent(self) -> list[FakeMessage]:
        return [m for m in self._messages.values() if m.direction != "inbound"]

    @property
    def replies(self) -> list[FakeMessage]:
        """People's messages to the fake's numbers (scripted replies and :meth:`reply`)."""
        return [m for m in self._messages.values() if m.direction == "inbound"]

    @property
    def calls(self) -> list[FakeCall]:
        return list(self._calls.values())

    def message(self, sid: str) -> FakeMessage:
        return self._messages[sid]

    def call(self, sid: str) -> FakeCall:
        return self._calls[sid]

    @property
    def numbers(self) -> list[FakeNumber]:
        return [n for numbers in self._numbers.values() for n in numbers.values()]

    def callbacks(self) -> list[CallbackRecord]:
        """Every webhook request made, in the order they were sent."""
        records = [r for m in self._messages.values() for r in m.callbacks]
        records += [r for c in self._calls.values() for r in c.callbacks]
        records += self._manual
        return sorted(records, key=lambda r: r.seq)

    def stats(self) -> dict[str, int]:
        """Counters since the start (or :meth:`reset`), the work still scheduled, and the
        messages and calls by status."""
        out = dict(self._counts)
        out["pending"] = self._pending
        for message in self._messages.values():
            key = f"messages_{message.status}"
            out[key] = out.get(key, 0) + 1
        for call in self._calls.values():
            key = f"calls_{call.status}"
            out[key] = out.get(key, 0) + 1
        return out

    def reset(self) -> None:
        """Forget the records and counters (the numbers and the script stay)."""
        self._messages.clear()
        self._calls.clear()
        self._manual.clear()
        self._counts.clear()

    def add_number(
        self,
        number: str,
        *,
        account_sid: str | None = None,
        sms_url: str | None = None,
        voice_url: str | None = None,
    ) -> list[FakeNumber]:
        """Make ``number`` a number of one account (default every account), optionally with
        its webhooks; returns its records. With ``numbers=[…]`` given, it joins that list."""
        if not _E164.fullmatch(number):
            raise ValueError(f"{number!r} is not an E.164 number (+86…)")
        if self._fixed is not None and number not in self._fixed:
            self._fixed = (*self._fixed, number)
        accounts = [account_sid] if account_sid is not None else list(self._accounts)
        out = []
        for account in accounts:
            record = self._numbers[account].get(number) or self._add_number(account, number)
            if sms_url is not None:
                record.sms_url = sms_url
            if voice_url is not None:
                record.voice_url = voice_url
            out.append(record)
        return out

    async def wait_idle(self, timeout: float | None = 10.0) -> None:  # noqa: ASYNC109
        """Until every scheduled callback, reply and key press is done (TimeoutError)."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def reply(
        self, *, from_: str, to: str, body: str, account_sid: str | None = None
    ) -> FakeMessage:
        """A person (``from_``) texts ``body`` to the fake's number ``to`` now: recorded as an
        inbound message and posted, signed, to the number's sms_url if it has one."""
        account = account_sid or self._account_of(to)
        number = self._number(account, to)
        if number is None:
            raise ValueError(f"{to} is not a number of account {account}")
        now = time.time()
        message = FakeMessage(
            sid=self._sid("SM"),
            account_sid=account,
            to=to,
            from_=from_,
            body=body,
            messaging_service_sid=None,
            status_callback=None,
            direction="inbound",
            status="received",
            num_segments=sms_segments(body),
            date_created=now,
            date_updated=now,
            date_sent=now,
        )
        self._store_message(message)
        self._counts["replies"] += 1
        self._event(f"{message.sid} reply from {from_} to {to}: {body!r}")
        if number.sms_url:
            params = {
                "ToCountry": _country(to),
                "ToState": "",
                "SmsMessageSid": message.sid,
                "NumMedia": "0",
                "ToCity": "",
                "FromZip": "",
                "SmsSid": message.sid,
                "FromState": "",
                "SmsStatus": "received",
                "FromCity": "",
                "Body": body,
                "FromCountry": _country(from_),
                "To": to,
                "ToZip": "",
                "NumSegments": str(message.num_segments),
                "MessageSid": message.sid,
                "AccountSid": account,
                "From": from_,
                "ApiVersion": API_VERSION,
            }
            await self._webhook(
                message.callbacks,
                kind="sms-inbound",
                sid=message.sid,
                url=number.sms_url,
                method=number.sms_method,
                params=params,
                account_sid=account,
                repeat=self._script.duplicate_callbacks,
            )
        return message

    async def press(self, call_sid: str, digits: str) -> GatherRecord:
        """The person on call ``call_sid`` presses ``digits`` now, at the ``<Gather>`` the call
        waits at (LookupError when it waits at none); returns the Gather with its answer."""
        call = self._calls[call_sid]
        gather = call.pending
        if gather is None or call.ended:
            raise LookupError(f"call {call_sid} is not waiting at a <Gather> ({call.status})")
        return await self._answer_gather(call, gather, digits)

    async def post_callback(
        self,
        url: str,
        params: Mapping[str, str],
        *,
        sign: Sign = True,
        account_sid: str | None = None,
        method: str = "POST",
    ) -> CallbackRecord:
        """Send any webhook request now — a callback for an unknown SID, a replayed one —
        signed with the account's token (``sign=True``), unsigned (False) or with a signature
        made with a wrong token (``"forged"``)."""
        account = account_sid or next(iter(self._accounts))
        records: list[CallbackRecord] = []
        await self._webhook(
            records,
            kind="manual",
            sid=None,
            url=url,
            method=method,
            params=dict(params),
            account_sid=account,
            sign=sign,
        )
        self._manual.extend(records)
        return records[0]

    # -- scheduling ----------------------------------------------------------------------------
    def _schedule(self, delay: float, job: Job) -> _Timer | None:
        """Run ``job`` on a worker after ``delay`` seconds; wait_idle waits for it."""
        if self._closing.is_set():
            return None
        self._pending += 1
        self._idle.clear()
        if delay <= 0:
            self._queue.put_nowait(job)
            return None
        loop = asyncio.get_running_loop()
        timer = _Timer(loop.time() + delay, next(self._seq), job)
        heapq.heappush(self._timers, timer)
        if timer.due < self._armed_due:
            self._arm(loop)
        return timer

    def _cancel(self, timer: _Timer | None) -> None:
        if timer is not None and timer.alive:
            timer.alive = False
            self._job_done()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None
        self._armed_due = math.inf
        while self._timers and not self._timers[0].alive:
            heapq.heappop(self._timers)
        if self._timers:
            self._armed_due = self._timers[0].due
            self._armed = loop.call_at(self._armed_due, self._fire)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        self._armed = None
        now = loop.time()
        while self._timers and self._timers[0].due <= now:
            timer = heapq.heappop(self._timers)
            if timer.alive:
                timer.alive = False
                self._queue.put_nowait(timer.job)
        self._arm(loop)

    def _job_done(self) -> None:
        self._pending -= 1
        if self._pending <= 0:
            self._pending = 0
            self._idle.set()

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await job()
            except Exception:
                self._counts["job_errors"] += 1
                log.exception("fake Twilio: a scheduled step failed")
            finally:
                self._job_done()

    # -- webhooks ------------------------------------------------------------------------------
    async def _webhook(
        self,
        records: list[CallbackRecord],
        *,
        kind: str,
        sid: str | None,
        url: str,
        method: str,
        params: dict[str, str],
        account_sid: str,
        sign: Sign = True,
        repeat: bool = False,
    ) -> CallbackRecord:
        """Request ``url`` as Twilio does (signed form POST, or GET with the parameters in the
        query) and record it in ``records``; ``repeat`` sends the same request twice (same
        idempotency token, as Twilio's retries). Returns the first record."""
        method = method.upper()
        if method == "GET":
            target = url + ("&" if "?" in url else "?") + urlencode(params)
            signed_url, signed_params, data = target, {}, None
        else:
            target, signed_url, signed_params, data = url, url, params, params
        headers = {
            "User-Agent": "TwilioProxy/1.1",
            "I-Twilio-Idempotency-Token": secrets.token_hex(16),
        }
        signature: str | None = None
        if sign:
            validator = (
                self._validators[account_sid]
                if sign is True
                else RequestValidator("forged-" + secrets.token_hex(8))
            )
            signature = validator.compute_signature(signed_url, signed_params)
            headers["X-Twilio-Signature"] = signature
        # encoded=True: request exactly the URL that was signed (no re-quoting by yarl).
        request_url = URL(target, encoded=True) if target.isascii() else URL(target)
        first = len(records)
        for _ in range(2 if repeat else 1):
            record = CallbackRecord(
                seq=next(self._seq),
                kind=kind,
                sid=sid,
                method=method,
                url=target,
                params=dict(params),
                signature=signature,
                at=time.time(),
            )
            records.append(record)
            session = self._session
            if session is None:
                record.error = "the fake is not running"
                continue
            try:
                async with session.request(
                    method, request_url, data=data, headers=headers
                ) as response:
                    body = await response.read()
                    record.status = response.status
                    record.answer = body[:_ANSWER_LIMIT].decode("utf-8", "replace")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._counts["callbacks_sent"] += 1
            if not record.ok:
                self._counts["callbacks_failed"] += 1
        return records[first]

    def _event(self, text: str) -> None:
        if self.on_event is not None:
            self.on_event(text)

    # -- numbers and accounts ------------------------------------------------------------------
    def _sid(self, prefix: str) -> str:
        return f"{prefix}{self._sid_prefix}{next(self._sid_counter):016x}"

    def _add_number(self, account: str, number: str) -> FakeNumber:
        now = time.time()
        record = FakeNumber(
            sid=self._sid("PN"),
            account_sid=account,
            phone_number=number,
            sms_url=self._default_sms_url,
            voice_url=self._default_voice_url,
            date_created=now,
            date_updated=now,
        )
        self._numbers[account][number] = record
        self._numbers_by_sid[record.sid] = record
        return record

    def _number(self, account: str, number: str) -> FakeNumber | None:
        """The account's number, made on first use when the fake has no fixed list."""
        found = self._numbers[account].get(number)
        if found is None and self._fixed is None and _E164.fullmatch(number):
            found = self._add_number(account, number)
        return found

    def _account_of(self, number: str) -> str:
        for account, numbers in self._numbers.items():
            if number in numbers:
                return account
        return next(iter(self._accounts))

    def _service_sender(self, account: str, to: str) -> str:
        """The number a messaging service sends from (stable per recipient)."""
        pool = self._fixed or (DEFAULT_SERVICE_SENDER,)
        number = pool[zlib.crc32(to.encode()) % len(pool)]
        self._number(account, number)
        return number

    def _store_message(self, message: FakeMessage) -> None:
        self._messages[message.sid] = message
        if len(self._messages) > self._max_records:
            self._messages.popitem(last=False)

    # -- the HTTP API --------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        account = f"{_API}/{{account}}"
        app.router.add_get(f"{_API}/{{account}}.json", self._get_account)
        app.router.add_post(f"{account}/Messages.json", self._create_message)
        app.router.add_get(f"{account}/Messages.json", self._list_messages)
        app.router.add_get(f"{account}/Messages/{{sid}}.json", self._get_message)
        app.router.add_post(f"{account}/Calls.json", self._create_call)
        app.router.add_get(f"{account}/Calls.json", self._list_calls)
        app.router.add_get(f"{account}/Calls/{{sid}}.json", self._get_call)
        app.router.add_get(f"{account}/IncomingPhoneNumbers.json", self._list_numbers)
        app.router.add_get(f"{account}/IncomingPhoneNumbers/{{sid}}.json", self._get_number)
        app.router.add_post(f"{account}/IncomingPhoneNumbers/{{sid}}.json", self._update_number)
        app.router.add_get("/_fake/messages", self._fake_messages)
        app.router.add_get("/_fake/calls", self._fake_calls)
        app.router.add_get("/_fake/callbacks", self._fake_callbacks)
        app.router.add_get("/_fake/numbers", self._fake_numbers)
        app.router.add_post("/_fake/numbers", self._fake_add_number)
        app.router.add_get("/_fake/stats", self._fake_stats)
        app.router.add_get("/_fake/script", self._fake_script)
        app.router.add_post("/_fake/script", self._fake_set_script)
        app.router.add_post("/_fake/reply", self._fake_reply)
        app.router.add_post("/_fake/press", self._fake_press)
        app.router.add_post("/_fake/callback", self._fake_callback)
        app.router.add_post("/_fake/idle", self._fake_idle)
        app.router.add_post("/_fake/reset", self._fake_reset)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    def _authenticate(self, header: str) -> str | None:
        """The account SID a Basic Authorization header proves, or None."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        token = self._accounts.get(user)
        if token is None or not hmac.compare_digest(token.encode(), password.encode()):
            return None
        self._auth_cache[header] = user
        return user

    async def _guard(self, request: web.Request, *, create: bool = False) -> str | web.Response:
        """Authentication and the script's API misbehaviour; the account, or the answer."""
        self._counts["api_requests"] += 1
        account = request.match_info["account"]
        header = request.headers.get("Authorization", "")
        authenticated = self._auth_cache.get(header) or self._authenticate(header)
        if authenticated is None or authenticated != account:
            self._counts["auth_failed"] += 1
            return _error(
                401, 20003, "Authenticate", headers={"WWW-Authenticate": 'Basic realm="Twilio API"'}
            )
        script = self._script
        if script.latency:
            await asyncio.sleep(script.latency)
        if script.error_rate and self._rng.random() < script.error_rate:
            self._counts["errors_injected"] += 1
            if self._rng.random() < 0.5:
                return _error(500, 20500, "Internal Server Error")
            return _error(503, 20503, "Service Unavailable")
        if create:
            if self._burst_left > 0:
                self._burst_left -= 1
                self._counts["rate_limited"] += 1
                return _error(
                    429,
                    20429,
                    "Too Many Requests",
                    headers={"Retry-After": str(script.retry_after)},
                )
            if script.timeout_rate and self._rng.random() < script.timeout_rate:
                self._counts["timeouts_injected"] += 1
                # Hang until the client gives up (the handler is cancelled) or the fake stops.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(script.hang_seconds):
                        await self._closing.wait()
                return _error(503, 20503, "Service Unavailable")
        return account

    def _reject(self, status: int, code: int, message: str) -> web.Response:
        self._counts["rejected"] += 1
        return _error(status, code, message)

    async def _not_found(self, request: web.Request) -> web.Response:
        return _error(404, 20404, f"The requested resource {request.path} was not found")

    async def _get_account(self, request: web.Request) -> web.Response:
        account = await self._guard(request)
        if isinstance(account, web.Response):
            return account
        now = rfc2822(time.time())
        base = f"{_API}/{account}"
        return _json(
            200,
            {
                "auth_token": self._accounts[account],
                "date_created": now,
                "date_updated": now,
                "friendly_name": "Tocsin fake account",
                "owner_account_sid": account,
                "sid": account,
                "status": "active",
                "subresource_uris": {
                    "calls": f"{base}/Calls.json",
                    "incoming_phone_numbers": f"{base}/IncomingPhoneNumbers.json",
                    "messages": f"{base}/Messages.json",
                },
                "type": "Full",
                "uri": f"{base}.json",
            },
        )

    async def _respond_then(
        self, request: web.Request, response: web.Response, first: Job | None, delay: float
    ) -> web.Response:
        """Send the create's answer, and only then schedule what follows (so a callback with
        no delay is still later than the answer unless the script asks for the race)."""
        await response.prepare(request)
        await response.write_eof()
        if first is not None:
            self._schedule(delay, first)
        return response

    # Messages ----------------------------------------------------------------------------------
    async def _create_message(self, request: web.Request) -> web.Response:
        account = await self._guard(request, create=True)
        if isinstance(account, web.Response):
            return account
        form = await request.post()
        to = _field(form, "To")
        from_ = _field(form, "From")
        service = _field(form, "MessagingServiceSid")
        body = _field(form, "Body") or ""
        callback = _field(form, "StatusCallback") or None
        script = self._script
        if not to:
            return self._reject(400, 21604, "A 'To' phone number is required.")
        if not _E164.fullmatch(to):
            return self._reject(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        sender: str | None = None
        if service:
            if not _SERVICE_SID.fullmatch(service):
                return self._reject(400, 21705, f"The Messaging Service Sid {service} is invalid.")
        elif not from_:
            return self._reject(400, 21603, "A 'From' phone number is required.")
        if from_:
            if not _E164.fullmatch(from_):
                return self._reject(
                    400,
                    21212,
                    f"The 'From' number {from_} is not a valid phone number, shortcode, or "
                    "alphanumeric sender ID.",
                )
            if self._number(account, from_) is None:
                return self._reject(
                    400,
                    21606,
                    f"The From phone number {from_} is not a valid, SMS-capable inbound phone "
                    "number or short code for your account.",
                )
            sender = from_
        if not body:
            return self._reject(400, 21602, "Message body is required.")
        if len(body) > MAX_BODY:
            return self._reject(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        if callback is not None and not _absolute_url(callback):
            return self._reject(
                400, 21609, f"The StatusCallback URL {callback} is not a valid URL."
            )
        if to in script.unsubscribed:
            return self._reject(400, 21610, "Attempt to send to unsubscribed recipient")
        if sender is None:
            sender = self._service_sender(account, to)
        outcome = script.sms_outcome(to, self._rng)
        now = time.time()
        message = FakeMessage(
            sid=self._sid("SM"),
            account_sid=account,
            to=to,
            from_=from_,
            body=body,
            messaging_service_sid=service,
            status_callback=callback,
            direction="outbound-api",
            status="accepted" if service else "queued",
            num_segments=sms_segments(body),
            date_created=now,
            date_updated=now,
            outcome=outcome,
            sender=sender,
        )
        self._store_message(message)
        self._counts["messages_created"] += 1
        answer = message.resource()
        if self.on_event is not None:
            self._event(f"{message.sid} {message.status} {sender} → {to}: {body[:40]!r}")
        if not script.callbacks:
            self._finish_message_now(message, outcome)
            return _json(201, answer)
        first = functools.partial(self._sms_sent, message, outcome)
        if script.callback_before_response and callback:
            # The race Twilio can produce: the first status callback before the answer.
            self._pending += 1
            self._idle.clear()
            try:
                await first()
            finally:
                self._job_done()
            return _json(201, answer)
        return await self._respond_then(request, _json(201, answer), first, script.callback_delay)

    def _finish_message_now(self, message: FakeMessage, outcome: Outcome) -> None:
        message.status = outcome.name
        message.error_code = outcome.error_code
        if message.status != "failed":
            message.date_sent = message.date_created

    async def _sms_sent(self, message: FakeMessage, outcome: Outcome) -> None:
        if outcome.name == "failed":
            await self._sms_final(message, outcome)  # never reached a carrier: only "failed"
            return
        now = time.time()
        message.status = "sent"
        message.date_sent = now
        message.date_updated = now
        message.from_ = message.from_ or message.sender
        self._event(f"{message.sid} sent")
        await self._sms_status_callback(message)
        self._schedule(
            self._script.callback_delay, functools.partial(self._sms_final, message, outcome)
        )

    async def _sms_final(self, message: FakeMessage, outcome: Outcome) -> None:
        message.status = outcome.name
        message.error_code = outcome.error_code
        message.date_updated = time.time()
        message.from_ = message.from_ or message.sender
        self._counts[f"sms_{message.status}"] += 1
        if self.on_event is not None:
            code = f" (error {message.error_code})" if message.error_code else ""
            self._event(f"{message.sid} {message.status}{code}")
        await self._sms_status_callback(message)
        if message.status == "delivered":
            text = self._script.reply_for(message.to, self._rng)
            if text is not None:
                self._schedule(
                    self._script.reply_delay,
                    functools.partial(self._scripted_reply, message, text),
                )

    async def _scripted_reply(self, message: FakeMessage, text: str) -> None:
        sender = message.sender or message.from_ or ""
        await self.reply(from_=message.to, to=sender, body=text, account_sid=message.account_sid)

    async def _sms_status_callback(self, message: FakeMessage) -> None:
        if not message.status_callback:
            return
        params: dict[str, str] = {}
        if message.error_code is not None:
            params["ErrorCode"] = str(message.error_code)
        if message.status == "delivered":
            params["RawDlrDoneDate"] = time.strftime("%y%m%d%H%M", time.gmtime())
        params["SmsSid"] = message.sid
        params["SmsStatus"] = message.status
        params["MessageStatus"] = message.status
        params["To"] = message.to
        if message.messaging_service_sid:
            params["MessagingServiceSid"] = message.messaging_service_sid
        params["MessageSid"] = message.sid
        params["AccountSid"] = message.account_sid
        params["From"] = message.from_ or message.sender or ""
        params["ApiVersion"] = API_VERSION
        await self._webhook(
            message.callbacks,
            kind="sms-status",
            sid=message.sid,
            url=message.status_callback,
            method="POST",
            params=params,
            account_sid=message.account_sid,
            repeat=self._script.duplicate_callbacks,
        )

    async def _get_record(
        self, request: web.Request, records: Mapping[str, FakeMessage] | Mapping[str, FakeCall]
    ) -> web.Response:
        """GET one message or call of the account: its resource, or Twilio's 404."""
        account = await self._guard(request)
        if isinstance(account, web.Response):
            return account
        record = records.get(request.match_info["sid"])
        if record is None or record.account_sid != account:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return _json(200, record.resource())

    async def _get_message(self, request: web.Request) -> web.Response:
        return await self._get_record(request, self._messages)

    async def _list_messages(self, request: web.Request) -> web.Response:
        account = await self._guard(request)
        if isinstance(account, web.Response):
            return account
        filters = {k: v for k in ("To", "From") if (v := request.query.get(k))}
        to, from_ = filters.get("To"), filters.get("From")
        found = [
            m.resource()
            for m in reversed(self._messages.values())  # Twilio lists the newest first
            if m.account_sid == account
            and (to is None or m.to == to)
            and (from_ is None or (m.from_ or m.sender) == from_)
        ]
        return self._page(request, "messages", found, filters)

    def _page(
        self, request: web.Request, key: str, items: list[dict[str, Any]], filters: dict[str, str]
    ) -> web.Response:
        """Twilio's list envelope around one page of ``items``."""
        try:
            size = min(1000, max(1, int(request.query.get("PageSize", "50"))))
            page = max(0, int(request.query.get("Page", "0")))
        except ValueError:
            return self._reject(400, 20001, "Invalid PageSize or Page")
        start = page * size
        chunk = items[start : start + size]

        def uri(number: int) -> str:
            return f"{request.path}?{urlencode({**filters, 'PageSize': size, 'Page': number})}"

        return _json(
            200,
            {
                "end": start + max(0, len(chunk) - 1),
                "first_page_uri": uri(0),
                key: chunk,
                "next_page_uri": uri(page + 1) if start + size < len(items) else None,
                "page": page,
                "page_size": size,
                "previous_page_uri": uri(page - 1) if page > 0 else None,
                "start": start,
                "uri": uri(page),
            },
        )

    # Calls ---------------------------------------------------------------------------------------
    async def _create_call(self, request: web.Request) -> web.Response:
        account = await self._guard(request, create=True)
        if isinstance(account, web.Response):
            return account
        form = await request.post()
        to = _field(form, "To")
        from_ = _field(form, "From")
        twiml = _field(form, "Twiml") or None
        url = _field(form, "Url") or None
        callback = _field(form, "StatusCallback") or None
        events = frozenset(
            e.strip().lower()
            for raw in form.getall("StatusCallbackEvent", [])
            if isinstance(raw, str)
            for e in raw.split(" ")
            if e.strip()
        )
        script = self._script
        if not to:
            return self._reject(400, 21201, "No 'To' number is specified")
        if not _E164.fullmatch(to):
            return self._reject(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not from_:
            return self._reject(400, 21213, "No 'From' number is specified")
        number = self._number(account, from_) if _E164.fullmatch(from_) else None
        if number is None:
            return self._reject(
                400,
                21210,
                f"The source phone number provided, {from_}, is not yet verified for your "
                "account. You may only make calls from phone numbers that you've verified or "
                "purchased from Twilio.",
            )
        if twiml is None and url is None:
            return self._reject(400, 21205, "Either a 'Url' or 'Twiml' parameter is required.")
        if url is not None and not _absolute_url(url):
            return self._reject(400, 21205, f"Url is not a valid URL: {url}")
        if callback is not None and not _absolute_url(callback):
            return self._reject(400, 21609, f"StatusCallback is not a valid URL: {callback}")
        unknown = events - _CALL_EVENTS
        if unknown:
            return self._reject(
                400, 21626, f"Invalid StatusCallbackEvent: {', '.join(sorted(unknown))}"
            )
        try:
            timeout = int(_field(form, "Timeout") or "60")
        except ValueError:
            return self._reject(400, 21216, "Timeout must be a whole number of seconds")
        now = time.time()
        call = FakeCall(
            sid=self._sid("CA"),
            account_sid=account,
            to=to,
            from_=from_,
            phone_number_sid=number.sid,
            twiml=twiml,
            url=url,
            method=(_field(form, "Method") or "POST").upper(),
            status_callback=callback,
            status_callback_method=(_field(form, "StatusCallbackMethod") or "POST").upper(),
            events=events | {"completed"},
            timeout=timeout,
            status="queued",
            outcome=script.call_outcome(to, self._rng),
            date_created=now,
            date_updated=now,
        )
        self._calls[call.sid] = call
        if len(self._calls) > self._max_records:
            self._calls.popitem(last=False)
        self._counts["calls_created"] += 1
        answer = call.resource()
        self._event(f"{call.sid} queued {from_} → {to}")
        if not script.callbacks:
            self._finish_call_now(call)
            return _json(201, answer)
        first = functools.partial(self._call_initiated, call)
        if script.callback_before_response and callback:
            self._pending += 1
            self._idle.clear()
            try:
                await first()
            finally:
                self._job_done()
            return _json(201, answer)
        return await self._respond_then(request, _json(201, answer), first, script.callback_delay)

    def _finish_call_now(self, call: FakeCall) -> None:
        name = call.outcome.name
        call.ended = True
        call.status = "completed" if name == "answered" else name
        call.error_code = call.outcome.error_code
        call.duration = 1 if name == "answered" else 0
        call.start_time = call.date_created if name == "answered" else None
        call.end_time = call.date_created

    def _call_params(self, call: FakeCall, status: str) -> dict[str, str]:
        """What Twilio tells a call's webhooks about it (the TwiML Url, a Gather's action)."""
        to_country, from_country = _country(call.to), _country(call.from_)
        return {
            "AccountSid": call.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": status,
            "Called": call.to,
            "CalledCity": "",
            "CalledCountry": to_country,
            "CalledState": "",
            "CalledZip": "",
            "Caller": call.from_,
            "CallerCity": "",
            "CallerCountry": from_country,
            "CallerState": "",
            "CallerZip": "",
            "Direction": "outbound-api",
            "From": call.from_,
            "FromCity": "",
            "FromCountry": from_country,
            "FromState": "",
            "FromZip": "",
            "To": call.to,
            "ToCity": "",
            "ToCountry": to_country,
            "ToState": "",
            "ToZip": "",
        }

    async def _call_event(
        self, call: FakeCall, event: str, status: str, extra: Mapping[str, str] | None = None
    ) -> None:
        """The status callback of one call progress event, if it was asked for."""
        call.date_updated = time.time()
        if not call.status_callback or event not in call.events:
            return
        to_country, from_country = _country(call.to), _country(call.from_)
        # Twilio's order (the signature sorts them anyway).
        params = {
            "Called": call.to,
            "ToState": "",
            "CallerCountry": from_country,
            "Direction": "outbound-api",
            "Timestamp": rfc2822(call.date_updated),
            "CallbackSource": "call-progress-events",
            "CallerState": "",
            "ToZip": "",
            "SequenceNumber": str(call.sequence),
            "CallSid": call.sid,
            "To": call.to,
            "CallerZip": "",
            "ToCountry": to_country,
            "StatusCallbackEvent": event,
            "CalledZip": "",
            "ApiVersion": API_VERSION,
            "CalledCity": "",
            "CallStatus": status,
            **(extra or {}),
            "From": call.from_,
            "AccountSid": call.account_sid,
            "CalledCountry": to_country,
            "CallerCity": "",
            "ToCity": "",
            "FromCountry": from_country,
            "Caller": call.from_,
            "FromCity": "",
            "CalledState": "",
            "FromZip": "",
            "FromState": "",
        }
        call.sequence += 1
        await self._webhook(
            call.callbacks,
            kind="call-status",
            sid=call.sid,
            url=call.status_callback,
            method=call.status_callback_method,
            params=params,
            account_sid=call.account_sid,
            repeat=self._script.duplicate_callbacks,
        )

    async def _call_initiated(self, call: FakeCall) -> None:
        self._event(f"{call.sid} initiated")
        await self._call_event(call, "initiated", "initiated")
        # A busy line or a failed call does not ring.
        rings = call.outcome.name in ("answered", "no-answer")
        step = self._call_ringing if rings else self._call_end
        self._schedule(self._script.callback_delay, functools.partial(step, call))

    async def _call_ringing(self, call: FakeCall) -> None:
        call.status = "ringing"
        self._event(f"{call.sid} ringing")
        await self._call_event(call, "ringing", "ringing")
        step = self._call_answered if call.outcome.name == "answered" else self._call_end
        self._schedule(self._script.callback_delay, functools.partial(step, call))

    async def _call_answered(self, call: FakeCall) -> None:
        call.status = "in-progress"
        call.start_time = time.time()
        self._event(f"{call.sid} answered")
        await self._call_event(call, "answered", "in-progress")
        twiml = call.twiml
        if twiml is None:
            record = await self._webhook(
                call.callbacks,
                kind="twiml",
                sid=call.sid,
                url=call.url or "",
                method=call.method,
                params=self._call_params(call, "in-progress"),
                account_sid=call.account_sid,
            )
            if not record.ok:
                # Twilio's 11200 (HTTP retrieval failure): an error message, then it hangs up.
                call.errors.append(f"11200 fetching {call.url}: {record.error or record.status}")
                self._schedule(0, functools.partial(self._call_end, call))
                return
            twiml = record.answer
            call.document_url = call.url
        call.twiml_run = twiml
        self._follow_twiml(call, twiml, call.document_url)

    def _follow_twiml(self, call: FakeCall, twiml: str, document_url: str | None) -> None:
        """Wait at the TwiML's Gather (the person presses after the speech), or hang up after
        the speech when it has none."""
        gather, error = _find_gather(twiml)
        if error is not None:
            call.errors.append(error)
        delay = self._script.speak_delay
        if gather is None or len(call.gathers) >= MAX_GATHERS:
            call.timer = self._schedule(delay, functools.partial(self._call_end, call))
            return
        if gather.action is None:
            gather.action = document_url  # Twilio posts to the current document by default
        elif document_url is not None:
            gather.action = urljoin(document_url, gather.action)
        call.pending = gather
        call.document_url = document_url
        call.timer = self._schedule(delay, functools.partial(self._call_keys, call, gather))

    async def _call_keys(self, call: FakeCall, gather: _Gather) -> None:
        """The scripted person at a Gather: presses the keys, or lets it time out."""
        call.timer = None
        if call.pending is not gather or call.ended:
            return
        digits = self._script.digits_for(call.to)
        if digits:
            await self._answer_gather(call, gather, digits)
        else:
            call.timer = self._schedule(
                self._script.gather_timeout,
                functools.partial(self._gather_timed_out, call, gather),
            )

    async def _gather_timed_out(self, call: FakeCall, gather: _Gather) -> None:
        call.timer = None
        if call.pending is not gather or call.ended:
            return
        if gather.action_on_empty:
            await self._answer_gather(call, gather, "")
            return
        # Nobody pressed: Twilio goes on with the verbs after the Gather (not simulated).
        call.pending = None
        call.gathers.append(
            GatherRecord(
                action=gather.action,
                method=gather.method,
                num_digits=gather.num_digits,
                digits=None,
                at=time.time(),
            )
        )
        self._event(f"{call.sid} nobody pressed")
        call.timer = self._schedule(
            self._script.speak_delay, functools.partial(self._call_end, call)
        )

    async def _answer_gather(self, call: FakeCall, gather: _Gather, digits: str) -> GatherRecord:
        """Post the keys to the Gather's action and go on with the TwiML it answers."""
        call.pending = None
        self._cancel(call.timer)
        call.timer = None
        pressed = digits[: gather.num_digits] if gather.num_digits else digits
        record = GatherRecord(
            action=gather.action,
            method=gather.method,
            num_digits=gather.num_digits,
            digits=pressed,
            at=time.time(),
        )
        call.gathers.append(record)
        self._counts["gathers"] += 1
        self._event(f"{call.sid} pressed {pressed!r}")
        if gather.action is None or not _absolute_url(gather.action):
            record.error = f"the Gather's action is not an absolute URL: {gather.action!r}"
            call.errors.append(record.error)
            call.timer = self._schedule(0, functools.partial(self._call_end, call))
            return record
        params = self._call_params(call, "in-progress")
        params |= {"Digits": pressed, "FinishedOnKey": "", "msg": "Gather End"}
        answer = await self._webhook(
            call.callbacks,
            kind="gather",
            sid=call.sid,
            url=gather.action,
            method=gather.method,
            params=params,
            account_sid=call.account_sid,
        )
        record.status = answer.status
        record.twiml = answer.answer
        record.error = answer.error
        if answer.ok and not call.ended:
            self._follow_twiml(call, answer.answer, gather.action)
        elif not call.ended:
            call.errors.append(f"11200 posting the Gather to {gather.action}")
            call.timer = self._schedule(0, functools.partial(self._call_end, call))
        return record

    async def _call_end(self, call: FakeCall) -> None:
        if call.ended:
            return
        call.ended = True
        call.pending = None
        call.timer = None
        now = time.time()
        name = call.outcome.name
        status = "completed" if name == "answered" else name
        call.status = status
        call.end_time = now
        call.error_code = call.outcome.error_code
        if call.start_time is not None:
            call.duration = max(1, math.ceil(now - call.start_time))
        else:
            call.duration = 0
        self._counts[f"call_{status}"] += 1
        self._event(f"{call.sid} {status} after {call.duration} s")
        extra = {
            "CallDuration": str(call.duration),
            # Billed minutes, rounded up.
            "Duration": str(math.ceil(call.duration / 60)),
            "SipResponseCode": _SIP[status],
        }
        if call.error_code is not None:
            extra["ErrorCode"] = str(call.error_code)
        await self._call_event(call, "completed", status, extra)

    async def _get_call(self, request: web.Request) -> web.Response:
        return await self._get_record(request, self._calls)

    async def _list_calls(self, request: web.Request) -> web.Response:
        account = await self._guard(request)
        if isinstance(account, web.Response):
            return account
        filters = {k: v for k in ("To", "From", "Status") if (v := request.query.get(k))}
        found = [
            c.resource()
            for c in reversed(self._calls.values())
            if c.account_sid == account
            and filters.get("To", c.to) == c.to
            and filters.get("From", c.from_) == c.from_
            and filters.get("Status", c.status) == c.status
        ]
        return self._page(request, "calls", found, filters)

    # Incoming phone numbers ----------------------------------------------------------------------
    async def _list_numbers(self, request: web.Request) -> web.Response:
        account = await self._guard(request)
        if isinstance(account, web.Response):
            return account
        filters = {k: v for k in ("PhoneNumber", "FriendlyName") if (v := request.query.get(k))}
        wanted = filters.get("PhoneNumber")
        if wanted is not None and self._fixed is None and _E164.fullmatch(wanted):
            self._number(account, wanted)  # any number is the fake's: list it when asked
        found = [
            n.resource()
            for n in self._numbers[account].values()
            if (wanted is None or wanted in n.phone_number)
            and filters.get("FriendlyName", n.friendly_name) == n.friendly_name
        ]
        return self._page(request, "incoming_phone_numbers", found, filters)

    def _number_by_sid(self, request: web.Request, account: str) -> FakeNumber | None:
        number = self._numbers_by_sid.get(request.match_info["sid"])
        return number if number is not None and number.account_sid == account else None

    async def _get_number(self, request: web.Request) -> web.Response:
        account = await self._guard(request)
        if isinstance(account, web.Response):
            return account
        number = self._number_by_sid(request, account)
        if number is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return _json(200, number.resource())

    async def _update_number(self, request: web.Request) -> web.Response:
        account = await self._guard(request)
        if isinstance(account, web.Response):
            return account
        number = self._number_by_sid(request, account)
        if number is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        form = await request.post()
        for name in ("SmsUrl", "VoiceUrl", "StatusCallback"):
            value = _field(form, name)
            if value and not _absolute_url(value):
                return self._reject(400, 21502, f"{name} is not a valid URL: {value}")
        updates = {
            "SmsUrl": "sms_url",
            "SmsMethod": "sms_method",
            "VoiceUrl": "voice_url",
            "VoiceMethod": "voice_method",
            "StatusCallback": "status_callback",
            "FriendlyName": "friendly_name",
        }
        for name, attribute in updates.items():
            value = _field(form, name)
            if value is not None:
                setattr(number, attribute, value.upper() if name.endswith("Method") else value)
        number.date_updated = time.time()
        self._event(f"{number.phone_number} sms_url={number.sms_url or '-'}")
        return _json(200, number.resource())

    # -- /_fake/… ------------------------------------------------------------------------------
    async def _fake_messages(self, request: web.Request) -> web.Response:
        query = request.query
        limit = int(query.get("limit", "0") or "0")
        found = [
            m.to_json()
            for m in self._messages.values()
            if query.get("to", m.to) == m.to
            and query.get("direction", m.direction) == m.direction
            and query.get("sid", m.sid) == m.sid
        ]
        return _json(200, {"messages": found[-limit:] if limit else found})

    async def _fake_calls(self, request: web.Request) -> web.Response:
        query = request.query
        found = [
            c.to_json()
            for c in self._calls.values()
            if query.get("to", c.to) == c.to and query.get("sid", c.sid) == c.sid
        ]
        return _json(200, {"calls": found})

    async def _fake_callbacks(self, request: web.Request) -> web.Response:
        return _json(200, {"callbacks": [r.to_json() for r in self.callbacks()]})

    async def _fake_numbers(self, request: web.Request) -> web.Response:
        return _json(200, {"numbers": [n.resource() for n in self.numbers]})

    async def _fake_stats(self, request: web.Request) -> web.Response:
        return _json(200, self.stats())

    async def _fake_script(self, request: web.Request) -> web.Response:
        return _json(200, self._script.to_json())

    async def _control_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _json(400, {"error": "the body must be a JSON object"})
        if not isinstance(body, dict):
            return _json(400, {"error": "the body must be a JSON object"})
        return body

    async def _fake_set_script(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            self.script = self._script.updated(body)
        except (TypeError, ValueError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, self._script.to_json())

    async def _fake_add_number(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            added = self.add_number(
                str(body.get("number", "")),
                account_sid=body.get("account_sid"),
                sms_url=body.get("sms_url"),
                voice_url=body.get("voice_url"),
            )
        except (KeyError, ValueError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, {"numbers": [n.resource() for n in added]})

    async def _fake_reply(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            message = await self.reply(
                from_=str(body["from"]),
                to=str(body["to"]),
                body=str(body["body"]),
                account_sid=body.get("account_sid"),
            )
        except (KeyError, ValueError) as exc:
            return _json(400, {"error": f"give from, to and body: {exc}"})
        return _json(200, message.to_json())

    async def _fake_press(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            record = await self.press(str(body["call_sid"]), str(body["digits"]))
        except KeyError as exc:
            return _json(404, {"error": f"give call_sid and digits of a known call: {exc}"})
        except LookupError as exc:
            return _json(409, {"error": str(exc)})
        return _json(200, record.to_json())

    async def _fake_callback(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        if isinstance(body, web.Response):
            return body
        sign = body.get("sign", True)
        if sign not in (True, False, "forged"):
            return _json(400, {"error": 'sign is true, false or "forged"'})
        params = body.get("params", {})
        if not isinstance(params, dict) or not isinstance(body.get("url"), str):
            return _json(400, {"error": "give url (string) and params (object)"})
        record = await self.post_callback(
            body["url"],
            {str(k): str(v) for k, v in params.items()},
            sign=sign,
            account_sid=body.get("account_sid"),
            method=str(body.get("method", "POST")),
        )
        return _json(200, record.to_json())

    async def _fake_idle(self, request: web.Request) -> web.Response:
        body = await self._control_body(request) if request.can_read_body else {}
        if isinstance(body, web.Response):
            return body
        try:
            await self.wait_idle(float(body.get("timeout", 60.0)))
        except TimeoutError:
            return _json(504, {"idle": False, "pending": self._pending})
        return _json(200, {"idle": True, "pending": self._pending})

    async def _fake_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json(200, {"reset": True})


def _find_gather(twiml: str) -> tuple[_Gather | None, str | None]:
    """The ``<Gather>`` a TwiML document reaches (its first, unless a ``<Hangup>`` or
    ``<Reject>`` comes before), and what is wrong with the document."""
    try:
        root = defusedxml.ElementTree.fromstring(twiml)
    except (ParseError, defusedxml.DefusedXmlException) as exc:
        return None, f"12100 the TwiML does not parse: {exc}"
    if root.tag != "Response":
        return None, f"12100 the TwiML's root is <{root.tag}>, not <Response>"
    for element in root:
        if element.tag in ("Hangup", "Reject"):
            return None, None  # the call ends before any Gather
        if element.tag != "Gather":
            continue  # <Say>, <Play>, <Pause>… take time; <Redirect> is not followed
        raw_digits = element.get("numDigits")
        try:
            num_digits = int(raw_digits) if raw_digits else None
        except ValueError:
            return None, f"13312 invalid numDigits {raw_digits!r}"
        return (
            _Gather(
                action=element.get("action") or None,
                method=(element.get("method") or "POST").upper(),
                num_digits=num_digits,
                action_on_empty=(element.get("actionOnEmptyResult") or "").lower() == "true",
            ),
            None,
        )
    return None, None

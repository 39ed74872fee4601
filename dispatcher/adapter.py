"""The adapter contract: what every channel adapter (loudspeakers, SMS, calls, modems,
transmitters) provides and what the engine gives it.

An adapter knows nothing of the store. The engine hands it a batch of :class:`Dispatch` and it
returns one :data:`Outcome` per dispatch, in order: :class:`Accepted`, :class:`Retry` or
:class:`Failed` — never a bare success flag. Acknowledgements and later status changes
(delivered, played, a reply) arrive asynchronously through :meth:`AdapterContext.report`;
a device's own state (online, offline, heartbeat) through :meth:`AdapterContext.device_status`.

Adapter kinds are found through the ``tocsin.adapters`` entry-point group (name = kind, value =
the adapter class), so a third party can add one without forking. Each kind describes itself:
its channels, its typed settings model (secret fields as :class:`pydantic.SecretStr`, which
print redacted) and its limits.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from aiohttp import web
from pydantic import BaseModel

from dispatcher.domain import Audience, Channel, Level, MsgType, Status

ENTRY_POINT_GROUP = "tocsin.adapters"
#: Where the daemon serves adapters' webhooks: ``/hooks/<adapter name>/<path>``.
WEBHOOK_ROOT = "/hooks"


class AdapterNotReady(Exception):
    """Raised by :meth:`Adapter.start` when the device or service cannot be reached yet
    (broker down, modem unplugged, credentials rejected by a provider that may recover).
    The engine retries the start with backoff while everything else keeps running."""


@dataclass(frozen=True, slots=True)
class WarningContent:
    """What a device or person is told: the warning as adapters see it."""

    id: str
    status: Status
    msg_type: MsgType
    level: Level
    event: str
    headline: str
    description: str
    instruction: str
    area_codes: tuple[str, ...]
    sent: datetime
    expires: datetime
    audio_url: str | None = None
    audio_sha256: str | None = None
    #: The ids of the warnings this one updates or cancels (devices stop playing them).
    references: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One delivery to send now."""

    delivery_id: int
    warning: WarningContent
    channel: Channel
    audience: Audience
    #: devices.id for device channels, persons.id for people.
    target_id: str
    #: Where to send: an E.164 phone number, an MQTT device id, a transmitter's address.
    address: str
    #: The village (or town) of the target; the area a speaker or transmitter addresses.
    area_code: str
    #: 1 for the first try.
    attempt: int
    #: The message for people channels (SMS text, the words a call speaks), rendered by the
    #: engine so every adapter says the same thing.
    text: str
    #: For visit tasks: the households the grid member is asked to visit.
    households: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Accepted:
    """The adapter handed the message on. ``reference`` is the provider's id for it (a Twilio
    SID, a modem message reference), used to match later status reports."""

    reference: str = ""
    #: True when acceptance already means receipt (e.g. a transmitter's acknowledgement frame).
    delivered: bool = False
    #: What the delivery log should show of the send (sender, segments, provider status):
    #: small and JSON-serialisable.
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Retry:
    """A temporary failure: try again, not before ``after`` seconds when given (Retry-After)."""

    reason: str
    after: float | None = None
    #: For the delivery log (provider error code, HTTP status); small and JSON-serialisable.
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failed:
    """A permanent failure for this delivery (invalid number, unknown device)."""

    reason: str
    #: For the delivery log (provider error code, HTTP status); small and JSON-serialisable.
    detail: Mapping[str, Any] = field(default_factory=dict)


Outcome = Accepted | Retry | Failed


class ReportState(enum.StrEnum):
    """What an asynchronous report says about a delivery."""

    #: Received by the handset or device (SMS delivered, speaker received or playing).
    DELIVERED = "delivered"
    #: Confirmed by a person (reply, key press) or completed by a device (played, stopped).
    ACKNOWLEDGED = "acknowledged"
    #: Failed after acceptance (undelivered SMS, busy, no answer, speaker error).
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Report:
    """An asynchronous status report from an adapter.

    Name the delivery by ``delivery_id`` (when the device echoes it) or by ``reference`` (the
    provider's id returned in :class:`Accepted`), or name only ``from_address`` for a reply
    that carries neither (an SMS "1" from a phone): the engine then matches it to that
    sender's deliveries awaiting an acknowledgement. ``from_address`` is checked against the
    delivery's target whenever it is given, so a device cannot acknowledge for another.
    """

    state: ReportState
    delivery_id: int | None = None
    reference: str | None = None
    from_address: str | None = None
    #: Only for deliveries of this warning (a speaker's ack names the warning it played).
    warning_id: str | None = None
    at: float | None = None
    reason: str = ""
    #: When a failure report may be retried (busy, no answer) rather than being final.
    retryable: bool = True
    detail: Mapping[str, Any] = field(default_factory=dict)
    #: The provider's own id of a reply matched by ``from_address`` (an inbound SMS's id):
    #: the store applies a reply of one id once, whichever node the provider posted it to
    #: and however often (webhook retries), so a copy never confirms the sender's next open
    #: delivery, perhaps of another warning.
    reply_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """A device's connection state as its adapter last saw it.

    Report one whenever the device says something of itself (a retained state, a heartbeat, a
    last will): the daemon keeps the newest per device and writes them in batches, so a
    heartbeat a second from every speaker costs a few writes. A status whose ``last_seen`` is
    older than the one stored does not replace it (a retained message replayed at reconnect).
    """

    #: The device's address as the adapter knows it (Dispatch.address: an MQTT device id).
    address: str
    online: bool
    #: When the device was last heard from (time.time()); the adapter's clock. For a last will
    #: ("offline" published by the broker), when the will arrived.
    last_seen: float
    #: What the device says of itself: firmware, volume, signal... (JSON-serialisable; small).
    detail: Mapping[str, Any] = field(default_factory=dict)


class AdapterContext(Protocol):
    """The narrow view of the daemon an adapter gets in :meth:`Adapter.start`."""

    @property
    def adapter_name(self) -> str: ...

    @property
    def node_name(self) -> str:
        """This dispatcher node's name (``tocsin serve --node``), unique among the nodes on one
        database: an adapter that several nodes run at once tells its connections apart by it
        (MQTT client ids)."""

    def report(self, report: Report) -> None:
        """Queue a status report; never blocks (the engine records reports in batches)."""

    def device_status(self, status: DeviceStatus) -> None:
        """Record a device's state; never blocks (the daemon keeps the latest per device and
        stores it in batches)."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What an installer sees from ``tocsin adapters probe``."""

    ok: bool
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)


# -- optional capabilities: an adapter has them when it defines the method ------------------
@dataclass(frozen=True, slots=True)
class SendRate:
    """The most an adapter can send, when it knows better than the config (its senders)."""

    per_second: float
    burst: int


@runtime_checkable
class PacesItself(Protocol):
    """An adapter whose provider limits it (a long code sends one SMS a second; an account
    has so many calls at once). The engine enforces these before calling :meth:`Adapter.send`,
    so the limits are kept rather than discovered by failing."""

    def send_rate(self) -> SendRate | None:
        """Its sustained rate, read once at construction (the stricter of this and the
        configured ``rate_per_second`` applies)."""

    def room(self) -> int | None:
        """How many more dispatches it can take now (free call slots); None: no limit."""


@runtime_checkable
class ReportsReadiness(Protocol):
    """An adapter whose connection can go away after it started and come back by itself (a
    serial modem unplugged and replugged: its own task reopens the port)."""

    def not_ready_reason(self) -> str | None:
        """Why it cannot send now (``/dev/ttyUSB0: device disconnected, reopening``), or None
        when it can. Meanwhile the engine hands it nothing, people's deliveries on its channel
        fall over to their next channel when no other instance can take them, devices'
        deliveries wait, and the adapter shows as not ready with this reason."""


@dataclass(frozen=True, slots=True)
class WebhookRoute:
    """One HTTP endpoint a provider calls back (status callbacks, replies, key presses). The
    daemon serves it at ``/hooks/<adapter name>/<path>`` without an API token: the handler
    authenticates the caller itself (a provider's request signature)."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]


@runtime_checkable
class ReceivesWebhooks(Protocol):
    def webhooks(self) -> Sequence[WebhookRoute]:
        """Its endpoints; called once, before :meth:`Adapter.start` (a handler called before
        the start should answer 503 so the provider tries again)."""


@runtime_checkable
class PollsStatus(Protocol):
    """An adapter that can ask its provider for a message's status: ``tocsin adapters test``
    uses it where status reports go to the daemon's webhooks, not to the command."""

    async def poll_status(self, reference: str) -> Report | None:
        """The status of the message ``reference`` as a report; None while nothing is known."""


def webhook_path(adapter_name: str, path: str) -> str:
    """The path the daemon serves an adapter's webhook on (append to the public base URL)."""
    return f"{WEBHOOK_ROOT}/{adapter_name}/{path.lstrip('/')}"


@runtime_checkable
class Adapter(Protocol):
    """One configured adapter instance. Construct with ``cls(name=..., settings=...)``."""

    #: The entry-point name, e.g. ``mqtt_speaker``, ``twilio_sms``, ``simulated``.
    kind: ClassVar[str]
    #: The channels this kind can serve.
    channels: ClassVar[frozenset[Channel]]
    #: The typed settings model for ``[adapters.<name>.settings]``.
    settings_model: ClassVar[type[BaseModel]]
    #: Largest batch :meth:`send` accepts.
    max_batch: ClassVar[int]
    #: One line for ``tocsin adapters list``.
    description: ClassVar[str]

    @property
    def name(self) -> str: ...

    async def start(self, context: AdapterContext) -> None:
        """Open connections; raise :class:`AdapterNotReady` to be retried later."""

    async def stop(self) -> None:
        """Close connections; must not raise and must return promptly."""

    async def send(self, batch: Sequence[Dispatch]) -> Sequence[Outcome]:
        """Send a batch; one outcome per dispatch, in the same order."""

    async def probe(self) -> ProbeResult:
        """Check the hardware or service answers (may be called before :meth:`start`)."""


class AdapterFactory(Protocol):
    """An adapter class as a value (what the entry point names). Plain attributes, not
    ClassVar: a class object satisfies a protocol only through them."""

    kind: str
    channels: frozenset[Channel]
    settings_model: type[BaseModel]
    max_batch: int
    description: str

    def __call__(self, *, name: str, settings: Any) -> Adapter: ...


class UnknownAdapterKind(LookupError):
    pass


def adapter_kinds() -> dict[str, AdapterFactory]:
    """Every installed adapter kind, by kind name, from the ``tocsin.adapters`` entry points."""
    found: dict[str, AdapterFactory] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        factory = ep.load()
        if getattr(factory, "kind", None) != ep.name:
            raise TypeError(
                f"entry point {ep.name!r} = {ep.value} declares kind "
                f"{getattr(factory, 'kind', None)!r}; the names must match"
            )
        found[ep.name] = factory
    return found


def check_outcomes(batch: Sequence[Dispatch], outcomes: object) -> list[Outcome]:
    """The adapter's outcomes, or a :class:`Retry` for every dispatch when it returned
    something else (wrong length, wrong types): a buggy adapter never loses a delivery."""
    if isinstance(outcomes, Sequence) and not isinstance(outcomes, (str, bytes)):
        items = list(outcomes)
        if len(items) == len(batch) and all(
            isinstance(o, (Accepted, Retry, Failed)) for o in items
        ):
            return items
        what = f"{len(items)} outcomes for {len(batch)} dispatches"
        if len(items) == len(batch):
            bad = next(o for o in items if not isinstance(o, (Accepted, Retry, Failed)))
            what = f"an outcome of type {type(bad).__name__}"
    else:
        what = f"a {type(outcomes).__name__}"
    reason = f"adapter returned {what}"
    return [Retry(reason) for _ in batch]

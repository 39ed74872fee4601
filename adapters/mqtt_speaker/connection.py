"""One long-lived broker connection, kept up by aiomqtt's documented reconnect loop inside a
named task. The adapter owns two of them (see adapter.py for why): one publishes alerts, one
takes the speakers' acks and states."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiomqtt
import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.mqtt_speaker.settings import MqttSpeakerSettings

log = structlog.get_logger(__name__)


class NotConnected(Exception):
    """The connection is down (being re-established); try again later."""


@dataclass(frozen=True, slots=True)
class ConnectionRole:
    #: Suffix of the MQTT client id: ``<client_id>-<suffix>``.
    suffix: str
    protocol: aiomqtt.ProtocolVersion
    #: Keep the broker-side session (and its queued QoS-1 messages) while disconnected.
    persistent: bool
    subscriptions: Sequence[str] = ()
    #: The dispatcher node, when several share the broker: ``<client_id>-<node>-<suffix>``.
    node: str | None = None

    def client_id(self, settings: MqttSpeakerSettings) -> str:
        if self.node is None:
            return f"{settings.client_id}-{self.suffix}"
        return f"{settings.client_id}-{self.node}-{self.suffix}"


def tls_context(settings: MqttSpeakerSettings) -> ssl.SSLContext | None:
    if not settings.tls:
        return None
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert_file is not None:
        context.load_cert_chain(
            str(settings.cert_file), str(settings.key_file) if settings.key_file else None
        )
    return context


def _handing_queue(
    handler: Callable[[aiomqtt.Message], None],
) -> type[asyncio.Queue[aiomqtt.Message]]:
    """A ``queue_type`` for aiomqtt that hands each message to ``handler`` the moment paho has
    decoded it instead of queueing it. Iterating ``client.messages`` costs a task and an
    ``asyncio.wait`` per message, a third of the dispatcher's work at 15,000 acks a
    warning; the iteration is kept only to learn of a disconnection."""

    class HandingQueue(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            try:
                handler(item)
            except Exception:  # a bug here must not drop the connection: paho would re-raise
                log.exception("handling an MQTT message failed", topic=item.topic.value)

    return HandingQueue


def client_for(
    settings: MqttSpeakerSettings,
    role: ConnectionRole,
    on_message: Callable[[aiomqtt.Message], None] | None = None,
) -> aiomqtt.Client:
    """A configured, not yet connected client."""
    properties = None
    v5 = role.protocol is aiomqtt.ProtocolVersion.V5
    if v5 and role.persistent:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = int(settings.ack_session_expiry)
    password = settings.password.get_secret_value() if settings.password else None
    return aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=password,
        identifier=role.client_id(settings),
        protocol=role.protocol,
        clean_session=None if v5 else not role.persistent,
        # paho refuses any clean_start but its default on MQTT 3.1.1 (clean_session rules there).
        clean_start=(not role.persistent) if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        properties=properties,
        keepalive=max(5, int(settings.keepalive)),
        timeout=settings.connect_timeout,
        tls_context=tls_context(settings),
        max_inflight_messages=settings.publish_concurrency,
        queue_type=_handing_queue(on_message) if on_message is not None else None,
    )


class BrokerConnection:
    """A connection that reconnects forever (with backoff) until :meth:`close`.

    ``on_message`` runs synchronously for each incoming message, on the event loop: it must be
    quick (parse, queue a report). ``publish`` fails fast with :class:`NotConnected` while the
    connection is down, so callers answer "retry" instead of piling up waiting publishes.
    """

    def __init__(
        self,
        *,
        adapter_name: str,
        settings: MqttSpeakerSettings,
        role: ConnectionRole,
        on_message: Callable[[aiomqtt.Message], None] | None = None,
        on_connect: Callable[[], None] = lambda: None,
    ) -> None:
        self._name = adapter_name
        self._settings = settings
        self._role = role
        self._on_message = on_message
        self._on_connect = on_connect
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Why the last connection attempt or connection ended (shown by probe and start errors).
        self.last_error = ""
        self.connects = 0
        self._failures = 0

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def where(self) -> str:
        return f"{self._settings.host}:{self._settings.port}"

    def open(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(), name=f"mqtt_speaker:{self._name}:{self._role.suffix}"
            )

    async def wait_connected(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), within)
        return self._connected.is_set()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._client = None
        self._connected.clear()

    async def publish(
        self, topic: str, payload: bytes, *, expiry: float | None, retain: bool = False
    ) -> None:
        client = self._client
        if client is None:
            raise NotConnected(f"not connected to {self.where}: {self.last_error or 'connecting'}")
        properties = None
        if expiry is not None and self._role.protocol is aiomqtt.ProtocolVersion.V5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = max(1, math.ceil(expiry))
        await client.publish(
            topic,
            payload,
            qos=1,
            retain=retain,
            properties=properties,
            timeout=self._settings.publish_timeout,
        )

    async def _run(self) -> None:
        while True:
            try:
                async with client_for(self._settings, self._role, self._on_message) as client:
                    # Bounded by the adapter's own semaphore; aiomqtt would otherwise warn (and
                    # scan its pending calls) on every publish beyond ten.
                    client.pending_calls_threshold = self._settings.publish_concurrency + 10
                    for topic in self._role.subscriptions:
                        await client.subscribe(topic, qos=1)
                    self._client = client
                    self._connected.set()
                    self._failures = 0
                    self.connects += 1
                    self.last_error = ""
                    log.info(
                        "mqtt connected",
                        adapter=self._name,
                        connection=self._role.suffix,
                        broker=self.where,
                    )
                    self._on_connect()
                    # Messages go straight to on_message (see _handing_queue): nothing is
                    # ever queued, and iterating ends with MqttError when the connection drops.
                    async for _ in client.messages:
                        pass
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc) or type(exc).__name__
            except OSError as exc:  # TLS files unreadable, DNS failure
                self.last_error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug or a client misconfiguration: say so, keep trying
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("mqtt connection failed", adapter=self._name)
            was_connected = self._client is not None
            self._client = None
            self._connected.clear()
            self._failures += 1
            delay = min(
                self._settings.reconnect_max,
                self._settings.reconnect_min * 2 ** min(self._failures - 1, 16),
            ) * random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not a secret)
            log.warning(
                "mqtt disconnected" if was_connected else "mqtt connect failed",
                adapter=self._name,
                connection=self._role.suffix,
                broker=self.where,
                error=self.last_error,
                retry_in=round(delay, 2),
            )
            await asyncio.sleep(delay)

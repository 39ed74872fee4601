"""The ``mqtt_speaker`` adapter: village loudspeakers (大喇叭) behind an MQTT broker.

A warning is published once per area it covers (a speaker subscribes to its village and each
ancestor, so the broker fans one publish out to every speaker under the area: a city-wide
warning is one message); retries and installer tests go to one speaker's own topic. Speakers
answer on their own ack topic (received → playing → played, or failed; stopped after a
Cancel) and keep a retained state (online, or offline through their last will).

Two long-lived connections, each in its own task with aiomqtt's reconnect loop:

* ``<client_id>-pub`` publishes alerts with MQTT 5 message expiry (the warning's expiry), QoS 1,
  at most ``publish_concurrency`` awaiting their PUBACK at once.
* ``<client_id>-acks`` takes acks and states in a persistent session, so the broker keeps the
  acks that arrive while the dispatcher restarts. Keeping it apart means 15,000 incoming acks
  never queue in front of the PUBACKs the publisher is waiting for.

With ``shared_group`` (several dispatcher nodes on one broker) the ids are
``<client_id>-<node>-pub`` and ``-acks``, and the acks are taken through a shared subscription
(``$share/<group>/…``) in a session that ends with the connection: each ack reaches one node,
and a node that goes away leaves the group at once (README, "Several nodes").

A speaker whose retained state says offline is answered ``Failed`` at once, so its village falls
back to the next channel without waiting for an ack timeout; the alert is kept and published to
the speaker's own topic if it comes back online before the warning expires (its ``played`` then
still counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import aiomqtt
import structlog

from adapters.log_throttle import ThrottledWarning
from adapters.mqtt_speaker.connection import BrokerConnection, ConnectionRole, NotConnected
from adapters.mqtt_speaker.protocol import (
    Ack,
    AckState,
    Alert,
    DeviceState,
    ProtocolError,
    ack_subscription,
    area_alert_topic,
    device_of,
    device_topic,
    parse_ack,
    parse_state,
    state_subscription,
)
from adapters.mqtt_speaker.settings import MqttSpeakerSettings
from dispatcher.adapter import (
    Accepted,
    AdapterContext,
    AdapterNotReady,
    DeviceStatus,
    Dispatch,
    Failed,
    Outcome,
    ProbeResult,
    Report,
    ReportState,
    Retry,
    WarningContent,
)
from dispatcher.domain import Channel

log = structlog.get_logger(__name__)

_REPORT_STATE = {
    AckState.RECEIVED: ReportState.DELIVERED,
    AckState.PLAYING: ReportState.DELIVERED,
    AckState.PLAYED: ReportState.ACKNOWLEDGED,
    AckState.STOPPED: ReportState.ACKNOWLEDGED,
    AckState.FAILED: ReportState.FAILED,
}
#: What the adapter remembers about a warning outlives its expiry by this much (late acks).
_KEEP_AFTER_EXPIRY = 600.0
#: A speaker's last-seen time is passed on at most this often while it keeps acking.
_SEEN_REPORT_INTERVAL = 10.0
#: After connecting, start() waits until the retained states have stopped arriving for this
#: long (at most _SETTLE_MAX), so the first batch already knows which speakers are offline.
_SETTLE_QUIET = 0.2
_SETTLE_MAX = 5.0


@dataclass(slots=True)
class SpeakerState:
    online: bool
    last_seen: float
    detail: Mapping[str, Any] = field(default_factory=dict)
    reported_seen: float = 0.0


@dataclass(slots=True)
class _Counters:
    published_area: int = 0
    published_device: int = 0
    acks: int = 0
    malformed: int = 0
    unreachable: int = 0
    republished: int = 0
    #: Progress acks not passed on (a speaker's "playing" after its "received").
    progress_skipped: int = 0


class MqttSpeakerAdapter:
    kind: ClassVar[str] = "mqtt_speaker"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.SPEAKER})
    settings_model: ClassVar[type[MqttSpeakerSettings]] = MqttSpeakerSettings
    max_batch: ClassVar[int] = 2000
    description: ClassVar[str] = (
        "Village loudspeakers over MQTT: one publish per warning area, acks per speaker"
    )

    def __init__(self, *, name: str, settings: MqttSpeakerSettings) -> None:
        self._name = name
        self._settings = settings
        self._root = settings.topic_root
        self._context: AdapterContext | None = None
        self._publisher: BrokerConnection | None = None
        self._listener: BrokerConnection | None = None
        self._semaphore = asyncio.Semaphore(settings.publish_concurrency)
        self.speakers: dict[str, SpeakerState] = {}
        #: (warning id, speaker address) → delivery id, for acks that do not echo it.
        self._deliveries: dict[tuple[str, str], int] = {}
        #: (warning id, speaker address) already reported delivered.
        self._delivered: set[tuple[str, str]] = set()
        #: Warning id → the publish of its areas (done or under way), shared by its batches.
        self._area_publishes: dict[str, asyncio.Future[Outcome]] = {}
        #: Alerts for offline speakers: address → warning id → (alert, expiry).
        self._owed: dict[str, dict[str, tuple[Alert, float]]] = {}
        self._expiry: dict[str, float] = {}
        self._next_prune = 0.0
        self._last_state_at = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self.counters = _Counters()
        self._warn_malformed = ThrottledWarning(log, "malformed message from a speaker dropped")

    @property
    def name(self) -> str:
        return self._name

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, context: AdapterContext) -> None:
        self._context = context
        self._last_state_at = time.monotonic()
        ack_version = (
            aiomqtt.ProtocolVersion.V5
            if self._settings.ack_protocol == "5"
            else aiomqtt.ProtocolVersion.V311
        )
        # Several nodes: the acks are shared among them (each goes to one node), and each
        # node's client ids carry its name. The shared ack connection keeps no session: a
        # broker queues a shared member's part of the acks in its session while it is away
        # (Mosquitto does, tests/adapters/test_mqtt_speaker_shared.py), so a dead node would
        # hold them until it came back. Without a session it leaves the group on
        # disconnecting and the others get every later ack (README, "Several nodes").
        shared = self._settings.shared_group
        node = context.node_name if shared is not None else None
        self._publisher = BrokerConnection(
            adapter_name=self._name,
            settings=self._settings,
            role=ConnectionRole("pub", aiomqtt.ProtocolVersion.V5, persistent=False, node=node),
        )
        self._listener = BrokerConnection(
            adapter_name=self._name,
            settings=self._settings,
            role=ConnectionRole(
                "acks",
                ack_version,
                persistent=shared is None,
                subscriptions=(
                    ack_subscription(self._root, shared),
                    state_subscription(self._root),
                ),
                node=node,
            ),
            on_message=self._on_message,
        )
        self._publisher.open()
        self._listener.open()
        timeout = self._settings.connect_timeout
        up = await asyncio.gather(
            self._publisher.wait_connected(timeout), self._listener.wait_connected(timeout)
        )
        if not all(up):
            why = self._publisher.last_error or self._listener.last_error or "no answer"
            await self.stop()
            raise AdapterNotReady(f"MQTT broker {self._settings.host}:{self._settings.port}: {why}")
        deadline = time.monotonic() + _SETTLE_MAX
        while time.monotonic() < deadline:
            quiet = time.monotonic() - self._last_state_at
            if quiet >= _SETTLE_QUIET:
                break
            await asyncio.sleep(_SETTLE_QUIET - quiet)

    async def stop(self) -> None:
        for publishing in self._area_publishes.values():
            publishing.cancel()
        self._area_publishes.clear()
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for connection in (self._publisher, self._listener):
            if connection is not None:
                await connection.close()
        self._publisher = self._listener = None

    # -- sending --------------------------------------------------------------------------------
    async def send(self, batch: Sequence[Dispatch]) -> Sequence[Outcome]:
        now = time.time()
        if now >= self._next_prune:
            self._prune(now)
        outcomes: list[Outcome | None] = [None] * len(batch)
        by_warning: dict[str, list[int]] = {}
        singles: list[int] = []
        for i, d in enumerate(batch):
            expires = d.warning.expires.timestamp()
            if expires <= now:
                outcomes[i] = Failed("the warning expired before it was sent")
                continue
            self._expiry[d.warning.id] = expires
            self._deliveries[(d.warning.id, d.address)] = d.delivery_id
            speaker = self.speakers.get(d.address)
            if speaker is not None and not speaker.online:
                self._owed.setdefault(d.address, {})[d.warning.id] = (
                    self._alert(d, delivery=True),
                    expires,
                )
                self.counters.unreachable += 1
                outcomes[i] = Failed(f"speaker {d.address} offline since {_iso(speaker.last_seen)}")
                continue
            if d.attempt == 1 and d.warning.area_codes:
                by_warning.setdefault(d.warning.id, []).append(i)
            else:
                singles.append(i)

        jobs = [self._publish_areas(batch[members[0]], members) for members in by_warning.values()]
        jobs += [self._publish_one(batch[i], i) for i in singles]
        for results in await asyncio.gather(*jobs):
            for i, outcome in results:
                outcomes[i] = outcome
        return [o if o is not None else Retry("not published") for o in outcomes]

    async def _publish_areas(
        self, first: Dispatch, members: list[int]
    ) -> list[tuple[int, Outcome]]:
        """A warning's first sending: one publish per area of the warning, once (every speaker
        subscribes to its village and each ancestor, so the broker fans it out). Later batches
        of the same warning share that publish's outcome instead of repeating it."""
        warning = first.warning
        publishing = self._area_publishes.get(warning.id)
        if publishing is None:
            publishing = asyncio.ensure_future(self._publish_warning(first))
            self._area_publishes[warning.id] = publishing
        outcome = await asyncio.shield(publishing)
        if not isinstance(outcome, Accepted) and self._area_publishes.get(warning.id) is publishing:
            del self._area_publishes[warning.id]  # the next attempt publishes again
        return [(i, outcome) for i in members]

    async def _publish_warning(self, first: Dispatch) -> Outcome:
        warning = first.warning
        payload = self._alert(first, delivery=False).payload()
        outcomes = await asyncio.gather(
            *(
                self._publish(area_alert_topic(self._root, area), payload, warning.expires)
                for area in dict.fromkeys(warning.area_codes)
            )
        )
        failed = next((o for o in outcomes if not isinstance(o, Accepted)), None)
        if failed is not None:
            return failed
        self.counters.published_area += len(outcomes)
        return Accepted()

    async def _publish_one(self, d: Dispatch, index: int) -> list[tuple[int, Outcome]]:
        topic = device_topic(self._root, d.address, "alert")
        outcome = await self._publish(
            topic, self._alert(d, delivery=True).payload(), d.warning.expires
        )
        if isinstance(outcome, Accepted):
            self.counters.published_device += 1
        return [(index, outcome)]

    async def _publish(self, topic: str, payload: bytes, expires: datetime) -> Outcome:
        publisher = self._publisher
        if publisher is None:
            return Retry("adapter not started")
        async with self._semaphore:
            expiry = expires.timestamp() - time.time()
            if expiry <= 0:
                return Failed("the warning expired before it was sent")
            try:
                await publisher.publish(topic, payload, expiry=expiry)
            except NotConnected as exc:
                return Retry(str(exc), after=self._settings.reconnect_min)
            except aiomqtt.MqttError as exc:
                return Retry(f"broker {publisher.where}: {exc}")
        return Accepted()

    def _alert(self, d: Dispatch, *, delivery: bool) -> Alert:
        w: WarningContent = d.warning
        return Alert(
            id=w.id,
            status=w.status.value,
            type=w.msg_type.value,
            level=w.level.value,
            event=w.event,
            headline=w.headline,
            text=d.text or w.headline,
            sent=w.sent,
            expires=w.expires,
            repeat=self._settings.repeat,
            volume=self._settings.volume,
            audio_url=w.audio_url,
            audio_sha256=w.audio_sha256,
            references=w.references,
            delivery=d.delivery_id if delivery else None,
        )

    def _prune(self, now: float) -> None:
        self._next_prune = now + 60.0
        gone = {w for w, t in self._expiry.items() if t + _KEEP_AFTER_EXPIRY < now}
        if not gone:
            return
        self._deliveries = {k: v for k, v in self._deliveries.items() if k[0] not in gone}
        for w in gone:
            self._area_publishes.pop(w, None)
        self._delivered = {k for k in self._delivered if k[0] not in gone}
        for address in list(self._owed):
            owed = {w: a for w, a in self._owed[address].items() if a[1] > now}
            if owed:
                self._owed[address] = owed
            else:
                del self._owed[address]
        for w in gone:
            del self._expiry[w]

    # -- incoming -------------------------------------------------------------------------------
    def _on_message(self, message: aiomqtt.Message) -> None:
        where = device_of(self._root, message.topic.value)
        payload = message.payload
        if where is None or not isinstance(payload, bytes | bytearray):
            self.counters.malformed += 1
            self._warn_malformed(topic=message.topic.value, error="unexpected topic or payload")
            return
        device, leaf = where
        try:
            if leaf == "ack":
                self._on_ack(device, parse_ack(bytes(payload)))
            elif leaf == "state":
                self._on_state(device, bytes(payload), retained=message.retain)
        except ProtocolError as exc:
            self.counters.malformed += 1
            self._warn_malformed(device=device, topic=message.topic.value, error=str(exc))

    def _on_ack(self, device: str, ack: Ack) -> None:
        self.counters.acks += 1
        now = time.time()
        self._seen(device, now)
        report_state = _REPORT_STATE[ack.state]
        if report_state is ReportState.DELIVERED:
            # received and playing say the same to the engine: pass on the first only (a third
            # of all acks at a city-wide warning).
            key = (ack.warning_id, device)
            if key in self._delivered:
                self.counters.progress_skipped += 1
                return
            self._delivered.add(key)
        delivery = ack.delivery
        if delivery is None:
            delivery = self._deliveries.get((ack.warning_id, device))
        if ack.state is AckState.PLAYED or ack.state is AckState.STOPPED:
            owed = self._owed.get(device)
            if owed is not None:
                owed.pop(ack.warning_id, None)
        detail: dict[str, Any] = {"device_state": ack.state.value}
        if ack.plays is not None:
            detail["plays"] = ack.plays
        report = Report(
            state=report_state,
            delivery_id=delivery,
            from_address=device,
            warning_id=ack.warning_id,
            at=ack.ts,
            reason=ack.error or ("speaker failed to play" if ack.state is AckState.FAILED else ""),
            detail=detail,
        )
        if self._context is not None:
            self._context.report(report)

    def _on_state(self, device: str, payload: bytes, *, retained: bool) -> None:
        self._last_state_at = time.monotonic()
        message = parse_state(payload)
        now = time.time()
        # A retained state was stored by the broker some time ago: its own timestamp (if the
        # speaker sent one and it is not in the future) says when it was last heard from.
        seen = min(message.ts, now) if retained and message.ts is not None else now
        online = message.state is DeviceState.ONLINE
        speaker = self.speakers.get(device)
        came_back = online and (speaker is None or not speaker.online)
        if speaker is None:
            speaker = self.speakers[device] = SpeakerState(online, seen, message.detail)
        else:
            speaker.online = online
            speaker.last_seen = max(speaker.last_seen, seen) if online else seen
            speaker.detail = message.detail or speaker.detail
        self._report_status(device, speaker, now)
        if came_back and self._owed.get(device):
            task = asyncio.create_task(
                self._republish(device), name=f"mqtt_speaker:{self._name}:owed:{device}"
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _seen(self, device: str, now: float) -> None:
        speaker = self.speakers.get(device)
        if speaker is None:
            speaker = self.speakers[device] = SpeakerState(True, now)
        else:
            speaker.last_seen = now
        if now - speaker.reported_seen >= _SEEN_REPORT_INTERVAL:
            self._report_status(device, speaker, now)

    def _report_status(self, device: str, speaker: SpeakerState, now: float) -> None:
        speaker.reported_seen = now
        if self._context is not None:
            self._context.device_status(
                DeviceStatus(
                    address=device,
                    online=speaker.online,
                    last_seen=speaker.last_seen,
                    detail=dict(speaker.detail),
                )
            )

    async def _republish(self, device: str) -> None:
        """Send a speaker that came back online what it missed, if still in force."""
        for warning_id, (alert, expires) in list(self._owed.get(device, {}).items()):
            if expires <= time.time():
                self._owed[device].pop(warning_id, None)
                continue
            outcome = await self._publish(
                device_topic(self._root, device, "alert"),
                alert.payload(),
                datetime.fromtimestamp(expires, UTC),
            )
            if isinstance(outcome, Accepted):
                self.counters.republished += 1
                log.info(
                    "alert republished to a speaker back online",
                    adapter=self._name,
                    device=device,
                    warning_id=warning_id,
                )
                owed = self._owed.get(device)
                if owed is not None:
                    owed.pop(warning_id, None)

    # -- probe ----------------------------------------------------------------------------------
    async def probe(self) -> ProbeResult:
        broker = f"{self._settings.host}:{self._settings.port}"
        if self._listener is not None and self._listener.connected:
            return self._probe_result(broker, self.speakers)
        listener = BrokerConnection(
            adapter_name=self._name,
            settings=self._settings,
            role=ConnectionRole(
                "probe",
                aiomqtt.ProtocolVersion.V5,
                persistent=False,
                subscriptions=(state_subscription(self._root),),
            ),
            on_message=self._probe_message,
        )
        self._probing: dict[str, SpeakerState] = {}
        listener.open()
        try:
            if not await listener.wait_connected(self._settings.connect_timeout):
                return ProbeResult(
                    ok=False,
                    summary=f"cannot connect to MQTT broker {broker}: "
                    f"{listener.last_error or 'no answer'}",
                    details={"broker": broker},
                )
            await asyncio.sleep(self._settings.probe_listen)
            return self._probe_result(broker, self._probing)
        finally:
            await listener.close()

    def _probe_message(self, message: aiomqtt.Message) -> None:
        where = device_of(self._root, message.topic.value)
        if where is None or not isinstance(message.payload, bytes | bytearray):
            return
        with contextlib.suppress(ProtocolError):
            state = parse_state(bytes(message.payload))
            self._probing[where[0]] = SpeakerState(
                state.state is DeviceState.ONLINE, state.ts or time.time(), state.detail
            )

    def _probe_result(self, broker: str, speakers: Mapping[str, SpeakerState]) -> ProbeResult:
        now = time.time()
        silent_after = self._settings.heartbeat_timeout
        online = sorted(
            d for d, s in speakers.items() if s.online and now - s.last_seen <= silent_after
        )
        silent = sorted(
            d for d, s in speakers.items() if s.online and now - s.last_seen > silent_after
        )
        offline = sorted(d for d, s in speakers.items() if not s.online)
        summary = (
            f"broker {broker} answered; speakers: {len(online)} online, {len(offline)} offline"
            + (f", {len(silent)} silent" if silent else "")
        )
        return ProbeResult(
            ok=True,
            summary=summary,
            details={
                "broker": broker,
                "topic_root": self._root,
                "online": online[:200],
                "offline": offline[:200],
                "silent": silent[:200],
                "counts": {"online": len(online), "offline": len(offline), "silent": len(silent)},
            },
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")

"""A fleet of simulated village loudspeakers speaking the loudspeaker MQTT protocol v1
(:mod:`adapters.mqtt_speaker.protocol`, documented in ``PROTOCOL.md``) against any broker.

Installers rehearse with it (``tocsin simulate speakers``); the tests and the benchmark use
:class:`SpeakerFleet` directly. Each simulated speaker subscribes to the alert topic of its
village and of each ancestor area and to its own device topic, plays what it is told (or
fails, or is slow, or acknowledges twice or out of order, as :class:`FleetBehaviour` says) and
acknowledges on its ``ack`` topic; its retained ``state`` says whether it is online.

Two ways to connect:

- one connection per speaker (``connections=None``): client id = username = the device id, a
  retained ``offline`` state as last will, a persistent session (clean start off, a session
  expiry) so the broker queues QoS-1 alerts while the speaker is away — what real speakers do;
  for tens or a few hundred speakers;
- ``connections=N``: the speakers multiplexed over N connections, each subscribed to the union
  of its speakers' topics and routing every alert to the speakers concerned — for thousands.
  No per-device last will: the fleet publishes the retained ``offline`` state of its offline
  speakers itself, and of every speaker on a clean stop.

Every connection runs in its own task and reconnects after a lost connection (a broker
restart), resuming its session. Acknowledgements are published concurrently, a bounded number
in flight, so a fleet of thousands answers a city-wide alert within a second or two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import logging
import math
import os
import random
import re
import signal
import ssl
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC
from types import TracebackType
from typing import Any, NamedTuple, Self

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from adapters.mqtt_speaker.protocol import (
    DEFAULT_ROOT,
    Ack,
    AckState,
    Alert,
    DeviceState,
    ProtocolError,
    StateMessage,
    area_alert_topic,
    device_topic,
    parse_alert,
)
from adapters.simulator_args import fraction, seconds

log = logging.getLogger("tocsin.simulator.speakers")
_MQTT_LOG = logging.getLogger("tocsin.simulator.speakers.mqtt")

#: What a simulated speaker says its firmware is.
FIRMWARE = "tocsin-sim/1"
#: Broker-side session lifetime while a speaker is away (≥ the longest warning).
DEFAULT_SESSION_EXPIRY = 3600
#: Messages published and not yet confirmed by the broker, per connection; more wait in order.
DEFAULT_MAX_IN_FLIGHT = 500
#: Topics per SUBSCRIBE packet when a connection carries many speakers.
_SUBSCRIBE_BATCH = 200
_RECONNECT_MIN = 0.2
_RECONNECT_MAX = 5.0
#: How long a clean stop waits for a connection to publish its offline states and leave.
_STOP_TIMEOUT = 10.0
#: MQTT v5 DISCONNECT reason 0x04: "disconnect with will message" — the broker publishes the
#: last will although the client disconnects on purpose (a speaker switched off).
_DISCONNECT_WITH_WILL = 4
#: Up to this many speakers the CLI gives each its own connection; above, it multiplexes.
AUTO_PER_DEVICE_LIMIT = 200
AUTO_CONNECTIONS = 8
#: The synthetic fleet's area layout (see :func:`synthetic_fleet`).
VILLAGES_PER_TOWN = 15
TOWNS_PER_COUNTY = 15
_SIMULATED_ERROR = "amplifier fault (simulated)"


class SimSpeaker(NamedTuple):
    """One speaker of a fleet: its device id and the area codes it listens to, its village
    first, then each ancestor (town, county, city, province). A plain ``(device_id, areas)``
    pair works wherever a SimSpeaker is expected."""

    device_id: str
    areas: tuple[str, ...]


_FRACTIONS = ("offline", "slow", "failing", "duplicate_acks", "out_of_order")


@dataclass(frozen=True, slots=True)
class FleetBehaviour:
    """How the fleet behaves. Fractions (0–1) of speakers get each trait; which speakers is
    deterministic for ``seed`` and the set of device ids (exactly ``round(fraction × n)``
    speakers each; the traits are drawn independently, offline overrides the rest)."""

    #: Never connect; the fleet publishes a retained ``offline`` state for them.
    offline: float = 0.0
    #: Start answering an alert only after ``slow_delay`` seconds.
    slow: float = 0.0
    slow_delay: float = 10.0
    #: Acknowledge ``failed`` with an error instead of playing.
    failing: float = 0.0
    #: Send every acknowledgement twice.
    duplicate_acks: float = 0.0
    #: Send ``played`` before ``playing``.
    out_of_order: float = 0.0
    #: Seconds between ``playing`` and ``played`` (0: at once).
    play_seconds: float = 0.0
    #: Send ``received`` and ``playing`` before ``played`` (else only the final ack).
    progress: bool = True
    #: Republish the retained online state this often (0: only when connecting).
    heartbeat_seconds: float = 60.0
    seed: int = 1

    def __post_init__(self) -> None:
        for name in _FRACTIONS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction from 0 to 1, not {value!r}")
        for name in ("slow_delay", "play_seconds", "heartbeat_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number of seconds ≥ 0, not {value!r}")


@dataclass(frozen=True, slots=True)
class Traits:
    """What one speaker does differently (see :class:`FleetBehaviour`)."""

    offline: bool = False
    slow: bool = False
    failing: bool = False
    duplicate_acks: bool = False
    out_of_order: bool = False


def assign_traits(device_ids: Iterable[str], behaviour: FleetBehaviour) -> dict[str, Traits]:
    """Each device's traits: for each fraction, exactly ``round(fraction × n)`` devices drawn
    with a generator seeded by ``behaviour.seed`` and the trait's name."""
    ids = sorted(set(device_ids))
    chosen: dict[str, set[str]] = {}
    for name in _FRACTIONS:
        count = round(getattr(behaviour, name) * len(ids))
        rng = random.Random(f"{behaviour.seed}:{name}")  # noqa: S311 — a simulation, not crypto
        chosen[name] = set(rng.sample(ids, count))
    return {
        device_id: Traits(**{name: device_id in chosen[name] for name in _FRACTIONS})
        for device_id in ids
    }


@dataclass(frozen=True, slots=True)
class FleetStats:
    """Counters over the whole fleet since it started."""

    speakers: int
    #: Speakers connected (their own connection, or their shared one) and not offline.
    online: int
    #: Alert messages that reached a speaker, repeats and expired ones included.
    heard: int
    #: Distinct warnings taken up (a speaker counts each warning id once).
    received: int
    #: Plays to the end (counted as each ends, just before its ``played`` ack is sent).
    played: int
    failed: int
    stopped: int
    #: Repeats of a warning id a speaker already had (answered with its last ack again).
    duplicates: int
    #: Alerts ignored because they had expired.
    expired: int
    #: Alert payloads that did not parse.
    malformed: int
    #: Acks the broker confirmed (PUBACK); a duplicated ack counts twice.
    acks_sent: int


class Speaker:
    """One running speaker: what it heard, played and acknowledged (``fleet.speaker(id)``)."""

    def __init__(self, spec: SimSpeaker, traits: Traits, root: str) -> None:
        self.device_id = spec.device_id
        self.areas = tuple(dict.fromkeys(spec.areas))
        self.traits = traits
        #: Whether it is switched on (offline speakers never connect; see set_online).
        self.online = not traits.offline
        #: Every distinct warning it took up, by id (the first copy).
        self.alerts: dict[str, Alert] = {}
        #: Alert messages that reached it, repeats included.
        self.heard = 0
        #: Times each warning was played to the end.
        self.plays: Counter[str] = Counter()
        #: Every ack it published, in order (a duplicated ack twice).
        self.acks: list[Ack] = []
        #: The last ack per warning id (what a repeat of that alert is answered with).
        self.last_ack: dict[str, Ack] = {}
        #: Warnings being played (or waited on by a slow speaker): their tasks.
        self.active: dict[str, asyncio.Task[None]] = {}
        #: Warnings a Cancel or an Update named: never played after it.
        self.cancelled: set[str] = set()
        self.ack_topic = device_topic(root, self.device_id, "ack")
        self.state_topic = device_topic(root, self.device_id, "state")
        self.topics = (
            *(area_alert_topic(root, code) for code in self.areas),
            device_topic(root, self.device_id, "alert"),
        )
        self.connection: _Connection | None = None
        # A stable "signal strength" for its heartbeat.
        self.rssi = -55 - sum(self.device_id.encode()) % 40

    @property
    def play_count(self) -> int:
        """Plays to the end, all warnings together."""
        return sum(self.plays.values())

    def ack_states(self, warning_id: str) -> list[AckState]:
        """The states it acknowledged for one warning, in the order it sent them."""
        return [ack.state for ack in self.acks if ack.warning_id == warning_id]

    def __repr__(self) -> str:
        return f"<Speaker {self.device_id} online={self.online} plays={self.play_count}>"


class SpeakerFleet:
    """Simulated speakers on a broker; an async context manager owning its connections.

    ``async with SpeakerFleet(speakers, host=..., port=...) as fleet:`` connects, subscribes
    and publishes every speaker's retained state, and waits (up to ``ready_timeout`` seconds;
    None: does not wait) until all of that is done; leaving the block publishes the speakers'
    ``offline`` states and disconnects.
    """

    def __init__(
        self,
        speakers: Sequence[SimSpeaker | tuple[str, Sequence[str]]],
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        root: str = DEFAULT_ROOT,
        behaviour: FleetBehaviour | None = None,
        connections: int | None = None,
        username: str | None = None,
        password: str | None = None,
        passwords: Mapping[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        keepalive: int = 30,
        session_expiry: int = DEFAULT_SESSION_EXPIRY,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        client_prefix: str = "tocsin-sim",
        ready_timeout: float | None = 30.0,
    ) -> None:
        specs = [SimSpeaker(s[0], tuple(s[1])) for s in speakers]
        ids = [s.device_id for s in specs]
        if len(set(ids)) != len(ids):
            repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"device ids given twice: {', '.join(repeated[:5])}")
        if connections is not None and connections < 1:
            raise ValueError("connections must be at least 1 (None: one per speaker)")
        self.behaviour = behaviour or FleetBehaviour()
        self.host = host
        self.port = port
        self.root = root
        self.username = username
        self.password = password
        self.passwords = dict(passwords or {})
        self.tls_context = tls_context
        self.keepalive = keepalive
        self.session_expiry = session_expiry
        self.client_prefix = client_prefix
        self.ready_timeout = ready_timeout
        self.per_device = connections is None
        traits = assign_traits(ids, self.behaviour)
        self._speakers = {s.device_id: Speaker(s, traits[s.device_id], root) for s in specs}
        self._connections = self._make_connections(connections)
        self._max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._played: Counter[str] = Counter()
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self._counts: Counter[str] = Counter()
        self._started = 0.0
        self.stopping = False

    def _make_connections(self, connections: int | None) -> list[_Connection]:
        speakers = list(self._speakers.values())
        if connections is None:
            return [_Connection(self, i, [s]) for i, s in enumerate(speakers)]
        # Neighbours together: a connection then subscribes to few area topics.
        speakers.sort(key=lambda s: (s.areas, s.device_id))
        count = max(1, min(connections, len(speakers)))
        size, extra = divmod(len(speakers), count)
        groups, start = [], 0
        for index in range(count):
            end = start + size + (1 if index < extra else 0)
            groups.append(speakers[start:end])
            start = end
        return [_Connection(self, i, group) for i, group in enumerate(groups) if group]

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.start()
        if self.ready_timeout is not None:
            try:
                await self.wait_ready(self.ready_timeout)
            except BaseException:
                await self.stop()
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every connection's task (connecting in the background)."""
        self._started = time.monotonic()
        for conn in self._connections:
            conn.task = asyncio.create_task(conn.run(), name=f"sim-speakers:{conn.identifier}")

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109
        """Until every connection has connected, subscribed and published its states (and
        every offline speaker's ``offline`` state is out); TimeoutError names those missing."""
        pending = [c for c in self._connections if not c.ready.is_set()]
        if not pending:
            return
        waits = [asyncio.ensure_future(c.ready.wait()) for c in pending]
        _, not_done = await asyncio.wait(waits, timeout=timeout)
        for waiter in not_done:
            waiter.cancel()
        if not_done:
            missing = [c.identifier for c in pending if not c.ready.is_set()]
            raise TimeoutError(
                f"{len(missing)} connection(s) to {self.host}:{self.port} not ready within "
                f"{timeout:g} s: {', '.join(missing[:5])}"
            )

    async def stop(self) -> None:
        """Stop playing, publish the offline states, disconnect. Idempotent."""
        if self.stopping:
            return
        self.stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in self._connections:
            conn.control.set()
        running = [c.task for c in self._connections if c.task is not None]
        if running:
            _, late = await asyncio.wait(running, timeout=_STOP_TIMEOUT)
            for task in late:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        for waiters in self._waiters.values():
            for _, future in waiters:
                if not future.done():
                    future.cancel()

    # -- test hooks --------------------------------------------------------------------------
    def speaker(self, device_id: str) -> Speaker:
        return self._speakers[device_id]

    @property
    def speakers(self) -> list[Speaker]:
        return list(self._speakers.values())

    def stats(self) -> FleetStats:
        counts = self._counts
        online = sum(c.online_speakers() for c in self._connections if c.connected.is_set())
        return FleetStats(
            speakers=len(self._speakers),
            online=online,
            heard=counts["heard"],
            received=counts["received"],
            played=counts["played"],
            failed=counts["failed"],
            stopped=counts["stopped"],
            duplicates=counts["duplicates"],
            expired=counts["expired"],
            malformed=counts["malformed"],
            acks_sent=counts["acks_sent"],
        )

    def played(self, warning_id: str) -> int:
        """How many speakers played this warning to the end."""
        return self._played[warning_id]

    async def wait_played(
        self,
        warning_id: str,
        count: int,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Until ``count`` speakers have played ``warning_id`` to the end (their ``played`` acks
        are then on their way: wait for those where they are received); TimeoutError says how
        many did."""
        if self._played[warning_id] >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(warning_id, [])
        entry = (count, future)
        waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"warning {warning_id} played by {self._played[warning_id]} of {count} "
                f"speakers within {timeout:g} s"
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(entry)

    async def set_online(
        self,
        device_id: str,
        online: bool,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Switch a speaker on or off. With a connection per speaker it disconnects (with its
        last will, which the broker publishes) and later reconnects with the same session, so
        alerts published meanwhile are delivered then; on a shared connection its retained
        state is published and it ignores alerts while off."""
        speaker = self._speakers[device_id]
        conn = _connection_of(speaker)
        speaker.online = online
        if self.per_device:
            conn.want_online = online
            conn.control.set()
            target = conn.connected if online else conn.idle
            await asyncio.wait_for(target.wait(), timeout)
            return
        state = DeviceState.ONLINE if online else DeviceState.OFFLINE
        await asyncio.wait_for(
            conn.publish(speaker.state_topic, self._state_payload(speaker, state), retain=True),
            timeout,
        )

    # -- behaviour ---------------------------------------------------------------------------
    def _state_payload(self, speaker: Speaker, state: DeviceState) -> bytes:
        if state is DeviceState.OFFLINE:
            return StateMessage(DeviceState.OFFLINE, ts=time.time()).payload()
        detail: dict[str, Any] = {
            "fw": FIRMWARE,
            "volume": 80,
            "rssi": speaker.rssi,
            "uptime": round(time.monotonic() - self._started),
        }
        if self.behaviour.heartbeat_seconds > 0:
            detail["heartbeat"] = self.behaviour.heartbeat_seconds
        return StateMessage(DeviceState.ONLINE, ts=time.time(), detail=detail).payload()

    def _on_alert(self, speaker: Speaker, alert: Alert) -> None:
        if self.stopping:
            return
        counts = self._counts
        counts["heard"] += 1
        speaker.heard += 1
        if not speaker.online:
            return
        if alert.id in speaker.alerts:
            # Delivery is at least once: never play twice, answer with the last ack again.
            counts["duplicates"] += 1
            last = speaker.last_ack.get(alert.id)
            if last is not None:
                delivery = alert.delivery if alert.delivery is not None else last.delivery
                again = replace(last, ts=time.time(), delivery=delivery)
                self._spawn(self._send(speaker, again), speaker)
            return
        if _expired(alert):
            counts["expired"] += 1
            return
        if alert.id in speaker.cancelled:  # its Cancel overtook it
            return
        speaker.alerts[alert.id] = alert
        counts["received"] += 1
        if alert.type == "Cancel":
            self._stop_playing(speaker, alert.references)
            counts["stopped"] += 1
            self._spawn(self._send(speaker, _ack(alert, AckState.STOPPED)), speaker)
            return
        if alert.type == "Update" and alert.references:
            self._stop_playing(speaker, alert.references)
        speaker.active[alert.id] = self._spawn(self._play(speaker, alert), speaker)

    def _stop_playing(self, speaker: Speaker, references: Sequence[str]) -> None:
        speaker.cancelled.update(references)
        for warning_id in references or list(speaker.active):
            task = speaker.active.pop(warning_id, None)
            if task is not None:
                task.cancel()

    def _spawn(self, coro: Any, speaker: Speaker) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _play(self, speaker: Speaker, alert: Alert) -> None:
        behaviour, traits = self.behaviour, speaker.traits
        try:
            if traits.slow:
                await asyncio.sleep(behaviour.slow_delay)
            if behaviour.progress:
                await self._send(speaker, _ack(alert, AckState.RECEIVED))
            if traits.failing:
                self._counts["failed"] += 1
                await self._send(speaker, _ack(alert, AckState.FAILED, error=_SIMULATED_ERROR))
                return
            if traits.out_of_order:
                if behaviour.play_seconds:
                    await asyncio.sleep(behaviour.play_seconds)
                self._count_play(speaker, alert.id)
                await self._send(speaker, _ack(alert, AckState.PLAYED, plays=alert.repeat))
                if behaviour.progress:
                    await self._send(speaker, _ack(alert, AckState.PLAYING))
                return
            if behaviour.progress:
                await self._send(speaker, _ack(alert, AckState.PLAYING))
            if behaviour.play_seconds:
                await asyncio.sleep(behaviour.play_seconds)
            self._count_play(speaker, alert.id)
            await self._send(speaker, _ack(alert, AckState.PLAYED, plays=alert.repeat))
        finally:
            if speaker.active.get(alert.id) is asyncio.current_task():
                del speaker.active[alert.id]

    def _count_play(self, speaker: Speaker, warning_id: str) -> None:
        """It played to the end: counted now, before its ``played`` ack goes out (so the
        count is never behind what the dispatcher heard); a Cancel no longer withdraws it."""
        if speaker.active.get(warning_id) is asyncio.current_task():
            del speaker.active[warning_id]
        speaker.plays[warning_id] += 1
        self._counts["played"] += 1
        self._played[warning_id] += 1
        played = self._played[warning_id]
        for count, future in self._waiters.get(warning_id, ()):
            if played >= count and not future.done():
                future.set_result(None)

    async def _send(self, speaker: Speaker, ack: Ack) -> None:
        speaker.last_ack[ack.warning_id] = ack
        conn = _connection_of(speaker)
        payload = ack.payload()
        for _ in range(2 if speaker.traits.duplicate_acks else 1):
            await conn.publish(speaker.ack_topic, payload)
            speaker.acks.append(ack)
            self._counts["acks_sent"] += 1


def _connection_of(speaker: Speaker) -> _Connection:
    if speaker.connection is None:  # every speaker gets one when the fleet is made
        raise RuntimeError(f"speaker {speaker.device_id} has no connection")
    return speaker.connection


def _ack(alert: Alert, state: AckState, *, plays: int | None = None, error: str = "") -> Ack:
    return Ack(alert.id, state, ts=time.time(), plays=plays, error=error, delivery=alert.delivery)


def _expired(alert: Alert) -> bool:
    expires = alert.expires
    if expires.tzinfo is None:  # the protocol says with an offset; read a bare time as UTC
        expires = expires.replace(tzinfo=UTC)
    return expires.timestamp() <= time.time()


@dataclass(slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    retain: bool
    confirmed: asyncio.Future[None]


class _Connection:
    """One MQTT connection: a speaker's own, or one shared by many. Runs in its own task."""

    def __init__(self, fleet: SpeakerFleet, index: int, speakers: list[Speaker]) -> None:
        self.fleet = fleet
        self.index = index
        self.speakers = speakers
        self.per_device = fleet.per_device
        for speaker in speakers:
            speaker.connection = self
        # Topic → the speakers it concerns (each speaker once per topic).
        self.routes: dict[str, list[Speaker]] = {}
        for speaker in speakers:
            for topic in speaker.topics:
                self.routes.setdefault(topic, []).append(speaker)
        if self.per_device:
            self.identifier = speakers[0].device_id
            self.want_online = speakers[0].online
        else:
            self.identifier = f"{fleet.client_prefix}-{index:03d}"
            self.want_online = True
        self.client: aiomqtt.Client | None = None
        #: Connected, subscribed and states published.
        self.connected = asyncio.Event()
        #: Not connected (a speaker switched off has left).
        self.idle = asyncio.Event()
        self.idle.set()
        #: Ready once: the first connection is up, or the offline state is out.
        self.ready = asyncio.Event()
        #: Wakes the task: the fleet stops, or the speaker is switched on or off.
        self.control = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.connects = 0
        self._session = False
        #: Messages waiting to be handed to paho, in order (see :meth:`publish`).
        self._outbox: deque[_Outgoing] = deque()
        #: Handed to paho on the current client and not yet confirmed, by MQTT message id.
        self._in_flight: dict[int, _Outgoing] = {}

    # -- the connection's task ---------------------------------------------------------------
    async def run(self) -> None:
        if self.per_device and not self.want_online:
            await self._announce_offline()
        delay = _RECONNECT_MIN
        while True:
            self.control.clear()
            if self._stopping():
                return
            if not self.want_online:
                await self.control.wait()
                continue
            client = self._client()
            try:
                async with client:
                    delay = _RECONNECT_MIN
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                level = logging.INFO if self.connects else logging.WARNING
                log.log(level, "%s: %s; reconnecting in %.1f s", self.identifier, exc, delay)
            finally:
                self._lost()
            if self._stopping():
                return
            if self.want_online and not self.control.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.control.wait(), delay)
                delay = min(delay * 2, _RECONNECT_MAX)

    def online_speakers(self) -> int:
        if self.per_device:
            return 1 if self.speakers[0].online else 0
        return sum(1 for s in self.speakers if s.online)

    def _stopping(self) -> bool:
        return self.fleet.stopping

    async def _serve(self, client: aiomqtt.Client) -> None:
        fleet = self.fleet
        topics = list(self.routes)
        for start in range(0, len(topics), _SUBSCRIBE_BATCH):
            batch = topics[start : start + _SUBSCRIBE_BATCH]
            await client.subscribe([(t, SubscribeOptions(qos=1)) for t in batch])
        self._session = True
        self.client = client
        self.connects += 1
        await self._publish_states(client)
        self.idle.clear()
        self.connected.set()
        self.ready.set()
        self._pump()  # what waited for the connection
        reader = asyncio.create_task(self._read(client), name=f"{self.identifier}:read")
        beats = asyncio.create_task(self._heartbeat(), name=f"{self.identifier}:heartbeat")
        woken = asyncio.create_task(self.control.wait())
        try:
            done, _ = await asyncio.wait({reader, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, beats, woken):
                task.cancel()
            await asyncio.gather(reader, beats, woken, return_exceptions=True)
        if reader in done and not reader.cancelled():
            reader.result()  # the connection was lost: raises MqttError
        self.client = None
        self.connected.clear()
        if fleet.stopping:
            # A clean stop: say so (a normal DISCONNECT discards the last will).
            offline = [
                client.publish(s.state_topic, fleet._state_payload(s, DeviceState.OFFLINE), 1, True)
                for s in self.speakers
            ]
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await asyncio.wait_for(asyncio.gather(*offline), _STOP_TIMEOUT / 2)
        elif self.per_device and not self.want_online:
            await self._leave_with_will(client)

    async def _read(self, client: aiomqtt.Client) -> None:
        fleet = self.fleet
        async for message in client.messages:
            speakers = self.routes.get(message.topic.value)
            if not speakers:
                continue
            payload = message.payload
            raw = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
            try:
                alert = parse_alert(bytes(raw))
            except ProtocolError as exc:
                fleet._counts["malformed"] += 1
                log.warning("%s: malformed alert on %s: %s", self.identifier, message.topic, exc)
                continue
            for speaker in speakers:
                fleet._on_alert(speaker, alert)
        raise aiomqtt.MqttError("message stream ended")

    async def _heartbeat(self) -> None:
        seconds = self.fleet.behaviour.heartbeat_seconds
        if seconds <= 0:
            return
        while True:
            await asyncio.sleep(seconds)
            client = self.client
            if client is not None:
                await self._publish_states(client, only_online=True)

    async def _publish_states(self, client: aiomqtt.Client, *, only_online: bool = False) -> None:
        """Each speaker's retained state on this connection. Through aiomqtt, not the outbox:
        this runs while connecting, and aiomqtt gives up on a lost connection, where the
        outbox would wait for the reconnection this very task has to make."""
        fleet = self.fleet
        gate = asyncio.Semaphore(fleet._max_in_flight)

        async def one(topic: str, payload: bytes) -> None:
            async with gate:
                await client.publish(topic, payload, qos=1, retain=True)

        publishes = []
        for speaker in self.speakers:
            if only_online and not speaker.online:
                continue
            state = DeviceState.ONLINE if speaker.online else DeviceState.OFFLINE
            publishes.append(one(speaker.state_topic, fleet._state_payload(speaker, state)))
        await asyncio.gather(*publishes)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> asyncio.Future[None]:
        """Publish at QoS 1 on this connection; the future is done when the broker has
        confirmed it (PUBACK). Messages go out in the order they were given, at most
        ``max_in_flight`` unconfirmed; through reconnections: those not confirmed when the
        connection was lost go again, first, once it is back (at least once, as the protocol
        says). Cancelling the future withdraws a message not yet handed over.

        The acks of thousands of speakers go this way, so it is an outbox feeding paho
        directly: aiomqtt's publish costs a task, an event and a scan of all its pending calls
        per message, and a semaphore with thousands of waiters a scan per release, which
        limited a fleet to a few thousand acks a second."""
        item = _Outgoing(topic, payload, retain, asyncio.get_running_loop().create_future())
        self._outbox.append(item)
        self._pump()
        return item.confirmed

    def _pump(self) -> None:
        client = self.client
        if client is None:
            return
        paho, outbox, in_flight = client._client, self._outbox, self._in_flight
        limit = self.fleet._max_in_flight
        while outbox and len(in_flight) < limit:
            item = outbox.popleft()
            if item.confirmed.done():  # withdrawn (its speaker was stopped)
                continue
            info = paho.publish(item.topic, item.payload, qos=1, retain=item.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:  # the connection is going: _lost() resends
                outbox.appendleft(item)
                return
            in_flight[info.mid] = item

    def _lost(self) -> None:
        """The connection is gone: what was not confirmed goes again first, in order."""
        self.client = None
        self.connected.clear()
        self.idle.set()
        unconfirmed = list(self._in_flight.values())
        self._in_flight.clear()
        self._outbox.extendleft(reversed(unconfirmed))

    async def _leave_with_will(self, client: aiomqtt.Client) -> None:
        """Disconnect so that the broker publishes the last will (MQTT v5 reason 0x04), as
        when a speaker loses power; the session stays for the reconnection."""
        reason = ReasonCode(PacketTypes.DISCONNECT, identifier=_DISCONNECT_WITH_WILL)
        # aiomqtt has no API for a DISCONNECT reason code: ask paho, then let aiomqtt see the
        # connection close (its __aexit__ returns at once when it has).
        client._client.disconnect(reasoncode=reason)
        gone = client._disconnected
        await asyncio.wait({gone}, timeout=5.0)
        if gone.done() and not gone.cancelled():
            gone.exception()  # retrieved: a closed connection is what was asked for

    async def _announce_offline(self) -> None:
        """An offline speaker's retained ``offline`` state, published once as that device
        (its own credentials, so a broker ACL allows it), with a throwaway session."""
        fleet = self.fleet
        speaker = self.speakers[0]
        delay = _RECONNECT_MIN
        while not fleet.stopping and not self.want_online:
            try:
                async with self._client(announce=True) as client:
                    payload = fleet._state_payload(speaker, DeviceState.OFFLINE)
                    await client.publish(speaker.state_topic, payload, qos=1, retain=True)
                self.ready.set()
                return
            except aiomqtt.MqttError as exc:
                log.warning("%s: offline state not published: %s", self.identifier, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.control.wait(), delay)
                delay = min(delay * 2, _RECONNECT_MAX)

    def _client(self, *, announce: bool = False) -> aiomqtt.Client:
        fleet = self.fleet
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        will = None
        if self.per_device:
            speaker = self.speakers[0]
            username: str | None = speaker.device_id
            password = fleet.passwords.get(speaker.device_id, fleet.password)
            if not announce:
                offline = StateMessage(DeviceState.OFFLINE).payload()
                will = aiomqtt.Will(speaker.state_topic, offline, qos=1, retain=True)
            # A speaker's session is persistent: alerts wait for it at the broker.
            clean_start = announce
        else:
            username, password = fleet.username, fleet.password
            # A fresh session at the first connection, resumed after a lost one.
            clean_start = not self._session
        if not announce:
            properties.SessionExpiryInterval = fleet.session_expiry
        client = aiomqtt.Client(
            fleet.host,
            fleet.port,
            username=username,
            password=password,
            identifier=self.identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            clean_start=clean_start,
            keepalive=fleet.keepalive,
            properties=properties,
            tls_context=fleet.tls_context,
            # Unlimited in paho: the outbox bounds what is in flight, and paho's own limit
            # costs a scan of its outgoing messages per PUBACK.
            max_inflight_messages=0,
            logger=_MQTT_LOG,
        )
        # aiomqtt warns per publish above this many pending calls; hundreds are intended.
        client.pending_calls_threshold = 10 * fleet._max_in_flight + 1000
        # PUBACKs of the messages of the outbox (see publish()) confirm them and let more
        # go; the rest are aiomqtt's own.
        in_flight = self._in_flight = {}
        aiomqtt_on_publish = client._on_publish

        def on_publish(
            paho: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties
        ) -> None:
            item = in_flight.pop(mid, None)
            if item is None:
                aiomqtt_on_publish(paho, userdata, mid, reason, props)
                return
            if not item.confirmed.done():
                item.confirmed.set_result(None)
            if self._outbox:
                self._pump()

        client._client.on_publish = on_publish
        if not _MQTT_LOG.isEnabledFor(logging.DEBUG):
            # paho formats a debug line per packet for the logger aiomqtt hands it.
            client._client.disable_logger()
        return client


# -- fleets from files and parameters -----------------------------------------------------------
def synthetic_fleet(count: int, villages: int, area_prefix: str = "6110") -> list[SimSpeaker]:
    """``count`` speakers ``spk-00001``… spread round-robin over ``villages`` villages.

    Codes are 12-digit statistical codes under ``area_prefix`` (4 digits: province and city,
    e.g. ``6110`` for Shangluo): villages fill towns of :data:`VILLAGES_PER_TOWN` and towns
    counties of :data:`TOWNS_PER_COUNTY`, numbered like :mod:`dispatcher.synthetic` does
    (county ``prefix + 01…``, town ``county + 101…``, village ``town + 201…``). Each speaker
    listens to its village, town (``…000``), county (``…000000``), city (the prefix padded
    with zeros) and province (its first two digits padded).
    """
    if not re.fullmatch(r"\d{4}", area_prefix):
        raise ValueError(f"area prefix must be 4 digits (province and city), not {area_prefix!r}")
    if count < 1 or villages < 1:
        raise ValueError("count and villages must be at least 1")
    max_villages = 99 * TOWNS_PER_COUNTY * VILLAGES_PER_TOWN
    if villages > max_villages:
        raise ValueError(f"at most {max_villages} villages under one city")
    city = area_prefix + "0" * 8
    province = area_prefix[:2] + "0" * 10
    village_areas: list[tuple[str, ...]] = []
    for index in range(villages):
        town_index, in_town = divmod(index, VILLAGES_PER_TOWN)
        county_index, in_county = divmod(town_index, TOWNS_PER_COUNTY)
        county = f"{area_prefix}{county_index + 1:02d}"
        town = f"{county}{101 + in_county:03d}"
        village = f"{town}{201 + in_town:03d}"
        codes = (village, f"{town}000", f"{county}000000", city, province)
        village_areas.append(tuple(dict.fromkeys(codes)))
    width = max(5, len(str(count)))
    return [SimSpeaker(f"spk-{n + 1:0{width}d}", village_areas[n % villages]) for n in range(count)]


def read_speakers_csv(path: str | os.PathLike[str]) -> list[SimSpeaker]:
    """Speakers from a CSV file: ``device_id`` then the area codes, village first, separated
    by spaces or ``;`` (in one column or several). A first row starting ``device_id`` is a
    header; blank rows and rows starting with ``#`` are skipped."""
    speakers: list[SimSpeaker] = []
    seen: set[str] = set()
    with open(path, newline="", encoding="utf-8-sig") as file:
        for line, row in enumerate(csv.reader(file), 1):
            cells = [cell.strip() for cell in row]
            if not cells or not cells[0] or cells[0].startswith("#"):
                continue
            if line == 1 and cells[0].lower() == "device_id":
                continue
            device_id = cells[0]
            areas = tuple(code for cell in cells[1:] for code in re.split(r"[\s;]+", cell) if code)
            try:
                device_topic(DEFAULT_ROOT, device_id, "ack")
                for code in areas:
                    area_alert_topic(DEFAULT_ROOT, code)
            except ProtocolError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
            if device_id in seen:
                raise ValueError(f"{path}:{line}: device {device_id} is listed twice")
            seen.add(device_id)
            speakers.append(SimSpeaker(device_id, areas))
    if not speakers:
        raise ValueError(f"{path}: no speakers")
    return speakers


# -- the command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tocsin simulate speakers",
        description="A fleet of simulated village loudspeakers speaking the Tocsin loudspeaker "
        "MQTT protocol v1 against a broker. Runs until Ctrl-C or SIGTERM, then publishes "
        "the speakers' offline states.",
        epilog="The fleet: --speakers FILE.csv (device_id, then area codes village first), "
        "or the directory's loudspeakers of one adapter instance with `tocsin simulate "
        "speakers --config FILE --adapter NAME`, or else a synthetic fleet: --count speakers "
        "spk-00001… round-robin over --villages villages under --area-prefix (province+city, "
        "4 digits): county prefix+01…, 15 towns a county (county+101…), 15 villages a town "
        "(town+201…); each speaker listens to its village, town, county, city and province. "
        "One connection per speaker uses the device id as client id and username (the "
        "password from --password-env); shared connections use --username and client ids "
        "CLIENT_PREFIX-000…, so they need a broker listener without use_username_as_clientid "
        "and an account that may write every device's topics (a lab broker).",
    )
    broker = parser.add_argument_group("broker")
    broker.add_argument("--host", default="127.0.0.1")
    broker.add_argument("--port", type=int, help="default 1883, 8883 with --tls")
    broker.add_argument("--tls", action="store_true", help="connect with TLS")
    broker.add_argument("--ca-file", help="CA certificate(s) to verify the broker with")
    broker.add_argument(
        "--username",
        help="username of the shared connections (one connection per speaker: the device id)",
    )
    broker.add_argument(
        "--password-env", metavar="VAR", help="read the password from this environment variable"
    )
    broker.add_argument("--root", default=DEFAULT_ROOT, help=f"topic root (default {DEFAULT_ROOT})")
    broker.add_argument("--client-prefix", default="tocsin-sim", help="shared connections' ids")
    fleet = parser.add_argument_group("fleet (a CSV file, or a synthetic fleet)")
    fleet.add_argument(
        "--speakers", metavar="FILE.csv", help="device_id, then area codes village first"
    )
    fleet.add_argument("--count", type=int, default=20, help="synthetic speakers (default 20)")
    fleet.add_argument("--villages", type=int, help="synthetic villages (default count/3)")
    fleet.add_argument(
        "--area-prefix", default="6110", help="4-digit province+city code (default 6110)"
    )
    fleet.add_argument(
        "--connections",
        type=int,
        help=f"share N connections (0: one per speaker; default: one per speaker up to "
        f"{AUTO_PER_DEVICE_LIMIT} speakers, else {AUTO_CONNECTIONS})",
    )
    how = parser.add_argument_group("behaviour (fractions of the speakers)")
    how.add_argument("--offline", type=fraction, default=0.0)
    how.add_argument("--slow", type=fraction, default=0.0)
    how.add_argument("--slow-delay", type=seconds, default=10.0, metavar="SECONDS")
    how.add_argument("--failing", type=fraction, default=0.0)
    how.add_argument("--duplicate-acks", type=fraction, default=0.0)
    how.add_argument("--out-of-order", type=fraction, default=0.0)
    how.add_argument("--play-seconds", type=seconds, default=0.0, metavar="SECONDS")
    how.add_argument("--no-progress", action="store_true", help="send only the final ack")
    how.add_argument("--heartbeat", type=seconds, default=60.0, metavar="SECONDS")
    how.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--summary-seconds", type=seconds, default=5.0, help="print a summary this often"
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def main(
    argv: list[str] | None = None,
    *,
    speakers: Sequence[SimSpeaker | tuple[str, Sequence[str]]] | None = None,
) -> int:
    """``tocsin simulate speakers``. ``speakers`` (given by ``tocsin simulate speakers
    --config … --adapter …``, read from the directory) replaces ``--speakers``/``--count``."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if speakers is not None:
            if args.speakers:
                raise ValueError("--speakers cannot be combined with the directory's speakers")
            fleet_spec = [SimSpeaker(s[0], tuple(s[1])) for s in speakers]
        elif args.speakers:
            fleet_spec = read_speakers_csv(args.speakers)
        else:
            villages = args.villages or max(1, args.count // 3)
            fleet_spec = synthetic_fleet(args.count, villages, args.area_prefix)
        behaviour = FleetBehaviour(
            offline=args.offline,
            slow=args.slow,
            slow_delay=args.slow_delay,
            failing=args.failing,
            duplicate_acks=args.duplicate_acks,
            out_of_order=args.out_of_order,
            play_seconds=args.play_seconds,
            progress=not args.no_progress,
            heartbeat_seconds=args.heartbeat,
            seed=args.seed,
        )
        password = None
        if args.password_env:
            password = os.environ.get(args.password_env)
            if password is None:
                raise ValueError(f"environment variable {args.password_env} is not set")
        tls_context = None
        if args.tls or args.ca_file:
            tls_context = ssl.create_default_context(cafile=args.ca_file)
        if args.connections is None:
            per_device = len(fleet_spec) <= AUTO_PER_DEVICE_LIMIT
            connections = None if per_device else AUTO_CONNECTIONS
        elif args.connections < 0:
            raise ValueError("--connections must be 0 (one per speaker) or more")
        else:
            connections = args.connections or None
        port = args.port or (8883 if tls_context else 1883)
        fleet = SpeakerFleet(
            fleet_spec,
            host=args.host,
            port=port,
            root=args.root,
            behaviour=behaviour,
            connections=connections,
            username=args.username,
            password=password,
            tls_context=tls_context,
            client_prefix=args.client_prefix,
            ready_timeout=None,
        )
    except (OSError, ValueError, ssl.SSLError) as exc:
        print(f"tocsin simulate speakers: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(fleet, args.summary_seconds or 5.0))


async def _run(fleet: SpeakerFleet, summary_seconds: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    mode = (
        "one connection per speaker"
        if fleet.per_device
        else f"{len(fleet._connections)} shared connections"
    )
    print(
        f"{len(fleet.speakers)} simulated speakers ({mode}) on {fleet.host}:{fleet.port}, "
        f"topic root {fleet.root}; Ctrl-C stops",
        flush=True,
    )
    try:
        async with fleet:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), summary_seconds)
                print(_summary(fleet.stats()), flush=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print("stopped; offline states published", flush=True)
    return 0


def _summary(stats: FleetStats) -> str:
    return (
        f"{time.strftime('%H:%M:%S')} online {stats.online}/{stats.speakers}, "
        f"alerts heard {stats.heard}, received {stats.received}, played {stats.played}, "
        f"failed {stats.failed}, stopped {stats.stopped}, duplicates {stats.duplicates}, "
        f"acks sent {stats.acks_sent}"
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The ``mqtt_speaker`` adapter on several dispatcher nodes (``shared_group``), against a real
Mosquitto: each speaker's ack reaches one node through an MQTT shared subscription, every node
sees every speaker's state, a node that stops leaves the group at once. And what Mosquitto
itself does with a shared member's part of the messages while that member is away with its
session kept: why the shared ack connection keeps no session (README, "Several nodes")."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from mqtt_broker import Broker, running_mosquitto
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError
from recording import RecordingContext
from waiting import wait_until

from adapters.mqtt_speaker.adapter import MqttSpeakerAdapter
from adapters.mqtt_speaker.protocol import Ack, AckState, ack_subscription
from adapters.mqtt_speaker.settings import MqttSpeakerSettings
from dispatcher.adapter import Report
from dispatcher.adapter_config import build_adapter_specs
from dispatcher.config import AdapterInstanceConfig, EngineConfig, load_policy
from dispatcher.domain import Channel
from dispatcher.engine.engine import Engine
from dispatcher.store.sqlite import SqliteStore

ROOT = "tocsin/v1"
PROJECT = Path(__file__).resolve().parents[2]
GROUP = "tocsin-acks"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    config = "allow_anonymous true\npersistence true\nmax_queued_messages 0\n"
    with running_mosquitto(config, tmp_path / "broker") as running:
        yield running


def settings_for(broker: Broker, **changes: object) -> MqttSpeakerSettings:
    return MqttSpeakerSettings.model_validate(
        {
            "host": broker.host,
            "port": broker.port,
            "connect_timeout": 3,
            "publish_timeout": 3,
            "reconnect_min": 0.1,
            "reconnect_max": 0.5,
            **changes,
        }
    )


def gone(client_id: str) -> str:
    """Mosquitto's log line for a client whose connection ended (DISCONNECT, closed, broken)."""
    who = re.escape(client_id)
    return rf"Client {who} (disconnected|closed its connection)|Socket error on client {who}"


@asynccontextmanager
async def dispatcher_node(
    broker: Broker, node: str, **settings: object
) -> AsyncIterator[tuple[MqttSpeakerAdapter, RecordingContext]]:
    """One dispatcher node's instance of the adapter, in the shared group."""
    adapter = MqttSpeakerAdapter(
        name="speakers", settings=settings_for(broker, shared_group=GROUP, **settings)
    )
    context = RecordingContext(name="speakers", node_name=node)
    await adapter.start(context)
    try:
        yield adapter, context
    finally:
        await adapter.stop()


@asynccontextmanager
async def publisher(broker: Broker) -> AsyncIterator[aiomqtt.Client]:
    """The speakers' side: one client publishing their acks and states (QoS 1: when publish
    returns, Mosquitto has routed the message)."""
    async with aiomqtt.Client(broker.host, broker.port, identifier="speakers-test") as client:
        yield client


async def ack(client: aiomqtt.Client, device: str, state: AckState, delivery: int) -> None:
    payload = Ack("w1", state, delivery=delivery).payload()
    await client.publish(f"{ROOT}/device/{device}/ack", payload, qos=1)


def key(report: Report) -> tuple[str | None, str, int | None]:
    return report.from_address, str(report.detail["device_state"]), report.delivery_id


async def drain(client: aiomqtt.Client, contexts: list[RecordingContext]) -> None:
    """Wait until each node has taken everything published before: publish marker acks (each
    goes to one node) until every node has reported one. Mosquitto sends a client its
    messages in order, so a node's marker comes after all it was given before."""
    seen: set[int] = set()

    def taken(before: list[int]) -> set[int]:
        return {i for i, c in enumerate(contexts) if len(c.reports) > before[i]}

    for n in range(20):
        before = [len(c.reports) for c in contexts]
        await ack(client, f"marker-{n}", AckState.PLAYED, delivery=900_000 + n)
        await wait_until(
            functools.partial(taken, before), within=5, what=f"marker {n} reported by a node"
        )
        seen |= taken(before)
        if len(seen) == len(contexts):
            return
    raise AssertionError("a node never took a marker ack")


def without_markers(reports: list[Report]) -> list[Report]:
    return [r for r in reports if not (r.from_address or "").startswith("marker-")]


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["", "a/b", "acks+", "#", "nul\0"])
def test_shared_group_is_one_topic_level(group: str) -> None:
    with pytest.raises(ValidationError, match="one MQTT topic level") as info:
        MqttSpeakerSettings.model_validate({"shared_group": group})
    assert info.value.errors()[0]["loc"] == ("shared_group",)


def test_the_ack_subscription_is_shared_only_with_a_group() -> None:
    assert MqttSpeakerSettings.model_validate({}).shared_group is None
    assert ack_subscription(ROOT) == "tocsin/v1/device/+/ack"
    assert ack_subscription(ROOT, "tocsin-acks") == "$share/tocsin-acks/tocsin/v1/device/+/ack"


# -- several nodes -------------------------------------------------------------------------------


@pytest.mark.parametrize("ack_protocol", ["3.1.1", "5"])
async def test_each_ack_reaches_one_node_and_every_node_sees_every_state(
    broker: Broker, ack_protocol: str
) -> None:
    speakers = [f"spk-{n}" for n in range(40)]
    async with publisher(broker) as client:
        for n, device in enumerate(speakers):
            state = {"v": 1, "state": "online", "ts": 1_700_000_000 + n, "fw": "2.1"}
            await client.publish(
                f"{ROOT}/device/{device}/state", json.dumps(state).encode(), qos=1, retain=True
            )
    async with (
        dispatcher_node(broker, "n1", ack_protocol=ack_protocol) as (first, one),
        dispatcher_node(broker, "n2", ack_protocol=ack_protocol) as (second, two),
        publisher(broker) as client,
    ):
        # Each node's ids carry its name; the ack connections keep no session (c1).
        version = "p5" if ack_protocol == "5" else "p2"
        for node in ("n1", "n2"):
            assert broker.logged(rf"as tocsin-{node}-pub \(p5, c1")
            assert broker.logged(rf"as tocsin-{node}-acks \({version}, c1")
        # States are not shared: both nodes know every speaker when they start, and report
        # the same status for it (a retained state's own time is its last-seen), so the
        # store's newest-wins upsert gets the same row from each.
        assert set(first.speakers) == set(second.speakers) == set(speakers)
        first_status = [{s.address: s for s in reversed(c.statuses)} for c in (one, two)]
        assert first_status[0]["spk-3"].last_seen == 1_700_000_003
        assert first_status[0] == first_status[1]

        for n, device in enumerate(speakers):
            await ack(client, device, AckState.RECEIVED, delivery=100 + n)
            await ack(client, device, AckState.PLAYED, delivery=100 + n)
        await drain(client, [one, two])

        reported = Counter(key(r) for r in without_markers(one.reports + two.reports))
        expected = Counter(
            (device, state, 100 + n)
            for n, device in enumerate(speakers)
            for state in ("received", "played")
        )
        assert reported == expected  # every ack once: none twice, none missing
        # Shared between the nodes, not all taken by one.
        assert without_markers(one.reports)
        assert without_markers(two.reports)


async def test_a_node_that_stops_leaves_the_group_and_the_other_gets_every_later_ack(
    broker: Broker,
) -> None:
    async with (
        dispatcher_node(broker, "n1") as (first, one),
        dispatcher_node(broker, "n2") as (_, two),
        publisher(broker) as client,
    ):
        # Acks keep coming while n1 stops. Each ack is marked with whether Mosquitto had
        # already seen n1's ack connection go when it was published.
        mark = broker.log_mark()
        after_n1_left: set[int] = set()
        streamed = 200

        async def stream() -> None:
            for n in range(streamed):
                if broker.logged(gone("tocsin-n1-acks"), mark):
                    after_n1_left.add(n)
                await ack(client, f"spk-{n}", AckState.PLAYED, delivery=n)
                await asyncio.sleep(0.005)  # a steady stream, not a burst

        streaming = asyncio.create_task(stream())
        await wait_until(lambda: len(one.reports) >= 20, within=5, what="n1 taking acks")
        await first.stop()
        await streaming
        await drain(client, [two])

        from_one = [r.delivery_id for r in without_markers(one.reports)]
        from_two = [r.delivery_id for r in without_markers(two.reports)]
        assert not set(from_one) & set(from_two)  # never both
        assert len(set(from_two)) == len(from_two)
        assert after_n1_left, "the stream ended before n1 had gone"
        # Once Mosquitto has seen n1 go, every ack goes to n2: none is kept for n1.
        assert after_n1_left <= set(from_two)
        # Before that, n1 took about its half (the stream ran before and while it stopped).
        assert len(from_one) >= 20


#: A dispatcher node in a process of its own (to be killed): prints each report's delivery id.
_NODE_PROCESS = """
import asyncio, sys
from adapters.mqtt_speaker.adapter import MqttSpeakerAdapter
from adapters.mqtt_speaker.settings import MqttSpeakerSettings

class Context:
    adapter_name = "speakers"
    node_name = sys.argv[2]
    def report(self, report):
        print(f"report {report.delivery_id}", flush=True)
    def device_status(self, status):
        pass

async def main():
    settings = MqttSpeakerSettings.model_validate_json(sys.argv[1])
    await MqttSpeakerAdapter(name="speakers", settings=settings).start(Context())
    print("started", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_node_leaves_the_group_and_the_other_gets_every_later_ack(
    broker: Broker,
) -> None:
    """kill -9 of a node: Mosquitto sees its connection close and drops it from the group.
    What was in flight to it when it died is lost with its session (the engine sends those
    speakers their alert again after the device ack timeout, and they answer again)."""
    settings = settings_for(broker, shared_group=GROUP)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _NODE_PROCESS,
        settings.model_dump_json(),
        "n1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    from_one: list[int] = []
    started = asyncio.Event()

    async def read() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            if line.startswith(b"report "):
                from_one.append(int(line.split()[1]))
            elif line.strip() == b"started":
                started.set()

    reading = asyncio.create_task(read())
    try:
        await asyncio.wait_for(started.wait(), 20)
        async with dispatcher_node(broker, "n2") as (_, two), publisher(broker) as client:
            mark = broker.log_mark()
            after_n1_left: set[int] = set()
            streamed = 200

            async def stream() -> None:
                for n in range(streamed):
                    if broker.logged(gone("tocsin-n1-acks"), mark):
                        after_n1_left.add(n)
                    await ack(client, f"spk-{n}", AckState.PLAYED, delivery=n)
                    await asyncio.sleep(0.005)

            streaming = asyncio.create_task(stream())
            await wait_until(lambda: len(from_one) >= 20, within=10, what="n1 taking acks")
            process.kill()
            await process.wait()
            await streaming
            await drain(client, [two])
            from_two = [r.delivery_id for r in without_markers(two.reports)]
            assert not set(from_one) & set(from_two)
            assert len(set(from_two)) == len(from_two)
            assert after_n1_left, "the stream ended before n1 had gone"
            assert after_n1_left <= set(from_two)
            lost = set(range(streamed)) - set(from_one) - set(from_two)
            assert not lost & after_n1_left
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await reading


async def test_acks_published_while_every_node_is_away_are_lost(broker: Broker) -> None:
    """The price of the sessionless shared ack connection: nobody holds an ack published while
    no node is connected (a single node keeps them in its session: test_mqtt_speaker.py)."""
    mark = broker.log_mark()
    async with dispatcher_node(broker, "n1"):
        pass
    await wait_until(lambda: broker.logged(gone("tocsin-n1-acks"), mark), within=5, what="n1 gone")
    async with publisher(broker) as client:
        await ack(client, "spk-1", AckState.PLAYED, delivery=1)
        async with dispatcher_node(broker, "n1") as (_, context):
            await ack(client, "spk-2", AckState.PLAYED, delivery=2)
            await wait_until(lambda: context.reports, within=5, what="an ack at n1")
            await drain(client, [context])
            assert [r.delivery_id for r in without_markers(context.reports)] == [2]


async def test_without_a_shared_group_the_ids_and_the_session_are_as_before(
    broker: Broker,
) -> None:
    adapter = MqttSpeakerAdapter(name="speakers", settings=settings_for(broker))
    await adapter.start(RecordingContext(name="speakers", node_name="n1"))
    try:
        assert broker.logged(r"as tocsin-pub \(p5, c1")
        assert broker.logged(r"as tocsin-acks \(p2, c0")  # a persistent session
        assert not broker.logged(r"as tocsin-n1-")
    finally:
        await adapter.stop()


async def test_the_engine_gives_the_adapter_its_stores_node_name(
    broker: Broker, tmp_path: Path
) -> None:
    store = await SqliteStore.open(tmp_path / "tocsin.db", node="n7")
    instance = AdapterInstanceConfig(
        kind="mqtt_speaker",
        channels=(Channel.SPEAKER,),
        settings={"host": broker.host, "port": broker.port, "shared_group": GROUP},
    )
    specs, problems = build_adapter_specs(
        tmp_path / "tocsin.toml", {"speakers": instance}, tmp_path
    )
    assert not problems
    policy = load_policy(PROJECT / "config" / "policy.toml")
    engine = Engine(store, config=EngineConfig(), policy=lambda: policy, adapters=specs)
    await engine.start()
    try:
        await wait_until(
            lambda: broker.logged(r"as tocsin-n7-acks \(p2, c1"),
            within=10,
            what="the ack connection named after node n7",
        )
    finally:
        await engine.stop()
        await store.close()


# -- what Mosquitto does -------------------------------------------------------------------------


class Member:
    """A plain client in the shared group ``g`` with a persistent session (as the ack
    connection without a group has), recording the acks it is given; it also subscribes
    (unshared) to ``marker/<id>``, so a test knows when it has been given all that came
    before a marker."""

    def __init__(self, broker: Broker, client_id: str, protocol: str, expiry: int = 3600) -> None:
        v5 = protocol == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = expiry
        self.client_id = client_id
        self.client = aiomqtt.Client(
            broker.host,
            broker.port,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else False,
            # paho refuses any clean_start but its default on MQTT 3.1.1.
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self.acks: list[int] = []
        self.markers = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Member:
        await self.client.__aenter__()
        await self.client.subscribe(f"$share/g/{ROOT}/device/+/ack", qos=1)
        await self.client.subscribe(f"marker/{self.client_id}", qos=1)
        self._task = asyncio.create_task(self._receive())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.__aexit__(kind, exc, tb)

    async def _receive(self) -> None:
        async for message in self.client.messages:
            if message.topic.value.startswith("marker/"):
                self.markers += 1
            elif isinstance(message.payload, bytes):
                self.acks.append(int(json.loads(message.payload)["delivery"]))

    async def given_all_before(self, client: aiomqtt.Client) -> None:
        before = self.markers
        await client.publish(f"marker/{self.client_id}", b"", qos=1)
        await wait_until(lambda: self.markers > before, within=5, what=f"{self.client_id} marker")


async def leave(broker: Broker, member: Member) -> None:
    """Disconnect ``member`` (its session stays) and wait until Mosquitto has seen it go."""
    mark = broker.log_mark()
    await member.__aexit__(None, None, None)
    await wait_until(
        lambda: broker.logged(gone(member.client_id), mark),
        within=5,
        what=f"{member.client_id} gone",
    )


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_mosquitto_queues_an_absent_members_share_until_it_returns(
    broker: Broker, protocol: str
) -> None:
    """Mosquitto (2.0) keeps a disconnected member with a live session in the group's round
    robin: every other ack is queued in that session and given to it when it comes back; the
    connected member gets only its own half meanwhile."""
    async with publisher(broker) as client, Member(broker, "b", protocol) as b:
        a = await Member(broker, "a", protocol).__aenter__()
        await leave(broker, a)
        for n in range(20):
            await ack(client, f"spk-{n}", AckState.PLAYED, delivery=n)
        await b.given_all_before(client)
        assert len(b.acks) == 10  # half, though it was the only one connected

        async with Member(broker, "a", protocol) as back:
            await wait_until(lambda: len(back.acks) == 10, within=5, what="a's queued acks")
            assert sorted(back.acks + b.acks) == list(range(20))


async def test_mosquitto_drops_an_absent_members_share_when_its_session_expires(
    broker: Broker,
) -> None:
    """What the absent member's session held is not given to the others when it expires (the
    MQTT 5 specification says a server SHOULD; Mosquitto 2.0 does not): it is lost. Once the
    session is gone the member has left, and the other gets every ack."""
    async with publisher(broker) as client, Member(broker, "b", "5") as b:
        a = await Member(broker, "a", "5", expiry=1).__aenter__()
        await leave(broker, a)
        mark = broker.log_mark()
        for n in range(10):
            await ack(client, f"spk-{n}", AckState.PLAYED, delivery=n)
        await b.given_all_before(client)
        assert len(b.acks) == 5
        await wait_until(
            lambda: broker.logged(r"Expiring client a due to timeout", mark),
            within=10,
            what="a's session to expire",
        )
        for n in range(10, 14):
            await ack(client, f"spk-{n}", AckState.PLAYED, delivery=n)
        await b.given_all_before(client)
        async with Member(broker, "a", "5") as back:
            await back.given_all_before(client)
            assert back.acks == []
        assert sorted(b.acks) == [0, 2, 4, 6, 8, 10, 11, 12, 13]  # 1, 3, 5, 7, 9: lost

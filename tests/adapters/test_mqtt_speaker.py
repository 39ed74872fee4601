"""The ``mqtt_speaker`` adapter against a real Mosquitto: what it publishes where, how it reads
acks and states, offline speakers, probes, and a broker that goes away."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from deploy.test_mosquitto_config import make_certs
from dispatches import make_dispatch, make_warning
from mqtt_broker import Broker, free_port, running_mosquitto
from pydantic import ValidationError
from recording import RecordingContext
from waiting import wait_until

from adapters.mqtt_speaker.adapter import MqttSpeakerAdapter
from adapters.mqtt_speaker.protocol import Ack, AckState, parse_alert
from adapters.mqtt_speaker.settings import MqttSpeakerSettings
from dispatcher.adapter import (
    Accepted,
    AdapterNotReady,
    DeviceStatus,
    Dispatch,
    Failed,
    ReportState,
    Retry,
    WarningContent,
)
from dispatcher.domain import Channel, MsgType

ROOT = "tocsin/v1"


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
            "probe_listen": 0.3,
            **changes,
        }
    )


@pytest.fixture
async def started(broker: Broker) -> AsyncIterator[tuple[MqttSpeakerAdapter, RecordingContext]]:
    adapter = MqttSpeakerAdapter(name="speakers", settings=settings_for(broker))
    context = RecordingContext(name="speakers")
    await adapter.start(context)
    yield adapter, context
    await adapter.stop()


def dispatch(
    delivery_id: int,
    device: str,
    village: str,
    *,
    attempt: int = 1,
    w: WarningContent | None = None,
) -> Dispatch:
    return make_dispatch(
        channel=Channel.SPEAKER,
        delivery_id=delivery_id,
        address=device,
        area_code=village,
        attempt=attempt,
        warning=w,
    )


class Listener:
    """A plain MQTT 5 client recording what arrives on some topics."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []
        self.changed = asyncio.Event()

    async def run(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)
            self.changed.set()

    async def wait_for(self, count: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while len(self.messages) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def listener(broker: Broker) -> AsyncIterator[Listener]:
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5, identifier="listener"
    ) as client:
        await client.subscribe(f"{ROOT}/area/+/alert", qos=1)
        await client.subscribe(f"{ROOT}/device/+/alert", qos=1)
        recorder = Listener(client)
        task = asyncio.create_task(recorder.run())
        yield recorder
        task.cancel()


async def speaker_says(broker: Broker, device: str, leaf: str, payload: bytes, **kw: bool) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"{device}-test") as client:
        await client.publish(f"{ROOT}/device/{device}/{leaf}", payload, qos=1, **kw)


# -- publishing ----------------------------------------------------------------------------------


async def test_one_publish_per_warning_area_with_expiry_and_qos1(
    started: tuple[MqttSpeakerAdapter, RecordingContext], listener: Listener
) -> None:
    adapter, _ = started
    w = make_warning(area_codes=("6110", "6111"))
    batch = [
        dispatch(1, "spk-1", "V1", w=w),
        dispatch(2, "spk-2", "V1", w=w),
        dispatch(3, "spk-3", "V2", w=w),
    ]
    outcomes = await adapter.send(batch)
    assert [type(o) for o in outcomes] == [Accepted, Accepted, Accepted]
    await listener.wait_for(2)
    await asyncio.sleep(0.2)
    assert sorted(m.topic.value for m in listener.messages) == [
        f"{ROOT}/area/6110/alert",
        f"{ROOT}/area/6111/alert",
    ]
    message = listener.messages[0]
    assert message.qos == 1
    assert message.properties is not None
    expiry = message.properties.MessageExpiryInterval
    assert 7000 < expiry <= 7200  # the warning expires in two hours
    assert isinstance(message.payload, bytes)
    alert = parse_alert(message.payload)
    assert alert.id == "w1"
    assert alert.delivery is None  # one message for many speakers names no delivery
    assert alert.type == "Alert"
    assert alert.level == "red"
    assert "立即转移" in alert.text

    # Later batches of the same warning, concurrent or not, do not publish it again; another
    # warning does.
    later = await asyncio.gather(
        adapter.send([dispatch(4, "spk-4", "V3", w=w)]),
        adapter.send([dispatch(5, "spk-5", "V4", w=w)]),
        adapter.send([dispatch(6, "spk-6", "V1", w=make_warning(wid="w2"))]),
    )
    assert [type(o) for outcomes in later for o in outcomes] == [Accepted] * 3
    await listener.wait_for(3)
    await asyncio.sleep(0.2)
    assert [m.topic.value for m in listener.messages[2:]] == [f"{ROOT}/area/6110/alert"]
    assert adapter.counters.published_area == 3


async def test_a_failed_area_publish_is_retried_by_the_next_batch(
    broker: Broker, started: tuple[MqttSpeakerAdapter, RecordingContext], listener: Listener
) -> None:
    adapter, _ = started
    broker.stop()
    (outcome,) = await adapter.send([dispatch(1, "spk-1", "V1")])
    assert isinstance(outcome, Retry)
    assert adapter.counters.published_area == 0
    broker.start()
    await wait_until(
        lambda: adapter._publisher is not None and adapter._publisher.connected,
        within=10,
        what="the publisher connected",
    )
    (outcome,) = await adapter.send([dispatch(2, "spk-2", "V1")])
    assert isinstance(outcome, Accepted)
    assert adapter.counters.published_area == 1


async def test_retries_go_to_the_speaker_with_the_delivery_id(
    started: tuple[MqttSpeakerAdapter, RecordingContext], listener: Listener
) -> None:
    adapter, _ = started
    outcomes = await adapter.send([dispatch(7, "spk-1", "V1", attempt=2)])
    assert [type(o) for o in outcomes] == [Accepted]
    await listener.wait_for(1)
    (message,) = listener.messages
    assert message.topic.value == f"{ROOT}/device/spk-1/alert"
    assert isinstance(message.payload, bytes)
    assert parse_alert(message.payload).delivery == 7


async def test_cancel_names_what_it_cancels(
    started: tuple[MqttSpeakerAdapter, RecordingContext], listener: Listener
) -> None:
    adapter, _ = started
    cancel = make_warning(wid="w2", msg_type=MsgType.CANCEL, references=("w1",))
    await adapter.send([dispatch(9, "spk-1", "V1", w=cancel)])
    await listener.wait_for(1)
    assert isinstance(listener.messages[0].payload, bytes)
    alert = parse_alert(listener.messages[0].payload)
    assert (alert.type, alert.references) == ("Cancel", ("w1",))


async def test_an_expired_warning_is_not_sent(
    started: tuple[MqttSpeakerAdapter, RecordingContext], listener: Listener
) -> None:
    adapter, _ = started
    past = datetime.now(UTC) - timedelta(minutes=1)
    (outcome,) = await adapter.send([dispatch(1, "spk-1", "V1", w=make_warning(expires=past))])
    assert isinstance(outcome, Failed)
    assert "expired" in outcome.reason
    await asyncio.sleep(0.2)
    assert listener.messages == []


# -- acks and states -----------------------------------------------------------------------------


async def test_acks_become_reports_for_the_delivery_sent_to_that_speaker(
    broker: Broker, started: tuple[MqttSpeakerAdapter, RecordingContext]
) -> None:
    adapter, context = started
    await adapter.send([dispatch(11, "spk-1", "V1"), dispatch(12, "spk-2", "V1")])
    for state in (AckState.RECEIVED, AckState.PLAYING, AckState.PLAYED):
        await speaker_says(broker, "spk-1", "ack", Ack("w1", state, ts=1.5, plays=2).payload())
    await speaker_says(broker, "spk-2", "ack", Ack("w1", AckState.FAILED, error="amp").payload())
    await wait_until(lambda: len(context.reports) == 3, within=5, what="three reports")
    first, third, fourth = context.reports
    # "playing" says nothing "received" did not: it is not passed on.
    assert [first.state, third.state] == [ReportState.DELIVERED, ReportState.ACKNOWLEDGED]
    assert first.detail == {"device_state": "received", "plays": 2}
    assert adapter.counters.progress_skipped == 1
    assert (third.delivery_id, third.from_address, third.warning_id) == (11, "spk-1", "w1")
    assert third.detail == {"device_state": "played", "plays": 2}
    assert third.at == 1.5
    assert (fourth.state, fourth.delivery_id, fourth.reason) == (ReportState.FAILED, 12, "amp")


async def test_an_ack_with_a_delivery_id_keeps_it_and_names_the_topic_device(
    broker: Broker, started: tuple[MqttSpeakerAdapter, RecordingContext]
) -> None:
    """The engine checks the delivery is to ``from_address``: a speaker echoing another
    speaker's delivery id is caught there, because the sender is taken from the topic."""
    _, context = started
    await speaker_says(broker, "spk-9", "ack", Ack("w1", AckState.PLAYED, delivery=11).payload())
    await wait_until(lambda: len(context.reports) == 1, within=5, what="a report")
    (report,) = context.reports
    assert (report.delivery_id, report.from_address) == (11, "spk-9")


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"v": 2, "id": "w1", "state": "played"}',
        b'{"v": 1, "state": "played"}',
        b'{"v": 1, "id": "w1", "state": "exploded"}',
        b'{"v": 1, "id": "w1", "state": "played", "delivery": "eleven"}',
        b'{"v": 1, "id": "w1", "state": "played", "ts": "noon"}',
    ],
)
async def test_malformed_acks_are_counted_and_dropped(
    broker: Broker, started: tuple[MqttSpeakerAdapter, RecordingContext], payload: bytes
) -> None:
    adapter, context = started
    await speaker_says(broker, "spk-1", "ack", payload)
    # A good ack after it proves the bad one was read (and dropped), not still in flight.
    await speaker_says(broker, "spk-1", "ack", Ack("w1", AckState.PLAYED).payload())
    await wait_until(lambda: len(context.reports) == 1, within=5, what="a report")
    assert context.reports[0].state is ReportState.ACKNOWLEDGED
    assert adapter.counters.malformed == 1


async def test_offline_speaker_fails_at_once_and_gets_the_alert_when_back(
    broker: Broker, started: tuple[MqttSpeakerAdapter, RecordingContext], listener: Listener
) -> None:
    adapter, context = started
    await speaker_says(broker, "spk-1", "state", b'{"v":1,"state":"offline"}', retain=True)
    await wait_until(lambda: "spk-1" in adapter.speakers, within=5, what="spk-1's state")
    outcomes = await adapter.send([dispatch(21, "spk-1", "V1"), dispatch(22, "spk-2", "V1")])
    assert isinstance(outcomes[0], Failed)
    assert "offline" in outcomes[0].reason
    assert isinstance(outcomes[1], Accepted)
    assert context.statuses[-1] == DeviceStatus(
        address="spk-1", online=False, last_seen=context.statuses[-1].last_seen, detail={}
    )
    await listener.wait_for(1)
    await speaker_says(
        broker, "spk-1", "state", b'{"v":1,"state":"online","fw":"2.1"}', retain=True
    )
    await listener.wait_for(2)
    republished = listener.messages[1]
    assert republished.topic.value == f"{ROOT}/device/spk-1/alert"
    assert isinstance(republished.payload, bytes)
    assert parse_alert(republished.payload).delivery == 21
    assert context.statuses[-1].online
    assert context.statuses[-1].detail == {"fw": "2.1"}
    assert adapter.counters.republished == 1


async def test_retained_states_are_known_when_start_returns(broker: Broker) -> None:
    for n in range(30):
        await speaker_says(broker, f"spk-{n}", "state", b'{"v":1,"state":"offline"}', retain=True)
    adapter = MqttSpeakerAdapter(name="speakers", settings=settings_for(broker))
    context = RecordingContext(name="speakers")
    await adapter.start(context)
    try:
        assert len(adapter.speakers) == 30
        outcomes = await adapter.send([dispatch(n, f"spk-{n}", "V1") for n in range(30)])
        assert all(isinstance(o, Failed) for o in outcomes)
    finally:
        await adapter.stop()


# -- probe and lifecycle -------------------------------------------------------------------------


async def test_probe_lists_speakers_from_their_retained_states(broker: Broker) -> None:
    await speaker_says(broker, "spk-1", "state", b'{"v":1,"state":"online","fw":"1"}', retain=True)
    await speaker_says(broker, "spk-2", "state", b"offline", retain=True)
    probe = await MqttSpeakerAdapter(name="p", settings=settings_for(broker)).probe()
    assert probe.ok
    assert "1 online, 1 offline" in probe.summary
    assert probe.details["online"] == ["spk-1"]
    assert probe.details["offline"] == ["spk-2"]


async def test_probe_and_start_name_an_unreachable_broker(broker: Broker) -> None:
    broker.stop()
    adapter = MqttSpeakerAdapter(name="p", settings=settings_for(broker, connect_timeout=1))
    probe = await adapter.probe()
    assert not probe.ok
    assert f"{broker.host}:{broker.port}" in probe.summary
    with pytest.raises(AdapterNotReady, match=f"{broker.host}:{broker.port}"):
        await adapter.start(RecordingContext(name="speakers"))


async def test_broker_restart_retry_while_down_then_sends_again(
    broker: Broker, started: tuple[MqttSpeakerAdapter, RecordingContext]
) -> None:
    adapter, context = started
    broker.stop()
    started_at = time.monotonic()
    outcomes = await adapter.send([dispatch(31, "spk-1", "V1")])
    assert time.monotonic() - started_at < 4  # answers, does not hang
    assert isinstance(outcomes[0], Retry)
    broker.start()
    deadline = time.monotonic() + 10
    while True:
        outcomes = await adapter.send([dispatch(31, "spk-1", "V1", attempt=2)])
        if isinstance(outcomes[0], Accepted) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert isinstance(outcomes[0], Accepted)
    # The ack connection is back too: an ack arrives as a report.
    await speaker_says(broker, "spk-1", "ack", Ack("w1", AckState.PLAYED).payload())
    await wait_until(lambda: len(context.reports) == 1, within=5, what="a report")
    assert context.reports[0].delivery_id == 31


async def test_acks_sent_while_the_adapter_was_away_are_kept_by_the_broker(
    broker: Broker,
) -> None:
    settings = settings_for(broker)
    first = MqttSpeakerAdapter(name="speakers", settings=settings)
    await first.start(RecordingContext(name="speakers"))
    await first.stop()
    await speaker_says(broker, "spk-1", "ack", Ack("w1", AckState.PLAYED, delivery=5).payload())
    second = MqttSpeakerAdapter(name="speakers", settings=settings)
    context = RecordingContext(name="speakers")
    await second.start(context)
    try:
        await wait_until(lambda: len(context.reports) == 1, within=5, what="a report")
        assert context.reports[0].delivery_id == 5
    finally:
        await second.stop()


def test_settings_errors_name_the_field(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    with pytest.raises(ValidationError, match="cert_file and key_file"):
        MqttSpeakerSettings.model_validate({"tls": True, "cert_file": str(cert)})
    with pytest.raises(ValidationError, match="tls is false"):
        MqttSpeakerSettings.model_validate({"ca_file": str(cert)})
    with pytest.raises(ValidationError) as info:
        MqttSpeakerSettings.model_validate({"topic_root": "tocsin/#"})
    assert info.value.errors()[0]["loc"] == ("topic_root",)
    settings = MqttSpeakerSettings.model_validate({"password": "hunter2"})
    assert "hunter2" not in repr(settings)
    assert json.loads(settings.model_dump_json())["password"] == "**********"


async def test_tls_with_the_brokers_ca_and_a_clear_error_with_the_wrong_one(
    tmp_path: Path,
) -> None:
    ours = make_certs(ensure_dir(tmp_path / "ours"))
    theirs = make_certs(ensure_dir(tmp_path / "theirs"))
    port = free_port()
    config = (
        f"listener {port} 127.0.0.1\ncafile {ours.ca}\ncertfile {ours.server_cert}\n"
        f"keyfile {ours.server_key}\nallow_anonymous true\n"
    )
    with running_mosquitto(config, tmp_path / "broker") as broker:
        good = MqttSpeakerAdapter(
            name="tls", settings=settings_for(broker, tls=True, ca_file=str(ours.ca))
        )
        await good.start(RecordingContext(name="speakers"))
        try:
            (outcome,) = await good.send([dispatch(1, "spk-1", "V1")])
            assert isinstance(outcome, Accepted)
        finally:
            await good.stop()
        wrong = MqttSpeakerAdapter(
            name="tls",
            settings=settings_for(broker, tls=True, ca_file=str(theirs.ca), connect_timeout=1),
        )
        with pytest.raises(AdapterNotReady, match=r"certificate verify failed"):
            await wrong.start(RecordingContext(name="speakers"))
        probe = await wrong.probe()
        assert not probe.ok
        assert "certificate verify failed" in probe.summary


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

"""Loudspeakers end to end against a real Mosquitto: the engine, the ``mqtt_speaker`` adapter
and a fleet of simulated speakers (the same simulator installers run). The faults the issue
names: a broker restart in the middle of a fan-out, speakers that ack twice or out of order, a
forged ack, a malformed payload, a speaker offline at send time that comes back before the
warning expires; and a Cancel that stops what is playing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from mqtt_broker import Broker, running_mosquitto
from small_directory import VILLAGE_A1a, VILLAGE_A1b, VILLAGE_B1a
from stores import StoreTarget

from adapters.mqtt_speaker.adapter import MqttSpeakerAdapter
from adapters.mqtt_speaker.protocol import Ack, AckState
from adapters.mqtt_speaker.simulator import FleetBehaviour, SimSpeaker, SpeakerFleet
from dispatcher.config import AdapterInstanceConfig
from dispatcher.domain import MsgType
from dispatcher.store.sql_store import SqlStore
from engine.conftest import MakeTocsin
from engine.harness import Tocsin, config, policy, rule, sim, wait_until

VILLAGES = (VILLAGE_A1a, VILLAGE_A1b, VILLAGE_B1a)
#: Speakers added to the small directory's three, spread over its three villages.
EXTRA = 45
SPEAKERS_ONLY = policy("red", rules=[rule("devices", "loudspeaker")])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    conf = "allow_anonymous true\npersistence true\nmax_queued_messages 0\n"
    with running_mosquitto(conf, tmp_path / "broker") as running:
        yield running


def speakers_config(broker: Broker, **settings: Any) -> AdapterInstanceConfig:
    return AdapterInstanceConfig(
        kind="mqtt_speaker",
        channels=["speaker"],  # type: ignore[list-item]
        send_timeout=15,
        settings={
            "host": broker.host,
            "port": broker.port,
            "client_id": "tocsin-test",
            "connect_timeout": 3,
            "publish_timeout": 3,
            "reconnect_min": 0.1,
            "reconnect_max": 0.5,
            **settings,
        },
    )


def instances(broker: Broker) -> dict[str, AdapterInstanceConfig]:
    return {
        "loudspeaker": speakers_config(broker),
        "transmitter": sim(["transmitter"]),
        "modem": sim(["modem"]),
        "sms": sim(["sms"], ack_probability=0.0),
        "voice": sim(["voice"], ack_probability=0.0),
    }


def add_speakers(db: StoreTarget, count: int) -> None:
    conn = db.connect()
    try:
        conn.execute("BEGIN")
        for n in range(count):
            village = VILLAGES[n % len(VILLAGES)]
            device = f"spk-x{n:03d}"
            conn.execute(
                "INSERT INTO devices (id, kind, name, adapter, address, area_code) "
                "VALUES (?, 'loudspeaker', ?, 'loudspeaker', ?, ?)",
                (device, device, device, village),
            )
            conn.execute("INSERT INTO device_areas VALUES (?, ?)", (device, village))
        conn.execute("COMMIT")
    finally:
        conn.close()


def fleet_speakers(db: StoreTarget) -> list[SimSpeaker]:
    """Every loudspeaker of the directory, listening to its village and its ancestors."""
    conn = db.connect()
    try:
        rows = conn.execute(
            "SELECT d.id, c.ancestor FROM devices d JOIN area_closure c "
            "ON c.descendant = d.area_code WHERE d.kind = 'loudspeaker' ORDER BY d.id, c.depth"
        ).fetchall()
    finally:
        conn.close()
    areas: dict[str, list[str]] = {}
    for device, ancestor in rows:
        areas.setdefault(device, []).append(ancestor)
    return [SimSpeaker(d, tuple(a)) for d, a in areas.items()]


@pytest.fixture
async def setup(
    store: SqlStore, store_target: StoreTarget, tocsin: MakeTocsin, broker: Broker
) -> tuple[Tocsin, list[SimSpeaker]]:
    add_speakers(store_target, EXTRA)
    t = tocsin(instances(broker), policy=SPEAKERS_ONLY, config=config(device_ack_timeout=1.0))
    return t, fleet_speakers(store_target)


def speaker_states(t: Tocsin, warning_id: str) -> dict[str, str]:
    return {
        target: state
        for (audience, target, _channel), state in t.states(warning_id).items()
        if audience == "device"
    }


def adapter_of(t: Tocsin) -> MqttSpeakerAdapter:
    adapter = t.host("loudspeaker").adapter
    assert isinstance(adapter, MqttSpeakerAdapter)
    return adapter


async def all_acknowledged(t: Tocsin, warning_id: str, *, within: float = 20.0) -> None:
    await wait_until(
        lambda: set(speaker_states(t, warning_id).values()) == {"acknowledged"},
        within=within,
        what="every speaker acknowledged",
    )


async def test_one_publish_per_village_every_speaker_plays_once_and_villages_are_reached(
    broker: Broker, setup: tuple[Tocsin, list[SimSpeaker]]
) -> None:
    t, speakers = setup
    async with SpeakerFleet(speakers, host=broker.host, port=broker.port, connections=3) as fleet:
        warning = await t.warn(VILLAGES)
        await t.start()
        await all_acknowledged(t, warning.id)
        assert len(speaker_states(t, warning.id)) == len(speakers) == EXTRA + 3
        assert adapter_of(t).counters.published_area == len(VILLAGES)
        assert adapter_of(t).counters.published_device == 0
        assert all(s.play_count == 1 for s in fleet.speakers)
        reached = t.reached(warning.id)
        assert {target for (kind, target) in reached if kind == "village"} == set(VILLAGES)


async def test_broker_restart_mid_fan_out_loses_nothing(
    broker: Broker, setup: tuple[Tocsin, list[SimSpeaker]]
) -> None:
    t, speakers = setup
    behaviour = FleetBehaviour(play_seconds=0.3, heartbeat_seconds=0)
    async with SpeakerFleet(
        speakers, host=broker.host, port=broker.port, connections=4, behaviour=behaviour
    ) as fleet:
        warning = await t.warn(VILLAGES)
        await t.start()
        # Alerts are out and speakers are playing: the broker goes down before they report.
        await wait_until(lambda: fleet.stats().received > 0, what="speakers received the alert")
        broker.restart()
        played_before_restart = list(speaker_states(t, warning.id).values()).count("acknowledged")
        assert played_before_restart < len(speakers)
        await all_acknowledged(t, warning.id, within=30)
        listener = adapter_of(t)._listener
        assert listener is not None
        assert listener.connects >= 2  # the ack connection came back by itself
        assert fleet.stats().played == len(speakers)  # each played once: repeats were answered
        assert all(s.play_count == 1 for s in fleet.speakers)


async def test_double_and_out_of_order_acks_count_once(
    broker: Broker, setup: tuple[Tocsin, list[SimSpeaker]]
) -> None:
    t, speakers = setup
    behaviour = FleetBehaviour(duplicate_acks=1.0, out_of_order=1.0)
    async with SpeakerFleet(
        speakers, host=broker.host, port=broker.port, connections=2, behaviour=behaviour
    ):
        warning = await t.warn(VILLAGES)
        await t.start()
        await all_acknowledged(t, warning.id)
        await asyncio.sleep(0.5)  # the duplicates and late "playing" acks have arrived
        acknowledged_events = t.rows(
            "SELECT delivery_id, count(*) FROM delivery_events "
            "WHERE warning_id = ? AND state = 'acknowledged' GROUP BY delivery_id",
            (warning.id,),
        )
        assert len(acknowledged_events) == len(speakers)
        assert {n for _, n in acknowledged_events} == {1}
        coverage = t.coverage(warning.id)
        assert {v: n for (v, kind), n in coverage.items() if kind == "village"} == dict.fromkeys(
            VILLAGES, 1
        )
        duplicates = t.registry.get_sample_value("tocsin_acks_total", {"result": "duplicate"})
        assert duplicates is not None
        assert duplicates >= len(speakers)


async def test_forged_and_malformed_acks_change_nothing(
    broker: Broker, setup: tuple[Tocsin, list[SimSpeaker]]
) -> None:
    t, speakers = setup
    # spk-a1a is not in the fleet: nobody plays for it, so only a forgery could acknowledge it.
    fleet = [s for s in speakers if s.device_id != "spk-a1a"]
    async with SpeakerFleet(fleet, host=broker.host, port=broker.port, connections=2):
        warning = await t.warn(VILLAGES)
        await t.start()
        await wait_until(
            lambda: (
                list(speaker_states(t, warning.id).values()).count("acknowledged") == len(fleet)
            ),
            within=20,
            what="the fleet acknowledged",
        )
        victim = t.delivery(warning.id, "spk-a1a", "speaker")
        forger = "spk-x000"
        async with aiomqtt.Client(broker.host, broker.port, identifier="forger") as client:
            topic = f"tocsin/v1/device/{forger}/ack"
            # Naming the victim's delivery from the forger's own topic,
            await client.publish(
                topic, Ack(warning.id, AckState.PLAYED, delivery=victim.id).payload(), qos=1
            )
            # acking a warning the forger was never sent,
            await client.publish(topic, Ack("not-a-warning", AckState.PLAYED).payload(), qos=1)
            # and malformed payloads.
            await client.publish(topic, b"\xff\xfe not json", qos=1)
            await client.publish(topic, b'{"v":1,"id":"x","state":"played","delivery":-1}', qos=1)
        await wait_until(
            lambda: (
                (t.registry.get_sample_value("tocsin_acks_total", {"result": "rejected"}) or 0) >= 2
            ),
            what="the forged acks were rejected",
        )
        assert adapter_of(t).counters.malformed == 2
        assert t.state(warning.id, "spk-a1a", "speaker") != "acknowledged"
        # Village A1a has other speakers that played, so it is reached, but not through the victim.
        assert ("device", "spk-a1a") not in {
            (kind, target) for kind, target in t.reached(warning.id)
        }
        assert not [e for e in t.events(victim.id) if e.state == "acknowledged"]


async def test_offline_speaker_fails_at_once_then_plays_when_back_before_expiry(
    broker: Broker, setup: tuple[Tocsin, list[SimSpeaker]]
) -> None:
    t, speakers = setup
    async with SpeakerFleet(speakers, host=broker.host, port=broker.port) as fleet:
        await fleet.set_online("spk-b1a", False)  # its last will says offline
        await t.start()
        adapter = adapter_of(t)
        await wait_until(
            lambda: "spk-b1a" in adapter.speakers and not adapter.speakers["spk-b1a"].online,
            what="the adapter saw the last will",
        )
        warning = await t.warn(VILLAGES)
        await wait_until(
            lambda: t.state(warning.id, "spk-b1a", "speaker") == "failed",
            what="the offline speaker's delivery failed",
        )
        failed = [e for e in t.events(t.delivery(warning.id, "spk-b1a", "speaker").id)]
        assert any("offline" in e.reason for e in failed)
        await fleet.set_online("spk-b1a", True)
        await wait_until(
            lambda: t.state(warning.id, "spk-b1a", "speaker") == "acknowledged",
            what="the speaker played after coming back",
        )
        assert fleet.speaker("spk-b1a").play_count == 1
        assert ("village", VILLAGE_B1a) in t.reached(warning.id)


async def test_cancel_stops_the_speakers_and_is_acknowledged_as_stopped(
    broker: Broker, setup: tuple[Tocsin, list[SimSpeaker]]
) -> None:
    t, speakers = setup
    behaviour = FleetBehaviour(play_seconds=30)  # still playing when the Cancel comes
    async with SpeakerFleet(
        speakers, host=broker.host, port=broker.port, connections=2, behaviour=behaviour
    ) as fleet:
        warning = await t.warn(VILLAGES)
        await t.start()
        await wait_until(
            lambda: set(speaker_states(t, warning.id).values()) == {"delivered"},
            what="every speaker playing",
        )
        cancel = await t.stop_warning(warning, MsgType.CANCEL)
        await t.plan(cancel.id)
        await all_acknowledged(t, cancel.id)
        assert fleet.stats().stopped == len(speakers)
        assert fleet.stats().played == 0
        # The Cancel names what it cancels, so a speaker stops that warning and only that.
        heard = fleet.speaker("spk-a1a").alerts[cancel.id]
        assert (heard.type, heard.references) == ("Cancel", (warning.id,))


async def test_a_speaker_that_did_not_ack_in_time_gets_the_alert_again_on_its_own_topic(
    broker: Broker, setup: tuple[Tocsin, list[SimSpeaker]]
) -> None:
    t, speakers = setup
    late = next(s for s in speakers if s.device_id == "spk-a1a")
    others = [s for s in speakers if s is not late]
    async with SpeakerFleet(others, host=broker.host, port=broker.port, connections=2):
        warning = await t.warn(VILLAGES)
        await t.start()
        await wait_until(
            lambda: (
                list(speaker_states(t, warning.id).values()).count("acknowledged") == len(others)
            ),
            what="the speakers that were there played",
        )
        # The missing speaker comes up only now: it never saw the area publish. After the
        # device ack timeout (1 s here) the engine sends its delivery again, to its own topic.
        async with SpeakerFleet([late], host=broker.host, port=broker.port) as fleet:
            await wait_until(
                lambda: t.state(warning.id, "spk-a1a", "speaker") == "acknowledged",
                within=15,
                what="the late speaker played after a per-device retry",
            )
            heard = fleet.speaker("spk-a1a").alerts[warning.id]
            delivery = t.delivery(warning.id, "spk-a1a", "speaker")
            assert heard.delivery == delivery.id  # sent to it alone, naming its delivery
            assert delivery.attempts >= 2
            assert adapter_of(t).counters.published_device >= 1

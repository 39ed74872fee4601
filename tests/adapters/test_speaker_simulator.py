"""The simulated loudspeaker fleet (`tocsin simulate speakers`) against a real Mosquitto: what
it plays and acknowledges, its misbehaviour on purpose, its states and last will, its CLI.

An observer (a plain aiomqtt client, as the dispatcher would be) publishes the alerts and
records every ack and state the fleet publishes, parsed with the protocol module."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from mqtt_broker import Broker, running_mosquitto

from adapters.mqtt_speaker.protocol import (
    Ack,
    AckState,
    Alert,
    DeviceState,
    StateMessage,
    area_alert_topic,
    device_of,
    device_topic,
    parse_ack,
    parse_state,
)
from adapters.mqtt_speaker.simulator import (
    FleetBehaviour,
    SimSpeaker,
    SpeakerFleet,
    assign_traits,
    read_speakers_csv,
    synthetic_fleet,
)
from dispatcher import cli_simulate
from dispatcher.cli import main as cli_main

ROOT = "tocsin/v1"
REPO = Path(__file__).resolve().parents[2]
TOWN = "611002101000"
V1, V2, V3 = "611002101201", "611002101202", "611002101203"
ANCESTORS = (TOWN, "611002000000", "611000000000", "610000000000")
SPEAKERS = [
    SimSpeaker("spk-a", (V1, *ANCESTORS)),
    SimSpeaker("spk-b", (V1, *ANCESTORS)),
    SimSpeaker("spk-c", (V2, *ANCESTORS)),
    SimSpeaker("spk-d", (V3, *ANCESTORS)),
]
#: The two ways to connect: one connection per speaker, and the speakers over two connections.
MODES = [pytest.param(None, id="per-device"), pytest.param(2, id="shared")]

BROKER_CONFIG = "allow_anonymous true\nmax_queued_messages 0\npersistence false\n"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with running_mosquitto(BROKER_CONFIG, tmp_path / "broker") as running:
        yield running


def make_alert(
    warning_id: str,
    *,
    msg_type: str = "Alert",
    delivery: int | None = None,
    references: tuple[str, ...] = (),
    expires_in: float = 3600,
) -> Alert:
    now = datetime.now(UTC)
    return Alert(
        id=warning_id,
        status="Actual",
        type=msg_type,
        level="red",
        event="暴雨",
        headline="暴雨红色预警",
        text="商洛市气象台发布暴雨红色预警，请立即转移到安全地带。",
        sent=now,
        expires=now + timedelta(seconds=expires_in),
        repeat=2,
        references=references,
        delivery=delivery,
    )


class Observer:
    """The dispatcher's side: publishes alerts, records acks and states by device."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.acks: list[tuple[str, Ack]] = []
        self.states: list[tuple[str, StateMessage, bool]] = []

    async def run(self) -> None:
        async for message in self.client.messages:
            found = device_of(ROOT, message.topic.value)
            assert found is not None, message.topic.value
            device, leaf = found
            payload = message.payload
            assert isinstance(payload, bytes)
            if leaf == "ack":
                self.acks.append((device, parse_ack(payload)))
            elif leaf == "state":
                self.states.append((device, parse_state(payload), bool(message.retain)))

    async def publish(self, topic: str, alert: Alert) -> None:
        await self.client.publish(topic, alert.payload(), qos=1)

    def acks_of(self, device: str, warning_id: str) -> list[Ack]:
        return [ack for d, ack in self.acks if d == device and ack.warning_id == warning_id]

    def ack_states(self, device: str, warning_id: str) -> list[AckState]:
        return [ack.state for ack in self.acks_of(device, warning_id)]

    def last_state(self, device: str) -> StateMessage | None:
        found = [state for d, state, _ in self.states if d == device]
        return found[-1] if found else None

    async def wait(self, condition: Callable[[], bool], within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {within} s; acks {self.acks}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def observing(broker: Broker) -> AsyncIterator[Observer]:
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="observer", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(f"{ROOT}/device/+/ack", qos=1)
        await client.subscribe(f"{ROOT}/device/+/state", qos=1)
        observer = Observer(client)
        task = asyncio.create_task(observer.run())
        try:
            yield observer
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def fleet_on(broker: Broker, speakers: list[SimSpeaker], **kwargs: Any) -> SpeakerFleet:
    kwargs.setdefault("behaviour", FleetBehaviour(heartbeat_seconds=0))
    return SpeakerFleet(speakers, host=broker.host, port=broker.port, ready_timeout=10, **kwargs)


# -- playing and acknowledging ------------------------------------------------------------------
@pytest.mark.parametrize("connections", MODES)
async def test_area_and_device_alerts_are_played_and_acked_in_order(
    broker: Broker, connections: int | None
) -> None:
    progress = [AckState.RECEIVED, AckState.PLAYING, AckState.PLAYED]
    async with (
        observing(broker) as observer,
        fleet_on(broker, SPEAKERS, connections=connections) as fleet,
    ):
        # A village's alert reaches its two speakers only, the delivery id echoed.
        await observer.publish(area_alert_topic(ROOT, V1), make_alert("w1", delivery=17))
        await fleet.wait_played("w1", 2)
        await observer.wait(
            lambda: all(len(observer.acks_of(d, "w1")) == 3 for d in ("spk-a", "spk-b"))
        )
        for device in ("spk-a", "spk-b"):
            assert observer.ack_states(device, "w1") == progress
            assert {ack.delivery for ack in observer.acks_of(device, "w1")} == {17}
            played = observer.acks_of(device, "w1")[-1]
            assert played.plays == 2 and played.ts is not None
            assert fleet.speaker(device).plays["w1"] == 1
            assert "w1" in fleet.speaker(device).alerts
        assert fleet.speaker("spk-c").heard == fleet.speaker("spk-d").heard == 0

        # The town's alert reaches every speaker through its ancestor subscription.
        await observer.publish(area_alert_topic(ROOT, TOWN), make_alert("w2"))
        await fleet.wait_played("w2", 4)
        await observer.wait(
            lambda: all(len(observer.acks_of(s.device_id, "w2")) == 3 for s in SPEAKERS)
        )
        assert all(ack.delivery is None for _, ack in observer.acks if ack.warning_id == "w2")

        # A per-device alert (a retry) reaches that speaker alone.
        await observer.publish(device_topic(ROOT, "spk-d", "alert"), make_alert("w3", delivery=99))
        await fleet.wait_played("w3", 1)
        await observer.wait(lambda: len(observer.acks_of("spk-d", "w3")) == 3)
        assert [a.delivery for a in observer.acks_of("spk-d", "w3")] == [99, 99, 99]
        assert {d for d, ack in observer.acks if ack.warning_id == "w3"} == {"spk-d"}
        assert fleet.speaker("spk-d").ack_states("w3") == progress

        stats = fleet.stats()
        assert (stats.received, stats.played, stats.failed, stats.duplicates) == (7, 7, 0, 0)
        assert stats.acks_sent == 21 and stats.online == 4


async def test_a_repeated_alert_is_not_played_again_but_its_last_ack_is_resent(
    broker: Broker,
) -> None:
    async with (
        observing(broker) as observer,
        fleet_on(broker, SPEAKERS[:2], connections=1) as fleet,
    ):
        topic = device_topic(ROOT, "spk-a", "alert")
        await observer.publish(topic, make_alert("w1", delivery=1))
        await fleet.wait_played("w1", 1)
        await observer.wait(lambda: len(observer.acks_of("spk-a", "w1")) == 3)
        # The retry carries a new delivery id: the repeated ack echoes it.
        await observer.publish(topic, make_alert("w1", delivery=2))
        await observer.wait(lambda: len(observer.acks_of("spk-a", "w1")) == 4)
        again = observer.acks_of("spk-a", "w1")[-1]
        assert (again.state, again.delivery) == (AckState.PLAYED, 2)
        speaker = fleet.speaker("spk-a")
        assert speaker.plays["w1"] == 1 and speaker.heard == 2
        assert fleet.stats().duplicates == 1 and fleet.stats().played == 1


async def test_cancel_stops_the_playing_warning_and_is_acked_stopped(broker: Broker) -> None:
    behaviour = FleetBehaviour(play_seconds=0.5, heartbeat_seconds=0)
    async with (
        observing(broker) as observer,
        fleet_on(broker, SPEAKERS[:1], behaviour=behaviour) as fleet,
    ):
        topic = device_topic(ROOT, "spk-a", "alert")
        await observer.publish(topic, make_alert("w1", delivery=5))
        await observer.wait(lambda: AckState.PLAYING in observer.ack_states("spk-a", "w1"))
        playing = fleet.speaker("spk-a").active["w1"]
        cancel = make_alert("c1", msg_type="Cancel", references=("w1",), delivery=6)
        await observer.publish(topic, cancel)
        await observer.wait(lambda: observer.ack_states("spk-a", "c1") == [AckState.STOPPED])
        assert observer.acks_of("spk-a", "c1")[0].delivery == 6
        assert playing.cancelled()
        await asyncio.sleep(0.6)  # past the end of the play it stopped
        assert observer.ack_states("spk-a", "w1") == [AckState.RECEIVED, AckState.PLAYING]
        speaker = fleet.speaker("spk-a")
        assert speaker.active == {} and speaker.play_count == 0
        assert fleet.stats().stopped == 1
        # A warning whose Cancel overtook it is never played.
        await observer.publish(topic, make_alert("c2", msg_type="Cancel", references=("w2",)))
        await observer.wait(lambda: observer.ack_states("spk-a", "c2") == [AckState.STOPPED])
        await observer.publish(topic, make_alert("w2"))
        await observer.wait(lambda: speaker.heard == 4)
        await asyncio.sleep(0.1)
        assert observer.acks_of("spk-a", "w2") == [] and "w2" not in speaker.active


async def test_an_expired_alert_is_ignored(broker: Broker) -> None:
    async with observing(broker) as observer, fleet_on(broker, SPEAKERS[:1]) as fleet:
        await observer.publish(
            device_topic(ROOT, "spk-a", "alert"), make_alert("old", expires_in=-60)
        )
        await observer.wait(lambda: fleet.stats().expired == 1)
        await asyncio.sleep(0.1)
        assert observer.acks_of("spk-a", "old") == [] and fleet.stats().received == 0


# -- misbehaviour on purpose ---------------------------------------------------------------------
def test_traits_are_exact_fractions_and_deterministic_for_a_seed() -> None:
    ids = [f"spk-{n}" for n in range(100)]
    behaviour = FleetBehaviour(offline=0.03, slow=0.05, failing=0.1, seed=7)
    traits = assign_traits(ids, behaviour)
    assert sum(t.offline for t in traits.values()) == 3
    assert sum(t.slow for t in traits.values()) == 5
    assert sum(t.failing for t in traits.values()) == 10
    assert assign_traits(reversed(ids), behaviour) == traits
    assert assign_traits(ids, FleetBehaviour(offline=0.03, seed=8)) != assign_traits(
        ids, FleetBehaviour(offline=0.03, seed=7)
    )
    with pytest.raises(ValueError, match="offline"):
        FleetBehaviour(offline=1.5)


@pytest.mark.parametrize("connections", MODES)
async def test_offline_speakers_have_retained_offline_states_and_stay_silent(
    broker: Broker, connections: int | None
) -> None:
    speakers = [SimSpeaker(f"spk-{n}", (V1, TOWN)) for n in range(10)]
    behaviour = FleetBehaviour(offline=0.3, heartbeat_seconds=0, seed=3)
    offline = {
        d for d, t in assign_traits([s.device_id for s in speakers], behaviour).items() if t.offline
    }
    assert len(offline) == 3
    async with fleet_on(broker, speakers, behaviour=behaviour, connections=connections) as fleet:
        # A dispatcher connecting now finds every speaker's state retained.
        async with observing(broker) as observer:
            await observer.wait(lambda: len({d for d, _, _ in observer.states}) == 10)
            assert all(retained for _, _, retained in observer.states)
            states = {d: state.state for d, state, _ in observer.states}
            assert {d for d, s in states.items() if s is DeviceState.OFFLINE} == offline
            online = observer.last_state(min(set(states) - offline))
            assert online is not None and online.detail["fw"]
            await observer.publish(area_alert_topic(ROOT, V1), make_alert("w1"))
            await fleet.wait_played("w1", 7)
            await asyncio.sleep(0.1)
            assert {d for d, ack in observer.acks} == {s.device_id for s in speakers} - offline
        assert fleet.stats().online == 7


async def test_failing_speakers_ack_failed_with_an_error(broker: Broker) -> None:
    behaviour = FleetBehaviour(failing=0.5, heartbeat_seconds=0)
    async with (
        observing(broker) as observer,
        fleet_on(broker, SPEAKERS, behaviour=behaviour, connections=1) as fleet,
    ):
        failing = {s.device_id for s in fleet.speakers if s.traits.failing}
        assert len(failing) == 2
        await observer.publish(area_alert_topic(ROOT, TOWN), make_alert("w1", delivery=3))
        await fleet.wait_played("w1", 2)
        await observer.wait(lambda: sum(a.state is AckState.FAILED for _, a in observer.acks) == 2)
        for device in failing:
            acks = observer.acks_of(device, "w1")
            assert [a.state for a in acks] == [AckState.RECEIVED, AckState.FAILED]
            assert acks[-1].error and acks[-1].delivery == 3
        assert fleet.stats().failed == 2 and fleet.stats().played == 2


async def test_duplicate_and_out_of_order_acks(broker: Broker) -> None:
    behaviour = FleetBehaviour(duplicate_acks=0.5, out_of_order=0.5, heartbeat_seconds=0, seed=2)
    async with (
        observing(broker) as observer,
        fleet_on(broker, SPEAKERS, behaviour=behaviour, connections=2) as fleet,
    ):
        await observer.publish(area_alert_topic(ROOT, TOWN), make_alert("w1"))
        await fleet.wait_played("w1", 4)
        for speaker in fleet.speakers:
            states = [AckState.RECEIVED, AckState.PLAYING, AckState.PLAYED]
            if speaker.traits.out_of_order:
                states = [AckState.RECEIVED, AckState.PLAYED, AckState.PLAYING]
            if speaker.traits.duplicate_acks:
                states = [s for s in states for _ in range(2)]
            device, count = speaker.device_id, len(states)
            await observer.wait(lambda: len(observer.acks_of(device, "w1")) == count)  # noqa: B023
            assert observer.ack_states(speaker.device_id, "w1") == states


# -- on and off ----------------------------------------------------------------------------------
async def test_switched_off_speaker_leaves_its_will_and_gets_queued_alerts_back(
    broker: Broker,
) -> None:
    async with observing(broker) as observer, fleet_on(broker, SPEAKERS[:2]) as fleet:
        await fleet.set_online("spk-a", False)
        # The broker published the last will: a bare {"v":1,"state":"offline"} (no ts).
        await observer.wait(
            lambda: observer.last_state("spk-a") == StateMessage(DeviceState.OFFLINE)
        )
        assert fleet.stats().online == 1
        await observer.publish(device_topic(ROOT, "spk-a", "alert"), make_alert("w1", delivery=8))
        await asyncio.sleep(0.3)
        assert fleet.speaker("spk-a").heard == 0
        # Back with the same session: the broker delivers what it queued meanwhile.
        await fleet.set_online("spk-a", True)
        await fleet.wait_played("w1", 1)
        await observer.wait(lambda: len(observer.acks_of("spk-a", "w1")) == 3)
        last = observer.last_state("spk-a")
        assert last is not None and last.state is DeviceState.ONLINE
        assert fleet.speaker("spk-a").connection is not None
        assert fleet.speaker("spk-a").connection.connects == 2  # type: ignore[union-attr]


async def test_shared_connection_speaker_switched_off_publishes_its_state(broker: Broker) -> None:
    async with observing(broker) as observer, fleet_on(broker, SPEAKERS, connections=2) as fleet:
        await fleet.set_online("spk-c", False)
        await observer.wait(
            lambda: (
                (s := observer.last_state("spk-c")) is not None and s.state is DeviceState.OFFLINE
            )
        )
        await observer.publish(area_alert_topic(ROOT, TOWN), make_alert("w1"))
        await fleet.wait_played("w1", 3)
        await asyncio.sleep(0.1)
        assert observer.acks_of("spk-c", "w1") == []
        await fleet.set_online("spk-c", True)
        await observer.wait(
            lambda: (
                (s := observer.last_state("spk-c")) is not None and s.state is DeviceState.ONLINE
            )
        )
    # A clean stop says every speaker is offline.
    async with observing(broker) as observer:
        await observer.wait(lambda: len({d for d, _, _ in observer.states}) == 4)
        assert {s.state for _, s, _ in observer.states} == {DeviceState.OFFLINE}


@pytest.mark.parametrize("connections", MODES)
async def test_the_fleet_survives_a_broker_restart_mid_play(
    broker: Broker, connections: int | None
) -> None:
    behaviour = FleetBehaviour(play_seconds=0.3, heartbeat_seconds=0)
    async with fleet_on(broker, SPEAKERS, behaviour=behaviour, connections=connections) as fleet:
        async with observing(broker) as observer:
            await observer.publish(area_alert_topic(ROOT, TOWN), make_alert("w1"))
            await observer.wait(
                lambda: sum(a.state is AckState.PLAYING for _, a in observer.acks) == 4
            )
            await asyncio.to_thread(broker.stop)
        # The speakers finish playing while the broker is down: their played acks wait for
        # the reconnection, and the broker confirms them then.
        await fleet.wait_played("w1", 4)
        assert fleet.stats().online == 0 and fleet.stats().acks_sent == 8
        await asyncio.to_thread(broker.start)
        await _until(lambda: fleet.stats().acks_sent == 12, within=15)
        await _until(lambda: fleet.stats().online == 4)
        async with observing(broker) as observer:
            await observer.publish(area_alert_topic(ROOT, TOWN), make_alert("w2"))
            await fleet.wait_played("w2", 4)
        assert all(s.connection and s.connection.connects == 2 for s in fleet.speakers)


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within} s"
        await asyncio.sleep(0.02)


# -- fleets from files and parameters ------------------------------------------------------------
def test_synthetic_fleet_layout() -> None:
    speakers = synthetic_fleet(40, 16, "6110")
    assert speakers[0] == SimSpeaker(
        "spk-00001",
        ("611001101201", "611001101000", "611001000000", "611000000000", "610000000000"),
    )
    assert speakers[15].areas[0] == "611001102201"  # the 16th village opens the 2nd town
    assert speakers[16].areas == speakers[0].areas  # round-robin over the villages
    assert len({s.areas[0] for s in speakers}) == 16
    with pytest.raises(ValueError, match="4 digits"):
        synthetic_fleet(1, 1, "61")


def test_speakers_csv(tmp_path: Path) -> None:
    path = tmp_path / "speakers.csv"
    path.write_text(
        f"device_id,areas\nspk-1,{V1};{TOWN}\n# a comment\n\nspk-2,{V2} {TOWN},611002000000\n",
        encoding="utf-8",
    )
    assert read_speakers_csv(path) == [
        SimSpeaker("spk-1", (V1, TOWN)),
        SimSpeaker("spk-2", (V2, TOWN, "611002000000")),
    ]
    path.write_text("spk/1,611002101201\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"speakers\.csv:1"):
        read_speakers_csv(path)


# -- the command line ----------------------------------------------------------------------------
async def test_cli_runs_a_fleet_prints_summaries_and_stops_on_sigterm(broker: Broker) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.mqtt_speaker.simulator",
        *("--port", str(broker.port), "--count", "20", "--villages", "5"),
        *("--summary-seconds", "0.2", "--heartbeat", "0"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    lines: list[str] = []

    async def read_until(text: str) -> None:
        while not lines or text not in lines[-1]:
            line = await asyncio.wait_for(process.stdout.readline(), 10)  # type: ignore[union-attr]
            assert line, f"exited early: {lines}"
            lines.append(line.decode())

    try:
        await read_until("online 20/20")
        async with observing(broker) as observer:
            # Village 1 of the synthetic layout has speakers 1, 6, 11, 16.
            await observer.publish(area_alert_topic(ROOT, "611001101201"), make_alert("w1"))
            await read_until("played 4")
            await observer.wait(lambda: len(observer.acks) == 12)
        process.send_signal(signal.SIGTERM)
        await read_until("stopped")
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert lines[0].startswith("20 simulated speakers (one connection per speaker)")


def test_tocsin_simulate_help_lists_the_speakers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["simulate", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "installed simulators:" in out
    assert "speakers" in out and "adapters.mqtt_speaker.simulator:main" in out
    assert cli_main(["simulate", "nonesuch"]) == 2


#: What the fake simulator was called with (see _fake_main).
CALLS: list[tuple[list[str], Any]] = []


def _fake_main(argv: list[str], *, speakers: Any = None) -> int:
    CALLS.append((argv, speakers))
    return 0


def test_simulate_speakers_with_an_adapter_runs_the_directorys_speakers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_directory: Callable[..., Path],
    canonical_directory: dict[str, list[str]],
) -> None:
    from dispatcher.directory import import_directory

    assert import_directory(
        tmp_path / "tocsin.db",
        write_directory(tmp_path / "csv", canonical_directory),
        progress=False,
    ).ok
    (tmp_path / "policy.toml").write_bytes((REPO / "config" / "policy.toml").read_bytes())
    config = tmp_path / "tocsin.toml"
    config.write_text(
        '[store]\npath = "tocsin.db"\n\n[policy]\nfile = "policy.toml"\n\n'
        '[adapters.speakers]\nkind = "simulated"\nchannels = ["speaker"]\n',
        encoding="utf-8",
    )
    fake = EntryPoint("speakers", f"{__name__}:_fake_main", cli_simulate.ENTRY_POINT_GROUP)
    monkeypatch.setattr(cli_simulate, "simulators", lambda: {"speakers": fake})
    CALLS.clear()
    argv = ["simulate", "speakers", "--config", str(config), "--adapter", "speakers"]
    assert cli_main([*argv, "--port", "1884"]) == 0
    assert CALLS == [
        (
            ["--port", "1884"],
            [
                (
                    "SPK-1",
                    (
                        "611002101201",
                        "611002101000",
                        "611002000000",
                        "611000000000",
                        "610000000000",
                    ),
                )
            ],
        )
    ]
    assert cli_main([*argv[:-1], "nonesuch"]) == 2

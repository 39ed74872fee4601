"""The installer's commands for loudspeakers, run as an installer runs them (a subprocess)
against a real Mosquitto and a simulated fleet: `tocsin adapters probe` lists which speakers are
online, `tocsin adapters test` plays a test broadcast on one speaker or one village."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from mqtt_broker import Broker, running_mosquitto

from adapters.mqtt_speaker.protocol import DEFAULT_ROOT
from adapters.mqtt_speaker.simulator import FleetBehaviour, SimSpeaker, SpeakerFleet

ROOT = Path(__file__).resolve().parents[2]
FLEET = [
    SimSpeaker("spk-1", ("611002001001", "611002001000")),
    SimSpeaker("spk-2", ("611002001001", "611002001000")),
    SimSpeaker("spk-3", ("611002001002", "611002001000")),
    SimSpeaker("spk-gone", ("611002001002", "611002001000")),
]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with running_mosquitto("allow_anonymous true\n", tmp_path / "broker") as running:
        yield running


def write_config(tmp_path: Path, broker: Broker, extra: str = "") -> Path:
    config = tmp_path / "tocsin.toml"
    config.write_text(
        f"""
[store]
path = "{tmp_path / "tocsin.db"}"

[policy]
file = "{ROOT / "config" / "policy.toml"}"

[adapters.speakers]
kind = "mqtt_speaker"
channels = ["speaker"]

[adapters.speakers.settings]
host = "{broker.host}"
port = {broker.port}
client_id = "installer-laptop"
probe_listen = "1s"
{extra}
"""
    )
    return config


async def tocsin(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_probe_shows_the_broker_and_which_speakers_are_online(
    broker: Broker, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker)
    behaviour = FleetBehaviour(offline=0.25, seed=3)
    async with SpeakerFleet(FLEET, host=broker.host, port=broker.port, behaviour=behaviour):
        code, out, err = await tocsin("adapters", "probe", "--config", str(config), "speakers")
    assert code == 0, err
    assert f"broker {broker.host}:{broker.port} answered" in out
    assert "3 online, 1 offline" in out


async def test_probe_names_a_broker_that_does_not_answer(broker: Broker, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker)
    broker.stop()
    code, out, _ = await tocsin("adapters", "probe", "--config", str(config))
    assert code == 1
    assert "FAIL speakers (mqtt_speaker): cannot connect to MQTT broker" in out
    assert "Connection refused" in out


async def test_a_test_broadcast_to_one_speaker_is_played_and_acknowledged(
    broker: Broker, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker)
    async with SpeakerFleet(FLEET, host=broker.host, port=broker.port) as fleet:
        code, out, err = await tocsin(
            "adapters",
            "test",
            "--config",
            str(config),
            "speakers",
            "--to",
            "spk-1",
            "--wait",
            "10s",
        )
        assert code == 0, out + err
        assert "state: spk-1: online" in out  # from its retained state
        assert "report: spk-1: played" in out
        assert "acknowledged by 1;" in out
        assert fleet.speaker("spk-1").play_count == 1
        assert fleet.speaker("spk-2").play_count == 0  # only the speaker named
        (alert,) = fleet.speaker("spk-1").alerts.values()
        assert alert.status == "Test"
        assert alert.text.startswith("【测试，非真实预警】")


async def test_a_test_broadcast_to_a_village_plays_on_each_of_its_speakers(
    broker: Broker, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker)
    async with SpeakerFleet(FLEET, host=broker.host, port=broker.port) as fleet:
        code, out, err = await tocsin(
            "adapters",
            "test",
            "--config",
            str(config),
            "speakers",
            "--area",
            "611002001001",
            "--wait",
            "3s",
        )
        assert code == 0, out + err
        assert "acknowledged by 2;" in out
        assert [fleet.speaker(s).play_count for s in ("spk-1", "spk-2", "spk-3")] == [1, 1, 0]


async def test_a_test_from_a_nodes_config_sees_every_ack_while_the_nodes_run(
    broker: Broker, tmp_path: Path
) -> None:
    """With shared_group set (several nodes), a test from the command line must not join the
    nodes' group: it would be handed only its share of the speakers' acks."""
    config = write_config(tmp_path, broker, 'shared_group = "tocsin"')
    node_got: list[str] = []

    async def running_node(subscribed: asyncio.Event) -> None:
        async with aiomqtt.Client(broker.host, broker.port, identifier="tocsin-node-a-acks") as c:
            await c.subscribe(f"$share/tocsin/{DEFAULT_ROOT}/device/+/ack", qos=1)
            subscribed.set()
            async for message in c.messages:
                node_got.append(str(message.topic))

    subscribed = asyncio.Event()
    node = asyncio.create_task(running_node(subscribed))
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        async with SpeakerFleet(FLEET, host=broker.host, port=broker.port):
            code, out, err = await tocsin(
                "adapters",
                "test",
                "--config",
                str(config),
                "speakers",
                "--area",
                "611002001001",
                "--wait",
                "3s",
            )
        assert code == 0, out + err
        assert "acknowledged by 2;" in out
        # The group got its copy as well (the node ignores a test's acks: no delivery).
        assert node_got
    finally:
        node.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await node


async def test_a_test_names_what_is_missing(broker: Broker, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker)
    code, _, err = await tocsin("adapters", "test", "--config", str(config), "speakers")
    assert code == 2
    assert "--to ADDRESS" in err
    code, _, err = await tocsin("adapters", "test", "--config", str(config), "nope", "--to", "x")
    assert code == 2
    assert "no adapter instance named nope" in err

"""tests/mqtt_broker.py, the real Mosquitto other tests start: free port, restart on the same
port with the same persistence, a crash, a broken config reported with the broker's log."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from mqtt_broker import Broker, running_mosquitto


def client(broker: Broker) -> paho.Client:
    mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    mqtt.connect(broker.host, broker.port)
    return mqtt


def publish_retained(broker: Broker, topic: str, payload: str) -> None:
    mqtt = client(broker)
    mqtt.loop_start()
    mqtt.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    mqtt.disconnect()
    mqtt.loop_stop()


def read_retained(broker: Broker, topic: str) -> str:
    """The retained message on ``topic`` (fails after 5 s without one)."""
    got: list[str] = []
    arrived = threading.Event()

    def on_message(_c: object, _u: object, message: paho.MQTTMessage) -> None:
        got.append(message.payload.decode())
        arrived.set()

    mqtt = client(broker)
    mqtt.on_message = on_message
    mqtt.subscribe(topic, qos=1)
    mqtt.loop_start()
    try:
        assert arrived.wait(5), f"no retained message on {topic}"
    finally:
        mqtt.disconnect()
        mqtt.loop_stop()
    return got[0]


def test_restart_keeps_port_and_persistence(tmp_path: Path) -> None:
    config = "allow_anonymous true\npersistence true\n"
    with running_mosquitto(config, tmp_path / "broker") as broker:
        port = broker.port
        publish_retained(broker, "t/state", "online")
        broker.restart()
        assert (broker.port, broker.running) == (port, True)
        assert read_retained(broker, "t/state") == "online"
        # A crash (SIGKILL) loses what was not saved yet; the broker starts again all the same.
        publish_retained(broker, "t/state", "after-restart")
        broker.kill()
        assert not broker.running
        broker.start()
        assert read_retained(broker, "t/state") == "online"
    assert not broker.running


def test_a_broken_config_is_reported_with_the_log(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="no_such_option"),
        running_mosquitto("no_such_option 1\n", tmp_path / "broker"),
    ):
        pass


def test_each_broker_needs_its_own_directory(tmp_path: Path) -> None:
    with (
        running_mosquitto("allow_anonymous true\n", tmp_path / "broker"),
        pytest.raises(ValueError, match="already holds a broker"),
        running_mosquitto("allow_anonymous true\n", tmp_path / "broker"),
    ):
        pass

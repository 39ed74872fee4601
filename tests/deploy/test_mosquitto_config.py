"""The shipped Mosquitto configuration (deploy/mosquitto/) against a real Mosquitto.

The broker runs deploy/mosquitto/mosquitto.conf with only its host paths and ports swapped
for test ones (every swapped option must still be in the file), the limits file
deploy/mosquitto/conf.d/ as it is (include_dir) and the ACL file as it is. Certificates are
made with the openssl commands of deploy/mosquitto/README.md; speakers connect over TLS, the
dispatcher over the localhost listener, as in production.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from mqtt_broker import (
    Broker,
    free_ports,
    mosquitto_tool,
    running_mosquitto,
    write_password_file,
)
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
SHIPPED_CONF = DEPLOY / "mosquitto.conf"
LIMITS_DIR = DEPLOY / "conf.d"
ACL = DEPLOY / "acl"

ROOT = "tocsin/v1"
ACKS = f"{ROOT}/device/+/ack"
STATES = f"{ROOT}/device/+/state"
PASSWORDS = {
    "tocsin": "dispatcher-secret",
    "installer": "installer-secret",
    "monitor": "monitor-secret",
    "spk-1": "speaker-1-secret",
    "spk-2": "speaker-2-secret",
}
V5 = aiomqtt.ProtocolVersion.V5
#: Long enough for anything that is going to arrive on loopback; only reached when a test fails.
WAIT = 5.0


def limit(name: str) -> int:
    """A numeric option as the shipped limits file sets it."""
    text = (LIMITS_DIR / "tocsin-limits.conf").read_text()
    found = re.search(rf"^{name}\s+(\d+)\s*$", text, re.MULTILINE)
    assert found, f"conf.d/tocsin-limits.conf does not set {name}"
    return int(found.group(1))


# -- certificates (the README's openssl commands) ----------------------------------------------
@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path


def make_certs(directory: Path) -> Certs:
    """A CA and a server certificate for 127.0.0.1 / localhost, as the README makes them."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail(
            "the TLS tests need the openssl command to make their certificates (the "
            "cryptography package is not installed either): apt-get install openssl"
        )

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=60)

    run(
        "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
        "-out", "ca.crt", "-days", "2", "-subj", "/CN=Tocsin test MQTT CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    run(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=localhost",
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.crt", "-extfile", "server.ext",
    )  # fmt: skip
    return Certs(directory / "ca.crt", directory / "server.crt", directory / "server.key")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_password_file(tmp_path_factory.mktemp("accounts") / "passwd", PASSWORDS)


# -- the shipped config, made runnable here ----------------------------------------------------
def derive_config(swaps: dict[str, str | None]) -> str:
    """deploy/mosquitto/mosquitto.conf with the options in ``swaps`` given new values (None:
    the line dropped); a listener is keyed ``"listener <shipped port>"``. Every key must match
    exactly one active line, so a change to the shipped file cannot slip past this test."""
    seen: dict[str, int] = dict.fromkeys(swaps, 0)
    out: list[str] = []
    for line in SHIPPED_CONF.read_text().splitlines():
        words = line.split()
        key = " ".join(words[:2]) if words[:1] == ["listener"] else (words[0] if words else "")
        if key in swaps:
            seen[key] += 1
            if swaps[key] is not None:
                out.append(f"{words[0]} {swaps[key]}")
            continue
        out.append(line)
    wrong = {key: count for key, count in seen.items() if count != 1}
    assert not wrong, (
        f"{SHIPPED_CONF} no longer has exactly one active line for {sorted(wrong)}: "
        "update derive_config's swaps in this test"
    )
    return "\n".join(out) + "\n"


@dataclass
class Shipped:
    broker: Broker
    tls_port: int
    local_port: int
    ca: Path
    passwords: Path


@pytest.fixture
def start_shipped(
    certs: Certs, password_file: Path, tmp_path: Path
) -> Iterator[Callable[..., Shipped]]:
    """Start a broker from the shipped files (``limits=False``: without conf.d, i.e. with
    Mosquitto's default limits, the control). Stopped after the test."""
    with ExitStack() as stack:

        def start(*, limits: bool = True, name: str = "shipped") -> Shipped:
            directory = tmp_path / name
            directory.mkdir()
            passwords = directory / "passwd"
            shutil.copy(password_file, passwords)
            tls_port, local_port = free_ports(2)
            data = directory / "data"
            data.mkdir()
            config = derive_config(
                {
                    "listener 8883": f"{tls_port} 127.0.0.1",
                    "listener 1883": f"{local_port} 127.0.0.1",
                    "cafile": str(certs.ca),
                    "certfile": str(certs.server_cert),
                    "keyfile": str(certs.server_key),
                    "password_file": str(passwords),
                    "acl_file": str(ACL),
                    "persistence_location": f"{data}/",
                    "include_dir": str(LIMITS_DIR) if limits else None,
                }
            )
            broker = stack.enter_context(running_mosquitto(config, directory))
            return Shipped(broker, tls_port, local_port, certs.ca, passwords)

        yield start


@pytest.fixture
def shipped(start_shipped: Callable[..., Shipped]) -> Shipped:
    return start_shipped()


# -- clients -------------------------------------------------------------------------------------
def speaker(
    env: Shipped,
    device_id: str,
    *,
    password: str | None = None,
    identifier: str | None = None,
    **kwargs: Any,
) -> aiomqtt.Client:
    """A speaker (or installer/monitor) over TLS, as in the field."""
    return aiomqtt.Client(
        "127.0.0.1",
        env.tls_port,
        username=device_id,
        password=PASSWORDS[device_id] if password is None else password,
        identifier=identifier or device_id,
        protocol=V5,
        tls_params=aiomqtt.TLSParameters(ca_certs=str(env.ca)),
        timeout=WAIT,
        **kwargs,
    )


def dispatcher(env: Shipped, role: str = "pub", **kwargs: Any) -> aiomqtt.Client:
    """One of the dispatcher's two connections, over the localhost listener."""
    return aiomqtt.Client(
        "127.0.0.1",
        env.local_port,
        username="tocsin",
        password=PASSWORDS["tocsin"],
        identifier=f"tocsin-test-{role}",
        protocol=V5,
        timeout=WAIT,
        **kwargs,
    )


class SyncClient:
    """A blocking paho client for what aiomqtt hides: PUBACK reason codes, CONNACK properties,
    a connection that dies without a DISCONNECT, MQTT 3.1.1, fast bursts. Only the
    ``mosquitto`` package is needed (no mosquitto-clients)."""

    def __init__(
        self,
        env: Shipped,
        username: str,
        *,
        tls: bool = True,
        mqtt5: bool = True,
        client_id: str | None = None,
        keepalive: int = 60,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id or username,
            protocol=paho.MQTTv5 if mqtt5 else paho.MQTTv311,
        )
        self.client.username_pw_set(username, PASSWORDS[username])
        if tls:
            self.client.tls_set(ca_certs=str(env.ca))
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.max_inflight_messages_set(100)
        self.connack: dict[str, Any] = {}
        self.pubacks: dict[int, int] = {}
        self._connected = threading.Event()
        self._acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", env.tls_port if tls else env.local_port, keepalive)
        self.client.loop_start()
        if not self._connected.wait(WAIT):
            self.client.loop_stop()
            pytest.fail(f"{username}: no CONNACK within {WAIT} s")

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, properties: Any) -> None:
        self.connack = {"reason": str(reason), **(properties.json() if properties else {})}
        self._connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._acked:
            self.pubacks[mid] = reason.value if hasattr(reason, "value") else int(reason)
            self._acked.notify_all()

    def publish_all(self, topic: str, payloads: list[bytes]) -> list[int]:
        """Publish at QoS 1 and wait for every PUBACK; their reason codes, in order."""
        mids = [self.client.publish(topic, payload, qos=1).mid for payload in payloads]
        with self._acked:
            if not self._acked.wait_for(lambda: all(m in self.pubacks for m in mids), WAIT):
                missing = sum(mid not in self.pubacks for mid in mids)
                pytest.fail(f"{missing} of {len(mids)} PUBACKs missing after {WAIT} s")
        return [self.pubacks[mid] for mid in mids]

    def die(self) -> None:
        """Lose the connection without a DISCONNECT, as a speaker losing power does."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert sock is not None
        sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def persistent_session(hours: int = 1) -> dict[str, Any]:
    """Client options for a session that outlives its connection (and, with clean start off
    from the first connect, a broker restart)."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = hours * 3600
    return {"clean_start": False, "properties": properties}


@asynccontextmanager
async def connected(*clients: aiomqtt.Client) -> AsyncIterator[None]:
    """All these clients connected for the block (disconnected after it, in reverse)."""
    async with AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        yield


async def receive_until(
    client: aiomqtt.Client, last: Callable[[aiomqtt.Message], bool], what: str
) -> list[aiomqtt.Message]:
    """Messages up to and including the first for which ``last`` is true."""
    got: list[aiomqtt.Message] = []
    try:
        async with asyncio.timeout(WAIT):
            async for message in client.messages:
                got.append(message)
                if last(message):
                    return got
    except TimeoutError:
        pass
    pytest.fail(f"{what}: not received within {WAIT} s; got {[str(m.topic) for m in got]}")


async def receive_quiet(
    client: aiomqtt.Client, *, enough: int, quiet: float = 3.0
) -> list[aiomqtt.Message]:
    """Messages until ``enough`` have come or none has for ``quiet`` seconds (generous: on a
    loaded 2-core machine the broker's redelivery can pause for a second)."""
    got: list[aiomqtt.Message] = []
    iterator = aiter(client.messages)
    while len(got) < enough:
        try:
            async with asyncio.timeout(quiet):
                got.append(await anext(iterator))
        except TimeoutError:
            break
    return got


async def logged(broker: Broker, text: str) -> None:
    """Wait until the broker's log has ``text``."""
    for _ in range(int(WAIT / 0.02)):
        if text in broker.log():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"the broker did not log {text!r} within {WAIT} s; its log:\n{broker.log()}")


def topic_is(topic: str) -> Callable[[aiomqtt.Message], bool]:
    return lambda message: message.topic.value == topic


def ack(n: int = 0) -> bytes:
    return json.dumps({"v": 1, "id": f"w-{n}", "state": "played", "ts": n, "plays": 1}).encode()


def alert_properties(expiry: int = 600) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    properties.MessageExpiryInterval = expiry
    return properties


# -- who may connect -------------------------------------------------------------------------------
@pytest.mark.parametrize("listener", ["tls", "local"])
@pytest.mark.parametrize("login", ["wrong password", "anonymous"])
async def test_bad_logins_are_refused(shipped: Shipped, listener: str, login: str) -> None:
    port = shipped.tls_port if listener == "tls" else shipped.local_port
    tls = aiomqtt.TLSParameters(ca_certs=str(shipped.ca)) if listener == "tls" else None
    username, password = (
        ("spk-1", "not-the-password") if login == "wrong password" else (None, None)
    )
    client = aiomqtt.Client(
        "127.0.0.1",
        port,
        username=username,
        password=password,
        identifier="intruder",
        protocol=V5,
        tls_params=tls,
        timeout=WAIT,
    )
    with pytest.raises(aiomqtt.MqttError, match="Not authorized"):
        async with client:
            pass
    # The control: the right password on the same listener is let in.
    good = speaker(shipped, "spk-1") if listener == "tls" else dispatcher(shipped)
    async with good:
        pass


# -- what a speaker may do -----------------------------------------------------------------------
async def test_speaker_ack_and_state_reach_the_dispatcher(shipped: Shipped) -> None:
    acks = dispatcher(shipped, "acks")
    spk1 = speaker(shipped, "spk-1")
    async with connected(acks, spk1):
        await acks.subscribe(ACKS, qos=1)
        await acks.subscribe(STATES, qos=1)
        await spk1.publish(
            f"{ROOT}/device/spk-1/state", b'{"v":1,"state":"online"}', qos=1, retain=True
        )
        await spk1.publish(f"{ROOT}/device/spk-1/ack", ack(), qos=1)
        got = await receive_until(acks, topic_is(f"{ROOT}/device/spk-1/ack"), "spk-1's ack")
    assert [m.topic.value for m in got] == [
        f"{ROOT}/device/spk-1/state",
        f"{ROOT}/device/spk-1/ack",
    ]
    # The state is retained: a dispatcher subscribing later still learns it.
    async with dispatcher(shipped, "acks") as later:
        await later.subscribe(STATES, qos=1)
        (state,) = await receive_until(later, topic_is(f"{ROOT}/device/spk-1/state"), "state")
    assert state.retain
    assert json.loads(state.payload) == {"v": 1, "state": "online"}


async def test_forged_ack_and_alert_from_a_speaker_are_dropped(shipped: Shipped) -> None:
    acks = dispatcher(shipped, "acks")
    spk1 = speaker(shipped, "spk-1")
    spk2 = speaker(shipped, "spk-2")
    async with connected(acks, spk1, spk2):
        await acks.subscribe(ACKS, qos=1)
        await spk2.subscribe(f"{ROOT}/area/#", qos=1)
        # Forged first, genuine after, on the same connection: had the forgery gone through,
        # it would arrive before the genuine one.
        await spk1.publish(f"{ROOT}/device/spk-2/ack", ack(), qos=1)
        await spk1.publish(f"{ROOT}/area/611002101202/alert", b'{"v":1,"id":"fake"}', qos=1)
        await spk1.publish(f"{ROOT}/device/spk-1/ack", ack(), qos=1)
        got = await receive_until(acks, topic_is(f"{ROOT}/device/spk-1/ack"), "genuine ack")
        assert [m.topic.value for m in got] == [f"{ROOT}/device/spk-1/ack"]
        # A speaker cannot sound the others: its area alert reached nobody, the dispatcher's does.
        async with dispatcher(shipped, "pub") as pub:
            await pub.publish(f"{ROOT}/area/611002101202/alert", b'{"v":1,"id":"real"}', 1)
        got = await receive_until(spk2, topic_is(f"{ROOT}/area/611002101202/alert"), "alert")
        assert [m.payload for m in got] == [b'{"v":1,"id":"real"}']


def test_denied_publish_gets_reason_code_135_over_mqtt5(shipped: Shipped) -> None:
    """What the ACL file says: an MQTT v5 publisher learns of the refusal (PUBACK 135)."""
    spk1 = SyncClient(shipped, "spk-1")
    try:
        codes = spk1.publish_all(f"{ROOT}/device/spk-2/ack", [ack()])
        codes += spk1.publish_all(f"{ROOT}/device/spk-1/ack", [ack()])
    finally:
        spk1.close()
    assert codes == [135, 16]  # Not authorized; the genuine one: No matching subscribers


async def test_speaker_reads_only_its_own_device_alerts(shipped: Shipped) -> None:
    spk2 = speaker(shipped, "spk-2")
    pub = dispatcher(shipped, "pub")
    async with connected(spk2, pub):
        # The subscription is granted; the broker just never delivers what spk-2 may not read.
        granted = await spk2.subscribe(f"{ROOT}/device/#", qos=1)
        assert [code.value for code in granted] == [1]
        await pub.publish(f"{ROOT}/device/spk-1/alert", b'{"v":1,"id":"for-spk-1"}', 1)
        await pub.publish(f"{ROOT}/device/spk-2/alert", b'{"v":1,"id":"for-spk-2"}', 1)
        got = await receive_until(spk2, topic_is(f"{ROOT}/device/spk-2/alert"), "own alert")
    assert [m.payload for m in got] == [b'{"v":1,"id":"for-spk-2"}']


async def test_speaker_reads_area_alerts_with_their_expiry(shipped: Shipped) -> None:
    spk1 = speaker(shipped, "spk-1")
    pub = dispatcher(shipped, "pub")
    village, county = "611002101201", "611002000000"
    async with connected(spk1, pub):
        for code in (village, county):  # its village and (here) one ancestor
            await spk1.subscribe(f"{ROOT}/area/{code}/alert", qos=1)
        await pub.publish(
            f"{ROOT}/area/{county}/alert", b'{"v":1,"id":"w1"}', 1, properties=alert_properties()
        )
        (message,) = await receive_until(spk1, topic_is(f"{ROOT}/area/{county}/alert"), "alert")
    assert message.qos == 1
    assert message.properties is not None
    assert 0 < message.properties.MessageExpiryInterval <= 600


async def test_no_device_can_take_over_another_client_id(shipped: Shipped) -> None:
    """On the TLS listener the client id is the username: spk-2 cannot kick spk-1 (or the
    dispatcher) off by connecting with its client id."""
    spk1 = speaker(shipped, "spk-1")
    acks = dispatcher(shipped, "acks")
    async with connected(spk1, acks):
        await spk1.subscribe(f"{ROOT}/device/spk-1/alert", qos=1)
        await acks.subscribe(ACKS, qos=1)
        for victim in ("spk-1", "tocsin-test-acks"):
            async with speaker(shipped, "spk-2", identifier=victim):
                pass
        # Both are still connected: each receives what comes next on its old connection.
        async with dispatcher(shipped, "pub") as pub:
            await pub.publish(f"{ROOT}/device/spk-1/alert", b'{"v":1,"id":"still-here"}', 1)
        await receive_until(spk1, topic_is(f"{ROOT}/device/spk-1/alert"), "spk-1's alert")
        await spk1.publish(f"{ROOT}/device/spk-1/ack", ack(), qos=1)
        await receive_until(acks, topic_is(f"{ROOT}/device/spk-1/ack"), "spk-1's ack")
    assert "Client spk-1 already connected" not in shipped.broker.log()
    assert "Client tocsin-test-acks already connected" not in shipped.broker.log()


async def test_last_will_marks_a_speaker_offline_and_a_forged_will_is_dropped(
    shipped: Shipped,
) -> None:
    acks = dispatcher(shipped, "acks")
    async with connected(acks):
        await acks.subscribe(STATES, qos=1)
        # Each connects with a last will, then dies without a DISCONNECT. spk-2's
        # will names spk-1's state topic: had it gone through, it would arrive first.
        for device_id in ("spk-2", "spk-1"):
            offline = json.dumps({"v": 1, "state": "offline", "by": device_id}).encode()
            dying = SyncClient(shipped, device_id, will=(f"{ROOT}/device/spk-1/state", offline))
            dying.die()
            await logged(shipped.broker, f"Client {device_id} closed its connection")
        got = await receive_until(acks, topic_is(f"{ROOT}/device/spk-1/state"), "spk-1's will")
    assert [json.loads(m.payload) for m in got] == [{"v": 1, "state": "offline", "by": "spk-1"}]


async def test_installer_reads_everything_and_sends_nothing(shipped: Shipped) -> None:
    installer = speaker(shipped, "installer")
    spk1 = speaker(shipped, "spk-1")
    acks = dispatcher(shipped, "acks")
    monitor = speaker(shipped, "monitor")
    async with connected(installer, spk1, acks, monitor):
        await installer.subscribe(f"{ROOT}/#", qos=1)
        await spk1.subscribe(f"{ROOT}/area/#", qos=1)
        await acks.subscribe(ACKS, qos=1)
        await monitor.subscribe("$SYS/broker/version", qos=0)
        await spk1.publish(f"{ROOT}/device/spk-1/ack", ack(), qos=1)
        await receive_until(installer, topic_is(f"{ROOT}/device/spk-1/ack"), "ack, installer")
        await receive_until(acks, topic_is(f"{ROOT}/device/spk-1/ack"), "ack, dispatcher")
        # The installer's alert and forged ack go nowhere; the dispatcher's alert does.
        await installer.publish(f"{ROOT}/area/611002101201/alert", b'{"id":"installer"}', 1)
        await installer.publish(f"{ROOT}/device/spk-1/ack", b'{"id":"installer"}', qos=1)
        async with dispatcher(shipped, "pub") as pub:
            await pub.publish(f"{ROOT}/area/611002101201/alert", b'{"id":"dispatcher"}', 1)
        got = await receive_until(spk1, topic_is(f"{ROOT}/area/611002101201/alert"), "alert")
        assert [m.payload for m in got] == [b'{"id":"dispatcher"}']
        await spk1.publish(f"{ROOT}/device/spk-1/ack", ack(2), qos=1)
        got = await receive_until(acks, topic_is(f"{ROOT}/device/spk-1/ack"), "second ack")
        assert [m.payload for m in got] == [ack(2)]
        (version,) = await receive_until(monitor, topic_is("$SYS/broker/version"), "$SYS")
        assert version.payload.startswith(b"mosquitto version")


# -- limits ------------------------------------------------------------------------------------
def test_limits_are_announced_to_mqtt5_clients(shipped: Shipped) -> None:
    client = SyncClient(shipped, "tocsin", tls=False, client_id="tocsin-test-pub", keepalive=600)
    client.close()
    props = client.connack
    assert props["reason"] == "Success"
    # max_inflight_messages is the client's receive maximum (Mosquitto's default: 20) ...
    assert props["ReceiveMaximum"] == limit("max_inflight_messages") != 20
    # ... and a client asking for a longer keepalive is told max_keepalive.
    assert props["ServerKeepAlive"] == limit("max_keepalive") < 600


async def test_oversized_message_is_not_forwarded(shipped: Shipped) -> None:
    size = limit("message_size_limit")
    spk1 = speaker(shipped, "spk-1")
    async with connected(spk1):
        await spk1.subscribe(f"{ROOT}/device/spk-1/alert", qos=1)
        # Over MQTT 3.1.1: an MQTT v5 paho client would be disconnected by its own library
        # over Mosquitto's PUBACK reason code (see conf.d/tocsin-limits.conf).
        pub = SyncClient(shipped, "tocsin", tls=False, mqtt5=False, client_id="tocsin-test-pub")
        try:
            pub.publish_all(f"{ROOT}/device/spk-1/alert", [b"x" * (size + 1)])
        finally:
            pub.close()
        async with dispatcher(shipped, "pub") as pub:
            await pub.publish(f"{ROOT}/device/spk-1/alert", b"y" * size, qos=1)
        got = await receive_until(spk1, topic_is(f"{ROOT}/device/spk-1/alert"), "alert")
    assert [len(m.payload) for m in got] == [size]


BURST = 3000


async def burst_to_an_absent_dispatcher(env: Shipped) -> set[int]:
    """spk-1 sends BURST acks while the dispatcher's ack session is away (the slowest
    consumer there is); which arrive once it is back."""
    async with dispatcher(env, "acks", **persistent_session()) as acks:
        await acks.subscribe(ACKS, qos=1)
    spk1 = SyncClient(env, "spk-1")
    try:
        payloads = [json.dumps({"v": 1, "id": "w", "n": n}).encode() for n in range(BURST)]
        assert spk1.publish_all(f"{ROOT}/device/spk-1/ack", payloads) == [0] * BURST
    finally:
        spk1.close()
    async with dispatcher(env, "acks", **persistent_session()) as acks:
        got = await receive_quiet(acks, enough=BURST)
    return {json.loads(m.payload)["n"] for m in got}


async def test_a_burst_of_acks_is_queued_whole_for_an_absent_dispatcher(
    start_shipped: Callable[..., Shipped],
) -> None:
    shipped = start_shipped()
    assert BURST > 1000  # Mosquitto's default max_queued_messages
    assert await burst_to_an_absent_dispatcher(shipped) == set(range(BURST))
    assert "being dropped" not in shipped.broker.log()
    # The control: the same broker without conf.d (Mosquitto's default limits) drops most.
    control = start_shipped(limits=False, name="defaults")
    received = await burst_to_an_absent_dispatcher(control)
    assert len(received) < BURST
    assert "Outgoing messages are being dropped for client tocsin-test-acks" in control.broker.log()


async def test_queued_acks_and_retained_states_survive_a_broker_restart(shipped: Shipped) -> None:
    async with dispatcher(shipped, "acks", **persistent_session()) as acks:
        await acks.subscribe(ACKS, qos=1)
    async with speaker(shipped, "spk-1") as spk1:
        await spk1.publish(
            f"{ROOT}/device/spk-1/state", b'{"v":1,"state":"online"}', qos=1, retain=True
        )
        await spk1.publish(f"{ROOT}/device/spk-1/ack", ack(7), qos=1)
    shipped.broker.restart()
    async with dispatcher(shipped, "acks", **persistent_session()) as acks:
        (queued,) = await receive_until(acks, topic_is(f"{ROOT}/device/spk-1/ack"), "queued")
        assert queued.payload == ack(7)
        await acks.subscribe(STATES, qos=1)
        (state,) = await receive_until(acks, topic_is(f"{ROOT}/device/spk-1/state"), "state")
        assert state.retain


async def test_reload_adds_a_speaker_without_dropping_connections(shipped: Shipped) -> None:
    password = "speaker-3-secret"
    acks = dispatcher(shipped, "acks")
    async with connected(acks):
        await acks.subscribe(ACKS, qos=1)
        with pytest.raises(aiomqtt.MqttError, match="Not authorized"):
            async with speaker(shipped, "spk-3", password=password):
                pass
        subprocess.run(
            [mosquitto_tool("mosquitto_passwd"), "-b", str(shipped.passwords), "spk-3", password],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        shipped.broker.reload()
        for _ in range(int(WAIT / 0.1)):  # the broker rereads the file on its next loop
            try:
                async with speaker(shipped, "spk-3", password=password) as spk3:
                    await spk3.publish(f"{ROOT}/device/spk-3/ack", ack(), qos=1)
                break
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail(f"spk-3 still refused {WAIT} s after SIGHUP; log:\n{shipped.broker.log()}")
        # The dispatcher's connection from before the reload is still there and gets it.
        await receive_until(acks, topic_is(f"{ROOT}/device/spk-3/ack"), "spk-3's ack")

"""The adapter contract, checked for every installed adapter kind (``tocsin.adapters`` entry
points), so a new kind is put through it as soon as it is installed.

Each kind needs a row in :data:`HARNESSES`: what to construct it with and, for kinds that talk
to a live peer (a broker, a fake Twilio server, a modem simulator on a pty), an async context
manager that starts the peer and tears it down. An installed kind without a row fails here.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import aiomqtt
import pytest
from dispatches import make_dispatch, make_warning
from mqtt_broker import running_mosquitto, write_password_file
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError
from recording import RecordingContext

from adapters.twilio.fake_script import FakeScript
from adapters.twilio.fake_server import FakeTwilio
from dispatcher.adapter import (
    ENTRY_POINT_GROUP,
    Accepted,
    Adapter,
    AdapterFactory,
    Dispatch,
    Failed,
    Outcome,
    ProbeResult,
    Report,
    ReportState,
    Retry,
    WarningContent,
    adapter_kinds,
    check_outcomes,
)
from dispatcher.domain import PERSON_CHANNELS, Audience, Channel, Level, MsgType, Status

# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """An address on one channel and the outcome the kind is known to give it."""

    channel: Channel
    address: str
    expect: type[Accepted] | type[Retry] | type[Failed] = Accepted


@dataclass(frozen=True)
class Harness:
    """What the contract needs to exercise one kind."""

    #: Valid settings, as the config gives them after secret references are resolved. Every
    #: SecretStr field must be given a value, so its redaction is actually checked.
    settings: Mapping[str, Any]
    #: Addresses with a known outcome, at least one Accepted per channel the kind serves; a
    #: Failed (or Retry) target per channel where the peer can be made to give one.
    targets: tuple[Target, ...]
    #: Extra keyword arguments for the factory besides name and settings (none today).
    extra: Mapping[str, Any] = field(default_factory=dict)


HarnessFactory = Callable[[], AbstractAsyncContextManager[Harness]]


@asynccontextmanager
async def _simulated() -> AsyncIterator[Harness]:
    unknown = {Channel.SMS: "+8613000000000", Channel.VOICE: "+8613000000001"}
    targets: list[Target] = []
    for channel in Channel:
        good = "+8613812345678" if channel in PERSON_CHANNELS else f"{channel.value.upper()}-1"
        bad = unknown.get(channel, f"{channel.value.upper()}-UNKNOWN")
        targets += [Target(channel, good), Target(channel, bad, Failed)]
    yield Harness(
        settings={
            "seed": 7,
            "fail_addresses": [t.address for t in targets if t.expect is Failed],
            "ack_delay": 0.01,
            "delivered_report": True,
        },
        targets=tuple(targets),
    )


@asynccontextmanager
async def _mqtt_speaker() -> AsyncIterator[Harness]:
    """A real Mosquitto with a password; one speaker's retained state says it is offline."""
    with tempfile.TemporaryDirectory(prefix="tocsin-contract-mqtt-") as scratch:
        directory = Path(scratch)
        passwords = write_password_file(
            directory / "passwd", {"tocsin": "contract-secret", "spk-gone": "x"}
        )
        config = f"allow_anonymous false\npassword_file {passwords}\nmax_queued_messages 0\n"
        with running_mosquitto(config, directory / "broker") as broker:
            await _publish_retained(
                broker.host, broker.port, "spk-gone", b'{"v":1,"state":"offline"}'
            )
            yield Harness(
                settings={
                    "host": broker.host,
                    "port": broker.port,
                    "username": "tocsin",
                    "password": "contract-secret",
                    "client_id": "contract",
                    "connect_timeout": 5,
                    "probe_listen": 0.3,
                },
                targets=(
                    Target(Channel.SPEAKER, "spk-good"),
                    Target(Channel.SPEAKER, "spk-gone", Failed),
                ),
            )


async def _publish_retained(host: str, port: int, device: str, payload: bytes) -> None:
    async with aiomqtt.Client(host, port, username="spk-gone", password="x") as client:
        await client.publish(f"tocsin/v1/device/{device}/state", payload, qos=1, retain=True)


TWILIO_SID = "AC" + "7" * 32
TWILIO_SENDER = "+8610690000001"


@asynccontextmanager
async def _fake_twilio(
    channel: Channel, numbers_key: str, **limits: float
) -> AsyncIterator[Harness]:
    """The fake Twilio server; an invalid number is refused (21211) and fails at once. The
    senders' limits are lifted: the contract calls send() without the engine's pacing."""
    async with FakeTwilio(
        accounts={TWILIO_SID: "contract-token"},
        script=FakeScript(callbacks=False),
        numbers=[TWILIO_SENDER],
    ) as fake:
        yield Harness(
            settings={
                "account_sid": TWILIO_SID,
                "auth_token": "contract-token",
                "public_url": "http://127.0.0.1:9",
                "api_base_url": fake.url,
                numbers_key: [TWILIO_SENDER],
                "request_timeout": 5,
                **limits,
            },
            targets=(Target(channel, "+8613812345678"), Target(channel, "+8612", Failed)),
        )


def _twilio_sms() -> AbstractAsyncContextManager[Harness]:
    return _fake_twilio(Channel.SMS, "senders", sender_rate=1000)


def _twilio_voice() -> AbstractAsyncContextManager[Harness]:
    return _fake_twilio(Channel.VOICE, "callers", max_concurrent_calls=10000)


@asynccontextmanager
async def _iridium_sbd() -> AsyncIterator[Harness]:
    """The simulated Iridium 9602 on a pty; an address that is not an IMEI fails at once."""
    from adapters.iridium_sbd.simulator import IridiumSimulator

    with tempfile.TemporaryDirectory(prefix="tocsin-contract-iridium-") as scratch:
        async with IridiumSimulator(link=Path(scratch) / "iridium") as device:
            yield Harness(
                settings={
                    "port": device.path,
                    "command_timeout": 1,
                    "open_timeout": 3,
                    "session_timeout": 3,
                    "session_interval": 0,
                    "reopen_max": 0.5,
                },
                targets=(
                    Target(Channel.MODEM, "300234010000001"),
                    Target(Channel.MODEM, "3002340", Failed),
                ),
            )


@asynccontextmanager
async def _beidou_rdss() -> AsyncIterator[Harness]:
    """The simulated BeiDou terminal on a pty, its card without a service interval (the
    contract sends without the engine's pacing); an address that is no user id fails at once."""
    from adapters.beidou_rdss.simulator import BeidouTerminal

    with tempfile.TemporaryDirectory(prefix="tocsin-contract-beidou-") as scratch:
        async with BeidouTerminal(link=Path(scratch) / "beidou", interval=0) as device:
            yield Harness(
                settings={
                    "port": device.path,
                    "command_timeout": 1,
                    "open_timeout": 3,
                    "reopen_max": 0.5,
                    "probe_listen": 1,
                },
                targets=(
                    Target(Channel.MODEM, "141814"),
                    Target(Channel.MODEM, "13812345678", Failed),
                ),
            )


@asynccontextmanager
async def _gsm_modem() -> AsyncIterator[Harness]:
    """The simulated GSM modem on a pty, its SIM locked by a PIN (the secret field); an address
    that is no phone number fails at once."""
    from adapters.gsm_modem.simulator import GsmModemSimulator

    with tempfile.TemporaryDirectory(prefix="tocsin-contract-gsm-") as scratch:
        async with GsmModemSimulator(link=Path(scratch) / "gsm", sim_pin="2468") as device:
            yield Harness(
                settings={
                    "port": device.path,
                    "sim_pin": "2468",
                    "command_timeout": 1,
                    "open_timeout": 3,
                    "reopen_max": 0.5,
                    "submit_timeout": 2,
                    "send_budget": 8,
                },
                targets=(
                    Target(Channel.SMS, "+8613812345678"),
                    Target(Channel.SMS, "+86 12", Failed),
                    Target(Channel.MODEM, "+8617400000001"),
                    Target(Channel.MODEM, "MDM-1", Failed),
                ),
            )


@asynccontextmanager
async def _serial_transmitter() -> AsyncIterator[Harness]:
    """Two simulated transmitters on a pty bus; an address that is no line id fails at once."""
    from adapters.serial_transmitter.simulator import SimulatedTransmitter, TransmitterBusDevice

    with tempfile.TemporaryDirectory(prefix="tocsin-contract-tx-") as scratch:
        async with TransmitterBusDevice(
            transmitters=[
                SimulatedTransmitter(1, ("611002101201",)),
                SimulatedTransmitter(2, ("611002000000",)),
            ],
            link=Path(scratch) / "tx",
        ) as device:
            yield Harness(
                settings={
                    "port": device.path,
                    "transmitters": ["1", "2"],
                    "command_timeout": 0.5,
                    "open_timeout": 3,
                    "reopen_max": 0.5,
                    "status_interval": 0,
                },
                targets=(
                    Target(Channel.TRANSMITTER, "1"),
                    Target(Channel.TRANSMITTER, "2"),
                    Target(Channel.TRANSMITTER, "TX-NOT-AN-ID", Failed),
                ),
            )


#: One row per adapter kind, "simulated" first. Add a row with the kind's entry point.
HARNESSES: dict[str, HarnessFactory] = {
    "simulated": _simulated,
    "mqtt_speaker": _mqtt_speaker,
    "twilio_sms": _twilio_sms,
    "twilio_voice": _twilio_voice,
    "iridium_sbd": _iridium_sbd,
    "beidou_rdss": _beidou_rdss,
    "gsm_modem": _gsm_modem,
    "serial_transmitter": _serial_transmitter,
}

KINDS = sorted(adapter_kinds())


# -- helpers -----------------------------------------------------------------------------------


def _warning(msg_type: MsgType = MsgType.ALERT, wid: str = "W-CONTRACT") -> WarningContent:
    # In force now: adapters may refuse to send what has already expired.
    return make_warning(
        wid=wid,
        status=Status.EXERCISE,
        msg_type=msg_type,
        level=Level.ORANGE,
        headline="暴雨橙色预警",
        description="未来3小时降雨量将达50毫米以上。",
        instruction="请转移至安全地带。",
        area_codes=("611002101201",),
        lasting=timedelta(hours=6),
    )


def _batch(
    targets: Sequence[Target], channels: frozenset[Channel], *, start: int = 1, size: int = 0
) -> tuple[list[Dispatch], list[type[Outcome]]]:
    """A mixed batch over the targets on the given channels: alerts and a cancel, people
    and devices, first tries and retries; and the outcome type expected for each."""
    usable = [t for t in targets if t.channel in channels]
    assert any(t.expect is Accepted for t in usable), "the harness gives no accepted target"
    warnings = [_warning(MsgType.ALERT, "W-A"), _warning(MsgType.CANCEL, "W-C")]
    # Every fourth dispatch is for a Cancel.
    count = size or max(2 * len(usable), 4)
    batch: list[Dispatch] = []
    expected: list[type[Outcome]] = []
    for index, target in zip(range(count), itertools.cycle(usable), strict=False):
        person = target.channel in PERSON_CHANNELS
        batch.append(
            make_dispatch(
                channel=target.channel,
                delivery_id=start + index,
                address=target.address,
                audience=(Audience.PERSON if index % 2 else Audience.GRID_MEMBER)
                if person
                else Audience.DEVICE,
                target_id=f"T{index}",
                warning=warnings[1 if index % 4 == 3 else 0],
                attempt=1 + index % 3,
                text="【暴雨橙色预警】请转移至安全地带。",
            )
        )
        expected.append(target.expect)
    return batch, expected


def _secret_fields(model: type[BaseModel]) -> list[str]:
    return [
        name
        for name, info in model.model_fields.items()
        if info.annotation is SecretStr or SecretStr in getattr(info.annotation, "__args__", ())
    ]


def assert_secrets_redacted(settings: BaseModel, *shown: object) -> None:
    """No SecretStr value of the settings appears in how they or the given objects print."""
    for name in _secret_fields(type(settings)):
        secret = getattr(settings, name)
        assert secret is not None, f"the harness gives no value for secret field {name}"
        value = secret.get_secret_value()
        assert value, f"the harness gives an empty value for secret field {name}"
        renderings = {
            "repr(settings)": repr(settings),
            "str(settings)": str(settings),
            "settings.model_dump_json()": settings.model_dump_json(),
            "settings.model_dump()": repr(settings.model_dump()),
        }
        for index, item in enumerate(shown):
            renderings[f"repr(shown[{index}])"] = repr(item)
            renderings[f"str(shown[{index}])"] = str(item)
        for where, text in renderings.items():
            assert value not in text, f"secret field {name} is shown in {where}"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def factory(kind: str) -> AdapterFactory:
    return adapter_kinds()[kind]


@pytest.fixture
async def harness(kind: str) -> AsyncIterator[Harness]:
    row = HARNESSES.get(kind)
    if row is None:
        pytest.fail(
            f"adapter kind {kind!r} is installed but has no row in HARNESSES "
            "(tests/adapters/test_contract.py): add one so the contract checks it"
        )
    async with row() as harness:
        yield harness


@pytest.fixture
def settings(factory: AdapterFactory, harness: Harness) -> BaseModel:
    return factory.settings_model.model_validate(dict(harness.settings))


@pytest.fixture
async def adapter(
    factory: AdapterFactory, settings: BaseModel, harness: Harness, kind: str
) -> AsyncIterator[Adapter]:
    instance = factory(name=f"contract-{kind}", settings=settings, **harness.extra)
    yield instance
    async with asyncio.timeout(5):
        await instance.stop()


# -- the contract ------------------------------------------------------------------------------


def test_simulated_is_installed_and_first_in_the_table() -> None:
    assert "simulated" in KINDS
    assert list(HARNESSES)[:1] == ["simulated"]


def test_kind_has_a_harness(kind: str) -> None:
    assert kind in HARNESSES, (
        f"adapter kind {kind!r} is installed but has no row in HARNESSES: add one"
    )


def test_kind_matches_its_entry_point(kind: str, factory: AdapterFactory) -> None:
    (ep,) = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
    assert ep.load() is factory
    assert factory.kind == ep.name


def test_class_attributes(factory: AdapterFactory) -> None:
    assert isinstance(factory.kind, str)
    assert factory.kind
    assert type(factory.channels) is frozenset
    assert factory.channels
    assert all(isinstance(c, Channel) for c in factory.channels)
    assert isinstance(factory.settings_model, type)
    assert issubclass(factory.settings_model, BaseModel)
    assert isinstance(factory.max_batch, int)
    assert not isinstance(factory.max_batch, bool)
    assert 1 <= factory.max_batch <= 10_000
    assert isinstance(factory.description, str)
    assert factory.description.strip()
    assert "\n" not in factory.description


def test_settings_forbid_unknown_keys(factory: AdapterFactory, harness: Harness) -> None:
    with pytest.raises(ValidationError) as info:
        factory.settings_model.model_validate({**harness.settings, "surely_not_a_setting": 1})
    errors = info.value.errors()
    assert [(e["type"], e["loc"]) for e in errors] == [
        ("extra_forbidden", ("surely_not_a_setting",))
    ]


async def test_secrets_are_redacted(
    settings: BaseModel, adapter: Adapter, harness: Harness
) -> None:
    probe = await adapter.probe()
    assert_secrets_redacted(settings, adapter, probe, probe.details)
    context = RecordingContext(adapter.name)
    await adapter.start(context)
    probe = await adapter.probe()
    assert_secrets_redacted(settings, adapter, probe, probe.details)


def test_instances_satisfy_the_protocol(
    factory: AdapterFactory, adapter: Adapter, kind: str
) -> None:
    assert isinstance(adapter, Adapter)
    assert adapter.name == f"contract-{kind}"
    assert type(adapter).kind == factory.kind


async def test_send_answers_each_dispatch_in_order(
    factory: AdapterFactory, adapter: Adapter, harness: Harness
) -> None:
    context = RecordingContext(adapter.name)
    await adapter.start(context)
    batch, expected = _batch(harness.targets, factory.channels)
    assert len(set(expected)) > 1 or len(batch) > 1
    async with asyncio.timeout(10):
        outcomes = await adapter.send(batch)
    assert len(outcomes) == len(batch)
    assert [type(o) for o in outcomes] == expected
    assert check_outcomes(batch, outcomes) == list(outcomes)
    for outcome in outcomes:
        if isinstance(outcome, Accepted):
            assert isinstance(outcome.reference, str)
        else:
            assert isinstance(outcome.reason, str)
            assert outcome.reason
    ids = {d.delivery_id for d in batch}
    for report in context.reports:
        assert isinstance(report, Report)
        assert isinstance(report.state, ReportState)
        assert report.delivery_id is None or report.delivery_id in ids


async def test_send_a_full_batch(
    factory: AdapterFactory, adapter: Adapter, harness: Harness
) -> None:
    await adapter.start(RecordingContext(adapter.name))
    size = min(factory.max_batch, 1000)
    batch, expected = _batch(harness.targets, factory.channels, size=size)
    async with asyncio.timeout(30):
        outcomes = await adapter.send(batch)
    assert len(outcomes) == size
    assert [type(o) for o in outcomes] == expected


async def test_send_empty_batch(adapter: Adapter) -> None:
    await adapter.start(RecordingContext(adapter.name))
    async with asyncio.timeout(5):
        outcomes = await adapter.send([])
    assert len(outcomes) == 0
    assert check_outcomes([], outcomes) == []


async def test_probe_before_and_after_start(adapter: Adapter) -> None:
    results = []
    async with asyncio.timeout(10):
        results.append(await adapter.probe())
        await adapter.start(RecordingContext(adapter.name))
        results.append(await adapter.probe())
    for result in results:
        assert isinstance(result, ProbeResult)
        assert isinstance(result.ok, bool)
        assert isinstance(result.summary, str)
        assert result.summary
        assert isinstance(result.details, Mapping)


async def test_stop_is_idempotent_and_prompt(adapter: Adapter) -> None:
    async with asyncio.timeout(5):
        await adapter.stop()  # never started
        await adapter.start(RecordingContext(adapter.name))
        await adapter.stop()
        await adapter.stop()


async def test_lifecycle_twice(factory: AdapterFactory, adapter: Adapter, harness: Harness) -> None:
    tasks_before = asyncio.all_tasks()
    for round_ in range(2):
        context = RecordingContext(adapter.name)
        async with asyncio.timeout(10):
            await adapter.start(context)
        batch, expected = _batch(harness.targets, factory.channels, start=1000 * round_ + 1)
        async with asyncio.timeout(10):
            outcomes = await adapter.send(batch)
        assert [type(o) for o in outcomes] == expected
        async with asyncio.timeout(5):
            await adapter.stop()
    # stop() leaves no background task of the adapter behind.
    await asyncio.sleep(0)
    assert {t for t in asyncio.all_tasks() if not t.done()} <= tasks_before


# -- the checks catch what they are meant to catch ---------------------------------------------


class _LeakySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    token: SecretStr


class _LeakyAdapter:
    kind: ClassVar[str] = "leaky"

    def __init__(self, settings: _LeakySettings) -> None:
        self.settings = settings

    def __repr__(self) -> str:
        return f"_LeakyAdapter(token={self.settings.token.get_secret_value()})"


def test_redaction_check_catches_a_leak() -> None:
    settings = _LeakySettings(token=SecretStr("hunter2-secret"))
    assert_secrets_redacted(settings)  # the model itself redacts
    with pytest.raises(AssertionError, match="secret field token is shown in repr"):
        assert_secrets_redacted(settings, _LeakyAdapter(settings))
    with pytest.raises(AssertionError, match="shown in repr"):
        assert_secrets_redacted(settings, {"token": settings.token.get_secret_value()})


def test_redaction_check_requires_a_value() -> None:
    class Optional(BaseModel):
        token: SecretStr | None = None

    with pytest.raises(AssertionError, match="no value for secret field token"):
        assert_secrets_redacted(Optional())


def test_mixed_batch_covers_every_channel_and_both_outcomes() -> None:
    harness_targets = (
        Target(Channel.SMS, "+8613812345678"),
        Target(Channel.SMS, "+8613000000000", Failed),
        Target(Channel.SPEAKER, "SPK-1"),
    )
    batch, expected = _batch(harness_targets, frozenset({Channel.SMS, Channel.SPEAKER}))
    assert {d.channel for d in batch} == {Channel.SMS, Channel.SPEAKER}
    assert set(expected) == {Accepted, Failed}
    assert {d.warning.msg_type for d in batch} == {MsgType.ALERT, MsgType.CANCEL}
    assert len({d.delivery_id for d in batch}) == len(batch)
    # Channels the instance does not serve are left out.
    batch, _ = _batch(harness_targets, frozenset({Channel.SPEAKER}))
    assert {d.channel for d in batch} == {Channel.SPEAKER}

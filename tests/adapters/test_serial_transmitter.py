"""The ``serial_transmitter`` adapter against simulated transmitters on a real pty: what goes
over the line (decoded independently of the simulator), acknowledgements, every fault of the
line and of the transmitters, unplugging, probes and settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dispatches import make_dispatch, make_warning
from pydantic import ValidationError
from recording import RecordingContext
from waiting import wait_until

from adapters.serial_transmitter.adapter import SerialTransmitterAdapter
from adapters.serial_transmitter.framing import TocsinV1Profile
from adapters.serial_transmitter.messages import (
    Command,
    CommandKind,
    Content,
    ContentKind,
    FaultFlag,
    Flags,
    Level,
    Received,
)
from adapters.serial_transmitter.profiles import register_profile, unregister_profile
from adapters.serial_transmitter.settings import SerialTransmitterSettings
from adapters.serial_transmitter.simulator import SimulatedTransmitter, TransmitterBusDevice
from dispatcher.adapter import (
    Accepted,
    AdapterNotReady,
    Dispatch,
    Failed,
    ReportState,
    Retry,
    WarningContent,
)
from dispatcher.domain import Channel, MsgType, Status
from dispatcher.domain import Level as WarningLevel

EAST, WEST, OTHER_TOWN = "611002101201", "611002101202", "611002102000"
TEXT = "【红色预警】商州区暴雨红色预警。立即转移。"
#: The ack timeout of most tests: short, but far above a pty round trip.
ACK_TIMEOUT = 0.25


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[TransmitterBusDevice]:
    device = TransmitterBusDevice(
        transmitters=[
            SimulatedTransmitter(1, (EAST, WEST)),
            SimulatedTransmitter(2, (OTHER_TOWN,)),
        ],
        link=tmp_path / "tx",
        seed=1,
    )
    async with device:
        yield device


def settings_for(device: TransmitterBusDevice, **changes: object) -> SerialTransmitterSettings:
    return SerialTransmitterSettings.model_validate(
        {
            "port": device.path,
            "command_timeout": ACK_TIMEOUT,
            "resends": 2,
            "open_timeout": 2,
            "reopen_max": 0.2,
            "transmitters": ["1", "2"],
            "status_interval": 0,
            **changes,
        }
    )


@pytest.fixture
async def started(
    line: TransmitterBusDevice,
) -> AsyncIterator[tuple[SerialTransmitterAdapter, RecordingContext]]:
    adapter = SerialTransmitterAdapter(name="transmitters", settings=settings_for(line))
    context = RecordingContext(name="transmitters")
    async with asyncio.timeout(5):
        await adapter.start(context)
    yield adapter, context
    async with asyncio.timeout(5):
        await adapter.stop()


def warning(wid: str = "w1", msg_type: MsgType = MsgType.ALERT, **changes: Any) -> WarningContent:
    changes.setdefault("area_codes", (EAST, WEST))
    return make_warning(wid=wid, msg_type=msg_type, **changes)


def dispatch(
    delivery_id: int, address: str = "1", *, w: WarningContent | None = None, text: str = TEXT
) -> Dispatch:
    return make_dispatch(
        channel=Channel.TRANSMITTER,
        delivery_id=delivery_id,
        address=address,
        target_id=f"TX-{address}",
        area_code=EAST,
        warning=w or warning(),
        text=text,
    )


def on_the_line(device: TransmitterBusDevice) -> list[Received]:
    """Every frame the adapter wrote, decoded from the raw bytes by a fresh decoder (not the
    simulator's own reading of them)."""
    items = TocsinV1Profile().decoder().feed(bytes(device.received_bytes))
    assert all(isinstance(i, Received) for i in items), items
    return [i for i in items if isinstance(i, Received)]


# -- the happy path ------------------------------------------------------------------------------
async def test_play_is_acknowledged_with_the_warning_on_the_line(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, context = started
    async with asyncio.timeout(3):
        (outcome,) = await adapter.send([dispatch(41)])
    assert isinstance(outcome, Accepted)
    assert outcome.delivered
    assert outcome.reference.startswith("1:")
    assert outcome.detail["command"] == "play"
    assert outcome.detail["sends"] == 1
    (report,) = context.reports
    assert report.state is ReportState.ACKNOWLEDGED
    assert (report.delivery_id, report.from_address, report.warning_id) == (41, "1", "w1")
    assert report.detail["device_state"] == "played"

    plays = [f for f in on_the_line(line) if f.message.kind is CommandKind.PLAY]  # type: ignore[union-attr]
    (frame,) = plays
    command = frame.message
    assert isinstance(command, Command)
    assert frame.address == 1
    assert outcome.reference == f"1:{frame.seq}"
    assert command.warning_id == "w1"
    assert command.delivery_id == 41
    assert command.level is Level.RED
    assert command.flags is Flags.NONE
    assert command.areas == (EAST, WEST)
    assert command.content == Content(ContentKind.TEXT_GB18030, TEXT)
    assert command.repeat == 2
    assert command.volume is None
    assert command.expires == int(warning().expires.timestamp())
    assert line[1].broadcasts == [command]
    assert line[2].broadcasts == []


async def test_cancel_stops_the_referenced_warning(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, context = started
    cancel = warning("w1-cancel", MsgType.CANCEL, references=("w1",))
    async with asyncio.timeout(3):
        (outcome,) = await adapter.send([dispatch(7, w=cancel)])
    assert isinstance(outcome, Accepted)
    (stop,) = line[1].stops
    assert stop.kind is CommandKind.STOP
    assert stop.references == ("w1",)
    assert stop.warning_id == "w1-cancel"
    assert stop.content.kind is ContentKind.NONE
    assert line[1].broadcasts == []
    assert context.reports[0].detail["device_state"] == "stopped"


@pytest.mark.parametrize(
    ("status", "flag"),
    [(Status.TEST, Flags.TEST), (Status.EXERCISE, Flags.EXERCISE), (Status.DRAFT, Flags.TEST)],
)
async def test_tests_and_exercises_are_never_played_as_real(
    started: tuple[SerialTransmitterAdapter, RecordingContext],
    line: TransmitterBusDevice,
    status: Status,
    flag: Flags,
) -> None:
    adapter, context = started
    async with asyncio.timeout(3):
        (outcome,) = await adapter.send([dispatch(3, w=warning(status=status))])
    assert isinstance(outcome, Accepted)
    kinds = [f.message.kind for f in on_the_line(line)]  # type: ignore[union-attr]
    assert CommandKind.PLAY not in kinds
    (test,) = line[1].broadcasts
    assert test.kind is CommandKind.TEST
    assert test.flags == flag
    assert context.reports[0].detail["command"] == "test"


async def test_update_replaces_what_it_references(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, _ = started
    update = warning("w2", MsgType.UPDATE, references=("w1",), level=WarningLevel.ORANGE)
    async with asyncio.timeout(3):
        await adapter.send([dispatch(8, w=update)])
    (play,) = line[1].broadcasts
    assert play.kind is CommandKind.PLAY
    assert play.flags == Flags.UPDATE
    assert play.references == ("w1",)
    assert play.level is Level.ORANGE


async def test_a_batch_for_two_transmitters_on_one_bus(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, context = started
    w = warning(area_codes=("611002000000",))  # the county: both transmitters serve part of it
    async with asyncio.timeout(3):
        outcomes = await adapter.send([dispatch(1, "1", w=w), dispatch(2, "2", w=w)])
    assert [type(o) for o in outcomes] == [Accepted, Accepted]
    assert len(line[1].broadcasts) == len(line[2].broadcasts) == 1
    assert sorted(r.delivery_id for r in context.reports if r.delivery_id) == [1, 2]
    # One command in flight at a time: the frames on the line alternate command, answer.
    seqs = [f.seq for f in on_the_line(line)]
    assert seqs == sorted(seqs)


async def test_text_encoding_cut_and_stored_clips(line: TransmitterBusDevice) -> None:
    adapter = SerialTransmitterAdapter(
        name="t",
        settings=settings_for(
            line, text_encoding="utf-8", max_text_bytes=30, audio_clips={"山洪": 7}
        ),
    )
    await adapter.start(RecordingContext(name="transmitters"))
    try:
        async with asyncio.timeout(3):
            first, second = await adapter.send(
                [dispatch(1), dispatch(2, w=warning("w9", event="山洪"))]
            )
    finally:
        await adapter.stop()
    assert isinstance(first, Accepted)
    assert first.detail["text_cut_at"] == 10  # 30 bytes of 3-byte characters
    text_play, clip_play = line[1].broadcasts
    assert text_play.content == Content(ContentKind.TEXT_UTF8, TEXT[:10])
    assert clip_play.content == Content(ContentKind.AUDIO_ID, audio_id=7)
    assert isinstance(second, Accepted)
    assert second.detail["audio_id"] == 7


@pytest.mark.parametrize("status", [Status.TEST, Status.EXERCISE, Status.DRAFT])
async def test_a_test_never_broadcasts_a_stored_clip_of_the_real_warning(
    line: TransmitterBusDevice, status: Status
) -> None:
    # A stored clip is the real thing (a siren, a recorded evacuation order): a test of that
    # event says its text, which is marked as a test, never the clip.
    adapter = SerialTransmitterAdapter(
        name="t", settings=settings_for(line, audio_clips={"山洪": 7, "red": 1})
    )
    await adapter.start(RecordingContext(name="transmitters"))
    try:
        async with asyncio.timeout(3):
            (outcome,) = await adapter.send(
                [dispatch(1, w=warning("w9", event="山洪", status=status), text="【测试】" + TEXT)]
            )
    finally:
        await adapter.stop()
    assert isinstance(outcome, Accepted)
    (test,) = line[1].broadcasts
    assert test.kind is CommandKind.TEST
    assert test.content == Content(ContentKind.TEXT_GB18030, "【测试】" + TEXT)
    assert "audio_id" not in outcome.detail


async def test_directory_addresses_mapped_to_line_ids(line: TransmitterBusDevice) -> None:
    adapter = SerialTransmitterAdapter(
        name="t",
        settings=settings_for(
            line, addresses={"TX-611002101000": 1}, transmitters=["TX-611002101000"]
        ),
    )
    context = RecordingContext(name="transmitters")
    await adapter.start(context)
    try:
        async with asyncio.timeout(3):
            (outcome,) = await adapter.send([dispatch(5, "TX-611002101000")])
    finally:
        await adapter.stop()
    assert isinstance(outcome, Accepted)
    assert len(line[1].broadcasts) == 1
    assert context.reports[0].from_address == "TX-611002101000"
    # Device states carry the directory's address, as dispatches do.
    assert {s.address for s in context.statuses} == {"TX-611002101000"}


# -- transmitters that refuse --------------------------------------------------------------------
async def test_unknown_area_fails_with_the_codes(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, context = started
    elsewhere = warning(area_codes=("610524000000",))
    async with asyncio.timeout(3):
        (outcome,) = await adapter.send([dispatch(1, "2", w=elsewhere)])
    assert isinstance(outcome, Failed)
    assert "serves none of the areas" in outcome.reason
    assert "610524000000" in outcome.reason
    assert outcome.detail["unknown_areas"] == ["610524000000"]
    assert line[2].broadcasts == []
    assert context.reports == []


async def test_busy_fault_and_unsupported(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, context = started
    line[1].answer = "busy"
    line[1].busy_for = 12
    async with asyncio.timeout(3):
        (busy,) = await adapter.send([dispatch(1)])
    assert isinstance(busy, Retry)
    assert busy.after == 12
    assert "busy" in busy.reason

    line[1].answer = "fault"
    line[1].faults = FaultFlag.HIGH_VSWR
    async with asyncio.timeout(3):
        (fault,) = await adapter.send([dispatch(2)])
    assert isinstance(fault, Retry)
    assert "high_vswr" in fault.reason
    assert "amplifier" in fault.reason
    assert fault.detail["faults"] == ["high_vswr", "amplifier"]
    assert context.statuses[-1].detail["faults"] == ["high_vswr", "amplifier"]

    line[1].answer = "unsupported"
    async with asyncio.timeout(3):
        (unsupported,) = await adapter.send([dispatch(3)])
    assert isinstance(unsupported, Failed)
    assert "does not support" in unsupported.reason
    assert context.reports == []  # none of them was acknowledged


async def test_never_acknowledging_transmitter_resends_then_retry(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, context = started
    line[1].answer = "never"
    county = warning(area_codes=("611002000000",))
    began = time.monotonic()
    async with asyncio.timeout(5):
        first, second, other = await adapter.send(
            [dispatch(1, w=county), dispatch(2, w=county), dispatch(3, "2", w=county)]
        )
    elapsed = time.monotonic() - began
    assert isinstance(first, Retry)
    assert "did not answer 3 sends" in first.reason
    # The same frame three times (same sequence number): the transmitter acted once.
    sent = [seq for seq, c in line[1].commands if c.delivery_id == 1]
    assert len(sent) == 3
    assert len(set(sent)) == 1
    assert len(line[1].broadcasts) == 1
    assert line[1].duplicates == 2
    # Not waited for again in the same batch; the other transmitter still served.
    assert isinstance(second, Retry)
    assert [c.delivery_id for _, c in line[1].commands].count(2) == 0
    assert isinstance(other, Accepted)
    assert elapsed < 3 * ACK_TIMEOUT + 1.0
    offline = [s for s in context.statuses if s.address == "1" and not s.online]
    assert offline
    assert "did not answer" in offline[-1].detail["error"]


async def test_a_lost_answer_is_recovered_by_a_resend(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, _ = started
    line[1].drop_answers = 1
    async with asyncio.timeout(3):
        (outcome,) = await adapter.send([dispatch(1)])
    assert isinstance(outcome, Accepted)
    assert outcome.detail["sends"] == 2
    assert len(line[1].broadcasts) == 1  # the resend was not broadcast again


# -- a noisy or silent line ----------------------------------------------------------------------
async def test_garbage_answers_then_recovery(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, _ = started
    line.garbage = 1.0
    async with asyncio.timeout(5):
        (outcome,) = await adapter.send([dispatch(1)])
    assert isinstance(outcome, Retry)
    line.garbage = 0.0
    async with asyncio.timeout(3):
        (outcome,) = await adapter.send([dispatch(2)])
    assert isinstance(outcome, Accepted)
    bus = adapter.bus
    assert bus is not None
    assert bus.discarded > 0 or bus.counters.garbled > 0


async def test_answers_with_a_bad_crc_are_resent_early_then_retried(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, _ = started
    line.bad_crc = 1.0
    began = time.monotonic()
    async with asyncio.timeout(5):
        (outcome,) = await adapter.send([dispatch(1)])
    assert isinstance(outcome, Retry)
    assert "unreadable answer" in outcome.reason
    assert "bad CRC" in outcome.reason
    # Each corrupt answer triggers the resend at once, not after the ack timeout.
    assert time.monotonic() - began < 2 * ACK_TIMEOUT
    assert [c.kind for _, c in line[1].commands if c.delivery_id == 1] == [CommandKind.PLAY] * 3
    line.bad_crc = 0.0
    async with asyncio.timeout(3):
        (outcome,) = await adapter.send([dispatch(2)])
    assert isinstance(outcome, Accepted)


async def test_a_frame_with_a_bad_crc_is_answered_bad_crc_and_resent(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, _ = started
    bus = adapter.bus
    assert bus is not None
    # The line corrupts the adapter's first frame on its way to the transmitter.
    real_write = bus.link.write
    corrupted = []

    def corrupting_write(data: bytes) -> None:
        if not corrupted:
            corrupted.append(data)
            data = data[:-1] + bytes([data[-1] ^ 0x01])
        real_write(data)

    bus.link.write = corrupting_write  # type: ignore[method-assign]
    async with asyncio.timeout(3):
        (outcome,) = await adapter.send([dispatch(1)])
    assert isinstance(outcome, Accepted)
    assert outcome.detail["sends"] == 2
    assert [g.reason.startswith("bad CRC") for g in line.garbled] == [True]
    assert len(line[1].broadcasts) == 1


async def test_silent_line_then_recovery(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, context = started
    line.silent = True
    async with asyncio.timeout(5):
        (outcome,) = await adapter.send([dispatch(1)])
    assert isinstance(outcome, Retry)
    assert "heard nothing" in outcome.reason
    assert not context.statuses[-1].online
    line.silent = False
    async with asyncio.timeout(3):
        (outcome,) = await adapter.send([dispatch(2)])
    assert isinstance(outcome, Accepted)
    assert context.statuses[-1].online


async def test_a_slow_transmitter_within_the_timeout_is_fine(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, _ = started
    line.latency = ACK_TIMEOUT / 3
    async with asyncio.timeout(3):
        (outcome,) = await adapter.send([dispatch(1)])
    assert isinstance(outcome, Accepted)
    assert outcome.detail["sends"] == 1


# -- unplugging ----------------------------------------------------------------------------------
async def test_unplug_mid_send_then_replug(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, _ = started
    line.latency = 1.0  # the answer is still on its way when the cable is pulled
    sending = asyncio.create_task(adapter.send([dispatch(1), dispatch(2), dispatch(3, "2")]))
    await wait_until(lambda: line[1].commands, within=5, what="a command to transmitter 1")
    began = time.monotonic()
    line.unplug()
    async with asyncio.timeout(2):
        outcomes = await sending
    assert time.monotonic() - began < ACK_TIMEOUT  # told by the port, not by a timeout
    assert [type(o) for o in outcomes] == [Retry, Retry, Retry]
    assert adapter.not_ready_reason() is not None
    assert str(line.path) in (adapter.not_ready_reason() or "")
    async with asyncio.timeout(2):
        (outcome,) = await adapter.send([dispatch(4)])
    assert isinstance(outcome, Retry)

    line.latency = 0.0
    line.replug()
    await wait_until(lambda: adapter.not_ready_reason() is None, within=5, what="the adapter ready")
    async with asyncio.timeout(3):
        (outcome,) = await adapter.send([dispatch(5)])
    assert isinstance(outcome, Accepted)


async def test_stop_is_prompt_while_waiting_for_an_answer(
    line: TransmitterBusDevice,
) -> None:
    adapter = SerialTransmitterAdapter(
        name="t", settings=settings_for(line, command_timeout=10, transmitters=[])
    )
    await adapter.start(RecordingContext(name="transmitters"))
    line[1].answer = "never"
    sending = asyncio.create_task(adapter.send([dispatch(1), dispatch(2)]))
    await wait_until(lambda: line[1].commands, within=5, what="a command to transmitter 1")
    began = time.monotonic()
    async with asyncio.timeout(2):
        await adapter.stop()
        outcomes = await sending
    assert time.monotonic() - began < 1.0
    assert [type(o) for o in outcomes] == [Retry, Retry]
    await adapter.stop()  # twice is fine


# -- starting and probing ------------------------------------------------------------------------
async def test_start_on_a_missing_port_names_it(tmp_path: Path) -> None:
    settings = SerialTransmitterSettings(port=str(tmp_path / "nothing"))
    adapter = SerialTransmitterAdapter(name="t", settings=settings)
    with pytest.raises(AdapterNotReady, match=r"nothing: no such port"):
        async with asyncio.timeout(5):
            await adapter.start(RecordingContext(name="transmitters"))
    probe = await adapter.probe()
    assert not probe.ok
    assert "no such port" in probe.summary


async def test_start_when_no_transmitter_answers(line: TransmitterBusDevice) -> None:
    line.silent = True
    adapter = SerialTransmitterAdapter(name="t", settings=settings_for(line, resends=0))
    with pytest.raises(AdapterNotReady, match="no transmitter answered"):
        async with asyncio.timeout(5):
            await adapter.start(RecordingContext(name="transmitters"))
    assert adapter.bus is None


async def test_probe_before_and_after_start(line: TransmitterBusDevice) -> None:
    line[2].answer = "never"
    adapter = SerialTransmitterAdapter(name="t", settings=settings_for(line, resends=0))
    async with asyncio.timeout(5):
        before = await adapter.probe()
    assert before.ok
    assert "1 of 2 transmitters answered" in before.summary
    assert "88.100 MHz" in before.summary
    shown = before.details["transmitters"]
    assert shown["1"]["online"] is True
    assert shown["1"]["frequency_mhz"] == 88.1
    assert shown["1"]["firmware"] == "TOCSIN-SIM-1.0"
    assert shown["2"]["online"] is False
    assert line[1].status_queries == 1
    context = RecordingContext(name="transmitters")
    await adapter.start(context)
    try:
        line[2].answer = "ok"
        async with asyncio.timeout(5):
            after = await adapter.probe()
        assert "2 of 2 transmitters answered" in after.summary
    finally:
        await adapter.stop()
    assert any(s.address == "2" and s.online for s in context.statuses)


async def test_probe_with_nothing_to_query(line: TransmitterBusDevice) -> None:
    adapter = SerialTransmitterAdapter(name="t", settings=settings_for(line, transmitters=[]))
    probe = await adapter.probe()
    assert probe.ok
    assert "no transmitters configured" in probe.summary


async def test_periodic_status_poll_reports_device_states(line: TransmitterBusDevice) -> None:
    line[2].faults = FaultFlag.MAINS_LOST
    adapter = SerialTransmitterAdapter(name="t", settings=settings_for(line, status_interval=0.05))
    context = RecordingContext(name="transmitters")
    await adapter.start(context)
    try:
        await wait_until(
            lambda: line[2].status_queries >= 3,
            within=5,
            what="three status polls",
        )
    finally:
        await adapter.stop()
    two = [s for s in context.statuses if s.address == "2"]
    assert two[-1].online
    assert two[-1].detail["faults"] == ["mains_lost"]
    assert two[-1].detail["forward_power_w"] == 50.0


# -- dispatches that cannot be sent --------------------------------------------------------------
async def test_bad_addresses_and_expired_warnings_fail_at_once(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    adapter, _ = started
    past = datetime.now(UTC) - timedelta(minutes=1)
    async with asyncio.timeout(2):
        outcomes = await adapter.send(
            [
                dispatch(1, "TX-unknown"),
                dispatch(2, "area:611002101201"),
                dispatch(3, w=warning(expires=past)),
                dispatch(4, w=warning(area_codes=("nonsense",))),
            ]
        )
    assert [type(o) for o in outcomes] == [Failed, Failed, Failed, Accepted]
    assert "not a number" in outcomes[0].reason  # type: ignore[union-attr]
    assert "--to" in outcomes[1].reason  # type: ignore[union-attr]
    assert "expired" in outcomes[2].reason  # type: ignore[union-attr]
    # A warning without a usable area falls back to the target's village.
    assert isinstance(outcomes[3], Accepted)
    assert line[1].broadcasts[-1].areas == (EAST,)


async def test_send_before_start_retries(line: TransmitterBusDevice) -> None:
    adapter = SerialTransmitterAdapter(name="t", settings=settings_for(line))
    (outcome,) = await adapter.send([dispatch(1)])
    assert isinstance(outcome, Retry)


async def test_batch_budget_bounds_a_send(line: TransmitterBusDevice) -> None:
    line[1].answer = "never"
    adapter = SerialTransmitterAdapter(
        name="t", settings=settings_for(line, batch_budget=0.1, transmitters=[])
    )
    await adapter.start(RecordingContext(name="transmitters"))
    try:
        async with asyncio.timeout(3):
            outcomes = await adapter.send([dispatch(1), dispatch(2, "2")])
    finally:
        await adapter.stop()
    assert isinstance(outcomes[1], Retry)
    assert "its time on the line" in outcomes[1].reason
    assert line[2].commands == []


# -- a second framing profile --------------------------------------------------------------------
class WakeUpProfile(TocsinV1Profile):
    """A vendor-style variation: two FF bytes before each frame to wake a radio modem."""

    name = "lab-wakeup"

    def encode_command(self, command: Command, *, seq: int, address: int) -> bytes:
        return b"\xff\xff" + super().encode_command(command, seq=seq, address=address)


async def test_a_registered_profile_drives_the_line(tmp_path: Path) -> None:
    register_profile("lab-wakeup", WakeUpProfile)
    try:
        async with TransmitterBusDevice(
            transmitters=[SimulatedTransmitter(9, (EAST,))],
            profile="lab-wakeup",
            link=tmp_path / "lab",
        ) as device:
            adapter = SerialTransmitterAdapter(
                name="t",
                settings=settings_for(device, profile="lab-wakeup", transmitters=["9"]),
            )
            await adapter.start(RecordingContext(name="transmitters"))
            try:
                async with asyncio.timeout(3):
                    (outcome,) = await adapter.send([dispatch(1, "9")])
            finally:
                await adapter.stop()
            assert isinstance(outcome, Accepted)
            assert bytes(device.received_bytes).startswith(b"\xff\xff\x7e")
            assert len(device[9].broadcasts) == 1
    finally:
        unregister_profile("lab-wakeup")


# -- settings ------------------------------------------------------------------------------------
def test_settings_validation() -> None:
    ok = SerialTransmitterSettings.model_validate(
        {"port": "/dev/ttyUSB0", "transmitters": [12, "0x0d"]}
    )
    assert ok.transmitters == ("12", "0x0d")
    assert ok.baudrate == 9600
    assert ok.profile == "tocsin-v1"
    with pytest.raises(ValidationError, match="unknown framing profile 'acme'"):
        SerialTransmitterSettings.model_validate({"port": "/dev/ttyUSB0", "profile": "acme"})
    with pytest.raises(ValidationError, match="outside 1–65534"):
        SerialTransmitterSettings.model_validate({"port": "/dev/ttyUSB0", "transmitters": [0]})
    with pytest.raises(ValidationError, match="not a number"):
        SerialTransmitterSettings.model_validate({"port": "/dev/ttyUSB0", "transmitters": ["TX"]})
    with pytest.raises(ValidationError, match="max_text_bytes"):
        SerialTransmitterSettings.model_validate({"port": "/dev/ttyUSB0", "max_text_bytes": 5000})
    with pytest.raises(ValidationError, match="not a device path"):
        SerialTransmitterSettings.model_validate({"port": "ttyUSB0"})


async def test_a_new_command_never_reuses_the_sequence_number_a_transmitter_remembers(
    started: tuple[SerialTransmitterAdapter, RecordingContext], line: TransmitterBusDevice
) -> None:
    # The sequence number is one counter for the whole bus: status polls of many transmitters
    # wrap it every few hours. A transmitter takes a command with the SEQ of the last one it
    # acted on for a resend and does not broadcast it: a new warning must never get it.
    adapter, _ = started
    bus = adapter.bus
    assert bus is not None
    async with asyncio.timeout(3):
        (first,) = await adapter.send([dispatch(1)])
    assert isinstance(first, Accepted)
    remembered = line[1].last
    assert remembered is not None
    # 65535 commands later (polls of the other transmitters), the counter is back there.
    bus._seq = (remembered[0] - 1) % 0x1_0000
    async with asyncio.timeout(3):
        (second,) = await adapter.send([dispatch(2, w=warning("w2"))])
    assert isinstance(second, Accepted)
    assert [c.warning_id for c in line[1].broadcasts] == ["w1", "w2"]
    assert line[1].duplicates == 0

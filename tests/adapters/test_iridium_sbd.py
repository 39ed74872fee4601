"""The ``iridium_sbd`` adapter against its simulated 9602 on a real pty: what reaches the
gateway (read back with the compact decoder), replies through SBDRING/SBDRB, every MO failure
class, the 340-byte limit, a transceiver that answers ERROR, noise or nothing, unplugging mid
session, stop() during a hanging session, and probes."""

from __future__ import annotations

import argparse
import asyncio
import time
import tomllib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dispatches import make_dispatch, make_warning
from recording import RecordingContext
from waiting import wait_until

from adapters.iridium_sbd.adapter import IridiumSbdAdapter
from adapters.iridium_sbd.compact import (
    CONFIRM_TAIL,
    MO_LIMIT,
    MT_LIMIT,
    encode_reply,
    sbd_checksum,
    warning_ref,
)
from adapters.iridium_sbd.settings import IridiumSbdSettings
from adapters.iridium_sbd.simulator import DEFAULT_IMEI, IridiumSimulator, settings_hint
from adapters.iridium_sbd.status import MO_STATUS, Verdict
from adapters.serial_link.at import AtChannel
from adapters.serial_link.simulator import parser_for
from dispatcher.adapter import (
    Accepted,
    AdapterNotReady,
    Dispatch,
    Failed,
    ReportState,
    Retry,
    WarningContent,
)
from dispatcher.domain import Channel, Level, MsgType, Status

TERMINAL = "300234010000001"
OTHER_TERMINAL = "300234010000002"
VILLAGE = "611002001001"
TEXT = "【红色预警】商州区暴雨红色预警。立即转移。有效至07月01日18:00。" + CONFIRM_TAIL


def dispatch(
    delivery_id: int = 101,
    address: str = TERMINAL,
    *,
    w: WarningContent | None = None,
    text: str = TEXT,
) -> Dispatch:
    return make_dispatch(
        channel=Channel.MODEM,
        delivery_id=delivery_id,
        address=address,
        target_id="t-" + address[-4:],
        area_code=VILLAGE,
        warning=w,
        text=text,
    )


def settings_for(device: IridiumSimulator, **changes: object) -> IridiumSbdSettings:
    return IridiumSbdSettings.model_validate(
        {
            "port": device.path,
            "command_timeout": 0.5,
            "open_timeout": 2.0,
            "session_timeout": 2.0,
            "session_interval": 0.0,
            "reopen_max": 0.2,
            "no_signal_retry": 30.0,
            **changes,
        }
    )


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[IridiumSimulator]:
    async with IridiumSimulator(link=tmp_path / "iridium", session_time=0.02) as sim:
        yield sim


@pytest.fixture
async def started(
    device: IridiumSimulator,
) -> AsyncIterator[tuple[IridiumSbdAdapter, RecordingContext]]:
    adapter = IridiumSbdAdapter(name="satellite", settings=settings_for(device))
    context = RecordingContext(name="satellite")
    async with asyncio.timeout(5):
        await adapter.start(context)
    yield adapter, context
    async with asyncio.timeout(5):
        await adapter.stop()


async def send_one(adapter: IridiumSbdAdapter, d: Dispatch, within: float = 8.0) -> object:
    async with asyncio.timeout(within):
        (outcome,) = await adapter.send([d])
    return outcome


# -- happy path --------------------------------------------------------------------------------
async def test_a_warning_reaches_the_gateway_as_a_compact_message(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, _ = started
    w = make_warning(references=("w0",), msg_type=MsgType.UPDATE)
    outcome = await send_one(adapter, dispatch(w=w))
    assert isinstance(outcome, Accepted)
    assert outcome.reference == "0"  # the MOMSN of the session
    assert outcome.detail["mo_status"] == 0 and outcome.detail["signal"] == 5
    (got,) = device.gateway
    assert len(got.data) <= MO_LIMIT
    decoded = got.warning()
    assert decoded.recipient == TERMINAL
    assert decoded.delivery_id == 101
    assert decoded.ref == warning_ref("w1")
    assert decoded.references == (warning_ref("w0"),)
    assert (decoded.msg_type, decoded.status, decoded.level) == (
        MsgType.UPDATE,
        Status.ACTUAL,
        Level.RED,
    )
    assert decoded.areas == (VILLAGE, "6110")
    assert decoded.text == TEXT
    assert decoded.expires == w.expires
    # Set up at open, then one session: signal, write, session, MO buffer cleared.
    assert device.commands[:4] == ["ATE0", "AT&K0", "AT+SBDMTA=1", "AT+SBDD2"]
    session = device.commands[device.commands.index("AT+CSQ") :]
    assert session == ["AT+CSQ", f"AT+SBDWB={len(got.data)}", "AT+SBDIX", "AT+SBDD0"]
    assert adapter.not_ready_reason() is None


async def test_a_test_warning_travels_as_a_test(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, _ = started
    outcome = await send_one(adapter, dispatch(w=make_warning(status=Status.TEST)))
    assert isinstance(outcome, Accepted)
    assert device.warnings()[0].status is Status.TEST


async def test_sessions_run_one_at_a_time(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, _ = started
    device.session_time = 0.1
    async with asyncio.timeout(8):
        outcomes = await asyncio.gather(
            *(adapter.send([dispatch(100 + i, f"30023401000000{i}")]) for i in range(3))
        )
    assert all(isinstance(o, Accepted) for (o,) in outcomes)
    assert device.busy_refusals == 0
    assert sorted(w.delivery_id for w in device.warnings()) == [100, 101, 102]
    assert sorted(o.reference for (o,) in outcomes) == ["0", "1", "2"]  # type: ignore[union-attr]


async def test_the_pace_between_sessions_is_kept(device: IridiumSimulator) -> None:
    adapter = IridiumSbdAdapter(
        name="satellite", settings=settings_for(device, session_interval=0.3)
    )
    assert adapter.send_rate().per_second == pytest.approx(1 / 0.3)
    await adapter.start(RecordingContext(name="satellite"))
    try:
        started_at = time.monotonic()
        for i in range(2):
            assert isinstance(await send_one(adapter, dispatch(200 + i)), Accepted)
        assert time.monotonic() - started_at >= 0.3
    finally:
        await adapter.stop()


# -- replies -----------------------------------------------------------------------------------
async def test_a_reply_after_a_ring_alert_acknowledges_the_delivery(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, context = started
    assert isinstance(await send_one(adapter, dispatch()), Accepted)
    device.queue_reply(encode_reply(delivery_id=101, ref=warning_ref("w1"), imei=TERMINAL))
    await wait_until(lambda: bool(context.reports), within=5, what="a report")
    (report,) = context.reports
    assert report.state is ReportState.ACKNOWLEDGED
    assert (report.delivery_id, report.from_address, report.warning_id) == (101, TERMINAL, "w1")
    assert report.detail["answer"] == "1"
    # Ring alert → clear the MO buffer (nothing to send), session, read the MT message.
    tail = device.commands[-3:]
    assert tail == ["AT+SBDD0", "AT+SBDIXA", "AT+SBDRB"]
    assert len(device.gateway) == 1  # the mailbox check did not resend the warning
    assert context.statuses[-1].address == TERMINAL and context.statuses[-1].online


async def test_a_reply_naming_only_the_warning_is_matched_to_what_was_sent(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, context = started
    assert isinstance(await send_one(adapter, dispatch(delivery_id=555)), Accepted)
    device.queue_reply(encode_reply(delivery_id=0, ref=warning_ref("w1"), imei=TERMINAL))
    await wait_until(lambda: bool(context.reports), within=5, what="a report")
    assert context.reports[0].delivery_id == 555
    assert context.reports[0].from_address == TERMINAL


async def test_a_reply_arriving_with_a_send_session_is_read_too(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, context = started
    device.ring_alerts = False  # no SBDRING: only a session finds the reply
    assert isinstance(await send_one(adapter, dispatch(101)), Accepted)
    device.queue_reply(encode_reply(delivery_id=101, ref=warning_ref("w1"), imei=TERMINAL))
    assert not context.reports
    assert isinstance(await send_one(adapter, dispatch(102, OTHER_TERMINAL)), Accepted)
    assert [r.delivery_id for r in context.reports] == [101]
    assert "AT+SBDIXA" not in device.commands


async def test_a_ring_during_a_send_session_costs_no_extra_session(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, context = started
    device.session_time = 0.2
    sending = asyncio.create_task(adapter.send([dispatch(101)]))
    await wait_until(lambda: device.in_session, within=5, what="a session")
    device.queue_reply(encode_reply(delivery_id=101, ref=warning_ref("w1"), imei=TERMINAL))
    async with asyncio.timeout(5):
        (outcome,) = await sending
    assert isinstance(outcome, Accepted)
    await wait_until(lambda: bool(context.reports), within=5, what="a report")
    await asyncio.sleep(0.1)  # room for a needless mailbox check to start, if one would
    assert "AT+SBDIXA" not in device.commands
    assert device.sessions == 1


async def test_malformed_and_unconfirming_replies_are_dropped(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, context = started
    assert isinstance(await send_one(adapter, dispatch()), Accepted)
    device.queue_reply(b"hello from nowhere")
    device.queue_reply(
        encode_reply(delivery_id=101, ref=warning_ref("w1"), imei=TERMINAL, answer="不知道")
    )
    # A terminal naming a warning Tocsin never sent it, without a delivery id.
    device.queue_reply(encode_reply(delivery_id=0, ref=warning_ref("w9"), imei=OTHER_TERMINAL))
    await wait_until(lambda: adapter.counters.replies == 3, within=5, what="three replies")
    assert adapter.counters.malformed == 1
    assert adapter.counters.unmatched == 1
    assert context.reports == []


async def test_the_simulated_terminals_confirm_by_themselves(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, context = started
    device.auto_reply = True
    assert isinstance(await send_one(adapter, dispatch(77)), Accepted)
    await wait_until(lambda: bool(context.reports), within=5, what="a report")
    assert (context.reports[0].delivery_id, context.reports[0].from_address) == (77, TERMINAL)


# -- MO failures -------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [*range(10, 20), *range(32, 39), 64, 65])
async def test_every_mo_failure_class(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator, code: int
) -> None:
    adapter, _ = started
    device.script_mo(code)
    outcome = await send_one(adapter, dispatch())
    expected = MO_STATUS[code]
    assert isinstance(outcome, Retry if expected.verdict is Verdict.RETRY else Failed)
    assert outcome.reason.startswith(f"MO status {code}: ")
    assert outcome.detail["mo_status"] == code
    if isinstance(outcome, Retry):
        assert outcome.after == expected.after
    assert device.gateway == []
    # The next session works (the script is used up).
    assert isinstance(await send_one(adapter, dispatch()), Accepted)


async def test_access_denied_fails_with_a_provisioning_hint(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, _ = started
    device.script_mo(15)
    outcome = await send_one(adapter, dispatch())
    assert isinstance(outcome, Failed)
    assert "provisioned" in outcome.reason


async def test_no_signal_means_no_session(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, _ = started
    device.set_signal(0)
    outcome = await send_one(adapter, dispatch())
    assert isinstance(outcome, Retry)
    assert outcome.after == 30.0 and "0 of 5 bars" in outcome.reason
    assert "AT+SBDWB" not in " ".join(device.commands)
    assert device.sessions == 0


# -- what cannot be sent -----------------------------------------------------------------------
async def test_what_can_never_be_sent_fails_without_a_session(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, _ = started
    past = datetime.now(UTC) - timedelta(hours=1)
    outcomes = (
        await asyncio.wait_for(adapter.send([dispatch(address="+8613800000000")]), 5)
        + await asyncio.wait_for(
            adapter.send([dispatch(w=make_warning(expires=past, sent=past - timedelta(hours=1)))]),
            5,
        )
        + await asyncio.wait_for(adapter.send([dispatch(w=make_warning(status=Status.DRAFT))]), 5)
    )
    assert [type(o) for o in outcomes] == [Failed, Failed, Failed]
    assert "IMEI" in outcomes[0].reason  # type: ignore[union-attr]
    assert "expired" in outcomes[1].reason  # type: ignore[union-attr]
    assert "Draft" in outcomes[2].reason  # type: ignore[union-attr]
    assert device.sessions == 0


async def test_a_very_long_chinese_text_fits_340_bytes(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, _ = started
    long_text = (
        "【红色预警】" + "山洪泥石流风险极高，请沿河群众立即向高处转移。" * 30 + CONFIRM_TAIL
    )
    outcome = await send_one(adapter, dispatch(text=long_text))
    assert isinstance(outcome, Accepted)
    assert outcome.detail["bytes"] <= MO_LIMIT
    decoded = device.warnings()[0]
    assert decoded.text_shortened
    assert decoded.text.endswith("…" + CONFIRM_TAIL)
    assert long_text.startswith(decoded.text.removesuffix("…" + CONFIRM_TAIL))


async def test_rockblock_routing_prefixes_the_serial_within_340_bytes(
    device: IridiumSimulator,
) -> None:
    settings = settings_for(device, routing="rockblock", rockblock_serials={TERMINAL: "1234"})
    adapter = IridiumSbdAdapter(name="satellite", settings=settings)
    await adapter.start(RecordingContext(name="satellite"))
    try:
        long_text = "暴雨" * 400
        assert isinstance(await send_one(adapter, dispatch(text=long_text)), Accepted)
        unknown = await send_one(adapter, dispatch(address=OTHER_TERMINAL))
    finally:
        await adapter.stop()
    (got,) = device.gateway
    assert got.data.startswith(b"RB0001234T")
    assert len(got.data) <= MO_LIMIT
    assert got.warning().text.endswith("…")
    assert isinstance(unknown, Failed) and "rockblock_serials" in unknown.reason


# -- a transceiver misbehaving -----------------------------------------------------------------
@pytest.mark.parametrize("fault", ["error", "garbage", "silent"])
async def test_error_garbage_or_silence_is_retried_then_recovers(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator, fault: str
) -> None:
    adapter, _ = started
    if fault == "error":
        device.error_rate = 1.0
    elif fault == "garbage":
        device.garbage = 1.0
    else:
        device.silent = True
    began = time.monotonic()
    outcome = await send_one(adapter, dispatch(), within=5)
    assert isinstance(outcome, Retry)
    assert time.monotonic() - began < 3  # bounded by command_timeout, never a hang
    assert device.gateway == []
    device.error_rate, device.garbage, device.silent = 0.0, 0.0, False
    assert isinstance(await send_one(adapter, dispatch(), within=6), Accepted)


async def test_a_session_that_never_ends_times_out(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, _ = started
    device.hang_sessions = True
    outcome = await send_one(adapter, dispatch(), within=5)
    assert isinstance(outcome, Retry) and "AT+SBDIX" in outcome.reason
    assert outcome.detail["stage"] == "session"


async def test_unplugged_mid_session_retries_then_recovers_after_replug(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, _ = started
    device.session_time = 1.5
    sending = asyncio.create_task(adapter.send([dispatch()]))
    await wait_until(lambda: device.in_session, within=5, what="a session")
    device.unplug()
    async with asyncio.timeout(2):
        (outcome,) = await sending
    assert isinstance(outcome, Retry)
    assert outcome.detail["stage"] == "session"
    await wait_until(
        lambda: adapter.not_ready_reason() is not None, within=2, what="the adapter not ready"
    )
    assert device.path in (adapter.not_ready_reason() or "")
    while_away = await send_one(adapter, dispatch(102), within=2)
    assert isinstance(while_away, Retry) and "not ready" in while_away.reason
    device.session_time = 0.02
    device.replug()
    await wait_until(
        lambda: adapter.not_ready_reason() is None, within=5, what="the adapter ready again"
    )
    assert device.commands.count("AT+SBDMTA=1") == 2  # set up again after the replug
    assert isinstance(await send_one(adapter, dispatch(103)), Accepted)
    assert [w.delivery_id for w in device.warnings()] == [103]


async def test_a_send_abandoned_mid_session_leaves_the_line_in_step(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    adapter, _ = started
    device.session_time = 0.3
    abandoned = asyncio.create_task(adapter.send([dispatch(301)]))
    await wait_until(lambda: device.in_session, within=5, what="a session")
    abandoned.cancel()  # what the engine does at its send_timeout
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    assert adapter.room() == 0  # the session still owns the transceiver
    # The next session waits for it, and neither takes the other's answer.
    assert isinstance(await send_one(adapter, dispatch(302)), Accepted)
    assert [w.delivery_id for w in device.warnings()] == [301, 302]
    assert adapter.room() == 1


async def test_stop_is_prompt_during_a_hanging_session(device: IridiumSimulator) -> None:
    adapter = IridiumSbdAdapter(
        name="satellite", settings=settings_for(device, session_timeout=60.0)
    )
    await adapter.start(RecordingContext(name="satellite"))
    device.hang_sessions = True
    sending = asyncio.create_task(adapter.send([dispatch()]))
    await wait_until(lambda: device.in_session, within=5, what="a session")
    began = time.monotonic()
    async with asyncio.timeout(2):
        await adapter.stop()
        (outcome,) = await sending
    assert time.monotonic() - began < 1.0
    assert isinstance(outcome, Retry)
    await adapter.stop()  # twice is fine


# -- start and probe ---------------------------------------------------------------------------
async def test_start_on_a_missing_port_names_it(tmp_path: Path) -> None:
    port = str(tmp_path / "ttyUSB9")
    adapter = IridiumSbdAdapter(
        name="satellite",
        settings=IridiumSbdSettings(port=port, open_timeout=1.0, command_timeout=0.5),
    )
    with pytest.raises(AdapterNotReady, match="ttyUSB9: no such port"):
        async with asyncio.timeout(3):
            await adapter.start(RecordingContext(name="satellite"))
    assert adapter.not_ready_reason() == "not started"
    probe = await asyncio.wait_for(adapter.probe(), 3)
    assert not probe.ok and "ttyUSB9" in probe.summary


async def test_start_against_a_silent_device_is_not_ready(device: IridiumSimulator) -> None:
    device.silent = True
    adapter = IridiumSbdAdapter(name="satellite", settings=settings_for(device, open_timeout=1.0))
    with pytest.raises(AdapterNotReady, match=device.path):
        async with asyncio.timeout(4):
            await adapter.start(RecordingContext(name="satellite"))


async def test_probe_before_and_after_start(device: IridiumSimulator) -> None:
    adapter = IridiumSbdAdapter(name="satellite", settings=settings_for(device))
    async with asyncio.timeout(5):
        before = await adapter.probe()
    assert before.ok
    assert "IRIDIUM 9600 Family" in before.summary and DEFAULT_IMEI in before.summary
    assert before.details["firmware"] == "TA16005"
    assert before.details["signal_bars"] == 5
    await adapter.start(RecordingContext(name="satellite"))
    try:
        device.set_signal(0)
        async with asyncio.timeout(5):
            after = await adapter.probe()
        assert not after.ok and "no satellite signal" in after.summary
        assert "counters" in after.details
        assert adapter.identity["imei"] == DEFAULT_IMEI
    finally:
        await adapter.stop()


# -- the simulator itself ----------------------------------------------------------------------
async def test_the_simulator_answers_sbdwb_codes_1_2_3(device: IridiumSimulator) -> None:
    device.write_timeout = 0.2
    channel = AtChannel(
        port=device.path, baudrate=19200, name="t", on_urc=lambda _u: None, command_timeout=1.0
    )
    await channel.open(within=2)
    try:
        wrong_size = await channel.command("AT+SBDWB=341", payload=b"x", prompt=b"READY\r\n")
        assert wrong_size.lines == ("3",)
        bad = await channel.command("AT+SBDWB=5", payload=b"hello\x00\x00", prompt=b"READY\r\n")
        assert bad.lines == ("2",)
        short = await channel.command("AT+SBDWB=5", payload=b"he", prompt=b"READY\r\n")
        assert short.lines == ("1",)
        good = await channel.command(
            "AT+SBDWB=5", payload=b"hello" + sbd_checksum(b"hello"), prompt=b"READY\r\n"
        )
        assert good.lines == ("0",)
        assert device.mo_buffer == b"hello"
        empty = await channel.command("AT+SBDRB", binary_reply=True)
        assert empty.binary == b""
    finally:
        await channel.close()


def test_the_cli_profile_builds_and_its_hint_is_valid_settings(tmp_path: Path) -> None:
    argv = ["--profile", "iridium", "--signal", "2", "--mo-status", "32,0", "--no-auto-reply"]
    parser, module = parser_for(argv)
    assert module is not None
    args = parser.parse_args(argv)
    sim = module.build(args, link=str(tmp_path / "iridium"))
    assert isinstance(sim, IridiumSimulator)
    assert sim.signal == 2 and list(sim.mo_script) == [32, 0] and not sim.auto_reply
    with pytest.raises(SystemExit):
        parser.parse_args(["--profile", "iridium", "--signal", "7"])
    hint = tomllib.loads(settings_hint(str(tmp_path / "iridium")))
    block = hint["adapters"]["satellite"]
    assert block["kind"] == "iridium_sbd"
    IridiumSbdSettings.model_validate(block["settings"])
    assert isinstance(args, argparse.Namespace)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="not an IMEI"):
        IridiumSbdSettings(port="/dev/ttyUSB0", routing="rockblock", rockblock_serials={"1": "2"})
    with pytest.raises(ValueError, match="routing"):
        IridiumSbdSettings(port="/dev/ttyUSB0", rockblock_serials={TERMINAL: "12"})
    with pytest.raises(ValueError, match="session_timeout"):
        IridiumSbdSettings(port="/dev/ttyUSB0", session_timeout=5, command_timeout=10)
    assert IridiumSbdSettings(port="/dev/ttyUSB0").baudrate == 19200


# -- what a 9602/9603 terminal can receive -----------------------------------------------------
async def test_a_long_warning_fits_what_the_terminal_can_receive(
    started: tuple[IridiumSbdAdapter, RecordingContext], device: IridiumSimulator
) -> None:
    # The gateway hands the village terminal the message as a mobile-terminated one: a
    # 9602/9603 takes at most 270 bytes, so a longer MO message never reaches it.
    adapter, context = started
    device.auto_reply = True
    long_text = "【红色预警】" + "山洪泥石流风险极高，请立即向高处转移。" * 30 + CONFIRM_TAIL
    outcome = await send_one(adapter, dispatch(text=long_text))
    assert isinstance(outcome, Accepted)
    assert outcome.detail["bytes"] <= MT_LIMIT
    decoded = device.warnings()[0]
    assert decoded.text.endswith("…" + CONFIRM_TAIL)
    await wait_until(lambda: bool(context.reports), within=5, what="the terminal's confirmation")
    assert context.reports[0].delivery_id == 101


async def test_rockblock_routing_fits_the_prefix_and_warning_in_an_mt_message(
    device: IridiumSimulator,
) -> None:
    settings = settings_for(device, routing="rockblock", rockblock_serials={TERMINAL: "1234"})
    adapter = IridiumSbdAdapter(name="satellite", settings=settings)
    await adapter.start(RecordingContext(name="satellite"))
    try:
        assert isinstance(await send_one(adapter, dispatch(text="暴雨" * 400)), Accepted)
    finally:
        await adapter.stop()
    (got,) = device.gateway
    assert got.data.startswith(b"RB0001234T")
    assert len(got.data) <= MT_LIMIT


async def test_a_reply_that_cannot_be_read_does_not_undo_a_sent_warning(
    started: tuple[IridiumSbdAdapter, RecordingContext],
    device: IridiumSimulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The MO message went (status 0) and a reply came back with the session; reading it
    # (AT+SBDRB) hits line noise once. The warning is sent — a Retry would send it twice —
    # and the reply, still in the transceiver's MT buffer, is read again.
    adapter, context = started
    device.ring_alerts = False
    device.queue_reply(encode_reply(delivery_id=7, ref=warning_ref("w0"), imei=OTHER_TERMINAL))
    original = device.handle
    noisy = [True]

    def handle(command: str) -> object:
        if command.upper() == "AT+SBDRB" and noisy and noisy.pop():
            block = len(device.mt_buffer).to_bytes(2, "big") + device.mt_buffer
            device.raw_answer(block + b"\x00\x00\r\nOK\r\n")  # a wrong checksum
            return ()
        return original(command)

    monkeypatch.setattr(device, "handle", handle)
    outcome = await send_one(adapter, dispatch(101))
    assert isinstance(outcome, Accepted), outcome
    assert len(device.gateway) == 1
    await wait_until(lambda: bool(context.reports), within=5, what="the reply read again")
    assert context.reports[0].delivery_id == 7

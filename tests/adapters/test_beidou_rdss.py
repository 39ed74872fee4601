"""The beidou_rdss adapter against the simulated terminal on a real pseudo-terminal: sending and
pacing to the card's service interval, frequency-limit feedback, replies as acknowledgements,
refusals, no signal, noise and silence, unplugging, stop() while a send waits, probe, and the
simulator's command-line profile."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dispatches import make_dispatch, make_warning
from recording import RecordingContext
from waiting import wait_until

from adapters.beidou_rdss import simulator
from adapters.beidou_rdss.adapter import BeidouRdssAdapter
from adapters.beidou_rdss.sentences import Encoding, Suppression, content_bits
from adapters.beidou_rdss.settings import BeidouRdssSettings
from adapters.beidou_rdss.simulator import BeidouTerminal
from adapters.serial_link.simulator import parser_for
from dispatcher.adapter import (
    Accepted,
    AdapterNotReady,
    Dispatch,
    Failed,
    Outcome,
    PacesItself,
    ReportsReadiness,
    ReportState,
    Retry,
    WarningContent,
)
from dispatcher.domain import Audience, Channel, MsgType, Status
from dispatcher.engine.message_text import render_text

TOWN = "141814"  # a town terminal's user id, as the directory writes it
VILLAGE = "0205117"


def _warning(
    *,
    status: Status = Status.ACTUAL,
    headline: str = "某县气象台发布暴雨红色预警",
    wid: str = "W-1",
) -> WarningContent:
    return make_warning(
        wid=wid,
        status=status,
        headline=headline,
        description="预计未来3小时将出现特大暴雨，山洪、泥石流风险极高",
        instruction="请立即转移到安全地带",
        area_codes=("110101001",),
        lasting=timedelta(hours=3),
    )


def _dispatch(
    address: str = TOWN, delivery_id: int = 1, warning: WarningContent | None = None
) -> Dispatch:
    w = warning or _warning()
    return make_dispatch(
        channel=Channel.MODEM,
        delivery_id=delivery_id,
        address=address,
        target_id=f"dev-{address}",
        area_code="110101001",
        warning=w,
        text=render_text(w, audience=Audience.DEVICE.value, channel=Channel.MODEM.value),
    )


@pytest.fixture
def link(tmp_path: Path) -> Path:
    return tmp_path / "beidou"


@pytest.fixture
async def terminal(link: Path) -> AsyncIterator[BeidouTerminal]:
    async with BeidouTerminal(link=link, interval=0.0, seed=1) as device:
        yield device


AdapterFactory = Callable[..., BeidouRdssAdapter]


@pytest.fixture
async def make(link: Path) -> AsyncIterator[AdapterFactory]:
    made: list[BeidouRdssAdapter] = []

    def factory(**settings: Any) -> BeidouRdssAdapter:
        values: dict[str, Any] = {
            "port": str(link),
            "command_timeout": 0.5,
            "open_timeout": 2.0,
            "reopen_max": 0.2,
            "interval_margin": 0.0,
            "beam_report_interval": 1,
            "probe_listen": 1.5,
        }
        adapter = BeidouRdssAdapter(name="bd", settings=BeidouRdssSettings(**values | settings))
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        await adapter.stop()


async def _started(
    make: AdapterFactory, **settings: Any
) -> tuple[BeidouRdssAdapter, RecordingContext]:
    adapter = make(**settings)
    context = RecordingContext(name="bd")
    async with asyncio.timeout(5):
        await adapter.start(context)
    return adapter, context


async def _send(adapter: BeidouRdssAdapter, *batch: Dispatch, within: float = 10) -> list[Outcome]:
    async with asyncio.timeout(within):
        return list(await adapter.send(list(batch)))


# -- sending ------------------------------------------------------------------------------------
async def test_happy_path_sends_the_warning_and_accepts(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    adapter, _ = await _started(make)
    assert isinstance(adapter, PacesItself)
    assert isinstance(adapter, ReportsReadiness)
    assert adapter.not_ready_reason() is None
    d = _dispatch()
    [outcome] = await _send(adapter, d)
    assert isinstance(outcome, Accepted)
    assert outcome.reference.startswith("0141814-")
    [sent] = terminal.transmitted
    assert sent.request.destination == "0141814"
    assert sent.request.encoding is Encoding.MIXED
    # The whole device text (with the description) is longer than a level-3 message: the
    # headline goes first, the instruction when it fits whole, and a request to reply.
    assert sent.request.text == (
        "红色预警：某县气象台发布暴雨红色预警。请立即转移到安全地带。收到请回复1"
    )
    assert outcome.detail["from"] == terminal.card
    assert outcome.detail["bits"] == content_bits(sent.request.text, Encoding.MIXED) <= 628
    assert outcome.detail["shortened"] is True


async def test_a_text_that_fits_is_sent_whole(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    adapter, _ = await _started(make)
    d = dataclasses.replace(_dispatch(), text="【红色预警】山洪，请转移。")
    [outcome] = await _send(adapter, d)
    assert isinstance(outcome, Accepted)
    # The device text asks for no reply; the terminal's message does, at the end.
    assert terminal.transmitted[0].request.text == "【红色预警】山洪，请转移。收到请回复1。"
    assert outcome.detail["shortened"] is False


async def test_a_long_warning_is_shortened_to_the_card_level_headline_first(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    terminal.level = 2  # 408 bits: 50 bytes of text
    adapter, _ = await _started(make)
    d = _dispatch(warning=_warning(status=Status.TEST))
    [outcome] = await _send(adapter, d)
    assert isinstance(outcome, Accepted)
    text = terminal.transmitted[0].request.text
    assert content_bits(text, Encoding.MIXED) <= 408
    assert text.startswith("【测试】红色预警：某县气象台")  # a test never reads as real
    assert text.endswith("。收到请回复1")
    assert outcome.detail["shortened"] is True
    assert outcome.detail["max_bits"] == 408


async def test_a_dispatch_without_text_sends_the_marked_headline(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    adapter, _ = await _started(make)
    d = dataclasses.replace(_dispatch(warning=_warning(status=Status.EXERCISE)), text="")
    [outcome] = await _send(adapter, d)
    assert isinstance(outcome, Accepted)
    text = terminal.transmitted[0].request.text
    assert text == "【演练】红色预警：某县气象台发布暴雨红色预警。收到请回复1。"


async def test_a_cancellation_says_so_first(terminal: BeidouTerminal, make: AdapterFactory) -> None:
    terminal.level = 2
    adapter, _ = await _started(make)
    cancel = dataclasses.replace(_warning(), msg_type=MsgType.CANCEL)
    [outcome] = await _send(adapter, _dispatch(warning=cancel))
    assert isinstance(outcome, Accepted)
    assert terminal.transmitted[0].request.text.startswith("【解除】暴雨预警已解除。")


async def test_chinese_mode_widens_digits(terminal: BeidouTerminal, make: AdapterFactory) -> None:
    adapter, _ = await _started(make, encoding="chinese")
    [outcome] = await _send(adapter, _dispatch())
    assert isinstance(outcome, Accepted)
    request = terminal.transmitted[0].request
    assert request.encoding is Encoding.CHINESE
    assert request.text.endswith("收到请回复１")


async def test_bad_addresses_and_expired_warnings_fail_without_transmitting(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    adapter, _ = await _started(make)
    expired = dataclasses.replace(_warning(), expires=datetime.now(UTC) - timedelta(minutes=1))
    outcomes = await _send(
        adapter, _dispatch("13812345678"), _dispatch("0"), _dispatch(warning=expired)
    )
    assert [type(o) for o in outcomes] == [Failed, Failed, Failed]
    assert "not a BeiDou user id" in outcomes[0].reason  # type: ignore[union-attr]
    assert "expired" in outcomes[2].reason  # type: ignore[union-attr]
    assert terminal.requests == []


# -- pacing -------------------------------------------------------------------------------------
async def test_two_sends_are_paced_by_the_card_interval(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    terminal.interval = 0.6
    adapter, _ = await _started(make)
    assert adapter.interval() == 0.6  # read from the card
    assert adapter.room() == 1
    started = time.monotonic()
    outcomes = await _send(adapter, _dispatch(TOWN, 1), _dispatch(VILLAGE, 2))
    assert [type(o) for o in outcomes] == [Accepted, Accepted]
    assert time.monotonic() - started >= 0.6
    # Waited for the slot rather than being refused: no frequency-limit feedback at all.
    assert len(terminal.requests) == 2
    first, second = terminal.transmitted
    assert second.at - first.at >= 0.6
    assert adapter.counters["frequency_limited"] == 0


async def test_a_slot_further_away_than_pacing_wait_answers_retry_at_once(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    terminal.interval = 30.0
    adapter, _ = await _started(make, pacing_wait=0.5)
    [first] = await _send(adapter, _dispatch(TOWN, 1))
    assert isinstance(first, Accepted)
    assert adapter.room() == 0  # the engine hands nothing until the slot is near
    started = time.monotonic()
    second, third = await _send(adapter, _dispatch(VILLAGE, 2), _dispatch(TOWN, 3))
    assert time.monotonic() - started < 0.5
    assert isinstance(second, Retry)
    assert isinstance(third, Retry)
    assert second.after is not None
    assert 28 < second.after <= 30
    assert "service interval" in second.reason
    assert len(terminal.requests) == 1


async def test_frequency_limit_feedback_answers_retry_after_the_named_wait(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    # The adapter is told the interval is 0, so only the terminal's feedback stops it.
    terminal.interval = 40.0
    adapter, _ = await _started(make, send_interval=0, interval_margin=1.0)
    [first] = await _send(adapter, _dispatch(TOWN, 1))
    assert isinstance(first, Accepted)
    [second] = await _send(adapter, _dispatch(VILLAGE, 2))
    assert isinstance(second, Retry)
    assert second.after is not None
    assert 39 <= second.after <= 41  # the terminal's wait (mmss) and the margin
    assert "频度未到" in second.reason
    assert second.detail["suppression"] == Suppression.FREQUENCY
    assert 38 <= second.detail["wait"] <= 40  # the margin already waited is off the 40 s
    assert adapter.counters["frequency_limited"] == 1
    assert len(terminal.requests) == 2
    assert len(terminal.transmitted) == 1


async def test_a_short_frequency_wait_is_waited_out_and_sent(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    terminal.interval = 0.8
    adapter, _ = await _started(make, send_interval=0)
    outcomes = await _send(adapter, _dispatch(TOWN, 1), _dispatch(VILLAGE, 2))
    assert [type(o) for o in outcomes] == [Accepted, Accepted]
    assert adapter.counters["frequency_limited"] == 1
    assert len(terminal.requests) == 3  # one refused (wait 1 s), then transmitted
    assert len(terminal.transmitted) == 2


def test_send_rate_follows_a_configured_interval() -> None:
    paced = BeidouRdssAdapter(
        name="bd", settings=BeidouRdssSettings(port="/dev/null", send_interval="1m")
    )
    rate = paced.send_rate()
    assert rate is not None
    assert rate.per_second == pytest.approx(1 / 60)
    assert rate.burst == 1
    unknown = BeidouRdssAdapter(name="bd", settings=BeidouRdssSettings(port="/dev/null"))
    assert unknown.send_rate() is None  # room() paces by the card once it is read


# -- replies ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "encoding"),
    [
        ("1", Encoding.MIXED),
        ("收到！", Encoding.MIXED),
        ("１", Encoding.CHINESE),
        ("y", Encoding.CODE),
    ],
)
async def test_a_reply_acknowledges_the_delivery_sent_to_that_terminal(
    terminal: BeidouTerminal, make: AdapterFactory, reply: str, encoding: Encoding
) -> None:
    adapter, context = await _started(make)
    d = _dispatch(TOWN, 42)
    [outcome] = await _send(adapter, d)
    assert isinstance(outcome, Accepted)
    terminal.receive_message(TOWN, reply, encoding=encoding)
    await wait_until(lambda: bool(context.reports), within=3, what="a report")
    [report] = context.reports
    assert report.state is ReportState.ACKNOWLEDGED
    assert report.delivery_id == 42
    assert report.from_address == TOWN  # the address as the directory has it
    assert report.warning_id == d.warning.id
    assert report.reference == outcome.reference
    assert context.statuses[0].address == TOWN
    assert context.statuses[0].online


async def test_replies_that_confirm_nothing_are_not_reported(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    adapter, context = await _started(make)
    await _send(adapter, _dispatch(TOWN, 1))
    terminal.receive_message(VILLAGE, "1")  # never sent to
    terminal.receive_message(TOWN, "雨很大，路断了")  # not a confirmation
    await wait_until(lambda: adapter.counters["replies"] == 2, within=3, what="two replies")
    assert context.reports == []
    assert adapter.counters["unmatched_replies"] == 1
    # The newest delivery is still open: a later "1" confirms it, once.
    terminal.receive_message(TOWN, "1")
    terminal.receive_message(TOWN, "1")
    await wait_until(lambda: adapter.counters["replies"] == 4, within=3, what="four replies")
    assert [r.delivery_id for r in context.reports] == [1]


async def test_a_reply_confirms_the_newest_message_to_that_terminal(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    adapter, context = await _started(make)
    await _send(adapter, _dispatch(TOWN, 1, _warning(wid="W-old")))
    await _send(adapter, _dispatch(TOWN, 2, _warning(wid="W-new")))
    terminal.receive_message(TOWN, "收到")
    await wait_until(lambda: bool(context.reports), within=3, what="a report")
    assert (context.reports[0].delivery_id, context.reports[0].warning_id) == (2, "W-new")


# -- refusals and faults ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("refusal", "words"),
    [
        (Suppression.SYSTEM, "系统抑制"),
        (Suppression.SILENCE, "无线电静默"),
        (Suppression.NO_CARD, "未检测到IC模块"),
    ],
)
async def test_refusals_answer_retry_with_the_reason_for_the_whole_batch(
    terminal: BeidouTerminal, make: AdapterFactory, refusal: Suppression, words: str
) -> None:
    adapter, _ = await _started(make, suppressed_retry=120)
    terminal.refuse = refusal
    outcomes = await _send(adapter, _dispatch(TOWN, 1), _dispatch(VILLAGE, 2))
    assert [type(o) for o in outcomes] == [Retry, Retry]
    first = outcomes[0]
    assert isinstance(first, Retry)
    assert words in first.reason
    assert first.after == 120
    assert first.detail["suppression"] == refusal
    assert len(terminal.requests) == 1  # the second was not tried


async def test_no_signal(terminal: BeidouTerminal, make: AdapterFactory) -> None:
    terminal.beam_power = 0
    adapter, _ = await _started(make, no_signal_retry=45)
    [outcome] = await _send(adapter, _dispatch())
    assert isinstance(outcome, Retry)
    assert "no signal" in outcome.reason
    assert outcome.after == 45
    async with asyncio.timeout(5):
        probe = await adapter.probe()
    assert not probe.ok
    assert "no signal" in probe.summary


async def test_garbage_instead_of_feedback_times_out_into_retry(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    adapter, _ = await _started(make)
    terminal.garbage = 1.0
    started = time.monotonic()
    [outcome] = await _send(adapter, _dispatch())
    assert isinstance(outcome, Retry)
    assert "no answer to $CCTXA within 0.5s" in outcome.reason
    assert time.monotonic() - started < 2
    # Noise is counted (beam reports turned to noise too), and never taken for an answer.
    assert adapter.counters["timeouts"] == 1


async def test_a_corrupted_feedback_is_not_taken_for_an_answer(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    adapter, _ = await _started(make)
    terminal.silent = True
    task = asyncio.create_task(adapter.send([_dispatch()]))
    await wait_until(
        lambda: len(terminal.requests) == 1, within=3, what="a request to the terminal"
    )
    terminal.silent = False
    terminal.reply(b"$BDFKI,TXA,Y,Y,0,0000*00\r\n")  # wrong checksum
    terminal.reply(b"\xff\xfe$BDFKI,TXA\r\n")
    async with asyncio.timeout(3):
        [outcome] = await task
    assert isinstance(outcome, Retry)
    assert adapter._terminal is not None
    assert adapter._terminal.counters.malformed >= 2


async def test_silence_times_out_and_the_next_send_is_paced(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    terminal.interval = 0.0
    adapter, _ = await _started(make, send_interval=20, pacing_wait=0.5)
    terminal.drop_feedback = True  # transmits, never says so
    [outcome] = await _send(adapter, _dispatch(TOWN, 1))
    assert isinstance(outcome, Retry)
    assert "no answer" in outcome.reason
    # It may have gone out: the next one waits an interval, so a late feedback is not taken
    # for the next message's.
    [later] = await _send(adapter, _dispatch(VILLAGE, 2))
    assert isinstance(later, Retry)
    assert later.after is not None
    assert later.after > 15
    assert len(terminal.requests) == 1


async def test_a_late_feedback_is_not_taken_for_the_next_message_without_an_interval(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    # A card without a service interval (0: a commander card, or send_interval = 0) leaves no
    # pause after a timeout: the late "$BDFKI,TXA,Y" of the first message must not answer the
    # second, which the terminal refuses.
    terminal.interval = 0.0
    adapter, _ = await _started(make, command_timeout=0.5)
    terminal.latency = 0.8
    [first] = await _send(adapter, _dispatch(TOWN, 1))
    assert isinstance(first, Retry)
    assert len(terminal.transmitted) == 1  # it did go out; its feedback is on its way
    terminal.refuse = Suppression.SYSTEM
    [second] = await _send(adapter, _dispatch(VILLAGE, 2))
    assert not isinstance(second, Accepted), "the first message's feedback taken for this one"
    assert len(terminal.transmitted) == 1


async def test_a_silent_terminal_is_not_ready_at_start(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    terminal.silent = True
    adapter = make(open_timeout=1.0)
    with pytest.raises(AdapterNotReady, match=str(terminal.path)):
        async with asyncio.timeout(5):
            await adapter.start(RecordingContext(name="bd"))


async def test_a_terminal_without_a_card_is_not_ready(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    terminal.card = "0000000"
    adapter = make(open_timeout=1.0)
    with pytest.raises(AdapterNotReady, match="no user card"):
        async with asyncio.timeout(5):
            await adapter.start(RecordingContext(name="bd"))


async def test_a_missing_port_is_named_with_its_cause(tmp_path: Path) -> None:
    adapter = BeidouRdssAdapter(
        name="bd", settings=BeidouRdssSettings(port=str(tmp_path / "nothing"), open_timeout=1)
    )
    with pytest.raises(AdapterNotReady, match="nothing: no such port"):
        async with asyncio.timeout(5):
            await adapter.start(RecordingContext(name="bd"))
    probe = await adapter.probe()
    assert not probe.ok
    assert "no such port" in probe.summary


# -- unplugging ---------------------------------------------------------------------------------
async def test_unplug_mid_send_answers_retry_then_recovers_after_replug(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    adapter, _ = await _started(make, command_timeout=5.0)
    terminal.latency = 1.0  # the feedback is still on its way when the cable comes out
    task = asyncio.create_task(adapter.send([_dispatch(TOWN, 1), _dispatch(VILLAGE, 2)]))
    await wait_until(
        lambda: len(terminal.requests) == 1, within=3, what="a request to the terminal"
    )
    started = time.monotonic()
    terminal.unplug()
    async with asyncio.timeout(3):
        outcomes = await task
    assert time.monotonic() - started < 1.5  # told at once, not at the 5 s timeout
    assert [type(o) for o in outcomes] == [Retry, Retry]
    assert "port went away" in outcomes[0].reason  # type: ignore[union-attr]
    await wait_until(
        lambda: adapter.not_ready_reason() is not None, within=3, what="the adapter not ready"
    )
    assert str(terminal.path) in (adapter.not_ready_reason() or "")
    assert adapter.room() == 0
    # While unplugged: Retry at once.
    [meanwhile] = await _send(adapter, _dispatch(TOWN, 3), within=2)
    assert isinstance(meanwhile, Retry)
    terminal.latency = 0.0
    terminal.replug()
    await wait_until(
        lambda: adapter.not_ready_reason() is None, within=5, what="the adapter ready again"
    )
    [after] = await _send(adapter, _dispatch(TOWN, 4))
    assert isinstance(after, Accepted)
    assert terminal.transmitted[-1].request.destination == "0141814"


# -- stop ---------------------------------------------------------------------------------------
async def test_stop_returns_promptly_while_a_send_waits_for_feedback(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    adapter, _ = await _started(make, command_timeout=30.0)
    terminal.drop_feedback = True
    task = asyncio.create_task(adapter.send([_dispatch()]))
    await wait_until(
        lambda: len(terminal.requests) == 1, within=3, what="a request to the terminal"
    )
    started = time.monotonic()
    async with asyncio.timeout(2):
        await adapter.stop()
        [outcome] = await task
    assert time.monotonic() - started < 1.0
    assert isinstance(outcome, Retry)


async def test_stop_returns_promptly_while_a_send_waits_for_its_slot(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    adapter, _ = await _started(make, send_interval=8, pacing_wait=10)
    await _send(adapter, _dispatch(TOWN, 1))
    task = asyncio.create_task(adapter.send([_dispatch(VILLAGE, 2)]))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    async with asyncio.timeout(2):
        await adapter.stop()
        [outcome] = await task
    assert time.monotonic() - started < 1.0
    assert isinstance(outcome, Retry)
    assert len(terminal.requests) == 1


# -- probe --------------------------------------------------------------------------------------
async def test_probe_before_start_opens_the_port_itself(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    terminal.interval = 60.0
    adapter = make()
    async with asyncio.timeout(5):
        probe = await adapter.probe()
    assert probe.ok, probe.summary
    assert f"card {terminal.card}" in probe.summary
    assert "level 3 (628 bits a message)" in probe.summary
    assert "one message every 60s" in probe.summary
    assert "best beam power 4/4" in probe.summary
    assert probe.details["beam_power"] == list(terminal.beam_info().powers)
    # The port is free again: the adapter starts on it.
    await adapter.start(RecordingContext(name="bd"))


async def test_probe_after_start_uses_the_running_link_and_overrides(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    adapter, _ = await _started(make, send_interval=90, comm_level=4)
    await wait_until(
        lambda: adapter._terminal is not None and adapter._terminal.beams is not None,
        within=3,
        what="the terminal's beams",
    )
    async with asyncio.timeout(5):
        probe = await adapter.probe()
    assert probe.ok
    assert probe.details["service_interval"] == 0.0  # the card's
    assert probe.details["send_interval"] == 90  # the override in use
    assert probe.details["max_message_bits"] == 848
    assert "one message every 90s" in probe.summary


# -- the simulator's command line ---------------------------------------------------------------
def test_simulate_modem_profile_beidou(tmp_path: Path) -> None:
    argv = [
        "--profile", "beidou", "--card", "208461", "--interval", "30", "--level", "2",
        "--beam-power", "0", "--refuse", "silence", "--auto-reply", "",
    ]  # fmt: skip
    parser, module = parser_for(argv)
    assert module is simulator
    device = simulator.build(parser.parse_args(argv), link=str(tmp_path / "bd"))
    assert (device.card, device.interval, device.level) == ("0208461", 30.0, 2)
    assert device.beam_power == 0
    assert device.refuse is Suppression.SILENCE
    assert device.auto_reply is None
    hint = tomllib.loads(simulator.settings_hint(str(tmp_path / "bd")))
    block = hint["adapters"]["beidou"]
    assert block["kind"] == "beidou_rdss"
    assert block["channels"] == ["modem"]
    BeidouRdssSettings(**block["settings"])
    with pytest.raises(ValueError, match="--card"):
        simulator.build(parser.parse_args([*argv[:2], "--card", "x"]), link=str(tmp_path / "x"))


async def test_simulator_auto_reply_confirms_through_the_adapter(
    terminal: BeidouTerminal, make: AdapterFactory
) -> None:
    terminal.auto_reply = "1"
    terminal.reply_delay = 0.05
    adapter, context = await _started(make)
    await _send(adapter, _dispatch(TOWN, 7))
    await wait_until(lambda: bool(context.reports), within=3, what="a report")
    assert context.reports[0].delivery_id == 7

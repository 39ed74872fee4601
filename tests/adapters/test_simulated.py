"""The simulated adapter's behaviour: rates, acknowledgements, misbehaviour on purpose,
lifecycle and counters. Everything runs for real (no mocks): the adapter on the test's loop,
a context that records reports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from dispatches import make_dispatch, make_warning
from pydantic import ValidationError
from recording import RecordingContext

from adapters.simulated import SimulatedAdapter, SimulatedSettings, SimulatedStats
from dispatcher.adapter import (
    Accepted,
    AdapterNotReady,
    Dispatch,
    Failed,
    Outcome,
    Report,
    ReportState,
    Retry,
    WarningContent,
    check_outcomes,
)
from dispatcher.domain import PERSON_CHANNELS, Channel, MsgType


class TimedContext(RecordingContext):
    """Also records the loop time each report arrived, and can wait for a number of them."""

    def __init__(self, name: str = "sim") -> None:
        super().__init__(name)
        self.arrived: list[float] = []

    def report(self, report: Report) -> None:
        self.arrived.append(asyncio.get_running_loop().time())
        super().report(report)

    async def wait_reports(self, n: int, limit: float = 1.0) -> None:
        """Until at least n reports have arrived (TimeoutError after ``limit`` seconds)."""
        async with asyncio.timeout(limit):
            while len(self.reports) < n:
                self.changed.clear()
                await self.changed.wait()

    def acks(self) -> list[Report]:
        return [r for r in self.reports if r.state is ReportState.ACKNOWLEDGED]


class RefusingContext(TimedContext):
    def report(self, report: Report) -> None:
        raise RuntimeError("report queue is broken")


def warning(msg_type: MsgType = MsgType.ALERT, wid: str = "W-1") -> WarningContent:
    return make_warning(
        wid=wid,
        msg_type=msg_type,
        event="山洪",
        headline="山洪红色预警",
        area_codes=("611002",),
        sent=datetime(2025, 7, 1, 8, 0, tzinfo=UTC),
    )


def dispatches(
    count: int,
    *,
    channel: Channel = Channel.SMS,
    start: int = 1,
    msg_type: MsgType = MsgType.ALERT,
    addresses: Sequence[str] = (),
    attempt: int = 1,
) -> list[Dispatch]:
    content = warning(msg_type, wid=f"W-{msg_type.value}")
    person = channel in PERSON_CHANNELS
    out = []
    for index in range(count):
        delivery_id = start + index
        if addresses:
            address = addresses[index % len(addresses)]
        else:
            address = f"+86138{delivery_id:08d}" if person else f"DEV-{delivery_id}"
        out.append(
            make_dispatch(
                channel=channel,
                delivery_id=delivery_id,
                address=address,
                target_id=f"T{delivery_id}",
                warning=content,
                attempt=attempt,
                text="山洪红色预警：立即转移",
            )
        )
    return out


def count(outcomes: Sequence[Outcome], kind: type[Outcome]) -> int:
    return sum(isinstance(o, kind) for o in outcomes)


@pytest.fixture
async def started() -> AsyncIterator[Any]:
    """make(**settings) → (adapter, context), started; every adapter is stopped afterwards."""
    made: list[SimulatedAdapter] = []

    async def make(name: str = "sim", **settings: Any) -> tuple[SimulatedAdapter, TimedContext]:
        adapter = SimulatedAdapter(name=name, settings=settings)
        context = TimedContext(name)
        await adapter.start(context)
        made.append(adapter)
        return adapter, context

    yield make
    for adapter in made:
        await adapter.stop()


# -- settings ----------------------------------------------------------------------------------


def test_settings_defaults_and_durations() -> None:
    default = SimulatedSettings()
    assert default.latency == 0
    assert default.ack_probability == 1.0
    assert default.ack_delay == 0
    assert default.retry_after is None
    assert default.delivered_report is False
    assert default.not_ready_starts == 0
    assert default.fail_addresses == ()
    assert default.seed is None
    settings = SimulatedSettings.model_validate(
        {"latency": "5ms", "ack_delay": "2s", "retry_after": "1m", "fail_addresses": ["+1"]}
    )
    assert (settings.latency, settings.ack_delay, settings.retry_after) == (0.005, 2.0, 60.0)
    assert settings.fail_addresses == ("+1",)


@pytest.mark.parametrize(
    ("raw", "loc", "words"),
    [
        ({"failure_rate": 1.5}, ("failure_rate",), "less than or equal to 1"),
        ({"ack_probability": -0.1}, ("ack_probability",), "greater than or equal to 0"),
        ({"failure_rate": 0.6, "retry_rate": 0.5}, ("retry_rate",), "cannot exceed 1"),
        ({"raise_rate": 0.5, "hang_rate": 0.3, "garbage_rate": 0.3}, ("garbage_rate",), "exceed"),
        ({"latency": "soon"}, ("latency",), "not a duration"),
        ({"retry_after": "-"}, ("retry_after",), "not a duration"),
        ({"not_ready_starts": -1}, ("not_ready_starts",), "greater than or equal to 0"),
        ({"ack_dalay": 1}, ("ack_dalay",), "Extra inputs"),
    ],
)
def test_settings_reject_bad_values(raw: dict[str, Any], loc: tuple[str], words: str) -> None:
    with pytest.raises(ValidationError) as info:
        SimulatedSettings.model_validate(raw)
    (error,) = info.value.errors()
    assert error["loc"] == loc
    assert words in error["msg"]


def test_settings_are_frozen() -> None:
    settings = SimulatedSettings()
    with pytest.raises(ValidationError):
        settings.failure_rate = 0.5  # type: ignore[misc]


def test_constructor_takes_a_model_or_a_mapping() -> None:
    settings = SimulatedSettings(seed=3)
    assert SimulatedAdapter(name="a", settings=settings).settings is settings
    assert SimulatedAdapter(name="b", settings={"seed": 3}).settings == settings
    assert SimulatedAdapter(name="c").settings == SimulatedSettings()
    with pytest.raises(ValidationError):
        SimulatedAdapter(name="d", settings={"nonsense": 1})


# -- outcomes ----------------------------------------------------------------------------------


async def test_instant_send_accepts_everything_with_references(started: Any) -> None:
    adapter, _ = await started("city")
    batch = dispatches(3, start=41, attempt=2)
    outcomes = await adapter.send(batch)
    assert outcomes == [
        Accepted(reference="sim-city-41-2"),
        Accepted(reference="sim-city-42-2"),
        Accepted(reference="sim-city-43-2"),
    ]


async def test_rates_give_expected_proportions(started: Any) -> None:
    adapter, context = await started(
        failure_rate=0.1, retry_rate=0.2, retry_after="30s", ack_probability=0.5, seed=11
    )
    outcomes: list[Outcome] = []
    for start in range(1, 10_001, 1000):
        outcomes += await adapter.send(dispatches(1000, start=start))
    assert len(outcomes) == 10_000
    failed, retried, accepted = (
        count(outcomes, Failed),
        count(outcomes, Retry),
        count(outcomes, Accepted),
    )
    assert 800 <= failed <= 1200
    assert 1700 <= retried <= 2300
    assert failed + retried + accepted == 10_000
    assert {o.after for o in outcomes if isinstance(o, Retry)} == {30.0}
    acks = context.acks()
    assert 0.45 * accepted <= len(acks) <= 0.55 * accepted
    # Only accepted deliveries are acknowledged.
    accepted_ids = {
        d.delivery_id
        for d, o in zip(
            (d for s in range(1, 10_001, 1000) for d in dispatches(1000, start=s)),
            outcomes,
            strict=True,
        )
        if isinstance(o, Accepted)
    }
    assert {r.delivery_id for r in acks} <= accepted_ids


async def test_same_seed_same_answers(started: Any) -> None:
    settings = {"failure_rate": 0.3, "retry_rate": 0.3, "ack_probability": 0.5, "seed": 5}
    first, first_context = await started("a", **settings)
    second, second_context = await started("a", **settings)
    other, _ = await started("a", **{**settings, "seed": 6})
    batch = dispatches(200)
    answers = await first.send(batch)
    assert await second.send(batch) == answers
    assert await other.send(batch) != answers
    assert [r.delivery_id for r in first_context.reports] == [
        r.delivery_id for r in second_context.reports
    ]


async def test_fail_addresses_always_fail(started: Any) -> None:
    adapter, context = await started(fail_addresses=["+8613000000000"])
    batch = dispatches(6, addresses=["+8613812345678", "+8613000000000", "+8613912345678"])
    outcomes = await adapter.send(batch)
    assert [type(o) for o in outcomes] == [Accepted, Failed, Accepted] * 2
    assert {o.reason for o in outcomes if isinstance(o, Failed)} == {"unknown number"}
    assert "+8613000000000" not in {r.from_address for r in context.reports}


async def test_latency_delays_the_answer(started: Any) -> None:
    adapter, _ = await started(latency="30ms")
    loop = asyncio.get_running_loop()
    began = loop.time()
    outcomes = await adapter.send(dispatches(5))
    assert loop.time() - began >= 0.03
    assert count(outcomes, Accepted) == 5


async def test_send_before_start_asks_for_a_retry() -> None:
    adapter = SimulatedAdapter(name="idle")
    outcomes = await adapter.send(dispatches(3))
    assert outcomes == [Retry("adapter not started")] * 3
    assert adapter.stats.retried == 3


async def test_send_stopped_during_latency_asks_for_a_retry(started: Any) -> None:
    adapter, context = await started(latency=0.3)
    sending = asyncio.create_task(adapter.send(dispatches(4)))
    await asyncio.sleep(0.01)
    await adapter.stop()
    outcomes = await sending
    assert [type(o) for o in outcomes] == [Retry] * 4
    assert context.reports == []


# -- acknowledgements --------------------------------------------------------------------------


async def test_immediate_acks_are_reported_during_send(started: Any) -> None:
    adapter, context = await started()
    batch = dispatches(3, start=7)
    await adapter.send(batch)
    # Reported synchronously: nothing had to run on the loop in between.
    assert [r.delivery_id for r in context.reports] == [7, 8, 9]
    for report, dispatch in zip(context.reports, batch, strict=True):
        assert report.state is ReportState.ACKNOWLEDGED
        assert report.from_address == dispatch.address
        assert report.warning_id == "W-Alert"
        assert report.detail == {}
        assert report.at is not None


async def test_acks_arrive_after_the_delay(started: Any) -> None:
    adapter, context = await started(ack_delay=0.05)
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    batch = dispatches(50)
    outcomes = await adapter.send(batch)
    assert count(outcomes, Accepted) == 50
    assert context.reports == []
    assert adapter.pending_reports == 50
    await asyncio.sleep(0.02)
    if loop.time() < sent_at + 0.049:  # not when a busy machine overslept
        assert context.reports == []
    await context.wait_reports(50)
    assert min(context.arrived) - sent_at >= 0.05 - 1e-6
    assert [r.delivery_id for r in context.reports] == [d.delivery_id for d in batch]
    assert adapter.pending_reports == 0
    assert adapter.stats.acks_reported == 50


async def test_later_sends_are_acknowledged_later(started: Any) -> None:
    adapter, context = await started(ack_delay=0.04)
    loop = asyncio.get_running_loop()
    first_sent = loop.time()
    await adapter.send(dispatches(2, start=1))
    await asyncio.sleep(0.02)
    second_sent = loop.time()
    await adapter.send(dispatches(2, start=3))
    await context.wait_reports(4)
    assert [r.delivery_id for r in context.reports] == [1, 2, 3, 4]
    # Each is reported no sooner than its own send plus the delay.
    assert min(context.arrived[:2]) >= first_sent + 0.04 - 1e-6
    assert min(context.arrived[2:]) >= second_sent + 0.04 - 1e-6
    assert second_sent - first_sent >= 0.02


async def test_no_acks_when_probability_zero(started: Any) -> None:
    adapter, context = await started(ack_probability=0, ack_delay=0.01)
    outcomes = await adapter.send(dispatches(100))
    assert count(outcomes, Accepted) == 100
    await asyncio.sleep(0.05)
    assert context.reports == []
    assert adapter.pending_reports == 0


async def test_delivered_report_comes_before_the_ack(started: Any) -> None:
    adapter, context = await started(delivered_report=True, ack_delay=0.01)
    await adapter.send(dispatches(2, start=5))
    assert [(r.state, r.delivery_id) for r in context.reports] == [
        (ReportState.DELIVERED, 5),
        (ReportState.DELIVERED, 6),
    ]
    await context.wait_reports(4)
    assert [(r.state, r.delivery_id) for r in context.reports[2:]] == [
        (ReportState.ACKNOWLEDGED, 5),
        (ReportState.ACKNOWLEDGED, 6),
    ]
    assert adapter.stats.delivered_reported == 2
    assert adapter.stats.acks_reported == 2


@pytest.mark.parametrize("channel", [Channel.SPEAKER, Channel.TRANSMITTER, Channel.MODEM])
async def test_devices_report_played_or_stopped(started: Any, channel: Channel) -> None:
    adapter, context = await started()
    await adapter.send(dispatches(1, channel=channel, start=1, msg_type=MsgType.ALERT))
    await adapter.send(dispatches(1, channel=channel, start=2, msg_type=MsgType.CANCEL))
    played, stopped = context.reports
    assert (played.state, played.detail, played.warning_id) == (
        ReportState.ACKNOWLEDGED,
        {"device_state": "played"},
        "W-Alert",
    )
    assert (stopped.state, stopped.detail, stopped.warning_id) == (
        ReportState.ACKNOWLEDGED,
        {"device_state": "stopped"},
        "W-Cancel",
    )
    assert played.from_address == "DEV-1"


async def test_people_acks_carry_no_device_state(started: Any) -> None:
    adapter, context = await started()
    await adapter.send(dispatches(1, channel=Channel.VOICE, msg_type=MsgType.CANCEL))
    (ack,) = context.reports
    assert ack.state is ReportState.ACKNOWLEDGED
    assert "device_state" not in ack.detail


async def test_one_background_task_however_many_pending(started: Any) -> None:
    before = len(asyncio.all_tasks())
    adapter, context = await started("fleet", ack_delay=0.05)
    names = [t.get_name() for t in asyncio.all_tasks()]
    assert names.count("tocsin-simulated-acks-fleet") == 1
    for start in range(1, 5001, 1000):
        await adapter.send(dispatches(1000, start=start))
    assert adapter.pending_reports == 5000
    assert len(asyncio.all_tasks()) == before + 1
    await context.wait_reports(5000, limit=2)


async def test_stop_drops_pending_acks_and_the_task(started: Any) -> None:
    adapter, context = await started("stopper", ack_delay=0.05)
    await adapter.send(dispatches(20))
    assert adapter.pending_reports == 20
    async with asyncio.timeout(0.5):
        await adapter.stop()
    assert adapter.pending_reports == 0
    assert "tocsin-simulated-acks-stopper" not in {t.get_name() for t in asyncio.all_tasks()}
    await asyncio.sleep(0.1)
    assert context.reports == []
    # A restart does not bring the dropped acknowledgements back.
    second = TimedContext("stopper")
    await adapter.start(second)
    await asyncio.sleep(0.1)
    assert second.reports == []
    await adapter.send(dispatches(1, start=99))
    await second.wait_reports(1)
    assert [r.delivery_id for r in second.reports] == [99]
    assert context.reports == []


async def test_a_context_that_raises_loses_no_outcomes(started: Any) -> None:
    adapter = SimulatedAdapter(name="x")
    await adapter.start(RefusingContext())
    try:
        outcomes = await adapter.send(dispatches(3))
    finally:
        await adapter.stop()
    assert count(outcomes, Accepted) == 3
    assert adapter.stats.report_errors == 3
    assert adapter.stats.acks_reported == 0


# -- misbehaviour on purpose -------------------------------------------------------------------


async def test_not_ready_starts() -> None:
    adapter = SimulatedAdapter(name="late", settings={"not_ready_starts": 2})
    context = TimedContext()
    for attempt in (1, 2):
        with pytest.raises(AdapterNotReady, match=f"{attempt} of 2"):
            await adapter.start(context)
        assert not adapter.started
        assert await adapter.send(dispatches(1)) == [Retry("adapter not started")]
    await adapter.start(context)
    try:
        assert adapter.started
        assert adapter.stats.not_ready == 2
        assert count(await adapter.send(dispatches(2)), Accepted) == 2
    finally:
        await adapter.stop()
    # Once started, a restart is not refused again.
    await adapter.start(context)
    await adapter.stop()


async def test_hang_never_returns_and_cancels_cleanly(started: Any) -> None:
    adapter, context = await started(hang_rate=1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await adapter.send(dispatches(3))
    sending = asyncio.create_task(adapter.send(dispatches(3)))
    await asyncio.sleep(0.05)
    assert not sending.done()
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert adapter.stats.hung == 2
    assert adapter.stats.dispatches == 0
    assert context.reports == []
    async with asyncio.timeout(0.5):
        await adapter.stop()


async def test_raise_rate_raises(started: Any) -> None:
    adapter, context = await started(raise_rate=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        await adapter.send(dispatches(3))
    assert adapter.stats.raised == 1
    assert context.reports == []


async def test_garbage_is_turned_into_retries(started: Any) -> None:
    adapter, context = await started(garbage_rate=1)
    batch = dispatches(4)
    outcomes = await adapter.send(batch)
    assert len(outcomes) != len(batch)
    checked = check_outcomes(batch, outcomes)
    assert len(checked) == 4
    assert all(isinstance(o, Retry) for o in checked)
    assert "5 outcomes for 4 dispatches" in checked[0].reason  # type: ignore[union-attr]
    assert len(await adapter.send([])) == 1
    assert adapter.stats.garbage == 2
    assert context.reports == []


async def test_misbehaviour_rates_mix(started: Any) -> None:
    adapter, _ = await started(raise_rate=0.2, garbage_rate=0.3, seed=2)
    raised = garbage = good = 0
    for _ in range(1000):
        try:
            outcomes = await adapter.send(dispatches(1))
        except RuntimeError:
            raised += 1
            continue
        if len(outcomes) == 1:
            good += 1
        else:
            garbage += 1
    assert 150 <= raised <= 250
    assert 250 <= garbage <= 350
    assert adapter.stats == SimulatedStats(
        sends=1000,
        dispatches=good,
        accepted=good,
        acks_reported=good,
        raised=raised,
        garbage=garbage,
    )


# -- counters, probe, speed --------------------------------------------------------------------


async def test_stats_and_probe(started: Any) -> None:
    adapter, _ = await started(
        "counted", fail_addresses=["+8613000000000"], delivered_report=True, ack_delay=0
    )
    await adapter.send(dispatches(5, addresses=["+8613000000000", "+8613812345678"]))
    await adapter.send([])
    assert adapter.stats == SimulatedStats(
        sends=2,
        dispatches=5,
        accepted=2,
        failed=3,
        delivered_reported=2,
        acks_reported=2,
    )
    probe = await adapter.probe()
    assert probe.ok
    assert "counted" in probe.summary
    assert "2 accepted" in probe.summary
    assert probe.details["stats"]["failed"] == 3
    assert probe.details["settings"]["fail_addresses"] == ["+8613000000000"]
    assert probe.details["started"] is True
    await adapter.stop()
    assert (await adapter.probe()).details["started"] is False
    # Counters survive a stop.
    assert adapter.stats.sends == 2


async def test_instant_sends_are_cheap(started: Any) -> None:
    adapter, context = await started(ack_probability=0.8, failure_rate=0.05, seed=1)
    batch = dispatches(1000)
    best = float("inf")
    for _ in range(10):
        # CPU time of this thread, so other processes on a busy machine do not count.
        began = time.thread_time()
        for _ in range(5):
            await adapter.send(batch)
        best = min(best, (time.thread_time() - began) / 5)
    # Budget: well under a millisecond per hundred dispatches (10 ms per 1,000).
    assert best < 0.010, f"{best * 1000:.2f} ms of CPU per 1,000 dispatches"
    assert adapter.stats.dispatches == 50_000
    assert len(context.reports) > 0


async def test_devices_that_took_a_message_are_reported_online() -> None:
    adapter = SimulatedAdapter(name="sim", settings={"fail_addresses": ["SPK-GONE"]})
    context = TimedContext()
    await adapter.start(context)
    try:
        await adapter.send(
            dispatches(3, channel=Channel.SPEAKER, addresses=["SPK-1", "SPK-1", "SPK-GONE"])
            + dispatches(1, start=10)
        )
    finally:
        await adapter.stop()
    assert [(s.address, s.online, dict(s.detail)) for s in context.statuses] == [
        ("SPK-1", True, {"simulated": True})
    ]

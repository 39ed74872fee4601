"""The pure stages: what an adapter's outcome means for a delivery, and the words people get."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dispatcher.adapter import Accepted, Failed, Retry, WarningContent
from dispatcher.domain import DeliveryState, Level, MsgType, Status
from dispatcher.engine.backoff import Backoff
from dispatcher.engine.decide import decide, put_back
from dispatcher.engine.message_text import VISIT_LIST_LIMIT, render_text
from dispatcher.engine.types import ClaimedDelivery, LevelRules
from engine.harness import MaxRandom

RULES = LevelRules(ack_timeout=300.0, device_ack_timeout=60.0, max_attempts=3, visit=True)
NOW = 1_000_000.0

SMS = ClaimedDelivery(
    id=7,
    warning_seq=1,
    warning_id="w1",
    level="red",
    audience="grid_member",
    target_id="p01",
    channel="sms",
    area_code="611002001001",
    attempt=1,
    address="+8613800000001",
)
SPEAKER = replace(SMS, id=8, audience="device", target_id="spk-a1a", channel="speaker")


def backoff() -> Backoff:
    return Backoff(base=2.0, cap=100.0, rng=MaxRandom())


def run(delivery: ClaimedDelivery, outcome: object) -> object:
    return decide(
        delivery,
        outcome,  # type: ignore[arg-type]
        rules=RULES,
        now=NOW,
        adapter="sms1",
        retry_delay=backoff().delay,
    )


def test_accepted_waits_for_the_acknowledgement_until_the_audience_deadline() -> None:
    person = run(SMS, Accepted(reference="SM123"))
    device = run(SPEAKER, Accepted())

    assert person.state is DeliveryState.SENT
    assert person.due_at == NOW + RULES.ack_timeout
    assert person.reference == "SM123"
    assert person.adapter == "sms1"
    assert not person.escalate
    assert device.state is DeliveryState.SENT
    assert device.due_at == NOW + RULES.device_ack_timeout


def test_accepted_as_delivered_is_delivered_and_still_awaits_the_acknowledgement() -> None:
    t = run(SPEAKER, Accepted(reference="f1", delivered=True))
    assert t.state is DeliveryState.DELIVERED
    assert t.due_at == NOW + RULES.device_ack_timeout


def test_retry_waits_with_backoff_and_does_not_escalate() -> None:
    first = run(SMS, Retry("busy"))
    second = run(replace(SMS, attempt=2), Retry("busy"))

    assert first.state is DeliveryState.RETRY_WAIT
    assert first.due_at == NOW + 2.0
    assert second.due_at == NOW + 4.0
    assert first.reason == "busy"
    assert not first.escalate
    assert first.attempt == 1


def test_retry_after_is_honoured_even_beyond_the_backoff() -> None:
    t = run(SMS, Retry("429", after=37.5))
    assert t.state is DeliveryState.RETRY_WAIT
    assert t.due_at is not None
    assert t.due_at >= NOW + 37.5
    assert t.detail == {"retry_after": 37.5}


def test_retry_at_max_attempts_fails_and_escalates() -> None:
    t = run(replace(SMS, attempt=RULES.max_attempts), Retry("busy"))
    assert t.state is DeliveryState.FAILED
    assert t.escalate
    assert "gave up after 3 attempts" in t.reason
    assert "busy" in t.reason


def test_retry_below_max_attempts_is_not_failed() -> None:
    t = run(replace(SMS, attempt=RULES.max_attempts - 1), Retry("busy"))
    assert t.state is DeliveryState.RETRY_WAIT


def test_failed_is_permanent_and_escalates_at_once() -> None:
    t = run(SMS, Failed("unknown number"))
    assert t.state is DeliveryState.FAILED
    assert t.escalate
    assert t.reason == "unknown number"


def test_anything_else_is_refused() -> None:
    with pytest.raises(TypeError):
        run(SMS, True)


def test_put_back_does_not_count_the_attempt() -> None:
    t = put_back(replace(SMS, attempt=2), due_at=NOW + 1, reason="its adapter is busy")
    assert t.state is DeliveryState.RETRY_WAIT
    assert t.uncount_attempt
    assert t.attempt == 1
    assert t.due_at == NOW + 1


# -- message text ---------------------------------------------------------------------------------
def content(**changes: object) -> WarningContent:
    base = WarningContent(
        id="w1",
        status=Status.ACTUAL,
        msg_type=MsgType.ALERT,
        level=Level.RED,
        event="暴雨",
        headline="商州区暴雨红色预警",
        description="",
        instruction="立即转移",
        area_codes=("611002000000",),
        sent=datetime(2025, 7, 1, 2, 0, tzinfo=UTC),
        expires=datetime(2025, 7, 1, 8, 30, tzinfo=UTC),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "prefix"),
    [(Status.TEST, "【测试，非真实预警】"), (Status.EXERCISE, "【演练，非真实预警】")],
)
@pytest.mark.parametrize("audience", ["device", "grid_member", "person", "visit"])
@pytest.mark.parametrize("msg_type", list(MsgType))
def test_test_and_exercise_say_so_first(
    status: Status, prefix: str, audience: str, msg_type: MsgType
) -> None:
    text = render_text(
        content(status=status, msg_type=msg_type), audience=audience, households=("h1",)
    )
    assert text.startswith(prefix)


@pytest.mark.parametrize("audience", ["device", "grid_member", "household", "person", "visit"])
@pytest.mark.parametrize("msg_type", list(MsgType))
def test_actual_is_never_prefixed(audience: str, msg_type: MsgType) -> None:
    text = render_text(content(msg_type=msg_type), audience=audience, households=("h1",))
    for marker in ("测试", "演练", "非真实", "草稿"):
        assert marker not in text
    assert text.startswith("【")


def test_alert_text_names_level_headline_instruction_local_expiry_and_how_to_confirm() -> None:
    text = render_text(content(), audience="person")
    assert text.startswith("【红色预警】商州区暴雨红色预警。立即转移。")
    assert "有效至07月01日16:30" in text  # 08:30 UTC is 16:30 in Beijing time
    assert text.endswith("收到请回复1。")


def test_device_text_is_the_whole_warning_read_aloud_without_asking_for_a_reply() -> None:
    text = render_text(content(description="未来6小时降雨量将达100毫米以上"), audience="device")
    assert text.startswith("【红色预警】商州区暴雨红色预警。未来6小时降雨量将达100毫米以上。")
    assert "立即转移。" in text
    assert text.endswith("有效至07月01日16:30。")
    assert "回复" not in text


def test_update_is_marked() -> None:
    assert "【更新】" in render_text(content(msg_type=MsgType.UPDATE), audience="person")


def test_cancel_text_says_it_is_lifted_and_asks_nothing() -> None:
    text = render_text(content(msg_type=MsgType.CANCEL), audience="person")
    assert text == "【解除】暴雨预警已解除。商州区暴雨红色预警"
    assert "回复1" not in text


def test_visit_text_lists_the_households() -> None:
    text = render_text(content(), audience="visit", households=("h1", "h2"))
    assert "入户" in text
    assert "h1、h2" in text
    assert "共2户" in text


def test_visit_text_shortens_a_long_list() -> None:
    households = tuple(f"h{i:03d}" for i in range(VISIT_LIST_LIMIT + 5))
    text = render_text(content(), audience="visit", households=households)
    assert f"h{VISIT_LIST_LIMIT - 1:03d}" in text
    assert f"h{VISIT_LIST_LIMIT:03d}" not in text
    assert f"等{VISIT_LIST_LIMIT + 5}户" in text


def test_expiry_is_shown_in_beijing_time_across_midnight() -> None:
    text = render_text(
        content(expires=datetime(2025, 7, 1, 17, 5, tzinfo=UTC) + timedelta(0)), audience="person"
    )
    assert "有效至07月02日01:05" in text

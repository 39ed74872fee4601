"""The Twilio adapters' parts, each alone: segment counting, error codes, pacing, settings,
reply words, the call's TwiML."""

from __future__ import annotations

from typing import Any

import defusedxml.ElementTree as SafeET
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters.sms_text.replies import masked, normalise_reply
from adapters.sms_text.segments import count_segments, fit
from adapters.twilio.errors import delivery_error, request_error
from adapters.twilio.fake_server import sms_segments
from adapters.twilio.pacing import CallSlots, SenderPool
from adapters.twilio.settings import TwilioSmsSettings, TwilioVoiceSettings
from adapters.twilio.sms import CONFIRM_TAIL
from adapters.twilio.voice import TwilioVoiceAdapter

SID = "AC" + "0" * 32
BASE: dict[str, Any] = {
    "account_sid": SID,
    "auth_token": "token",
    "public_url": "https://tocsin.example.cn",
}


# -- segments ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "encoding", "count"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # extension characters take two septets
        ("€" * 81, "GSM-7", 2),
        ("预" * 70, "UCS-2", 1),
        ("预" * 71, "UCS-2", 2),
        ("预" * 134, "UCS-2", 2),
        ("预" * 135, "UCS-2", 3),
        ("a" * 159 + "预", "UCS-2", 3),  # one Chinese character makes the whole text UCS-2
        ("🌧" * 35, "UCS-2", 1),  # an emoji is two UTF-16 code units
        ("🌧" * 36, "UCS-2", 2),
        ("", "GSM-7", 1),
    ],
)
def test_segments(text: str, encoding: str, count: int) -> None:
    segments = count_segments(text)
    assert (segments.encoding, segments.count) == (encoding, count)


@given(st.text(alphabet=st.sampled_from([*"ab1 @€[]^预警山洪，。", "🌧", "😀"]), max_size=400))
def test_segments_agree_with_the_fake_servers_independent_count(text: str) -> None:
    assert count_segments(text).count == sms_segments(text)


def test_a_character_is_never_split_between_parts() -> None:
    # 66 + 2 + 66 code units: the emoji does not fit in the first part's last unit.
    assert count_segments("中" * 66 + "😀" + "中" * 66).count == 3
    assert count_segments("a" * 152 + "€" + "a" * 10).count == 2


def test_fit_keeps_short_text_and_the_confirmation_of_long_text() -> None:
    short = "【红色预警】山洪。" + CONFIRM_TAIL
    assert fit(short, 1, keep_tail=CONFIRM_TAIL) == short
    long = "【红色预警】" + "山洪暴发" * 100 + CONFIRM_TAIL
    for limit in (1, 2, 5):
        shortened = fit(long, limit, keep_tail=CONFIRM_TAIL)
        assert count_segments(shortened).count <= limit
        assert shortened.endswith("…" + CONFIRM_TAIL)
        # As much as fits: one more character would not.
        assert count_segments(shortened).units > 67 * limit - 10 or limit == 1


# -- error codes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (400, 21211, False),  # invalid number
        (400, 21610, False),  # unsubscribed
        (400, 21614, False),  # not a mobile
        (429, 20429, True),
        (401, 20003, True),  # the account's problem, not the person's: the breaker pauses
        (500, None, True),
        (503, 20503, True),
        (400, 99999, True),  # unknown: retried, the level's attempts bound it
    ],
)
def test_request_errors(status: int, code: int | None, retryable: bool) -> None:
    error = request_error(status, code, "message")
    assert error.retryable is retryable
    assert str(code or status) in error.describe()


@pytest.mark.parametrize(
    ("code", "retryable"),
    [(30003, True), (30005, False), (30006, False), (30007, False), (30008, True), (None, True)],
)
def test_delivery_errors(code: int | None, retryable: bool) -> None:
    assert delivery_error(code, "undelivered").retryable is retryable


# -- pacing -------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sender_pool_keeps_each_sender_to_its_rate() -> None:
    clock = Clock()
    pool = SenderPool(["+8610690000001", "+8610690000002"], rate=1.0, clock=clock)
    taken = [pool.take(f"+86138000000{i:02d}") for i in range(3)]
    assert sorted(t for t in taken if t) == ["+8610690000001", "+8610690000002"]
    assert taken[2] is None
    assert pool.seconds_until_free() == pytest.approx(1.0)
    clock.now += 1.0
    assert pool.take("+8613800000099") is not None


def test_sender_pool_keeps_a_person_on_their_sender() -> None:
    pool = SenderPool([f"+86106900000{i:02d}" for i in range(10)], rate=100.0, clock=Clock())
    first = pool.take("+8613812345678")
    assert all(pool.take("+8613812345678") == first for _ in range(20))
    spread = {pool.take(f"+86138{i:08d}") for i in range(50)}
    assert len(spread) > 5


def test_call_slots() -> None:
    clock = Clock()
    slots = CallSlots(2, timeout=60, clock=clock)
    assert slots.reserve()
    assert slots.reserve()
    assert not slots.reserve()
    slots.started("CA1")
    slots.started(None)  # the create failed: its slot is free again
    assert slots.free() == 1
    slots.ended("CA1")
    assert slots.free() == 2
    assert slots.reserve()
    slots.started("CA2")
    clock.now += 61  # the final callback never came
    assert slots.free() == 2


# -- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "give senders (E.164 numbers) or a messaging_service_sid"),
        ({"senders": ["13800138000"]}, "E.164"),
        ({"senders": ["+86 138 0013 8000"]}, "must be written in E.164: +8613800138000"),
        ({"senders": ["+8610690000001", "+8610690000001"]}, "lists a number twice"),
        (
            {"senders": ["+8610690000001"], "messaging_service_sid": "MG" + "1" * 32},
            "not both",
        ),
    ],
)
def test_sms_settings_errors_name_the_problem(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        TwilioSmsSettings.model_validate({**BASE, **extra})
    assert message in str(info.value)


def test_settings_reject_a_bad_account_sid_and_keep_the_token_secret() -> None:
    with pytest.raises(ValidationError, match="account_sid"):
        TwilioSmsSettings.model_validate(
            {**BASE, "account_sid": "nope", "senders": ["+8610690000001"]}
        )
    settings = TwilioSmsSettings.model_validate({**BASE, "senders": ["+8610690000001"]})
    assert "token" not in repr(settings).replace("auth_token", "")
    assert settings.hook_url("sms", "status") == "https://tocsin.example.cn/hooks/sms/status"


# -- replies ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "normal"),
    [("1", "1"), ("１", "1"), (" 1。", "1"), ("收到！", "收到"), ("y", "y"), ("Y ", "y")],
)
def test_replies_are_normalised(reply: str, normal: str) -> None:
    assert normalise_reply(reply) == normal


def test_numbers_are_masked_in_logs() -> None:
    assert masked("+8613812345678") == "+…5678"
    assert "1381234" not in masked("+8613812345678")


# -- the call -----------------------------------------------------------------------------------
def test_call_twiml_reads_twice_and_gathers_one_key() -> None:
    settings = TwilioVoiceSettings.model_validate({**BASE, "callers": ["+8610690000001"]})
    adapter = TwilioVoiceAdapter(name="voice", settings=settings)
    xml = adapter.call_twiml("【红色预警】山洪<危险>。确认收到请按1。", 42)
    root = SafeET.fromstring(xml)
    (gather,) = root.findall("Gather")
    assert gather.get("numDigits") == "1"
    assert gather.get("action") == "https://tocsin.example.cn/hooks/voice/gather?d=42&prompt=1"
    says = gather.findall("Say")
    assert len(says) == 2
    assert all(s.get("language") == "cmn-CN" for s in says)
    # Escaped, not injected: the text stays one Say's text.
    assert says[0].text == "红色预警，山洪<危险>。确认收到请按1。"
    assert [child.tag for child in root][-1] == "Hangup"

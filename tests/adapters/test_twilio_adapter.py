"""The Twilio adapters alone against the fake Twilio server: what they send (a messaging
service, a long text shortened to its segments, refusals by error code) and what they learn
when asked (status polling)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.sms_text.segments import count_segments
from adapters.twilio.fake_script import FakeScript, NumberScript
from adapters.twilio.fake_server import FakeTwilio
from adapters.twilio.settings import TwilioSmsSettings
from adapters.twilio.sms import CONFIRM_TAIL, TwilioSmsAdapter
from dispatcher.adapter import (
    Accepted,
    DeviceStatus,
    Dispatch,
    Failed,
    Report,
    ReportState,
    Retry,
    WarningContent,
)
from dispatcher.domain import Audience, Channel, Level, MsgType, Status

SID = "AC" + "9" * 32
TOKEN = "adapter-token"
SENDER = "+8610690000001"
SERVICE = "MG" + "a" * 32


class Context:
    adapter_name = "sms"
    node_name = "test-node"

    def __init__(self) -> None:
        self.reports: list[Report] = []

    def report(self, report: Report) -> None:
        self.reports.append(report)

    def device_status(self, status: DeviceStatus) -> None:
        raise AssertionError("SMS has no devices")


def dispatch(to: str, text: str, delivery_id: int = 7) -> Dispatch:
    now = datetime.now(UTC)
    warning = WarningContent(
        id="W1",
        status=Status.EXERCISE,
        msg_type=MsgType.ALERT,
        level=Level.RED,
        event="暴雨",
        headline="暴雨红色预警",
        description="",
        instruction="",
        area_codes=("611002001001",),
        sent=now,
        expires=now + timedelta(hours=2),
    )
    return Dispatch(
        delivery_id=delivery_id,
        warning=warning,
        channel=Channel.SMS,
        audience=Audience.PERSON,
        target_id="p1",
        address=to,
        area_code="611002001001",
        attempt=1,
        text=text,
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(accounts={SID: TOKEN}, numbers=[SENDER]) as running:
        yield running


async def started(fake: FakeTwilio, **settings: Any) -> TwilioSmsAdapter:
    model = TwilioSmsSettings.model_validate(
        {
            "account_sid": SID,
            "auth_token": TOKEN,
            "public_url": "https://tocsin.example.cn",
            "api_base_url": fake.url,
            "sender_rate": 100,
            **({"senders": [SENDER]} if "messaging_service_sid" not in settings else {}),
            **settings,
        }
    )
    adapter = TwilioSmsAdapter(name="sms", settings=model)
    await adapter.start(Context())
    return adapter


async def test_a_messaging_service_picks_the_sender_within_the_warnings_validity(
    fake: FakeTwilio,
) -> None:
    adapter = await started(fake, messaging_service_sid=SERVICE, messaging_service_rate=50)
    try:
        (outcome,) = await adapter.send([dispatch("+8613812345678", "演练。" + CONFIRM_TAIL)])
        assert isinstance(outcome, Accepted)
        (message,) = fake.sent
        assert message.messaging_service_sid == SERVICE
        assert message.status_callback == "https://tocsin.example.cn/hooks/sms/status?d=7"
        assert adapter.send_rate().per_second == 50
    finally:
        await adapter.stop()


async def test_a_long_text_is_shortened_to_its_segments_keeping_the_reply_request(
    fake: FakeTwilio,
) -> None:
    adapter = await started(fake, max_segments=2)
    try:
        text = "【红色预警】" + "山洪暴发，立即转移。" * 40 + CONFIRM_TAIL
        (outcome,) = await adapter.send([dispatch("+8613812345678", text)])
        assert isinstance(outcome, Accepted)
        (message,) = fake.sent
        assert message.body.endswith("…" + CONFIRM_TAIL)
        assert message.num_segments == 2
        assert outcome.detail["segments"] == count_segments(message.body).count == 2
        assert outcome.detail["twilio_segments"] == 2
        assert outcome.detail["encoding"] == "UCS-2"
        assert outcome.detail["from"] == SENDER
    finally:
        await adapter.stop()


async def test_refusals_by_error_code(fake: FakeTwilio) -> None:
    fake.script = FakeScript(unsubscribed=frozenset({"+8613800000610"}))
    adapter = await started(fake)
    try:
        stop, bad, good = await adapter.send(
            [
                dispatch("+8613800000610", "x"),
                dispatch("+86123", "x"),
                dispatch("+8613812345678", "x"),
            ]
        )
        assert isinstance(stop, Failed)
        assert stop.detail["error_code"] == 21610
        assert "unsubscribed" in stop.reason
        assert isinstance(bad, Failed)
        assert bad.detail["error_code"] == 21211
        assert isinstance(good, Accepted)
        fake.script = FakeScript(rate_limit_burst=1, retry_after=7)
        (limited,) = await adapter.send([dispatch("+8613812345678", "x")])
        assert isinstance(limited, Retry)
        assert limited.after == 7
        assert limited.detail["error_code"] == 20429
    finally:
        await adapter.stop()


async def test_poll_status_reads_the_message_from_twilio(fake: FakeTwilio) -> None:
    fake.script = FakeScript(per_number={"+8613800000005": NumberScript(sms="undelivered:30005")})
    adapter = await started(fake)
    try:
        ok, gone = await adapter.send(
            [dispatch("+8613812345678", "x"), dispatch("+8613800000005", "x", 8)]
        )
        assert isinstance(ok, Accepted)
        assert isinstance(gone, Accepted)
        await fake.wait_idle()
        delivered = await adapter.poll_status(ok.reference)
        failed = await adapter.poll_status(gone.reference)
        assert delivered is not None
        assert delivered.state is ReportState.DELIVERED
        assert failed is not None
        assert failed.state is ReportState.FAILED
        assert failed.retryable is False
        assert failed.detail["error_code"] == 30005
        assert await adapter.poll_status("SM" + "0" * 32) is None
    finally:
        await adapter.stop()

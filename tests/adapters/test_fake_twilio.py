"""The fake Twilio API server as the real ``twilio`` client (AsyncTwilioHttpClient) sees it:
resources, errors, rate limits; and as a webhook sees it: status callbacks, replies and key
presses, signed (checked here with twilio's own RequestValidator), in Twilio's order. Last, the
``tocsin simulate twilio`` command in a subprocess."""

from __future__ import annotations

import asyncio
import base64
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from adapters.twilio.fake_script import FakeScript, NumberScript
from adapters.twilio.fake_server import FakeTwilio, sms_segments

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "f" * 32
SENDER = "+8610690000001"
PERSON = "+8613800000001"
OTHER = "+8613800000002"
SERVICE = "MG" + "a" * 32
RFC2822 = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000")
TWILIO_CLI = Path(sys.executable).parent / "tocsin"
#: twilio's async client passes aiohttp a BasicAuth, which aiohttp 3.14 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:twilio.*")


# -- a webhook receiver ---------------------------------------------------------------------------
@dataclass
class Hit:
    method: str
    path: str
    url: str
    params: dict[str, str]
    order: list[str]
    signature_ok: bool
    headers: dict[str, str]


@dataclass
class Receiver:
    """A daemon's webhooks, as far as the fake can tell: records every request, checks its
    signature with twilio's RequestValidator, answers what ``answers`` says (TwiML for the
    voice paths)."""

    base: str = ""
    token: str = TOKEN
    hits: list[Hit] = field(default_factory=list)
    answers: dict[str, tuple[int, str]] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def at(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            form = await request.post()
            order = list(form.keys())
            params = {k: str(v) for k, v in form.items()}
            signed: dict[str, str] = params
        else:
            order = list(request.query.keys())
            params = dict(request.query)
            signed = {}
        signature = request.headers.get("X-Twilio-Signature", "")
        valid = RequestValidator(self.token).validate(str(request.url), signed, signature)
        self.hits.append(
            Hit(
                request.method,
                request.path,
                str(request.url),
                params,
                order,
                bool(valid),
                dict(request.headers),
            )
        )
        status, body = self.answers.get(request.path, (200, ""))
        return web.Response(status=status, text=body, content_type="text/xml")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    found.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield found
    await runner.cleanup()


@pytest.fixture
async def fake(receiver: Receiver) -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(
        accounts={SID: TOKEN}, script=FakeScript(), sms_url=receiver.url("/sms/inbound")
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_twilio_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    monkeypatch.delenv("TWILIO_REGION", raising=False)


def make_client(
    url: str, *, sid: str = SID, token: str = TOKEN, timeout: float | None = None
) -> Client:
    client = Client(sid, token, http_client=AsyncTwilioHttpClient(timeout=timeout))
    client.edge = None
    client.region = None
    client.api.base_url = url
    return client


@pytest.fixture
async def client(fake: FakeTwilio) -> AsyncIterator[Client]:
    made = make_client(fake.url)
    yield made
    await made.http_client.close()


def basic(sid: str = SID, token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()}


async def raw_create(fake: FakeTwilio, data: dict[str, str]) -> tuple[int, dict[str, Any], Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{fake.url}/2010-04-01/Accounts/{SID}/Messages.json", data=data, headers=basic()
        ) as response,
    ):
        return response.status, await response.json(), response.headers


def statuses(hits: list[Hit]) -> list[str]:
    return [hit.params.get("MessageStatus") or hit.params["CallStatus"] for hit in hits]


# -- messages -------------------------------------------------------------------------------------
async def test_create_answers_twilios_message_json(fake: FakeTwilio) -> None:
    status, body, headers = await raw_create(
        fake, {"To": PERSON, "From": SENDER, "Body": "暴雨红色预警，回复1确认"}
    )
    assert status == 201
    assert headers["Content-Type"].startswith("application/json")
    assert set(body) >= {
        "account_sid", "api_version", "body", "date_created", "date_sent", "date_updated",
        "direction", "error_code", "error_message", "from", "messaging_service_sid",
        "num_media", "num_segments", "price", "price_unit", "sid", "status",
        "subresource_uris", "to", "uri",
    }  # fmt: skip
    assert re.fullmatch(r"SM[0-9a-f]{32}", body["sid"])
    assert body["account_sid"] == SID
    assert body["api_version"] == "2010-04-01"
    assert body["status"] == "queued"
    assert body["direction"] == "outbound-api"
    assert body["num_segments"] == "1"
    assert body["num_media"] == "0"
    assert body["from"] == SENDER
    assert body["to"] == PERSON
    assert body["error_code"] is None
    assert body["error_message"] is None
    assert body["price"] is None
    assert body["price_unit"] == "USD"
    assert body["messaging_service_sid"] is None
    assert RFC2822.fullmatch(body["date_created"])
    assert RFC2822.fullmatch(body["date_updated"])
    assert body["uri"] == f"/2010-04-01/Accounts/{SID}/Messages/{body['sid']}.json"
    assert body["subresource_uris"]["media"].endswith(f"/Messages/{body['sid']}/Media.json")


async def test_a_messaging_service_answers_accepted(fake: FakeTwilio, client: Client) -> None:
    message = await client.messages.create_async(
        to=PERSON, messaging_service_sid=SERVICE, body="test"
    )
    assert message.status == "accepted"
    assert message.messaging_service_sid == SERVICE
    await fake.wait_idle()
    assert fake.message(message.sid).from_ is not None


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        pytest.param("a" * 160, 1, id="gsm-160"),
        pytest.param("a" * 161, 2, id="gsm-161"),
        pytest.param("a" * 306, 2, id="gsm-306"),
        pytest.param("a" * 307, 3, id="gsm-307"),
        pytest.param("€" * 80, 1, id="gsm-extension-80x2"),
        pytest.param("€" * 81, 2, id="gsm-extension-81x2"),
        pytest.param("中" * 70, 1, id="ucs2-70"),
        pytest.param("中" * 71, 2, id="ucs2-71"),
        pytest.param("中" * 134, 2, id="ucs2-134"),
        pytest.param("中" * 135, 3, id="ucs2-135"),
        pytest.param("a" * 69 + "中", 1, id="one-chinese-char-makes-ucs2"),
        pytest.param("a" * 70 + "中", 2, id="ucs2-71-mixed"),
        pytest.param("😀" * 35, 1, id="emoji-35x2"),
        pytest.param("😀" * 36, 2, id="emoji-36x2"),
        pytest.param("中" * 66 + "😀", 1, id="emoji-fits-in-70"),
        pytest.param("中" * 70 + "😀", 2, id="emoji-72-units"),
    ],
)
async def test_num_segments(fake: FakeTwilio, client: Client, body: str, segments: int) -> None:
    message = await client.messages.create_async(to=PERSON, from_=SENDER, body=body)
    assert message.num_segments == str(segments)
    assert sms_segments(body) == segments


def test_a_part_never_splits_an_emoji_or_an_escape() -> None:
    # 66 units, then an emoji (2 units) does not fit in the first 67: it starts the second.
    assert sms_segments("中" * 66 + "😀" + "中" * 66) == 3
    assert sms_segments("a" * 152 + "€" + "a" * 152) == 3


async def test_status_callbacks_sent_then_delivered_signed(
    fake: FakeTwilio, client: Client, receiver: Receiver
) -> None:
    callback = receiver.url("/hooks/sms/status?d=42&x=a%20b")
    message = await client.messages.create_async(
        to=PERSON, from_=SENDER, body="预警", status_callback=callback
    )
    await fake.wait_idle()
    hits = receiver.at("/hooks/sms/status")
    assert statuses(hits) == ["sent", "delivered"]
    for hit in hits:
        assert hit.signature_ok
        assert hit.url == callback
        assert hit.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
        assert hit.params["MessageSid"] == hit.params["SmsSid"] == message.sid
        assert hit.params["SmsStatus"] == hit.params["MessageStatus"]
        assert hit.params["AccountSid"] == SID
        assert hit.params["From"] == SENDER
        assert hit.params["To"] == PERSON
        assert hit.params["ApiVersion"] == "2010-04-01"
        assert "ErrorCode" not in hit.params
    assert hits[0].order[:3] == ["SmsSid", "SmsStatus", "MessageStatus"]
    assert re.fullmatch(r"\d{10}", hits[1].params["RawDlrDoneDate"])
    fetched = await client.messages(message.sid).fetch_async()
    assert fetched.status == "delivered"
    assert fetched.date_sent is not None


async def test_undelivered_and_failed_carry_their_error_code(
    fake: FakeTwilio, client: Client, receiver: Receiver
) -> None:
    fake.script = FakeScript(
        per_number={
            PERSON: NumberScript(sms="undelivered:30005"),
            OTHER: NumberScript(sms="failed"),
        }
    )
    undelivered = await client.messages.create_async(
        to=PERSON, from_=SENDER, body="x", status_callback=receiver.url("/a")
    )
    failed = await client.messages.create_async(
        to=OTHER, from_=SENDER, body="x", status_callback=receiver.url("/b")
    )
    await fake.wait_idle()
    assert statuses(receiver.at("/a")) == ["sent", "undelivered"]
    assert receiver.at("/a")[1].params["ErrorCode"] == "30005"
    assert receiver.at("/a")[1].order[0] == "ErrorCode"
    # A failed message never reached a carrier: only "failed".
    assert statuses(receiver.at("/b")) == ["failed"]
    assert receiver.at("/b")[0].params["ErrorCode"] == "30008"
    assert all(hit.signature_ok for hit in receiver.hits)
    fetched = await client.messages(undelivered.sid).fetch_async()
    assert (fetched.status, fetched.error_code) == ("undelivered", 30005)
    assert (await client.messages(failed.sid).fetch_async()).error_code == 30008


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        pytest.param({"to": "12345"}, 400, 21211, id="to-not-e164"),
        pytest.param({"from_": "+8610690000009"}, 400, 21606, id="from-not-ours"),
        pytest.param({"from_": "tocsin!"}, 400, 21212, id="from-malformed"),
        pytest.param({"body": ""}, 400, 21602, id="empty-body"),
        pytest.param({"body": "a" * 1601}, 400, 21617, id="body-over-1600"),
        pytest.param({"to": OTHER}, 400, 21610, id="unsubscribed"),
        pytest.param({"token": "wrong"}, 401, 20003, id="wrong-token"),
    ],
)
async def test_errors_raise_twilio_rest_exception(
    kwargs: dict[str, str], status: int, code: int
) -> None:
    script = FakeScript(unsubscribed=frozenset({OTHER}))
    async with FakeTwilio(accounts={SID: TOKEN}, script=script, numbers=[SENDER]) as fake:
        client = make_client(fake.url, token=kwargs.pop("token", TOKEN))
        arguments = {"to": PERSON, "from_": SENDER, "body": "x", **kwargs}
        try:
            with pytest.raises(TwilioRestException) as raised:
                await client.messages.create_async(**arguments)
        finally:
            await client.http_client.close()
        assert (raised.value.status, raised.value.code) == (status, code)
        assert fake.sent == []
    if code == 21211:
        assert "The 'To' number 12345 is not a valid phone number." in raised.value.msg
    if code == 21610:
        assert raised.value.msg.endswith("Attempt to send to unsubscribed recipient")


async def test_wrong_credentials_answer_twilios_401(fake: FakeTwilio) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{fake.url}/2010-04-01/Accounts/{SID}.json", headers=basic(token="nope")
        ) as response,
    ):
        assert response.status == 401
        assert await response.json() == {
            "code": 20003,
            "message": "Authenticate",
            "more_info": "https://www.twilio.com/docs/errors/20003",
            "status": 401,
        }


async def test_a_burst_of_429_with_retry_after(fake: FakeTwilio, client: Client) -> None:
    fake.script = FakeScript(rate_limit_burst=2, retry_after=3)
    status, body, headers = await raw_create(fake, {"To": PERSON, "From": SENDER, "Body": "x"})
    assert (status, body["code"], headers["Retry-After"]) == (429, 20429, "3")
    assert body["message"] == "Too Many Requests"
    with pytest.raises(TwilioRestException) as raised:
        await client.messages.create_async(to=PERSON, from_=SENDER, body="x")
    assert (raised.value.status, raised.value.code) == (429, 20429)
    message = await client.messages.create_async(to=PERSON, from_=SENDER, body="x")
    assert [m.sid for m in fake.sent] == [message.sid]
    assert fake.stats()["rate_limited"] == 2


async def test_injected_server_errors(fake: FakeTwilio, client: Client) -> None:
    fake.script = FakeScript(error_rate=1.0)
    seen = set()
    for _ in range(12):
        with pytest.raises(TwilioRestException) as raised:
            await client.messages.create_async(to=PERSON, from_=SENDER, body="x")
        seen.add((raised.value.status, raised.value.code))
    assert seen == {(500, 20500), (503, 20503)}
    assert fake.sent == []


async def test_a_create_that_hangs_creates_nothing(fake: FakeTwilio, client: Client) -> None:
    fake.script = FakeScript(timeout_rate=1.0)
    # twilio's async client applies no timeout of its own: the caller gives up.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await client.messages.create_async(to=PERSON, from_=SENDER, body="x")
    assert fake.sent == []
    assert fake.stats()["timeouts_injected"] == 1
    fake.script = FakeScript()
    await client.messages.create_async(to=PERSON, from_=SENDER, body="x")
    assert len(fake.sent) == 1


async def test_callback_before_response(
    fake: FakeTwilio, client: Client, receiver: Receiver
) -> None:
    # Normally the answer comes first: the callback waits for the (short) delay.
    fake.script = FakeScript(callback_delay=0.2)
    await client.messages.create_async(
        to=PERSON, from_=SENDER, body="x", status_callback=receiver.url("/late")
    )
    assert receiver.at("/late") == []
    # The race: the "sent" callback has been answered before the create's answer arrives.
    fake.script = FakeScript(callback_delay=0.2, callback_before_response=True)
    message = await client.messages.create_async(
        to=PERSON, from_=SENDER, body="x", status_callback=receiver.url("/early")
    )
    assert statuses(receiver.at("/early")) == ["sent"]
    assert receiver.at("/early")[0].params["MessageSid"] == message.sid
    await fake.wait_idle()
    assert statuses(receiver.at("/early")) == ["sent", "delivered"]


async def test_duplicate_callbacks(fake: FakeTwilio, client: Client, receiver: Receiver) -> None:
    fake.script = FakeScript(duplicate_callbacks=True)
    await client.messages.create_async(
        to=PERSON, from_=SENDER, body="x", status_callback=receiver.url("/s")
    )
    await fake.wait_idle()
    hits = receiver.at("/s")
    assert statuses(hits) == ["sent", "sent", "delivered", "delivered"]
    tokens = [hit.headers["I-Twilio-Idempotency-Token"] for hit in hits]
    assert tokens[0] == tokens[1] != tokens[2] == tokens[3]
    assert all(hit.signature_ok for hit in hits)


async def test_callbacks_off_gives_final_statuses_at_once(
    fake: FakeTwilio, client: Client, receiver: Receiver
) -> None:
    fake.script = FakeScript(callbacks=False, sms_outcomes={"undelivered": 1.0}, reply_rate=1.0)
    message = await client.messages.create_async(
        to=PERSON, from_=SENDER, body="x", status_callback=receiver.url("/s")
    )
    assert message.status == "queued"
    fetched = await client.messages(message.sid).fetch_async()
    assert (fetched.status, fetched.error_code) == ("undelivered", 30003)
    await fake.wait_idle()
    assert receiver.hits == []


async def test_reply_posted_to_the_senders_sms_url(
    fake: FakeTwilio, client: Client, receiver: Receiver
) -> None:
    fake.script = FakeScript(per_number={PERSON: NumberScript(reply="收到")})
    await client.messages.create_async(to=PERSON, from_=SENDER, body="回复1确认")
    await client.messages.create_async(to=OTHER, from_=SENDER, body="回复1确认")  # no reply
    await fake.wait_idle()
    (hit,) = receiver.at("/sms/inbound")
    assert hit.signature_ok
    params = hit.params
    assert (params["Body"], params["From"], params["To"]) == ("收到", PERSON, SENDER)
    assert params["MessageSid"] == params["SmsMessageSid"] == params["SmsSid"]
    assert re.fullmatch(r"SM[0-9a-f]{32}", params["MessageSid"])
    assert (params["NumMedia"], params["NumSegments"]) == ("0", "1")
    assert (params["FromCountry"], params["ToCountry"]) == ("CN", "CN")
    assert (params["AccountSid"], params["ApiVersion"]) == (SID, "2010-04-01")
    (reply,) = fake.replies
    assert (reply.direction, reply.status, reply.body) == ("inbound", "received", "收到")
    inbound = await client.messages.list_async(to=SENDER)
    assert [m.sid for m in inbound] == [reply.sid]
    assert inbound[0].direction == "inbound"


async def test_reply_rate_draws_from_the_reply_texts(
    fake: FakeTwilio, client: Client, receiver: Receiver
) -> None:
    fake.script = FakeScript(reply_rate=1.0, reply_texts=("Y",))
    await client.messages.create_async(to=PERSON, from_=SENDER, body="x")
    await fake.wait_idle()
    assert [hit.params["Body"] for hit in receiver.at("/sms/inbound")] == ["Y"]


async def test_a_reply_now_and_without_sms_url(receiver: Receiver) -> None:
    async with FakeTwilio(accounts={SID: TOKEN}, numbers=[SENDER]) as fake:
        quiet = await fake.reply(from_=PERSON, to=SENDER, body="1")
        assert quiet.callbacks == []  # no sms_url: only recorded
        fake.add_number(SENDER, sms_url=receiver.url("/in"))
        loud = await fake.reply(from_=PERSON, to=SENDER, body="收到")
        assert [c.status for c in loud.callbacks] == [200]
        with pytest.raises(ValueError, match="not a number"):
            await fake.reply(from_=PERSON, to="+8610690000099", body="1")
    assert [hit.params["Body"] for hit in receiver.at("/in")] == ["收到"]


async def test_incoming_numbers_and_their_sms_url(
    fake: FakeTwilio, client: Client, receiver: Receiver
) -> None:
    (number,) = await client.incoming_phone_numbers.list_async(phone_number=SENDER)
    assert number.phone_number == SENDER
    assert number.sms_url == receiver.url("/sms/inbound")
    assert re.fullmatch(r"PN[0-9a-f]{32}", number.sid)
    updated = await client.incoming_phone_numbers(number.sid).update_async(
        sms_url=receiver.url("/elsewhere")
    )
    assert updated.sms_url == receiver.url("/elsewhere")
    await fake.reply(from_=PERSON, to=SENDER, body="1")
    assert len(receiver.at("/elsewhere")) == 1
    account = await client.api.accounts(SID).fetch_async()
    assert (account.sid, account.status) == (SID, "active")


async def test_list_messages_pages_newest_first(fake: FakeTwilio, client: Client) -> None:
    fake.script = FakeScript(callbacks=False)
    sids = [
        (await client.messages.create_async(to=PERSON, from_=SENDER, body=str(i))).sid
        for i in range(5)
    ]
    await client.messages.create_async(to=OTHER, from_=SENDER, body="other")
    listed = await client.messages.list_async(to=PERSON, page_size=2)
    assert [m.sid for m in listed] == sids[::-1]
    page = await client.messages.page_async(to=PERSON, page_size=2)
    assert page.next_page_url is not None
    with pytest.raises(TwilioRestException) as raised:
        await client.messages("SM" + "0" * 32).fetch_async()
    assert (raised.value.status, raised.value.code) == (404, 20404)


# -- calls ----------------------------------------------------------------------------------------
def gather_twiml(action: str) -> str:
    return (
        f'<Response><Gather numDigits="1" action="{action}" method="POST">'
        '<Say language="cmn-CN">暴雨红色预警。按1确认。</Say></Gather></Response>'
    )


async def test_call_events_and_the_gather(
    fake: FakeTwilio, client: Client, receiver: Receiver
) -> None:
    receiver.answers["/voice/gather"] = (200, "<Response><Say>谢谢</Say><Hangup/></Response>")
    call = await client.calls.create_async(
        to=PERSON,
        from_=SENDER,
        twiml=gather_twiml(receiver.url("/voice/gather?d=7")),
        status_callback=receiver.url("/voice/status?d=7"),
        status_callback_event=["initiated", "ringing", "answered", "completed"],
    )
    assert re.fullmatch(r"CA[0-9a-f]{32}", call.sid)
    assert (call.status, call.direction, call.duration) == ("queued", "outbound-api", None)
    await fake.wait_idle()
    events = receiver.at("/voice/status")
    assert statuses(events) == ["initiated", "ringing", "in-progress", "completed"]
    assert [hit.params["SequenceNumber"] for hit in events] == ["0", "1", "2", "3"]
    for hit in events:
        assert hit.signature_ok
        params = hit.params
        assert (params["CallSid"], params["AccountSid"]) == (call.sid, SID)
        assert (params["From"], params["Caller"], params["To"], params["Called"]) == (
            SENDER,
            SENDER,
            PERSON,
            PERSON,
        )
        assert params["Direction"] == "outbound-api"
        assert params["CallbackSource"] == "call-progress-events"
        assert RFC2822.fullmatch(params["Timestamp"])
    assert [hit.params["StatusCallbackEvent"] for hit in events] == [
        "initiated",
        "ringing",
        "answered",
        "completed",
    ]
    assert int(events[-1].params["CallDuration"]) >= 1
    (gather,) = receiver.at("/voice/gather")
    assert gather.signature_ok
    assert gather.params["Digits"] == "1"
    assert gather.params["CallStatus"] == "in-progress"
    assert gather.params["msg"] == "Gather End"
    assert gather.params["FinishedOnKey"] == ""
    recorded = fake.call(call.sid)
    assert [g.digits for g in recorded.gathers] == ["1"]
    assert recorded.gathers[0].twiml == "<Response><Say>谢谢</Say><Hangup/></Response>"
    fetched = await client.calls(call.sid).fetch_async()
    assert fetched.status == "completed"
    assert fetched.duration is not None
    assert int(fetched.duration) >= 1


async def test_only_completed_by_default_and_a_url_with_a_relative_action(
    fake: FakeTwilio, client: Client, receiver: Receiver
) -> None:
    receiver.answers["/voice/twiml"] = (200, gather_twiml("gather?step=2"))
    receiver.answers["/voice/gather"] = (200, "<Response><Hangup/></Response>")
    fake.script = FakeScript(per_number={PERSON: NumberScript(digits="2")})
    call = await client.calls.create_async(
        to=PERSON,
        from_=SENDER,
        url=receiver.url("/voice/twiml?d=9"),
        status_callback=receiver.url("/voice/status"),
    )
    await fake.wait_idle()
    assert statuses(receiver.at("/voice/status")) == ["completed"]
    assert receiver.at("/voice/status")[0].params["SequenceNumber"] == "0"
    (fetch,) = receiver.at("/voice/twiml")
    assert fetch.signature_ok
    assert (fetch.method, fetch.params["CallSid"]) == ("POST", call.sid)
    (gather,) = receiver.at("/voice/gather")
    assert gather.url == receiver.url("/voice/gather?step=2")
    assert gather.signature_ok
    assert gather.params["Digits"] == "2"


async def test_busy_no_answer_and_failed_calls(
    fake: FakeTwilio, client: Client, receiver: Receiver
) -> None:
    third = "+8613800000003"
    fake.script = FakeScript(
        per_number={
            PERSON: NumberScript(call="busy"),
            OTHER: NumberScript(call="no-answer"),
            third: NumberScript(call="failed:32009"),
        }
    )
    sids = {}
    for to, path in ((PERSON, "/busy"), (OTHER, "/noanswer"), (third, "/failed")):
        call = await client.calls.create_async(
            to=to,
            from_=SENDER,
            twiml=gather_twiml(receiver.url("/voice/gather")),
            status_callback=receiver.url(path),
            status_callback_event=["initiated", "ringing", "answered", "completed"],
        )
        sids[path] = call.sid
    await fake.wait_idle()
    assert statuses(receiver.at("/busy")) == ["initiated", "busy"]
    assert statuses(receiver.at("/noanswer")) == ["initiated", "ringing", "no-answer"]
    assert statuses(receiver.at("/failed")) == ["initiated", "failed"]
    assert receiver.at("/failed")[-1].params["ErrorCode"] == "32009"
    assert receiver.at("/busy")[-1].params["CallDuration"] == "0"
    assert receiver.at("/voice/gather") == []
    assert all(hit.signature_ok for hit in receiver.hits)
    assert (await client.calls(sids["/noanswer"]).fetch_async()).status == "no-answer"


async def test_a_press_now_and_nobody_pressing(
    fake: FakeTwilio, client: Client, receiver: Receiver
) -> None:
    fake.script = FakeScript(digits="", gather_timeout=30.0)
    call = await client.calls.create_async(
        to=PERSON, from_=SENDER, twiml=gather_twiml(receiver.url("/voice/gather"))
    )
    recorded = fake.call(call.sid)
    for _ in range(200):
        if recorded.waiting_at_gather:
            break
        await asyncio.sleep(0.01)
    started = time.monotonic()
    gather = await fake.press(call.sid, "17")
    assert gather.digits == "1"  # numDigits="1"
    await fake.wait_idle(5)
    assert time.monotonic() - started < 5  # the Gather's timeout was called off
    assert [hit.params["Digits"] for hit in receiver.at("/voice/gather")] == ["1"]
    assert recorded.status == "completed"
    with pytest.raises(LookupError):
        await fake.press(call.sid, "1")
    # Nobody presses: the Gather times out, nothing is posted (no actionOnEmptyResult).
    fake.script = FakeScript(digits="", gather_timeout=0.05)
    quiet = await client.calls.create_async(
        to=OTHER, from_=SENDER, twiml=gather_twiml(receiver.url("/voice/gather"))
    )
    await fake.wait_idle()
    assert [g.digits for g in fake.call(quiet.sid).gathers] == [None]
    assert len(receiver.at("/voice/gather")) == 1


async def test_call_validation_errors(fake: FakeTwilio, client: Client) -> None:
    with pytest.raises(TwilioRestException) as raised:
        await client.calls.create_async(to="13800", from_=SENDER, twiml="<Response/>")
    assert raised.value.code == 21211
    with pytest.raises(TwilioRestException) as raised:
        await client.calls.create_async(to=PERSON, from_=SENDER)
    assert raised.value.code == 21205


# -- test hooks ------------------------------------------------------------------------------------
async def test_post_callback_signed_unsigned_and_forged(
    fake: FakeTwilio, receiver: Receiver
) -> None:
    url = receiver.url("/hooks/sms/status?d=1")
    params = {"MessageSid": "SM" + "9" * 32, "MessageStatus": "delivered", "AccountSid": SID}
    signed = await fake.post_callback(url, params)
    unsigned = await fake.post_callback(url, params, sign=False)
    forged = await fake.post_callback(url, params, sign="forged")
    assert [hit.signature_ok for hit in receiver.hits] == [True, False, False]
    assert "X-Twilio-Signature" not in receiver.hits[1].headers
    assert signed.status == unsigned.status == forged.status == 200
    assert [r.kind for r in fake.callbacks()] == ["manual"] * 3


async def test_control_endpoints(fake: FakeTwilio, client: Client, receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{fake.url}/_fake/script",
            json={"per_number": {PERSON: {"sms": "undelivered:30006"}}, "callback_delay": 0.01},
        ) as response:
            assert response.status == 200
            assert (await response.json())["callback_delay"] == 0.01
        async with session.post(f"{fake.url}/_fake/script", json={"bogus": 1}) as response:
            assert response.status == 400
        message = await client.messages.create_async(
            to=PERSON, from_=SENDER, body="x", status_callback=receiver.url("/s")
        )
        async with session.post(f"{fake.url}/_fake/idle", json={"timeout": 5}) as response:
            assert (await response.json())["idle"] is True
        async with session.get(f"{fake.url}/_fake/messages", params={"to": PERSON}) as response:
            (record,) = (await response.json())["messages"]
        assert (record["sid"], record["status"], record["error_code"]) == (
            message.sid,
            "undelivered",
            30006,
        )
        assert [c["params"]["MessageStatus"] for c in record["callbacks"]] == [
            "sent",
            "undelivered",
        ]
        reply = {"from": PERSON, "to": SENDER, "body": "Y"}
        async with session.post(f"{fake.url}/_fake/reply", json=reply) as response:
            assert response.status == 200
        async with session.get(f"{fake.url}/_fake/stats") as response:
            stats = await response.json()
    assert stats["messages_created"] == 1
    assert stats["replies"] == 1
    assert stats["callbacks_sent"] == 3
    assert receiver.at("/sms/inbound")[0].params["Body"] == "Y"


def test_script_validates() -> None:
    with pytest.raises(ValueError, match="fraction"):
        FakeScript(reply_rate=2.0)
    with pytest.raises(ValueError, match="unknown outcome"):
        FakeScript(sms_outcomes={"lost": 1.0})
    with pytest.raises(ValueError, match="digits"):
        NumberScript(digits="x")
    script = FakeScript().updated({"unsubscribed": [PERSON], "sms_outcomes": {"failed:30007": 1}})
    assert script.unsubscribed == frozenset({PERSON})
    assert replace(script, seed=2).to_json()["sms_outcomes"] == {"failed:30007": 1.0}


# -- tocsin simulate twilio -----------------------------------------------------------------------
@pytest.fixture
def simulator_cli() -> list[str]:
    assert TWILIO_CLI.exists(), "install the project (pip install -e .) for the tocsin command"
    return [str(TWILIO_CLI), "simulate", "twilio"]


async def test_simulate_twilio_cli(simulator_cli: list[str], receiver: Receiver) -> None:
    process = await asyncio.create_subprocess_exec(
        *simulator_cli,
        "--port",
        "0",
        "--numbers",
        SENDER,
        "--sms-url",
        receiver.url("/sms/inbound"),
        "--callback-delay",
        "0",
        "--reply-rate",
        "1",
        "--reply-text",
        "收到",
        "--reply-delay",
        "0",
        "--verbose",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        lines: list[str] = []
        async with asyncio.timeout(20):
            while not any("auth_token" in line for line in lines):
                lines.append((await process.stdout.readline()).decode())
        text = "".join(lines)
        url = re.search(r"listening on (http://\S+)", text)
        sid = re.search(r'account_sid = "(AC[0-9a-f]{32})"', text)
        # The settings line names the token by reference; the demo token is printed to export.
        assert 'auth_token = "env:TWILIO_AUTH_TOKEN"' in text
        token = re.search(r"export TWILIO_AUTH_TOKEN=(\w+)", text)
        assert url and sid and token, text
        assert f'api_base_url = "{url[1]}"' in text
        receiver.token = token[1]
        client = make_client(url[1], sid=sid[1], token=token[1])
        try:
            message = await client.messages.create_async(
                to=PERSON, from_=SENDER, body="演练", status_callback=receiver.url("/s")
            )
            with pytest.raises(TwilioRestException) as raised:
                await client.messages.create_async(to=PERSON, from_="+8610690000009", body="x")
            assert raised.value.code == 21606
        finally:
            await client.http_client.close()
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url[1]}/_fake/idle", json={"timeout": 10}) as response,
        ):
            assert (await response.json())["idle"] is True
        assert statuses(receiver.at("/s")) == ["sent", "delivered"]
        assert all(hit.signature_ok for hit in receiver.hits)
        assert [hit.params["Body"] for hit in receiver.at("/sms/inbound")] == ["收到"]
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert f"{message.sid} delivered" in out.decode()
        assert "stopped" in out.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

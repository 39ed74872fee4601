"""SMS and calls end to end: the engine, the real ``twilio_sms`` / ``twilio_voice`` adapters
using the real twilio client, the fake Twilio server, and the daemon's HTTP API receiving the
signed callbacks, replies and key presses. The faults the issue names: 429 bursts, 5xx,
timeouts, a callback before the create's answer, duplicate callbacks, callbacks for unknown
SIDs, forged signatures: nothing lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import aiohttp
import pytest
from small_directory import VILLAGE_A1a, VILLAGE_A1b

from adapters.twilio.fake_script import FakeScript, NumberScript
from engine.conftest import MakeTocsin
from engine.harness import PHONE, config, policy, rule, wait_until
from engine.twilio_rig import Rig, twilio_rig

#: Texts first, then a call; people living alone are called; everyone else texted.
LADDER = policy(
    "red",
    ack_timeout="30s",
    rules=[
        rule("grid_members", "sms", "voice"),
        rule("lives_alone", "voice"),
        rule("everyone", "sms"),
    ],
)
#: Everyone called (the call tests).
CALLS = policy("red", ack_timeout="30s", max_attempts=3, rules=[rule("everyone", "voice")])
#: Everyone texted, nothing else.
TEXTS = policy("red", ack_timeout="30s", rules=[rule("everyone", "sms")])
ACKED = "acknowledged"


def person_states(rig: Rig, warning_id: str) -> dict[tuple[str, str], str]:
    return {
        (target, channel): state
        for (_, target, channel), state in rig.tocsin.states(warning_id).items()
        if channel in ("sms", "voice")
    }


def events(rig: Rig, target: str, channel: str) -> list[tuple[str, str, dict[str, Any]]]:
    rows = rig.tocsin.rows(
        "SELECT e.state, e.reason, e.detail FROM delivery_events e "
        "JOIN deliveries d ON d.id = e.delivery_id WHERE d.target_id = ? AND d.channel = ? "
        "ORDER BY e.id",
        (target, channel),
    )
    return [(s, r or "", json.loads(d) if d else {}) for s, r, d in rows]


async def settled(rig: Rig, warning_id: str, want: dict[tuple[str, str], str]) -> None:
    await wait_until(
        lambda: all(person_states(rig, warning_id).get(k) == v for k, v in want.items()),
        within=20,
        what=f"{want} (now {person_states(rig, warning_id)})",
    )


async def test_texts_and_calls_confirmed_by_reply_and_key_press(tocsin: MakeTocsin) -> None:
    script = FakeScript(reply_rate=1.0, reply_texts=("1", "收到", "Y", "１"), digits="1")
    async with twilio_rig(tocsin, script=script, policy=LADDER) as rig:
        warning = await rig.tocsin.warn((VILLAGE_A1a,))
        await rig.tocsin.start()
        await settled(
            rig,
            warning.id,
            {("p01", "sms"): ACKED, ("p02", "sms"): ACKED, ("p04", "voice"): ACKED},
        )
        await rig.fake.wait_idle()
        # The grid member confirmed the text: the held call is never made.
        assert [c.to for c in rig.fake.calls] == [PHONE["p04"].replace("0000000", "0000000")]
        sms = rig.fake.sent
        assert sorted(m.to for m in sms) == [PHONE["p01"], PHONE["p02"]]
        assert all("收到请回复1" in m.body and "【演练，非真实预警】" in m.body for m in sms)
        # What an operator reads in the log: the SID, the segments, the reply.
        sent, *rest = [e for e in events(rig, "p02", "sms")]
        assert sent[0] == "sent"
        assert sent[2]["sid"].startswith("SM")
        assert sent[2]["segments"] == sms[0].num_segments
        assert sent[2]["encoding"] == "UCS-2"
        assert [e[0] for e in rest] == ["delivered", ACKED]
        assert rest[1][2]["reply"] in ("1", "收到", "Y", "１")
        # The call read the warning twice and asked for 1; pressing 1 confirmed it.
        (call,) = rig.fake.calls
        assert call.twiml is not None
        assert call.twiml.count("<Say") >= 3
        assert "确认收到请按1" in call.twiml
        assert "收到请回复1" not in call.twiml
        voice = events(rig, "p04", "voice")
        assert [e[0] for e in voice][:2] == ["sent", ACKED]
        assert voice[1][2]["digits"] == "1"


async def test_undelivered_text_fails_by_error_code_and_the_ladder_calls(
    tocsin: MakeTocsin,
) -> None:
    script = FakeScript(
        digits="1",
        per_number={
            PHONE["p01"]: NumberScript(sms="undelivered:30005"),  # no such handset: final
            PHONE["p02"]: NumberScript(sms="undelivered:30003"),  # phone off: retried
        },
    )
    few = policy(
        "red",
        ack_timeout="30s",
        max_attempts=2,
        rules=[rule("grid_members", "sms", "voice"), rule("everyone", "sms")],
    )
    async with twilio_rig(tocsin, script=script, policy=few) as rig:
        warning = await rig.tocsin.warn((VILLAGE_A1a,))
        await rig.tocsin.start()
        await settled(
            rig,
            warning.id,
            {("p01", "sms"): "failed", ("p01", "voice"): ACKED, ("p02", "sms"): "failed"},
        )
        p01 = events(rig, "p01", "sms")
        assert [e[0] for e in p01] == ["sent", "failed"]
        assert p01[1][2]["error_code"] == 30005
        assert "30005" in p01[1][1]
        p02 = [e[0] for e in events(rig, "p02", "sms")]
        # Unreachable is tried again, up to the level's attempts.
        assert p02 == ["sent", "retry_wait", "sent", "failed"]
        assert Counter(m.to for m in rig.fake.sent)[PHONE["p02"]] == 2


@pytest.mark.parametrize(
    "faults",
    [
        {"callback_before_response": True},
        {"duplicate_callbacks": True},
        {"callback_before_response": True, "duplicate_callbacks": True},
    ],
    ids=["early-callback", "duplicates", "both"],
)
async def test_callback_races_and_duplicates_count_once(
    tocsin: MakeTocsin, faults: dict[str, Any]
) -> None:
    script = FakeScript(reply_rate=1.0, reply_texts=("1",), **faults)
    async with twilio_rig(tocsin, script=script, policy=TEXTS) as rig:
        warning = await rig.tocsin.warn((VILLAGE_A1a, VILLAGE_A1b))
        await rig.tocsin.start()
        people = ("p01", "p02", "p04", "p05", "p06")
        await settled(rig, warning.id, {(p, "sms"): ACKED for p in people})
        await rig.fake.wait_idle()
        await rig.tocsin.engine.intake.wait_idle()
        for person in people:
            states = [e[0] for e in events(rig, person, "sms")]
            assert states.count("delivered") == 1, (person, states)
            assert states.count(ACKED) == 1, (person, states)
            assert states.count("sent") == 1, (person, states)
        assert len(rig.fake.sent) == len(people)
        reached = rig.tocsin.reached(warning.id)
        assert {("person", p) for p in people} <= set(reached)


async def test_rate_limits_server_errors_and_timeouts_lose_nothing(tocsin: MakeTocsin) -> None:
    script = FakeScript(rate_limit_burst=3, retry_after=0, error_rate=0.3, timeout_rate=0.2, seed=5)
    async with twilio_rig(
        tocsin,
        script=script,
        policy=policy("red", ack_timeout="30s", max_attempts=10, rules=[rule("everyone", "sms")]),
        sms={"request_timeout": 0.5},
        config=config(retry_base=0.05, retry_cap=0.1),
    ) as rig:
        warning = await rig.tocsin.warn((VILLAGE_A1a, VILLAGE_A1b))
        await rig.tocsin.start()
        people = ("p01", "p02", "p04", "p05", "p06")
        await settled(rig, warning.id, {(p, "sms"): "delivered" for p in people})
        reasons = [e[1] for p in people for e in events(rig, p, "sms") if e[0] == "retry_wait"]
        assert any("20429" in r for r in reasons), reasons
        assert any("did not answer in time" in r for r in reasons), reasons
        assert any("2050" in r for r in reasons), reasons
        # A refused or timed-out create made no message: each person got exactly one.
        assert sorted(m.to for m in rig.fake.sent) == sorted(PHONE[p] for p in people)


async def test_forged_unsigned_and_unknown_callbacks_change_nothing(tocsin: MakeTocsin) -> None:
    async with twilio_rig(tocsin, script=FakeScript(callbacks=False), policy=TEXTS) as rig:
        # Without callbacks the fake gives each message its final status at once; the
        # deliveries stay "sent" in Tocsin until a callback says otherwise.
        warning = await rig.tocsin.warn((VILLAGE_A1a,))
        await rig.tocsin.start()
        await settled(rig, warning.id, {("p02", "sms"): "sent"})
        (message,) = [m for m in rig.fake.sent if m.to == PHONE["p02"]]
        delivery = rig.tocsin.rows(
            "SELECT id FROM deliveries WHERE target_id = 'p02' AND channel = 'sms'"
        )[0][0]
        url = rig.hook("sms", f"status?d={delivery}")
        params = {
            "AccountSid": "AC" + "5" * 32,
            "MessageSid": message.sid,
            "MessageStatus": "delivered",
            "To": PHONE["p02"],
            "From": "+8610690000001",
        }
        for sign in (False, "forged"):
            record = await rig.fake.post_callback(url, params, sign=sign)
            assert record.status == 403, record
        async with aiohttp.ClientSession() as session:
            # Signed for other parameters: tampered.
            good = await rig.fake.post_callback(url, {**params, "MessageStatus": "sent"})
            assert good.status == 204
            async with session.post(
                url, data=params, headers={"X-Twilio-Signature": good.signature or ""}
            ) as response:
                assert response.status == 403
            # A reply claiming to confirm, unsigned.
            async with session.post(
                rig.hook("sms", "inbound"), data={"From": PHONE["p02"], "Body": "1"}
            ) as response:
                assert response.status == 403
        # A signed callback for a SID Tocsin never sent, naming no delivery.
        unknown = await rig.fake.post_callback(
            rig.hook("sms", "status"), {**params, "MessageSid": "SM" + "f" * 32}
        )
        assert unknown.status == 204
        # (Its report waits up to 30 s for a send that might name the SID, then is rejected.)
        await asyncio.sleep(0.5)
        assert person_states(rig, warning.id)[("p02", "sms")] == "sent"
        # The genuine one moves it.
        record = await rig.fake.post_callback(url, params)
        assert record.status == 204
        await settled(rig, warning.id, {("p02", "sms"): "delivered"})


async def test_replies_from_strangers_or_not_confirming_are_only_logged(
    tocsin: MakeTocsin,
) -> None:
    async with twilio_rig(tocsin, script=FakeScript(), policy=TEXTS) as rig:
        warning = await rig.tocsin.warn((VILLAGE_A1a,))
        await rig.tocsin.start()
        await settled(rig, warning.id, {("p02", "sms"): "delivered"})
        stranger = await rig.fake.reply(from_="+8613999999999", to="+8610690000001", body="1")
        question = await rig.fake.reply(from_=PHONE["p02"], to="+8610690000001", body="什么情况？")
        await rig.fake.wait_idle()
        for reply in (stranger, question):
            assert all(c.status == 200 for c in reply.callbacks), reply.callbacks
        await asyncio.sleep(0.2)
        await rig.tocsin.engine.intake.wait_idle()
        assert person_states(rig, warning.id)[("p02", "sms")] == "delivered"
        confirm = await rig.fake.reply(from_=PHONE["p02"], to="+8610690000001", body=" 收到！")
        await rig.fake.wait_idle()
        assert all(c.status == 200 for c in confirm.callbacks)
        await settled(rig, warning.id, {("p02", "sms"): ACKED})


async def test_busy_and_unanswered_calls_are_retried_then_fail(tocsin: MakeTocsin) -> None:
    script = FakeScript(
        per_number={
            PHONE["p01"]: NumberScript(call="busy"),
            PHONE["p02"]: NumberScript(call="no-answer"),
            PHONE["p04"]: NumberScript(digits="2"),  # a wrong key: asked again, then goodbye
        }
    )
    async with twilio_rig(tocsin, script=script, policy=CALLS) as rig:
        warning = await rig.tocsin.warn((VILLAGE_A1a,))
        await rig.tocsin.start()
        await settled(
            rig,
            warning.id,
            {("p01", "voice"): "failed", ("p02", "voice"): "failed", ("p04", "voice"): "delivered"},
        )
        busy = events(rig, "p01", "voice")
        assert [e[0] for e in busy] == [
            "sent",
            "retry_wait",
            "sent",
            "retry_wait",
            "sent",
            "failed",
        ]
        assert "busy" in busy[1][1]
        assert "no answer" in events(rig, "p02", "voice")[1][1]
        answered = events(rig, "p04", "voice")
        assert answered[-1][0] == "delivered"
        assert answered[-1][2]["status"] == "completed"
        assert "duration" in answered[-1][2]
        await rig.fake.wait_idle()
        (call,) = [c for c in rig.fake.calls if c.to == PHONE["p04"]]
        gathers = [c for c in rig.fake.callbacks() if c.kind == "gather" and c.sid == call.sid]
        assert gathers
        assert gathers[0].params["Digits"] == "2"
        assert "prompt=2" in gathers[0].answer  # asked once more


async def test_calls_keep_to_the_concurrent_call_cap(tocsin: MakeTocsin) -> None:
    script = FakeScript(speak_delay=0.3, digits="1")
    async with twilio_rig(
        tocsin, script=script, policy=CALLS, voice={"max_concurrent_calls": 2}
    ) as rig:
        warning = await rig.tocsin.warn((VILLAGE_A1a, VILLAGE_A1b))
        await rig.tocsin.start()
        people = ("p01", "p02", "p04", "p05", "p06")
        await settled(rig, warning.id, {(p, "voice"): ACKED for p in people})
        await rig.fake.wait_idle()
        spans = sorted((c.date_created, c.end_time or c.date_updated) for c in rig.fake.calls)
        assert len(spans) == len(people)
        for start, _ in spans:
            in_progress = sum(1 for s, e in spans if s <= start < e)
            assert in_progress <= 2, spans


async def test_one_sender_keeps_to_its_rate(tocsin: MakeTocsin) -> None:
    async with twilio_rig(
        tocsin, script=FakeScript(callbacks=False), policy=TEXTS, sms={"sender_rate": 4.0}
    ) as rig:
        warning = await rig.tocsin.warn((VILLAGE_A1a, VILLAGE_A1b))
        await rig.tocsin.start()
        people = ("p01", "p02", "p04", "p05", "p06")
        await settled(rig, warning.id, {(p, "sms"): "sent" for p in people})
        created = sorted(m.date_created for m in rig.fake.sent)
        # Four a second from one long code (a burst of four, then one every 0.25 s).
        assert created[-1] - created[0] >= 0.2
        for start in created:
            assert sum(1 for t in created if start <= t < start + 1.0) <= 5


async def test_a_reply_posted_twice_confirms_one_delivery(tocsin: MakeTocsin) -> None:
    """Twilio may post the same reply again; with two warnings open for the person, the second
    copy must not confirm the other warning's text."""
    async with twilio_rig(tocsin, script=FakeScript(duplicate_callbacks=True), policy=TEXTS) as rig:
        first = await rig.tocsin.warn((VILLAGE_A1a,))
        second = await rig.tocsin.warn((VILLAGE_A1a,))
        await rig.tocsin.start()
        for warning in (first, second):
            await settled(rig, warning.id, {("p02", "sms"): "delivered"})
        await rig.fake.reply(from_=PHONE["p02"], to="+8610690000001", body="1")
        await rig.fake.wait_idle()
        await wait_until(
            lambda: (
                ACKED
                in (
                    person_states(rig, first.id)[("p02", "sms")],
                    person_states(rig, second.id)[("p02", "sms")],
                )
            ),
            what="one of the texts confirmed",
        )
        await asyncio.sleep(0.3)
        await rig.tocsin.engine.intake.wait_idle()
        states = sorted(person_states(rig, w.id)[("p02", "sms")] for w in (first, second))
        assert states == [ACKED, "delivered"]
        # Another reply (a new SID) confirms the other one.
        await rig.fake.reply(from_=PHONE["p02"], to="+8610690000001", body="收到")
        for warning in (first, second):
            await settled(rig, warning.id, {("p02", "sms"): ACKED})


async def test_an_unanswered_text_escalates_to_a_call_that_is_confirmed(
    tocsin: MakeTocsin,
) -> None:
    """Nobody replies to the grid member's text: after the level's deadline the held call is
    made, and pressing 1 confirms it."""
    ladder = policy("red", ack_timeout="0.5s", rules=[rule("grid_members", "sms", "voice")])
    async with twilio_rig(tocsin, script=FakeScript(digits="1"), policy=ladder) as rig:
        warning = await rig.tocsin.warn((VILLAGE_A1a,))
        await rig.tocsin.start()
        await settled(rig, warning.id, {("p01", "sms"): "unacknowledged", ("p01", "voice"): ACKED})
        (call,) = rig.fake.calls
        assert call.to == PHONE["p01"]
        assert [e[0] for e in events(rig, "p01", "sms")] == ["sent", "delivered", "unacknowledged"]

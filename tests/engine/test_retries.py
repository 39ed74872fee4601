"""Retries: temporary failures back off until max_attempts, a provider's Retry-After is
honoured, and a device that does not report played is sent again."""

from __future__ import annotations

import itertools
import json

from small_directory import VILLAGE_A1a

from engine.conftest import MakeTocsin
from engine.harness import MaxRandom, config, policy, rule, sim

LADDER = [rule("grid_members", "sms", "voice"), rule("everyone", "sms")]


async def test_retries_back_off_until_max_attempts_then_fail_and_escalate(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        {"sms": sim(["sms"], retry_rate=1, breaker_failures=1000), "voice": sim(["voice"])},
        policy=policy(max_attempts=4, rules=LADDER),
        config=config(retry_base=0.1, retry_cap=0.3),
        rng=MaxRandom(),  # no jitter: each delay is exactly base × 2^(n-1), capped
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()

    sms = await t.wait_state(w.id, "p02", "sms", "failed", within=5)

    assert sms.attempts == 4
    events = t.events(sms.id)
    assert [(e.state, e.attempt) for e in events] == [
        ("retry_wait", 1),
        ("retry_wait", 2),
        ("retry_wait", 3),
        ("failed", 4),
    ]
    assert "gave up after 4 attempts: simulated retry" in events[-1].reason
    gaps = [b.at - a.at for a, b in itertools.pairwise(events)]
    for gap, delay in zip(gaps, (0.1, 0.2, 0.3), strict=True):
        assert gap >= delay - 0.03, (gaps, "retried before its backoff")
    assert gaps[1] > gaps[0]
    assert t.adapter("sms").stats.dispatches >= 4 + 4  # p01's and p02's SMS, four times each

    # p01 is a grid member: their SMS failing for good releases their call at once.
    p01_sms = await t.wait_state(w.id, "p01", "sms", "failed")
    voice = await t.wait_state(w.id, "p01", "voice", "acknowledged")
    released = next(e for e in t.events(voice.id) if e.state == "pending")
    assert "escalated: sms failed: gave up after 4 attempts" in released.reason
    assert json.loads(released.detail) == {"after_delivery": p01_sms.id}
    await t.assert_counts_consistent(w.id)


async def test_retry_after_is_honoured(tocsin: MakeTocsin) -> None:
    t = tocsin(
        {"sms": sim(["sms"], retry_rate=1, retry_after=0.6, breaker_failures=1000)},
        policy=policy(max_attempts=2, rules=[rule("everyone", "sms")]),
        config=config(retry_base=0.01, retry_cap=0.05),
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()

    waiting = await t.wait_state(w.id, "p02", "sms", "retry_wait")
    assert waiting.due_at - waiting.updated_at >= 0.6 - 0.05
    failed = await t.wait_state(w.id, "p02", "sms", "failed", within=5)
    events = t.events(failed.id)
    assert json.loads(events[0].detail)["retry_after"] == 0.6
    assert events[1].at - events[0].at >= 0.6 - 0.05


async def test_a_device_that_does_not_report_played_is_sent_again_until_max_attempts(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        {"speaker": sim(["speaker"], ack_probability=0)},
        policy=policy(
            device_ack_timeout="0.2s",
            max_attempts=3,
            rules=[rule("devices", "loudspeaker")],
        ),
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()

    speaker = await t.wait_state(w.id, "spk-a1a", "speaker", "unacknowledged", within=6)

    assert speaker.attempts == 3
    assert [d.attempt for d in t.adapter("speaker").dispatched] == [1, 2, 3]
    events = t.events(speaker.id)
    assert [e.state for e in events] == [
        "sent",
        "pending",
        "sent",
        "pending",
        "sent",
        "unacknowledged",
    ]
    assert "no played report in time; sending again" in events[1].reason
    for sent, timed_out in ((events[0], events[1]), (events[2], events[3])):
        assert timed_out.at - sent.at >= 0.2 - 0.05
    await t.wait(lambda: t.completed(w.id), within=3, what="warning complete")
    await t.assert_counts_consistent(w.id)


async def test_a_device_that_reports_played_is_not_sent_again(tocsin: MakeTocsin) -> None:
    t = tocsin(
        {"speaker": sim(["speaker"], ack_delay=0.05, delivered_report=True)},
        policy=policy(device_ack_timeout="0.3s", rules=[rule("devices", "loudspeaker")]),
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()

    speaker = await t.wait_state(w.id, "spk-a1a", "speaker", "acknowledged")
    await t.wait(lambda: t.completed(w.id), within=3, what="warning complete")

    assert speaker.attempts == 1
    assert len(t.adapter("speaker").dispatched) == 1
    await t.assert_counts_consistent(w.id)

"""A misbehaving adapter (raises, hangs, returns garbage, will not start) is contained: the
engine keeps running, the other channels complete, the bad adapter's deliveries wait (never
lost) and its breaker opens."""

from __future__ import annotations

import asyncio

import pytest
from small_directory import COUNTY_A, VILLAGE_A1a

from dispatcher.engine.breaker import BreakerState
from engine.conftest import MakeTocsin
from engine.harness import policy, rule, sim

RULES = [rule("devices", "loudspeaker", "transmitter"), rule("everyone", "sms")]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"raise_rate": 1}, "raised RuntimeError"),
        ({"hang_rate": 1, "send_timeout": 0.2}, "did not answer within 0.2s"),
        ({"garbage_rate": 1}, "adapter returned 6 outcomes for 5 dispatches"),
    ],
    ids=["raises", "hangs", "garbage"],
)
async def test_a_misbehaving_adapter_is_contained(
    tocsin: MakeTocsin, fault: dict[str, object], reason: str
) -> None:
    t = tocsin(
        {
            "speaker": sim(["speaker", "transmitter"]),
            "sms": sim(["sms"], breaker_failures=2, breaker_pause=60, **fault),
        },
        policy=policy(rules=RULES),
    )
    w = await t.warn((COUNTY_A,))
    await t.start()

    # The other channels complete.
    for device, channel in (
        ("spk-a1a", "speaker"),
        ("spk-a1b", "speaker"),
        ("tx-a", "transmitter"),
        ("tx-a1", "transmitter"),
    ):
        await t.wait_state(w.id, device, channel, "acknowledged", within=3)
    # The bad adapter is paused after breaker_failures failed batches, and not called again.
    await t.wait(
        lambda: t.host("sms").breaker.state is BreakerState.OPEN, within=3, what="breaker open"
    )
    # Once paused, its deliveries wait for it without being handed to it.
    await t.wait(
        lambda: all(
            d.state == "retry_wait" and any("paused" in e.reason for e in t.events(d.id))
            for d in t.deliveries(w.id)
            if d.channel == "sms"
        ),
        within=3,
        what="every SMS waiting for the paused adapter",
    )
    # Counted once nothing is in flight: a batch handed over just before the breaker opened
    # finishes after it (at most one batch per delivery).
    await t.wait(lambda: t.host("sms").in_flight == 0, within=3, what="no batch in flight")
    sends = t.adapter("sms").stats.sends
    assert 2 <= sends <= 5
    await asyncio.sleep(0.3)  # engine ticks: the paused adapter is not called again

    assert t.engine.running
    sms = [d for d in t.deliveries(w.id) if d.channel == "sms"]
    assert {d.target_id for d in sms} == {"p01", "p02", "p04", "p05", "p06"}
    for d in sms:
        assert 1 <= d.attempts <= 2
        assert any(reason in e.reason for e in t.events(d.id) if e.state == "retry_wait"), t.events(
            d.id
        )
    assert t.adapter("sms").stats.sends == sends
    assert t.registry.get_sample_value("tocsin_adapter_paused", {"adapter": "sms"}) == 1
    assert t.registry.get_sample_value("tocsin_adapter_paused", {"adapter": "speaker"}) == 0
    await t.assert_counts_consistent(w.id)


async def test_an_adapter_not_ready_at_first_sends_once_it_starts(tocsin: MakeTocsin) -> None:
    t = tocsin(
        {"speaker": sim(["speaker"], not_ready_starts=1), "sms": sim(["sms"])},
        policy=policy(rules=[rule("devices", "loudspeaker"), rule("everyone", "sms")]),
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()

    await t.wait_state(w.id, "p02", "sms", "acknowledged", within=2)
    speaker = await t.wait_state(w.id, "spk-a1a", "speaker", "acknowledged", within=5)

    assert t.adapter("speaker").stats.not_ready == 1
    assert t.host("speaker").ready
    assert speaker.attempts == 1, "waiting for the adapter to start is not an attempt"
    await t.wait(lambda: t.completed(w.id), within=3, what="warning complete")
    await t.assert_counts_consistent(w.id)


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_an_instance_never_gets_more_batches_at_once_than_its_concurrency(
    tocsin: MakeTocsin, concurrency: int
) -> None:
    """A serial modem sends one batch at a time: the engine must hand it no second batch
    while the first is under way, from the very first batch of a warning on."""
    t = tocsin(
        {"sms": sim(["sms"], latency=0.15, concurrency=concurrency, batch_size=1)},
        policy=policy(rules=[rule("everyone", "sms")]),
    )
    w = await t.warn((COUNTY_A,))
    await t.start()

    await t.wait(
        lambda: all(d.state == "acknowledged" for d in t.deliveries(w.id)),
        within=5,
        what="every SMS acknowledged",
    )

    sms = t.adapter("sms")
    assert len(sms.dispatched) == 5
    assert sms.peak_concurrent == concurrency


async def test_a_rate_limited_instance_is_not_sent_faster_than_its_rate(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        {"sms": sim(["sms"], rate_per_second=10, burst=1)},
        policy=policy(rules=[rule("everyone", "sms")]),
    )
    w = await t.warn((COUNTY_A,))
    await t.start()

    def sent_at() -> list[float]:
        return sorted(e.at for d in t.deliveries(w.id) for e in t.events(d.id) if e.state == "sent")

    # An acknowledgement may be recorded before its send's outcome: wait for both.
    await t.wait(
        lambda: all(d.state == "acknowledged" for d in t.deliveries(w.id)) and len(sent_at()) == 5,
        within=5,
        what="every SMS acknowledged and its send recorded",
    )

    sent = sent_at()
    # One token at start, then one every 0.1 s: five sends take at least 0.4 s.
    assert sent[-1] - sent[0] >= 0.4 - 0.05, sent

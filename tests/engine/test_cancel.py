"""Cancellation and supersession stop a warning's work at once: pending and held steps,
deliveries awaiting an acknowledgement (no escalation afterwards), and sends in flight (their
outcome is logged but changes nothing)."""

from __future__ import annotations

import asyncio
import time

import pytest
from small_directory import COUNTY_A, VILLAGE_A1a

from dispatcher.domain import MsgType
from dispatcher.engine.engine import PRIORITIES
from engine.conftest import MakeTocsin
from engine.harness import config, policy, rule, sim

LADDER = [
    rule("devices", "loudspeaker"),
    rule("grid_members", "sms", "voice"),
    rule("vulnerable", "sms", "voice"),
    rule("everyone", "sms"),
]


@pytest.mark.parametrize(
    ("msg_type", "stopped"),
    [(MsgType.CANCEL, "cancelled"), (MsgType.UPDATE, "superseded")],
    ids=["cancel", "update"],
)
async def test_stopping_a_warning_stops_every_step_and_nothing_escalates(
    tocsin: MakeTocsin, msg_type: MsgType, stopped: str
) -> None:
    t = tocsin(
        {
            "speaker": sim(["speaker"], ack_probability=0),
            # One SMS a second: p01's goes out, p04's and p02's are still pending at the stop.
            "sms": sim(["sms"], ack_probability=0, rate_per_second=1, burst=1),
            "voice": sim(["voice"], ack_probability=0),
        },
        policy=policy(ack_timeout="0.3s", device_ack_timeout="0.3s", visit=True, rules=LADDER),
        config=config(visit_delay=0.1),
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()
    await t.wait_state(w.id, "p01", "sms", "sent")
    await t.wait_state(w.id, "spk-a1a", "speaker", "sent")
    before = t.states(w.id)
    assert before[("grid_member", "p01", "voice")] == "held"
    assert before[("person", "p02", "sms")] == "pending"

    new = await t.stop_warning(w, msg_type)

    after = t.states(w.id)
    assert set(after.values()) == {stopped}, after
    stopped_at = time.time()
    # Long past every acknowledgement deadline: nothing is released, resent or escalated.
    await asyncio.sleep(1.2)
    assert t.states(w.id) == after
    assert not [d for d in t.deliveries(w.id) if d.audience == "visit"]
    later = t.rows(
        "SELECT delivery_id, state, reason FROM delivery_events WHERE warning_id = ? AND at > ? "
        "AND delivery_id IS NOT NULL",
        (w.id, stopped_at),
    )
    assert later == [], later
    assert len(t.adapter("voice").dispatched) == 0
    assert [d.target_id for d in t.adapter("sms").dispatched] == ["p01"]
    assert [d.delivery_id for d in t.adapter("speaker").dispatched] == [
        t.delivery(w.id, "spk-a1a", "speaker").id
    ]
    logged = t.events(t.delivery(w.id, "p01", "voice").id)
    assert [e.state for e in logged] == [stopped]
    assert f"by {new.id}" in logged[0].reason
    await t.assert_counts_consistent(w.id)
    await t.wait(lambda: t.completed(w.id), within=2, what="stopped warning complete")


async def test_an_outcome_for_a_delivery_cancelled_in_flight_changes_nothing(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        {"speaker": sim(["speaker"], latency=0.5)},
        policy=policy(rules=[rule("devices", "loudspeaker")]),
    )
    w = await t.warn((COUNTY_A,))
    await t.start()
    sending = await t.wait_state(w.id, "spk-a1a", "speaker", "sending")

    await t.stop_warning(w, MsgType.CANCEL)
    assert t.state(w.id, "spk-a1a", "speaker") == "cancelled"

    def outcome_logged() -> bool:
        return any("delivery already cancelled" in e.reason for e in t.events(sending.id))

    await t.wait(outcome_logged, within=3, what="the late outcome logged")
    await t.engine.intake.wait_idle()
    events = t.events(sending.id)
    late = [e for e in events if "delivery already cancelled" in e.reason]
    assert len(late) == 1
    assert late[0].state == "sent"
    assert late[0].adapter == "speaker"
    assert t.state(w.id, "spk-a1a", "speaker") == "cancelled"
    assert sending.attempts == 1
    # Its acknowledgement (the simulated speaker played it) does not change it either.
    assert t.delivery(w.id, "spk-a1a", "speaker").state == "cancelled"
    await t.assert_counts_consistent(w.id)


async def test_a_cancel_between_claim_and_fall_over_keeps_the_counts(tocsin: MakeTocsin) -> None:
    """The store's fall-over must not move a delivery (or its counters) that a Cancel stopped
    after the engine claimed it."""
    t = tocsin({}, policy=policy(rules=[rule("grid_members", "sms", "voice")]))
    w = await t.warn((VILLAGE_A1a,))
    now = time.time()
    claimed = await t.store.claim_due("sms", 10, now=now, lease=30, priorities=PRIORITIES)
    assert [c.target_id for c in claimed] == ["p01"]

    await t.stop_warning(w, MsgType.CANCEL)
    fell = await t.store.fall_over(
        claimed, now=now, resume_at=now + 30, reason="no adapter", levels={}, visit_delay=0
    )

    assert fell == 0
    assert set(t.states(w.id).values()) == {"cancelled"}
    await t.assert_counts_consistent(w.id)

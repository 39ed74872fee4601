"""The escalation ladder: SMS, then a call, then a door-to-door visit by the grid member;
acknowledging skips what is left; coverage rolls up from person to household, grid member and
village."""

from __future__ import annotations

import json
import time

from small_directory import VILLAGE_A1a

from dispatcher.adapter import Report, ReportState
from dispatcher.engine.types import AckResult, AdapterAck, HouseholdConfirmation
from engine.conftest import MakeTocsin
from engine.harness import PHONE, TERMINAL, Tocsin, config, policy, rule, sim, wait_until

#: Grid members by SMS then call; vulnerable people likewise; everyone else by SMS only.
LADDER = [
    rule("grid_members", "sms", "voice"),
    rule("vulnerable", "sms", "voice"),
    rule("everyone", "sms"),
]


async def test_unacknowledged_sms_releases_the_call_which_reaches_person_household_village(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        {"sms": sim(["sms"], ack_probability=0), "voice": sim(["voice"])},
        policy=policy(ack_timeout="0.3s", rules=LADDER),
    )
    w = await t.warn((VILLAGE_A1a,))
    # The plan: a grid member's call waits behind their SMS; p02 has only the SMS.
    assert t.states(w.id) == {
        ("grid_member", "p01", "sms"): "pending",
        ("grid_member", "p01", "voice"): "held",
        ("person", "p02", "sms"): "pending",
        ("person", "p04", "sms"): "pending",
        ("person", "p04", "voice"): "held",
    }
    await t.start()

    voice = await t.wait_state(w.id, "p01", "voice", "acknowledged", within=5)
    # The acknowledgement may be recorded before the send's outcome (the call is answered at
    # once): wait for both.
    await t.wait(lambda: len(t.events(voice.id)) >= 3, within=5, what="the call's outcome")

    sms = t.delivery(w.id, "p01", "sms")
    assert sms.state == "unacknowledged"
    sms_events = t.events(sms.id)
    sent_at = next(e.at for e in sms_events if e.state == "sent")
    unacked_at = next(e.at for e in sms_events if e.state == "unacknowledged")
    assert unacked_at - sent_at >= 0.3 - 0.05, "released before the acknowledgement deadline"
    voice_events = t.events(voice.id)
    released = next(e for e in voice_events if e.state == "pending")
    assert released.at >= unacked_at - 0.01
    assert "escalated" in released.reason
    assert json.loads(released.detail) == {"after_delivery": sms.id}
    # Either way, one of each.
    assert voice_events[0].state == "pending"
    assert sorted(e.state for e in voice_events[1:]) == ["acknowledged", "sent"]
    assert voice.attempts == 1
    assert [d.address for d in t.adapter("voice").dispatched if d.target_id == "p01"] == [
        PHONE["p01"]
    ]

    reached = t.reached(w.id)
    assert reached[("person", "p01")] == 1
    assert reached[("grid_member", "p01")] == 1
    assert reached[("household", "h1")] == 1
    assert reached[("village", VILLAGE_A1a)] == 1
    coverage = t.coverage(w.id)
    for kind in ("person", "household", "grid_member", "village"):
        assert coverage[(VILLAGE_A1a, kind)] >= 1, kind
    assert coverage[(VILLAGE_A1a, "grid_member")] == 1
    assert coverage[(VILLAGE_A1a, "village")] == 1
    # p02 has no later step: unacknowledged, and nothing else is tried (no visit: the policy
    # asks for none).
    await t.wait_state(w.id, "p02", "sms", "unacknowledged", within=3)
    assert not [d for d in t.deliveries(w.id) if d.audience == "visit"]
    await t.assert_counts_consistent(w.id)


async def test_acknowledging_the_sms_skips_the_held_call(tocsin: MakeTocsin) -> None:
    t = tocsin(
        {"sms": sim(["sms"]), "voice": sim(["voice"])},
        policy=policy(rules=LADDER),
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()

    await t.wait(lambda: t.completed(w.id), within=5, what="warning complete")

    assert t.states(w.id) == {
        ("grid_member", "p01", "sms"): "acknowledged",
        ("grid_member", "p01", "voice"): "skipped",
        ("person", "p02", "sms"): "acknowledged",
        ("person", "p04", "sms"): "acknowledged",
        ("person", "p04", "voice"): "skipped",
    }
    skipped = t.events(t.delivery(w.id, "p01", "voice").id)
    assert [e.state for e in skipped] == ["skipped"]
    assert "p01 acknowledged by sms" in skipped[0].reason
    assert t.adapter("voice").dispatched == []
    assert t.reached(w.id)[("household", "h2")] == 1
    await t.assert_counts_consistent(w.id)


def visit_policy(ack_timeout: str = "0.3s") -> object:
    return policy(ack_timeout=ack_timeout, visit=True, rules=LADDER)


def nobody_answers(tocsin: MakeTocsin, *, visit_delay: float) -> Tocsin:
    """Nobody confirms an SMS or a call: every ladder runs out and ends in a visit task."""
    return tocsin(
        {"sms": sim(["sms"], ack_probability=0), "voice": sim(["voice"], ack_probability=0)},
        policy=visit_policy(),
        config=config(visit_delay=visit_delay),
    )


async def test_exhausted_ladders_task_the_grid_member_to_visit_both_households(
    tocsin: MakeTocsin,
) -> None:
    t = nobody_answers(tocsin, visit_delay=2.0)
    w = await t.warn((VILLAGE_A1a,))
    await t.start()

    # p02 (SMS only) runs out first and opens the task for h1; p04's call runs out later and
    # adds h2 to the same task while it waits.
    visit = await t.wait_state(w.id, "p01", "sms", "sent", audience="visit", within=6)

    assert visit.audience == "visit"
    events = t.events(visit.id)
    created = next(e for e in events if e.state == "pending")
    sent = next(e for e in events if e.state == "sent")
    assert "visit task for grid g-a" in created.reason
    assert sent.at - created.at >= 2.0 - 0.01, "sent before visit_delay"
    assert t.rows(
        "SELECT household_id, delivery_id FROM visit_households ORDER BY household_id"
    ) == [("h1", visit.id), ("h2", visit.id)]
    assert len([d for d in t.deliveries(w.id) if d.audience == "visit"]) == 1
    (dispatch,) = [d for d in t.adapter("sms").dispatched if d.delivery_id == visit.id]
    assert dispatch.households == ("h1", "h2")
    assert dispatch.address == PHONE["p01"]
    assert "h1、h2" in dispatch.text
    assert "入户" in dispatch.text
    # The grid member's own exhausted ladder asks no one to visit them.
    assert t.state(w.id, "p01", "voice") == "unacknowledged"
    await t.assert_counts_consistent(w.id)


async def test_households_already_reached_are_not_named(tocsin: MakeTocsin) -> None:
    t = tocsin(
        {"sms": sim(["sms"], ack_probability=0), "voice": sim(["voice"], ack_probability=0)},
        policy=visit_policy("1s"),
        config=config(visit_delay=0.3),
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()
    await t.wait_state(w.id, "p01", "sms", "sent")

    # The grid member (of household h1) replies "1" from their phone: h1 is reached.
    outcome = await t.engine.intake.submit_and_wait(
        AdapterAck("sms", Report(ReportState.ACKNOWLEDGED, from_address=PHONE["p01"]), time.time())
    )
    assert outcome.result is AckResult.APPLIED

    visit = await t.wait_state(w.id, "p01", "sms", "sent", audience="visit", within=8)
    (dispatch,) = [d for d in t.adapter("sms").dispatched if d.delivery_id == visit.id]
    assert dispatch.households == ("h2",)
    assert t.rows("SELECT household_id FROM visit_households") == [("h2",)]
    assert t.state(w.id, "p02", "sms") == "unacknowledged"
    await t.assert_counts_consistent(w.id)


async def test_the_grid_member_acknowledging_does_not_cancel_their_visit_task(
    tocsin: MakeTocsin,
) -> None:
    t = nobody_answers(tocsin, visit_delay=2.0)
    w = await t.warn((VILLAGE_A1a,))
    await t.start()
    await t.wait(
        lambda: len(t.rows("SELECT 1 FROM visit_households")) == 2,
        within=5,
        what="both households in the visit task",
    )

    # The grid member confirms the warning (their own call): h1, their household, is reached.
    own = t.delivery(w.id, "p01", "voice")
    outcome = await t.engine.intake.submit_and_wait(
        AdapterAck(
            "voice",
            Report(ReportState.ACKNOWLEDGED, delivery_id=own.id, from_address=PHONE["p01"]),
            time.time(),
        )
    )
    assert outcome.result is AckResult.APPLIED

    visit = await t.wait_state(w.id, "p01", "sms", "sent", audience="visit", within=5)
    (dispatch,) = [d for d in t.adapter("sms").dispatched if d.delivery_id == visit.id]
    assert dispatch.households == ("h2",)
    await t.assert_counts_consistent(w.id)


async def test_every_delivery_ends_terminal_when_the_ladder_warning_completes(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        {
            "speaker": sim(["speaker", "transmitter", "modem"], ack_probability=0),
            "sms": sim(["sms"], ack_probability=0),
            "voice": sim(["voice"], ack_probability=0),
        },
        policy=policy(
            ack_timeout="0.2s",
            device_ack_timeout="0.2s",
            max_attempts=2,
            visit=True,
            rules=[rule("devices", "loudspeaker", "transmitter", "modem"), *LADDER],
        ),
        config=config(visit_delay=0.2),
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()

    await t.wait(lambda: t.completed(w.id), within=10, what="warning complete")

    states = t.states(w.id)
    assert set(states.values()) <= TERMINAL, states
    assert states[("visit", "p01", "sms")] == "unacknowledged"
    assert states[("device", "spk-a1a", "speaker")] == "unacknowledged"
    assert t.delivery(w.id, "spk-a1a", "speaker").attempts == 2
    await t.assert_counts_consistent(w.id)


async def test_a_visit_whose_households_were_all_confirmed_meanwhile_is_not_sent(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        {"sms": sim(["sms"], ack_probability=0)},
        policy=policy(
            ack_timeout="0.3s",
            visit=True,
            rules=[rule("grid_members", "sms"), rule("everyone", "sms")],
        ),
        config=config(visit_delay=1.0),
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()
    await t.wait(
        lambda: len(t.rows("SELECT 1 FROM visit_households")) == 2,
        within=4,
        what="h1 and h2 in the visit task",
    )

    # The grid member got there first (the app's door-to-door confirmation).
    for household in ("h1", "h2"):
        outcome = await t.engine.intake.submit_and_wait(
            HouseholdConfirmation(w.id, household, "p01", "api:grid-app", time.time())
        )
        assert outcome.result is AckResult.APPLIED

    visit = await t.wait_state(w.id, "p01", "sms", "skipped", audience="visit", within=4)
    assert [e.state for e in t.events(visit.id)] == ["pending", "skipped"]
    assert "every household of the visit was reached" in t.events(visit.id)[-1].reason
    assert not [d for d in t.adapter("sms").dispatched if d.delivery_id == visit.id]
    await t.wait(lambda: t.completed(w.id), within=3, what="warning complete")
    await t.assert_counts_consistent(w.id)


async def test_a_visit_task_waiting_to_be_tried_again_is_joined_not_doubled(
    tocsin: MakeTocsin,
) -> None:
    t = nobody_answers(tocsin, visit_delay=30.0)
    w = await t.warn((VILLAGE_A1a,))
    await t.start()

    # p02 (SMS only) runs out first and opens the task for h1 …
    await wait_until(
        lambda: t.rows("SELECT household_id FROM visit_households") == [("h1",)],
        what="the visit task for h1",
    )
    ((visit_id,),) = t.rows("SELECT delivery_id FROM visit_tasks")
    # … whose SMS to the grid member failed for now and waits to be tried again …
    conn = t.db.connect()
    try:
        conn.execute("BEGIN IMMEDIATE")  # as the store's writes (PostgreSQL: the writer lock)
        conn.execute(
            "UPDATE deliveries SET state = 'retry_wait', due_at = ? WHERE id = ?",
            (time.time() + 3600, visit_id),
        )
        conn.execute(
            "UPDATE delivery_state_counts SET n = n + (CASE state WHEN 'retry_wait' THEN 1 "
            "ELSE -1 END) WHERE state IN ('pending', 'retry_wait') AND warning_seq = "
            "(SELECT seq FROM warnings WHERE id = ?)",
            (w.id,),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    # … and p04's ladder (SMS, then a call) runs out later: h2 joins that task.
    await wait_until(
        lambda: len(t.rows("SELECT household_id FROM visit_households")) == 2,
        what="h2 on a visit task",
    )
    assert t.rows("SELECT household_id, delivery_id FROM visit_households ORDER BY 1") == [
        ("h1", visit_id),
        ("h2", visit_id),
    ]
    assert t.rows("SELECT count(*) FROM visit_tasks") == [(1,)]

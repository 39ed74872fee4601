"""Acknowledgements and status reports: idempotent, matched by delivery id, provider reference
or sender, late ones recorded but not counted, forged or stray ones rejected without changing
anything (or flooding the log), and door-to-door confirmations by grid members."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import structlog
from small_directory import COUNTY_A, VILLAGE_A1a

from dispatcher.adapter import Report, ReportState
from dispatcher.engine.types import AckResult, AdapterAck, HouseholdConfirmation
from engine.conftest import MakeTocsin
from engine.harness import PHONE, config, policy, rule, sim

QUIET = {"ack_probability": 0}
LONG = {"ack_timeout": "1h", "device_ack_timeout": "1h"}


def ack(adapter: str, **report: object) -> AdapterAck:
    state = report.pop("state", ReportState.ACKNOWLEDGED)
    return AdapterAck(adapter, Report(state, **report), time.time())  # type: ignore[arg-type]


async def test_the_same_acknowledgement_twice_is_a_duplicate(tocsin: MakeTocsin) -> None:
    t = tocsin(
        {"sms": sim(["sms"], **QUIET)}, policy=policy(**LONG, rules=[rule("everyone", "sms")])
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()
    sms = await t.wait_state(w.id, "p02", "sms", "sent")
    report = ack("sms", delivery_id=sms.id, from_address=PHONE["p02"], warning_id=w.id)

    first = await t.engine.intake.submit_and_wait(report)
    counted = t.coverage(w.id)
    reached = t.reached(w.id)
    second = await t.engine.intake.submit_and_wait(report)

    assert first.result is AckResult.APPLIED
    assert second.result is AckResult.DUPLICATE
    assert t.state(w.id, "p02", "sms") == "acknowledged"
    assert counted == {(VILLAGE_A1a, "person"): 1, (VILLAGE_A1a, "household"): 1}
    assert t.coverage(w.id) == counted
    assert t.reached(w.id) == reached
    assert [e.state for e in t.events(sms.id)].count("acknowledged") == 1
    await t.assert_counts_consistent(w.id)


async def test_a_report_by_provider_reference(tocsin: MakeTocsin) -> None:
    t = tocsin(
        {"sms": sim(["sms"], **QUIET)}, policy=policy(**LONG, rules=[rule("everyone", "sms")])
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()
    sms = await t.wait_state(w.id, "p02", "sms", "sent")
    ((reference,),) = t.rows("SELECT reference FROM delivery_refs WHERE delivery_id = ?", (sms.id,))
    assert reference == f"sim-sms-{sms.id}-1"

    # Received long ago: an unknown reference is rejected at once instead of waiting for the
    # send's outcome to record it (see the test below).
    wrong_adapter = await t.engine.intake.submit_and_wait(
        AdapterAck("voice", Report(ReportState.ACKNOWLEDGED, reference=reference), time.time() - 60)
    )
    delivered = await t.engine.intake.submit_and_wait(
        ack("sms", reference=reference, state=ReportState.DELIVERED)
    )
    assert t.state(w.id, "p02", "sms") == "delivered"
    acked = await t.engine.intake.submit_and_wait(ack("sms", reference=reference))

    assert wrong_adapter.result is AckResult.REJECTED
    assert delivered.result is AckResult.APPLIED
    assert acked.result is AckResult.APPLIED
    assert acked.delivery_id == sms.id
    assert t.state(w.id, "p02", "sms") == "acknowledged"
    assert t.reached(w.id)[("person", "p02")] == 1
    await t.assert_counts_consistent(w.id)


async def test_a_delivered_report_ahead_of_the_outcome_keeps_the_deadline_and_reference(
    tocsin: MakeTocsin,
) -> None:
    """The simulated speaker reports "delivered" inside send(), so the report usually reaches
    the store before the send's outcome; the acknowledgement deadline must still be the
    device's, not the lease's, and the reference must be kept."""
    t = tocsin(
        {"speaker": sim(["speaker"], ack_probability=0, delivered_report=True)},
        policy=policy(
            device_ack_timeout="0.4s", max_attempts=2, rules=[rule("devices", "loudspeaker")]
        ),
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()

    speaker = await t.wait_state(w.id, "spk-a1a", "speaker", "delivered")
    await t.wait(
        lambda: t.rows("SELECT 1 FROM delivery_refs WHERE delivery_id = ?", (speaker.id,)),
        within=2,
        what="the reference recorded",
    )
    speaker = t.delivery(w.id, "spk-a1a", "speaker")
    assert speaker.due_at - speaker.updated_at < 1.0, "the deadline is the lease, not 0.4 s"
    # The deadline passes: sent again, and then given up.
    final = await t.wait_state(w.id, "spk-a1a", "speaker", "unacknowledged", within=4)
    assert final.attempts == 2
    await t.assert_counts_consistent(w.id)


async def test_an_sms_reply_acknowledges_the_senders_latest_awaiting_delivery(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        {"sms": sim(["sms"], **QUIET), "voice": sim(["voice"], **QUIET)},
        policy=policy(ack_timeout="0.3s", rules=[rule("grid_members", "sms", "voice")]),
    )
    w = await t.warn((COUNTY_A,))
    await t.start()
    # p01's SMS went unanswered and their call is out: a reply "1" now confirms the call.
    voice = await t.wait_state(w.id, "p01", "voice", "sent", within=3)

    outcome = await t.engine.intake.submit_and_wait(ack("sms", from_address=PHONE["p01"]))
    stranger = await t.engine.intake.submit_and_wait(ack("sms", from_address="+8613999999999"))

    assert outcome.result is AckResult.APPLIED
    assert outcome.delivery_id == voice.id
    assert t.state(w.id, "p01", "voice") == "acknowledged"
    assert t.reached(w.id)[("grid_member", "p01")] == 1
    assert t.state(w.id, "p06", "sms") in {"sent", "unacknowledged"}  # only the sender's
    assert stranger.result is AckResult.REJECTED
    await t.assert_counts_consistent(w.id)


async def test_a_late_acknowledgement_is_recorded_but_not_counted(tocsin: MakeTocsin) -> None:
    t = tocsin(
        {"sms": sim(["sms"], **QUIET), "speaker": sim(["speaker"], **QUIET)},
        policy=policy(**LONG, rules=[rule("devices", "loudspeaker"), rule("everyone", "sms")]),
    )
    w = await t.warn((VILLAGE_A1a,), expires_in=timedelta(seconds=1.0))
    await t.start()
    sms = await t.wait_state(w.id, "p02", "sms", "sent")
    speaker = await t.wait_state(w.id, "spk-a1a", "speaker", "sent")
    await t.wait(
        lambda: t.rows("SELECT 1 FROM warnings WHERE id = ? AND state = 'expired'", (w.id,)),
        within=4,
        what="the warning expired",
    )
    assert t.state(w.id, "p02", "sms") == "expired"

    late = ack("sms", delivery_id=sms.id, from_address=PHONE["p02"])
    person = await t.engine.intake.submit_and_wait(late)
    again = await t.engine.intake.submit_and_wait(late)
    device = await t.engine.intake.submit_and_wait(
        ack("speaker", delivery_id=speaker.id, from_address="spk-a1a", warning_id=w.id)
    )

    assert person.result is AckResult.LATE
    assert again.result is AckResult.DUPLICATE
    assert device.result is AckResult.LATE
    reached = t.reached(w.id)
    assert reached[("person", "p02")] == 0
    assert reached[("household", "h1")] == 0
    assert reached[("village", VILLAGE_A1a)] == 0
    assert t.coverage(w.id) == {}
    assert t.state(w.id, "p02", "sms") == "expired"
    (logged,) = [e for e in t.events(sms.id) if e.state == "acknowledged"]
    assert '"late": true' in logged.detail
    await t.assert_counts_consistent(w.id)


async def test_a_flood_of_forged_and_stray_reports_changes_nothing(tocsin: MakeTocsin) -> None:
    t = tocsin(
        {"sms": sim(["sms"], **QUIET), "speaker": sim(["speaker"], **QUIET)},
        policy=policy(**LONG, rules=[rule("devices", "loudspeaker"), rule("everyone", "sms")]),
        config=config(report_batch=500),
    )
    w = await t.warn((COUNTY_A,))
    await t.start()
    spk_a = await t.wait_state(w.id, "spk-a1a", "speaker", "sent")
    await t.wait_state(w.id, "spk-a1b", "speaker", "sent")
    sms = await t.wait_state(w.id, "p02", "sms", "sent")
    await t.wait(lambda: all(d.state == "sent" for d in t.deliveries(w.id)), what="everything sent")
    await t.engine.intake.wait_idle()
    before = t.snapshot()
    counts = await t.store.delivery_state_counts(w.id)

    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        for i in range(10_000):
            kind = i % 4
            if kind == 0:  # no such delivery (some beyond what SQLite can even store)
                if i % 8 == 0:
                    bogus = 2**64 + i  # beyond SQLite's integers
                elif i % 16 == 4:
                    bogus = -i
                else:
                    bogus = 10_000_000 + i
                report = Report(ReportState.ACKNOWLEDGED, delivery_id=bogus)
            elif kind == 1:  # a speaker acknowledging another speaker's delivery
                report = Report(
                    ReportState.ACKNOWLEDGED,
                    delivery_id=spk_a.id,
                    from_address="spk-a1b",
                    warning_id=w.id,
                )
            elif kind == 2:  # the right delivery, the wrong warning
                report = Report(
                    ReportState.ACKNOWLEDGED,
                    delivery_id=spk_a.id,
                    from_address="spk-a1a",
                    warning_id="some-other-warning",
                )
            else:  # a phone acknowledging someone else's SMS
                report = Report(
                    ReportState.ACKNOWLEDGED, delivery_id=sms.id, from_address=PHONE["p05"]
                )
            t.engine.intake.report("speaker" if kind < 3 else "sms", report)
        await asyncio.wait_for(t.engine.intake.wait_idle(), 20)
        elapsed = time.monotonic() - started

    assert t.snapshot() == before
    assert await t.store.delivery_state_counts(w.id) == counts
    rejected = t.registry.get_sample_value("tocsin_acks_total", {"result": "rejected"})
    assert rejected == 10_000
    assert not t.registry.get_sample_value("tocsin_acks_total", {"result": "applied"})
    lines = [e for e in logs if e["event"] == "reports rejected"]
    assert 1 <= len(lines) <= int(elapsed) + 1, (len(lines), elapsed)
    assert sum(e["count"] for e in lines) <= 10_000
    assert len(lines[0]["sample"]) <= 3
    assert len(logs) < 20, [e["event"] for e in logs]
    # The intake is not stalled: a real acknowledgement still goes through.
    real = await asyncio.wait_for(
        t.engine.intake.submit_and_wait(
            ack("sms", delivery_id=sms.id, from_address=PHONE["p02"], warning_id=w.id)
        ),
        5,
    )
    assert real.result is AckResult.APPLIED


HOUSEHOLDS = [rule("grid_members", "sms"), rule("households", "sms", "voice")]


async def test_a_grid_member_confirms_a_household_door_to_door(tocsin: MakeTocsin) -> None:
    t = tocsin({"sms": sim(["sms"])}, policy=policy(rules=HOUSEHOLDS))
    w = await t.warn((COUNTY_A,))
    # p04 is h2's contact: SMS first, then a call.
    assert t.state(w.id, "p04", "sms") == "pending"
    assert t.state(w.id, "p04", "voice") == "held"
    t.engine.intake.start()  # acknowledgements only: nothing is sent
    try:

        def confirm(household: str, person: str) -> HouseholdConfirmation:
            return HouseholdConfirmation(w.id, household, person, "api:grid-app", time.time())

        done = await t.engine.intake.submit_and_wait(confirm("h2", "p01"))
        again = await t.engine.intake.submit_and_wait(confirm("h2", "p01"))
        not_theirs = await t.engine.intake.submit_and_wait(confirm("h3", "p01"))
        outside = await t.engine.intake.submit_and_wait(confirm("h4", "p07"))
        unknown = await t.engine.intake.submit_and_wait(confirm("h9", "p01"))
    finally:
        await t.engine.intake.stop()

    assert done.result is AckResult.APPLIED
    assert again.result is AckResult.DUPLICATE
    assert not_theirs.result is AckResult.REJECTED
    assert "not a grid member" in not_theirs.reason
    assert outside.result is AckResult.REJECTED
    assert "outside" in outside.reason
    assert unknown.result is AckResult.REJECTED
    assert t.reached(w.id) == {("household", "h2"): 1}
    assert t.rows("SELECT source FROM reached") == [("api:grid-app",)]
    assert t.coverage(w.id) == {(VILLAGE_A1a, "household"): 1}
    assert t.state(w.id, "p04", "sms") == "skipped"
    assert t.state(w.id, "p04", "voice") == "skipped"
    assert t.state(w.id, "p05", "sms") == "pending"  # h3: not confirmed
    assert t.state(w.id, "p01", "sms") == "pending"  # the grid member's own message stays
    (event,) = t.rows(
        "SELECT reason FROM delivery_events WHERE state = 'household_reached' AND target_id = 'h2'"
    )
    assert "p01" in event[0]
    await t.assert_counts_consistent(w.id)


async def test_a_failure_reported_after_acceptance_retries_or_moves_the_ladder_on(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        {"sms": sim(["sms"], **QUIET), "voice": sim(["voice"], **QUIET)},
        policy=policy(
            **LONG, rules=[rule("grid_members", "sms", "voice"), rule("everyone", "sms")]
        ),
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()
    p01 = await t.wait_state(w.id, "p01", "sms", "sent")
    p02 = await t.wait_state(w.id, "p02", "sms", "sent")

    # Undeliverable for good: p01's call goes out at once.
    final = await t.engine.intake.submit_and_wait(
        ack("sms", delivery_id=p01.id, state=ReportState.FAILED, reason="30005", retryable=False)
    )
    # A temporary failure (handset off): p02's SMS is sent again after a backoff.
    temporary = await t.engine.intake.submit_and_wait(
        ack("sms", delivery_id=p02.id, state=ReportState.FAILED, reason="30003")
    )
    stale = await t.engine.intake.submit_and_wait(
        ack("sms", delivery_id=p01.id, state=ReportState.FAILED, reason="30005", retryable=False)
    )

    assert final.result is AckResult.APPLIED
    assert temporary.result is AckResult.APPLIED
    assert stale.result is AckResult.DUPLICATE
    assert t.state(w.id, "p01", "sms") == "failed"
    await t.wait_state(w.id, "p01", "voice", "sent")
    await t.wait(
        lambda: [e.state for e in t.events(p02.id)][:3] == ["sent", "retry_wait", "sent"],
        what="p02's SMS sent again",
    )
    assert t.delivery(w.id, "p02", "sms").attempts == 2
    await t.assert_counts_consistent(w.id)


async def test_a_report_that_overtakes_its_send_outcome_waits_for_the_reference(
    tocsin: MakeTocsin,
) -> None:
    """A provider callback naming a reference the store does not know yet is retried for a
    while (the send's outcome records the reference), then rejected if it never appears."""
    t = tocsin(
        {"sms": sim(["sms"], **QUIET)}, policy=policy(**LONG, rules=[rule("everyone", "sms")])
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()
    sms = await t.wait_state(w.id, "p02", "sms", "sent")
    conn = t.db.connect()  # autocommit
    conn.execute("DELETE FROM delivery_refs WHERE delivery_id = ?", (sms.id,))

    pending = asyncio.ensure_future(t.engine.intake.submit_and_wait(ack("sms", reference="SMlate")))
    await asyncio.sleep(0.3)
    assert not pending.done()  # parked, not rejected
    conn.execute(
        "INSERT INTO delivery_refs (adapter, reference, delivery_id) VALUES ('sms', 'SMlate', ?)",
        (sms.id,),
    )
    conn.close()
    outcome = await asyncio.wait_for(pending, 5)
    assert outcome.result is AckResult.APPLIED
    assert outcome.delivery_id == sms.id
    assert t.state(w.id, "p02", "sms") == "acknowledged"

    # Never known: rejected once the grace period is over (received 29.5 s ago here).
    stale = AdapterAck(
        "sms", Report(ReportState.ACKNOWLEDGED, reference="SMnever"), time.time() - 29.5
    )
    never = await asyncio.wait_for(t.engine.intake.submit_and_wait(stale), 5)
    assert never.result is AckResult.REJECTED


async def test_one_report_that_cannot_be_applied_does_not_hold_back_the_others(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        {"sms": sim(["sms"], **QUIET)}, policy=policy(**LONG, rules=[rule("everyone", "sms")])
    )
    w = await t.warn((VILLAGE_A1a,))
    await t.start()
    sms = await t.wait_state(w.id, "p02", "sms", "sent")
    # A buggy adapter's report whose delivery id is not a number: applying it raises.
    poison = t.engine.intake.submit_and_wait(ack("sms", delivery_id="not-a-number"))
    good = t.engine.intake.submit_and_wait(ack("sms", delivery_id=sms.id))
    bad_outcome, good_outcome = await asyncio.wait_for(asyncio.gather(poison, good), 10)
    assert bad_outcome.result is AckResult.REJECTED
    assert "cannot be recorded" in bad_outcome.reason
    assert good_outcome.result is AckResult.APPLIED
    assert t.state(w.id, "p02", "sms") == "acknowledged"

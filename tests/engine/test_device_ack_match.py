"""A device's acknowledgement that names only the warning and the device (a loudspeaker's
``{"id": warning, "state": "played"}`` on its own ack topic): matched to that warning's
delivery to the device at that address, in any state, in bulk for a batch of reports."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from small_directory import VILLAGE_A1a, VILLAGE_A1b, VILLAGE_B1a

from dispatcher.adapter import Report, ReportState
from dispatcher.domain import DeliveryState
from dispatcher.engine.engine import level_rules
from dispatcher.engine.types import AckOutcome, AckResult, AdapterAck, LevelRules, Transition
from dispatcher.store import engine_ops as se
from dispatcher.store.connections import Db, DbCursor
from engine.conftest import MakeTocsin
from engine.harness import FAST, Tocsin, policy, rule, sim

#: Loudspeakers only, waiting an hour for their played reports.
SPEAKERS = policy(device_ack_timeout="1h", rules=[rule("devices", "loudspeaker")])


def played(warning_id: str | None, address: str, **extra: Any) -> AdapterAck:
    report = Report(
        ReportState.ACKNOWLEDGED,
        from_address=address,
        warning_id=warning_id,
        detail={"device_state": "played"},
        **extra,
    )
    return AdapterAck("loudspeaker", report, time.time())


def levels(t: Tocsin) -> dict[str, LevelRules]:
    return level_rules(t.policy, FAST)


async def apply(t: Tocsin, acks: Sequence[AdapterAck]) -> list[AckOutcome]:
    return await t.store.apply_acks(
        acks, now=time.time(), levels=levels(t), visit_delay=0.1, retry_delay=lambda a, b: 0.1
    )


async def send_speakers(t: Tocsin, *, failed: Sequence[str] = ()) -> None:
    """Claim every due speaker delivery and record it sent (or failed, for ``failed``)."""
    now = time.time()
    claimed = await t.store.claim_due("speaker", 100, now=now, lease=30, priorities=[0])
    await t.store.record_transitions(
        [
            Transition(c.id, DeliveryState.FAILED, None, 1, "loudspeaker", "offline", escalate=True)
            if c.target_id in failed
            else Transition(c.id, DeliveryState.SENT, now + 3600, 1, "loudspeaker")
            for c in claimed
        ],
        now=now,
        levels=levels(t),
        visit_delay=0.1,
    )


def set_address(t: Tocsin, device_id: str, address: str) -> None:
    conn = t.db.connect()  # autocommit
    try:
        conn.execute("UPDATE devices SET address = ? WHERE id = ?", (address, device_id))
    finally:
        conn.close()


class Recording:
    """A connection that notes each statement the store's code runs on it."""

    def __init__(self, conn: Db) -> None:
        self.conn = conn
        self.statements: list[str] = []

    def execute(self, sql: str, parameters: Any = (), /) -> DbCursor:
        self.statements.append(sql)
        return self.conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> DbCursor:
        self.statements.append(sql)
        return self.conn.executemany(sql, parameters)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def close(self) -> None:
        self.conn.close()


async def test_a_played_report_naming_the_warning_and_the_device_acknowledges_it(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin({}, policy=SPEAKERS)
    w = await t.warn((VILLAGE_A1a, VILLAGE_A1b))
    await send_speakers(t)

    first, again = await apply(t, [played(w.id, "spk-a1b"), played(w.id, "spk-a1b")])

    speaker = t.delivery(w.id, "spk-a1b", "speaker")
    assert (first.result, first.delivery_id) == (AckResult.APPLIED, speaker.id)
    assert (again.result, again.delivery_id) == (AckResult.DUPLICATE, speaker.id)
    assert speaker.state == "acknowledged"
    assert t.state(w.id, "spk-a1a", "speaker") == "sent"
    assert t.reached(w.id) == {("village", VILLAGE_A1b): 1}
    await t.assert_counts_consistent(w.id)


async def test_the_device_is_named_by_its_address_or_by_its_id_when_it_has_none(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin({}, policy=SPEAKERS)
    set_address(t, "spk-a1a", "mqtt-0001")
    set_address(t, "spk-a1b", "")
    w = await t.warn((VILLAGE_A1a, VILLAGE_A1b))
    await send_speakers(t)

    by_id_with_address, by_address, by_id_without = await apply(
        t, [played(w.id, "spk-a1a"), played(w.id, "mqtt-0001"), played(w.id, "spk-a1b")]
    )

    # A device with an address is that address, not its id.
    assert by_id_with_address.result is AckResult.REJECTED
    assert "no delivery to a device at 'spk-a1a'" in by_id_with_address.reason
    assert by_address.result is AckResult.APPLIED
    assert by_address.delivery_id == t.delivery(w.id, "spk-a1a", "speaker").id
    assert by_id_without.result is AckResult.APPLIED
    assert t.state(w.id, "spk-a1b", "speaker") == "acknowledged"
    await t.assert_counts_consistent(w.id)


async def test_another_warnings_id_or_a_device_it_did_not_target_is_rejected(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin({}, policy=SPEAKERS)
    wa = await t.warn((VILLAGE_A1a,))
    wb = await t.warn((VILLAGE_A1b,))
    await send_speakers(t)
    before = t.snapshot()

    outcomes = await apply(
        t,
        [
            played(wb.id, "spk-a1a"),  # spk-a1a is wa's, not wb's
            played(wa.id, "spk-b1a"),  # a device wa does not reach
            played(wa.id, "spk-nowhere"),  # no such device
            played("no-such-warning", "spk-a1a"),
        ],
    )

    assert [o.result for o in outcomes] == [AckResult.REJECTED] * 4
    assert f"warning {wb.id} has no delivery to a device at 'spk-a1a'" in outcomes[0].reason
    assert t.snapshot() == before
    assert t.state(wa.id, "spk-a1a", "speaker") == "sent"


async def test_the_delivery_id_still_wins_and_is_checked_against_the_sender(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin({}, policy=SPEAKERS)
    w = await t.warn((VILLAGE_A1a, VILLAGE_A1b))
    await send_speakers(t)
    a1a = t.delivery(w.id, "spk-a1a", "speaker")

    # spk-a1b cannot acknowledge spk-a1a's delivery by naming it.
    (forged,) = await apply(t, [played(w.id, "spk-a1b", delivery_id=a1a.id)])

    assert forged.result is AckResult.REJECTED
    assert t.state(w.id, "spk-a1b", "speaker") == "sent"
    assert t.state(w.id, "spk-a1a", "speaker") == "sent"


async def test_a_failed_speaker_that_plays_after_all_is_acknowledged(tocsin: MakeTocsin) -> None:
    t = tocsin({}, policy=SPEAKERS)
    w = await t.warn((VILLAGE_A1b,))
    await send_speakers(t, failed=["spk-a1b"])
    assert t.state(w.id, "spk-a1b", "speaker") == "failed"

    (outcome,) = await apply(t, [played(w.id, "spk-a1b")])

    assert outcome.result is AckResult.APPLIED
    assert t.state(w.id, "spk-a1b", "speaker") == "acknowledged"
    assert t.reached(w.id) == {("village", VILLAGE_A1b): 1}
    await t.assert_counts_consistent(w.id)


async def test_a_phone_reply_naming_a_warning_still_finds_the_persons_delivery(
    tocsin: MakeTocsin,
) -> None:
    """No device at that address: the persons' path (an SMS reply from their phone)."""
    t = tocsin({}, policy=policy(ack_timeout="1h", rules=[rule("everyone", "sms")]))
    w = await t.warn((VILLAGE_B1a,))
    now = time.time()
    claimed = await t.store.claim_due("sms", 100, now=now, lease=30, priorities=[40])
    await t.store.record_transitions(
        [Transition(c.id, DeliveryState.SENT, now + 3600, 1, "sms") for c in claimed],
        now=now,
        levels=levels(t),
        visit_delay=0.1,
    )

    (outcome,) = await apply(
        t,
        [
            AdapterAck(
                "sms",
                Report(ReportState.ACKNOWLEDGED, from_address="+8613800000008", warning_id=w.id),
                time.time(),
            )
        ],
    )

    assert outcome.result is AckResult.APPLIED
    assert t.state(w.id, "p08", "sms") == "acknowledged"


async def test_a_batch_is_matched_with_a_few_queries_per_warning(tocsin: MakeTocsin) -> None:
    """The read-ahead resolves every (warning, device) of a batch up front: applying the
    reports then looks up no device and no delivery one by one."""
    t = tocsin({}, policy=SPEAKERS)
    set_address(t, "spk-b1a", "mqtt-b1a")
    wa = await t.warn((VILLAGE_A1a, VILLAGE_A1b))
    wb = await t.warn((VILLAGE_B1a,))
    await send_speakers(t)
    acks = [
        played(wa.id, "spk-a1a"),
        played(wa.id, "spk-a1b"),
        played(wb.id, "mqtt-b1a"),
        played(wb.id, "spk-a1a"),  # not wb's
        played(wa.id, "spk-a1a"),  # again
    ]

    conn = Recording(t.db.connect())
    statements = conn.statements
    try:
        conn.execute("BEGIN IMMEDIATE")
        batch = se._Batch(conn, time.time(), levels(t), 0.1)
        statements.clear()
        se._read_ahead(batch, acks)
        read_ahead = list(statements)
        statements.clear()
        outcomes = [se._apply_ack(batch, a, lambda a, b: 0.1) for a in acks]
        applying = list(statements)
        conn.execute("ROLLBACK")
    finally:
        conn.close()

    assert [o.result for o in outcomes] == [
        AckResult.APPLIED,
        AckResult.APPLIED,
        AckResult.APPLIED,
        AckResult.REJECTED,
        AckResult.DUPLICATE,
    ]
    device_lookups = [s for s in read_ahead if "FROM devices" in s]
    delivery_lookups = [s for s in read_ahead if "FROM deliveries WHERE target_id IN" in s]
    # Per warning: the devices by id (and by address for the rest), their deliveries.
    assert len(delivery_lookups) == 2, read_ahead
    assert len(device_lookups) <= 2 * 2 + 1, read_ahead
    lookups = [s for s in applying if "FROM devices" in s or "FROM deliveries WHERE" in s]
    assert lookups == [], lookups


async def test_the_engine_applies_a_speakers_played_report_by_warning_and_address(
    tocsin: MakeTocsin,
) -> None:
    """End to end: what a loudspeaker adapter reports after a restart (it no longer knows
    the delivery id) reaches the village."""
    t = tocsin({"loudspeaker": sim(["speaker"], ack_probability=0)}, policy=SPEAKERS)
    w = await t.warn((VILLAGE_A1b,))
    await t.start()
    await t.wait_state(w.id, "spk-a1b", "speaker", "sent", within=5)

    outcome = await t.engine.intake.submit_and_wait(played(w.id, "spk-a1b"))

    assert outcome.result is AckResult.APPLIED
    assert t.state(w.id, "spk-a1b", "speaker") == "acknowledged"
    assert t.reached(w.id) == {("village", VILLAGE_A1b): 1}

"""Village fallback: when none of a village's devices played a warning (offline or failed at
once, or no played report after every attempt), the village's fallback people (the policy's
devices rule ``fallback``) are reached at once — once per village and warning, only for an
Alert or Update in force."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from small_directory import VILLAGE_A1a, VILLAGE_A1b
from stores import StoreTarget

from dispatcher.adapter import Report, ReportState
from dispatcher.config import ConfigError, load_policy
from dispatcher.domain import DeliveryState, Level, MsgType, Status
from dispatcher.engine.engine import level_rules
from dispatcher.engine.types import AckResult, AdapterAck, Transition
from dispatcher.log_query import LogFilter
from dispatcher.planner import plan_stages
from dispatcher.policy import Policy
from dispatcher.store.sql_store import SqlStore
from engine.conftest import MakeTocsin
from engine.harness import FAST, ROOT, Tocsin, policy, rule, sim

CADRE_VOICE = {"audience": "village_cadres", "channels": ["voice", "sms"]}
LONG = {"ack_timeout": "1h"}


def speakers(fallback: dict[str, Any] | None = CADRE_VOICE) -> dict[str, Any]:
    devices: dict[str, Any] = {"audience": "devices", "device_kinds": ["loudspeaker"]}
    if fallback is not None:
        devices["fallback"] = fallback
    return devices


def fallback_policy(
    *people: dict[str, Any], fallback: dict[str, Any] | None = CADRE_VOICE, **level: Any
) -> Policy:
    """Loudspeakers with a fallback, then ``people`` rules (default: cadres and grid members
    texted only)."""
    rules = [
        speakers(fallback),
        *(people or (rule("village_cadres", "sms"), rule("grid_members", "sms"))),
    ]
    return policy(**{**LONG, **level}, rules=rules)


def add_speaker(db: StoreTarget, device_id: str, village: str) -> None:
    conn = db.connect()
    try:
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO devices (id, kind, name, adapter, address, area_code) "
            "VALUES (?, 'loudspeaker', ?, 'loudspeaker', ?, ?)",
            (device_id, device_id, device_id, village),
        )
        conn.execute("INSERT INTO device_areas VALUES (?, ?)", (device_id, village))
        conn.execute("COMMIT")
    finally:
        conn.close()


def fallback_events(t: Tocsin, warning_id: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(device, village, reason, detail) of each village_fallback event."""
    return [
        (target, area, reason, json.loads(detail))
        for target, area, reason, detail in t.rows(
            "SELECT target_id, area_code, reason, detail FROM delivery_events "
            "WHERE warning_id = ? AND state = 'village_fallback' ORDER BY id",
            (warning_id,),
        )
    ]


def quiet(**extra: Any) -> dict[str, Any]:
    """SMS and voice that are sent but never acknowledged (the fallback's own steps stay put)."""
    return {
        "sms": sim(["sms"], ack_probability=0),
        "voice": sim(["voice"], ack_probability=0),
        **extra,
    }


async def test_a_village_whose_only_speaker_fails_calls_its_cadre_at_once(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        quiet(loudspeaker=sim(["speaker"], fail_addresses=["spk-a1b"])),
        policy=fallback_policy(),
    )
    w = await t.warn((VILLAGE_A1a, VILLAGE_A1b))
    # The plan texts the cadre; nobody is to be called.
    assert ("person", "p05", "voice") not in t.states(w.id)
    await t.start()

    voice = await t.wait_state(w.id, "p05", "voice", "sent", within=5)

    speaker = t.delivery(w.id, "spk-a1b", "speaker")
    assert speaker.state == "failed"
    failed_at = next(e.at for e in t.events(speaker.id) if e.state == "failed")
    assert voice.audience == "person"
    assert voice.priority == 10  # with the grid members
    assert voice.area_code == VILLAGE_A1b
    created = t.events(voice.id)[0]
    assert created.state == "pending"
    assert created.at - failed_at < 0.5, "not at once"
    assert created.reason.startswith(f"village {VILLAGE_A1b} devices did not play (spk-a1b ")
    assert "unknown number" in created.reason and created.reason.endswith(": fallback")
    assert json.loads(created.detail) == {"village": VILLAGE_A1b, "after_delivery": speaker.id}
    (sent,) = [e for e in t.events(voice.id) if e.state == "sent"]
    assert sent.at - created.at < 1.0
    assert [d.address for d in t.adapter("voice").dispatched] == ["+8613800000005"]
    # The cadre's SMS was planned already: one message per channel, nothing more.
    assert len([d for d in t.deliveries(w.id) if d.target_id == "p05"]) == 2
    # The grid member (not the fallback audience) and the other village are left alone.
    assert ("person", "p06", "voice") not in t.states(w.id)
    assert not [
        d for d in t.deliveries(w.id) if d.area_code == VILLAGE_A1a and d.channel == "voice"
    ]
    ((device, village, reason, detail),) = fallback_events(t, w.id)
    assert (device, village) == ("spk-a1b", VILLAGE_A1b)
    assert "to village_cadres by voice, sms" in reason
    assert detail["added"] == [voice.id] and detail["released"] == []
    assert detail["people"] == 1
    # The delivery log's filters find it by device, area and state.
    for query in (
        LogFilter(warning=w.id, state="village_fallback"),
        LogFilter(device="spk-a1b", state="village_fallback"),
        LogFilter(area=VILLAGE_A1b, state="village_fallback"),
    ):
        found = await t.store.log_events(query, limit=10)
        assert [(e.target_id, e.area_code) for e in found] == [("spk-a1b", VILLAGE_A1b)], query
    await t.assert_counts_consistent(w.id)


async def test_a_held_call_is_released_rather_than_a_second_one_added(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        quiet(loudspeaker=sim(["speaker"], fail_addresses=["spk-a1b"])),
        policy=fallback_policy(rule("village_cadres", "sms", "voice")),
    )
    w = await t.warn((VILLAGE_A1b,))
    assert t.state(w.id, "p05", "voice") == "held"
    await t.start()

    voice = await t.wait_state(w.id, "p05", "voice", "sent", within=5)

    assert [d.channel for d in t.deliveries(w.id) if d.target_id == "p05"] == ["sms", "voice"]
    released = next(e for e in t.events(voice.id) if e.state == "pending")
    assert "devices did not play" in released.reason
    # Released by the fallback, long before the SMS could go unanswered (ack_timeout 1h).
    assert t.state(w.id, "p05", "sms") == "sent"
    ((_device, _village, _reason, detail),) = fallback_events(t, w.id)
    assert detail["released"] == [voice.id] and detail["added"] == []
    await t.assert_counts_consistent(w.id)


async def test_a_fallback_person_without_deliveries_gets_the_whole_ladder(
    tocsin: MakeTocsin,
) -> None:
    """The fallback's later channels are held behind the first, so the ladder continues."""
    t = tocsin(
        {
            "loudspeaker": sim(["speaker"], fail_addresses=["spk-a1b"]),
            "sms": sim(["sms"]),
            "voice": sim(["voice"], ack_probability=0),
        },
        # Nobody in the village is messaged by the plan (a grid member's acknowledgement
        # would reach the village: no fallback then).
        policy=fallback_policy(rule("vulnerable", "sms"), ack_timeout="0.3s"),
    )
    w = await t.warn((VILLAGE_A1b,))
    assert not [d for d in t.deliveries(w.id) if d.target_id == "p05"]
    await t.start()

    # The call goes unanswered; the held SMS is released and acknowledged.
    await t.wait_state(w.id, "p05", "sms", "acknowledged", within=5)

    assert t.state(w.id, "p05", "voice") == "unacknowledged"
    sms = t.delivery(w.id, "p05", "sms")
    assert [e.state for e in t.events(sms.id)][:2] == ["held", "pending"]
    assert t.reached(w.id)[("person", "p05")] == 1
    await t.wait(lambda: t.completed(w.id), within=5, what="warning complete")
    await t.assert_counts_consistent(w.id)


async def test_one_speaker_of_two_playing_means_no_fallback(tocsin: MakeTocsin) -> None:
    t = tocsin(
        quiet(loudspeaker=sim(["speaker"], fail_addresses=["spk-a1b"])),
        policy=fallback_policy(),
    )
    add_speaker(t.db, "spk-a1b-2", VILLAGE_A1b)
    w = await t.warn((VILLAGE_A1b,))
    await t.start()

    await t.wait_state(w.id, "spk-a1b-2", "speaker", "acknowledged", within=5)
    await t.wait_state(w.id, "spk-a1b", "speaker", "failed", within=5)
    await t.wait_state(w.id, "p05", "sms", "sent", within=5)

    assert fallback_events(t, w.id) == []
    assert ("person", "p05", "voice") not in t.states(w.id)
    assert t.reached(w.id)[("village", VILLAGE_A1b)] == 1
    await t.assert_counts_consistent(w.id)


async def test_two_failing_speakers_fall_back_once(tocsin: MakeTocsin) -> None:
    t = tocsin(
        quiet(loudspeaker=sim(["speaker"], fail_addresses=["spk-a1b", "spk-a1b-2"])),
        policy=fallback_policy(),
    )
    add_speaker(t.db, "spk-a1b-2", VILLAGE_A1b)
    w = await t.warn((VILLAGE_A1b,))
    await t.start()

    await t.wait_state(w.id, "p05", "voice", "sent", within=5)
    await t.wait_state(w.id, "spk-a1b-2", "speaker", "failed", within=5)
    await t.wait_state(w.id, "spk-a1b", "speaker", "failed", within=5)

    assert len(fallback_events(t, w.id)) == 1
    assert [d.channel for d in t.deliveries(w.id) if d.target_id == "p05"] == ["sms", "voice"]
    await t.assert_counts_consistent(w.id)


async def test_the_last_speaker_of_a_village_to_fail_sets_off_its_fallback(
    store: SqlStore, tocsin: MakeTocsin
) -> None:
    """Speakers failing one after another, each in its own batch: while one may still play,
    nothing happens; the last one's failure falls back."""
    t = tocsin(quiet(), policy=fallback_policy())
    add_speaker(t.db, "spk-a1b-2", VILLAGE_A1b)
    add_speaker(t.db, "spk-a1b-3", VILLAGE_A1b)
    w = await t.warn((VILLAGE_A1b,))
    levels = level_rules(t.policy, FAST)
    claimed = await store.claim_due("speaker", 10, now=time.time(), lease=30, priorities=[0])
    by_device = {c.target_id: c for c in claimed}
    assert set(by_device) == {"spk-a1b", "spk-a1b-2", "spk-a1b-3"}

    async def fail(device: str) -> None:
        c = by_device[device]
        failed = Transition(
            c.id, DeliveryState.FAILED, None, 1, "loudspeaker", reason="offline", escalate=True
        )
        await store.record_transitions([failed], now=time.time(), levels=levels, visit_delay=0.1)

    await fail("spk-a1b")
    await fail("spk-a1b-2")
    assert fallback_events(t, w.id) == []
    assert ("person", "p05", "voice") not in t.states(w.id)
    await fail("spk-a1b-3")

    ((device, _village, reason, _detail),) = fallback_events(t, w.id)
    assert device == "spk-a1b-3"
    assert "(spk-a1b-3 speaker failed: offline)" in reason
    voice = t.delivery(w.id, "p05", "voice")
    assert voice.state == "pending"
    assert voice.due_at <= time.time()
    assert t.state(w.id, "p05", "sms") == "pending"
    await t.assert_counts_consistent(w.id)

    # The added call is the warning's like any other: a Cancel stops it.
    await t.stop_warning(w, MsgType.CANCEL)
    assert t.state(w.id, "p05", "voice") == "cancelled"
    await t.assert_counts_consistent(w.id)


async def test_a_village_falls_back_once_whatever_sets_it_off_again(
    store: SqlStore, tocsin: MakeTocsin
) -> None:
    """The fallback is looked for in the log: a second trigger, in another transaction,
    adds nothing."""
    from dispatcher.store import engine_ops as se

    t = tocsin(quiet(), policy=fallback_policy())
    w = await t.warn((VILLAGE_A1b,))
    levels = level_rules(t.policy, FAST)
    speaker = t.delivery(w.id, "spk-a1b", "speaker")

    def trigger() -> None:
        conn = t.db.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE deliveries SET state = 'failed' WHERE id = ?", (speaker.id,))
            batch = se._Batch(conn, time.time(), levels, 0.1)
            row = se._Row(
                speaker.id,
                conn.execute("SELECT seq FROM warnings WHERE id = ?", (w.id,)).fetchone()[0],
                "device",
                "spk-a1b",
                "speaker",
                VILLAGE_A1b,
                "failed",
                1,
            )
            se._escalate(batch, row, "speaker failed: offline")
            batch.move(row.warning_seq, "pending", "failed")
            batch.flush()
            conn.execute("COMMIT")
        finally:
            conn.close()

    trigger()
    trigger()

    assert len(fallback_events(t, w.id)) == 1
    assert [d.channel for d in t.deliveries(w.id) if d.target_id == "p05"] == ["sms", "voice"]


async def test_a_speaker_that_never_reports_played_falls_back_after_its_attempts(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        quiet(loudspeaker=sim(["speaker"], ack_probability=0)),
        policy=fallback_policy(max_attempts=2, device_ack_timeout="0.3s"),
    )
    w = await t.warn((VILLAGE_A1b,))
    await t.start()

    voice = await t.wait_state(w.id, "p05", "voice", {"pending", "sending", "sent"}, within=5)

    speaker = t.delivery(w.id, "spk-a1b", "speaker")
    assert speaker.state == "unacknowledged"
    assert speaker.attempts == 2
    unacked_at = next(e.at for e in t.events(speaker.id) if e.state == "unacknowledged")
    created = t.events(voice.id)[0]
    assert created.at >= unacked_at - 0.01
    assert "(spk-a1b speaker not acknowledged in time)" in created.reason
    assert len(fallback_events(t, w.id)) == 1
    await t.wait_state(w.id, "p05", "voice", "sent", within=5)
    await t.assert_counts_consistent(w.id)


async def test_a_speaker_that_plays_after_all_reaches_the_village_and_keeps_the_fallback(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        quiet(loudspeaker=sim(["speaker"], fail_addresses=["spk-a1b"])),
        policy=fallback_policy(rule("village_cadres", "sms", "voice")),
    )
    w = await t.warn((VILLAGE_A1b,))
    await t.start()
    await t.wait_state(w.id, "p05", "voice", "sent", within=5)

    # Back online, it plays: its acknowledgement names only the warning and the device.
    played = await t.engine.intake.submit_and_wait(
        AdapterAck(
            "loudspeaker",
            Report(
                ReportState.ACKNOWLEDGED,
                from_address="spk-a1b",
                warning_id=w.id,
                detail={"device_state": "played"},
            ),
            time.time(),
        )
    )

    assert played.result is AckResult.APPLIED
    assert t.state(w.id, "spk-a1b", "speaker") == "acknowledged"
    assert t.reached(w.id)[("village", VILLAGE_A1b)] == 1
    # What the fallback sent stays sent.
    assert t.state(w.id, "p05", "voice") == "sent"
    assert t.state(w.id, "p05", "sms") == "sent"
    await t.assert_counts_consistent(w.id)


async def test_no_fallback_for_a_cancel(tocsin: MakeTocsin) -> None:
    t = tocsin(
        quiet(loudspeaker=sim(["speaker"], fail_addresses=["spk-a1b"])),
        policy=fallback_policy(),
    )
    w = await t.warn((VILLAGE_A1b,))
    cancel = await t.stop_warning(w, MsgType.CANCEL)
    await t.plan(cancel.id)
    await t.start()

    await t.wait_state(cancel.id, "spk-a1b", "speaker", "failed", within=5)
    await t.wait(lambda: t.completed(cancel.id), within=5, what="cancel complete")

    assert fallback_events(t, cancel.id) == []
    assert [d.target_id for d in t.deliveries(cancel.id)] == ["spk-a1b"]
    assert fallback_events(t, w.id) == []  # the cancelled warning's speaker never went out
    assert t.adapter("voice").dispatched == []


async def test_no_fallback_for_a_test_broadcast(tocsin: MakeTocsin) -> None:
    """A Test checks the devices (its silent ones go on the maintenance list): people are
    not called for it."""
    t = tocsin(
        quiet(loudspeaker=sim(["speaker"], fail_addresses=["spk-a1b"])),
        policy=fallback_policy(),
    )
    w = await t.warn((VILLAGE_A1b,), status=Status.TEST)
    await t.start()

    await t.wait_state(w.id, "spk-a1b", "speaker", "failed", within=5)
    await t.wait_state(w.id, "p05", "sms", "sent", within=5)

    assert fallback_events(t, w.id) == []
    assert ("person", "p05", "voice") not in t.states(w.id)


async def test_a_fallback_before_its_people_are_planned_is_not_planned_twice(
    store: SqlStore, tocsin: MakeTocsin
) -> None:
    """The speaker fails while only the devices stage is committed: the people stage then
    leaves out the call the fallback added (one message per channel)."""
    pol = fallback_policy(rule("village_cadres", "sms", "voice"), rule("grid_members", "sms"))
    t = tocsin(quiet(), policy=pol)
    w = await t.warn((VILLAGE_A1b,), plan=False)
    stages = plan_stages(w, pol, now=time.time(), villages=[(VILLAGE_A1b, 3)])
    await store.execute_plan(w.id, stages[0], now=time.time())
    (c,) = await store.claim_due("speaker", 10, now=time.time(), lease=30, priorities=[0])
    await store.record_transitions(
        [Transition(c.id, DeliveryState.FAILED, None, 1, "loudspeaker", "offline", escalate=True)],
        now=time.time(),
        levels=level_rules(pol, FAST),
        visit_delay=0.1,
    )
    assert t.states(w.id)[("person", "p05", "voice")] == "pending"
    assert t.states(w.id)[("person", "p05", "sms")] == "held"

    for stage in stages[1:]:
        await store.execute_plan(w.id, stage, now=time.time())

    assert sorted((d.channel, d.state) for d in t.deliveries(w.id) if d.target_id == "p05") == [
        ("sms", "held"),
        ("voice", "pending"),
    ]
    # Everyone else is planned as usual.
    assert t.states(w.id)[("grid_member", "p06", "sms")] == "pending"
    await t.assert_counts_consistent(w.id)


# -- the policy ----------------------------------------------------------------------------------
def _bad_policy(tmp_path: Path, devices_rule: str, extra: str = "") -> list[str]:
    text = (ROOT / "config" / "policy.toml").read_text()
    marker = '[[levels.red.rules]]\naudience = "devices"\n'
    assert marker in text
    start = text.index(marker)
    end = text.index("[[levels.red.rules]]", start + len(marker))
    path = tmp_path / "policy.toml"
    path.write_text(text[:start] + devices_rule + "\n" + extra + text[end:])
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    return info.value.problems


@pytest.mark.parametrize(
    ("fallback", "key", "says"),
    [
        ('{ audience = "everyone", channels = ["voice"] }', "fallback.audience", "one role"),
        ('{ audience = "devices", channels = ["voice"] }', "fallback.audience", "not devices"),
        ('{ audience = "village_cadres", channels = ["speaker"] }', "fallback.channels", "speaker"),
        ('{ audience = "village_cadres", channels = [] }', "fallback.channels", "needs channels"),
        (
            '{ audience = "village_cadres", channels = ["voice", "voice"] }',
            "fallback.channels",
            "once",
        ),
        ('{ audience = "village_cadres" }', "fallback.channels", "Field required"),
        (
            '{ audience = "village_cadres", channels = ["sms"], when = 1 }',
            "fallback.when",
            "unknown key",
        ),
    ],
)
def test_a_bad_fallback_names_its_key(tmp_path: Path, fallback: str, key: str, says: str) -> None:
    problems = _bad_policy(
        tmp_path,
        '[[levels.red.rules]]\naudience = "devices"\ndevice_kinds = ["loudspeaker"]\n'
        f"fallback = {fallback}\n",
    )
    assert any(
        p.startswith(f"{tmp_path / 'policy.toml'}: levels.red.rules[0].{key}: ") and says in p
        for p in problems
    ), problems


def test_a_fallback_belongs_in_the_devices_rule(tmp_path: Path) -> None:
    problems = _bad_policy(
        tmp_path,
        '[[levels.red.rules]]\naudience = "devices"\ndevice_kinds = ["loudspeaker"]\n\n'
        '[[levels.red.rules]]\naudience = "everyone"\nchannels = ["sms"]\n'
        'fallback = { audience = "village_cadres", channels = ["voice"] }\n',
    )
    assert any(
        ".rules[1].fallback: fallback belongs only in a devices rule" in p for p in problems
    ), problems


def test_the_shipped_policy_falls_back_to_the_cadres_at_red_orange_and_yellow() -> None:
    shipped = load_policy(ROOT / "config" / "policy.toml")
    for level in (Level.RED, Level.ORANGE, Level.YELLOW):
        fallback = shipped.for_level(level).device_fallback
        assert fallback is not None, level
        assert fallback.audience.value == "village_cadres"
        assert fallback.channels[0].value == "voice"
    assert shipped.for_level(Level.BLUE).device_fallback is None
    rules = level_rules(shipped, FAST)
    assert rules["red"].fallback is not None and rules["red"].fallback.channels == ("voice", "sms")
    assert rules["blue"].fallback is None


async def test_a_village_its_grid_member_reached_does_not_fall_back(
    store: SqlStore, tocsin: MakeTocsin
) -> None:
    t = tocsin(quiet(), policy=fallback_policy())
    w = await t.warn((VILLAGE_A1b,))
    levels = level_rules(t.policy, FAST)
    gm_sms = t.delivery(w.id, "p06", "sms")
    (outcome,) = await store.apply_acks(
        [AdapterAck("sms", Report(ReportState.ACKNOWLEDGED, delivery_id=gm_sms.id), time.time())],
        now=time.time(),
        levels=levels,
        visit_delay=0.1,
        retry_delay=lambda attempt, after: 0.1,
    )
    assert outcome.result is AckResult.APPLIED
    assert t.reached(w.id)[("village", VILLAGE_A1b)] == 1
    (c,) = await store.claim_due("speaker", 10, now=time.time(), lease=30, priorities=[0])
    await store.record_transitions(
        [Transition(c.id, DeliveryState.FAILED, None, 1, "loudspeaker", "offline", escalate=True)],
        now=time.time(),
        levels=levels,
        visit_delay=0.1,
    )

    assert t.state(w.id, "spk-a1b", "speaker") == "failed"
    assert fallback_events(t, w.id) == []
    assert ("person", "p05", "voice") not in t.states(w.id)

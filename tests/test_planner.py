"""The planner against a small hand-made directory whose every expected delivery is known:
the ladder (first step pending, later steps held), the staged plan (devices first, people tier
by tier in chunks of villages, each stage its own transaction), resuming after a crash, a
Cancel between stages, and the counts every stage keeps."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from small_directory import (
    CADRE,
    CITY,
    COUNTY_A,
    COUNTY_B,
    GM,
    TOWN_A1,
    VILLAGE_A1a,
    VILLAGE_A1b,
    VILLAGE_B1a,
    add_person,
    coverage_targets,
    delivery_rows,
    fill_small_directory,
    make_warning,
)
from stores import StoreTarget

from dispatcher.config import load_policy
from dispatcher.domain import Level, MsgType, WarningRecord
from dispatcher.plan_view import build_plan_view
from dispatcher.planner import device_stage, plan_stages, plan_statements
from dispatcher.planning_worker import PlanningWorker
from dispatcher.policy import Policy
from dispatcher.store.base import PlanResult, PlanStage, SqlStatement, VillageRange
from dispatcher.store.sql_store import SqlStore

ROOT = Path(__file__).resolve().parent.parent
#: What a trigger's refusal raises, on either database.
DATABASE_ERRORS = (sqlite3.DatabaseError, psycopg.Error)
#: Every village: (code, persons), as the worker reads them to size chunks.
VILLAGES = [(VILLAGE_A1a, 4), (VILLAGE_A1b, 2), (VILLAGE_B1a, 2)]


@pytest.fixture
async def store(store_target: StoreTarget) -> AsyncIterator[SqlStore]:
    opened = await store_target.open()
    fill_small_directory(store_target)
    yield opened
    await opened.close()


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(ROOT / "config" / "policy.toml")


def _warning(
    areas: tuple[str, ...], level: Level = Level.RED, msg_type: MsgType = MsgType.ALERT
) -> WarningRecord:
    return make_warning(areas, level=level, msg_type=msg_type)


def _policy_file(tmp_path: Path, rules: str) -> Policy:
    """The same rules at every level."""
    path = tmp_path / "policy.toml"
    path.write_text(
        "".join(
            f"[levels.{lv}]\n" + rules.replace("LEVEL", lv)
            for lv in ("red", "orange", "yellow", "blue")
        )
    )
    return load_policy(path)


async def _plan(
    store: SqlStore,
    policy: Policy,
    warning: WarningRecord,
    *,
    chunk_persons: int | None = None,
    registry: CollectorRegistry | None = None,
) -> PlanResult:
    """Store the warning and plan it through the worker, stage by stage."""
    await store.create_warning(warning, idempotency=None, now=time.time())
    worker = PlanningWorker(store, lambda: policy, chunk_persons=chunk_persons, registry=registry)
    result = await worker.plan_now(warning.id)
    assert result.planned
    assert result.deliveries == result.total_deliveries
    return result


async def _plan_in_one_go(store: SqlStore, policy: Policy, warning: WarningRecord) -> int:
    """The same deliveries as one statement per kind and channel, in one stage."""
    await store.create_warning(warning, idempotency=None, now=time.time())
    stage = PlanStage(
        1,
        tuple(plan_statements(warning, policy, now=time.time())),
        coverage=VillageRange(),
        last=True,
    )
    result = await store.execute_plan(warning.id, stage, now=time.time())
    assert result.planned
    return result.deliveries


def _rows(target: StoreTarget, warning_id: str) -> set[tuple[str, str, str, int, str]]:
    rows = delivery_rows(target, warning_id)
    assert len(rows) == len(set(rows))
    return set(rows)


def _people(target: StoreTarget, warning_id: str) -> set[tuple[str, str, str, int, str]]:
    return {r for r in _rows(target, warning_id) if r[2] != "device"}


def _sql(target: StoreTarget, query: str, *params: object) -> list[tuple[Any, ...]]:
    conn = target.connect()
    try:
        return [tuple(row) for row in conn.execute(query, params).fetchall()]
    finally:
        conn.close()


# -- who gets what, and which step first ---------------------------------------------------------
async def test_red_village_warning_reaches_exactly_the_expected_targets(
    store: SqlStore, store_target: StoreTarget, policy: Policy
) -> None:
    warning = _warning((VILLAGE_A1a,))
    result = await _plan(store, policy, warning)
    expected = {
        # devices serving the village, or an area above it
        ("spk-a1a", "speaker", "device", 0, "pending"),
        ("tx-a1", "transmitter", "device", 1, "pending"),
        ("tx-a", "transmitter", "device", 1, "pending"),
        ("mdm-a1", "modem", "device", 5, "pending"),
        # p01 is a grid member and vulnerable: once per channel, as a grid member; the grid
        # member rule's ladder is sms, then voice
        ("p01", "sms", "grid_member", 10, "pending"),
        ("p01", "voice", "grid_member", 10, "held"),
        ("p02", "sms", "person", 40, "pending"),
        # p04 is vulnerable and lives alone: the vulnerable rule (sms, voice) comes first in
        # AudienceSelector order at the same priority
        ("p04", "sms", "person", 20, "pending"),
        ("p04", "voice", "person", 20, "held"),
    }
    assert _rows(store_target, warning.id) == expected
    assert result.deliveries == len(expected)


async def test_lives_alone_person_is_called_first_and_texted_if_unanswered(
    store: SqlStore, store_target: StoreTarget, policy: Policy
) -> None:
    # red: lives_alone → voice (priority 20); everyone → sms (priority 40)
    add_person(store_target, "p09", village=VILLAGE_A1b, household="h3", lives_alone=True)
    warning = _warning((VILLAGE_A1b,))
    await _plan(store, policy, warning)
    people = _people(store_target, warning.id)
    assert ("p09", "voice", "person", 20, "pending") in people
    assert ("p09", "sms", "person", 40, "held") in people
    # the village cadre (sms, voice at red) and the grid member (sms, voice)
    assert ("p05", "sms", "person", 15, "pending") in people
    assert ("p05", "voice", "person", 15, "held") in people
    assert ("p06", "sms", "grid_member", 10, "pending") in people
    assert ("p06", "voice", "grid_member", 10, "held") in people


async def test_orange_calls_vulnerable_people_first_and_texts_them_after(
    store: SqlStore, store_target: StoreTarget, policy: Policy
) -> None:
    add_person(
        store_target, "p10", village=VILLAGE_A1b, household="h3", roles=CADRE, vulnerable=True
    )
    warning = _warning((COUNTY_A,), level=Level.ORANGE)
    await _plan(store, policy, warning)
    people = _people(store_target, warning.id)
    # p04, vulnerable: orange calls them (voice, 20), the everyone SMS waits
    assert {r for r in people if r[0] == "p04"} == {
        ("p04", "voice", "person", 20, "pending"),
        ("p04", "sms", "person", 40, "held"),
    }
    # p01, grid member and vulnerable: the grid-member ladder, sms then voice
    assert {r for r in people if r[0] == "p01"} == {
        ("p01", "sms", "grid_member", 10, "pending"),
        ("p01", "voice", "grid_member", 10, "held"),
    }
    # p10, cadre (sms only at orange) and vulnerable (voice): the cadre's sms first
    assert {r for r in people if r[0] == "p10"} == {
        ("p10", "sms", "person", 15, "pending"),
        ("p10", "voice", "person", 20, "held"),
    }
    # p02: only everyone's sms, nothing held
    assert {r for r in people if r[0] == "p02"} == {("p02", "sms", "person", 40, "pending")}


async def test_a_ladder_can_start_with_a_call(
    store: SqlStore, store_target: StoreTarget, tmp_path: Path
) -> None:
    policy = _policy_file(
        tmp_path,
        '[[levels.LEVEL.rules]]\naudience = "grid_members"\nchannels = ["voice", "sms"]\n'
        '[[levels.LEVEL.rules]]\naudience = "everyone"\nchannels = ["sms"]\n',
    )
    warning = _warning((COUNTY_B,))
    await _plan(store, policy, warning)
    assert _people(store_target, warning.id) == {
        ("p07", "voice", "grid_member", 10, "pending"),
        ("p07", "sms", "grid_member", 10, "held"),
        ("p08", "sms", "person", 40, "pending"),
    }


async def test_overlapping_targets_plan_each_target_once(
    store: SqlStore, store_target: StoreTarget, policy: Policy
) -> None:
    warning = _warning((COUNTY_A, VILLAGE_A1a, TOWN_A1))
    await _plan(store, policy, warning, chunk_persons=1)
    rows = _rows(store_target, warning.id)
    keys = [(r[0], r[1]) for r in rows]
    assert len(keys) == len(set(keys))
    people = {r[0] for r in rows if r[2] != "device"}
    assert people == {"p01", "p02", "p04", "p05", "p06"}  # not p03 (no phone), not county B
    assert ("p05", "voice", "person", 15, "held") in rows  # village cadre: sms, then voice
    assert {r[0] for r in rows if r[2] == "device"} == {
        "spk-a1a",
        "spk-a1b",
        "tx-a",
        "tx-a1",
        "mdm-a1",
    }


async def test_blue_warning_texts_grid_members_only(
    store: SqlStore, store_target: StoreTarget, policy: Policy
) -> None:
    warning = _warning((CITY,), level=Level.BLUE)
    await _plan(store, policy, warning)
    assert _rows(store_target, warning.id) == {
        ("p01", "sms", "grid_member", 10, "pending"),
        ("p06", "sms", "grid_member", 10, "pending"),
        ("p07", "sms", "grid_member", 10, "pending"),
    }


async def test_cancel_is_planned_to_devices_only(
    store: SqlStore, store_target: StoreTarget, policy: Policy
) -> None:
    warning = _warning((VILLAGE_B1a,), msg_type=MsgType.CANCEL)
    await _plan(store, policy, warning)
    assert _rows(store_target, warning.id) == {("spk-b1a", "speaker", "device", 0, "pending")}
    # its coverage targets are written too, in a stage of their own after the devices
    assert coverage_targets(store_target, warning.id) == {VILLAGE_B1a: (1, 1, 2)}


async def test_households_rule_picks_one_member_with_a_phone(
    store: SqlStore, store_target: StoreTarget, tmp_path: Path
) -> None:
    policy = _policy_file(
        tmp_path, '[[levels.LEVEL.rules]]\naudience = "households"\nchannels = ["sms"]\n'
    )
    warning = _warning((COUNTY_A,))
    await _plan(store, policy, warning, chunk_persons=1)
    # h1 → p01 (p01 < p02; p03 has no phone), h2 → p04, h3 → p05
    assert {r[0] for r in _rows(store_target, warning.id)} == {"p01", "p04", "p05"}
    assert {r[2] for r in _rows(store_target, warning.id)} == {"household"}


# -- stages ---------------------------------------------------------------------------------------
def test_stage_list_devices_first_then_people_tier_by_tier(policy: Policy) -> None:
    red = _warning((CITY,))
    stages = plan_stages(red, policy, now=0.0, villages=VILLAGES, chunk_persons=4)
    labels = [s.label for s in stages]
    assert labels == [
        "devices",
        "people tier 1, chunk 1/2",
        "people tier 1, chunk 2/2",
        "people tier 2, chunk 1/2",
        "people tier 2, chunk 2/2",
        "people tier 3, chunk 1/2",
        "people tier 3, chunk 2/2",
    ]
    assert [s.number for s in stages] == list(range(1, 8))
    assert [s.last for s in stages] == [False] * 6 + [True]
    # chunks cover every village code between them; coverage goes with the first tier
    assert [s.coverage for s in stages] == [
        None,
        VillageRange(None, VILLAGE_A1a),
        VillageRange(VILLAGE_A1a, None),
        None,
        None,
        None,
        None,
    ]
    assert stages[0] == device_stage(red, policy, now=0.0)
    # deterministic for the same warning, policy and villages
    assert plan_stages(red, policy, now=0.0, villages=VILLAGES, chunk_persons=4) == stages
    # the default chunks hold the whole small city at once
    assert len(plan_stages(red, policy, now=0.0, villages=VILLAGES)) == 4
    # without counts (or villages) the chunks still cover everything
    assert [s.coverage for s in plan_stages(red, policy, now=0.0, villages=[])][1] == (
        VillageRange(None, None)
    )
    blue = plan_stages(_warning((CITY,), level=Level.BLUE), policy, now=0.0, villages=VILLAGES)
    assert [(s.label, s.last) for s in blue] == [("people tier 1, chunk 1/1", True)]
    cancel = plan_stages(
        _warning((CITY,), msg_type=MsgType.CANCEL), policy, now=0.0, villages=VILLAGES
    )
    assert [(s.label, s.last) for s in cancel] == [
        ("devices", False),
        ("coverage targets, chunk 1/1", True),
    ]


@pytest.mark.parametrize("level", list(Level))
@pytest.mark.parametrize("chunk_persons", [None, 1, 3])
async def test_staged_plan_equals_the_plan_in_one_go(
    store: SqlStore,
    store_target: StoreTarget,
    policy: Policy,
    level: Level,
    chunk_persons: int | None,
) -> None:
    add_person(store_target, "p09", village=VILLAGE_A1b, household="h3", lives_alone=True)
    add_person(store_target, "p10", village=VILLAGE_B1a, household="h4", roles=GM | CADRE)
    staged = _warning((CITY,), level=level)
    result = await _plan(store, policy, staged, chunk_persons=chunk_persons)
    one_go = _warning((CITY,), level=level)
    count = await _plan_in_one_go(store, policy, one_go)
    assert delivery_rows(store_target, staged.id) == delivery_rows(store_target, one_go.id)
    assert result.deliveries == count
    assert await store.delivery_state_counts(staged.id) == await store.delivery_state_counts(
        one_go.id
    )
    plan_counts = {
        (c.area_code, c.audience, c.channel): c.count for c in await store.plan_counts(staged.id)
    }
    assert plan_counts == {
        (c.area_code, c.audience, c.channel): c.count for c in await store.plan_counts(one_go.id)
    }
    assert coverage_targets(store_target, staged.id) == coverage_targets(store_target, one_go.id)
    # one rowid range per stage that wrote rows, each holding only this warning's rows
    ranges = _sql(
        store_target,
        "SELECT first_id, last_id FROM delivery_ranges WHERE warning_seq = "
        "(SELECT seq FROM warnings WHERE id = ?)",
        staged.id,
    )
    assert sum(int(last) - int(first) + 1 for first, last in ranges) == count
    if chunk_persons == 1 and level is Level.RED:
        assert len(ranges) > 4


async def test_each_stage_is_recorded_and_the_last_one_plans_the_warning(
    store: SqlStore, store_target: StoreTarget, policy: Policy
) -> None:
    warning = _warning((CITY,))
    committed: list[PlanResult] = []

    async def on_stage(result: PlanResult) -> None:
        committed.append(result)
        row = _sql(
            store_target, "SELECT plan_stage, planned_at FROM warnings WHERE id = ?", warning.id
        )
        assert row[0][0] == result.stage
        assert (row[0][1] is not None) == result.planned
        assert sum(c.count for c in await store.plan_counts(warning.id)) == sum(
            r.deliveries for r in committed
        )

    await store.create_warning(warning, idempotency=None, now=time.time())
    worker = PlanningWorker(store, lambda: policy, chunk_persons=2)
    result = await worker.plan_now(warning.id, on_stage=on_stage)
    assert [r.stage for r in committed] == list(range(1, len(committed) + 1))
    assert [r.planned for r in committed] == [False] * (len(committed) - 1) + [True]
    assert committed[0].deliveries == 6  # the devices
    assert result.stage == len(committed) > 4
    assert result.total_deliveries == committed[-1].total_deliveries == result.deliveries
    events = await store.warning_events(warning.id)
    assert [e.state for e in events] == ["received", "planned"]
    assert events[-1].detail == {"deliveries": result.deliveries, "plan_stage": result.stage}
    # planning again does nothing
    again = await worker.plan_now(warning.id)
    assert (again.planned, again.committed, again.stopped) == (False, False, True)
    assert sum((await store.delivery_state_counts(warning.id)).values()) == result.deliveries


async def test_counts_tables_are_right(
    store: SqlStore, store_target: StoreTarget, policy: Policy
) -> None:
    warning = _warning((CITY,))
    result = await _plan(store, policy, warning, chunk_persons=1)
    rows = delivery_rows(store_target, warning.id)
    by_state = Counter(r[4] for r in rows)
    assert await store.delivery_state_counts(warning.id) == dict(by_state)
    assert by_state == {"pending": 13, "held": 5}
    counts = await store.plan_counts(warning.id)
    assert sum(c.count for c in counts) == result.deliveries == len(rows)
    assert {
        (c.area_code, c.audience, c.channel): c.count for c in counts if c.area_code == VILLAGE_A1a
    } == {
        (VILLAGE_A1a, "grid_member", "sms"): 1,
        (VILLAGE_A1a, "grid_member", "voice"): 1,
        (VILLAGE_A1a, "person", "sms"): 2,
        (VILLAGE_A1a, "person", "voice"): 1,
        (VILLAGE_A1a, "device", "speaker"): 1,
    }
    # per village: distinct grid members, households, persons (with a phone or not)
    assert coverage_targets(store_target, warning.id) == {
        VILLAGE_A1a: (1, 2, 4),
        VILLAGE_A1b: (1, 1, 2),
        VILLAGE_B1a: (1, 1, 2),
    }
    # only the covered villages
    village = _warning((VILLAGE_A1b,), level=Level.BLUE)
    await _plan(store, policy, village)
    assert coverage_targets(store_target, village.id) == {VILLAGE_A1b: (1, 1, 2)}


async def test_plan_counts_roll_up_the_area_tree(store: SqlStore, policy: Policy) -> None:
    warning = _warning((CITY,))
    total = (await _plan(store, policy, warning, chunk_persons=1)).deliveries
    counts = await store.plan_counts(warning.id)
    assert sum(c.count for c in counts) == total
    areas = await store.areas_with_ancestors([c.area_code for c in counts])
    view = build_plan_view(counts, areas)
    by_code = {a["code"]: a for a in view["areas"]}
    assert view["total"] == total
    assert by_code[CITY]["total"] == total
    assert by_code[COUNTY_A]["total"] + by_code[COUNTY_B]["total"] == total
    # county B: one speaker, grid member p07 by sms and voice, p08 by sms
    assert by_code[COUNTY_B]["by_audience"] == {
        "device": {"speaker": 1},
        "grid_member": {"sms": 1, "voice": 1},
        "person": {"sms": 1},
    }
    # the town-level modem and the county transmitter are counted where they are installed
    assert by_code[TOWN_A1]["by_audience"]["device"] == {"speaker": 2, "transmitter": 1, "modem": 1}
    assert by_code[COUNTY_A]["by_audience"]["device"]["transmitter"] == 2
    county_only = build_plan_view(counts, areas, deepest="county")
    assert {a["level"] for a in county_only["areas"]} == {"city", "county"}


async def test_stages_run_in_order(store: SqlStore, policy: Policy) -> None:
    warning = _warning((CITY,))
    await store.create_warning(warning, idempotency=None, now=time.time())
    stages = plan_stages(warning, policy, now=time.time(), villages=VILLAGES, chunk_persons=1)
    with pytest.raises(ValueError, match="stages run in order"):
        await store.execute_plan(warning.id, stages[1], now=time.time())
    first = await store.execute_plan(warning.id, stages[0], now=time.time())
    assert (first.committed, first.stage, first.deliveries, first.planned) == (True, 1, 6, False)
    again = await store.execute_plan(warning.id, stages[0], now=time.time())
    assert (again.committed, again.stage, again.stopped) == (False, 1, False)
    assert sum((await store.delivery_state_counts(warning.id)).values()) == 6


async def test_a_failed_stage_leaves_nothing_and_the_plan_still_counts_right(
    store: SqlStore, store_target: StoreTarget, policy: Policy
) -> None:
    warning = _warning((CITY,))
    await store.create_warning(warning, idempotency=None, now=time.time())
    stages = plan_stages(warning, policy, now=time.time(), villages=VILLAGES, chunk_persons=1)
    # The devices are inserted, then the stage fails: rolled back (on PostgreSQL the ids the
    # insert took are gone for good, so the next stage's range does not follow max(id)).
    broken = dataclasses.replace(
        stages[0],
        statements=(*stages[0].statements, SqlStatement("INSERT INTO no_such_table VALUES (1)")),
    )
    with pytest.raises(DATABASE_ERRORS):
        await store.execute_plan(warning.id, broken, now=time.time())
    assert delivery_rows(store_target, warning.id) == []
    assert await store.delivery_state_counts(warning.id) == {}
    for stage in stages:
        assert (await store.execute_plan(warning.id, stage, now=time.time())).committed
    rows = delivery_rows(store_target, warning.id)
    assert sum((await store.delivery_state_counts(warning.id)).values()) == len(rows)
    assert sum(c.count for c in await store.plan_counts(warning.id)) == len(rows)
    events = await store.warning_events(warning.id)
    assert events[-1].detail == {"deliveries": len(rows), "plan_stage": len(stages)}
    # each stage's range holds exactly its rows, from the first to the last
    ranges = _sql(
        store_target,
        "SELECT r.first_id, r.last_id, count(d.id), min(d.id), max(d.id) "
        "FROM delivery_ranges r JOIN deliveries d ON d.id BETWEEN r.first_id AND r.last_id "
        "WHERE r.warning_seq = (SELECT seq FROM warnings WHERE id = ?) "
        "GROUP BY r.first_id, r.last_id",
        warning.id,
    )
    assert len(ranges) > 4
    for first, last, n, low, high in ranges:
        assert (low, high, n) == (first, last, last - first + 1)
    assert sum(int(r[2]) for r in ranges) == len(rows)


async def test_first_stage_metric(
    store: SqlStore, store_target: StoreTarget, policy: Policy
) -> None:
    registry = CollectorRegistry()
    await _plan(store, policy, _warning((CITY,)), registry=registry)
    assert registry.get_sample_value("tocsin_plan_first_stage_seconds_count") == 1
    assert registry.get_sample_value("tocsin_deliveries_planned_total") == len(
        _all_deliveries(store_target)
    )


def _all_deliveries(target: StoreTarget) -> list[tuple[Any, ...]]:
    return _sql(target, "SELECT id FROM deliveries")


# -- restart and stop between stages ----------------------------------------------------------
@pytest.mark.parametrize("stages_before_crash", [1, 2, 4, 6])
async def test_a_plan_resumes_after_its_last_committed_stage(
    store_target: StoreTarget, policy: Policy, stages_before_crash: int
) -> None:
    store = await store_target.open()
    fill_small_directory(store_target)
    add_person(store_target, "p09", village=VILLAGE_A1b, household="h3", lives_alone=True)
    warning = _warning((CITY,))
    await store.create_warning(warning, idempotency=None, now=time.time())
    stages = plan_stages(warning, policy, now=time.time(), villages=VILLAGES, chunk_persons=1)
    assert len(stages) == 10
    for stage in stages[:stages_before_crash]:
        assert (await store.execute_plan(warning.id, stage, now=time.time())).committed
    await store.close()  # the daemon stops here

    store = await store_target.open()
    try:
        assert await store.unplanned_warning_ids() == [warning.id]
        registry = CollectorRegistry()
        worker = PlanningWorker(store, lambda: policy, chunk_persons=1, registry=registry)
        await worker.start()
        await worker.wait_idle()
        await worker.stop()
        assert await store.unplanned_warning_ids() == []
        one_go = _warning((CITY,))
        count = await _plan_in_one_go(store, policy, one_go)
        assert delivery_rows(store_target, warning.id) == delivery_rows(
            store_target, one_go.id
        )  # no duplicates
        assert sum((await store.delivery_state_counts(warning.id)).values()) == count
        assert await store.delivery_state_counts(warning.id) == await store.delivery_state_counts(
            one_go.id
        )
        assert sorted(await store.plan_counts(warning.id), key=repr) == sorted(
            (await store.plan_counts(one_go.id)), key=repr
        )
        assert coverage_targets(store_target, warning.id) == coverage_targets(
            store_target, one_go.id
        )
        events = await store.warning_events(warning.id)
        assert [e.state for e in events] == ["received", "planned"]
        assert events[-1].detail == {"deliveries": count, "plan_stage": 10}
    finally:
        await store.close()


async def test_a_cancel_between_stages_stops_the_plan(
    store: SqlStore, store_target: StoreTarget, policy: Policy
) -> None:
    warning = _warning((CITY,))
    await store.create_warning(warning, idempotency=None, now=time.time())
    cancel = _warning((CITY,), msg_type=MsgType.CANCEL)
    seen: list[PlanResult] = []

    async def cancel_after_second_stage(result: PlanResult) -> None:
        seen.append(result)
        if result.stage == 2:
            await store.create_warning(
                cancel, idempotency=None, cancels=[warning.id], now=time.time()
            )

    worker = PlanningWorker(store, lambda: policy, chunk_persons=1)
    result = await worker.plan_now(warning.id, on_stage=cancel_after_second_stage)
    assert (result.planned, result.stopped, result.stage) == (False, True, 2)
    written = seen[0].deliveries + seen[1].deliveries
    assert result.deliveries == written
    # what was planned was stopped with the warning; nothing was planned after it
    assert await store.delivery_state_counts(warning.id) == {"cancelled": written}
    assert len(delivery_rows(store_target, warning.id)) == written
    assert _sql(store_target, "SELECT planned_at FROM warnings WHERE id = ?", warning.id) == [
        (None,)
    ]
    assert warning.id not in await store.unplanned_warning_ids()
    events = [e.state for e in await store.warning_events(warning.id)]
    assert events[0] == "received"
    assert events[-1] == "cancelled"
    assert "planned" not in events


# -- stopping -------------------------------------------------------------------------------------
async def test_update_supersedes_pending_and_held_deliveries_at_once(
    store: SqlStore, policy: Policy
) -> None:
    old = _warning((VILLAGE_A1a,))
    planned = (await _plan(store, policy, old)).deliveries
    assert (await store.delivery_state_counts(old.id)).get("held")
    new = _warning((VILLAGE_A1a,), msg_type=MsgType.UPDATE)
    await store.create_warning(new, idempotency=None, supersedes=[old.id], now=time.time())
    assert await store.delivery_state_counts(old.id) == {"superseded": planned}
    stored_old = await store.get_warning(old.id)
    assert stored_old is not None
    assert stored_old.state.value == "superseded"
    events = await store.warning_events(old.id, limit=1000)
    per_delivery = [e for e in events if e.delivery_id is not None]
    assert len(per_delivery) == planned
    assert {e.state for e in per_delivery} == {"superseded"}
    # a superseded warning is never planned again
    retry = await PlanningWorker(store, lambda: policy).plan_now(old.id)
    assert (retry.planned, retry.stopped) == (False, True)


async def test_delivery_events_are_append_only(
    store: SqlStore, store_target: StoreTarget, policy: Policy
) -> None:
    warning = _warning((VILLAGE_A1a,))
    await _plan(store, policy, warning)
    conn = store_target.connect()
    try:
        with pytest.raises(DATABASE_ERRORS, match="append-only"):
            conn.execute("UPDATE delivery_events SET state = 'x'")
        with pytest.raises(DATABASE_ERRORS, match="append-only"):
            conn.execute("DELETE FROM delivery_events")
    finally:
        conn.close()


async def test_stopping_one_warning_leaves_the_others_alone(
    store: SqlStore, policy: Policy
) -> None:
    first = _warning((VILLAGE_A1a,))
    second = _warning((CITY,))
    third = _warning((COUNTY_B,))
    await _plan(store, policy, first, chunk_persons=1)
    n_second = (await _plan(store, policy, second, chunk_persons=1)).deliveries
    await _plan(store, policy, third, chunk_persons=1)
    first_counts = await store.delivery_state_counts(first.id)
    third_counts = await store.delivery_state_counts(third.id)
    cancel = _warning((CITY,), msg_type=MsgType.CANCEL)
    await store.create_warning(cancel, idempotency=None, cancels=[second.id], now=time.time())
    assert await store.delivery_state_counts(first.id) == first_counts
    assert await store.delivery_state_counts(second.id) == {"cancelled": n_second}
    assert await store.delivery_state_counts(third.id) == third_counts
    assert set(third_counts) == {"pending", "held"}
    events = await store.warning_events(second.id, limit=10_000)
    assert len([e for e in events if e.delivery_id is not None]) == n_second

"""The planner against a small hand-made directory whose every expected delivery is known."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from small_directory import (
    CITY,
    COUNTY_A,
    COUNTY_B,
    TOWN_A1,
    VILLAGE_A1a,
    VILLAGE_B1a,
    fill_small_directory,
    make_warning,
)

from dispatcher.config import load_policy
from dispatcher.domain import Level, MsgType, WarningRecord
from dispatcher.plan_view import build_plan_view
from dispatcher.planner import plan_statements
from dispatcher.policy import Policy
from dispatcher.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def store(tmp_path: Path) -> SqliteStore:
    db = tmp_path / "t.db"
    opened = await SqliteStore.open(db)
    fill_small_directory(db)
    yield opened  # type: ignore[misc]
    await opened.close()


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(ROOT / "config" / "policy.toml")


def _warning(
    areas: tuple[str, ...], level: Level = Level.RED, msg_type: MsgType = MsgType.ALERT
) -> WarningRecord:
    return make_warning(areas, level=level, msg_type=msg_type)


async def _plan(store: SqliteStore, policy: Policy, warning: WarningRecord) -> int:
    await store.create_warning(warning, idempotency=None, now=time.time())
    result = await store.execute_plan(
        warning.id, plan_statements(warning, policy, now=time.time()), now=time.time()
    )
    assert result.planned
    return result.deliveries


def _rows(store: SqliteStore, warning_id: str) -> set[tuple[str, str, str, int]]:
    conn = sqlite3.connect(store.path)
    try:
        return {
            (r[0], r[1], r[2], r[3])
            for r in conn.execute(
                "SELECT target_id, channel, audience, priority FROM deliveries "
                "WHERE warning_seq = (SELECT seq FROM warnings WHERE id = ?)",
                (warning_id,),
            )
        }
    finally:
        conn.close()


async def test_red_village_warning_reaches_exactly_the_expected_targets(
    store: SqliteStore, policy: Policy
) -> None:
    warning = _warning((VILLAGE_A1a,))
    count = await _plan(store, policy, warning)
    expected = {
        # devices serving the village, or an area above it
        ("spk-a1a", "speaker", "device", 0),
        ("tx-a1", "transmitter", "device", 1),
        ("tx-a", "transmitter", "device", 1),
        ("mdm-a1", "modem", "device", 5),
        # p01 is a grid member and vulnerable: once per channel, as a grid member
        ("p01", "sms", "grid_member", 10),
        ("p01", "voice", "grid_member", 10),
        ("p02", "sms", "person", 40),
        ("p04", "sms", "person", 20),
        ("p04", "voice", "person", 20),
    }
    assert _rows(store, warning.id) == expected
    assert count == len(expected)


async def test_overlapping_targets_plan_each_target_once(
    store: SqliteStore, policy: Policy
) -> None:
    warning = _warning((COUNTY_A, VILLAGE_A1a, TOWN_A1))
    await _plan(store, policy, warning)
    rows = _rows(store, warning.id)
    keys = [(r[0], r[1]) for r in rows]
    assert len(keys) == len(set(keys))
    people = {r[0] for r in rows if r[2] != "device"}
    assert people == {"p01", "p02", "p04", "p05", "p06"}  # not p03 (no phone), not county B
    assert ("p05", "voice", "person", 15) in rows  # village cadre: sms and voice at red
    assert {r[0] for r in rows if r[2] == "device"} == {
        "spk-a1a",
        "spk-a1b",
        "tx-a",
        "tx-a1",
        "mdm-a1",
    }


async def test_blue_warning_texts_grid_members_only(store: SqliteStore, policy: Policy) -> None:
    warning = _warning((CITY,), level=Level.BLUE)
    await _plan(store, policy, warning)
    assert _rows(store, warning.id) == {
        ("p01", "sms", "grid_member", 10),
        ("p06", "sms", "grid_member", 10),
        ("p07", "sms", "grid_member", 10),
    }


async def test_cancel_is_planned_to_devices_only(store: SqliteStore, policy: Policy) -> None:
    warning = _warning((VILLAGE_B1a,), msg_type=MsgType.CANCEL)
    await _plan(store, policy, warning)
    assert {(r[0], r[2]) for r in _rows(store, warning.id)} == {("spk-b1a", "device")}


async def test_households_rule_picks_one_member_with_a_phone(
    store: SqliteStore, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policy.toml"
    rules = '[[levels.{0}.rules]]\naudience = "households"\nchannels = ["sms"]\n'
    policy_file.write_text(
        "".join(f"[levels.{lv}]\n" + rules.format(lv) for lv in ("red", "orange", "yellow", "blue"))
    )
    warning = _warning((COUNTY_A,))
    await _plan(store, load_policy(policy_file), warning)
    # h1 → p01 (p01 < p02; p03 has no phone), h2 → p04, h3 → p05
    assert {r[0] for r in _rows(store, warning.id)} == {"p01", "p04", "p05"}
    assert {r[2] for r in _rows(store, warning.id)} == {"household"}


async def test_plan_counts_roll_up_the_area_tree(store: SqliteStore, policy: Policy) -> None:
    warning = _warning((CITY,))
    total = await _plan(store, policy, warning)
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


async def test_planning_twice_creates_nothing_more(store: SqliteStore, policy: Policy) -> None:
    warning = _warning((VILLAGE_A1a,))
    first = await _plan(store, policy, warning)
    again = await store.execute_plan(
        warning.id, plan_statements(warning, policy, now=time.time()), now=time.time()
    )
    assert not again.planned
    assert sum((await store.delivery_state_counts(warning.id)).values()) == first


async def test_update_supersedes_pending_deliveries_at_once(
    store: SqliteStore, policy: Policy
) -> None:
    old = _warning((VILLAGE_A1a,))
    planned = await _plan(store, policy, old)
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
    retry = await store.execute_plan(
        old.id, plan_statements(old, policy, now=time.time()), now=time.time()
    )
    assert not retry.planned


async def test_delivery_events_are_append_only(store: SqliteStore, policy: Policy) -> None:
    warning = _warning((VILLAGE_A1a,))
    await _plan(store, policy, warning)
    conn = sqlite3.connect(store.path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE delivery_events SET state = 'x'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM delivery_events")
    finally:
        conn.close()


async def test_stopping_one_warning_leaves_the_others_alone(
    store: SqliteStore, policy: Policy
) -> None:
    first = _warning((VILLAGE_A1a,))
    second = _warning((CITY,))
    third = _warning((COUNTY_B,))
    n_first = await _plan(store, policy, first)
    n_second = await _plan(store, policy, second)
    n_third = await _plan(store, policy, third)
    cancel = _warning((CITY,), msg_type=MsgType.CANCEL)
    await store.create_warning(cancel, idempotency=None, cancels=[second.id], now=time.time())
    assert await store.delivery_state_counts(first.id) == {"pending": n_first}
    assert await store.delivery_state_counts(second.id) == {"cancelled": n_second}
    assert await store.delivery_state_counts(third.id) == {"pending": n_third}
    events = await store.warning_events(second.id, limit=10_000)
    assert len([e for e in events if e.delivery_id is not None]) == n_second

"""The planning worker: plans what was accepted stage by stage, picks up what a crash left
unplanned (or planned in part), and records a warning that expired while the daemon was down
instead of sending it late."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from small_directory import COUNTY_A, fill_small_directory, make_warning
from stores import StoreTarget

from dispatcher.config import load_policy
from dispatcher.domain import MsgType, WarningRecord, WarningState
from dispatcher.planner import plan_stages
from dispatcher.planning_worker import PlanningWorker
from dispatcher.store.base import PlanResult
from dispatcher.store.sql_store import SqlStore

ROOT = Path(__file__).resolve().parent.parent
POLICY = load_policy(ROOT / "config" / "policy.toml")


@pytest.fixture
async def store(store_target: StoreTarget) -> AsyncIterator[SqlStore]:
    opened = await store_target.open()
    fill_small_directory(store_target)
    yield opened
    await opened.close()


def _warning(ident: str, expires_in: timedelta) -> WarningRecord:
    return make_warning((COUNTY_A,), ident=ident, expires_in=expires_in)


async def test_unplanned_warnings_are_planned_at_start(store: SqlStore) -> None:
    for ident in ("left-1", "left-2"):
        await store.create_warning(
            _warning(ident, timedelta(hours=1)), idempotency=None, now=time.time()
        )
    assert await store.unplanned_warning_ids() == ["left-1", "left-2"]
    registry = CollectorRegistry()
    worker = PlanningWorker(store, lambda: POLICY, registry=registry)
    await worker.start()
    try:
        assert worker.running
        await worker.wait_idle()
    finally:
        await worker.stop()
    assert not worker.running
    assert await store.unplanned_warning_ids() == []
    planned = sum(c.count for c in await store.plan_counts("left-1"))
    assert planned > 0
    assert sum(c.count for c in await store.plan_counts("left-2")) == planned
    assert registry.get_sample_value("tocsin_deliveries_planned_total") == 2 * planned
    assert registry.get_sample_value("tocsin_plan_seconds_count") == 2
    assert registry.get_sample_value("tocsin_plan_first_stage_seconds_count") == 2


async def test_warning_expired_before_planning_is_recorded_not_sent(store: SqlStore) -> None:
    await store.create_warning(
        _warning("late", timedelta(minutes=5)), idempotency=None, now=time.time()
    )
    # The daemon comes back ten minutes later.
    worker = PlanningWorker(store, lambda: POLICY, clock=lambda: time.time() + 600)
    result = await worker.plan_now("late")
    assert not result.planned
    warning = await store.get_warning("late")
    assert warning is not None and warning.state is WarningState.EXPIRED
    assert await store.delivery_state_counts("late") == {}
    assert await store.unplanned_warning_ids() == []
    events = [e.state for e in await store.warning_events("late")]
    assert events == ["received", "expired"]


async def test_a_plan_interrupted_after_some_stages_is_finished_at_start(
    store: SqlStore,
) -> None:
    warning = _warning("half", timedelta(hours=1))
    await store.create_warning(warning, idempotency=None, now=time.time())
    villages = [("611002001001", 4), ("611002001002", 2)]
    stages = plan_stages(warning, POLICY, now=time.time(), villages=villages, chunk_persons=1)
    for stage in stages[:3]:  # devices and the first tier, then the daemon stopped
        await store.execute_plan(warning.id, stage, now=time.time())
    before = sum((await store.delivery_state_counts("half")).values())
    assert await store.unplanned_warning_ids() == ["half"]
    registry = CollectorRegistry()
    worker = PlanningWorker(store, lambda: POLICY, registry=registry, chunk_persons=1)
    await worker.start()
    try:
        await worker.wait_idle()
    finally:
        await worker.stop()
    assert await store.unplanned_warning_ids() == []
    total = sum(c.count for c in await store.plan_counts("half"))
    assert sum((await store.delivery_state_counts("half")).values()) == total
    # the counter counts what this run wrote
    assert registry.get_sample_value("tocsin_deliveries_planned_total") == total - before
    fresh = _warning("fresh", timedelta(hours=1))
    await store.create_warning(fresh, idempotency=None, now=time.time())
    assert (await PlanningWorker(store, lambda: POLICY).plan_now("fresh")).deliveries == total


async def test_a_warning_cancelled_while_planned_stops_and_is_not_retried(
    store: SqlStore,
) -> None:
    warning = _warning("stop-me", timedelta(hours=1))
    await store.create_warning(warning, idempotency=None, now=time.time())
    cancel = make_warning((COUNTY_A,), ident="cancel", msg_type=MsgType.CANCEL)

    async def cancel_it(result: PlanResult) -> None:
        if result.stage == 1:
            await store.create_warning(
                cancel, idempotency=None, cancels=["stop-me"], now=time.time()
            )

    worker = PlanningWorker(store, lambda: POLICY, chunk_persons=1)
    result = await worker.plan_now("stop-me", on_stage=cancel_it)
    assert (result.planned, result.stopped, result.stage) == (False, True, 1)
    assert await store.delivery_state_counts("stop-me") == {"cancelled": result.deliveries}
    assert await store.unplanned_warning_ids() == ["cancel"]

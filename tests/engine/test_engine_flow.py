"""End to end through the engine: plan, send through simulated adapters, acknowledge, roll up."""

from __future__ import annotations

import time

from small_directory import COUNTY_A, make_warning
from stores import StoreTarget

from dispatcher.planning_worker import PlanningWorker
from dispatcher.store.sql_store import SqlStore
from engine.harness import (
    POLICY,
    Running,
    all_channels,
    assert_counts_consistent,
    make_engine,
    wait_until,
)


async def test_red_warning_is_sent_acknowledged_and_completes(
    store: SqlStore, store_target: StoreTarget
) -> None:
    engine = make_engine(store, all_channels())
    planner = PlanningWorker(store, lambda: POLICY)
    await engine.start()
    await planner.start()
    run = Running(store, engine, planner, store_target)
    try:
        warning = make_warning((COUNTY_A,))
        await store.create_warning(warning, idempotency=None, now=time.time())
        planner.enqueue(warning.id)
        await planner.wait_idle()
        engine.wake()

        def completed() -> bool:
            return bool(
                run.rows(
                    "SELECT 1 FROM warnings WHERE id = ? AND completed_at IS NOT NULL",
                    (warning.id,),
                )
            )

        await wait_until(completed, what="warning complete")
        states = run.delivery_states(warning.id)
        assert states, "nothing was planned"
        assert set(states.values()) <= {"acknowledged", "skipped"}, states
        kinds = dict(
            run.rows(
                "SELECT kind, count(*) FROM reached r JOIN warnings w ON w.seq = r.warning_seq "
                "WHERE w.id = ? GROUP BY kind",
                (warning.id,),
            )
        )
        assert kinds["village"] == 2
        await assert_counts_consistent(store, store_target, warning.id)
    finally:
        await planner.stop()
        await engine.stop()

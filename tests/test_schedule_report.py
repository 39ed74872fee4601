"""A scheduled test broadcast from end to end: the run's Test warning goes through the real
engine to simulated loudspeakers (one of them dead), each speaker is told it is a test, and the
report after the run lists the silent speaker — in the log line and on the run (on SQLite and
on PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from engine.harness import FAST, POLICY, sim, specs
from small_directory import COUNTY_A, fill_small_directory
from stores import StoreTarget
from waiting import wait_until

from dispatcher.config import ApiRole, CapConfig
from dispatcher.domain import TERMINAL_DELIVERY_STATES
from dispatcher.engine.engine import Engine
from dispatcher.planning_worker import PlanningWorker
from dispatcher.schedules.runner import ScheduleRunner
from dispatcher.schedules.service import ScheduleService
from dispatcher.schedules.spec import ScheduleInput
from dispatcher.store.sql_store import SqlStore
from dispatcher.warning_service import Principal, WarningService

SENDER = "yjj@test.tocsin"
DUTY = Principal("desk-1", ApiRole.DUTY_OFFICER)
TERMINAL = {s.value for s in TERMINAL_DELIVERY_STATES}


Daemon = tuple[StoreTarget, SqlStore, Engine, ScheduleRunner]


def read(target: StoreTarget, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = target.connect()
    try:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


@pytest.fixture
async def daemon(store_target: StoreTarget) -> AsyncIterator[Daemon]:
    store = await store_target.open()
    fill_small_directory(store_target)
    # spk-a1b is dead: every command to it fails.
    engine = Engine(
        store,
        config=FAST,
        policy=lambda: POLICY,
        adapters=specs({"speakers": sim(["speaker"], fail_addresses=["spk-a1b"])}),
    )
    planner = PlanningWorker(store, lambda: POLICY, on_stage_committed=engine.wake)
    warnings = WarningService(store, CapConfig(sender=SENDER), on_created=planner.enqueue)
    service = ScheduleService(store, warnings, sender=SENDER)
    runner = ScheduleRunner(
        service,
        policy=lambda: POLICY,
        device_ack_timeout=FAST.device_ack_timeout,
        report_store=store,
    )
    await engine.start()
    await planner.start()
    await runner.start()
    yield store_target, store, engine, runner
    await runner.stop()
    await planner.stop()
    await engine.stop()
    await store.close()


async def test_the_report_after_a_run_lists_the_silent_speakers(
    daemon: Daemon,
) -> None:
    target, store, engine, runner = daemon
    schedule = ScheduleInput.model_validate(
        {
            "id": "weekly",
            "cron": "0 10 * * 1",
            "areas": [COUNTY_A],
            "rules": [{"audience": "devices", "device_kinds": ["loudspeaker"]}],
            "headline": "应急广播例行测试",
            "message": "这是例行测试",
            # At once: the planned report job runs while the test watches.
            "report_after": 0,
        }
    )
    await runner.service.create(schedule, principal=DUTY)
    outcome = await runner.service.run_now("weekly", principal=DUTY)
    run = outcome.run
    assert run is not None and run.warning_id is not None
    warning_id = run.warning_id

    def deliveries() -> list[tuple[str, str]]:
        return read(
            target,
            "SELECT d.target_id, d.state FROM deliveries d JOIN warnings w "
            "ON w.seq = d.warning_seq WHERE w.id = ? ORDER BY d.target_id",
            (warning_id,),
        )

    await wait_until(
        lambda: len(deliveries()) == 2 and all(s in TERMINAL for _, s in deliveries()),
        what="both speakers' deliveries to end",
    )
    assert deliveries() == [("spk-a1a", "acknowledged"), ("spk-a1b", "failed")]
    # What the speaker was told says first that this is a test.
    adapter = engine.hosts[0].adapter
    sent = [d for d in adapter.dispatched if d.target_id == "spk-a1a"]  # type: ignore[attr-defined]
    assert sent and sent[0].text.startswith("【测试，非真实预警】【蓝色预警】应急广播例行测试")

    # The report the runner planned at the run has been made by now (report_after 0).
    async def reported() -> bool:
        row = await store.get_schedule_run(run.id)
        return row is not None and row.reported_at is not None

    await wait_until(reported, what="the planned report")
    # Made again now that every delivery has ended: the maintenance list is final.
    with structlog.testing.capture_logs() as logs:
        report = await runner.report(run.id)
    assert report is not None
    assert [item.device_id for item in report.maintenance] == ["spk-a1b"]
    (line,) = [entry for entry in logs if entry["event"] == "test broadcast report"]
    assert line["schedule_id"] == "weekly" and line["warning_id"] == warning_id
    assert line["silent_devices"] == ["spk-a1b"]
    assert (line["devices_targeted"], line["devices_acknowledged"]) == (2, 1)
    stored = await store.get_schedule_run(run.id)
    assert stored is not None and stored.report is not None
    assert stored.report["silent_devices"] == ["spk-a1b"]
    assert stored.report["devices_silent"] == 1
    assert stored.report["devices_acknowledged"] == 1
    assert stored.report["complete"] is True

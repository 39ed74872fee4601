"""A busy run on a synthetic county: every channel failing, retrying, acknowledging and
reporting at random, ladders escalating to visits, one warning superseded mid-run. Throughout,
the kept counters equal a real count; at the end every delivery is terminal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from stores import StoreTarget, copy_directory

from dispatcher.config import SyntheticDirectoryConfig
from dispatcher.domain import Level, MsgType
from dispatcher.store.sql_store import SqlStore
from dispatcher.synthetic import CITY_CODE, load_synthetic
from engine.harness import TERMINAL, Tocsin, all_channels, config, counted, policy, sim

COUNTY = SyntheticDirectoryConfig(
    counties=1,
    towns_per_county=2,
    villages_per_town=3,
    grids_per_village=2,
    households_per_grid=12,
    persons_per_household=3.0,
    seed=7,
)

BUSY = {
    "failure_rate": 0.05,
    "retry_rate": 0.2,
    "ack_probability": 0.6,
    "ack_delay": 0.05,
    "delivered_report": True,
    "breaker_failures": 1000,
    "seed": 11,
}


@pytest.fixture
async def city(store_target: StoreTarget, tmp_path: Path) -> AsyncIterator[SqlStore]:
    opened = await store_target.open()
    if store_target.kind == "sqlite":
        load_synthetic(store_target.path, COUNTY, progress=False)
    else:
        load_synthetic(tmp_path / "synthetic.db", COUNTY, progress=False)
        copy_directory(tmp_path / "synthetic.db", store_target)
    yield opened
    await opened.close()


@pytest.fixture
async def busy(city: SqlStore, store_target: StoreTarget) -> AsyncIterator[Tocsin]:
    """The city's store with every channel failing, retrying and acknowledging at random."""
    instances = all_channels(**BUSY)
    # The directory's devices name these instances.
    instances["speakers"] = instances.pop("loudspeaker")
    instances["transmitters"] = instances.pop("transmitter")
    instances["modems"] = instances.pop("modem")
    instances["sms2"] = sim(["sms"], **{**BUSY, "seed": 12, "rate_per_second": 300})
    t = Tocsin(
        city,
        store_target,
        instances,
        policy=policy(ack_timeout="0.3s", device_ack_timeout="0.3s", max_attempts=3, visit=True),
        config=config(retry_base=0.02, retry_cap=0.1, visit_delay=0.2, batch_size=50),
    )
    yield t
    await t.close()


async def test_counters_stay_true_through_a_busy_run_and_everything_ends(busy: Tocsin) -> None:
    t = busy
    main = await t.warn((CITY_CODE,))
    other = await t.warn((CITY_CODE,), level=Level.ORANGE)
    planned = len(t.deliveries(main.id))
    assert planned > 300
    await t.start()
    try:
        update: str | None = None
        started = time.monotonic()
        while not (t.completed(main.id) and update and t.completed(other.id)):
            assert time.monotonic() - started < 20, "the warnings did not complete"
            for warning_id in (main.id, other.id):
                states, real, coverage, reached = counted(t.db, warning_id)
                assert states == real
                assert coverage == reached
            if update is None and time.monotonic() - started > 0.3:
                # Mid-run: the orange warning is superseded by an update (not planned here).
                update = (await t.stop_warning(other, MsgType.UPDATE)).id
            await asyncio.sleep(0.1)
    finally:
        await t.stop()

    for warning_id in (main.id, other.id):
        await t.assert_counts_consistent(warning_id)
        states = {d.state for d in t.deliveries(warning_id)}
        assert states <= TERMINAL, states
    main_states = {d.state for d in t.deliveries(main.id)}
    # The run really was busy: each way a delivery ends happened.
    assert {"acknowledged", "unacknowledged", "failed", "skipped"} <= main_states
    assert [d for d in t.deliveries(main.id) if d.audience == "visit"]
    assert {d.state for d in t.deliveries(other.id)} <= {
        "superseded",
        "acknowledged",
        "unacknowledged",
        "failed",
        "skipped",
    }
    assert "superseded" in {d.state for d in t.deliveries(other.id)}
    # Late reports (after stop) changed nothing either.
    await t.assert_counts_consistent(main.id)

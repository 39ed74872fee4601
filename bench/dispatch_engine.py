"""Benchmark: the engine's sustained dispatch rate and acknowledgement intake rate.

A red warning for the whole synthetic city (``--scale`` of Shangluo) is planned, then the real
engine sends it through instant simulated adapters (no latency, no rate limit) with every state
change persisted (claim → sending, outcome → sent, an event per outcome). Then an
acknowledgement for every sent delivery goes through the real intake (state, event, reached
person/household/grid member/village, coverage counts, skipping the person's held steps).

Each rate is printed beside a floor measured in the same run on a copy of the same planned
database: the bare SQL of the same row changes in batches of the same size, on one thread with
no engine, adapters or asyncio. Goals (issue 3): at least 10,000 deliveries/s and 10,000 acks/s.

    .venv/bin/python bench/dispatch_engine.py               # scale 0.1: ~200k deliveries
    .venv/bin/python bench/dispatch_engine.py --scale 1     # the whole city, ~2.1M
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_city import DATA, PeakRss, base_database, red_warning, scaled

from dispatcher.adapter import Report, ReportState
from dispatcher.adapter_config import build_adapter_specs
from dispatcher.config import AdapterInstanceConfig, EngineConfig, load_policy
from dispatcher.domain import Channel, WarningRecord
from dispatcher.engine.engine import Engine
from dispatcher.logging_setup import configure_logging
from dispatcher.planning_worker import PlanningWorker
from dispatcher.store.sql_store import SqlStore
from dispatcher.store.sqlite import SqliteStore, connect

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1000
OPEN = ("pending", "retry_wait", "sending")


def city_warning() -> WarningRecord:
    return red_warning(f"bench-dispatch-{time.time_ns()}")


async def plan(db: Path) -> str:
    store = await SqliteStore.open(db)
    try:
        return await plan_on(store)
    finally:
        await store.close()


async def plan_on(store: SqlStore) -> str:
    """Plan a red warning for the city through the planning worker; its id."""
    warning = city_warning()
    await store.create_warning(warning, idempotency=None, now=time.time())
    worker = PlanningWorker(store, lambda: load_policy(ROOT / "config" / "policy.toml"))
    await worker.start()
    await worker.wait_idle()
    await worker.stop()
    return warning.id


def open_counts(db: Path, warning_id: str) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT state, n FROM delivery_state_counts WHERE warning_seq = "
            "(SELECT seq FROM warnings WHERE id = ?)",
            (warning_id,),
        ).fetchall()
        return {s: int(n) for s, n in rows}
    finally:
        conn.close()


def instant_adapters() -> tuple[object, ...]:
    instances = {
        "devices": AdapterInstanceConfig(
            kind="simulated",
            channels=(Channel.SPEAKER, Channel.TRANSMITTER, Channel.MODEM),
            settings={"ack_probability": 0.0},
        ),
        "sms": AdapterInstanceConfig(
            kind="simulated", channels=(Channel.SMS,), settings={"ack_probability": 0.0}
        ),
        "voice": AdapterInstanceConfig(
            kind="simulated", channels=(Channel.VOICE,), settings={"ack_probability": 0.0}
        ),
    }
    specs, problems = build_adapter_specs(Path("bench.toml"), instances, ROOT)
    assert not problems, problems
    return specs


async def run_engine(db: Path, warning_id: str) -> tuple[float, int, float, int, int]:
    """Dispatch everything due, then acknowledge everything sent; (dispatch seconds, sent,
    ack seconds, acks, peak RSS)."""
    store = await SqliteStore.open(db)
    config = EngineConfig(batch_size=BATCH, lease=600, device_ack_timeout=3600, report_batch=BATCH)
    policy = load_policy(ROOT / "config" / "policy.toml")
    engine = Engine(
        store,
        config=config,
        policy=lambda: policy,
        adapters=instant_adapters(),  # type: ignore[arg-type]
        registry=CollectorRegistry(),
    )
    try:
        with PeakRss() as rss:
            started = time.perf_counter()
            await engine.start()
            while True:
                counts = await store.delivery_state_counts(warning_id)
                if not any(counts.get(s, 0) for s in OPEN):
                    break
                await asyncio.sleep(0.05)
            dispatch_seconds = time.perf_counter() - started
            sent = counts.get("sent", 0) + counts.get("delivered", 0)

            conn = sqlite3.connect(db)
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM deliveries WHERE state IN ('sent','delivered') "
                    "AND warning_seq = (SELECT seq FROM warnings WHERE id = ?)",
                    (warning_id,),
                )
            ]
            conn.close()
            started = time.perf_counter()
            for delivery_id in ids:
                engine.intake.report(
                    "sms", Report(ReportState.ACKNOWLEDGED, delivery_id=delivery_id)
                )
            await engine.intake.wait_idle()
            ack_seconds = time.perf_counter() - started
        return dispatch_seconds, sent, ack_seconds, len(ids), rss.peak
    finally:
        await engine.stop()
        await store.close()


def floor_dispatch(db: Path, warning_id: str) -> tuple[float, int]:
    """The same row changes as dispatch, bare: claim a batch (select by the due index, mark
    sending, bump counts), then record it (mark sent, one event each, bump counts)."""
    conn = connect(db)
    (seq,) = conn.execute("SELECT seq FROM warnings WHERE id = ?", (warning_id,)).fetchone()
    now = time.time()
    total = 0
    started = time.perf_counter()
    for channel in ("speaker", "transmitter", "modem", "sms", "voice"):
        while True:
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(
                "SELECT id, target_id, channel, area_code, attempts FROM deliveries "
                "WHERE channel = ? AND state IN ('pending','retry_wait') AND due_at <= ? "
                "ORDER BY priority, due_at LIMIT ?",
                (channel, now + 1, BATCH),
            ).fetchall()
            conn.executemany(
                "UPDATE deliveries SET state = 'sending', attempts = attempts + 1, due_at = ?, "
                "updated_at = ? WHERE id = ?",
                [(now + 600, now, r[0]) for r in rows],
            )
            conn.execute("UPDATE delivery_state_counts SET n = n + 0 WHERE warning_seq = ?", (seq,))
            conn.execute("COMMIT")
            if not rows:
                break
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "UPDATE deliveries SET state = 'sent', due_at = ?, updated_at = ? WHERE id = ?",
                [(now + 3600, now, r[0]) for r in rows],
            )
            conn.executemany(
                "INSERT INTO delivery_events (at, warning_id, delivery_id, state, attempt, "
                "adapter, reason, detail, target_id, channel, area_code) "
                "VALUES (?, ?, ?, 'sent', 1, 'sms', '', ?, ?, ?, ?)",
                [
                    (
                        now,
                        warning_id,
                        r[0],
                        json.dumps({"address": "+8613800000000"}),
                        r[1],
                        r[2],
                        r[3],
                    )
                    for r in rows
                ],
            )
            conn.execute("COMMIT")
            total += len(rows)
    seconds = time.perf_counter() - started
    conn.close()
    return seconds, total


def floor_acks(db: Path, warning_id: str) -> tuple[float, int]:
    """The same row changes as an acknowledgement of each sent delivery, bare, in batches."""
    conn = connect(db)
    (seq,) = conn.execute("SELECT seq FROM warnings WHERE id = ?", (warning_id,)).fetchone()
    rows = conn.execute(
        "SELECT d.id, d.target_id, d.channel, d.area_code, p.household_id FROM deliveries d "
        "LEFT JOIN persons p ON p.id = d.target_id WHERE d.warning_seq = ? AND d.state = 'sent'",
        (seq,),
    ).fetchall()
    now = time.time()
    started = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        chunk = rows[i : i + BATCH]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "UPDATE deliveries SET state = 'acknowledged', updated_at = ? WHERE id = ?",
            [(now, r[0]) for r in chunk],
        )
        conn.executemany(
            "INSERT INTO delivery_events (at, warning_id, delivery_id, state, attempt, adapter, "
            "reason, detail, target_id, channel, area_code) "
            "VALUES (?, ?, ?, 'acknowledged', 1, 'sms', '', '{}', ?, ?, ?)",
            [(now, warning_id, r[0], r[1], r[2], r[3]) for r in chunk],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO reached (warning_seq, kind, target_id, village_code, at, "
            "in_time, source, delivery_id) VALUES (?, 'person', ?, ?, ?, 1, 'sms', ?)",
            [(seq, r[1], r[3], now, r[0]) for r in chunk],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO reached (warning_seq, kind, target_id, village_code, at, "
            "in_time, source, delivery_id) VALUES (?, 'household', ?, ?, ?, 1, 'sms', ?)",
            [(seq, r[4], r[3], now, r[0]) for r in chunk if r[4]],
        )
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return seconds, len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1)
    args = parser.parse_args()
    configure_logging("warning")  # as the daemon would: debug lines cost time
    params = scaled(args.scale)
    base = base_database(params, args.scale)
    work = DATA / f"dispatch-{args.scale:g}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(base, work)
    print(f"planning a red warning for the city on {work.name} ...", flush=True)
    warning_id = asyncio.run(plan(work))
    planned = open_counts(work, warning_id)
    print(f"  planned: {dict(sorted(planned.items()))}")
    floor_db = DATA / f"dispatch-{args.scale:g}-floor.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{floor_db}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(work)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    shutil.copyfile(work, floor_db)

    dispatch_s, sent, ack_s, acks, peak = asyncio.run(run_engine(work, warning_id))
    floor_s, floor_n = floor_dispatch(floor_db, warning_id)
    floor_ack_s, floor_acks_n = floor_acks(floor_db, warning_id)
    rate = sent / dispatch_s
    floor_rate = floor_n / floor_s
    ack_rate = acks / ack_s
    floor_ack_rate = floor_acks_n / floor_ack_s
    print(
        f"dispatch: {sent:,} deliveries in {dispatch_s:.2f} s = {rate:,.0f}/s "
        f"(goal >= 10,000/s) {'OK' if rate >= 10_000 else 'MISSED'}"
    )
    print(
        f"  floor (bare SQL, same row changes): {floor_n:,} in {floor_s:.2f} s = "
        f"{floor_rate:,.0f}/s; engine / floor time ratio {floor_rate / rate:.2f}x"
    )
    print(
        f"acks: {acks:,} in {ack_s:.2f} s = {ack_rate:,.0f}/s (goal >= 10,000/s) "
        f"{'OK' if ack_rate >= 10_000 else 'MISSED'}"
    )
    print(
        f"  floor (bare SQL, state + event + reached): {floor_ack_rate:,.0f}/s; "
        f"ratio {floor_ack_rate / ack_rate:.2f}x"
    )
    print(f"peak RSS {peak / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

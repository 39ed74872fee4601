"""Benchmark: plan a red warning for the whole synthetic city (Shangluo scale, ~2.0M people).

Prints the planner's time and peak memory beside the floor: the bare SQLite INSERT … SELECT
that creates the same rows (same table, same indexes) from a flat copy of them, in the same run
on a copy of the same database. Goals (issue 2): within 2.5x of the floor, under 10 s, under
500 MB RSS.

    .venv/bin/python bench/plan_city.py            # Shangluo scale; builds bench/data/ once
    .venv/bin/python bench/plan_city.py --scale 0.1 --repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from dispatcher.config import SyntheticDirectoryConfig, load_policy
from dispatcher.domain import Level, MsgType, Status, WarningRecord
from dispatcher.planner import plan_statements
from dispatcher.store.sqlite import SqliteStore, connect
from dispatcher.synthetic import SHANGLUO, load_synthetic

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
CITY = "611000000000"
COLUMNS = (
    "warning_seq, audience, target_id, channel, area_code, priority, state, attempts, due_at, "
    "updated_at"
)


class PeakRss:
    """Samples this process's RSS every 10 ms on a thread while active."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(0.01)

    def __enter__(self) -> PeakRss:
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def scaled(scale: float) -> SyntheticDirectoryConfig:
    if scale == 1.0:
        return SHANGLUO
    return SHANGLUO.model_copy(
        update={"households_per_grid": max(1, round(SHANGLUO.households_per_grid * scale))}
    )


def base_database(params: SyntheticDirectoryConfig, scale: float) -> Path:
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"city-{scale:g}-seed{params.seed}.db"
    if not path.exists():
        print(f"building {path} (once) ...", flush=True)
        started = time.perf_counter()
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        conn = connect(tmp)
        from dispatcher.store.migrations import migrate_sqlite

        migrate_sqlite(conn)
        conn.close()
        load_synthetic(tmp, params, progress=sys.stderr.isatty())
        conn = connect(tmp)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("ANALYZE")
        conn.close()
        tmp.rename(path)
        print(f"  built in {time.perf_counter() - started:.1f} s", flush=True)
    return path


def fresh_copy(base: Path, name: str) -> Path:
    work = DATA / name
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(base, work)
    return work


def red_warning(warning_id: str) -> WarningRecord:
    now = datetime.now(UTC)
    return WarningRecord(
        id=warning_id,
        identifier=warning_id,
        sender="bench@tocsin",
        sent=now,
        status=Status.EXERCISE,
        msg_type=MsgType.ALERT,
        level=Level.RED,
        event="暴雨",
        headline="商洛市暴雨红色预警",
        description="",
        instruction="",
        area_codes=(CITY,),
        expires=now + timedelta(hours=6),
    )


async def run_planner(base: Path) -> tuple[float, int, int]:
    """Plan through the real store; return (seconds, deliveries, peak RSS bytes)."""
    work = fresh_copy(base, "plan-work.db")
    policy = load_policy(ROOT / "config" / "policy.toml")
    store = await SqliteStore.open(work)
    try:
        warning = red_warning("bench-plan")
        await store.create_warning(warning, idempotency=None, now=time.time())
        with PeakRss() as rss:
            started = time.perf_counter()
            now = time.time()
            result = await store.execute_plan(
                warning.id, plan_statements(warning, policy, now=now), now=now
            )
            seconds = time.perf_counter() - started
        assert result.planned
        return seconds, result.deliveries, rss.peak
    finally:
        await store.close()


def run_floor(base: Path) -> tuple[float, int]:
    """The same rows, copied by one bare INSERT … SELECT from a flat table into deliveries."""
    work = fresh_copy(base, "floor-work.db")
    policy = load_policy(ROOT / "config" / "policy.toml")
    conn = connect(work)
    try:
        warning = red_warning("bench-floor")

        async def create() -> None:
            store = await SqliteStore.open(work)
            await store.create_warning(warning, idempotency=None, now=time.time())
            await store.close()

        asyncio.run(create())
        # Untimed: materialise the planner's rows into a flat table without indexes.
        conn.execute("CREATE TABLE floor_src AS SELECT * FROM deliveries WHERE 0")
        for statement in plan_statements(warning, policy, now=time.time()):
            conn.execute(
                statement.sql.replace("INSERT INTO deliveries (", "INSERT INTO floor_src (", 1),
                statement.params,
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # Warm the source pages as the planner's directory pages are warm in its run.
        conn.execute("SELECT count(*), max(target_id) FROM floor_src").fetchone()
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        cursor = conn.execute(f"INSERT INTO deliveries ({COLUMNS}) SELECT {COLUMNS} FROM floor_src")
        rows = cursor.rowcount
        conn.execute("COMMIT")
        return time.perf_counter() - started, rows
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="fraction of the Shangluo household count (default 1.0)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    params = scaled(args.scale)
    base = base_database(params, args.scale)
    conn = connect(base)
    persons = conn.execute("SELECT count(*) FROM persons").fetchone()[0]
    villages = conn.execute("SELECT count(*) FROM areas WHERE level='village'").fetchone()[0]
    conn.close()
    print(f"directory: {persons:,} persons, {villages:,} villages ({base.name})")
    print(f"machine: {os.cpu_count()} cores, SQLite {__import__('sqlite3').sqlite_version}")

    plan_times: list[float] = []
    floor_times: list[float] = []
    peaks: list[int] = []
    deliveries = floor_rows = 0
    for i in range(args.repeat):
        floor_s, floor_rows = run_floor(base)
        plan_s, deliveries, peak = asyncio.run(run_planner(base))
        floor_times.append(floor_s)
        plan_times.append(plan_s)
        peaks.append(peak)
        print(
            f"  run {i + 1}: plan {plan_s:.2f} s, floor {floor_s:.2f} s, "
            f"ratio {plan_s / floor_s:.2f}x, peak RSS {peak / 2**20:.0f} MB",
            flush=True,
        )
    if floor_rows != deliveries:
        raise SystemExit(f"floor created {floor_rows} rows but the plan {deliveries}")

    plan_med = statistics.median(plan_times)
    floor_med = statistics.median(floor_times)
    peak_mb = max(peaks) / 2**20
    print()
    print(f"red warning, whole city: {deliveries:,} deliveries")
    print(
        f"  planner (median of {args.repeat}): {plan_med:.2f} s "
        f"({deliveries / plan_med:,.0f} rows/s)  goal < 10 s"
    )
    print(f"  floor, bare INSERT…SELECT:  {floor_med:.2f} s ({floor_rows / floor_med:,.0f} rows/s)")
    print(f"  ratio planner / floor:      {plan_med / floor_med:.2f}x  goal <= 2.5x")
    print(f"  peak RSS while planning:    {peak_mb:.0f} MB  goal < 500 MB")
    for name in ("plan-work.db", "floor-work.db"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{DATA / name}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()

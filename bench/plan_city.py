"""Benchmark: plan a red warning for the whole synthetic city (Shangluo scale, ~2.0M people).

Plans through the planning worker, stage by stage, as the daemon does, and prints: the time to
the first stage committed (the devices: what the engine can start sending), the longest single
stage (how long planning holds SQLite's one writer at a time), the number of stages, the total
time, and the wait of a concurrent writer that commits a small transaction every 20 ms meanwhile
(the engine recording outcomes). Beside them, the floor: the bare SQLite INSERT … SELECT that
creates the same rows (same table, same indexes) from a flat copy of them, in one transaction,
in the same run on a copy of the same database, and the peak memory.

    .venv/bin/python bench/plan_city.py            # Shangluo scale; builds bench/data/ once
    .venv/bin/python bench/plan_city.py --scale 0.1 --repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sqlite3
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from dispatcher.config import SyntheticDirectoryConfig, load_policy
from dispatcher.domain import Level, MsgType, Status, WarningRecord
from dispatcher.planner import plan_statements
from dispatcher.planning_worker import PlanningWorker
from dispatcher.store.base import PlanResult
from dispatcher.store.sql_store import SqlStore
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


class ExternalWriter:
    """Commits one small transaction every 20 ms on a connection of its own (another process
    writing to the same file, e.g. a directory import) and records how long each waited."""

    def __init__(self, path: Path | str, opener: Callable[[Any], Any] = connect) -> None:
        self._path = path
        self._opener = opener  # bench/plan_postgres.py: a PostgreSQL connection
        self.waits: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = self._opener(self._path)
        try:
            while not self._stop.wait(0.02):
                started = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO audit_log (at, principal, role, action) "
                    "VALUES ('', 'bench', 'external', 'write')"
                )
                conn.execute("COMMIT")
                self.waits.append(time.perf_counter() - started)
        finally:
            conn.close()

    def __enter__(self) -> ExternalWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def in_process_writer(store: SqlStore, waits: list[float]) -> None:
    """Writes through the store every 20 ms, as the engine records outcomes: its writes queue
    on the store's one writer thread behind the plan's stages."""
    while True:
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        await store.append_audit(
            principal="bench", role="engine", action="record", target="", detail={}
        )
        waits.append(time.perf_counter() - started)


@dataclass
class PlanRun:
    seconds: float
    deliveries: int
    peak: int
    first_stage: float
    stages: list[PlanResult] = field(default_factory=list)
    #: Waits of the writes through the store (in process) and on a connection of their own.
    waits: list[float] = field(default_factory=list)
    external_waits: list[float] = field(default_factory=list)

    @property
    def longest_stage(self) -> PlanResult:
        return max(self.stages, key=lambda r: r.seconds)


async def run_planner(base: Path) -> PlanRun:
    """Plan through the planning worker and the real store, stage by stage."""
    work = fresh_copy(base, "plan-work.db")
    store = await SqliteStore.open(work)
    try:
        return await plan_with_writers(store, ExternalWriter(work))
    finally:
        await store.close()


async def plan_with_writers(store: SqlStore, external: ExternalWriter) -> PlanRun:
    """Plan a red warning for the city through the planning worker on ``store`` while
    ``external`` (on a connection of its own) and a writer through the store write."""
    policy = load_policy(ROOT / "config" / "policy.toml")
    warning = red_warning("bench-plan")
    await store.create_warning(warning, idempotency=None, now=time.time())
    worker = PlanningWorker(store, lambda: policy)
    stages: list[PlanResult] = []
    first: list[float] = []

    async def on_stage(result: PlanResult) -> None:
        if not first:
            first.append(time.perf_counter() - started)
        stages.append(result)

    waits: list[float] = []
    with PeakRss() as rss, external:
        writer = asyncio.create_task(in_process_writer(store, waits))
        started = time.perf_counter()
        result = await worker.plan_now(warning.id, on_stage=on_stage)
        seconds = time.perf_counter() - started
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    assert result.planned
    return PlanRun(seconds, result.deliveries, rss.peak, first[0], stages, waits, external.waits)


def run_floor(base: Path) -> tuple[float, int]:
    """The same rows, copied by one bare INSERT … SELECT from a flat table into deliveries."""
    work = fresh_copy(base, "floor-work.db")
    warning = red_warning("bench-floor")

    async def create() -> None:
        store = await SqliteStore.open(work)
        await store.create_warning(warning, idempotency=None, now=time.time())
        await store.close()

    asyncio.run(create())
    conn = connect(work)
    try:
        return floor_insert(conn, warning, settle="PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def floor_insert(conn: Any, warning: WarningRecord, *, settle: str) -> tuple[float, int]:
    """On ``conn`` (SQLite, or bench/plan_postgres.py's PostgreSQL connection), with
    ``warning`` created: the floor's seconds and rows. ``settle`` runs after the untimed
    materialisation (a checkpoint, a vacuum)."""
    policy = load_policy(ROOT / "config" / "policy.toml")
    # Untimed: materialise the planner's rows into a flat table without indexes.
    conn.execute("CREATE TABLE floor_src AS SELECT * FROM deliveries WHERE false")
    for statement in plan_statements(warning, policy, now=time.time()):
        conn.execute(
            statement.sql.replace("INSERT INTO deliveries (", "INSERT INTO floor_src (", 1),
            statement.params,
        )
    conn.execute(settle)
    # Warm the source pages as the planner's directory pages are warm in its run.
    conn.execute("SELECT count(*), max(target_id) FROM floor_src").fetchone()
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    cursor = conn.execute(f"INSERT INTO deliveries ({COLUMNS}) SELECT {COLUMNS} FROM floor_src")
    rows = int(cursor.rowcount)
    conn.execute("COMMIT")
    return time.perf_counter() - started, rows


def repeat_runs(
    repeat: int,
    floor: Callable[[], tuple[float, int]],
    plan: Callable[[], PlanRun],
    writers: tuple[str, str] = ("in process", "own connection"),
) -> tuple[list[PlanRun], list[float], int]:
    """``repeat`` times the floor, then the plan, each printed; the runs, the floor times and
    the floor's rows (checked against the plan's)."""
    runs: list[PlanRun] = []
    floor_times: list[float] = []
    floor_rows = 0
    for i in range(repeat):
        floor_s, floor_rows = floor()
        run = plan()
        floor_times.append(floor_s)
        runs.append(run)
        longest = run.longest_stage
        print(
            f"  run {i + 1}: first stage {run.first_stage:.3f} s, longest stage "
            f"{longest.seconds:.3f} s (stage {longest.stage}, {longest.deliveries:,} rows), "
            f"{len(run.stages)} stages, plan {run.seconds:.2f} s, floor {floor_s:.2f} s, "
            f"ratio {run.seconds / floor_s:.2f}x, writes meanwhile waited at most "
            f"{max(run.waits, default=0) * 1000:.0f} ms ({writers[0]}), "
            f"{max(run.external_waits, default=0) * 1000:.0f} ms ({writers[1]}), "
            f"peak RSS {run.peak / 2**20:.0f} MB",
            flush=True,
        )
    if floor_rows != runs[0].deliveries:
        raise SystemExit(f"floor created {floor_rows} rows but the plan {runs[0].deliveries}")
    return runs, floor_times, floor_rows


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
    print(f"machine: {os.cpu_count()} cores, SQLite {sqlite3.sqlite_version}")

    runs, floor_times, floor_rows = repeat_runs(
        args.repeat, lambda: run_floor(base), lambda: asyncio.run(run_planner(base))
    )
    deliveries = runs[0].deliveries

    plan_med = statistics.median(r.seconds for r in runs)
    first_med = statistics.median(r.first_stage for r in runs)
    longest_med = statistics.median(r.longest_stage.seconds for r in runs)
    hold_med = statistics.median(sum(s.seconds for s in r.stages) for r in runs)
    floor_med = statistics.median(floor_times)
    peak_mb = max(r.peak for r in runs) / 2**20
    print()
    print(f"red warning, whole city: {deliveries:,} deliveries in {len(runs[0].stages)} stages")
    print(f"  first stage committed (median of {args.repeat}): {first_med:.3f} s  goal < 1 s")
    print(f"  longest single stage (writer hold): {longest_med:.3f} s  goal <= 0.5 s")
    print(
        f"  planner, start to last stage:  {plan_med:.2f} s ({deliveries / plan_med:,.0f} rows/s)"
        f", of which the writer held {hold_med:.2f} s"
    )
    print(f"  floor, bare INSERT…SELECT:  {floor_med:.2f} s ({floor_rows / floor_med:,.0f} rows/s)")
    print(f"  ratio planner / floor:      {plan_med / floor_med:.2f}x")
    for name, waits in (
        ("writes through the store meanwhile (the engine)", [w for r in runs for w in r.waits]),
        ("writes on their own connection", [w for r in runs for w in r.external_waits]),
    ):
        if waits:
            waits.sort()
            p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
            print(
                f"  {name}: {len(waits)}, wait median {statistics.median(waits) * 1000:.1f} ms,"
                f" p99 {p99 * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms"
            )
    print(f"  peak RSS while planning:    {peak_mb:.0f} MB  goal < 500 MB")
    for name in ("plan-work.db", "floor-work.db"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{DATA / name}{suffix}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()

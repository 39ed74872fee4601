"""Benchmark: read the coverage of a red warning for the whole synthetic city (Shangluo scale,
~2.0M people) with about half of everyone reached.

Plans the warning through the real planner on a copy of bench/plan_city.py's database (or, with
``--no-plan``, writes only its ``coverage_targets``, as the planner does), then records about
half of the villages, grid members, households and people as reached — in bulk SQL, as the
engine would have row by row: ``reached`` rows and their ``coverage_counts`` — and a few late
acknowledgements. Then times, through the store's async API as the HTTP API calls it:

- ``coverage()`` of the whole city at county, town and village depth (goal < 100 ms);
- the first page (100) of each unreached list, for the whole city and for one village.

Each figure is the median of ``--repeat`` reads (default 20). ``--write`` puts them into the
"Coverage" section of bench/RESULTS.md.

    .venv/bin/python bench/coverage_city.py --write
    .venv/bin/python bench/coverage_city.py --scale 0.1 --no-plan
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plan_city import DATA, ROOT, base_database, fresh_copy, red_warning, scaled

from dispatcher.config import load_policy
from dispatcher.planning_worker import PlanningWorker
from dispatcher.store.base import CoverageKind
from dispatcher.store.sqlite import SqliteStore, connect

GOAL_MS = 100.0
RESULTS = ROOT / "bench" / "RESULTS.md"
WORK = "coverage-work.db"

#: coverage_targets for every covered village, as the planner writes them.
FILL_TARGETS = """
INSERT INTO coverage_targets (warning_seq, village_code, grid_members, households, persons)
SELECT :seq, v.code,
  (SELECT count(DISTINCT gm.person_id) FROM grids g JOIN grid_members gm ON gm.grid_id = g.id
    WHERE g.village_code = v.code),
  (SELECT count(*) FROM grids g JOIN households h ON h.grid_id = g.id
    WHERE g.village_code = v.code),
  (SELECT count(*) FROM persons p WHERE p.village_code = v.code)
FROM (SELECT DISTINCT c.descendant AS code FROM area_closure c
      JOIN areas a ON a.code = c.descendant AND a.level = 'village'
      WHERE c.ancestor IN (SELECT area_code FROM warning_areas WHERE warning_id = :id)) v
WHERE 1 ON CONFLICT (warning_seq, village_code) DO NOTHING
"""

#: About half of each kind reached in time (what the engine writes per acknowledgement), and
#: one person in a hundred of the others late.
SIMULATE = [
    # People: every other person by rowid.
    """INSERT OR IGNORE INTO reached (warning_seq, kind, target_id, village_code, at, in_time,
       source, delivery_id)
       SELECT :seq, 'person', p.id, p.village_code, :at, 1, 'bench', NULL
       FROM coverage_targets ct JOIN persons p ON p.village_code = ct.village_code
       WHERE ct.warning_seq = :seq AND p.rowid % 2 = 0""",
    # Households: a member acknowledged (most of them, then, as households have ~3 people)…
    # kept to about half by taking every other household of those.
    """INSERT OR IGNORE INTO reached (warning_seq, kind, target_id, village_code, at, in_time,
       source, delivery_id)
       SELECT :seq, 'household', h.id, h.village_code, :at, 1, 'bench', NULL
       FROM coverage_targets ct JOIN grids g ON g.village_code = ct.village_code
       JOIN households h ON h.grid_id = g.id
       WHERE ct.warning_seq = :seq AND h.rowid % 2 = 0""",
    """INSERT OR IGNORE INTO reached (warning_seq, kind, target_id, village_code, at, in_time,
       source, delivery_id)
       SELECT DISTINCT :seq, 'grid_member', gm.person_id, g.village_code, :at, 1, 'bench', NULL
       FROM coverage_targets ct JOIN grids g ON g.village_code = ct.village_code
       JOIN grid_members gm ON gm.grid_id = g.id
       WHERE ct.warning_seq = :seq AND g.rowid % 2 = 0""",
    """INSERT OR IGNORE INTO reached (warning_seq, kind, target_id, village_code, at, in_time,
       source, delivery_id)
       SELECT :seq, 'village', ct.village_code, ct.village_code, :at, 1, 'bench', NULL
       FROM coverage_targets ct
       WHERE ct.warning_seq = :seq AND CAST(substr(ct.village_code, 10) AS INTEGER) % 2 = 0""",
    # Late: after expiry; recorded, not counted.
    """INSERT OR IGNORE INTO reached (warning_seq, kind, target_id, village_code, at, in_time,
       source, delivery_id)
       SELECT :seq, 'person', p.id, p.village_code, :late, 0, 'bench', NULL
       FROM coverage_targets ct JOIN persons p ON p.village_code = ct.village_code
       WHERE ct.warning_seq = :seq AND p.rowid % 200 = 1""",
    # The counts the engine keeps with each insert, in one statement here.
    """INSERT INTO coverage_counts (warning_seq, village_code, kind, n)
       SELECT warning_seq, village_code, kind, count(*) FROM reached
       WHERE warning_seq = :seq AND in_time = 1 GROUP BY village_code, kind
       ON CONFLICT (warning_seq, village_code, kind) DO UPDATE SET n = excluded.n""",
]


async def prepare(work: Path, *, plan: bool) -> tuple[str, str, float]:
    """Plan (or only write the coverage targets of) a city-wide red warning; return its id,
    how its targets were made and the planning time."""
    store = await SqliteStore.open(work)
    try:
        warning = red_warning("bench-coverage")
        await store.create_warning(warning, idempotency=None, now=time.time())
        if plan:
            policy = load_policy(ROOT / "config" / "policy.toml")
            worker = PlanningWorker(store, lambda: policy)
            started = time.perf_counter()
            try:
                result = await worker.plan_now(warning.id)
            except Exception as exc:  # the planner may be mid-change: fall back, and say so
                print(f"  planning failed ({exc!r}); writing coverage_targets directly")
            else:
                seconds = time.perf_counter() - started
                if result.planned:
                    return warning.id, "planned by the planner", seconds
                print("  the planner did not finish the plan; writing coverage_targets directly")
        return warning.id, "coverage_targets written directly (--no-plan)", 0.0
    finally:
        await store.close()


def simulate(work: Path, warning_id: str) -> dict[str, int]:
    conn = connect(work)
    try:
        (seq,) = conn.execute("SELECT seq FROM warnings WHERE id = ?", (warning_id,)).fetchone()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(FILL_TARGETS, {"seq": seq, "id": warning_id})
        now = time.time()
        for sql in SIMULATE:
            conn.execute(sql, {"seq": seq, "at": now, "late": now + 86_400})
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        counts = dict(
            conn.execute(
                "SELECT kind || CASE in_time WHEN 1 THEN '' ELSE ' (late)' END, count(*) "
                "FROM reached WHERE warning_seq = ? GROUP BY kind, in_time",
                (seq,),
            ).fetchall()
        )
        counts["villages covered"] = conn.execute(
            "SELECT count(*) FROM coverage_targets WHERE warning_seq = ?", (seq,)
        ).fetchone()[0]
        return {str(k): int(v) for k, v in counts.items()}
    finally:
        conn.close()


async def median_ms(read: Callable[[], Awaitable[Any]], repeat: int) -> float:
    await read()  # warm the page cache once, as a polling dashboard's reads are
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await read()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def measure(
    work: Path, warning_id: str, repeat: int
) -> tuple[list[tuple[str, float, str]], list[tuple[str, int, int, int]]]:
    """The timings (read, median ms, note) and the coverage read (kind, reached, total,
    late)."""
    store = await SqliteStore.open(work)
    rows: list[tuple[str, float, str]] = []
    try:
        for depth in ("county", "town", "village"):
            ms = await median_ms(lambda d=depth: store.coverage(warning_id, depth=d), repeat)  # type: ignore[misc]
            cov = await store.coverage(warning_id, depth=depth)
            assert cov is not None
            rows.append((f"coverage(), whole city, depth {depth}", ms, f"{len(cov.areas):,} areas"))
        cov = await store.coverage(warning_id, depth="village")
        assert cov is not None
        village = cov.areas[len(cov.areas) // 2].area.code
        county = village[:6] + "000000"
        ms = await median_ms(
            lambda: store.coverage(warning_id, depth="village", under=county), repeat
        )
        rows.append(("coverage(), one county, depth village", ms, f"under {county}"))
        for kind in CoverageKind:
            for area, label in ((None, "whole city"), (village, "one village")):
                page = await store.unreached(warning_id, kind, area=area, limit=100)
                assert page is not None
                ms = await median_ms(
                    lambda k=kind, a=area: store.unreached(warning_id, k, area=a, limit=100),  # type: ignore[misc]
                    repeat,
                )
                rows.append(
                    (
                        f"unreached {kind.value}s, first page of 100, {label}",
                        ms,
                        f"{len(page.items)} items",
                    )
                )
        measured = [
            (kind.value, t.reached, t.total, cov.late.get(kind, 0))
            for kind, t in cov.totals.by_kind().items()
        ]
        for kind_name, reached, total, late in measured:
            print(f"  {kind_name}: {reached:,} of {total:,} reached in time, {late:,} late")
    finally:
        await store.close()
    return rows, measured


def write_results(section: str) -> None:
    text = RESULTS.read_text(encoding="utf-8")
    start = text.find("\n## Coverage")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        rest = text[end:] if end != -1 else "\n"
        text = text[:start] + "\n" + section.rstrip("\n") + "\n" + rest
    RESULTS.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--no-plan", action="store_true", help="write only coverage_targets, do not plan"
    )
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep bench/data/coverage-work.db")
    args = parser.parse_args()

    base = base_database(scaled(args.scale), args.scale)
    work = fresh_copy(base, WORK)
    conn = sqlite3.connect(work)
    persons = conn.execute("SELECT count(*) FROM persons").fetchone()[0]
    conn.close()
    print(f"directory: {persons:,} persons ({base.name})")
    print(f"machine: {os.cpu_count()} cores, SQLite {sqlite3.sqlite_version}")
    try:
        warning_id, how, plan_s = asyncio.run(prepare(work, plan=not args.no_plan))
        print(f"  warning {warning_id}: {how}" + (f" in {plan_s:.1f} s" if plan_s else ""))
        started = time.perf_counter()
        simulate(work, warning_id)
        print(f"  simulated acknowledgements in {time.perf_counter() - started:.1f} s")
        load_before = os.getloadavg()[0]
        rows, measured = asyncio.run(measure(work, warning_id, args.repeat))
        load = max(load_before, os.getloadavg()[0])
    finally:
        if not args.keep:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{DATA / WORK}{suffix}").unlink(missing_ok=True)

    print()
    width = max(len(name) for name, _, _ in rows)
    for name, ms, note in rows:
        goal = f"  goal < {GOAL_MS:.0f} ms" if name.startswith("coverage()") else ""
        print(f"  {name:<{width}}  {ms:8.2f} ms  ({note}){goal}")
    worst = max(ms for name, ms, _ in rows if name.startswith("coverage()"))
    verdict = "met" if worst < GOAL_MS else "NOT met"
    print(f"\n  slowest coverage read {worst:.2f} ms: goal < {GOAL_MS:.0f} ms {verdict}")
    print(f"  load average (1 min) while reading: up to {load:.2f} on {os.cpu_count()} cores")

    if args.write:
        today = datetime.now(UTC).date().isoformat()
        table = "\n".join(f"| {name} | {ms:.2f} ms | {note} |" for name, ms, note in rows)
        reached_table = "\n".join(
            f"| {kind} | {total:,} | {reached:,} | {late:,} |"
            for kind, reached, total, late in measured
        )
        section = f"""## Coverage of a city-wide warning

```
.venv/bin/python bench/coverage_city.py --write
```

A red warning for the whole city ({persons:,} persons), {how}; then about half of
everyone recorded as reached in bulk SQL — `reached` rows and their `coverage_counts`, as the
engine keeps them — and one person in 200 of the rest as acknowledging after expiry:

| measure | total | reached in time | late |
| --- | --- | --- | --- |
{reached_table}

Each read is the median of {args.repeat} through `SqliteStore` (its reader thread, as the API
calls it), {today}, on the machine above (SQLite {sqlite3.sqlite_version}; load average up
to {load:.2f} on its {os.cpu_count()} cores from other jobs while reading). Goal: a coverage read
under {GOAL_MS:.0f} ms — **{verdict}** (slowest {worst:.2f} ms).

| read | median | |
| --- | --- | --- |
{table}

Coverage sums `coverage_targets` and `coverage_counts` (one row per village, and per village
and kind) rolled up through `area_closure`: its cost follows the number of villages (~1,500),
not of people reached. Late acknowledgements are counted through the partial index
`reached_late` (migration 4), which holds only them. The unreached lists walk the covered
villages in code order and stop when the page is full; their cost grows with how many
reached people a page has to step over (here every other one).
"""
        write_results(section)
        print(f"\nwrote the Coverage section of {RESULTS}")


if __name__ == "__main__":
    main()

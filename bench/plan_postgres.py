"""Benchmark: plan the city-wide red warning (Shangluo scale, ~2.0M people) on PostgreSQL.

The PostgreSQL twin of ``bench/plan_city.py``. Plans through the planning worker on a
``PostgresStore`` as a daemon node does, stage by stage, and prints the time to the first stage
committed, the longest single stage (how long the plan holds the writer lock every node's write
transactions take), the whole plan, and the waits of two small writers meanwhile: one through
the store (the node's engine recording outcomes, queued on the node's writer thread) and one on
a connection of its own taking the writer lock (another node). Beside it, in the same run on the
same server, the floor: one bare ``INSERT … SELECT`` of the same rows from a flat copy of them
into the same ``deliveries`` table with the same indexes, in one transaction; and the ratio.

Set-up (not product code, not timed): the SQLite city file is built once in bench/data/ (as
plan_city.py does), and its directory tables are copied with ``COPY`` into a fresh database on
the server (``CREATE DATABASE … LC_COLLATE 'C'``, migrated by Tocsin's PostgreSQL migrations),
which is then vacuumed and analysed: 25–36 s for the city, where ``dispatcher.synthetic``'s own
loader into PostgreSQL (upserts, foreign keys checked) takes about five times as long. Each run
plans, and each floor inserts, into a file copy of it (``CREATE DATABASE … TEMPLATE``). Every
database this makes is dropped at the end (a killed run's, by the next run).

    .venv/bin/python bench/plan_postgres.py                       # the city, 3 runs
    .venv/bin/python bench/plan_postgres.py --scale 0.1 --repeat 1
    .venv/bin/python bench/plan_postgres.py --dsn "host=… user=…"  # admin DSN of the server
    .venv/bin/python bench/plan_postgres.py --setting jit=off      # a setting for its databases
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_city import (
    ExternalWriter,
    PlanRun,
    base_database,
    floor_insert,
    plan_with_writers,
    red_warning,
    repeat_runs,
    scaled,
)

from dispatcher.logging_setup import configure_logging
from dispatcher.store.migrations import migrate_postgres
from dispatcher.store.pg_connection import PgConnection
from dispatcher.store.postgres import PostgresStore

DEFAULT_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
_PREFIX = "tocsin_bench_"


class PgServer:
    """The server given by an admin DSN, and the bench's own databases on it (a name of
    ``tocsin_bench_<pid>_<n>``; the leftovers of a killed run are dropped by the next)."""

    def __init__(self, admin_dsn: str, settings: Sequence[str] = ()) -> None:
        self.admin_dsn = admin_dsn
        self.settings = [s.split("=", 1) for s in settings]
        self._serial = itertools.count(1)
        self.made: list[str] = []
        with self.admin() as conn:
            row = conn.execute("SHOW server_version").fetchone()
            self.version = str(row[0]) if row else "?"
            for (name,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{_PREFIX}%",)
            ).fetchall():
                pid = int(str(name)[len(_PREFIX) :].split("_")[0])
                if not psutil.pid_exists(pid):
                    conn.execute(
                        sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
                    )

    def admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def dsn(self, name: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=name)

    def create(self, label: str, *, template: str | None = None) -> str:
        """A new database: empty with the C collation (docs/deployment.md), or a file copy of
        ``template`` (which must have no connections)."""
        name = f"{_PREFIX}{os.getpid()}_{next(self._serial)}_{label}"
        if template is None:
            statement = sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(sql.Identifier(name))
        else:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        with self.admin() as conn:
            conn.execute(statement)
            self.made.append(name)
            for setting, value in self.settings:  # not copied from a template
                conn.execute(
                    sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                        sql.Identifier(name), sql.Identifier(setting), sql.Literal(value)
                    )
                )
        return name

    def drop(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if name in self.made:
            self.made.remove(name)

    def drop_all(self) -> None:
        for name in list(self.made):
            self.drop(name)

    def describe(self) -> str:
        """The server and the settings that matter most here."""
        names = ("shared_buffers", "max_wal_size", "synchronous_commit", "jit")
        with self.admin() as conn:
            values = [f"{n} {conn.execute(f'SHOW {n}').fetchone()[0]}" for n in names]  # type: ignore[index]
        extra = "".join(f", {k} = {v} (bench databases)" for k, v in self.settings)
        return f"PostgreSQL {self.version} at {self.where()} ({', '.join(values)}{extra})"

    def where(self) -> str:
        info = conninfo_to_dict(self.admin_dsn)
        return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"


def directory_tables(lite: sqlite3.Connection) -> list[str]:
    """The tables of a city file that hold rows: its directory (nothing else is written)."""
    names = [
        str(r[0])
        for r in lite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return [n for n in names if lite.execute(f"SELECT 1 FROM {n} LIMIT 1").fetchone()]


def load_directory(server: PgServer, base: Path) -> tuple[str, float]:
    """A new database holding ``base``'s directory (migrated, copied, vacuumed and analysed);
    its name and the seconds it took."""
    started = time.perf_counter()
    name = server.create("city")
    pg = PgConnection.connect(server.dsn(name), application_name="bench load")
    lite = sqlite3.connect(base)
    try:
        migrate_postgres(pg)
        raw = pg.raw
        with raw.transaction():
            # The synthetic directory is consistent (plan_city.py builds it with the loader
            # the tests check): no per-row foreign-key triggers for the copy.
            raw.execute("SET LOCAL session_replication_role = replica")
            for table in directory_tables(lite):
                columns = [r[1] for r in lite.execute(f"PRAGMA table_info({table})")]
                names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
                copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), names)
                with raw.cursor().copy(copy_sql) as copy:
                    for row in lite.execute(f"SELECT {', '.join(columns)} FROM {table}"):
                        copy.write_row(row)
        raw.execute("VACUUM (ANALYZE)")
    finally:
        lite.close()
        pg.close()
    return name, time.perf_counter() - started


def other_node(dsn: str) -> PgConnection:
    """The connection of plan_city's ExternalWriter: its ``BEGIN IMMEDIATE`` takes the writer
    lock, as another node's write transactions do."""
    return PgConnection.connect(dsn, application_name="bench other node")


async def run_planner(dsn: str) -> PlanRun:
    """Plan through the planning worker on a PostgresStore, stage by stage."""
    store = await PostgresStore.open(dsn, node="bench-plan")
    try:
        return await plan_with_writers(store, ExternalWriter(dsn, other_node))
    finally:
        await store.close()


def run_floor(dsn: str) -> tuple[float, int]:
    """The same rows, copied by one bare INSERT … SELECT from a flat table into deliveries."""
    warning = red_warning("bench-floor")

    async def create() -> None:
        store = await PostgresStore.open(dsn, node="bench-floor")
        await store.create_warning(warning, idempotency=None, now=time.time())
        await store.close()

    asyncio.run(create())
    conn = PgConnection.connect(dsn, application_name="bench floor")
    try:
        # As the directory was: vacuumed (hint bits set, visibility map) and analysed.
        return floor_insert(conn, warning, settle="VACUUM (ANALYZE) floor_src")
    finally:
        conn.close()


def wait_summary(name: str, waits: list[float]) -> str:
    waits = sorted(waits)
    if not waits:
        return f"  {name}: none"
    p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
    return (
        f"  {name}: {len(waits)}, wait median {statistics.median(waits) * 1000:.1f} ms,"
        f" p99 {p99 * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms"
    )


@contextlib.contextmanager
def bench_server(admin_dsn: str, settings: Sequence[str] = ()) -> Iterator[PgServer]:
    try:
        server = PgServer(admin_dsn, settings)
    except psycopg.OperationalError as exc:
        raise SystemExit(f"no PostgreSQL server at {admin_dsn!r}: {exc}") from exc
    try:
        yield server
    finally:
        server.drop_all()


def directory_line(server: PgServer, name: str) -> str:
    with psycopg.connect(server.dsn(name)) as conn:
        persons = conn.execute("SELECT count(*) FROM persons").fetchone()
        villages = conn.execute("SELECT count(*) FROM areas WHERE level = 'village'").fetchone()
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        (pretty,) = size.fetchone() or ("?",)
    return (
        f"directory: {persons[0] if persons else 0:,} persons, "
        f"{villages[0] if villages else 0:,} villages (database {pretty})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fraction of the Shangluo household count"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="admin DSN of the PostgreSQL server")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting for the bench's databases (ALTER DATABASE … SET), e.g. jit=off",
    )
    args = parser.parse_args()
    configure_logging("warning")  # as dispatch_engine.py: no per-stage debug lines

    base = base_database(scaled(args.scale), args.scale)
    with bench_server(args.dsn, args.setting) as server:
        print(f"machine: {os.cpu_count()} cores; {server.describe()}")
        city, load_s = load_directory(server, base)
        print(f"{directory_line(server, city)}, copied from {base.name} in {load_s:.1f} s")

        def floor() -> tuple[float, int]:
            name = server.create("floor", template=city)
            try:
                return run_floor(server.dsn(name))
            finally:
                server.drop(name)

        def plan() -> PlanRun:
            name = server.create("plan", template=city)
            try:
                return asyncio.run(run_planner(server.dsn(name)))
            finally:
                server.drop(name)

        runs, floor_times, floor_rows = repeat_runs(
            args.repeat, floor, plan, ("through the store", "another node")
        )

    deliveries = runs[0].deliveries
    plan_med = statistics.median(r.seconds for r in runs)
    floor_med = statistics.median(floor_times)
    hold_med = statistics.median(sum(s.seconds for s in r.stages) for r in runs)
    ratio = plan_med / floor_med
    print()
    print(
        f"red warning, whole city, PostgreSQL: {deliveries:,} deliveries in "
        f"{len(runs[0].stages)} stages (medians of {args.repeat})"
    )
    print(f"  first stage committed: {statistics.median(r.first_stage for r in runs):.3f} s")
    print(
        "  longest single stage (writer lock held): "
        f"{statistics.median(r.longest_stage.seconds for r in runs):.3f} s"
    )
    print(
        f"  planner, start to last stage: {plan_med:.2f} s ({deliveries / plan_med:,.0f} rows/s)"
        f", of which stages {hold_med:.2f} s"
    )
    print(
        f"  floor, bare INSERT…SELECT:    {floor_med:.2f} s ({floor_rows / floor_med:,.0f} rows/s)"
    )
    print(
        f"  ratio planner / floor:        {ratio:.2f}x  goal <= 2.5x "
        f"{'met' if ratio <= 2.5 else 'MISSED'}"
    )
    print(
        wait_summary(
            "writes through the store meanwhile (the engine)", [w for r in runs for w in r.waits]
        )
    )
    print(
        wait_summary(
            "writes of another node meanwhile (own connection, writer lock)",
            [w for r in runs for w in r.external_waits],
        )
    )
    print(f"  peak RSS while planning: {max(r.peak for r in runs) / 2**20:.0f} MB")


if __name__ == "__main__":
    main()

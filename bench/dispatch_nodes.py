"""Benchmark: dispatch throughput on PostgreSQL with one node and with two nodes on one database.

A red warning for the synthetic city (``--scale`` of Shangluo) is planned once on PostgreSQL;
then each run sends it, on a copy of that planned database, through the real engine with instant
``simulated`` adapters (no latency, no rate limit; every state change persisted), in one engine
process, or in two engine processes (each its own ``PostgresStore`` and node name, claiming with
``FOR UPDATE SKIP LOCKED``), until every delivery of the warning is terminal. For reference, the
same one-node run on SQLite (bench/dispatch_engine.py's set-up, without the acknowledgements).

Printed per run: deliveries/s (all nodes started together → the last open delivery gone), and
CPU per delivery: the node processes' own CPU (all their threads), and the PostgreSQL server's
CPU spent for them — the backends connected to the run's database (the nodes' writer and reader
connections, and any autovacuum worker seen on it; sampled every 0.25 s, so a worker that lives
less long is missed) — plus, separately, the server's shared background processes (checkpointer,
background writer, WAL writer, autovacuum launcher), which serve every database on the server
and so also other jobs on the machine. Also: every delivery sent exactly once (from the log).

    .venv/bin/python bench/dispatch_nodes.py                 # scale 0.1: 179k sends a run, 3 runs
    .venv/bin/python bench/dispatch_nodes.py --scale 0.5 --repeat 2
    .venv/bin/python bench/dispatch_nodes.py --dsn "host=… user=…"   # admin DSN of the server
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import queue
import shutil
import sqlite3
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch_engine import BATCH, OPEN, instant_adapters, plan_on
from dispatch_engine import plan as plan_sqlite
from plan_city import DATA, ROOT, base_database, scaled
from plan_postgres import DEFAULT_DSN, PgServer, bench_server, directory_line, load_directory

from dispatcher.config import EngineConfig, load_policy
from dispatcher.engine.engine import Engine
from dispatcher.logging_setup import configure_logging
from dispatcher.store.postgres import PostgresStore
from dispatcher.store.sql_store import SqlStore
from dispatcher.store.sqlite import SqliteStore

#: The server's processes that serve every database (their CPU is shared with other jobs).
AUXILIARIES = ("checkpointer", "background writer", "walwriter", "autovacuum launcher")


# -- one node, in a process of its own ------------------------------------------------------
@dataclass
class NodeResult:
    node: str
    finished: float  # time.monotonic() when it saw no open delivery (system-wide clock)
    cpu: float  # this process's user + system seconds from the start signal to then
    sent: int  # sends this node's adapters accepted


@dataclass
class NodeSpec:
    kind: str  # "postgresql" or "sqlite"
    target: str  # DSN or file
    node: str
    warning_id: str
    ready: Any  # queue: the node's name once connected
    go: Any  # event: start
    results: Any  # queue: its NodeResult
    release: Any  # event: the parent has read the server's CPU, close


def node_main(spec: NodeSpec) -> None:
    configure_logging("warning")  # as the daemon would: debug lines cost time
    asyncio.run(_node(spec))


async def _node(spec: NodeSpec) -> None:
    store: SqlStore
    if spec.kind == "postgresql":
        store = await PostgresStore.open(spec.target, node=spec.node)
    else:
        store = await SqliteStore.open(Path(spec.target), node=spec.node)
    registry = CollectorRegistry()
    policy = load_policy(ROOT / "config" / "policy.toml")
    engine = Engine(
        store,
        config=EngineConfig(batch_size=BATCH, lease=600, device_ack_timeout=3600),
        policy=lambda: policy,
        adapters=instant_adapters(),  # type: ignore[arg-type]
        registry=registry,
    )
    await store.delivery_state_counts(spec.warning_id)  # the reader connects before the start
    loop = asyncio.get_running_loop()
    spec.ready.put(spec.node)
    await loop.run_in_executor(None, spec.go.wait)
    me = psutil.Process()
    cpu0 = me.cpu_times()
    try:
        await engine.start()
        while True:
            counts = await store.delivery_state_counts(spec.warning_id)
            if not any(counts.get(s, 0) for s in OPEN):
                break
            await asyncio.sleep(0.05)
        finished = time.monotonic()
        cpu1 = me.cpu_times()
        sent = sum(
            int(s.value)
            for metric in registry.collect()
            if metric.name == "tocsin_send_outcomes"
            for s in metric.samples
            if s.name.endswith("_total") and s.labels.get("outcome") == "accepted"
        )
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        spec.results.put(NodeResult(spec.node, finished, cpu, sent))
        # Stay connected until the parent has read the server backends' CPU.
        await loop.run_in_executor(None, spec.release.wait, 120)
    finally:
        await engine.stop()
        await store.close()


# -- the server's CPU -----------------------------------------------------------------------
class ServerCpu:
    """CPU of the PostgreSQL backends connected to one database (sampled on a thread, so
    backends that come and go — autovacuum workers — are counted from when first seen), and
    of the server's shared background processes."""

    def __init__(self, server: PgServer, database: str) -> None:
        self._server = server
        self._database = database
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._aux = {p: _cpu(p) for p in _auxiliaries()}
        self._aux_end: dict[psutil.Process, float] = {}
        self._stop = threading.Event()
        self._conn = server.admin()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        rows = self._conn.execute(
            "SELECT pid, coalesce(nullif(application_name, ''), backend_type) "
            "FROM pg_stat_activity WHERE datname = %s",
            (self._database,),
        ).fetchall()
        for pid, name in rows:
            try:
                seconds = _cpu(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
            self._first.setdefault(pid, seconds)
            self._last[pid] = seconds
            self.names.setdefault(pid, str(name))

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._conn.close()
        self._aux_end = {p: _cpu(p) for p in self._aux if p.is_running()}

    @property
    def backends(self) -> float:
        return sum(self._last[p] - self._first[p] for p in self._first)

    def per_backend(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, first in self._first.items():
            name = self.names[pid]
            out[name] = out.get(name, 0.0) + self._last[pid] - first
        return out

    @property
    def auxiliaries(self) -> float:
        return sum(self._aux_end[p] - self._aux[p] for p in self._aux_end)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _auxiliaries() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if p.info["name"] == "postgres" and any(f": {a}" in cmdline for a in AUXILIARIES):
            found.append(p)
    return found


# -- a run ----------------------------------------------------------------------------------
@dataclass
class Run:
    label: str
    nodes: list[NodeResult]
    seconds: float
    delivered: int
    db_cpu: float = 0.0
    aux_cpu: float = 0.0
    backends: dict[str, float] | None = None
    sent_events: int = 0
    distinct_sent: int = 0

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds

    @property
    def node_cpu(self) -> float:
        return sum(n.cpu for n in self.nodes)

    def per_delivery_us(self, seconds: float) -> float:
        return seconds / self.delivered * 1e6


def run_nodes(
    kind: str,
    target: str,
    warning_id: str,
    nodes: int,
    *,
    server: PgServer | None = None,
    database: str = "",
) -> Run:
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go, release = ctx.Event(), ctx.Event()
    names = [f"node-{chr(ord('a') + i)}" for i in range(nodes)]
    procs = [
        ctx.Process(
            target=node_main,
            args=(NodeSpec(kind, target, name, warning_id, ready, go, results, release),),
            name=name,
        )
        for name in names
    ]
    for p in procs:
        p.start()
    try:
        for _ in names:
            ready.get(timeout=120)
        cpu = ServerCpu(server, database) if server is not None else None
        started = time.monotonic()
        go.set()
        done: list[NodeResult] = []
        while len(done) < nodes:
            try:
                done.append(results.get(timeout=5))
            except queue.Empty:
                dead = [p.name for p in procs if not p.is_alive()]
                if dead:
                    raise SystemExit(f"node process(es) {dead} ended without a result") from None
        seconds = max(n.finished for n in done) - started
        if cpu is not None:
            cpu.stop()
        release.set()
        for p in procs:
            p.join(60)
    finally:
        release.set()
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    label = f"{kind}, {nodes} node{'s' if nodes > 1 else ''}"
    run = Run(label, sorted(done, key=lambda n: n.node), seconds, sum(n.sent for n in done))
    if cpu is not None:
        run.db_cpu, run.aux_cpu, run.backends = cpu.backends, cpu.auxiliaries, cpu.per_backend()
    return run


SENT_ONCE = (
    "SELECT count(*), count(DISTINCT delivery_id) FROM delivery_events "
    "WHERE state = 'sent' AND warning_id = ?"
)


def count_sends(run: Run, conn: Any, warning_id: str) -> None:
    """Count the ``sent`` events and their deliveries (the log, whichever node sent it)."""
    sql = SENT_ONCE if isinstance(conn, sqlite3.Connection) else SENT_ONCE.replace("?", "%s")
    (run.sent_events, run.distinct_sent) = conn.execute(sql, (warning_id,)).fetchone()


async def plan_postgres(dsn: str) -> str:
    """Plan a red warning for the city through the planning worker, as a node does."""
    store = await PostgresStore.open(dsn, node="bench-plan")
    try:
        return await plan_on(store)
    finally:
        await store.close()


def report(run: Run) -> None:
    nodes = ", ".join(f"{n.node} {n.sent:,} sent, {n.cpu:.1f} s CPU" for n in run.nodes)
    line = (
        f"  {run.label}: {run.delivered:,} in {run.seconds:.2f} s = {run.rate:,.0f}/s; "
        f"CPU per delivery: nodes {run.per_delivery_us(run.node_cpu):.0f} µs"
    )
    if run.backends is not None:
        line += (
            f" + database backends {run.per_delivery_us(run.db_cpu):.0f} µs"
            f" = {run.per_delivery_us(run.node_cpu + run.db_cpu):.0f} µs"
            f" (+ server background {run.per_delivery_us(run.aux_cpu):.0f} µs, shared)"
        )
    print(line, flush=True)
    print(f"    {nodes}; sent events {run.sent_events:,} for {run.distinct_sent:,} deliveries")
    if run.backends:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(run.backends.items()))
        print(f"    database backends: {parts}")


def postgres_runs(args: argparse.Namespace, base: Path) -> list[Run]:
    runs: list[Run] = []
    with bench_server(args.dsn, args.setting) as server:
        print(f"machine: {psutil.cpu_count()} cores; {server.describe()}")
        planned, load_s = load_directory(server, base)
        print(f"{directory_line(server, planned)}, copied in {load_s:.1f} s", flush=True)
        started = time.perf_counter()
        warning_id = asyncio.run(plan_postgres(server.dsn(planned)))
        with psycopg.connect(server.dsn(planned), autocommit=True) as conn:
            conn.execute("ANALYZE")  # what autovacuum does soon after a plan
            rows = conn.execute(
                "SELECT state, sum(n) FROM delivery_state_counts GROUP BY state ORDER BY state"
            ).fetchall()
        counts = {str(state): int(n) for state, n in rows}
        print(f"planned in {time.perf_counter() - started:.1f} s: {counts}", flush=True)
        for _ in range(args.repeat):
            for nodes in (1, 2):
                name = server.create(f"run{nodes}", template=planned)
                run = run_nodes(
                    "postgresql", server.dsn(name), warning_id, nodes, server=server, database=name
                )
                with psycopg.connect(server.dsn(name)) as conn:
                    count_sends(run, conn, warning_id)
                server.drop(name)
                report(run)
                runs.append(run)
    return runs


def sqlite_runs(args: argparse.Namespace, base: Path) -> list[Run]:
    runs: list[Run] = []
    work = DATA / f"nodes-{args.scale:g}.db"
    planned = DATA / f"nodes-{args.scale:g}-planned.db"
    shutil.copyfile(base, planned)
    warning_id = asyncio.run(plan_sqlite(planned))
    lite = sqlite3.connect(planned)
    lite.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    lite.close()
    for _ in range(args.repeat):
        for suffix in ("-wal", "-shm"):
            Path(f"{work}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(planned, work)
        run = run_nodes("sqlite", str(work), warning_id, 1)
        lite = sqlite3.connect(work)
        count_sends(run, lite, warning_id)
        lite.close()
        report(run)
        runs.append(run)
    for path in (work, planned):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="admin DSN of the PostgreSQL server")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="NAME=VALUE", help="as plan_postgres.py"
    )
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite reference")
    args = parser.parse_args()
    configure_logging("warning")
    base = base_database(scaled(args.scale), args.scale)
    done = postgres_runs(args, base)
    if not args.no_sqlite:
        done += sqlite_runs(args, base)
    runs: dict[str, list[Run]] = {}
    for run in done:
        runs.setdefault(run.label, []).append(run)
    print()
    medians: dict[str, tuple[float, float, float]] = {}
    for label, group in runs.items():
        rate = statistics.median(r.rate for r in group)
        node_us = statistics.median(r.per_delivery_us(r.node_cpu) for r in group)
        db_us = statistics.median(r.per_delivery_us(r.db_cpu) for r in group)
        medians[label] = (rate, node_us, db_us)
        extra = f", database backends {db_us:.0f} µs" if label.startswith("postgresql") else ""
        print(
            f"{label}: {rate:,.0f} deliveries/s (median of {len(group)}); "
            f"CPU per delivery: nodes {node_us:.0f} µs{extra}"
        )
    one, two = medians.get("postgresql, 1 node"), medians.get("postgresql, 2 nodes")
    if one and two:
        print(
            f"2 nodes / 1 node: {two[0] / one[0]:.2f}x the deliveries/s on "
            f"{psutil.cpu_count()} cores; CPU per delivery (nodes + backends) "
            f"{one[1] + one[2]:.0f} µs with one node, {two[1] + two[2]:.0f} µs with two"
        )
    bad = [r.label for g in runs.values() for r in g if r.sent_events != r.distinct_sent]
    if bad:
        print(f"DUPLICATE sends in: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

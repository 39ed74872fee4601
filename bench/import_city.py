"""Benchmark: import a Shangluo-scale directory (about 2 million people) from CSV.

Generates the synthetic city's CSV files once (cached under bench/data/, git-ignored), imports
them through the real importer into a fresh SQLite file, then loads the same city with the direct
loader for comparison, and measures what phone validation costs per number.

While the importer runs, a probe process stands in for the daemon: like a duty officer posting
warnings, it writes one audit_log row every 50 ms on its own connection (the daemon's pragmas,
a 2 s busy timeout) and reports how long each write took and whether any failed. The importer
reports its write transactions per file: how many, the longest, and their total.

    .venv/bin/python bench/import_city.py            # the reference city (a few minutes)
    .venv/bin/python bench/import_city.py --small    # the demo city, for a quick check
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import phonenumbers

from dispatcher.config import SyntheticDirectoryConfig
from dispatcher.directory import import_directory
from dispatcher.directory.validate import PhoneParser, split_list
from dispatcher.store.sqlite import connect
from dispatcher.store.sqlite_directory import SqliteDirectory
from dispatcher.synthetic import SHANGLUO, load_synthetic, write_csv

DATA = Path(__file__).resolve().parent / "data"
PHONE_SAMPLE = 100_000
PROBE_INTERVAL = 0.05
PROBE_BUSY_TIMEOUT_MS = 2000


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def ensure_csv(config: SyntheticDirectoryConfig, folder: Path, *, regenerate: bool) -> None:
    stamp = folder / "config.json"
    wanted = config.model_dump_json()
    if not regenerate and stamp.is_file() and stamp.read_text() == wanted:
        print(f"using cached CSV files in {folder}")
        return
    print(f"generating CSV files in {folder} …", flush=True)
    started = time.perf_counter()
    counts = write_csv(config, folder)
    stamp.write_text(wanted)
    print(f"  {sum(counts.values()):,} rows in {time.perf_counter() - started:.1f} s")


def fresh(db: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return db


def phone_cost(persons_csv: Path) -> None:
    """µs per number: Tocsin's validator (a cold cache, as every synthetic number is unique)
    and phonenumbers' own parse + is_valid_number."""
    with persons_csv.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        numbers = [n for row in islice(reader, PHONE_SAMPLE) for n in split_list(row["phones"])]
    national = [n.removeprefix("+86") for n in numbers]

    def tocsin(raws: list[str]) -> None:
        parser = PhoneParser()
        for raw in raws:
            parser.number(raw)

    def reference(raws: list[str]) -> None:
        for raw in raws:
            phonenumbers.is_valid_number(phonenumbers.parse(raw, "CN"))

    # Warm up: phonenumbers loads its metadata and compiles its patterns on first use.
    tocsin(numbers[:1000])
    reference(numbers[:1000])
    print(f"phone validation, {len(numbers):,} numbers:")
    for label, run, raws in (
        ("PhoneParser, E.164 as in the CSV", tocsin, numbers),
        ("PhoneParser, national form (13812345678)", tocsin, national),
        ("phonenumbers.parse + is_valid_number", reference, national),
    ):
        started = time.perf_counter()
        run(raws)
        per = (time.perf_counter() - started) / len(raws) * 1e6
        print(f"  {label:<46} {per:6.1f} µs/number")


def probe_writer(db: Path) -> None:
    """Write an audit row every PROBE_INTERVAL until SIGTERM; print the waits as JSON."""
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    conn = connect(db)
    conn.execute(f"PRAGMA busy_timeout = {PROBE_BUSY_TIMEOUT_MS}")
    # (seconds in all, since the probe started, waiting for the lock, inserting, committing)
    writes: list[tuple[float, float, float, float, float]] = []
    failures: list[str] = []
    origin = time.perf_counter()
    print("ready", flush=True)
    while not stop:
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            locked = time.perf_counter()
            conn.execute(
                "INSERT INTO audit_log (at, principal, role, action) "
                "VALUES (datetime('now'), 'probe', 'operator', 'probe')"
            )
            inserted = time.perf_counter()
            conn.execute("COMMIT")
            done = time.perf_counter()
            writes.append(
                (
                    done - started,
                    started - origin,
                    locked - started,
                    inserted - locked,
                    done - inserted,
                )
            )
        except Exception as exc:  # a write that failed: what the importer must never cause
            failures.append(f"{time.perf_counter() - origin:.1f} s: {type(exc).__name__}: {exc}")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        time.sleep(PROBE_INTERVAL)
    conn.close()
    writes.sort(reverse=True)
    waits = [w[0] for w in reversed(writes)]
    print(
        json.dumps(
            {
                "writes": len(waits),
                "failures": failures,
                "max": waits[-1] if waits else 0.0,
                "p99": waits[int(len(waits) * 0.99)] if waits else 0.0,
                "median": waits[len(waits) // 2] if waits else 0.0,
                "slowest": writes[:5],
            }
        ),
        flush=True,
    )


def start_probe(db: Path) -> subprocess.Popen[str]:
    probe = subprocess.Popen(
        [sys.executable, __file__, "--probe-writer", str(db)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert probe.stdout is not None
    if probe.stdout.readline().strip() != "ready":
        raise SystemExit("the probe writer did not start")
    return probe


def stop_probe(probe: subprocess.Popen[str]) -> None:
    probe.send_signal(signal.SIGTERM)
    out, _ = probe.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    print(
        f"  concurrent writer (audit row every {PROBE_INTERVAL * 1000:.0f} ms, busy timeout "
        f"{PROBE_BUSY_TIMEOUT_MS / 1000:.0f} s): {result['writes']:,} writes, "
        f"{len(result['failures'])} failed; wait median {result['median'] * 1000:.1f} ms, "
        f"p99 {result['p99'] * 1000:.1f} ms, max {result['max'] * 1000:.1f} ms"
    )
    for total, at, lock, insert, commit in result["slowest"]:
        print(
            f"    {total * 1000:6.1f} ms at {at:6.1f} s: lock wait {lock * 1000:.1f} ms, "
            f"insert {insert * 1000:.1f} ms, commit {commit * 1000:.1f} ms"
        )
    for failure in result["failures"][:10]:
        print(f"    failed: {failure}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--probe-writer":
        probe_writer(Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the demo city instead of Shangluo")
    parser.add_argument("--regenerate", action="store_true", help="rewrite the cached CSV files")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-probe", action="store_true", help="no concurrent writer")
    args = parser.parse_args()

    config = SyntheticDirectoryConfig() if args.small else SHANGLUO
    name = "demo" if args.small else "shangluo"
    folder = DATA / name
    ensure_csv(config, folder, regenerate=args.regenerate)
    print(f"config: {json.loads(config.model_dump_json())}")

    print("importing through the importer …", flush=True)
    db = fresh(DATA / f"{name}-import.db")
    SqliteDirectory.open(db).close()  # the schema, for the probe's audit rows
    probe = None if args.no_probe else start_probe(db)
    try:
        report = import_directory(db, folder, progress=not args.no_progress)
    finally:
        if probe is not None:
            stop_probe(probe)
    if not report.ok:
        print(report)
        raise SystemExit(1)
    print(
        f"  {'file':<15} {'rows':>10} {'seconds':>10} {'rows/s':>9} {'applying':>10}   "
        "write transactions: count, longest, total"
    )
    for file in report.files:
        rate = file.rows_read / file.seconds if file.seconds else 0.0
        print(
            f"  {file.file:<15} {file.rows_read:>10,} {file.seconds:8.1f} s {rate:>9,.0f} "
            f"{file.apply_seconds:8.1f} s   {file.write_transactions:>5} "
            f"{file.longest_write * 1000:8.1f} ms {file.write_seconds:7.2f} s"
        )
    rows = sum(f.rows_read for f in report.files)
    rate = rows / report.seconds
    print(
        f"  {'total':<15} {rows:>10,} {report.seconds:8.1f} s {rate:>9,.0f} "
        f"{sum(f.apply_seconds for f in report.files):8.1f} s   "
        f"{sum(f.write_transactions for f in report.files):>5} "
        f"{report.longest_write * 1000:8.1f} ms "
        f"{sum(f.write_seconds for f in report.files):7.2f} s"
    )
    print(f"  peak RSS after import: {peak_rss_mib():.0f} MiB", flush=True)

    print("loading directly with load_synthetic …", flush=True)
    started = time.perf_counter()
    counts = load_synthetic(fresh(DATA / f"{name}-load.db"), config, progress=not args.no_progress)
    seconds = time.perf_counter() - started
    print(f"  {sum(counts.values()):,} rows {seconds:.1f} s  {counts}")
    print(f"  peak RSS after load_synthetic: {peak_rss_mib():.0f} MiB", flush=True)

    phone_cost(folder / "persons.csv")


if __name__ == "__main__":
    main()

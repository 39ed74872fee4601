"""Benchmark: import a Shangluo-scale directory (about 2 million people) from CSV.

Generates the synthetic city's CSV files once (cached under bench/data/, git-ignored), imports
them through the real importer into a fresh SQLite file, then loads the same city with the direct
loader for comparison, and measures what phone validation costs per number.

    .venv/bin/python bench/import_city.py            # the reference city (a few minutes)
    .venv/bin/python bench/import_city.py --small    # the demo city, for a quick check
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import time
from itertools import islice
from pathlib import Path

import phonenumbers

from dispatcher.config import SyntheticDirectoryConfig
from dispatcher.directory import import_directory
from dispatcher.directory.validate import PhoneParser, split_list
from dispatcher.synthetic import SHANGLUO, load_synthetic, write_csv

DATA = Path(__file__).resolve().parent / "data"
PHONE_SAMPLE = 100_000


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the demo city instead of Shangluo")
    parser.add_argument("--regenerate", action="store_true", help="rewrite the cached CSV files")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    config = SyntheticDirectoryConfig() if args.small else SHANGLUO
    name = "demo" if args.small else "shangluo"
    folder = DATA / name
    ensure_csv(config, folder, regenerate=args.regenerate)
    print(f"config: {json.loads(config.model_dump_json())}")

    print("importing through the importer …", flush=True)
    report = import_directory(
        fresh(DATA / f"{name}-import.db"), folder, progress=not args.no_progress
    )
    if not report.ok:
        print(report)
        raise SystemExit(1)
    for file in report.files:
        rate = file.rows_read / file.seconds if file.seconds else 0.0
        print(f"  {file.file:<15} {file.rows_read:>10,} rows {file.seconds:8.1f} s {rate:>9,.0f}/s")
    rows = sum(f.rows_read for f in report.files)
    rate = rows / report.seconds
    print(f"  {'total':<15} {rows:>10,} rows {report.seconds:8.1f} s {rate:>9,.0f}/s")
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

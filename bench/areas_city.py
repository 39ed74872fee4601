"""Benchmark: GET /v1/areas and /v1/areas/{code} with their counts on the Shangluo-scale city.

Runs the real API (aiohttp test server, SqliteStore) on a copy of the database plan_city.py
builds (bench/data/city-1-seed611000.db, which is never opened itself) and times each request
end to end: the first call, then the median of the following ones. Prints the query plans of
the count queries. Goal: an area list or a single area at county level well under a second.

    .venv/bin/python bench/areas_city.py
    .venv/bin/python bench/areas_city.py --shuffle   # persons stored in random order
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from dispatcher.api.app import ApiDeps, create_app
from dispatcher.config import ApiRole, ApiToken, CapConfig, hash_token
from dispatcher.store.sql_store import AREA_COUNT_QUERIES
from dispatcher.store.sqlite import SqliteStore
from dispatcher.warning_service import WarningService

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "bench" / "data" / "city-1-seed611000.db"
TOKEN = "bench-areas-token"  # noqa: S105 (a throwaway token for a loopback test server)
COUNTY = "611002000000"
REQUESTS = (
    ("top areas (the province: whole city)", "/v1/areas"),
    ("top areas, counts=false", "/v1/areas?counts=false"),
    ("children of the city (7 counties)", "/v1/areas?parent=611000000000"),
    ("children of a county (14 towns)", f"/v1/areas?parent={COUNTY}"),
    ("one county with its path", f"/v1/areas/{COUNTY}"),
    ("the city with its path", "/v1/areas/611000000000"),
    ("one village with its path", "/v1/areas/611002101201"),
    ("search q=山, every level", "/v1/areas?q=%E5%B1%B1"),
    ("villages of a county (210)", f"/v1/areas?parent={COUNTY}&level=village&limit=500"),
    ("every town (98: the whole city)", "/v1/areas?level=town&limit=500"),
)


def shuffle_persons(db: Path) -> None:
    """Rewrite persons in random rowid order, as an import from an unsorted register would."""
    conn = sqlite3.connect(db)
    (create,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'persons'").fetchone()
    indexes = [
        sql
        for (sql,) in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'persons' "
            "AND sql IS NOT NULL"
        )
    ]
    conn.executescript(
        "PRAGMA foreign_keys = OFF; BEGIN;"
        "CREATE TABLE persons_shuffled AS SELECT * FROM persons ORDER BY random();"
        "DROP TABLE persons;"
        f"{create};"
        "INSERT INTO persons SELECT * FROM persons_shuffled;"
        "DROP TABLE persons_shuffled;"
        + "".join(f"{sql};" for sql in indexes)
        + "COMMIT; VACUUM; ANALYZE;"
    )
    conn.close()


async def migrate(db: Path) -> None:
    """Open and close the store once: migrations (new indexes) are not part of the timings."""
    store = await SqliteStore.open(db)
    await store.close()


def print_plans(db: Path) -> None:
    conn = sqlite3.connect(db)
    towns = [r[0] for r in conn.execute("SELECT code FROM areas WHERE parent_code = ?", (COUNTY,))]
    marks = ",".join("?" * len(towns))
    for name, sql in AREA_COUNT_QUERIES.items():
        steps = [
            row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql.format(codes=marks)}", towns)
        ]
        print(f"  {name}: {'; '.join(steps)}")
    conn.close()


async def measure(db: Path, repeat: int) -> None:
    store = await SqliteStore.open(db)
    token = ApiToken("bench", ApiRole.DUTY_OFFICER, SecretStr(hash_token(TOKEN)))
    app = create_app(
        ApiDeps(
            store=store,
            warnings=WarningService(store, CapConfig(sender="bench@tocsin"), on_created=print),
            tokens=lambda: [token],
            max_body_bytes=1 << 20,
            ready=lambda: True,
            registry=CollectorRegistry(),
        )
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for label, path in REQUESTS:
            times: list[float] = []
            for _ in range(repeat + 1):
                started = time.perf_counter()
                async with client.get(path, headers=headers) as response:
                    body = await response.json()
                times.append(time.perf_counter() - started)
                assert response.status == 200, body
            items = len(body["areas"]) if "areas" in body else 1
            print(
                f"  {label:40} first {times[0] * 1000:6.0f} ms, "
                f"then median {statistics.median(times[1:]) * 1000:6.0f} ms  ({items} areas)"
            )
    finally:
        await client.close()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shuffle", action="store_true", help="persons in random rowid order")
    args = parser.parse_args()
    if not BASE.exists():
        raise SystemExit(f"{BASE} is missing: build it with bench/plan_city.py")
    with tempfile.TemporaryDirectory(prefix="tocsin-areas-") as tmp:
        db = Path(tmp) / "areas.db"
        shutil.copyfile(BASE, db)
        if args.shuffle:
            started = time.perf_counter()
            shuffle_persons(db)
            print(f"persons shuffled in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        asyncio.run(migrate(db))
        print(f"opened and migrated in {time.perf_counter() - started:.1f} s")
        print(f"SQLite {sqlite3.sqlite_version}; count query plans for a county's towns:")
        print_plans(db)
        asyncio.run(measure(db, args.repeat))


if __name__ == "__main__":
    main()

"""Benchmark: POST → first adapter send, idle and during a city-wide fan-out, through the real
daemon (`tocsin serve` in a subprocess, HTTP, SQLite, simulated instant adapters).

Measures, with the synthetic city (``--scale`` of Shangluo, default the whole 2-million city):

1. idle: a red warning for one village at a time → its first device send (goal p99 < 50 ms);
2. the city-wide red warning → its first loudspeaker command (goal < 1 s), when its plan is
   complete, and the sustained dispatch rate of its fan-out (goal ≥ 10,000/s);
3. during that fan-out: village warnings again (goal p99 < 250 ms).

The send time is when the simulated device acknowledged (it acknowledges inside send(), so its
report time is the send time); the POST time is taken by the client just before the request.

    .venv/bin/python bench/latency_city.py              # builds bench/data/ once (minutes)
    .venv/bin/python bench/latency_city.py --scale 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_city import CITY, DATA, base_database, scaled

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-duty-officer"  # noqa: S105 (a loopback bench daemon's token)

CONFIG = """
[server]
host = "127.0.0.1"
port = {port}

[store]
path = "{db}"

[policy]
file = "{policy}"

[engine]
device_ack_timeout = "1h"

[[api.tokens]]
name = "bench"
role = "duty_officer"
sha256 = "{sha}"

[adapters.devices]
kind = "simulated"
channels = ["speaker", "transmitter", "modem"]

[adapters.sms]
kind = "simulated"
channels = ["sms"]

[adapters.sms.settings]
ack_probability = 0.0

[adapters.voice]
kind = "simulated"
channels = ["voice"]

[adapters.voice.settings]
ack_probability = 0.0
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def query(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def first_device_send(db: Path, warning_id: str, channel: str | None = None) -> float | None:
    where = "" if channel is None else f" AND channel = '{channel}'"
    row = query(
        db,
        "SELECT min(at) FROM delivery_events WHERE warning_id = ? AND state = 'acknowledged'"
        + where,
        (warning_id,),
    )
    value = row[0][0] if row else None
    return float(str(value)) if value is not None else None


async def post_warning(
    session: aiohttp.ClientSession, url: str, area: str, headline: str
) -> tuple[str, float]:
    body = {
        "level": "red",
        "event": "暴雨",
        "headline": headline,
        "area_codes": [area],
        "status": "Exercise",
    }
    posted = time.time()
    async with session.post(
        f"{url}/v1/warnings", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as response:
        data = await response.json()
        if response.status != 202:
            raise RuntimeError(f"POST answered {response.status}: {data}")
    return str(data["id"]), posted


async def village_latencies(
    session: aiohttp.ClientSession, url: str, db: Path, villages: list[str], gap: float
) -> list[float]:
    posted: list[tuple[str, float]] = []
    for village in villages:
        posted.append(await post_warning(session, url, village, "村级测试"))
        await asyncio.sleep(gap)
    latencies = []
    deadline = time.monotonic() + 60
    for warning_id, at in posted:
        while True:
            sent = first_device_send(db, warning_id)
            if sent is not None:
                latencies.append(sent - at)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"warning {warning_id} was never sent")
            await asyncio.sleep(0.05)
    return latencies


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def describe(name: str, values: list[float], goal_ms: float) -> str:
    ms = [v * 1000 for v in values]
    worst = p99(ms)
    verdict = "OK" if worst < goal_ms else "MISSED"
    return (
        f"{name}: n={len(ms)} p50 {statistics.median(ms):.1f} ms, p99 {worst:.1f} ms, "
        f"max {max(ms):.1f} ms (goal p99 < {goal_ms:g} ms) {verdict}"
    )


async def run(db: Path, config: Path, port: int, samples: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
    proc = subprocess.Popen(  # noqa: ASYNC220 (once, before anything is measured)
        [sys.executable, "-m", "dispatcher.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    peak_rss = 0
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 120
            while True:
                try:
                    async with session.get(f"{url}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the daemon did not start")
                await asyncio.sleep(0.2)
            villages = [
                str(r[0])
                for r in query(
                    db,
                    "SELECT code FROM areas WHERE level = 'village' ORDER BY code LIMIT ?",
                    (samples * 2,),
                )
            ]
            idle = await village_latencies(session, url, db, villages[:samples], 0.3)
            print(describe("idle village warning → first send", idle, 50), flush=True)

            city_id, city_posted = await post_warning(session, url, CITY, "全市暴雨红色预警")
            first_speaker = None
            while first_speaker is None:
                first_speaker = first_device_send(db, city_id, "speaker")
                await asyncio.sleep(0.02)
            print(
                f"city-wide warning → first loudspeaker command: "
                f"{(first_speaker - city_posted) * 1000:.0f} ms (goal < 1000 ms) "
                f"{'OK' if first_speaker - city_posted < 1 else 'MISSED'}",
                flush=True,
            )
            planned_at = None
            while planned_at is None:
                rows = query(
                    db,
                    "SELECT at, detail FROM delivery_events WHERE warning_id = ? "
                    "AND state = 'planned'",
                    (city_id,),
                )
                planned_at = float(str(rows[0][0])) if rows else None
                peak_rss = max(peak_rss, psutil.Process(proc.pid).memory_info().rss)
                await asyncio.sleep(0.2)
            total = int(
                str(
                    query(
                        db,
                        "SELECT sum(n) FROM delivery_state_counts WHERE warning_seq = "
                        "(SELECT seq FROM warnings WHERE id = ?)",
                        (city_id,),
                    )[0][0]
                )
            )
            print(f"  planned {total:,} deliveries {planned_at - city_posted:.1f} s after the POST")

            during = await village_latencies(session, url, db, villages[samples:], 0.5)
            print(describe("village warning during the city fan-out → first send", during, 250))

            while True:
                open_rows = query(
                    db,
                    "SELECT coalesce(sum(n), 0) FROM delivery_state_counts WHERE warning_seq = "
                    "(SELECT seq FROM warnings WHERE id = ?) AND state IN "
                    "('pending','retry_wait','sending')",
                    (city_id,),
                )
                peak_rss = max(peak_rss, psutil.Process(proc.pid).memory_info().rss)
                if int(str(open_rows[0][0])) == 0:
                    break
                await asyncio.sleep(0.5)
            first, last, sent = query(
                db,
                "SELECT min(at), max(at), count(*) FROM delivery_events WHERE warning_id = ? "
                "AND state IN ('sent', 'delivered')",
                (city_id,),
            )[0]
            span = float(str(last)) - float(str(first))
            rate = int(str(sent)) / span if span > 0 else 0.0
            print(
                f"city fan-out: {int(str(sent)):,} sends in {span:.1f} s = {rate:,.0f}/s "
                f"(goal >= 10,000/s) {'OK' if rate >= 10_000 else 'MISSED'}; "
                f"daemon peak RSS {peak_rss / 2**20:.0f} MiB"
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    base = base_database(scaled(args.scale), args.scale)
    work = DATA / f"latency-{args.scale:g}.db"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(base, work)
    port = free_port()
    config = DATA / f"latency-{args.scale:g}.toml"
    import hashlib

    config.write_text(
        CONFIG.format(
            port=port,
            db=work,
            policy=ROOT / "config" / "policy.toml",
            sha=hashlib.sha256(TOKEN.encode()).hexdigest(),
        ),
        encoding="utf-8",
    )
    asyncio.run(run(work, config, port, args.samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())

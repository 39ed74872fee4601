"""Benchmark: 5,000 village loudspeakers in 1,500 villages over a real Mosquitto.

Measures, in one run on this machine:

1. the **floor**: the same traffic done by Mosquitto's C clients — ``mosquitto_pub`` publishes
   one alert that every speaker receives (on the city topic all of them subscribe to), the
   simulated fleet acknowledges (received, playing, played), ``mosquitto_sub`` takes the acks —
   timed from the publish to 99 % of the speakers' ``played``;
2. **Tocsin**: the real daemon (``tocsin serve`` in a subprocess, SQLite, the ``mqtt_speaker``
   adapter) — from the POST of a city-wide warning to 99 % of the speaker deliveries
   ``acknowledged`` *in the store* (goal: within 5× of the floor and under 3 s), and the
   acknowledgement intake rate: every ack message the daemon recorded (received, playing,
   played) per second, between the first and the last recorded (goal ≥ 5,000/s);
3. **Apprise**'s MQTT notifications sending the same warning to the same speakers' device
   topics (when ``apprise`` is installed: ``pip install -e '.[bench]'``), in speakers per
   second, beside Tocsin's speakers played per second (goal: Tocsin ≥ 100× faster).

The fleet is ``tocsin simulate speakers`` in its own process (8 shared connections), as an
installer runs it. Figures are medians of ``--repeat`` runs.

    .venv/bin/python bench/speakers_mqtt.py            # builds bench/data/speakers-*.db once
    .venv/bin/python bench/speakers_mqtt.py --repeat 5 --apprise-topics 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import aiomqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from latency_city import query  # noqa: E402
from mqtt_broker import Broker, free_port, mosquitto_tool, running_mosquitto  # noqa: E402

from dispatcher.config import SyntheticDirectoryConfig, hash_token  # noqa: E402
from dispatcher.store.migrations import migrate_sqlite  # noqa: E402
from dispatcher.store.sqlite import connect  # noqa: E402
from dispatcher.synthetic import CITY_CODE, load_synthetic  # noqa: E402

DATA = ROOT / "bench" / "data"
SPEAKERS = 5000
#: 6 counties × 10 towns × 25 villages.
VILLAGES = SyntheticDirectoryConfig(
    counties=6,
    towns_per_county=10,
    villages_per_town=25,
    grids_per_village=1,
    households_per_grid=1,
    persons_per_household=1.0,
    seed=5000,
)
TOKEN = "bench-duty-officer"  # noqa: S105 (a loopback bench daemon's token)
ROOT_TOPIC = "tocsin/v1"

POLICY = "".join(
    f"""
[levels.{level}]
ack_timeout = "10m"
device_ack_timeout = "60s"
max_attempts = 3

[[levels.{level}.rules]]
audience = "devices"
device_kinds = ["loudspeaker"]
"""
    for level in ("red", "orange", "yellow", "blue")
)

CONFIG = """
[server]
host = "127.0.0.1"
port = {port}

[store]
path = "{db}"

[policy]
file = "{policy}"

[logging]
level = "warning"

[[api.tokens]]
name = "bench"
role = "duty_officer"
sha256 = "{sha}"

[adapters.speakers]
kind = "mqtt_speaker"
channels = ["speaker"]

[adapters.speakers.settings]
host = "{host}"
port = {broker_port}
client_id = "bench"
"""


# -- data ---------------------------------------------------------------------------------------
def speakers_database() -> Path:
    """1,500 villages (a tiny population: the people are not what is measured) and 5,000
    loudspeakers of the ``speakers`` adapter, 3 or 4 per village."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"speakers-{SPEAKERS}-seed{VILLAGES.seed}.db"
    if path.exists():
        return path
    print(f"building {path} (once) ...", flush=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    conn = connect(tmp)
    migrate_sqlite(conn)
    conn.close()
    load_synthetic(tmp, VILLAGES, progress=False)
    conn = sqlite3.connect(tmp)
    with conn:
        villages = [r[0] for r in conn.execute("SELECT code FROM areas WHERE level = 'village'")]
        conn.execute("DELETE FROM device_areas")
        conn.execute("DELETE FROM devices")
        for n in range(SPEAKERS):
            village = villages[n % len(villages)]
            device = f"SPK-{village}-{n // len(villages) + 1}"
            conn.execute(
                "INSERT INTO devices (id, kind, name, adapter, address, area_code) "
                "VALUES (?, 'loudspeaker', ?, 'speakers', ?, ?)",
                (device, device, device, village),
            )
            conn.execute("INSERT INTO device_areas VALUES (?, ?)", (device, village))
    conn.execute("ANALYZE")
    conn.close()
    tmp.rename(path)
    return path


def fresh_copy(base: Path, directory: Path) -> Path:
    work = directory / "speakers.db"
    conn = sqlite3.connect(base)
    backup = sqlite3.connect(work)
    conn.backup(backup)
    backup.close()
    conn.close()
    return work


def speakers_csv(db: Path, path: Path) -> int:
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT d.address, c.ancestor FROM devices d JOIN area_closure c "
        "ON c.descendant = d.area_code ORDER BY d.id, c.depth"
    ).fetchall()
    conn.close()
    areas: dict[str, list[str]] = {}
    for device, ancestor in rows:
        areas.setdefault(device, []).append(ancestor)
    with path.open("w") as out:
        out.write("device_id,areas\n")
        for device, codes in areas.items():
            out.write(f"{device},{' '.join(codes)}\n")
    return len(areas)


def broker_config() -> str:
    """The shipped limits (deploy/mosquitto/conf.d/), on a plain loopback listener."""
    limits = (ROOT / "deploy" / "mosquitto" / "conf.d" / "tocsin-limits.conf").read_text()
    kept = [
        line
        for line in limits.splitlines()
        if not re.match(r"\s*(allow_anonymous|persistence|autosave)", line)
    ]
    return "\n".join([*kept, "allow_anonymous true", "persistence false", ""])


# -- the fleet ----------------------------------------------------------------------------------
class Fleet:
    """``tocsin simulate speakers`` in a subprocess."""

    def __init__(self, broker: Broker, csv: Path, *, progress: bool = True) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatcher.cli",
                "simulate",
                "speakers",
                "--host",
                broker.host,
                "--port",
                str(broker.port),
                "--speakers",
                str(csv),
                "--connections",
                "8",
                "--heartbeat",
                "0",
                "--summary-seconds",
                "3600",
                *([] if progress else ["--no-progress"]),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def wait_online(broker: Broker, count: int, within: float = 120.0) -> None:
    online: set[str] = set()
    async with aiomqtt.Client(broker.host, broker.port, identifier="bench-watch") as client:
        await client.subscribe(f"{ROOT_TOPIC}/device/+/state", qos=1)
        async with asyncio.timeout(within):
            async for message in client.messages:
                device = message.topic.value.split("/")[-2]
                if isinstance(message.payload, bytes) and b'"online"' in message.payload:
                    online.add(device)
                if len(online) >= count:
                    return


# -- the floor ----------------------------------------------------------------------------------
def alert_payload(warning_id: str) -> str:
    now = datetime.now(UTC).replace(microsecond=0)
    return json.dumps(
        {
            "v": 1,
            "id": warning_id,
            "status": "Exercise",
            "type": "Alert",
            "level": "red",
            "event": "暴雨",
            "headline": "全市暴雨红色预警",
            "text": "【演练，非真实预警】【红色预警】全市暴雨红色预警。立即转移。",
            "repeat": 2,
            "sent": now.isoformat(),
            "expires": (now + timedelta(hours=1)).isoformat(),
        },
        ensure_ascii=False,
    )


def floor_run(broker: Broker, speakers: int) -> float:
    """Seconds from mosquitto_pub's start to 99 % of the speakers' ``played`` seen by
    mosquitto_sub."""
    warning_id = f"floor-{uuid.uuid4().hex[:8]}"
    needed = int(speakers * 0.99)
    played: set[str] = set()
    done = threading.Event()
    at: list[float] = []
    sub = subprocess.Popen(
        [
            mosquitto_tool("mosquitto_sub"),
            "-i",
            "bench-floor-sub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-v",
            "-t",
            f"{ROOT_TOPIC}/device/+/ack",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )

    def read() -> None:
        assert sub.stdout is not None
        for line in sub.stdout:
            if warning_id in line and '"played"' in line:
                played.add(line.split(" ", 1)[0])
                if len(played) >= needed and not done.is_set():
                    at.append(time.perf_counter())
                    done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)  # subscribed
    started = time.perf_counter()
    subprocess.run(
        [
            mosquitto_tool("mosquitto_pub"),
            "-i",
            "bench-floor-pub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-V",
            "5",
            "-D",
            "publish",
            "message-expiry-interval",
            "3600",
            "-t",
            f"{ROOT_TOPIC}/area/{CITY_CODE}/alert",
            "-m",
            alert_payload(warning_id),
        ],
        check=True,
        timeout=30,
    )
    finished = done.wait(60)
    sub.terminate()
    sub.wait()
    if not finished:
        raise RuntimeError(f"floor: only {len(played)} of {needed} played within 60 s")
    return at[0] - started


# -- Tocsin -------------------------------------------------------------------------------------
async def acks_recorded(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    return sum(
        float(m.group(1)) for m in re.finditer(r"^tocsin_acks_total\{[^}]*\} (\S+)$", text, re.M)
    )


async def tocsin_run(
    session: aiohttp.ClientSession, url: str, db: Path, speakers: int, acks_per_speaker: int
) -> tuple[float, float, float, int, float]:
    """(seconds POST → 99 % acknowledged in the store, → all, ack messages taken in per
    second, reports recorded, seconds POST → every delivery recorded sent)."""
    before = await acks_recorded(session, url)
    needed = int(speakers * 0.99)
    posted = time.time()
    started = time.perf_counter()
    async with session.post(
        f"{url}/v1/warnings",
        json={
            "level": "red",
            "event": "暴雨",
            "headline": "全市暴雨红色预警",
            "instruction": "立即转移",
            "area_codes": [CITY_CODE],
            "status": "Exercise",
        },
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as response:
        body = await response.json()
        if response.status != 202:
            raise RuntimeError(f"POST answered {response.status}: {body}")
    warning_id = str(body["id"])
    seq = None
    t99 = None
    deadline = time.perf_counter() + 120
    while True:
        if seq is None:
            rows = query(db, "SELECT seq FROM warnings WHERE id = ?", (warning_id,))
            seq = rows[0][0] if rows else None
        if seq is not None:
            (done,) = query(
                db,
                "SELECT count(*) FROM deliveries WHERE warning_seq = ? AND state = 'acknowledged'",
                (seq,),
            )[0]
            assert isinstance(done, int)
            if t99 is None and done >= needed:
                t99 = time.perf_counter() - started
            if done >= speakers:
                t_all = time.perf_counter() - started
                break
        if time.perf_counter() > deadline:
            raise RuntimeError(f"Tocsin: warning {warning_id} not played everywhere in 120 s")
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.0)  # the last progress acks behind the final ones
    recorded = int(await acks_recorded(session, url) - before)
    first, last = query(
        db,
        "SELECT min(at), max(at) FROM delivery_events WHERE warning_id = ? "
        "AND state IN ('delivered', 'acknowledged')",
        (warning_id,),
    )[0]
    assert isinstance(first, float)
    assert isinstance(last, float)
    assert t99 is not None
    timeline = query(
        db,
        "SELECT state, count(*), min(at), max(at) FROM delivery_events WHERE warning_id = ? "
        "GROUP BY state ORDER BY min(at)",
        (warning_id,),
    )
    print(
        "  timeline after POST: "
        + "; ".join(
            f"{state} ×{n} {float(str(lo)) - posted:.2f}–{float(str(hi)) - posted:.2f} s"
            for state, n, lo, hi in timeline
        ),
        flush=True,
    )
    # The fleet sends three acks per speaker (received, playing, played) unless --no-progress;
    # the adapter passes on two (playing adds nothing to received); all are in the store by
    # ``last``.
    messages = acks_per_speaker * speakers
    sent = next(
        (float(str(hi)) - posted for state, _n, _lo, hi in timeline if state == "sent"), 0.0
    )
    return t99, t_all, messages / max(last - first, 1e-6), recorded, sent


async def start_daemon(
    directory: Path, db: Path, broker: Broker
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    policy = directory / "policy.toml"
    policy.write_text(POLICY)
    config = directory / "tocsin.toml"
    config.write_text(
        CONFIG.format(
            port=port,
            db=db,
            policy=policy,
            sha=hash_token(TOKEN),
            host=broker.host,
            broker_port=broker.port,
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
    proc = subprocess.Popen(  # noqa: ASYNC220 (once, before anything is measured)
        [sys.executable, "-m", "dispatcher.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 120
        while True:
            try:
                async with session.get(
                    f"{url}/v1/adapters", headers={"Authorization": f"Bearer {TOKEN}"}
                ) as response:
                    if response.status == 200:
                        states = await response.json()
                        if all(a.get("state") == "ready" for a in states.get("adapters", [])):
                            break
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the daemon did not start")
            await asyncio.sleep(0.2)
    if os.environ.get("BENCH_PY_SPY"):
        # Profile the daemon's first run: BENCH_PY_SPY=/tmp/daemon.txt (collapsed stacks).
        subprocess.Popen(  # noqa: ASYNC220
            [
                "py-spy",
                "record",
                "--pid",
                str(proc.pid),
                "-d",
                "15",
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                os.environ["BENCH_PY_SPY"],
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1)
    return proc, url


# -- Apprise ------------------------------------------------------------------------------------
def apprise_rate(broker: Broker, devices: list[str], chunk: int = 25) -> float | None:
    """Device topics per second through Apprise's MQTT plugin, or None when not installed.

    Apprise publishes to the topics of one URL one after the other, waiting for each; with
    more than about a hundred topics in one URL it reports "could not be delivered" (seen here
    with 200), so the speakers are sent to ``chunk`` topics per notification, in turn."""
    try:
        import apprise  # type: ignore[import-not-found]
    except ImportError:
        return None
    payload = alert_payload(f"apprise-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    for index in range(0, len(devices), chunk):
        topics = "/".join(f"{ROOT_TOPIC}/device/{d}/alert" for d in devices[index : index + chunk])
        notifier = apprise.Apprise()
        # A client id: the shipped broker limits refuse an empty one.
        url = f"mqtt://{broker.host}:{broker.port}/{topics}?qos=1&client_id=bench-apprise"
        if not notifier.add(url):
            raise RuntimeError("apprise did not take the MQTT URL")
        if not notifier.notify(body=payload, title=""):
            raise RuntimeError("apprise reported a failure")
    return len(devices) / (time.perf_counter() - started)


# -- main ---------------------------------------------------------------------------------------
async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--apprise-topics", type=int, default=300)
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="speakers send only their final ack (played), not received and playing",
    )
    args = parser.parse_args()
    base = speakers_database()
    with tempfile.TemporaryDirectory(prefix="tocsin-bench-speakers-") as scratch:
        directory = Path(scratch)
        db = fresh_copy(base, directory)
        csv = directory / "speakers.csv"
        speakers = speakers_csv(db, csv)
        print(
            f"{speakers} speakers in {len(query(db, 'SELECT DISTINCT area_code FROM devices'))}"
            " villages",
            flush=True,
        )
        with running_mosquitto(broker_config(), directory / "broker") as broker:
            fleet = Fleet(broker, csv, progress=not args.no_progress)
            acks_per_speaker = 1 if args.no_progress else 3
            try:
                await wait_online(broker, speakers)
                print("fleet online", flush=True)
                floors = [floor_run(broker, speakers) for _ in range(args.repeat)]
                floor = statistics.median(floors)
                print(
                    "floor (mosquitto_pub → 99 % played at mosquitto_sub): "
                    + ", ".join(f"{f:.2f}" for f in floors)
                    + f" s; median {floor:.2f} s",
                    flush=True,
                )
                proc, url = await start_daemon(directory, db, broker)
                try:
                    results = []
                    async with aiohttp.ClientSession() as session:
                        for _ in range(args.repeat):
                            results.append(
                                await tocsin_run(session, url, db, speakers, acks_per_speaker)
                            )
                            await asyncio.sleep(1.0)
                finally:
                    proc.terminate()
                    proc.wait(60)
                t99 = statistics.median(r[0] for r in results)
                t_all = statistics.median(r[1] for r in results)
                rate = statistics.median(r[2] for r in results)
                for r in results:
                    print(
                        f"tocsin: POST → 99 % played (in the store) {r[0]:.2f} s, all {r[1]:.2f} s;"
                        f" {acks_per_speaker * speakers} ack messages taken in at {r[2]:,.0f}/s"
                        f" ({r[3]} reports recorded)",
                        flush=True,
                    )
                ratio = t99 / floor
                print(
                    f"Tocsin POST → 99 % played: median {t99:.2f} s (all {t_all:.2f} s); "
                    f"{ratio:.1f}× the floor (goal ≤ 5×, < 3 s) "
                    + ("OK" if ratio <= 5 and t99 < 3 else "MISSED"),
                    flush=True,
                )
                print(
                    f"ack intake (messages taken in, effects in the store): median {rate:,.0f}/s "
                    "(goal ≥ 5,000/s) " + ("OK" if rate >= 5000 else "MISSED"),
                    flush=True,
                )
                devices = [line.split(",")[0] for line in csv.read_text().splitlines()[1:]]
                apprise = (
                    apprise_rate(broker, devices[: args.apprise_topics])
                    if args.apprise_topics
                    else None
                )
                played_rate = int(speakers * 0.99) / t99
                sent_rate = speakers / statistics.median(r[4] for r in results)
                if apprise is None:
                    print("no Apprise comparison (--apprise-topics 0, or apprise not installed:")
                    print("pip install -e '.[bench]')")
                else:
                    print(
                        f"Apprise MQTT: {apprise:.1f} speakers/s sent ({args.apprise_topics} "
                        f"device topics, 5,000 would take {speakers / apprise:.0f} s)",
                        flush=True,
                    )
                    for what, rate_ in (
                        ("sent (every delivery recorded sent)", sent_rate),
                        ("played (acknowledged in the store)", played_rate),
                    ):
                        ratio_ = rate_ / apprise
                        print(
                            f"Tocsin {what}: {rate_:,.0f} speakers/s, {ratio_:,.0f}× Apprise "
                            "(goal ≥ 100×) " + ("OK" if ratio_ >= 100 else "MISSED"),
                            flush=True,
                        )
            finally:
                fleet.stop()


if __name__ == "__main__":
    asyncio.run(main())

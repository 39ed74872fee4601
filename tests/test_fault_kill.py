"""kill -9 in the middle of a large fan-out, then restart: every delivery ends in a terminal
state, none is lost, and deliveries sent twice are bounded by what was in flight at the kill."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import time
from pathlib import Path

from test_daemon import DUTY, OPERATOR, ROOT, Daemon, _call, _free_port

#: The sms instance's batches in flight at once × its batch size: the most a kill can catch
#: mid-send (devices are few and sent first).
SMS_BATCH = 200
SMS_CONCURRENCY = 4

CONFIG = """
[server]
host = "127.0.0.1"
port = {port}

[store]
path = "tocsin.db"

[directory.synthetic]
counties = 1
towns_per_county = 4
villages_per_town = 5
grids_per_village = 4
households_per_grid = 25
persons_per_household = 3.0
seed = 7

[policy]
file = "policy.toml"

[engine]
batch_size = 1000
lease = "2m"

[[api.tokens]]
name = "demo-duty-officer"
role = "duty_officer"
sha256 = "11aedcff35ed445473397e20807985ebf74b5ddc42ae3a1de656c2595b0a8ab1"

[[api.tokens]]
name = "demo-operator"
role = "operator"
sha256 = "9437e87fae95c03d3778f2575bb18ce30e647e51d86a8c37963364e1fc4f374e"

[adapters.devices]
kind = "simulated"
channels = ["speaker", "transmitter", "modem"]

[adapters.sms]
kind = "simulated"
channels = ["sms"]
rate_per_second = 1500
burst = 300
batch_size = {batch}
concurrency = {concurrency}

[adapters.sms.settings]
# Slow enough that batches are always in flight when the kill lands.
latency = "300ms"

[adapters.voice]
kind = "simulated"
channels = ["voice"]

[adapters.voice.settings]
latency = "20ms"
"""

OPEN_STATES = ("held", "pending", "retry_wait", "sending", "sent", "delivered")


def _rows(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def test_kill_9_mid_fan_out_loses_nothing(tmp_path: Path) -> None:
    shutil.copy(ROOT / "config" / "policy.toml", tmp_path / "policy.toml")
    port = _free_port()
    config = tmp_path / "tocsin.toml"
    config.write_text(
        CONFIG.format(port=port, batch=SMS_BATCH, concurrency=SMS_CONCURRENCY), encoding="utf-8"
    )
    db = tmp_path / "tocsin.db"
    daemon = Daemon(config, port)
    await daemon.start()
    try:
        (county,) = _rows(db, "SELECT code FROM areas WHERE level = 'county' LIMIT 1")[0]
        status, body, _ = await _call(
            "POST",
            f"{daemon.url}/v1/warnings",
            DUTY,
            {
                "level": "red",
                "event": "暴雨",
                "headline": "暴雨红色预警",
                "area_codes": [county],
                "status": "Exercise",
            },
        )
        assert status == 202, body
        warning_id = str(body["id"])
        # Kill once a good part, but not all, of the SMS fan-out has gone out.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sent = _rows(
                db,
                "SELECT count(*) FROM delivery_events WHERE warning_id = ? AND state = 'sent' "
                "AND channel = 'sms'",
                (warning_id,),
            )[0][0]
            if int(str(sent)) >= 1500:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the fan-out did not start within 30 s")
    finally:
        daemon.stop(signal.SIGKILL)

    planned = int(str(_rows(db, "SELECT count(*) FROM deliveries")[0][0]))
    open_at_kill = dict(
        _rows(db, "SELECT state, count(*) FROM deliveries GROUP BY state")  # type: ignore[arg-type]
    )
    assert open_at_kill.get("pending", 0) > 0, f"the kill came too late: {open_at_kill}"
    in_flight_at_kill = int(str(open_at_kill.get("sending", 0)))
    assert 0 < in_flight_at_kill <= SMS_BATCH * SMS_CONCURRENCY + 100, open_at_kill

    restarted = Daemon(config, port)
    await restarted.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status, warning, _ = await _call(
                "GET", f"{restarted.url}/v1/warnings/{warning_id}", OPERATOR
            )
            counts = warning.get("delivery_counts") or {}
            assert isinstance(counts, dict)
            if not any(counts.get(s) for s in OPEN_STATES):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"not every delivery ended after the restart: {counts}")
    finally:
        code, _out = restarted.stop()
    assert code == 0

    # None lost: the same rows, each in a terminal state; the counters agree with the rows.
    states = dict(_rows(db, "SELECT state, count(*) FROM deliveries GROUP BY state"))  # type: ignore[arg-type]
    assert sum(int(str(n)) for n in states.values()) == planned
    assert set(states) <= {"acknowledged", "skipped"}, states
    counted = dict(
        _rows(db, "SELECT state, n FROM delivery_state_counts WHERE n != 0")  # type: ignore[arg-type]
    )
    assert counted == states
    # Repeats: only deliveries leased at the kill were sent again, each at most once more.
    reclaimed = _rows(
        db,
        "SELECT delivery_id FROM delivery_events WHERE state = 'retry_wait' "
        "AND reason LIKE 'lease expired: the daemon stopped%'",
    )
    assert len(reclaimed) == in_flight_at_kill
    sent_twice = _rows(
        db,
        "SELECT delivery_id FROM delivery_events WHERE state IN ('sent', 'delivered') "
        "AND delivery_id IS NOT NULL GROUP BY delivery_id HAVING count(*) > 1",
    )
    assert {r[0] for r in sent_twice} <= {r[0] for r in reclaimed}

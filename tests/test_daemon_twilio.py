"""The daemon with the Twilio adapters as a user runs it: `tocsin serve` on
config/demo-twilio.toml against the fake Twilio server, a warning posted over HTTP; texts (and
calls, when a ladder gets there) go out through the real twilio client, and the fake's signed
status callbacks and replies reach the daemon's /hooks/ endpoints and confirm people."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from test_daemon import DUTY, ROOT, Daemon, _call, _demo_config, _free_port

from adapters.twilio.fake_script import FakeScript
from adapters.twilio.fake_server import FakeTwilio

DEMO_SID = "ACdededededededededededededededede"


def _config(tmp_path: Path, port: int, fake_port: int) -> Path:
    return _demo_config(
        tmp_path,
        "demo-twilio",
        port=port,
        towns=1,
        villages=2,
        grids=2,
        households=4,
        replacements=(
            ("http://127.0.0.1:8080", f"http://127.0.0.1:{port}"),  # the webhooks' public_url
            ("http://127.0.0.1:8765", f"http://127.0.0.1:{fake_port}"),  # the fake's API
        ),
        files=("policy.toml", "demo-twilio-token"),
    )


def _states(db: Path, warning_id: str) -> dict[tuple[str, str], int]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return {
            (channel, state): n
            for channel, state, n in conn.execute(
                "SELECT d.channel, d.state, count(*) FROM deliveries d JOIN warnings w "
                "ON w.seq = d.warning_seq WHERE w.id = ? GROUP BY 1, 2",
                (warning_id,),
            )
        }
    finally:
        conn.close()


async def test_serve_with_twilio_adapters_against_the_fake(tmp_path: Path) -> None:
    port, fake_port = _free_port(), _free_port()
    token = (ROOT / "config" / "demo-twilio-token").read_text().strip()
    script = FakeScript(reply_rate=1.0, digits="1")
    fake = FakeTwilio(
        accounts={DEMO_SID: token},
        script=script,
        sms_url=f"http://127.0.0.1:{port}/hooks/demo_sms/inbound",
        port=fake_port,
    )
    async with fake:
        daemon = Daemon(_config(tmp_path, port, fake_port), port)
        await daemon.start()
        try:
            status, body, _ = await _call(
                "POST",
                f"{daemon.url}/v1/warnings",
                DUTY,
                {
                    "level": "red",
                    "status": "Exercise",
                    "event": "暴雨",
                    "headline": "暴雨红色预警",
                    "instruction": "请立即转移",
                    "area_codes": ["611002000000"],
                },
            )
            assert status == 202, body
            warning_id = str(body["id"])
            db = tmp_path / "tocsin.db"
            deadline = time.monotonic() + 60
            states: dict[tuple[str, str], int] = {}
            while time.monotonic() < deadline:
                states = _states(db, warning_id)
                texts = {s: n for (c, s), n in states.items() if c == "sms"}
                calls = {s: n for (c, s), n in states.items() if c == "voice"}
                # Held calls behind confirmed texts are skipped; any call made is confirmed.
                if (
                    texts
                    and set(texts) == {"acknowledged"}
                    and set(calls)
                    <= {
                        "skipped",
                        "acknowledged",
                    }
                ):
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"not every text was confirmed: {states}")
            assert len(fake.sent) == sum(n for (c, _), n in states.items() if c == "sms")
            assert all(m.body.startswith("【演练，非真实预警】") for m in fake.sent)
            # Every callback reached the daemon and was answered well (signatures matched).
            callbacks = [c for c in fake.callbacks() if c.kind in ("sms-status", "sms-inbound")]
            assert callbacks
            assert all(c.ok for c in callbacks), [c for c in callbacks if not c.ok][:3]
        finally:
            code, out = daemon.stop()
        assert code == 0, out
        assert "0badc0de" not in out

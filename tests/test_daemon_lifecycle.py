"""`tocsin serve` as systemd runs it: the notify protocol on a socket the test binds (READY
once the API answers, WATCHDOG at half of WATCHDOG_USEC, STATUS lines, RELOADING/READY around
SIGHUP, STOPPING on SIGTERM), SIGHUP with a broken then a good config, and SIGTERM while
sends are in flight."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from test_daemon import DUTY, OPERATOR, ROOT, _call, _config, _free_port

from dispatcher.config import hash_token
from dispatcher.sd_notify import monotonic_usec

Message = dict[str, str]


class Systemd:
    """What systemd does for a Type=notify service: bind the notify socket, pass it in the
    environment with the watchdog period, and take in what the service sends (on a thread,
    so each message is stamped when it arrives)."""

    def __init__(self, tmp_path: Path, *, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"tocsin-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(tmp_path / "notify")
            self.sock.bind(self.address)
        self.sock.settimeout(0.1)
        #: (monotonic seconds of arrival, the message's assignments)
        self.messages: list[tuple[float, Message]] = []
        #: The service's process: a wait ends when it exits without sending what is awaited.
        self.process: subprocess.Popen[bytes] | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            pairs = (line.partition("=") for line in data.split("\n"))
            self.messages.append((time.monotonic(), {k: v for k, _, v in pairs}))

    async def wait(
        self, condition: Callable[[Message], bool], what: str, *, after: int = 0, within=20.0
    ) -> int:
        """Index of the first message from ``after`` on that satisfies ``condition``."""
        deadline = time.monotonic() + within
        exited_at: float | None = None
        while True:
            for index in range(after, len(self.messages)):
                if condition(self.messages[index][1]):
                    return index
            assert time.monotonic() < deadline, f"no {what} within {within} s: {self.messages}"
            if exited_at is None and self.process is not None and self.process.poll() is not None:
                exited_at = time.monotonic()
            # What it sent just before exiting may still be on its way to the reader thread.
            assert exited_at is None or time.monotonic() < exited_at + 0.5, (
                f"the daemon exited ({self.process.returncode if self.process else ''}) "
                f"without {what}: {self.messages}"
            )
            await asyncio.sleep(0.01)

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self.sock.close()


class Service:
    def __init__(self, config: Path, port: int, systemd: Systemd, watchdog_usec: int) -> None:
        self.config = config
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
        env.update(NOTIFY_SOCKET=systemd.address, WATCHDOG_USEC=str(watchdog_usec))
        self.log = config.parent / "daemon.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "serve", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        systemd.process = self.proc

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


async def _readyz(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as response:
        return response.status


@pytest.mark.slow
async def test_notify_protocol(tmp_path: Path) -> None:
    systemd = Systemd(tmp_path, abstract=True)
    port = _free_port()
    service = Service(_config(tmp_path, port), port, systemd, watchdog_usec=400_000)
    try:
        starting = await systemd.wait(lambda m: "STATUS" in m, "a status line while starting")
        ready = await systemd.wait(lambda m: m.get("READY") == "1", "READY=1", within=60)
        assert systemd.messages[starting][1]["STATUS"].startswith("starting")
        # Ready means serving: the API answers at once, and says the daemon is ready.
        assert await _readyz(service.url) == 200
        status = systemd.messages[ready][1]["STATUS"]
        assert status.startswith(f"serving on 127.0.0.1:{port}, "), status
        await systemd.wait(
            lambda m: m.get("STATUS") == f"serving on 127.0.0.1:{port}, 3/3 adapters ready",
            "all three simulated adapters ready",
            after=ready,
        )

        # The watchdog: every WATCHDOG_USEC/2 = 0.2 s.
        await asyncio.sleep(2.0)
        beats = [t for t, m in systemd.messages[ready:] if m.get("WATCHDOG") == "1"]
        assert len(beats) >= 6, systemd.messages
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        assert 0.15 <= statistics.median(gaps) <= 0.3, gaps
        assert max(gaps) < 0.4, gaps  # never let systemd's 0.4 s pass

        # SIGHUP: RELOADING=1 with the monotonic time, then READY=1 again.
        before = len(systemd.messages)
        sent_at = monotonic_usec()
        service.signal(signal.SIGHUP)
        reloading = await systemd.wait(lambda m: "RELOADING" in m, "RELOADING=1", after=before)
        message = systemd.messages[reloading][1]
        assert message["RELOADING"] == "1"
        assert sent_at <= int(message["MONOTONIC_USEC"]) <= monotonic_usec()
        again = await systemd.wait(lambda m: "READY" in m, "READY=1", after=reloading)
        assert systemd.messages[again][1]["STATUS"].startswith("serving on")
        assert await _readyz(service.url) == 200

        # SIGTERM: STOPPING=1, then a clean exit; no watchdog after STOPPING.
        before = len(systemd.messages)
        service.signal(signal.SIGTERM)
        stopping = await systemd.wait(lambda m: "STOPPING" in m, "STOPPING=1", after=before)
        assert service.wait() == 0, service.output()
        assert not [m for _, m in systemd.messages[stopping:] if "WATCHDOG" in m]
        assert "Traceback" not in service.output()
    finally:
        service.kill()
        systemd.close()


def _with_tokens(config: Path, tokens: dict[str, str], extra: str = "") -> str:
    """The demo config with its [[api.tokens]] replaced by ``tokens`` (name → role), each
    token's plain text being its name."""
    text = config.read_text(encoding="utf-8")
    head, _, rest = text.partition("[[api.tokens]]")
    tail = rest[rest.index("\n# Simulated devices") :]
    blocks = "".join(
        f'[[api.tokens]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{hash_token(name)}"\n\n'
        for name, role in tokens.items()
    )
    return head + blocks + extra + tail


@pytest.mark.slow
async def test_sighup_keeps_the_old_config_when_the_new_one_is_broken(tmp_path: Path) -> None:
    systemd = Systemd(tmp_path, abstract=False)
    port = _free_port()
    config = _config(tmp_path, port)
    service = Service(config, port, systemd, watchdog_usec=10_000_000)

    async def reload() -> None:
        before = len(systemd.messages)
        service.signal(signal.SIGHUP)
        reloading = await systemd.wait(lambda m: "RELOADING" in m, "RELOADING=1", after=before)
        await systemd.wait(lambda m: "READY" in m, "READY=1 after the reload", after=reloading)

    async def status(token: str) -> int:
        code, _, _ = await _call("GET", f"{service.url}/v1/warnings", token)
        return code

    try:
        await systemd.wait(lambda m: m.get("READY") == "1", "READY=1", within=60)
        assert await status(OPERATOR) == 200

        # Broken: a token with a role that does not exist. Nothing of it is taken, not even
        # its good parts (the new token).
        config.write_text(
            _with_tokens(
                config,
                {DUTY: "duty_officer", OPERATOR: "operatr", "new-operator": "operator"},
            ),
            encoding="utf-8",
        )
        await reload()
        assert await status(OPERATOR) == 200
        assert await status("new-operator") == 401
        out = service.output()
        assert "reload refused: config problem" in out
        assert f"{config}: api.tokens[1].role: Input should be" in out
        assert "reload refused: the running configuration is kept" in out

        # Good: the operator token removed, a new one added, the port changed (a restart
        # setting: logged, not applied), the log level lowered to warning.
        config.write_text(
            _with_tokens(config, {DUTY: "duty_officer", "new-operator": "operator"})
            .replace(f"port = {port}", f"port = {port + 1}")
            .replace("[policy]", '[logging]\nlevel = "warning"\n\n[policy]'),
            encoding="utf-8",
        )
        await reload()
        assert await status("new-operator") == 200
        assert await status(OPERATOR) == 401
        assert await status(DUTY) == 200  # still served on the old port
        out = service.output()
        assert '"api.tokens added: new-operator"' in out
        assert '"api.tokens removed: demo-operator, demo-installer, demo-admin"' in out
        assert '"logging.level: warning"' in out
        assert '"setting": "server.port"' in out
        assert "takes effect at the next restart" in out

        # At level warning the info lines stop.
        lines_before = len(out.splitlines())
        await reload()
        new_lines = service.output().splitlines()[lines_before:]
        assert new_lines, "the server.port warning is logged again"
        assert all('"level": "info"' not in line for line in new_lines), new_lines

        service.signal(signal.SIGTERM)
        assert service.wait() == 0, service.output()
    finally:
        service.kill()
        systemd.close()


@pytest.mark.slow
async def test_sigterm_drains_in_flight_sends_and_records_them(tmp_path: Path) -> None:
    """SIGTERM while batches are in the adapters: no new claim, every batch in flight
    finishes and is recorded within the drain, exit 0."""
    systemd = Systemd(tmp_path, abstract=True)
    port = _free_port()
    config = _config(tmp_path, port)
    text = config.read_text(encoding="utf-8")
    # Every send takes 3 s; the drain allows 8 s.
    text = text.replace('latency = "20ms"', 'latency = "3s"')
    text = text.replace('latency = "50ms"', 'latency = "3s"')
    text = text.replace('latency = "100ms"', 'latency = "3s"')
    text = text.replace("[policy]", '[engine]\ndrain_timeout = "8s"\n\n[policy]')
    config.write_text(text, encoding="utf-8")
    db = tmp_path / "tocsin.db"
    service = Service(config, port, systemd, watchdog_usec=10_000_000)
    try:
        await systemd.wait(lambda m: m.get("READY") == "1", "READY=1", within=60)
        code, body, _ = await _call(
            "POST",
            f"{service.url}/v1/warnings",
            DUTY,
            {
                "level": "red",
                "status": "Exercise",
                "event": "暴雨",
                "headline": "暴雨红色预警",
                "area_codes": ["611002"],
            },
        )
        assert code == 202, body
        deadline = time.monotonic() + 30
        while True:
            in_flight = _states(db).get("sending", 0)
            if in_flight:
                break
            assert time.monotonic() < deadline, "nothing claimed within 30 s"
            await asyncio.sleep(0.05)
        # Each channel has its 4 batches (its concurrency) in the adapters within a fraction of
        # a second; they take 3 s, and the engine claims again only when one finishes.
        await asyncio.sleep(1.0)
        attempted = _attempted(db)
        assert attempted

        started = time.monotonic()
        service.signal(signal.SIGTERM)
        await systemd.wait(lambda m: "STOPPING" in m, "STOPPING=1")
        code = await asyncio.to_thread(service.wait)
        took = time.monotonic() - started
        assert code == 0, service.output()
        # It waited for the batches (about 2 s of their 3 s were left), not for the drain's 8 s.
        assert 1.0 <= took < 8 + 5, f"stopping took {took:.1f} s"
    finally:
        service.kill()
        systemd.close()

    states = _states(db)
    assert "sending" not in states, states
    # No new claim after SIGTERM, and every delivery sent is recorded as such.
    assert _attempted(db) == attempted
    conn = sqlite3.connect(db)
    try:
        unrecorded = conn.execute(
            "SELECT count(*) FROM deliveries d WHERE d.attempts > 0 AND NOT EXISTS ("
            "SELECT 1 FROM delivery_events e WHERE e.delivery_id = d.id "
            "AND e.state IN ('sent', 'retry_wait', 'failed'))"
        ).fetchone()[0]
    finally:
        conn.close()
    assert unrecorded == 0
    out = service.output()
    assert '"event": "stopped"' in out
    assert "sends still running at shutdown" not in out


def _states(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))
    finally:
        conn.close()


def _attempted(db: Path) -> set[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM deliveries WHERE attempts > 0")}
    finally:
        conn.close()

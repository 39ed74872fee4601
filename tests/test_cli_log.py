"""`tocsin log` against a live daemon (`tocsin serve` in a subprocess, as a user runs it): the
table of the newest events, the CSV export on stdout, and --follow printing events as they are
written (with a progress bar on a terminal) until Ctrl-C.

Events are appended straight into the daemon's SQLite file, for targets the engine never
writes about, so whatever the engine does meanwhile cannot disturb what is checked."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_log_store import EventRow, insert_events

from dispatcher.api.routes_log import CSV_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
DUTY = "demo-duty-officer"
OPERATOR = "demo-operator"
VILLAGE = "611002101201"


@dataclass
class Daemon:
    url: str
    db: Path
    warning: str
    proc: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(url: str, token: str | None = None, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            **({"Authorization": f"Bearer {token}"} if token else {}),
            **({"Content-Type": "application/json"} if body is not None else {}),
        },
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.load(response)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The demo's daemon on a small synthetic county, with one planned warning."""
    folder = tmp_path_factory.mktemp("cli-log")
    port = _free_port()
    shutil.copy(ROOT / "config" / "policy.toml", folder / "policy.toml")
    text = (ROOT / "config" / "demo.toml").read_text(encoding="utf-8")
    text = text.replace("port = 8080", f"port = {port}")
    text = text.replace('path = "../var/demo.db"', 'path = "tocsin.db"')
    text = text.replace("towns_per_county = 4", "towns_per_county = 2")
    text = text.replace("villages_per_town = 6", "villages_per_town = 3")
    text = text.replace("households_per_grid = 25", "households_per_grid = 5")
    config = folder / "tocsin.toml"
    config.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
    output = (folder / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                log = (folder / "daemon.log").read_text(encoding="utf-8", errors="replace")
                raise AssertionError(f"the daemon exited with {proc.returncode}:\n{log[-3000:]}")
            try:
                if _http(f"{url}/readyz").get("status") == "ready":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the daemon did not become ready"
            time.sleep(0.1)
        warning = _http(
            f"{url}/v1/warnings",
            DUTY,
            {
                "level": "red",
                "status": "Exercise",
                "event": "暴雨",
                "headline": "暴雨红色预警",
                "area_codes": ["611002"],
            },
        )["id"]
        while not _http(f"{url}/v1/warnings/{warning}/plan", OPERATOR).get("planned"):
            assert time.monotonic() < deadline, "the warning was not planned"
            time.sleep(0.1)
        yield Daemon(url, folder / "tocsin.db", warning, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        output.close()


def _env(daemon: Daemon, token: str = OPERATOR) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
    env.update(TOCSIN_URL=daemon.url, TOCSIN_TOKEN=token, PYTHONUNBUFFERED="1")
    return env


def tocsin_log(
    daemon: Daemon, *args: str, token: str = OPERATOR
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "log", *args],
        cwd=ROOT,
        env=_env(daemon, token),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def event(daemon: Daemon, target: str, state: str, reason: str = "", **changes: Any) -> EventRow:
    fields: dict[str, Any] = {
        "delivery_id": 1,
        "attempt": 1,
        "adapter": "cli-gw",
        "reason": reason,
        "target_id": target,
        "channel": "sms",
        "area_code": VILLAGE,
        **changes,
    }
    return EventRow(time.time(), daemon.warning, state, **fields)


def test_the_table_shows_the_newest_events_oldest_at_the_top(daemon: Daemon) -> None:
    target = f"cli-{uuid.uuid4().hex[:8]}"
    states = ["sent", "retry_wait", "sent", "delivered", "acknowledged"]
    insert_events(
        daemon.db,
        [event(daemon, target, s, reason=f"步骤 {i}", attempt=i) for i, s in enumerate(states)],
    )
    shown = tocsin_log(daemon, "--person", target)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == [
        "time",
        "warning",
        "state",
        "channel",
        "target",
        "attempt",
        "adapter",
        "reason",
    ]
    assert [line.split()[3] for line in lines[1:]] == states  # after the date and time
    for i, line in enumerate(lines[1:]):
        assert daemon.warning[:8] in line and target in line and "cli-gw" in line
        assert line.endswith(f"步骤 {i}")
    # A shorter page says how to read on; --json prints the events themselves.
    shown = tocsin_log(daemon, "--person", target, "--limit", "2", "--json")
    assert shown.returncode == 0, shown.stderr
    events = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [e["state"] for e in events] == states[-2:]
    assert events[0]["level"] == "red" and events[0]["warning_id"] == daemon.warning
    assert f"--before {events[0]['id']}" in shown.stderr


def test_csv_writes_every_page_to_stdout(daemon: Daemon) -> None:
    target = f"cli-{uuid.uuid4().hex[:8]}"
    rows = [event(daemon, target, "failed", reason=f"=cmd|{i}") for i in range(2_300)]
    ids = insert_events(daemon.db, rows)
    exported = tocsin_log(daemon, "--person", target, "--csv")
    assert exported.returncode == 0, exported.stderr
    table = list(csv.reader(io.StringIO(exported.stdout.removeprefix("\ufeff"), newline="")))
    assert table[0] == list(CSV_COLUMNS)
    assert [int(r[0]) for r in table[1:]] == ids
    reasons = [r[CSV_COLUMNS.index("reason")] for r in table[1:]]
    assert reasons == [f"'=cmd|{i}" for i in range(2_300)]


def test_bad_filters_are_refused_before_asking_the_daemon(daemon: Daemon) -> None:
    nowhere = "http://127.0.0.1:9"
    for args, option in [
        (["--area", "12345"], "--area"),
        (["--since", "last tuesday"], "--since"),
        (["--state", "lost"], "--state"),
        (["--since", "2026-07-12T08:00:00Z", "--until", "2026-07-12T07:00:00Z"], "--until"),
        (["--limit", "0"], "--limit"),
    ]:
        refused = tocsin_log(daemon, "--url", nowhere, *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert option in refused.stderr
    refused = tocsin_log(daemon, "--level", "purple")
    assert refused.returncode == 2
    # The daemon refuses a bad token; the CLI says why.
    refused = tocsin_log(daemon, "--warning", daemon.warning, token="not-a-token")
    assert refused.returncode == 1
    assert "invalid_token" in refused.stderr
    # A duration ago is a time.
    recent = tocsin_log(daemon, "--warning", daemon.warning, "--since", "10m", "--json")
    assert recent.returncode == 0, recent.stderr


class Lines:
    """A stream's lines, read on a thread so the test can wait for one with a deadline."""

    def __init__(self, read: Callable[[], bytes]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._buffer = b""
        self._read = read
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = self._read()
            except OSError:
                chunk = b""
            if not chunk:
                self._queue.put(None)
                return
            self._buffer += chunk
            *lines, self._buffer = self._buffer.replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                self._queue.put(line.decode("utf-8", errors="replace"))

    def wait_for(self, text: str, within: float = 10) -> str:
        deadline = time.monotonic() + within
        for line in self.seen:
            if text in line:
                return line
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{text!r} not seen in {within} s: {self.seen}") from None
            if line is None:
                raise AssertionError(f"the output ended before {text!r}: {self.seen}")
            self.seen.append(line)
            if text in line:
                return line


def test_follow_prints_new_events_until_ctrl_c(daemon: Daemon) -> None:
    target = f"cli-{uuid.uuid4().hex[:8]}"
    insert_events(daemon.db, [event(daemon, target, "sent", reason="before following")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.cli", "log", "--follow", "--person", target],
        cwd=ROOT,
        env=_env(daemon),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        stdout = proc.stdout
        lines = Lines(lambda: os.read(stdout.fileno(), 65536))
        assert lines.wait_for("before following").split()[3] == "sent"
        for n in range(3):
            mark = f"live {uuid.uuid4().hex[:6]}"
            started = time.monotonic()
            insert_events(daemon.db, [event(daemon, target, "acknowledged", reason=mark)])
            assert lines.wait_for(mark, within=5).split()[3] == "acknowledged"
            assert time.monotonic() - started < 3, n
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert b"Traceback" not in stderr
    assert lines.seen[0].split()[0] == "time"


def test_follow_a_warning_on_a_terminal_shows_progress(daemon: Daemon) -> None:
    """On a terminal, --follow --warning draws a progress bar of the warning's deliveries
    that are done; the events still print (above the bar)."""
    target = f"cli-{uuid.uuid4().hex[:8]}"
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.cli", "log", "--follow", "--warning", daemon.warning],
        cwd=ROOT,
        env=_env(daemon),
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    try:
        lines = Lines(lambda: os.read(leader, 65536))
        planned = _http(f"{daemon.url}/v1/warnings/{daemon.warning}/plan", OPERATOR)["total"]
        bar = re.compile(rf"warning {daemon.warning[:8]} done: .*\| *([0-9]+)/([0-9]+) ")
        found = bar.search(lines.wait_for(f"warning {daemon.warning[:8]} done"))
        assert found is not None, lines.seen
        done, total = int(found[1]), int(found[2])
        assert total >= planned and done <= total
        mark = f"live {uuid.uuid4().hex[:6]}"
        insert_events(daemon.db, [event(daemon, target, "failed", reason=mark)])
        lines.wait_for(mark, within=5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    assert proc.returncode == 130
    assert not any("Traceback" in line for line in lines.seen)


def test_follow_without_a_terminal_draws_no_bar(daemon: Daemon) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.cli", "log", "--follow", "--warning", daemon.warning],
        cwd=ROOT,
        env=_env(daemon),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(2.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert stdout.decode().splitlines()[0].split()[0] == "time"
    assert b"done" not in stderr and b"%|" not in stderr and b"Traceback" not in stderr

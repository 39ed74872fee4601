"""The sd_notify client and the watchdog on their own: datagrams to a path or an abstract
socket, the watchdog's interval from the environment, and feeding that stops while the daemon
is unhealthy (the engine's loop ended) and resumes when it is well."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dispatcher.config import EngineConfig
from dispatcher.daemon import _unhealthy
from dispatcher.engine.engine import Engine
from dispatcher.policy import Policy
from dispatcher.sd_notify import Notifier, Watchdog, monotonic_usec, watchdog_interval
from dispatcher.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent


class Listener:
    """A bound unix datagram socket, as systemd's $NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2)

    def receive(self) -> list[str]:
        return self.sock.recv(4096).decode().split("\n")

    def pending(self) -> list[list[str]]:
        self.sock.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(2)
        return out


@pytest.fixture
def abstract() -> Iterator[tuple[str, Listener]]:
    name = f"tocsin-test-{uuid.uuid4().hex}"
    listener = Listener("\0" + name)
    yield "@" + name, listener
    listener.sock.close()


def test_messages_reach_an_abstract_socket(abstract: tuple[str, Listener]) -> None:
    address, listener = abstract
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready("serving on 127.0.0.1:8080,\n3/3 adapters ready")
    assert listener.receive() == ["READY=1", "STATUS=serving on 127.0.0.1:8080, 3/3 adapters ready"]
    before = monotonic_usec()
    notifier.reloading()
    reloading, stamp = listener.receive()
    assert reloading == "RELOADING=1"
    # CLOCK_MONOTONIC, the clock systemd compares it with.
    assert before <= int(stamp.removeprefix("MONOTONIC_USEC=")) <= monotonic_usec()
    notifier.stopping()
    notifier.watchdog()
    assert listener.receive() == ["STOPPING=1"]
    assert listener.receive() == ["WATCHDOG=1"]
    notifier.close()
    assert not notifier.send("READY=1")


def test_messages_reach_a_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    listener = Listener(str(path))
    notifier = Notifier(str(path))
    notifier.status("starting")
    assert listener.receive() == ["STATUS=starting"]
    listener.sock.close()
    # The manager went away: a lost notification never stops the daemon.
    path.unlink()
    assert not notifier.watchdog()
    assert not notifier.watchdog()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not Notifier("vsock:2:1234").enabled


def test_watchdog_interval_is_half_the_timeout_for_this_process() -> None:
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": pid}) == 0.2
    # Meant for another process (a parent that forked us), or unset, or nonsense: no watchdog.
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


async def test_watchdog_is_fed_only_while_healthy(abstract: tuple[str, Listener]) -> None:
    address, listener = abstract
    reason: list[str | None] = [None]
    watchdog = Watchdog(Notifier(address), 0.05, health=lambda: reason[0], status=lambda: "serving")
    watchdog.ready()
    try:
        assert listener.receive() == ["READY=1", "STATUS=serving"]
        await asyncio.sleep(0.3)
        fed = [m for m in listener.pending() if m == ["WATCHDOG=1"]]
        assert len(fed) >= 4

        reason[0] = "the engine's claim loops stopped"
        await asyncio.sleep(0.1)
        assert ["STATUS=unhealthy: the engine's claim loops stopped"] in listener.pending()
        fed_before = watchdog.fed
        await asyncio.sleep(0.3)
        assert ["WATCHDOG=1"] not in listener.pending()
        assert watchdog.fed == fed_before

        reason[0] = None
        await asyncio.sleep(0.3)
        again = listener.pending()
        assert ["STATUS=serving"] in again
        assert again.count(["WATCHDOG=1"]) >= 4
    finally:
        await watchdog.stop()
    tasks = [t.get_name() for t in asyncio.all_tasks() if not t.done()]
    assert "tocsin-watchdog" not in tasks


async def test_watchdog_reports_the_reason_in_the_status(abstract: tuple[str, Listener]) -> None:
    address, listener = abstract
    watchdog = Watchdog(
        Notifier(address), 30.0, health=lambda: "the planner stopped", status=lambda: "serving"
    )
    watchdog.beat()
    assert listener.pending() == [["STATUS=unhealthy: the planner stopped"]]
    assert watchdog.fed == 0


async def test_health_follows_the_engines_loops(tmp_path: Path) -> None:
    """A real engine: healthy while its claim loops run; when one of them ends (here
    cancelled, as a bug that let a CancelledError escape would end it) the daemon is
    unhealthy and the watchdog is no longer fed."""
    store = await SqliteStore.open(tmp_path / "tocsin.db")
    policy = Policy.model_validate(_toml(ROOT / "config" / "policy.toml"))
    engine = Engine(store, config=EngineConfig(), policy=lambda: policy, adapters=())
    planner: Any = SimpleNamespace(running=True)
    schedules: Any = SimpleNamespace(running=True)
    await engine.start()
    try:
        assert _unhealthy(engine, planner, schedules) is None
        planner.running = False
        assert _unhealthy(engine, planner, schedules) == "the planner stopped"
        planner.running = True
        schedules.running = False
        assert _unhealthy(engine, planner, schedules) == "the schedule runner stopped"
        schedules.running = True
        loop = next(t for t in asyncio.all_tasks() if t.get_name() == "tocsin-engine-sms")
        loop.cancel()
        deadline = time.monotonic() + 5
        while not loop.done():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert _unhealthy(engine, planner, schedules) == "the engine's claim loops stopped"
    finally:
        await engine.stop()
        await store.close()


def _toml(path: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(path.read_text(encoding="utf-8"))

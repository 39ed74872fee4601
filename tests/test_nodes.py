"""Dispatcher nodes on one store: each registers under its own name and beats, a second live
process cannot take a name in use, GET /v1/nodes shows them; the config chooses PostgreSQL by
a DSN that never holds the password itself."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from stores import StoreTarget
from waiting import wait_until

from dispatcher.api.app import ApiDeps, create_app
from dispatcher.config import (
    ApiRole,
    ApiToken,
    CapConfig,
    ConfigError,
    default_node_name,
    hash_token,
    load_config,
)
from dispatcher.nodes import NodePresence, NodeTimings, nodes_view
from dispatcher.store.node_queries import NodeNameInUse
from dispatcher.warning_service import WarningService

ROOT = Path(__file__).resolve().parent.parent
FAST = NodeTimings(heartbeat=0.05, dead_after=30.0)


async def test_nodes_register_beat_and_stop(store_target: StoreTarget) -> None:
    # Two nodes: on PostgreSQL two stores on one database, as two processes would open it.
    first = await store_target.open(node="a")
    second = first if store_target.kind == "sqlite" else await store_target.open(node="b")
    try:
        a = NodePresence(first, name="a", timings=FAST, leading=lambda: True)
        b = NodePresence(second, name="b", timings=FAST)
        await a.start(api_url="http://10.0.0.1:8080")
        await b.start()
        started = {n.name: n.seen_at for n in await first.list_nodes()}
        await wait_until(lambda: _all_beat(second, started), within=10, what="both nodes beat")
        rows = {n.name: n for n in await second.list_nodes()}
        assert set(rows) == {"a", "b"}
        # a's heartbeats say it leads (leading=lambda: True); b's that it does not.
        assert rows["a"].leader_since is not None and rows["b"].leader_since is None
        assert rows["a"].api_url == "http://10.0.0.1:8080"
        assert rows["a"].stopped_at is None and rows["a"].leases == 0
        view = nodes_view(
            list(rows.values()),
            now=max(r.seen_at for r in rows.values()),
            dead_after=30.0,
            leader="a",
            this_node="b",
        )
        assert [(n["name"], n["state"], n["scheduler_leader"]) for n in view["nodes"]] == [
            ("a", "alive", True),
            ("b", "alive", False),
        ]
        await b.stop()
        rows = {n.name: n for n in await first.list_nodes()}
        assert rows["b"].stopped_at is not None and rows["a"].stopped_at is None
        await a.stop()
    finally:
        await first.close()
        if second is not first:
            await second.close()


async def _all_beat(store: Any, started: dict[str, float]) -> bool:
    rows = {n.name: n.seen_at for n in await store.list_nodes()}
    return all(rows.get(name, 0) > at for name, at in started.items())


async def test_a_live_nodes_name_is_refused_and_a_dead_ones_taken(
    store_target: StoreTarget,
) -> None:
    store = await store_target.open(node="a")
    try:
        await store.register_node(
            name="a", host="h1", pid=100, version="1", api_url=None, now=1000.0, dead_after=30
        )
        with pytest.raises(NodeNameInUse, match=r"'a' is in use by h1 pid 100"):
            await store.register_node(
                name="a", host="h2", pid=200, version="1", api_url=None, now=1010.0, dead_after=30
            )
        # The same process starting again (a restart under systemd keeps no pid; a test
        # does) and a name whose holder is silent past dead_after are both fine.
        await store.register_node(
            name="a", host="h1", pid=100, version="1", api_url=None, now=1011.0, dead_after=30
        )
        await store.register_node(
            name="a", host="h2", pid=200, version="2", api_url=None, now=1042.0, dead_after=30
        )
        (row,) = await store.list_nodes()
        assert (row.host, row.pid, row.version, row.started_at) == ("h2", 200, "2", 1042.0)
        # A crashed holder on this host whose process has ended frees the name at once.
        await store.register_node(
            name="a",
            host="h2",
            pid=300,
            version="2",
            api_url=None,
            now=1043.0,
            dead_after=30,
            is_gone=lambda host, pid: (host, pid) == ("h2", 200),
        )
        with pytest.raises(NodeNameInUse):
            await store.register_node(
                name="a",
                host="h2",
                pid=400,
                version="2",
                api_url=None,
                now=1043.5,
                dead_after=30,
                is_gone=lambda host, pid: (host, pid) == ("h2", 200),
            )
        # The process that held the name before learns, at its next beat, that it is not its
        # row any more; the holder's beats go on.
        assert not await store.node_heartbeat("a", host="h2", pid=200, now=1043.2, leader=False)
        assert await store.node_heartbeat("a", host="h2", pid=300, now=1043.2, leader=True)
        # A stopped node's name is free at once.
        await store.node_stopped("a", now=1043.0)
        await store.register_node(
            name="a", host="h3", pid=300, version="2", api_url=None, now=1044.0, dead_after=30
        )
    finally:
        await store.close()


async def test_get_nodes_needs_a_staff_token(
    store_target: StoreTarget, aiohttp_client: Callable[..., Any]
) -> None:
    store = await store_target.open(node="n1")
    presence = NodePresence(store, name="n1", timings=FAST)
    await presence.start()
    tokens = {
        ApiRole.OPERATOR: "operator-token-0123456789abcdef",
        ApiRole.DUTY_OFFICER: "duty-token-0123456789abcdef",
        ApiRole.GRID_MEMBER: "member-token-0123456789abcdef",
    }
    api_tokens = [
        ApiToken(
            role.value, role, SecretStr(hash_token(t)), "p1" if role == "grid_member" else None
        )
        for role, t in tokens.items()
    ]

    async def nodes() -> dict[str, Any]:
        return nodes_view(
            await store.list_nodes(), now=1e12, dead_after=30.0, leader=None, this_node="n1"
        )

    app = create_app(
        ApiDeps(
            store=store,
            warnings=WarningService(
                store, CapConfig(sender="t@tocsin"), on_created=lambda _id: None
            ),
            tokens=lambda: api_tokens,
            max_body_bytes=65536,
            ready=lambda: True,
            registry=CollectorRegistry(),
            nodes=nodes,
        )
    )
    client = await aiohttp_client(app)
    try:
        assert (await client.get("/v1/nodes")).status == 401
        member = {"Authorization": f"Bearer {tokens[ApiRole.GRID_MEMBER]}"}
        assert (await client.get("/v1/nodes", headers=member)).status == 403
        operator = {"Authorization": f"Bearer {tokens[ApiRole.OPERATOR]}"}
        response = await client.get("/v1/nodes", headers=operator)
        assert response.status == 200
        body = await response.json()
        assert body["this_node"] == "n1" and body["scheduler_leader"] is None
        # now=1e12: long past dead_after since the node's last beat.
        assert [(n["name"], n["state"], n["leases"]) for n in body["nodes"]] == [("n1", "gone", 0)]
    finally:
        await presence.stop()
        await store.close()


def _config(tmp_path: Path, store: str) -> Path:
    shutil.copy(ROOT / "config" / "policy.toml", tmp_path / "policy.toml")
    path = tmp_path / "tocsin.toml"
    path.write_text(f'{store}\n[policy]\nfile = "policy.toml"\n', encoding="utf-8")
    return path


def test_a_dsn_with_a_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = _config(tmp_path, '[store]\ndsn = "postgresql://tocsin:hunter2@db/tocsin"')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert "store: Value error, dsn: holds a password" in problem or "store: dsn: holds" in problem
    assert "hunter2" not in problem


def test_the_password_comes_from_a_secret_and_stays_out_of_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOCSIN_DB_PASSWORD", "s3cret word")
    path = _config(
        tmp_path,
        '[store]\ndsn = "host=db1 dbname=tocsin user=tocsin"\n'
        'password_secret = "env:TOCSIN_DB_PASSWORD"\n[node]\nname = "tocsin-a"',
    )
    config = load_config(path)
    assert config.store_dsn is not None
    assert "password='s3cret word'" in config.store_dsn.get_secret_value()
    assert "s3cret" not in config.store_location and "s3cret" not in repr(config)
    assert sorted(config.store_location.split()) == ["dbname=tocsin", "host=db1", "user=tocsin"]
    assert config.node_name == "tocsin-a"


def test_sqlite_stays_the_default_and_the_node_is_the_host(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, ""))
    assert config.store_dsn is None and config.store_location.endswith("var/tocsin.db")
    assert config.node_name == default_node_name()
    assert socket.gethostname().startswith(config.node_name)


def test_the_default_node_name_is_a_valid_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "dispatch 1.county.example.org")
    assert default_node_name() == "dispatch-1"
    monkeypatch.setattr(socket, "gethostname", lambda: "x" * 80)
    assert default_node_name() == "x" * 56


def test_a_bad_node_name_is_named(tmp_path: Path) -> None:
    path = _config(tmp_path, '[node]\nname = "a b"')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any("node.name" in p for p in info.value.problems)

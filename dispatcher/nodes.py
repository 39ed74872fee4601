"""This dispatcher node among the others on one database: its row in the ``nodes`` table,
kept fresh by a heartbeat, and what ``GET /v1/nodes`` shows of all of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import structlog

from dispatcher.store.connections import StoreUnavailable
from dispatcher.store.node_queries import NodeRow
from dispatcher.store.sql_store import SqlStore

log = structlog.get_logger("tocsin.nodes")


def tocsin_version() -> str:
    try:
        return metadata.version("tocsin")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class NodeTimings:
    heartbeat: float
    dead_after: float


class NodePresence:
    """Registers the node at start, beats while it runs, and marks it stopped at the end."""

    def __init__(
        self,
        store: SqlStore,
        *,
        name: str,
        timings: NodeTimings,
        leading: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._store = store
        self._timings = timings
        #: Whether this node leads the schedules now (set once the schedule runner starts).
        self.leading = leading
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._name_lost = False
        self.api_url: str | None = None

    async def start(self, *, api_url: str | None = None) -> None:
        self.api_url = api_url
        await self._store.register_node(
            name=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=tocsin_version(),
            api_url=api_url,
            now=self._clock(),
            dead_after=self._timings.dead_after,
            is_gone=_ended_here,
        )
        self._task = asyncio.create_task(self._beat(), name=f"tocsin-node-heartbeat-{self.name}")
        log.info("node registered", node=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self._store.node_stopped(self.name, now=self._clock())
        except StoreUnavailable as exc:
            log.warning("node stop not recorded", node=self.name, error=str(exc))

    async def _beat(self) -> None:
        failing_since: float | None = None
        while True:
            await asyncio.sleep(self._timings.heartbeat)
            try:
                ours = await self._store.node_heartbeat(
                    self.name,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    now=self._clock(),
                    leader=self.leading(),
                )
                if not ours and not self._name_lost:
                    # Silent past dead_after (a long outage, a stalled host), and another
                    # process took the name: two nodes of one name would take back each
                    # other's leases at their next start. Said once, loudly.
                    log.error(
                        "node name taken over by another process: stop this node or the "
                        "other, or give them different names",
                        node=self.name,
                    )
                self._name_lost = not ours
            except StoreUnavailable as exc:
                # The database is away (a restart): the next beat tries again.
                log.warning("node heartbeat failed", node=self.name, error=str(exc))
                if failing_since is None:
                    failing_since = self._clock()
            else:
                if failing_since is not None:
                    # The outage's end, as its start is logged: operators see both.
                    log.info(
                        "node heartbeat back",
                        node=self.name,
                        seconds_failing=round(self._clock() - failing_since, 1),
                    )
                    failing_since = None


def _ended_here(host: str, pid: int) -> bool:
    """The process ``pid`` on this host has ended (on another host we cannot know)."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def nodes_view(
    rows: list[NodeRow],
    *,
    now: float,
    dead_after: float,
    leader: str | None,
    this_node: str | None,
) -> dict[str, Any]:
    """The body of ``GET /v1/nodes``."""

    def state(row: NodeRow) -> str:
        if row.stopped_at is not None:
            return "stopped"
        return "alive" if now - row.seen_at < dead_after else "gone"

    return {
        "this_node": this_node,
        "scheduler_leader": leader,
        "nodes": [
            {
                "name": row.name,
                "state": state(row),
                "host": row.host,
                "pid": row.pid,
                "version": row.version,
                "api_url": row.api_url,
                "started_at": _iso(row.started_at),
                "seen_at": _iso(row.seen_at),
                "seen_seconds_ago": round(max(0.0, now - row.seen_at), 1),
                "stopped_at": None if row.stopped_at is None else _iso(row.stopped_at),
                "leases": row.leases,
                "lease_expires_at": None
                if row.lease_expires_at is None
                else _iso(row.lease_expires_at),
                "scheduler_leader": row.name == leader,
                "leader_since": None if row.leader_since is None else _iso(row.leader_since),
            }
            for row in rows
        ],
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

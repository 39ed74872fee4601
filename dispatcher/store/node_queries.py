"""The dispatcher nodes working on this store: each keeps a row (its heartbeat), and the
leases each holds are counted from the deliveries it is sending."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dispatcher.store.connections import Db, StoreConnections


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    host: str
    pid: int
    version: str
    api_url: str | None
    started_at: float
    seen_at: float
    stopped_at: float | None
    #: Deliveries this node is sending now (leases in state 'sending').
    leases: int
    #: When the oldest of those leases runs out (None: no lease).
    lease_expires_at: float | None
    #: Since when the node has led the schedules, as its heartbeats say (None: it does not).
    leader_since: float | None = None


class NodeNameInUse(RuntimeError):
    """Another live node already goes by this name."""


class NodeQueries(StoreConnections):
    async def register_node(
        self,
        *,
        name: str,
        host: str,
        pid: int,
        version: str,
        api_url: str | None,
        now: float,
        dead_after: float,
        is_gone: Callable[[str, int], bool] = lambda host, pid: False,
    ) -> None:
        """Say this node is up. Refused while another process, heard from within
        ``dead_after``, holds the name — two nodes of one name would take each other's leases
        back at start — unless ``is_gone(host, pid)`` knows that process has ended (a node
        restarted on the same host after a crash)."""

        def run(conn: Db) -> None:
            row = conn.execute(
                "SELECT host, pid, seen_at, stopped_at FROM nodes WHERE name = ?", (name,)
            ).fetchone()
            if row is not None:
                other_host, other_pid, seen_at, stopped_at = row
                same = other_host == host and int(other_pid) == pid
                recent = now - float(seen_at) < dead_after
                if (
                    not same
                    and stopped_at is None
                    and recent
                    and not is_gone(other_host, int(other_pid))
                ):
                    raise NodeNameInUse(
                        f"node name {name!r} is in use by {other_host} pid {other_pid}, heard "
                        f"from {now - float(seen_at):.0f} s ago; give each node its own "
                        "[node] name (or tocsin serve --node NAME)"
                    )
            conn.execute(
                "INSERT INTO nodes (name, host, pid, version, api_url, started_at, seen_at, "
                "stopped_at, leader_since) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL) "
                "ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
                "version = excluded.version, api_url = excluded.api_url, "
                "started_at = excluded.started_at, seen_at = excluded.seen_at, "
                "stopped_at = NULL, leader_since = NULL",
                (name, host, pid, version, api_url, now, now),
            )

        await self._write_tx(run)

    async def node_heartbeat(
        self, name: str, *, host: str, pid: int, now: float, leader: bool
    ) -> bool:
        """Say this node is alive; False when the name's row is another process's now (this
        node was silent past dead_after and another took the name)."""

        def run(conn: Db) -> bool:
            beat = conn.execute(
                "UPDATE nodes SET seen_at = ?, leader_since = CASE WHEN ? = 0 THEN NULL "
                "ELSE coalesce(leader_since, ?) END WHERE name = ? AND host = ? AND pid = ?",
                (now, int(leader), now, name, host, pid),
            )
            return beat.rowcount == 1

        # Beside the writer: a node busy with a fan-out must not look gone because its
        # heartbeat waits behind the bulk writes queued on its writer (and, on PostgreSQL,
        # behind other nodes' writes for the writer lock, which this statement does not need).
        return await self._write_aside(run)

    async def node_stopped(self, name: str, *, now: float) -> None:
        def run(conn: Db) -> None:
            conn.execute(
                "UPDATE nodes SET seen_at = ?, stopped_at = ?, leader_since = NULL WHERE name = ?",
                (now, now, name),
            )

        await self._write(run)

    async def list_nodes(self) -> list[NodeRow]:
        def run(conn: Db) -> list[NodeRow]:
            leases = {
                name: (int(n), float(first))
                for name, n, first in conn.execute(
                    # The in-flight index's condition, then the leased ones among them.
                    "SELECT leased_by, count(*), min(due_at) FROM deliveries "
                    "WHERE state IN ('sending','sent','delivered') AND state = 'sending' "
                    "GROUP BY leased_by"
                )
            }
            rows = conn.execute(
                "SELECT name, host, pid, version, api_url, started_at, seen_at, stopped_at, "
                "leader_since FROM nodes ORDER BY name"
            ).fetchall()
            return [
                NodeRow(
                    name=r[0],
                    host=r[1],
                    pid=int(r[2]),
                    version=r[3],
                    api_url=r[4],
                    started_at=float(r[5]),
                    seen_at=float(r[6]),
                    stopped_at=None if r[7] is None else float(r[7]),
                    leases=leases.get(r[0], (0, 0.0))[0],
                    lease_expires_at=leases[r[0]][1] if r[0] in leases else None,
                    leader_since=None if r[8] is None else float(r[8]),
                )
                for r in rows
            ]

        return await self._read(run)

"""Which node fires the schedules: one leader among the nodes on a PostgreSQL database.

The leader is the node holding a PostgreSQL *session* advisory lock (:data:`SCHEDULER_LOCK`)
on a connection of its own, named ``tocsin <node> scheduler``. Every node tries
``pg_try_advisory_lock`` every ``check_every`` seconds (``[node] leader_check``); the one that
gets it leads until its session ends. The leader checks its session on the same beat: a query
that fails (the connection dropped, the server restarted) means the lock is gone, and the node
stops firing schedules until it holds the lock again.

Failover: PostgreSQL frees a session lock the moment the holder's connection dies — a node
that exits, crashes or is killed closes its socket, and the server ends the session at once —
so another node is elected within ``check_every``. A node whose host vanishes without closing
its socket (power lost, network cut) is noticed by the server's TCP keepalives, which this
connection sets to a few ``check_every``\\ s (``tcp_keepalives_*``, ``tcp_user_timeout``), so
the takeover then takes that long more. The client side has keepalives too, so the old leader
notices it is cut off and stops leading.

Two nodes may both believe they lead for a moment (the old one until its next check notices
the loss): the schedule runs' unique (schedule_id, fire_at) key is what makes each fire time
run once, whichever nodes fire it (:mod:`dispatcher.store.schedule_queries`). The lock only
keeps the work on one node.

On SQLite there is one node: it always leads. The lock needs a real session: a connection
pooler in transaction mode (PgBouncer's default) between the nodes and PostgreSQL cannot hold
it — the nodes must reach PostgreSQL directly or through session pooling.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

from dispatcher.store.connections import Db, StoreConnections

log = structlog.get_logger(__name__)

#: The session advisory lock the scheduler leader holds. Fixed and arbitrary, distinct from
#: the writer lock (pg_connection.WRITER_LOCK, 0x70C51E01) and the migrations' lock
#: (migrations.MIGRATION_LOCK, 0x70C51E00).
SCHEDULER_LOCK = 0x70C5_1E02
#: How often a node tries to take the lead, and the leader checks it still holds it.
DEFAULT_CHECK_EVERY = 2.0

#: Who holds the lock on this database: pg_locks splits a bigint advisory key into classid
#: (high 32 bits) and objid (low 32 bits), with objsubid 1.
_LEADER_SQL = (
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid::bigint = ? AND l.objid::bigint = ?"
)
_HELD_SQL = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
    "AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s"
)
_KEY = (SCHEDULER_LOCK >> 32, SCHEDULER_LOCK & 0xFFFF_FFFF)


def application_name(node: str) -> str:
    """The leader connection's name in pg_stat_activity (PostgreSQL keeps 63 bytes of it)."""
    return f"tocsin {node} scheduler"


def node_of(name: str) -> str:
    """The node in an :func:`application_name` (node names hold no spaces)."""
    rest = name.removeprefix("tocsin ")
    return rest.split(" ", 1)[0]


def read_leader(conn: Db) -> str | None:
    """The node holding the scheduler lock on ``conn``'s database, or None (PostgreSQL)."""
    row = conn.execute(_LEADER_SQL, _KEY).fetchone()
    return node_of(str(row[0])) if row is not None else None


class SchedulerLeader:
    """This node's part in electing the scheduler leader.

    :meth:`start` makes the first attempt before it returns (a lone node leads from the
    start), then keeps checking every ``check_every`` seconds on the event loop (psycopg's
    AsyncConnection: nothing blocks the loop). While this node leads, :attr:`elected` is set;
    when it loses the lock, :attr:`lost` is set instead. Listeners added with
    :meth:`subscribe` are called with True/False at each change.

    A node that lost the lock with its connection waits ``rejoin_after`` seconds (default:
    ``check_every``) before it tries again, so that a node whose connection did not fail takes
    over first.
    """

    def __init__(
        self,
        store: StoreConnections,
        *,
        node: str | None = None,
        check_every: float = DEFAULT_CHECK_EVERY,
        rejoin_after: float | None = None,
    ) -> None:
        """``store``: a PostgresStore (its ``dsn`` is used) or a SqliteStore (this node always
        leads); ``node``: this node's name (default: the store's ``node``)."""
        if check_every <= 0:
            raise ValueError("check_every must be positive")
        self._store = store
        self.dsn: str | None = getattr(store, "dsn", None)
        self.node: str = node or getattr(store, "node", None) or "tocsin"
        self.check_every = check_every
        self.rejoin_after = check_every if rejoin_after is None else rejoin_after
        #: Set while this node leads.
        self.elected = asyncio.Event()
        #: Set once this node has lost the lead it held (cleared when it is elected again).
        self.lost = asyncio.Event()
        #: When this node last became the leader (unix time), None while it does not lead.
        self.since: float | None = None
        #: Checks made (tests wait on it).
        self.checks = 0
        self._listeners: list[Callable[[bool], None]] = []
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._rejoin_at = 0.0
        self._failing = False

    @property
    def leading(self) -> bool:
        return self.elected.is_set()

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(True)`` when this node is elected, ``listener(False)`` when it
        loses the lead (on the event loop; it must not block)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        if self._task is not None or (self.dsn is None and self.leading):
            return
        if self.dsn is None:
            self._set(True)
            return
        await self._check_once()
        self._task = asyncio.get_running_loop().create_task(
            self._keep_checking(), name=f"scheduler leader {self.node}"
        )

    async def stop(self) -> None:
        """Give up the lead (the lock goes with the connection) and stop checking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_connection()
        if self.leading:
            self.elected.clear()
            self.since = None
            log.info("scheduler lead given up", node=self.node)
            self._tell(False)

    async def current_leader(self) -> str | None:
        """The node that leads the scheduler now (None: none does) — from PostgreSQL's lock
        table, so every node reads the same; on SQLite, this node."""
        if self.dsn is None:
            return self.node
        return await self._store._read(read_leader)

    # -- the checks ---------------------------------------------------------------------------
    async def _keep_checking(self) -> None:
        while True:
            await asyncio.sleep(self.check_every)
            await self._check_once()

    async def _check_once(self) -> None:
        try:
            # Bounded: a check that hangs (a cut network) counts as a lost session.
            held = await asyncio.wait_for(self._check(), timeout=max(self.check_every, 5.0))
        except Exception as exc:  # psycopg.Error, OSError, TimeoutError: the session is lost
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if not self._failing:
                # Once per outage, not at every check.
                log.warning("scheduler leader connection failed", node=self.node, reason=reason)
            self._failing = True
            await self._drop_connection()
            held = False
        else:
            if self._failing and self._conn is not None:
                log.info("scheduler leader connection back", node=self.node)
                self._failing = False
        self.checks += 1
        if self.leading and not held:
            self._rejoin_at = time.monotonic() + self.rejoin_after
        self._set(held)

    async def _check(self) -> bool:
        if self._conn is None or self._conn.closed or self._conn.broken:
            await self._drop_connection()
            if self.leading or time.monotonic() < self._rejoin_at:
                # The lock went with the session.
                return False
            self._conn = await self._connect()
        conn = self._conn
        if self.leading:
            # The lock lasts as long as the session; a session that answers still holds it.
            cursor = await conn.execute(_HELD_SQL, _KEY)
            row = await cursor.fetchone()
            return row is not None and int(row[0]) > 0
        if time.monotonic() < self._rejoin_at:
            return False
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (SCHEDULER_LOCK,))
        row = await cursor.fetchone()
        return bool(row is not None and row[0])

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self.dsn is None:
            raise RuntimeError("a SQLite store has no scheduler lock")
        idle, interval, count = _keepalive(self.check_every)
        given = conninfo_to_dict(self.dsn)
        # Client side: notice a server that vanished (unless the DSN says otherwise).
        client: dict[str, Any] = {
            "keepalives": 1,
            "keepalives_idle": idle,
            "keepalives_interval": interval,
            "keepalives_count": count,
            "tcp_user_timeout": (idle + interval * count) * 1000,
            "connect_timeout": max(2, math.ceil(self.check_every)),
        }
        options = {k: v for k, v in client.items() if k not in given}
        conn = await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            application_name=application_name(self.node),
            **options,
        )
        try:
            # Server side: end a vanished leader's session (and free the lock) soon, and never
            # end an idle one for being idle (idle_session_timeout: PostgreSQL 14 and later).
            settings = (
                f"SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval}; "
                f"SET tcp_keepalives_count = {count}; "
                f"SET tcp_user_timeout = {(idle + interval * count) * 1000}"
            )
            if conn.info.server_version >= 140000:
                settings += "; SET idle_session_timeout = 0"
            await conn.execute(settings)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2.0)

    def _set(self, held: bool) -> None:
        if held == self.leading:
            return
        if held:
            self.lost.clear()
            self.since = time.time()
            self.elected.set()
            log.info("scheduler leader elected", node=self.node)
        else:
            self.elected.clear()
            self.since = None
            self.lost.set()
            log.warning("scheduler lead lost: this node stops firing schedules", node=self.node)
        self._tell(held)

    def _tell(self, held: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(held)
            except Exception:
                log.exception("scheduler leader listener failed", node=self.node)


def _keepalive(check_every: float) -> tuple[int, int, int]:
    """TCP keepalive idle, interval (s) and count: a dead peer is noticed within about
    2 × check_every (at least 4 s)."""
    idle = max(1, math.ceil(check_every))
    interval = max(1, math.ceil(check_every / 3))
    return idle, interval, 3

"""The PostgreSQL store's connections, shaped like the SQLite store's: per node, one writer
connection on one thread (urgent work first) and one reader connection on another.

Across nodes, write transactions take one advisory lock (see
:data:`dispatcher.store.pg_connection.WRITER_LOCK`), so the store's write logic runs as it
does on SQLite — one transaction at a time — while claims run side by side on row locks.
A transaction that PostgreSQL aborts as a deadlock victim or serialization failure is run
again; a lost connection raises :class:`StoreUnavailable` and is opened anew on the next call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import psycopg
import structlog

from dispatcher.store.connections import Db, StoreConnections, StoreUnavailable
from dispatcher.store.pg_connection import PgConnection
from dispatcher.store.sqlite_writer import NORMAL, URGENT, PriorityWriter

T = TypeVar("T")

log = structlog.get_logger("tocsin.store")

#: How often a transaction PostgreSQL rolled back to break a deadlock is run again.
_RERUNS = 8


def redact_dsn(dsn: str) -> str:
    """``dsn`` without its password, for logs and errors."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable dsn>"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **{k: v for k, v in info.items() if v is not None})


class PgConnections(StoreConnections):
    _skip_locked = " FOR UPDATE SKIP LOCKED"
    _planner_hints = False

    def __init__(
        self, dsn: str, writer: PriorityWriter, reader: ThreadPoolExecutor, *, node: str
    ) -> None:
        self.dsn = dsn
        self.node = node
        self._writer_pool = writer
        self._reader_pool = reader
        # Small writes beside the writer (heartbeats): their own thread and connection.
        self._aside_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tocsin-pg-aside")
        self._wconn: PgConnection | None = None
        self._rconn: PgConnection | None = None
        self._aconn: PgConnection | None = None
        self._closed = False
        self._lock = threading.Lock()

    # -- connections, opened on their own thread -------------------------------------------
    def _connect(self, role: str) -> PgConnection:
        try:
            return PgConnection.connect(self.dsn, application_name=f"tocsin {self.node} {role}")
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"PostgreSQL at {redact_dsn(self.dsn)} cannot be reached: {_first_line(exc)}"
            ) from exc

    def _writer_conn(self) -> PgConnection:
        if self._closed:
            raise RuntimeError("store is closed")
        if self._wconn is None or self._wconn.broken:
            self._wconn = self._connect("writer")
        return self._wconn

    def _reader_conn(self) -> PgConnection:
        if self._closed:
            raise RuntimeError("store is closed")
        if self._rconn is None or self._rconn.broken:
            conn = self._connect("reader")
            # A read transaction (BEGIN … COMMIT: a page of the log, a coverage roll-up) sees
            # one snapshot, as on SQLite; at READ COMMITTED each statement would see its own.
            # Reads only: a repeatable-read transaction that writes nothing never fails.
            try:
                conn.raw.execute("SET default_transaction_isolation = 'repeatable read'")
            except psycopg.OperationalError as exc:
                conn.close()
                raise StoreUnavailable(
                    f"lost the connection to PostgreSQL: {_first_line(exc)}"
                ) from exc
            self._rconn = conn
        return self._rconn

    def _aside_conn(self) -> PgConnection:
        if self._closed:
            raise RuntimeError("store is closed")
        if self._aconn is None or self._aconn.broken:
            self._aconn = self._connect("aside")
        return self._aconn

    def _run(self, conn_of: Callable[[], PgConnection], fn: Callable[[PgConnection], T]) -> T:
        for attempt in range(1, _RERUNS + 1):
            conn = conn_of()
            try:
                return fn(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if conn.broken:
                    conn.close()
                    raise StoreUnavailable(
                        f"lost the connection to PostgreSQL: {_first_line(exc)}"
                    ) from exc
                if conn.in_transaction:
                    conn.raw.execute("ROLLBACK")
                # Class 40 (a deadlock victim, a serialization failure): nothing was committed,
                # and running the transaction again is what PostgreSQL asks for.
                if not _rolled_back(exc) or attempt == _RERUNS:
                    raise
                log.info("store transaction run again", reason=_first_line(exc), attempt=attempt)
            except BaseException:
                if conn.in_transaction and not conn.broken:
                    conn.raw.execute("ROLLBACK")
                raise
        raise AssertionError("unreachable")

    # -- StoreConnections ---------------------------------------------------------------------
    async def _write(self, fn: Callable[[Db], T], *, urgent: bool = False) -> T:
        return await self._on_writer(fn, urgent=urgent)

    async def _on_writer(self, fn: Callable[[PgConnection], T], *, urgent: bool) -> T:
        future = self._writer_pool.submit_with(
            URGENT if urgent else NORMAL, self._run, self._writer_conn, fn
        )
        return await asyncio.wrap_future(future)

    async def _write_tx(
        self, fn: Callable[[Db], T], *, urgent: bool = False, exclusive: bool = True
    ) -> T:
        def run(conn: PgConnection) -> T:
            if exclusive:
                conn.execute("BEGIN IMMEDIATE")
            else:
                conn.begin_claim()
            result = fn(conn)
            conn.execute("COMMIT")
            return result

        return await self._on_writer(run, urgent=urgent)

    async def _write_aside(self, fn: Callable[[Db], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._aside_pool, self._run, self._aside_conn, fn
        )

    async def _read(self, fn: Callable[[Db], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._reader_pool, self._run, self._reader_conn, fn
        )

    # -- closing --------------------------------------------------------------------------------
    async def _close_connections(self) -> None:
        loop = asyncio.get_running_loop()

        def close_writer() -> None:
            self._closed = True
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None

        def close_reader() -> None:
            if self._rconn is not None:
                self._rconn.close()
                self._rconn = None

        def close_aside() -> None:
            if self._aconn is not None:
                self._aconn.close()
                self._aconn = None

        await loop.run_in_executor(self._writer_pool, close_writer)
        await loop.run_in_executor(self._reader_pool, close_reader)
        await loop.run_in_executor(self._aside_pool, close_aside)
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)
        self._aside_pool.shutdown(wait=True)


def _rolled_back(exc: BaseException) -> bool:
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and state.startswith("40")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

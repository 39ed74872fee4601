"""SQLite (WAL) store: the embedded default.

One writer connection on its own thread serialises every write; one reader connection on another
thread serves reads concurrently (WAL lets readers run beside the writer). The event loop never
blocks on the database.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dispatcher.store.migrations import migrate_sqlite
from dispatcher.store.sql_store import SqlStore
from dispatcher.store.sqlite_base import SqliteConnections
from dispatcher.store.sqlite_writer import PriorityWriter


class _StringAgg:
    """PostgreSQL's ``string_agg(value, separator)`` (SQLite has it only from 3.44)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.separator = ","

    def step(self, value: Any, separator: str) -> None:
        if value is not None:
            self.parts.append(str(value))
            self.separator = separator

    def finalize(self) -> str | None:
        return self.separator.join(self.parts) if self.parts else None


def _greatest(*values: Any) -> Any:
    present = [v for v in values if v is not None]  # as PostgreSQL: NULLs are ignored
    return max(present) if present else None


def _least(*values: Any) -> Any:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def connect(path: Path | str) -> sqlite3.Connection:
    """Open a connection with Tocsin's pragmas (autocommit mode: transactions are explicit),
    and the functions the store's SQL shares with PostgreSQL that SQLite spells otherwise."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes in WAL mode
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -65536")  # 64 MiB page cache per connection
    conn.create_function("greatest", -1, _greatest, deterministic=True)
    conn.create_function("least", -1, _least, deterministic=True)
    # typeshed knows only one-argument aggregates.
    conn.create_aggregate("string_agg", 2, _StringAgg)  # type: ignore[arg-type]
    return conn


class SqliteStore(SqlStore, SqliteConnections):
    """The :class:`dispatcher.store.base.Store` on one SQLite file."""

    @classmethod
    async def open(cls, path: Path | str, *, node: str = "tocsin") -> SqliteStore:
        """Open (creating if needed) and migrate the database."""
        db_path = Path(path)
        if str(db_path) != ":memory:":
            db_path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(
            db_path,
            PriorityWriter(),
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="tocsin-sqlite-reader"),
        )
        store.node = node
        loop = asyncio.get_running_loop()

        def open_writer() -> None:
            store._wconn = connect(db_path)
            migrate_sqlite(store._wconn)

        def open_reader() -> None:
            store._rconn = connect(db_path)

        await loop.run_in_executor(store._writer_pool, open_writer)
        await loop.run_in_executor(store._reader_pool, open_reader)
        return store

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._wconn is not None:
            conn = self._wconn
            self._wconn = None
            await loop.run_in_executor(self._writer_pool, _optimize_and_close, conn)
        if self._rconn is not None:
            conn = self._rconn
            self._rconn = None
            await loop.run_in_executor(self._reader_pool, conn.close)
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)


def _optimize_and_close(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("PRAGMA optimize")
    finally:
        conn.close()

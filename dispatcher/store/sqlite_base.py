"""The SQLite store's connections: one writer thread serialises every write, one reader thread
serves reads beside it (WAL). The store's parts (warnings, engine, log) share these."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from dispatcher.store.sqlite_writer import NORMAL, URGENT, PriorityWriter

T = TypeVar("T")


class SqliteConnections:
    def __init__(self, path: Path, writer: PriorityWriter, reader: ThreadPoolExecutor) -> None:
        self.path = path
        self._writer_pool = writer
        self._reader_pool = reader
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None

    async def _write(self, fn: Callable[[sqlite3.Connection], T], *, urgent: bool = False) -> T:
        """Run ``fn`` on the writer thread; ``urgent`` work (a new warning, its first plan
        stage, loudspeaker commands) goes before queued bulk work."""
        conn = self._wconn
        if conn is None:
            raise RuntimeError("store is closed")
        future = self._writer_pool.submit_with(URGENT if urgent else NORMAL, fn, conn)
        return await asyncio.wrap_future(future)

    async def _write_tx(self, fn: Callable[[sqlite3.Connection], T], *, urgent: bool = False) -> T:
        """:meth:`_write` inside one ``BEGIN IMMEDIATE`` transaction: committed when ``fn``
        returns, rolled back when it raises."""

        def run(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._write(run, urgent=urgent)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._rconn
        if conn is None:
            raise RuntimeError("store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn, conn)

"""The SQLite store's connections: one writer thread serialises every write, one reader thread
serves reads beside it (WAL). The store's parts (warnings, engine, log) share these."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from dispatcher.store.connections import Db, StoreConnections
from dispatcher.store.sqlite_writer import NORMAL, URGENT, PriorityWriter

T = TypeVar("T")


class SqliteConnections(StoreConnections):
    def __init__(self, path: Path, writer: PriorityWriter, reader: ThreadPoolExecutor) -> None:
        self.path = path
        self._writer_pool = writer
        self._reader_pool = reader
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None

    async def _write(self, fn: Callable[[Db], T], *, urgent: bool = False) -> T:
        conn = self._wconn
        if conn is None:
            raise RuntimeError("store is closed")
        future = self._writer_pool.submit_with(URGENT if urgent else NORMAL, fn, conn)
        return await asyncio.wrap_future(future)

    async def _write_tx(
        self, fn: Callable[[Db], T], *, urgent: bool = False, exclusive: bool = True
    ) -> T:
        # One writer thread: every transaction is exclusive (BEGIN IMMEDIATE takes the lock
        # at once rather than at the first write, so it never fails half way with BUSY).
        def run(conn: Db) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._write(run, urgent=urgent)

    async def _read(self, fn: Callable[[Db], T]) -> T:
        conn = self._rconn
        if conn is None:
            raise RuntimeError("store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn, conn)

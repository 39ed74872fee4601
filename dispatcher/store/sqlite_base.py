"""The SQLite store's connections: one writer thread serialises every write, one reader thread
serves reads beside it (WAL). The store's parts (warnings, engine, log) share these."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SqliteConnections:
    def __init__(self, path: Path, writer: ThreadPoolExecutor, reader: ThreadPoolExecutor) -> None:
        self.path = path
        self._writer_pool = writer
        self._reader_pool = reader
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._wconn
        if conn is None:
            raise RuntimeError("store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, fn, conn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._rconn
        if conn is None:
            raise RuntimeError("store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn, conn)

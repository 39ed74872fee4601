"""PostgreSQL store: several dispatcher nodes on one database.

Chosen by a DSN in the config (``[store] dsn``). The queries are the SQLite store's (see
:mod:`dispatcher.store.connections`); what differs is how a node connects and how nodes share
the work: write transactions take one advisory lock across nodes, claims take rows with
``FOR UPDATE SKIP LOCKED`` beside each other (:mod:`dispatcher.store.pg_base`).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from dispatcher.store.migrations import migrate_postgres
from dispatcher.store.pg_base import PgConnections
from dispatcher.store.sql_store import SqlStore
from dispatcher.store.sqlite_writer import PriorityWriter


class PostgresStore(SqlStore, PgConnections):
    """The :class:`dispatcher.store.base.Store` on a PostgreSQL database."""

    @classmethod
    async def open(cls, dsn: str, *, node: str = "tocsin") -> PostgresStore:
        """Connect and migrate (nodes starting together migrate one at a time)."""
        store = cls(
            dsn,
            PriorityWriter(name="tocsin-pg-writer"),
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="tocsin-pg-reader"),
            node=node,
        )
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                store._writer_pool, lambda: migrate_postgres(store._writer_conn())
            )
            await loop.run_in_executor(store._reader_pool, store._reader_conn)
        except BaseException:
            await store._close_connections()
            raise
        return store

    async def close(self) -> None:
        await self._close_connections()

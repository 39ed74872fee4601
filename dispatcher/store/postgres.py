"""PostgreSQL store: several dispatcher nodes on one database.

Chosen by a DSN in the config (``[store] dsn``). The queries are the SQLite store's (see
:mod:`dispatcher.store.connections`); what differs is how a node connects and how nodes share
the work: write transactions take one advisory lock across nodes, claims take rows with
``FOR UPDATE SKIP LOCKED`` beside each other (:mod:`dispatcher.store.pg_base`).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import structlog

from dispatcher.store.migrations import migrate_postgres
from dispatcher.store.pg_base import PgConnections
from dispatcher.store.sql_store import SqlStore
from dispatcher.store.sqlite_writer import PriorityWriter

log = structlog.get_logger("tocsin.store")


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
            await loop.run_in_executor(store._writer_pool, store._migrate)
            await loop.run_in_executor(store._reader_pool, store._reader_conn)
        except BaseException:
            await store._close_connections()
            raise
        return store

    async def close(self) -> None:
        await self._close_connections()

    def _migrate(self) -> None:
        conn = self._writer_conn()
        migrate_postgres(conn)
        row = conn.execute(
            "SELECT datcollate FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        collation = row[0] if row is not None else "C"
        if str(collation).split(".")[0] not in ("C", "POSIX"):
            # Cursors and ranges compare ids and codes as text: in code-point order on SQLite
            # and under the C collation; a language's collation orders (and pages) otherwise.
            log.warning(
                "the database's collation is not C: lists are ordered differently than on "
                "SQLite and LIKE prefixes cannot use plain indexes; create the database with "
                "LC_COLLATE 'C' (docs/deployment.md)",
                collation=str(collation),
            )

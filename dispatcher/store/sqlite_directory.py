"""The directory on SQLite: what the CSV importer writes through and the exporter reads from.

The SQL is :class:`dispatcher.store.directory_base.SqlDirectory`'s; this module says how it
runs on one connection from :func:`dispatcher.store.sqlite.connect`: the importer's staging
file is ATTACHed as ``staging`` (scratch tables go there too), a long apply steps aside now and
then so the daemon's writer is never starved, and the WAL is checkpointed after each chunk.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dispatcher.store.directory_base import SqlDirectory
from dispatcher.store.migrations import migrate_sqlite
from dispatcher.store.sqlite import connect

#: Applying a staged file: after this long of back-to-back chunks, step aside for this long.
#: SQLite's busy handler sleeps at most 100 ms between attempts, so a writer that was waiting
#: gets the lock in the pause at the latest: it waits at most about one burst plus one chunk.
#: The pauses cost about a third of the apply time, a few seconds for 2 million rows.
_BURST_SECONDS = 0.25
_PAUSE_SECONDS = 0.15


class SqliteDirectory(SqlDirectory):
    """The directory tables of one SQLite database."""

    conn: sqlite3.Connection

    _STORE = "main."
    # SQLite compares text as bytes: UTF-8 byte order is code point order.
    _BINARY = ""
    # The built-in aggregate: the store's string_agg is a Python one, slower over 2M persons.
    _CONCAT = "group_concat"
    _NUMBERED = "n INTEGER PRIMARY KEY"
    _KEYED = " WITHOUT ROWID"
    #: About 20 ms of holding the write lock per chunk for persons on the reference machine
    #: (see bench/import_city.py, which reports the longest); the daemon's writes go between.
    apply_chunk_rows = 5000

    def __init__(self, conn: sqlite3.Connection, *, owns_connection: bool = False) -> None:
        super().__init__(conn, owns_connection=owns_connection)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SqliteDirectory:
        """Open (creating and migrating if needed) a database file."""
        db_path = Path(path)
        if str(db_path) != ":memory:":
            db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(db_path)
        try:
            migrate_sqlite(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, owns_connection=True)

    @contextmanager
    def bulk_load(self) -> Iterator[None]:
        # The synthetic generator is consistent by construction (the tests import its CSV
        # through the checking importer), so SQLite's per-row foreign-key lookups, a third of
        # the insert time, are switched off for the load. The pragma only takes effect outside
        # a transaction.
        (foreign_keys,) = self.conn.execute("PRAGMA foreign_keys").fetchone()
        self.conn.execute("PRAGMA foreign_keys = OFF")
        try:
            yield
        finally:
            self.conn.execute(f"PRAGMA foreign_keys = {int(foreign_keys)}")

    # -- the staging file, ATTACHed ------------------------------------------------------------
    def _staged(self, table: str) -> str:
        return f"staging.{table}"

    @contextmanager
    def _attached(self, staging: Path, tables: Sequence[str]) -> Iterator[None]:
        if self.conn.in_transaction:
            raise RuntimeError("cannot apply a staging file inside an open transaction")
        self.conn.execute("ATTACH DATABASE ? AS staging", (str(staging),))
        try:
            # Scratch space: the staging file is deleted when the import ends.
            self.conn.execute("PRAGMA staging.journal_mode = OFF")
            self.conn.execute("PRAGMA staging.synchronous = OFF")
            yield
        finally:
            self.rollback()
            self.conn.execute("DETACH DATABASE staging")

    # -- chunks --------------------------------------------------------------------------------
    @contextmanager
    def _chunk_pauses(self) -> Iterator[Callable[[], None]]:
        """Short transactions are not enough on their own: a writer kept waiting by SQLite's
        busy handler sleeps between attempts (up to 100 ms) and could keep missing the moments
        between two chunks. So after :data:`_BURST_SECONDS` of chunks the apply steps aside for
        :data:`_PAUSE_SECONDS`, longer than any of those sleeps: a waiting writer's next attempt
        falls in the pause at the latest.

        The WAL is checkpointed after every chunk (:meth:`_after_chunk`), by this connection
        and after its lock is released, rather than by whichever commit next finds the WAL long
        (SQLite's automatic checkpoint): so the daemon's next small write never pays for
        copying the import's pages, and the time reported per transaction is the time the lock
        was held."""
        (autocheckpoint,) = self.conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        self.conn.execute("PRAGMA wal_autocheckpoint = 0")
        burst_started = time.perf_counter()

        def pause() -> None:
            nonlocal burst_started
            if time.perf_counter() - burst_started >= _BURST_SECONDS:
                time.sleep(_PAUSE_SECONDS)
                burst_started = time.perf_counter()

        try:
            yield pause
        finally:
            self.conn.execute(f"PRAGMA wal_autocheckpoint = {int(autocheckpoint)}")

    def _after_chunk(self) -> None:
        # PASSIVE: copies what it can without waiting for, or blocking, anyone.
        self.conn.execute("PRAGMA main.wal_checkpoint(PASSIVE)").fetchone()

    # -- reads -------------------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: WAL keeps its view fixed while writers carry on."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

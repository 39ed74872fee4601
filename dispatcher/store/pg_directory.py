"""The directory on PostgreSQL: what the CSV importer writes through and the exporter reads from.

The SQL is :class:`dispatcher.store.directory_base.SqlDirectory`'s; this module says how it
runs on a :class:`dispatcher.store.pg_connection.PgConnection` of its own.

Applying a file: the importer's staging file (SQLite) cannot be attached, so its rows are first
copied (``COPY … FROM STDIN``) into temporary tables of this connection — no lock on the store
is taken for that — and then moved into the store a chunk at a time with
``INSERT … SELECT … ON CONFLICT``, each chunk one ``BEGIN IMMEDIATE`` transaction, i.e. holding
the writer lock every node's write transactions take. PostgreSQL queues lock requests in order,
so a node's writer waiting for the lock gets it as soon as the current chunk commits: unlike on
SQLite the apply needs no pauses. Scratch tables (the area closure's differences, moved village
codes) are temporary tables too, dropped when the step ends.

Exporting: the snapshot is a ``REPEATABLE READ`` transaction (PostgreSQL's default, READ
COMMITTED, would give each query its own view), and rows are streamed through server-side
cursors, so memory does not grow with the directory. Text is ordered ``COLLATE "C"`` — by code
point, as SQLite orders it — whatever the database's collation, so both stores export the same
bytes.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from dispatcher.directory.staging import STAGED_COLUMNS
from dispatcher.store.connections import StoreUnavailable
from dispatcher.store.directory_base import SqlDirectory
from dispatcher.store.migrations import migrate_postgres
from dispatcher.store.pg_base import redact_dsn
from dispatcher.store.pg_connection import PgConnection, respell

#: The staged columns that hold integers (everything else is text).
_INTEGER_COLUMNS = frozenset({"roles", "vulnerable", "lives_alone"})
#: The membership table staged beside persons and devices, and its column besides ``n``.
_MEMBERSHIPS = {"persons": ("grid_members", "grid_id"), "devices": ("device_areas", "area_code")}
#: Rows a server-side cursor fetches per round trip while exporting.
_FETCH_ROWS = 5000

_cursor_names = itertools.count(1)


class PgDirectory(SqlDirectory):
    """The directory tables of one PostgreSQL database."""

    conn: PgConnection

    _STORE = ""
    _BINARY = ' COLLATE "C"'
    _CONCAT = "string_agg"
    _NUMBERED = "n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    _KEYED = ""
    # A re-import of a mostly unchanged directory (the usual nightly file) writes only what
    # changed: an update in PostgreSQL is a new row version with new index entries, and
    # rewriting every row holds the writer lock several times as long (measured for 100k
    # unchanged persons: about 0.5 s instead of 4 s) and leaves as many dead rows to vacuum.
    _SKIP_UNCHANGED = True
    # Inserting a person costs about 50 µs on PostgreSQL (its index entries and the foreign
    # key check on its household, which locks that row), against about 12 µs on SQLite: a
    # fifth of SQLite's chunk holds the writer lock about as long (some 50 ms).
    apply_chunk_rows = 1000

    def __init__(self, conn: PgConnection, *, owns_connection: bool = False) -> None:
        super().__init__(conn, owns_connection=owns_connection)
        #: Temporary tables made while a staging file is in use, dropped when it is done.
        self._temporary: list[str] = []

    @classmethod
    def open(cls, dsn: str) -> PgDirectory:
        """Connect, and migrate the database to the newest schema if needed (nodes migrate
        one at a time: a running node's schema is already the newest)."""
        try:
            conn = PgConnection.connect(dsn, application_name="tocsin directory")
        except psycopg.OperationalError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StoreUnavailable(
                f"PostgreSQL at {redact_dsn(dsn)} cannot be reached: {first}"
            ) from exc
        try:
            migrate_postgres(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, owns_connection=True)

    # -- the staging file, copied into temporary tables -----------------------------------------
    def _staged(self, table: str) -> str:
        return f"pg_temp.staging_{table}"

    def _scratch_kind(self) -> str:
        return "TEMPORARY "

    def _scratch(self, name: str, schema: str, columns: str, select: str) -> int:
        self._temporary.append(name)
        rows = super()._scratch(name, schema, columns, select)
        self.conn.execute(f"ANALYZE {self._staged(name)}")
        return rows

    @contextmanager
    def _attached(self, staging: Path, tables: Sequence[str]) -> Iterator[None]:
        if self.conn.in_transaction:
            raise RuntimeError("cannot apply a staging file inside an open transaction")
        self._temporary = []
        try:
            if tables:
                source = sqlite3.connect(staging)
                try:
                    for table in tables:
                        self._copy(source, table, ("n", *STAGED_COLUMNS[table]), ("n",))
                        if table in _MEMBERSHIPS:
                            members, column = _MEMBERSHIPS[table]
                            self._copy(source, members, ("n", column), ("n", column))
                finally:
                    source.close()
            yield
        finally:
            self.rollback()
            if not self.conn.broken:
                for name in self._temporary:
                    self.conn.execute(f"DROP TABLE IF EXISTS {self._staged(name)}")
            self._temporary = []

    def _copy(
        self, source: sqlite3.Connection, table: str, columns: tuple[str, ...], key: tuple[str, ...]
    ) -> None:
        """The staging file's ``table`` into a temporary table of the same name (off the
        writer lock: nothing of the store is written)."""
        self._temporary.append(table)
        name = self._staged(table)
        listed = ", ".join(columns)
        definition = ", ".join(
            f"{c} bigint" if c == "n" or c in _INTEGER_COLUMNS else f"{c} text" for c in columns
        )
        raw = self.conn.raw
        raw.execute(f"DROP TABLE IF EXISTS {name}")
        raw.execute(f"CREATE TEMPORARY TABLE {name.removeprefix('pg_temp.')} ({definition})")
        with raw.cursor() as cursor, cursor.copy(f"COPY {name} ({listed}) FROM STDIN") as copy:
            for row in source.execute(f"SELECT {listed} FROM {table} ORDER BY {', '.join(key)}"):
                copy.write_row(row)
        # The key after the rows: one sorted build instead of an index insert per row.
        raw.execute(f"ALTER TABLE {name} ADD PRIMARY KEY ({', '.join(key)})")
        # Temporary tables are never analysed automatically; the chunks' joins want estimates.
        raw.execute(f"ANALYZE {name}")

    # -- reads -------------------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read-only REPEATABLE READ transaction: one view for every query in it."""
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def _rows(self, sql: str) -> Iterator[Any]:
        if not self.conn.in_transaction:  # a server-side cursor needs a transaction
            yield from self.conn.execute(sql)
            return
        with self.conn.raw.cursor(name=f"tocsin_directory_{next(_cursor_names)}") as cursor:
            cursor.itersize = _FETCH_ROWS
            cursor.execute(respell(sql).sql)
            yield from cursor

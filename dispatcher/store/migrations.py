"""Schema migrations: numbered SQL files per dialect, applied in order, each in a transaction."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dispatcher.store.pg_connection import PgConnection

#: The session-scoped advisory lock a node holds while it migrates a PostgreSQL database, so
#: nodes starting together migrate one at a time (the second finds the work done). Fixed, and
#: distinct from :data:`dispatcher.store.pg_connection.WRITER_LOCK`.
MIGRATION_LOCK = 0x70C5_1E00

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    folder = resources.files("dispatcher.store").joinpath("migrations", dialect)
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations are not numbered 1..n without gaps: {versions}")
    return found


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer Tocsin; refusing to run against it."""


def migrate_sqlite(conn: sqlite3.Connection) -> int:
    """Bring the database to the newest schema; return the version it is at.

    SQLite keeps the version in ``PRAGMA user_version``, so it changes atomically with the
    migration's own statements.
    """
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    available = migrations("sqlite")
    newest = available[-1].version if available else 0
    if current > newest:
        raise SchemaTooNew(
            f"database schema version {current} is newer than this Tocsin knows ({newest})"
        )
    for migration in available:
        if migration.version <= current:
            continue
        # executescript would commit implicitly; run statement by statement inside one
        # explicit transaction instead, so a failed migration leaves nothing behind.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(migration.sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {migration.version}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        current = migration.version
    return int(current)


def migrate_postgres(conn: PgConnection) -> int:
    """Bring a PostgreSQL database to the newest schema; return the version it is at.

    The version is the one row of ``schema_version``. Each migration runs as one script (the
    simple query protocol takes several statements, plpgsql bodies included) in one transaction
    with its version bump: PostgreSQL's DDL is transactional, so a failed migration leaves
    nothing behind.
    """
    raw = conn.raw
    available = migrations("postgresql")
    newest = available[-1].version if available else 0
    raw.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        with raw.transaction():
            raw.execute("CREATE TABLE IF NOT EXISTS schema_version (version bigint NOT NULL)")
            raw.execute(
                "INSERT INTO schema_version (version) SELECT 0 "
                "WHERE NOT EXISTS (SELECT 1 FROM schema_version)"
            )
        rows = raw.execute("SELECT version FROM schema_version").fetchall()
        if len(rows) != 1:
            raise RuntimeError(f"schema_version holds {len(rows)} rows, not one")
        current = int(rows[0][0])
        if current > newest:
            raise SchemaTooNew(
                f"database schema version {current} is newer than this Tocsin knows ({newest})"
            )
        for migration in available:
            if migration.version <= current:
                continue
            with raw.transaction():
                raw.execute(migration.sql)  # no parameters: the simple query protocol
                raw.execute("UPDATE schema_version SET version = %s", (migration.version,))
            current = migration.version
        return current
    finally:
        if not conn.broken:
            raw.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements; sqlite3.complete_statement keeps trigger bodies whole."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise RuntimeError(f"migration ends in an incomplete statement: {buffer[:80]!r}")
    return statements

"""Schema migrations: numbered SQL files per dialect, applied in order, each in a transaction."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

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

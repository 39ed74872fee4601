"""Schema migrations: a fresh file reaches the newest version, a newer database is refused, and a
migration that fails leaves the database as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dispatcher.store import migrations as migrations_module
from dispatcher.store.migrations import Migration, SchemaTooNew, migrate_sqlite, migrations
from dispatcher.store.sqlite import SqliteStore, connect


def test_migrations_are_numbered_without_gaps() -> None:
    found = migrations("sqlite")
    assert [m.version for m in found] == list(range(1, len(found) + 1))


async def test_fresh_database_is_migrated_and_reopens(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "t.db"
    store = await SqliteStore.open(db)
    await store.close()
    conn = sqlite3.connect(db)
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    assert version == migrations("sqlite")[-1].version
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    again = await SqliteStore.open(db)  # re-opening applies nothing and keeps the data
    assert await again.directory_counts() == {
        "areas": 0,
        "grids": 0,
        "households": 0,
        "persons": 0,
        "devices": 0,
    }
    await again.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = connect(tmp_path / "t.db")
    migrate_sqlite(conn)
    conn.execute("PRAGMA user_version = 999")
    with pytest.raises(SchemaTooNew, match="999"):
        migrate_sqlite(conn)


def test_failed_migration_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connect(tmp_path / "t.db")
    migrate_sqlite(conn)
    current = migrations("sqlite")
    broken = Migration(
        len(current) + 1,
        "broken.sql",
        "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n",
    )
    monkeypatch.setattr(migrations_module, "migrations", lambda dialect: [*current, broken])
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        migrate_sqlite(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(current)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half_done" not in tables

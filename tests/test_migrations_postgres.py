"""PostgreSQL schema migrations: the same numbered migrations as SQLite reaching the same schema
(tables, columns, nullability, types, keys, indexes), applied once even when nodes start
together, refusing a newer database, and leaving nothing behind when one fails."""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from waiting import wait_until

from dispatcher.store import migrations as migrations_module
from dispatcher.store.migrations import (
    MIGRATION_LOCK,
    Migration,
    SchemaTooNew,
    migrate_postgres,
    migrate_sqlite,
    migrations,
)
from dispatcher.store.pg_connection import WRITER_LOCK, PgConnection
from dispatcher.store.sqlite import connect

#: How each SQLite declared type is spelt in the PostgreSQL migrations.
_TYPES = {"TEXT": "text", "INTEGER": "bigint", "REAL": "double precision"}

#: SQLite rowid aliases (``INTEGER PRIMARY KEY``) the code fills itself with an explicit id:
#: a plain ``bigint PRIMARY KEY`` on PostgreSQL. Every other rowid alias is an identity.
_EXPLICIT_IDS = {("visit_tasks", "delivery_id")}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # spelt as on PostgreSQL
    not_null: bool
    identity: bool  # filled by the database: a rowid alias / an identity column


@dataclass(frozen=True)
class Index:
    columns: tuple[str | None, ...]  # None: an expression
    unique: bool
    partial: bool


@dataclass(frozen=True)
class Table:
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    unique: frozenset[tuple[str, ...]]  # UNIQUE constraints (not the primary key)
    foreign_keys: frozenset[tuple[tuple[str, ...], str, tuple[str, ...]]]
    indexes: dict[str, Index]  # CREATE INDEX ones, by name


def _pg(dsn: str) -> PgConnection:
    return PgConnection.connect(dsn)


def _sqlite_schema(path: Path) -> dict[str, Table]:
    conn = connect(path)
    try:
        migrate_sqlite(conn)
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
            )
        ]
        return {name: _sqlite_table(conn, name) for name in tables}
    finally:
        conn.close()


def _sqlite_table(conn: sqlite3.Connection, table: str) -> Table:
    info = conn.execute(f"PRAGMA table_info({table})").fetchall()
    pk = tuple(row[1] for row in sorted((r for r in info if r[5]), key=lambda r: r[5]))
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    rowid_table = "WITHOUT ROWID" not in sql.upper()
    columns = []
    for _, name, declared, not_null, _, in_pk in info:
        alias = rowid_table and pk == (name,) and declared.upper() == "INTEGER"
        columns.append(
            Column(
                name,
                _TYPES.get(declared.upper(), f"unknown SQLite type {declared!r}"),
                # a primary key column is NOT NULL on PostgreSQL (on SQLite too, in practice)
                bool(not_null) or bool(in_pk),
                alias and (table, name) not in _EXPLICIT_IDS,
            )
        )
    unique: set[tuple[str, ...]] = set()
    indexes: dict[str, Index] = {}
    for _, name, is_unique, origin, partial in conn.execute(f"PRAGMA index_list({table})"):
        cols = tuple(
            row[2] for row in sorted(conn.execute(f"PRAGMA index_info({name})"), key=lambda r: r[0])
        )
        if origin == "u":
            unique.add(cols)
        elif origin == "c":
            indexes[name] = Index(cols, bool(is_unique), bool(partial))
    keys: dict[int, tuple[str, list[str], list[str]]] = {}
    for fk_id, _seq, parent, child_col, parent_col, *_ in sorted(
        conn.execute(f"PRAGMA foreign_key_list({table})").fetchall(), key=lambda r: (r[0], r[1])
    ):
        entry = keys.setdefault(fk_id, (parent, [], []))
        entry[1].append(child_col)
        entry[2].append(parent_col)
    foreign_keys = frozenset((tuple(c), parent, tuple(p)) for parent, c, p in keys.values())
    return Table(tuple(columns), pk, frozenset(unique), foreign_keys, indexes)


def _pg_schema(conn: PgConnection) -> dict[str, Table]:
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r' "
            "AND c.relname <> 'schema_version' ORDER BY c.relname"
        ).fetchall()
    ]
    return {name: _pg_table(conn, name) for name in tables}


def _pg_table(conn: PgConnection, table: str) -> Table:
    attributes = conn.execute(
        "SELECT attnum, attname, format_type(atttypid, atttypmod), attnotnull, attidentity "
        "FROM pg_attribute WHERE attrelid = ?::text::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()
    names = {num: name for num, name, *_ in attributes}
    columns = tuple(
        Column(name, type_, bool(not_null), identity != "")
        for _, name, type_, not_null, identity in attributes
    )
    primary_key: tuple[str, ...] = ()
    unique: set[tuple[str, ...]] = set()
    foreign_keys: set[tuple[tuple[str, ...], str, tuple[str, ...]]] = set()
    constraint_indexes: set[int] = set()
    for contype, conkey, confrelid, confkey, conindid in conn.execute(
        "SELECT contype, conkey, confrelid::regclass::text, confkey, conindid "
        "FROM pg_constraint WHERE conrelid = ?::text::regclass AND contype IN ('p', 'u', 'f')",
        (table,),
    ).fetchall():
        cols = tuple(names[k] for k in conkey)
        if contype == "p":
            primary_key = cols
            constraint_indexes.add(conindid)
        elif contype == "u":
            unique.add(cols)
            constraint_indexes.add(conindid)
        else:
            parent_names = dict(
                conn.execute(
                    "SELECT attnum, attname FROM pg_attribute WHERE attrelid = ?::text::regclass",
                    (confrelid,),
                ).fetchall()
            )
            foreign_keys.add((cols, confrelid, tuple(parent_names[k] for k in confkey)))
    indexes: dict[str, Index] = {}
    for index_oid, name, key, is_unique, partial in conn.execute(
        "SELECT i.indexrelid, c.relname, i.indkey::int2[], i.indisunique, i.indpred IS NOT NULL "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = ?::text::regclass",
        (table,),
    ).fetchall():
        if index_oid in constraint_indexes:
            continue
        cols = tuple(names[k] if k != 0 else None for k in key)
        indexes[name] = Index(cols, bool(is_unique), bool(partial))
    return Table(columns, primary_key, frozenset(unique), frozenset(foreign_keys), indexes)


def _differences(sqlite: dict[str, Table], postgres: dict[str, Table]) -> list[str]:
    """What differs, each naming the table (and column or index)."""
    found = []
    for table in sorted(set(sqlite) - set(postgres)):
        found.append(f"table {table}: on SQLite only")
    for table in sorted(set(postgres) - set(sqlite)):
        found.append(f"table {table}: on PostgreSQL only")
    for table in sorted(set(sqlite) & set(postgres)):
        lite, pg = sqlite[table], postgres[table]
        lite_names = [c.name for c in lite.columns]
        pg_names = [c.name for c in pg.columns]
        if lite_names != pg_names:
            found.append(f"table {table}: columns SQLite {lite_names} != PostgreSQL {pg_names}")
        pg_columns = {c.name: c for c in pg.columns}
        for column in lite.columns:
            other = pg_columns.get(column.name)
            if other is not None and other != column:
                found.append(f"table {table} column {column.name}: SQLite {column} != {other}")
        for what in ("primary_key", "unique", "foreign_keys"):
            if getattr(lite, what) != getattr(pg, what):
                found.append(
                    f"table {table} {what}: SQLite {getattr(lite, what)} "
                    f"!= PostgreSQL {getattr(pg, what)}"
                )
        for name in sorted(set(lite.indexes) | set(pg.indexes)):
            lite_index, pg_index = lite.indexes.get(name), pg.indexes.get(name)
            if lite_index != pg_index:
                found.append(
                    f"table {table} index {name}: SQLite {lite_index} != PostgreSQL {pg_index}"
                )
    return found


def _version(conn: PgConnection) -> list[int]:
    return [int(v) for (v,) in conn.execute("SELECT version FROM schema_version").fetchall()]


def _tables(conn: PgConnection) -> set[str]:
    return {
        str(name)
        for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
    }


def _lock_is_free(dsn: str) -> bool:
    conn = _pg(dsn)
    try:
        (taken,) = conn.execute("SELECT pg_try_advisory_lock(?)", (MIGRATION_LOCK,)).fetchone()
        return bool(taken)
    finally:
        conn.close()  # releases it again


def test_postgresql_migrations_have_the_sqlite_numbers_and_names() -> None:
    assert [(m.version, m.name) for m in migrations("postgresql")] == [
        (m.version, m.name) for m in migrations("sqlite")
    ]


def test_migration_lock_is_not_the_writer_lock() -> None:
    assert MIGRATION_LOCK != WRITER_LOCK


def test_fresh_database_reaches_the_newest_version(postgres_dsn: str) -> None:
    newest = migrations("sqlite")[-1].version
    conn = _pg(postgres_dsn)
    try:
        assert migrate_postgres(conn) == newest
        assert _version(conn) == [newest]
        assert not conn.in_transaction
    finally:
        conn.close()
    assert _lock_is_free(postgres_dsn)


def test_schema_equals_the_sqlite_schema(postgres_dsn: str, tmp_path: Path) -> None:
    sqlite = _sqlite_schema(tmp_path / "t.db")
    conn = _pg(postgres_dsn)
    try:
        migrate_postgres(conn)
        postgres = _pg_schema(conn)
    finally:
        conn.close()
    assert "nodes" in sqlite and "deliveries_leased" in sqlite["deliveries"].indexes
    assert _differences(sqlite, postgres) == []


def test_schema_comparison_names_what_differs(postgres_dsn: str, tmp_path: Path) -> None:
    """A later migration that differs between the dialects fails naming the table and column."""
    sqlite = _sqlite_schema(tmp_path / "t.db")
    conn = _pg(postgres_dsn)
    try:
        migrate_postgres(conn)
        conn.execute("ALTER TABLE nodes ADD COLUMN extra text")
        conn.execute("ALTER TABLE nodes ALTER COLUMN api_url SET NOT NULL")
        conn.execute("ALTER TABLE deliveries ALTER COLUMN leased_by TYPE bigint USING 0")
        conn.execute("DROP INDEX deliveries_leased")
        conn.execute("CREATE INDEX deliveries_leased ON deliveries(leased_by)")
        postgres = _pg_schema(conn)
    finally:
        conn.close()
    found = "\n".join(_differences(sqlite, postgres))
    assert "table nodes: columns" in found and "'extra'" in found
    assert "table nodes column api_url" in found
    assert "table deliveries column leased_by" in found
    assert "table deliveries index deliveries_leased" in found


def test_migrating_again_applies_nothing(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = _pg(postgres_dsn)
    try:
        newest = migrate_postgres(conn)
        # The same versions, each of which would fail if it ran again.
        failing = [Migration(m.version, m.name, "SELECT 1 / 0;") for m in migrations("postgresql")]
        monkeypatch.setattr(migrations_module, "migrations", lambda dialect: failing)
        assert migrate_postgres(conn) == newest
        assert _version(conn) == [newest]
    finally:
        conn.close()


async def test_nodes_starting_together_migrate_once(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A last migration that counts how often it ran (the others would fail if run twice).
    current = migrations("postgresql")
    counted = Migration(
        len(current) + 1,
        "counted.sql",
        "CREATE TABLE IF NOT EXISTS applied (n bigint);\nINSERT INTO applied VALUES (1);\n",
    )
    monkeypatch.setattr(migrations_module, "migrations", lambda dialect: [*current, counted])
    # Hold the migration lock so both nodes are waiting for it, then let them go at once.
    holder = _pg(postgres_dsn)
    holder.execute("SELECT pg_advisory_lock(?)", (MIGRATION_LOCK,))
    watcher = _pg(postgres_dsn)
    nodes = [_pg(postgres_dsn) for _ in range(2)]
    loop = asyncio.get_running_loop()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = [loop.run_in_executor(pool, migrate_postgres, node) for node in nodes]

            def both_waiting() -> bool:
                (n,) = watcher.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND objid = ? AND NOT granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())",
                    (MIGRATION_LOCK,),
                ).fetchone()
                return int(n) == 2

            await wait_until(both_waiting, what="both nodes waiting for the migration lock")
            holder.execute("SELECT pg_advisory_unlock(?)", (MIGRATION_LOCK,))
            results = await asyncio.gather(*runs)
        assert results == [counted.version, counted.version]
        assert _version(watcher) == [counted.version]
        assert watcher.execute("SELECT count(*) FROM applied").fetchone() == (1,)
    finally:
        for conn in (holder, watcher, *nodes):
            conn.close()


def test_newer_schema_is_refused(postgres_dsn: str) -> None:
    conn = _pg(postgres_dsn)
    try:
        migrate_postgres(conn)
        conn.execute("UPDATE schema_version SET version = 999")
        with pytest.raises(SchemaTooNew, match="999"):
            migrate_postgres(conn)
        assert _version(conn) == [999]
    finally:
        conn.close()
    assert _lock_is_free(postgres_dsn)


def test_failed_migration_leaves_nothing_behind(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = _pg(postgres_dsn)
    try:
        migrate_postgres(conn)
        before = _tables(conn)
        current = migrations("postgresql")
        broken = Migration(
            len(current) + 1,
            "broken.sql",
            "CREATE TABLE half_done (x bigint);\n"
            "ALTER TABLE nodes ADD COLUMN half_column text;\n"
            "INSERT INTO no_such_table VALUES (1);\n",
        )
        monkeypatch.setattr(migrations_module, "migrations", lambda dialect: [*current, broken])
        with pytest.raises(psycopg.errors.UndefinedTable, match="no_such_table"):
            migrate_postgres(conn)
        assert not conn.in_transaction
        assert _version(conn) == [len(current)]
        assert _tables(conn) == before
        columns = [r[0] for r in conn.execute("SELECT * FROM nodes LIMIT 0").description or ()]
        assert "half_column" not in columns
    finally:
        conn.close()
    assert _lock_is_free(postgres_dsn)


def test_a_fresh_database_whose_first_migration_fails_keeps_no_tables(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = Migration(1, "0001_broken.sql", "CREATE TABLE half_done (x bigint);\nSELECT 1 / 0;\n")
    monkeypatch.setattr(migrations_module, "migrations", lambda dialect: [broken])
    conn = _pg(postgres_dsn)
    try:
        with pytest.raises(psycopg.errors.DivisionByZero):
            migrate_postgres(conn)
        assert _tables(conn) == {"schema_version"}
        assert _version(conn) == [0]
    finally:
        conn.close()

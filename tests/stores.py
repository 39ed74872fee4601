"""The store tests' two databases: one parametrised fixture runs a test on SQLite and on
PostgreSQL (tests/postgres_server.py says where the server is)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import postgres_server
import pytest

from dispatcher.store.connections import Db
from dispatcher.store.pg_connection import PgConnection
from dispatcher.store.postgres import PostgresStore
from dispatcher.store.sql_store import SqlStore
from dispatcher.store.sqlite import SqliteStore, connect

STORE_KINDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class StoreTarget:
    """Where a test's store lives: a SQLite file, or a fresh PostgreSQL database."""

    kind: str
    path: Path  # the SQLite file (on PostgreSQL: a place for the test's other files)
    dsn: str | None = None

    async def open(self, *, node: str = "test") -> SqlStore:
        if self.dsn is not None:
            return await PostgresStore.open(self.dsn, node=node)
        return await SqliteStore.open(self.path, node=node)

    def connect(self) -> Db:
        """A plain connection beside the store, for a test to fill or look at tables."""
        if self.dsn is not None:
            return PgConnection.connect(self.dsn)
        return connect(self.path)

    @property
    def location(self) -> str:
        """What the config's ``[store]`` names: the DSN or the file."""
        return self.dsn if self.dsn is not None else str(self.path)


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "postgresql":
        postgres_server.require_server()
    return kind


@pytest.fixture
def store_target(store_kind: str, tmp_path: Path) -> object:
    """A fresh, migrated, empty store of each kind (the test opens it)."""
    if store_kind == "sqlite":
        yield StoreTarget("sqlite", tmp_path / "tocsin.db")
        return
    with postgres_server.fresh_database(template=postgres_server.migrated_template()) as dsn:
        yield StoreTarget("postgresql", tmp_path / "tocsin.db", dsn)


#: The directory's tables, each after those it refers to.
DIRECTORY_TABLES = (
    "areas",
    "area_closure",
    "grids",
    "households",
    "persons",
    "grid_members",
    "devices",
    "device_areas",
)
_AREA_LEVELS = ("province", "city", "county", "town", "village")


def copy_directory(source: Path, target: StoreTarget) -> None:
    """The directory of SQLite file ``source`` (a synthetic city built once per session) into
    ``target``'s migrated database, parents first."""
    src = connect(source)
    dst = target.connect()
    try:
        dst.execute("BEGIN IMMEDIATE")
        for table in DIRECTORY_TABLES:
            cursor = src.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
            if table == "areas":
                level = columns.index("level")
                rows.sort(key=lambda r: _AREA_LEVELS.index(r[level]))
            dst.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                rows,
            )
        dst.execute("COMMIT")
    finally:
        dst.close()
        src.close()

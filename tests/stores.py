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

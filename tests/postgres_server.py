"""The PostgreSQL server the tests run the store on, and fresh databases on it.

The server is ``TOCSIN_TEST_POSTGRES`` (a libpq DSN; default: the local server on
127.0.0.1:5432, database ``test``, trust auth). Each test gets a database of its own, made
from a template migrated once per run, and dropped after the test; a run's leftovers (a run
killed half way) are dropped by the next run.

When no server answers, the PostgreSQL half of the store tests is skipped and the run says so
in its header and again at the end. ``TOCSIN_REQUIRE_POSTGRES=1`` (CI sets it) makes that a
failure instead.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
_PREFIX = "tocsin_test_"
_NAME = re.compile(rf"^{_PREFIX}(\d+)_")


@dataclass(frozen=True)
class Server:
    dsn: str | None  # None: not reachable
    where: str
    problem: str = ""
    version: str = ""


def admin_dsn() -> str:
    return os.environ.get("TOCSIN_TEST_POSTGRES", DEFAULT_DSN)


def required() -> bool:
    return os.environ.get("TOCSIN_REQUIRE_POSTGRES", "") not in ("", "0")


@cache
def server() -> Server:
    dsn = admin_dsn()
    info = conninfo_to_dict(dsn)
    where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            _drop_leftovers(conn)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Server(None, where, problem=first)
    return Server(dsn, where, version=str(version[0]) if version else "?")


def status_line() -> str:
    found = server()
    if found.dsn is not None:
        return (
            f"PostgreSQL {found.version} at {found.where}: the store tests run on SQLite and "
            "on PostgreSQL (a fresh database per test)"
        )
    return (
        f"PostgreSQL NOT REACHABLE at {found.where} ({found.problem}): the PostgreSQL half of "
        "the store tests is SKIPPED — set TOCSIN_TEST_POSTGRES to a server's DSN"
    )


def require_server() -> str:
    """The admin DSN, or skip (fail when required) saying why."""
    found = server()
    if found.dsn is None:
        message = status_line()
        if required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found.dsn


def dsn_of(database: str) -> str:
    return make_conninfo(admin_dsn(), dbname=database)


_serial = itertools.count(1)


def new_name() -> str:
    return f"{_PREFIX}{os.getpid()}_{next(_serial)}"


def create_database(*, template: str | None = None) -> str:
    """A new database's name (empty, or a copy of ``template``)."""
    name = new_name()
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    with psycopg.connect(require_server(), autocommit=True) as conn:
        conn.execute(statement)
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(require_server(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def fresh_database(*, template: str | None = None) -> Iterator[str]:
    """The DSN of a new database, dropped afterwards."""
    name = create_database(template=template)
    try:
        yield dsn_of(name)
    finally:
        drop_database(name)


@cache
def migrated_template() -> str:
    """A database migrated to the newest schema, copied for each test that needs a store."""
    from dispatcher.store.migrations import migrate_postgres
    from dispatcher.store.pg_connection import PgConnection

    name = create_database()
    conn = PgConnection.connect(dsn_of(name))
    try:
        migrate_postgres(conn)
    finally:
        conn.close()
    return name


def drop_run_databases() -> None:
    """At the end of the run: this run's template (and anything a test left)."""
    if server().dsn is None:
        return
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        for (name,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (f"{_PREFIX}{os.getpid()}\\_%",),
        ).fetchall():
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _drop_leftovers(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Databases of earlier runs whose process is gone."""
    for (name,) in conn.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{_PREFIX}%",)
    ).fetchall():
        match = _NAME.match(str(name))
        if match is None or _alive(int(match.group(1))):
            continue
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

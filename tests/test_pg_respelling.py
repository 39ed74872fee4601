"""PgConnection on a real server: the store's SQL respelled for psycopg keeps '%' and
PostgreSQL's own quoting (E'', dollar quotes, block comments) intact, and the store's
connections are set to notice a server that stops answering (found in review: each failed
before its fix)."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.store.connections import Db
from dispatcher.store.pg_connection import PgConnection
from dispatcher.store.postgres import PostgresStore


@pytest.fixture
def pg(postgres_dsn: str) -> Any:
    conn = PgConnection.connect(postgres_dsn)
    yield conn
    conn.close()


# -- respelling: '%' ----------------------------------------------------------------------------
def test_a_percent_in_a_literal_of_a_statement_with_placeholders(pg: PgConnection) -> None:
    # A LIKE pattern written in the SQL beside a bound value: psycopg reads every '%' of a
    # statement with parameters, literals included, so the literal's '%' must be doubled too.
    assert pg.execute("SELECT 'a%' || ?", ("b",)).fetchone() == ("a%b",)
    assert pg.execute("SELECT 'abc' LIKE 'a%' WHERE 1 = ?", (1,)).fetchone() == (True,)


def test_a_percent_in_a_comment_of_a_statement_with_placeholders(pg: PgConnection) -> None:
    assert pg.execute("SELECT ? -- about 1 % of a city\n", (7,)).fetchone() == (7,)


def test_a_percent_operator_in_a_statement_without_placeholders(pg: PgConnection) -> None:
    # Without parameters psycopg sends the text as it is: a '%' doubled by the respelling
    # reaches the server as the operator '%%', which does not exist.
    assert pg.execute("SELECT 7 % 3").fetchone() == (1,)
    assert pg.execute("SELECT 7 % 3", ()).fetchone() == (1,)


# -- respelling: what PostgreSQL quotes that SQLite does not -------------------------------------
@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT ? /* what? */", (5,)),
        ("SELECT ? /* :name */", (5,)),
        ("SELECT length($$a?b$$) + ? - ?", (5, 5)),
        ("SELECT length($q$a?b$q$) + ? - ?", (5, 5)),
        ("SELECT length(E'it\\'s ?') + ? - ?", (5, 5)),
    ],
)
def test_a_question_mark_quoted_the_postgresql_way_is_no_placeholder(
    pg: PgConnection, sql: str, params: tuple[int, ...]
) -> None:
    assert pg.execute(sql, params).fetchone() is not None


# -- the store's connections survive a database host that vanishes ------------------------------
async def test_the_store_connections_notice_a_vanished_server(postgres_dsn: str) -> None:
    # A failover that moves the database's address (or a cut network) leaves a connection
    # whose peer never answers: without TCP keepalives and a user timeout, a query blocks for
    # the kernel's retransmission timeout (about 15 minutes) and with it the node's one writer
    # thread (every claim and outcome), its reader (every API read) and its heartbeat. The
    # scheduler's connection sets them (schedules/leader.py); the store's must too.
    store = await PostgresStore.open(postgres_dsn, node="n")

    def settings(conn: Db) -> dict[str, str]:
        assert isinstance(conn, PgConnection)
        return conn.raw.info.get_parameters()

    try:
        for got in (
            await store._write(settings),
            await store._read(settings),
            await store._write_aside(settings),
        ):
            assert got.get("keepalives") == "1", got
            assert "tcp_user_timeout" in got, got
    finally:
        await store.close()

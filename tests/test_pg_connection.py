"""The PostgreSQL connection layer: the store's SQL respelled for psycopg, values adapted as
SQLite gives them, a transaction PostgreSQL rolls back (class 40) run again, and a lost
connection reported as StoreUnavailable and opened anew."""

from __future__ import annotations

from typing import Any

import postgres_server
import psycopg
import pytest

from dispatcher.store.connections import Db, StoreUnavailable
from dispatcher.store.pg_connection import PgConnection, respell
from dispatcher.store.postgres import PostgresStore


@pytest.mark.parametrize(
    ("sql", "expected", "style"),
    [
        (
            "SELECT a FROM t WHERE b = ? AND c = ?",
            "SELECT a FROM t WHERE b = %s AND c = %s",
            "positional",
        ),
        ("SELECT ?1, ?2, ?1", "SELECT %(p1)s, %(p2)s, %(p1)s", "numbered"),
        ("SELECT :seq + 1", "SELECT %(seq)s + 1", "named"),
        ("SELECT 'a?b :c' || ?", "SELECT 'a?b :c' || %s", "positional"),
        # No parameters: psycopg sends the text as it is, '%' included.
        ("SELECT 'it''s ?' -- what?\n, 5 % 3", "SELECT 'it''s ?' -- what?\n, 5 % 3", "none"),
        ("SELECT 5 % ?, '10%'", "SELECT 5 %% %s, '10%%'", "positional"),
        ('SELECT "odd?name" FROM t', 'SELECT "odd?name" FROM t', "none"),
        ("SELECT x::text FROM t WHERE y = :y", "SELECT x::text FROM t WHERE y = %(y)s", "named"),
    ],
)
def test_placeholders_are_respelled_outside_literals(sql: str, expected: str, style: str) -> None:
    statement = respell(sql)
    assert (statement.sql, statement.style) == (expected, style)


def test_mixed_placeholder_styles_are_refused() -> None:
    with pytest.raises(ValueError, match="mixes placeholder styles"):
        respell("SELECT ?, :name")


def test_values_come_back_as_sqlite_gives_them(postgres_dsn: str) -> None:
    conn = PgConnection.connect(postgres_dsn)
    try:
        conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, flag bigint, x double precision)")
        # Python booleans are the schema's 0/1 integers; executemany's rowcount is the sum.
        cursor = conn.executemany(
            "INSERT INTO t VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [(1, True, 0.5), (2, False, 1.5), (1, True, 9.0)],
        )
        assert cursor.rowcount == 2
        row = conn.execute(
            "SELECT sum(id), sum(flag), avg(id), sum(x), count(*) FROM t WHERE flag = ?", (True,)
        ).fetchone()
        # sum() of a bigint is numeric in PostgreSQL: an int when whole, else a float.
        assert row == (1, 1, 1.0, 0.5, 1)
        assert [type(v) for v in row] == [int, int, float, float, int]
        assert not conn.in_transaction
        conn.execute("BEGIN IMMEDIATE")
        assert conn.in_transaction
        locks = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        ).fetchone()
        assert locks == (1,)  # the writer lock, held to the end of the transaction
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_transaction_rolled_back_by_postgresql_is_run_again(postgres_dsn: str) -> None:
    store = await PostgresStore.open(postgres_dsn, node="n")
    attempts: list[int] = []

    def deadlocked_once(conn: Db) -> int:
        attempts.append(1)
        conn.execute(
            "INSERT INTO nodes (name, host, pid, version, started_at, seen_at) "
            "VALUES (?, 'h', 1, 'v', 0, 0)",
            (f"n{len(attempts)}",),
        )
        if len(attempts) == 1:
            # A real class-40 error from the server, as a deadlock victim gets.
            conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'chosen as victim' USING ERRCODE = '40P01'; END $$"
            )
        return len(attempts)

    try:
        assert await store._write_tx(deadlocked_once) == 2
        # The first attempt's insert was rolled back; the second committed.
        assert [n.name for n in await store.list_nodes()] == ["n2"]
    finally:
        await store.close()


async def test_other_errors_are_not_run_again(postgres_dsn: str) -> None:
    store = await PostgresStore.open(postgres_dsn, node="n")
    attempts: list[int] = []

    def broken(conn: Db) -> None:
        attempts.append(1)
        conn.execute("SELECT no_such_column FROM nodes")

    try:
        with pytest.raises(psycopg.errors.UndefinedColumn):
            await store._write_tx(broken)
        assert len(attempts) == 1
        assert await store.list_nodes() == []  # the connection is usable afterwards
    finally:
        await store.close()


async def test_a_lost_connection_is_store_unavailable_then_reopened(postgres_dsn: str) -> None:
    store = await PostgresStore.open(postgres_dsn, node="n")
    admin = psycopg.connect(postgres_server.require_server(), autocommit=True)

    def writer_pid(conn: Db) -> Any:
        return conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    try:
        pid = await store._write(writer_pid)
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreUnavailable, match="lost the connection"):
            await store._write(writer_pid)
        # The next call opens a new connection.
        assert await store._write(writer_pid) != pid
        await store.register_node(
            name="n", host="h", pid=1, version="v", api_url=None, now=1.0, dead_after=30
        )
        assert [n.name for n in await store.list_nodes()] == ["n"]
    finally:
        admin.close()
        await store.close()


async def test_an_unreachable_server_is_named_without_its_password() -> None:
    postgres_server.require_server()
    with pytest.raises(StoreUnavailable) as info:
        await PostgresStore.open(
            "host=127.0.0.1 port=1 dbname=x user=u password=hunter2 connect_timeout=2"
        )
    assert "cannot be reached" in str(info.value) and "port=1" in str(info.value)
    assert "hunter2" not in str(info.value)

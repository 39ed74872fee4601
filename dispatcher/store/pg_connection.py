"""A psycopg connection that runs the store's SQL as written for both databases.

The store's queries use sqlite3's placeholders (``?``, ``?1``, ``:name``); psycopg uses
``%s`` and ``%(name)s``. :class:`PgConnection` respells the placeholders once per distinct
statement (cached), and turns ``BEGIN IMMEDIATE`` — SQLite's "this transaction writes: take
the write lock now" — into ``BEGIN`` plus the cluster-wide writer lock, so that write
transactions on every node run one at a time, as they do on SQLite. Nothing else is
rewritten: the SQL itself is written in the dialect both databases share.

Values are adapted to match SQLite's: Python booleans are stored as integers (the schema's
flags are 0/1 integers on both), and ``numeric`` results (``sum()`` of a bigint) come back as
``int`` — or ``float`` when they have a fraction — rather than ``Decimal``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import Dumper, Loader
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

#: The advisory lock every write transaction holds (exclusive) and every claim holds
#: (shared): writes run one at a time across nodes; claims run side by side, each taking
#: only rows no other claim holds (FOR UPDATE SKIP LOCKED). Its key is arbitrary and fixed.
WRITER_LOCK = 0x70C5_1E01
_BEGIN_WRITE = f"BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK})"
_BEGIN_CLAIM = f"BEGIN; SELECT pg_advisory_xact_lock_shared({WRITER_LOCK})"

#: Where a statement of the store's SQL has a placeholder or a ``%`` psycopg would read.
_TOKEN = re.compile(
    r"""
    (?P<quoted>[Ee]'(?:[^'\\]|\\.|'')*'          # E'…': backslash escapes
      | '(?:[^']|'')*' | "(?:[^"]|"")*"          # string literals and quoted names
      | \$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$  # dollar quoting
      | --[^\n]* | /\*.*?\*/)                    # comments
    | (?P<cast>::)                               # a PostgreSQL cast, not a named placeholder
    | \?(?P<number>\d+)                          # ?1: a numbered placeholder
    | (?P<qmark>\?)                              # ?: the next positional one
    | :(?P<name>[A-Za-z_]\w*)                    # :name
    | (?P<percent>%)
    """,
    re.VERBOSE | re.DOTALL,
)

#: A server that stops answering (a failover that moves its address, a cut network) is noticed
#: within about 30 s rather than the kernel's ~15 minutes of retransmissions, during which the
#: node's writer or reader would hang. A DSN's own values win.
_KEEPALIVES: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


class _Statement:
    __slots__ = ("sql", "style")

    def __init__(self, sql: str, style: str) -> None:
        self.sql = sql
        self.style = style  # "positional", "numbered", "named" or "none"


@lru_cache(maxsize=4096)
def respell(sql: str) -> _Statement:
    """``sql`` with psycopg's placeholders, and which style of parameters it takes."""
    styles: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        if match.group("quoted") is not None:
            # psycopg reads every '%' of a statement that has parameters, literals included.
            return match.group(0).replace("%", "%%")
        if match.group("cast") is not None:
            return "::"
        if match.group("number") is not None:
            styles.add("numbered")
            return f"%(p{match.group('number')})s"
        if match.group("qmark") is not None:
            styles.add("positional")
            return "%s"
        if match.group("name") is not None:
            styles.add("named")
            return f"%({match.group('name')})s"
        return "%%"

    out = _TOKEN.sub(replace, sql)
    if len(styles) > 1:
        raise ValueError(f"a statement mixes placeholder styles {sorted(styles)}: {sql[:120]!r}")
    if not styles:
        # No parameters: psycopg sends the text as it is ('%' stays '%').
        return _Statement(sql, "none")
    return _Statement(out, styles.pop())


def _parameters(statement: _Statement, parameters: Any) -> Any:
    if statement.style == "numbered":
        if isinstance(parameters, Mapping):
            return {f"p{k}": v for k, v in parameters.items()}
        return {f"p{i}": v for i, v in enumerate(parameters, start=1)}
    if statement.style == "none":
        return None
    if statement.style == "named" and not isinstance(parameters, Mapping):
        raise TypeError("a statement with :name placeholders takes a mapping")
    return parameters


class _BoolAsIntDumper(Dumper):
    """True/False as the integers 1/0 the schema's flag columns hold (as sqlite3 stores them)."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


class _NumericLoader(Loader):
    """``numeric`` (PostgreSQL's type for sum() and avg() of integers) as int or float."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        # As SQLite: integer arithmetic stays integer, anything with a fraction is a float.
        return float(text) if "." in text or "e" in text.lower() else int(text)


class PgConnection:
    """A :class:`dispatcher.store.connections.Db` over one psycopg connection (autocommit;
    transactions are explicit, as on the store's SQLite connections)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    @classmethod
    def connect(
        cls, dsn: str, *, application_name: str = "tocsin", timeout: float = 10.0
    ) -> PgConnection:
        given = conninfo_to_dict(dsn)
        options = {k: v for k, v in _KEEPALIVES.items() if k not in given}
        conn = psycopg.connect(
            make_conninfo(dsn, **options),
            autocommit=True,
            application_name=application_name,
            connect_timeout=int(timeout),
        )
        conn.adapters.register_dumper(bool, _BoolAsIntDumper)
        conn.adapters.register_loader("numeric", _NumericLoader)
        return cls(conn)

    def execute(self, sql: str, parameters: Any = (), /) -> psycopg.Cursor[Any]:
        if sql == "BEGIN IMMEDIATE":
            # One round trip: without parameters psycopg sends both in one simple query.
            return self.raw.execute(_BEGIN_WRITE)
        statement = respell(sql)
        return self.raw.execute(statement.sql, _parameters(statement, parameters))

    def executemany(self, sql: str, parameters: Any, /) -> psycopg.Cursor[Any]:
        statement = respell(sql)
        cursor = self.raw.cursor()
        cursor.executemany(
            statement.sql,
            (_parameters(statement, p) for p in parameters),
        )
        return cursor

    def begin_claim(self) -> None:
        """A claim's transaction: beside other claims, never beside a write transaction."""
        self.raw.execute(_BEGIN_CLAIM)

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        return self.raw.closed or self.raw.info.status != pq.ConnStatus.OK

    def close(self) -> None:
        self.raw.close()

"""What the store's queries run on, whichever database holds the store.

The store's SQL is written once, in the part of SQLite's and PostgreSQL's dialects the two
share. Each query function takes a :class:`Db`: a ``sqlite3.Connection`` on SQLite, a
:class:`dispatcher.store.pg_connection.PgConnection` on PostgreSQL. The store's parts reach
the database only through :class:`StoreConnections`' three methods, which each store kind
implements over its own threads and connections.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

_PLANNER_HINT = re.compile(r"\s+(?:INDEXED\s+BY\s+\w+|NOT\s+INDEXED)\b")


@lru_cache(maxsize=1024)
def without_hints(sql: str) -> str:
    """``sql`` without SQLite's planner hints (``INDEXED BY index``, ``NOT INDEXED``), for a
    database that has none. A few reads name the index SQLite must walk (where, with some
    statistics, it would rather scan and sort); a hint changes how a statement is run, never
    what it returns, so dropping one elsewhere leaves the statement meaning the same."""
    return _PLANNER_HINT.sub("", sql)


class DbCursor(Protocol):
    """The part of a DB-API cursor the store uses."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Db(Protocol):
    """The part of a DB-API connection the store uses (placeholders ``?``, ``?1``, ``:name``)."""

    def execute(self, sql: str, parameters: Any = (), /) -> DbCursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> DbCursor: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


class StoreUnavailable(RuntimeError):
    """The database cannot be reached now (a server restart, a dropped connection). Nothing
    the failed call was to write was committed — or, for a lost COMMIT, it may have been:
    callers retry, and every write the engine makes is safe to repeat."""


class StoreConnections(ABC):
    """How a store's parts reach the database: run a function on the writer (one at a time per
    node; on PostgreSQL, write transactions take a lock shared by every node), or on a reader.
    """

    @abstractmethod
    async def _write(self, fn: Callable[[Db], T], *, urgent: bool = False) -> T:
        """Run ``fn`` on the writer; ``fn`` manages its own transaction. ``urgent`` work (a new
        warning, its first plan stage, loudspeaker commands) goes before queued bulk work."""

    @abstractmethod
    async def _write_tx(
        self, fn: Callable[[Db], T], *, urgent: bool = False, exclusive: bool = True
    ) -> T:
        """:meth:`_write` inside one transaction, committed when ``fn`` returns and rolled back
        when it raises. ``exclusive=False`` is for claims, which lock only the rows they take
        (``FOR UPDATE SKIP LOCKED``) so that several nodes claim side by side."""

    @abstractmethod
    async def _read(self, fn: Callable[[Db], T]) -> T:
        """Run ``fn`` on a reader connection beside the writer."""

    async def _write_aside(self, fn: Callable[[Db], T]) -> T:
        """A small write that must not queue behind bulk work (a node's heartbeat): one
        autocommit statement needing no writer lock. Where the database has one writer
        (SQLite), it is the urgent lane of that writer."""
        return await self._write(fn, urgent=True)

    @abstractmethod
    async def close(self) -> None:
        """Finish queued work and close every connection."""

    #: ``" FOR UPDATE SKIP LOCKED"`` where the database has row locks; SQLite has one writer.
    _skip_locked: str = ""
    #: Whether statements keep SQLite's planner hints (``INDEXED BY``); where False, the
    #: queries that carry some pass them through :func:`without_hints`.
    _planner_hints: bool = True
    #: This dispatcher node's name: the leases it takes carry it (``deliveries.leased_by``).
    node: str = "tocsin"

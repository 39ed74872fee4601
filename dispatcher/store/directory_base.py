"""The directory's SQL, written once for SQLite and PostgreSQL: what the CSV importer writes
through, the exporter reads from and the synthetic city loader fills.

Satisfies :class:`dispatcher.directory.protocol.DirectoryWriter` and ``DirectoryReader``.
Synchronous, on one :class:`dispatcher.store.connections.Db` connection of the directory's own
(the CLI calls it directly, the daemon from a worker thread).

A validated CSV file is applied from the importer's staging file (a SQLite file), which each
dialect makes readable beside the store's tables (:meth:`SqlDirectory._attached`): SQLite
ATTACHes it as ``staging``; PostgreSQL copies its rows into temporary tables of the
connection's own. From there every chunk is one ``INSERT … SELECT … WHERE n BETWEEN ?1 AND ?2
ON CONFLICT …`` in a short ``BEGIN IMMEDIATE`` transaction (on PostgreSQL: the writer lock
every node's write transactions take), so the daemon's writes get the lock between chunks.
Derived rows (the area closure, village codes copied down) are worked out first by reading the
store into scratch tables beside the staged rows — no write lock — and then only the changes
are written, in chunks too.

Rows go in parents first (areas top down, then grids, households, persons and their grid
memberships, devices and the areas they serve), so PostgreSQL's foreign keys, which are always
checked, hold after every statement.

The ``begin``/``upsert_*``/``commit`` methods write rows directly inside one caller-managed
transaction; the synthetic city loader uses them.

Where to find the store is a :data:`DirectoryTarget`: a path is a SQLite file, a string that
:func:`is_postgres_dsn` recognises is a PostgreSQL DSN (any other string is a SQLite path).
:func:`open_directory` opens either.
"""

from __future__ import annotations

import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from dispatcher.directory.protocol import (
    DIRECTORY_TABLES,
    DirectoryReader,
    DirectoryWriter,
    OnTransaction,
)
from dispatcher.directory.records import (
    AreaRecord,
    DeviceRecord,
    GridRecord,
    HouseholdRecord,
    PersonRecord,
)
from dispatcher.directory.staging import STAGED_COLUMNS
from dispatcher.domain import AreaLevel, Channel, DeviceKind
from dispatcher.store.connections import Db

#: Where a directory is: a SQLite file, or a PostgreSQL DSN (see :func:`is_postgres_dsn`).
DirectoryTarget = str | os.PathLike[str]

#: Bound parameters per lookup query, well under SQLite's limit.
_CHUNK = 500

_DSN_URL = re.compile(r"^\s*postgres(?:ql)?://", re.IGNORECASE)
#: A libpq key/value connection string names at least one of these (``host=… dbname=…``).
_DSN_KEYWORDS = re.compile(
    r"(?:^|\s)(?:host|hostaddr|port|dbname|user|service|sslmode)\s*=", re.IGNORECASE
)


def is_postgres_dsn(target: DirectoryTarget) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than a SQLite file: a ``str``
    that is a ``postgresql://``/``postgres://`` URL or a libpq ``key=value`` string naming
    ``host``, ``hostaddr``, ``port``, ``dbname``, ``user``, ``service`` or ``sslmode``. A
    :class:`pathlib.Path` (any ``os.PathLike``) is always a file."""
    if not isinstance(target, str):
        return False
    return bool(_DSN_URL.match(target) or _DSN_KEYWORDS.search(target))


def open_directory(target: DirectoryTarget) -> SqlDirectory:
    """The directory in ``target``, migrated to the newest schema first (a SQLite file is
    created if needed). Close it (or use it as a context manager) when done."""
    if isinstance(target, str) and is_postgres_dsn(target):
        from dispatcher.store.pg_directory import PgDirectory

        return PgDirectory.open(target)
    from dispatcher.store.sqlite_directory import SqliteDirectory

    return SqliteDirectory.open(target)


def _on_conflict(table: str, *, only_changed: bool = False) -> str:
    """What an upsert sets when the key exists: every column but the key; ``only_changed``:
    and only where one of them differs, leaving an unchanged row unwritten."""
    columns = STAGED_COLUMNS[table]
    sql = f"ON CONFLICT ({columns[0]}) DO UPDATE SET " + ", ".join(
        f"{c} = excluded.{c}" for c in columns[1:]
    )
    if only_changed:
        sql += " WHERE " + " OR ".join(
            f"{table}.{c} IS DISTINCT FROM excluded.{c}" for c in columns[1:]
        )
    return sql


def _upsert_values(table: str) -> str:
    columns = STAGED_COLUMNS[table]
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        + _on_conflict(table)
    )


_UPSERT_AREA = _upsert_values("areas")
_UPSERT_GRID = _upsert_values("grids")
_UPSERT_HOUSEHOLD = _upsert_values("households")
_UPSERT_PERSON = _upsert_values("persons")
_UPSERT_DEVICE = _upsert_values("devices")

_LEVEL_ORDER = (
    "CASE level "
    + " ".join(f"WHEN '{level.value}' THEN {rank}" for rank, level in enumerate(AreaLevel))
    + " END"
)


class SqlDirectory(ABC):
    """The directory tables of one store; :class:`SqliteDirectory` and :class:`PgDirectory`
    say where the staged rows and scratch tables live and how chunks and snapshots run."""

    #: How a store table is named while a staging file is readable beside it.
    _STORE = ""
    #: ``ORDER BY`` suffix that sorts text by code point, as the canonical export needs.
    _BINARY = ""
    #: The aggregate joining a person's grids / a device's areas with ``;``.
    _CONCAT = "string_agg"
    #: A scratch table's row number: 1, 2, 3, … as rows are inserted.
    _NUMBERED = "n INTEGER PRIMARY KEY"
    #: After the definition of a scratch table that has a primary key of its own.
    _KEYED = ""
    #: Whether applying a staged row whose stored row is the same leaves it unwritten.
    _SKIP_UNCHANGED = False
    #: Staged rows per write transaction when the importer is not told otherwise.
    apply_chunk_rows = 5000

    def __init__(self, conn: Db, *, owns_connection: bool = False) -> None:
        self.conn = conn
        self._owns_connection = owns_connection
        # Whether the membership tables may hold rows for the ids being upserted; when they
        # were empty as the transaction began (a first import) deleting old rows is skipped.
        self._members_may_exist = True
        self._device_areas_may_exist = True

    def close(self) -> None:
        if self._owns_connection:
            self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- where tables are, per dialect ---------------------------------------------------------
    @abstractmethod
    def _staged(self, table: str) -> str:
        """The name of a staged (or scratch, ``_``-prefixed) table beside the store's."""

    @abstractmethod
    def _attached(self, staging: Path, tables: Sequence[str]) -> AbstractContextManager[None]:
        """Make the staging file's ``tables`` (with their membership tables) readable as
        :meth:`_staged` names, and scratch tables creatable, until the block ends."""

    def bulk_load(self) -> AbstractContextManager[None]:
        """Around a bulk load of rows known to be consistent (the synthetic city)."""
        return _nothing()

    # -- one caller-managed transaction (the synthetic loader) --------------------------------
    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self._members_may_exist = self._has_rows("grid_members")
        self._device_areas_may_exist = self._has_rows("device_areas")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _has_rows(self, table: str) -> bool:
        (found,) = self.conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM {self._STORE}{table})"
        ).fetchone()
        return bool(found)

    # -- lookups -----------------------------------------------------------------------------
    def grid_villages(self, ids: Collection[str]) -> dict[str, str]:
        return self._lookup("SELECT id, village_code FROM grids WHERE id IN ({})", ids)

    def household_villages(self, ids: Collection[str]) -> dict[str, str]:
        return self._lookup("SELECT id, village_code FROM households WHERE id IN ({})", ids)

    def _lookup(self, sql: str, keys: Collection[str]) -> dict[str, str]:
        wanted = list(keys)
        found: dict[str, str] = {}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            found.update(self.conn.execute(sql.format(",".join("?" * len(chunk))), chunk))
        return found

    # -- direct writes, inside begin() … commit() ----------------------------------------------
    def upsert_areas(self, rows: Sequence[AreaRecord]) -> None:
        self.conn.executemany(_UPSERT_AREA, rows)

    def upsert_grids(self, rows: Sequence[GridRecord]) -> None:
        self.conn.executemany(_UPSERT_GRID, rows)

    def upsert_households(self, rows: Sequence[HouseholdRecord]) -> None:
        self.conn.executemany(_UPSERT_HOUSEHOLD, rows)

    def upsert_persons(self, rows: Sequence[PersonRecord]) -> None:
        self.conn.executemany(
            _UPSERT_PERSON,
            [
                (
                    r.id,
                    r.name,
                    r.phones[0] if r.phones else None,
                    ";".join(r.phones[1:]),
                    r.household_id,
                    r.village_code,
                    r.roles,
                    r.vulnerable,
                    r.lives_alone,
                    ";".join(r.preferred_channels),
                )
                for r in rows
            ],
        )
        if self._members_may_exist:
            self._delete_for("grid_members", "person_id", [r.id for r in rows])
        members = [(grid, r.id) for r in rows if r.grids for grid in r.grids]
        if members:
            self.conn.executemany(
                "INSERT INTO grid_members (grid_id, person_id) VALUES (?, ?)", members
            )

    def upsert_devices(self, rows: Sequence[DeviceRecord]) -> None:
        self.conn.executemany(_UPSERT_DEVICE, [r[:6] for r in rows])
        if self._device_areas_may_exist:
            self._delete_for("device_areas", "device_id", [r.id for r in rows])
        served = [(r.id, code) for r in rows for code in r.serves]
        if served:
            self.conn.executemany(
                "INSERT INTO device_areas (device_id, area_code) VALUES (?, ?)", served
            )

    def _delete_for(self, table: str, column: str, ids: list[str]) -> None:
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            self.conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", chunk)

    # -- derived data ------------------------------------------------------------------------
    def _closure_of_areas(self) -> str:
        # Levels strictly rise towards the root, so the walk ends within five steps; the depth
        # guard only protects against a hand-edited database.
        areas = f"{self._STORE}areas"
        return (
            "WITH RECURSIVE up (descendant, ancestor, depth) AS ("
            f"  SELECT code, code, 0 FROM {areas}"
            "  UNION ALL"
            "  SELECT up.descendant, a.parent_code, up.depth + 1 FROM up"
            f"  JOIN {areas} a ON a.code = up.ancestor"
            "  WHERE a.parent_code IS NOT NULL AND up.depth < 10"
            ") SELECT ancestor, descendant, depth FROM up"
        )

    def rebuild_area_closure(self) -> None:
        """Recompute the whole closure inside the caller's transaction (a bulk load)."""
        self.conn.execute(f"DELETE FROM {self._STORE}area_closure")
        self.conn.execute(
            f"INSERT INTO {self._STORE}area_closure (ancestor, descendant, depth) "
            + self._closure_of_areas()
        )

    # -- applying a validated file from the importer's staging file --------------------------
    def apply_staged(
        self, staging: Path, table: str, *, chunk_rows: int, on_transaction: OnTransaction
    ) -> int:
        if table not in STAGED_COLUMNS:
            raise ValueError(f"not a directory table: {table!r}")
        store, staged = self._STORE, self._staged
        columns = ", ".join(STAGED_COLUMNS[table])
        with self._attached(staging, [table]):
            # The WHERE clause also settles SQLite's parsing ambiguity of INSERT … SELECT … ON
            # CONFLICT. Staged order is file order: parents before children.
            statements = [
                f"INSERT INTO {store}{table} ({columns}) SELECT {columns} FROM {staged(table)} "
                f"WHERE n BETWEEN ?1 AND ?2 ORDER BY n "
                + _on_conflict(table, only_changed=self._SKIP_UNCHANGED)
            ]
            # When the membership table was empty as the apply began (a first import), the
            # chunk's persons cannot have old memberships: deleting them is skipped. Each id is
            # staged once, so rows written by earlier chunks belong to other persons.
            if table == "persons":
                if self._has_rows("grid_members"):
                    statements.append(
                        f"DELETE FROM {store}grid_members WHERE person_id IN "
                        f"(SELECT id FROM {staged('persons')} WHERE n BETWEEN ?1 AND ?2)"
                    )
                statements.append(
                    f"INSERT INTO {store}grid_members (grid_id, person_id) "
                    f"SELECT m.grid_id, p.id FROM {staged('grid_members')} m "
                    f"JOIN {staged('persons')} p ON p.n = m.n WHERE m.n BETWEEN ?1 AND ?2"
                )
            elif table == "devices":
                if self._has_rows("device_areas"):
                    statements.append(
                        f"DELETE FROM {store}device_areas WHERE device_id IN "
                        f"(SELECT id FROM {staged('devices')} WHERE n BETWEEN ?1 AND ?2)"
                    )
                statements.append(
                    f"INSERT INTO {store}device_areas (device_id, area_code) "
                    f"SELECT d.id, a.area_code FROM {staged('device_areas')} a "
                    f"JOIN {staged('devices')} d ON d.n = a.n WHERE a.n BETWEEN ?1 AND ?2"
                )
            (rows,) = self.conn.execute(f"SELECT count(*) FROM {staged(table)}").fetchone()
            self._in_chunks(statements, int(rows), chunk_rows, on_transaction)
        return int(rows)

    def refresh_area_closure(
        self, staging: Path, *, chunk_rows: int, on_transaction: OnTransaction
    ) -> None:
        store, staged = self._STORE, self._staged
        with self._attached(staging, []):
            # Off the write lock: the closure as it should be, then how it differs from the
            # stored one. New pairs go in before stale pairs go out, so while the changes are
            # applied an area is briefly under both its old and new parent, never under none.
            self._scratch(
                "_closure",
                "(ancestor TEXT NOT NULL, descendant TEXT NOT NULL, depth INTEGER NOT NULL, "
                f"PRIMARY KEY (ancestor, descendant)){self._KEYED}",
                "ancestor, descendant, depth",
                self._closure_of_areas(),
            )
            added = self._scratch(
                "_closure_added",
                f"({self._NUMBERED}, ancestor TEXT, descendant TEXT, depth INTEGER)",
                "ancestor, descendant, depth",
                f"SELECT c.ancestor, c.descendant, c.depth FROM {staged('_closure')} c "
                f"LEFT JOIN {store}area_closure a "
                "ON a.ancestor = c.ancestor AND a.descendant = c.descendant "
                "WHERE a.depth IS DISTINCT FROM c.depth",
            )
            stale = self._scratch(
                "_closure_stale",
                f"({self._NUMBERED}, ancestor TEXT, descendant TEXT)",
                "ancestor, descendant",
                f"SELECT a.ancestor, a.descendant FROM {store}area_closure a WHERE NOT EXISTS "
                f"(SELECT 1 FROM {staged('_closure')} c "
                "WHERE c.ancestor = a.ancestor AND c.descendant = a.descendant)",
            )
            self._in_chunks(
                [
                    f"INSERT INTO {store}area_closure (ancestor, descendant, depth) "
                    f"SELECT ancestor, descendant, depth FROM {staged('_closure_added')} "
                    "WHERE n BETWEEN ?1 AND ?2 "
                    "ON CONFLICT (ancestor, descendant) DO UPDATE SET depth = excluded.depth"
                ],
                added,
                chunk_rows,
                on_transaction,
            )
            self._in_chunks(
                [
                    f"DELETE FROM {store}area_closure WHERE (ancestor, descendant) IN "
                    f"(SELECT ancestor, descendant FROM {staged('_closure_stale')} "
                    "WHERE n BETWEEN ?1 AND ?2)"
                ],
                stale,
                chunk_rows,
                on_transaction,
            )

    def cascade_village_codes(
        self, staging: Path, *, chunk_rows: int, on_transaction: OnTransaction
    ) -> None:
        store = self._STORE
        with self._attached(staging, []):
            # Off the write lock: which rows have a village other than their grid's or
            # household's (usually none: only moved grids and households make any). Households
            # first, since persons copy theirs.
            for table, parents, parent_key, name in (
                ("households", "grids", "grid_id", "_household_villages"),
                ("persons", "households", "household_id", "_person_villages"),
            ):
                moved = self._scratch(
                    name,
                    f"({self._NUMBERED}, id TEXT NOT NULL, village_code TEXT NOT NULL)",
                    "id, village_code",
                    f"SELECT t.id, p.village_code FROM {store}{table} t "
                    f"JOIN {store}{parents} p ON p.id = t.{parent_key} "
                    "WHERE t.village_code <> p.village_code",
                )
                self._in_chunks(
                    [
                        f"UPDATE {store}{table} AS t SET village_code = m.village_code "
                        f"FROM {self._staged(name)} m WHERE m.n BETWEEN ?1 AND ?2 AND t.id = m.id"
                    ],
                    moved,
                    chunk_rows,
                    on_transaction,
                )

    def _scratch(self, name: str, schema: str, columns: str, select: str) -> int:
        """Fill a new scratch table ``name`` (``schema``: its definition after the name) with
        ``select``'s rows as ``columns``, and return its row count. The query reads the store,
        but only the scratch table is written: the store's write lock is not taken."""
        self.conn.execute(f"DROP TABLE IF EXISTS {self._staged(name)}")
        self.conn.execute(f"CREATE {self._scratch_kind()}TABLE {self._staged(name)} {schema}")
        self.conn.execute(f"INSERT INTO {self._staged(name)} ({columns}) {select}")
        (rows,) = self.conn.execute(f"SELECT count(*) FROM {self._staged(name)}").fetchone()
        return int(rows)

    def _scratch_kind(self) -> str:
        """``TEMPORARY `` where scratch tables are the connection's own temporary tables."""
        return ""

    # -- write transactions, a chunk at a time --------------------------------------------------
    def _in_chunks(
        self,
        statements: Sequence[str],
        rows: int,
        chunk_rows: int,
        on_transaction: OnTransaction,
    ) -> None:
        """Run ``statements`` for staged rows 1..``rows``, ``chunk_rows`` at a time, each chunk
        in one write transaction of its own; the statements take the chunk's first and last
        row as ``?1`` and ``?2``. :meth:`_chunk_pauses` yields before each chunk, so a dialect
        can step aside for writers now and then."""
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        with self._chunk_pauses() as pause:
            for first in range(1, rows + 1, chunk_rows):
                last = min(first + chunk_rows - 1, rows)
                pause()
                self.conn.execute("BEGIN IMMEDIATE")  # waits for other writers
                started = time.perf_counter()
                try:
                    for sql in statements:
                        self.conn.execute(sql, (first, last))
                    self.conn.execute("COMMIT")
                except BaseException:
                    self.rollback()
                    raise
                seconds = time.perf_counter() - started
                self._after_chunk()
                on_transaction(last - first + 1, seconds)

    @contextmanager
    def _chunk_pauses(self) -> Iterator[Any]:
        """A callable run before each chunk's transaction (nothing by default)."""
        yield _no_pause

    def _after_chunk(self) -> None:  # noqa: B027 - a hook: nothing to do by default
        """Run after each chunk's commit, off the write lock."""

    # -- reads -------------------------------------------------------------------------------
    @abstractmethod
    def snapshot(self) -> AbstractContextManager[None]:
        """A read transaction whose view stays fixed while writers carry on."""

    def _rows(self, sql: str) -> Iterator[Any]:
        """The rows of a query without parameters, streamed rather than held in memory."""
        yield from self.conn.execute(sql)

    def counts(self) -> dict[str, int]:
        return {
            table: int(self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in DIRECTORY_TABLES
        }

    def iter_areas(self) -> Iterator[AreaRecord]:
        rows = self._rows(
            "SELECT code, name, level, parent_code FROM areas "
            f"ORDER BY {_LEVEL_ORDER}, code{self._BINARY}"
        )
        for code, name, level, parent in rows:
            yield AreaRecord(code, name, AreaLevel(level), parent)

    def iter_grids(self) -> Iterator[GridRecord]:
        rows = self._rows(f"SELECT id, village_code, name FROM grids ORDER BY id{self._BINARY}")
        for row in rows:
            yield GridRecord(*row)

    def iter_households(self) -> Iterator[HouseholdRecord]:
        rows = self._rows(
            f"SELECT id, grid_id, village_code, address FROM households ORDER BY id{self._BINARY}"
        )
        for row in rows:
            yield HouseholdRecord(*row)

    def iter_persons(self) -> Iterator[PersonRecord]:
        rows = self._rows(
            "SELECT id, name, phone, other_phones, household_id, village_code, roles, "
            "vulnerable, lives_alone, preferred_channels, "
            f"(SELECT {self._CONCAT}(grid_id, ';') FROM grid_members WHERE person_id = p.id) "
            f"FROM persons p ORDER BY id{self._BINARY}"
        )
        channels = {channel.value: channel for channel in Channel}
        for (
            person_id,
            name,
            phone,
            other_phones,
            household_id,
            village_code,
            roles,
            vulnerable,
            lives_alone,
            preferred,
            grids,
        ) in rows:
            phones: tuple[str, ...] = ()
            if phone:
                phones = (phone, *other_phones.split(";")) if other_phones else (phone,)
            yield PersonRecord(
                person_id,
                name,
                phones,
                household_id,
                village_code,
                roles,
                bool(vulnerable),
                bool(lives_alone),
                tuple(channels[c] for c in preferred.split(";")) if preferred else (),
                tuple(sorted(grids.split(";"))) if grids else (),
            )

    def iter_devices(self) -> Iterator[DeviceRecord]:
        rows = self._rows(
            "SELECT id, kind, name, adapter, address, area_code, "
            f"(SELECT {self._CONCAT}(area_code, ';') FROM device_areas WHERE device_id = d.id) "
            f"FROM devices d ORDER BY id{self._BINARY}"
        )
        for device_id, kind, name, adapter, address, area_code, serves in rows:
            yield DeviceRecord(
                device_id,
                DeviceKind(kind),
                name,
                adapter,
                address,
                area_code,
                tuple(sorted(serves.split(";"))) if serves else (),
            )

    def devices_with_areas(
        self, adapter: str, kind: DeviceKind = DeviceKind.LOUDSPEAKER
    ) -> list[tuple[str, tuple[str, ...]]]:
        """``(address, areas)`` of the devices of ``kind`` served by adapter instance
        ``adapter``, by device id: the address (the device id when it is empty), then the area
        the device is installed in followed by each of its ancestors, nearest first (what
        ``tocsin simulate speakers --adapter`` runs a fleet of)."""
        devices = self.conn.execute(
            "SELECT id, address, area_code FROM devices WHERE kind = ? AND adapter = ? "
            f"ORDER BY id{self._BINARY}",
            (kind.value, adapter),
        ).fetchall()
        ancestors: dict[str, list[str]] = {}
        rows = self.conn.execute(
            "SELECT descendant, ancestor FROM area_closure WHERE descendant IN "
            "(SELECT area_code FROM devices WHERE kind = ? AND adapter = ?) "
            "ORDER BY descendant, depth",
            (kind.value, adapter),
        )
        for descendant, ancestor in rows:
            ancestors.setdefault(descendant, []).append(ancestor)
        return [
            (address or device_id, tuple(ancestors.get(area_code) or [area_code]))
            for device_id, address, area_code in devices
        ]


def _no_pause() -> None:
    """Nothing to do between chunks (PostgreSQL queues the writer lock's waiters itself)."""


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if TYPE_CHECKING:  # mypy checks that the class keeps satisfying both protocols

    def _satisfies(store: SqlDirectory) -> tuple[DirectoryWriter, DirectoryReader]:
        return store, store

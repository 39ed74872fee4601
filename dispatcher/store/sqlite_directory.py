"""The directory on SQLite: what the CSV importer writes through and the exporter reads from.

Satisfies :class:`dispatcher.directory.protocol.DirectoryWriter` and ``DirectoryReader``.
Synchronous, on one connection from :func:`dispatcher.store.sqlite.connect`.

A validated CSV file is applied from the importer's staging file, ATTACHed to this connection
as ``staging``, with ``INSERT … SELECT … WHERE n BETWEEN ? AND ?``: one short ``BEGIN
IMMEDIATE`` transaction per chunk, so the daemon's writes get the lock between chunks. Derived
rows (the area closure, village codes copied down) are worked out first by reading the store
into the staging file — a read, which in WAL mode never blocks a writer — and then only the
changes are written, in chunks too.

The ``begin``/``upsert_*``/``commit`` methods write rows directly inside one caller-managed
transaction; the synthetic city loader uses them.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

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
from dispatcher.store.migrations import migrate_sqlite
from dispatcher.store.sqlite import connect

#: Bound parameters per lookup query, well under SQLite's limit.
_CHUNK = 500
#: Applying a staged file: after this long of back-to-back chunks, step aside for this long.
#: SQLite's busy handler sleeps at most 100 ms between attempts, so a writer that was waiting
#: gets the lock in the pause at the latest: it waits at most about one burst plus one chunk.
#: The pauses cost about a third of the apply time, a few seconds for 2 million rows.
_BURST_SECONDS = 0.25
_PAUSE_SECONDS = 0.15

#: What an upsert sets when the key exists: every column but the key.
_ON_CONFLICT = {
    table: f"ON CONFLICT ({columns[0]}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    for table, columns in STAGED_COLUMNS.items()
}


def _upsert_values(table: str) -> str:
    columns = STAGED_COLUMNS[table]
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        + _ON_CONFLICT[table]
    )


def _upsert_staged(table: str) -> str:
    """One chunk of a staged table into the store: rows ``?1`` to ``?2``, in staged order."""
    columns = ", ".join(STAGED_COLUMNS[table])
    # The WHERE clause also settles SQLite's parsing ambiguity of INSERT … SELECT … ON CONFLICT.
    return (
        f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM staging.{table} "
        f"WHERE n BETWEEN ?1 AND ?2 ORDER BY n {_ON_CONFLICT[table]}"
    )


_UPSERT_AREA = _upsert_values("areas")
_UPSERT_GRID = _upsert_values("grids")
_UPSERT_HOUSEHOLD = _upsert_values("households")
_UPSERT_PERSON = _upsert_values("persons")
_UPSERT_DEVICE = _upsert_values("devices")

# Levels strictly rise towards the root, so the walk ends within five steps; the depth guard
# only protects against a hand-edited database.
_CLOSURE_OF_AREAS = (
    "WITH RECURSIVE up (descendant, ancestor, depth) AS ("
    "  SELECT code, code, 0 FROM main.areas"
    "  UNION ALL"
    "  SELECT up.descendant, a.parent_code, up.depth + 1 FROM up"
    "  JOIN main.areas a ON a.code = up.ancestor"
    "  WHERE a.parent_code IS NOT NULL AND up.depth < 10"
    ") SELECT ancestor, descendant, depth FROM up"
)
_REBUILD_CLOSURE = (
    f"INSERT INTO main.area_closure (ancestor, descendant, depth) {_CLOSURE_OF_AREAS}"
)

# Staged memberships: replace those of the chunk's persons / devices.
_DELETE_STAGED_MEMBERS = (
    "DELETE FROM main.grid_members WHERE person_id IN "
    "(SELECT id FROM staging.persons WHERE n BETWEEN ?1 AND ?2)"
)
_INSERT_STAGED_MEMBERS = (
    "INSERT INTO main.grid_members (grid_id, person_id) "
    "SELECT m.grid_id, p.id FROM staging.grid_members m JOIN staging.persons p ON p.n = m.n "
    "WHERE m.n BETWEEN ?1 AND ?2"
)
_DELETE_STAGED_DEVICE_AREAS = (
    "DELETE FROM main.device_areas WHERE device_id IN "
    "(SELECT id FROM staging.devices WHERE n BETWEEN ?1 AND ?2)"
)
_INSERT_STAGED_DEVICE_AREAS = (
    "INSERT INTO main.device_areas (device_id, area_code) "
    "SELECT d.id, a.area_code FROM staging.device_areas a JOIN staging.devices d ON d.n = a.n "
    "WHERE a.n BETWEEN ?1 AND ?2"
)
_LEVEL_ORDER = (
    "CASE level "
    + " ".join(f"WHEN '{level.value}' THEN {rank}" for rank, level in enumerate(AreaLevel))
    + " END"
)


class SqliteDirectory:
    """The directory tables of one SQLite database."""

    def __init__(self, conn: sqlite3.Connection, *, owns_connection: bool = False) -> None:
        self.conn = conn
        self._owns_connection = owns_connection
        # Whether the membership tables may hold rows for the ids being upserted; when they
        # were empty as the transaction began (a first import) deleting old rows is skipped.
        self._members_may_exist = True
        self._device_areas_may_exist = True

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SqliteDirectory:
        """Open (creating and migrating if needed) a database file."""
        db_path = Path(path)
        if str(db_path) != ":memory:":
            db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(db_path)
        try:
            migrate_sqlite(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, owns_connection=True)

    def close(self) -> None:
        if self._owns_connection:
            self.conn.close()

    def __enter__(self) -> SqliteDirectory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
        (found,) = self.conn.execute(f"SELECT EXISTS (SELECT 1 FROM main.{table})").fetchone()
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
        self.conn.executemany(
            "INSERT INTO device_areas (device_id, area_code) VALUES (?, ?)",
            [(r.id, code) for r in rows for code in r.serves],
        )

    def _delete_for(self, table: str, column: str, ids: list[str]) -> None:
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            self.conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", chunk)

    # -- derived data ------------------------------------------------------------------------
    def rebuild_area_closure(self) -> None:
        """Recompute the whole closure inside the caller's transaction (a bulk load)."""
        self.conn.execute("DELETE FROM main.area_closure")
        self.conn.execute(_REBUILD_CLOSURE)

    # -- applying a validated file from the importer's staging file --------------------------
    def apply_staged(
        self, staging: Path, table: str, *, chunk_rows: int, on_transaction: OnTransaction
    ) -> int:
        if table not in STAGED_COLUMNS:
            raise ValueError(f"not a directory table: {table!r}")
        with self._attached(staging):
            # When the membership table was empty as the apply began (a first import), the
            # chunk's persons cannot have old memberships: deleting them is skipped. Each id is
            # staged once, so rows written by earlier chunks belong to other persons.
            statements = [_upsert_staged(table)]
            if table == "persons":
                if self._has_rows("grid_members"):
                    statements.append(_DELETE_STAGED_MEMBERS)
                statements.append(_INSERT_STAGED_MEMBERS)
            elif table == "devices":
                if self._has_rows("device_areas"):
                    statements.append(_DELETE_STAGED_DEVICE_AREAS)
                statements.append(_INSERT_STAGED_DEVICE_AREAS)
            (rows,) = self.conn.execute(f"SELECT count(*) FROM staging.{table}").fetchone()
            self._in_chunks(statements, int(rows), chunk_rows, on_transaction)
        return int(rows)

    def refresh_area_closure(
        self, staging: Path, *, chunk_rows: int, on_transaction: OnTransaction
    ) -> None:
        with self._attached(staging):
            # Off the write lock: the closure as it should be, then how it differs from the
            # stored one. New pairs go in before stale pairs go out, so while the changes are
            # applied an area is briefly under both its old and new parent, never under none.
            self._scratch(
                "_closure",
                "(ancestor TEXT NOT NULL, descendant TEXT NOT NULL, depth INTEGER NOT NULL, "
                "PRIMARY KEY (ancestor, descendant)) WITHOUT ROWID",
                "ancestor, descendant, depth",
                _CLOSURE_OF_AREAS,
            )
            added = self._scratch(
                "_closure_added",
                "(n INTEGER PRIMARY KEY, ancestor TEXT, descendant TEXT, depth INTEGER)",
                "ancestor, descendant, depth",
                "SELECT c.ancestor, c.descendant, c.depth FROM staging._closure c "
                "LEFT JOIN main.area_closure a "
                "ON a.ancestor = c.ancestor AND a.descendant = c.descendant "
                "WHERE a.depth IS NOT c.depth",
            )
            stale = self._scratch(
                "_closure_stale",
                "(n INTEGER PRIMARY KEY, ancestor TEXT, descendant TEXT)",
                "ancestor, descendant",
                "SELECT a.ancestor, a.descendant FROM main.area_closure a WHERE NOT EXISTS "
                "(SELECT 1 FROM staging._closure c "
                "WHERE c.ancestor = a.ancestor AND c.descendant = a.descendant)",
            )
            self._in_chunks(
                [
                    "INSERT INTO main.area_closure (ancestor, descendant, depth) "
                    "SELECT ancestor, descendant, depth FROM staging._closure_added "
                    "WHERE n BETWEEN ?1 AND ?2 "
                    "ON CONFLICT (ancestor, descendant) DO UPDATE SET depth = excluded.depth"
                ],
                added,
                chunk_rows,
                on_transaction,
            )
            self._in_chunks(
                [
                    "DELETE FROM main.area_closure WHERE (ancestor, descendant) IN "
                    "(SELECT ancestor, descendant FROM staging._closure_stale "
                    "WHERE n BETWEEN ?1 AND ?2)"
                ],
                stale,
                chunk_rows,
                on_transaction,
            )

    def cascade_village_codes(
        self, staging: Path, *, chunk_rows: int, on_transaction: OnTransaction
    ) -> None:
        with self._attached(staging):
            # Off the write lock: which rows have a village other than their grid's or
            # household's (usually none: only moved grids and households make any). Households
            # first, since persons copy theirs.
            for table, parents, parent_key, name in (
                ("households", "grids", "grid_id", "_household_villages"),
                ("persons", "households", "household_id", "_person_villages"),
            ):
                moved = self._scratch(
                    name,
                    "(n INTEGER PRIMARY KEY, id TEXT NOT NULL, village_code TEXT NOT NULL)",
                    "id, village_code",
                    f"SELECT t.id, p.village_code FROM main.{table} t "
                    f"JOIN main.{parents} p ON p.id = t.{parent_key} "
                    "WHERE t.village_code <> p.village_code",
                )
                self._in_chunks(
                    [
                        f"UPDATE main.{table} AS t SET village_code = m.village_code "
                        f"FROM staging.{name} m WHERE m.n BETWEEN ?1 AND ?2 AND t.id = m.id"
                    ],
                    moved,
                    chunk_rows,
                    on_transaction,
                )

    @contextmanager
    def _attached(self, staging: Path) -> Iterator[None]:
        if self.conn.in_transaction:
            raise RuntimeError("cannot apply a staging file inside an open transaction")
        self.conn.execute("ATTACH DATABASE ? AS staging", (str(staging),))
        try:
            # Scratch space: the staging file is deleted when the import ends.
            self.conn.execute("PRAGMA staging.journal_mode = OFF")
            self.conn.execute("PRAGMA staging.synchronous = OFF")
            yield
        finally:
            self.rollback()
            self.conn.execute("DETACH DATABASE staging")

    def _scratch(self, name: str, schema: str, columns: str, select: str) -> int:
        """Fill a new staging table ``name`` (``schema``: its definition after the name) with
        ``select``'s rows as ``columns``, and return its row count. The query reads the store,
        but only the staging file is written: the store's write lock is not taken."""
        self.conn.execute(f"DROP TABLE IF EXISTS staging.{name}")
        self.conn.execute(f"CREATE TABLE staging.{name} {schema}")
        self.conn.execute(f"INSERT INTO staging.{name} ({columns}) {select}")
        (rows,) = self.conn.execute(f"SELECT count(*) FROM staging.{name}").fetchone()
        return int(rows)

    def _in_chunks(
        self,
        statements: Sequence[str],
        rows: int,
        chunk_rows: int,
        on_transaction: OnTransaction,
    ) -> None:
        """Run ``statements`` for staged rows 1..``rows``, ``chunk_rows`` at a time, each chunk
        in one write transaction of its own; the statements take the chunk's first and last
        row as ``?1`` and ``?2``.

        Short transactions are not enough on their own: a writer kept waiting by SQLite's busy
        handler sleeps between attempts (up to 100 ms) and could keep missing the moments
        between two chunks. So after :data:`_BURST_SECONDS` of chunks the apply steps aside for
        :data:`_PAUSE_SECONDS`, longer than any of those sleeps: a waiting writer's next attempt
        falls in the pause at the latest.

        The WAL is checkpointed after every chunk, by this connection and after its lock is
        released, rather than by whichever commit next finds the WAL long (SQLite's automatic
        checkpoint): so the daemon's next small write never pays for copying the import's
        pages, and the time reported per transaction is the time the lock was held."""
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        (autocheckpoint,) = self.conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        self.conn.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            burst_started = time.perf_counter()
            for first in range(1, rows + 1, chunk_rows):
                last = min(first + chunk_rows - 1, rows)
                if time.perf_counter() - burst_started >= _BURST_SECONDS:
                    time.sleep(_PAUSE_SECONDS)
                    burst_started = time.perf_counter()
                self.conn.execute("BEGIN IMMEDIATE")  # waits (busy_timeout) for other writers
                started = time.perf_counter()
                try:
                    for sql in statements:
                        self.conn.execute(sql, (first, last))
                    self.conn.execute("COMMIT")
                except BaseException:
                    self.rollback()
                    raise
                seconds = time.perf_counter() - started
                # PASSIVE: copies what it can without waiting for, or blocking, anyone.
                self.conn.execute("PRAGMA main.wal_checkpoint(PASSIVE)").fetchone()
                on_transaction(last - first + 1, seconds)
        finally:
            self.conn.execute(f"PRAGMA wal_autocheckpoint = {int(autocheckpoint)}")

    # -- reads -------------------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: WAL keeps its view fixed while writers carry on."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def counts(self) -> dict[str, int]:
        return {
            table: int(self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in DIRECTORY_TABLES
        }

    def iter_areas(self) -> Iterator[AreaRecord]:
        rows = self.conn.execute(
            f"SELECT code, name, level, parent_code FROM areas ORDER BY {_LEVEL_ORDER}, code"
        )
        for code, name, level, parent in rows:
            yield AreaRecord(code, name, AreaLevel(level), parent)

    def iter_grids(self) -> Iterator[GridRecord]:
        rows = self.conn.execute("SELECT id, village_code, name FROM grids ORDER BY id")
        return (GridRecord(*row) for row in rows)

    def iter_households(self) -> Iterator[HouseholdRecord]:
        rows = self.conn.execute(
            "SELECT id, grid_id, village_code, address FROM households ORDER BY id"
        )
        return (HouseholdRecord(*row) for row in rows)

    def iter_persons(self) -> Iterator[PersonRecord]:
        rows = self.conn.execute(
            "SELECT id, name, phone, other_phones, household_id, village_code, roles, "
            "vulnerable, lives_alone, preferred_channels, "
            "(SELECT group_concat(grid_id, ';') FROM grid_members WHERE person_id = p.id) "
            "FROM persons p ORDER BY id"
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
        rows = self.conn.execute(
            "SELECT id, kind, name, adapter, address, area_code, "
            "(SELECT group_concat(area_code, ';') FROM device_areas WHERE device_id = d.id) "
            "FROM devices d ORDER BY id"
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
            "SELECT id, address, area_code FROM devices WHERE kind = ? AND adapter = ? ORDER BY id",
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


if TYPE_CHECKING:  # mypy checks that the class keeps satisfying both protocols

    def _satisfies(store: SqliteDirectory) -> tuple[DirectoryWriter, DirectoryReader]:
        return store, store

"""The directory on SQLite: what the CSV importer writes through and the exporter reads from.

Satisfies :class:`dispatcher.directory.protocol.DirectoryWriter` and ``DirectoryReader``.
Synchronous, on one connection from :func:`dispatcher.store.sqlite.connect`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from dispatcher.directory.protocol import DIRECTORY_TABLES, DirectoryReader, DirectoryWriter
from dispatcher.directory.records import (
    AreaRecord,
    DeviceRecord,
    GridRecord,
    HouseholdRecord,
    PersonRecord,
)
from dispatcher.domain import AreaLevel, Channel, DeviceKind
from dispatcher.store.migrations import migrate_sqlite
from dispatcher.store.sqlite import connect

#: Bound parameters per lookup query, well under SQLite's limit.
_CHUNK = 500

_UPSERT_AREA = (
    "INSERT INTO areas (code, name, level, parent_code) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (code) DO UPDATE SET name = excluded.name, level = excluded.level, "
    "parent_code = excluded.parent_code"
)
_UPSERT_GRID = (
    "INSERT INTO grids (id, village_code, name) VALUES (?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET village_code = excluded.village_code, name = excluded.name"
)
_UPSERT_HOUSEHOLD = (
    "INSERT INTO households (id, grid_id, village_code, address) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET grid_id = excluded.grid_id, "
    "village_code = excluded.village_code, address = excluded.address"
)
_UPSERT_PERSON = (
    "INSERT INTO persons (id, name, phone, other_phones, household_id, village_code, roles, "
    "vulnerable, lives_alone, preferred_channels) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, phone = excluded.phone, "
    "other_phones = excluded.other_phones, household_id = excluded.household_id, "
    "village_code = excluded.village_code, roles = excluded.roles, "
    "vulnerable = excluded.vulnerable, lives_alone = excluded.lives_alone, "
    "preferred_channels = excluded.preferred_channels"
)
_UPSERT_DEVICE = (
    "INSERT INTO devices (id, kind, name, adapter, address, area_code) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, name = excluded.name, "
    "adapter = excluded.adapter, address = excluded.address, area_code = excluded.area_code"
)
# Levels strictly rise towards the root, so the walk ends within five steps; the depth guard
# only protects against a hand-edited database.
_REBUILD_CLOSURE = (
    "INSERT INTO area_closure (ancestor, descendant, depth) "
    "WITH RECURSIVE up (descendant, ancestor, depth) AS ("
    "  SELECT code, code, 0 FROM areas"
    "  UNION ALL"
    "  SELECT up.descendant, a.parent_code, up.depth + 1 FROM up"
    "  JOIN areas a ON a.code = up.ancestor"
    "  WHERE a.parent_code IS NOT NULL AND up.depth < 10"
    ") SELECT ancestor, descendant, depth FROM up"
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

    # -- transactions ------------------------------------------------------------------------
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
        (found,) = self.conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()
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

    # -- writes ------------------------------------------------------------------------------
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
        self.conn.execute("DELETE FROM area_closure")
        self.conn.execute(_REBUILD_CLOSURE)

    def sync_village_codes(self) -> None:
        self.conn.execute(
            "UPDATE households SET village_code = g.village_code FROM grids g "
            "WHERE g.id = households.grid_id AND households.village_code <> g.village_code"
        )
        self.conn.execute(
            "UPDATE persons SET village_code = h.village_code FROM households h "
            "WHERE h.id = persons.household_id AND persons.village_code <> h.village_code"
        )

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


if TYPE_CHECKING:  # mypy checks that the class keeps satisfying both protocols

    def _satisfies(store: SqliteDirectory) -> tuple[DirectoryWriter, DirectoryReader]:
        return store, store

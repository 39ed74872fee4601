"""What the importer and exporter need from a store, so each store dialect can provide it.

The SQLite implementation is :class:`dispatcher.store.sqlite_directory.SqliteDirectory`; a
PostgreSQL one only has to satisfy these two small protocols. They are synchronous: the CLI calls
the importer directly and the daemon runs it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from dispatcher.directory.records import (
    AreaRecord,
    DeviceRecord,
    GridRecord,
    HouseholdRecord,
    PersonRecord,
)

#: The directory tables that :meth:`DirectoryReader.counts` reports, in import order.
DIRECTORY_TABLES: tuple[str, ...] = ("areas", "grids", "households", "persons", "devices")


class DirectoryWriter(Protocol):
    """Upserts directory rows inside explicit transactions (the importer uses one per file).

    Within one transaction each id is written at most once; the importer guarantees it.
    """

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    # -- what reference checks need to know about the stored directory ----------------------
    def iter_areas(self) -> Iterator[AreaRecord]:
        """Every stored area (areas are few enough to hold: ~700k for all of China)."""

    def grid_villages(self, ids: Collection[str]) -> dict[str, str]:
        """Village code of each of these grids that exists."""

    def household_villages(self, ids: Collection[str]) -> dict[str, str]:
        """Village code of each of these households that exists."""

    # -- writes: a row whose key exists replaces it -----------------------------------------
    def upsert_areas(self, rows: Sequence[AreaRecord]) -> None:
        """Parents come before their children in ``rows``."""

    def upsert_grids(self, rows: Sequence[GridRecord]) -> None: ...

    def upsert_households(self, rows: Sequence[HouseholdRecord]) -> None: ...

    def upsert_persons(self, rows: Sequence[PersonRecord]) -> None:
        """Also replaces the persons' grid memberships."""

    def upsert_devices(self, rows: Sequence[DeviceRecord]) -> None:
        """Also replaces the areas the devices serve."""

    # -- derived data ------------------------------------------------------------------------
    def rebuild_area_closure(self) -> None:
        """Recompute every (ancestor, descendant, depth) pair after areas changed."""

    def sync_village_codes(self) -> None:
        """Copy village codes down to households (from their grid) and persons (from their
        household) after grids or households were replaced."""


class DirectoryReader(Protocol):
    """Reads the directory back, each table in a stable order that re-imports cleanly."""

    def snapshot(self) -> AbstractContextManager[None]:
        """Read every table from one consistent state of the store."""

    def counts(self) -> dict[str, int]:
        """Rows per table named in :data:`DIRECTORY_TABLES`."""

    def iter_areas(self) -> Iterator[AreaRecord]:
        """Top level first, then by code: every parent comes before its children."""

    def iter_grids(self) -> Iterator[GridRecord]: ...

    def iter_households(self) -> Iterator[HouseholdRecord]: ...

    def iter_persons(self) -> Iterator[PersonRecord]:
        """By id; each person's grids sorted."""

    def iter_devices(self) -> Iterator[DeviceRecord]:
        """By id; each device's served areas sorted."""

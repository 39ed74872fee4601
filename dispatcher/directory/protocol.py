"""What the importer and exporter need from a store, so each store dialect can provide it.

Both stores implement them with one SQL code base,
:class:`dispatcher.store.directory_base.SqlDirectory`: ``SqliteDirectory``
(:mod:`dispatcher.store.sqlite_directory`) and ``PgDirectory``
(:mod:`dispatcher.store.pg_directory`). They are synchronous: the CLI calls
the importer directly and the daemon runs it in a worker thread.

The importer never writes the store while it validates: it stages the good rows in a private
SQLite file (:mod:`dispatcher.directory.staging`, a format any store can read with Python's
``sqlite3``) and hands that file to the writer once the whole file has passed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
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


#: Called after each write transaction an apply commits: the rows it wrote and the seconds it
#: took from taking the store's write lock to its commit.
OnTransaction = Callable[[int, float], None]


class DirectoryWriter(Protocol):
    """What the importer reads while it validates a file, and how the store takes in a
    validated file from the importer's staging file (``dispatcher/directory/staging.py``).

    Nothing is written while a file is validated. Applying it is done in short write
    transactions of at most ``chunk_rows`` rows each, so the daemon's own writes (accepting a
    warning) never wait long; a file is therefore applied in chunks, not atomically, and an
    apply that stops half-way is completed by importing the same file again (every write is an
    upsert). Within one staging file each id occurs once; the importer guarantees it.
    """

    #: Staged rows per write transaction when the importer's caller does not say: what keeps
    #: this store's write lock held for some tens of milliseconds per chunk.
    apply_chunk_rows: int

    # -- what reference checks need to know about the stored directory ----------------------
    def iter_areas(self) -> Iterator[AreaRecord]:
        """Every stored area (areas are few enough to hold: ~700k for all of China)."""

    def grid_villages(self, ids: Collection[str]) -> dict[str, str]:
        """Village code of each of these grids that exists."""

    def household_villages(self, ids: Collection[str]) -> dict[str, str]:
        """Village code of each of these households that exists."""

    # -- applying a validated file: a row whose key exists replaces it ----------------------
    def apply_staged(
        self, staging: Path, table: str, *, chunk_rows: int, on_transaction: OnTransaction
    ) -> int:
        """Upsert the staged rows of ``table`` (``areas``, ``grids``, ``households``,
        ``persons`` or ``devices``) in the order they were staged; a person's grid memberships
        and a device's served areas are replaced along with it. Return the rows applied."""

    # -- derived data, brought up to date in short transactions too -------------------------
    def refresh_area_closure(
        self, staging: Path, *, chunk_rows: int, on_transaction: OnTransaction
    ) -> None:
        """Make ``area_closure`` hold every (ancestor, descendant, depth) pair of the stored
        areas, after areas were applied. ``staging`` may be used as scratch space."""

    def cascade_village_codes(
        self, staging: Path, *, chunk_rows: int, on_transaction: OnTransaction
    ) -> None:
        """Copy village codes down to households (from their grid), then persons (from their
        household), after grids or households were applied. ``staging`` may be used as
        scratch space."""


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

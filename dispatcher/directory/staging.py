"""The staging file: the rows of one CSV file that passed validation, held in a private SQLite
file until the whole file has been checked, then copied into the store in short transactions.

Validating a 2-million-row file takes minutes; doing it inside one write transaction on the
store would stop the daemon writing (accepting a warning) for all that time. So the importer
writes the good rows here instead, and only when the file is accepted does the store copy them
across, a few thousand rows per transaction (``DirectoryWriter.apply_staged``).

The file is a plain SQLite database, one per CSV file, created with a unique name (mode 0600:
it holds phone numbers) and deleted when the file's import ends, whether it succeeded or not.
It is scratch space: no journal, no fsync. Its layout is the contract with the store:

- one table per directory table (``areas``, ``grids``, ``households``, ``persons``,
  ``devices``) with the store's columns (:data:`STAGED_COLUMNS`, values already in the store's
  form: E.164 phones split into ``phone`` and ``other_phones``, lists ``;``-joined) after
  ``n INTEGER PRIMARY KEY``, the row's number in the file's accepted rows, 1, 2, 3, … without
  gaps, in file order (parents before children for areas);
- ``grid_members (n, grid_id)``: the grids each staged person serves, by the person's ``n``;
- ``device_areas (n, area_code)``: the areas each staged device serves, by the device's ``n``.

A store may add its own tables, for work it does off the write lock while applying; their
names start with ``_``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from dispatcher.directory.records import (
    AreaRecord,
    DeviceRecord,
    GridRecord,
    HouseholdRecord,
    PersonRecord,
)

#: Each staged table's columns after ``n``: the store's columns of the same table.
STAGED_COLUMNS: dict[str, tuple[str, ...]] = {
    "areas": ("code", "name", "level", "parent_code"),
    "grids": ("id", "village_code", "name"),
    "households": ("id", "grid_id", "village_code", "address"),
    "persons": (
        "id",
        "name",
        "phone",
        "other_phones",
        "household_id",
        "village_code",
        "roles",
        "vulnerable",
        "lives_alone",
        "preferred_channels",
    ),
    "devices": ("id", "kind", "name", "adapter", "address", "area_code"),
}

_SCHEMA = [
    *(
        f"CREATE TABLE {table} (n INTEGER PRIMARY KEY, {', '.join(columns)})"
        for table, columns in STAGED_COLUMNS.items()
    ),
    "CREATE TABLE grid_members (n INTEGER NOT NULL, grid_id TEXT NOT NULL, "
    "PRIMARY KEY (n, grid_id)) WITHOUT ROWID",
    "CREATE TABLE device_areas (n INTEGER NOT NULL, area_code TEXT NOT NULL, "
    "PRIMARY KEY (n, area_code)) WITHOUT ROWID",
]

_INSERT = {
    table: f"INSERT INTO {table} (n, {', '.join(columns)}) "
    f"VALUES ({', '.join('?' * (len(columns) + 1))})"
    for table, columns in STAGED_COLUMNS.items()
}

#: The file name's start, so a file left behind by a killed import is recognisable.
STAGING_PREFIX = "tocsin-import-"
STAGING_SUFFIX = ".staging"


class Staging:
    """One CSV file's accepted rows. Rows are numbered as they are added; call :meth:`commit`
    before another connection reads the file, and :meth:`close` (or leave the ``with`` block)
    to delete it."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        """Create the file in ``folder`` (the system's temporary folder when None)."""
        fd, name = tempfile.mkstemp(prefix=STAGING_PREFIX, suffix=STAGING_SUFFIX, dir=folder)
        os.close(fd)
        self.path = Path(name)
        #: Rows staged so far: the last ``n``.
        self.rows = 0
        try:
            self._db = sqlite3.connect(name, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA synchronous = OFF")
            for statement in _SCHEMA:
                self._db.execute(statement)
            # One transaction while rows are added: no commit per batch.
            self._db.execute("BEGIN")
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise

    def __enter__(self) -> Staging:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def commit(self) -> None:
        """Make the staged rows visible to other connections (the store's, to apply them)."""
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close and delete the file."""
        try:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        finally:
            for suffix in ("", "-journal"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def _numbered(self, count: int) -> range:
        first = self.rows + 1
        self.rows += count
        return range(first, self.rows + 1)

    # -- adding accepted rows, in file order ---------------------------------------------------
    def add_areas(self, records: Sequence[AreaRecord]) -> None:
        self._db.executemany(
            _INSERT["areas"],
            [(n, *r) for n, r in zip(self._numbered(len(records)), records, strict=True)],
        )

    def add_grids(self, records: Sequence[GridRecord]) -> None:
        self._db.executemany(
            _INSERT["grids"],
            [(n, *r) for n, r in zip(self._numbered(len(records)), records, strict=True)],
        )

    def add_households(self, records: Sequence[HouseholdRecord]) -> None:
        self._db.executemany(
            _INSERT["households"],
            [(n, *r) for n, r in zip(self._numbered(len(records)), records, strict=True)],
        )

    def add_persons(self, records: Sequence[PersonRecord]) -> None:
        numbered = list(zip(self._numbered(len(records)), records, strict=True))
        self._db.executemany(
            _INSERT["persons"],
            [
                (
                    n,
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
                for n, r in numbered
            ],
        )
        members = [(n, grid) for n, r in numbered if r.grids for grid in r.grids]
        if members:
            self._db.executemany("INSERT INTO grid_members (n, grid_id) VALUES (?, ?)", members)

    def add_devices(self, records: Sequence[DeviceRecord]) -> None:
        numbered = list(zip(self._numbered(len(records)), records, strict=True))
        self._db.executemany(_INSERT["devices"], [(n, *r[:6]) for n, r in numbered])
        self._db.executemany(
            "INSERT INTO device_areas (n, area_code) VALUES (?, ?)",
            [(n, code) for n, r in numbered for code in r.serves],
        )

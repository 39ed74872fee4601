"""Import the directory from its five CSV files (the format: ``docs/directory.md``).

Each file is validated all or nothing, then applied in chunks:

1. **Validate and stage.** The file is read as a stream in batches: per batch the importer
   parses the rows, looks up what they refer to in the store (plain reads: in WAL mode they
   never block the daemon's writes), checks them, and writes the good ones to a private staging
   file (:mod:`dispatcher.directory.staging`), never to the store. Memory does not grow with
   the file.
2. **Apply.** Only when the file has no bad row (or the caller asked to skip bad rows) does the
   store copy the staged rows in, ``chunk_rows`` rows per write transaction, and then bring
   the derived rows up to date (the area closure, village codes copied down to households and
   persons) in short transactions too. Between two transactions the daemon gets the write lock,
   so a duty officer posting a warning during an import waits a fraction of a second, not the
   minutes a 2-million-row file takes.

A file is therefore not applied atomically: if the process dies while applying, part of the
file is in the store. Every write is an upsert by id, so importing the same file again
completes it.
"""

from __future__ import annotations

import codecs
import csv
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from tqdm import tqdm

from dispatcher.directory.csv_format import (
    AREAS,
    DEVICES,
    FILES,
    GRIDS,
    HOUSEHOLDS,
    PERSONS,
    CsvFile,
)
from dispatcher.directory.protocol import DirectoryWriter, OnTransaction
from dispatcher.directory.records import (
    AREA_LEVEL_RANK,
    AreaRecord,
    DeviceRecord,
    GridRecord,
    HouseholdRecord,
    PersonRecord,
)
from dispatcher.directory.report import FileReport, ImportReport, RowError
from dispatcher.directory.seen_keys import SeenKeys
from dispatcher.directory.staging import Staging
from dispatcher.directory.validate import (
    FieldError,
    PhoneParser,
    check_area,
    check_device,
    check_grid,
    check_household,
    check_person,
    parse_area,
    parse_device,
    parse_grid,
    parse_household,
    parse_person,
)
from dispatcher.domain import AreaLevel

#: Rows per batch: one round of reference lookups and one executemany per batch.
BATCH_ROWS = 2000
#: Staged rows per write transaction when a file is applied to a SQLite store. About 20 ms of
#: holding the write lock per chunk for persons on the reference machine (see
#: bench/import_city.py, which reports the longest); the daemon's writes go in between. Each
#: store says its own (``DirectoryWriter.apply_chunk_rows``): 1,000 on PostgreSQL.
APPLY_CHUNK_ROWS = 5000


def import_directory(
    target: str | os.PathLike[str] | DirectoryWriter,
    csv_dir: str | os.PathLike[str],
    *,
    skip_bad_rows: bool = False,
    progress: bool = True,
    chunk_rows: int | None = None,
    staging_dir: str | os.PathLike[str] | None = None,
) -> ImportReport:
    """Import whichever of areas.csv, grids.csv, households.csv, persons.csv and devices.csv are
    in ``csv_dir``, in that order, into a store or through a :class:`DirectoryWriter`.

    A store is a SQLite file (a path; created and migrated if needed) or a PostgreSQL database
    (a DSN string, ``postgresql://…`` or ``host=… dbname=…``: see
    :func:`dispatcher.store.directory_base.is_postgres_dsn`; migrated if needed).

    Rows are upserted by id. With ``skip_bad_rows`` the good rows of a file are imported and
    the bad ones reported; without it a file with any bad row imports nothing. A wrong header or
    a file that is not UTF-8 never imports anything. Progress goes to stderr when it is a
    terminal and ``progress`` is true.

    Each file's good rows are staged in a temporary file in ``staging_dir`` (by default the
    SQLite database's folder, or the system's temporary folder for PostgreSQL and for a
    writer), deleted when the file is done, and applied ``chunk_rows`` rows per write
    transaction (by default the store's ``apply_chunk_rows``). Should applying fail half-way
    (the exception is raised, with a note), run the same import again.
    """
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    folder = Path(csv_dir)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    if not any((folder / spec.name).is_file() for spec in FILES):
        names = ", ".join(spec.name for spec in FILES)
        raise FileNotFoundError(f"{folder} holds none of the directory files ({names})")
    options = _Options(
        skip_bad_rows=skip_bad_rows,
        show_progress=progress and sys.stderr.isatty(),
        chunk_rows=chunk_rows,
        staging_dir=Path(staging_dir) if staging_dir is not None else None,
    )
    if isinstance(target, str | os.PathLike):
        # Imported here: the store modules themselves import this package's records.
        from dispatcher.store.directory_base import is_postgres_dsn, open_directory

        in_file = not is_postgres_dsn(target) and str(target) != ":memory:"
        if options.staging_dir is None and in_file:
            # Beside the database: a disk sized for the directory, not a RAM-backed /tmp.
            options.staging_dir = Path(target).absolute().parent
        with open_directory(target) as store:
            return _import_files(store, folder, options)
    return _import_files(target, folder, options)


@dataclass(slots=True)
class _Options:
    skip_bad_rows: bool
    show_progress: bool
    #: None: the store's ``apply_chunk_rows``.
    chunk_rows: int | None
    #: None: the system's temporary folder.
    staging_dir: Path | None


def _import_files(writer: DirectoryWriter, folder: Path, options: _Options) -> ImportReport:
    started = time.perf_counter()
    report = ImportReport()
    areas = _area_levels(writer)
    phones = PhoneParser()
    for spec in FILES:
        path = folder / spec.name
        if not path.is_file():
            report.files.append(FileReport(spec.name, found=False))
            continue
        kind = _kind(spec, writer, areas, phones)
        report.files.append(_FileRun(writer, kind, path, options).run())
        if spec is AREAS:
            areas = _area_levels(writer)
    report.seconds = time.perf_counter() - started
    return report


def _area_levels(writer: DirectoryWriter) -> dict[str, AreaLevel]:
    return {area.code: area.level for area in writer.iter_areas()}


# -- the five files ------------------------------------------------------------------------


class _FileKind(Protocol):
    """How to import one of the five files."""

    spec: CsvFile

    def parse(self, fields: list[str]) -> Any:
        """The row on its own; raise FieldError."""

    def prepare(self, records: list[Any]) -> None:
        """Look up in the store what this batch's rows refer to."""

    def check(self, record: Any) -> Any:
        """The row against the directory; return the complete record or raise FieldError."""

    def stage(self, staging: Staging, records: list[Any]) -> None:
        """Keep the batch's accepted rows until the file is applied."""

    def derive(self, staging: Path, *, chunk_rows: int, on_transaction: OnTransaction) -> None:
        """After the file's rows were applied: bring the rows derived from them up to date."""


def _kind(
    spec: CsvFile, writer: DirectoryWriter, areas: dict[str, AreaLevel], phones: PhoneParser
) -> _FileKind:
    if spec is AREAS:
        return _Areas(writer, dict(areas))
    if spec is GRIDS:
        return _Grids(writer, areas)
    if spec is HOUSEHOLDS:
        return _Households(writer)
    if spec is PERSONS:
        return _Persons(writer, areas, phones)
    if spec is DEVICES:
        return _Devices(writer, areas)
    raise ValueError(spec.name)


class _Areas:
    spec = AREAS

    def __init__(self, writer: DirectoryWriter, areas: dict[str, AreaLevel]) -> None:
        self._writer = writer
        #: The stored areas plus those accepted from this file so far (parents come first).
        self._areas = areas
        self._top: AreaLevel | None = None
        for area in writer.iter_areas():
            if area.parent_code is None:
                self._raise_top(area.level)

    def _raise_top(self, level: AreaLevel) -> None:
        if self._top is None or AREA_LEVEL_RANK[level] < AREA_LEVEL_RANK[self._top]:
            self._top = level

    def parse(self, fields: list[str]) -> AreaRecord:
        return parse_area(fields)

    def prepare(self, records: list[AreaRecord]) -> None:
        pass

    def check(self, record: AreaRecord) -> AreaRecord:
        check_area(record, self._areas, self._top)
        self._areas[record.code] = record.level
        if record.parent_code is None:
            self._raise_top(record.level)
        return record

    def stage(self, staging: Staging, records: list[AreaRecord]) -> None:
        staging.add_areas(records)

    def derive(self, staging: Path, *, chunk_rows: int, on_transaction: OnTransaction) -> None:
        self._writer.refresh_area_closure(
            staging, chunk_rows=chunk_rows, on_transaction=on_transaction
        )


class _Grids:
    spec = GRIDS

    def __init__(self, writer: DirectoryWriter, areas: dict[str, AreaLevel]) -> None:
        self._writer = writer
        self._areas = areas

    def parse(self, fields: list[str]) -> GridRecord:
        return parse_grid(fields)

    def prepare(self, records: list[GridRecord]) -> None:
        pass

    def check(self, record: GridRecord) -> GridRecord:
        check_grid(record, self._areas)
        return record

    def stage(self, staging: Staging, records: list[GridRecord]) -> None:
        staging.add_grids(records)

    def derive(self, staging: Path, *, chunk_rows: int, on_transaction: OnTransaction) -> None:
        # A grid moved to another village takes its households and their people with it.
        self._writer.cascade_village_codes(
            staging, chunk_rows=chunk_rows, on_transaction=on_transaction
        )


class _Households:
    spec = HOUSEHOLDS

    def __init__(self, writer: DirectoryWriter) -> None:
        self._writer = writer
        self._grid_villages: dict[str, str] = {}

    def parse(self, fields: list[str]) -> HouseholdRecord:
        return parse_household(fields)

    def prepare(self, records: list[HouseholdRecord]) -> None:
        self._grid_villages = self._writer.grid_villages({r.grid_id for r in records})

    def check(self, record: HouseholdRecord) -> HouseholdRecord:
        return check_household(record, self._grid_villages)

    def stage(self, staging: Staging, records: list[HouseholdRecord]) -> None:
        staging.add_households(records)

    def derive(self, staging: Path, *, chunk_rows: int, on_transaction: OnTransaction) -> None:
        # A household moved to another grid takes its people with it.
        self._writer.cascade_village_codes(
            staging, chunk_rows=chunk_rows, on_transaction=on_transaction
        )


class _Persons:
    spec = PERSONS

    def __init__(
        self, writer: DirectoryWriter, areas: dict[str, AreaLevel], phones: PhoneParser
    ) -> None:
        self._writer = writer
        self._areas = areas
        self._phones = phones
        self._household_villages: dict[str, str] = {}
        self._grids: dict[str, str] = {}

    def parse(self, fields: list[str]) -> PersonRecord:
        return parse_person(fields, self._phones)

    def prepare(self, records: list[PersonRecord]) -> None:
        self._household_villages = self._writer.household_villages(
            {r.household_id for r in records if r.household_id is not None}
        )
        self._grids = self._writer.grid_villages({g for r in records for g in r.grids})

    def check(self, record: PersonRecord) -> PersonRecord:
        return check_person(record, self._household_villages, self._grids, self._areas)

    def stage(self, staging: Staging, records: list[PersonRecord]) -> None:
        staging.add_persons(records)

    def derive(self, staging: Path, *, chunk_rows: int, on_transaction: OnTransaction) -> None:
        pass


class _Devices:
    spec = DEVICES

    def __init__(self, writer: DirectoryWriter, areas: dict[str, AreaLevel]) -> None:
        self._writer = writer
        self._areas = areas

    def parse(self, fields: list[str]) -> DeviceRecord:
        return parse_device(fields)

    def prepare(self, records: list[DeviceRecord]) -> None:
        pass

    def check(self, record: DeviceRecord) -> DeviceRecord:
        check_device(record, self._areas)
        return record

    def stage(self, staging: Staging, records: list[DeviceRecord]) -> None:
        staging.add_devices(records)

    def derive(self, staging: Path, *, chunk_rows: int, on_transaction: OnTransaction) -> None:
        pass


# -- reading one file ----------------------------------------------------------------------


class _FileProblem(Exception):
    """A problem with the whole file: it is not imported, not even its good rows."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _ByteCounter:
    def __init__(self) -> None:
        self.bytes = 0


def _decoded_lines(raw: BinaryIO, counter: _ByteCounter) -> Iterator[str]:
    """The file's physical lines as text, decoded one by one so a decoding error names its
    line. A UTF-8 BOM (what Excel writes) is dropped."""
    for number, line in enumerate(raw, 1):
        counter.bytes += len(line)
        data = (
            line[len(codecs.BOM_UTF8) :]
            if number == 1 and line.startswith(codecs.BOM_UTF8)
            else line
        )
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _FileProblem(
                number,
                f"not UTF-8 text (byte {exc.start + 1} of the line is 0x{data[exc.start]:02x}): "
                "save the file as 'CSV UTF-8'",
            ) from None


def _records(lines: Iterator[str]) -> Iterator[tuple[int, list[str] | None, str]]:
    """(first physical line, fields, "") for each non-blank record, or (line, None, problem)
    for a record the CSV reader rejects. A quoted field may span lines, so the record's first
    line is one past where the previous record ended."""
    reader = csv.reader(lines, strict=True)
    end = 0
    while True:
        try:
            # A plain for loop is the fast path; a malformed record ends it, is reported, and
            # reading goes on after it.
            for fields in reader:
                start, end = end + 1, reader.line_num
                # Skip blank lines, lines of spaces and rows of empty cells (",,,").
                if any(fields) and (len(fields) > 1 or fields[0].strip()):
                    yield start, fields, ""
            return
        except csv.Error as exc:
            yield end + 1, None, f"malformed CSV: {exc}"
            end = reader.line_num


def _header_problem(spec: CsvFile, names: list[str]) -> str:
    missing = [c for c in spec.columns if c not in names]
    unknown = [n or "(empty)" for n in names if n not in spec.columns]
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    parts = []
    if missing:
        parts.append(f"missing columns: {', '.join(missing)}")
    if unknown:
        parts.append(f"unknown columns: {', '.join(unknown)}")
    if repeated:
        parts.append(f"repeated columns: {', '.join(repeated)}")
    if not parts:
        return ""
    return f"wrong header: {'; '.join(parts)} (expected: {','.join(spec.columns)})"


class _FileRun:
    """One file's import: read, check and stage in batches, then apply the staged rows."""

    def __init__(
        self, writer: DirectoryWriter, kind: _FileKind, path: Path, options: _Options
    ) -> None:
        self._writer = writer
        self._kind = kind
        self._path = path
        self._options = options
        self._skip_bad_rows = options.skip_bad_rows
        self._name = kind.spec.name
        self._key_column = kind.spec.key
        self.report = FileReport(self._name)
        self._seen = SeenKeys()
        self._counter = _ByteCounter()
        self._bar: Any = None

    def run(self) -> FileReport:
        started = time.perf_counter()
        try:
            with Staging(self._options.staging_dir) as staging:
                if self._validate(staging):
                    staging.commit()
                    self._apply(staging.path)
                    self.report.committed = True
                else:
                    self.report.imported = 0
        finally:
            self._seen.close()
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _validate(self, staging: Staging) -> bool:
        """Read and check every row, staging the good ones; return whether to apply them."""
        self._bar = self._progress(self._path.stat().st_size, self._name, unit="B")
        try:
            self._read(staging)
        except _FileProblem as problem:
            self._error(problem.line, "", problem.message)
            return False
        finally:
            self._bar.close()
            self._seen.close()
        return self.report.error_count == 0 or self._skip_bad_rows

    def _progress(self, total: int, desc: str, *, unit: str) -> Any:
        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            unit_scale=True,
            unit_divisor=1024 if unit == "B" else 1000,
            file=sys.stderr,
            disable=not self._options.show_progress,
        )

    def _apply(self, staging: Path) -> None:
        """Copy the staged rows into the store in short transactions, then the derived rows."""
        if not self.report.imported:
            return
        started = time.perf_counter()
        applied = 0
        bar = self._progress(self.report.imported, f"{self._name} → store", unit="rows")

        def rows_applied(rows: int, seconds: float) -> None:
            nonlocal applied
            applied += rows
            bar.update(rows)
            self.report.add_write(seconds)

        def derived(rows: int, seconds: float) -> None:
            self.report.add_write(seconds)

        chunk_rows = self._options.chunk_rows or self._writer.apply_chunk_rows
        try:
            self._writer.apply_staged(
                staging,
                self._kind.spec.name.removesuffix(".csv"),
                chunk_rows=chunk_rows,
                on_transaction=rows_applied,
            )
            self._kind.derive(staging, chunk_rows=chunk_rows, on_transaction=derived)
        except Exception as exc:
            where = (
                "after all its rows, while updating the rows derived from them"
                if applied == self.report.imported
                else f"after {applied:,} of its {self.report.imported:,} rows"
            )
            exc.add_note(
                f"{self._name}: applying the file to the store stopped {where}: import the same "
                "file again to complete it (rows are upserted by id)"
            )
            raise
        finally:
            bar.close()
            self.report.apply_seconds = time.perf_counter() - started

    def _error(self, line: int, column: str, message: str) -> None:
        self.report.add_error(RowError(self._name, line, column, message))

    def _read(self, staging: Staging) -> None:
        spec = self._kind.spec
        with self._path.open("rb") as raw:
            records = _records(_decoded_lines(raw, self._counter))
            first = next(records, None)
            if first is None:
                raise _FileProblem(1, f"empty file: the header must be {','.join(spec.columns)}")
            line, header, problem = first
            if header is None:
                raise _FileProblem(line, f"header: {problem}")
            names = [name.strip().lower() for name in header]
            while names and not names[-1]:
                names.pop()  # spreadsheets leave empty columns at the end
            problem = _header_problem(spec, names)
            if problem:
                raise _FileProblem(line, problem)
            order = [names.index(column) for column in spec.columns]
            in_order = order == list(range(len(order)))
            width = len(names)
            batch: list[tuple[int, str, Any]] = []
            for line, raw_fields, problem in records:
                self.report.rows_read += 1
                if raw_fields is None:
                    batch.append((line, "", FieldError("", problem)))
                    continue
                if len(raw_fields) != width and (
                    len(raw_fields) < width or any(f.strip() for f in raw_fields[width:])
                ):
                    message = f"{len(raw_fields)} fields where the header has {width}"
                    batch.append((line, "", FieldError("", message)))
                    continue
                if in_order:
                    fields = [f.strip() for f in raw_fields[:width]]
                else:
                    fields = [raw_fields[i].strip() for i in order]
                try:
                    item = self._kind.parse(fields)
                except FieldError as exc:
                    item = exc
                batch.append((line, fields[0], item))
                if len(batch) >= BATCH_ROWS:
                    self._flush(batch, staging)
                    batch = []
            self._flush(batch, staging)

    def _flush(self, batch: list[tuple[int, str, Any]], staging: Staging) -> None:
        if self._bar is not None:
            self._bar.update(self._counter.bytes - self._bar.n)
        if not batch:
            return
        duplicates = self._seen.add([(key, line) for line, key, _ in batch if key])
        self._kind.prepare([item for _, _, item in batch if not isinstance(item, FieldError)])
        good = []
        for line, key, item in batch:
            if isinstance(item, FieldError):
                self._error(line, item.column, item.message)
                continue
            if line in duplicates:
                self._error(
                    line, self._key_column, f"{key!r} is already on line {duplicates[line]}"
                )
                continue
            try:
                good.append(self._kind.check(item))
            except FieldError as exc:
                self._error(line, exc.column, exc.message)
        # Once a file has failed nothing more is staged (it will not be applied), but every
        # row is still checked so the report lists all the problems.
        if good and (self._skip_bad_rows or self.report.error_count == 0):
            self._kind.stage(staging, good)
            self.report.imported += len(good)

"""Import the directory from its five CSV files (the format: ``docs/directory.md``).

Each file is one transaction: a file with any bad row imports nothing, unless the caller asked
to skip bad rows. Files are read as a stream in batches: per batch the importer parses the rows,
looks up what they refer to in the store, checks them and upserts the good ones, so memory does
not grow with the file.
"""

from __future__ import annotations

import codecs
import csv
import os
import sys
import time
from collections.abc import Iterator
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
from dispatcher.directory.protocol import DirectoryWriter
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


def import_directory(
    target: str | os.PathLike[str] | DirectoryWriter,
    csv_dir: str | os.PathLike[str],
    *,
    skip_bad_rows: bool = False,
    progress: bool = True,
) -> ImportReport:
    """Import whichever of areas.csv, grids.csv, households.csv, persons.csv and devices.csv are
    in ``csv_dir``, in that order, into a SQLite file (created and migrated if needed) or
    through a :class:`DirectoryWriter`.

    Rows are upserted by id. With ``skip_bad_rows`` the good rows of a file are imported and
    the bad ones reported; without it a file with any bad row imports nothing. A wrong header or
    a file that is not UTF-8 never imports anything. Progress goes to stderr when it is a
    terminal and ``progress`` is true.
    """
    folder = Path(csv_dir)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    if not any((folder / spec.name).is_file() for spec in FILES):
        names = ", ".join(spec.name for spec in FILES)
        raise FileNotFoundError(f"{folder} holds none of the directory files ({names})")
    if isinstance(target, str | os.PathLike):
        # Imported here: the SQLite store module itself imports this package's records.
        from dispatcher.store.sqlite_directory import SqliteDirectory

        with SqliteDirectory.open(target) as store:
            return _import_files(store, folder, skip_bad_rows=skip_bad_rows, progress=progress)
    return _import_files(target, folder, skip_bad_rows=skip_bad_rows, progress=progress)


def _import_files(
    writer: DirectoryWriter, folder: Path, *, skip_bad_rows: bool, progress: bool
) -> ImportReport:
    started = time.perf_counter()
    report = ImportReport()
    show = progress and sys.stderr.isatty()
    areas = _area_levels(writer)
    phones = PhoneParser()
    for spec in FILES:
        path = folder / spec.name
        if not path.is_file():
            report.files.append(FileReport(spec.name, found=False))
            continue
        kind = _kind(spec, writer, areas, phones)
        run = _FileRun(writer, kind, path, skip_bad_rows=skip_bad_rows, show_progress=show)
        report.files.append(run.run())
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

    def write(self, records: list[Any]) -> None: ...

    def finish(self) -> None:
        """Inside the file's transaction, when rows were imported and it is about to commit."""


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

    def write(self, records: list[AreaRecord]) -> None:
        self._writer.upsert_areas(records)

    def finish(self) -> None:
        self._writer.rebuild_area_closure()


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

    def write(self, records: list[GridRecord]) -> None:
        self._writer.upsert_grids(records)

    def finish(self) -> None:
        # A grid moved to another village takes its households and their people with it.
        self._writer.sync_village_codes()


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

    def write(self, records: list[HouseholdRecord]) -> None:
        self._writer.upsert_households(records)

    def finish(self) -> None:
        self._writer.sync_village_codes()


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

    def write(self, records: list[PersonRecord]) -> None:
        self._writer.upsert_persons(records)

    def finish(self) -> None:
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

    def write(self, records: list[DeviceRecord]) -> None:
        self._writer.upsert_devices(records)

    def finish(self) -> None:
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
    """One file's import: read, check and write in batches inside one transaction."""

    def __init__(
        self,
        writer: DirectoryWriter,
        kind: _FileKind,
        path: Path,
        *,
        skip_bad_rows: bool,
        show_progress: bool,
    ) -> None:
        self._writer = writer
        self._kind = kind
        self._path = path
        self._skip_bad_rows = skip_bad_rows
        self._show_progress = show_progress
        self._name = kind.spec.name
        self._key_column = kind.spec.key
        self.report = FileReport(self._name)
        self._seen = SeenKeys()
        self._counter = _ByteCounter()
        self._bar: Any = None

    def run(self) -> FileReport:
        started = time.perf_counter()
        self._bar = tqdm(
            total=self._path.stat().st_size,
            desc=self._name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=not self._show_progress,
        )
        self._writer.begin()
        try:
            fatal = False
            try:
                self._read()
            except _FileProblem as problem:
                self._error(problem.line, "", problem.message)
                fatal = True
            failed = self.report.error_count > 0 and not self._skip_bad_rows
            if fatal or failed:
                self._writer.rollback()
                self.report.imported = 0
            else:
                if self.report.imported:
                    self._kind.finish()
                self._writer.commit()
                self.report.committed = True
        except BaseException:
            self._writer.rollback()
            raise
        finally:
            self._seen.close()
            self._bar.close()
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _error(self, line: int, column: str, message: str) -> None:
        self.report.add_error(RowError(self._name, line, column, message))

    def _read(self) -> None:
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
                    self._flush(batch)
                    batch = []
            self._flush(batch)

    def _flush(self, batch: list[tuple[int, str, Any]]) -> None:
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
        # Once a file has failed nothing more is written (it will be rolled back), but every
        # row is still checked so the report lists all the problems.
        if good and (self._skip_bad_rows or self.report.error_count == 0):
            self._kind.write(good)
            self.report.imported += len(good)

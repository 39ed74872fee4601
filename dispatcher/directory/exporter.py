"""Export the directory as the five CSV files the importer reads.

The output is canonical (see :mod:`dispatcher.directory.csv_format`): importing it gives the
same directory, and importing a canonical file then exporting it gives the same bytes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dispatcher.directory.csv_format import (
    AREAS,
    DEVICES,
    GRIDS,
    HOUSEHOLDS,
    PERSONS,
    ROW_FORMATTERS,
    CsvFile,
    write_csv_file,
)
from dispatcher.directory.protocol import DirectoryReader


@dataclass(slots=True)
class ExportReport:
    #: Rows written per file name.
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def export_directory(
    source: str | os.PathLike[str] | DirectoryReader,
    out_dir: str | os.PathLike[str],
    *,
    bom: bool = True,
    progress: bool = True,
) -> ExportReport:
    """Write areas.csv, grids.csv, households.csv, persons.csv and devices.csv into ``out_dir``
    (created if needed) from a store — a SQLite file (a path) or a PostgreSQL database (a DSN
    string, see :func:`dispatcher.store.directory_base.is_postgres_dsn`) — or a
    :class:`DirectoryReader`, all from one consistent snapshot. ``bom`` starts each file with a
    UTF-8 BOM so Excel reads it right."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(source, str | os.PathLike):
        # Imported here: the store modules themselves import this package's records.
        from dispatcher.store.directory_base import is_postgres_dsn, open_directory

        if not is_postgres_dsn(source) and not Path(source).is_file():
            raise FileNotFoundError(f"{source}: no such database")
        with open_directory(source) as store:
            return _export(store, folder, bom=bom, progress=progress)
    return _export(source, folder, bom=bom, progress=progress)


def _export(reader: DirectoryReader, folder: Path, *, bom: bool, progress: bool) -> ExportReport:
    started = time.perf_counter()
    report = ExportReport()
    show = progress and sys.stderr.isatty()
    with reader.snapshot():
        counts = reader.counts()
        tables: list[tuple[CsvFile, str, Iterable[Any]]] = [
            (AREAS, "areas", reader.iter_areas()),
            (GRIDS, "grids", reader.iter_grids()),
            (HOUSEHOLDS, "households", reader.iter_households()),
            (PERSONS, "persons", reader.iter_persons()),
            (DEVICES, "devices", reader.iter_devices()),
        ]
        for spec, table, records in tables:
            with tqdm(
                total=counts[table], desc=spec.name, unit="rows", file=sys.stderr, disable=not show
            ) as bar:
                rows = _formatted(records, spec, bar)
                report.rows[spec.name] = write_csv_file(folder / spec.name, spec, rows, bom=bom)
    report.seconds = time.perf_counter() - started
    return report


def _formatted(records: Iterable[Any], spec: CsvFile, bar: Any) -> Iterator[list[str]]:
    format_row = ROW_FORMATTERS[spec.name]
    pending = 0
    for record in records:
        yield format_row(record)
        pending += 1
        if pending == 10_000:
            bar.update(pending)
            pending = 0
    bar.update(pending)

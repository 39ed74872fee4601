"""The directory's CSV files: names, columns and how values are written.

UTF-8 with a header row, comma separated. Lists inside a field are ``;``-separated. The manual
for people preparing these files is ``docs/directory.md``; keep the two in step.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatcher.directory.records import (
    AreaRecord,
    DeviceRecord,
    GridRecord,
    HouseholdRecord,
    PersonRecord,
)
from dispatcher.domain import mask_to_roles

LIST_SEPARATOR = ";"

#: Accepted spellings of yes and no (compared case-insensitively); empty means no.
TRUE_WORDS = frozenset({"1", "true", "yes", "是"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "否"})


@dataclass(frozen=True, slots=True)
class CsvFile:
    name: str
    columns: tuple[str, ...]
    #: The column holding each row's key (unique within the file).
    key: str


AREAS = CsvFile("areas.csv", ("code", "name", "level", "parent_code"), "code")
GRIDS = CsvFile("grids.csv", ("id", "village_code", "name"), "id")
HOUSEHOLDS = CsvFile("households.csv", ("id", "grid_id", "address"), "id")
PERSONS = CsvFile(
    "persons.csv",
    (
        "id",
        "name",
        "phones",
        "household_id",
        "village_code",
        "roles",
        "vulnerable",
        "lives_alone",
        "preferred_channels",
        "grids",
    ),
    "id",
)
DEVICES = CsvFile(
    "devices.csv", ("id", "kind", "name", "adapter", "address", "area_code", "serves"), "id"
)

#: In import order: each file may refer only to rows of the files before it.
FILES: tuple[CsvFile, ...] = (AREAS, GRIDS, HOUSEHOLDS, PERSONS, DEVICES)


def join_list(values: Iterable[str]) -> str:
    return LIST_SEPARATOR.join(values)


def _flag(value: bool) -> str:
    return "1" if value else "0"


# The canonical form of each row: what the exporter writes and the synthetic city generates.
# Importing a canonical file and exporting it again gives the same bytes.
def area_row(r: AreaRecord) -> list[str]:
    return [r.code, r.name, r.level.value, r.parent_code or ""]


def grid_row(r: GridRecord) -> list[str]:
    return [r.id, r.village_code, r.name]


def household_row(r: HouseholdRecord) -> list[str]:
    return [r.id, r.grid_id, r.address]


def person_row(r: PersonRecord) -> list[str]:
    return [
        r.id,
        r.name,
        join_list(r.phones),
        r.household_id or "",
        r.village_code,
        join_list(role.value for role in mask_to_roles(r.roles)) if r.roles else "",
        _flag(r.vulnerable),
        _flag(r.lives_alone),
        join_list(r.preferred_channels),
        join_list(r.grids),
    ]


def device_row(r: DeviceRecord) -> list[str]:
    return [r.id, r.kind.value, r.name, r.adapter, r.address, r.area_code, join_list(r.serves)]


ROW_FORMATTERS: dict[str, Callable[[Any], list[str]]] = {
    AREAS.name: area_row,
    GRIDS.name: grid_row,
    HOUSEHOLDS.name: household_row,
    PERSONS.name: person_row,
    DEVICES.name: device_row,
}


def write_csv_file(
    path: Path, spec: CsvFile, rows: Iterable[list[str]], *, bom: bool = True
) -> int:
    """Write a header and rows; return the number of rows.

    A BOM by default, because without it Excel reads UTF-8 as the local code page and garbles
    Chinese; CRLF line ends as RFC 4180 and Excel expect.
    """
    count = 0
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(spec.columns)
        for row in rows:
            writer.writerow(row)
            count += 1
    return count

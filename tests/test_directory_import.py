"""Importing the directory CSV files: values stored, every kind of bad row, staging and
applying in short transactions while the daemon keeps writing."""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import phonenumbers
import psycopg
import pytest
from stores import StoreTarget

from dispatcher.config import SyntheticDirectoryConfig
from dispatcher.directory import ImportReport, import_directory, importer
from dispatcher.directory.protocol import OnTransaction
from dispatcher.directory.report import MAX_STORED_ERRORS
from dispatcher.directory.staging import STAGING_PREFIX, Staging
from dispatcher.directory.validate import PhoneParser
from dispatcher.domain import Role, roles_to_mask
from dispatcher.store.directory_base import SqlDirectory, open_directory
from dispatcher.synthetic import write_csv

Files = dict[str, list[str]]
#: The ``write_directory`` fixture (tests/conftest.py).
WriteDirectory = Callable[..., Path]
#: The ``dump_directory`` fixture.
Dump = Callable[[Path | StoreTarget], dict[str, list[tuple[Any, ...]]]]
#: The ``another_store`` fixture.
AnotherStore = Callable[[str], StoreTarget]


@pytest.fixture
def db(store_target: StoreTarget) -> StoreTarget:
    """The store a test imports into: a SQLite file, or a PostgreSQL database."""
    return store_target


def _run(
    tmp_path: Path,
    write_directory: WriteDirectory,
    files: Files,
    *,
    db: StoreTarget,
    skip_bad_rows: bool = False,
    folder: str = "csv",
    chunk_rows: int | None = None,
) -> ImportReport:
    write_directory(tmp_path / folder, files)
    return import_directory(
        db.location,
        tmp_path / folder,
        skip_bad_rows=skip_bad_rows,
        progress=False,
        chunk_rows=chunk_rows,
    )


def _rows(db: StoreTarget, sql: str) -> list[tuple[Any, ...]]:
    conn = db.connect()
    try:
        return [tuple(row) for row in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def _count(db: StoreTarget, table: str) -> int:
    return int(_rows(db, f"SELECT count(*) FROM {table}")[0][0])


def test_valid_directory_is_stored(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    report = _run(tmp_path, write_directory, canonical_directory, db=db)

    assert report.ok, str(report)
    assert [(f.file, f.rows_read, f.imported, f.skipped, f.committed) for f in report.files] == [
        ("areas.csv", 6, 6, 0, True),
        ("grids.csv", 2, 2, 0, True),
        ("households.csv", 3, 3, 0, True),
        ("persons.csv", 4, 4, 0, True),
        ("devices.csv", 3, 3, 0, True),
    ]
    assert _rows(db, "SELECT * FROM persons ORDER BY id") == [
        (
            "P1",
            "张伟",
            "+8613812345678",
            "+8613912345678",
            "H1",
            "611002101201",
            roles_to_mask({Role.GRID_MEMBER, Role.VILLAGE_CADRE}),
            0,
            0,
            "sms;voice",
        ),
        ("P2", "李娜", "+8615012345678", "", "H2", "611002101201", 0, 1, 1, "voice"),
        ("P3", "王芳", None, "", "H3", "611002101202", 0, 0, 0, ""),
        ("P4", "赵强", "+8618612345678", "", None, "611002101202", Role.RESCUE_TEAM.bit, 0, 0, ""),
    ]
    assert _rows(db, "SELECT * FROM households ORDER BY id") == [
        ("H1", "G1", "611002101201", "东村1号"),
        ("H2", "G1", "611002101201", "东村2号, 后院"),
        ("H3", "G2", "611002101202", "西村1号"),
    ]
    assert _rows(db, "SELECT grid_id, person_id FROM grid_members ORDER BY 1") == [
        ("G1", "P1"),
        ("G2", "P1"),
    ]
    assert _rows(db, "SELECT * FROM device_areas ORDER BY 1, 2") == [
        ("MDM-1", "611002101000"),
        ("SPK-1", "611002101201"),
        ("TX-1", "611002101201"),
        ("TX-1", "611002101202"),
    ]


def test_area_closure_holds_every_ancestor_pair_with_depth(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    _run(tmp_path, write_directory, {"areas.csv": canonical_directory["areas.csv"]}, db=db)

    ancestors = _rows(
        db,
        "SELECT ancestor, depth FROM area_closure WHERE descendant = '611002101202' ORDER BY depth",
    )
    assert ancestors == [
        ("611002101202", 0),
        ("611002101000", 1),
        ("611002000000", 2),
        ("611000000000", 3),
        ("610000000000", 4),
    ]
    # 6 areas at depths 0..4 with two villages: 1 + 2 + 3 + 4 + 5 + 5 pairs.
    assert _count(db, "area_closure") == 20


def test_bom_header_order_case_and_trailing_empty_columns_are_accepted(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    files = dict(canonical_directory)
    files["grids.csv"] = [
        "Name,ID,Village_Code,,",
        "东村一组,G1,611002101201,,",
        "西村一组,G2,611002101202",
    ]
    report = _run(tmp_path, write_directory, files, db=db)

    assert report.ok, str(report)
    assert _rows(db, "SELECT * FROM grids ORDER BY id") == [
        ("G1", "611002101201", "东村一组"),
        ("G2", "611002101202", "西村一组"),
    ]


def test_lenient_spellings_are_normalised(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    files = dict(canonical_directory)
    files["persons.csv"] = [
        files["persons.csv"][0],
        "P1,张伟,138 1234 5678；13912345678;138-1234-5678,H1,,Village_Cadre;grid_member,否,no,"
        "voice;sms;voice,G2;G1",
        "P2,李娜,+86 150 1234 5678,H2,611002101201,,是,TRUE,,",
        "P3,王芳,,H3,,,yes,0,,",
    ]
    report = _run(tmp_path, write_directory, files, db=db)

    assert report.ok, str(report)
    assert _rows(db, "SELECT * FROM persons ORDER BY id") == [
        (
            "P1",
            "张伟",
            "+8613812345678",
            "+8613912345678",
            "H1",
            "611002101201",
            roles_to_mask({Role.GRID_MEMBER, Role.VILLAGE_CADRE}),
            0,
            0,
            "voice;sms",
        ),
        ("P2", "李娜", "+8615012345678", "", "H2", "611002101201", 0, 1, 1, ""),
        ("P3", "王芳", None, "", "H3", "611002101202", 0, 1, 0, ""),
    ]


# Each case appends one bad row to a file of the canonical directory: the error's text and
# line, and that file imports nothing.
BAD_ROWS = [
    pytest.param(
        "persons.csv",
        "P9,钱七,12345,H1,,,,,,",
        "phones: '12345' is not a valid phone number",
        id="invalid-phone",
    ),
    pytest.param(
        "persons.csv",
        "P9,钱七,13812345678;+8612345678901,H1,,,,,,",
        "phones: '+8612345678901' is not a valid phone number",
        id="invalid-second-phone",
    ),
    pytest.param(
        "grids.csv",
        "G9,611002101299,新组",
        "village_code: unknown area '611002101299'",
        id="grid-unknown-area",
    ),
    pytest.param(
        "grids.csv",
        "G9,611002101000,镇组",
        "village_code: '611002101000' is a town, not a village",
        id="grid-in-a-town",
    ),
    pytest.param("households.csv", "H9,G99,无名", "grid_id: unknown grid 'G99'", id="unknown-grid"),
    pytest.param(
        "persons.csv",
        "P9,钱七,,H99,,,,,,",
        "household_id: unknown household 'H99'",
        id="unknown-household",
    ),
    pytest.param(
        "persons.csv",
        "P9,钱七,,H1,,grid_member,,,,G99",
        "grids: unknown grid 'G99'",
        id="serves-unknown-grid",
    ),
    pytest.param(
        "persons.csv",
        "P9,钱七,,H1,,village_cadre,,,,G1",
        "grids: only a person with the grid_member role can serve grids",
        id="grids-without-role",
    ),
    pytest.param(
        "persons.csv",
        "P9,钱七,,H1,,,maybe,,,",
        "vulnerable: 'maybe' is not yes or no (write 1/0, true/false, yes/no or 是/否)",
        id="bad-boolean",
    ),
    pytest.param(
        "persons.csv",
        "P9,钱七,,H1,,,,2,,",
        "lives_alone: '2' is not yes or no (write 1/0, true/false, yes/no or 是/否)",
        id="bad-boolean-lives-alone",
    ),
    pytest.param(
        "persons.csv",
        "P1,张伟,,H1,,,,,,",
        "id: 'P1' is already on line 2",
        id="duplicate-id",
    ),
    pytest.param(
        "areas.csv",
        "611002101000,大荆镇,town,611002000000",
        "code: '611002101000' is already on line 5",
        id="duplicate-area-code",
    ),
    pytest.param(
        "persons.csv",
        "P9,钱七,,H1,611002101202,,,,,",
        "village_code: '611002101202' does not match household 'H1', "
        "which is in village '611002101201'",
        id="village-disagrees-with-household",
    ),
    pytest.param(
        "persons.csv",
        "P9,钱七,,,,,,,,",
        "village_code: required when household_id is empty",
        id="no-household-no-village",
    ),
    pytest.param(
        "persons.csv",
        "P9,钱七,,,611002101000,,,,,",
        "village_code: '611002101000' is a town, not a village",
        id="person-village-is-a-town",
    ),
    pytest.param(
        "persons.csv",
        "P9,钱七,,,611002109999,,,,,",
        "village_code: unknown area '611002109999'",
        id="person-unknown-village",
    ),
    pytest.param(
        "persons.csv",
        "P9,钱七,,H1,,chief,,,,",
        "roles: 'chief' is not a role (one of grid_member, village_cadre, rescue_team, "
        "hazard_monitor)",
        id="unknown-role",
    ),
    pytest.param(
        "persons.csv",
        "P9,钱七,,H1,,,,,fax,",
        "preferred_channels: 'fax' is not a channel (one of sms, voice)",
        id="unknown-channel",
    ),
    pytest.param("persons.csv", "P9,,,H1,,,,,,", "name: required", id="missing-name"),
    pytest.param(
        "persons.csv",
        "P 9,钱七,,H1,,,,,,",
        "id: 'P 9' is not an id: use up to 64 characters, no spaces or ';'",
        id="id-with-space",
    ),
    pytest.param("persons.csv", "P9,钱七", "2 fields where the header has 10", id="too-few-fields"),
    pytest.param(
        "areas.csv",
        "611002101203,南村,village,611002101201",
        "parent_code: '611002101201' is a village, not above a village",
        id="parent-not-above",
    ),
    pytest.param(
        "areas.csv",
        "611002102000,新镇,township,611002000000",
        "level: 'township' is not a level (one of province, city, county, town, village)",
        id="unknown-level",
    ),
    pytest.param(
        "areas.csv",
        "611002101203,南村,village,611002109000",
        "parent_code: unknown area '611002109000' (a parent must come before its children)",
        id="unknown-parent",
    ),
    pytest.param(
        "areas.csv",
        "61100210120,短码,village,611002101000",
        "code: '61100210120' is not a 12-digit area code",
        id="short-code",
    ),
    pytest.param(
        "areas.csv",
        "6.11002E+11,商州区,county,611000000000",
        "code: '6.11002E+11' is not a 12-digit area code (a spreadsheet turned it into a "
        "number: format the column as text)",
        id="code-mangled-by-excel",
    ),
    pytest.param(
        "areas.csv",
        "611002102000,孤镇,town,",
        "parent_code: required: only the top of the directory may have no parent, and there is "
        "already a province without one",
        id="second-top-below-the-first",
    ),
    pytest.param(
        "devices.csv",
        "SPK-9,loudspeaker,南村广播,speakers,SPK-9,611002101299,",
        "area_code: unknown area '611002101299'",
        id="device-unknown-area",
    ),
    pytest.param(
        "devices.csv",
        "TX-9,transmitter,发射机,transmitters,TX-9,611002101000,611002101201;611002101299",
        "serves: unknown area '611002101299'",
        id="device-serves-unknown-area",
    ),
    pytest.param(
        "devices.csv",
        "S-9,siren,警报器,speakers,S-9,611002101201,",
        "kind: 'siren' is not a device kind (one of loudspeaker, transmitter, modem)",
        id="unknown-device-kind",
    ),
    pytest.param(
        "devices.csv",
        "SPK-9,loudspeaker,南村广播,,SPK-9,611002101201,",
        "adapter: required",
        id="device-without-adapter",
    ),
]


@pytest.mark.parametrize(("file", "bad_row", "expected"), BAD_ROWS)
def test_bad_row_is_reported_and_its_file_imports_nothing(
    db: StoreTarget,
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
    file: str,
    bad_row: str,
    expected: str,
) -> None:
    canonical_directory[file].append(bad_row)
    line = len(canonical_directory[file])

    report = _run(tmp_path, write_directory, canonical_directory, db=db)

    result = report.file(file)
    assert [str(e) for e in result.errors] == [f"{file}:{line}: {expected}"]
    assert result.error_count == 1
    assert not result.committed
    assert result.rows_read == line - 1
    assert result.imported == 0
    assert result.skipped == result.rows_read
    assert not report.ok
    table = file.removesuffix(".csv")
    assert _count(db, table) == 0
    # Files before the bad one were imported.
    for earlier in report.files[: report.files.index(result)]:
        assert earlier.committed
        assert earlier.imported == earlier.rows_read > 0


def test_bad_row_with_skip_bad_rows_imports_the_good_rows(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    persons = canonical_directory["persons.csv"]
    persons.insert(2, "P8,孙八,12345,H1,,,,,,")
    persons.append("P9,周九,13800138000,H99,,,,,,")

    report = _run(tmp_path, write_directory, canonical_directory, skip_bad_rows=True, db=db)

    result = report.file("persons.csv")
    assert [str(e) for e in result.errors] == [
        "persons.csv:3: phones: '12345' is not a valid phone number",
        "persons.csv:7: household_id: unknown household 'H99'",
    ]
    assert (result.rows_read, result.imported, result.skipped) == (6, 4, 2)
    assert result.committed
    assert not report.ok
    ids = _rows(db, "SELECT id FROM persons ORDER BY id")
    assert ids == [("P1",), ("P2",), ("P3",), ("P4",)]
    assert _count(db, "grid_members") == 2


def test_every_bad_row_is_reported_and_later_rows_are_still_checked(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    persons = canonical_directory["persons.csv"]
    persons[2] = "P2,李娜,12345,H2,611002101201,,1,1,voice,"
    persons.append("P4,赵强,,H1,,,,,,")  # a duplicate of line 5

    report = _run(tmp_path, write_directory, canonical_directory, db=db)

    assert [str(e) for e in report.file("persons.csv").errors] == [
        "persons.csv:3: phones: '12345' is not a valid phone number",
        "persons.csv:6: id: 'P4' is already on line 5",
    ]


def test_line_numbers_count_physical_lines_of_quoted_fields(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    canonical_directory["households.csv"] = [
        "id,grid_id,address",
        'H1,G1,"东村1号',  # line 2: the address goes on over three lines
        "进门左转",
        '二楼"',
        "H2,G99,东村2号",  # line 5
        'H3,G98,"西村',  # line 6, spanning two lines
        '1号"',
        "",  # blank lines are skipped, not rows
        "   ",
        ",,",
        "H4,G97,西村2号",  # line 11
    ]

    report = _run(tmp_path, write_directory, canonical_directory, db=db)

    result = report.file("households.csv")
    assert [str(e) for e in result.errors] == [
        "households.csv:5: grid_id: unknown grid 'G99'",
        "households.csv:6: grid_id: unknown grid 'G98'",
        "households.csv:11: grid_id: unknown grid 'G97'",
    ]
    assert result.rows_read == 4


def test_multiline_field_value_is_kept(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    canonical_directory["households.csv"][1] = 'H1,G1,"东村1号\n二楼"'

    report = _run(tmp_path, write_directory, canonical_directory, folder="csv", db=db)

    assert report.ok, str(report)
    # The writer joined lines with CRLF; inside a quoted field the line end is data.
    rows = _rows(db, "SELECT address FROM households WHERE id = 'H1'")
    assert rows == [("东村1号\n二楼",)]


def test_malformed_quoting_is_a_row_error_and_reading_goes_on(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    households = canonical_directory["households.csv"]
    households.insert(2, 'H8,G1,"东村"8号')
    households.append("H9,G99,x")

    report = _run(tmp_path, write_directory, canonical_directory, skip_bad_rows=True, db=db)

    result = report.file("households.csv")
    assert [str(e) for e in result.errors] == [
        "households.csv:3: malformed CSV: ',' expected after '\"'",
        "households.csv:6: grid_id: unknown grid 'G99'",
    ]
    assert result.imported == 3


def test_wrong_header_is_one_error_naming_the_columns(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    canonical_directory["persons.csv"][0] = (
        "id,name,phone,household_id,village_code,roles,vulnerable,lives_alone,preferred_channels"
    )

    report = _run(tmp_path, write_directory, canonical_directory, skip_bad_rows=True, db=db)

    result = report.file("persons.csv")
    assert [str(e) for e in result.errors] == [
        "persons.csv:1: wrong header: missing columns: phones, grids; unknown columns: phone "
        "(expected: id,name,phones,household_id,village_code,roles,vulnerable,lives_alone,"
        "preferred_channels,grids)"
    ]
    assert result.error_count == 1
    assert (result.rows_read, result.imported, result.committed) == (0, 0, False)
    assert _count(db, "persons") == 0
    # The other files are unaffected.
    assert report.file("devices.csv").imported == 3


def test_missing_header_is_an_error(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    canonical_directory["grids.csv"] = canonical_directory["grids.csv"][1:]
    canonical_directory["devices.csv"] = []

    report = _run(tmp_path, write_directory, canonical_directory, db=db)

    assert [str(e) for e in report.file("grids.csv").errors] == [
        "grids.csv:1: wrong header: missing columns: id, village_code, name; unknown columns: "
        "g1, 611002101201, 东村一组 (expected: id,village_code,name)"
    ]
    assert [str(e) for e in report.file("devices.csv").errors] == [
        "devices.csv:1: empty file: the header must be id,kind,name,adapter,address,area_code,"
        "serves"
    ]


def test_file_that_is_not_utf8_is_rejected_with_its_line(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    folder = write_directory(tmp_path / "csv", canonical_directory)
    text = "id,grid_id,address\r\nH1,G1,x\r\nH2,G1,东村2号\r\nH3,G2,y\r\n"
    (folder / "households.csv").write_bytes(text.encode("gbk"))

    report = import_directory(db.location, folder, skip_bad_rows=True, progress=False)

    result = report.file("households.csv")
    assert [str(e) for e in result.errors] == [
        "households.csv:3: not UTF-8 text (byte 7 of the line is 0xb6): "
        "save the file as 'CSV UTF-8'"
    ]
    # Not even the rows before it: the whole file is suspect.
    assert (result.imported, result.committed) == (0, False)
    assert _count(db, "households") == 0


def test_a_failed_file_leaves_later_files_checked_against_the_store(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    canonical_directory["grids.csv"].append("G9,611002101299,新组")

    report = _run(tmp_path, write_directory, canonical_directory, db=db)

    assert not report.file("grids.csv").committed
    assert str(report.file("households.csv").errors[0]) == (
        "households.csv:2: grid_id: unknown grid 'G1'"
    )
    assert report.file("areas.csv").committed
    assert report.file("devices.csv").committed


def test_errors_kept_are_capped_but_all_are_counted(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    bad = MAX_STORED_ERRORS + 205
    canonical_directory["persons.csv"] += [f"X{i},某人,12345,H1,,,,,," for i in range(bad)]

    report = _run(tmp_path, write_directory, canonical_directory, db=db)

    result = report.file("persons.csv")
    assert result.error_count == bad
    assert len(result.errors) == MAX_STORED_ERRORS
    assert result.errors[-1].line == 5 + MAX_STORED_ERRORS
    assert "persons.csv: … and 205 more" in str(report)


def test_upsert_replaces_rows_and_their_memberships(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    assert _run(tmp_path, write_directory, canonical_directory, db=db).ok

    second = {
        "areas.csv": ["code,name,level,parent_code", "611002101201,东村村,village,611002101000"],
        "persons.csv": [
            canonical_directory["persons.csv"][0],
            "P1,张伟,+8613700000000,H1,,grid_member,1,0,,G1",
            "P3,王芳芳,,H3,,,0,0,,",
        ],
        "devices.csv": [
            canonical_directory["devices.csv"][0],
            "TX-1,transmitter,发射机,transmitters,TX-1,611002101000,611002101202",
        ],
    }
    report = _run(tmp_path, write_directory, second, folder="second", db=db)

    assert report.ok, str(report)
    assert [f.found for f in report.files] == [True, False, False, True, True]
    assert _rows(db, "SELECT name FROM areas WHERE code = '611002101201'") == [("东村村",)]
    assert _rows(
        db, "SELECT id, name, phone, other_phones, roles, vulnerable FROM persons ORDER BY id"
    ) == [
        ("P1", "张伟", "+8613700000000", "", Role.GRID_MEMBER.bit, 1),
        ("P2", "李娜", "+8615012345678", "", 0, 1),
        ("P3", "王芳芳", None, "", 0, 0),
        ("P4", "赵强", "+8618612345678", "", Role.RESCUE_TEAM.bit, 0),
    ]
    assert _rows(db, "SELECT grid_id, person_id FROM grid_members") == [("G1", "P1")]
    assert _rows(db, "SELECT area_code FROM device_areas WHERE device_id = 'TX-1'") == [
        ("611002101202",)
    ]
    assert _count(db, "area_closure") == 20


def test_moving_a_grid_moves_its_households_and_people(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    assert _run(tmp_path, write_directory, canonical_directory, db=db).ok

    moved = {"grids.csv": ["id,village_code,name", "G1,611002101202,西村二组"]}
    assert _run(tmp_path, write_directory, moved, folder="moved", db=db).ok

    assert _rows(db, "SELECT id, village_code FROM households ORDER BY id") == [
        ("H1", "611002101202"),
        ("H2", "611002101202"),
        ("H3", "611002101202"),
    ]
    assert _rows(db, "SELECT id, village_code FROM persons ORDER BY id") == [
        ("P1", "611002101202"),
        ("P2", "611002101202"),
        ("P3", "611002101202"),
        ("P4", "611002101202"),
    ]


def test_import_through_a_writer_leaves_its_connection_open(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    folder = write_directory(tmp_path / "csv", canonical_directory)
    with open_directory(db.location) as store:
        report = import_directory(store, folder, progress=False)
        assert report.ok
        assert store.counts() == {
            "areas": 6,
            "grids": 2,
            "households": 3,
            "persons": 4,
            "devices": 3,
        }


def test_no_progress_output_when_stderr_is_not_a_terminal(
    db: StoreTarget,
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = write_directory(tmp_path / "csv", canonical_directory)
    import_directory(db.location, folder, progress=True)
    assert capsys.readouterr().err == ""


def test_a_folder_without_directory_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="none of the directory files"):
        import_directory(tmp_path / "tocsin.db", tmp_path, progress=False)
    with pytest.raises(NotADirectoryError):
        import_directory(tmp_path / "tocsin.db", tmp_path / "nowhere", progress=False)
    assert not (tmp_path / "tocsin.db").exists()


def _reference_e164(raw: str) -> str | None:
    """What phonenumbers itself says, with no shortcut."""
    try:
        number = phonenumbers.parse(raw, "CN")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def test_phone_fast_path_agrees_with_phonenumbers() -> None:
    rng = random.Random(7)
    samples = []
    for prefix in range(100, 200):  # every 1xx: mobiles, carrier-select and IDD-like prefixes
        for _ in range(40):
            national = f"{prefix}{rng.randrange(10**8):08d}"
            samples += [national, f"+86{national}", f"86{national}", f"0086{national}"]
    for _ in range(2000):  # landlines with and without the trunk 0, short and long numbers
        digits = str(rng.randrange(10**6, 10**12))
        samples += [digits, f"0{digits}", f"+86{digits}", f"+{digits}"]
    samples += ["17951" + "13812345678", "12593" + "13812345678", "+1 650 253 0000", "911"]
    parser = PhoneParser()

    mismatches = [s for s in samples if parser.number(s) != _reference_e164(s)]

    assert mismatches == []
    # The sample covers both answers, and both paths.
    assert sum(parser.number(s) is not None for s in samples) > 1000
    assert sum(parser.number(s) is None for s in samples) > 1000
    assert sum(parser._fast_parse(s) is not None for s in samples) > 3000


# -- staging, then applying in short transactions ----------------------------------------------


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, int]]:
    """(path, permission bits) of every staging file the importer creates."""
    created: list[tuple[Path, int]] = []

    class RecordingStaging(Staging):
        def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
            super().__init__(folder)
            created.append((self.path, self.path.stat().st_mode & 0o777))

    monkeypatch.setattr(importer, "Staging", RecordingStaging)
    return created


def _fail_applying_after(monkeypatch: pytest.MonkeyPatch, table: str, transactions: int) -> None:
    """Make applying ``table`` fail right after its n-th transaction has committed."""
    original = SqlDirectory.apply_staged

    def failing(
        self: SqlDirectory,
        staging: Path,
        name: str,
        *,
        chunk_rows: int,
        on_transaction: OnTransaction,
    ) -> int:
        if name != table:
            return original(
                self, staging, name, chunk_rows=chunk_rows, on_transaction=on_transaction
            )
        done = 0

        def counting(rows: int, seconds: float) -> None:
            nonlocal done
            on_transaction(rows, seconds)
            done += 1
            if done == transactions:
                raise OSError("disk I/O error")

        return original(self, staging, name, chunk_rows=chunk_rows, on_transaction=counting)

    # Both stores' directories inherit apply_staged from SqlDirectory.
    monkeypatch.setattr(SqlDirectory, "apply_staged", failing)


def test_a_bad_last_row_leaves_the_store_exactly_as_it_was(
    db: StoreTarget,
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
    dump_directory: Dump,
) -> None:
    assert _run(tmp_path, write_directory, canonical_directory, db=db).ok
    before = dump_directory(db)
    # Every file changes what is stored, in many chunks, and ends with one bad row.
    persons_header = canonical_directory["persons.csv"][0]
    changed = {
        "areas.csv": [
            "code,name,level,parent_code",
            "611002102000,新镇,town,611002000000",
            "611002101202,西村,village,611002102000",
            "611002101203,南村,village,611002109000",
        ],
        "grids.csv": [
            "id,village_code,name",
            "G1,611002101202,西村二组",
            *(f"G{i},611002101201,新组{i}" for i in range(10, 40)),
            "G99,611002101000,镇组",
        ],
        "households.csv": [
            "id,grid_id,address",
            "H1,G2,西村9号",
            *(f"H{i},G1,新户{i}" for i in range(10, 40)),
            "H99,G99,无名",
        ],
        "persons.csv": [
            persons_header,
            *(f"P{i},新人{i},,H1,,grid_member,,,,G2" for i in range(1, 60)),
            "P99,坏人,12345,H1,,,,,,",
        ],
        "devices.csv": [
            canonical_directory["devices.csv"][0],
            "TX-1,transmitter,发射机,transmitters,TX-1,611002101000,611002101202",
            *(f"S{i},loudspeaker,喇叭,speakers,S{i},611002101201," for i in range(30)),
            "S99,siren,警报器,speakers,S99,611002101201,",
        ],
    }

    report = _run(tmp_path, write_directory, changed, folder="changed", chunk_rows=7, db=db)

    for name, lines in changed.items():
        result = report.file(name)
        assert result.error_count == 1, str(report)
        assert result.errors[0].line == len(lines)
        assert (result.committed, result.imported, result.write_transactions) == (False, 0, 0)
    assert dump_directory(db) == before


def test_applying_in_small_chunks_gives_the_same_store(
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
    dump_directory: Dump,
    another_store: AnotherStore,
) -> None:
    second = {
        # A new town, a village moved under it, a village renamed.
        "areas.csv": [
            "code,name,level,parent_code",
            "611002102000,新镇,town,611002000000",
            "611002101202,西村,village,611002102000",
            "611002101201,东村村,village,611002101000",
        ],
        # G1 moves to 西村: its households and their people go along.
        "grids.csv": ["id,village_code,name", "G1,611002101202,西村二组"],
        "persons.csv": [
            canonical_directory["persons.csv"][0],
            "P1,张伟,+8613700000000,H1,,grid_member,1,0,,G1",
            "P3,王芳芳,,H3,,grid_member,0,0,,G1;G2",
            "P5,钱五,,,611002101201,,0,0,,",
        ],
        "devices.csv": [
            canonical_directory["devices.csv"][0],
            "TX-1,transmitter,发射机,transmitters,TX-1,611002101000,611002101202",
            "SPK-2,loudspeaker,西村广播,speakers,SPK-2,611002101202,",
        ],
    }
    dumps = []
    stores = {}
    for chunk_rows in (1, 2, None):  # None: the store's own
        db = stores[chunk_rows] = another_store(f"chunks-{chunk_rows}")
        first = _run(tmp_path, write_directory, canonical_directory, db=db, chunk_rows=chunk_rows)
        report = _run(
            tmp_path, write_directory, second, db=db, folder="second", chunk_rows=chunk_rows
        )
        assert first.ok, str(first)
        assert report.ok, str(report)
        dumps.append(dump_directory(db))

    assert dumps[0] == dumps[1] == dumps[2]
    db = stores[1]
    assert _rows(
        db,
        "SELECT ancestor, depth FROM area_closure WHERE descendant = '611002101202' ORDER BY depth",
    ) == [
        ("611002101202", 0),
        ("611002102000", 1),
        ("611002000000", 2),
        ("611000000000", 3),
        ("610000000000", 4),
    ]
    # The old town no longer covers the moved village; the new town: itself and 3 ancestors.
    assert _rows(
        db, "SELECT descendant FROM area_closure WHERE ancestor = '611002101000' ORDER BY 1"
    ) == [("611002101000",), ("611002101201",)]
    assert _count(db, "area_closure") == 20 + 4
    assert _rows(db, "SELECT id, village_code FROM persons ORDER BY id") == [
        ("P1", "611002101202"),
        ("P2", "611002101202"),
        ("P3", "611002101202"),
        ("P4", "611002101202"),
        ("P5", "611002101201"),
    ]
    assert _rows(db, "SELECT grid_id, person_id FROM grid_members ORDER BY 2, 1") == [
        ("G1", "P1"),
        ("G1", "P3"),
        ("G2", "P3"),
    ]
    assert _rows(db, "SELECT * FROM device_areas ORDER BY 1, 2") == [
        ("MDM-1", "611002101000"),
        ("SPK-1", "611002101201"),
        ("SPK-2", "611002101202"),
        ("TX-1", "611002101202"),
    ]


def test_rows_are_applied_in_transactions_of_chunk_rows(
    db: StoreTarget, tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    canonical_directory["persons.csv"] += [f"X{i},某人,,H1,,,,,," for i in range(46)]

    report = _run(tmp_path, write_directory, canonical_directory, chunk_rows=10, db=db)

    persons = report.file("persons.csv")
    assert (persons.imported, persons.write_transactions) == (50, 5)
    assert 0 < persons.longest_write <= persons.write_seconds
    assert persons.write_seconds <= persons.apply_seconds <= persons.seconds
    assert report.longest_write >= persons.longest_write
    assert _count(db, "persons") == 50


def test_staging_files_are_private_and_removed(
    db: StoreTarget,
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
    staged: list[tuple[Path, int]],
) -> None:
    # One per file, beside a SQLite database by default; in the system's temporary folder
    # for PostgreSQL.
    assert _run(tmp_path, write_directory, canonical_directory, db=db).ok
    assert len(staged) == 5
    beside = tmp_path if db.kind == "sqlite" else Path(tempfile.gettempdir())
    assert {path.parent for path, _ in staged} == {beside}
    assert {mode for _, mode in staged} == {0o600}
    assert not any(path.exists() for path, _ in staged)
    assert list(tmp_path.glob(f"{STAGING_PREFIX}*")) == []

    # In the folder asked for; also for a file with errors.
    staged.clear()
    folder = tmp_path / "staging"
    folder.mkdir()
    canonical_directory["persons.csv"].append("P9,钱七,12345,H1,,,,,,")
    write_directory(tmp_path / "bad", canonical_directory)
    report = import_directory(db.location, tmp_path / "bad", progress=False, staging_dir=folder)
    assert not report.file("persons.csv").committed
    assert {path.parent for path, _ in staged} == {folder}
    assert list(folder.iterdir()) == []

    # The system's temporary folder for an import through a writer.
    staged.clear()
    with open_directory(db.location) as store:
        assert import_directory(store, tmp_path / "csv", progress=False).ok
    assert {path.parent for path, _ in staged} == {Path(tempfile.gettempdir())}
    assert not any(path.exists() for path, _ in staged)


def test_an_apply_that_stops_half_way_is_completed_by_importing_again(
    db: StoreTarget,
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
    dump_directory: Dump,
    staged: list[tuple[Path, int]],
    monkeypatch: pytest.MonkeyPatch,
    another_store: AnotherStore,
) -> None:
    canonical_directory["persons.csv"] += [f"X{i},某人,,H1,,grid_member,,,,G1" for i in range(46)]
    folder = write_directory(tmp_path / "csv", canonical_directory)
    _fail_applying_after(monkeypatch, "persons", transactions=2)

    with pytest.raises(OSError, match="disk I/O error") as raised:
        import_directory(db.location, folder, progress=False, chunk_rows=10)

    assert raised.value.__notes__ == [
        "persons.csv: applying the file to the store stopped after 20 of its 50 rows: import "
        "the same file again to complete it (rows are upserted by id)"
    ]
    assert _count(db, "persons") == 20  # two chunks went in
    assert len(staged) == 4
    assert not any(path.exists() for path, _ in staged)

    monkeypatch.undo()
    assert import_directory(db.location, folder, progress=False, chunk_rows=10).ok
    clean = another_store("clean")
    assert import_directory(clean.location, folder, progress=False).ok
    assert dump_directory(db) == dump_directory(clean)


#: About 100,000 persons: validating them takes seconds (longer than the writer's busy
#: timeout below), applying them many transactions.
_BUSY_CITY = SyntheticDirectoryConfig(
    counties=1,
    towns_per_county=5,
    villages_per_town=10,
    grids_per_village=8,
    households_per_grid=80,
    persons_per_household=3.1,
    seed=5,
)
_WRITE_EVERY = 0.05
_WRITER_BUSY_TIMEOUT_MS = 2000


def test_the_daemon_keeps_writing_while_a_large_directory_is_imported(
    db: StoreTarget,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    counts = write_csv(_BUSY_CITY, tmp_path / "csv")
    open_directory(db.location).close()
    # When each file's rows were being applied.
    applying: dict[str, tuple[float, float]] = {}
    original = SqlDirectory.apply_staged

    def timed(
        self: SqlDirectory,
        staging: Path,
        table: str,
        *,
        chunk_rows: int,
        on_transaction: OnTransaction,
    ) -> int:
        started = time.monotonic()
        try:
            return original(
                self, staging, table, chunk_rows=chunk_rows, on_transaction=on_transaction
            )
        finally:
            applying[table] = (started, time.monotonic())

    monkeypatch.setattr(SqlDirectory, "apply_staged", timed)
    outcome: dict[str, Any] = {}

    def run_import() -> None:
        try:
            outcome["report"] = import_directory(db.location, tmp_path / "csv", progress=False)
        except BaseException as exc:
            outcome["error"] = exc

    # A writer configured like the daemon's, but giving up after 2 s instead of 30 s: a duty
    # officer posting a warning every 50 ms, each in a transaction of its own. On PostgreSQL
    # it stands for another node: BEGIN IMMEDIATE takes the writer lock the import's chunks
    # hold.
    conn = db.connect()
    if db.kind == "sqlite":
        conn.execute(f"PRAGMA busy_timeout = {_WRITER_BUSY_TIMEOUT_MS}")
    else:
        conn.execute(f"SET lock_timeout = {_WRITER_BUSY_TIMEOUT_MS}")
    writes: list[tuple[float, float]] = []  # (when it committed, how long it took)
    failures: list[str] = []
    thread = threading.Thread(target=run_import, name="import")
    thread.start()
    deadline = time.monotonic() + 120
    try:
        while thread.is_alive() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO audit_log (at, principal, role, action, target) "
                    "VALUES (?, 'officer', 'operator', 'warning.create', ?)",
                    (str(started), f"w{len(writes)}"),
                )
                conn.execute("COMMIT")
                writes.append((time.monotonic(), time.monotonic() - started))
            except (sqlite3.OperationalError, psycopg.errors.LockNotAvailable) as exc:
                failures.append(f"after {time.monotonic() - started:.2f} s: {exc}")
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            time.sleep(_WRITE_EVERY)
    finally:
        thread.join(timeout=120)
        conn.close()

    assert "error" not in outcome, outcome
    report: ImportReport = outcome["report"]
    assert report.ok, str(report)
    assert {f.file: f.imported for f in report.files} == counts
    worst = max(seconds for _, seconds in writes)
    record_property("concurrent_writes", len(writes))
    record_property("worst_write_wait_ms", round(worst * 1000, 1))
    record_property("longest_import_transaction_ms", round(report.longest_write * 1000, 1))
    print(
        f"{len(writes)} writes during a {report.seconds:.1f} s import, worst wait "
        f"{worst * 1000:.0f} ms; import: {report.longest_write * 1000:.0f} ms longest of "
        f"{sum(f.write_transactions for f in report.files)} write transactions"
    )
    # Every write got through, none waited anywhere near the timeout...
    assert failures == []
    assert worst < 1.0
    assert _count(db, "audit_log") == len(writes)
    # ... including while the persons were being applied, in many short transactions.
    persons = report.file("persons.csv")
    with open_directory(db.location) as directory:
        chunk_rows = directory.apply_chunk_rows
    assert chunk_rows == (importer.APPLY_CHUNK_ROWS if db.kind == "sqlite" else 1000)
    assert persons.write_transactions >= counts["persons.csv"] // chunk_rows
    assert persons.longest_write < 1.0
    start, end = applying["persons"]
    assert sum(start < at < end for at, _ in writes) >= 2

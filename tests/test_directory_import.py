"""Importing the directory CSV files: values stored, every kind of bad row, transactions."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import phonenumbers
import pytest

from dispatcher.directory import ImportReport, import_directory
from dispatcher.directory.report import MAX_STORED_ERRORS
from dispatcher.directory.validate import PhoneParser
from dispatcher.domain import Role, roles_to_mask
from dispatcher.store.sqlite_directory import SqliteDirectory

Files = dict[str, list[str]]
#: The ``write_directory`` fixture (tests/conftest.py).
WriteDirectory = Callable[..., Path]


def _run(
    tmp_path: Path,
    write_directory: WriteDirectory,
    files: Files,
    *,
    skip_bad_rows: bool = False,
    db: Path | None = None,
    folder: str = "csv",
) -> ImportReport:
    write_directory(tmp_path / folder, files)
    return import_directory(
        db or tmp_path / "tocsin.db",
        tmp_path / folder,
        skip_bad_rows=skip_bad_rows,
        progress=False,
    )


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _count(db: Path, table: str) -> int:
    return int(_rows(db, f"SELECT count(*) FROM {table}")[0][0])


def test_valid_directory_is_stored(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    report = _run(tmp_path, write_directory, canonical_directory)
    db = tmp_path / "tocsin.db"

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
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    _run(tmp_path, write_directory, {"areas.csv": canonical_directory["areas.csv"]})
    db = tmp_path / "tocsin.db"

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
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    files = dict(canonical_directory)
    files["grids.csv"] = [
        "Name,ID,Village_Code,,",
        "东村一组,G1,611002101201,,",
        "西村一组,G2,611002101202",
    ]
    report = _run(tmp_path, write_directory, files)

    assert report.ok, str(report)
    assert _rows(tmp_path / "tocsin.db", "SELECT * FROM grids ORDER BY id") == [
        ("G1", "611002101201", "东村一组"),
        ("G2", "611002101202", "西村一组"),
    ]


def test_lenient_spellings_are_normalised(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    files = dict(canonical_directory)
    files["persons.csv"] = [
        files["persons.csv"][0],
        "P1,张伟,138 1234 5678；13912345678;138-1234-5678,H1,,Village_Cadre;grid_member,否,no,"
        "voice;sms;voice,G2;G1",
        "P2,李娜,+86 150 1234 5678,H2,611002101201,,是,TRUE,,",
        "P3,王芳,,H3,,,yes,0,,",
    ]
    report = _run(tmp_path, write_directory, files)

    assert report.ok, str(report)
    assert _rows(tmp_path / "tocsin.db", "SELECT * FROM persons ORDER BY id") == [
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
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
    file: str,
    bad_row: str,
    expected: str,
) -> None:
    canonical_directory[file].append(bad_row)
    line = len(canonical_directory[file])

    report = _run(tmp_path, write_directory, canonical_directory)

    result = report.file(file)
    assert [str(e) for e in result.errors] == [f"{file}:{line}: {expected}"]
    assert result.error_count == 1
    assert not result.committed
    assert result.rows_read == line - 1
    assert result.imported == 0
    assert result.skipped == result.rows_read
    assert not report.ok
    table = file.removesuffix(".csv")
    assert _count(tmp_path / "tocsin.db", table) == 0
    # Files before the bad one were imported.
    for earlier in report.files[: report.files.index(result)]:
        assert earlier.committed
        assert earlier.imported == earlier.rows_read > 0


def test_bad_row_with_skip_bad_rows_imports_the_good_rows(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    persons = canonical_directory["persons.csv"]
    persons.insert(2, "P8,孙八,12345,H1,,,,,,")
    persons.append("P9,周九,13800138000,H99,,,,,,")

    report = _run(tmp_path, write_directory, canonical_directory, skip_bad_rows=True)

    result = report.file("persons.csv")
    assert [str(e) for e in result.errors] == [
        "persons.csv:3: phones: '12345' is not a valid phone number",
        "persons.csv:7: household_id: unknown household 'H99'",
    ]
    assert (result.rows_read, result.imported, result.skipped) == (6, 4, 2)
    assert result.committed
    assert not report.ok
    ids = _rows(tmp_path / "tocsin.db", "SELECT id FROM persons ORDER BY id")
    assert ids == [("P1",), ("P2",), ("P3",), ("P4",)]
    assert _count(tmp_path / "tocsin.db", "grid_members") == 2


def test_every_bad_row_is_reported_and_later_rows_are_still_checked(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    persons = canonical_directory["persons.csv"]
    persons[2] = "P2,李娜,12345,H2,611002101201,,1,1,voice,"
    persons.append("P4,赵强,,H1,,,,,,")  # a duplicate of line 5

    report = _run(tmp_path, write_directory, canonical_directory)

    assert [str(e) for e in report.file("persons.csv").errors] == [
        "persons.csv:3: phones: '12345' is not a valid phone number",
        "persons.csv:6: id: 'P4' is already on line 5",
    ]


def test_line_numbers_count_physical_lines_of_quoted_fields(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
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

    report = _run(tmp_path, write_directory, canonical_directory)

    result = report.file("households.csv")
    assert [str(e) for e in result.errors] == [
        "households.csv:5: grid_id: unknown grid 'G99'",
        "households.csv:6: grid_id: unknown grid 'G98'",
        "households.csv:11: grid_id: unknown grid 'G97'",
    ]
    assert result.rows_read == 4


def test_multiline_field_value_is_kept(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    canonical_directory["households.csv"][1] = 'H1,G1,"东村1号\n二楼"'

    report = _run(tmp_path, write_directory, canonical_directory, folder="csv")

    assert report.ok, str(report)
    # The writer joined lines with CRLF; inside a quoted field the line end is data.
    rows = _rows(tmp_path / "tocsin.db", "SELECT address FROM households WHERE id = 'H1'")
    assert rows == [("东村1号\n二楼",)]


def test_malformed_quoting_is_a_row_error_and_reading_goes_on(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    households = canonical_directory["households.csv"]
    households.insert(2, 'H8,G1,"东村"8号')
    households.append("H9,G99,x")

    report = _run(tmp_path, write_directory, canonical_directory, skip_bad_rows=True)

    result = report.file("households.csv")
    assert [str(e) for e in result.errors] == [
        "households.csv:3: malformed CSV: ',' expected after '\"'",
        "households.csv:6: grid_id: unknown grid 'G99'",
    ]
    assert result.imported == 3


def test_wrong_header_is_one_error_naming_the_columns(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    canonical_directory["persons.csv"][0] = (
        "id,name,phone,household_id,village_code,roles,vulnerable,lives_alone,preferred_channels"
    )

    report = _run(tmp_path, write_directory, canonical_directory, skip_bad_rows=True)

    result = report.file("persons.csv")
    assert [str(e) for e in result.errors] == [
        "persons.csv:1: wrong header: missing columns: phones, grids; unknown columns: phone "
        "(expected: id,name,phones,household_id,village_code,roles,vulnerable,lives_alone,"
        "preferred_channels,grids)"
    ]
    assert result.error_count == 1
    assert (result.rows_read, result.imported, result.committed) == (0, 0, False)
    assert _count(tmp_path / "tocsin.db", "persons") == 0
    # The other files are unaffected.
    assert report.file("devices.csv").imported == 3


def test_missing_header_is_an_error(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    canonical_directory["grids.csv"] = canonical_directory["grids.csv"][1:]
    canonical_directory["devices.csv"] = []

    report = _run(tmp_path, write_directory, canonical_directory)

    assert [str(e) for e in report.file("grids.csv").errors] == [
        "grids.csv:1: wrong header: missing columns: id, village_code, name; unknown columns: "
        "g1, 611002101201, 东村一组 (expected: id,village_code,name)"
    ]
    assert [str(e) for e in report.file("devices.csv").errors] == [
        "devices.csv:1: empty file: the header must be id,kind,name,adapter,address,area_code,"
        "serves"
    ]


def test_file_that_is_not_utf8_is_rejected_with_its_line(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    folder = write_directory(tmp_path / "csv", canonical_directory)
    text = "id,grid_id,address\r\nH1,G1,x\r\nH2,G1,东村2号\r\nH3,G2,y\r\n"
    (folder / "households.csv").write_bytes(text.encode("gbk"))

    report = import_directory(tmp_path / "tocsin.db", folder, skip_bad_rows=True, progress=False)

    result = report.file("households.csv")
    assert [str(e) for e in result.errors] == [
        "households.csv:3: not UTF-8 text (byte 7 of the line is 0xb6): "
        "save the file as 'CSV UTF-8'"
    ]
    # Not even the rows before it: the whole file is suspect.
    assert (result.imported, result.committed) == (0, False)
    assert _count(tmp_path / "tocsin.db", "households") == 0


def test_a_failed_file_leaves_later_files_checked_against_the_store(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    canonical_directory["grids.csv"].append("G9,611002101299,新组")

    report = _run(tmp_path, write_directory, canonical_directory)

    assert not report.file("grids.csv").committed
    assert str(report.file("households.csv").errors[0]) == (
        "households.csv:2: grid_id: unknown grid 'G1'"
    )
    assert report.file("areas.csv").committed
    assert report.file("devices.csv").committed


def test_errors_kept_are_capped_but_all_are_counted(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    bad = MAX_STORED_ERRORS + 205
    canonical_directory["persons.csv"] += [f"X{i},某人,12345,H1,,,,,," for i in range(bad)]

    report = _run(tmp_path, write_directory, canonical_directory)

    result = report.file("persons.csv")
    assert result.error_count == bad
    assert len(result.errors) == MAX_STORED_ERRORS
    assert result.errors[-1].line == 5 + MAX_STORED_ERRORS
    assert "persons.csv: … and 205 more" in str(report)


def test_upsert_replaces_rows_and_their_memberships(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    db = tmp_path / "tocsin.db"
    assert _run(tmp_path, write_directory, canonical_directory).ok

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
    report = _run(tmp_path, write_directory, second, folder="second")

    assert report.ok, str(report)
    assert [f.found for f in report.files] == [True, False, False, True, True]
    assert _rows(db, "SELECT name FROM areas WHERE code = '611002101201'") == [("东村村",)]
    assert _rows(db, "SELECT id, name, phone, other_phones, roles, vulnerable FROM persons") == [
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
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    db = tmp_path / "tocsin.db"
    assert _run(tmp_path, write_directory, canonical_directory).ok

    moved = {"grids.csv": ["id,village_code,name", "G1,611002101202,西村二组"]}
    assert _run(tmp_path, write_directory, moved, folder="moved").ok

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
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    folder = write_directory(tmp_path / "csv", canonical_directory)
    with SqliteDirectory.open(tmp_path / "tocsin.db") as store:
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
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = write_directory(tmp_path / "csv", canonical_directory)
    import_directory(tmp_path / "tocsin.db", folder, progress=True)
    assert capsys.readouterr().err == ""


def test_a_folder_without_directory_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="none of the directory files"):
        import_directory(tmp_path / "tocsin.db", tmp_path, progress=False)
    with pytest.raises(NotADirectoryError):
        import_directory(tmp_path / "tocsin.db", tmp_path / "nowhere", progress=False)


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

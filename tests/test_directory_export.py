"""Exporting the directory: canonical files that import back to the same directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatcher.directory import export_directory, import_directory
from dispatcher.store.sqlite_directory import SqliteDirectory

Files = dict[str, list[str]]
#: The ``write_directory`` fixture (tests/conftest.py).
WriteDirectory = Callable[..., Path]
Dump = Callable[[Path], dict[str, list[tuple[Any, ...]]]]
FILE_NAMES = ["areas.csv", "grids.csv", "households.csv", "persons.csv", "devices.csv"]


def test_canonical_input_exports_byte_for_byte(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    source = write_directory(tmp_path / "in", canonical_directory)
    assert import_directory(tmp_path / "a.db", source, progress=False).ok

    report = export_directory(tmp_path / "a.db", tmp_path / "out", progress=False)

    assert report.rows == {
        "areas.csv": 6,
        "grids.csv": 2,
        "households.csv": 3,
        "persons.csv": 4,
        "devices.csv": 3,
    }
    for name in FILE_NAMES:
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes(), name


def test_any_input_round_trips_to_the_same_directory(
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
    dump_directory: Dump,
) -> None:
    # The canonical directory written the way a person might: no BOM, LF line ends, columns
    # moved, national numbers, Chinese yes/no, lists out of order, default `serves`, rows
    # out of id order.
    loose = {
        "areas.csv": canonical_directory["areas.csv"],
        "grids.csv": [
            "name,id,village_code",
            "西村一组,G2,611002101202",
            "东村一组,G1,611002101201",
        ],
        "households.csv": canonical_directory["households.csv"],
        "persons.csv": [
            "grids,id,name,phones,household_id,village_code,roles,vulnerable,lives_alone,"
            "preferred_channels",
            "G2;G1,P1,张伟,138 1234 5678;139-1234-5678,H1,,village_cadre;grid_member,否,否,"
            "sms;voice",
            ",P3,王芳,,H3,,,no,no,",
            ",P2,李娜,15012345678,H2,611002101201,,是,是,voice",
            ",P4,赵强,+86 186 1234 5678,,611002101202,Rescue_Team,,,",
        ],
        "devices.csv": [
            "id,kind,name,adapter,address,area_code,serves",
            "TX-1,transmitter,大荆镇发射机,transmitters,TX-1,611002101000,611002101202;611002101201",
            "SPK-1,loudspeaker,东村广播,speakers,SPK-1,611002101201,",
            "MDM-1,modem,大荆镇卫星电话,modems,+8617400000001,611002101000,",
        ],
    }
    source = write_directory(tmp_path / "in", loose, bom=False, newline="\n")
    assert import_directory(tmp_path / "a.db", source, progress=False).ok

    export_directory(tmp_path / "a.db", tmp_path / "out", progress=False)

    # The export is the canonical form of the same directory ...
    canonical = write_directory(tmp_path / "canonical", canonical_directory)
    for name in FILE_NAMES:
        assert (tmp_path / "out" / name).read_bytes() == (canonical / name).read_bytes(), name
    # ... and imports into a fresh database as an identical directory.
    assert import_directory(tmp_path / "b.db", tmp_path / "out", progress=False).ok
    assert dump_directory(tmp_path / "b.db") == dump_directory(tmp_path / "a.db")


def test_export_without_bom(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    source = write_directory(tmp_path / "in", canonical_directory)
    import_directory(tmp_path / "a.db", source, progress=False)

    export_directory(tmp_path / "a.db", tmp_path / "out", bom=False, progress=False)

    for name in FILE_NAMES:
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes()[3:]


def test_export_through_a_reader(
    tmp_path: Path, write_directory: WriteDirectory, canonical_directory: Files
) -> None:
    source = write_directory(tmp_path / "in", canonical_directory)
    import_directory(tmp_path / "a.db", source, progress=False)

    with SqliteDirectory.open(tmp_path / "a.db") as store:
        export_directory(store, tmp_path / "out", progress=False)
        assert not store.conn.in_transaction

    assert (tmp_path / "out" / "persons.csv").read_bytes() == (source / "persons.csv").read_bytes()


def test_export_of_an_empty_directory_writes_headers(tmp_path: Path) -> None:
    SqliteDirectory.open(tmp_path / "empty.db").close()

    report = export_directory(tmp_path / "empty.db", tmp_path / "out", bom=False, progress=False)

    assert set(report.rows.values()) == {0}
    assert (tmp_path / "out" / "grids.csv").read_bytes() == b"id,village_code,name\r\n"


def test_export_refuses_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        export_directory(tmp_path / "nothing.db", tmp_path / "out", progress=False)
    assert not (tmp_path / "nothing.db").exists()


def _manual_examples() -> list[tuple[str, list[str]]]:
    """(file name, lines) of each ```csv block in docs/directory.md, told apart by header."""
    from dispatcher.directory.csv_format import FILES

    by_header = {",".join(spec.columns): spec.name for spec in FILES}
    text = (Path(__file__).parent.parent / "docs" / "directory.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```csv\n")[1:]]
    return [(by_header[b.splitlines()[0]], b.splitlines()) for b in blocks]


def test_the_manuals_examples_import_and_are_canonical(
    tmp_path: Path, write_directory: WriteDirectory, dump_directory: Dump
) -> None:
    examples = _manual_examples()
    names = [name for name, _ in examples]
    assert names == [
        "areas.csv",
        "grids.csv",
        "households.csv",
        "persons.csv",
        "persons.csv",
        "devices.csv",
    ]
    canonical = dict(examples[:4] + examples[5:])
    typed = dict(canonical, **{"persons.csv": examples[4][1]})

    source = write_directory(tmp_path / "canonical", canonical)
    assert import_directory(tmp_path / "a.db", source, progress=False).ok
    export_directory(tmp_path / "a.db", tmp_path / "out", progress=False)
    for name in FILE_NAMES:
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes(), name

    loose = write_directory(tmp_path / "typed", typed, bom=False, newline="\n")
    assert import_directory(tmp_path / "b.db", loose, progress=False).ok
    assert dump_directory(tmp_path / "b.db") == dump_directory(tmp_path / "a.db")

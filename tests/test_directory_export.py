"""Exporting the directory: canonical files that import back to the same directory, from either
store (SQLite or PostgreSQL), byte for byte the same."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import postgres_server
import psycopg
import pytest
from psycopg import sql
from stores import StoreTarget

from dispatcher.config import SyntheticDirectoryConfig
from dispatcher.directory import export_directory, import_directory
from dispatcher.store.connections import StoreUnavailable
from dispatcher.store.directory_base import is_postgres_dsn, open_directory
from dispatcher.store.migrations import migrate_postgres
from dispatcher.store.pg_connection import PgConnection
from dispatcher.synthetic import write_csv

Files = dict[str, list[str]]
#: The ``write_directory`` fixture (tests/conftest.py).
WriteDirectory = Callable[..., Path]
Dump = Callable[[Path | StoreTarget], dict[str, list[tuple[Any, ...]]]]
#: The ``another_store`` fixture.
AnotherStore = Callable[[str], StoreTarget]
FILE_NAMES = ["areas.csv", "grids.csv", "households.csv", "persons.csv", "devices.csv"]


def test_canonical_input_exports_byte_for_byte(
    store_target: StoreTarget,
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
) -> None:
    source = write_directory(tmp_path / "in", canonical_directory)
    assert import_directory(store_target.location, source, progress=False).ok

    report = export_directory(store_target.location, tmp_path / "out", progress=False)

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
    store_target: StoreTarget,
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
    dump_directory: Dump,
    another_store: AnotherStore,
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
    assert import_directory(store_target.location, source, progress=False).ok

    export_directory(store_target.location, tmp_path / "out", progress=False)

    # The export is the canonical form of the same directory ...
    canonical = write_directory(tmp_path / "canonical", canonical_directory)
    for name in FILE_NAMES:
        assert (tmp_path / "out" / name).read_bytes() == (canonical / name).read_bytes(), name
    # ... and imports into a fresh database as an identical directory.
    again = another_store("b")
    assert import_directory(again.location, tmp_path / "out", progress=False).ok
    assert dump_directory(again) == dump_directory(store_target)


def test_export_without_bom(
    store_target: StoreTarget,
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
) -> None:
    source = write_directory(tmp_path / "in", canonical_directory)
    import_directory(store_target.location, source, progress=False)

    export_directory(store_target.location, tmp_path / "out", bom=False, progress=False)

    for name in FILE_NAMES:
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes()[3:]


def test_export_through_a_reader(
    store_target: StoreTarget,
    tmp_path: Path,
    write_directory: WriteDirectory,
    canonical_directory: Files,
) -> None:
    source = write_directory(tmp_path / "in", canonical_directory)
    import_directory(store_target.location, source, progress=False)

    with open_directory(store_target.location) as store:
        export_directory(store, tmp_path / "out", progress=False)
        assert not store.conn.in_transaction

    assert (tmp_path / "out" / "persons.csv").read_bytes() == (source / "persons.csv").read_bytes()


def test_export_of_an_empty_directory_writes_headers(
    store_target: StoreTarget, tmp_path: Path
) -> None:
    open_directory(store_target.location).close()

    report = export_directory(store_target.location, tmp_path / "out", bom=False, progress=False)

    assert set(report.rows.values()) == {0}
    assert (tmp_path / "out" / "grids.csv").read_bytes() == b"id,village_code,name\r\n"


def test_export_refuses_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        export_directory(tmp_path / "nothing.db", tmp_path / "out", progress=False)
    assert not (tmp_path / "nothing.db").exists()


def test_export_from_an_unreachable_postgresql_says_where(tmp_path: Path) -> None:
    # Nothing listens on port 1; the password is not repeated.
    dsn = "host=127.0.0.1 port=1 dbname=tocsin user=tocsin password=hunter2 connect_timeout=2"

    with pytest.raises(StoreUnavailable, match=r"PostgreSQL at .*port=1.* cannot be reached") as e:
        export_directory(dsn, tmp_path / "out", progress=False)

    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize(
    ("target", "postgres"),
    [
        ("postgresql://tocsin@db.example/tocsin", True),
        ("postgres://db.example:5433/tocsin?sslmode=require", True),
        ("host=10.0.0.5 dbname=tocsin user=tocsin", True),
        ("dbname=tocsin", True),
        ("service=tocsin", True),
        ("/var/lib/tocsin/tocsin.db", False),
        ("tocsin.db", False),
        ("data/host-a.db", False),
        (Path("host=db dbname=tocsin"), False),  # a Path is always a file
    ],
)
def test_a_target_is_a_dsn_or_a_sqlite_file(target: str | Path, postgres: bool) -> None:
    assert is_postgres_dsn(target) is postgres


def _manual_examples() -> list[tuple[str, list[str]]]:
    """(file name, lines) of each ```csv block in docs/directory.md, told apart by header."""
    from dispatcher.directory.csv_format import FILES

    by_header = {",".join(spec.columns): spec.name for spec in FILES}
    text = (Path(__file__).parent.parent / "docs" / "directory.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```csv\n")[1:]]
    return [(by_header[b.splitlines()[0]], b.splitlines()) for b in blocks]


def test_the_manuals_examples_import_and_are_canonical(
    store_target: StoreTarget,
    tmp_path: Path,
    write_directory: WriteDirectory,
    dump_directory: Dump,
    another_store: AnotherStore,
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
    assert import_directory(store_target.location, source, progress=False).ok
    export_directory(store_target.location, tmp_path / "out", progress=False)
    for name in FILE_NAMES:
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes(), name

    loose = write_directory(tmp_path / "typed", typed, bom=False, newline="\n")
    typed_store = another_store("b")
    assert import_directory(typed_store.location, loose, progress=False).ok
    assert dump_directory(typed_store) == dump_directory(store_target)


# -- PostgreSQL exports what SQLite exports ------------------------------------------------------

#: A small city, and rows whose ids a locale's collation sorts otherwise than code points do
#: (case, digits, punctuation, Chinese).
_CITY = SyntheticDirectoryConfig(
    counties=1,
    towns_per_county=2,
    villages_per_town=3,
    grids_per_village=2,
    households_per_grid=12,
    persons_per_household=3.0,
    seed=8,
)
_ODD_IDS = ["a-1", "A_2", "b1", "B-1", "z", "Zz", "ä1", "中1", "P-9", "p10", "P_10", "_x", "x_"]


@pytest.fixture
def other_collation() -> Iterator[str]:
    """The DSN of a migrated PostgreSQL database whose default collation is a natural-language
    one (ICU's root locale), where ``ORDER BY id`` alone would not be the canonical order."""
    admin = postgres_server.require_server()
    name = postgres_server.new_name()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu "
                "ICU_LOCALE 'und' LOCALE 'C.UTF-8'"
            ).format(sql.Identifier(name))
        )
    try:
        dsn = postgres_server.dsn_of(name)
        db = PgConnection.connect(dsn)
        try:
            migrate_postgres(db)
        finally:
            db.close()
        yield dsn
    finally:
        postgres_server.drop_database(name)


def test_postgresql_exports_the_same_files_as_sqlite(
    tmp_path: Path, write_directory: WriteDirectory, other_collation: str
) -> None:
    folder = tmp_path / "csv"
    write_csv(_CITY, folder)
    with (folder / "persons.csv").open("a", encoding="utf-8", newline="") as people:
        for i, person_id in enumerate(_ODD_IDS):
            people.write(f"{person_id},某人{i},,,611002101201,,0,0,,\r\n")
    with (folder / "grids.csv").open("a", encoding="utf-8", newline="") as grids:
        for person_id in _ODD_IDS:
            grids.write(f"g{person_id},611002101202,\r\n")

    outputs = {}
    for kind, location in (
        ("sqlite", str(tmp_path / "tocsin.db")),
        ("postgresql", other_collation),
    ):
        report = import_directory(location, folder, progress=False, chunk_rows=97)
        assert report.ok, str(report)
        outputs[kind] = tmp_path / f"out-{kind}"
        export_directory(location, outputs[kind], progress=False)

    for name in FILE_NAMES:
        exported = (outputs["postgresql"] / name).read_bytes()
        assert exported == (outputs["sqlite"] / name).read_bytes(), name
    # The odd ids are in code point order (which the database's own collation is not).
    persons = (outputs["postgresql"] / "persons.csv").read_text(encoding="utf-8-sig")
    ids = [line.split(",", 1)[0] for line in persons.splitlines()[1:]]
    odd = [i for i in ids if i in _ODD_IDS]
    assert odd == sorted(_ODD_IDS)
    admin = PgConnection.connect(other_collation)
    try:
        collated = [
            row[0]
            for row in admin.execute(
                "SELECT id FROM persons WHERE id IN ("
                + ",".join("?" * len(_ODD_IDS))
                + ") ORDER BY id",
                _ODD_IDS,
            )
        ]
    finally:
        admin.close()
    assert collated != sorted(_ODD_IDS)

"""Shared fixtures."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import postgres_server
import pytest
from stores import DIRECTORY_TABLES, StoreTarget, store_kind, store_target

__all__ = ["store_kind", "store_target"]  # fixtures for every test module

# -- the directory (CSV import/export and the synthetic city) ---------------------------------

#: A small directory in canonical form: exactly what the exporter writes for it.
_CANONICAL_DIRECTORY: dict[str, list[str]] = {
    "areas.csv": [
        "code,name,level,parent_code",
        "610000000000,陕西省,province,",
        "611000000000,商洛市,city,610000000000",
        "611002000000,商州区,county,611000000000",
        "611002101000,大荆镇,town,611002000000",
        "611002101201,东村,village,611002101000",
        "611002101202,西村,village,611002101000",
    ],
    "grids.csv": [
        "id,village_code,name",
        "G1,611002101201,东村一组",
        "G2,611002101202,西村一组",
    ],
    "households.csv": [
        "id,grid_id,address",
        "H1,G1,东村1号",
        'H2,G1,"东村2号, 后院"',
        "H3,G2,西村1号",
    ],
    "persons.csv": [
        "id,name,phones,household_id,village_code,roles,vulnerable,lives_alone,"
        "preferred_channels,grids",
        "P1,张伟,+8613812345678;+8613912345678,H1,611002101201,grid_member;village_cadre,0,0,"
        "sms;voice,G1;G2",
        "P2,李娜,+8615012345678,H2,611002101201,,1,1,voice,",
        "P3,王芳,,H3,611002101202,,0,0,,",
        "P4,赵强,+8618612345678,,611002101202,rescue_team,0,0,,",
    ],
    "devices.csv": [
        "id,kind,name,adapter,address,area_code,serves",
        "MDM-1,modem,大荆镇卫星电话,modems,+8617400000001,611002101000,611002101000",
        "SPK-1,loudspeaker,东村广播,speakers,SPK-1,611002101201,611002101201",
        "TX-1,transmitter,大荆镇发射机,transmitters,TX-1,611002101000,611002101201;611002101202",
    ],
}


@pytest.fixture
def canonical_directory() -> dict[str, list[str]]:
    """File name → lines (header first) of a small valid directory in canonical form."""
    return {name: list(lines) for name, lines in _CANONICAL_DIRECTORY.items()}


@pytest.fixture
def write_directory() -> Callable[..., Path]:
    """write(folder, {name: lines}, bom=True, newline="\\r\\n") → folder: the exporter's
    encoding and line ends by default."""

    def write(
        folder: Path, files: dict[str, list[str]], *, bom: bool = True, newline: str = "\r\n"
    ) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, lines in files.items():
            text = "".join(line + newline for line in lines)
            (folder / name).write_bytes(("\ufeff" if bom else "").encode() + text.encode())
        return folder

    return write


@pytest.fixture
def dump_directory() -> Callable[[Path | StoreTarget], dict[str, list[tuple[Any, ...]]]]:
    """dump(db) → every directory table's rows, in key order, to compare two databases (a
    SQLite file, or a StoreTarget of either kind)."""

    def dump(db: Path | StoreTarget) -> dict[str, list[tuple[Any, ...]]]:
        conn = db.connect() if isinstance(db, StoreTarget) else sqlite3.connect(db)
        try:
            return {
                table: [
                    tuple(row)
                    for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                ]
                for table in DIRECTORY_TABLES
            }
        finally:
            conn.close()

    return dump


@pytest.fixture
def another_store(
    store_target: StoreTarget, tmp_path: Path
) -> Iterator[Callable[[str], StoreTarget]]:
    """another(name) → one more fresh, migrated, empty store of ``store_target``'s kind: the
    SQLite file tmp_path/name.db (created when first opened), or a new PostgreSQL database
    (dropped after the test)."""
    with ExitStack() as databases:

        def another(name: str) -> StoreTarget:
            path = tmp_path / f"{name}.db"
            if store_target.dsn is None:
                return StoreTarget("sqlite", path)
            template = postgres_server.migrated_template()
            dsn = databases.enter_context(postgres_server.fresh_database(template=template))
            return StoreTarget("postgresql", path, dsn)

        yield another


# -- the store's two databases (tests/stores.py, tests/postgres_server.py) ---------------------


def pytest_report_header(config: pytest.Config) -> str:
    return postgres_server.status_line()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if postgres_server.server().dsn is None:
        terminalreporter.write_line(postgres_server.status_line(), yellow=True, bold=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    postgres_server.drop_run_databases()


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """The DSN of a new empty database on the test server (dropped after the test)."""
    with postgres_server.fresh_database() as dsn:
        yield dsn

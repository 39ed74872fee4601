"""The synthetic city: shape, shares, valid unique phones, and agreement between the direct
loader and the CSV files imported through the real importer."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
from stores import StoreTarget

from dispatcher.config import SyntheticDirectoryConfig
from dispatcher.directory import export_directory, import_directory
from dispatcher.domain import AreaLevel, Role
from dispatcher.store.migrations import migrate_sqlite
from dispatcher.store.pg_connection import PgConnection
from dispatcher.synthetic import (
    CITY_CODE,
    MOBILE_PREFIXES,
    PROVINCE_CODE,
    SHANGLUO,
    SHANGLUO_COUNTIES,
    area_rows,
    device_rows,
    grid_rows,
    household_rows,
    iter_areas,
    iter_devices,
    iter_grids,
    iter_households,
    iter_persons,
    load_synthetic,
    person_rows,
    write_csv,
)

Dump = Callable[[Path | StoreTarget], dict[str, list[tuple[Any, ...]]]]
#: The ``another_store`` fixture.
AnotherStore = Callable[[str], StoreTarget]

SMALL = SyntheticDirectoryConfig(
    counties=2,
    towns_per_county=2,
    villages_per_town=3,
    grids_per_village=2,
    households_per_grid=15,
    persons_per_household=3.0,
    seed=5,
)
#: Big enough (about 5,000 people) for the shares to settle.
DEMO = SyntheticDirectoryConfig()


def test_counts_match_the_parameters() -> None:
    towns = SMALL.counties * SMALL.towns_per_county
    villages = towns * SMALL.villages_per_town
    grids = villages * SMALL.grids_per_village
    households = grids * SMALL.households_per_grid

    areas = list(iter_areas(SMALL))
    levels = Counter(area.level for area in areas)
    assert levels == {
        AreaLevel.PROVINCE: 1,
        AreaLevel.CITY: 1,
        AreaLevel.COUNTY: SMALL.counties,
        AreaLevel.TOWN: towns,
        AreaLevel.VILLAGE: villages,
    }
    assert len(list(iter_grids(SMALL))) == grids
    assert len(list(iter_households(SMALL))) == households
    persons = list(iter_persons(SMALL))
    assert abs(len(persons) / households - SMALL.persons_per_household) < 0.25
    devices = Counter(device.kind.value for device in iter_devices(SMALL))
    assert devices["transmitter"] == devices["modem"] == towns
    assert villages <= devices["loudspeaker"] <= 2 * villages
    # Every household has people; sizes vary.
    sizes = Counter(Counter(p.household_id for p in persons).values())
    assert sum(sizes.values()) == households
    assert len(sizes) >= 4


def test_household_sizes_follow_the_mean() -> None:
    for mean in (1.0, 1.5, 2.0, 4.5):
        config = SMALL.model_copy(update={"persons_per_household": mean, "households_per_grid": 60})
        households = len(list(iter_households(config)))
        persons = len(list(iter_persons(config)))
        assert abs(persons / households - mean) < 0.15, mean


def test_shangluo_preset_is_the_reference_city() -> None:
    villages = SHANGLUO.counties * SHANGLUO.towns_per_county * SHANGLUO.villages_per_town
    grids = villages * SHANGLUO.grids_per_village
    households = grids * SHANGLUO.households_per_grid
    assert SHANGLUO.counties == 7
    assert 90 <= SHANGLUO.counties * SHANGLUO.towns_per_county <= 110
    assert 1400 <= villages <= 1600
    assert 9500 <= grids <= 10500
    assert 600_000 <= households <= 700_000
    assert 1.9e6 <= households * SHANGLUO.persons_per_household <= 2.1e6

    counties = [a for a in iter_areas(SHANGLUO) if a.level is AreaLevel.COUNTY]
    assert [(a.code, a.name) for a in counties] == [
        (f"{code}000000", name) for code, name in SHANGLUO_COUNTIES
    ]
    assert [c[0] for c in SHANGLUO_COUNTIES] == [
        "611002",
        "611021",
        "611022",
        "611023",
        "611024",
        "611025",
        "611026",
    ]


def test_area_codes_nest_like_statistical_codes() -> None:
    config = SMALL.model_copy(update={"counties": 9})  # two beyond Shangluo's seven
    areas = {a.code: a for a in iter_areas(config)}

    assert areas[PROVINCE_CODE].parent_code is None
    assert areas[CITY_CODE].parent_code == PROVINCE_CODE
    for area in areas.values():
        assert len(area.code) == 12
        assert area.code.isdigit()
        if area.level is AreaLevel.COUNTY:
            assert area.code.startswith("611")
            assert area.code.endswith("000000")
            assert area.parent_code == CITY_CODE
        elif area.level is AreaLevel.TOWN:
            assert area.code.endswith("000")
            assert area.parent_code == area.code[:6] + "000000"
        elif area.level is AreaLevel.VILLAGE:
            assert area.code[9:] != "000"
            assert area.parent_code == area.code[:9] + "000"
    counties = [a for a in areas.values() if a.level is AreaLevel.COUNTY]
    assert len({a.code for a in counties}) == 9
    assert len({a.name for a in counties}) == 9
    invented = sorted(a.code for a in counties)[-2:]
    assert invented == ["611027000000", "611028000000"]
    assert all(a.name.endswith("县") for a in counties if a.code in invented)


def test_generation_is_deterministic_for_a_seed() -> None:
    first = [list(rows(SMALL)) for rows in (area_rows, grid_rows, household_rows, person_rows)]
    again = [list(rows(SMALL)) for rows in (area_rows, grid_rows, household_rows, person_rows)]
    assert first == again
    other = SMALL.model_copy(update={"seed": 6})
    assert list(person_rows(other)) != first[3]
    assert list(device_rows(SMALL)) == list(device_rows(SMALL))


def test_rows_are_in_csv_column_order() -> None:
    person = next(person_rows(SMALL))
    assert len(person) == 10
    assert person[0].startswith("P")
    assert person[3].startswith("H")
    assert len(person[4]) == 12
    assert person[6] in {"0", "1"}
    device = next(device_rows(SMALL))
    assert device[1] == "modem"
    assert device[3] == "modems"


def test_phones_are_valid_unique_chinese_mobiles() -> None:
    persons = list(iter_persons(DEMO))
    numbers = [n for p in persons for n in p.phones]

    assert len(numbers) == len(set(numbers))
    invalid = [n for n in numbers if not phonenumbers.is_valid_number(phonenumbers.parse(n, "CN"))]
    assert invalid == []
    for number in numbers:
        parsed = phonenumbers.parse(number)
        assert parsed.country_code == 86
        assert phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.MOBILE
        assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == number
    with_phone = sum(1 for p in persons if p.phones) / len(persons)
    assert 0.89 <= with_phone <= 0.95
    assert any(len(p.phones) == 2 for p in persons)


def test_every_mobile_prefix_is_valid() -> None:
    for prefix in MOBILE_PREFIXES:
        for suffix in ("00000000", "49999999", "99999999"):
            number = phonenumbers.parse(prefix + suffix, "CN")
            assert phonenumbers.is_valid_number(number), prefix


def test_roles_and_flags() -> None:
    persons = list(iter_persons(DEMO))
    villages = DEMO.counties * DEMO.towns_per_county * DEMO.villages_per_town
    grids = [g.id for g in iter_grids(DEMO)]

    def holders(role: Role) -> list[Any]:
        return [p for p in persons if p.roles & role.bit]

    grid_members = holders(Role.GRID_MEMBER)
    served = sorted(g for p in grid_members for g in p.grids)
    assert served == sorted(grids)  # one grid member per grid
    assert len(grid_members) == len(grids)
    assert len(holders(Role.VILLAGE_CADRE)) == 2 * villages
    assert len(holders(Role.HAZARD_MONITOR)) == villages
    assert all(p.phones for p in persons if p.roles)
    assert all(not p.grids for p in persons if not p.roles & Role.GRID_MEMBER.bit)

    vulnerable = sum(p.vulnerable for p in persons) / len(persons)
    alone = sum(p.lives_alone for p in persons) / len(persons)
    assert 0.10 <= vulnerable <= 0.14
    assert 0.035 <= alone <= 0.065
    household_sizes = Counter(p.household_id for p in persons)
    assert all(household_sizes[p.household_id] == 1 for p in persons if p.lives_alone)


def test_csv_imports_cleanly_and_equals_the_direct_load(
    store_target: StoreTarget, dump_directory: Dump, another_store: AnotherStore
) -> None:
    counts = write_csv(SMALL, store_target.path.parent / "csv")
    loaded_store = another_store("loaded")

    report = import_directory(
        store_target.location, store_target.path.parent / "csv", progress=False
    )
    loaded = load_synthetic(loaded_store.location, SMALL, progress=False)

    assert report.ok, str(report)
    assert report.error_count == 0
    assert {f.file: f.imported for f in report.files} == counts
    assert {f"{table}.csv": n for table, n in loaded.items()} == counts
    assert dump_directory(store_target) == dump_directory(loaded_store)


def test_csv_is_what_the_exporter_writes(store_target: StoreTarget, tmp_path: Path) -> None:
    write_csv(SMALL, tmp_path / "csv")
    load_synthetic(store_target.location, SMALL, progress=False)

    export_directory(store_target.location, tmp_path / "out", progress=False)

    for name in ("areas.csv", "grids.csv", "households.csv", "persons.csv", "devices.csv"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "csv" / name).read_bytes()


def test_loading_again_changes_nothing(store_target: StoreTarget, dump_directory: Dump) -> None:
    first = load_synthetic(store_target.location, SMALL, progress=False)
    before = dump_directory(store_target)

    again = load_synthetic(store_target.location, SMALL, progress=False)

    assert again == first
    assert dump_directory(store_target) == before


def test_direct_load_on_a_connection_is_consistent(store_target: StoreTarget) -> None:
    conn = store_target.connect()
    assert isinstance(conn, sqlite3.Connection | PgConnection)
    if isinstance(conn, sqlite3.Connection):
        migrate_sqlite(conn)  # a PostgreSQL test database is migrated already

    counts = load_synthetic(conn, SMALL, progress=False)

    assert counts["areas"] == 2 + 2 + 4 + 12
    assert not conn.in_transaction
    # Closure: every area has itself, villages have all four ancestors.
    pairs = conn.execute("SELECT count(*) FROM area_closure").fetchall()
    assert pairs == [(1 + 2 + 2 * 3 + 4 * 4 + 12 * 5,)]
    if store_target.kind == "sqlite":
        # SQLite's checks were off for the load: they are back on, and every key holds.
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_too_many_people_for_unique_numbers_is_refused() -> None:
    huge = SyntheticDirectoryConfig(
        counties=50,
        towns_per_county=100,
        villages_per_town=100,
        grids_per_village=50,
        households_per_grid=500,
        persons_per_household=10.0,
    )
    with pytest.raises(ValueError, match="unique phone numbers"):
        for _ in iter_persons(huge):
            pass


def test_load_into_a_missing_file_creates_it(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "tocsin.db"
    load_synthetic(db, SMALL.model_copy(update={"counties": 1}), progress=False)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] > 0
    conn.close()

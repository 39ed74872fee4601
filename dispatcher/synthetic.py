"""A synthetic city directory: for the embedded demo, the tests and the benchmarks.

Deterministic for a seed. The shape follows :class:`SyntheticDirectoryConfig`; :data:`SHANGLUO`
is Tocsin's reference deployment (about 2.0 million people in 7 counties). Area codes are
12-digit statistical codes under Shangluo city (611000000000) in Shaanxi (610000000000): the
first seven counties carry Shangluo's real county codes and names, further ones are invented
under the same city. Towns are numbered ``county + 1xx + 000``, villages ``town + 2xx``, as in
the statistical code where 1xx are towns (镇) and 2xx villages (村).

Generated phone numbers are valid Chinese mobile numbers (the tests check them with
phonenumbers), unique per person, already in E.164, so :func:`load_synthetic` writes straight
into the store (SQLite or PostgreSQL) without parsing them; :func:`write_csv` writes the same
directory as the CSV files the importer reads.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tqdm import tqdm

from dispatcher.config import SyntheticDirectoryConfig
from dispatcher.directory.csv_format import (
    AREAS,
    DEVICES,
    GRIDS,
    HOUSEHOLDS,
    PERSONS,
    area_row,
    device_row,
    grid_row,
    household_row,
    person_row,
    write_csv_file,
)
from dispatcher.directory.records import (
    AreaRecord,
    DeviceRecord,
    GridRecord,
    HouseholdRecord,
    PersonRecord,
)
from dispatcher.domain import AreaLevel, Channel, DeviceKind, Role

if TYPE_CHECKING:
    from dispatcher.store.directory_base import SqlDirectory
    from dispatcher.store.pg_connection import PgConnection

#: Tocsin's reference deployment: 7 counties, 98 towns, 1,470 villages, 10,290 grids,
#: 648,270 households, about 2.01 million people.
SHANGLUO = SyntheticDirectoryConfig(
    counties=7,
    towns_per_county=14,
    villages_per_town=15,
    grids_per_village=7,
    households_per_grid=63,
    persons_per_household=3.1,
    seed=611000,
)

PROVINCE_CODE = "610000000000"
CITY_CODE = "611000000000"
_PROVINCE_NAME = "陕西省"
_CITY_NAME = "商洛市"
#: Shangluo's real districts and counties (GB/T 2260).
SHANGLUO_COUNTIES: tuple[tuple[str, str], ...] = (
    ("611002", "商州区"),
    ("611021", "洛南县"),
    ("611022", "丹凤县"),
    ("611023", "商南县"),
    ("611024", "山阳县"),
    ("611025", "镇安县"),
    ("611026", "柞水县"),
)

# Shares of people, as a county's household registers roughly show them.
PHONE_SHARE = 0.92
SECOND_PHONE_SHARE = 0.03
VULNERABLE_SHARE = 0.12
LIVES_ALONE_SHARE = 0.05
#: Loudspeakers: every village has one, this share has a second.
SECOND_SPEAKER_SHARE = 0.3
CADRES_PER_VILLAGE = 2
# Living alone is mostly the elderly: more of them are vulnerable, the rest less so, keeping
# the overall share at VULNERABLE_SHARE.
_VULNERABLE_ALONE = 0.4
_VULNERABLE_OTHERS = (VULNERABLE_SHARE - _VULNERABLE_ALONE * LIVES_ALONE_SHARE) / (
    1 - LIVES_ALONE_SHARE
)
MAX_HOUSEHOLD_SIZE = 10

#: Prefixes whose whole 8-digit range is valid mobile numbering in phonenumbers' metadata.
MOBILE_PREFIXES: tuple[str, ...] = (
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152",
    "153", "155", "156", "157", "158", "159", "166", "177", "180", "181", "182", "183",
    "185", "186", "187", "188", "189", "199",
)  # fmt: skip
# Phone numbers are a permutation of person indexes over every prefix's 10^8 numbers: number
# = (index * multiplier + seed) mod space, a bijection because the multiplier shares no factor
# with the space (2, 3 and 5), so every number is unique. Primary numbers take indexes below
# half the space, second numbers the upper half.
_SUFFIX_SPACE = 10**8
_PHONE_SPACE = len(MOBILE_PREFIXES) * _SUFFIX_SPACE
_PHONE_MULTIPLIER = 61_803_391
_SECOND_PHONE_OFFSET = _PHONE_SPACE // 2

_PLACE_FIRST = "金石河山柳桃杨高龙凤清青白黄红东西南北上下大小新古马鹿云花松竹梨枣"
_PLACE_SECOND = "岭峪沟坪川湾坝溪坡塬庄寨关口店铺坊园台冲河桥坎垭"
_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程"
    "苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝"
)
_GIVEN = (
    "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂华玉萍红娥玲芬燕建国志文斌辉鹏宇浩欣怡涵轩泽"
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Village:
    index: int
    code: str
    name: str
    town_code: str


@dataclass(frozen=True, slots=True)
class _Town:
    index: int
    code: str
    name: str
    villages: tuple[_Village, ...]


@dataclass(frozen=True, slots=True)
class _City:
    """The area tree (small: a few thousand areas at most) and the id widths."""

    config: SyntheticDirectoryConfig
    counties: tuple[tuple[str, str], ...]
    towns: tuple[_Town, ...]
    # Fixed-width ids sort in generation order, which is also the exporter's order.
    grid_width: int
    household_width: int
    person_width: int

    @property
    def villages(self) -> Iterator[_Village]:
        for town in self.towns:
            yield from town.villages

    @property
    def household_count(self) -> int:
        config = self.config
        return (
            len(self.towns)
            * config.villages_per_town
            * config.grids_per_village
            * config.households_per_grid
        )

    def grid_id(self, index: int) -> str:
        return f"G{index:0{self.grid_width}d}"

    def household_id(self, index: int) -> str:
        return f"H{index:0{self.household_width}d}"

    def person_id(self, index: int) -> str:
        return f"P{index:0{self.person_width}d}"


def _rng(config: SyntheticDirectoryConfig, *parts: str) -> random.Random:
    """An independent generator per purpose, so each table can be generated on its own.
    (String seeds are hashed with SHA-512: the same on every run and platform.)"""
    return random.Random("/".join(("tocsin-synthetic", str(config.seed), *parts)))  # noqa: S311


def _build_city(config: SyntheticDirectoryConfig) -> _City:
    rng = _rng(config, "areas")
    counties = list(SHANGLUO_COUNTIES[: config.counties])
    used_names = {name for _, name in counties}
    for number in range(len(counties), config.counties):
        name = _unique_place_name(rng, used_names, "县")
        counties.append((str(611027 + number - len(SHANGLUO_COUNTIES)), name))
    towns: list[_Town] = []
    village_index = 0
    for county_code, _ in counties:
        town_names: set[str] = set()
        for t in range(config.towns_per_county):
            town_code = f"{county_code}{100 + t + 1:03d}000"
            town_name = _unique_place_name(rng, town_names, "镇")
            village_names: set[str] = set()
            villages = []
            for v in range(config.villages_per_town):
                code = f"{town_code[:9]}{200 + v + 1:03d}"
                villages.append(
                    _Village(
                        village_index, code, _unique_place_name(rng, village_names, "村"), town_code
                    )
                )
                village_index += 1
            towns.append(_Town(len(towns), town_code, town_name, tuple(villages)))
    grids = len(towns) * config.villages_per_town * config.grids_per_village
    households = grids * config.households_per_grid
    return _City(
        config,
        tuple((f"{c}000000", n) for c, n in counties),
        tuple(towns),
        grid_width=len(str(grids)),
        household_width=len(str(households)),
        person_width=len(str(households * MAX_HOUSEHOLD_SIZE)),
    )


def _unique_place_name(rng: random.Random, used: set[str], suffix: str) -> str:
    for _ in range(100):
        name = rng.choice(_PLACE_FIRST) + rng.choice(_PLACE_SECOND) + suffix
        if name not in used:
            break
    else:  # more places than name combinations: number them
        name = f"{rng.choice(_PLACE_FIRST)}{len(used) + 1}{suffix}"
    used.add(name)
    return name


# -- the five tables, as records ------------------------------------------------------------


def iter_areas(config: SyntheticDirectoryConfig) -> Iterator[AreaRecord]:
    """Top level first, then by code (the exporter's order)."""
    city = _build_city(config)
    yield AreaRecord(PROVINCE_CODE, _PROVINCE_NAME, AreaLevel.PROVINCE, None)
    yield AreaRecord(CITY_CODE, _CITY_NAME, AreaLevel.CITY, PROVINCE_CODE)
    for code, name in city.counties:
        yield AreaRecord(code, name, AreaLevel.COUNTY, CITY_CODE)
    for town in city.towns:
        yield AreaRecord(town.code, town.name, AreaLevel.TOWN, f"{town.code[:6]}000000")
    for village in city.villages:
        yield AreaRecord(village.code, village.name, AreaLevel.VILLAGE, village.town_code)


def iter_grids(config: SyntheticDirectoryConfig) -> Iterator[GridRecord]:
    city = _build_city(config)
    per_village = config.grids_per_village
    for village in city.villages:
        for g in range(per_village):
            index = village.index * per_village + g + 1
            yield GridRecord(city.grid_id(index), village.code, f"{village.name}第{g + 1}网格")


def iter_households(config: SyntheticDirectoryConfig) -> Iterator[HouseholdRecord]:
    city = _build_city(config)
    per_grid = config.households_per_grid
    for village in city.villages:
        for g in range(config.grids_per_village):
            grid_index = village.index * config.grids_per_village + g + 1
            grid_id = city.grid_id(grid_index)
            for h in range(per_grid):
                yield HouseholdRecord(
                    city.household_id((grid_index - 1) * per_grid + h + 1),
                    grid_id,
                    village.code,
                    f"{village.name}{g + 1}组{h + 1}号",
                )


def iter_persons(config: SyntheticDirectoryConfig) -> Iterator[PersonRecord]:
    households = (
        config.counties
        * config.towns_per_county
        * config.villages_per_town
        * config.grids_per_village
        * config.households_per_grid
    )
    if households * MAX_HOUSEHOLD_SIZE > _SECOND_PHONE_OFFSET:
        raise ValueError(
            f"a synthetic city of {households} households may have more people than unique "
            "phone numbers"
        )
    city = _build_city(config)
    sizes = _HouseholdSizes(config.persons_per_household)
    next_index = 1
    for village in city.villages:
        persons = _village_persons(city, village, sizes, next_index)
        next_index += len(persons)
        yield from persons


def iter_devices(config: SyntheticDirectoryConfig) -> Iterator[DeviceRecord]:
    """In id order: modems (MDM-), loudspeakers (SPK-), transmitters (TX-)."""
    city = _build_city(config)
    for town in city.towns:
        yield DeviceRecord(
            f"MDM-{town.code}",
            DeviceKind.MODEM,
            f"{town.name}卫星电话",
            "modems",
            # A Tiantong satellite number (1740x), held by the town.
            f"+8617400{town.index + 1:06d}",
            town.code,
            (town.code,),
        )
    for village in city.villages:
        rng = _rng(config, village.code, "devices")
        speakers = 2 if rng.random() < SECOND_SPEAKER_SHARE else 1
        for n in range(1, speakers + 1):
            device_id = f"SPK-{village.code}-{n}"
            yield DeviceRecord(
                device_id,
                DeviceKind.LOUDSPEAKER,
                f"{village.name}广播{n}",
                "speakers",
                device_id,
                village.code,
                (village.code,),
            )
    for town in city.towns:
        device_id = f"TX-{town.code}"
        yield DeviceRecord(
            device_id,
            DeviceKind.TRANSMITTER,
            f"{town.name}无线广播发射机",
            "transmitters",
            device_id,
            town.code,
            tuple(village.code for village in town.villages),
        )


class _HouseholdSizes:
    """Household sizes averaging ``mean``, with enough single-person households that about
    :data:`LIVES_ALONE_SHARE` of people live alone."""

    def __init__(self, mean: float) -> None:
        self.mean = mean
        self.single_share = min(0.9, LIVES_ALONE_SHARE * mean)
        # Sizes above one are 2 + Poisson(extra), which keeps the overall mean right.
        self.extra = (mean - self.single_share) / (1 - self.single_share) - 2

    def draw(self, rng: random.Random) -> int:
        if self.extra < 0:  # a mean below about two: one or two people
            floor = math.floor(self.mean)
            return floor + (1 if rng.random() < self.mean - floor else 0)
        if rng.random() < self.single_share:
            return 1
        # Knuth's Poisson sampler: fine for the small means of household sizes.
        limit, k, product = math.exp(-self.extra), 0, rng.random()
        while product > limit:
            k += 1
            product *= rng.random()
        return min(2 + k, MAX_HOUSEHOLD_SIZE)


def _village_persons(
    city: _City, village: _Village, sizes: _HouseholdSizes, first_index: int
) -> list[PersonRecord]:
    """Everyone in one village, numbered from ``first_index``, with its role holders.

    Two million people go through here for the reference city, so the loop picks items with
    ``seq[int(random() * len(seq))]`` rather than the slower ``Random.choice``.
    """
    config = city.config
    rng = _rng(config, village.code, "persons")
    random_ = rng.random
    # (household id, size, surname) per household, grouped by grid.
    grids: list[tuple[str, list[tuple[str, int, str]]]] = []
    for g in range(config.grids_per_village):
        grid_index = village.index * config.grids_per_village + g + 1
        first_household = (grid_index - 1) * config.households_per_grid + 1
        households = [
            (
                city.household_id(first_household + h),
                sizes.draw(rng),
                _SURNAMES[int(random_() * len(_SURNAMES))],
            )
            for h in range(config.households_per_grid)
        ]
        grids.append((city.grid_id(grid_index), households))

    # Role holders are heads of household: one grid member per grid, then the village's
    # cadres, a hazard monitor and a rescue-team member from other households.
    roles: dict[str, tuple[int, tuple[str, ...]]] = {}
    for grid_id, households in grids:
        head = rng.choice(households)[0]
        roles[head] = (Role.GRID_MEMBER.bit, (grid_id,))
    all_households = [h for _, households in grids for h in households]
    others = [h[0] for h in all_households if h[0] not in roles]
    village_roles = [Role.VILLAGE_CADRE] * CADRES_PER_VILLAGE + [
        Role.HAZARD_MONITOR,
        Role.RESCUE_TEAM,
    ]
    for household_id, role in zip(
        rng.sample(others, min(len(others), len(village_roles))), village_roles, strict=False
    ):
        roles[household_id] = (role.bit, ())

    no_role: tuple[int, tuple[str, ...]] = (0, ())
    voice = (Channel.VOICE,)
    seed, width, village_code = config.seed, city.person_width, village.code
    surnames, given_names, prefixes = _SURNAMES, _GIVEN, MOBILE_PREFIXES
    persons: list[PersonRecord] = []
    index = first_index
    for household_id, size, surname in all_households:
        lives_alone = size == 1
        vulnerable_share = _VULNERABLE_ALONE if lives_alone else _VULNERABLE_OTHERS
        for k in range(size):
            role_mask, served = roles.get(household_id, no_role) if k == 0 else no_role
            phones: tuple[str, ...] = ()
            if role_mask or random_() < PHONE_SHARE:
                prefix, suffix = divmod(
                    (index * _PHONE_MULTIPLIER + seed) % _PHONE_SPACE, _SUFFIX_SPACE
                )
                phones = (f"+86{prefixes[prefix]}{suffix:08d}",)
                if random_() < SECOND_PHONE_SHARE:
                    second = (index + _SECOND_PHONE_OFFSET) * _PHONE_MULTIPLIER + seed
                    prefix, suffix = divmod(second % _PHONE_SPACE, _SUFFIX_SPACE)
                    phones = (phones[0], f"+86{prefixes[prefix]}{suffix:08d}")
            vulnerable = random_() < vulnerable_share
            name = surname
            if k and random_() >= 0.6:  # married in: another surname
                name = surnames[int(random_() * len(surnames))]
            name += given_names[int(random_() * len(given_names))]
            if random_() < 0.7:
                name += given_names[int(random_() * len(given_names))]
            persons.append(
                PersonRecord(
                    f"P{index:0{width}d}",
                    name,
                    phones,
                    household_id,
                    village_code,
                    role_mask,
                    vulnerable,
                    lives_alone,
                    voice if vulnerable and phones else (),
                    served,
                )
            )
            index += 1
    return persons


# -- the same, as CSV rows ------------------------------------------------------------------


def area_rows(config: SyntheticDirectoryConfig) -> Iterator[list[str]]:
    return map(area_row, iter_areas(config))


def grid_rows(config: SyntheticDirectoryConfig) -> Iterator[list[str]]:
    return map(grid_row, iter_grids(config))


def household_rows(config: SyntheticDirectoryConfig) -> Iterator[list[str]]:
    return map(household_row, iter_households(config))


def person_rows(config: SyntheticDirectoryConfig) -> Iterator[list[str]]:
    return map(person_row, iter_persons(config))


def device_rows(config: SyntheticDirectoryConfig) -> Iterator[list[str]]:
    return map(device_row, iter_devices(config))


def write_csv(
    config: SyntheticDirectoryConfig, out_dir: str | os.PathLike[str], *, bom: bool = True
) -> dict[str, int]:
    """Write the five CSV files into ``out_dir`` (created if needed); return rows per file."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tables: list[tuple[Any, Callable[[SyntheticDirectoryConfig], Iterator[list[str]]]]] = [
        (AREAS, area_rows),
        (GRIDS, grid_rows),
        (HOUSEHOLDS, household_rows),
        (PERSONS, person_rows),
        (DEVICES, device_rows),
    ]
    return {
        spec.name: write_csv_file(folder / spec.name, spec, rows(config), bom=bom)
        for spec, rows in tables
    }


# -- straight into the store ----------------------------------------------------------------

_LOAD_BATCH = 5000


def load_synthetic(
    target: sqlite3.Connection | PgConnection | str | os.PathLike[str],
    config: SyntheticDirectoryConfig,
    *,
    progress: bool = True,
) -> dict[str, int]:
    """Write the synthetic directory into a store in one transaction, without the CSV round
    trip or phone parsing; return the directory's row counts afterwards.

    ``target`` is a store as :func:`dispatcher.directory.import_directory` takes it — a SQLite
    file (a path: created and migrated if needed) or a PostgreSQL DSN (a string, see
    :func:`dispatcher.store.directory_base.is_postgres_dsn`: migrated if needed) — or an open
    connection to a migrated store: one from :func:`dispatcher.store.sqlite.connect` or a
    :class:`dispatcher.store.pg_connection.PgConnection`. On PostgreSQL the transaction holds
    the writer lock that every node's write transactions take, so the load suits an empty
    directory (the demo, tests, benchmarks), not a busy cluster."""
    # Imported here: the store modules import the directory package.
    from dispatcher.store.directory_base import open_directory

    if isinstance(target, sqlite3.Connection):
        from dispatcher.store.sqlite_directory import SqliteDirectory

        return _load(SqliteDirectory(target), config, progress=progress)
    if not isinstance(target, str | os.PathLike):
        from dispatcher.store.pg_directory import PgDirectory

        return _load(PgDirectory(target), config, progress=progress)
    with open_directory(target) as store:
        return _load(store, config, progress=progress)


def _load(
    store: SqlDirectory, config: SyntheticDirectoryConfig, *, progress: bool
) -> dict[str, int]:
    city = _build_city(config)
    estimate = round(city.household_count * config.persons_per_household)
    # Rows go in parents first (areas top down, grids, households, persons, devices), so the
    # foreign keys hold after every statement where they are checked (always on PostgreSQL;
    # SQLite's bulk_load switches its checks off, the generator being consistent).
    with store.bulk_load():
        _load_tables(store, config, estimate, progress=progress)
    counts: dict[str, int] = store.counts()
    return counts


def _load_tables(
    store: SqlDirectory, config: SyntheticDirectoryConfig, estimate: int, *, progress: bool
) -> None:
    store.begin()
    try:
        _batched(store.upsert_areas, iter_areas(config))
        store.rebuild_area_closure()
        _batched(store.upsert_grids, iter_grids(config))
        _batched(store.upsert_households, iter_households(config))
        with tqdm(
            total=estimate,
            desc="persons",
            unit="rows",
            file=sys.stderr,
            disable=not (progress and sys.stderr.isatty()),
        ) as bar:
            _batched(store.upsert_persons, iter_persons(config), bar.update)
        _batched(store.upsert_devices, iter_devices(config))
    except BaseException:
        store.rollback()
        raise
    store.commit()


def _batched(
    write: Callable[[list[T]], None],
    records: Iterable[T],
    on_batch: Callable[[int], Any] | None = None,
) -> None:
    iterator = iter(records)
    while batch := list(islice(iterator, _LOAD_BATCH)):
        write(batch)
        if on_batch is not None:
            on_batch(len(batch))

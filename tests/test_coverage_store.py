"""The store's coverage reads: roll-up per area at each depth, late acknowledgements counted apart,
the unreached lists and their pages, progress, and agreement with what the real engine records,
on SQLite and on PostgreSQL (where several nodes read the same); and SQLite's query plans."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from small_directory import (
    COUNTY_A,
    COUNTY_B,
    TOWN_A1,
    VILLAGE_A1a,
    VILLAGE_A1b,
    fill_small_directory,
    make_warning,
)
from stores import StoreTarget, copy_directory
from waiting import wait_until

from dispatcher.adapter_config import build_adapter_specs
from dispatcher.config import (
    AdapterInstanceConfig,
    EngineConfig,
    SyntheticDirectoryConfig,
    load_policy,
)
from dispatcher.coverage_view import coverage_view, percent
from dispatcher.domain import Channel, Level, WarningRecord
from dispatcher.engine.engine import Engine
from dispatcher.log_query import LogFilter
from dispatcher.planning_worker import PlanningWorker
from dispatcher.store.base import (
    CoverageCounts,
    CoverageKind,
    InvalidCursor,
    Tally,
    UnreachedItem,
    mask_phone,
)
from dispatcher.store.coverage_queries import (
    AREAS_QUERY,
    LATE_QUERY,
    TOTALS_QUERY,
    unreached_statement,
)
from dispatcher.store.sql_store import SqlStore
from dispatcher.synthetic import load_synthetic

ROOT = Path(__file__).resolve().parent.parent
POLICY = load_policy(ROOT / "config" / "policy.toml")
KINDS = list(CoverageKind)

#: Tests about SQLite itself (its query plans).
sqlite_only = pytest.mark.parametrize("store_kind", ["sqlite"])


def run_sql(target: StoreTarget, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """The rows of a query, read beside the store."""
    conn = target.connect()
    try:
        return [tuple(row) for row in conn.execute(query, params).fetchall()]
    finally:
        conn.close()


@dataclass
class Planned:
    store: SqlStore
    target: StoreTarget
    warning: WarningRecord
    seq: int

    def sql(self, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return run_sql(self.target, query, params)

    def reach(
        self, kind: str, target: str, village: str, *, in_time: bool = True, seq: int | None = None
    ) -> None:
        """Record ``target`` reached as the engine does: a ``reached`` row, counted in
        ``coverage_counts`` when in time."""
        conn = self.target.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            seq = self.seq if seq is None else seq
            inserted = conn.execute(
                "INSERT INTO reached VALUES (?, ?, ?, ?, ?, ?, 'test', NULL) "
                "ON CONFLICT DO NOTHING",
                (seq, kind, target, village, time.time(), int(in_time)),
            ).rowcount
            if inserted and in_time:
                conn.execute(
                    "INSERT INTO coverage_counts VALUES (?, ?, ?, 1) ON CONFLICT "
                    "(warning_seq, village_code, kind) DO UPDATE SET n = coverage_counts.n + 1",
                    (seq, village, kind),
                )
            conn.execute("COMMIT")
        finally:
            conn.close()


async def plan(store: SqlStore, target: StoreTarget, areas: tuple[str, ...]) -> Planned:
    warning = make_warning(areas)
    await store.create_warning(warning, idempotency=None, now=time.time())
    result = await PlanningWorker(store, lambda: POLICY).plan_now(warning.id)
    assert result.planned
    [(seq,)] = run_sql(target, "SELECT seq FROM warnings WHERE id = ?", (warning.id,))
    return Planned(store, target, warning, int(seq))


@pytest.fixture
async def small(store_target: StoreTarget) -> AsyncIterator[Planned]:
    """The small hand-made directory, a red warning for county A planned."""
    store = await store_target.open()
    fill_small_directory(store_target)
    try:
        yield await plan(store, store_target, (COUNTY_A,))
    finally:
        await store.close()


def counts(
    v: tuple[int, int], gm: tuple[int, int], hh: tuple[int, int], pp: tuple[int, int]
) -> CoverageCounts:
    return CoverageCounts(Tally(*v), Tally(*gm), Tally(*hh), Tally(*pp))


# -- roll-up -------------------------------------------------------------------------------------


async def test_denominators_are_the_plans(small: Planned) -> None:
    # County A: village A1a (grid g-a with member p01; households h1, h2; persons p01-p04) and
    # A1b (g-b with p06; h3; p05, p06). County B's village is not covered.
    cov = await small.store.coverage(small.warning.id, depth="village")
    assert cov is not None
    assert cov.totals == counts((2, 0), (2, 0), (3, 0), (6, 0))
    assert {a.area.code: a.counts for a in cov.areas} == {
        VILLAGE_A1a: counts((1, 0), (1, 0), (2, 0), (4, 0)),
        VILLAGE_A1b: counts((1, 0), (1, 0), (1, 0), (2, 0)),
    }
    assert cov.late == {}
    assert cov.planned is True
    assert await small.store.coverage("no-such-warning", depth="county") is None


async def test_rollup_sums_right_at_each_depth_and_under(small: Planned) -> None:
    small.reach("person", "p01", VILLAGE_A1a)
    small.reach("person", "p02", VILLAGE_A1a)
    small.reach("person", "p05", VILLAGE_A1b)
    small.reach("household", "h1", VILLAGE_A1a)
    small.reach("grid_member", "p01", VILLAGE_A1a)
    small.reach("village", VILLAGE_A1a, VILLAGE_A1a)
    # Once each: a second report of the same person changes nothing.
    small.reach("person", "p01", VILLAGE_A1a)
    a1a = counts((1, 1), (1, 1), (2, 1), (4, 2))
    a1b = counts((1, 0), (1, 0), (1, 0), (2, 1))
    everything = counts((2, 1), (2, 1), (3, 1), (6, 3))

    store, wid = small.store, small.warning.id
    by_depth = {}
    for depth in ("county", "town", "village"):
        cov = await store.coverage(wid, depth=depth)
        assert cov is not None
        assert cov.totals == everything
        by_depth[depth] = {a.area.code: (a.area.level, a.counts) for a in cov.areas}
    assert by_depth["county"] == {COUNTY_A: ("county", everything)}
    assert by_depth["town"] == {TOWN_A1: ("town", everything)}
    assert by_depth["village"] == {VILLAGE_A1a: ("village", a1a), VILLAGE_A1b: ("village", a1b)}

    under_town = await store.coverage(wid, depth="village", under=TOWN_A1)
    assert under_town is not None
    assert [a.area.code for a in under_town.areas] == [VILLAGE_A1a, VILLAGE_A1b]
    assert under_town.under is not None
    assert under_town.under.area.code == TOWN_A1
    assert under_town.under.counts == everything
    assert under_town.totals == everything  # the whole warning, whatever `under` says

    under_village = await store.coverage(wid, depth="village", under=VILLAGE_A1b)
    assert under_village is not None
    assert [(a.area.code, a.counts) for a in under_village.areas] == [(VILLAGE_A1b, a1b)]
    assert under_village.under is not None and under_village.under.counts == a1b
    # An area at the depth is listed when it is `under` itself; one above it never.
    assert [
        a.area.code for a in (await store.coverage(wid, depth="town", under=TOWN_A1)).areas
    ] == [TOWN_A1]  # type: ignore[union-attr]
    above = await store.coverage(wid, depth="county", under=TOWN_A1)
    assert above is not None and above.areas == []
    # Under an area the warning does not cover: nothing to list, zero counts.
    outside = await store.coverage(wid, depth="village", under=COUNTY_B)
    assert outside is not None and outside.areas == []
    assert outside.under is not None and outside.under.counts == CoverageCounts()
    # Totals only.
    totals = await store.coverage(wid, depth=None)
    assert totals is not None and totals.areas == [] and totals.totals == everything


async def test_percentages_one_decimal_and_none_without_a_total(small: Planned) -> None:
    assert percent(1, 3) == 33.3
    assert percent(2, 3) == 66.7
    assert percent(0, 5) == 0.0
    assert percent(5, 5) == 100.0
    assert percent(0, 0) is None
    small.reach("person", "p05", VILLAGE_A1b)
    cov = await small.store.coverage(small.warning.id, depth="village")
    assert cov is not None
    view = coverage_view(cov)
    assert view["totals"]["persons"] == {"total": 6, "reached": 1, "percent": 16.7}
    a1b = next(a for a in view["areas"] if a["code"] == VILLAGE_A1b)
    assert a1b["persons"] == {"total": 2, "reached": 1, "percent": 50.0}
    assert a1b["villages"] == {"total": 1, "reached": 0, "percent": 0.0}


async def test_percentage_is_null_when_there_is_no_one_to_reach(
    store_target: StoreTarget,
) -> None:
    store = await store_target.open()
    try:
        fill_small_directory(store_target)
        conn = store_target.connect()
        conn.execute("INSERT INTO grids VALUES ('g-empty', ?, '空组')", (VILLAGE_A1b,))
        conn.close()
        planned = await plan(store, store_target, (VILLAGE_A1b,))
        conn = store_target.connect()
        conn.execute(
            "UPDATE coverage_targets SET grid_members = 0, households = 0, persons = 0 "
            "WHERE warning_seq = ?",
            (planned.seq,),
        )
        conn.close()
        cov = await store.coverage(planned.warning.id, depth="village")
        assert cov is not None
        view = coverage_view(cov)
        assert view["totals"]["persons"] == {"total": 0, "reached": 0, "percent": None}
        assert view["totals"]["villages"]["percent"] == 0.0
    finally:
        await store.close()


async def test_late_acknowledgements_are_reported_not_counted(small: Planned) -> None:
    small.reach("person", "p04", VILLAGE_A1a, in_time=False)
    small.reach("household", "h2", VILLAGE_A1a, in_time=False)
    small.reach("person", "p01", VILLAGE_A1a)
    cov = await small.store.coverage(small.warning.id, depth="county")
    assert cov is not None
    assert cov.totals.persons == Tally(6, 1)
    assert cov.totals.households == Tally(3, 0)
    assert cov.late == {CoverageKind.PERSON: 1, CoverageKind.HOUSEHOLD: 1}
    assert coverage_view(cov)["late"] == {
        "villages": 0,
        "grid_members": 0,
        "households": 1,
        "persons": 1,
    }
    # Still on the list of those not reached in time, marked as reached late.
    page = await small.store.unreached(small.warning.id, CoverageKind.PERSON, limit=10)
    assert page is not None
    late = {i.id: i.reached_late for i in page.items}
    assert late == {"p02": False, "p03": False, "p04": True, "p05": False, "p06": False}


async def test_another_warnings_acknowledgements_do_not_count(small: Planned) -> None:
    other = await plan(small.store, small.target, (COUNTY_A,))
    small.reach("person", "p01", VILLAGE_A1a, seq=other.seq)
    cov = await small.store.coverage(small.warning.id, depth="county")
    assert cov is not None and cov.totals.persons == Tally(6, 0)
    cov = await small.store.coverage(other.warning.id, depth="county")
    assert cov is not None and cov.totals.persons == Tally(6, 1)


# -- unreached -----------------------------------------------------------------------------------


async def test_unreached_lists_each_kind(small: Planned) -> None:
    store, wid = small.store, small.warning.id

    async def ids(kind: CoverageKind, area: str | None = None) -> list[tuple[str, str]]:
        page = await store.unreached(wid, kind, area=area, limit=100)
        assert page is not None and page.next is None
        return [(i.village_code, i.id) for i in page.items]

    assert await ids(CoverageKind.VILLAGE) == [
        (VILLAGE_A1a, VILLAGE_A1a),
        (VILLAGE_A1b, VILLAGE_A1b),
    ]
    assert await ids(CoverageKind.GRID_MEMBER) == [(VILLAGE_A1a, "p01"), (VILLAGE_A1b, "p06")]
    assert await ids(CoverageKind.HOUSEHOLD) == [
        (VILLAGE_A1a, "h1"),
        (VILLAGE_A1a, "h2"),
        (VILLAGE_A1b, "h3"),
    ]
    assert [i for _, i in await ids(CoverageKind.PERSON)] == [
        "p01",
        "p02",
        "p03",
        "p04",
        "p05",
        "p06",
    ]

    small.reach("village", VILLAGE_A1a, VILLAGE_A1a)
    small.reach("grid_member", "p06", VILLAGE_A1b)
    small.reach("household", "h1", VILLAGE_A1a)
    small.reach("person", "p02", VILLAGE_A1a)
    small.reach("person", "p06", VILLAGE_A1b)
    assert await ids(CoverageKind.VILLAGE) == [(VILLAGE_A1b, VILLAGE_A1b)]
    assert await ids(CoverageKind.GRID_MEMBER) == [(VILLAGE_A1a, "p01")]
    assert [i for _, i in await ids(CoverageKind.HOUSEHOLD)] == ["h2", "h3"]
    assert [i for _, i in await ids(CoverageKind.PERSON)] == ["p01", "p03", "p04", "p05"]
    # In an area: a village, a town, an area the warning does not cover.
    assert await ids(CoverageKind.PERSON, VILLAGE_A1b) == [(VILLAGE_A1b, "p05")]
    assert len(await ids(CoverageKind.PERSON, TOWN_A1)) == 4
    assert await ids(CoverageKind.PERSON, COUNTY_B) == []


async def test_a_grid_member_of_two_grids_of_a_village_is_listed_once(small: Planned) -> None:
    conn = small.target.connect()
    conn.execute("INSERT INTO grids VALUES ('g-a2', ?, '二组')", (VILLAGE_A1a,))
    conn.execute("INSERT INTO grid_members VALUES ('g-a2', 'p01'), ('g-a2', 'p02')")
    conn.close()
    page = await small.store.unreached(small.warning.id, CoverageKind.GRID_MEMBER, limit=10)
    assert page is not None
    assert [(i.id, i.grid_id) for i in page.items] == [
        ("p01", "g-a"),
        ("p02", "g-a2"),
        ("p06", "g-b"),
    ]


async def test_unreached_items_say_where_and_mask_phones(small: Planned) -> None:
    store, wid = small.store, small.warning.id
    persons = await store.unreached(wid, CoverageKind.PERSON, limit=3)
    assert persons is not None
    assert persons.items[0] == UnreachedItem(
        kind=CoverageKind.PERSON,
        id="p01",
        village_code=VILLAGE_A1a,
        name="人p01",
        household_id="h1",
        phone_masked="+86138****0001",
    )
    assert persons.items[2].phone_masked is None  # p03 has no phone
    households = await store.unreached(wid, CoverageKind.HOUSEHOLD, limit=1)
    assert households is not None
    assert (households.items[0].id, households.items[0].grid_id) == ("h1", "g-a")
    members = await store.unreached(wid, CoverageKind.GRID_MEMBER, limit=5)
    assert members is not None
    assert [(m.id, m.grid_id, m.phone_masked) for m in members.items] == [
        ("p01", "g-a", "+86138****0001"),
        ("p06", "g-b", "+86138****0006"),
    ]
    villages = await store.unreached(wid, CoverageKind.VILLAGE, limit=5)
    assert villages is not None
    assert [v.name for v in villages.items] == ["东村", "西村"]
    assert mask_phone("+8613912345678") == "+86139****5678"
    assert mask_phone("10086") == "****86"
    assert mask_phone(None) is None


async def test_unreached_bad_cursor_and_unknown_warning(small: Planned) -> None:
    store, wid = small.store, small.warning.id
    for kind, cursor in [
        (CoverageKind.PERSON, "p01"),
        (CoverageKind.PERSON, "61100200100:p01"),
        (CoverageKind.PERSON, f"{VILLAGE_A1a}:"),
        (CoverageKind.VILLAGE, f"{VILLAGE_A1a}:x"),
    ]:
        with pytest.raises(InvalidCursor):
            await store.unreached(wid, kind, after=cursor, limit=5)
    assert await store.unreached("nope", CoverageKind.PERSON, limit=5) is None


# A synthetic city big enough for pages to cross villages, grids and towns.
CITY = SyntheticDirectoryConfig(
    counties=1,
    towns_per_county=2,
    villages_per_town=3,
    grids_per_village=3,
    households_per_grid=6,
    persons_per_household=3.0,
    seed=11,
)


#: The directory's tables, each after those it refers to.
@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("coverage-city") / "city.db"
    load_synthetic(path, CITY, progress=False)
    return path


@pytest.fixture
async def city(store_target: StoreTarget, city_db: Path) -> AsyncIterator[Planned]:
    store = await store_target.open()
    copy_directory(city_db, store_target)
    try:
        [(county,)] = run_sql(store_target, "SELECT code FROM areas WHERE level = 'county'")
        yield await plan(store, store_target, (county,))
    finally:
        await store.close()


def _expected(city: Planned, kind: CoverageKind, area: str | None) -> list[tuple[str, str]]:
    """The unreached, read plainly from the directory and `reached`."""
    where_area = (
        "AND v IN (SELECT descendant FROM area_closure WHERE ancestor = :area)" if area else ""
    )
    candidates = {
        CoverageKind.VILLAGE: "SELECT village_code AS v, village_code AS t FROM coverage_targets "
        "WHERE warning_seq = :seq",
        CoverageKind.GRID_MEMBER: "SELECT DISTINCT g.village_code AS v, gm.person_id AS t "
        "FROM grids g JOIN grid_members gm ON gm.grid_id = g.id",
        CoverageKind.HOUSEHOLD: "SELECT g.village_code AS v, h.id AS t FROM households h "
        "JOIN grids g ON g.id = h.grid_id",
        CoverageKind.PERSON: "SELECT village_code AS v, id AS t FROM persons",
    }[kind]
    rows = city.sql(
        f"SELECT v, t FROM ({candidates}) c WHERE v IN (SELECT village_code FROM coverage_targets "
        f"WHERE warning_seq = :seq) {where_area} AND t NOT IN (SELECT target_id FROM reached "
        "WHERE warning_seq = :seq AND kind = :kind AND in_time = 1)",
        {"seq": city.seq, "kind": kind.value, "area": area},
    )
    return sorted(rows)


async def _all_pages(
    city: Planned, kind: CoverageKind, area: str | None, limit: int
) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    after: str | None = None
    for _ in range(10_000):
        page = await city.store.unreached(
            city.warning.id, kind, area=area, after=after, limit=limit
        )
        assert page is not None
        assert len(page.items) <= limit
        seen += [(i.village_code, i.id) for i in page.items]
        if page.next is None:
            return seen
        assert len(page.items) == limit
        after = page.next
    raise AssertionError("the pages never ended")


def _every_third(rows: list[tuple[Any, ...]], start: int) -> list[tuple[Any, ...]]:
    return [row for i, row in enumerate(rows) if i % 3 == start]


async def test_pages_have_no_gaps_or_duplicates(city: Planned) -> None:
    # Reach every third person, household and grid member, and every other village.
    persons = city.sql("SELECT id, village_code FROM persons ORDER BY id")
    households = city.sql(
        "SELECT h.id, g.village_code FROM households h JOIN grids g ON g.id = h.grid_id "
        "ORDER BY h.id"
    )
    grids = {g for (g,) in _every_third(city.sql("SELECT id FROM grids ORDER BY id"), 2)}
    members = sorted(
        {
            (person, village)
            for grid, person, village in city.sql(
                "SELECT g.id, gm.person_id, g.village_code FROM grid_members gm "
                "JOIN grids g ON g.id = gm.grid_id"
            )
            if grid in grids
        }
    )
    villages = [
        (v, v)
        for (v,) in city.sql(
            "SELECT village_code FROM coverage_targets WHERE warning_seq = ?", (city.seq,)
        )
        if int(v[9:]) % 2 == 0
    ]
    conn = city.target.connect()
    try:
        for kind, targets in [
            ("person", _every_third(persons, 0)),
            ("household", _every_third(households, 1)),
            ("grid_member", members),
            ("village", villages),
        ]:
            assert targets
            conn.executemany(
                "INSERT INTO reached VALUES (?, ?, ?, ?, 0, 1, 'test', NULL)",
                [(city.seq, kind, t, v) for t, v in targets],
            )
    finally:
        conn.close()
    towns = [t for (t,) in city.sql("SELECT code FROM areas WHERE level = 'town' ORDER BY code")]
    village = city.sql(
        "SELECT village_code FROM coverage_targets WHERE warning_seq = ? ORDER BY village_code "
        "LIMIT 1 OFFSET 2",
        (city.seq,),
    )[0][0]
    for kind in KINDS:
        for area in (None, towns[1], village):
            expected = _expected(city, kind, area)
            assert expected or (kind is CoverageKind.VILLAGE and area == village)
            for limit in (1, 4, 7, 1000):
                assert await _all_pages(city, kind, area, limit) == expected, (kind, area, limit)


# -- progress ------------------------------------------------------------------------------------


async def test_progress(small: Planned) -> None:
    store, wid = small.store, small.warning.id
    progress = await store.progress(wid)
    assert progress is not None
    planned = dict(
        small.sql(
            "SELECT state, n FROM delivery_state_counts WHERE warning_seq = ? AND n != 0",
            (small.seq,),
        )
    )
    assert progress.states == planned
    assert progress.total == sum(planned.values()) > 0
    assert progress.terminal == 0
    assert (progress.complete, progress.completed_at) == (False, None)
    assert progress.plan_stage >= 1 and progress.planned_at is not None

    # Half of the pending deliveries acknowledged, one failed; then all terminal and complete.
    conn = small.target.connect()
    conn.execute(
        "UPDATE delivery_state_counts SET n = n - 3 WHERE warning_seq = ? AND state = 'pending'",
        (small.seq,),
    )
    conn.execute(
        "INSERT INTO delivery_state_counts VALUES (?, 'acknowledged', 2), (?, 'failed', 1)",
        (small.seq, small.seq),
    )
    conn.close()
    progress = await store.progress(wid)
    assert progress is not None
    assert progress.total == sum(planned.values())
    assert progress.terminal == 3
    assert progress.states["acknowledged"] == 2 and progress.states["failed"] == 1

    conn = small.target.connect()
    conn.execute("DELETE FROM delivery_state_counts WHERE warning_seq = ?", (small.seq,))
    conn.execute(
        "INSERT INTO delivery_state_counts VALUES (?, 'acknowledged', ?), (?, 'skipped', 0)",
        (small.seq, sum(planned.values()), small.seq),
    )
    conn.execute(
        "UPDATE warnings SET completed_at = '2026-01-01T00:00:00+00:00' WHERE seq = ?", (small.seq,)
    )
    conn.close()
    progress = await store.progress(wid)
    assert progress is not None
    assert progress.states == {"acknowledged": sum(planned.values())}  # zero rows left out
    assert progress.terminal == progress.total
    assert progress.complete and progress.completed_at == "2026-01-01T00:00:00+00:00"
    assert await store.progress("nope") is None


async def test_progress_while_planning(store_target: StoreTarget) -> None:
    store = await store_target.open()
    try:
        fill_small_directory(store_target)
        warning = make_warning((COUNTY_A,))
        await store.create_warning(warning, idempotency=None, now=time.time())
        progress = await store.progress(warning.id)
        assert progress is not None
        assert (progress.total, progress.plan_stage, progress.planned_at) == (0, 0, None)
        cov = await store.coverage(warning.id, depth="county")
        assert cov is not None and cov.planned is False and cov.totals == CoverageCounts()
    finally:
        await store.close()


# -- query plans ---------------------------------------------------------------------------------

_DIRECTORY_TABLES = ("persons", "households", "grids", "grid_members", "reached", "areas")


def _plan(conn: sqlite3.Connection, sql: str, params: Any) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


@sqlite_only
async def test_unreached_in_a_village_reads_through_indexes(city: Planned) -> None:
    village = city.sql("SELECT min(village_code) FROM coverage_targets")[0][0]
    conn = sqlite3.connect(city.target.path)
    try:
        conn.execute("ANALYZE")  # the plans must hold with statistics as well as without
        for analyzed in (False, True):
            if analyzed:
                conn.execute("ANALYZE")
            for kind in KINDS:
                cursor = village if kind is CoverageKind.VILLAGE else f"{village}:X"
                for after in (None, cursor):
                    sql, params = unreached_statement(
                        city.seq, kind, area=village, after=after, limit=100, hints=True
                    )
                    steps = _plan(conn, sql, params)
                    for step in steps:
                        assert not step.startswith("SCAN"), (kind, after, steps)
                        assert "AUTOMATIC" not in step, (kind, after, steps)
                    used = " ".join(steps)
                    index = {
                        CoverageKind.VILLAGE: None,
                        CoverageKind.GRID_MEMBER: "grids_village",
                        CoverageKind.HOUSEHOLD: "households_grid",
                        CoverageKind.PERSON: "persons_village",
                    }[kind]
                    assert index is None or index in used, steps
    finally:
        conn.close()


@sqlite_only
async def test_coverage_never_reads_deliveries_or_reached_rows(city: Planned) -> None:
    conn = sqlite3.connect(city.target.path)
    try:
        statements = [
            (TOTALS_QUERY.format(where=""), {"seq": city.seq}),
            (AREAS_QUERY.format(where="", areas=""), {"seq": city.seq, "level": "town"}),
            (LATE_QUERY, (city.seq,)),
        ]
        for sql, params in statements:
            steps = " | ".join(_plan(conn, sql, params))
            assert "deliveries" not in steps, steps
            assert "reached" not in steps or "COVERING INDEX reached_late" in steps, steps
            assert "SCAN coverage" not in steps, steps
    finally:
        conn.close()


# -- with the real engine ------------------------------------------------------------------------


def _reached_people_and_villages(run: Planned, *, villages: int) -> bool:
    return bool(
        run.sql(
            "SELECT 1 FROM reached WHERE warning_seq = ? AND kind = 'person' LIMIT 1",
            (run.seq,),
        )
    ) and villages == len(
        run.sql("SELECT 1 FROM reached WHERE warning_seq = ? AND kind = 'village'", (run.seq,))
    )


async def engine_run(store: SqlStore, target: StoreTarget, tmp_path: Path) -> Planned:
    """A warning for both counties planned, and sent by the real engine with simulated
    adapters (every device plays, every other person answers) until a person and every
    village are reached; the engine stopped."""
    sim = {
        "devices": AdapterInstanceConfig(
            kind="simulated", channels=("speaker", "transmitter", "modem")
        ),
        "people": AdapterInstanceConfig(
            kind="simulated",
            channels=("sms", "voice"),
            settings={"ack_probability": 0.5, "seed": 3},
        ),
    }
    specs, problems = build_adapter_specs(tmp_path / "t.toml", sim, tmp_path)
    assert not problems
    config = EngineConfig(
        batch_size=200,
        lease=30.0,
        retry_base=0.05,
        retry_cap=0.2,
        device_ack_timeout=0.5,
        visit_delay=0.1,
        drain_timeout=2.0,
    )
    engine = Engine(store, config=config, policy=lambda: POLICY, adapters=specs)
    await engine.start()
    try:
        run = await plan(store, target, (COUNTY_A, COUNTY_B))
        engine.wake()
        await wait_until(
            lambda: _reached_people_and_villages(run, villages=3),
            what="a person and every village reached",
        )
    finally:
        await engine.stop()  # quiet: nothing is written while what it wrote is read
    return run


async def test_coverage_matches_what_the_engine_records(small: Planned, tmp_path: Path) -> None:
    """Run the real engine over a second warning: the roll-up must equal the `reached` rows
    it wrote."""
    run = await engine_run(small.store, small.target, tmp_path)
    cov = await small.store.coverage(run.warning.id, depth="village")
    assert cov is not None
    reached = dict(
        run.sql(
            "SELECT kind, count(*) FROM reached WHERE warning_seq = ? AND in_time = 1 "
            "GROUP BY kind",
            (run.seq,),
        )
    )
    by_kind = cov.totals.by_kind()
    for kind in KINDS:
        assert by_kind[kind].reached == reached.get(kind.value, 0), kind
    assert by_kind[CoverageKind.VILLAGE] == Tally(3, 3)  # every speaker played
    assert by_kind[CoverageKind.PERSON].total == 8
    assert by_kind[CoverageKind.PERSON].reached > 0
    per_village = dict(
        run.sql(
            "SELECT village_code, count(*) FROM reached WHERE warning_seq = ? "
            "AND kind = 'person' AND in_time = 1 GROUP BY village_code",
            (run.seq,),
        )
    )
    assert {
        a.area.code: a.counts.persons.reached for a in cov.areas if a.counts.persons.reached
    } == per_village


# -- several nodes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("store_kind", ["postgresql"])
async def test_coverage_and_the_delivery_log_read_the_same_from_every_node(
    store_target: StoreTarget, tmp_path: Path
) -> None:
    """Two nodes on one PostgreSQL database: what the engine writes through node a, node b
    reads the same — the delivery log's pages, the coverage roll-up, the unreached lists and
    the progress — and a write through a is read by b as soon as it returns."""
    a = await store_target.open(node="a")
    b = await store_target.open(node="b")
    try:
        fill_small_directory(store_target)
        run = await engine_run(a, store_target, tmp_path)
        wid = run.warning.id

        # The delivery log: whole, by warning, level, channel and state, both ways, in pages.
        queries = [
            LogFilter(),
            LogFilter(warning=wid),
            LogFilter(level=Level.RED),
            LogFilter(channel=Channel.SMS),
            LogFilter(state="acknowledged"),
            LogFilter(area=COUNTY_A),
        ]
        for query in queries:
            for cursor in ({"after": 0}, {}):
                on_a = await _log_pages(a, query, limit=7, **cursor)
                assert on_a == await _log_pages(b, query, limit=7, **cursor), query
                assert on_a == await b.log_events(query, limit=10_000, **cursor), query
        everything = await b.log_events(LogFilter(warning=wid), after=0, limit=10_000)
        assert {"received", "planned", "acknowledged"} <= {e.state for e in everything}
        assert await a.log_last_id() == await b.log_last_id() == max(e.id for e in everything)

        # Coverage, as of different moments but of the same rows.
        for depth, tree in [(None, False), ("county", False), ("village", True)]:
            cov_a = await a.coverage(wid, depth=depth, tree=tree)
            cov_b = await b.coverage(wid, depth=depth, tree=tree)
            assert cov_a is not None and cov_b is not None
            assert replace(cov_a, as_of=0.0) == replace(cov_b, as_of=0.0), depth
        cov = await b.coverage(wid, depth="village")
        assert cov is not None
        assert cov.totals.villages == Tally(3, 3)
        assert cov.totals.persons.reached > 0
        for kind in KINDS:
            assert await a.unreached(wid, kind, limit=3) == await b.unreached(wid, kind, limit=3)
        assert await a.progress(wid) == await b.progress(wid)

        # A write through a, read through b at once.
        another = make_warning((COUNTY_B,))
        await a.create_warning(another, idempotency=None, now=time.time())
        [received] = await b.log_events(LogFilter(warning=another.id), limit=10)
        assert received.state == "received"
        assert await b.log_last_id() == received.id
        progress = await b.progress(another.id)
        assert progress is not None and progress.plan_stage == 0
    finally:
        await a.close()
        await b.close()


async def _log_pages(store: SqlStore, query: LogFilter, *, limit: int, **cursor: int) -> list[Any]:
    """Every page of ``query`` (oldest first when ``after`` is given), concatenated."""
    events: list[Any] = []
    while True:
        page = await store.log_events(query, limit=limit, **cursor)
        events += page
        if len(page) < limit:
            return events
        cursor = {"after": page[-1].id} if "after" in cursor else {"before": page[-1].id}

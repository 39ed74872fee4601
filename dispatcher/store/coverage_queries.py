"""Reading a warning's coverage: counts per area, the lists of those not reached, and
the warning's progress.

Coverage is summed from two small tables the planner and the engine keep: ``coverage_targets``
(the denominators, one row per covered village) and ``coverage_counts`` (those reached in time,
one row per village and kind), rolled up to the areas at the asked depth through
``area_closure``. A city-wide warning has ~1,500 villages, so a read sums a few thousand rows
whether 2,000 or 2 million people were reached; ``deliveries`` and ``reached`` are never
scanned. Late acknowledgements are counted through the partial index ``reached_late``, which
holds only them.

The unreached lists walk the warning's covered villages in code order (``coverage_targets``'
key), reach the directory through its indexes (``grids_village``, ``grid_members``' key,
``households_grid``, ``persons_village``) and look each candidate up in ``reached`` by its
key, sorting one village at a time; a page stops as soon as it is full. The cursor is the last
item's (village, id). ``tests/test_coverage_store.py`` checks the query plans.

The indexes are named to SQLite (``INDEXED BY``); PostgreSQL, which has no such hints, plans the
same statements on its own (:func:`~dispatcher.store.connections.without_hints`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from dispatcher.domain import TERMINAL_DELIVERY_STATES
from dispatcher.store.base import (
    AreaCoverage,
    AreaRow,
    ConfirmationCheck,
    CoverageCounts,
    CoverageKind,
    InvalidCursor,
    Tally,
    UnreachedItem,
    UnreachedPage,
    WarningCoverage,
    WarningProgress,
    mask_phone,
)
from dispatcher.store.connections import Db, StoreConnections, without_hints

__all__ = ["COVERAGE_DEPTHS", "UNREACHED_QUERIES", "CoverageQueries", "unreached_statement"]

#: The area levels coverage can be broken down by.
COVERAGE_DEPTHS = ("county", "town", "village")

_TERMINAL = tuple(s.value for s in TERMINAL_DELIVERY_STATES)
_KINDS = frozenset(k.value for k in CoverageKind)

# Each covered village with its denominators and its in-time reached counts by kind.
_VILLAGES = (
    "SELECT ct.village_code AS code, ct.grid_members AS gm, ct.households AS hh, "
    "ct.persons AS pp, "
    "coalesce(sum(CASE WHEN cc.kind = 'village' THEN cc.n END), 0) AS r_v, "
    "coalesce(sum(CASE WHEN cc.kind = 'grid_member' THEN cc.n END), 0) AS r_gm, "
    "coalesce(sum(CASE WHEN cc.kind = 'household' THEN cc.n END), 0) AS r_hh, "
    "coalesce(sum(CASE WHEN cc.kind = 'person' THEN cc.n END), 0) AS r_pp "
    "FROM coverage_targets ct LEFT JOIN coverage_counts cc "
    "ON cc.warning_seq = ct.warning_seq AND cc.village_code = ct.village_code "
    # Grouped by the key: each group is one coverage_targets row.
    "WHERE ct.warning_seq = :seq{where} GROUP BY ct.warning_seq, ct.village_code"
)
_SUMS = (
    "count(*), sum(CASE WHEN v.r_v > 0 THEN 1 ELSE 0 END), "
    "coalesce(sum(v.gm), 0), coalesce(sum(v.r_gm), 0), coalesce(sum(v.hh), 0), "
    "coalesce(sum(v.r_hh), 0), coalesce(sum(v.pp), 0), coalesce(sum(v.r_pp), 0)"
)
_UNDER = " AND ct.village_code IN (SELECT descendant FROM area_closure WHERE ancestor = :under)"
#: The whole warning's counts (``{where}``: nothing, or :data:`_UNDER`).
TOTALS_QUERY = f"SELECT {_SUMS} FROM ({_VILLAGES}) v"
#: The counts per area of one level (:level), each the sum over its covered villages.
AREAS_QUERY = (
    f"SELECT a.code, a.name, a.level, a.parent_code, {_SUMS} FROM ({_VILLAGES}) v "
    "JOIN area_closure c ON c.descendant = v.code "
    "JOIN areas a ON a.code = c.ancestor "
    "WHERE a.level = :level{areas} GROUP BY a.code ORDER BY a.code"
)
#: Areas at the depth that are ``under`` or beneath it (a depth above ``under`` lists none).
_AREAS_UNDER = " AND a.code IN (SELECT descendant FROM area_closure WHERE ancestor = :under)"
LATE_QUERY = (
    "SELECT kind, count(*) FROM reached INDEXED BY reached_late "
    "WHERE warning_seq = ? AND in_time = 0 GROUP BY kind"
)


def _not_reached(kind: str, target: str) -> str:
    return (
        "NOT EXISTS (SELECT 1 FROM reached r WHERE r.warning_seq = ct.warning_seq "
        f"AND r.kind = '{kind}' AND r.target_id = {target} AND r.in_time = 1)"
    )


def _reached_late(kind: str, target: str) -> str:
    return (
        "EXISTS (SELECT 1 FROM reached r WHERE r.warning_seq = ct.warning_seq "
        f"AND r.kind = '{kind}' AND r.target_id = {target} AND r.in_time = 0)"
    )


# One page of each list. ``{area}``: nothing, or a restriction of the villages to an area;
# ``{after}``: the keyset condition. Columns: village, id, name, grid, household, address,
# phone, reached late. The directory is read village by village through its indexes, named:
# with statistics of a small directory SQLite would rather walk a whole table in id order
# than sort a village's rows, which at city scale reads every person for one page.
UNREACHED_QUERIES: dict[CoverageKind, str] = {
    CoverageKind.VILLAGE: (
        "SELECT ct.village_code, ct.village_code, a.name, NULL, NULL, NULL, NULL, "
        f"{_reached_late('village', 'ct.village_code')} "
        "FROM coverage_targets ct JOIN areas a ON a.code = ct.village_code "
        "WHERE ct.warning_seq = :seq AND ct.village_code > :village{area} "
        f"AND {_not_reached('village', 'ct.village_code')} "
        "ORDER BY ct.village_code LIMIT :limit"
    ),
    CoverageKind.GRID_MEMBER: (
        "SELECT ct.village_code, gm.person_id, p.name, g.id, NULL, NULL, p.phone, "
        f"{_reached_late('grid_member', 'gm.person_id')} "
        "FROM coverage_targets ct "
        "JOIN grids g INDEXED BY grids_village ON g.village_code = ct.village_code "
        "JOIN grid_members gm ON gm.grid_id = g.id "
        "JOIN persons p ON p.id = gm.person_id "
        "WHERE ct.warning_seq = :seq AND ct.village_code >= :village{area}{after} "
        f"AND {_not_reached('grid_member', 'gm.person_id')} "
        # Once per village: a member of several of its grids is listed with the first.
        "AND NOT EXISTS (SELECT 1 FROM grid_members gm2 JOIN grids g2 ON g2.id = gm2.grid_id "
        "WHERE gm2.person_id = gm.person_id AND g2.village_code = ct.village_code "
        "AND g2.id < g.id) "
        "ORDER BY ct.village_code, gm.person_id LIMIT :limit"
    ),
    CoverageKind.HOUSEHOLD: (
        "SELECT ct.village_code, h.id, '', h.grid_id, NULL, h.address, NULL, "
        f"{_reached_late('household', 'h.id')} "
        "FROM coverage_targets ct "
        "JOIN grids g INDEXED BY grids_village ON g.village_code = ct.village_code "
        "JOIN households h INDEXED BY households_grid ON h.grid_id = g.id "
        "WHERE ct.warning_seq = :seq AND ct.village_code >= :village{area}{after} "
        f"AND {_not_reached('household', 'h.id')} "
        "ORDER BY ct.village_code, h.id LIMIT :limit"
    ),
    CoverageKind.PERSON: (
        "SELECT ct.village_code, p.id, p.name, NULL, p.household_id, NULL, p.phone, "
        f"{_reached_late('person', 'p.id')} "
        "FROM coverage_targets ct "
        "JOIN persons p INDEXED BY persons_village ON p.village_code = ct.village_code "
        "WHERE ct.warning_seq = :seq AND ct.village_code >= :village{area}{after} "
        f"AND {_not_reached('person', 'p.id')} "
        "ORDER BY ct.village_code, p.id LIMIT :limit"
    ),
}
_AFTER_ID = {
    CoverageKind.GRID_MEMBER: " AND (ct.village_code > :village OR gm.person_id > :id)",
    CoverageKind.HOUSEHOLD: " AND (ct.village_code > :village OR h.id > :id)",
    CoverageKind.PERSON: " AND (ct.village_code > :village OR p.id > :id)",
}
_AREA = " AND ct.village_code IN (SELECT descendant FROM area_closure WHERE ancestor = :area)"
_VILLAGE_CODE = re.compile(r"[0-9]{12}")
_MAX_CURSOR_ID = 200


def unreached_statement(
    seq: int,
    kind: CoverageKind,
    *,
    area: str | None,
    after: str | None,
    limit: int,
    hints: bool,
) -> tuple[str, dict[str, Any]]:
    """The statement reading one page of the unreached ``kind`` (InvalidCursor for a bad
    ``after``; ``hints``: name the indexes, as SQLite needs)."""
    village, target = parse_cursor(kind, after)
    sql = UNREACHED_QUERIES[kind]
    keyset = ""
    if kind is not CoverageKind.VILLAGE and target is not None:
        keyset = _AFTER_ID[kind]
    sql = sql.format(area=_AREA if area is not None else "", after=keyset)
    if not hints:
        sql = without_hints(sql)
    params: dict[str, Any] = {"seq": seq, "village": village, "limit": limit}
    if area is not None:
        params["area"] = area
    if keyset:
        params["id"] = target
    return sql, params


def parse_cursor(kind: CoverageKind, after: str | None) -> tuple[str, str | None]:
    """(village, id) from a cursor; ('', None) for the first page."""
    if after is None:
        return "", None
    if kind is CoverageKind.VILLAGE:
        if _VILLAGE_CODE.fullmatch(after):
            return after, None
    else:
        village, sep, target = after.partition(":")
        if sep and _VILLAGE_CODE.fullmatch(village) and 0 < len(target) <= _MAX_CURSOR_ID:
            return village, target
    raise InvalidCursor(f"{after[:40]!r} is not a cursor of a page of unreached {kind.value}s")


def make_cursor(kind: CoverageKind, item: UnreachedItem) -> str:
    if kind is CoverageKind.VILLAGE:
        return item.village_code
    return f"{item.village_code}:{item.id}"


def _counts(row: Sequence[Any]) -> CoverageCounts:
    v, rv, gm, rgm, hh, rhh, pp, rpp = (int(x or 0) for x in row)
    return CoverageCounts(
        villages=Tally(v, rv),
        grid_members=Tally(gm, rgm),
        households=Tally(hh, rhh),
        persons=Tally(pp, rpp),
    )


def _tree_order(areas: list[AreaCoverage]) -> list[AreaCoverage]:
    """Each area followed by those beneath it, siblings by code (the path of codes down to
    each area through its listed ancestors)."""
    parent = {a.area.code: a.area.parent_code for a in areas}
    paths: dict[str, tuple[str, ...]] = {}

    def path(code: str) -> tuple[str, ...]:
        if code not in paths:
            up = parent.get(code)
            paths[code] = (*path(up), code) if up is not None and up in parent else (code,)
        return paths[code]

    return sorted(areas, key=lambda a: path(a.area.code))


def _warning_seq(conn: Db, warning_id: str) -> int | None:
    row = conn.execute("SELECT seq FROM warnings WHERE id = ?", (warning_id,)).fetchone()
    return None if row is None else int(row[0])


def _snapshot(conn: Db) -> None:
    """Begin a read transaction: the statements that follow see one state of the database."""
    conn.execute("BEGIN")


class CoverageQueries(StoreConnections):
    """Mixed into :class:`dispatcher.store.sql_store.SqlStore`."""

    async def coverage(
        self,
        warning_id: str,
        *,
        depth: str | None,
        under: str | None = None,
        tree: bool = False,
    ) -> WarningCoverage | None:
        if depth is not None and depth not in COVERAGE_DEPTHS:
            raise ValueError(f"depth must be one of {', '.join(COVERAGE_DEPTHS)}, not {depth!r}")
        # One level, or (tree) every level from the county down to ``depth``: each read with
        # the same query, in the same snapshot, so a county's row is the sum of its towns'.
        levels: tuple[str, ...] = ()
        if depth is not None:
            levels = COVERAGE_DEPTHS[: COVERAGE_DEPTHS.index(depth) + 1] if tree else (depth,)
        late_query = LATE_QUERY if self._planner_hints else without_hints(LATE_QUERY)

        def run(conn: Db) -> WarningCoverage | None:
            _snapshot(conn)
            try:
                found = conn.execute(
                    "SELECT seq, planned_at FROM warnings WHERE id = ?", (warning_id,)
                ).fetchone()
                if found is None:
                    return None
                seq, planned = int(found[0]), found[1] is not None
                as_of = time.time()
                totals = _counts(
                    conn.execute(TOTALS_QUERY.format(where=""), {"seq": seq}).fetchone()
                )
                params: dict[str, Any] = {"seq": seq}
                where = areas_where = ""
                under_row: AreaCoverage | None = None
                if under is not None:
                    params["under"] = under
                    where, areas_where = _UNDER, _AREAS_UNDER
                    area = conn.execute(
                        "SELECT code, name, level, parent_code FROM areas WHERE code = ?",
                        (under,),
                    ).fetchone()
                    if area is not None:
                        counts = conn.execute(
                            TOTALS_QUERY.format(where=_UNDER), {"seq": seq, "under": under}
                        ).fetchone()
                        under_row = AreaCoverage(AreaRow(*area), _counts(counts))
                areas = [
                    AreaCoverage(AreaRow(*row[:4]), _counts(row[4:]))
                    for level in levels
                    for row in conn.execute(
                        AREAS_QUERY.format(where=where, areas=areas_where),
                        {**params, "level": level},
                    )
                ]
                if len(levels) > 1:
                    areas = _tree_order(areas)
                late = {
                    CoverageKind(kind): int(n)
                    for kind, n in conn.execute(late_query, (seq,))
                    if kind in _KINDS
                }
            finally:
                conn.execute("COMMIT")
            return WarningCoverage(
                warning_id=warning_id,
                depth=depth,
                totals=totals,
                areas=areas,
                under=under_row,
                late=late,
                as_of=as_of,
                planned=planned,
            )

        return await self._read(run)

    async def unreached(
        self,
        warning_id: str,
        kind: CoverageKind,
        *,
        area: str | None = None,
        after: str | None = None,
        limit: int,
    ) -> UnreachedPage | None:
        parse_cursor(kind, after)  # a bad cursor fails here, before any read
        hints = self._planner_hints

        def run(conn: Db) -> UnreachedPage | None:
            seq = _warning_seq(conn, warning_id)
            if seq is None:
                return None
            sql, params = unreached_statement(
                seq, kind, area=area, after=after, limit=limit + 1, hints=hints
            )
            items = [
                UnreachedItem(
                    kind=kind,
                    id=row[1],
                    village_code=row[0],
                    name=row[2] or "",
                    grid_id=row[3],
                    household_id=row[4],
                    address=row[5],
                    phone_masked=mask_phone(row[6]),
                    reached_late=bool(row[7]),
                )
                for row in conn.execute(sql, params)
            ]
            more = len(items) > limit
            items = items[:limit]
            return UnreachedPage(items, make_cursor(kind, items[-1]) if more else None)

        return await self._read(run)

    async def progress(self, warning_id: str) -> WarningProgress | None:
        def run(conn: Db) -> WarningProgress | None:
            _snapshot(conn)
            try:
                row = conn.execute(
                    "SELECT seq, plan_stage, planned_at, completed_at FROM warnings WHERE id = ?",
                    (warning_id,),
                ).fetchone()
                if row is None:
                    return None
                states = {
                    state: int(n)
                    for state, n in conn.execute(
                        "SELECT state, n FROM delivery_state_counts "
                        "WHERE warning_seq = ? AND n != 0 ORDER BY state",
                        (row[0],),
                    )
                }
            finally:
                conn.execute("COMMIT")
            return WarningProgress(
                warning_id=warning_id,
                states=states,
                total=sum(states.values()),
                terminal=sum(n for state, n in states.items() if state in _TERMINAL),
                complete=row[3] is not None,
                completed_at=row[3],
                plan_stage=int(row[1]),
                planned_at=row[2],
            )

        return await self._read(run)

    async def check_household_confirmation(
        self, warning_id: str, household_id: str, person_id: str
    ) -> ConfirmationCheck:
        def run(conn: Db) -> ConfirmationCheck:
            if _warning_seq(conn, warning_id) is None:
                return ConfirmationCheck(False, False, False, False)
            household = conn.execute(
                "SELECT grid_id, village_code FROM households WHERE id = ?",
                (household_id,),
            ).fetchone()
            if household is None:
                return ConfirmationCheck(True, False, False, False)
            grid_id, village = household
            member = conn.execute(
                "SELECT 1 FROM grid_members WHERE grid_id = ? AND person_id = ?",
                (grid_id, person_id),
            ).fetchone()
            covered = conn.execute(
                "SELECT 1 FROM area_closure c WHERE c.descendant = ? AND c.ancestor IN "
                "(SELECT area_code FROM warning_areas WHERE warning_id = ?)",
                (village, warning_id),
            ).fetchone()
            return ConfirmationCheck(
                True, True, member is not None, covered is not None, grid_id, village
            )

        return await self._read(run)

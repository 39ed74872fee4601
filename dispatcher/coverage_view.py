"""A warning's coverage and progress as people read them: the API's JSON (from the store's
records) and the text ``tocsin status`` prints (from that JSON).

Each measure is ``{"total", "reached", "percent"}``: how many the plan covers, how many were
reached in time, and the share with one decimal (None when there are none to reach). For grid
members and persons, reached means they acknowledged; a village is reached when a speaker there
played, a transmitter covering it confirmed or its grid member acknowledged; a household when a
member acknowledged or a grid member marked it reached (docs/coverage.md)."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dispatcher.store.base import (
    AreaCoverage,
    CoverageCounts,
    CoverageKind,
    Tally,
    UnreachedItem,
    UnreachedPage,
    WarningCoverage,
    WarningProgress,
)

#: The measures, keyed as in the JSON, in the order they are shown, with their column titles.
MEASURES: tuple[tuple[str, CoverageKind, str], ...] = (
    ("villages", CoverageKind.VILLAGE, "villages"),
    ("grid_members", CoverageKind.GRID_MEMBER, "grid members"),
    ("households", CoverageKind.HOUSEHOLD, "households"),
    ("persons", CoverageKind.PERSON, "persons"),
)


def percent(reached: int, total: int) -> float | None:
    """``reached`` of ``total`` in percent with one decimal; None when ``total`` is 0."""
    if total <= 0:
        return None
    return round(100.0 * reached / total, 1)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


# -- JSON ------------------------------------------------------------------------------------


def tally_view(tally: Tally) -> dict[str, Any]:
    return {
        "total": tally.total,
        "reached": tally.reached,
        "percent": percent(tally.reached, tally.total),
    }


def counts_view(counts: CoverageCounts) -> dict[str, Any]:
    by_kind = counts.by_kind()
    return {key: tally_view(by_kind[kind]) for key, kind, _ in MEASURES}


def area_coverage_view(area: AreaCoverage) -> dict[str, Any]:
    return {
        "code": area.area.code,
        "name": area.area.name,
        "level": area.area.level,
        "parent_code": area.area.parent_code,
        **counts_view(area.counts),
    }


def late_view(late: Mapping[CoverageKind, int]) -> dict[str, int]:
    return {key: late.get(kind, 0) for key, kind, _ in MEASURES}


def coverage_totals_view(coverage: WarningCoverage) -> dict[str, Any]:
    """What GET /v1/warnings/{id} carries: the whole warning's measures and late counts."""
    return {
        **counts_view(coverage.totals),
        "late": late_view(coverage.late),
        "as_of": _iso(coverage.as_of),
    }


def coverage_view(coverage: WarningCoverage) -> dict[str, Any]:
    """GET /v1/warnings/{id}/coverage."""
    return {
        "warning_id": coverage.warning_id,
        "depth": coverage.depth,
        "under": area_coverage_view(coverage.under) if coverage.under is not None else None,
        "planned": coverage.planned,
        "as_of": _iso(coverage.as_of),
        "totals": counts_view(coverage.totals),
        "late": late_view(coverage.late),
        "areas": [area_coverage_view(a) for a in coverage.areas],
    }


def unreached_item_view(item: UnreachedItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "village_code": item.village_code,
        "name": item.name,
        "grid_id": item.grid_id,
        "household_id": item.household_id,
        "address": item.address,
        "phone_masked": item.phone_masked,
        "reached_late": item.reached_late,
    }


def unreached_view(
    warning_id: str, kind: CoverageKind, area: str | None, page: UnreachedPage
) -> dict[str, Any]:
    """GET /v1/warnings/{id}/unreached."""
    return {
        "warning_id": warning_id,
        "kind": kind.value,
        "area": area,
        "items": [unreached_item_view(i) for i in page.items],
        "next": page.next,
    }


def progress_view(progress: WarningProgress) -> dict[str, Any]:
    return {
        "total": progress.total,
        "terminal": progress.terminal,
        "percent_terminal": percent(progress.terminal, progress.total),
        "complete": progress.complete,
        "completed_at": progress.completed_at,
        "plan_stage": progress.plan_stage,
        "planned_at": progress.planned_at,
        "states": dict(sorted(progress.states.items())),
    }


# -- text (tocsin status) --------------------------------------------------------------------

_INDENT = {"province": 0, "city": 0, "county": 2, "town": 4, "village": 6}


def _width(text: str) -> int:
    """Columns a terminal gives ``text``: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _ljust(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _cell(measure: Mapping[str, Any] | None) -> str:
    if not measure:
        return "-"
    shown = measure.get("percent")
    share = f"{shown:.1f}%" if isinstance(shown, int | float) else "-"
    return f"{measure.get('reached', 0)}/{measure.get('total', 0)} {share}"


def _shown_time(value: Any) -> str:
    try:
        return datetime.fromisoformat(str(value)).isoformat(timespec="seconds")
    except ValueError:
        return str(value)


def format_progress(progress: Mapping[str, Any]) -> str:
    """One line: terminal of total deliveries, complete or not, and the states."""
    total = int(progress.get("total") or 0)
    terminal = int(progress.get("terminal") or 0)
    share = progress.get("percent_terminal")
    done = (
        f"complete at {progress.get('completed_at')}" if progress.get("complete") else "in progress"
    )
    line = f"  progress: {terminal}/{total} deliveries terminal"
    if isinstance(share, int | float):
        line += f" ({share:.1f}%)"
    line += f", {done}"
    if not progress.get("planned_at"):
        line += f", planning (stage {progress.get('plan_stage', 0)} committed)"
    states = progress.get("states") or {}
    if states:
        line += "\n    " + ", ".join(f"{state} {n}" for state, n in sorted(states.items()))
    return line


def format_coverage(coverage: Mapping[str, Any]) -> str:
    """The coverage table: the whole warning, then one row per area, with late counts."""
    titles = [title for _, _, title in MEASURES]
    rows: list[tuple[str, list[str]]] = [
        ("whole warning", [_cell((coverage.get("totals") or {}).get(k)) for k, _, _ in MEASURES])
    ]
    for area in coverage.get("areas") or []:
        indent = " " * _INDENT.get(str(area.get("level")), 2)
        label = f"{indent}{area.get('code')} {area.get('name')}"
        rows.append((label, [_cell(area.get(k)) for k, _, _ in MEASURES]))
    first = max(len("area"), *(_width(label) for label, _ in rows))
    widths = [max(len(t), *(len(cells[i]) for _, cells in rows)) for i, t in enumerate(titles)]
    header = (
        _ljust("area", first)
        + "  "
        + "  ".join(f"{t:>{w}}" for t, w in zip(titles, widths, strict=True))
    )
    lines = [f"  coverage (reached in time / total), as of {_shown_time(coverage.get('as_of'))}:"]
    lines.append("    " + header)
    for label, cells in rows:
        lines.append(
            "    "
            + _ljust(label, first)
            + "  "
            + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    late = {k: n for k, n in (coverage.get("late") or {}).items() if n}
    if late:
        lines.append(
            "    late (after expiry, not counted): "
            + ", ".join(f"{k} {n}" for k, n in late.items())
        )
    if coverage.get("planned") is False:
        lines.append("    (the plan is still being made: totals grow as its stages commit)")
    return "\n".join(lines)

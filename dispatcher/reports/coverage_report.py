"""A warning's coverage report, as CSV and as a printable summary, both made from the JSON of
GET /v1/warnings/{id}/coverage (:func:`dispatcher.coverage_view.coverage_view`), so each says
exactly what the JSON says.

- CSV: one row per area (``level, code, name, parent_code``, then for villages, grid members,
  households and persons: reached in time, total, percent), then a ``total`` row for the whole
  warning.
- The printable summary: for a duty officer to print or paste into a report to the county —
  the headline, status, level, issued and expiry times, the overall percentages, then the table
  per county, town (and village), in Chinese, times in China Standard Time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dispatcher.coverage_view import MEASURES
from dispatcher.reports.text import china_time, table

#: The CSV's columns.
COVERAGE_CSV_COLUMNS: tuple[str, ...] = (
    "level",
    "code",
    "name",
    "parent_code",
    *(f"{key}_{part}" for key, _, _ in MEASURES for part in ("reached", "total", "percent")),
)
#: The ``level`` of the CSV's last row: the whole warning.
TOTAL_LEVEL = "total"

#: Chinese labels for the printable summary.
MEASURE_LABELS = {
    "villages": "行政村",
    "grid_members": "网格员",
    "households": "户",
    "persons": "人",
}
LEVEL_LABELS = {"red": "红色预警", "orange": "橙色预警", "yellow": "黄色预警", "blue": "蓝色预警"}
STATUS_MARKS = {"Actual": "", "Exercise": "【演练】", "Test": "【测试】", "Draft": "【草稿】"}
STATE_LABELS = {
    "active": "生效中",
    "superseded": "已被更新",
    "cancelled": "已解除",
    "expired": "已过期",
}
_INDENT = {"county": 0, "town": 2, "village": 4}


def _measure(area: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = area.get(key)
    return value if isinstance(value, Mapping) else {}


def _cells(area: Mapping[str, Any]) -> list[Any]:
    cells: list[Any] = []
    for key, _, _ in MEASURES:
        measure = _measure(area, key)
        cells += [measure.get("reached", 0), measure.get("total", 0), measure.get("percent")]
    return cells


def coverage_csv_rows(coverage: Mapping[str, Any]) -> Iterator[list[Any]]:
    """The CSV's rows (after the header): each area of the coverage JSON, then the whole
    warning as a ``total`` row (a percent of null is an empty cell)."""
    for area in coverage.get("areas") or []:
        yield [
            area.get("level"),
            area.get("code"),
            area.get("name"),
            area.get("parent_code"),
            *_cells(area),
        ]
    yield [TOTAL_LEVEL, "", "合计", "", *_cells(coverage.get("totals") or {})]


def _share(measure: Mapping[str, Any]) -> str:
    shown = measure.get("percent")
    return f"{shown:.1f}%" if isinstance(shown, int | float) else "—"


def _cell(measure: Mapping[str, Any]) -> str:
    return f"{measure.get('reached', 0)}/{measure.get('total', 0)} {_share(measure)}"


def format_coverage_summary(
    warning: Mapping[str, Any],
    coverage: Mapping[str, Any],
    *,
    area_names: Mapping[str, str] | None = None,
) -> str:
    """The printable summary: ``warning`` is the warning's JSON (its summary is enough),
    ``coverage`` the coverage JSON, ``area_names`` the names of the warning's areas by code."""
    names = area_names or {}
    mark = STATUS_MARKS.get(str(warning.get("status")), f"【{warning.get('status')}】")
    level = LEVEL_LABELS.get(str(warning.get("level")), str(warning.get("level")))
    state = STATE_LABELS.get(str(warning.get("state")), str(warning.get("state")))
    areas = "、".join(
        f"{names[code]}（{code}）" if names.get(code) else str(code)
        for code in warning.get("area_codes") or []
    )
    lines = [
        f"{mark}{warning.get('headline', '')}",
        "预警覆盖情况报告",
        "",
        f"预警级别：{level}    事件：{warning.get('event', '')}    状态：{state}",
        f"预警编号：{warning.get('id', '')}",
        f"发布时间：{china_time(warning.get('sent'))}    "
        f"失效时间：{china_time(warning.get('expires'))}（北京时间）",
        f"预警区域：{areas or '-'}",
        f"统计时间：{china_time(coverage.get('as_of'), seconds=True)}（北京时间）",
        "",
        "总体覆盖（按时确认 / 应覆盖）：",
    ]
    totals = coverage.get("totals") or {}
    lines.append(
        "  "
        + "    ".join(
            f"{MEASURE_LABELS[key]} {_cell(_measure(totals, key))}" for key, _, _ in MEASURES
        )
    )
    rows = _area_rows(coverage.get("areas") or [])
    if rows:
        heading = ["区域", *(MEASURE_LABELS[key] for key, _, _ in MEASURES)]
        total_row = ["合计", *(_cell(_measure(totals, key)) for key, _, _ in MEASURES)]
        under = coverage.get("under")
        if isinstance(under, Mapping):
            total_row[0] = "合计（全部预警区域）"
        lines += ["", "分区覆盖：", *table([heading, *rows, total_row], right=_RIGHT)]
    late = {key: n for key, n in (coverage.get("late") or {}).items() if isinstance(n, int) and n}
    lines.append("")
    if late:
        lines.append(
            "预警失效后才确认（未计入）："
            + "，".join(f"{MEASURE_LABELS.get(k, k)} {n}" for k, n in late.items())
        )
    if coverage.get("planned") is False:
        lines.append("注意：预警仍在生成发送计划，应覆盖数会随之增加。")
    lines += [
        "说明：人、网格员按本人确认（短信回复、电话按1）统计；户按任一成员确认或网格员入户核实",
        "统计；行政村按广播播放确认或其网格员确认统计。百分比保留一位小数，无应覆盖对象记“—”。",
    ]
    return "\n".join(lines) + "\n"


_RIGHT = (False, True, True, True, True)


def _area_rows(areas: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    top = min((_INDENT.get(str(a.get("level")), 0) for a in areas), default=0)
    for area in areas:
        indent = " " * (_INDENT.get(str(area.get("level")), 0) - top)
        label = f"{indent}{area.get('name') or ''}（{area.get('code')}）"
        rows.append([label, *(_cell(_measure(area, key)) for key, _, _ in MEASURES)])
    return rows

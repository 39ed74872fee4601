"""A warning's plan as people read it: deliveries per audience and channel, rolled up from the
areas the planner counted (villages, towns with town-level devices) to every ancestor."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from dispatcher.store.base import AreaRow, PlanCountRow

_LEVEL_ORDER = {"province": 0, "city": 1, "county": 2, "town": 3, "village": 4}


@dataclass
class AreaPlan:
    code: str
    name: str
    level: str
    parent_code: str | None
    total: int = 0
    by_audience: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )

    def add(self, audience: str, channel: str, count: int) -> None:
        self.total += count
        self.by_audience[audience][channel] += count

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "level": self.level,
            "parent_code": self.parent_code,
            "total": self.total,
            "by_audience": {a: dict(c) for a, c in sorted(self.by_audience.items())},
        }


def build_plan_view(
    counts: list[PlanCountRow], areas: list[AreaRow], *, deepest: str = "village"
) -> dict[str, Any]:
    """Roll ``counts`` up the area tree. ``deepest`` limits the detail rows (e.g. "county")."""
    by_code = {a.code: a for a in areas}
    plans: dict[str, AreaPlan] = {}
    totals = AreaPlan("", "", "", None)
    for row in counts:
        totals.add(row.audience, row.channel, row.count)
        code: str | None = row.area_code
        seen = set()
        while code is not None and code not in seen:
            seen.add(code)
            area = by_code.get(code)
            if area is None:
                break
            plan = plans.get(code)
            if plan is None:
                plan = plans[code] = AreaPlan(area.code, area.name, area.level, area.parent_code)
            plan.add(row.audience, row.channel, row.count)
            code = area.parent_code
    limit = _LEVEL_ORDER.get(deepest, 4)
    rows = sorted(
        (p for p in plans.values() if _LEVEL_ORDER.get(p.level, 9) <= limit),
        key=lambda p: (_LEVEL_ORDER.get(p.level, 9), p.code),
    )
    return {
        "total": totals.total,
        "by_audience": {a: dict(c) for a, c in sorted(totals.by_audience.items())},
        "areas": [p.as_json() for p in rows],
    }

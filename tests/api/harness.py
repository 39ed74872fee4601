"""Helpers for the API tests: the small city's codes, tokens per role, warning bodies and the
:class:`Api` handle that the ``api`` fixture (conftest.py) yields."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from dispatcher.config import (
    ApiRole,
    SyntheticDirectoryConfig,
)
from dispatcher.planning_worker import PlanningWorker
from dispatcher.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
#: Two counties of two towns of three villages: small enough to count by hand, big enough to
#: page through and to tell a county from the whole city.
CITY_SHAPE = SyntheticDirectoryConfig(
    counties=2,
    towns_per_county=2,
    villages_per_town=3,
    grids_per_village=2,
    households_per_grid=5,
    persons_per_household=3.0,
    seed=7,
)
CITY = "611000000000"
COUNTY = "611002000000"
OTHER_COUNTY = "611021000000"
TOWN = "611002101000"
VILLAGE = "611002101201"
SENDER = "yjj@test.tocsin"
MAX_BODY = 64 * 1024

#: Plain-text tokens by role; the API only ever sees their hashes in the config.
TOKENS: dict[ApiRole, str] = {role: f"token-for-{role.value}-0123456789" for role in ApiRole}
TOKEN_NAMES: dict[ApiRole, str] = {role: f"desk-{role.value}" for role in ApiRole}


def future(hours: float = 6) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0).isoformat()


def red_warning(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "level": "red",
        "status": "Exercise",
        "event": "暴雨",
        "headline": "商州区暴雨红色预警",
        "instruction": "请立即转移到安全地带",
        "area_codes": [COUNTY],
        "expires": future(),
    }
    body.update(changes)
    return body


@dataclass
class Api:
    """The running API and ways to look behind it."""

    client: TestClient[Any, Any]
    store: SqliteStore
    planner: PlanningWorker
    db: Path
    registry: CollectorRegistry
    ready: list[bool] = field(default_factory=lambda: [True])

    @staticmethod
    def auth(role: ApiRole) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[role]}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        role: ApiRole | None = ApiRole.ADMIN,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        all_headers = {**(self.auth(role) if role is not None else {}), **(headers or {})}
        async with self.client.request(method, path, headers=all_headers, **kwargs) as response:
            text = await response.text()
            content_type = response.headers.get("Content-Type", "")
            body: Any = text
            if content_type.startswith("application/json"):
                body = await response.json()
            return response.status, body, dict(response.headers)

    async def post_warning(
        self,
        body: dict[str, Any] | None = None,
        *,
        role: ApiRole = ApiRole.DUTY_OFFICER,
        **kwargs: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        return await self.call(
            "POST", "/v1/warnings", role=role, json=body or red_warning(), **kwargs
        )

    async def planned(self, warning_id: str, depth: str = "village") -> dict[str, Any]:
        await self.planner.wait_idle()
        status, plan, _ = await self.call(
            "GET", f"/v1/warnings/{warning_id}/plan?depth={depth}", role=ApiRole.OPERATOR
        )
        assert status == 200, plan
        assert plan["planned"] is True, plan
        return plan  # type: ignore[no-any-return]

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(query, params).fetchall()
        finally:
            conn.close()

    async def table_counts(self) -> dict[str, int]:
        """Rows per table once the planner has caught up."""
        await self.planner.wait_idle()
        tables = ("warnings", "audit_log", "idempotency_keys", "deliveries", "delivery_events")
        return {t: self.sql(f"SELECT count(*) FROM {t}")[0][0] for t in tables}


# -- expected plans, counted straight from the directory ------------------------------------

_PREFIX_DIGITS = {"province": 2, "city": 4, "county": 6, "town": 9, "village": 12}
_GRID_MEMBER, _CADRE = 1, 2  # dispatcher.domain.Role bits


def _under(code: str, target: str, levels: dict[str, str]) -> bool:
    digits = _PREFIX_DIGITS[levels[target]]
    return code[:digits] == target[:digits]


def expected_red_plan(api: Api, targets: list[str], *, cancel: bool = False) -> dict[str, Any]:
    """What config/policy.toml's red level must plan for ``targets``, as by_audience counts.

    Devices: every loudspeaker, transmitter and modem serving an area under a target, or an
    area a target lies under. SMS: everyone with a phone under a target (grid members as
    their own audience). Voice: grid members, village cadres, vulnerable people and people
    living alone. A Cancel goes to the devices only."""
    levels = dict(api.sql("SELECT code, level FROM areas"))
    plan: dict[str, dict[str, int]] = {}

    def add(audience: str, channel: str) -> None:
        plan.setdefault(audience, {}).setdefault(channel, 0)
        plan[audience][channel] += 1

    served: dict[str, tuple[str, set[str]]] = {}
    for device_id, kind, area in api.sql(
        "SELECT d.id, d.kind, da.area_code FROM devices d "
        "JOIN device_areas da ON da.device_id = d.id"
    ):
        served.setdefault(device_id, (kind, set()))[1].add(area)
    channel_of = {"loudspeaker": "speaker", "transmitter": "transmitter", "modem": "modem"}
    for kind, areas in served.values():
        if any(_under(a, t, levels) or _under(t, a, levels) for a in areas for t in targets):
            add("device", channel_of[kind])
    if cancel:
        return plan
    for phone, village, roles, vulnerable, alone in api.sql(
        "SELECT phone, village_code, roles, vulnerable, lives_alone FROM persons"
    ):
        if phone is None or not any(_under(village, t, levels) for t in targets):
            continue
        audience = "grid_member" if roles & _GRID_MEMBER else "person"
        add(audience, "sms")
        if roles & (_GRID_MEMBER | _CADRE) or vulnerable or alone:
            add(audience, "voice")
    return plan


def weekly_schedule(**changes: Any) -> dict[str, Any]:
    """A schedule's JSON body: the county's loudspeakers, Mondays 10:00 (Asia/Shanghai)."""
    body: dict[str, Any] = {
        "id": "weekly",
        "name": "每周一喇叭测试",
        "cron": "0 10 * * 1",
        "areas": [COUNTY],
        "rules": [{"audience": "devices", "device_kinds": ["loudspeaker"]}],
        "headline": "应急广播例行测试",
    }
    body.update(changes)
    return body


async def config_schedule(api: Api, **changes: Any) -> None:
    """The schedule ``weekly_schedule(**changes)`` as if from the config's [[schedules]] (the
    API cannot remove it)."""
    from dispatcher.api.deps import DEPS_KEY
    from dispatcher.schedules.spec import ScheduleSpec

    service = api.client.app[DEPS_KEY].schedules
    assert service is not None
    await service.sync_config([ScheduleSpec.model_validate(weekly_schedule(**changes))])


def total(by_audience: dict[str, dict[str, int]]) -> int:
    return sum(sum(channels.values()) for channels in by_audience.values())


# -- CAP messages --------------------------------------------------------------------------


def cap_alert(
    identifier: str,
    codes: list[str],
    *,
    msg_type: str = "Alert",
    references: str | None = None,
    level: str = "red",
    expires: str | None = None,
    status: str = "Exercise",
) -> bytes:
    """A CAP 1.2 message targeting ``codes`` (6 digits as GB2260, 12 as STATS_CODE)."""
    geocodes = "".join(
        f"<geocode><valueName>{'GB2260' if len(c) == 6 else 'STATS_CODE'}</valueName>"
        f"<value>{c}</value></geocode>"
        for c in codes
    )
    refs = f"<references>{references}</references>" if references else ""
    sent = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "-00:00")
    expires = expires or future().replace("+00:00", "-00:00")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>cap-desk@test.tocsin</sender>
  <sent>{sent}</sent>
  <status>{status}</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {refs}
  <info>
    <language>zh-CN</language>
    <category>Met</category>
    <event>暴雨</event>
    <urgency>Immediate</urgency>
    <severity>Extreme</severity>
    <certainty>Likely</certainty>
    <expires>{expires}</expires>
    <headline>暴雨预警</headline>
    <description>预计未来12小时内出现强降水。</description>
    <parameter><valueName>LEVEL</valueName><value>{level}</value></parameter>
    <area>
      <areaDesc>商州区</areaDesc>
      {geocodes}
    </area>
  </info>
</alert>
""".encode()


def cap_cancel(
    identifier: str, references: str, *, status: str = "Exercise", note: str = "解除预警"
) -> bytes:
    """A CAP 1.2 Cancel without <info>, as national release platforms send one."""
    sent = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "-00:00")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>cap-desk@test.tocsin</sender>
  <sent>{sent}</sent>
  <status>{status}</status>
  <msgType>Cancel</msgType>
  <scope>Public</scope>
  <note>{note}</note>
  <references>{references}</references>
</alert>
""".encode()

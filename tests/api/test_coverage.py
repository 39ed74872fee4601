"""Coverage over HTTP: who may read it, its counts and percentages, the unreached lists, a
warning's progress, and households confirmed door-to-door by their grid member through the
engine's intake (audited, idempotent, only for their own grids and the warning's areas)."""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from api.harness import (
    COUNTY,
    MAX_BODY,
    OTHER_COUNTY,
    ROOT,
    SENDER,
    TOKEN_NAMES,
    TOKENS,
    Api,
    red_warning,
)
from dispatcher.api.app import ApiDeps, create_app
from dispatcher.config import ApiRole, ApiToken, CapConfig, EngineConfig, hash_token, load_policy
from dispatcher.engine.engine import Engine
from dispatcher.planning_worker import PlanningWorker
from dispatcher.store.sqlite import SqliteStore
from dispatcher.warning_service import WarningService

STAFF = (ApiRole.DUTY_OFFICER, ApiRole.OPERATOR, ApiRole.INSTALLER, ApiRole.ADMIN)
GM_TOKEN = "token-for-a-grid-member-0123456789"
GM_NAME = "gm-desk"
#: A grid_member token without a person behind it (misconfigured).
NOBODY_TOKEN = "token-for-nobody-0123456789"
PHONE = re.compile(r"\+86\d{11}")


@dataclass
class Setup:
    api: Api
    #: The grid member behind GM_TOKEN, their grid and its village (in COUNTY).
    person_id: str
    grid_id: str
    village: str
    #: Households of that grid, and one of another grid of the same county.
    own: list[str]
    foreign: str

    async def as_gm(
        self, method: str, path: str, *, token: str = GM_TOKEN, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        async with self.api.client.request(method, path, headers=headers, **kwargs) as response:
            body = (
                await response.json()
                if response.content_type == "application/json"
                else await response.text()
            )
            return response.status, body

    async def confirm(self, warning_id: str, household: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.as_gm(
            "POST", f"/v1/warnings/{warning_id}/households/{household}/reached", **kwargs
        )

    async def warning(self, **changes: Any) -> str:
        status, body, _ = await self.api.post_warning(red_warning(**changes))
        assert status == 202, body
        await self.api.planner.wait_idle()
        return str(body["id"])

    async def coverage(self, warning_id: str, query: str = "") -> dict[str, Any]:
        status, body, _ = await self.api.call(
            "GET", f"/v1/warnings/{warning_id}/coverage{query}", role=ApiRole.OPERATOR
        )
        assert status == 200, body
        return body  # type: ignore[no-any-return]


def _pick(db: Path) -> tuple[str, str, str, list[str], str]:
    def api_sql(query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(db)
        try:
            return conn.execute(query, params).fetchall()
        finally:
            conn.close()

    person, grid, village = api_sql(
        "SELECT gm.person_id, g.id, g.village_code FROM grid_members gm "
        "JOIN grids g ON g.id = gm.grid_id WHERE g.village_code LIKE ? ORDER BY g.id LIMIT 1",
        (COUNTY[:6] + "%",),
    )[0]
    own = [
        h for (h,) in api_sql("SELECT id FROM households WHERE grid_id = ? ORDER BY id", (grid,))
    ]
    (foreign,) = api_sql(
        "SELECT h.id FROM households h JOIN grids g ON g.id = h.grid_id "
        "WHERE g.village_code LIKE ? AND h.grid_id NOT IN "
        "(SELECT grid_id FROM grid_members WHERE person_id = ?) ORDER BY h.id LIMIT 1",
        (COUNTY[:6] + "%", person),
    )[0]
    return person, grid, village, own, foreign


async def _setup(
    tmp_path: Path, city_db: Path, aiohttp_client: Callable[..., Any], *, engine: bool
) -> AsyncIterator[Setup]:
    db = tmp_path / "tocsin.db"
    shutil.copy(city_db, db)
    person, grid, village, own, foreign = _pick(db)
    store = await SqliteStore.open(db)
    policy = load_policy(ROOT / "config" / "policy.toml")
    planner = PlanningWorker(store, lambda: policy)
    await planner.start()
    # Only the engine's intake runs (no adapters, no sends): confirmations are applied by the
    # engine's own code, and nothing else changes the counts under the test.
    intake = Engine(store, config=EngineConfig(), policy=lambda: policy, adapters=()).intake
    if engine:
        intake.start()
    service = WarningService(store, CapConfig(sender=SENDER), on_created=planner.enqueue)
    tokens = [
        *(ApiToken(TOKEN_NAMES[role], role, SecretStr(hash_token(TOKENS[role]))) for role in STAFF),
        ApiToken(GM_NAME, ApiRole.GRID_MEMBER, SecretStr(hash_token(GM_TOKEN)), person),
        ApiToken("nobody", ApiRole.GRID_MEMBER, SecretStr(hash_token(NOBODY_TOKEN))),
    ]
    registry = CollectorRegistry()
    app = create_app(
        ApiDeps(
            store=store,
            warnings=service,
            tokens=lambda: tokens,
            max_body_bytes=MAX_BODY,
            ready=lambda: True,
            registry=registry,
            confirm_household=intake.submit_and_wait if engine else None,
        )
    )
    client = await aiohttp_client(app)
    api = Api(client, store, planner, db, registry)
    try:
        yield Setup(api, person, grid, village, own, foreign)
    finally:
        await planner.stop()
        if engine:
            await intake.stop()
        await store.close()


@pytest.fixture
async def setup(
    tmp_path: Path, city_db: Path, aiohttp_client: Callable[..., Any]
) -> AsyncIterator[Setup]:
    async for s in _setup(tmp_path, city_db, aiohttp_client, engine=True):
        yield s


@pytest.fixture
async def no_engine(
    tmp_path: Path, city_db: Path, aiohttp_client: Callable[..., Any]
) -> AsyncIterator[Setup]:
    async for s in _setup(tmp_path, city_db, aiohttp_client, engine=False):
        yield s


# -- who may do what -----------------------------------------------------------------------------


async def test_grid_members_cannot_read_coverage_and_staff_cannot_confirm(setup: Setup) -> None:
    wid = await setup.warning()
    for path in (f"/v1/warnings/{wid}/coverage", f"/v1/warnings/{wid}/unreached"):
        status, body = await setup.as_gm("GET", path)
        assert status == 403, body
        assert body["error"]["code"] == "forbidden"
        for role in STAFF:
            status, body, _ = await setup.api.call("GET", path, role=role)
            assert status == 200, (role, body)
    for role in STAFF:
        status, body, _ = await setup.api.call(
            "POST", f"/v1/warnings/{wid}/households/{setup.own[0]}/reached", role=role
        )
        assert status == 403, (role, body)
    assert (await setup.coverage(wid))["totals"]["households"]["reached"] == 0


async def test_a_token_without_a_person_cannot_confirm(setup: Setup) -> None:
    wid = await setup.warning()
    status, body = await setup.confirm(wid, setup.own[0], token=NOBODY_TOKEN)
    assert status == 403, body
    assert body["error"]["code"] == "no_person"


async def test_confirmations_need_the_engine(no_engine: Setup) -> None:
    wid = await no_engine.warning()
    status, body = await no_engine.confirm(wid, no_engine.own[0])
    assert status == 503, body
    assert body["error"]["code"] == "not_ready"


# -- confirming households -----------------------------------------------------------------------


async def test_a_grid_member_confirms_a_household_of_their_grid(setup: Setup) -> None:
    wid = await setup.warning()
    before = await setup.coverage(wid, f"?depth=village&under={setup.village}")
    village_row = before["areas"][0]
    assert village_row["code"] == setup.village
    households = village_row["households"]
    assert households["reached"] == 0 and households["total"] > len(setup.own) - 1

    status, body = await setup.confirm(wid, setup.own[0], json={"note": "敲门确认，已转移"})
    assert status == 200, body
    assert body == {
        "result": "applied",
        "reason": "",
        "warning_id": wid,
        "household_id": setup.own[0],
    }
    after = await setup.coverage(wid, f"?depth=village&under={setup.village}")
    assert after["totals"]["households"]["reached"] == 1
    row = after["areas"][0]["households"]
    assert row["reached"] == 1
    assert row["percent"] == round(100 * 1 / households["total"], 1)
    assert after["under"]["households"]["reached"] == 1
    # The warning's own record carries the totals too.
    status, detail, _ = await setup.api.call("GET", f"/v1/warnings/{wid}", role=ApiRole.OPERATOR)
    assert status == 200
    assert detail["coverage"]["households"]["reached"] == 1
    assert detail["coverage"]["households"]["total"] == after["totals"]["households"]["total"]
    # No longer on the unreached list of the village.
    status, page, _ = await setup.api.call(
        "GET",
        f"/v1/warnings/{wid}/unreached?kind=household&area={setup.village}&limit=1000",
        role=ApiRole.DUTY_OFFICER,
    )
    assert status == 200
    listed = {item["id"] for item in page["items"]}
    assert setup.own[0] not in listed and set(setup.own[1:]) <= listed

    # Again: idempotent.
    status, body = await setup.confirm(wid, setup.own[0])
    assert status == 200, body
    assert body["result"] == "duplicate"
    assert (await setup.coverage(wid))["totals"]["households"]["reached"] == 1

    # The audit log has both, with who, what and the result.
    status, audit, _ = await setup.api.call("GET", "/v1/audit", role=ApiRole.ADMIN)
    assert status == 200
    entries = [e for e in audit["entries"] if e["action"] == "household.reached"]
    assert [e["detail"]["result"] for e in entries] == ["duplicate", "applied"]
    newest = entries[-1]
    assert newest["principal"] == GM_NAME and newest["role"] == "grid_member"
    assert newest["target"] == f"{wid}/{setup.own[0]}"
    assert newest["detail"]["person_id"] == setup.person_id
    assert newest["detail"]["note"] == "敲门确认，已转移"
    # The delivery log says who visited.
    events = setup.api.sql(
        "SELECT adapter, target_id FROM delivery_events WHERE warning_id = ? "
        "AND state = 'household_reached'",
        (wid,),
    )
    assert events == [(f"api:{GM_NAME}", setup.own[0])]


async def test_refusals(setup: Setup) -> None:
    wid = await setup.warning()
    elsewhere = await setup.warning(area_codes=[OTHER_COUNTY])

    status, body = await setup.confirm(wid, setup.foreign)
    assert status == 403, body
    assert body["error"]["code"] == "not_your_grid"
    assert body["error"]["result"] == "rejected"

    status, body = await setup.confirm(elsewhere, setup.own[0])
    assert status == 422, body
    assert body["error"]["code"] == "outside_warning"
    assert body["error"]["result"] == "rejected"

    status, body = await setup.confirm(wid, "no-such-household")
    assert status == 404, body
    status, body = await setup.confirm("no-such-warning", setup.own[0])
    assert status == 404, body

    for coverage in (await setup.coverage(wid), await setup.coverage(elsewhere)):
        assert coverage["totals"]["households"]["reached"] == 0
    _, audit, _ = await setup.api.call("GET", "/v1/audit", role=ApiRole.ADMIN)
    results = [
        (e["detail"]["result"], e["detail"]["status"])
        for e in audit["entries"]
        if e["action"] == "household.reached"
    ]
    assert results == [("rejected", 404), ("rejected", 404), ("rejected", 422), ("rejected", 403)]


async def test_malformed_confirmations_change_nothing(setup: Setup) -> None:
    wid = await setup.warning()
    status, body = await setup.confirm(wid, setup.own[0], json={"note": "x" * 501})
    assert status == 422, body
    status, body = await setup.confirm(wid, setup.own[0], json={"note": "ok", "extra": 1})
    assert status == 422, body
    status, body = await setup.confirm(
        wid, setup.own[0], data=b"{", headers={"Content-Type": "application/json"}
    )
    assert status == 400, body
    status, body = await setup.confirm(
        wid, setup.own[0], data=b"note", headers={"Content-Type": "text/plain"}
    )
    assert status == 415, body
    assert (await setup.coverage(wid))["totals"]["households"]["reached"] == 0
    assert setup.api.sql("SELECT count(*) FROM audit_log WHERE action = 'household.reached'") == [
        (0,)
    ]


async def test_a_confirmation_after_expiry_is_late(setup: Setup) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    wid = await setup.warning(expires=expires)
    await asyncio.sleep(
        max(0.0, (datetime.fromisoformat(expires) - datetime.now(UTC)).total_seconds()) + 0.2
    )
    status, body = await setup.confirm(wid, setup.own[0])
    assert status == 200, body
    assert body["result"] == "late"
    coverage = await setup.coverage(wid)
    assert coverage["totals"]["households"]["reached"] == 0
    assert coverage["late"]["households"] == 1


# -- reading -------------------------------------------------------------------------------------


async def test_coverage_document(setup: Setup) -> None:
    wid = await setup.warning()
    expected_persons = setup.api.sql(
        "SELECT count(*) FROM persons WHERE village_code LIKE ?", (COUNTY[:6] + "%",)
    )[0][0]
    for depth, level in (("county", "county"), ("town", "town"), ("village", "village")):
        body = await setup.coverage(wid, f"?depth={depth}")
        assert body["depth"] == depth and body["planned"] is True
        assert {a["level"] for a in body["areas"]} == {level}
        assert body["totals"]["persons"] == {
            "total": expected_persons,
            "reached": 0,
            "percent": 0.0,
        }
        assert sum(a["persons"]["total"] for a in body["areas"]) == expected_persons
        assert body["late"] == {"villages": 0, "grid_members": 0, "households": 0, "persons": 0}
        datetime.fromisoformat(body["as_of"])
    default = await setup.coverage(wid)
    assert default["depth"] == "county" and [a["code"] for a in default["areas"]] == [COUNTY]
    # 6 digits are a county's GB2260 code.
    by_six = await setup.coverage(wid, f"?depth=village&under={COUNTY[:6]}")
    assert by_six["under"]["code"] == COUNTY

    for query, field in (
        ("?depth=province", "depth"),
        ("?under=12345", "under"),
        ("?under=999999000000", "under"),
    ):
        status, body, _ = await setup.api.call(
            "GET", f"/v1/warnings/{wid}/coverage{query}", role=ApiRole.OPERATOR
        )
        assert status == 400, (query, body)
        assert body["error"]["field"] == field
    status, body, _ = await setup.api.call("GET", "/v1/warnings/nope/coverage", role=ApiRole.ADMIN)
    assert status == 404


async def test_unreached_pages_and_masked_phones(setup: Setup) -> None:
    wid = await setup.warning()
    seen: list[str] = []
    after = None
    while True:
        query = f"?kind=person&area={setup.village}&limit=7" + (f"&after={after}" if after else "")
        status, page, _ = await setup.api.call(
            "GET", f"/v1/warnings/{wid}/unreached{query}", role=ApiRole.OPERATOR
        )
        assert status == 200, page
        assert page["kind"] == "person" and page["area"] == setup.village
        seen += [item["id"] for item in page["items"]]
        for item in page["items"]:
            assert item["village_code"] == setup.village
            assert item["phone_masked"] is None or "****" in item["phone_masked"]
        assert not PHONE.search(str(page)), "a full phone number in the list"
        after = page["next"]
        if after is None:
            break
    everyone = [
        p
        for (p,) in setup.api.sql(
            "SELECT id FROM persons WHERE village_code = ? ORDER BY id", (setup.village,)
        )
    ]
    assert seen == everyone
    # kind defaults to person.
    status, page, _ = await setup.api.call(
        "GET", f"/v1/warnings/{wid}/unreached?limit=3", role=ApiRole.OPERATOR
    )
    assert status == 200 and page["kind"] == "person" and len(page["items"]) == 3

    for query, field in (
        ("?kind=nobody", "kind"),
        ("?after=garbage", "after"),
        ("?area=abc", "area"),
        ("?area=999999000000", "area"),
        ("?limit=0", "limit"),
    ):
        status, body, _ = await setup.api.call(
            "GET", f"/v1/warnings/{wid}/unreached{query}", role=ApiRole.OPERATOR
        )
        assert status == 400, (query, body)
        assert body["error"]["field"] == field
    status, _, _ = await setup.api.call("GET", "/v1/warnings/nope/unreached", role=ApiRole.OPERATOR)
    assert status == 404


async def test_warning_progress(setup: Setup) -> None:
    wid = await setup.warning()
    status, detail, _ = await setup.api.call("GET", f"/v1/warnings/{wid}", role=ApiRole.OPERATOR)
    assert status == 200
    progress = detail["progress"]
    assert progress["total"] == sum(detail["delivery_counts"].values()) > 0
    assert progress["states"] == detail["delivery_counts"]
    assert (progress["terminal"], progress["complete"], progress["completed_at"]) == (
        0,
        False,
        None,
    )
    assert progress["percent_terminal"] == 0.0
    assert progress["plan_stage"] >= 1 and progress["planned_at"]
    # Existing fields are kept.
    assert detail["plan_status"] == "planned" and detail["id"] == wid

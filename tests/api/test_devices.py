"""GET /v1/devices and /v1/devices/{id} over the real app: devices of the small synthetic city
with the states their adapters reported (written straight through the store, as the engine's
book does), filters, pages, counts, unregistered addresses, roles and bad parameters."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from api.harness import COUNTY, OTHER_COUNTY, TOWN, VILLAGE, Api
from dispatcher.api.app import ApiDeps, create_app
from dispatcher.api.deps import DEPS_KEY
from dispatcher.config import ApiRole
from dispatcher.store.base import DeviceStatusRecord

PATH = "/v1/devices"
STAFF = (ApiRole.DUTY_OFFICER, ApiRole.OPERATOR, ApiRole.INSTALLER, ApiRole.ADMIN)


def record(
    adapter: str, address: str, *, online: bool = True, ago: float = 1.0, **detail: Any
) -> DeviceStatusRecord:
    now = time.time()
    return DeviceStatusRecord(
        adapter=adapter,
        address=address,
        online=online,
        last_seen=now - ago,
        detail_json=json.dumps(detail, ensure_ascii=False),
        updated_at=now,
    )


def speakers(api: Api, area: str = "") -> list[str]:
    rows = api.sql(
        "SELECT id FROM devices WHERE kind = 'loudspeaker' AND area_code LIKE ? ORDER BY id",
        (area.rstrip("0") + "%",),
    )
    return [r[0] for r in rows]


async def reported(api: Api) -> dict[str, str]:
    """Statuses for some speakers of the county: device id → the state expected."""
    ids = speakers(api, COUNTY)
    expected = {ids[0]: "online", ids[1]: "offline", ids[2]: "silent"}
    await api.store.record_device_status(
        [
            record("speakers", ids[0], firmware="2.1.0", volume=80, note="东村"),
            record("speakers", ids[1], online=False, ago=30),
            record("speakers", ids[2], ago=3600),  # an hour without a heartbeat: silent
        ]
    )
    return expected


async def get(api: Api, role: ApiRole = ApiRole.INSTALLER, **params: Any) -> dict[str, Any]:
    status, body, _ = await api.call("GET", PATH, role=role, params=params)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def test_every_device_with_its_state_and_the_counts(api: Api) -> None:
    expected = await reported(api)
    body = await get(api, limit=1000)
    total = api.sql("SELECT count(*) FROM devices")[0][0]
    assert len(body["devices"]) == total
    assert body["next"] is None
    ids = [d["id"] for d in body["devices"]]
    assert ids == sorted(ids)
    states = {d["id"]: d["state"] for d in body["devices"]}
    assert {i: states[i] for i in expected} == expected
    assert body["counts"] == {"online": 1, "offline": 1, "silent": 1, "unknown": total - 3}
    assert body["heartbeat_timeout"] == 300
    first = next(d for d in body["devices"] if d["id"] in expected and d["state"] == "online")
    assert first["detail"] == {"firmware": "2.1.0", "volume": 80, "note": "东村"}
    assert first["registered"] is True
    assert first["kind"] == "loudspeaker"
    assert first["adapter"] == "speakers"
    assert first["address"] == first["id"]
    assert first["areas"] == [first["area_code"]]
    seen = datetime.fromisoformat(first["last_seen"])
    assert seen.utcoffset() is not None
    assert abs(seen.timestamp() - time.time()) < 60
    never = next(d for d in body["devices"] if d["state"] == "unknown")
    assert (never["last_seen"], never["detail"]) == (None, {})


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"area": COUNTY}, f"area_code LIKE '{COUNTY[:6]}%'"),
        ({"area": COUNTY[:6]}, f"area_code LIKE '{COUNTY[:6]}%'"),  # GB2260 form
        ({"area": TOWN}, f"area_code LIKE '{TOWN[:9]}%'"),
        ({"area": VILLAGE}, f"area_code = '{VILLAGE}'"),
        ({"kind": "transmitter"}, "kind = 'transmitter'"),
        ({"adapter": "modems"}, "adapter = 'modems'"),
        ({"area": OTHER_COUNTY, "kind": "modem"}, "area_code LIKE '611021%' AND kind = 'modem'"),
    ],
)
async def test_filters_match_the_directory(api: Api, params: dict[str, str], where: str) -> None:
    await reported(api)
    body = await get(api, limit=1000, **params)
    expected = [r[0] for r in api.sql(f"SELECT id FROM devices WHERE {where} ORDER BY id")]
    assert expected
    assert [d["id"] for d in body["devices"]] == expected
    assert sum(body["counts"].values()) == len(expected)


async def test_state_filter_keeps_the_counts_of_every_state(api: Api) -> None:
    expected = await reported(api)
    for state in ("online", "offline", "silent"):
        body = await get(api, state=state, area=COUNTY)
        assert [d["id"] for d in body["devices"]] == [i for i, s in expected.items() if s == state]
        assert body["counts"]["online"] == body["counts"]["offline"] == 1
    unknown = await get(api, state="unknown", kind="loudspeaker", limit=1000)
    assert len(unknown["devices"]) == len(speakers(api)) - 3
    assert {d["state"] for d in unknown["devices"]} == {"unknown"}


async def test_pages_walk_every_device_once(api: Api) -> None:
    await reported(api)
    walked: list[str] = []
    params: dict[str, Any] = {"limit": 7}
    for _ in range(100):
        body = await get(api, **params)
        assert len(body["devices"]) <= 7
        walked += [d["id"] for d in body["devices"]]
        if body["next"] is None:
            break
        params["after"] = body["next"]
    assert walked == [r[0] for r in api.sql("SELECT id FROM devices ORDER BY id")]


async def test_unregistered_addresses(api: Api) -> None:
    await reported(api)
    await api.store.record_device_status(
        [
            record("speakers", "SPK-NOT-IN-DIRECTORY", firmware="1.0"),
            record("speakers", "SPK-OLD", online=False, ago=86400),
            # A directory device's address, but under an adapter it does not belong to.
            record("broker-2", speakers(api)[0]),
        ]
    )
    body = await get(api, unregistered="true")
    assert [(d["adapter"], d["address"], d["state"]) for d in body["devices"]] == [
        ("broker-2", speakers(api)[0], "online"),
        ("speakers", "SPK-NOT-IN-DIRECTORY", "online"),
        ("speakers", "SPK-OLD", "offline"),
    ]
    assert all(d["id"] is None and d["registered"] is False for d in body["devices"])
    assert body["counts"] == {"online": 2, "offline": 1, "silent": 0, "unknown": 0}
    only = await get(api, unregistered="true", adapter="speakers", limit=1)
    assert [d["address"] for d in only["devices"]] == ["SPK-NOT-IN-DIRECTORY"]
    after = await get(api, unregistered="true", adapter="speakers", after=only["next"])
    assert [d["address"] for d in after["devices"]] == ["SPK-OLD"]
    assert after["next"] is None


async def test_one_device(api: Api) -> None:
    expected = await reported(api)
    device_id = next(i for i, s in expected.items() if s == "offline")
    status, body, _ = await api.call("GET", f"{PATH}/{device_id}", role=ApiRole.OPERATOR)
    assert status == 200, body
    assert (body["id"], body["state"], body["kind"]) == (device_id, "offline", "loudspeaker")
    status, body, _ = await api.call("GET", f"{PATH}/SPK-NOPE", role=ApiRole.OPERATOR)
    assert (status, body["error"]["code"]) == (404, "not_found")


async def test_the_heartbeat_timeout_comes_from_the_deps(
    api: Api, aiohttp_client: Callable[..., Any]
) -> None:
    """A daemon with ``device_heartbeat_timeout = "1m"`` shows a speaker quiet for 90 s as
    silent; the default five minutes does not."""
    speaker = speakers(api, COUNTY)[0]
    await api.store.record_device_status([record("speakers", speaker, ago=90)])
    deps = api.client.app[DEPS_KEY]
    strict = await aiohttp_client(
        create_app(
            ApiDeps(
                store=deps.store,
                warnings=deps.warnings,
                tokens=deps.tokens,
                max_body_bytes=deps.max_body_bytes,
                ready=deps.ready,
                registry=CollectorRegistry(),
                device_heartbeat_timeout=60.0,
            )
        )
    )
    async with strict.get(f"{PATH}/{speaker}", headers=Api.auth(ApiRole.ADMIN)) as response:
        assert (await response.json())["state"] == "silent"
    async with strict.get(PATH, headers=Api.auth(ApiRole.ADMIN)) as response:
        assert (await response.json())["heartbeat_timeout"] == 60
    _, body, _ = await api.call("GET", f"{PATH}/{speaker}")
    assert body["state"] == "online"


@pytest.mark.parametrize("role", list(ApiRole))
async def test_staff_may_read_devices_and_grid_members_may_not(api: Api, role: ApiRole) -> None:
    for path in (PATH, f"{PATH}/SPK-NOPE"):
        status, body, _ = await api.call("GET", path, role=role)
        if role in STAFF:
            assert status in (200, 404), body
        else:
            assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body, _ = await api.call("GET", PATH, role=None)
    assert status == 401


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("state=broken", "state"),
        ("kind=siren", "kind"),
        ("area=61100", "area"),
        ("area=%E4%B8%80%E4%BA%8C", "area"),
        ("area=611099000000", "area"),  # well formed, but no such area
        ("unregistered=yes", "unregistered"),
        ("adapter=", "adapter"),
        (f"adapter={'a' * 101}", "adapter"),
        ("after=", "after"),
        ("unregistered=true&area=611002", "area"),
        ("unregistered=true&kind=modem", "kind"),
        ("unregistered=true&after=not-a-cursor", "after"),
    ],
)
async def test_bad_parameters_are_a_400_naming_them(api: Api, query: str, field: str) -> None:
    status, body, _ = await api.call("GET", f"{PATH}?{query}")
    assert status == 400, body
    assert body["error"]["code"] == "invalid_parameter"
    assert body["error"]["field"] == field


async def test_the_openapi_document_describes_devices(api: Api) -> None:
    status, document, _ = await api.call("GET", "/v1/openapi.json", role=None)
    assert status == 200
    listing = document["paths"][PATH]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert names == {"area", "kind", "adapter", "state", "unregistered", "limit", "after"}
    assert set(listing["responses"]) == {"200", "400", "401", "403"}
    schemas = document["components"]["schemas"]
    assert schemas["DeviceState"]["enum"] == ["online", "offline", "silent", "unknown"]
    assert document["paths"][f"{PATH}/{{id}}"]["get"]["operationId"] == "getDevice"

"""GET /v1/areas and /v1/areas/{code}: finding the codes to warn. Children, searches by name and
level, paging, one area with its path, and the counts beneath each area — checked against the
directory tables counted here without area_closure (walking parent links instead)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from api.harness import CITY, COUNTY, OTHER_COUNTY, TOWN, VILLAGE, Api
from dispatcher.config import ApiRole
from dispatcher.store.sql_store import AREA_COUNT_QUERIES

PROVINCE = "610000000000"
KINDS = ("loudspeaker", "modem", "transmitter")


async def get(api: Api, path: str, role: ApiRole = ApiRole.DUTY_OFFICER) -> tuple[int, Any]:
    status, body, _ = await api.call("GET", path, role=role)
    return status, body


async def areas(api: Api, **query: Any) -> list[dict[str, Any]]:
    status, body = await get(api, f"/v1/areas?{urlencode(query)}")
    assert status == 200, body
    assert body["next"] is None, "one page expected"
    return body["areas"]  # type: ignore[no-any-return]


def directory_areas(api: Api) -> dict[str, tuple[str, str, str | None]]:
    rows = api.sql("SELECT code, name, level, parent_code FROM areas")
    return {code: (name, level, parent) for code, name, level, parent in rows}


def expected_counts(api: Api) -> dict[str, dict[str, Any]]:
    """Counts beneath every area from the directory tables, by walking parent links (not
    area_closure) from where each row is: households by their own village_code column
    (the API goes through their grid), devices where they are installed."""
    tree = directory_areas(api)

    def up(code: str) -> list[str]:
        chain = []
        current: str | None = code
        while current is not None:
            chain.append(current)
            current = tree[current][2]
        return chain

    counts: dict[str, dict[str, Any]] = {
        code: {
            "villages": 0,
            "grids": 0,
            "households": 0,
            "persons": 0,
            "persons_with_phone": 0,
            "devices": dict.fromkeys(KINDS, 0),
        }
        for code in tree
    }

    def add(area: str, key: str, kind: str | None = None) -> None:
        for code in up(area):
            if kind is None:
                counts[code][key] += 1
            else:
                counts[code][key][kind] += 1

    for code, (_, level, _) in tree.items():
        if level == "village":
            add(code, "villages")
    for (village,) in api.sql("SELECT village_code FROM grids"):
        add(village, "grids")
    for (village,) in api.sql("SELECT village_code FROM households"):
        add(village, "households")
    for village, phone in api.sql("SELECT village_code, phone FROM persons"):
        add(village, "persons")
        if phone is not None:
            add(village, "persons_with_phone")
    for kind, area in api.sql("SELECT kind, area_code FROM devices"):
        add(area, "devices", kind)
    return counts


def ref(api: Api, code: str) -> dict[str, Any]:
    name, level, parent = directory_areas(api)[code]
    return {"code": code, "name": name, "level": level, "parent_code": parent}


# -- listing ---------------------------------------------------------------------------------


async def test_without_parent_the_top_areas(api: Api) -> None:
    listed = await areas(api)
    assert [a["code"] for a in listed] == [PROVINCE]
    assert listed[0]["parent_code"] is None


async def test_children_of_the_city_with_counts(api: Api) -> None:
    listed = await areas(api, parent=CITY)
    counts = expected_counts(api)
    assert [{k: v for k, v in a.items() if k != "counts"} for a in listed] == [
        ref(api, COUNTY),
        ref(api, OTHER_COUNTY),
    ]
    for area in listed:
        assert area["level"] == "county"
        assert area["counts"] == counts[area["code"]], area["code"]
    # The counties share the city out between them.
    city = counts[CITY]
    for key in ("villages", "grids", "households", "persons", "persons_with_phone"):
        assert sum(a["counts"][key] for a in listed) == city[key] > 0
    # Modems and transmitters are installed in towns, loudspeakers in villages: all beneath.
    assert all(min(a["counts"]["devices"].values()) > 0 for a in listed)


async def test_counts_of_every_area_match_the_directory(api: Api) -> None:
    counts = expected_counts(api)
    seen: dict[str, dict[str, Any]] = {}
    for level in ("province", "city", "county", "town", "village"):
        for area in await _all_pages(api, {"level": level, "limit": 5}):
            seen[area["code"]] = area["counts"]
    assert seen == counts
    village = counts[VILLAGE]
    assert village["villages"] == 1
    assert village["persons"] >= village["persons_with_phone"] > 0
    assert counts[PROVINCE]["persons"] == api.sql("SELECT count(*) FROM persons")[0][0]


async def _all_pages(api: Api, query: dict[str, Any]) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(100):
        page_query = {**query, **({"after": after} if after else {})}
        status, body = await get(api, f"/v1/areas?{urlencode(page_query)}")
        assert status == 200, body
        listed += body["areas"]
        after = body["next"]
        if after is None:
            return listed
        assert after == body["areas"][-1]["code"]
        assert len(body["areas"]) == query["limit"]
    raise AssertionError("paging did not end")


async def test_search_by_name_every_level(api: Api) -> None:
    tree = directory_areas(api)
    for text in ("金", "黄", "关村", "商洛"):
        listed = await areas(api, q=text)
        assert [a["code"] for a in listed] == sorted(
            code for code, (name, _, _) in tree.items() if text in name
        ), text
    levels = {a["level"] for a in await areas(api, q="黄")}
    assert levels == {"village", "town"}


async def test_search_under_a_parent(api: Api) -> None:
    tree = directory_areas(api)
    under_other = await areas(api, q="金", parent=OTHER_COUNTY)
    assert [a["code"] for a in under_other] == [
        code for code in sorted(tree) if "金" in tree[code][0] and code.startswith("611021")
    ]
    assert len(under_other) == 1
    # Beneath the parent only: the parent itself is not listed even when its name matches.
    county_name = tree[COUNTY][0]
    assert await areas(api, q=county_name, parent=COUNTY) == []
    assert [a["code"] for a in await areas(api, q=county_name)] == [COUNTY]
    # A 6-digit GB2260 code is a parent too.
    assert await areas(api, q="金", parent=OTHER_COUNTY[:6]) == under_other


async def test_name_search_is_literal(api: Api) -> None:
    # instr, not LIKE: '%' and '_' match only themselves.
    assert await areas(api, q="%") == []
    assert await areas(api, q="_") == []
    assert await areas(api, q="不存在的村") == []
    # A percent-encoded lone surrogate arrives as replacement characters: no match, no error.
    assert (await get(api, "/v1/areas?q=%ED%A0%80"))[1] == {"areas": [], "next": None}


async def test_level_filter(api: Api) -> None:
    tree = directory_areas(api)
    towns = await areas(api, level="town")
    assert [a["code"] for a in towns] == sorted(c for c, v in tree.items() if v[1] == "town")
    assert len(towns) == 4
    villages = await areas(api, level="village", parent=COUNTY)
    assert [a["code"] for a in villages] == sorted(
        c for c, v in tree.items() if v[1] == "village" and c.startswith(COUNTY[:6])
    )
    assert len(villages) == 6
    assert await areas(api, level="village", parent=TOWN, q="黄") == [
        {**ref(api, "611002101202"), "counts": expected_counts(api)["611002101202"]}
    ]
    assert await areas(api, level="province", parent=CITY) == []


async def test_paging_with_the_cursor(api: Api) -> None:
    tree = directory_areas(api)
    every_village = sorted(c for c, v in tree.items() if v[1] == "village")
    assert len(every_village) == 12
    pages = await _all_pages(api, {"level": "village", "limit": 5})
    assert [a["code"] for a in pages] == every_village
    # Children page the same way.
    children = await _all_pages(api, {"parent": TOWN, "limit": 1, "counts": "false"})
    assert [a["code"] for a in children] == sorted(c for c, v in tree.items() if v[2] == TOWN)
    # The last page of an exact multiple says there is nothing after it.
    status, body = await get(api, f"/v1/areas?parent={CITY}&limit=2")
    assert (status, body["next"]) == (200, None)
    status, body = await get(api, f"/v1/areas?parent={CITY}&limit=1")
    assert body["next"] == COUNTY
    status, body = await get(api, f"/v1/areas?parent={CITY}&limit=1&after={COUNTY}")
    assert [a["code"] for a in body["areas"]] == [OTHER_COUNTY]
    assert body["next"] is None
    # A cursor need not name an area: it is a position in code order.
    status, body = await get(api, "/v1/areas?level=village&after=611021101202")
    assert [a["code"] for a in body["areas"]] == [c for c in every_village if c > "611021101202"]


async def test_a_page_of_up_to_500(api: Api) -> None:
    status, body = await get(api, "/v1/areas?q=村&limit=500")
    assert status == 200
    assert len(body["areas"]) == 12
    assert body["next"] is None
    status, body = await get(api, "/v1/areas?q=村")  # the default, 100, holds them too
    assert (len(body["areas"]), body["next"]) == (12, None)


async def test_counts_can_be_left_out(api: Api) -> None:
    listed = await areas(api, parent=CITY, counts="false")
    assert listed == [ref(api, COUNTY), ref(api, OTHER_COUNTY)]
    with_counts = await areas(api, parent=CITY, counts="true")
    assert all("counts" in a for a in with_counts)


# -- one area -------------------------------------------------------------------------------


async def test_one_village_with_its_path_and_counts(api: Api) -> None:
    status, body = await get(api, f"/v1/areas/{VILLAGE}", role=ApiRole.INSTALLER)
    assert status == 200, body
    assert body == {
        **ref(api, VILLAGE),
        "ancestors": [ref(api, code) for code in (PROVINCE, CITY, COUNTY, TOWN)],
        "counts": expected_counts(api)[VILLAGE],
    }


async def test_the_top_area_has_no_ancestors(api: Api) -> None:
    status, body = await get(api, f"/v1/areas/{PROVINCE}")
    assert status == 200
    assert body["ancestors"] == []
    assert body["counts"] == expected_counts(api)[PROVINCE]


@pytest.mark.parametrize("given", ["611002", "611002000000", " 611002 "])
async def test_gb2260_codes_are_normalised(api: Api, given: str) -> None:
    status, body = await get(api, f"/v1/areas/{given.replace(' ', '%20')}")
    assert status == 200, body
    assert body["code"] == COUNTY
    assert [a["code"] for a in body["ancestors"]] == [PROVINCE, CITY]


@pytest.mark.parametrize("code", ["611099000000", "611099", "999999999999"])
async def test_unknown_area_is_404(api: Api, code: str) -> None:
    status, body = await get(api, f"/v1/areas/{code}")
    assert status == 404
    assert body["error"]["code"] == "not_found"
    assert code.ljust(12, "0") in body["error"]["message"]


@pytest.mark.parametrize(
    "code",
    [
        "abc",
        "61100",
        "6110021",
        "6110021012011",
        "61100210120x",
        "６１１００２",  # full-width digits
        "٦١١٠٠٢",  # Arabic-Indic digits
        "611002.000000",
        "x" * 300,
    ],
)
async def test_malformed_code_is_400(api: Api, code: str) -> None:
    status, body = await get(api, f"/v1/areas/{code}")
    assert status == 400, body
    assert body["error"]["code"] == "invalid_parameter"
    assert body["error"]["field"] == "code"
    assert "12-digit statistical code or a 6-digit GB2260 code" in body["error"]["message"]
    assert len(body["error"]["message"]) < 200


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("parent=abc", "parent"),
        ("parent=611099000000", "parent"),
        ("parent=", "parent"),
        ("after=61", "after"),
        ("level=hamlet", "level"),
        ("level=", "level"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("counts=yes", "counts"),
        ("counts=", "counts"),
        ("q=", "q"),
        ("q=" + "村" * 101, "q"),
    ],
)
async def test_bad_parameters_are_400(api: Api, query: str, field: str) -> None:
    status, body = await get(api, f"/v1/areas?{query}")
    assert status == 400, body
    assert body["error"]["code"] == "invalid_parameter"
    assert body["error"]["field"] == field
    if query == "parent=611099000000":
        assert body["error"]["message"] == "parent: no area 611099000000"


async def test_every_role_may_read_areas(api: Api) -> None:
    for role in ApiRole:
        assert (await get(api, "/v1/areas", role=role))[0] == 200
        assert (await get(api, f"/v1/areas/{COUNTY}", role=role))[0] == 200


# -- how the counts are found ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(AREA_COUNT_QUERIES))
def test_count_queries_use_indexes(api: Api, name: str) -> None:
    """Every table is reached by a SEARCH on an index, never a SCAN or an automatic index:
    the work is the size of the areas asked about, not of the directory."""
    codes = (CITY, COUNTY, TOWN, VILLAGE)
    sql = AREA_COUNT_QUERIES[name].format(codes=",".join("?" * len(codes)))
    steps = [row[3] for row in api.sql(f"EXPLAIN QUERY PLAN {sql}", codes)]
    tables = [s for s in steps if s.startswith(("SCAN", "SEARCH"))]
    assert tables, steps
    for step in tables:
        assert step.startswith("SEARCH"), steps
        assert "AUTOMATIC" not in step, steps
    if name == "persons_without_phone":
        assert any("persons_village_no_phone" in s for s in steps), steps
    if name == "devices":
        assert any("devices_area" in s for s in steps), steps

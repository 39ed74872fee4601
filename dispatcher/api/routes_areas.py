"""Finding the areas to warn: a page of areas (children of one, or a search by name and level)
and one area with the path down to it, each with what lies beneath it. Every role may read."""

from __future__ import annotations

import re

from aiohttp import web

from dispatcher.api.deps import DEPS_KEY
from dispatcher.api.errors import ApiError
from dispatcher.api.request_input import query_bool, query_enum, query_int, query_text
from dispatcher.api.responses import json_response
from dispatcher.api.routing import ANY_ROLE, Endpoint
from dispatcher.api.views import area_counts_view, area_view
from dispatcher.domain import AreaLevel
from dispatcher.store.base import AreaRow
from dispatcher.warning_input import normalise_area_code

#: What normalise_area_code accepts, in ASCII digits only (its \d also matches other scripts').
_CODE = re.compile(r"[0-9]{6}(?:[0-9]{6})?")
_MAX_NAME_QUERY = 100


def area_code_parameter(raw: str, name: str) -> str:
    """A 12-digit code, or a 6-digit GB2260 code made 12 digits as in warnings; else a 400."""
    if _CODE.fullmatch(raw.strip()):
        return normalise_area_code(raw)
    shown = raw if len(raw) <= 40 else raw[:40] + "…"
    raise ApiError(
        400,
        "invalid_parameter",
        f"{name}: {shown!r} is not an area code: use a 12-digit statistical code or a 6-digit "
        "GB2260 code (county and above)",
        field=name,
    )


async def list_areas(request: web.Request) -> web.Response:
    store = request.app[DEPS_KEY].store
    limit = query_int(request, "limit", default=100, low=1, high=500)
    level = query_enum(request, "level", AreaLevel)
    name = query_text(request, "q", max_length=_MAX_NAME_QUERY)
    with_counts = query_bool(request, "counts", default=True)
    raw_after = request.query.get("after")
    after = area_code_parameter(raw_after, "after") if raw_after is not None else None
    raw_parent = request.query.get("parent")
    parent = area_code_parameter(raw_parent, "parent") if raw_parent is not None else None
    if parent is not None and await store.unknown_area_codes([parent]):
        raise ApiError(400, "invalid_parameter", f"parent: no area {parent}", field="parent")

    if name is None and level is None:
        page = await store.child_areas(parent, after=after, limit=limit + 1)
    else:
        page = await store.search_areas(
            under=parent,
            name=name,
            level=level.value if level is not None else None,
            after=after,
            limit=limit + 1,
        )
    more = len(page) > limit
    page = page[:limit]
    items = [area_view(area) for area in page]
    if with_counts:
        counts = await store.area_counts([area.code for area in page])
        for item, area in zip(items, page, strict=True):
            item["counts"] = area_counts_view(counts[area.code])
    return json_response({"areas": items, "next": page[-1].code if more else None})


async def get_area(request: web.Request) -> web.Response:
    store = request.app[DEPS_KEY].store
    code = area_code_parameter(request.match_info["code"], "code")
    by_code = {area.code: area for area in await store.areas_with_ancestors([code])}
    if code not in by_code:
        raise ApiError(404, "not_found", f"no area {code}")
    area = by_code[code]
    ancestors: list[AreaRow] = []
    parent = area.parent_code
    while parent is not None and parent in by_code and len(ancestors) < len(by_code):
        ancestors.append(by_code[parent])
        parent = by_code[parent].parent_code
    counts = await store.area_counts([code])
    return json_response(
        {
            **area_view(area),
            "ancestors": [area_view(a) for a in reversed(ancestors)],
            "counts": area_counts_view(counts[code]),
        }
    )


ENDPOINTS = (
    Endpoint("GET", "/v1/areas", list_areas, "listAreas", ANY_ROLE),
    Endpoint("GET", "/v1/areas/{code}", get_area, "getArea", ANY_ROLE),
)

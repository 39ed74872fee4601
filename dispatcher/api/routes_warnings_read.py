"""Reading warnings: the list, one warning, its CAP form, its plan and its delivery events.
Every role may read."""

from __future__ import annotations

import enum

from aiohttp import web

from dispatcher.api.deps import DEPS_KEY
from dispatcher.api.errors import ApiError
from dispatcher.api.request_input import query_enum, query_int
from dispatcher.api.responses import json_response
from dispatcher.api.routes_coverage import progress_and_coverage
from dispatcher.api.routing import ANY_ROLE, Endpoint
from dispatcher.api.views import event_view, warning_detail, warning_summary
from dispatcher.cap import to_cap_xml
from dispatcher.domain import Status, WarningRecord, WarningState
from dispatcher.plan_view import build_plan_view
from dispatcher.store.base import Store

CAP_CONTENT_TYPE = "application/cap+xml"


class PlanStatus(enum.StrEnum):
    #: Deliveries are in the store.
    PLANNED = "planned"
    #: Accepted and queued for the planner (normally well under a second).
    PENDING = "pending"
    #: Superseded, cancelled or expired before it was planned: it never will be.
    NOT_PLANNED = "not_planned"


class PlanDepth(enum.StrEnum):
    COUNTY = "county"
    TOWN = "town"
    VILLAGE = "village"


async def _warning_or_404(store: Store, warning_id: str) -> WarningRecord:
    warning = await store.get_warning(warning_id)
    if warning is None:
        raise ApiError(404, "not_found", f"no warning {warning_id}")
    return warning


async def plan_status(store: Store, warning: WarningRecord) -> PlanStatus:
    if warning.state is WarningState.ACTIVE:
        unplanned = await store.unplanned_warning_ids()  # the planner's backlog: short
        return PlanStatus.PENDING if warning.id in unplanned else PlanStatus.PLANNED
    # A stopped warning: planning writes a whole-warning "planned" event, and before that a
    # warning has no deliveries and so no per-delivery events: the first few events tell.
    events = await store.warning_events(warning.id, limit=10)
    planned = any(e.state == "planned" and e.delivery_id is None for e in events)
    return PlanStatus.PLANNED if planned else PlanStatus.NOT_PLANNED


async def list_warnings(request: web.Request) -> web.Response:
    store = request.app[DEPS_KEY].store
    limit = query_int(request, "limit", default=50, low=1, high=500)
    status = query_enum(request, "status", Status)
    state = query_enum(request, "state", WarningState)
    before = request.query.get("before")
    if before is not None and (not before or await store.get_warning(before) is None):
        raise ApiError(
            400, "invalid_parameter", f"before: no warning {before} to page from", field="before"
        )
    page = await store.list_warnings(
        limit=limit + 1,
        before=before,
        status=status.value if status is not None else None,
        state=state,
    )
    more = len(page) > limit
    page = page[:limit]
    return json_response(
        {
            "warnings": [warning_summary(w) for w in page],
            "next": page[-1].id if more else None,
        }
    )


async def get_warning(request: web.Request) -> web.Response:
    store = request.app[DEPS_KEY].store
    warning = await _warning_or_404(store, request.match_info["id"])
    status = await plan_status(store, warning)
    counts = await store.delivery_state_counts(warning.id)
    detail = warning_detail(warning, plan_status=status.value, delivery_counts=counts)
    return json_response({**detail, **await progress_and_coverage(store, warning.id)})


async def get_warning_cap(request: web.Request) -> web.Response:
    warning = await _warning_or_404(request.app[DEPS_KEY].store, request.match_info["id"])
    return web.Response(body=to_cap_xml(warning), content_type=CAP_CONTENT_TYPE, charset="utf-8")


async def get_warning_plan(request: web.Request) -> web.Response:
    store = request.app[DEPS_KEY].store
    depth = query_enum(request, "depth", PlanDepth) or PlanDepth.VILLAGE
    warning = await _warning_or_404(store, request.match_info["id"])
    status = await plan_status(store, warning)
    counts = await store.plan_counts(warning.id) if status is PlanStatus.PLANNED else []
    areas = await store.areas_with_ancestors(sorted({row.area_code for row in counts}))
    view = build_plan_view(counts, areas, deepest=depth.value)
    body = {
        "warning_id": warning.id,
        "planned": status is PlanStatus.PLANNED,
        "plan_status": status.value,
        "depth": depth.value,
        **view,
    }
    # While pending, tell pollers when to look again rather than making them guess.
    headers = {"Retry-After": "1"} if status is PlanStatus.PENDING else None
    return json_response(body, headers=headers)


async def get_warning_events(request: web.Request) -> web.Response:
    store = request.app[DEPS_KEY].store
    after = query_int(request, "after", default=0, low=0, high=2**62)
    limit = query_int(request, "limit", default=100, low=1, high=1000)
    warning = await _warning_or_404(store, request.match_info["id"])
    events = await store.warning_events(warning.id, after_id=after, limit=limit)
    return json_response(
        {
            "warning_id": warning.id,
            "events": [event_view(e) for e in events],
            "last_id": events[-1].id if events else after,
            "more": len(events) == limit,
        }
    )


ENDPOINTS = (
    Endpoint("GET", "/v1/warnings", list_warnings, "listWarnings", ANY_ROLE),
    Endpoint("GET", "/v1/warnings/{id}", get_warning, "getWarning", ANY_ROLE),
    Endpoint("GET", "/v1/warnings/{id}/cap", get_warning_cap, "getWarningCap", ANY_ROLE),
    Endpoint("GET", "/v1/warnings/{id}/plan", get_warning_plan, "getWarningPlan", ANY_ROLE),
    Endpoint("GET", "/v1/warnings/{id}/events", get_warning_events, "getWarningEvents", ANY_ROLE),
)

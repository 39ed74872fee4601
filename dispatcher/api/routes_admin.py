"""The audit log (admins) and the directory summary (every role)."""

from __future__ import annotations

from aiohttp import web

from dispatcher.api.deps import DEPS_KEY
from dispatcher.api.request_input import query_int
from dispatcher.api.responses import json_response
from dispatcher.api.routing import ADMIN_ONLY, ANY_ROLE, Endpoint
from dispatcher.api.views import audit_view


async def list_audit(request: web.Request) -> web.Response:
    store = request.app[DEPS_KEY].store
    limit = query_int(request, "limit", default=50, low=1, high=500)
    before = (
        query_int(request, "before", default=0, low=1, high=2**62)
        if "before" in request.query
        else None
    )
    entries = await store.list_audit(limit=limit + 1, before_id=before)
    more = len(entries) > limit
    entries = entries[:limit]
    return json_response(
        {
            "entries": [audit_view(e) for e in entries],
            "next": entries[-1].id if more else None,
        }
    )


async def directory_summary(request: web.Request) -> web.Response:
    counts = await request.app[DEPS_KEY].store.directory_counts()
    return json_response({"counts": counts})


ENDPOINTS = (
    Endpoint("GET", "/v1/audit", list_audit, "listAudit", ADMIN_ONLY),
    Endpoint("GET", "/v1/directory/summary", directory_summary, "getDirectorySummary", ANY_ROLE),
)

"""Operations endpoints: liveness, readiness, Prometheus metrics and the OpenAPI document
(without a token), and the adapter instances' and the nodes' state (staff roles). /metrics
carries counts only (no warning text, no tokens); bind the server to loopback or a management
network, or put it behind a proxy, where that is not acceptable."""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dispatcher.api.deps import DEPS_KEY
from dispatcher.api.errors import ApiError
from dispatcher.api.openapi import OPENAPI_KEY
from dispatcher.api.responses import json_response
from dispatcher.api.routing import STAFF_ROLES, Endpoint
from dispatcher.nodes import nodes_view

log = structlog.get_logger(__name__)

_PING_TIMEOUT = 2.0


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    try:
        ready = deps.ready()
        if ready:
            await asyncio.wait_for(deps.store.ping(), _PING_TIMEOUT)
    except Exception:
        log.warning("readiness check failed", exc_info=True)
        ready = False
    if not ready:
        raise ApiError(
            503,
            "not_ready",
            "not ready: the store is not answering or the planner is not running",
            headers={"Retry-After": "1"},
        )
    return json_response({"status": "ready"})


async def list_adapters(request: web.Request) -> web.Response:
    status = request.app[DEPS_KEY].adapters
    return json_response({"adapters": status() if status is not None else []})


async def list_nodes(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    if deps.nodes is not None:
        return json_response(await deps.nodes())
    # The API without a node of its own (an embedding, a test): what the store records.
    rows = await deps.store.list_nodes()
    return json_response(
        nodes_view(rows, now=time.time(), dead_after=30.0, leader=None, this_node=None)
    )


async def metrics(request: web.Request) -> web.Response:
    payload = generate_latest(request.app[DEPS_KEY].registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_document(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI_KEY])


ENDPOINTS = (
    Endpoint("GET", "/healthz", healthz, "healthz", None),
    Endpoint("GET", "/readyz", readyz, "readyz", None),
    Endpoint("GET", "/metrics", metrics, "metrics", None),
    Endpoint("GET", "/v1/openapi.json", openapi_document, "getOpenApi", None),
    Endpoint("GET", "/v1/adapters", list_adapters, "listAdapters", STAFF_ROLES),
    Endpoint("GET", "/v1/nodes", list_nodes, "listNodes", STAFF_ROLES),
)

"""The aiohttp application of the HTTP API: ``create_app(ApiDeps(...))``.

Middlewares, outermost first: metrics (every answer is counted, errors included), errors (every
failure becomes the JSON error shape), auth (bearer token and role, from the route table)."""

from __future__ import annotations

from aiohttp import web

from dispatcher.adapter import webhook_path
from dispatcher.api import (
    routes_admin,
    routes_areas,
    routes_coverage,
    routes_devices,
    routes_log,
    routes_ops,
    routes_reports,
    routes_schedules,
    routes_warnings_read,
    routes_warnings_write,
)
from dispatcher.api.auth import auth_middleware
from dispatcher.api.deps import DEPS_KEY, ApiDeps
from dispatcher.api.errors import error_middleware
from dispatcher.api.metrics import METRICS_KEY, ApiMetrics, metrics_middleware
from dispatcher.api.openapi import OPENAPI_KEY, build_openapi
from dispatcher.api.routing import ENDPOINTS_KEY, Endpoint

__all__ = ["ENDPOINTS", "ApiDeps", "create_app"]

ENDPOINTS: tuple[Endpoint, ...] = (
    *routes_warnings_write.ENDPOINTS,
    *routes_warnings_read.ENDPOINTS,
    *routes_coverage.ENDPOINTS,
    *routes_reports.ENDPOINTS,
    *routes_admin.ENDPOINTS,
    *routes_areas.ENDPOINTS,
    *routes_devices.ENDPOINTS,
    *routes_log.ENDPOINTS,
    *routes_schedules.ENDPOINTS,
    *routes_ops.ENDPOINTS,
)


def create_app(deps: ApiDeps) -> web.Application:
    """The API application. Its metrics are registered in ``deps.registry`` (so give each app
    its own registry)."""
    app = web.Application(
        # aiohttp stops reading a body past this size; the handlers turn that into a JSON 413.
        client_max_size=deps.max_body_bytes,
        middlewares=[metrics_middleware, error_middleware, auth_middleware],
    )
    app[DEPS_KEY] = deps
    app[METRICS_KEY] = ApiMetrics(deps.registry)
    app[ENDPOINTS_KEY] = {endpoint.name: endpoint for endpoint in ENDPOINTS}
    app[OPENAPI_KEY] = build_openapi(ENDPOINTS)
    routes_log.install(app)
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, endpoint.path, endpoint.handler, name=endpoint.name)
    for adapter_name, hook in deps.webhooks:
        # Not in the endpoint table: no token (the provider signs its requests), and not in
        # the OpenAPI document (a provider's contract, not Tocsin's).
        app.router.add_route(
            hook.method,
            webhook_path(adapter_name, hook.path),
            hook.handler,
            name=f"webhook:{adapter_name}:{hook.path}",
        )
    return app

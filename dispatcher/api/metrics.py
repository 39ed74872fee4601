"""Prometheus metrics of the HTTP API, registered in the registry the daemon gives the app."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dispatcher.domain import WarningRecord

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tocsin_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "tocsin_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "tocsin_http_requests_in_flight", "HTTP requests being answered", registry=registry
        )
        self.errors = Counter(
            "tocsin_api_errors",
            "Error responses by their stable error code",
            ["code"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "tocsin_api_auth_failures",
            "Requests refused for a missing or invalid token, or a role not allowed",
            ["reason"],
            registry=registry,
        )
        self.warnings_accepted = Counter(
            "tocsin_warnings_accepted",
            "Warnings accepted over HTTP (idempotent replays not counted)",
            ["status", "level", "msg_type"],
            registry=registry,
        )

    def accepted(self, warning: WarningRecord) -> None:
        self.warnings_accepted.labels(
            status=warning.status.value,
            level=warning.level.value,
            msg_type=warning.msg_type.value,
        ).inc()


METRICS_KEY = web.AppKey("tocsin_api_metrics", ApiMetrics)


def route_label(request: web.Request) -> str:
    # The route template, never the raw path: ids in paths would explode the label set.
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS_KEY]
    started = time.perf_counter()
    status = 500
    metrics.in_flight.inc()
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    finally:
        metrics.in_flight.dec()
        route = route_label(request)
        metrics.requests.labels(method=request.method, route=route, status=str(status)).inc()
        metrics.latency.labels(method=request.method, route=route).observe(
            time.perf_counter() - started
        )

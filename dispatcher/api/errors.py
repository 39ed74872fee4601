"""The API's one error shape, ``{"error": {"code", "message", "field"?}}``, and the middleware
that turns every failure — ours, aiohttp's (404, 405, 413) and unexpected ones — into it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from dispatcher.api.deps import PRINCIPAL_KEY
from dispatcher.api.metrics import METRICS_KEY, route_label
from dispatcher.api.responses import json_response
from dispatcher.store.connections import StoreUnavailable
from dispatcher.warning_service import WarningRejected

log = structlog.get_logger(__name__)

# aiohttp raises these itself (routing, client_max_size); each gets a stable code.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "not_ready",
}
# Headers of aiohttp's own error responses worth keeping (405 lists the allowed methods).
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


class ApiError(Exception):
    """A request the API refuses; ``status`` is the HTTP status, ``code`` a stable name."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def error_body(
    code: str, message: str, field: str | None = None, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    error.update(extra or {})
    return {"error": error}


def error_response(error: ApiError) -> web.Response:
    return json_response(
        error_body(error.code, error.message, error.field, error.extra),
        status=error.status,
        headers=error.headers,
    )


def from_rejection(rejected: WarningRejected) -> ApiError:
    return ApiError(rejected.http_status, rejected.code, rejected.message, field=rejected.field)


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    headers = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
    if exc.status == 404:
        message = "no such endpoint; see /v1/openapi.json"
    elif exc.status == 405:
        message = f"method not allowed here; allowed: {headers.get('Allow', 'none')}"
    elif exc.status == 413:
        message = "the request body is larger than the server accepts"
    else:
        message = exc.reason
    code = _HTTP_CODES.get(exc.status, "bad_request" if exc.status < 500 else "internal_error")
    return ApiError(exc.status, code, message, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        error = exc
    except WarningRejected as exc:
        error = from_rejection(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects are not errors
        error = _from_http_exception(exc)
    except asyncio.CancelledError:
        raise
    except StoreUnavailable as exc:
        # The database is away (a restart, a failover): ask to retry (with the same
        # Idempotency-Key, a warning whose COMMIT was lost on the way is not made twice).
        log.warning("store unavailable", route=route_label(request), error=str(exc))
        error = ApiError(
            503,
            "store_unavailable",
            "the database cannot be reached now; retry shortly (with the same Idempotency-Key)",
            headers={"Retry-After": "2"},
        )
    except Exception:
        # The traceback goes to the log only; the client learns nothing about the internals.
        principal = request.get(PRINCIPAL_KEY)
        log.exception(
            "unhandled error",
            method=request.method,
            route=route_label(request),
            warning_id=request.match_info.get("id"),
            principal=principal.name if principal is not None else None,
        )
        error = ApiError(500, "internal_error", "internal error; the incident has been logged")
    request.app[METRICS_KEY].errors.labels(code=error.code).inc()
    return error_response(error)

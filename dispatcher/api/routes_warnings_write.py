"""Posting warnings (JSON or CAP 1.2), updating and cancelling them. Duty officers and admins.

Every accepted request answers 202 with the new message's summary and its Location; the plan is
made in the background. A repeated Idempotency-Key with the same request answers 202 again with
the warning first created (header ``Idempotent-Replayed: true``), creating nothing."""

from __future__ import annotations

import structlog
from aiohttp import web

from dispatcher.api.deps import DEPS_KEY, PRINCIPAL_KEY
from dispatcher.api.errors import ApiError
from dispatcher.api.metrics import METRICS_KEY
from dispatcher.api.request_input import (
    BodyKind,
    body_kind,
    idempotency_claim,
    parse_cap_body,
    parse_json_model,
    read_body,
)
from dispatcher.api.responses import json_response
from dispatcher.api.routing import WARNING_WRITERS, Endpoint
from dispatcher.api.views import warning_path, warning_summary
from dispatcher.warning_input import CancelRequest, WarningChange, WarningInput
from dispatcher.warning_service import Submission

log = structlog.get_logger(__name__)

REPLAYED_HEADER = "Idempotent-Replayed"


def _body_required(what: str) -> ApiError:
    return ApiError(400, "body_required", f"the request needs a body: {what}")


def _accepted(
    request: web.Request, submission: Submission, ignored: tuple[str, ...] = ()
) -> web.Response:
    warning = submission.warning
    headers = {"Location": warning_path(warning.id)}
    if submission.created:
        request.app[METRICS_KEY].accepted(warning)
    else:
        headers[REPLAYED_HEADER] = "true"
        log.info("idempotent replay", warning_id=warning.id)
    body = warning_summary(warning)
    if ignored:
        body["ignored"] = list(ignored)
    return json_response(body, status=202, headers=headers)


async def post_warning(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    principal = request[PRINCIPAL_KEY]
    kind = body_kind(request, accept_cap=True)
    if kind is BodyKind.EMPTY:
        raise _body_required("a warning as JSON or as a CAP 1.2 message")
    body = await read_body(request, deps.max_body_bytes)
    claim = idempotency_claim(request, principal, body)
    ignored: tuple[str, ...] = ()
    if kind is BodyKind.CAP:
        parsed = await parse_cap_body(body)
        data, ignored = parsed.warning, parsed.ignored
    else:
        data = parse_json_model(body, WarningInput)
    # What the CAP parser read past is answered and kept in the audit entry.
    submission = await deps.warnings.submit(
        data, principal=principal, idempotency=claim, notes=ignored
    )
    return _accepted(request, submission, ignored)


async def update_warning(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    principal = request[PRINCIPAL_KEY]
    warning_id = request.match_info["id"]
    with structlog.contextvars.bound_contextvars(warning_id=warning_id):
        if body_kind(request, accept_cap=False) is BodyKind.EMPTY:
            raise _body_required('the fields that change, as JSON (e.g. {"level": "red"})')
        body = await read_body(request, deps.max_body_bytes)
        claim = idempotency_claim(request, principal, body)
        change = parse_json_model(body, WarningChange)
        submission = await deps.warnings.update(
            warning_id, change, principal=principal, idempotency=claim
        )
        return _accepted(request, submission)


async def cancel_warning(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    principal = request[PRINCIPAL_KEY]
    warning_id = request.match_info["id"]
    with structlog.contextvars.bound_contextvars(warning_id=warning_id):
        kind = body_kind(request, accept_cap=False)
        body = await read_body(request, deps.max_body_bytes)
        claim = idempotency_claim(request, principal, body)
        cancel = (
            CancelRequest() if kind is BodyKind.EMPTY else parse_json_model(body, CancelRequest)
        )
        submission = await deps.warnings.cancel(
            warning_id, cancel, principal=principal, idempotency=claim
        )
        return _accepted(request, submission)


ENDPOINTS = (
    Endpoint("POST", "/v1/warnings", post_warning, "postWarning", WARNING_WRITERS),
    Endpoint("POST", "/v1/warnings/{id}/update", update_warning, "updateWarning", WARNING_WRITERS),
    Endpoint("POST", "/v1/warnings/{id}/cancel", cancel_warning, "cancelWarning", WARNING_WRITERS),
)

"""A warning's coverage: counts and percentages per area (as JSON, CSV or a printable summary)
and the lists of those not yet reached (staff), and households marked reached door-to-door by
their grid member (grid members only).

A confirmation is checked here first (the token's person must be a grid member of the
household's grid, and the household in the warning's areas), so each refusal gets its own
status; the engine's intake checks again when it applies it, and its answer is the one given.
Every confirmation that gets that far is written to the audit log, refused or not."""

from __future__ import annotations

import time
from typing import Annotated, Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, StringConstraints

from dispatcher.api.deps import DEPS_KEY, PRINCIPAL_KEY
from dispatcher.api.errors import ApiError
from dispatcher.api.report_responses import (
    COVERAGE_FORMATS,
    csv_response,
    report_format,
    text_response,
)
from dispatcher.api.request_input import (
    BodyKind,
    body_kind,
    parse_json_model,
    query_bool,
    query_enum,
    query_int,
    query_text,
    read_body,
)
from dispatcher.api.responses import json_response
from dispatcher.api.routes_areas import area_code_parameter
from dispatcher.api.routing import STAFF_ROLES, Endpoint
from dispatcher.api.views import warning_summary
from dispatcher.config import ApiRole
from dispatcher.coverage_view import (
    coverage_totals_view,
    coverage_view,
    progress_view,
    unreached_view,
)
from dispatcher.engine.types import AckResult, HouseholdConfirmation
from dispatcher.reports.coverage_report import (
    COVERAGE_CSV_COLUMNS,
    coverage_csv_rows,
    format_coverage_summary,
)
from dispatcher.store.base import CoverageKind, InvalidCursor, Store
from dispatcher.warning_service import Principal

log = structlog.get_logger(__name__)

#: Who may read coverage and the unreached lists: everyone but grid members.
COVERAGE_READERS: frozenset[ApiRole] = STAFF_ROLES
#: Who may mark households reached: grid members, for the grids they serve.
HOUSEHOLD_CONFIRMERS: frozenset[ApiRole] = frozenset({ApiRole.GRID_MEMBER})

DEFAULT_DEPTH = "county"
DEPTHS = ("county", "town", "village")
DEFAULT_UNREACHED_PAGE = 100
MAX_UNREACHED_PAGE = 1000
MAX_CURSOR_LENGTH = 220
MAX_NOTE = 500
AUDIT_ACTION = "household.reached"


class HouseholdReached(BaseModel):
    """The optional body of a confirmation: a note for the audit log."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    note: Annotated[str, StringConstraints(max_length=MAX_NOTE)] = ""


async def known_area_parameter(store: Store, request: web.Request, name: str) -> str | None:
    """The area code in query parameter ``name`` (12 digits, or 6 for GB2260), made 12 digits;
    400 when it is malformed or no area has it."""
    raw = request.query.get(name)
    if raw is None:
        return None
    code = area_code_parameter(raw, name)
    if await store.unknown_area_codes([code]):
        raise ApiError(400, "invalid_parameter", f"{name}: no area {code}", field=name)
    return code


def _depth(request: web.Request) -> str:
    raw = request.query.get("depth")
    if raw is None:
        return DEFAULT_DEPTH
    if raw not in DEPTHS:
        raise ApiError(
            400, "invalid_parameter", f"depth must be one of {', '.join(DEPTHS)}", field="depth"
        )
    return raw


def no_warning(warning_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no warning {warning_id}")


async def progress_and_coverage(store: Store, warning_id: str) -> dict[str, Any]:
    """What GET /v1/warnings/{id} adds to the record: ``progress`` and ``coverage`` totals."""
    progress = await store.progress(warning_id)
    coverage = await store.coverage(warning_id, depth=None)
    if progress is None or coverage is None:
        raise no_warning(warning_id)
    return {"progress": progress_view(progress), "coverage": coverage_totals_view(coverage)}


async def get_coverage(request: web.Request) -> web.Response:
    store = request.app[DEPS_KEY].store
    depth = _depth(request)
    under = await known_area_parameter(store, request, "under")
    tree = query_bool(request, "tree", default=False)
    shape = report_format(request, COVERAGE_FORMATS)
    warning_id = request.match_info["id"]
    coverage = await store.coverage(warning_id, depth=depth, under=under, tree=tree)
    if coverage is None:
        raise no_warning(warning_id)
    view = coverage_view(coverage)
    if shape == "csv":
        return csv_response(
            COVERAGE_CSV_COLUMNS, coverage_csv_rows(view), f"tocsin-coverage-{warning_id[:8]}"
        )
    if shape == "text":
        warning = await store.get_warning(warning_id)
        if warning is None:
            raise no_warning(warning_id)
        names = {a.code: a.name for a in await store.areas_with_ancestors(warning.area_codes)}
        summary = format_coverage_summary(warning_summary(warning), view, area_names=names)
        return text_response(summary)
    return json_response(view)


async def get_unreached(request: web.Request) -> web.Response:
    store = request.app[DEPS_KEY].store
    kind = query_enum(request, "kind", CoverageKind) or CoverageKind.PERSON
    area = await known_area_parameter(store, request, "area")
    after = query_text(request, "after", max_length=MAX_CURSOR_LENGTH)
    limit = query_int(
        request, "limit", default=DEFAULT_UNREACHED_PAGE, low=1, high=MAX_UNREACHED_PAGE
    )
    warning_id = request.match_info["id"]
    try:
        page = await store.unreached(warning_id, kind, area=area, after=after, limit=limit)
    except InvalidCursor as exc:
        raise ApiError(400, "invalid_parameter", f"after: {exc}", field="after") from None
    if page is None:
        raise no_warning(warning_id)
    return json_response(unreached_view(warning_id, kind, area, page))


async def confirm_household_reached(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    principal = request[PRINCIPAL_KEY]
    warning_id = request.match_info["id"]
    household_id = request.match_info["household_id"]
    kind = body_kind(request, accept_cap=False)
    body = await read_body(request, deps.max_body_bytes)
    note = "" if kind is BodyKind.EMPTY else parse_json_model(body, HouseholdReached).note
    person_id = principal.person_id
    if person_id is None:
        raise ApiError(
            403,
            "no_person",
            f"token {principal.name} names no person: a grid_member token needs a person_id "
            "in the config",
        )
    if deps.confirm_household is None:
        raise ApiError(
            503, "not_ready", "household confirmations need the engine, which is not running"
        )
    with structlog.contextvars.bound_contextvars(warning_id=warning_id, household_id=household_id):
        check = await deps.store.check_household_confirmation(warning_id, household_id, person_id)
        refusal: ApiError | None = None
        if not check.warning_known:
            refusal = no_warning(warning_id)
        elif not check.household_known:
            refusal = ApiError(404, "not_found", f"no household {household_id}")
        elif not check.member:
            refusal = ApiError(
                403,
                "not_your_grid",
                f"{person_id} is not a grid member of household {household_id}'s grid",
                extra={"result": AckResult.REJECTED.value},
            )
        elif not check.covered:
            refusal = ApiError(
                422,
                "outside_warning",
                f"household {household_id} is outside the warning's areas",
                extra={"result": AckResult.REJECTED.value},
            )
        if refusal is not None:
            await _audit(deps.store, principal, warning_id, household_id, note, "rejected", refusal)
            raise refusal
        outcome = await deps.confirm_household(
            HouseholdConfirmation(
                warning_id=warning_id,
                household_id=household_id,
                person_id=person_id,
                source=f"api:{principal.name}",
                received_at=time.time(),
            )
        )
        if outcome.result is AckResult.REJECTED:
            # The directory or the warning changed between the check and the intake.
            refusal = ApiError(
                409,
                "conflict",
                f"the confirmation was refused: {outcome.reason}",
                extra={"result": outcome.result.value},
            )
        await _audit(
            deps.store,
            principal,
            warning_id,
            household_id,
            note,
            outcome.result.value,
            refusal,
            reason=outcome.reason,
        )
        if refusal is not None:
            raise refusal
        log.info("household reached", result=outcome.result.value, person_id=person_id)
        body_out: dict[str, Any] = {
            "result": outcome.result.value,
            "reason": outcome.reason,
            "warning_id": warning_id,
            "household_id": household_id,
        }
        return json_response(body_out)


async def _audit(
    store: Store,
    principal: Principal,
    warning_id: str,
    household_id: str,
    note: str,
    result: str,
    refusal: ApiError | None,
    *,
    reason: str = "",
) -> None:
    detail: dict[str, Any] = {
        "warning_id": warning_id,
        "household_id": household_id,
        "person_id": principal.person_id,
        "result": result,
    }
    if refusal is not None:
        detail["reason"] = refusal.message
        detail["status"] = refusal.status
    elif reason:
        detail["reason"] = reason
    if note:
        detail["note"] = note
    await store.append_audit(
        principal=principal.name,
        role=principal.role.value,
        action=AUDIT_ACTION,
        target=f"{warning_id}/{household_id}",
        detail=detail,
    )


ENDPOINTS = (
    Endpoint("GET", "/v1/warnings/{id}/coverage", get_coverage, "getCoverage", COVERAGE_READERS),
    Endpoint(
        "GET", "/v1/warnings/{id}/unreached", get_unreached, "listUnreached", COVERAGE_READERS
    ),
    Endpoint(
        "POST",
        "/v1/warnings/{id}/households/{household_id}/reached",
        confirm_household_reached,
        "confirmHouseholdReached",
        HOUSEHOLD_CONFIRMERS,
    ),
)

"""Operators' reports on one warning (staff; the coverage readers): the door-to-door follow-up
list grouped by grid member (JSON pages, or the whole list as CSV), and a test broadcast's
report with its maintenance list (JSON, or the maintenance list as CSV). The coverage report's
CSV and printable summary are ``GET /v1/warnings/{id}/coverage?format=…``
(:mod:`dispatcher.api.routes_coverage`). docs/reports.md."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from aiohttp import web

from dispatcher.api.deps import DEPS_KEY
from dispatcher.api.errors import ApiError
from dispatcher.api.report_responses import (
    FOLLOWUP_FORMATS,
    TEST_REPORT_FORMATS,
    csv_response,
    report_format,
    stream_csv,
)
from dispatcher.api.request_input import query_bool, query_int, query_text
from dispatcher.api.responses import json_response
from dispatcher.api.routes_coverage import COVERAGE_READERS, known_area_parameter, no_warning
from dispatcher.api.routing import Endpoint
from dispatcher.config import ApiRole
from dispatcher.reports.followup import FOLLOWUP_CSV_COLUMNS, followup_csv_rows, followup_view
from dispatcher.reports.test_report import (
    MAINTENANCE_CSV_COLUMNS,
    NoSuchWarning,
    NotATestBroadcast,
    build_test_report,
    maintenance_csv_rows,
    report_json,
)
from dispatcher.store.base import InvalidCursor, Store
from dispatcher.store.reports_base import FollowupPage, ReportStore

#: Who may read the reports: as coverage, everyone but grid members.
REPORT_READERS: frozenset[ApiRole] = COVERAGE_READERS

#: Households per page of the follow-up list (a page is whole villages: one village larger
#: than the page is given whole).
DEFAULT_FOLLOWUP_PAGE = 500
MAX_FOLLOWUP_PAGE = 2000
#: Households read per step of the CSV export.
EXPORT_PAGE = 2000
_MAX_CURSOR_LENGTH = 12


def _reports(store: Store) -> ReportStore:
    if not isinstance(store, ReportStore):
        raise TypeError(f"{type(store).__name__} cannot read reports (ReportStore)")
    return store


async def get_followup(request: web.Request) -> web.StreamResponse:
    store = request.app[DEPS_KEY].store
    shape = report_format(request, FOLLOWUP_FORMATS)
    area = await known_area_parameter(store, request, "area")
    after = query_text(request, "after", max_length=_MAX_CURSOR_LENGTH)
    masked = query_bool(request, "masked", default=False)
    limit = query_int(
        request, "limit", default=DEFAULT_FOLLOWUP_PAGE, low=1, high=MAX_FOLLOWUP_PAGE
    )
    warning_id = request.match_info["id"]
    reports = _reports(store)
    # The first page is read before answering, so a bad cursor or an unknown warning is a
    # JSON error whatever the format.
    page = await _followup_page(
        reports, warning_id, area, after, EXPORT_PAGE if shape == "csv" else limit
    )
    if shape == "json":
        return json_response(followup_view(warning_id, area, page, masked=masked))

    async def chunks() -> AsyncIterator[Iterable[Sequence[Any]]]:
        current = page
        while True:
            yield followup_csv_rows(
                followup_view(warning_id, area, current, masked=masked)["sheets"]
            )
            if current.next is None:
                return
            current = await _followup_page(reports, warning_id, area, current.next, EXPORT_PAGE)

    return await stream_csv(
        request, FOLLOWUP_CSV_COLUMNS, chunks(), f"tocsin-followup-{warning_id[:8]}"
    )


async def _followup_page(
    store: ReportStore, warning_id: str, area: str | None, after: str | None, limit: int
) -> FollowupPage:
    try:
        page = await store.followup(warning_id, area=area, after=after, limit=limit)
    except InvalidCursor as exc:
        raise ApiError(400, "invalid_parameter", f"after: {exc}", field="after") from None
    if page is None:
        raise no_warning(warning_id)
    return page


async def get_test_report(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    shape = report_format(request, TEST_REPORT_FORMATS)
    warning_id = request.match_info["id"]
    try:
        report = await build_test_report(
            _reports(deps.store),
            warning_id,
            now=time.time(),
            heartbeat_timeout=deps.device_heartbeat_timeout,
        )
    except NoSuchWarning:
        raise no_warning(warning_id) from None
    except NotATestBroadcast as exc:
        raise ApiError(409, "not_a_test", str(exc)) from None
    if shape == "csv":
        return csv_response(
            MAINTENANCE_CSV_COLUMNS,
            maintenance_csv_rows(report),
            f"tocsin-maintenance-{warning_id[:8]}",
        )
    return json_response(report_json(report))


ENDPOINTS = (
    Endpoint("GET", "/v1/warnings/{id}/followup", get_followup, "getFollowup", REPORT_READERS),
    Endpoint(
        "GET", "/v1/warnings/{id}/test-report", get_test_report, "getTestReport", REPORT_READERS
    ),
)

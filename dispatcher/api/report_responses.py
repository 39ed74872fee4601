"""How the reports answer in other shapes than JSON: ``?format=csv`` (a download: UTF-8 with a
byte-order mark, a header row, CRLF line ends, formula-like text guarded; see
:mod:`dispatcher.reports.csv_out`) and ``?format=text`` (a printable summary, UTF-8 plain
text). Long CSV answers are streamed as they are read (:func:`stream_csv`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import hdrs, web

from dispatcher.api.errors import ApiError
from dispatcher.reports.csv_out import BOM, CSV_MEDIA_TYPE, csv_bytes

log = structlog.get_logger(__name__)

COVERAGE_FORMATS = ("json", "csv", "text")
FOLLOWUP_FORMATS = ("json", "csv")
TEST_REPORT_FORMATS = ("json", "csv")
_CSV_CONTENT_TYPE = f"{CSV_MEDIA_TYPE}; charset=utf-8; header=present"


def report_format(request: web.Request, allowed: Sequence[str]) -> str:
    """The ``format`` query parameter (default json); 400 for any other than ``allowed``."""
    if len(request.query.getall("format", [])) > 1:
        raise ApiError(400, "invalid_parameter", "format is given more than once", field="format")
    raw = request.query.get("format", "json")
    if raw not in allowed:
        raise ApiError(
            400, "invalid_parameter", f"format must be one of {', '.join(allowed)}", field="format"
        )
    return raw


def _disposition(name: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in name)
    return f'attachment; filename="{safe}-{stamp}.csv"'


def csv_response(columns: Sequence[str], rows: Iterable[Sequence[Any]], name: str) -> web.Response:
    """A small CSV answer, whole."""
    return web.Response(
        body=BOM + csv_bytes([columns]) + csv_bytes(rows),
        headers={
            hdrs.CONTENT_TYPE: _CSV_CONTENT_TYPE,
            hdrs.CONTENT_DISPOSITION: _disposition(name),
            hdrs.CACHE_CONTROL: "no-store",
        },
    )


def text_response(text: str) -> web.Response:
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={hdrs.CACHE_CONTROL: "no-store"},
    )


async def stream_csv(
    request: web.Request,
    columns: Sequence[str],
    chunks: AsyncIterator[Iterable[Sequence[Any]]],
    name: str,
) -> web.StreamResponse:
    """A CSV answer written as ``chunks`` of rows are read (any size, the same memory). A
    failure once it has begun drops the connection instead of ending the file, so a download
    tool reports an incomplete transfer rather than a short file (as the log export does)."""
    response = web.StreamResponse(
        headers={
            hdrs.CONTENT_TYPE: _CSV_CONTENT_TYPE,
            hdrs.CONTENT_DISPOSITION: _disposition(name),
            hdrs.CACHE_CONTROL: "no-store",
        }
    )
    await response.prepare(request)
    try:
        await response.write(BOM + csv_bytes([columns]))
        async for rows in chunks:
            data = csv_bytes(rows)
            if data:
                await response.write(data)
        await response.write_eof()
    except ConnectionError:
        log.debug("report export ended: the client disconnected", route=request.path)
    except Exception:
        log.exception("report export failed", route=request.path)
        if request.transport is not None:
            request.transport.close()
    return response

"""`tocsin report`: operators' reports on one warning, from a running daemon over its HTTP API.

- ``report coverage WARNING_ID``: the printable coverage summary (GET …/coverage?format=text),
  per county and town by default; ``--csv`` one row per area, ``--json`` the JSON;
- ``report followup WARNING_ID``: the door-to-door follow-up list, one sheet per grid member and
  village (every page of GET …/followup); ``--csv`` the whole list as CSV, ``--json`` the pages'
  sheets as JSON lines;
- ``report test WARNING_ID``: a test broadcast's report and its maintenance list
  (GET …/test-report); ``--csv`` the maintenance list, ``--json`` the JSON.

docs/reports.md is the manual. Exit status: 0, 1 when the daemon refuses or cannot be reached
(the error is printed), 2 for a bad option."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import aiohttp

from dispatcher import cli_http
from dispatcher.reports.followup import format_followup_sheets
from dispatcher.reports.test_report import format_test_report

_AREA = re.compile(r"[0-9]{6}(?:[0-9]{6})?")
#: Households per page the follow-up sheets are read in.
_FOLLOWUP_PAGE = 2000

Token = Callable[[argparse.Namespace], str]


def add_report_command(
    sub: Any, *, client_options: Callable[[argparse.ArgumentParser], None], token: Token
) -> None:
    """Register ``tocsin report`` on the CLI's subcommands."""
    report: argparse.ArgumentParser = sub.add_parser(
        "report",
        help="coverage report, door-to-door follow-up sheets, test broadcast report",
        description="Operators' reports on one warning of a running daemon. See docs/reports.md.",
    )
    kinds = report.add_subparsers(metavar="REPORT")

    coverage = kinds.add_parser(
        "coverage",
        help="coverage per county, town (and village): printable, CSV or JSON",
        description="The warning's coverage: villages, grid members, households and persons "
        "reached in time, per area, as a printable summary (default), CSV or JSON.",
    )
    coverage.add_argument("warning_id")
    coverage.add_argument(
        "--depth",
        default="town",
        choices=["county", "town", "village"],
        help="the deepest level listed (default town: counties and their towns)",
    )
    coverage.add_argument("--under", metavar="CODE", help="only the areas in this area")
    shape = coverage.add_mutually_exclusive_group()
    shape.add_argument("--csv", action="store_true", help="one row per area, then the total")
    shape.add_argument("--json", action="store_true", help="the API's JSON")
    client_options(coverage)
    coverage.set_defaults(handler=partial(_run, show=_coverage, token=token))

    followup = kinds.add_parser(
        "followup",
        help="households not reached, a sheet per grid member (door-to-door follow-up)",
        description="The households the warning has not reached in time, one sheet per grid "
        "member and village, with the people in them and their phone numbers.",
    )
    followup.add_argument("warning_id")
    followup.add_argument("--area", metavar="CODE", help="only in this area (a village, town …)")
    followup.add_argument(
        "--masked", action="store_true", help="mask phone numbers (+86138****0001)"
    )
    shape = followup.add_mutually_exclusive_group()
    shape.add_argument("--csv", action="store_true", help="one row per person, every sheet")
    shape.add_argument("--json", action="store_true", help="the sheets as JSON lines")
    client_options(followup)
    followup.set_defaults(handler=partial(_run, show=_followup, token=token))

    test = kinds.add_parser(
        "test",
        help="a test broadcast's report: acknowledgements and the maintenance list",
        description="The report of a Test or Exercise warning: devices and people that "
        "acknowledged, and the devices that did not (offline, failing, no acknowledgement) "
        "with the reason and their state.",
    )
    test.add_argument("warning_id")
    shape = test.add_mutually_exclusive_group()
    shape.add_argument("--csv", action="store_true", help="the maintenance list as CSV")
    shape.add_argument("--json", action="store_true", help="the API's JSON")
    client_options(test)
    test.set_defaults(handler=partial(_run, show=_test, token=token))


Show = Callable[[aiohttp.ClientSession, str, dict[str, str], argparse.Namespace], Any]


def _run(args: argparse.Namespace, *, show: Show, token: Token) -> int:
    for name in ("under", "area"):
        value = getattr(args, name, None)
        if value is not None and not _AREA.fullmatch(value):
            print(
                f"tocsin report: --{name}: give a 12-digit statistical code or a 6-digit "
                "GB2260 code",
                file=sys.stderr,
            )
            return 2
    headers = {"Authorization": f"Bearer {token(args)}"}
    base = args.url.rstrip("/")

    async def main() -> int:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            result: int = await show(session, base, headers, args)
            return result

    try:
        return asyncio.run(main())
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"tocsin report: cannot read the report from {base}: {exc}", file=sys.stderr)
        return 1


async def _coverage(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], args: argparse.Namespace
) -> int:
    shape = "csv" if args.csv else "json" if args.json else "text"
    params = {"depth": args.depth, "tree": "true", "format": shape}
    if args.under:
        params["under"] = args.under
    url = f"{base}/v1/warnings/{args.warning_id}/coverage"
    return await _print(session, url, headers, params, pretty_json=True)


async def _test(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], args: argparse.Namespace
) -> int:
    url = f"{base}/v1/warnings/{args.warning_id}/test-report"
    if args.csv or args.json:
        params = {"format": "csv" if args.csv else "json"}
        return await _print(session, url, headers, params, pretty_json=True)
    status, body = await cli_http.get_json(session, url, headers, {})
    if status != 200:
        return cli_http.refused("report", body)
    sys.stdout.write(format_test_report(body))
    return 0


async def _followup(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], args: argparse.Namespace
) -> int:
    url = f"{base}/v1/warnings/{args.warning_id}/followup"
    params = {"masked": "true" if args.masked else "false"}
    if args.area:
        params["area"] = args.area
    if args.csv:
        return await _print(session, url, headers, {**params, "format": "csv"})
    warning: dict[str, Any] | None = None
    if not args.json:
        status, found = await cli_http.get_json(
            session, f"{base}/v1/warnings/{args.warning_id}", headers
        )
        if status != 200:
            return cli_http.refused("report", found)
        warning = found
    after: str | None = None
    printed = 0
    while True:
        query = {**params, "limit": str(_FOLLOWUP_PAGE)}
        if after is not None:
            query["after"] = after
        status, page = await cli_http.get_json(session, url, headers, query)
        if status != 200:
            return cli_http.refused("report", page)
        sheets = page.get("sheets") or []
        if args.json:
            for sheet in sheets:
                print(json.dumps(sheet, ensure_ascii=False))
        elif sheets:
            if printed:
                sys.stdout.write("\n")
            sys.stdout.write(format_followup_sheets(sheets, warning=warning))
        printed += len(sheets)
        after = page.get("next")
        if after is None:
            break
    if not printed and not args.json:
        sys.stdout.write(format_followup_sheets([], warning=warning))
    return 0


async def _print(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    params: dict[str, str],
    *,
    pretty_json: bool = False,
) -> int:
    """The answer as it comes (CSV and text streamed to stdout); JSON indented."""
    async with session.get(url, headers=headers, params=params) as response:
        if response.status != 200:
            return cli_http.refused("report", await cli_http.json_or_text(response))
        if response.content_type == "application/json" and pretty_json:
            body = await response.json()
            print(json.dumps(body, ensure_ascii=False, indent=2))
            return 0
        out = sys.stdout.buffer
        sys.stdout.flush()
        async for chunk in response.content.iter_chunked(64 * 1024):
            out.write(chunk)
        out.flush()
    return 0

"""`tocsin devices`: the devices of a running daemon and their connection state, over its HTTP
API (``GET /v1/devices``), as a table or JSON lines.

Each device is online, offline, silent (online, but not heard from for longer than the
heartbeat timeout) or unknown (never heard from); the table ends with the counts by state for
the filters, e.g. "4,812 online, 150 offline, 38 silent, 0 unknown". ``--unregistered`` lists
the addresses heard from that no directory device has (a speaker missing from the directory)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import unicodedata
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import aiohttp

from dispatcher import cli_http
from dispatcher.domain import DeviceKind
from dispatcher.store.base import DeviceState

#: What the API accepts as ``limit``.
MAX_PAGE = 1000
_AREA = re.compile(r"[0-9]{6}(?:[0-9]{6})?")
#: The states in the order the summary names them.
_STATES = (DeviceState.ONLINE, DeviceState.OFFLINE, DeviceState.SILENT, DeviceState.UNKNOWN)

#: The table's columns: heading, minimum width (the last column is not padded).
_COLUMNS: tuple[tuple[str, int], ...] = (
    ("id", 12),
    ("kind", 11),
    ("state", 7),
    ("last seen", 19),
    ("ago", 5),
    ("area", 12),
    ("adapter", 8),
    ("address", 12),
    ("name", 0),
)


def add_devices_command(
    sub: Any,
    *,
    client_options: Callable[[argparse.ArgumentParser], None],
    token: Callable[[argparse.Namespace], str],
) -> None:
    """Register ``tocsin devices`` on the CLI's subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "devices",
        help="devices and their state: online, offline, silent, never heard from",
        description="The devices of a running daemon with their connection state as their "
        "adapters last reported it, and the counts by state. Filters combine (AND). "
        "See docs/api.md, GET /v1/devices.",
    )
    parser.add_argument("--area", metavar="CODE", help="devices installed in this area or below")
    parser.add_argument("--kind", choices=[kind.value for kind in DeviceKind])
    parser.add_argument("--adapter", metavar="NAME", help="devices of this adapter instance")
    parser.add_argument("--state", choices=[state.value for state in DeviceState])
    parser.add_argument(
        "--unregistered",
        action="store_true",
        help="addresses heard from that no directory device has",
    )
    parser.add_argument(
        "--limit", type=int, default=100, help=f"devices per page (1-{MAX_PAGE}, default 100)"
    )
    parser.add_argument("--after", metavar="CURSOR", help="the page after this cursor")
    parser.add_argument("--all", action="store_true", help="every page, not only the first")
    parser.add_argument("--json", action="store_true", help="print devices as JSON lines")
    client_options(parser)
    parser.set_defaults(handler=partial(run_devices, token=token))


def run_devices(args: argparse.Namespace, *, token: Callable[[argparse.Namespace], str]) -> int:
    problem = _check(args)
    if problem is not None:
        print(f"tocsin devices: {problem}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {token(args)}"}
    base = args.url.rstrip("/")
    try:
        return asyncio.run(_show(base, headers, args))
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"tocsin devices: cannot read the devices from {base}: {exc}", file=sys.stderr)
        return 1


def _check(args: argparse.Namespace) -> str | None:
    if args.area is not None and not _AREA.fullmatch(args.area):
        return "--area: give a 12-digit statistical code or a 6-digit GB2260 code"
    if args.unregistered and (args.area is not None or args.kind is not None):
        return "--area and --kind do not apply with --unregistered"
    if not 1 <= args.limit <= MAX_PAGE:
        return f"--limit: must be from 1 to {MAX_PAGE}"
    return None


def query_params(args: argparse.Namespace) -> dict[str, str]:
    """The options as the API's query parameters."""
    params = {
        name: str(value)
        for name in ("area", "kind", "adapter", "state", "after")
        if (value := getattr(args, name)) is not None
    }
    if args.unregistered:
        params["unregistered"] = "true"
    params["limit"] = str(args.limit)
    return params


async def _show(base: str, headers: dict[str, str], args: argparse.Namespace) -> int:
    params = query_params(args)
    devices: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            async with session.get(f"{base}/v1/devices", headers=headers, params=params) as r:
                status = r.status
                try:
                    page = await r.json(content_type=None)
                except ValueError:
                    page = {"body": await r.text()}
            if status != 200:
                return cli_http.refused("devices", page)
            devices += page["devices"]
            if not args.all or page.get("next") is None:
                break
            params = {**params, "after": page["next"]}
    if args.json:
        for device in devices:
            print(json.dumps(device, ensure_ascii=False))
        print(format_counts(page), file=sys.stderr)
    else:
        print(format_table(devices, as_of=page.get("as_of")))
        print(format_counts(page))
    if page.get("next") is not None:
        print(f"(more devices: --after {page['next']}, or --all)", file=sys.stderr)
    return 0


def format_counts(page: dict[str, Any]) -> str:
    """ "4,812 online, 150 offline, 38 silent, 0 unknown (silent: not heard from for 5m)"."""
    counts = page.get("counts") or {}
    shown = ", ".join(f"{int(counts.get(s.value, 0)):,} {s.value}" for s in _STATES)
    timeout = page.get("heartbeat_timeout")
    if isinstance(timeout, int | float):
        exact = _duration(float(timeout))
        if float(timeout) != _seconds(exact):
            exact = f"{float(timeout):g}s"
        shown += f" (silent: online but not heard from for {exact})"
    return shown


def format_table(devices: list[dict[str, Any]], *, as_of: str | None = None) -> str:
    now = _parse_time(as_of)
    rows = [[heading for heading, _ in _COLUMNS], *(_cells(d, now) for d in devices)]
    widths = [
        max(minimum, *(_width(row[i]) for row in rows)) for i, (_, minimum) in enumerate(_COLUMNS)
    ]
    return "\n".join(_line(row, widths) for row in rows)


def _cells(device: dict[str, Any], now: datetime | None) -> list[str]:
    seen = _parse_time(device.get("last_seen"))
    if seen is None:
        when, ago = "never", ""
    else:
        when = seen.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        ago = _duration(max(0.0, (now - seen).total_seconds())) if now is not None else ""
    return [
        str(device.get("id") or "(unregistered)"),
        str(device.get("kind") or ""),
        str(device.get("state") or ""),
        when,
        ago,
        str(device.get("area_code") or ""),
        str(device.get("adapter") or ""),
        str(device.get("address") or ""),
        " ".join(str(device.get("name") or "").split()),
    ]


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _duration(seconds: float) -> str:
    """12s, 5m, 3h, 2d: the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _seconds(duration: str) -> float:
    return float(duration[:-1]) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[duration[-1]]


def _line(cells: list[str], widths: list[int]) -> str:
    padded = [
        cell + " " * (width - _width(cell)) for cell, width in zip(cells, widths, strict=True)
    ]
    return "  ".join([*padded[:-1], cells[-1]]).rstrip()


def _width(text: str) -> int:
    """Terminal columns: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)

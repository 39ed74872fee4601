"""`tocsin log`: read, export and follow the delivery log of a running daemon over its HTTP API.

- by default, a table of the newest page of events (oldest at the top, newest at the bottom);
- ``--csv``: the whole export (``GET /v1/log.csv``) streamed to stdout;
- ``--follow``: the newest page, then every new event as it is written (``GET /v1/log/stream``,
  server-sent events), reconnecting with ``Last-Event-ID`` if the connection drops; with
  ``--warning`` on a terminal, a progress bar of that warning's deliveries that are done.

The filters are :class:`dispatcher.log_query.LogFilter`, checked here before the daemon is
asked, so a bad value is refused with the option named."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import aiohttp

from dispatcher import cli_http
from dispatcher.domain import TERMINAL_DELIVERY_STATES, Channel, Level
from dispatcher.durations import parse_duration
from dispatcher.log_query import (
    FILTER_PARAMETERS,
    MAX_PAGE,
    LogFilter,
    LogFilterError,
    format_time,
)

#: Longer than the stream's 15 s keep-alive: silence past this means the connection is dead.
_STREAM_READ_TIMEOUT = 45.0
_RECONNECT_MAX_SECONDS = 10.0
_PROGRESS_SECONDS = 1.0
_TERMINAL = frozenset(state.value for state in TERMINAL_DELIVERY_STATES)

#: The table's columns: heading, minimum width (the last column is not padded).
_COLUMNS: tuple[tuple[str, int], ...] = (
    ("time", 19),
    ("warning", 8),
    ("state", 14),
    ("channel", 11),
    ("target", 18),
    ("attempt", 7),
    ("adapter", 12),
    ("reason", 0),
)


def add_log_command(
    sub: Any,
    *,
    client_options: Callable[[argparse.ArgumentParser], None],
    token: Callable[[argparse.Namespace], str],
) -> None:
    """Register ``tocsin log`` on the CLI's subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "log",
        help="read, export (CSV) or follow the delivery log",
        description="The delivery log of a running daemon: every attempt, outcome, retry, "
        "acknowledgement, escalation, expiry and cancellation. Filters combine (AND). "
        "See docs/log.md.",
    )
    parser.add_argument("--warning", metavar="ID", help="one warning's events")
    parser.add_argument(
        "--area", metavar="CODE", help="events for targets in this area or beneath it"
    )
    parser.add_argument("--level", choices=[level.value for level in Level])
    parser.add_argument("--person", metavar="ID", help="one person's events")
    parser.add_argument("--device", metavar="ID", help="one device's events")
    parser.add_argument("--channel", choices=[channel.value for channel in Channel])
    parser.add_argument("--state", help="events recording this state (e.g. failed)")
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="events at or after TIME: RFC 3339 (2026-07-12T08:00:00+08:00) or a duration "
        "ago (30m, 2h, 1d)",
    )
    parser.add_argument("--until", metavar="TIME", help="events before TIME (as --since)")
    parser.add_argument(
        "--limit",
        type=int,
        default=50,
        help=f"events in the table (1-{MAX_PAGE}, default 50)",
    )
    parser.add_argument(
        "--before",
        type=int,
        metavar="EVENT_ID",
        help="only events older than this id (the table's next page; with --csv, a bound)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--csv", action="store_true", help="write every matching event as CSV")
    mode.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new events (Ctrl-C stops)"
    )
    parser.add_argument("--json", action="store_true", help="print events as JSON lines")
    parser.add_argument(
        "--no-progress", action="store_true", help="with --follow --warning: no progress bar"
    )
    client_options(parser)
    parser.set_defaults(handler=partial(run_log, token=token))


def run_log(args: argparse.Namespace, *, token: Callable[[argparse.Namespace], str]) -> int:
    try:
        params = filter_params(args)
    except LogFilterError as exc:
        print(f"tocsin log: --{exc.parameter}: {exc.message}", file=sys.stderr)
        return 2
    if not 1 <= args.limit <= MAX_PAGE:
        print(f"tocsin log: --limit: must be from 1 to {MAX_PAGE}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {token(args)}"}
    base = args.url.rstrip("/")
    try:
        if args.csv:
            bounds = {"before": str(args.before)} if args.before is not None else {}
            return asyncio.run(_export_csv(base, headers, {**params, **bounds}))
        if args.follow:
            progress = (
                args.warning is not None
                and not args.no_progress
                and not args.json
                and sys.stdout.isatty()
                and sys.stderr.isatty()
            )
            return asyncio.run(_follow(base, headers, params, args, progress=progress))
        return asyncio.run(_table(base, headers, params, args))
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"tocsin log: cannot read the log from {base}: {exc}", file=sys.stderr)
        return 1


def filter_params(args: argparse.Namespace) -> dict[str, str]:
    """The options as the API's query parameters, checked by the shared filter model."""
    raw = {name: getattr(args, name) for name in FILTER_PARAMETERS}
    for name in ("since", "until"):
        if raw[name] is not None:
            raw[name] = _time_option(raw[name])
    return LogFilter.from_params({k: v for k, v in raw.items() if v is not None}).to_params()


def _time_option(value: str) -> str:
    """A duration ago (``30m``) as RFC 3339; anything else is left for the filter to check."""
    try:
        seconds = parse_duration(value)
    except ValueError:
        return value
    return format_time(time.time() - seconds)


# -- the table -----------------------------------------------------------------------------------


async def _table(
    base: str, headers: dict[str, str], params: dict[str, str], args: argparse.Namespace
) -> int:
    query = {**params, "limit": str(args.limit)}
    if args.before is not None:
        query["before"] = str(args.before)
    async with cli_http.session() as session:
        status, page = await cli_http.get_json(session, f"{base}/v1/log", headers, query)
    if status != 200:
        return cli_http.refused("log", page)
    events = list(reversed(page["events"]))  # oldest first: the newest ends up at the bottom
    if args.json:
        for event in events:
            print(json.dumps(event, ensure_ascii=False))
    else:
        print(format_table(events))
    if page.get("next") is not None:
        print(f"(older events: --before {page['next']})", file=sys.stderr)
    return 0


def format_table(events: list[dict[str, Any]]) -> str:
    rows = [[heading for heading, _ in _COLUMNS], *(_cells(event) for event in events)]
    widths = [
        max(minimum, *(_width(row[i]) for row in rows)) for i, (_, minimum) in enumerate(_COLUMNS)
    ]
    return "\n".join(_line(row, widths) for row in rows)


def format_line(event: dict[str, Any]) -> str:
    """One event as a table row at the columns' minimum widths (for --follow)."""
    return _line(_cells(event), [minimum for _, minimum in _COLUMNS])


def heading_line() -> str:
    return _line([heading for heading, _ in _COLUMNS], [minimum for _, minimum in _COLUMNS])


def _cells(event: dict[str, Any]) -> list[str]:
    try:
        when = datetime.fromisoformat(event["at"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (KeyError, TypeError, ValueError):
        when = str(event.get("at", ""))
    target = event.get("target_id") or ("(warning)" if event.get("delivery_id") is None else "")
    return [
        when,
        str(event.get("warning_id") or "")[:8],
        str(event.get("state") or ""),
        str(event.get("channel") or ""),
        str(target),
        str(event.get("attempt", "")),
        str(event.get("adapter") or ""),
        " ".join(str(event.get("reason") or "").split()),  # one line, whatever it holds
    ]


def _line(cells: list[str], widths: list[int]) -> str:
    padded = [
        cell + " " * (width - _width(cell)) for cell, width in zip(cells, widths, strict=True)
    ]
    return "  ".join([*padded[:-1], cells[-1]]).rstrip()


def _width(text: str) -> int:
    """Terminal columns: Chinese characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


# -- CSV ----------------------------------------------------------------------------------------


async def _export_csv(base: str, headers: dict[str, str], params: dict[str, str]) -> int:
    async with (
        cli_http.session() as session,
        session.get(f"{base}/v1/log.csv", headers=headers, params=params) as response,
    ):
        if response.status != 200:
            return cli_http.refused("log", await cli_http.json_or_text(response))
        out = sys.stdout.buffer
        async for chunk in response.content.iter_chunked(64 * 1024):
            out.write(chunk)
        out.flush()
    return 0


# -- following --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None


async def server_sent_events(lines: AsyncIterable[bytes]) -> AsyncIterator[ServerSentEvent]:
    """Events from a text/event-stream body, line by line (comments skipped)."""
    event, data, event_id = "message", list[str](), None
    async for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield ServerSentEvent(event, "\n".join(data), event_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


async def _follow(
    base: str,
    headers: dict[str, str],
    params: dict[str, str],
    args: argparse.Namespace,
    *,
    progress: bool,
) -> int:
    shown = _Progress(args.warning)
    try:
        async with cli_http.session(read_timeout=_STREAM_READ_TIMEOUT) as session:
            query = {**params, "limit": str(args.limit)}
            status, page = await cli_http.get_json(session, f"{base}/v1/log", headers, query)
            if status != 200:
                return cli_http.refused("log", page)
            events = list(reversed(page["events"]))
            if not args.json:
                shown.write(heading_line())
            for event in events:
                shown.write(_render(event, args.json))
            last_id = events[-1]["id"] if events else None
            watcher = (
                asyncio.create_task(_watch_progress(session, base, headers, shown))
                if progress
                else None
            )
            try:
                return await _stream(
                    session, base, headers, params, last_id, shown.write, args.json
                )
            finally:
                if watcher is not None:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
    finally:
        shown.close()


async def _stream(
    session: aiohttp.ClientSession,
    base: str,
    headers: dict[str, str],
    params: dict[str, str],
    last_id: int | None,
    emit: Callable[[str], None],
    as_json: bool,
) -> int:
    delay = 1.0
    while True:
        stream_headers = {**headers, "Accept": "text/event-stream"}
        if last_id is not None:
            stream_headers["Last-Event-ID"] = str(last_id)
        try:
            async with session.get(
                f"{base}/v1/log/stream", headers=stream_headers, params=params
            ) as response:
                if response.status != 200:
                    body = await cli_http.json_or_text(response)
                    if 400 <= response.status < 500:
                        return cli_http.refused("log", body)
                    _note(f"the daemon answered {response.status}; trying again")
                else:
                    delay = 1.0
                    async for sse in server_sent_events(response.content):
                        if sse.event != "delivery":
                            continue
                        event = json.loads(sse.data)
                        emit(_render(event, as_json))
                        last_id = int(event["id"])
                    _note("the daemon closed the stream (stopping?); reconnecting")
        except (aiohttp.ClientError, TimeoutError) as exc:
            _note(f"connection lost ({type(exc).__name__}); reconnecting")
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RECONNECT_MAX_SECONDS)


def _render(event: dict[str, Any], as_json: bool) -> str:
    return json.dumps(event, ensure_ascii=False) if as_json else format_line(event)


class _Progress:
    """Where --follow prints: stdout, above a progress bar (on stderr) of one warning's
    deliveries that are done, once :meth:`update` has drawn it."""

    def __init__(self, warning_id: str | None) -> None:
        self.warning_id = warning_id or ""
        self.bar: Any = None

    def write(self, line: str) -> None:
        if self.bar is None:
            print(line, flush=True)
        else:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()

    def update(self, counts: dict[str, int]) -> None:
        total = sum(counts.values())
        done = sum(n for state, n in counts.items() if state in _TERMINAL)
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                desc=f"warning {self.warning_id[:8]} done",
                unit=" deliveries",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )
        self.bar.total = total
        self.bar.n = done
        notable = ("acknowledged", "unacknowledged", "failed")
        self.bar.set_postfix_str(
            ", ".join(f"{state} {counts[state]}" for state in notable if counts.get(state)),
            refresh=False,
        )
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def _watch_progress(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], shown: _Progress
) -> None:
    """Every second: how many of the warning's deliveries are in a terminal state (nothing
    more will happen to them), of all its deliveries."""
    url = f"{base}/v1/warnings/{shown.warning_id}"
    while True:
        try:
            status, warning = await cli_http.get_json(session, url, headers)
        except (aiohttp.ClientError, TimeoutError):
            status, warning = 0, None  # the stream reports the connection
        if status == 200:
            shown.update(warning.get("delivery_counts") or {})
        elif status == 404:
            _note(f"no warning {shown.warning_id}: no progress to show")
            return
        await asyncio.sleep(_PROGRESS_SECONDS)


# -- HTTP ---------------------------------------------------------------------------------------


def _note(message: str) -> None:
    print(f"tocsin log: {message}", file=sys.stderr, flush=True)

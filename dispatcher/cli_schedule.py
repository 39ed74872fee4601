"""`tocsin schedule list|add|remove|run-now|runs`: a running daemon's scheduled test
broadcasts and drills, over its HTTP API (/v1/schedules; docs/schedules.md).

``add`` takes a file holding one schedule — JSON, or TOML with the keys of a ``[[schedules]]``
block — or the schedule as options (``--devices loudspeaker`` and ``--people
grid_members=sms,voice`` build its rules)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tomllib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from dispatcher import cli_http
from dispatcher.domain import Level

_PEOPLE_HELP = (
    "a people rule AUDIENCE=CHANNELS, e.g. grid_members=sms,voice (repeatable; audiences: "
    "grid_members, village_cadres, rescue_teams, hazard_monitors, vulnerable, lives_alone, "
    "households, everyone)"
)


def add_schedule_command(
    sub: Any,
    *,
    client_options: Callable[[argparse.ArgumentParser], None],
    token: Callable[[argparse.Namespace], str],
) -> None:
    """Register ``tocsin schedule`` on the CLI's subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "schedule",
        help="scheduled test broadcasts and drills: list, add, remove, run now",
        description="Scheduled test broadcasts and drills of a running daemon. Cron "
        "expressions are read in Asia/Shanghai. See docs/schedules.md.",
    )
    actions = parser.add_subparsers(metavar="ACTION")

    listing = actions.add_parser("list", help="every schedule and its next fire time")
    listing.add_argument("--json", action="store_true", help="print the raw JSON")
    client_options(listing)
    listing.set_defaults(handler=partial(_list, token=token))

    add = actions.add_parser(
        "add",
        help="add a schedule (from a file, or from options)",
        description="Add a schedule. FILE holds one schedule as JSON, or as TOML with the keys "
        "of a [[schedules]] block; or give it as options.",
    )
    add.add_argument("file", nargs="?", help="a .json or .toml file ('-' for JSON on stdin)")
    add.add_argument("--id", help="lower-case letters, digits, - and _ (default: made up)")
    add.add_argument("--name", help="what people call it")
    add.add_argument("--cron", help="5 fields, Asia/Shanghai, e.g. '0 10 * * 1' (Mondays 10:00)")
    add.add_argument("--status", choices=["Test", "Exercise"], help="default Test")
    add.add_argument("--level", choices=[level.value for level in Level], help="default blue")
    add.add_argument("--area", action="append", default=[], help="area code (repeatable)")
    add.add_argument(
        "--devices", metavar="KINDS", help="device kinds to reach, e.g. loudspeaker,transmitter"
    )
    add.add_argument("--people", action="append", default=[], metavar="RULE", help=_PEOPLE_HELP)
    add.add_argument("--event", help="CAP event (default 应急广播测试)")
    add.add_argument("--headline", help="what is read out and sent first")
    add.add_argument("--message", help="the rest of the message")
    add.add_argument("--quiet-hours", metavar="HH:MM-HH:MM", help="e.g. 22:00-07:00")
    add.add_argument("--grace", help="how late a missed run may still run (default 1h)")
    add.add_argument("--expires-after", help="how long each run's warning lasts (default 2h)")
    add.add_argument("--report-after", help="when to make the test report after a run")
    add.add_argument("--disabled", action="store_true", help="add it without firing it")
    client_options(add)
    add.set_defaults(handler=partial(_add, token=token))

    remove = actions.add_parser("remove", help="remove a schedule added over the API")
    remove.add_argument("schedule_id")
    client_options(remove)
    remove.set_defaults(handler=partial(_remove, token=token))

    run_now = actions.add_parser("run-now", help="run a schedule once, now")
    run_now.add_argument("schedule_id")
    run_now.add_argument("--force", action="store_true", help="run inside its quiet hours too")
    run_now.add_argument("--idempotency-key", help="repeat with the same key to run only once")
    client_options(run_now)
    run_now.set_defaults(handler=partial(_run_now, token=token))

    runs = actions.add_parser("runs", help="a schedule's runs, newest first")
    runs.add_argument("schedule_id")
    runs.add_argument("--limit", type=int, default=20, help="how many (1-500, default 20)")
    runs.add_argument("--json", action="store_true", help="print the raw JSON")
    client_options(runs)
    runs.set_defaults(handler=partial(_runs, token=token))


def schedule_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST body from a file or from the options; SystemExit says what is missing."""
    if args.file:
        if args.file == "-":
            return _one(json.loads(sys.stdin.read()))
        path = Path(args.file)
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            data = tomllib.loads(text)
            blocks = data.get("schedules")
            return _one(blocks if blocks is not None else data)
        return _one(json.loads(text))
    missing = [
        option
        for option, value in (("--cron", args.cron), ("--headline", args.headline))
        if not value
    ]
    if not args.area:
        missing.append("--area")
    if not args.devices and not args.people:
        missing.append("--devices or --people")
    if missing:
        raise SystemExit(f"tocsin schedule add: give a FILE, or {', '.join(missing)}")
    rules: list[dict[str, Any]] = []
    if args.devices:
        rules.append({"audience": "devices", "device_kinds": _split(args.devices)})
    for rule in args.people:
        audience, sep, channels = rule.partition("=")
        if not sep or not audience or not channels:
            raise SystemExit(f"tocsin schedule add: --people {rule!r}: write AUDIENCE=CHANNELS")
        rules.append({"audience": audience, "channels": _split(channels)})
    body: dict[str, Any] = {"cron": args.cron, "areas": args.area, "rules": rules}
    optional = {
        "id": args.id,
        "name": args.name,
        "status": args.status,
        "level": args.level,
        "event": args.event,
        "headline": args.headline,
        "message": args.message,
        "quiet_hours": args.quiet_hours,
        "grace": args.grace,
        "expires_after": args.expires_after,
        "report_after": args.report_after,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if args.disabled:
        body["enabled"] = False
    return body


def _one(data: Any) -> dict[str, Any]:
    if isinstance(data, list):
        if len(data) != 1:
            raise SystemExit("tocsin schedule add: the file must hold one schedule")
        data = data[0]
    if not isinstance(data, dict):
        raise SystemExit("tocsin schedule add: the file must hold one schedule (an object)")
    return data


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _headers(
    args: argparse.Namespace, token: Callable[[argparse.Namespace], str]
) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(args)}"}


def _base(args: argparse.Namespace) -> str:
    return f"{args.url.rstrip('/')}/v1/schedules"


def _list(args: argparse.Namespace, *, token: Callable[[argparse.Namespace], str]) -> int:
    status, data = _call("GET", _base(args), _headers(args, token))
    if status >= 300 or args.json:
        return _print_json(status, data)
    schedules = data.get("schedules") or []
    if not schedules:
        print("no schedules")
        return 0
    rows = [["id", "source", "on", "cron", "status", "level", "next (Asia/Shanghai)", "name"]]
    for item in schedules:
        upcoming = item.get("next_fire_at")
        rows.append(
            [
                str(item.get("id")),
                str(item.get("source")),
                "yes" if item.get("enabled") else "no",
                str(item.get("cron")),
                str(item.get("status")),
                str(item.get("level")),
                upcoming[:16].replace("T", " ") if upcoming else "—",
                str(item.get("name") or item.get("headline") or ""),
            ]
        )
    _print_table(rows)
    return 0


def _add(args: argparse.Namespace, *, token: Callable[[argparse.Namespace], str]) -> int:
    body = json.dumps(schedule_body(args), ensure_ascii=False).encode()
    headers = {**_headers(args, token), "Content-Type": "application/json"}
    return _print_json(*_call("POST", _base(args), headers, body))


def _remove(args: argparse.Namespace, *, token: Callable[[argparse.Namespace], str]) -> int:
    url = f"{_base(args)}/{args.schedule_id}"
    return _print_json(*_call("DELETE", url, _headers(args, token)))


def _run_now(args: argparse.Namespace, *, token: Callable[[argparse.Namespace], str]) -> int:
    headers = _headers(args, token)
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    url = f"{_base(args)}/{args.schedule_id}/run" + ("?force=true" if args.force else "")
    return _print_json(*_call("POST", url, headers))


def _runs(args: argparse.Namespace, *, token: Callable[[argparse.Namespace], str]) -> int:
    if not 1 <= args.limit <= 500:
        print("tocsin schedule runs: --limit must be from 1 to 500", file=sys.stderr)
        return 2
    url = f"{_base(args)}/{args.schedule_id}/runs?limit={args.limit}"
    status, data = _call("GET", url, _headers(args, token))
    if status >= 300 or args.json:
        return _print_json(status, data)
    rows = [["fire time (Asia/Shanghai)", "kind", "state", "warning", "report", "note"]]
    for run in data.get("runs") or []:
        report = run.get("report") or {}
        shown = (
            f"{report.get('devices_acknowledged', 0)}/{report.get('devices_targeted', 0)} "
            f"devices, {report.get('devices_silent', 0)} silent"
            if report
            else ""
        )
        rows.append(
            [
                str(run.get("fire_at"))[:19].replace("T", " "),
                str(run.get("kind")),
                str(run.get("state")),
                str(run.get("warning_id") or ""),
                shown,
                str(run.get("note") or ""),
            ]
        )
    _print_table(rows)
    return 0


def _print_json(status: int, data: Any) -> int:
    print(
        json.dumps(data, ensure_ascii=False, indent=2),
        file=sys.stdout if status < 300 else sys.stderr,
    )
    return 0 if status < 300 else 1


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


def _call(
    method: str, url: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, Any]:
    try:
        return asyncio.run(cli_http.request(method, url, headers, body))
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SystemExit(f"tocsin schedule: cannot reach the daemon at {url}: {exc}") from None

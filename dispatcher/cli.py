"""The `tocsin` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from dispatcher import cli_http
from dispatcher.cli_devices import add_devices_command
from dispatcher.cli_log import add_log_command
from dispatcher.cli_report import add_report_command
from dispatcher.cli_schedule import add_schedule_command
from dispatcher.config import ConfigError, hash_token, load_config

DEFAULT_URL = "http://127.0.0.1:8080"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tocsin … | head`: the reader left; not an error
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tocsin", description="Tocsin emergency-warning broadcast dispatcher"
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument(
        "--config", "-c", default=os.environ.get("TOCSIN_CONFIG", "config/demo.toml")
    )
    serve.add_argument("--port", type=int, help="override server.port (0 picks a free port)")
    serve.add_argument(
        "--node",
        help="this node's name among several on one PostgreSQL store (overrides [node] name; "
        "default: the host name)",
    )
    serve.set_defaults(handler=_cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file and its policy")
    check.add_argument("path")
    check.set_defaults(handler=_cmd_check_config)

    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(metavar="ACTION")
    token_new = token_sub.add_parser("new", help="create a token; prints it once and its hash")
    token_new.add_argument("name")
    token_new.add_argument(
        "role", choices=["duty_officer", "operator", "installer", "admin", "grid_member"]
    )
    token_new.add_argument(
        "--person", help="for role grid_member: the directory person id the token belongs to"
    )
    token_new.set_defaults(handler=_cmd_token_new)

    directory = sub.add_parser("directory", help="import or export the directory CSV files")
    dir_sub = directory.add_subparsers(metavar="ACTION")
    dir_import = dir_sub.add_parser("import", help="import CSV files from a folder")
    dir_import.add_argument("folder")
    dir_import.add_argument(
        "--config", "-c", default=os.environ.get("TOCSIN_CONFIG", "config/demo.toml")
    )
    dir_import.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="import the good rows of files that have errors",
    )
    dir_import.add_argument("--no-progress", action="store_true")
    dir_import.set_defaults(handler=_cmd_directory_import)
    dir_export = dir_sub.add_parser("export", help="export the directory as CSV files")
    dir_export.add_argument("folder")
    dir_export.add_argument(
        "--config", "-c", default=os.environ.get("TOCSIN_CONFIG", "config/demo.toml")
    )
    dir_export.set_defaults(handler=_cmd_directory_export)
    dir_gen = dir_sub.add_parser("generate", help="write a synthetic city's CSV files")
    dir_gen.add_argument("folder")
    dir_gen.add_argument("--preset", choices=["shangluo", "demo"], default="demo")
    dir_gen.set_defaults(handler=_cmd_directory_generate)

    warn = sub.add_parser("warn", help="post a warning to a running daemon")
    warn.add_argument("file", nargs="?", help="a JSON body or a CAP 1.2 XML file ('-' for stdin)")
    warn.add_argument("--level", choices=["red", "orange", "yellow", "blue"])
    warn.add_argument("--event")
    warn.add_argument("--headline")
    warn.add_argument("--description", default="")
    warn.add_argument("--instruction", default="")
    warn.add_argument("--area", action="append", default=[], help="area code (repeatable)")
    warn.add_argument("--expires", help="ISO 8601 time with offset")
    warn.add_argument("--status", default="Actual", choices=["Actual", "Exercise", "Test"])
    warn.add_argument("--idempotency-key")
    _client_options(warn)
    warn.set_defaults(handler=_cmd_warn)

    status = sub.add_parser("status", help="show a warning, its plan and progress")
    status.add_argument("warning_id")
    status.add_argument("--depth", default="county", choices=["county", "town", "village"])
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument(
        "--watch",
        type=_watch_seconds,
        metavar="SECONDS",
        help="show it again every SECONDS until the warning is complete (Ctrl-C stops)",
    )
    _client_options(status)
    status.set_defaults(handler=_cmd_status)

    from dispatcher import cli_adapters, cli_simulate

    cli_adapters.add_parser(sub)
    cli_simulate.add_parser(sub)

    cancel = sub.add_parser("cancel", help="cancel a warning")
    cancel.add_argument("warning_id")
    cancel.add_argument("--note", default="")
    _client_options(cancel)
    cancel.set_defaults(handler=_cmd_cancel)

    add_log_command(sub, client_options=_client_options, token=_token)
    add_devices_command(sub, client_options=_client_options, token=_token)
    add_schedule_command(sub, client_options=_client_options, token=_token)
    add_report_command(sub, client_options=_client_options, token=_token)
    return parser


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("TOCSIN_URL", DEFAULT_URL))
    parser.add_argument("--token-file", help="file holding the API token (default: $TOCSIN_TOKEN)")


def _cmd_serve(args: argparse.Namespace) -> int:
    from dispatcher.config import LoadedConfig
    from dispatcher.daemon import StartupError, serve
    from dispatcher.logging_setup import configure_logging

    def load() -> LoadedConfig:  # at start and again on SIGHUP, --port applied both times
        config = load_config(args.config)
        if args.port is not None:
            server = config.settings.server.model_copy(update={"port": args.port})
            settings = config.settings.model_copy(update={"server": server})
            config = config.__class__(**{**_fields(config), "settings": settings})
        if args.node is not None:
            if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,56}", args.node):
                raise ConfigError(
                    [f"--node: {args.node!r}: 1-56 letters, digits and _ . : - (a node's name)"]
                )
            config = config.__class__(**{**_fields(config), "node_name": args.node})
        return config

    config = load()
    configure_logging(config.settings.logging.level)
    try:
        asyncio.run(serve(config, reload=load))
    except StartupError as exc:
        print(f"tocsin: {exc}", file=sys.stderr)
        return 1
    return 0


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.path)
    print(f"{config.path}: OK")
    levels = ", ".join(lv.value for lv in config.policy.levels)
    print(f"  policy {config.policy_path}: levels {levels}")
    print(f"  store {config.store_path}")
    print(
        f"  {len(config.tokens)} API token(s): "
        + ", ".join(f"{t.name} ({t.role.value})" for t in config.tokens)
    )
    for spec in config.adapters:
        channels = ", ".join(sorted(c.value for c in spec.channels))
        rate, _ = spec.send_rate(spec.create())
        print(
            f"  adapter {spec.name}: kind {spec.factory.kind}, channels {channels}, "
            f"rate {'unlimited' if rate is None else f'{rate:g}/s'}"
        )
    for schedule in config.settings.schedules:
        print(
            f"  schedule {schedule.id}: {schedule.cron} (Asia/Shanghai), "
            f"{schedule.status.value}, {'enabled' if schedule.enabled else 'disabled'}"
        )
    return 0


def _cmd_token_new(args: argparse.Namespace) -> int:
    if (args.role == "grid_member") != (args.person is not None):
        print("--person is required for role grid_member, and only for it", file=sys.stderr)
        return 2
    token = secrets.token_urlsafe(32)
    print(f"token (shown once, give it to {args.name}): {token}", file=sys.stderr)
    print("[[api.tokens]]")
    print(f'name = "{args.name}"')
    print(f'role = "{args.role}"')
    print(f'sha256 = "{hash_token(token)}"')
    if args.person is not None:
        print(f"person_id = {json.dumps(args.person, ensure_ascii=False)}")
    return 0


def _cmd_directory_import(args: argparse.Namespace) -> int:
    from dispatcher.directory.importer import import_directory

    config = load_config(args.config)
    report = import_directory(
        config.store_target,
        Path(args.folder),
        skip_bad_rows=args.skip_bad_rows,
        progress=not args.no_progress,
    )
    print(report)
    return 0 if report.ok else 1


def _cmd_directory_export(args: argparse.Namespace) -> int:
    from dispatcher.directory.exporter import export_directory

    config = load_config(args.config)
    export_directory(config.store_target, Path(args.folder))
    print(f"exported to {args.folder}")
    return 0


def _cmd_directory_generate(args: argparse.Namespace) -> int:
    from dispatcher.config import SyntheticDirectoryConfig
    from dispatcher.synthetic import SHANGLUO, write_csv

    params = SHANGLUO if args.preset == "shangluo" else SyntheticDirectoryConfig()
    write_csv(params, Path(args.folder))
    print(f"wrote synthetic directory to {args.folder}")
    return 0


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        return Path(args.token_file).read_text(encoding="utf-8").strip()
    token = os.environ.get("TOCSIN_TOKEN")
    if not token:
        raise SystemExit("no API token: set TOCSIN_TOKEN or pass --token-file")
    return token


def _cmd_warn(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {_token(args)}"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    if args.file:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        is_xml = raw.lstrip().startswith(b"<")
        headers["Content-Type"] = "application/cap+xml" if is_xml else "application/json"
        body = raw
    else:
        missing = [n for n in ("level", "event", "headline") if getattr(args, n) is None]
        if missing or not args.area:
            raise SystemExit("give a FILE, or --level, --event, --headline and --area")
        payload: dict[str, Any] = {
            "level": args.level,
            "event": args.event,
            "headline": args.headline,
            "description": args.description,
            "instruction": args.instruction,
            "area_codes": args.area,
            "status": args.status,
        }
        if args.expires:
            payload["expires"] = args.expires
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers["Content-Type"] = "application/json"
    status, data = asyncio.run(cli_http.request("POST", f"{args.url}/v1/warnings", headers, body))
    print(json.dumps(data, ensure_ascii=False, indent=2))
    return 0 if status < 300 else 1


def _cmd_cancel(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {_token(args)}", "Content-Type": "application/json"}
    body = json.dumps({"note": args.note}, ensure_ascii=False).encode()
    url = f"{args.url}/v1/warnings/{args.warning_id}/cancel"
    status, data = asyncio.run(cli_http.request("POST", url, headers, body))
    print(json.dumps(data, ensure_ascii=False, indent=2))
    return 0 if status < 300 else 1


def _watch_seconds(raw: str) -> float:
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0.2 <= seconds <= 86_400:
        raise argparse.ArgumentTypeError("give a number of seconds from 0.2 to 86400")
    return seconds


def _cmd_status(args: argparse.Namespace) -> int:
    """The warning, its plan, progress and coverage; with --watch, again every N seconds
    (the screen cleared first on a terminal) until every delivery is terminal."""
    import time

    from dispatcher.coverage_view import format_coverage, format_progress

    headers = {"Authorization": f"Bearer {_token(args)}"}
    clear = args.watch is not None and sys.stdout.isatty()
    try:
        while True:
            status, shown = asyncio.run(_status_parts(args, headers))
            if status >= 300:
                print(json.dumps(shown, ensure_ascii=False, indent=2), file=sys.stderr)
                return 1
            warning, plan, coverage = shown["warning"], shown["plan"], shown["coverage"]
            if args.json:
                text = json.dumps(shown, ensure_ascii=False, indent=None if args.watch else 2)
            else:
                parts = [_format_status(warning, plan)]
                if warning.get("progress"):
                    parts.append(format_progress(warning["progress"]))
                if coverage is not None:
                    parts.append(format_coverage(coverage))
                text = "\n".join(parts)
            if clear:
                sys.stdout.write("\033[H\033[2J")
            print(text, flush=True)
            done = (warning.get("progress") or {}).get("complete") or warning.get(
                "plan_status"
            ) == "not_planned"
            if args.watch is None or done:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        if args.watch is None:
            raise
        return 0


async def _status_parts(
    args: argparse.Namespace, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    base = f"{args.url}/v1/warnings/{args.warning_id}"
    status, warning = await cli_http.request("GET", base, headers, None)
    if status >= 300:
        return status, warning
    _, plan = await cli_http.request("GET", f"{base}/plan?depth={args.depth}", headers, None)
    # A token that may not read coverage (a grid member's) still sees the rest.
    shown, coverage = await cli_http.request(
        "GET", f"{base}/coverage?depth={args.depth}", headers, None
    )
    return status, {
        "warning": warning,
        "plan": plan,
        "coverage": coverage if shown == 200 else None,
    }


def _format_status(warning: dict[str, Any], plan: dict[str, Any]) -> str:
    lines = [
        f"{warning.get('id')}  {warning.get('status')} {warning.get('msg_type')}  "
        f"level {warning.get('level')}  state {warning.get('state')}",
        f"  {warning.get('event')}: {warning.get('headline')}",
        f"  expires {warning.get('expires')}",
    ]
    counts = warning.get("delivery_counts") or {}
    if counts:
        lines.append("  deliveries: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if not plan.get("planned", True):
        lines.append("  plan: pending")
        return "\n".join(lines)
    lines.append(f"  plan: {plan.get('total', 0)} deliveries")
    for audience, channels in (plan.get("by_audience") or {}).items():
        lines.append(
            f"    {audience:<12} " + ", ".join(f"{ch} {n}" for ch, n in sorted(channels.items()))
        )
    for area in plan.get("areas") or []:
        indent = {"province": 2, "city": 2, "county": 4, "town": 6, "village": 8}.get(
            area.get("level", ""), 4
        )
        lines.append(f"{' ' * indent}{area.get('code')} {area.get('name')}: {area.get('total')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""`tocsin adapters list|probe|test`: what an installer runs to see which adapter kinds are
installed, whether the configured hardware and services answer, and to send one test message
(to one speaker, one village's speakers, one phone) and watch its reports arrive."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from dispatcher.adapter import (
    Accepted,
    DeviceStatus,
    Dispatch,
    PollsStatus,
    ProbeResult,
    Report,
    ReportState,
    WarningContent,
    adapter_kinds,
)
from dispatcher.adapter_config import AdapterSpec
from dispatcher.config import load_config
from dispatcher.domain import PERSON_CHANNELS, Audience, Channel, Level, MsgType, Status
from dispatcher.durations import parse_duration
from dispatcher.engine.message_text import render_text

#: How often `adapters test` asks a provider for a message's status.
POLL_INTERVAL = 1.0
#: How long one probe may take before it is reported as not answering.
PROBE_TIMEOUT = 30.0
VERBOSE_HELP = "also show the adapter's info log lines (port opened, device set up…) on stderr"


@contextlib.contextmanager
def installer_logging(*, verbose: bool) -> Iterator[None]:
    """While `probe` or `test` runs: the adapters' log lines on stderr, warnings and errors
    only unless ``verbose`` (their info lines are for the daemon's journal, and stdout is the
    command's results); the configuration before it is restored afterwards."""
    saved = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.INFO if verbose else logging.WARNING
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


def add_parser(sub: Any) -> None:
    adapters = sub.add_parser("adapters", help="adapter kinds and instances (installers)")
    adapters_sub = adapters.add_subparsers(metavar="ACTION")
    listing = adapters_sub.add_parser("list", help="installed adapter kinds and their settings")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_cmd_list)
    probe = adapters_sub.add_parser(
        "probe", help="ask each configured adapter instance whether its device or service answers"
    )
    probe.add_argument(
        "--config", "-c", default=os.environ.get("TOCSIN_CONFIG", "config/demo.toml")
    )
    probe.add_argument("names", nargs="*", help="instances to probe (default: all)")
    probe.add_argument("--json", action="store_true")
    probe.add_argument("--verbose", "-v", action="store_true", help=VERBOSE_HELP)
    probe.set_defaults(handler=_cmd_probe)
    test = adapters_sub.add_parser(
        "test",
        help="send one test message (status Test) through an adapter instance and show its reports",
    )
    test.add_argument("--config", "-c", default=os.environ.get("TOCSIN_CONFIG", "config/demo.toml"))
    test.add_argument("name", help="the adapter instance")
    test.add_argument(
        "--to", help="one address: a speaker's device id, a phone number (+86…), a modem port…"
    )
    test.add_argument(
        "--area", default="", help="a village code: every speaker there (one area publish)"
    )
    test.add_argument("--channel", help="the channel, when the instance serves several")
    test.add_argument("--text", default="这是一条设备测试广播，不是真实预警。")
    test.add_argument("--wait", default="30s", help="how long to wait for reports (e.g. 30s)")
    test.add_argument("--verbose", "-v", action="store_true", help=VERBOSE_HELP)
    test.set_defaults(handler=_cmd_test)


def _cmd_list(args: argparse.Namespace) -> int:
    kinds = adapter_kinds()
    described: list[dict[str, Any]] = []
    for name, factory in sorted(kinds.items()):
        settings = {
            field: {
                "default": None
                if info.is_required()
                # A list or mapping default is a factory: show what it makes.
                else repr(info.get_default(call_default_factory=True)),
                "required": info.is_required(),
            }
            for field, info in factory.settings_model.model_fields.items()
        }
        described.append(
            {
                "kind": name,
                "channels": sorted(c.value for c in factory.channels),
                "max_batch": factory.max_batch,
                "description": factory.description,
                "settings": settings,
            }
        )
    if args.json:
        print(json.dumps(described, ensure_ascii=False, indent=2))
        return 0
    for kind in described:
        print(f"{kind['kind']}: {kind['description']}")
        print(f"  channels: {', '.join(kind['channels'])}; batches of up to {kind['max_batch']}")
        for field, info in kind["settings"].items():
            default = "required" if info["required"] else f"default {info['default']}"
            print(f"  {field} ({default})")
    return 0


async def _probe(spec: AdapterSpec) -> ProbeResult:
    adapter = spec.create()
    try:
        return await asyncio.wait_for(adapter.probe(), PROBE_TIMEOUT)
    except TimeoutError:
        return ProbeResult(False, f"no answer within {PROBE_TIMEOUT:g} s")
    except Exception as exc:  # the installer needs the reason, not a traceback
        return ProbeResult(False, f"probe failed: {type(exc).__name__}: {exc}")


def _cmd_probe(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    specs = [s for s in config.adapters if not args.names or s.name in args.names]
    unknown = sorted(set(args.names) - {s.name for s in config.adapters})
    if unknown:
        print(f"no adapter instance named {', '.join(unknown)} in {config.path}", file=sys.stderr)
        return 2
    with installer_logging(verbose=args.verbose):
        results = [(spec, asyncio.run(_probe(spec))) for spec in specs]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": spec.name,
                        "kind": spec.factory.kind,
                        "ok": result.ok,
                        "summary": result.summary,
                        "details": dict(result.details),
                    }
                    for spec, result in results
                ],
                ensure_ascii=False,
                indent=2,
                default=str,
            )
        )
    else:
        for spec, result in results:
            mark = "ok " if result.ok else "FAIL"
            print(f"{mark} {spec.name} ({spec.factory.kind}): {result.summary}")
    return 0 if all(result.ok for _, result in results) else 1


class _PrintingContext:
    """Prints each report as it arrives, and the state of the one device under test when it
    is known or changes (an installer watching a test)."""

    def __init__(self, name: str, watch: str | None) -> None:
        self._name = name
        self._watch = watch
        self._watched_online: bool | None = None
        self.reports: list[Report] = []
        self.changed = asyncio.Event()

    @property
    def adapter_name(self) -> str:
        return self._name

    @property
    def node_name(self) -> str:
        # Not a dispatcher node: a name of its own, so the connections of an adapter that
        # several nodes share (MQTT client ids) never take over a running node's.
        return f"adapters-test-{os.getpid()}"

    def report(self, report: Report) -> None:
        self.reports.append(report)
        state = report.detail.get("device_state", report.state.value)
        who = report.from_address or report.reference or f"delivery {report.delivery_id}"
        reason = f" ({report.reason})" if report.reason else ""
        print(f"  report: {who}: {state}{reason}", flush=True)
        self.changed.set()

    def device_status(self, status: DeviceStatus) -> None:
        # A village test would print every speaker's state: `adapters probe` shows those.
        if status.address != self._watch or status.online == self._watched_online:
            return
        self._watched_online = status.online
        print(f"  state: {status.address}: {'online' if status.online else 'offline'}", flush=True)


def _test_dispatch(spec: AdapterSpec, args: argparse.Namespace) -> Dispatch | str:
    if args.channel:
        try:
            channel = Channel(args.channel)
        except ValueError:
            return f"--channel {args.channel!r} is not one of {', '.join(c.value for c in Channel)}"
        if channel not in spec.channels:
            return f"{spec.name} does not serve {channel}; it serves {', '.join(spec.channels)}"
    else:
        channel = sorted(spec.channels)[0]
    if not args.to and not args.area:
        return "say where to send: --to ADDRESS (one speaker, one phone) or --area VILLAGE"
    if channel in PERSON_CHANNELS and not args.to:
        return f"{channel} needs --to (a phone number)"
    now = datetime.now(UTC).replace(microsecond=0)
    wait = parse_duration(args.wait)
    warning = WarningContent(
        id=f"test-{uuid.uuid4().hex[:12]}",
        status=Status.TEST,
        msg_type=MsgType.ALERT,
        level=Level.BLUE,
        event="设备测试",
        headline="设备测试",
        description=args.text,
        instruction="",
        area_codes=(args.area,) if args.area else (),
        sent=now,
        expires=now + timedelta(seconds=max(wait, 60.0) + 60.0),
    )
    audience = Audience.PERSON if channel in PERSON_CHANNELS else Audience.DEVICE
    return Dispatch(
        # No delivery of the store: a report reaching a running daemon names none of its own.
        delivery_id=0,
        warning=warning,
        channel=channel,
        audience=audience,
        target_id=args.to or args.area,
        # One speaker: its own topic (no area); a village: the area topic.
        address=args.to or f"area:{args.area}",
        area_code="" if args.to else args.area,
        attempt=1,
        text=render_text(warning, audience=audience.value, channel=channel.value),
    )


def _outside_node_groups(spec: AdapterSpec) -> AdapterSpec:
    """``spec`` for a one-off test from the command line: not a member of the nodes' group
    (``shared_group``), which would hand it only its share of the test's acknowledgements."""
    if getattr(spec.settings, "shared_group", None) is None:
        return spec
    settings = spec.settings.model_copy(update={"shared_group": None})
    return dataclasses.replace(spec, settings=settings)


async def _run_test(spec: AdapterSpec, dispatch: Dispatch, wait: float) -> int:
    spec = _outside_node_groups(spec)
    adapter = spec.create()
    context = _PrintingContext(spec.name, dispatch.address if dispatch.area_code == "" else None)
    try:
        await asyncio.wait_for(adapter.start(context), PROBE_TIMEOUT)
    except Exception as exc:
        print(f"FAIL {spec.name} did not start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        where = dispatch.address if dispatch.area_code == "" else f"area {dispatch.area_code}"
        print(f"sending test {dispatch.warning.id} to {where} through {spec.name}", flush=True)
        (outcome,) = await asyncio.wait_for(adapter.send([dispatch]), spec.config.send_timeout)
        print(f"  outcome: {outcome}", flush=True)
        if not isinstance(outcome, Accepted):
            return 1
        deadline = time.monotonic() + wait
        one_target = dispatch.area_code == ""
        poller = None
        if isinstance(adapter, PollsStatus) and outcome.reference:
            # The provider's status reports go to the daemon's webhooks, not to this command:
            # ask the provider instead.
            poller = asyncio.create_task(
                _poll(adapter, outcome.reference, context, deadline), name="tocsin-test-poll"
            )
            poller.add_done_callback(lambda _: context.changed.set())
        while time.monotonic() < deadline:
            if poller is not None and poller.done():
                break
            if one_target and any(
                r.state in (ReportState.ACKNOWLEDGED, ReportState.FAILED) for r in context.reports
            ):
                break
            context.changed.clear()
            try:
                await asyncio.wait_for(context.changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        acknowledged = {
            r.from_address or str(r.delivery_id)
            for r in context.reports
            if r.state is ReportState.ACKNOWLEDGED
        }
        failed = [r for r in context.reports if r.state is ReportState.FAILED]
        print(f"acknowledged by {len(acknowledged)}; failed reports: {len(failed)}")
        if poller is not None and not acknowledged:
            # A reply or key press goes to the daemon, so this command cannot see it: a
            # delivered message is as far as it can follow.
            delivered = any(r.state is ReportState.DELIVERED for r in context.reports)
            print(
                "a reply or key press is received by the daemon's webhooks, not here: "
                "check the delivery log"
            )
            return 0 if delivered and not failed else 1
        return 0 if acknowledged and not failed else 1
    finally:
        await adapter.stop()


async def _poll(
    adapter: PollsStatus, reference: str, context: _PrintingContext, deadline: float
) -> None:
    """Report each new status of the message until it is final or the wait is over."""
    while time.monotonic() < deadline:
        report = await adapter.poll_status(reference)
        if report is not None:
            # Delivered (or the call completed) or failed: as far as the provider can tell.
            context.report(report)
            return
        await asyncio.sleep(POLL_INTERVAL)


def _cmd_test(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    spec = next((s for s in config.adapters if s.name == args.name), None)
    if spec is None:
        names = ", ".join(s.name for s in config.adapters) or "none"
        print(
            f"no adapter instance named {args.name} in {config.path} (has: {names})",
            file=sys.stderr,
        )
        return 2
    try:
        wait = parse_duration(args.wait)
    except ValueError as exc:
        print(f"--wait: {exc}", file=sys.stderr)
        return 2
    dispatch = _test_dispatch(spec, args)
    if isinstance(dispatch, str):
        print(dispatch, file=sys.stderr)
        return 2
    with installer_logging(verbose=args.verbose):
        return asyncio.run(_run_test(spec, dispatch, wait))

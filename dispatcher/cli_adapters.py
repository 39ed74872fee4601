"""`tocsin adapters list|probe`: what an installer runs to see which adapter kinds are installed
and whether the configured hardware and services answer."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from dispatcher.adapter import ProbeResult, adapter_kinds
from dispatcher.adapter_config import AdapterSpec
from dispatcher.config import load_config

#: How long one probe may take before it is reported as not answering.
PROBE_TIMEOUT = 30.0


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
    probe.set_defaults(handler=_cmd_probe)


def _cmd_list(args: argparse.Namespace) -> int:
    kinds = adapter_kinds()
    described: list[dict[str, Any]] = []
    for name, factory in sorted(kinds.items()):
        settings = {
            field: {
                "default": None if info.is_required() else repr(info.default),
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

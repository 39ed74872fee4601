"""`tocsin simulate NAME [args…]`: run one of the installed simulators (a loudspeaker fleet, a
fake provider, modems on a pty) for installers' rehearsals, the tests and the benchmarks.

Simulators are found through the ``tocsin.simulators`` entry-point group (name = what follows
``simulate``, value = a ``main(argv, **kwargs) -> int`` function), so ``dispatcher/`` imports no
concrete adapter and a third party can add its own. Everything after NAME is the simulator's
own command line (``tocsin simulate speakers --help`` shows it).

``tocsin simulate speakers --config tocsin.toml --adapter NAME …`` runs the loudspeakers the
directory has for that adapter instance: read here from the store (each speaker's address, or
its id when the address is empty, and the area it is installed in followed by its ancestors)
and handed to the simulator as ``speakers=``.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from dispatcher.config import load_config

ENTRY_POINT_GROUP = "tocsin.simulators"
#: The simulator that takes the directory's loudspeakers with ``--config``/``--adapter``.
SPEAKERS = "speakers"


def simulators() -> dict[str, EntryPoint]:
    """The installed simulators by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


class _HelpAction(argparse.Action):
    """``-h``: the usage, then the installed simulators (looked up only when asked)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show this help and the simulators")

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.print_help()
        print(f"\n{_installed()}")
        parser.exit()


def _installed() -> str:
    found = simulators()
    if not found:
        return f"no simulators installed (entry-point group {ENTRY_POINT_GROUP})"
    lines = ["installed simulators:"]
    lines += [f"  {name:<12} {found[name].value}" for name in sorted(found)]
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    simulate: argparse.ArgumentParser = sub.add_parser(
        "simulate",
        help="run a simulator (speakers: a loudspeaker fleet on an MQTT broker)",
        description="Run an installed simulator. Everything after NAME is its own command "
        "line: `tocsin simulate NAME --help`. `tocsin simulate speakers --config FILE "
        "--adapter NAME …` simulates the loudspeakers the directory has for that adapter "
        "instance.",
        add_help=False,
    )
    simulate.add_argument("-h", "--help", action=_HelpAction)
    simulate.add_argument("name", metavar="NAME", help="the simulator")
    simulate.add_argument("args", nargs=argparse.REMAINDER, help="the simulator's arguments")
    simulate.set_defaults(handler=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> int:
    found = simulators()
    entry = found.get(args.name)
    if entry is None:
        print(f"tocsin simulate: no simulator named {args.name!r}", file=sys.stderr)
        print(_installed(), file=sys.stderr)
        return 2
    rest: list[str] = list(args.args)
    kwargs: dict[str, Any] = {}
    directory = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    directory.add_argument("--config", "-c")
    directory.add_argument("--adapter")
    known, rest = directory.parse_known_args(rest)
    if known.adapter is not None:
        if args.name != SPEAKERS:
            print(f"tocsin simulate: --adapter is for `{SPEAKERS}` only", file=sys.stderr)
            return 2
        config_path = known.config or os.environ.get("TOCSIN_CONFIG", "config/demo.toml")
        speakers = directory_speakers(config_path, known.adapter)
        if isinstance(speakers, str):
            print(f"tocsin simulate: {speakers}", file=sys.stderr)
            return 2
        kwargs["speakers"] = speakers
    elif known.config is not None:
        print("tocsin simulate: --config goes with --adapter NAME", file=sys.stderr)
        return 2
    main = entry.load()
    return int(main(rest, **kwargs))


def directory_speakers(config_path: str, adapter: str) -> list[tuple[str, tuple[str, ...]]] | str:
    """``(device_id, areas)`` of the loudspeakers of adapter instance ``adapter``, or what is
    wrong (no such instance, no store yet, no speakers)."""
    from dispatcher.store.directory_base import open_directory

    config = load_config(config_path)
    names = [spec.name for spec in config.adapters]
    if adapter not in names:
        return (
            f"no adapter instance named {adapter!r} in {config.path} "
            f"(there are: {', '.join(names) or 'none'})"
        )
    if config.store_dsn is None and not config.store_path.is_file():
        return f"{config.store_path}: no store yet (import a directory or start the daemon first)"
    with open_directory(config.store_target) as directory:
        speakers = directory.devices_with_areas(adapter)
    if not speakers:
        return (
            f"the directory in {config.store_location} has no loudspeakers with adapter {adapter!r}"
        )
    return speakers

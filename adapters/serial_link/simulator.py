"""``tocsin simulate modem --profile gsm|iridium|beidou|transmitter``: a serial device on a
pseudo-terminal, for installers' rehearsals and demos (the tests use the same classes).

It prints the pty's path — and keeps a stable link to it, ``/tmp/tocsin-<profile>`` unless
``--link`` says otherwise, so a config can name it as it would name ``/dev/serial/by-id/…`` —
and the ``[adapters.NAME]`` block for the matching adapter kind, then answers until Ctrl-C or
SIGTERM. ``kill -USR1 <pid>`` unplugs the device and plugs it back in (a new pty behind the same
link), ``--unplug-every`` does it on a timer, to rehearse a loose cable.

Each profile lives with its adapter kind (``adapters/<kind>/simulator.py``) and provides
``add_arguments(parser)``, ``build(args, *, link) -> PtyDevice`` and
``settings_hint(path, *, device=None)`` (the block for the device built, when given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
import time
from types import ModuleType

from adapters.serial_link.pty_device import AtDevice, PtyDevice
from adapters.simulator_args import fraction, seconds

#: Profile name → the module that simulates it.
PROFILES: dict[str, str] = {
    "gsm": "adapters.gsm_modem.simulator",
    "iridium": "adapters.iridium_sbd.simulator",
    "beidou": "adapters.beidou_rdss.simulator",
    "transmitter": "adapters.serial_transmitter.simulator",
}


def _base_parser(*, add_help: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tocsin simulate modem",
        add_help=add_help,
        description="A serial device on a pseudo-terminal speaking its real protocol: a GSM or "
        "Tiantong modem (27.005 PDU SMS), an Iridium 9602/9603 SBD transceiver, a BeiDou RDSS "
        "terminal, or a wireless-broadcast transmitter controller.",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), required=True)
    parser.add_argument(
        "--link",
        help="keep a symlink to the pty here (default /tmp/tocsin-<profile>); name it as the "
        "adapter's port",
    )
    parser.add_argument(
        "--latency", type=seconds, default=0.05, help="seconds before each answer (slow device)"
    )
    parser.add_argument("--silent", action="store_true", help="answer nothing at all")
    parser.add_argument(
        "--garbage", type=fraction, default=0.0, help="fraction of answers replaced by noise"
    )
    parser.add_argument(
        "--error-rate",
        type=fraction,
        default=0.0,
        help="fraction of AT commands answered ERROR (AT profiles)",
    )
    parser.add_argument(
        "--unplug-every",
        type=seconds,
        default=0.0,
        help="unplug the device this often, plugging it back in after --unplugged-for",
    )
    parser.add_argument(
        "--unplugged-for",
        type=seconds,
        default=3.0,
        help="how long an unplug (SIGUSR1 or --unplug-every) lasts (default 3 s)",
    )
    parser.add_argument("--seed", type=int, help="seed the simulator's randomness")
    return parser


def _profile_module(argv: list[str]) -> ModuleType | None:
    known, _ = _base_parser(add_help=False).parse_known_args(argv)
    try:
        return importlib.import_module(PROFILES[known.profile])
    except (ImportError, KeyError):
        return None


def parser_for(argv: list[str]) -> tuple[argparse.ArgumentParser, ModuleType | None]:
    """The full parser: the common knobs, then the chosen profile's own."""
    module = None
    if any(a == "--profile" or a.startswith("--profile=") for a in argv):
        with contextlib.suppress(SystemExit):
            module = _profile_module(argv)
    parser = _base_parser(add_help=True)
    if module is not None:
        group = parser.add_argument_group(f"{module.__name__.split('.')[-2]} knobs")
        module.add_arguments(group)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    """``tocsin simulate modem [options]``; the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser, module = parser_for(args_list)
    args = parser.parse_args(args_list)
    if module is None:
        print(
            f"tocsin simulate modem: the {args.profile} profile is not installed "
            f"({PROFILES[args.profile]})",
            file=sys.stderr,
        )
        return 2
    link = args.link or f"/tmp/tocsin-{args.profile}"  # noqa: S108 — a well-known demo path
    if os.path.lexists(link) and not os.path.islink(link):
        # The link is replaced at every plug: never replace a real device or a file with it.
        print(
            f"tocsin simulate modem: {link} exists and is not a link (a real port? a file?); "
            "choose another --link",
            file=sys.stderr,
        )
        return 2
    try:
        device = module.build(args, link=link)
    except ValueError as exc:
        print(f"tocsin simulate modem: {exc}", file=sys.stderr)
        return 2
    apply_common_knobs(device, args)
    try:
        return asyncio.run(_run(device, module, args))
    except OSError as exc:
        print(f"tocsin simulate modem: {link}: {exc}", file=sys.stderr)
        return 1


def apply_common_knobs(device: PtyDevice, args: argparse.Namespace) -> None:
    device.latency = args.latency
    device.silent = args.silent
    device.garbage = args.garbage
    if isinstance(device, AtDevice):
        device.error_rate = args.error_rate


async def _run(device: PtyDevice, module: ModuleType, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    toggle = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, toggle.set)
    try:
        async with device:
            print(
                f"{device.description} ({args.profile}) on {device.pty_path}, linked from "
                f"{device.path}",
                module.settings_hint(device.path, device=device).rstrip("\n"),
                "kill -USR1 this process to unplug and replug it; Ctrl-C stops",
                sep="\n",
                flush=True,
            )
            next_unplug = time.monotonic() + args.unplug_every if args.unplug_every else None
            while not stop.is_set():
                wait = 1.0 if next_unplug is None else max(0.0, next_unplug - time.monotonic())
                waiters = {asyncio.ensure_future(e.wait()) for e in (stop, toggle)}
                await asyncio.wait(waiters, timeout=wait, return_when="FIRST_COMPLETED")
                for waiter in waiters:
                    waiter.cancel()
                if stop.is_set():
                    break
                timed = next_unplug is not None and time.monotonic() >= next_unplug
                if toggle.is_set() or timed:
                    toggle.clear()
                    await _unplug_for(device, args.unplugged_for)
                    if next_unplug is not None:
                        next_unplug = time.monotonic() + args.unplug_every
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
    print("stopped", flush=True)
    return 0


async def _unplug_for(device: PtyDevice, pause: float) -> None:
    device.unplug()
    print(f"{time.strftime('%H:%M:%S')} unplugged", flush=True)
    await asyncio.sleep(pause)
    device.replug()
    print(f"{time.strftime('%H:%M:%S')} plugged in again on {device.pty_path}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())

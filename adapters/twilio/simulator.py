"""``tocsin simulate twilio``: the fake Twilio API server (:mod:`adapters.twilio.fake_server`)
as a command, for installers' rehearsals, the demo and benchmarks run in another process.

It prints the address and the settings a ``twilio_sms`` / ``twilio_voice`` adapter needs to use
it (``api_base_url``, ``account_sid``, ``auth_token``), then serves until Ctrl-C or SIGTERM.
The default account SID and auth token are demo values printed at start: the fake accepts
them and nothing else does; never use them for anything but the fake. Its test hooks are under
``/_fake/…`` (``GET /_fake/stats``, ``POST /_fake/script`` with JSON fields of the script…).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

from adapters.simulator_args import fraction, seconds
from adapters.twilio.fake_script import FakeScript
from adapters.twilio.fake_server import DEFAULT_WORKERS, FakeTwilio

#: Demo credentials, accepted only by the fake (printed at start; not secrets).
DEMO_ACCOUNT_SID = "AC" + "de" * 16
DEMO_AUTH_TOKEN = "0badc0de" * 4
DEFAULT_PORT = 8765
#: Enough for a city-scale benchmark run, small enough for a day-long rehearsal.
DEFAULT_MAX_RECORDS = 50_000


def _numbers(raw: str) -> list[str]:
    return [n.strip() for n in raw.split(",") if n.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tocsin simulate twilio",
        description="A fake Twilio REST API (2010-04-01) for the twilio_sms and twilio_voice "
        "adapters: answers like Twilio, then posts signed status callbacks, people's replies "
        "and key presses, with scripted failures. Runs until Ctrl-C or SIGTERM.",
        epilog="Without --numbers any E.164 number used as From is one of the account's "
        "numbers. --sms-url is where every number's inbound SMS (the scripted replies) go, "
        "e.g. the daemon's <public_url>/hooks/<adapter>/… webhook. Test hooks: GET "
        "/_fake/stats, /_fake/messages, /_fake/calls; POST /_fake/script (JSON fields of the "
        "script), /_fake/reply, /_fake/press, /_fake/callback, /_fake/idle, /_fake/reset.",
    )
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="default 127.0.0.1; the /_fake/ hooks need no credentials, so keep it on "
        "loopback or a lab network",
    )
    server.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: any free"
    )
    server.add_argument(
        "--account-sid", default=DEMO_ACCOUNT_SID, help="default: a demo SID (printed)"
    )
    server.add_argument(
        "--auth-token", default=DEMO_AUTH_TOKEN, help="default: a demo token (printed)"
    )
    server.add_argument(
        "--numbers",
        type=_numbers,
        metavar="+86…,+86…",
        help="the account's numbers (default: any E.164 number)",
    )
    server.add_argument("--sms-url", help="every number's inbound SMS webhook")
    server.add_argument("--voice-url", help="every number's voice webhook (stored only)")
    server.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"callbacks in flight at once (default {DEFAULT_WORKERS})",
    )
    server.add_argument(
        "--max-records",
        type=int,
        default=DEFAULT_MAX_RECORDS,
        metavar="N",
        help=f"messages (and calls) remembered, oldest forgotten first (default "
        f"{DEFAULT_MAX_RECORDS:,}; about 3 kB each with their callbacks)",
    )
    api = parser.add_argument_group("the API")
    api.add_argument("--latency", type=seconds, default=0.0, metavar="SECONDS")
    api.add_argument("--error-rate", type=fraction, default=0.0, help="500/503 answers")
    api.add_argument(
        "--rate-limit-burst", type=int, default=0, metavar="N", help="the first N creates: 429"
    )
    api.add_argument("--timeout-rate", type=fraction, default=0.0, help="creates that hang")
    api.add_argument(
        "--unsubscribed", type=_numbers, default=[], metavar="+86…,…", help="refused: 21610"
    )
    sms = parser.add_argument_group("messages")
    sms.add_argument("--undelivered-rate", type=fraction, default=0.0, help="error 30003")
    sms.add_argument("--failed-rate", type=fraction, default=0.0, help="error 30008")
    sms.add_argument("--reply-rate", type=fraction, default=0.0, help="people who reply")
    sms.add_argument(
        "--reply-text",
        action="append",
        metavar="TEXT",
        help="what they reply (repeat for several; default 1, 收到, Y)",
    )
    sms.add_argument("--reply-delay", type=seconds, default=1.0, metavar="SECONDS")
    calls = parser.add_argument_group("calls")
    calls.add_argument("--busy-rate", type=fraction, default=0.0)
    calls.add_argument("--no-answer-rate", type=fraction, default=0.0)
    calls.add_argument("--call-failed-rate", type=fraction, default=0.0, help="error 13224")
    calls.add_argument("--digits", default="1", help='keys pressed at a Gather ("": none)')
    calls.add_argument("--speak-delay", type=seconds, default=1.0, metavar="SECONDS")
    calls.add_argument("--gather-timeout", type=seconds, default=5.0, metavar="SECONDS")
    callbacks = parser.add_argument_group("callbacks")
    callbacks.add_argument("--callback-delay", type=seconds, default=0.2, metavar="SECONDS")
    callbacks.add_argument(
        "--no-callbacks",
        action="store_true",
        help="no callbacks, replies or TwiML: final statuses at once (a throughput benchmark)",
    )
    callbacks.add_argument("--callback-before-response", action="store_true")
    callbacks.add_argument("--duplicate-callbacks", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--summary-seconds",
        type=seconds,
        default=0.0,
        help="print the counters this often (0: never)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="one line per event")
    return parser


def _weights(named: dict[str, float], rest: str, what: str) -> dict[str, float]:
    total = sum(named.values())
    if total > 1.0 + 1e-9:
        raise ValueError(f"the {what} rates add up to more than 1")
    return {rest: max(0.0, 1.0 - total), **{k: v for k, v in named.items() if v > 0}}


def build_script(args: argparse.Namespace) -> FakeScript:
    """The script the command line describes (ValueError when it does not add up)."""
    sms = _weights(
        {"undelivered": args.undelivered_rate, "failed": args.failed_rate}, "delivered", "SMS"
    )
    calls = _weights(
        {
            "busy": args.busy_rate,
            "no-answer": args.no_answer_rate,
            "failed": args.call_failed_rate,
        },
        "answered",
        "call",
    )
    if args.rate_limit_burst < 0:
        raise ValueError("--rate-limit-burst must be ≥ 0")
    return FakeScript(
        latency=args.latency,
        error_rate=args.error_rate,
        rate_limit_burst=args.rate_limit_burst,
        timeout_rate=args.timeout_rate,
        sms_outcomes=sms,
        call_outcomes=calls,
        digits=args.digits,
        reply_rate=args.reply_rate,
        reply_texts=tuple(args.reply_text or ("1", "收到", "Y")),
        reply_delay=args.reply_delay,
        callback_delay=args.callback_delay,
        speak_delay=args.speak_delay,
        gather_timeout=args.gather_timeout,
        callback_before_response=args.callback_before_response,
        duplicate_callbacks=args.duplicate_callbacks,
        callbacks=not args.no_callbacks,
        unsubscribed=frozenset(args.unsubscribed),
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    """``tocsin simulate twilio [options]``; the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.workers < 1 or args.max_records < 1:
            raise ValueError("--workers and --max-records must be at least 1")
        script = build_script(args)
        fake = FakeTwilio(
            accounts={args.account_sid: args.auth_token},
            script=script,
            numbers=args.numbers,
            sms_url=args.sms_url,
            voice_url=args.voice_url,
            host=args.host,
            port=args.port,
            workers=args.workers,
            max_records=args.max_records,
            on_event=_print_event if args.verbose else None,
        )
    except (TypeError, ValueError) as exc:
        print(f"tocsin simulate twilio: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(fake, args))
    except OSError as exc:  # the port is taken, the host is not ours…
        print(f"tocsin simulate twilio: {exc}", file=sys.stderr)
        return 1


def _print_event(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


async def _run(fake: FakeTwilio, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with fake:
            demo = args.account_sid == DEMO_ACCOUNT_SID and args.auth_token == DEMO_AUTH_TOKEN
            numbers = ", ".join(args.numbers) if args.numbers else "any E.164 number"
            lines = [
                f"fake Twilio API listening on {fake.url}",
                "settings for a twilio_sms / twilio_voice adapter "
                + (
                    "(demo credentials: accepted by this fake only)"
                    if demo
                    else "(the credentials given)"
                ),
                f'  api_base_url = "{fake.url}"',
                f'  account_sid = "{args.account_sid}"',
                # Settings take secrets by reference only; the demo token is no secret.
                '  auth_token = "env:TWILIO_AUTH_TOKEN"'
                + (f"   # export TWILIO_AUTH_TOKEN={args.auth_token}" if demo else ""),
                f"numbers: {numbers}; inbound SMS to: {args.sms_url or 'nowhere (recorded only)'}",
                f"callbacks: {'off' if args.no_callbacks else 'on'}; test hooks under "
                f"{fake.url}/_fake/; Ctrl-C stops",
            ]
            print("\n".join(lines), flush=True)
            while not stop.is_set():
                timeout = args.summary_seconds or None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout)
                if args.summary_seconds and not stop.is_set():
                    print(_summary(fake.stats()), flush=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print(_summary(fake.stats()), flush=True)
    print("stopped", flush=True)
    return 0


def _summary(stats: dict[str, int]) -> str:
    keys = (
        "messages_created",
        "calls_created",
        "replies",
        "callbacks_sent",
        "callbacks_failed",
        "rate_limited",
        "errors_injected",
        "rejected",
        "pending",
    )
    return f"{time.strftime('%H:%M:%S')} " + ", ".join(
        f"{key.replace('_', ' ')} {stats.get(key, 0)}" for key in keys
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

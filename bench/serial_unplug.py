"""Benchmark: what a loose cable costs a serial adapter — a GSM modem pulled out every few
seconds while it sends, against the same run with the cable left alone.

In one run, in this process, against the GSM simulator on a real pseudo-terminal (each message
takes ``--submit-delay`` of simulated network time, as a real module's ``AT+CMGS`` does):

1. **baseline**: ``--messages`` SMS through ``GsmModemAdapter.send`` in batches of its
   ``max_batch``, a Retry sent again after its ``after`` (at most 1 s here) as the engine
   would, a not-ready adapter waited for (the engine hands it nothing meanwhile);
2. **unplugged**: the same while the simulator is unplugged every ``--every`` seconds for
   ``--unplugged-for`` seconds (the pty closed, the by-id link removed — to the adapter a
   pulled USB cable — then a new pty behind the same link).

It prints, for each: wall time and SMS per second (and the ratio unplugged ÷ baseline, the
measure that holds on a noisy machine), **messages lost** (every one must end Accepted: 0),
**duplicates** (messages the modem took more than once: the at-least-once cost of a cable
pulled while a message was on its way; at most one per unplug), the **longest send() call**
(bounded by ``send_budget``: a pulled cable never hangs a send), and the **recovery**: from
the replug to the adapter ready again (port reopened, modem set up) and to the first message
accepted after it (median and maximum over the unplugs).

    .venv/bin/python bench/serial_unplug.py
    .venv/bin/python bench/serial_unplug.py --messages 400 --every 2 --unplugged-for 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from adapters.gsm_modem.adapter import GsmModemAdapter
from adapters.gsm_modem.settings import GsmModemSettings
from adapters.gsm_modem.simulator import GsmModemSimulator
from dispatcher.adapter import (
    Accepted,
    DeviceStatus,
    Dispatch,
    Failed,
    Report,
    Retry,
    WarningContent,
)
from dispatcher.domain import Audience, Channel, Level, MsgType, Status

TEXT = "【演练，非真实预警】商州区暴雨红色预警：请立即转移到安全地带。收到请回复1。"


class _Context:
    adapter_name = "bench"
    node_name = "bench"

    def report(self, report: Report) -> None:
        pass

    def device_status(self, status: DeviceStatus) -> None:
        pass


@dataclass
class RunResult:
    wall: float
    accepted: int
    lost: int
    duplicates: int
    longest_send: float
    unplugs: int = 0
    to_ready: list[float] = field(default_factory=list)
    to_first_accept: list[float] = field(default_factory=list)


def _dispatches(n: int) -> list[Dispatch]:
    now = datetime.now(UTC)
    warning = WarningContent(
        id="bench",
        status=Status.EXERCISE,
        msg_type=MsgType.ALERT,
        level=Level.RED,
        event="暴雨",
        headline="商州区暴雨红色预警",
        description="",
        instruction="请立即转移到安全地带",
        area_codes=("611002000000",),
        sent=now,
        expires=now + timedelta(hours=2),
    )
    return [
        Dispatch(
            delivery_id=i,
            warning=warning,
            channel=Channel.SMS,
            audience=Audience.PERSON,
            target_id=f"P{i}",
            address=f"+86138{i:08d}",
            area_code="611002101201",
            attempt=1,
            text=TEXT,
        )
        for i in range(1, n + 1)
    ]


async def _run(args: argparse.Namespace, *, unplug: bool) -> RunResult:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(40)  # errors only
    )
    with tempfile.TemporaryDirectory(prefix="tocsin-bench-serial-") as scratch:
        sim = GsmModemSimulator(
            link=Path(scratch) / "gsm", submit_delay=args.submit_delay, report_delay=0.01
        )
        async with sim:
            settings = GsmModemSettings(
                port=sim.path,
                command_timeout=1,
                open_timeout=5,
                reopen_max=0.5,
                submit_timeout=2,
                send_budget=10,
                registration_check=60,
            )
            adapter = GsmModemAdapter(name="bench", settings=settings)
            await adapter.start(_Context())
            replugs: list[float] = []
            accepted_at: list[float] = []
            ready_at: list[float] = []
            stop = asyncio.Event()

            async def cable() -> None:
                while not stop.is_set():
                    await asyncio.sleep(args.every)
                    if stop.is_set():
                        return
                    sim.unplug()
                    await asyncio.sleep(args.unplugged_for)
                    sim.replug()
                    replugs.append(time.monotonic())
                    # Polled, as the engine polls it (the adapter has no event to wait on).
                    while adapter.not_ready_reason() is not None and not stop.is_set():  # noqa: ASYNC110
                        await asyncio.sleep(0.005)
                    ready_at.append(time.monotonic())

            pending = _dispatches(args.messages)
            lost = 0
            longest = 0.0
            started = time.monotonic()
            pulling = asyncio.create_task(cable()) if unplug else None
            try:
                while pending:
                    if adapter.not_ready_reason() is not None:
                        await asyncio.sleep(0.01)  # the engine hands a not-ready adapter nothing
                        continue
                    batch, pending = pending[: adapter.max_batch], pending[adapter.max_batch :]
                    t0 = time.monotonic()
                    outcomes = await adapter.send(batch)
                    longest = max(longest, time.monotonic() - t0)
                    again: list[Dispatch] = []
                    pause = 0.0
                    for dispatch, outcome in zip(batch, outcomes, strict=True):
                        if isinstance(outcome, Accepted):
                            accepted_at.append(time.monotonic())
                        elif isinstance(outcome, Retry):
                            again.append(dispatch)
                            pause = max(pause, min(outcome.after or 0.0, 1.0))
                        elif isinstance(outcome, Failed):
                            lost += 1
                    pending = again + pending
                    if again and pause:
                        await asyncio.sleep(pause)
            finally:
                stop.set()
                if pulling is not None:
                    pulling.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pulling
                wall = time.monotonic() - started
                await adapter.stop()
            counts = Counter(part.submit.destination for part in sim.sent)
            result = RunResult(
                wall=wall,
                accepted=len(accepted_at),
                lost=lost,
                duplicates=sum(n - 1 for n in counts.values()),
                longest_send=longest,
                unplugs=sim.unplugs,
            )
            for plugged_in, ready in zip(replugs, ready_at, strict=False):
                result.to_ready.append(ready - plugged_in)
                first = next((a for a in accepted_at if a >= plugged_in), None)
                if first is not None:
                    result.to_first_accept.append(first - plugged_in)
            return result


def _ms(values: list[float]) -> str:
    if not values:
        return "—"
    return f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--submit-delay", type=float, default=0.02)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between unplugs")
    parser.add_argument("--unplugged-for", type=float, default=0.5)
    args = parser.parse_args()
    base = asyncio.run(_run(args, unplug=False))
    pulled = asyncio.run(_run(args, unplug=True))
    print(
        f"{args.messages} SMS, {args.submit_delay * 1000:.0f} ms of network per message; "
        f"unplugged every {args.every:g} s for {args.unplugged_for:g} s"
    )
    for name, r in (("baseline", base), ("unplugged", pulled)):
        print(
            f"  {name:9}  wall {r.wall:6.2f} s  {r.accepted / r.wall:6.1f} SMS/s  "
            f"accepted {r.accepted}  lost {r.lost}  duplicates {r.duplicates}  "
            f"longest send() {r.longest_send * 1000:.0f} ms  unplugs {r.unplugs}"
        )
    ratio = (pulled.accepted / pulled.wall) / (base.accepted / base.wall)
    print(f"  throughput unplugged ÷ baseline: {ratio:.2f}")
    print(f"  replug → adapter ready:        {_ms(pulled.to_ready)}")
    print(f"  replug → first SMS accepted:   {_ms(pulled.to_first_accept)}")
    ok = pulled.lost == 0 and base.lost == 0 and pulled.accepted == args.messages
    ok = ok and pulled.duplicates <= pulled.unplugs
    print(f"  nothing lost, at most one duplicate per unplug: {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()

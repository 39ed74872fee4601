"""Benchmark: the Twilio adapters' own cost per message, against the fake Twilio server.

Measures, in one run on this machine, with the senders' and the account's limits lifted:

1. **SMS**: ``--sms`` texts (default 20,000) through ``TwilioSmsAdapter.send`` as the engine
   hands them: batches of the adapter's ``max_batch`` (200), ``--concurrency`` batches in
   flight (4, ``AdapterInstanceConfig.concurrency``'s default), the adapter's default cap of
   50 API requests in flight, 20 long codes at 1,000 SMS/s each (so no send waits for a
   token). Wall time, SMS per second, the client process's CPU per SMS
   (``time.process_time``), and the **CPU per SMS in Tocsin's own code** (goal < 1 ms);
2. **calls**: ``--calls`` (2,000) through ``TwilioVoiceAdapter.send`` (batches of 50, the same
   concurrency; ``max_concurrent_calls`` 10,000 because with callbacks off no call ever frees
   its slot; the adapter does not pace calls itself, the engine does): wall, calls/s, CPU per
   call;
3. **Apprise**'s Twilio notifications (``apprise.plugins.twilio.NotifyTwilio``) sending the same
   text to ``--apprise-sms`` (2,000) of the same numbers through the same fake: its SMS URL
   patched to the fake and its throttle (0.2 s between requests) set to 0, the limits lifted as
   for Tocsin. Apprise posts to the targets of one URL one after the other, each with a fresh
   ``requests.post`` (a new connection). **Sequential** is what a script does: one
   ``Apprise().notify()`` per URL of ``--apprise-chunk`` (100) targets, in turn; the ratio
   Tocsin SMS/s ÷ this is the goal (≥ 3×). **Parallel** is also shown: one ``Apprise`` holding
   every URL and one ``notify()``, which Apprise spreads over its thread pool;
4. the **floors**, the same SMS with the same batches and requests in flight: a raw aiohttp
   client posting the same form (what the fake and HTTP cost at least), and the twilio client
   alone (``client.messages.create_async``, no adapter), with its stock
   ``AsyncTwilioHttpClient`` and with the adapter's HTTP client (``make_client``).

The fake is ``tocsin simulate twilio --no-callbacks`` **in its own process**, so it does not
share the GIL with the client being measured (the machine's two cores: one each); its own CPU
per message is shown too (when it is near the wall time, the fake set the pace). Every figure
is the median of ``--repeat`` runs; the kinds of run are interleaved within each repeat, so
the machine's noise falls on all of them alike.

Tocsin's own CPU is found two ways:

- **attributed** (the goal's figure): one extra SMS run under cProfile (its default clock; the
  client hardly waits, the fake answering from the other core, and the time in epoll's poll is
  left out as waiting). A function's self time goes to the file it is in: Tocsin's own code is
  ``adapters/twilio/`` (not ``fake_*``) and ``dispatcher/``; time in builtins and generated
  code (dataclass ``__init__``) goes to the caller that called them (``str.encode`` in the
  segment count is Tocsin's, ``socket.send`` in aiohttp is aiohttp's). Tocsin's share of the
  profiled time times the unprofiled CPU per SMS (the median) is its CPU per SMS. Library
  code Tocsin calls (the twilio client, aiohttp, ``asyncio.timeout``, ``asyncio.gather``) is
  not Tocsin's here. cProfile charges a cost per call, so call-heavy code looks heavier than
  it is (``urllib.parse.urlencode`` quoting the Chinese body byte by byte shows as ~11 %, but
  takes ~23 µs of ~500 µs unprofiled); the shares are approximate, hence the second way:
- **difference**: the adapter's CPU per SMS minus the twilio client's alone through the same
  HTTP client (same batches, same requests in flight): all the adapter adds, the library
  calls it makes included (noisier: a difference of two medians).

    .venv/bin/pip install -e '.[bench]'       # Apprise, for the comparison
    .venv/bin/python bench/twilio_sms.py --repeat 3
    .venv/bin/python bench/twilio_sms.py --repeat 5 --sms 50000 --apprise-sms 5000
    .venv/bin/python bench/twilio_sms.py --repeat 1 --no-profile --apprise-sms 0
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import gc
import json
import os
import pstats
import statistics
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.twilio.settings import TwilioSmsSettings, TwilioVoiceSettings  # noqa: E402
from adapters.twilio.sms import TwilioSmsAdapter  # noqa: E402
from adapters.twilio.voice import TwilioVoiceAdapter  # noqa: E402
from dispatcher.adapter import (  # noqa: E402
    Accepted,
    DeviceStatus,
    Dispatch,
    Outcome,
    Report,
    WarningContent,
)
from dispatcher.domain import Audience, Channel, Level, MsgType, Status  # noqa: E402
from dispatcher.engine.message_text import render_text  # noqa: E402

T = TypeVar("T")

ACCOUNT_SID = "AC" + "be" * 16
#: Hex, as Twilio's tokens are (Apprise checks); the loopback fake's only.
AUTH_TOKEN = "be5c4" * 6 + "00"
PUBLIC_URL = "https://tocsin.example.cn"
#: A red warning reaches people through many long codes; 20 at 1,000/s each lifts the limit.
SENDERS = [f"+861069000{n:04d}" for n in range(1, 21)]
AREA = "611002000000"


# -- what is sent -------------------------------------------------------------------------------
def red_warning() -> WarningContent:
    sent = datetime.now(UTC).replace(microsecond=0)
    return WarningContent(
        id="W-BENCH-TWILIO",
        status=Status.ACTUAL,
        msg_type=MsgType.ALERT,
        level=Level.RED,
        event="暴雨",
        headline="商州区暴雨红色预警",
        description="过去3小时商州区降雨量已达50毫米以上，且降雨将持续。",
        instruction="请立即转移到安全地带，远离河道、山洪沟和地质灾害隐患点",
        area_codes=(AREA,),
        sent=sent,
        expires=sent + timedelta(hours=6),
    )


def recipient(n: int) -> str:
    return f"+86138{n:08d}"


def dispatches(warning: WarningContent, channel: Channel, count: int, start: int) -> list[Dispatch]:
    """``count`` people, text rendered as the engine renders it for the channel."""
    text = render_text(warning, audience=Audience.PERSON.value, channel=channel.value)
    return [
        Dispatch(
            delivery_id=start + n,
            warning=warning,
            channel=channel,
            audience=Audience.PERSON,
            target_id=f"P{start + n}",
            address=recipient(start + n),
            area_code=f"6110021012{n % 100:02d}",
            attempt=1,
            text=text,
        )
        for n in range(count)
    ]


class Context:
    """The engine's side of the adapter contract; nothing comes back with callbacks off."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.reports = 0

    @property
    def adapter_name(self) -> str:
        return self._name

    @property
    def node_name(self) -> str:
        return "bench"

    def report(self, report: Report) -> None:
        self.reports += 1

    def device_status(self, status: DeviceStatus) -> None:
        pass


# -- the fake, in its own process --------------------------------------------------------------
class FakeProcess:
    """``tocsin simulate twilio --no-callbacks`` in a subprocess; its CPU read with psutil."""

    def __init__(self, numbers: Sequence[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOCSIN_", "TWILIO_"))}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatcher.cli",
                "simulate",
                "twilio",
                "--port",
                "0",
                "--no-callbacks",
                "--account-sid",
                ACCOUNT_SID,
                "--auth-token",
                AUTH_TOKEN,
                "--numbers",
                ",".join(numbers),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        if "listening on" not in first:
            self.stop()
            raise RuntimeError(f"the fake did not start: {first!r}")
        self.url = first.rsplit(" ", 1)[1].strip()
        self._ps = psutil.Process(self.process.pid)

    def control(self, path: str) -> dict[str, int]:
        """A test hook of the fake (``/_fake/reset``, ``/_fake/stats``)."""
        method = "POST" if path == "reset" else "GET"
        url = f"{self.url}/_fake/{path}"
        request = urllib.request.Request(url, method=method)  # noqa: S310 (the fake, http)
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            answer: dict[str, int] = json.loads(response.read())
        return answer

    def cpu(self) -> float:
        times = self._ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# -- measuring ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    count: int
    wall: float
    #: The client process's CPU (all threads), seconds.
    cpu: float
    #: The fake's CPU, seconds.
    fake_cpu: float

    @property
    def rate(self) -> float:
        return self.count / self.wall

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.count

    @property
    def fake_ms(self) -> float:
        return 1000 * self.fake_cpu / self.count


def before(fake: FakeProcess) -> None:
    """Every run finds the fake alike: its records forgotten (warm-ups were before)."""
    fake.control("reset")
    gc.collect()


def after(fake: FakeProcess, count: int, run: Run) -> Run:
    """The fake created what was sent: the run did hit it."""
    stats = fake.control("stats")
    created = stats.get("messages_created", 0) + stats.get("calls_created", 0)
    if created != count:
        raise RuntimeError(f"the fake created {created} messages and calls, not {count}")
    return run


def measure(fake: FakeProcess, count: int, work: Callable[[], T]) -> tuple[Run, T]:
    before(fake)
    fake_before = fake.cpu()
    cpu_before = time.process_time()
    started = time.perf_counter()
    result = work()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    return after(fake, count, Run(count, wall, cpu, fake.cpu() - fake_before)), result


async def measure_async(
    fake: FakeProcess, count: int, work: Callable[[], Awaitable[T]]
) -> tuple[Run, T]:
    before(fake)
    fake_before = fake.cpu()
    cpu_before = time.process_time()
    started = time.perf_counter()
    result = await work()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    return after(fake, count, Run(count, wall, cpu, fake.cpu() - fake_before)), result


async def drive(
    items: Sequence[T],
    batch_size: int,
    concurrency: int,
    send: Callable[[Sequence[T]], Awaitable[Sequence[Any]]],
) -> list[Any]:
    """Hand ``items`` to ``send`` in batches, ``concurrency`` batches in flight, as the engine
    hands an adapter instance its share."""
    batches = iter([items[i : i + batch_size] for i in range(0, len(items), batch_size)])
    results: list[Any] = []

    async def worker() -> None:
        for batch in batches:
            results.extend(await send(batch))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def check_accepted(what: str, outcomes: Sequence[Outcome], count: int) -> None:
    accepted = sum(isinstance(o, Accepted) for o in outcomes)
    if accepted != count:
        others = [o for o in outcomes if not isinstance(o, Accepted)][:3]
        raise RuntimeError(f"{what}: {accepted} of {count} accepted; e.g. {others}")


# -- Tocsin -------------------------------------------------------------------------------------
def sms_settings(url: str, requests: int) -> TwilioSmsSettings:
    return TwilioSmsSettings.model_validate(
        {
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "public_url": PUBLIC_URL,
            "api_base_url": url,
            "senders": SENDERS,
            "sender_rate": 1000,
            "max_concurrent_requests": requests,
        }
    )


async def tocsin_sms(
    fake: FakeProcess,
    batch: list[Dispatch],
    args: argparse.Namespace,
    profiler: cProfile.Profile | None = None,
) -> Run:
    adapter = TwilioSmsAdapter(name="sms", settings=sms_settings(fake.url, args.requests))
    return await adapter_run("Tocsin SMS", adapter, fake, batch, args, profiler)


async def tocsin_calls(
    fake: FakeProcess,
    batch: list[Dispatch],
    args: argparse.Namespace,
    profiler: cProfile.Profile | None = None,
) -> Run:
    settings = TwilioVoiceSettings.model_validate(
        {
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "public_url": PUBLIC_URL,
            "api_base_url": fake.url,
            "callers": SENDERS,
            "calls_per_second": 100,
            # With callbacks off no call frees its slot: room for every call of the run.
            "max_concurrent_calls": 10000,
            "max_concurrent_requests": args.requests,
        }
    )
    adapter = TwilioVoiceAdapter(name="voice", settings=settings)
    return await adapter_run("Tocsin calls", adapter, fake, batch, args, profiler)


async def adapter_run(
    what: str,
    adapter: TwilioSmsAdapter | TwilioVoiceAdapter,
    fake: FakeProcess,
    batch: list[Dispatch],
    args: argparse.Namespace,
    profiler: cProfile.Profile | None,
) -> Run:
    """Start the adapter, warm it up (connections, twilio's lazily imported resources), then
    send the batch as the engine hands it, under the profiler when one is given."""
    await adapter.start(Context(adapter.name))
    try:
        warm = await adapter.send(batch[: adapter.max_batch])
        check_accepted(f"{what} warm-up", warm, len(warm))

        async def work() -> list[Outcome]:
            if profiler is not None:
                profiler.enable()
            try:
                return await drive(batch, adapter.max_batch, args.concurrency, adapter.send)
            finally:
                if profiler is not None:
                    profiler.disable()

        run, outcomes = await measure_async(fake, len(batch), work)
        check_accepted(what, outcomes, len(batch))
        return run
    finally:
        await adapter.stop()


# -- the floors ---------------------------------------------------------------------------------
async def twilio_client_sms(
    fake: FakeProcess, batch: list[Dispatch], args: argparse.Namespace, *, stock: bool
) -> Run:
    """The twilio client alone: ``messages.create_async`` with the same arguments, the same
    batches and requests in flight, no adapter. ``stock``: twilio's own
    ``AsyncTwilioHttpClient`` (as a user of the library has it; it formats its log lines and
    builds a BasicAuth every request); else the adapter's (``make_client``: the same client
    the adapter uses, so the difference to the adapter is what the adapter adds)."""
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    from adapters.twilio.client import make_client

    if stock:
        http = AsyncTwilioHttpClient()
        client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=http)
        client.edge = None
        client.region = None
        client.api.base_url = fake.url
    else:
        client, http = make_client(sms_settings(fake.url, args.requests))
    requests = asyncio.Semaphore(args.requests)
    status_url = f"{PUBLIC_URL}/hooks/sms/status"

    async def one(d: Dispatch) -> Outcome:
        async with requests:
            message = await client.messages.create_async(
                to=d.address,
                from_=SENDERS[d.delivery_id % len(SENDERS)],
                body=d.text,
                status_callback=f"{status_url}?d={d.delivery_id}",
            )
        return Accepted(reference=message.sid or "")

    async def send(part: Sequence[Dispatch]) -> Sequence[Outcome]:
        return await asyncio.gather(*(one(d) for d in part))

    try:
        await send(batch[:200])
        run, outcomes = await measure_async(
            fake, len(batch), lambda: drive(batch, 200, args.concurrency, send)
        )
        check_accepted("twilio client", outcomes, len(batch))
        return run
    finally:
        await http.close()


async def raw_aiohttp_sms(
    fake: FakeProcess, batch: list[Dispatch], args: argparse.Namespace
) -> Run:
    """The same form posted by a bare aiohttp client: what HTTP and the fake cost at least."""
    url = f"{fake.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    auth = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    headers = {"Authorization": auth, "Accept": "application/json"}
    status_url = f"{PUBLIC_URL}/hooks/sms/status"
    requests = asyncio.Semaphore(args.requests)

    async with aiohttp.ClientSession() as session:

        async def one(d: Dispatch) -> Outcome:
            form = {
                "To": d.address,
                "From": SENDERS[d.delivery_id % len(SENDERS)],
                "Body": d.text,
                "StatusCallback": f"{status_url}?d={d.delivery_id}",
            }
            async with requests, session.post(url, data=form, headers=headers) as response:
                body = json.loads(await response.read())
            if response.status != 201:
                raise RuntimeError(f"the fake answered {response.status}: {body}")
            return Accepted(reference=body["sid"])

        async def send(part: Sequence[Dispatch]) -> Sequence[Outcome]:
            return await asyncio.gather(*(one(d) for d in part))

        await send(batch[:200])
        run, outcomes = await measure_async(
            fake, len(batch), lambda: drive(batch, 200, args.concurrency, send)
        )
        check_accepted("raw aiohttp", outcomes, len(batch))
        return run


# -- Apprise ------------------------------------------------------------------------------------
def apprise_available() -> bool:
    try:
        import apprise  # noqa: F401
    except ImportError:
        return False
    return True


def patch_apprise(url: str) -> None:
    """NotifyTwilio to the fake, without its throttle (the limits lifted, as for Tocsin)."""
    from apprise.plugins.twilio import NotifyTwilio

    NotifyTwilio.notify_sms_url = url + "/2010-04-01/Accounts/{sid}/Messages.json"
    NotifyTwilio.request_rate_per_sec = 0.0


def apprise_urls(numbers: Sequence[str], chunk: int) -> list[str]:
    return [
        f"twilio://{ACCOUNT_SID}:{AUTH_TOKEN}@{SENDERS[0]}/" + "/".join(numbers[i : i + chunk])
        for i in range(0, len(numbers), chunk)
    ]


def apprise_sequential(text: str, numbers: Sequence[str], chunk: int) -> None:
    """One notify() per URL of ``chunk`` targets, one after the other (a script's loop)."""
    import apprise

    for url in apprise_urls(numbers, chunk):
        notifier = apprise.Apprise()
        if not notifier.add(url):
            raise RuntimeError("Apprise did not take the Twilio URL")
        if not notifier.notify(body=text):
            raise RuntimeError("Apprise reported a failure")


def apprise_parallel(text: str, numbers: Sequence[str], chunk: int) -> None:
    """Every URL in one Apprise, one notify(): Apprise runs the URLs on its thread pool."""
    import apprise

    notifier = apprise.Apprise()
    for url in apprise_urls(numbers, chunk):
        if not notifier.add(url):
            raise RuntimeError("Apprise did not take the Twilio URL")
    if not notifier.notify(body=text):
        raise RuntimeError("Apprise reported a failure")


# -- attributing CPU ----------------------------------------------------------------------------
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
_TOCSIN = (ROOT / "adapters" / "twilio", ROOT / "dispatcher")
TOCSIN = "Tocsin (adapters/twilio, dispatcher)"


def owner(filename: str) -> str | None:
    """Whose code a file is; None for builtins and generated code (their caller's)."""
    if filename in ("~", "<string>") or filename.startswith("<"):
        return None
    path = Path(filename).resolve()
    for base in _TOCSIN:
        if path.is_relative_to(base):
            return "the fake" if path.name.startswith("fake_") else TOCSIN
    if "site-packages" in path.parts:
        index = path.parts.index("site-packages")
        return path.parts[index + 1].removesuffix(".py")
    if path.is_relative_to(_STDLIB):
        return "stdlib " + path.relative_to(_STDLIB).parts[0].removesuffix(".py")
    return "other"


Key = tuple[str, int, str]


def attribute(profiler: cProfile.Profile) -> tuple[dict[str, float], dict[Key, float], float]:
    """(CPU by owner, CPU by Tocsin function, total): self time, with builtins and generated
    code charged to their callers."""
    stats: dict[Key, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    owners: dict[Key, str | None] = {key: owner(key[0]) for key in stats}

    def resolve(key: Key, depth: int = 0) -> str:
        """The owner of a key, following unowned callers up a few levels."""
        own = owners.get(key)
        if own is not None:
            return own
        if depth > 3:
            return "builtins"
        callers = stats[key][4] if key in stats else {}
        if not callers:
            return "builtins"
        # The caller that spent the most time here.
        best = max(callers, key=lambda c: callers[c][2])
        return resolve(best, depth + 1)

    by_owner: dict[str, float] = defaultdict(float)
    by_function: dict[Key, float] = defaultdict(float)
    total = 0.0
    for key, (_cc, _nc, tt, _ct, callers) in stats.items():
        if key[0] == "~" and "poll" in key[2]:
            continue  # waiting for the fake, not work
        total += tt
        if owners[key] is not None:
            by_owner[str(owners[key])] += tt
            if owners[key] == TOCSIN:
                by_function[key] += tt
            continue
        if not callers:
            by_owner["builtins"] += tt
            continue
        for caller, (_ccc, _cnc, ctt, _cct) in callers.items():
            who = resolve(caller)
            by_owner[who] += ctt
            if who == TOCSIN:
                target = caller if owners.get(caller) == TOCSIN else key
                by_function[target] += ctt
    return dict(by_owner), dict(by_function), total


def show_profile(what: str, profiler: cProfile.Profile, cpu_ms: float, per: str) -> float:
    """Print where the CPU went; returns Tocsin's own CPU per message (ms)."""
    by_owner, by_function, total = attribute(profiler)
    share = by_owner.get(TOCSIN, 0.0) / total
    print(f"  where the client's CPU goes, {what} (cProfile, self time; epoll left out):")
    for who, seconds in sorted(by_owner.items(), key=lambda kv: -kv[1])[:9]:
        print(f"    {100 * seconds / total:5.1f} %  {who}")
    print(f"  Tocsin's own functions, {what} (self time and the builtins they call):")
    for key, seconds in sorted(by_function.items(), key=lambda kv: -kv[1])[:8]:
        where = Path(key[0]).resolve()
        shown = where.relative_to(ROOT) if where.is_relative_to(ROOT) else key[0]
        print(f"    {100 * seconds / total:5.2f} %  {shown}:{key[1]} {key[2]}")
    own = share * cpu_ms
    print(
        f"  Tocsin's share {100 * share:.1f} % × {cpu_ms:.3f} ms/{per} (unprofiled median) "
        f"= {own:.3f} ms of CPU per {per} in Tocsin's own code",
        flush=True,
    )
    return own


# -- main ---------------------------------------------------------------------------------------
def line(what: str, runs: Sequence[Run], unit: str) -> Run:
    """Print the runs and their medians; returns the median as a Run."""
    med = Run(
        runs[0].count,
        statistics.median(r.wall for r in runs),
        statistics.median(r.cpu for r in runs),
        statistics.median(r.fake_cpu for r in runs),
    )
    rates = ", ".join(f"{r.rate:,.0f}" for r in runs)
    print(
        f"{what}: {med.count:,} in {med.wall:.2f} s = {med.rate:,.0f} {unit}/s ({rates}); "
        f"client CPU {med.cpu_ms:.3f} ms/{unit}; the fake's CPU {med.fake_ms:.3f} ms/{unit}",
        flush=True,
    )
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sms", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--apprise-sms", type=int, default=2_000, help="0: no Apprise")
    parser.add_argument("--apprise-chunk", type=int, default=100, help="targets per URL")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight")
    parser.add_argument(
        "--requests", type=int, default=50, help="max_concurrent_requests (its default: 50)"
    )
    parser.add_argument("--no-profile", action="store_true", help="no attribution run")
    parser.add_argument("--no-floors", action="store_true", help="no raw aiohttp, twilio alone")
    args = parser.parse_args()

    warning = red_warning()
    sms = dispatches(warning, Channel.SMS, args.sms, start=1)
    calls = dispatches(warning, Channel.VOICE, args.calls, start=1)
    text = sms[0].text
    with_apprise = args.apprise_sms > 0 and apprise_available()
    print(
        f"SMS text ({len(text)} characters, UCS-2, 1 segment): {text}\n"
        f"fake: tocsin simulate twilio --no-callbacks, in its own process; client: this "
        f"process; {len(SENDERS)} senders at 1,000/s; batches of 200 SMS / 50 calls, "
        f"{args.concurrency} in flight, {args.requests} requests in flight; load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
        flush=True,
    )
    fake = FakeProcess(SENDERS)
    try:
        print(f"fake Twilio at {fake.url} (pid {fake.process.pid})", flush=True)
        if with_apprise:
            patch_apprise(fake.url)
        runs: dict[str, list[Run]] = defaultdict(list)
        numbers = [d.address for d in sms[: args.apprise_sms]]
        for index in range(args.repeat):
            if not args.no_floors:
                runs["raw"].append(asyncio.run(raw_aiohttp_sms(fake, sms, args)))
                runs["stock"].append(asyncio.run(twilio_client_sms(fake, sms, args, stock=True)))
                runs["twilio"].append(asyncio.run(twilio_client_sms(fake, sms, args, stock=False)))
            runs["sms"].append(asyncio.run(tocsin_sms(fake, sms, args)))
            runs["calls"].append(asyncio.run(tocsin_calls(fake, calls, args)))
            if with_apprise:
                runs["apprise"].append(
                    measure(
                        fake,
                        len(numbers),
                        lambda: apprise_sequential(text, numbers, args.apprise_chunk),
                    )[0]
                )
                runs["apprise-par"].append(
                    measure(
                        fake,
                        len(numbers),
                        lambda: apprise_parallel(text, numbers, args.apprise_chunk),
                    )[0]
                )
            done = ", ".join(
                f"{k} {v[-1].rate:,.0f}/s {v[-1].cpu_ms:.2f} ms" for k, v in runs.items()
            )
            print(
                f"  run {index + 1} (rate, client CPU per message): {done}; "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )

        print(f"\nmedians of {args.repeat} (single runs' rates in brackets):")
        if not args.no_floors:
            raw = line("floor: raw aiohttp, the same form", runs["raw"], "SMS")
            stock = line(
                "floor: the twilio client alone, its stock AsyncTwilioHttpClient",
                runs["stock"],
                "SMS",
            )
            alone = line(
                "floor: the twilio client alone, the adapter's HTTP client (make_client)",
                runs["twilio"],
                "SMS",
            )
        tocsin = line("Tocsin TwilioSmsAdapter.send", runs["sms"], "SMS")
        voice = line("Tocsin TwilioVoiceAdapter.send", runs["calls"], "call")
        if not args.no_floors:
            print(
                f"  the adapter adds {tocsin.cpu_ms - alone.cpu_ms:+.3f} ms CPU/SMS to the "
                f"twilio client's {alone.cpu_ms:.3f} through the same HTTP client (rate "
                f"{tocsin.rate / alone.rate:.2f}×); the twilio client adds "
                f"{alone.cpu_ms - raw.cpu_ms:+.3f} ms to raw aiohttp's {raw.cpu_ms:.3f} "
                f"({stock.cpu_ms - raw.cpu_ms:+.3f} ms with its stock HTTP client)",
                flush=True,
            )
        if with_apprise:
            seq = line(
                f"Apprise NotifyTwilio, sequential ({args.apprise_chunk} targets a notify)",
                runs["apprise"],
                "SMS",
            )
            par = line(
                "Apprise NotifyTwilio, parallel (every URL in one notify)",
                runs["apprise-par"],
                "SMS",
            )
            ratio = tocsin.rate / seq.rate
            print(
                f"Tocsin SMS/s ÷ Apprise sequential: {ratio:.1f}× (goal ≥ 3×) "
                + ("OK" if ratio >= 3 else "MISSED")
                + f"; ÷ Apprise parallel: {tocsin.rate / par.rate:.1f}×; CPU per SMS "
                f"Apprise {seq.cpu_ms:.3f} ms vs Tocsin {tocsin.cpu_ms:.3f} ms",
                flush=True,
            )
        else:
            print("no Apprise comparison (--apprise-sms 0, or: pip install -e '.[bench]')")

        if not args.no_profile:
            profiler = cProfile.Profile()
            asyncio.run(tocsin_sms(fake, sms, args, profiler))
            own = show_profile("SMS", profiler, tocsin.cpu_ms, "SMS")
            print(
                f"CPU per SMS in Tocsin's own code: {own:.3f} ms (goal < 1 ms) "
                + ("OK" if own < 1 else "MISSED"),
                flush=True,
            )
            profiler = cProfile.Profile()
            asyncio.run(tocsin_calls(fake, calls, args, profiler))
            show_profile("calls", profiler, voice.cpu_ms, "call")
    finally:
        fake.stop()


if __name__ == "__main__":
    main()

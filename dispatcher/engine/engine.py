"""The engine: one claim loop per channel, a timer sweep, the acknowledgement intake, and the
book of devices' state.

A channel's loop claims as many due deliveries as its adapter instances can take now (rate
limit, concurrency, circuit breaker), most urgent first, and hands each instance its share as a
batch; each batch's outcomes are decided (:mod:`decide`) and recorded in one transaction. No
asyncio task per delivery: a retry or an acknowledgement deadline is a row's due time, and the
sweep (:meth:`EngineOps.sweep`) enforces deadlines.

When every instance serving a channel is paused (or none is configured), its people
deliveries fall over to the next step of their ladder (SMS → call); the rest wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Sequence

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dispatcher.adapter import (
    Accepted,
    Dispatch,
    Failed,
    ReceivesWebhooks,
    Retry,
    WarningContent,
    WebhookRoute,
)
from dispatcher.adapter_config import AdapterSpec
from dispatcher.config import EngineConfig
from dispatcher.domain import Audience, Channel, DeliveryState
from dispatcher.engine.ack_intake import AckIntake
from dispatcher.engine.adapter_host import RECONNECT_POLL, AdapterHost
from dispatcher.engine.backoff import Backoff
from dispatcher.engine.decide import decide, put_back
from dispatcher.engine.device_status import DeviceStatusBook, DeviceStatusStore
from dispatcher.engine.message_text import render_text
from dispatcher.engine.types import ClaimedDelivery, LevelRules, Transition, VillageFallback
from dispatcher.planner import DEVICE_PRIORITY
from dispatcher.policy import AudienceSelector, LevelPolicy, Policy
from dispatcher.store.connections import StoreUnavailable
from dispatcher.store.engine_ops import VISIT_PRIORITY, EngineOps

log = structlog.get_logger(__name__)

#: Every priority a delivery can have, most urgent first (the claim walks them in order).
PRIORITIES: tuple[int, ...] = tuple(
    sorted(
        set(DEVICE_PRIORITY.values()) | {s.priority for s in AudienceSelector} | {VISIT_PRIORITY}
    )
)
SWEEP_INTERVAL = 0.5
#: Loudspeakers, transmitters and modems reach whole villages per message: their claims and
#: outcomes take the store writer's urgent lane, ahead of a fan-out's bulk SMS work.
DEVICE_CHANNELS = frozenset({Channel.SPEAKER.value, Channel.TRANSMITTER.value, Channel.MODEM.value})
#: Warnings whose texts are kept in memory for rendering messages.
_CONTENT_CACHE = 256
#: Between tries to record a batch's outcomes while the store cannot be reached.
_RECORD_RETRY_MIN = 0.5
_RECORD_RETRY_MAX = 5.0
#: How long a channel with no usable adapter waits before falling over its next batch.
FALLOVER_INTERVAL = 1.0


def level_rules(policy: Policy, engine: EngineConfig) -> dict[str, LevelRules]:
    rules = {}
    for level, lp in policy.levels.items():
        device_timeout = getattr(lp, "device_ack_timeout", None)
        rules[level.value] = LevelRules(
            ack_timeout=lp.ack_timeout,
            device_ack_timeout=(
                engine.device_ack_timeout if device_timeout is None else float(device_timeout)
            ),
            max_attempts=lp.max_attempts,
            visit=bool(getattr(lp, "visit", False)),
            fallback=_village_fallback(lp),
        )
    return rules


def _village_fallback(lp: LevelPolicy) -> VillageFallback | None:
    fallback = lp.device_fallback
    if fallback is None or fallback.audience.role is None:
        return None
    return VillageFallback(
        selector=fallback.audience.value,
        role_bit=fallback.audience.role.bit,
        channels=tuple(c.value for c in fallback.channels),
        audience=fallback.audience.audience.value,
        # The village lost its loudspeaker: whoever stands in for it goes with the grid members.
        priority=AudienceSelector.GRID_MEMBERS.priority,
    )


class Engine:
    def __init__(
        self,
        store: EngineOps,
        *,
        config: EngineConfig,
        policy: Callable[[], Policy],
        adapters: Sequence[AdapterSpec],
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._policy = policy
        self._clock = clock
        self._backoff = Backoff(config.retry_base, config.retry_cap, rng or random.Random())  # noqa: S311 (jitter, not secrets)
        self._levels_for: tuple[Policy, dict[str, LevelRules]] | None = None
        registry = registry or CollectorRegistry()
        self._metrics = _EngineMetrics(registry)
        self.intake = AckIntake(
            store,
            levels=self.levels,
            visit_delay=config.visit_delay,
            retry_delay=self._backoff.delay,
            batch_size=config.report_batch,
            registry=registry,
            on_applied=self.wake,
        )
        #: Devices' online/offline state as their adapters report it, written in batches.
        self.devices = DeviceStatusBook(
            store if isinstance(store, DeviceStatusStore) else None, registry=registry
        )
        self.hosts = [
            AdapterHost(
                spec, self.intake.report, status_sink=self.devices.record, node_name=store.node
            )
            for spec in adapters
        ]
        self._routes: dict[str, list[AdapterHost]] = {c.value: [] for c in Channel}
        for host in self.hosts:
            host.on_ready = self.wake
            for channel in sorted(host.spec.channels):
                self._routes[channel.value].append(host)
        self._wake = {c: asyncio.Event() for c in self._routes}
        self._contents: dict[int, WarningContent] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._started = False

    # -- public ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._started and all(not t.done() for t in self._loops)

    def levels(self) -> dict[str, LevelRules]:
        policy = self._policy()
        if self._levels_for is None or self._levels_for[0] is not policy:
            self._levels_for = (policy, level_rules(policy, self._config))
        return self._levels_for[1]

    def adapter_status(self) -> list[dict[str, object]]:
        """Each adapter instance as the engine sees it (GET /v1/adapters)."""
        return [host.status() for host in self.hosts]

    def webhooks(self) -> list[tuple[str, WebhookRoute]]:
        """The webhook endpoints of the adapter instances that have them, by instance name."""
        return [
            (host.name, route)
            for host in self.hosts
            if isinstance(host.adapter, ReceivesWebhooks)
            for route in host.adapter.webhooks()
        ]

    def wake(self) -> None:
        """New work may be due (a plan stage committed, a step released, an adapter ready)."""
        for event in self._wake.values():
            event.set()

    async def start(self) -> None:
        reclaimed = await self._store.reclaim_own_leases(now=self._clock())
        if reclaimed:
            log.warning("deliveries in flight at the last stop are due again", count=reclaimed)
        self.intake.start()
        self.devices.start()
        for host in self.hosts:
            host.start()
        for channel, hosts in self._routes.items():
            if not hosts:
                log.info("no adapter serves this channel; its people fall over", channel=channel)
            self._loops.append(
                asyncio.create_task(self._channel_loop(channel), name=f"tocsin-engine-{channel}")
            )
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="tocsin-engine-sweep")
        self._started = True

    async def stop(self) -> None:
        """Stop claiming, let in-flight sends finish within the drain timeout and record them,
        record queued reports, stop the adapters. Sends still running after the drain keep
        their lease and are sent again at the next start."""
        self._stopping = True
        self.wake()
        drain = self._config.drain_timeout
        if self._loops:
            _done, pending = await asyncio.wait(self._loops, timeout=drain)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._loops, return_exceptions=True)
        if self._sends:
            _done, pending = await asyncio.wait(set(self._sends), timeout=drain)
            if pending:
                log.warning(
                    "sends still running at shutdown; leased for the next start",
                    batches=len(pending),
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.intake.stop(drain_seconds=drain)
        for host in self.hosts:
            await host.stop()
        # After the adapters: what they reported up to their stop is written too.
        await self.devices.stop()
        self._started = False

    # -- claim loop -----------------------------------------------------------------------------
    async def _channel_loop(self, channel: str) -> None:
        hosts = self._routes[channel]
        wake = self._wake[channel]
        while not self._stopping:
            wake.clear()
            try:
                waited = await self._channel_step(channel, hosts)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.warning("engine step waits for the store", channel=channel, error=str(exc))
                waited = 1.0
            except Exception:
                log.exception("engine step failed", channel=channel)
                waited = 1.0
            if waited > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), waited)
            else:
                await asyncio.sleep(0)

    async def _channel_step(self, channel: str, hosts: list[AdapterHost]) -> float:
        """Claim and hand out one round of work; return how long to wait before the next
        (0: go again at once)."""
        now = self._clock()
        for h in hosts:
            # Kept current here, not only after a batch: an unplugged modem sends no batches.
            self._metrics.ready.labels(h.name).set(int(h.ready and h.not_ready_reason() is None))
            self._metrics.paused.labels(h.name).set(int(h.paused))
        capacities = {h.name: h.capacity() for h in hosts}
        total = min(sum(capacities.values()), self._config.batch_size)
        if total == 0:
            if hosts and not all(h.paused for h in hosts):
                # Busy, rate-limited or starting: wait for a token or a finished batch.
                waits = [h.seconds_until_capacity() for h in hosts if h.ready]
                positive = [w for w in waits if w > 0]
                # Rate-limited: until the tokens are there. Busy: a finished batch wakes us.
                return min(positive) if positive else 0.2
            return await self._fall_over(channel, hosts, now)
        claimed = await self._store.claim_due(
            channel,
            total,
            now=now,
            lease=self._config.lease,
            priorities=PRIORITIES,
            urgent=channel in DEVICE_CHANNELS,
        )
        if not claimed:
            next_due = await self._store.next_due_at(channel, PRIORITIES)
            if next_due is None:
                return 1.0
            return max(0.01, min(1.0, next_due - self._clock()))
        self._metrics.claimed.labels(channel).inc(len(claimed))
        shares, leftover = _share_out(claimed, hosts, capacities)
        # Read what the batches need first: each batch's task then reaches its adapter host
        # without waiting (counting against its concurrency and the half-open probe) before
        # this loop looks at the capacities again.
        await self._warning_contents(c.warning_seq for c in claimed)
        for host, share in shares:
            host.bucket.take(len(share))
            task = asyncio.create_task(
                self._send_batch(host, share), name=f"tocsin-batch-{host.name}"
            )
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        if leftover:
            await self._record([_put_back_leftover(c, hosts, now) for c in leftover])
        return 0.0

    async def _fall_over(self, channel: str, hosts: list[AdapterHost], now: float) -> float:
        claimed = await self._store.claim_due(
            channel,
            self._config.batch_size,
            now=now,
            lease=self._config.lease,
            priorities=PRIORITIES,
        )
        if not claimed:
            return FALLOVER_INTERVAL
        # Until the first instance may take them again (its breaker's probe, or its next
        # start when it is not ready); 30 s when no instance is configured.
        if hosts:
            pause = min(h.seconds_until_usable for h in hosts) or FALLOVER_INTERVAL
            resume_at: float | None = now + pause
            why = f"every {channel} adapter is paused ({', '.join(map(_why_paused, hosts))})"
        else:
            # Nothing will ever send on this channel until the config changes: fail for good
            # so people's ladders move on and the warning can complete.
            resume_at = None
            why = f"no adapter is configured for {channel}"
        fell = await self._store.fall_over(
            claimed,
            now=now,
            resume_at=resume_at,
            reason=why,
            levels=self.levels(),
            visit_delay=self._config.visit_delay,
        )
        if fell:
            log.warning("deliveries fell over to the next channel", channel=channel, count=fell)
            self.wake()
        return FALLOVER_INTERVAL

    # -- sending --------------------------------------------------------------------------------
    async def _send_batch(self, host: AdapterHost, claimed: list[ClaimedDelivery]) -> None:
        contents = await self._warning_contents(c.warning_seq for c in claimed)
        levels = self.levels()
        direct: list[Transition] = []
        dispatches: list[Dispatch] = []
        sent: list[ClaimedDelivery] = []
        # Everyone of a warning and audience is told the same words (a visit task names its
        # own households): render once per batch, not once per person.
        texts: dict[tuple[int, str, str], str] = {}
        for c in claimed:
            if c.address is None:
                direct.append(
                    Transition(
                        c.id,
                        DeliveryState.FAILED,
                        None,
                        c.attempt,
                        host.name,
                        reason="the directory has no address for the target",
                        escalate=True,
                    )
                )
            elif c.audience == Audience.VISIT.value and not c.households:
                direct.append(
                    Transition(
                        c.id,
                        DeliveryState.SKIPPED,
                        None,
                        c.attempt,
                        host.name,
                        reason="every household of the visit was reached meanwhile",
                    )
                )
            else:
                content = contents[c.warning_seq]
                sent.append(c)
                dispatches.append(
                    Dispatch(
                        delivery_id=c.id,
                        warning=content,
                        channel=Channel(c.channel),
                        audience=Audience(c.audience),
                        target_id=c.target_id,
                        address=c.address,
                        area_code=c.area_code,
                        attempt=c.attempt,
                        text=_text(texts, content, c),
                        households=c.households,
                    )
                )
        transitions = list(direct)
        if dispatches:
            started = time.monotonic()
            outcomes, failed_batch = await host.send(dispatches)
            self._metrics.send_seconds.labels(host.name).observe(time.monotonic() - started)
            if failed_batch:
                if host.breaker.failure():
                    log.warning(
                        "adapter paused: it keeps failing",
                        adapter=host.name,
                        seconds=host.breaker.pause,
                    )
            else:
                host.breaker.success()
            self._metrics.paused.labels(host.name).set(int(host.paused))
            now = self._clock()
            for c, outcome in zip(sent, outcomes, strict=True):
                self._metrics.outcomes.labels(host.name, _outcome_name(outcome)).inc()
                transitions.append(
                    decide(
                        c,
                        outcome,
                        rules=levels[c.level],
                        now=now,
                        adapter=host.name,
                        retry_delay=self._backoff.delay,
                    )
                )
        await self._record(
            transitions,
            {c.id: c.address for c in sent if c.address},
            urgent=any(c.channel in DEVICE_CHANNELS for c in claimed),
        )
        for channel in host.spec.channels:  # room for another batch
            self._wake[channel.value].set()

    async def _record(
        self,
        transitions: list[Transition],
        addresses: dict[int, str] | None = None,
        *,
        urgent: bool = False,
    ) -> None:
        if not transitions:
            return
        # The database may be away for a moment (a restart, a failover): these sends went out,
        # so keep their outcomes and try again — within half the lease, after which the sweep
        # would make the deliveries due again and they would be sent twice anyway.
        give_up_at = time.monotonic() + self._config.lease / 2
        pause = _RECORD_RETRY_MIN
        while True:
            try:
                result = await self._store.record_transitions(
                    transitions,
                    now=self._clock(),
                    levels=self.levels(),
                    visit_delay=self._config.visit_delay,
                    addresses=addresses,
                    urgent=urgent,
                )
                break
            except StoreUnavailable as exc:
                if time.monotonic() + pause > give_up_at:
                    log.error(
                        "recording outcomes failed: the store stayed unreachable",
                        batch=len(transitions),
                        error=str(exc),
                    )
                    return
                log.warning(
                    "recording outcomes waits for the store",
                    batch=len(transitions),
                    error=str(exc),
                    retry_in=pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RECORD_RETRY_MAX)
            except Exception:
                # The deliveries stay leased; the sweep makes them due again when the lease
                # ends.
                log.exception("recording outcomes failed", batch=len(transitions))
                return
        if (
            result.escalated
            or result.visits_created
            or any(t.state is DeliveryState.RETRY_WAIT for t in transitions)
        ):
            self.wake()

    async def _warning_contents(self, seqs: Iterable[int]) -> dict[int, WarningContent]:
        wanted = set(seqs)
        missing = {s for s in wanted if s not in self._contents}
        if missing and len(self._contents) >= _CONTENT_CACHE:
            # Old warnings' texts: keep only those of this batch (re-read when needed again).
            self._contents = {s: c for s, c in self._contents.items() if s in wanted}
        if missing:
            self._contents.update(await self._store.warning_contents(missing))
        return self._contents

    # -- timers ---------------------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        while True:
            try:
                result = await self._store.sweep(
                    now=self._clock(),
                    levels=self.levels(),
                    visit_delay=self._config.visit_delay,
                )
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.warning("sweep waits for the store", error=str(exc))
            except Exception:
                log.exception("sweep failed")
            else:
                for warning_id in result.warnings_expired:
                    log.info("warning expired", warning_id=warning_id)
                for warning_id in result.warnings_completed:
                    log.info("warning complete", warning_id=warning_id)
                if result.released:
                    self.wake()
            await asyncio.sleep(SWEEP_INTERVAL)


def _text(
    cache: dict[tuple[int, str, str], str], content: WarningContent, c: ClaimedDelivery
) -> str:
    if c.households:
        return render_text(content, audience=c.audience, households=c.households, channel=c.channel)
    key = (c.warning_seq, c.audience, c.channel)
    text = cache.get(key)
    if text is None:
        text = cache[key] = render_text(content, audience=c.audience, channel=c.channel)
    return text


def _put_back_leftover(c: ClaimedDelivery, hosts: list[AdapterHost], now: float) -> Transition:
    """A claimed delivery no instance could take this round: its own instance (a device
    names one) is busy — try again shortly — or its connection is down, looked at again when
    a not-ready instance is (the wait is logged once, not every round)."""
    pinned = next((h for h in hosts if h.name == c.adapter), None) if c.adapter else None
    reason = pinned.not_ready_reason() if pinned is not None else None
    if pinned is not None and reason is not None:
        return put_back(
            c, due_at=now + RECONNECT_POLL, reason=f"its adapter {pinned.name}: {reason}"
        )
    return put_back(c, due_at=now + 0.5, reason="its adapter is busy")


def _why_paused(host: AdapterHost) -> str:
    """An instance's name, and why it takes nothing when its connection is down."""
    reason = host.not_ready_reason()
    return host.name if reason is None else f"{host.name}: {reason}"


def _share_out(
    claimed: list[ClaimedDelivery], hosts: list[AdapterHost], capacities: dict[str, int]
) -> tuple[list[tuple[AdapterHost, list[ClaimedDelivery]]], list[ClaimedDelivery]]:
    """Split a claim among the instances: a device that names its adapter goes to it; the
    rest fill the instances in config order up to each one's capacity."""
    by_name = {h.name: h for h in hosts}
    room = dict(capacities)
    shares: dict[str, list[ClaimedDelivery]] = {}
    leftover = []
    for c in claimed:
        pinned = by_name.get(c.adapter) if c.adapter else None
        if pinned is not None:
            target: AdapterHost | None = pinned if room[pinned.name] > 0 else None
        else:
            target = next((h for h in hosts if room[h.name] > 0), None)
        if target is None:
            leftover.append(c)
            continue
        room[target.name] -= 1
        shares.setdefault(target.name, []).append(c)
    return [(by_name[name], share) for name, share in shares.items()], leftover


def _outcome_name(outcome: object) -> str:
    if isinstance(outcome, Accepted):
        return "accepted"
    if isinstance(outcome, Retry):
        return "retry"
    if isinstance(outcome, Failed):
        return "failed"
    return "invalid"


class _EngineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.claimed = Counter(
            "tocsin_deliveries_claimed",
            "Deliveries claimed for sending.",
            ["channel"],
            registry=registry,
        )
        self.outcomes = Counter(
            "tocsin_send_outcomes",
            "Adapter outcomes per delivery.",
            ["adapter", "outcome"],
            registry=registry,
        )
        self.send_seconds = Histogram(
            "tocsin_adapter_send_seconds",
            "Time an adapter took for one batch.",
            ["adapter"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=registry,
        )
        self.paused = Gauge(
            "tocsin_adapter_paused",
            "1 while the adapter is given no work: its circuit breaker is open, its start "
            "failed, or its connection (a serial port) is down.",
            ["adapter"],
            registry=registry,
        )
        self.ready = Gauge(
            "tocsin_adapter_ready",
            "1 while the adapter is started and its connection is up (0: starting, not ready, "
            "or a serial port being reopened).",
            ["adapter"],
            registry=registry,
        )

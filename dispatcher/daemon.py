"""`tocsin serve`: open the store, load the directory if it is empty, start the planner and the
HTTP API, and run until SIGTERM/SIGINT; reload on SIGHUP; tell systemd how it goes
(:mod:`dispatcher.sd_notify`)."""

from __future__ import annotations

import asyncio
import fcntl
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from dispatcher.api.app import ApiDeps, create_app
from dispatcher.config import LoadedConfig, load_config
from dispatcher.engine.engine import Engine
from dispatcher.logging_setup import configure_logging
from dispatcher.nodes import NodePresence, NodeTimings, nodes_view
from dispatcher.planning_worker import PlanningWorker
from dispatcher.reload import LiveConfig, Reloader
from dispatcher.schedules.runner import ScheduleRunner, start_schedules
from dispatcher.sd_notify import Notifier, Watchdog, watchdog_interval
from dispatcher.store.node_queries import NodeNameInUse
from dispatcher.store.sql_store import SqlStore
from dispatcher.store.sqlite import SqliteStore
from dispatcher.warning_service import WarningService

log = structlog.get_logger(__name__)


class StartupError(RuntimeError):
    """The daemon cannot start; the message says why and what to do."""


async def open_store(config: LoadedConfig) -> SqlStore:
    """The configured store: PostgreSQL when ``[store] dsn`` is given, else the SQLite file."""
    if config.store_dsn is None:
        return await SqliteStore.open(config.store_path, node=config.node_name)
    from dispatcher.store.connections import StoreUnavailable
    from dispatcher.store.postgres import PostgresStore

    try:
        return await PostgresStore.open(config.store_dsn.get_secret_value(), node=config.node_name)
    except StoreUnavailable as exc:
        raise StartupError(f"{exc} (store.dsn in {config.path})") from None


async def ensure_directory(config: LoadedConfig, store: SqlStore) -> None:
    """Fill an empty directory from the configured CSV folder or synthetic city."""
    counts = await store.directory_counts()
    if counts["areas"] > 0:
        log.info("directory loaded", **counts)
        return
    if config.csv_dir is not None:
        from dispatcher.directory.importer import import_directory

        log.info("importing directory", folder=str(config.csv_dir))
        report = await asyncio.to_thread(
            import_directory, config.store_target, config.csv_dir, progress=False
        )
        if not report.ok:
            raise StartupError(f"directory import from {config.csv_dir} failed:\n{report}")
    elif config.settings.directory.synthetic is not None:
        from dispatcher.synthetic import load_synthetic

        log.info(
            "generating synthetic directory", **config.settings.directory.synthetic.model_dump()
        )
        await asyncio.to_thread(
            load_synthetic, config.store_target, config.settings.directory.synthetic, progress=False
        )
    else:
        log.warning("the directory is empty: import one with `tocsin directory import`")
        return
    log.info("directory loaded", **(await store.directory_counts()))


async def serve(
    config: LoadedConfig,
    *,
    stop: asyncio.Event | None = None,
    on_listening: Callable[[int], Awaitable[None] | None] | None = None,
    reload: Callable[[], LoadedConfig] | None = None,
) -> None:
    """Run the daemon until ``stop`` is set or SIGTERM/SIGINT arrives. On SIGHUP the config is
    read again with ``reload`` (default: load_config on the same file) and its live parts
    swapped in (:mod:`dispatcher.reload`)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    # What may change on reload is read through ``live``, never captured from ``config``.
    live = LiveConfig(config)
    notifier = Notifier.from_environment()
    reloader = Reloader(
        live,
        load=reload or (lambda: load_config(config.path)),
        notifier=notifier,
        set_log_level=configure_logging,
    )
    # Signals can only be handled on the main thread; an embedding caller (a test running the
    # daemon on another thread) stops it through ``stop`` instead.
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # From the start: SIGHUP's default action would end the process. A reload asked for
        # before the daemon is ready is done once it is.
        loop.add_signal_handler(signal.SIGHUP, reloader.request)

    async with AsyncExitStack() as stack:
        stack.callback(notifier.close)
        if config.store_dsn is None:
            # SQLite: one node. PostgreSQL: several, each under its own name (nodes table).
            stack.enter_context(_only_daemon_on(config.store_path))
        store = await open_store(config)
        stack.push_async_callback(store.close)
        log.info("store open", store=config.store_location, node=config.node_name)
        presence = NodePresence(
            store,
            name=config.node_name,
            timings=NodeTimings(
                heartbeat=config.settings.node.heartbeat,
                dead_after=config.settings.node.dead_after,
            ),
        )
        try:
            await presence.start()
        except NodeNameInUse as exc:
            raise StartupError(str(exc)) from None
        stack.push_async_callback(presence.stop)
        stack.push_async_callback(reloader.close)
        # A first start imports the directory: minutes for a city (TimeoutStartSec= allows it).
        notifier.status("starting: loading the directory")
        await ensure_directory(config, store)
        reloader.directory_current()

        registry = CollectorRegistry()
        engine = Engine(
            store,
            config=config.settings.engine,
            policy=lambda: live.config.policy,
            adapters=config.adapters,
            registry=registry,
        )
        await engine.start()
        # Stopped after the planner and the API (the exit stack runs in reverse): the engine
        # drains in-flight sends last.
        stack.push_async_callback(engine.stop)
        planner = PlanningWorker(
            store, lambda: live.config.policy, registry=registry, on_stage_committed=engine.wake
        )
        await planner.start()
        stack.push_async_callback(planner.stop)
        service = WarningService(store, config.settings.cap, on_created=planner.enqueue)
        # Scheduled test broadcasts and drills: they make warnings, so they start after the
        # planner and the warning service and stop before them (docs/schedules.md).
        schedules = await start_schedules(
            store, service, config, policy=lambda: live.config.policy, registry=registry
        )
        stack.push_async_callback(schedules.stop)
        presence.leading = lambda: schedules.leading
        reloader.apply_schedules = schedules.apply_config

        app = create_app(
            ApiDeps(
                store=store,
                warnings=service,
                tokens=lambda: live.config.tokens,
                max_body_bytes=config.settings.server.max_body_bytes,
                ready=lambda: planner.running and engine.running,
                registry=registry,
                confirm_household=engine.intake.submit_and_wait,
                adapters=engine.adapter_status,
                device_heartbeat_timeout=config.settings.engine.device_heartbeat_timeout,
                webhooks=engine.webhooks(),
                schedules=schedules.service,
                nodes=lambda: _nodes(store, config, schedules),
            )
        )
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=config.settings.server.shutdown_timeout,
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, config.settings.server.host, config.settings.server.port)
        await site.start()
        port = _bound_port(runner, config.settings.server.port)
        log.info("listening", host=config.settings.server.host, port=port)
        if on_listening is not None:
            result = on_listening(port)
            if result is not None:
                await result
        host = config.settings.server.host
        reloader.status = lambda: _status_line(host, port, engine, reloader)
        watchdog = Watchdog(
            notifier,
            watchdog_interval(),
            health=lambda: _unhealthy(engine, planner, schedules),
            status=reloader.status,
        )
        watchdog.ready()
        stack.push_async_callback(watchdog.stop)
        reloader.enable()
        await stop.wait()
        log.info("stopping")
        notifier.stopping("stopping: finishing in-flight sends")
    log.info("stopped")


@contextmanager
def _only_daemon_on(store_path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the database: the engine takes back every leased delivery
    at start, which is only right when no other daemon is sending from the same store."""
    store_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = store_path.with_name(store_path.name + ".lock")
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(
                f"another tocsin daemon is running on {store_path} (lock {lock_path})"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def _nodes(
    store: SqlStore, config: LoadedConfig, schedules: ScheduleRunner
) -> dict[str, object]:
    return nodes_view(
        await store.list_nodes(),
        now=time.time(),
        dead_after=config.settings.node.dead_after,
        leader=None if schedules.leader is None else await schedules.leader.current_leader(),
        this_node=config.node_name,
    )


def _unhealthy(engine: Engine, planner: PlanningWorker, schedules: ScheduleRunner) -> str | None:
    """Why the daemon cannot do its work, or None: the watchdog is fed only while None."""
    if not engine.running:
        return "the engine's claim loops stopped"
    if not planner.running:
        return "the planner stopped"
    if not schedules.running:
        return "the schedule runner stopped"
    return None


def _status_line(host: str, port: int, engine: Engine, reloader: Reloader) -> str:
    adapters = engine.adapter_status()
    ready = sum(1 for a in adapters if a["state"] == "ready")
    line = f"serving on {host}:{port}, {ready}/{len(adapters)} adapters ready"
    return line + (", importing the directory" if reloader.importing else "")


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured

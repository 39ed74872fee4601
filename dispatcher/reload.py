"""Reload on SIGHUP: read the config file again with the same loader and swap in what can
change while deliveries are in flight.

Swapped live: the API tokens, the level policy (and its file), the log level, and the
directory's CSV folder, imported again when it changed. Everything else (the server's
address, the store, the engine's settings, the adapters, the CAP defaults, and any section
added later) is built into running objects at start: a change there is logged as needing a
restart and the running value kept, so the running config always says what is in effect. A
config with any problem is refused whole: each problem is logged as ``file: key: what`` and
the running config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog
from pydantic import BaseModel

from dispatcher.config import ConfigError, LoadedConfig, TocsinConfig
from dispatcher.directory.csv_format import FILES
from dispatcher.directory.report import ImportReport
from dispatcher.schedules.spec import ScheduleSpec
from dispatcher.sd_notify import Notifier

log = structlog.get_logger(__name__)

#: Sections of TocsinConfig that the daemon reads through LiveConfig on every use.
LIVE_SECTIONS = frozenset({"api", "policy", "logging", "directory", "schedules"})

Fingerprint = tuple[tuple[str, int, int], ...]


class LiveConfig:
    """The config in effect. What may change on reload is read through ``config`` each time
    (``lambda: live.config.tokens``), never captured at start."""

    def __init__(self, config: LoadedConfig) -> None:
        self.config = config


def folder_fingerprint(folder: Path) -> Fingerprint:
    """Name, size and modification time of the directory files present in ``folder``: an
    edit or a copied-in export changes it."""
    found = []
    for spec in FILES:
        try:
            stat = (folder / spec.name).stat()
        except OSError:
            continue
        found.append((spec.name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def restart_needed(old: LoadedConfig, new: LoadedConfig) -> list[str]:
    """The settings that differ but cannot be applied without a restart, as dotted keys."""
    changed: list[str] = []
    for section in TocsinConfig.model_fields:
        if section in LIVE_SECTIONS:
            continue
        before, after = getattr(old.settings, section), getattr(new.settings, section)
        if before == after:
            continue
        if section == "store":
            if old.store_path != new.store_path:
                changed.append("store.path")
            if old.settings.store.dsn != new.settings.store.dsn:
                changed.append("store.dsn")
        elif isinstance(before, dict) and isinstance(after, dict):
            names = sorted(set(before) | set(after), key=lambda n: (n not in before, n))
            changed.extend(
                f"{section}.{name}" for name in names if before.get(name) != after.get(name)
            )
        elif isinstance(before, BaseModel) and isinstance(after, BaseModel):
            changed.extend(
                f"{section}.{key}"
                for key in type(before).model_fields
                if getattr(before, key) != getattr(after, key)
            )
        else:
            changed.append(section)
    if old.settings.directory.synthetic != new.settings.directory.synthetic:
        # Only ever used to fill an empty store; a restart would not use it either.
        changed.append("directory.synthetic (used only when the store's directory is empty)")
    return changed


def applied_changes(old: LoadedConfig, new: LoadedConfig) -> list[str]:
    """What a reload from ``old`` to ``new`` changes live, in words for the log."""
    out: list[str] = []
    before = {t.name: t for t in old.tokens}
    after = {t.name: t for t in new.tokens}
    for label, names in (
        ("added", [n for n in after if n not in before]),
        ("removed", [n for n in before if n not in after]),
        ("changed", [n for n in after if n in before and after[n] != before[n]]),
    ):
        if names:
            out.append(f"api.tokens {label}: {', '.join(names)}")
    if old.policy_path != new.policy_path:
        out.append(f"policy.file: {new.policy_path}")
    elif old.policy != new.policy:
        out.append(f"policy: {new.policy_path} changed")
    if old.settings.logging.level != new.settings.logging.level:
        out.append(f"logging.level: {new.settings.logging.level}")
    if old.csv_dir != new.csv_dir:
        out.append(f"directory.csv_dir: {new.csv_dir}")
    return out


def apply_live(old: LoadedConfig, new: LoadedConfig) -> LoadedConfig:
    """``old`` with the live parts of ``new``: what the daemon is actually running with."""
    settings = old.settings.model_copy(
        update={section: getattr(new.settings, section) for section in LIVE_SECTIONS}
    )
    return dataclasses.replace(
        old,
        settings=settings,
        policy=new.policy,
        policy_path=new.policy_path,
        tokens=new.tokens,
        csv_dir=new.csv_dir,
    )


ImportFn = Callable[[Path | str, Path], ImportReport]


def _import(store_path: Path | str, folder: Path) -> ImportReport:
    from dispatcher.directory.importer import import_directory

    return import_directory(store_path, folder, progress=False)


class Reloader:
    """Reloads on request (SIGHUP): requests coalesce, reloads never overlap, and a directory
    import runs in the background so the reload itself takes milliseconds."""

    def __init__(
        self,
        live: LiveConfig,
        *,
        load: Callable[[], LoadedConfig],
        notifier: Notifier,
        status: Callable[[], str] = lambda: "serving",
        set_log_level: Callable[[str], None] | None = None,
        import_directory: ImportFn = _import,
    ) -> None:
        self._live = live
        self._load = load
        self._notifier = notifier
        #: The STATUS= line sent with READY=1 after a reload (the daemon sets it once serving).
        self.status = status
        self._set_log_level = set_log_level
        self._import_directory = import_directory
        #: Takes a reloaded config's [[schedules]] (the schedule runner's apply_config).
        self.apply_schedules: Callable[[Sequence[ScheduleSpec]], Awaitable[None]] | None = None
        self._enabled = False
        self._requested = False
        self._task: asyncio.Task[None] | None = None
        self._import_task: asyncio.Task[None] | None = None
        self._import_wanted = False
        #: The CSV folder and its files as last imported (or found at start).
        self._directory: tuple[Path, Fingerprint] | None = None
        #: Finished reloads, refused ones included (tests).
        self.reloads = 0

    @property
    def importing(self) -> bool:
        return self._import_task is not None and not self._import_task.done()

    def directory_current(self) -> None:
        """The store holds the configured CSV folder as it is now (at start: imported into an
        empty store, or imported before); a reload imports it again once it changes."""
        folder = self._live.config.csv_dir
        self._directory = None if folder is None else (folder, folder_fingerprint(folder))

    def enable(self) -> None:
        """Start acting on requests (the daemon is ready); one made before is acted on now."""
        self._enabled = True
        if self._requested:
            self._spawn()

    def request(self) -> None:
        """Ask for a reload (the SIGHUP handler): several before it runs make one."""
        self._requested = True
        if self._enabled:
            self._spawn()

    def _spawn(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="tocsin-reload")

    async def _run(self) -> None:
        while self._requested:
            self._requested = False
            await self.reload()

    async def reload(self) -> bool:
        """One reload; True when the new config was taken (some settings may still wait for
        a restart), False when it was refused."""
        config_path = self._live.config.path
        self._notifier.reloading(f"reloading {config_path}")
        try:
            new = await asyncio.to_thread(self._load)
            old = self._live.config
            taken = self._swap(new)
            if self.apply_schedules is not None and (
                old.settings.schedules != new.settings.schedules
            ):
                # Synced into the store and the cron jobs changed to match (caught up too).
                await self.apply_schedules(new.settings.schedules)
                log.info("schedules reloaded", schedules=len(new.settings.schedules))
            return taken
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: config problem", problem=problem)
            log.error(
                "reload refused: the running configuration is kept",
                config=str(config_path),
                problems=len(exc.problems),
            )
            return False
        except Exception:
            log.exception("reload failed: the running configuration is kept")
            return False
        finally:
            self.reloads += 1
            self._notifier.ready(self.status())

    def _swap(self, new: LoadedConfig) -> bool:
        old = self._live.config
        applied = applied_changes(old, new)
        restart = restart_needed(old, new)
        self._live.config = apply_live(old, new)
        log.info(
            "configuration reloaded",
            config=str(new.path),
            applied=applied or ["nothing that applies live changed"],
        )
        for key in restart:
            log.warning(
                "changed setting not applied: it takes effect at the next restart",
                setting=key,
                config=str(new.path),
            )
        # Last, so a quieter level does not hide what this reload did.
        if self._set_log_level is not None and (
            old.settings.logging.level != new.settings.logging.level
        ):
            self._set_log_level(new.settings.logging.level)
        folder = new.csv_dir
        if folder is not None and self._directory != (folder, folder_fingerprint(folder)):
            self._start_import()
        return True

    # -- the directory --------------------------------------------------------------------------
    def _start_import(self) -> None:
        self._import_wanted = True
        if not self.importing:
            self._import_task = asyncio.create_task(
                self._import_loop(), name="tocsin-directory-reimport"
            )

    async def _import_loop(self) -> None:
        while self._import_wanted:
            self._import_wanted = False
            folder = self._live.config.csv_dir
            if folder is None:
                return
            fingerprint = folder_fingerprint(folder)
            if self._directory == (folder, fingerprint):
                continue
            log.info("importing the directory again", folder=str(folder))
            try:
                report = await asyncio.to_thread(
                    self._import_directory, self._live.config.store_target, folder
                )
            except Exception as exc:
                log.error("directory import failed", folder=str(folder), error=str(exc))
                continue
            # Files that had errors imported nothing (each file is all or nothing); the rest
            # are in. The folder counts as imported either way: the same files would fail
            # the same way, and the next change to them is imported at the next reload.
            self._directory = (folder, fingerprint)
            if report.ok:
                log.info(
                    "directory imported",
                    folder=str(folder),
                    seconds=round(report.seconds, 1),
                    summary=report.summary(),
                )
            else:
                log.error(
                    "directory import had errors; the files with errors were not imported",
                    folder=str(folder),
                    errors=report.error_count,
                    report=str(report),
                )
            self._notifier.status(self.status())

    async def close(self) -> None:
        """Stop reloading. An import under way goes on in its thread until it is done (it
        writes in short transactions; the process exits after it)."""
        self._enabled = False
        for task in (self._task, self._import_task):
            if task is not None and not task.done():
                if task is self._import_task:
                    log.warning("stopping during a directory import: it is finished first")
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

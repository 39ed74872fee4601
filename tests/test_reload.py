"""Reload (dispatcher/reload.py) without a daemon: which settings are swapped, which wait for a
restart, a broken config refused whole, the directory imported again only when its files
changed, and the notifications around a reload."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from dispatcher.config import LoadedConfig, hash_token, load_config
from dispatcher.directory.report import ImportReport
from dispatcher.reload import LiveConfig, Reloader, restart_needed
from dispatcher.sd_notify import Notifier

ROOT = Path(__file__).resolve().parent.parent

BASE = """
[server]
port = 8080
[store]
path = "tocsin.db"
[directory]
csv_dir = "directory"
[policy]
file = "policy.toml"
[logging]
level = "info"
[[api.tokens]]
name = "desk"
role = "duty_officer"
sha256 = "{desk}"
[adapters.sms]
kind = "simulated"
channels = ["sms"]
rate_per_second = 10
"""


def _write(folder: Path, text: str) -> Path:
    path = folder / "tocsin.toml"
    path.write_text(text.format(desk=hash_token("desk-token")), encoding="utf-8")
    return path


@pytest.fixture
def folder(
    tmp_path: Path,
    write_directory: Callable[..., Path],
    canonical_directory: dict[str, list[str]],
) -> Path:
    shutil.copy(ROOT / "config" / "policy.toml", tmp_path / "policy.toml")
    write_directory(tmp_path / "directory", canonical_directory)
    _write(tmp_path, BASE)
    return tmp_path


class Imports:
    def __init__(self) -> None:
        self.calls: list[Path] = []
        self.done = asyncio.Event()

    def __call__(self, store: Path, folder: Path) -> ImportReport:
        self.calls.append(folder)
        self.done.set()
        return ImportReport()


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"waited 10 s for {what}"
        await asyncio.sleep(0.01)


def _reloader(config: LoadedConfig, **kwargs: Any) -> tuple[LiveConfig, Reloader, Imports]:
    live = LiveConfig(config)
    imports = Imports()
    reloader = Reloader(
        live,
        load=lambda: load_config(config.path),
        notifier=kwargs.pop("notifier", Notifier(None)),
        import_directory=imports,
        **kwargs,
    )
    reloader.directory_current()
    return live, reloader, imports


async def test_tokens_policy_and_log_level_are_swapped_live(folder: Path) -> None:
    config = load_config(folder / "tocsin.toml")
    levels: list[str] = []
    live, reloader, imports = _reloader(config, set_log_level=levels.append)
    text = BASE.replace('name = "desk"', 'name = "desk-2"').replace(
        'level = "info"', 'level = "debug"'
    )
    text += f'[[api.tokens]]\nname = "ops"\nrole = "operator"\nsha256 = "{hash_token("ops")}"\n'
    _write(folder, text)
    policy = (folder / "policy.toml").read_text(encoding="utf-8")
    (folder / "policy.toml").write_text(policy + "\n# edited\n", encoding="utf-8")
    with structlog.testing.capture_logs() as logs:
        assert await reloader.reload()
    assert [t.name for t in live.config.tokens] == ["desk-2", "ops"]
    assert any(t.matches("ops") for t in live.config.tokens)
    assert live.config.settings.logging.level == "debug"
    assert levels == ["debug"]
    reloaded = next(e for e in logs if e["event"] == "configuration reloaded")
    assert reloaded["applied"] == [
        "api.tokens added: desk-2, ops",
        "api.tokens removed: desk",
        "logging.level: debug",
    ]
    assert not [e for e in logs if e["log_level"] == "warning"]
    assert imports.calls == []


async def test_settings_built_into_running_objects_wait_for_a_restart(folder: Path) -> None:
    config = load_config(folder / "tocsin.toml")
    live, reloader, _ = _reloader(config)
    text = (
        BASE.replace("port = 8080", "port = 9090")
        .replace('path = "tocsin.db"', 'path = "other.db"')
        .replace("rate_per_second = 10", "rate_per_second = 20")
    )
    text += '[engine]\ndrain_timeout = "20s"\n[adapters.voice]\nkind = "simulated"\n'
    _write(folder, text)
    with structlog.testing.capture_logs() as logs:
        assert await reloader.reload()
    waiting = [e["setting"] for e in logs if e["log_level"] == "warning"]
    assert waiting == [
        "server.port",
        "store.path",
        "engine.drain_timeout",
        "adapters.sms",
        "adapters.voice",
    ]
    # The running config keeps saying what is in effect, so the next reload warns again.
    assert live.config.settings.server.port == 8080
    assert live.config.store_path == config.store_path
    assert [s.name for s in live.config.adapters] == ["sms"]
    assert live.config.settings.engine.drain_timeout == 10.0
    assert restart_needed(live.config, load_config(folder / "tocsin.toml")) == waiting


async def test_a_broken_config_is_refused_whole(folder: Path) -> None:
    config = load_config(folder / "tocsin.toml")
    live, reloader, imports = _reloader(config)
    broken = BASE.replace('role = "duty_officer"', 'role = "duty_oficer"').replace(
        'level = "info"', 'level = "debug"'
    )
    _write(folder, broken + "[server.extra]\n")
    (folder / "directory" / "grids.csv").write_text("id,village_code,name\n", encoding="utf-8")
    with structlog.testing.capture_logs() as logs:
        assert not await reloader.reload()
    assert live.config is config
    problems = [e["problem"] for e in logs if e["event"] == "reload refused: config problem"]
    path = folder / "tocsin.toml"
    assert any(p.startswith(f"{path}: api.tokens[0].role: Input should be") for p in problems)
    assert f"{path}: server.extra: unknown key" in " ".join(problems)
    assert any(e["event"] == "reload refused: the running configuration is kept" for e in logs)
    assert imports.calls == []

    # A policy file that does not parse is the config's problem too, named by file.
    _write(folder, BASE)
    (folder / "policy.toml").write_text("[levels.red\n", encoding="utf-8")
    with structlog.testing.capture_logs() as logs:
        assert not await reloader.reload()
    (problem,) = [e["problem"] for e in logs if e["event"] == "reload refused: config problem"]
    assert problem.startswith(f"{folder / 'policy.toml'}: not valid TOML")
    assert live.config is config


async def test_the_directory_is_imported_again_only_when_it_changed(folder: Path) -> None:
    config = load_config(folder / "tocsin.toml")
    _, reloader, imports = _reloader(config)
    assert await reloader.reload()
    await asyncio.sleep(0.05)
    assert imports.calls == []

    grids = folder / "directory" / "grids.csv"
    grids.write_text(grids.read_text(encoding="utf-8") + "G9,611002101201,新组\n", "utf-8")
    assert await reloader.reload()
    await asyncio.wait_for(imports.done.wait(), 5)
    assert imports.calls == [folder / "directory"]
    await _until(lambda: not reloader.importing, "the import to finish")

    imports.done.clear()
    assert await reloader.reload()
    await asyncio.sleep(0.05)
    assert len(imports.calls) == 1

    # Another folder named in the config is imported too.
    shutil.copytree(folder / "directory", folder / "directory-2")
    _write(folder, BASE.replace('csv_dir = "directory"', 'csv_dir = "directory-2"'))
    assert await reloader.reload()
    await asyncio.wait_for(imports.done.wait(), 5)
    assert imports.calls[-1] == folder / "directory-2"
    await reloader.close()


async def test_the_real_import_runs_in_the_background(folder: Path) -> None:
    """The default import function: the CSV folder goes into the store file."""
    import sqlite3

    config = load_config(folder / "tocsin.toml")
    live = LiveConfig(config)
    reloader = Reloader(live, load=lambda: load_config(config.path), notifier=Notifier(None))
    assert await reloader.reload()  # nothing recorded at start: the folder counts as changed
    assert reloader.importing
    await _until(lambda: not reloader.importing, "the import to finish")
    conn = sqlite3.connect(config.store_path)
    try:
        assert conn.execute("SELECT count(*) FROM grids").fetchone()[0] == 2
    finally:
        conn.close()


async def test_requests_coalesce_and_wait_until_enabled(folder: Path) -> None:
    name = f"tocsin-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        config = load_config(folder / "tocsin.toml")
        _, reloader, _ = _reloader(config, notifier=Notifier("@" + name), status=lambda: "serving")
        reloader.request()
        await asyncio.sleep(0.05)
        assert reloader.reloads == 0  # not ready yet: kept for later
        reloader.enable()
        reloader.request()
        reloader.request()
        await _until(lambda: reloader.reloads >= 1, "a reload")
        await asyncio.sleep(0.1)
        assert reloader.reloads <= 2
        first = sock.recv(4096).decode().split("\n")
        assert first[0] == "RELOADING=1"
        assert first[1].startswith("MONOTONIC_USEC=")
        assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=serving"]
        await reloader.close()
    finally:
        sock.close()


def test_a_credential_systemd_did_not_provide_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatcher.secrets import SecretError, resolve_secret

    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(SecretError) as caught:
        resolve_secret("credential:mqtt-password")
    assert "credential mqtt-password is not in" in str(caught.value)
    assert "LoadCredentialEncrypted=mqtt-password" in str(caught.value)


async def test_schedules_are_handed_to_the_runner_when_they_changed(folder: Path) -> None:
    config = load_config(folder / "tocsin.toml")
    live, reloader, _ = _reloader(config)
    taken: list[list[str]] = []

    async def apply(specs: Any) -> None:
        taken.append([s.id for s in specs])

    reloader.apply_schedules = apply
    assert await reloader.reload()
    assert taken == []  # unchanged: the runner is left alone
    _write(
        folder,
        BASE + '[[schedules]]\nid = "weekly-speakers"\ncron = "0 10 * * 1"\nheadline = "喇叭测试"\n'
        'areas = ["611002000000"]\n'
        '[[schedules.rules]]\naudience = "devices"\ndevice_kinds = ["loudspeaker"]\n',
    )
    with structlog.testing.capture_logs() as logs:
        assert await reloader.reload()
    assert taken == [["weekly-speakers"]]
    assert [s.id for s in live.config.settings.schedules] == ["weekly-speakers"]
    assert not [e for e in logs if e["log_level"] == "warning"], logs

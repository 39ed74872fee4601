"""The shipped systemd files (deploy/systemd/): the unit is valid for systemd (checked with
systemd-analyze where it is installed), keeps its hardening, runs a command the project
installs, lets the daemon drain before killing it, and gives it every credential the
production template references; the daemon runs under the memory lock the unit asks for."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import aiohttp
import pytest
from test_daemon import DUTY, _call, _config, _free_port, _wait_planned

from dispatcher.cli import _parser
from dispatcher.config import TocsinConfig
from dispatcher.durations import parse_duration

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "tocsin.service"
SYSUSERS = ROOT / "deploy" / "systemd" / "tocsin.sysusers"
TMPFILES = ROOT / "deploy" / "systemd" / "tocsin.tmpfiles"
INSTALLED_TOCSIN = "/opt/tocsin/.venv/bin/tocsin"


def _unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value (keys such as DeviceAllow= repeat), comments dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return _unit(UNIT.read_text(encoding="utf-8"))


def _one(unit: dict[str, dict[str, list[str]]], key: str) -> str:
    values = unit["Service"].get(key)
    assert values, f"{key}= is missing"
    return values[-1]


HARDENING = {
    "Type": "notify",
    "NotifyAccess": "main",
    "Restart": "on-failure",
    "User": "tocsin",
    "Group": "tocsin",
    "SupplementaryGroups": "dialout",
    "StateDirectory": "tocsin",
    "ConfigurationDirectory": "tocsin",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "CapabilityBoundingSet": "",
    "ExecReload": "/bin/kill -HUP $MAINPID",
}


def test_unit_keeps_its_hardening(unit: dict[str, dict[str, list[str]]]) -> None:
    for key, value in HARDENING.items():
        assert _one(unit, key) == value, key
    assert "@system-service" in unit["Service"]["SystemCallFilter"]
    assert parse_duration(_one(unit, "WatchdogSec")) == 30
    # Serial ports stay reachable: no PrivateDevices=, and the device list names them.
    assert "PrivateDevices" not in unit["Service"]
    assert _one(unit, "DevicePolicy") == "closed"
    assert "char-ttyUSB rw" in unit["Service"]["DeviceAllow"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_exec_start_is_the_projects_serve_command(unit: dict[str, dict[str, list[str]]]) -> None:
    command, *args = _one(unit, "ExecStart").split()
    assert command == INSTALLED_TOCSIN
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert scripts[Path(command).name] == "dispatcher.cli:main"
    parsed = _parser().parse_args(args)
    assert parsed.handler.__name__ == "_cmd_serve"
    assert parsed.config == "/etc/tocsin/tocsin.toml"
    # The README installs the venv and the config where the unit looks for them.
    readme = (ROOT / "deploy" / "systemd" / "README.md").read_text(encoding="utf-8")
    assert "python3 -m venv /opt/tocsin/.venv" in readme
    assert "/etc/tocsin/tocsin.toml" in readme


def test_stop_timeout_outlasts_the_drain(unit: dict[str, dict[str, list[str]]]) -> None:
    """systemd must not SIGKILL a daemon still finishing in-flight sends: TimeoutStopSec=
    covers the HTTP shutdown and the engine's drain phases (sends, then acknowledgements)
    with the production template's values."""
    raw = tomllib.loads((ROOT / "config" / "production.toml").read_text(encoding="utf-8"))
    settings = TocsinConfig.model_validate(raw)
    needed = settings.server.shutdown_timeout + 3 * settings.engine.drain_timeout
    assert parse_duration(_one(unit, "TimeoutStopSec")) > needed + 10
    # The watchdog is fed at half its period, so a healthy daemon never misses it.
    assert parse_duration(_one(unit, "WatchdogSec")) >= 10


def test_every_credential_the_template_references_is_loaded(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    template = (ROOT / "config" / "production.toml").read_text(encoding="utf-8")
    # Commented-out adapter blocks count too: uncommenting one must not need a unit edit.
    referenced = set(re.findall(r"credential:([A-Za-z0-9_.-]+)", template)) - {"NAME"}
    assert {"twilio-auth-token", "mqtt-password", "tocsin-token-duty-desk-1"} <= referenced
    loaded = {
        value.split(":", 1)[0]
        for key in ("LoadCredential", "LoadCredentialEncrypted")
        for value in unit["Service"].get(key, [])
    }
    assert referenced <= loaded, referenced - loaded


def test_sysusers_and_tmpfiles_match_the_unit(unit: dict[str, dict[str, list[str]]]) -> None:
    users = [
        line.split()
        for line in SYSUSERS.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert users[0][:2] == ["u", "tocsin"]
    assert ["m", "tocsin", "dialout"] in users
    dirs = {
        fields[1]: fields
        for line in TMPFILES.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
        for fields in [line.split()]
    }
    # /etc/tocsin readable by the service's group only (the unit's ConfigurationDirectory).
    assert dirs["/etc/tocsin"][:5] == ["d", "/etc/tocsin", "0750", "root", "tocsin"]
    assert _one(unit, "ConfigurationDirectoryMode") == "0750"


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at this checkout's venv: systemd-analyze checks that
    the command exists, and /opt/tocsin is where an install puts it, not a test machine."""
    here = Path(sys.executable).parent / "tocsin"
    assert here.exists(), f"{here}: install the project into the venv (pip install -e .)"
    text = UNIT.read_text(encoding="utf-8").replace(INSTALLED_TOCSIN, str(here))
    path = tmp_path / "tocsin.service"
    path.write_text(text, encoding="utf-8")
    return path


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd)",
)


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    path = _unit_for_this_machine(tmp_path)
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on unknown keys and bad values too, only warning: any line about the
    # unit is a failure.
    about_unit = [line for line in result.stderr.splitlines() if "tocsin.service" in line]
    assert result.returncode == 0, result.stderr
    assert not about_unit, "\n".join(about_unit)


@needs_systemd_analyze
def test_systemd_analyze_security_rates_it_ok(tmp_path: Path) -> None:
    path = _unit_for_this_machine(tmp_path)
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=true", "--threshold=25", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "unrecognized option" in result.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 250+")
    match = re.search(r"Overall exposure level for tocsin.service: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert result.returncode == 0, f"exposure {match.group(1)} > 2.5:\n{result.stdout}"


# -- MemoryDenyWriteExecute= ----------------------------------------------------------------------
#: prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN): the kernel's own write-xor-execute lock (Linux
#: 6.3+), kept across execve. systemd's MemoryDenyWriteExecute= refuses the same mappings with
#: a seccomp filter (and uses this prctl itself from systemd 257).
_MDWE_LAUNCHER = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
sys.exit(78)
"""


@pytest.mark.slow
async def test_daemon_runs_with_memory_deny_write_execute(tmp_path: Path) -> None:
    """CPython, aiohttp, pydantic-core, SQLite and the adapters' libraries never need a
    writable and executable mapping: the daemon starts, plans and sends a warning, and stops
    cleanly with the lock on."""
    probe = subprocess.run(
        [sys.executable, "-c", _MDWE_LAUNCHER, "-c", "pass"], capture_output=True, check=False
    )
    if probe.returncode == 77:
        pytest.skip("prctl(PR_SET_MDWE) is not supported by this kernel (Linux 6.3+)")
    assert probe.returncode == 0, probe.stderr

    port = _free_port()
    config = _config(tmp_path, port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOCSIN_", "NOTIFY_"))}
    proc = subprocess.Popen(
        [sys.executable, "-c", _MDWE_LAUNCHER, "-m", "dispatcher.cli", "serve", "-c", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while True:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "not ready within 60 s"
                try:
                    async with session.get(f"{url}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        status, body, _ = await _call(
            "POST",
            f"{url}/v1/warnings",
            DUTY,
            {
                "level": "blue",
                "status": "Exercise",
                "event": "大风",
                "headline": "大风蓝色预警",
                "area_codes": ["611002"],
            },
        )
        assert status == 202, body
        plan = await _wait_planned(url, str(body["id"]))
        assert plan["total"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    assert "Traceback" not in out.decode()

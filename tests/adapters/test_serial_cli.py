"""The serial-attached kinds as an installer uses them, one table over the four profiles, every
step through the real `tocsin` command in a subprocess:

- `tocsin simulate modem --profile P` prints the pty and a settings block; that block is the
  config; `tocsin check-config` passes it; `tocsin adapters probe` shows the device's identity
  and signal (or the transmitters' status); `tocsin adapters test --to …` sends one message
  the simulated far end acknowledges; a port held by another program is reported busy;
  SIGUSR1 unplugs and replugs it and the probe works again; SIGTERM stops it and removes the
  link;
- the knobs as an installer sees them: no signal, a silent device, a transmitter whose answers
  never arrive;
- the port errors: missing, not a serial device, a wrong setting, each naming the port (or the
  setting) and the cause.

The profiles' own knobs and the simulators driving the adapters in-process are tested per kind
(test_gsm_modem_simulator.py, test_serial_transmitter_cli.py, …); this is the cross-kind table.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import pytest
import serial
import structlog
from waiting import wait_until

from dispatcher import cli_adapters
from dispatcher.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
#: Every subprocess ends within this many seconds or the test fails.
COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True)
class Profile:
    """One `--profile` of `tocsin simulate modem` and how an installer drives its adapter."""

    profile: str
    #: The instance name the printed settings block uses.
    instance: str
    kind: str
    #: Simulator knobs that keep the test fast and make the far end acknowledge.
    knobs: tuple[str, ...]
    #: Settings an installer tunes for the rehearsal (replacing the block's own values).
    tune: dict[str, str]
    #: `adapters test` arguments: where the one message goes.
    to: tuple[str, ...]
    #: What a good probe shows (identity, signal, registration; a transmitter's status).
    probe_shows: tuple[str, ...]
    #: The simulator's knob for no signal, and what the probe says then (None: no such knob).
    no_signal: tuple[str, ...] | None = None
    no_signal_says: str = ""

    @property
    def module(self) -> str:
        return {
            "gsm": "adapters.gsm_modem.simulator",
            "iridium": "adapters.iridium_sbd.simulator",
            "beidou": "adapters.beidou_rdss.simulator",
            "transmitter": "adapters.serial_transmitter.simulator",
        }[self.profile]


#: Short timeouts: a silent device or a missing answer fails in about a second.
FAST = {"command_timeout": "1", "open_timeout": "2"}

PROFILES = [
    Profile(
        profile="gsm",
        instance="modem",
        kind="gsm_modem",
        knobs=(
            "--submit-delay=0.05",
            "--report-delay=0.05",
            "--reply-rate=1",
            "--reply-delay=0.05",
        ),
        tune=FAST,
        to=("--to", "+8613812345678"),
        probe_shows=(
            "Quectel",
            "IMEI 861234567890123",
            "SIM READY",
            "signal -71 dBm",
            "registered",
        ),
        no_signal=("--no-signal",),
        no_signal_says="not registered",
    ),
    Profile(
        profile="iridium",
        instance="satellite",
        kind="iridium_sbd",
        knobs=("--session-time=0.05", "--reply-delay=0.05"),
        # Sessions back to back: the mailbox check that fetches the reply follows the send.
        tune={**FAST, "session_interval": "0", "session_timeout": "5"},
        to=("--to", "300234010000001"),
        probe_shows=("IMEI 300234010753370", "firmware", "signal 5/5"),
        no_signal=("--signal=0",),
        no_signal_says="signal 0/5",
    ),
    Profile(
        profile="beidou",
        instance="beidou",
        kind="beidou_rdss",
        knobs=("--reply-delay=0.05",),
        tune=FAST,
        to=("--to", "141814"),
        probe_shows=("card 0208460", "level 3", "beam power 4/4"),
        no_signal=("--beam-power=0",),
        no_signal_says="no signal (every beam at power 0)",
    ),
    Profile(
        profile="transmitter",
        instance="transmitters",
        kind="serial_transmitter",
        knobs=(),
        tune={**FAST, "command_timeout": "0.3", "resends": "1"},
        # A transmitter's command names the areas to sound: the warning's (here the village).
        to=("--to", "1", "--area", "611002101201"),
        probe_shows=("2 of 2 transmitters answered", "1: idle", "88.100 MHz", "no faults"),
    ),
]
BY_NAME = {p.profile: p for p in PROFILES}


def each(*names: str) -> list[object]:
    chosen = [BY_NAME[n] for n in names] if names else PROFILES
    return [pytest.param(p, id=p.profile) for p in chosen]


# -- the commands -------------------------------------------------------------------------------
async def tocsin(*args: str, within: float = COMMAND_TIMEOUT) -> tuple[int, str, str, float]:
    """Run `tocsin ARGS…`: exit status, stdout, stderr and how long it took."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode(), time.monotonic() - started


class Simulator:
    """`tocsin simulate modem …` running in a subprocess; its output collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process, link: Path) -> None:
        self.process = process
        self.link = link
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode().rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, text: str, *, within: float = 15.0) -> str:
        """The first line containing ``text`` once it is printed."""
        await wait_until(
            lambda: any(text in line for line in self.lines) or self.process.returncode is not None,
            within=within,
            what=f"the simulator to print {text!r} (so far: {self.output!r})",
        )
        found = [line for line in self.lines if text in line]
        assert found, f"the simulator exited ({self.process.returncode}): {self.output}"
        return found[0]

    async def settings_block(self) -> str:
        """The ``[adapters.NAME]`` block it printed, between its banner and the hint."""
        await self.wait_for("kill -USR1")
        start = next(i for i, line in enumerate(self.lines) if line.startswith("[adapters."))
        end = next(i for i, line in enumerate(self.lines) if line.startswith("kill -USR1"))
        return "\n".join(self.lines[start:end]).strip() + "\n"

    async def finish(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reader, 5)


@contextlib.asynccontextmanager
async def simulate(profile: Profile, tmp_path: Path, *knobs: str) -> AsyncIterator[Simulator]:
    link = tmp_path / f"tocsin-{profile.profile}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher.cli",
        "simulate",
        "modem",
        "--profile",
        profile.profile,
        "--link",
        str(link),
        "--latency=0.005",
        "--unplugged-for=0.5",
        *knobs,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    simulator = Simulator(process, link)
    try:
        yield simulator
    finally:
        await simulator.finish()


# -- configs --------------------------------------------------------------------------------------
def tuned(block: str, tune: dict[str, str]) -> str:
    """The block with the installer's settings: an existing ``key = …`` line replaced, the
    rest added at the end (every block ends with its ``.settings`` table)."""
    for key, value in tune.items():
        block, found = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", block)
        if not found:
            block += f"{key} = {value}\n"
    return block


def write_config(tmp_path: Path, *blocks: str, name: str = "tocsin.toml") -> Path:
    """A config as other CLI tests build it: a store, the policy, then the adapter blocks."""
    config = tmp_path / name
    head = (
        f'[store]\npath = "{tmp_path / "tocsin.db"}"\n\n'
        f'[policy]\nfile = "{ROOT / "config" / "policy.toml"}"\n'
    )
    config.write_text("\n".join([head, *blocks]), encoding="utf-8")
    return config


def hint(profile: Profile, port: str) -> str:
    """The block the profile's simulator prints, for a port of our choosing (no simulator)."""
    block: str = import_module(profile.module).settings_hint(port)
    return tuned(block.strip() + "\n", profile.tune)


# -- an installer's session with each profile ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("profile", each())
async def test_an_installer_rehearses_on_the_simulator(profile: Profile, tmp_path: Path) -> None:
    async with simulate(profile, tmp_path, *profile.knobs) as sim:
        banner = await sim.wait_for("linked from")
        assert re.search(r" on /dev/pts/\d+, linked from " + re.escape(str(sim.link)), banner)
        block = await sim.settings_block()
        assert f"[adapters.{profile.instance}]" in block
        assert f'kind = "{profile.kind}"' in block
        assert f'port = "{sim.link}"' in block
        config = write_config(tmp_path, tuned(block, profile.tune))

        code, out, err, _ = await tocsin("check-config", str(config))
        assert code == 0, out + err
        assert f"adapter {profile.instance}: kind {profile.kind}" in out

        code, out, err, _ = await tocsin("adapters", "probe", "--config", str(config))
        assert code == 0, out + err
        assert out.startswith(f"ok  {profile.instance} ({profile.kind}): ")
        assert str(sim.link) in out
        for shown in profile.probe_shows:
            assert shown in out, out
        # The adapter's own info lines (port open, device set up) are not the installer's.
        assert "serial port open" not in out + err
        assert out.count("\n") == 1, out

        code, out, err, _ = await tocsin(
            "adapters", "test", "--config", str(config), profile.instance, *profile.to,
            "--wait", "10s",
        )  # fmt: skip
        assert code == 0, out + err
        assert "outcome: Accepted(" in out
        assert "acknowledged by 1; failed reports: 0" in out
        assert "serial port open" not in out + err

        # Another program holds the port: the probe says so, naming it.
        with serial.Serial(str(sim.link), exclusive=True):
            code, out, err, _ = await tocsin("adapters", "probe", "--config", str(config))
        assert code == 1
        assert f"FAIL {profile.instance} ({profile.kind})" in out
        assert f"{sim.link}: port is busy" in out, out

        # Unplugged and plugged in again: the probe finds it behind the same link.
        sim.process.send_signal(signal.SIGUSR1)
        await sim.wait_for("unplugged")
        replugged = await sim.wait_for("plugged in again on /dev/pts/")
        assert sim.link.resolve() == Path(replugged.rsplit(" on ", 1)[1])
        code, out, err, _ = await tocsin("adapters", "probe", "--config", str(config))
        assert code == 0, out + err

        sim.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sim.process.wait(), 10) == 0
        await sim.finish()
        assert sim.lines[-1] == "stopped"
        assert not sim.link.exists() and not sim.link.is_symlink()


# -- the knobs, as the installer's commands see them ---------------------------------------------
@pytest.mark.parametrize("profile", each("gsm", "iridium", "beidou"))
async def test_no_signal_fails_the_probe_saying_so(profile: Profile, tmp_path: Path) -> None:
    assert profile.no_signal is not None
    async with simulate(profile, tmp_path, *profile.knobs, *profile.no_signal) as sim:
        config = write_config(tmp_path, tuned(await sim.settings_block(), profile.tune))
        code, out, err, _ = await tocsin("adapters", "probe", "--config", str(config))
    assert code == 1, out + err
    assert out.startswith(f"FAIL {profile.instance} ({profile.kind}): ")
    assert profile.no_signal_says in out, out


async def test_a_transmitter_that_never_answers_fails_the_test_in_bounded_time(
    tmp_path: Path,
) -> None:
    profile = BY_NAME["transmitter"]
    async with simulate(profile, tmp_path, "--answer=never") as sim:
        block = tuned(await sim.settings_block(), profile.tune)
        # The printed block lists the transmitters: none answers the status query at start.
        config = write_config(tmp_path, block)
        code, out, err, took = await tocsin(
            "adapters", "test", "--config", str(config), profile.instance, *profile.to,
            "--wait", "10s",
        )  # fmt: skip
        assert code == 1, out + err
        assert f"FAIL transmitters did not start: AdapterNotReady: {sim.link}: " in err
        assert "no transmitter answered" in err
        assert took < 8, took
        # None listed: the test command itself goes out, and is never answered.
        config = write_config(tmp_path, tuned(block, {"transmitters": "[]"}), name="none.toml")
        code, out, err, took = await tocsin(
            "adapters", "test", "--config", str(config), profile.instance, *profile.to,
            "--wait", "10s",
        )  # fmt: skip
    assert code == 1, out + err
    assert "state: 1: offline" in out
    assert "outcome: Retry(reason='transmitter 1 did not answer 2 sends" in out
    # Two sends of command_timeout each, then the command ends: not the --wait.
    assert took < 8, took


@pytest.mark.slow
async def test_a_silent_device_fails_the_probe_naming_the_port(tmp_path: Path) -> None:
    """Every profile at once: four silent simulators, one probe of four instances."""
    async with contextlib.AsyncExitStack() as stack:
        sims = [
            await stack.enter_async_context(simulate(p, tmp_path, "--silent")) for p in PROFILES
        ]
        blocks = [
            tuned(await s.settings_block(), p.tune) for p, s in zip(PROFILES, sims, strict=True)
        ]
        config = write_config(tmp_path, *blocks)
        code, out, err, took = await tocsin("adapters", "probe", "--config", str(config))
    assert code == 1, out + err
    lines = out.splitlines()
    assert len(lines) == len(PROFILES), out
    for profile, sim, line in zip(PROFILES, sims, lines, strict=True):
        assert line.startswith(f"FAIL {profile.instance} ({profile.kind}): "), line
        assert str(sim.link) in line, line
    # Each probe gives up after its short timeouts, far from the CLI's 30 s probe limit.
    assert took < 20, took


async def test_the_simulator_never_replaces_a_real_port_with_its_link(tmp_path: Path) -> None:
    """`--link` names the link it keeps replacing: a path that is a device or a file (an
    installer typing the real modem's port) is refused, untouched."""
    taken = tmp_path / "ttyUSB0"
    taken.write_text("a real port\n")
    code, out, err, _ = await tocsin(
        "simulate", "modem", "--profile", "gsm", "--link", str(taken), within=15
    )
    assert code == 2, out + err
    assert f"{taken} exists and is not a link" in err
    assert taken.read_text() == "a real port\n" and not taken.is_symlink()


# -- port errors through the CLI ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("port", "cause"),
    [
        pytest.param("missing", "no such port", id="missing"),
        pytest.param("regular-file", "not a serial device", id="not-a-tty"),
    ],
)
async def test_a_port_that_cannot_be_opened_is_named_with_the_cause(
    tmp_path: Path, port: str, cause: str
) -> None:
    path = tmp_path / port
    if port == "regular-file":
        path.write_text("not a modem\n")
    config = write_config(tmp_path, *(hint(p, str(path)) for p in PROFILES))
    code, out, err, _ = await tocsin("adapters", "probe", "--config", str(config))
    assert code == 1, out + err
    lines = out.splitlines()
    assert len(lines) == len(PROFILES), out
    for profile, line in zip(PROFILES, lines, strict=True):
        assert line.startswith(f"FAIL {profile.instance} ({profile.kind}): "), line
        assert f"{path}: {cause}" in line, line
    # `adapters test` stops at the start, with the same words.
    transmitter = BY_NAME["transmitter"]
    code, out, err, _ = await tocsin(
        "adapters", "test", "--config", str(config), transmitter.instance, *transmitter.to
    )  # fmt: skip
    assert code == 1
    assert f"FAIL {transmitter.instance} did not start" in err
    assert f"{path}: {cause}" in err


async def test_wrong_settings_are_named_by_check_config(tmp_path: Path) -> None:
    blocks = [
        tuned(hint(p, "ttyUSB0"), {"baudrate": "115201"}).replace(
            'port = "ttyUSB0"', 'port = "dev/ttyUSB0"'
        )
        for p in PROFILES
    ]
    config = write_config(tmp_path, *blocks)
    code, out, err, _ = await tocsin("check-config", str(config))
    assert code == 2, out + err
    for profile in PROFILES:
        prefix = f"{config}: adapters.{profile.instance}.settings"
        assert f"{prefix}.baudrate: 115201 is not a standard baud rate" in err, err
        assert f"{prefix}.port: 'dev/ttyUSB0' is not a device path" in err, err


# -- the installer's output is the results, not the adapters' log ----------------------------------
def test_probe_and_test_show_warnings_not_info_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = structlog.get_config()
    log = structlog.get_logger("tocsin.test")
    with cli_adapters.installer_logging(verbose=False):
        log.info("serial port open", port="/dev/ttyUSB0")
        log.warning("serial port lost", port="/dev/ttyUSB0")
        log.error("modem set-up failed", port="/dev/ttyUSB0")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "serial port open" not in captured.err
    assert "serial port lost" in captured.err and "port=/dev/ttyUSB0" in captured.err
    assert "modem set-up failed" in captured.err
    with cli_adapters.installer_logging(verbose=True):
        log.info("serial port open", port="/dev/ttyUSB0")
    assert "serial port open" in capsys.readouterr().err
    # The process's own configuration (the daemon's, the tests') is back as it was.
    assert structlog.get_config() == before

    # Through the command: a failing probe prints its result and nothing else.
    config = write_config(tmp_path, hint(BY_NAME["gsm"], str(tmp_path / "missing")))
    assert cli_main(["adapters", "probe", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("FAIL modem (gsm_modem): ")
    assert captured.err == ""

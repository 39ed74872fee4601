"""A real Mosquitto for tests: started on a free TCP port with a given configuration, waited
for until it accepts connections, stopped (or killed, or restarted on the same port with the
same persistence directory) on request.

    with running_mosquitto("allow_anonymous true\\npersistence true\\n", tmp_path) as broker:
        ...  # connect to broker.host, broker.port
        broker.restart()  # same port, same config, same persistence directory

A configuration without a ``listener`` line gets ``listener <free port> 127.0.0.1`` added; one
with its own listeners is used as it is (pick their ports with :func:`free_ports`), the
broker's ``port`` is its first listener's, and starting waits until every listener accepts
connections. Unless the configuration sets them, the persistence directory is
``<directory>/data/`` and, when the tests run as root, ``user root`` keeps Mosquitto from
switching to the ``mosquitto`` user (which could not read a pytest temporary directory).
Mosquitto's log (stdout and stderr, every start appended) is ``<directory>/mosquitto.log``; a
broker that does not come up raises an error that includes it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

#: How long a broker may take to accept connections after it was started.
START_TIMEOUT = 10.0
#: How long a broker may take to exit after SIGTERM (it saves its persistence file first).
STOP_TIMEOUT = 10.0

_LISTENER = re.compile(r"^[ \t]*listener[ \t]+(\d+)(?:[ \t]+(\S+))?", re.MULTILINE)


def mosquitto_binary() -> str:
    """The path of the ``mosquitto`` executable; raises with how to install it when missing."""
    return mosquitto_tool("mosquitto")


def mosquitto_tool(name: str) -> str:
    """The path of ``mosquitto`` or one of its tools (``mosquitto_pub``, ``mosquitto_sub``,
    ``mosquitto_passwd``); raises with how to install it when missing."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        f"{name} is not installed (not on PATH, not in /usr/sbin or /usr/bin): "
        "apt-get install mosquitto mosquitto-clients, or run ./scripts/test which installs it"
    )


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports nobody listens on right now (the kernel's picks)."""
    with ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    return free_ports(1, host)[0]


def write_password_file(path: Path, accounts: dict[str, str]) -> Path:
    """A Mosquitto password file at ``path`` with these ``username → password`` accounts,
    hashed by ``mosquitto_passwd`` as an installer would."""
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    tool = mosquitto_tool("mosquitto_passwd")
    for username, password in accounts.items():
        subprocess.run(
            [tool, "-b", str(path), username, password],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return path


@dataclass
class Broker:
    """One Mosquitto (a process while running) with a fixed configuration and fixed ports."""

    host: str
    port: int
    config_path: Path
    log_path: Path
    #: Every ``(host, port)`` the configuration listens on; the first is ``(host, port)``.
    listeners: tuple[tuple[str, int], ...] = ()
    process: subprocess.Popen[bytes] | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.listeners:
            self.listeners = ((self.host, self.port),)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """Everything Mosquitto has logged so far (all starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        """Where the log ends now: give it to :meth:`logged` to look only at what follows."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def logged(self, pattern: str, since: int = 0) -> bool:
        """Whether Mosquitto has logged a line matching the regular expression ``pattern``
        (after ``since``, a :meth:`log_mark`): what a test waits on to know the broker has seen
        something happen, e.g. ``rf"Client {re.escape(client_id)} disconnected"``."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return False
        return re.search(pattern, text, re.MULTILINE) is not None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start Mosquitto and wait until every listener accepts TCP connections (it opens
        them one after another, so the first answering says nothing of the others)."""
        if self.running:
            raise RuntimeError(f"mosquitto is already running on port {self.port}")
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        waiting = list(self.listeners)
        while waiting:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._close_log()
                raise RuntimeError(
                    f"mosquitto exited with status {code} while starting "
                    f"(config {self.config_path}); its log:\n{self.log()}"
                )
            try:
                with socket.create_connection(waiting[0], timeout=0.5):
                    pass
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    host, port = waiting[0]
                    raise RuntimeError(
                        f"mosquitto did not accept connections on {host}:{port} within "
                        f"{timeout:.0f} s (config {self.config_path}); its log:\n{self.log()}"
                    ) from None
                time.sleep(0.02)
                continue
            waiting.pop(0)
        time.sleep(0.05)
        if self.process.poll() is not None:  # those were somebody else's listeners
            self._close_log()
            raise RuntimeError(
                f"mosquitto exited with status {self.process.returncode} just after starting "
                f"(config {self.config_path}); its log:\n{self.log()}"
            )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM and wait: Mosquitto closes its clients' connections and saves its
        persistence file. Killed (and an error raised) if it takes longer than ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self._close_log()
                raise RuntimeError(
                    f"mosquitto did not exit within {timeout:.0f} s of SIGTERM; its log:\n"
                    f"{self.log()}"
                ) from None
        self._close_log()

    def kill(self) -> None:
        """SIGKILL: a crash. Nothing is saved beyond the last autosave."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop (SIGTERM: persistence saved) and start again on the same ports with the same
        configuration and persistence directory."""
        self.stop()
        self.start(timeout)

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads its password and ACL files (and the other reloadable
        options) without dropping connections. It happens on its next loop, not at once."""
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError("mosquitto is not running")
        self.process.send_signal(signal.SIGHUP)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _connect_host(bound: str | None) -> str:
    """Where to connect to a listener bound to ``bound`` (None: every interface)."""
    if bound is None or bound == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(bound).is_unspecified:
            return "127.0.0.1"
    except ValueError:  # a host name
        pass
    return bound


def prepare_config(config_text: str, directory: Path) -> tuple[str, list[tuple[str, int]]]:
    """``(full config, [(host, port) of each listener])``: ``config_text`` completed as the
    module docstring says. Nothing is started."""
    directory.mkdir(parents=True, exist_ok=True)
    head: list[str] = []
    if not re.search(r"^\s*persistence_location\s", config_text, re.MULTILINE):
        data = directory / "data"
        data.mkdir(exist_ok=True)
        head.append(f"persistence_location {data}/")
    if os.geteuid() == 0 and not re.search(r"^\s*user\s", config_text, re.MULTILINE):
        head.append("user root")
    listeners = [
        (_connect_host(found.group(2)), int(found.group(1)))
        for found in _LISTENER.finditer(config_text)
        if int(found.group(1)) != 0  # port 0: a unix socket
    ]
    if not listeners:
        listeners = [("127.0.0.1", free_port())]
        # Last: the per-listener options that follow in config_text belong to it.
        head.append(f"listener {listeners[0][1]} 127.0.0.1")
    return "\n".join([*head, config_text]) + "\n", listeners


@contextmanager
def running_mosquitto(config_text: str, directory: Path) -> Iterator[Broker]:
    """A Mosquitto with this configuration, running for the ``with`` block and stopped after
    it (see the module docstring). ``directory`` holds its config, log and persistence
    directory: one directory per broker (``tmp_path / "broker"``)."""
    config_path = directory / "mosquitto.conf"
    if config_path.exists():
        raise ValueError(f"{directory} already holds a broker: give each broker a directory")
    full, listeners = prepare_config(config_text, directory)
    config_path.write_text(full)
    host, port = listeners[0]
    broker = Broker(host, port, config_path, directory / "mosquitto.log", tuple(listeners))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()

"""A private PostgreSQL server for one test: its own data directory in a temporary folder, its
own port, trust auth — a test may stop, restart or kill it without touching the shared test
server (tests/postgres_server.py).

The server binaries are PostgreSQL's own (``initdb``, ``pg_ctl``): ``TOCSIN_PG_BINDIR`` names
their folder, else the newest /usr/lib/postgresql/<version>/bin, else ``pg_ctl`` on the PATH.
Without them the test is skipped saying so (a failure when ``TOCSIN_REQUIRE_POSTGRES=1``).

``initdb`` refuses to run as root: as root the server runs as the ``postgres`` OS user
(``runuser -u postgres --``) in a folder that user owns.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import postgres_server
import psycopg
import pytest

#: The OS user the server runs as when the tests run as root.
SERVER_USER = "postgres"


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    named = os.environ.get("TOCSIN_PG_BINDIR")
    if named:
        return Path(named) if (Path(named) / "pg_ctl").is_file() else None
    versions = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        if (bindir / "pg_ctl").is_file() and (bindir / "initdb").is_file():
            number = re.match(r"\d+", bindir.parent.name)
            versions.append((int(number.group()) if number else 0, bindir))
    if versions:
        return max(versions)[1]
    found = shutil.which("pg_ctl")
    if found is not None:
        bindir = Path(found).resolve().parent
        if (bindir / "initdb").is_file():
            return bindir
    return None


def require_binaries() -> Path:
    """The binaries' folder, or skip (fail when PostgreSQL is required) saying why."""
    bindir = find_bindir()
    problem = ""
    if bindir is None:
        problem = (
            "no PostgreSQL server binaries (initdb, pg_ctl) found in TOCSIN_PG_BINDIR, "
            "/usr/lib/postgresql/*/bin or the PATH: the private-server test is SKIPPED"
        )
    elif os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            problem = (
                f"running as root, and there is no {SERVER_USER!r} OS user to run initdb as: "
                "the private-server test is SKIPPED"
            )
        if not problem and shutil.which("runuser") is None:
            problem = "running as root without runuser: the private-server test is SKIPPED"
    if problem:
        if postgres_server.required():
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    assert bindir is not None
    return bindir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """One private server: ``start()``, ``stop(mode)``, ``restart(mode)``, ``dsn``."""

    def __init__(self, bindir: Path, base: Path, port: int) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        self.port = port
        self._as_root = os.geteuid() == 0

    # -- what tests use --------------------------------------------------------------------
    @property
    def admin_dsn(self) -> str:
        return self.dsn_of("postgres")

    @property
    def dsn(self) -> str:
        """The DSN of the database ``tocsin`` made by :meth:`init`."""
        return self.dsn_of("tocsin")

    def dsn_of(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={database} user=postgres"

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        self.start()
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE tocsin")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            # A test server: nothing here needs to survive the machine.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=50 -c shared_buffers=32MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``mode``: smart, fast (clients disconnected, a clean shutdown) or immediate (a
        crash: recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        result = self._run("pg_ctl", "-D", str(self.data), "status", check=False)
        return result.returncode == 0

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- running the binaries --------------------------------------------------------------
    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(
            command,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}\n"
                f"{result.stderr}\nserver log:\n{self.log_tail()}"
            )
        return result


@contextmanager
def private_cluster() -> Iterator[PgCluster]:
    """A new server, running, with an empty database ``tocsin``; stopped and removed after."""
    bindir = require_binaries()
    base = Path(tempfile.mkdtemp(prefix="tocsin-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    base.chmod(0o700)
    cluster = PgCluster(bindir, base, _free_port())
    try:
        cluster.init()
        yield cluster
    finally:
        with suppress(Exception):
            if cluster.running():
                cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)

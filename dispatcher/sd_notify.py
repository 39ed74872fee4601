"""systemd's notification protocol (sd_notify(3)): tell the service manager the daemon is
ready, reloading or stopping, what it is doing, and that it is alive (the watchdog).

A message is one datagram of ``KEY=value`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Written here rather than
taken from systemd-python, whose binding compiles against libsystemd's headers (a C compiler
and libsystemd-dev on every install) to send one datagram. Without ``$NOTIFY_SOCKET`` (not
under systemd, or another Type=) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends notifications to one socket; never raises (a lost notification must not stop the
    daemon: systemd's own timeouts cover a manager that no longer listens)."""

    def __init__(self, address: str | None) -> None:
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self._warned = False
        if not address:
            return
        if address.startswith("@"):
            # Abstract namespace: a leading NUL byte in the address, not a file.
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        else:
            # systemd 254+ may also name an AF_VSOCK address (vsock:CID:PORT), for VMs.
            log.warning(
                "NOTIFY_SOCKET is not a unix socket; not notifying systemd", address=address
            )
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # The manager reads at once; a full queue means it is stuck, and the daemon must not be.
        self._sock.setblocking(False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; True when it was sent."""
        if self._sock is None or self._address is None or not assignments:
            return False
        try:
            self._sock.sendto("\n".join(assignments).encode("utf-8"), self._address)
        except OSError as exc:
            if not self._warned:  # once: a gone manager would otherwise fill the log
                self._warned = True
                log.warning("cannot notify systemd", error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload, 253+) tell this reload from an older one.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.send(*_status(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> tuple[str, ...]:
    # One line: a newline would start another assignment.
    return () if text is None else ("STATUS=" + " ".join(text.splitlines()),)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(
    environ: Mapping[str, str] | None = None, *, pid: int | None = None
) -> float | None:
    """Seconds between WATCHDOG=1 messages: half of ``$WATCHDOG_USEC`` (sd_watchdog_enabled(3)
    advises feeding at half the timeout), or None when systemd set no watchdog for this
    process (``$WATCHDOG_PID``, when set, names the process the watchdog is meant for)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watched = env.get("WATCHDOG_PID")
    if watched and watched != str(os.getpid() if pid is None else pid):
        return None
    return usec / 2 / 1_000_000


#: How often the status line is refreshed when systemd set no watchdog.
STATUS_INTERVAL = 5.0


class Watchdog:
    """Feeds systemd's watchdog from a named task, only while ``health()`` returns None (the
    daemon is well); when it returns a reason the feeding stops, so systemd restarts the
    daemon after WatchdogSec= (Restart=on-failure). An event loop that hangs stops it too.
    Each round also refreshes the STATUS= line when ``status()`` changed."""

    def __init__(
        self,
        notifier: Notifier,
        interval: float | None,
        *,
        health: Callable[[], str | None],
        status: Callable[[], str],
    ) -> None:
        self._notifier = notifier
        self._interval = interval
        self._health = health
        self._status = status
        self._task: asyncio.Task[None] | None = None
        self._last_status: str | None = None
        self._unhealthy: str | None = None
        #: Rounds that fed the watchdog (tests, metrics).
        self.fed = 0

    def start(self) -> None:
        if not self._notifier.enabled or self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name="tocsin-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def ready(self) -> None:
        """READY=1 with the status line, then feed from the named task."""
        text = self._status()
        if self._notifier.ready(text):
            self._last_status = text
        self.start()

    def refresh_status(self) -> None:
        """Send the status line now if it changed (after a reload, say)."""
        text = self._status() if self._unhealthy is None else f"unhealthy: {self._unhealthy}"
        if text != self._last_status and self._notifier.status(text):
            self._last_status = text

    def beat(self) -> None:
        """One round: check health, feed the watchdog if well, refresh the status line."""
        reason = self._health()
        if reason is None:
            if self._unhealthy is not None:
                log.warning("daemon healthy again; feeding the watchdog", was=self._unhealthy)
            self._unhealthy = None
            if self._interval is not None and self._notifier.watchdog():
                self.fed += 1
        elif self._unhealthy != reason:
            self._unhealthy = reason
            log.error(
                "daemon unhealthy: no longer feeding systemd's watchdog, which restarts it",
                reason=reason,
                watchdog=self._interval is not None,
            )
        self.refresh_status()

    async def _run(self) -> None:
        period = self._interval if self._interval is not None else STATUS_INTERVAL
        while True:
            try:
                self.beat()
            except Exception:  # a broken status line must not end the watchdog's task
                log.exception("watchdog round failed")
            await asyncio.sleep(period)

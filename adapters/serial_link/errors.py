"""What can go wrong on a serial port, said so an installer can act on it."""

from __future__ import annotations

import errno


class SerialLinkError(Exception):
    """A serial port could not be used."""


class PortUnavailable(SerialLinkError):
    """The port could not be opened (or the device on it did not answer its set-up)."""

    def __init__(self, port: str, cause: str) -> None:
        super().__init__(f"{port}: {cause}")
        self.port = port
        self.cause = cause


class PortClosed(SerialLinkError):
    """The port went away (unplugged, the device reset its USB) or is not open now."""


class ResponseTimeout(SerialLinkError):
    """The device did not answer in time."""


def describe_open_error(exc: BaseException) -> str:
    """Why opening a port failed, in words an installer can act on. pyserial raises
    SerialException for everything; the errno (when it kept one) and its text tell which."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOENT or "No such file" in text:
        return (
            "no such port (is the device plugged in? `ls -l /dev/serial/by-id/` lists the "
            "attached ones)"
        )
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return (
            "permission denied (the service user must be in the dialout group, and under "
            "systemd the unit must allow the device class: DeviceAllow=)"
        )
    if code in (errno.EAGAIN, errno.EBUSY) or "exclusively lock" in text:
        return (
            "port is busy: another program holds its lock (the running daemon, when this is "
            "`tocsin adapters probe`? a second tocsin?)"
        )
    if "Inappropriate ioctl" in text or code == errno.ENOTTY:
        return "not a serial device"
    return text or type(exc).__name__

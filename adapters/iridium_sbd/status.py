"""What an Iridium 9602/9603 answers, read: ``+SBDIX`` results and their MO status codes (with
what Tocsin does about each), ``AT+SBDWB`` result codes, ``+CSQ``. Pure, no I/O.

The tables follow Iridium's "ISU AT Command Reference" (the 9602/9603 chapters): MO status 0–4
means the gateway took the message; everything else means it did not, and the message is still
in the transceiver's MO buffer. Whether Tocsin tries again depends on the cause: the sky and the
network come and go (retry, not too soon — the gateway dislikes hammering), a transceiver that
is not provisioned or is locked will not fix itself (failed, with what to do).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class SbdStatusError(ValueError):
    """A line that is not what the transceiver should have answered."""


class Verdict(enum.StrEnum):
    SUCCESS = "success"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class MoStatus:
    """One MO status code: what it means and what Tocsin does."""

    code: int
    verdict: Verdict
    reason: str
    #: Seconds before the next try, for RETRY.
    after: float | None = None


def _s(code: int, reason: str) -> MoStatus:
    return MoStatus(code, Verdict.SUCCESS, reason)


def _r(code: int, reason: str, after: float) -> MoStatus:
    return MoStatus(code, Verdict.RETRY, reason, after)


def _f(code: int, reason: str) -> MoStatus:
    return MoStatus(code, Verdict.FAILED, reason)


_PROVISIONING_HINT = (
    "check with the service provider that this transceiver's IMEI is activated for SBD "
    "(line rental, credit) and that its MO destinations are provisioned"
)

#: Every MO status code Iridium defines (unlisted codes: reserved, see :func:`mo_status`).
MO_STATUS: dict[int, MoStatus] = {
    s.code: s
    for s in (
        _s(0, "MO message transferred"),
        _s(1, "MO message transferred; the MT message queued was too big to be transferred"),
        _s(2, "MO message transferred; the location update was not accepted"),
        _s(3, "MO message transferred (reserved success code 3)"),
        _s(4, "MO message transferred (reserved success code 4)"),
        _r(10, "the gateway reported that the call did not complete in the allowed time", 30),
        _r(11, "the MO message queue at the gateway is full", 120),
        _f(12, "the MO message has too many segments (message too long for this transceiver)"),
        _r(13, "the gateway reported that the session did not complete", 30),
        _f(14, "invalid segment size (message size rejected by the gateway)"),
        _f(15, f"access denied by the gateway: {_PROVISIONING_HINT}"),
        _f(16, "the transceiver is locked and may not make SBD calls (AT+CULK): unlock it"),
        _r(17, "gateway not responding (local session timeout)", 30),
        _r(18, "connection lost (RF drop): check the antenna's view of the sky", 30),
        _r(19, "link failure (a protocol error ended the call)", 30),
        _r(
            32, "no network service (no satellite in view): check the antenna's view of the sky", 60
        ),
        _r(33, "antenna fault: check the antenna and its cable", 300),
        _r(34, "the radio is disabled (AT*R0): enable it with AT*R1", 300),
        _r(35, "the transceiver is busy", 10),
        _r(36, "try later: the transceiver must wait 3 minutes after its last registration", 180),
        _r(37, "SBD service is temporarily disabled", 300),
        _r(38, "try later: traffic management period (AT+SBDLOE says how long)", 60),
        _f(64, "band violation (attempt to transmit outside the permitted frequency band)"),
        _r(65, "PLL lock failure: hardware error during the attempted transmit", 60),
    )
}


def mo_status(code: int) -> MoStatus:
    """The meaning of an MO status code; reserved codes count as Iridium says (0–4 success,
    anything else failure) and are retried — a code this table does not know is no reason to
    give up on a warning."""
    known = MO_STATUS.get(code)
    if known is not None:
        return known
    if 0 <= code <= 4:
        return _s(code, f"MO message transferred (reserved success code {code})")
    return _r(code, f"session failed with reserved MO status {code}", 60)


class MtStatus(enum.IntEnum):
    NONE = 0
    RECEIVED = 1
    ERROR = 2


@dataclass(frozen=True, slots=True)
class SbdixResult:
    """``+SBDIX: <MO status>, <MOMSN>, <MT status>, <MTMSN>, <MT length>, <MT queued>``."""

    mo_status: int
    #: Mobile-originated message sequence number: the reference of a sent message.
    momsn: int
    mt_status: MtStatus
    mtmsn: int
    mt_length: int
    #: Messages still waiting at the gateway for this transceiver.
    mt_queued: int

    @property
    def mo(self) -> MoStatus:
        return mo_status(self.mo_status)

    @property
    def sent(self) -> bool:
        return self.mo.verdict is Verdict.SUCCESS


_SBDIX = re.compile(
    r"^\+SBDIXA?:\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*$"
)


def parse_sbdix(line: str) -> SbdixResult:
    """Read a ``+SBDIX:`` (or ``+SBDIXA:``) line; :class:`SbdStatusError` if it is not one."""
    match = _SBDIX.match(line.strip())
    if match is None:
        raise SbdStatusError(f"not an +SBDIX result: {line.strip()[:80]!r}")
    mo, momsn, mt, mtmsn, length, queued = (int(g) for g in match.groups())
    if mt not in (0, 1, 2):
        raise SbdStatusError(f"+SBDIX MT status {mt} is not 0, 1 or 2")
    if momsn > 65535 or mtmsn > 65535:
        raise SbdStatusError("+SBDIX sequence number above 65535")
    return SbdixResult(mo, momsn, MtStatus(mt), mtmsn, length, queued)


class WriteResult(enum.IntEnum):
    """The code ``AT+SBDWB`` answers after the bytes (or at once, for a wrong size)."""

    OK = 0
    TIMEOUT = 1
    BAD_CHECKSUM = 2
    WRONG_SIZE = 3

    @property
    def reason(self) -> str:
        return _WRITE_REASONS[self]


_WRITE_REASONS = {
    WriteResult.OK: "SBD message written to the MO buffer",
    WriteResult.TIMEOUT: "the transceiver timed out waiting for the message bytes",
    WriteResult.BAD_CHECKSUM: "the transceiver computed a different checksum (line noise?)",
    WriteResult.WRONG_SIZE: "message size not accepted (1 to 340 bytes)",
}


def parse_write_result(line: str) -> WriteResult:
    try:
        return WriteResult(int(line.strip()))
    except ValueError:
        raise SbdStatusError(f"not an AT+SBDWB result code: {line.strip()[:80]!r}") from None


_CSQ = re.compile(r"^\+CSQF?:\s*([0-5])\s*$")


def parse_csq(line: str) -> int:
    """Signal bars 0–5 from ``+CSQ:<n>``."""
    match = _CSQ.match(line.strip())
    if match is None:
        raise SbdStatusError(f"not a +CSQ answer: {line.strip()[:80]!r}")
    return int(match.group(1))

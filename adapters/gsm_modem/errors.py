"""What a modem's ``+CMS ERROR`` (3GPP TS 27.005 §3.2.5) and ``+CME ERROR`` (27.007 §9.2)
codes mean for a delivery: send it again later, or give up, with a reason an operator can act
on.

``+CMS ERROR`` 0–127 are the RP causes of 3GPP TS 24.011 (annex E.2) passed on from the
network, 128–255 the TP-FCS values of 23.040 §9.2.3.22 from the SMSC, 300–340 the modem's own,
500 "unknown" and 512 on manufacturer-specific (515 "busy / initialising" on many modules).
An unknown code is retried: a code we have not seen is more often a passing state of a
vendor's firmware than a bad number, and the engine's retry limit bounds it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErrorVerdict:
    code: int
    reason: str
    retry: bool
    #: Seconds before trying again, where the cause suggests one.
    after: float | None = None
    #: True when the modem itself cannot send anything (no SIM, PIN, no service): the link is
    #: not ready and every other message would fail the same way.
    modem_problem: bool = False
    #: What an installer should change, when the cause is configuration.
    hint: str = ""


def _v(
    reason: str,
    *,
    retry: bool,
    after: float | None = None,
    modem: bool = False,
    hint: str = "",
) -> tuple[str, bool, float | None, bool, str]:
    return reason, retry, after, modem, hint


_CMS: dict[int, tuple[str, bool, float | None, bool, str]] = {
    # 24.011 annex E.2, RP causes
    1: _v("unassigned (unallocated) number", retry=False),
    8: _v("operator determined barring", retry=False),
    10: _v("call barred", retry=False),
    17: _v("network failure", retry=True, after=30),
    21: _v("short message transfer rejected", retry=False),
    22: _v("memory capacity exceeded at the recipient", retry=True, after=300),
    27: _v("destination out of order", retry=True, after=60),
    28: _v("unidentified subscriber", retry=False),
    29: _v("facility rejected", retry=False),
    30: _v("unknown subscriber", retry=False),
    38: _v("network out of order", retry=True, after=30),
    41: _v("temporary failure", retry=True, after=10),
    42: _v("congestion", retry=True, after=10),
    47: _v("resources unavailable", retry=True, after=30),
    50: _v(
        "requested facility not subscribed",
        retry=False,
        hint="the SIM's plan does not include SMS to this destination",
    ),
    69: _v("requested facility not implemented", retry=False),
    81: _v("invalid short message transfer reference value", retry=True),
    95: _v("invalid message", retry=False),
    96: _v("invalid mandatory information", retry=False),
    97: _v("message type non-existent", retry=False),
    98: _v("message not compatible with the protocol state", retry=True),
    99: _v("information element non-existent", retry=False),
    111: _v("protocol error", retry=True),
    127: _v("interworking unspecified", retry=True, after=30),
    # 23.040 §9.2.3.22, TP-FCS
    128: _v("telematic interworking not supported", retry=False),
    129: _v("short message type 0 not supported", retry=False),
    143: _v("unspecified TP-PID error", retry=False),
    144: _v("data coding scheme not supported", retry=False),
    159: _v("unspecified TP-DCS error", retry=False),
    176: _v("TPDU not supported", retry=False),
    192: _v("SMSC busy", retry=True, after=10),
    193: _v(
        "no SMSC subscription",
        retry=False,
        modem=True,
        hint="the SIM has no SMS service; ask the operator",
    ),
    194: _v("SMSC system failure", retry=True, after=30),
    195: _v("invalid destination address", retry=False),
    196: _v("destination barred", retry=False),
    197: _v("rejected as a duplicate", retry=True),
    198: _v("validity period format not supported", retry=False, hint="set validity = 0"),
    199: _v("validity period not supported", retry=False, hint="set validity = 0"),
    208: _v("SIM SMS storage full", retry=True, after=30, modem=True),
    209: _v("no SMS storage on the SIM", retry=True, modem=True),
    210: _v("error in the modem", retry=True, after=10),
    211: _v("memory capacity exceeded", retry=True, after=30),
    212: _v("SIM toolkit busy", retry=True, after=5),
    255: _v("unspecified error", retry=True, after=10),
    # 27.005 §3.2.5, the modem's own
    300: _v("modem failure", retry=True, after=10, modem=True),
    301: _v("SMS service of the modem reserved", retry=True, after=5),
    302: _v("operation not allowed", retry=True, after=5),
    303: _v("operation not supported", retry=False, hint="the modem cannot send SMS in PDU mode"),
    304: _v("invalid PDU mode parameter (a bug in Tocsin's PDU: please report)", retry=False),
    305: _v("invalid text mode parameter", retry=False),
    310: _v("SIM not inserted", retry=True, after=60, modem=True, hint="insert the SIM"),
    311: _v("SIM PIN required", retry=True, after=60, modem=True, hint="set sim_pin"),
    312: _v("PH-SIM PIN required", retry=True, after=60, modem=True),
    313: _v("SIM failure", retry=True, after=60, modem=True),
    314: _v("SIM busy", retry=True, after=5),
    315: _v("SIM wrong", retry=True, after=60, modem=True),
    316: _v("SIM PUK required", retry=True, after=300, modem=True, hint="unblock the SIM (PUK)"),
    317: _v("SIM PIN2 required", retry=True, after=60, modem=True),
    318: _v("SIM PUK2 required", retry=True, after=300, modem=True),
    320: _v("memory failure", retry=True, after=10),
    321: _v("invalid memory index", retry=True),
    322: _v("memory full", retry=True, after=30),
    330: _v(
        "SMSC address unknown",
        retry=False,
        modem=True,
        hint="set the SIM's SMS centre number (AT+CSCA) or the smsc setting",
    ),
    331: _v("no network service", retry=True, after=30, modem=True),
    332: _v("network timeout", retry=True, after=10),
    340: _v("no +CNMA acknowledgement expected", retry=True),
    500: _v("unknown error", retry=True, after=10),
    # Manufacturer-specific codes common enough to name (SIMCom, Quectel, Wavecom, Huawei).
    512: _v("modem busy (manufacturer code)", retry=True, after=5),
    513: _v("message not sent: radio link lost (manufacturer code)", retry=True, after=10),
    514: _v("message not sent: network busy (manufacturer code)", retry=True, after=10),
    515: _v("modem busy, initialising or processing a command", retry=True, after=5),
    517: _v("SIM toolkit busy (manufacturer code)", retry=True, after=5),
}

_CME: dict[int, tuple[str, bool, float | None, bool, str]] = {
    0: _v("phone failure", retry=True, after=10, modem=True),
    3: _v("operation not allowed", retry=True, after=5),
    4: _v("operation not supported", retry=False),
    5: _v("PH-SIM PIN required", retry=True, after=60, modem=True),
    10: _v("SIM not inserted", retry=True, after=60, modem=True, hint="insert the SIM"),
    11: _v("SIM PIN required", retry=True, after=60, modem=True, hint="set sim_pin"),
    12: _v("SIM PUK required", retry=True, after=300, modem=True, hint="unblock the SIM (PUK)"),
    13: _v("SIM failure", retry=True, after=60, modem=True),
    14: _v("SIM busy", retry=True, after=5),
    15: _v("SIM wrong", retry=True, after=60, modem=True),
    16: _v(
        "incorrect password",
        retry=False,
        modem=True,
        hint="sim_pin is wrong; a further wrong PIN may block the SIM",
    ),
    17: _v("SIM PIN2 required", retry=True, after=60, modem=True),
    18: _v("SIM PUK2 required", retry=True, after=300, modem=True),
    20: _v("memory full", retry=True, after=30),
    21: _v("invalid index", retry=True),
    22: _v("not found", retry=True),
    23: _v("memory failure", retry=True, after=10),
    30: _v("no network service", retry=True, after=30, modem=True),
    31: _v("network timeout", retry=True, after=10),
    32: _v("network not allowed, emergency calls only", retry=True, after=60, modem=True),
    100: _v("unknown error", retry=True, after=10),
}


def cms_error(code: int) -> ErrorVerdict:
    """What ``+CMS ERROR: <code>`` after ``AT+CMGS`` means for the message."""
    entry = _CMS.get(code)
    if entry is None:
        if code >= 512:
            entry = _v(f"manufacturer-specific error {code}", retry=True, after=10)
        elif code < 128:
            entry = _v(f"network cause {code}", retry=True, after=30)
        elif code < 256:
            entry = _v(f"SMSC failure cause 0x{code:02X}", retry=True, after=30)
        else:
            entry = _v(f"error {code}", retry=True, after=10)
    reason, retry, after, modem, hint = entry
    return ErrorVerdict(code, reason, retry, after, modem, hint)


def cme_error(code: int) -> ErrorVerdict:
    """What ``+CME ERROR: <code>`` (SIM, PIN, registration) means."""
    reason, retry, after, modem, hint = _CME.get(
        code, _v(f"equipment error {code}", retry=True, after=10)
    )
    return ErrorVerdict(code, reason, retry, after, modem, hint)


def described(verdict: ErrorVerdict, prefix: str) -> str:
    """``"+CMS ERROR 42: congestion"`` (with the hint, when there is one)."""
    text = f"{prefix} {verdict.code}: {verdict.reason}"
    return f"{text} ({verdict.hint})" if verdict.hint else text

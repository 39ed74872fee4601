"""CAP 1.2 in and out: parse untrusted CAP XML into a WarningInput, export a WarningRecord."""

from dispatcher.cap.errors import CapError
from dispatcher.cap.export import to_cap_xml
from dispatcher.cap.parse import (
    AUDIO_SHA256_PARAMETER,
    GB2260,
    LEVEL_PARAMETER,
    STATS_CODE,
    ParsedCap,
    parse_cap,
)
from dispatcher.cap.schema import CAP_NAMESPACE, cap_schema

__all__ = [
    "AUDIO_SHA256_PARAMETER",
    "CAP_NAMESPACE",
    "GB2260",
    "LEVEL_PARAMETER",
    "STATS_CODE",
    "CapError",
    "ParsedCap",
    "cap_schema",
    "parse_cap",
    "to_cap_xml",
]

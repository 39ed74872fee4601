"""CAP 1.2 XML out: a stored :class:`WarningRecord` as a schema-valid CAP message.

Building with ElementTree is safe (nothing is parsed). Children are appended in exactly the
order the XSD sequences require; docs/cap.md describes the mapping.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element, SubElement, indent, tostring

from dispatcher.cap.parse import AUDIO_SHA256_PARAMETER, GB2260, LEVEL_PARAMETER, STATS_CODE
from dispatcher.cap.schema import CAP_NAMESPACE, cap_tag
from dispatcher.domain import WarningRecord
from dispatcher.warning_input import format_cap_datetime

_XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
# Characters XML 1.0 cannot carry at all: writing them would produce a document no parser reads.
_NOT_XML_CHARACTERS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_COUNTY_SUFFIX = "000000"
_AUDIO_MIME_TYPES = {
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".amr": "audio/amr",
    ".flac": "audio/flac",
}
_DEFAULT_AUDIO_MIME_TYPE = "audio/mpeg"


def to_cap_xml(warning: WarningRecord, *, sender_name: str | None = None) -> bytes:
    """The warning as a CAP 1.2 ``<alert>``: UTF-8 with an XML declaration, CAP as the default
    namespace. Raises ValueError for a naive ``sent`` or ``expires`` (the offset is required
    and guessing one could shift a warning by hours)."""
    alert = Element(cap_tag("alert"))
    _add(alert, "identifier", warning.identifier)
    _add(alert, "sender", warning.sender)
    _add(alert, "sent", _cap_datetime(warning.sent, "sent"))
    _add(alert, "status", warning.status.value)
    _add(alert, "msgType", warning.msg_type.value)
    _add(alert, "scope", "Public")  # Tocsin only broadcasts publicly
    _add_optional(alert, "note", warning.note)
    _add_optional(alert, "references", " ".join(warning.references))
    _add_info(alert, warning, sender_name)
    indent(alert)
    text = tostring(alert, encoding="unicode", default_namespace=CAP_NAMESPACE)
    return _XML_DECLARATION + text.encode("utf-8") + b"\n"


def _add_info(alert: Element, warning: WarningRecord, sender_name: str | None) -> None:
    info = SubElement(alert, cap_tag("info"))
    _add(info, "language", warning.language)
    _add(info, "category", warning.category)
    _add(info, "event", warning.event)
    _add(info, "urgency", warning.urgency)
    _add(info, "severity", warning.level.cap_severity)
    _add(info, "certainty", warning.certainty)
    _add(info, "expires", _cap_datetime(warning.expires, "expires"))
    _add_optional(info, "senderName", sender_name or "")
    _add_optional(info, "headline", warning.headline)
    _add_optional(info, "description", warning.description)
    _add_optional(info, "instruction", warning.instruction)
    _add_parameter(info, LEVEL_PARAMETER, warning.level.value)
    if warning.audio_url and warning.audio_sha256:
        _add_parameter(info, AUDIO_SHA256_PARAMETER, warning.audio_sha256)
    if warning.audio_url:
        resource = SubElement(info, cap_tag("resource"))
        _add(resource, "resourceDesc", "audio")
        _add(resource, "mimeType", _audio_mime_type(warning.audio_url))
        _add(resource, "uri", warning.audio_url)
    area = SubElement(info, cap_tag("area"))
    _add(area, "areaDesc", warning.area_desc or ", ".join(warning.area_codes))
    for code in warning.area_codes:
        _add_geocode(area, STATS_CODE, code)
        if code.endswith(_COUNTY_SUFFIX):  # county or above: also its GB2260 code
            _add_geocode(area, GB2260, code[: -len(_COUNTY_SUFFIX)])


def _add(parent: Element, name: str, text: str) -> Element:
    child = SubElement(parent, cap_tag(name))
    child.text = _xml_text(text)
    return child


def _add_optional(parent: Element, name: str, text: str) -> None:
    if text:
        _add(parent, name, text)


def _add_parameter(info: Element, value_name: str, value: str) -> None:
    parameter = SubElement(info, cap_tag("parameter"))
    _add(parameter, "valueName", value_name)
    _add(parameter, "value", value)


def _add_geocode(area: Element, value_name: str, value: str) -> None:
    geocode = SubElement(area, cap_tag("geocode"))
    _add(geocode, "valueName", value_name)
    _add(geocode, "value", value)


def _xml_text(text: str) -> str:
    # Parsers turn CR LF and lone CR into LF anyway; doing it here keeps export → parse exact.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _NOT_XML_CHARACTERS.sub("", text)


def _cap_datetime(value: datetime, name: str) -> str:
    offset = value.utcoffset()
    if offset is None:
        raise ValueError(f"warning {name} {value.isoformat()} has no UTC offset")
    if offset % timedelta(minutes=1):
        value = value.astimezone(UTC)  # CAP offsets are hh:mm; historic zones have seconds
    return format_cap_datetime(value)


def _audio_mime_type(url: str) -> str:
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    return _AUDIO_MIME_TYPES.get(suffix, _DEFAULT_AUDIO_MIME_TYPE)

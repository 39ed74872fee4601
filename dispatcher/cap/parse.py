"""CAP 1.2 XML in: untrusted bytes → a validated :class:`WarningInput`, or a :class:`CapError`.

Order of checks: safe XML (defusedxml) → root element and namespace → the CAP 1.2 schema →
what Tocsin itself needs (public scope, references, one info block, a level, area codes) →
the WarningInput model. A Cancel may come without <info>: the warning service takes its content
from the warning it cancels. docs/cap.md describes the mapping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn
from xml.etree.ElementTree import Element

from pydantic import ValidationError

from dispatcher.cap.errors import CapError
from dispatcher.cap.safe_xml import XmlDocument, read_xml
from dispatcher.cap.schema import CAP_NAMESPACE, cap_tag, validate_alert
from dispatcher.domain import Level, MsgType, Status
from dispatcher.warning_input import WarningInput, normalise_area_code

#: <parameter> valueNames Tocsin reads (compared case-insensitively).
LEVEL_PARAMETER = "LEVEL"
AUDIO_SHA256_PARAMETER = "AUDIO_SHA256"
#: <geocode> valueNames Tocsin targets by.
GB2260 = "GB2260"
STATS_CODE = "STATS_CODE"

_LEVEL_WORDS: dict[str, Level] = {
    "red": Level.RED,
    "红": Level.RED,
    "红色": Level.RED,
    "orange": Level.ORANGE,
    "橙": Level.ORANGE,
    "橙色": Level.ORANGE,
    "yellow": Level.YELLOW,
    "黄": Level.YELLOW,
    "黄色": Level.YELLOW,
    "blue": Level.BLUE,
    "蓝": Level.BLUE,
    "蓝色": Level.BLUE,
}
_POSTABLE_STATUSES = frozenset(status.value for status in Status)
_POSTABLE_MSG_TYPES = frozenset(msg_type.value for msg_type in MsgType)
_GEOCODE_DIGITS = {GB2260: 6, STATS_CODE: 12}
# CAP's own dateTime shape (the XSD pattern); "Z" is not allowed.
_CAP_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[-+]\d\d:\d\d$", re.ASCII)
_AREA_DESC_LIMIT = 1000  # WarningInput.area_desc

# Where each WarningInput field comes from, to name the CAP element when the model rejects it.
_FIELD_PATHS = {
    "identifier": "alert/identifier",
    "sender": "alert/sender",
    "sent": "alert/sent",
    "status": "alert/status",
    "msg_type": "alert/msgType",
    "note": "alert/note",
    "references": "alert/references",
    "language": "alert/info/language",
    "category": "alert/info/category",
    "event": "alert/info/event",
    "urgency": "alert/info/urgency",
    "level": "alert/info/severity",
    "certainty": "alert/info/certainty",
    "expires": "alert/info/expires",
    "headline": "alert/info/headline",
    "description": "alert/info/description",
    "instruction": "alert/info/instruction",
    "audio_sha256": f"alert/info/parameter[{AUDIO_SHA256_PARAMETER}]",
    "audio_url": "alert/info/resource/uri",
    "area_desc": "alert/info/area/areaDesc",
    "area_codes": "alert/info/area/geocode",
}


@dataclass(frozen=True, slots=True)
class ParsedCap:
    """A CAP message Tocsin accepts: the warning, plus what did not fit in it."""

    warning: WarningInput
    sender_name: str | None = None
    #: Human-readable notes on parts of the message that Tocsin read past (other-language
    #: <info> blocks, polygons, non-audio resources, …), for the audit log and the response.
    ignored: tuple[str, ...] = ()


def parse_cap(body: bytes) -> ParsedCap:
    """Parse and check a CAP 1.2 message. Every rejection is a :class:`CapError`."""
    try:
        return _CapReader(read_xml(body)).read()
    except CapError:
        raise
    except Exception as exc:
        # Whatever a hostile document provokes (RecursionError, an xmlschema internal error)
        # must still reach the officer as a rejection, never as a crash of the request.
        detail = str(exc)[:300]
        raise CapError(f"could not read the CAP message: {type(exc).__name__}: {detail}") from exc


@dataclass(slots=True)
class _CapReader:
    doc: XmlDocument
    ignored: list[str] = field(default_factory=list)
    #: WarningInput field → the element it was read from (its line goes in model errors).
    sources: dict[str, Element] = field(default_factory=dict)

    # -- helpers -------------------------------------------------------------------------

    def fail(self, message: str, *, field: str, element: Element | None = None) -> NoReturn:
        line = self.doc.line_of(element) if element is not None else None
        raise CapError(message, field=field, line=line)

    def text(self, parent: Element, name: str, *, source_for: str | None = None) -> str | None:
        child = parent.find(cap_tag(name))
        if child is None:
            return None
        if source_for is not None:
            self.sources[source_for] = child
        return (child.text or "").strip()

    def required_text(self, parent: Element, name: str, *, source_for: str) -> str:
        # The schema has already required these elements; this keeps the types honest.
        value = self.text(parent, name, source_for=source_for)
        if value is None:
            self.fail(f"<{name}> is missing", field=_FIELD_PATHS[source_for], element=parent)
        return value

    def datetime_of(self, parent: Element, name: str, *, source_for: str) -> datetime | None:
        value = self.text(parent, name, source_for=source_for)
        if value is None:
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            self.fail(
                f"<{name}> {value!r} is not a usable date and time",
                field=_FIELD_PATHS[source_for],
                element=self.sources[source_for],
            )

    # -- the message ---------------------------------------------------------------------

    def read(self) -> ParsedCap:
        root = self.doc.root
        self.check_root(root)
        validate_alert(root, self.doc.line_of)
        fields: dict[str, Any] = self.read_alert(root)
        sender_name: str | None = None
        # CAP 1.2 allows a Cancel without <info> (many producers send exactly that); the
        # warning service fills its level, texts and areas from the warning it cancels.
        info_less_cancel = fields["msg_type"] == MsgType.CANCEL.value and (
            root.find(cap_tag("info")) is None
        )
        if not info_less_cancel:
            info = self.choose_info(root)
            fields |= self.read_info(info)
            sender_name = self.text(info, "senderName") or None
        try:
            warning = WarningInput.model_validate(fields)
        except ValidationError as exc:
            self.fail_from_model(exc)
        return ParsedCap(warning=warning, sender_name=sender_name, ignored=tuple(self.ignored))

    def check_root(self, root: Element) -> None:
        namespace, local_name = _split_tag(root.tag)
        if namespace != CAP_NAMESPACE:
            found = f"namespace {namespace!r}" if namespace else "no namespace"
            self.fail(
                f"<{local_name}> has {found}: a CAP 1.2 message must be in namespace "
                f"{CAP_NAMESPACE!r}",
                field="alert",
                element=root,
            )
        if local_name != "alert":
            self.fail(
                f"the root element is <{local_name}>; a CAP message is an <alert>",
                field="alert",
                element=root,
            )

    def read_alert(self, root: Element) -> dict[str, Any]:
        status = self.required_text(root, "status", source_for="status")
        if status not in _POSTABLE_STATUSES:
            self.fail(
                f"status {status} is for system-to-system messages; Tocsin posts only "
                "Actual, Exercise, Test or Draft warnings",
                field="alert/status",
                element=self.sources["status"],
            )
        msg_type = self.required_text(root, "msgType", source_for="msg_type")
        if msg_type not in _POSTABLE_MSG_TYPES:
            self.fail(
                f"msgType {msg_type} answers another message and cannot be posted as a warning; "
                "use Alert, Update or Cancel",
                field="alert/msgType",
                element=self.sources["msg_type"],
            )
        scope_element = root.find(cap_tag("scope"))
        scope = (scope_element.text or "").strip() if scope_element is not None else ""
        if scope != "Public":
            self.fail(
                f"scope {scope or '(missing)'} is not accepted: Tocsin broadcasts to the public "
                "over loudspeakers, SMS and calls, so only scope Public can be posted",
                field="alert/scope",
                element=scope_element if scope_element is not None else root,
            )
        references = self.read_references(root, MsgType(msg_type))
        return {
            "identifier": self.required_text(root, "identifier", source_for="identifier"),
            "sender": self.required_text(root, "sender", source_for="sender"),
            "sent": self.datetime_of(root, "sent", source_for="sent"),
            "status": status,
            "msg_type": msg_type,
            "references": references,
            "note": self.text(root, "note", source_for="note") or "",
        }

    def read_references(self, root: Element, msg_type: MsgType) -> list[str]:
        text = self.text(root, "references", source_for="references")
        references = (text or "").split()
        element = self.sources.get("references", root)
        if msg_type is not MsgType.ALERT and not references:
            self.fail(
                f"an {msg_type.value} must name the message(s) it replaces in <references> "
                "(space-separated sender,identifier,sent entries)",
                field="alert/references",
                element=element,
            )
        for reference in references:
            parts = reference.split(",")
            if len(parts) != 3 or not all(parts) or not _CAP_DATETIME.match(parts[2]):
                self.fail(
                    f"<references> entry {reference!r} is not 'sender,identifier,sent' "
                    "(sent as a CAP dateTime such as 2024-07-01T08:00:00+08:00)",
                    field="alert/references",
                    element=element,
                )
        return references

    # -- the info block ------------------------------------------------------------------

    def choose_info(self, root: Element) -> Element:
        """One <info> per warning: the zh-CN one, else another Chinese one, else the first.
        Blocks in other languages are translations and are skipped; two blocks in the chosen
        language carry different content (levels, areas) and are refused, not merged."""
        infos = root.findall(cap_tag("info"))
        if not infos:
            self.fail(
                "the message has no <info> block; Tocsin needs one with the event, severity and "
                "area, also in an Update (only a Cancel may leave it out)",
                field="alert/info",
                element=root,
            )
        languages = [self.language_of(info) for info in infos]
        chosen = min(range(len(infos)), key=lambda i: (_language_rank(languages[i]), i))
        same_language = [
            i for i, lang in enumerate(languages) if lang.lower() == languages[chosen].lower()
        ]
        if len(same_language) > 1:
            self.fail(
                f"{len(same_language)} <info> blocks are in language {languages[chosen]}: a "
                "Tocsin warning carries one level, text and area list; send one message each",
                field="alert/info",
                element=infos[same_language[1]],
            )
        for i, info in enumerate(infos):
            if i != chosen:
                self.ignored.append(
                    f"<info> in language {languages[i]} (line {self.doc.line_of(info)})"
                )
        return infos[chosen]

    def language_of(self, info: Element) -> str:
        language = info.find(cap_tag("language"))
        # CAP: an absent <language> means en-US.
        return (language.text or "").strip() if language is not None else "en-US"

    def read_info(self, info: Element) -> dict[str, Any]:
        event = self.required_text(info, "event", source_for="event")
        headline = self.text(info, "headline", source_for="headline")
        fields: dict[str, Any] = {
            "language": self.language_of(info),
            # CAP allows several categories; a Tocsin warning has one, the first.
            "category": self.required_text(info, "category", source_for="category"),
            "event": event,
            "urgency": self.required_text(info, "urgency", source_for="urgency"),
            "certainty": self.required_text(info, "certainty", source_for="certainty"),
            "level": self.read_level(info),
            # CAP makes <headline> optional; a warning needs one, and the event names it.
            "headline": headline or event,
            "description": self.text(info, "description", source_for="description") or "",
            "instruction": self.text(info, "instruction", source_for="instruction") or "",
            "expires": self.datetime_of(info, "expires", source_for="expires"),
        }
        fields |= self.read_audio(info)
        fields |= self.read_areas(info)
        return fields

    def parameters(self, info: Element, name: str) -> list[tuple[str, Element]]:
        found = []
        for parameter in info.findall(cap_tag("parameter")):
            value_name = self.text(parameter, "valueName") or ""
            if value_name.upper() == name:
                found.append((self.text(parameter, "value") or "", parameter))
        return found

    def read_level(self, info: Element) -> Level:
        """The LEVEL parameter wins over <severity>, which CAP cannot make a colour of."""
        levels: list[Level] = []
        for value, parameter in self.parameters(info, LEVEL_PARAMETER):
            level = _LEVEL_WORDS.get(value.lower())
            if level is None:
                self.fail(
                    f"parameter LEVEL {value!r} is not a warning level: use red, orange, yellow "
                    "or blue",
                    field=f"alert/info/parameter[{LEVEL_PARAMETER}]",
                    element=parameter,
                )
            levels.append(level)
        if len(set(levels)) > 1:
            self.fail(
                "parameters LEVEL disagree: " + ", ".join(level.value for level in levels),
                field=f"alert/info/parameter[{LEVEL_PARAMETER}]",
                element=info,
            )
        if levels:
            return levels[0]
        severity = self.required_text(info, "severity", source_for="level")
        level = Level.from_cap_severity(severity)
        if level is None:
            self.fail(
                f"severity {severity} maps to no warning level: give one (Extreme, Severe, "
                "Moderate, Minor) or add a parameter LEVEL = red, orange, yellow or blue",
                field="alert/info/severity",
                element=self.sources["level"],
            )
        return level

    def read_audio(self, info: Element) -> dict[str, Any]:
        """The first audio/* resource with a <uri> is the warning's audio. Its CAP <digest> is
        SHA-1 and is not used; a SHA-256 comes only from the AUDIO_SHA256 parameter."""
        audio_url: str | None = None
        for resource in info.findall(cap_tag("resource")):
            mime_type = (self.text(resource, "mimeType") or "").lower()
            uri = self.text(resource, "uri")
            where = f"(line {self.doc.line_of(resource)})"
            if not mime_type.startswith("audio/"):
                self.ignored.append(f"<resource> of type {mime_type or '(none)'} {where}")
            elif not uri:
                self.ignored.append(f"audio <resource> without a <uri> {where}")
            elif audio_url is not None:
                self.ignored.append(f"second audio <resource> {uri} {where}")
            else:
                audio_url = uri
                self.sources["audio_url"] = resource
        digests = {value.lower() for value, _ in self.parameters(info, AUDIO_SHA256_PARAMETER)}
        for _, parameter in self.parameters(info, AUDIO_SHA256_PARAMETER):
            self.sources["audio_sha256"] = parameter
        if len(digests) > 1:
            self.fail(
                "parameters AUDIO_SHA256 disagree",
                field=_FIELD_PATHS["audio_sha256"],
                element=self.sources["audio_sha256"],
            )
        if digests and audio_url is None:
            self.fail(
                "parameter AUDIO_SHA256 is given but there is no audio <resource> with a <uri>",
                field=_FIELD_PATHS["audio_sha256"],
                element=self.sources["audio_sha256"],
            )
        return {"audio_url": audio_url, "audio_sha256": next(iter(digests), None)}

    def read_areas(self, info: Element) -> dict[str, Any]:
        areas = info.findall(cap_tag("area"))
        if not areas:
            self.fail(
                "no usable area: the <info> block has no <area>; Tocsin targets areas by "
                f"<geocode> {GB2260} or {STATS_CODE}",
                field="alert/info/area",
                element=info,
            )
        codes: list[str] = []
        descriptions: list[str] = []
        for area in areas:
            description = self.text(area, "areaDesc") or ""
            codes_here = self.read_geocodes(area, description)
            if not codes_here:
                self.fail(
                    f"area {description!r} has no <geocode> with valueName {GB2260} (6 digits) "
                    f"or {STATS_CODE} (12 digits); Tocsin cannot target polygons or circles",
                    field="alert/info/area/geocode",
                    element=area,
                )
            codes.extend(codes_here)
            if description and description not in descriptions:
                descriptions.append(description)
            if (
                area.find(cap_tag("polygon")) is not None
                or area.find(cap_tag("circle")) is not None
            ):
                self.ignored.append(
                    f"polygon/circle of area {description!r}: the geocodes are used"
                )
        area_desc = "; ".join(descriptions)
        if len(area_desc) > _AREA_DESC_LIMIT:
            # A label is not worth refusing a warning over.
            area_desc = area_desc[: _AREA_DESC_LIMIT - 1] + "…"
            self.ignored.append(f"areaDesc beyond {_AREA_DESC_LIMIT} characters")
        self.sources["area_codes"] = areas[0]
        self.sources["area_desc"] = areas[0]
        return {"area_codes": list(dict.fromkeys(codes)), "area_desc": area_desc}

    def read_geocodes(self, area: Element, description: str) -> list[str]:
        codes: list[str] = []
        for geocode in area.findall(cap_tag("geocode")):
            value_name = (self.text(geocode, "valueName") or "").upper()
            value = self.text(geocode, "value") or ""
            digits = _GEOCODE_DIGITS.get(value_name)
            if digits is None:
                self.ignored.append(
                    f"geocode {value_name or '(unnamed)'}={value} of {description!r}"
                )
                continue
            if len(value) != digits or not value.isascii() or not value.isdigit():
                self.fail(
                    f"geocode {value_name} {value!r} of area {description!r} must be "
                    f"{digits} digits",
                    field="alert/info/area/geocode",
                    element=geocode,
                )
            codes.append(normalise_area_code(value))
        return codes

    def fail_from_model(self, exc: ValidationError) -> NoReturn:
        errors = exc.errors(include_url=False)
        first = errors[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        path = _FIELD_PATHS.get(name, name)
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        self.fail(
            f"invalid {path}: {first['msg']}{more}",
            field=path,
            element=self.sources.get(name),
        )


def _split_tag(tag: str) -> tuple[str, str]:
    """'{namespace}local' → (namespace, local); a tag without a namespace → ('', tag)."""
    if tag.startswith("{"):
        namespace, _, local_name = tag[1:].partition("}")
        return namespace, local_name
    return "", tag


def _language_rank(language: str) -> int:
    language = language.lower()
    if language == "zh-cn":
        return 0
    if language == "zh" or language.startswith("zh-"):
        return 1
    return 2

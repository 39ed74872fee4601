"""to_cap_xml: schema-valid CAP 1.2 that parse_cap reads back to the same warning."""

from __future__ import annotations

import functools
import string
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from defusedxml.ElementTree import fromstring as from_xml
from hypothesis import given, settings
from hypothesis import strategies as st

import dispatcher.cap
from dispatcher.cap import CAP_NAMESPACE, parse_cap, to_cap_xml
from dispatcher.domain import Level, MsgType, Status, WarningRecord
from dispatcher.warning_input import WarningInput

SAMPLES = Path(__file__).parent / "data" / "cap"
XSD = Path(dispatcher.cap.__file__).parent / "CAP-v1.2.xsd"
CST = timezone(timedelta(hours=8))
NS = {"cap": CAP_NAMESPACE}


@functools.cache
def independent_schema() -> Any:
    """The XSD loaded straight from its file, not through dispatcher.cap.schema."""
    return xmlschema.XMLSchema(str(XSD))


def assert_valid_cap(body: bytes) -> None:
    errors = list(independent_schema().iter_errors(from_xml(body)))
    assert errors == [], errors[0] if errors else ""


def record(**changes: Any) -> WarningRecord:
    base = WarningRecord(
        id="w-1",
        identifier="SL-611022-20240711-0001",
        sender="danfeng-emergency@tocsin.example",
        sent=datetime(2024, 7, 11, 6, 30, tzinfo=CST),
        status=Status.ACTUAL,
        msg_type=MsgType.ALERT,
        level=Level.ORANGE,
        event="暴雨",
        headline="丹凤县发布暴雨橙色预警",
        description="预计未来12小时内将出现强降水。",
        instruction="请立即转移。",
        area_codes=("611022000000", "611022104201"),
        expires=datetime(2024, 7, 12, 6, 30, tzinfo=CST),
        area_desc="丹凤县",
    )
    return replace(base, **changes)


def child_names(element: ET.Element) -> list[str]:
    return [child.tag.split("}", 1)[1] for child in element]


def test_output_is_utf8_with_declaration_and_default_cap_namespace() -> None:
    body = to_cap_xml(record())
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    assert f'<alert xmlns="{CAP_NAMESPACE}">'.encode() in body
    assert "丹凤县发布暴雨橙色预警".encode() in body  # UTF-8, not character references
    assert b"ns0:" not in body
    assert_valid_cap(body)


def test_elements_are_in_schema_order() -> None:
    warning = record(
        msg_type=MsgType.UPDATE,
        references=("a,b,2024-07-11T06:30:00+08:00",),
        note="升级",
        audio_url="https://audio.tocsin.example/x.mp3",
        audio_sha256="ab" * 32,
    )
    root = from_xml(to_cap_xml(warning, sender_name="丹凤县应急管理局"))
    assert child_names(root) == [
        "identifier", "sender", "sent", "status", "msgType", "scope", "note", "references", "info",
    ]  # fmt: skip
    info = root.find("cap:info", NS)
    assert info is not None
    assert child_names(info) == [
        "language", "category", "event", "urgency", "severity", "certainty", "expires",
        "senderName", "headline", "description", "instruction", "parameter", "parameter",
        "resource", "area",
    ]  # fmt: skip
    assert root.findtext("cap:scope", namespaces=NS) == "Public"
    assert info.findtext("cap:senderName", namespaces=NS) == "丹凤县应急管理局"


def test_empty_optional_texts_are_left_out() -> None:
    root = from_xml(to_cap_xml(record(description="", instruction="", note="")))
    assert root.find("cap:note", NS) is None
    assert root.find("cap:references", NS) is None
    assert root.find("cap:info/cap:description", NS) is None
    assert root.find("cap:info/cap:instruction", NS) is None
    assert root.find("cap:info/cap:senderName", NS) is None


def test_datetimes_use_offsets_and_utc_is_minus_zero() -> None:
    warning = record(
        sent=datetime(2024, 7, 10, 22, 30, 15, 999, tzinfo=UTC),
        expires=datetime(2024, 7, 12, 6, 30, tzinfo=CST),
    )
    root = from_xml(to_cap_xml(warning))
    assert root.findtext("cap:sent", namespaces=NS) == "2024-07-10T22:30:15-00:00"
    assert root.findtext("cap:info/cap:expires", namespaces=NS) == "2024-07-12T06:30:00+08:00"


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        to_cap_xml(record(sent=datetime(2024, 7, 11, 6, 30)))


def test_offsets_with_seconds_are_written_in_utc() -> None:
    lmt = timezone(timedelta(hours=7, minutes=36, seconds=42))
    body = to_cap_xml(record(sent=datetime(1900, 1, 1, 12, 0, tzinfo=lmt)))
    assert_valid_cap(body)
    assert parse_cap(body).warning.sent == datetime(1900, 1, 1, 12, 0, tzinfo=lmt)


@pytest.mark.parametrize(
    ("level", "severity"),
    [
        (Level.RED, "Extreme"),
        (Level.ORANGE, "Severe"),
        (Level.YELLOW, "Moderate"),
        (Level.BLUE, "Minor"),
    ],
)
def test_severity_and_level_parameter(level: Level, severity: str) -> None:
    info = from_xml(to_cap_xml(record(level=level))).find("cap:info", NS)
    assert info is not None
    assert info.findtext("cap:severity", namespaces=NS) == severity
    parameters = [
        (p.findtext("cap:valueName", namespaces=NS), p.findtext("cap:value", namespaces=NS))
        for p in info.findall("cap:parameter", NS)
    ]
    assert parameters == [("LEVEL", level.value)]


def test_geocodes_carry_stats_code_and_gb2260_for_county_codes() -> None:
    warning = record(area_codes=("611022000000", "611022104201", "611022104000"))
    area = from_xml(to_cap_xml(warning)).find("cap:info/cap:area", NS)
    assert area is not None
    geocodes = [
        (g.findtext("cap:valueName", namespaces=NS), g.findtext("cap:value", namespaces=NS))
        for g in area.findall("cap:geocode", NS)
    ]
    assert geocodes == [
        ("STATS_CODE", "611022000000"),
        ("GB2260", "611022"),
        ("STATS_CODE", "611022104201"),
        ("STATS_CODE", "611022104000"),  # a town: no GB2260 code
    ]


def test_empty_area_desc_becomes_the_joined_codes() -> None:
    root = from_xml(to_cap_xml(record(area_desc="")))
    assert root.findtext("cap:info/cap:area/cap:areaDesc", namespaces=NS) == (
        "611022000000, 611022104201"
    )


def test_references_are_space_separated() -> None:
    references = ("a,b,2024-07-11T06:30:00+08:00", "a,c,2024-07-11T07:30:00+08:00")
    body = to_cap_xml(record(msg_type=MsgType.CANCEL, references=references))
    root = from_xml(body)
    assert root.findtext("cap:references", namespaces=NS) == " ".join(references)
    assert parse_cap(body).warning.references == list(references)


@pytest.mark.parametrize(
    ("url", "mime_type"),
    [
        ("https://audio.tocsin.example/a.mp3", "audio/mpeg"),
        ("https://audio.tocsin.example/a.WAV?v=2", "audio/wav"),
        ("https://audio.tocsin.example/a.opus", "audio/ogg"),
        ("https://audio.tocsin.example/stream", "audio/mpeg"),
    ],
)
def test_audio_resource(url: str, mime_type: str) -> None:
    body = to_cap_xml(record(audio_url=url, audio_sha256="cd" * 32))
    assert_valid_cap(body)
    resource = from_xml(body).find("cap:info/cap:resource", NS)
    assert resource is not None
    assert resource.findtext("cap:mimeType", namespaces=NS) == mime_type
    assert resource.findtext("cap:uri", namespaces=NS) == url
    assert resource.find("cap:digest", NS) is None  # CAP's digest is SHA-1; we hold a SHA-256
    warning = parse_cap(body).warning
    assert (warning.audio_url, warning.audio_sha256) == (url, "cd" * 32)


def test_characters_xml_cannot_carry_are_dropped_and_crlf_becomes_lf() -> None:
    body = to_cap_xml(record(description="第一行\r\n第二行\x00\x07\x1b[0m <&> \ufffe"))
    assert_valid_cap(body)
    assert parse_cap(body).warning.description == "第一行\n第二行[0m <&>"


@pytest.mark.parametrize(
    "name",
    ["alert_zh_county_villages.xml", "update_with_references.xml", "cancel.xml", "exercise.xml"],
)
def test_samples_round_trip_through_export(name: str) -> None:
    original = parse_cap((SAMPLES / name).read_bytes()).warning
    body = to_cap_xml(record_from_input(original))
    assert_valid_cap(body)
    again = parse_cap(body).warning
    assert again == original.model_copy(update={"expires": again.expires})
    if original.expires is not None:
        assert again.expires == original.expires


def record_from_input(warning: WarningInput) -> WarningRecord:
    assert warning.identifier and warning.sender and warning.sent
    return WarningRecord(
        id="w",
        identifier=warning.identifier,
        sender=warning.sender,
        sent=warning.sent,
        status=warning.status,
        msg_type=warning.msg_type,
        level=warning.level,
        event=warning.event,
        headline=warning.headline,
        description=warning.description,
        instruction=warning.instruction,
        area_codes=tuple(warning.area_codes),
        # A stored warning always has an expiry (the warnings module sets a default).
        expires=warning.expires or warning.sent + timedelta(hours=6),
        urgency=warning.urgency.value,
        certainty=warning.certainty.value,
        category=warning.category.value,
        language=warning.language,
        area_desc=warning.area_desc,
        references=tuple(warning.references),
        note=warning.note,
        audio_url=warning.audio_url,
        audio_sha256=warning.audio_sha256,
    )


# -- the round-trip property ---------------------------------------------------------------

CHINESE = "暴雨山洪泥石流滑坡地质灾害预警请立即转移到安全地带村镇县网格员广播收到确认红橙黄蓝色"
TEXT_ALPHABET = CHINESE + string.ascii_letters + string.digits + " \n\t<>&'\",.;:!?()（），。、"
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_.@:"

texts = st.text(alphabet=TEXT_ALPHABET, max_size=120).map(str.strip)
required_texts = texts.filter(bool)
tokens = st.text(alphabet=TOKEN_ALPHABET, min_size=1, max_size=40)
offsets = st.sampled_from([UTC, CST, timezone(timedelta(hours=-5, minutes=-30))])
cap_datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=offsets
).map(lambda value: value.replace(microsecond=0))
village_codes = st.from_regex(r"\A[1-6][0-9]{5}[0-9]{3}[0-9]{2}[1-9]\Z")
county_codes = st.from_regex(r"\A[1-6][0-9]{5}\Z").map(lambda code: code + "000000")
area_code_lists = st.lists(
    st.one_of(village_codes, county_codes), min_size=1, max_size=15, unique=True
)
references = st.builds(
    lambda sender, identifier, sent: f"{sender},{identifier},{sent.isoformat()}",
    tokens,
    tokens,
    cap_datetimes,
)


@st.composite
def warning_records(draw: st.DrawFn) -> WarningRecord:
    msg_type = draw(st.sampled_from(MsgType))
    refs = (
        ()
        if msg_type is MsgType.ALERT
        else tuple(draw(st.lists(references, min_size=1, max_size=3)))
    )
    audio_url = draw(
        st.none() | tokens.map(lambda token: f"https://audio.tocsin.example/{token}.mp3")
    )
    return WarningRecord(
        id="w",
        identifier=draw(tokens),
        sender=draw(tokens),
        sent=draw(cap_datetimes),
        status=draw(st.sampled_from(Status)),
        msg_type=msg_type,
        level=draw(st.sampled_from(Level)),
        event=draw(required_texts),
        headline=draw(required_texts),
        description=draw(texts),
        instruction=draw(texts),
        area_codes=tuple(draw(area_code_lists)),
        expires=draw(cap_datetimes),
        area_desc=draw(texts),
        references=refs,
        note=draw(texts),
        audio_url=audio_url,
        audio_sha256=draw(st.from_regex(r"\A[0-9a-f]{64}\Z")) if audio_url else None,
    )


@settings(max_examples=150, deadline=None)
@given(warning_records())
def test_export_validates_and_round_trips(warning: WarningRecord) -> None:
    body = to_cap_xml(warning)
    assert_valid_cap(body)
    parsed = parse_cap(body).warning
    assert parsed.level is warning.level
    assert parsed.status is warning.status
    assert parsed.msg_type is warning.msg_type
    assert parsed.area_codes == list(warning.area_codes)
    assert (parsed.event, parsed.headline) == (warning.event, warning.headline)
    assert (parsed.description, parsed.instruction) == (warning.description, warning.instruction)
    assert parsed.note == warning.note
    assert parsed.expires == warning.expires
    assert parsed.sent == warning.sent
    assert parsed.references == list(warning.references)
    assert (parsed.identifier, parsed.sender) == (warning.identifier, warning.sender)
    assert parsed.area_desc == (warning.area_desc or ", ".join(warning.area_codes))
    assert (parsed.audio_url, parsed.audio_sha256) == (warning.audio_url, warning.audio_sha256)

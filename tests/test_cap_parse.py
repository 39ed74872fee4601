"""parse_cap: the sample messages, and every way a CAP message is refused."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import dispatcher.cap.parse as cap_parse
from dispatcher.cap import CAP_NAMESPACE, CapError, ParsedCap, parse_cap
from dispatcher.domain import Level, MsgType, Status
from dispatcher.warning_input import Category, Certainty, Urgency

SAMPLES = Path(__file__).parent / "data" / "cap"
CST = timezone(timedelta(hours=8))
VILLAGE = "611022104201"
COUNTY_GB2260 = "611022"


def geocode(value_name: str, value: str) -> str:
    return f"<geocode><valueName>{value_name}</valueName><value>{value}</value></geocode>"


def parameter(value_name: str, value: str) -> str:
    return f"<parameter><valueName>{value_name}</valueName><value>{value}</value></parameter>"


def area(desc: str = "桃园村", geocodes: str | None = None, shapes: str = "") -> str:
    if geocodes is None:
        geocodes = geocode("STATS_CODE", VILLAGE)
    return f"<area><areaDesc>{desc}</areaDesc>{shapes}{geocodes}</area>"


def info(
    *,
    language: str | None = "zh-CN",
    severity: str = "Severe",
    headline: str | None = "暴雨橙色预警",
    event: str = "暴雨",
    parameters: str = "",
    resources: str = "",
    areas: str | None = None,
) -> str:
    return (
        "<info>"
        + (f"<language>{language}</language>" if language is not None else "")
        + f"<category>Met</category><event>{event}</event><urgency>Immediate</urgency>"
        + f"<severity>{severity}</severity><certainty>Likely</certainty>"
        + "<expires>2024-07-12T06:30:00+08:00</expires>"
        + (f"<headline>{headline}</headline>" if headline is not None else "")
        + "<description>预计有强降水。</description><instruction>请转移。</instruction>"
        + parameters
        + resources
        + (area() if areas is None else areas)
        + "</info>"
    )


def message(
    *,
    namespace: str = CAP_NAMESPACE,
    identifier: str = "T-1",
    status: str = "Actual",
    msg_type: str = "Alert",
    scope: str = "Public",
    references: str | None = None,
    infos: str | None = None,
    prolog: str = "",
) -> bytes:
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        + prolog
        + f'<alert xmlns="{namespace}">\n'
        + f"<identifier>{identifier}</identifier>\n"
        + "<sender>tester@tocsin.example</sender>\n"
        + "<sent>2024-07-11T06:30:00+08:00</sent>\n"
        + f"<status>{status}</status>\n"
        + f"<msgType>{msg_type}</msgType>\n"
        + f"<scope>{scope}</scope>\n"
        + (f"<references>{references}</references>\n" if references is not None else "")
        + (info() if infos is None else infos)
        + "\n</alert>\n"
    )
    return text.encode("utf-8")


def rejected(body: bytes) -> CapError:
    with pytest.raises(CapError) as caught:
        parse_cap(body)
    return caught.value


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records (and refuses) every network connection attempted during the test."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


# -- the samples -------------------------------------------------------------------------


def parse_sample(name: str) -> ParsedCap:
    return parse_cap((SAMPLES / name).read_bytes())


def test_alert_sample_picks_the_zh_cn_info_and_maps_every_field() -> None:
    parsed = parse_sample("alert_zh_county_villages.xml")
    warning = parsed.warning
    assert warning.identifier == "SL-611022-20240711-0001"
    assert warning.sender == "danfeng-emergency@tocsin.example"
    assert warning.sent == datetime(2024, 7, 11, 6, 30, tzinfo=CST)
    assert warning.status is Status.ACTUAL
    assert warning.msg_type is MsgType.ALERT
    assert warning.references == []
    assert warning.note == "县应急管理局值班室发布"
    assert warning.language == "zh-CN"
    assert warning.category is Category.MET  # the first of Met, Geo
    assert warning.event == "暴雨"
    assert warning.urgency is Urgency.IMMEDIATE
    assert warning.level is Level.ORANGE  # severity Severe
    assert warning.certainty is Certainty.LIKELY
    assert warning.headline == "丹凤县发布暴雨橙色预警"
    assert warning.description.startswith("预计未来12小时内")
    assert warning.instruction.startswith("请立即转移")
    assert warning.expires == datetime(2024, 7, 12, 6, 30, tzinfo=CST)
    # County by GB2260 first; the villages; the county's STATS_CODE is a duplicate.
    assert warning.area_codes == ["611022000000", "611022104201", "611022104202"]
    assert warning.area_desc == "丹凤县; 铁峪铺镇桃园村、石槽沟村"
    assert warning.audio_url == "https://audio.tocsin.example/611022/20240711-0001.mp3"
    # From the AUDIO_SHA256 parameter, never from the SHA-1 <digest>.
    assert warning.audio_sha256 == (
        "5f0c8e3b9a1d2e4f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b"
    )
    assert parsed.sender_name == "丹凤县应急管理局"
    assert any("en-US" in note for note in parsed.ignored)
    assert any("image/png" in note for note in parsed.ignored)


def test_update_sample_has_its_references_and_level_parameter_wins() -> None:
    warning = parse_sample("update_with_references.xml").warning
    assert warning.msg_type is MsgType.UPDATE
    assert warning.references == [
        "danfeng-emergency@tocsin.example,SL-611022-20240711-0001,2024-07-11T06:30:00+08:00",
        "danfeng-emergency@tocsin.example,SL-611022-20240710-0009,2024-07-10T22:00:00+08:00",
    ]
    assert warning.level is Level.RED  # severity says Severe, LEVEL says Red
    assert warning.area_codes == ["611022104000"]


def test_cancel_sample() -> None:
    warning = parse_sample("cancel.xml").warning
    assert warning.msg_type is MsgType.CANCEL
    assert warning.references == [
        "danfeng-emergency@tocsin.example,SL-611022-20240711-0002,2024-07-11T09:00:00+08:00"
    ]
    assert warning.expires is None
    assert warning.description == ""
    assert warning.note == "降雨已结束，解除预警"


def test_cancel_without_info_sample_carries_only_the_alert_fields() -> None:
    parsed = parse_sample("cancel_without_info.xml")
    warning = parsed.warning
    assert warning.msg_type is MsgType.CANCEL
    assert warning.references == [
        "danfeng-emergency@tocsin.example,SL-611022-20240711-0001,2024-07-11T06:30:00+08:00",
        "danfeng-emergency@tocsin.example,SL-611022-20240711-0002,2024-07-11T09:00:00+08:00",
    ]
    assert warning.identifier == "SL-611022-20240711-0004"
    assert warning.sender == "danfeng-emergency@tocsin.example"
    assert warning.sent == datetime(2024, 7, 11, 20, 0, tzinfo=CST)
    assert warning.status is Status.ACTUAL
    assert warning.note == "降雨已结束，解除预警"
    # The warning service fills the rest from the cancelled warnings.
    assert (warning.level, warning.event, warning.headline, warning.area_codes) == (
        None,
        None,
        None,
        None,
    )
    assert warning.expires is None
    assert warning.model_fields_set == {
        "identifier",
        "sender",
        "sent",
        "status",
        "msg_type",
        "references",
        "note",
    }
    assert parsed.sender_name is None
    assert parsed.ignored == ()


def test_exercise_sample_stays_an_exercise() -> None:
    parsed = parse_sample("exercise.xml")
    warning = parsed.warning
    assert warning.status is Status.EXERCISE
    assert warning.level is Level.YELLOW  # severity Unknown, parameter "level" = 黄色
    assert warning.language == "en-US"  # CAP's default when <language> is absent
    assert warning.area_codes == ["611023000000"]
    assert warning.sent == datetime(2024, 6, 1, 9, 0, tzinfo=UTC)  # "-00:00" is UTC
    assert any("ZIP" in note for note in parsed.ignored)
    assert any("polygon" in note for note in parsed.ignored)


def test_test_status_is_kept() -> None:
    assert parse_cap(message(status="Test")).warning.status is Status.TEST


# -- hostile XML -------------------------------------------------------------------------


def test_xxe_external_entity_is_refused_and_not_expanded(connections: list[Any]) -> None:
    body = message(
        identifier="&xxe;",
        prolog='<!DOCTYPE alert [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n',
    )
    error = rejected(body)
    assert "DTD" in error.message
    assert "root:" not in str(error)
    assert error.line == 2
    assert connections == []


def test_parameter_entity_to_a_url_is_refused(connections: list[Any]) -> None:
    body = message(
        prolog='<!DOCTYPE alert [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/x.dtd"> %remote;]>\n'
    )
    assert "forbidden" in rejected(body).message
    assert connections == []


def test_billion_laughs_is_refused_quickly() -> None:
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    )
    body = message(identifier="&lol9;", prolog=f"<!DOCTYPE alert [{entities}]>\n")
    started = time.monotonic()
    error = rejected(body)
    assert time.monotonic() - started < 5
    assert "forbidden" in error.message
    assert len(str(error)) < 500


def test_external_dtd_is_refused_without_fetching(connections: list[Any]) -> None:
    body = message(prolog='<!DOCTYPE alert SYSTEM "http://127.0.0.1:9/cap.dtd">\n')
    assert "DTD" in rejected(body).message
    assert connections == []


def test_schema_location_hints_are_not_followed(connections: list[Any]) -> None:
    hint = (
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xsi:schemaLocation="{CAP_NAMESPACE} http://127.0.0.1:9/evil.xsd"'
    )
    body = message().replace(b"<alert ", f"<alert {hint} ".encode(), 1)
    assert parse_cap(body).warning.identifier == "T-1"
    assert connections == []


def test_very_deep_nesting_is_a_cap_error() -> None:
    depth = 200_000
    body = message(infos="<a>" * depth + "</a>" * depth)
    error = rejected(body)
    assert "nested deeper" in error.message


def test_nesting_below_the_depth_limit_in_a_signature_does_not_crash() -> None:
    signature = '<Signature xmlns="http://www.w3.org/2000/09/xmldsig#">'
    body = message(infos=info() + signature + "<x>" * 25 + "</x>" * 25 + "</Signature>")
    assert parse_cap(body).warning.level is Level.ORANGE  # the lax signature part is skipped


def test_anything_unexpected_becomes_a_cap_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(cap_parse, "validate_alert", explode)
    error = rejected(message())
    assert "RecursionError" in error.message
    assert isinstance(error.__cause__, RecursionError)


def test_oversized_message_is_refused() -> None:
    body = message(infos=info() + " " * (3 * 1024 * 1024))
    assert "limit" in rejected(body).message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "no element found"),
        (b"this is not xml", "syntax error"),
        (b"<alert>\n<identifier>x</alert>", "mismatched tag"),
        (b"<alert>&undefined;</alert>", "undefined entity"),
    ],
)
def test_malformed_xml_names_the_problem_and_position(body: bytes, expected: str) -> None:
    error = rejected(body)
    assert error.message.startswith("not well-formed XML")
    assert expected in error.message
    assert error.line is not None
    assert error.column is not None
    assert f"line {error.line}" in str(error)


# -- namespace and schema ----------------------------------------------------------------


def test_cap_1_1_namespace_is_refused() -> None:
    error = rejected(message(namespace="urn:oasis:names:tc:emergency:cap:1.1"))
    assert "cap:1.1" in error.message
    assert CAP_NAMESPACE in error.message


def test_no_namespace_is_refused() -> None:
    body = message().replace(f' xmlns="{CAP_NAMESPACE}"'.encode(), b"")
    assert "no namespace" in rejected(body).message


def test_root_must_be_alert() -> None:
    body = f'<message xmlns="{CAP_NAMESPACE}"/>'.encode()
    assert "<alert>" in rejected(body).message


def test_missing_required_element_names_it_and_the_line() -> None:
    body = message().replace(b"<sender>tester@tocsin.example</sender>\n", b"")
    error = rejected(body)
    assert "schema violation at /alert" in error.message
    assert "'sender' expected" in error.message
    assert error.field == "alert"
    assert error.line == 4  # the <sent> found where <sender> belongs


def test_missing_event_is_a_schema_violation_in_info() -> None:
    body = message().replace("<event>暴雨</event>".encode(), b"")
    error = rejected(body)
    assert error.field == "alert/info"
    assert "event" in error.message


def test_bad_enumeration_value_names_the_element_path() -> None:
    error = rejected(message(infos=info(severity="Catastrophic")))
    assert error.field == "alert/info/severity"
    assert "/alert/info/severity" in error.message


def test_utc_written_as_z_is_refused_with_a_hint() -> None:
    body = message().replace(b"2024-07-11T06:30:00+08:00", b"2024-07-10T22:30:00Z", 1)
    error = rejected(body)
    assert error.field == "alert/sent"
    assert "-00:00" in error.message


# -- what Tocsin needs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("geocodes", "expected"),
    [
        (geocode("GB2260", "61102"), "6 digits"),
        (geocode("GB2260", "611022104201"), "6 digits"),
        (geocode("STATS_CODE", "6110221042"), "12 digits"),
        (geocode("STATS_CODE", "61102210420X"), "12 digits"),
        (geocode("STATS_CODE", "６１１０２２１０４２０１"), "12 digits"),  # fullwidth digits
        (geocode("ZIP", "726300"), "no <geocode>"),
        ("", "no <geocode>"),
    ],
)
def test_bad_or_missing_geocodes_are_refused(geocodes: str, expected: str) -> None:
    error = rejected(message(infos=info(areas=area(geocodes=geocodes))))
    assert expected in error.message
    assert error.field == "alert/info/area/geocode"
    assert error.line is not None


def test_an_area_with_only_a_polygon_is_refused_even_beside_a_good_one() -> None:
    polygon_only = area(
        "河滩", geocodes="", shapes="<polygon>33.5,110.8 33.6,110.9 33.5,110.8</polygon>"
    )
    error = rejected(message(infos=info(areas=area() + polygon_only)))
    assert "河滩" in error.message
    assert "polygons" in error.message


def test_no_area_is_refused() -> None:
    error = rejected(message(infos=info(areas="")))
    assert "no usable area" in error.message


def test_geocodes_are_normalised_deduplicated_and_kept_in_order() -> None:
    geocodes = (
        geocode("STATS_CODE", VILLAGE)
        + geocode("gb2260", COUNTY_GB2260)
        + geocode("STATS_CODE", "611022000000")
        + geocode("STATS_CODE", VILLAGE)
    )
    warning = parse_cap(message(infos=info(areas=area(geocodes=geocodes)))).warning
    assert warning.area_codes == [VILLAGE, "611022000000"]


@pytest.mark.parametrize(
    ("severity", "level_value", "expected"),
    [
        ("Minor", "RED", Level.RED),
        ("Extreme", "blue", Level.BLUE),
        ("Unknown", "Orange", Level.ORANGE),
        ("Severe", " yellow ", Level.YELLOW),
        ("Minor", "红色", Level.RED),
    ],
)
def test_level_parameter_wins_over_severity(
    severity: str, level_value: str, expected: Level
) -> None:
    body = message(infos=info(severity=severity, parameters=parameter("LEVEL", level_value)))
    assert parse_cap(body).warning.level is expected


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        ("Extreme", Level.RED),
        ("Severe", Level.ORANGE),
        ("Moderate", Level.YELLOW),
        ("Minor", Level.BLUE),
    ],
)
def test_severity_maps_to_level(severity: str, expected: Level) -> None:
    assert parse_cap(message(infos=info(severity=severity))).warning.level is expected


def test_unknown_level_value_is_refused() -> None:
    error = rejected(message(infos=info(parameters=parameter("LEVEL", "purple"))))
    assert "'purple'" in error.message
    assert error.field == "alert/info/parameter[LEVEL]"


def test_conflicting_level_parameters_are_refused() -> None:
    parameters = parameter("LEVEL", "red") + parameter("LEVEL", "blue")
    assert "disagree" in rejected(message(infos=info(parameters=parameters))).message


def test_severity_unknown_without_level_is_refused() -> None:
    error = rejected(message(infos=info(severity="Unknown")))
    assert "Unknown" in error.message
    assert "LEVEL" in error.message
    assert error.field == "alert/info/severity"


@pytest.mark.parametrize("msg_type", ["Update", "Cancel"])
def test_update_or_cancel_without_references_is_refused(msg_type: str) -> None:
    error = rejected(message(msg_type=msg_type))
    assert error.field == "alert/references"
    assert "references" in error.message


@pytest.mark.parametrize(
    "references",
    [
        "tester@tocsin.example,T-0",
        "tester@tocsin.example,T-0,yesterday",
        "tester@tocsin.example,,2024-07-11T06:30:00+08:00",
        "a,b,c,2024-07-11T06:30:00+08:00",
        "tester@tocsin.example,T-0,2024-07-11T06:30:00Z",
    ],
)
def test_malformed_references_are_refused(references: str) -> None:
    error = rejected(message(msg_type="Update", references=references))
    assert "sender,identifier,sent" in error.message


@pytest.mark.parametrize("scope", ["Restricted", "Private"])
def test_non_public_scope_is_refused(scope: str) -> None:
    error = rejected(message(scope=scope))
    assert error.field == "alert/scope"
    assert "Public" in error.message


@pytest.mark.parametrize("msg_type", ["Ack", "Error"])
def test_ack_and_error_cannot_be_posted(msg_type: str) -> None:
    error = rejected(message(msg_type=msg_type, references="a,b,2024-07-11T06:30:00+08:00"))
    assert error.field == "alert/msgType"
    assert msg_type in error.message


def test_system_status_cannot_be_posted() -> None:
    assert rejected(message(status="System")).field == "alert/status"


@pytest.mark.parametrize("msg_type", ["Alert", "Update"])
def test_no_info_block_is_refused_unless_cancel(msg_type: str) -> None:
    references = "tester@tocsin.example,T-0,2024-07-11T06:00:00+08:00"
    error = rejected(message(msg_type=msg_type, references=references, infos=""))
    assert error.field == "alert/info"
    assert error.message.startswith("the message has no <info> block")


def test_info_less_cancel_still_needs_references() -> None:
    error = rejected(message(msg_type="Cancel", infos=""))
    assert error.field == "alert/references"
    assert "references" in error.message


def test_info_less_cancel_in_another_status_keeps_it() -> None:
    references = "tester@tocsin.example,T-0,2024-07-11T06:00:00+08:00"
    warning = parse_cap(
        message(status="Exercise", msg_type="Cancel", references=references, infos="")
    ).warning
    assert (warning.status, warning.msg_type) == (Status.EXERCISE, MsgType.CANCEL)
    assert warning.references == [references]
    assert warning.level is None


def test_without_zh_cn_the_first_chinese_info_is_used() -> None:
    infos = info(language="en-US", event="Rainstorm") + info(language="zh-TW", event="暴雨")
    assert parse_cap(message(infos=infos)).warning.event == "暴雨"


def test_without_any_chinese_info_the_first_is_used() -> None:
    infos = info(language="en-US", event="Rainstorm") + info(language="fr-FR", event="Orage")
    parsed = parse_cap(message(infos=infos))
    assert parsed.warning.event == "Rainstorm"
    assert any("fr-FR" in note for note in parsed.ignored)


def test_two_info_blocks_in_the_chosen_language_are_refused() -> None:
    infos = info(severity="Extreme") + info(language="zh-cn", severity="Minor")
    error = rejected(message(infos=infos))
    assert "2 <info> blocks" in error.message
    assert error.field == "alert/info"


def test_missing_headline_falls_back_to_the_event() -> None:
    warning = parse_cap(message(infos=info(headline=None, event="山洪"))).warning
    assert warning.headline == "山洪"


def test_model_errors_name_the_cap_element_and_line() -> None:
    error = rejected(message(infos=info(headline="很" * 201)))
    assert error.field == "alert/info/headline"
    assert "alert/info/headline" in error.message
    assert error.line is not None


def test_identifier_with_a_comma_is_refused() -> None:
    error = rejected(message(identifier="T,1"))
    assert error.field == "alert/identifier"
    assert error.line == 3


def test_audio_resource_without_sha256_parameter_has_no_digest() -> None:
    resource = (
        "<resource><resourceDesc>音频</resourceDesc><mimeType>audio/wav</mimeType>"
        "<uri>https://audio.tocsin.example/a.wav</uri>"
        "<digest>2fd4e1c67a2d28fced849ee1bb76e7391b93eb12</digest></resource>"
    )
    warning = parse_cap(message(infos=info(resources=resource))).warning
    assert warning.audio_url == "https://audio.tocsin.example/a.wav"
    assert warning.audio_sha256 is None


def test_audio_sha256_without_audio_is_refused() -> None:
    error = rejected(message(infos=info(parameters=parameter("AUDIO_SHA256", "ab" * 32))))
    assert "no audio" in error.message


def test_audio_uri_that_is_not_http_is_refused() -> None:
    resource = (
        "<resource><resourceDesc>音频</resourceDesc><mimeType>audio/mpeg</mimeType>"
        "<uri>file:///etc/passwd</uri></resource>"
    )
    error = rejected(message(infos=info(resources=resource)))
    assert error.field == "alert/info/resource/uri"


def test_multiple_area_descriptions_are_joined() -> None:
    areas = area("桃园村") + area("石槽沟村", geocode("STATS_CODE", "611022104202"))
    warning = parse_cap(message(infos=info(areas=areas))).warning
    assert warning.area_desc == "桃园村; 石槽沟村"
    assert warning.area_codes == [VILLAGE, "611022104202"]

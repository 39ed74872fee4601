"""The GSM modem's PDUs, checked against an independent decoder (smspdudecoder) and against
PDUs as real modems and the 3GPP examples give them."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone
from io import StringIO
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smspdudecoder.easy import read_incoming_sms
from smspdudecoder.fields import SMSSubmit

from adapters.gsm_modem.errors import cme_error, cms_error, described
from adapters.gsm_modem.pdu import (
    Concatenation,
    DeliveryStatus,
    PduError,
    decode_deliver,
    decode_status_report,
    e164,
    encode_deliver,
    encode_status_report,
    encode_submit,
    relative_validity,
    tpdu_length,
    validity_of,
)
from adapters.gsm_modem.reassembly import Reassembler
from adapters.sms_text.segments import count_segments, split

CHINA = timezone(timedelta(hours=8))


def library_submit(pdu_hex: str) -> dict[str, Any]:
    """What smspdudecoder reads in a PDU as written to the modem (``00`` + TPDU)."""
    return SMSSubmit.decode(StringIO(pdu_hex))  # type: ignore[no-any-return]


def library_text(read: str, expected: str, *, multipart: bool) -> str:
    """The text the library read, less its one known slip: a GSM-7 part with an escape whose
    TP-UDL septets end 7 bits short of an octet gains an ``@`` (the library cuts the decoded
    string at TP-UDL characters, not septets, so the 7 zero fill bits become one more
    character; 23.038 leaves them zero and TP-UDL says where the text ends)."""
    segments = count_segments(expected)
    udl = segments.units + (7 if multipart else 0)
    slip = segments.encoding == "GSM-7" and udl % 8 == 7 and any(c in _EXTENDED for c in expected)
    return read.removesuffix("@") if slip and read == expected + "@" else read


_EXTENDED = frozenset("^{}\\[~]|€\f")


def concat_of(decoded: dict[str, Any]) -> dict[str, Any] | None:
    header = decoded["user_data"]["header"]
    if not header:
        return None
    for element in header["elements"]:
        if element["iei"] in (0x00, 0x08):
            return element["data"]  # type: ignore[no-any-return]
    return None


# -- SMS-SUBMIT ---------------------------------------------------------------------------------
WARNING = (
    "【商洛市气象台暴雨红色预警】预计未来3小时商州区大荆镇降雨量将达100毫米以上，"
    "可能引发山洪、泥石流，请立即转移到安全地带。收到请回复1。"
)


def test_a_chinese_warning_is_ucs2_parts_with_concatenation_and_status_report() -> None:
    encoding, pdus = encode_submit("+8613812345678", WARNING * 2, reference=0x42)
    assert encoding == "UCS-2"
    assert len(pdus) == count_segments(WARNING * 2).count == 3
    texts = []
    for number, pdu in enumerate(pdus, start=1):
        decoded = library_submit(pdu.hex)
        assert decoded["smsc"]["length"] == 0  # the modem's own SMSC
        assert decoded["header"]["mti"] == "submit"
        assert decoded["header"]["srr"] is True
        assert decoded["header"]["udhi"] is True
        assert decoded["header"]["vpf"] == 2  # relative validity
        assert decoded["message-ref"] == 0  # the modem assigns it
        assert decoded["recipient"]["toa"]["ton"] == "international"
        assert decoded["recipient"]["number"] == "8613812345678"
        assert decoded["dcs"]["encoding"] == "ucs2"
        assert concat_of(decoded) == {"reference": 0x42, "parts_count": 3, "part_number": number}
        # AT+CMGS=<length> counts the TPDU only: everything after the SMSC octet.
        assert pdu.length == len(pdu.hex) // 2 - 1
        texts.append(decoded["user_data"]["data"])
    assert "".join(texts) == WARNING * 2
    assert all(len(t.encode("utf-16-be")) <= 134 for t in texts)


def test_a_short_ascii_text_is_one_gsm7_message_without_header() -> None:
    encoding, pdus = encode_submit("+8613812345678", "TEST 1 {ok} €5", validity=timedelta(hours=1))
    assert encoding == "GSM-7"
    [pdu] = pdus
    decoded = library_submit(pdu.hex)
    assert decoded["dcs"]["encoding"] == "gsm"
    assert decoded["header"]["udhi"] is False
    assert decoded["user_data"]["data"] == "TEST 1 {ok} €5"
    # One hour is TP-VP 11: (11 + 1) × 5 minutes (23.040 §9.2.3.12.1; the library reads 11 × 5).
    assert decoded["vp"] == 11
    # First octet 0x31: SMS-SUBMIT, relative VP, status report requested; TP-MR 00.
    assert pdu.tpdu.startswith("3100")


def test_the_16bit_reference_header_is_read_by_the_library() -> None:
    _, pdus = encode_submit("+8613812345678", "预警" * 70, reference=0x1234, reference_16bit=True)
    assert len(pdus) == 3  # 140 units in parts of 66
    decoded = [library_submit(p.hex) for p in pdus]
    assert decoded[0]["user_data"]["header"]["elements"][0]["iei"] == 0x08
    assert [concat_of(d) for d in decoded] == [
        {"reference": 0x1234, "parts_count": 3, "part_number": i} for i in (1, 2, 3)
    ]
    assert "".join(d["user_data"]["data"] for d in decoded) == "预警" * 70


def test_without_status_report_the_srr_bit_is_clear() -> None:
    _, [pdu] = encode_submit("+8613812345678", "hi", status_report=False)
    assert library_submit(pdu.hex)["header"]["srr"] is False


@pytest.mark.parametrize("number", ["8613812345678", "+86 138", "not a number", ""])
def test_a_destination_that_is_not_international_is_refused(number: str) -> None:
    with pytest.raises(PduError):
        encode_submit(number, "hi")


def test_e164_reads_national_numbers_of_the_region_and_refuses_nonsense() -> None:
    assert e164("+86 138-1234-5678") == "+8613812345678"
    assert e164("17400000001", region="CN") == "+8617400000001"  # a Tiantong number
    with pytest.raises(PduError, match="phone number"):
        e164("13812345678")  # national without a region
    with pytest.raises(PduError):
        e164("+86 12")


@pytest.mark.parametrize(
    ("period", "vp"),
    [
        (timedelta(minutes=1), 0),
        (timedelta(minutes=5), 0),
        (timedelta(minutes=6), 1),
        (timedelta(hours=12), 143),
        (timedelta(hours=12, minutes=1), 144),
        (timedelta(hours=24), 167),
        (timedelta(days=2), 168),
        (timedelta(days=30), 196),
        (timedelta(days=40), 198),
        (timedelta(weeks=100), 255),
    ],
)
def test_relative_validity_covers_the_period(period: timedelta, vp: int) -> None:
    assert relative_validity(period) == vp
    assert validity_of(vp) >= min(period, timedelta(weeks=63))


text_strategy = (
    st.lists(
        st.one_of(
            st.text(
                alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), max_size=60
            ),
            st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200),
            st.text(alphabet="😀🌧⚠️🚨€{}[]\\^~|", max_size=20),
            st.sampled_from(["收到请回复1。", "，", "\n"]),
        ),
        min_size=1,
        max_size=8,
    )
    .map("".join)
    .filter(bool)
)

number_strategy = st.one_of(
    st.from_regex(r"\+861[3-9][0-9]{9}", fullmatch=True),
    st.from_regex(r"\+86174[0-9]{8}", fullmatch=True),
    st.from_regex(r"\+44 ?7[0-9]{9}", fullmatch=True).map(lambda n: n.replace(" ", "")),
    st.from_regex(r"\+1[2-9][0-9]{9}", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(text=text_strategy, number=number_strategy, reference=st.integers(0, 255))
def test_every_text_and_number_round_trips_through_the_independent_decoder(
    text: str, number: str, reference: int
) -> None:
    encoding, pdus = encode_submit(number, text, reference=reference)
    segments = count_segments(text)
    assert encoding == segments.encoding
    assert len(pdus) == segments.count
    decoded = [library_submit(p.hex) for p in pdus]
    _, parts = split(text)
    multipart = len(parts) > 1
    read = [
        library_text(d["user_data"]["data"], p, multipart=multipart)
        for d, p in zip(decoded, parts, strict=True)
    ]
    assert "".join(read) == text
    for part, d in enumerate(decoded, start=1):
        assert "+" + d["recipient"]["number"] == number
        assert d["dcs"]["encoding"] == ("gsm" if encoding == "GSM-7" else "ucs2")
        if len(pdus) > 1:
            assert concat_of(d) == {
                "reference": reference,
                "parts_count": len(pdus),
                "part_number": part,
            }
        else:
            assert concat_of(d) is None
    # Eight fixed octets, the address digits, at most 140 octets of user data.
    assert all(p.length <= 8 + len(number) // 2 + 140 for p in pdus)


@settings(max_examples=200, deadline=None)
@given(text=text_strategy)
def test_split_never_breaks_a_character_and_matches_the_count(text: str) -> None:
    encoding, parts = split(text)
    assert "".join(parts) == text
    assert len(parts) == count_segments(text).count
    for part in parts:
        # A surrogate pair split in two would not encode.
        part.encode("utf-16-be")
        # Counted in the whole text's encoding (a part of a UCS-2 text may be all GSM-7).
        if encoding == "UCS-2":
            units = len(part.encode("utf-16-be")) // 2
        else:
            units = sum(2 if c in _EXTENDED else 1 for c in part)
        limit = (
            (160 if len(parts) == 1 else 153)
            if encoding == "GSM-7"
            else (70 if len(parts) == 1 else 67)
        )
        assert units <= limit


def test_a_gsm_escape_is_never_split_across_parts() -> None:
    text = "a" * 152 + "€" + "b" * 10  # the € (escape + septet) would straddle septet 153
    _, parts = split(text)
    assert parts == ("a" * 152, "€" + "b" * 10)
    _, pdus = encode_submit("+8613812345678", text)
    assert [library_submit(p.hex)["user_data"]["data"] for p in pdus] == list(parts)


# -- SMS-DELIVER --------------------------------------------------------------------------------
def test_the_classic_gsm7_deliver_example() -> None:
    # The widely used 27.005 example (SMSC +27381000015, "hellohello", 1999-03-29 15:16:59 +2h),
    # whose originator is a national-format number (TON 100, no "+").
    pdu = "07917283010010F5040BC87238880900F10000993092516195800AE8329BFD4697D9EC37"
    message = decode_deliver(pdu, length=tpdu_length(pdu))
    assert message.sender == "27838890001"
    assert message.text == "hellohello"
    assert message.timestamp == datetime(
        1999, 3, 29, 15, 16, 59, tzinfo=timezone(timedelta(hours=2))
    )
    assert message.concatenation is None


def test_a_ucs2_reply_from_a_chinese_phone() -> None:
    # SMSC +8613800250500, from +8613715342642, 2005-03-23 11:05:29 +08:00, "你好".
    pdu = "0891683108200505F0040D91683117352446F2000850303211509223044F60597D"
    message = decode_deliver(pdu, length=tpdu_length(pdu))
    assert message.sender == "+8613715342642"
    assert message.text == "你好"
    assert message.timestamp == datetime(2005, 3, 23, 11, 5, 29, tzinfo=CHINA)
    assert read_incoming_sms(pdu)["content"] == "你好"  # the library agrees


def test_an_alphanumeric_sender() -> None:
    # Originator "MMoney" (TON 101, GSM-7 packed), text "hi".
    pdu = "00040BD0CDE6DB5DCE0300006211928103502302E834"
    message = decode_deliver(pdu)
    assert message.sender == "MMoney"
    assert message.text == "hi"


@settings(max_examples=100, deadline=None)
@given(text=text_strategy, reference=st.integers(0, 255))
def test_deliver_round_trips_and_the_library_reads_what_the_simulator_writes(
    text: str, reference: int
) -> None:
    moment = datetime(2026, 7, 1, 8, 0, 0, tzinfo=CHINA)
    pdus = encode_deliver("+8613912345678", text, timestamp=moment, reference=reference)
    reassembler = Reassembler()
    whole = None
    for pdu in pdus:
        message = decode_deliver(pdu, length=tpdu_length(pdu))
        assert message.sender == "+8613912345678"
        assert message.timestamp == moment
        library = read_incoming_sms(pdu)
        read = library_text(library["content"], message.text, multipart=len(pdus) > 1)
        assert read == message.text
        whole = reassembler.add(message, now=0.0)
    assert whole is not None
    assert whole.text == text
    assert len(reassembler) == 0


def test_reassembly_waits_for_every_part_in_any_order_and_forgets_stale_ones() -> None:
    moment = datetime(2026, 7, 1, 8, 0, 0, tzinfo=CHINA)
    text = "收到" * 50
    first, second = (
        decode_deliver(p)
        for p in encode_deliver("+8613912345678", text, timestamp=moment, reference=9)
    )
    assert second.concatenation == Concatenation(9, 2, 2)
    reassembler = Reassembler(timeout=60.0)
    assert reassembler.add(second, now=0.0) is None
    whole = reassembler.add(first, now=1.0)
    assert whole is not None
    assert whole.text == text
    assert reassembler.add(first, now=2.0) is None
    assert reassembler.add(second, now=100.0) is None  # the stale first part was dropped
    assert reassembler.dropped == 1


@pytest.mark.parametrize(
    ("pdu", "error"),
    [
        ("", "empty"),
        ("0891683108", "SMSC"),
        ("zz91683108200505F0040D", "not hex"),
        ("0891683108200505F0040D9168311735244", "odd"),
        ("0891683108200505F0040D91683117352446F2000850303211509220084F60", "truncated"),
        ("0891683108200505F0060D91683117352446F2", "not an SMS-DELIVER"),
        ("0891683108200505F0440D91683117352446F2000850303211509220020A05", "header"),
    ],
)
def test_malformed_deliver_pdus_are_refused_with_a_reason(pdu: str, error: str) -> None:
    with pytest.raises(PduError, match=error):
        decode_deliver(pdu)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80))
def test_no_byte_string_makes_the_decoders_raise_anything_but_pdu_error(data: bytes) -> None:
    for decode in (decode_deliver, decode_status_report):
        with contextlib.suppress(PduError):
            decode(data.hex())


# -- SMS-STATUS-REPORT --------------------------------------------------------------------------
def test_a_real_status_report_with_smsc_address() -> None:
    # A +CDS from a European network: MR 0xD6 for +31628870634, delivered (TP-ST 0).
    pdu = "07911326060032F006D60B911326880736F4111011719551401110117195714000"
    report = decode_status_report(pdu, length=tpdu_length(pdu))
    assert report.reference == 0xD6
    assert report.recipient == "+31628870634"
    assert report.status == 0
    assert report.outcome is DeliveryStatus.COMPLETED
    assert report.submitted == datetime(
        2011, 1, 11, 17, 59, 15, tzinfo=timezone(timedelta(hours=1))
    )


def test_a_status_report_without_smsc_address_is_told_by_its_length() -> None:
    tpdu = "06D60B911326880736F4111011719551401110117195714000"
    report = decode_status_report(tpdu, length=len(tpdu) // 2)
    assert report.recipient == "+31628870634"


@pytest.mark.parametrize(
    ("status", "outcome", "retryable"),
    [
        (0x00, DeliveryStatus.COMPLETED, False),
        (0x02, DeliveryStatus.COMPLETED, False),
        (0x21, DeliveryStatus.TRYING, False),
        (0x41, DeliveryStatus.PERMANENT, False),
        (0x46, DeliveryStatus.PERMANENT, True),
        (0x62, DeliveryStatus.GAVE_UP, True),
        (0x7F, DeliveryStatus.GAVE_UP, True),
    ],
)
def test_status_values_are_classified(
    status: int, outcome: DeliveryStatus, retryable: bool
) -> None:
    moment = datetime(2026, 7, 1, 8, 0, 0, tzinfo=UTC)
    pdu = encode_status_report(200, "+8613812345678", status, submitted=moment, discharged=moment)
    report = decode_status_report(pdu, length=tpdu_length(pdu))
    assert (report.reference, report.recipient, report.status) == (200, "+8613812345678", status)
    assert report.outcome is outcome
    assert report.retryable is retryable
    assert report.reason


def test_a_deliver_is_not_taken_for_a_status_report() -> None:
    with pytest.raises(PduError, match="not an SMS-STATUS-REPORT"):
        decode_status_report("0891683108200505F0040D91683117352446F2000850303211509223044F60597D")


# -- error codes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "retry", "modem_problem"),
    [
        (1, False, False),  # unassigned number
        (38, True, False),  # network out of order
        (42, True, False),  # congestion
        (304, False, False),  # our PDU is wrong: resending the same will not help
        (330, False, True),  # SMSC unknown: configuration
        (331, True, True),  # no network service
        (332, True, False),  # network timeout
        (500, True, False),
        (515, True, False),  # busy
        (600, True, False),  # manufacturer-specific, unknown
        (77, True, False),  # an RP cause we do not list
    ],
)
def test_cms_errors_are_retried_or_failed(code: int, retry: bool, modem_problem: bool) -> None:
    verdict = cms_error(code)
    assert verdict.retry is retry
    assert verdict.modem_problem is modem_problem
    assert verdict.reason


def test_the_smsc_error_carries_a_configuration_hint() -> None:
    assert "AT+CSCA" in described(cms_error(330), "+CMS ERROR")
    assert described(cms_error(42), "+CMS ERROR") == "+CMS ERROR 42: congestion"


def test_sim_problems_from_cme_errors() -> None:
    assert cme_error(10).reason == "SIM not inserted"
    assert cme_error(10).modem_problem
    assert "sim_pin" in cme_error(11).hint
    assert cme_error(16).retry is False  # a wrong PIN is never retried
    assert cme_error(999).retry is True

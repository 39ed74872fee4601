"""The pure parts of the ``iridium_sbd`` kind: the compact warning and reply encodings, the SBD
checksum, and reading the transceiver's answers (``+SBDIX``, ``AT+SBDWB`` codes, ``+CSQ``)."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.iridium_sbd.compact import (
    CONFIRM_TAIL,
    FIXED_BYTES,
    MO_LIMIT,
    REPLY_MIN_BYTES,
    CompactError,
    crc16,
    decode_reply,
    decode_warning,
    encode_reply,
    encode_warning,
    fit_text,
    rockblock_prefix,
    sbd_checksum,
    strip_rockblock_prefix,
    warning_ref,
)
from adapters.iridium_sbd.status import (
    MO_STATUS,
    MtStatus,
    SbdStatusError,
    Verdict,
    WriteResult,
    mo_status,
    parse_csq,
    parse_sbdix,
    parse_write_result,
)
from dispatcher.domain import Level, MsgType, Status

IMEI = "300234010753370"
SENT = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
TEXT = "【红色预警】商州区暴雨红色预警。立即转移到安全地带。有效至07月01日18:00。收到请回复1。"


def encode(**changes: object) -> bytes:
    args: dict[str, object] = {
        "msg_type": MsgType.ALERT,
        "status": Status.ACTUAL,
        "level": Level.RED,
        "delivery_id": 123456789012,
        "warning_id": "w-2026-0701-001",
        "sent": SENT,
        "expires": SENT + timedelta(hours=10),
        "recipient": IMEI,
        "areas": ("611002001001", "6110"),
        "text": TEXT,
    }
    args.update(changes)
    return encode_warning(**args)  # type: ignore[arg-type]


# -- checksums ---------------------------------------------------------------------------------
def test_sbd_checksum_is_the_low_16_bits_of_the_byte_sum_high_byte_first() -> None:
    # Iridium's own example: "hello" sums to 0x0214.
    assert sbd_checksum(b"hello") == b"\x02\x14"
    assert sbd_checksum(b"\xff" * 300) == (255 * 300 & 0xFFFF).to_bytes(2, "big")
    assert sbd_checksum(b"") == b"\x00\x00"


def test_crc16_is_ccitt_false() -> None:
    assert crc16(b"123456789") == 0x29B1  # the catalogue check value of CRC-16/CCITT-FALSE


# -- warnings ----------------------------------------------------------------------------------
def test_a_warning_round_trips_with_every_field() -> None:
    data = encode(references=("w-old",), msg_type=MsgType.UPDATE, level=Level.ORANGE)
    assert len(data) <= MO_LIMIT
    assert data[:2] == b"T\x01"
    w = decode_warning(data)
    assert w.msg_type is MsgType.UPDATE
    assert w.status is Status.ACTUAL
    assert w.level is Level.ORANGE
    assert w.delivery_id == 123456789012
    assert w.ref == warning_ref("w-2026-0701-001")
    assert w.sent == SENT and w.expires == SENT + timedelta(hours=10)
    assert w.recipient == IMEI
    assert w.references == (warning_ref("w-old"),)
    assert w.areas == ("611002001001", "6110")
    assert w.text == TEXT
    assert not w.text_shortened and not w.areas_omitted


def test_the_header_bytes_are_where_the_readme_says() -> None:
    data = encode(status=Status.TEST, msg_type=MsgType.CANCEL, level=Level.BLUE)
    assert data[2] == 0x03  # Cancel
    assert data[3] == ord("T")  # Test
    assert data[4] == 4  # blue
    assert int.from_bytes(data[6:14], "big") == 123456789012
    assert data[14:18] == warning_ref("w-2026-0701-001")
    assert int.from_bytes(data[18:22], "big") == int(SENT.timestamp())
    assert int.from_bytes(data[26:33], "big") == int(IMEI)
    assert data[33] == 0  # no references
    assert data[34] == 2  # two areas
    assert data[35:42] == bytes.fromhex("0C611002001001")
    assert data[42:45] == bytes.fromhex("046110")
    assert data[45:-2] == TEXT.encode("gb18030")
    assert int.from_bytes(data[-2:], "big") == crc16(data[:-2])


@pytest.mark.parametrize(
    ("status", "letter"), [(Status.ACTUAL, "A"), (Status.EXERCISE, "E"), (Status.TEST, "T")]
)
def test_status_travels_as_a_letter(status: Status, letter: str) -> None:
    data = encode(status=status)
    assert chr(data[3]) == letter
    assert decode_warning(data).status is status


def test_a_test_never_reads_as_actual_after_a_status_byte_change() -> None:
    data = bytearray(encode(status=Status.TEST))
    for bit in range(8):
        damaged = bytearray(data)
        damaged[3] ^= 1 << bit
        damaged[-2:] = crc16(bytes(damaged[:-2])).to_bytes(2, "big")  # even with a good CRC
        try:
            status = decode_warning(bytes(damaged)).status
        except CompactError:
            continue
        assert status is not Status.ACTUAL


def test_a_draft_is_not_encoded() -> None:
    with pytest.raises(CompactError, match="Draft"):
        encode(status=Status.DRAFT)


def test_gb18030_takes_two_bytes_a_common_chinese_character() -> None:
    assert len("收到请回复".encode("gb18030")) == 10
    data = encode(text="暴雨" * 10, areas=())
    assert len(data) == FIXED_BYTES + 40


def test_a_long_chinese_text_is_cut_on_a_character_with_the_confirmation_kept() -> None:
    text = "【红色预警】" + "山洪泥石流风险极高请立即转移" * 40 + "。" + CONFIRM_TAIL
    data = encode(text=text)
    assert MO_LIMIT - 1 <= len(data) <= MO_LIMIT  # two-byte characters: at most one byte spare
    w = decode_warning(data)
    assert w.text_shortened
    assert w.text.endswith("…" + CONFIRM_TAIL)
    assert text.startswith(w.text.removesuffix("…" + CONFIRM_TAIL))


def test_a_routing_prefix_leaves_less_room() -> None:
    text = "暴雨" * 300
    data = encode(text=text, limit=MO_LIMIT - 9)
    assert len(data) <= MO_LIMIT - 9
    assert decode_warning(data).text.endswith("…")


def test_a_four_byte_character_is_never_split() -> None:
    text = "𠀀" * 200  # outside the BMP: 4 bytes in GB18030
    fitted, shortened = fit_text(text, 11)
    assert shortened
    assert fitted == "𠀀" * 2 + "…"  # 8 + 2 bytes; a third would need 14


def test_a_combining_mark_stays_with_its_character() -> None:
    text = "ab" + "e\u0301" * 20
    fitted, _ = fit_text(text, 5)  # "ab" + "e" would fit, its accent would not
    assert fitted == "ab…"


def test_the_confirmation_is_dropped_only_when_it_cannot_fit() -> None:
    text = "暴雨" * 50 + CONFIRM_TAIL
    fitted, shortened = fit_text(text, 14)
    # "…收到请回复1。" is 15 bytes: only "…" (2) fits, after 6 characters (12).
    assert shortened and fitted == "暴雨" * 3 + "…"
    assert fit_text(text, 15) == ("…" + CONFIRM_TAIL, True)
    assert fit_text(text, 19) == ("暴雨…" + CONFIRM_TAIL, True)


def test_too_many_areas_are_cut_and_flagged() -> None:
    areas = tuple(f"6110020010{i:02d}" for i in range(30))
    w = decode_warning(encode(areas=areas))
    assert w.areas == areas[: len(w.areas)]
    assert 1 <= len(w.areas) < 30
    assert w.areas_omitted


def test_non_digit_area_codes_travel_as_text() -> None:
    assert decode_warning(encode(areas=("V-01", "商州"))).areas == ("V-01", "商州")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:10], "too short"),
        (lambda d: b"X" + d[1:], "not a Tocsin message"),
        (lambda d: d[:1] + b"\x02" + d[2:], "unsupported version 2"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "CRC mismatch"),
    ],
)
def test_a_damaged_warning_is_rejected_clearly(damage: object, message: str) -> None:
    with pytest.raises(CompactError, match=message):
        decode_warning(damage(encode()))  # type: ignore[operator]


def test_an_area_code_longer_than_63_bytes_is_refused() -> None:
    with pytest.raises(CompactError, match="area code"):
        encode(areas=("村" * 30,))


def test_a_recipient_that_is_not_an_imei_is_refused() -> None:
    with pytest.raises(CompactError, match="not an IMEI"):
        encode(recipient="+8613800000000")


_area = st.one_of(
    st.text(alphabet=string.digits, min_size=1, max_size=40),
    st.text(min_size=1, max_size=15),  # at most 60 bytes of UTF-8: a valid area code
)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(max_size=600),
    areas=st.lists(_area, max_size=40),
    references=st.lists(st.text(max_size=20), max_size=12),
    delivery_id=st.integers(0, 2**64 - 1),
    status=st.sampled_from([Status.ACTUAL, Status.EXERCISE, Status.TEST]),
    msg_type=st.sampled_from(list(MsgType)),
    level=st.sampled_from(list(Level)),
    prefix=st.sampled_from([0, 9]),
)
def test_any_warning_fits_and_decodes_back(
    text: str,
    areas: list[str],
    references: list[str],
    delivery_id: int,
    status: Status,
    msg_type: MsgType,
    level: Level,
    prefix: int,
) -> None:
    data = encode(
        text=text,
        areas=areas,
        references=references,
        delivery_id=delivery_id,
        status=status,
        msg_type=msg_type,
        level=level,
        limit=MO_LIMIT - prefix,
    )
    assert len(data) <= MO_LIMIT - prefix
    w = decode_warning(data)
    assert (w.status, w.msg_type, w.level, w.delivery_id) == (status, msg_type, level, delivery_id)
    clean_text = text.encode("gb18030", "replace").decode("gb18030")
    if w.text_shortened:
        assert w.text.endswith("…") or w.text.endswith("…" + CONFIRM_TAIL)
        kept = w.text.removesuffix(CONFIRM_TAIL).removesuffix("…")
        assert clean_text.startswith(kept)
    else:
        assert w.text == clean_text
    wanted = [a for a in dict.fromkeys(areas) if a]
    clean = [a.encode("utf-8", "replace").decode("utf-8") for a in wanted]
    assert list(w.areas) == clean[: len(w.areas)]
    assert w.areas_omitted == (len(w.areas) < len(wanted))


# -- replies -----------------------------------------------------------------------------------
def test_a_reply_round_trips() -> None:
    ref = warning_ref("w1")
    data = encode_reply(delivery_id=42, ref=ref, imei=IMEI, answer="1")
    assert len(data) == REPLY_MIN_BYTES
    reply = decode_reply(data)
    assert (reply.delivery_id, reply.ref, reply.imei, reply.answer) == (42, ref, IMEI, "1")


def test_a_reply_with_a_rockblock_prefix_is_read() -> None:
    data = rockblock_prefix("1234") + encode_reply(delivery_id=7, ref=b"abcd", imei=IMEI)
    assert data[:9] == b"RB0001234"
    assert decode_reply(data).delivery_id == 7
    assert strip_rockblock_prefix(b"RB0001234hello") == b"RB0001234hello"  # not ours


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"1", "too short"),
        (b"hello, this is not a Tocsin reply at all", "not a Tocsin message"),
    ],
)
def test_a_malformed_reply_is_rejected_clearly(data: bytes, message: str) -> None:
    with pytest.raises(CompactError, match=message):
        decode_reply(data)


def test_a_warning_is_not_a_reply() -> None:
    with pytest.raises(CompactError, match="not a reply"):
        decode_reply(encode())


def test_a_reply_naming_no_imei_is_rejected() -> None:
    good = encode_reply(delivery_id=1, ref=b"abcd", imei=IMEI)
    body = good[:15] + bytes(7) + good[22:-2]
    with pytest.raises(CompactError, match="no IMEI"):
        decode_reply(body + crc16(body).to_bytes(2, "big"))


def test_a_reply_answer_that_is_not_gb18030_is_rejected() -> None:
    good = encode_reply(delivery_id=1, ref=b"abcd", imei=IMEI)
    body = good[:22] + b"\xff"
    with pytest.raises(CompactError, match="not valid GB18030"):
        decode_reply(body + crc16(body).to_bytes(2, "big"))


def test_rockblock_serials_are_seven_digits() -> None:
    assert rockblock_prefix("7654321") == b"RB7654321"
    with pytest.raises(CompactError):
        rockblock_prefix("12345678")
    with pytest.raises(CompactError):
        rockblock_prefix("12a")


# -- the transceiver's answers -----------------------------------------------------------------
def test_sbdix_is_parsed() -> None:
    result = parse_sbdix("+SBDIX: 0, 12, 1, 3, 25, 2")
    assert result.sent and result.momsn == 12
    assert result.mt_status is MtStatus.RECEIVED
    assert (result.mtmsn, result.mt_length, result.mt_queued) == (3, 25, 2)
    assert parse_sbdix("+SBDIXA:32,5,0,0,0,0").mo.verdict is Verdict.RETRY


@pytest.mark.parametrize(
    "line", ["+SBDIX: 0, 1, 1, 3", "+SBDI: 0,0,0,0,0,0", "OK", "+SBDIX: 0, 1, 7, 0, 0, 0"]
)
def test_a_malformed_sbdix_is_rejected(line: str) -> None:
    with pytest.raises(SbdStatusError):
        parse_sbdix(line)


@pytest.mark.parametrize("code", range(0, 5))
def test_mo_status_0_to_4_is_success(code: int) -> None:
    assert mo_status(code).verdict is Verdict.SUCCESS


@pytest.mark.parametrize("code", [*range(10, 20), *range(32, 39), 64, 65])
def test_every_failure_code_has_a_reason_and_a_verdict(code: int) -> None:
    status = MO_STATUS[code]
    assert status.verdict is not Verdict.SUCCESS
    assert len(status.reason) > 15
    assert (status.after is not None) == (status.verdict is Verdict.RETRY)


def test_the_codes_needing_a_human_fail_with_what_to_do() -> None:
    assert mo_status(15).verdict is Verdict.FAILED
    assert "provision" in mo_status(15).reason
    assert mo_status(16).verdict is Verdict.FAILED and "unlock" in mo_status(16).reason
    assert mo_status(36).after == 180
    assert mo_status(32).verdict is Verdict.RETRY


def test_reserved_codes_are_classified_as_iridium_says() -> None:
    assert mo_status(5).verdict is Verdict.RETRY
    assert mo_status(25).verdict is Verdict.RETRY
    assert "reserved" in mo_status(50).reason


def test_write_results_and_signal() -> None:
    assert parse_write_result("0") is WriteResult.OK
    assert parse_write_result(" 2 ") is WriteResult.BAD_CHECKSUM
    assert "checksum" in WriteResult.BAD_CHECKSUM.reason
    with pytest.raises(SbdStatusError):
        parse_write_result("READY")
    assert parse_csq("+CSQ:4") == 4
    assert parse_csq("+CSQ: 0") == 0
    with pytest.raises(SbdStatusError):
        parse_csq("+CSQ:9")

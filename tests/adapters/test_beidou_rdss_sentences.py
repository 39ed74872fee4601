"""The BeiDou RDSS sentence codec: framing and checksum, each sentence's fields, content
encodings, message lengths per communication level and the shortening of a warning."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.beidou_rdss.sentences import (
    COMM_LEVEL_BITS,
    MAX_SENTENCE,
    REPLY_PROMPT,
    BeamInfo,
    CardInfo,
    CardQuery,
    CommType,
    Encoding,
    Feedback,
    InboundMessage,
    InfoType,
    MessageTooLong,
    OutputRequest,
    RawSentence,
    SendRequest,
    SentenceError,
    Suppression,
    checksum,
    content_bits,
    decode_content,
    encode,
    encode_content,
    fit_message,
    parse,
    read,
    user_id,
)

# Sentences published by terminal vendors and in protocol write-ups (checksums as printed there).
PUBLISHED = [
    b"$CCICA,0,0*4B\r\n",
    b"$BDICI,0925867,2204536,1934946,6,60,3,N,0*0F\r\n",
    b"$CCRMO,BSI,2,1*27\r\n",
    b"$CCTXA,0000000,1,2,A4313233C4E3BAC3D5E2CAC7B2E2CAD4*7F\r\n",
]


def _with_checksum(body: str) -> bytes:
    return f"${body}*{checksum(body.encode()):02X}\r\n".encode()


# -- framing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("line", PUBLISHED)
def test_published_sentences_parse_and_reencode_byte_for_byte(line: bytes) -> None:
    sentence = read(line)
    assert not isinstance(sentence, RawSentence)
    assert sentence.encode() == line


def test_the_published_send_request_reads_as_mixed_text() -> None:
    request = read(PUBLISHED[3])
    assert request == SendRequest("0000000", "123你好这是测试", Encoding.MIXED, CommType.NORMAL)


def test_card_info_fields() -> None:
    card = read(PUBLISHED[1])
    assert isinstance(card, CardInfo)
    assert (card.user_id, card.serial, card.broadcast_id) == ("0925867", "2204536", "1934946")
    assert (card.user_type, card.interval, card.level) == (6, 60.0, 3)
    assert card.encrypted is False
    assert card.max_bits == 628
    assert card.present


def test_checksum_is_upper_case_hex_and_lower_case_is_accepted() -> None:
    line = encode("CCICA", ("0", "0"))
    assert line == b"$CCICA,0,0*4B\r\n"
    assert parse(b"$BDFKI,TXA,Y,Y,0,0000*" + f"{checksum(b'BDFKI,TXA,Y,Y,0,0000'):02x}".encode())


def test_wrong_checksum_names_the_sentence_and_field() -> None:
    with pytest.raises(SentenceError, match=r"\$BDFKI checksum: checksum 00 does not match"):
        parse(b"$BDFKI,TXA,Y,Y,0,0000*00\r\n")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"BDFKI,TXA,Y,Y,0,0000*00", "does not start with '\\$'"),
        (b"$BDFKI,TXA,Y,Y,0,0000", "no '\\*hh' checksum"),
        (b"$BDFKI,TXA,Y,Y,0,0000*0", "no '\\*hh' checksum"),
        (b"$BDFKI,TXA*ZZ", "checksum b'ZZ' is not hex"),
        (b"$bdfki,TXA*00", "is not five capital letters"),
        (b"$" + b"A" * MAX_SENTENCE, "longer than"),
    ],
)
def test_malformed_lines(line: bytes, message: str) -> None:
    with pytest.raises(SentenceError, match=message):
        parse(line)


def test_non_ascii_is_refused_with_its_offset() -> None:
    body = "BDTXR,1,0141814,0,,你好".encode("gb18030")
    line = b"$" + body + b"*" + f"{checksum(body):02X}".encode()
    with pytest.raises(SentenceError, match=r"\$BDTXR text: non-ASCII byte 0xC4 at offset 20"):
        parse(line)


def test_missing_field_names_it() -> None:
    with pytest.raises(SentenceError, match=r"\$BDICI field 6 \(communication level\): missing"):
        read(_with_checksum("BDICI,0925867,2204536,1934946,6,60"))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("BDFKI,TXA,X,Y,0,0000", r"field 2 \(result\): 'X' is neither Y nor N"),
        ("BDFKI,TX,Y,Y,0,0000", r"field 1 \(command\): 'TX' is not a command name"),
        ("BDICI,9999999,1,1,6,60,3,N,0", r"field 1 \(user id\): 9999999 is outside"),
        ("BDICI,0925867,1,1,6,sixty,3,N,0", r"field 5 \(service interval\): 'sixty'"),
        ("BDBSI,1,2,0,1,2,3,4,5,0,0,0,0", r"field 8 \(beam 6 power\): 5 is outside 0–4"),
        ("BDTXR,7,0141814,2,,A431", r"field 1 \(information type\): 7 is outside 1–5"),
        ("BDTXR,1,0141814,2,2460,A431", r"field 4 \(send time\): '2460' is not hhmm"),
        ("BDTXR,1,0141814,2,,A43", r"content: odd number of hex digits"),
        ("BDTXR,1,0141814,0,,FFFF", r"content: not GB18030 text"),
    ],
)
def test_out_of_range_fields_are_named(body: str, message: str) -> None:
    with pytest.raises(SentenceError, match=message):
        read(_with_checksum(body))


def test_encode_refuses_delimiters_inside_a_field() -> None:
    with pytest.raises(SentenceError, match="field 2"):
        encode("CCTXA", ("0141814", "1,2"))
    with pytest.raises(SentenceError, match="field 1"):
        encode("CCTXA", ("你好",))


def test_other_sentences_pass_through_untyped() -> None:
    gnss = _with_checksum("GNZDA,070728.00,07,03,2024,00,00")
    assert read(gnss) == RawSentence("GNZDA", ("070728.00", "07", "03", "2024", "00", "00"))


# -- feedback -----------------------------------------------------------------------------------
def test_feedback_success() -> None:
    feedback = read(_with_checksum("BDFKI,TXA,Y,Y,0,0000"))
    assert feedback == Feedback("TXA", ok=True)
    assert isinstance(feedback, Feedback)
    assert not feedback.frequency_limited
    assert feedback.reason == ""


def test_frequency_limit_feedback_carries_the_wait_as_minutes_and_seconds() -> None:
    feedback = read(_with_checksum("BDFKI,TXA,N,Y,1,0115"))
    assert isinstance(feedback, Feedback)
    assert feedback.frequency_limited
    assert feedback.wait == 75
    assert "频度未到" in feedback.reason


@pytest.mark.parametrize(
    ("field", "seconds"), [("0045", 45), ("0100", 60), ("0075", 75), ("90", 90)]
)
def test_wait_field_read_as_mmss_or_plain_seconds(field: str, seconds: int) -> None:
    feedback = read(_with_checksum(f"BDFKI,TXA,N,Y,1,{field}"))
    assert isinstance(feedback, Feedback)
    assert feedback.wait == seconds


def test_a_refusal_without_code_but_with_a_wait_counts_as_frequency_limit() -> None:
    feedback = read(_with_checksum("BDFKI,TXA,N,Y,0,0030"))
    assert isinstance(feedback, Feedback)
    assert feedback.frequency_limited


@pytest.mark.parametrize(
    ("code", "words"),
    [(2, "系统抑制"), (3, "无线电静默"), (4, "功率未锁定"), (5, "未检测到IC模块"), (9, "code 9")],
)
def test_other_refusals_say_why(code: int, words: str) -> None:
    feedback = read(_with_checksum(f"BDFKI,TXA,N,Y,{code},0000"))
    assert isinstance(feedback, Feedback)
    assert not feedback.ok
    assert not feedback.frequency_limited
    assert words in feedback.reason


def test_beidou3_feedback_with_a_leading_time() -> None:
    feedback = read(_with_checksum("BDFKI,080432,TXA,N,1,42"))
    assert feedback == Feedback("TXA", ok=False, suppression=Suppression.FREQUENCY, wait=42)


# -- content ------------------------------------------------------------------------------------
def test_mixed_content_is_a4_marker_and_gb_hex() -> None:
    assert encode_content("你好1", Encoding.MIXED) == "A4C4E3BAC331"
    assert content_bits("你好1", Encoding.MIXED) == 6 * 8


def test_chinese_mode_widens_ascii_and_refuses_what_gb2312_lacks() -> None:
    message = SendRequest("141814", "收到１", Encoding.CHINESE)
    assert read(message.encode()) == SendRequest("0141814", "收到１", Encoding.CHINESE)
    with pytest.raises(ValueError, match="double-byte"):
        encode_content("收到1", Encoding.CHINESE)
    with pytest.raises(ValueError, match="cannot be sent"):
        encode_content("😀", Encoding.CHINESE)


@pytest.mark.parametrize(
    ("content", "text"),
    [("31", "1"), ("1", "1"), ("01", "01"), ("CAD5B5BD", "收到"), ("123", "123")],
)
def test_code_mode_replies(content: str, text: str) -> None:
    # "01" is not printable as a byte: a terminal sending bare digits meant the digits.
    assert decode_content(content, Encoding.CODE) == text


def test_mixed_reply_without_the_marker_still_reads() -> None:
    assert decode_content("CAD5B5BD", Encoding.MIXED) == "收到"


def test_user_ids() -> None:
    assert user_id(" 141814 ") == "0141814"
    for bad in ("0", "2097152", "abc", "１２３"):
        with pytest.raises(ValueError, match="not a BeiDou user id"):
            user_id(bad)


# -- round trips --------------------------------------------------------------------------------
_ids = st.integers(1, 2_097_151).map(lambda n: f"{n:07d}")
# Any Unicode text but surrogates, line breaks and C0/C1 controls (a terminal shows one line).
_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=80)
# GB2312 level-1 hanzi (rows 16–55) and full-width forms: what Chinese mode carries.
_GB2312_CHARS = [
    bytes([row, cell]).decode("gb2312")
    for row in [*range(0xB0, 0xD8), 0xA3]
    for cell in range(0xA1, 0xFF)
    if not (row == 0xD7 and cell > 0xF9)
]
_gb2312 = st.text(st.sampled_from(_GB2312_CHARS), min_size=1, max_size=60)


@given(_ids, _text, st.sampled_from(CommType))
def test_send_request_round_trip_mixed(destination: str, text: str, comm: CommType) -> None:
    request = SendRequest(destination, text, Encoding.MIXED, comm)
    line = request.encode()
    assert line.isascii()
    assert read(line) == request


@given(_ids, _gb2312)
def test_send_request_round_trip_chinese(destination: str, text: str) -> None:
    request = SendRequest(destination, text, Encoding.CHINESE)
    assert read(request.encode()) == request


@given(
    _ids,
    _text.filter(str.isprintable),
    st.sampled_from([Encoding.MIXED, Encoding.CODE]),
    st.sampled_from(InfoType),
    st.one_of(st.just(""), st.from_regex(r"([01][0-9]|2[0-3])[0-5][0-9]", fullmatch=True)),
)
def test_inbound_message_round_trip(
    sender: str, text: str, encoding: Encoding, info: InfoType, sent_at: str
) -> None:
    message = InboundMessage(sender, text, encoding, info, sent_at)
    assert read(message.encode()) == message


@given(
    st.from_regex(r"[A-Z]{3}", fullmatch=True),
    st.booleans(),
    st.booleans(),
    st.sampled_from(Suppression),
    st.integers(0, 99 * 60 + 59),
)
def test_feedback_round_trip(
    command: str, ok: bool, frequency_ok: bool, code: Suppression, wait: int
) -> None:
    feedback = Feedback(command, ok, frequency_ok, code, wait)
    assert read(feedback.encode()) == feedback


@given(
    _ids,
    st.from_regex(r"[0-9]{1,10}", fullmatch=True),
    _ids,
    st.integers(0, 9),
    st.sampled_from([1.0, 5.0, 30.0, 60.0, 0.5, 300.0]),
    st.integers(0, 9),
    st.booleans(),
    st.integers(0, 999),
)
def test_card_info_round_trip(
    card: str,
    serial: str,
    broadcast: str,
    kind: int,
    interval: float,
    level: int,
    encrypted: bool,
    subordinates: int,
) -> None:
    info = CardInfo(card, serial, broadcast, kind, interval, level, encrypted, subordinates)
    assert read(info.encode()) == info


@given(st.integers(0, 10), st.integers(0, 10), st.tuples(*[st.integers(0, 4)] * 10))
def test_beam_info_round_trip(response: int, time_diff: int, powers: tuple[int, ...]) -> None:
    beams = BeamInfo(response, time_diff, powers)
    assert read(beams.encode()) == beams
    assert beams.best == max(powers)


def test_small_sentences_round_trip() -> None:
    assert read(CardQuery().encode()) == CardQuery(0, 0)
    assert read(OutputRequest("BSI", 2, 5).encode()) == OutputRequest("BSI", 2, 5)
    assert read(OutputRequest("", 3).encode()) == OutputRequest("", 3, 0)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_sentence_error(data: bytes) -> None:
    with contextlib.suppress(SentenceError):
        read(data)


# -- fitting one message ------------------------------------------------------------------------
FULL = (
    "【测试，非真实预警】【红色预警】某某县气象台发布暴雨红色预警，预计未来3小时将出现特大暴雨，"
    "请立即转移到安全地带。有效至11月29日18:00。收到请回复1。"
)
LEAD = "【测试】红色预警：某某县气象台发布暴雨红色预警，预计未来3小时将出现特大暴雨"


def test_level_table() -> None:
    assert COMM_LEVEL_BITS == {1: 110, 2: 408, 3: 628, 4: 848}


def test_a_message_that_fits_is_sent_whole() -> None:
    short = "【红色预警】山洪。收到请回复1。"
    assert fit_message(short, lead="x", max_bits=628, encoding=Encoding.MIXED) == short


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("level", [2, 3, 4])
def test_a_long_warning_is_shortened_headline_first_keeping_the_reply_prompt(
    encoding: Encoding, level: int
) -> None:
    bits = COMM_LEVEL_BITS[level]
    message = fit_message(FULL, lead=LEAD, keep="【测试】", max_bits=bits, encoding=encoding)
    assert content_bits(message, encoding) <= bits
    # Headline first, the Test mark intact, the prompt at the end (full-width in Chinese mode).
    assert message.startswith("【测试】")
    assert message.endswith("收到请回复1" if encoding is not Encoding.CHINESE else "收到请回复１")
    body = message.removesuffix("。收到请回复1").removesuffix("。收到请回复１")
    assert body.rstrip("…") in LEAD.replace("3", "３" if encoding is Encoding.CHINESE else "3")


def test_the_cut_is_on_a_character_boundary_and_marked() -> None:
    message = fit_message(FULL, lead=LEAD, keep="【测试】", max_bits=408, encoding=Encoding.MIXED)
    # 408 bits = 51 bytes: the A4 marker, then the longest lead prefix with "…。收到请回复1".
    assert message == "【测试】红色预警：某某县气象台发布…。收到请回复1"
    assert content_bits(message, Encoding.MIXED) == 400
    # One more character of the headline would not fit.
    assert content_bits("【测试】红色预警：某某县气象台发布暴…。收到请回复1", Encoding.MIXED) > 408
    # Every character is whole: the text survives the GB encoding both ways.
    assert decode_content(encode_content(message, Encoding.MIXED), Encoding.MIXED) == message


def test_without_room_for_the_prompt_the_headline_takes_the_message() -> None:
    # Level 1: 110 bits = 13 bytes; the prompt alone (13 bytes with "。") leaves no room.
    message = fit_message(FULL, lead=LEAD, keep="【测试】", max_bits=110, encoding=Encoding.MIXED)
    assert REPLY_PROMPT not in message
    assert message == "【测试】红…"
    assert content_bits(message, Encoding.MIXED) <= 110


def test_the_test_mark_is_never_cut() -> None:
    with pytest.raises(MessageTooLong, match="【测试，非真实预警】"):
        fit_message(
            FULL,
            lead="【测试，非真实预警】暴雨",
            keep="【测试，非真实预警】",
            max_bits=110,
            encoding=Encoding.MIXED,
        )


@given(st.integers(80, 1680), _text, st.sampled_from([Encoding.MIXED, Encoding.CODE]))
def test_fit_always_fits_or_refuses(bits: int, headline: str, encoding: Encoding) -> None:
    try:
        message = fit_message(
            FULL + headline,
            lead=f"【测试】{headline}",
            keep="【测试】",
            max_bits=bits,
            encoding=encoding,
        )
    except MessageTooLong:
        assert content_bits("【测试】", encoding) > bits
        return
    assert content_bits(message, encoding) <= bits
    assert message.startswith("【测试")  # the whole text, or the shortened form

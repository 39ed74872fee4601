"""The ``tocsin-v1`` framing and the profile registry: byte layout (the worked example of
PROTOCOL.md), round trips of every message, and a streaming decoder that garbage,
fragmentation and corruption never wedge."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.serial_transmitter.framing import (
    CRC_SIZE,
    HEADER,
    MAX_BODY,
    TocsinV1Decoder,
    TocsinV1Profile,
    bcd_area,
    crc16,
    escape,
)
from adapters.serial_transmitter.messages import (
    Ack,
    Command,
    CommandKind,
    Content,
    ContentKind,
    FaultFlag,
    Flags,
    Garbled,
    Level,
    ProtocolError,
    Received,
    ResultCode,
    StatusReport,
    TransmitterState,
    covers,
    normalise_area,
    select_areas,
)
from adapters.serial_transmitter.profiles import (
    DEFAULT_PROFILE,
    FrameDecoder,
    FramingProfile,
    UnknownProfile,
    get_profile,
    profile_names,
    register_profile,
    unregister_profile,
)

PROFILE = TocsinV1Profile()
PROTOCOL_MD = Path(__file__).parents[2] / "adapters" / "serial_transmitter" / "PROTOCOL.md"

# -- strategies ----------------------------------------------------------------------------------
areas = st.from_regex(r"[1-6][0-9]{11}", fullmatch=True)
short_ids = st.text(min_size=0, max_size=20).filter(lambda s: len(s.encode()) <= 64)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=200)


@st.composite
def contents(draw: st.DrawFn) -> Content:
    kind = draw(st.sampled_from(list(ContentKind)))
    if kind is ContentKind.NONE:
        return Content()
    if kind is ContentKind.AUDIO_ID:
        return Content.of_audio(draw(st.integers(0, 0xFFFF_FFFF)))
    return Content.of_text(draw(texts), kind)


@st.composite
def commands(draw: st.DrawFn) -> Command:
    kind = draw(st.sampled_from(list(CommandKind)))
    if kind is CommandKind.STATUS:
        return Command(kind)
    return Command(
        kind=kind,
        warning_id=draw(short_ids),
        delivery_id=draw(st.integers(0, 2**64 - 1)),
        level=draw(st.sampled_from(list(Level))),
        flags=Flags(draw(st.integers(0, 7))),
        expires=draw(st.integers(0, 2**32 - 1)),
        repeat=draw(st.integers(1, 255)),
        volume=draw(st.none() | st.integers(0, 100)),
        areas=tuple(draw(st.lists(areas, max_size=8))),
        content=draw(contents()),
        references=tuple(draw(st.lists(short_ids, max_size=3))),
    )


@st.composite
def replies(draw: st.DrawFn) -> Ack | StatusReport:
    if draw(st.booleans()):
        return StatusReport(
            state=draw(st.sampled_from(list(TransmitterState))),
            frequency_hz=draw(st.integers(0, 2**32 - 1)),
            forward_power_w=draw(st.integers(0, 65535)) / 10,
            reflected_power_w=draw(st.integers(0, 65535)) / 10,
            faults=FaultFlag(draw(st.integers(0, 0xFF))),
            temperature_c=draw(st.integers(-128, 127)),
            firmware=draw(st.text("abcXYZ0123456789.-", max_size=30)),
        )
    command = draw(st.sampled_from(list(CommandKind)))
    result = draw(st.sampled_from([r for r in ResultCode if r is not ResultCode.OK]))
    if result is ResultCode.BUSY:
        return Ack(command, result, retry_after=draw(st.integers(0, 65535)))
    if result is ResultCode.UNKNOWN_AREA:
        return Ack(command, result, unknown_areas=tuple(draw(st.lists(areas, max_size=5))))
    if result is ResultCode.FAULT:
        return Ack(command, result, faults=FaultFlag(draw(st.integers(0, 0xFF))))
    return Ack(command, result)


seqs = st.integers(0, 0xFFFF)
addresses = st.integers(1, 0xFFFE)


def decode_all(data: bytes, decoder: TocsinV1Decoder | None = None) -> list[Received]:
    items = (decoder or PROFILE.decoder()).feed(data)
    return [i for i in items if isinstance(i, Received)]


# -- the worked example of PROTOCOL.md -----------------------------------------------------------
EXAMPLE = Command(
    kind=CommandKind.PLAY,
    warning_id="W1",
    delivery_id=42,
    level=Level.RED,
    expires=1767225600,  # 2026-01-01T00:00:00Z
    repeat=2,
    areas=("611002101201",),
    content=Content.of_text("快转移"),
)


def _hex_blocks(title: str) -> list[bytes]:
    """The hex of the fenced block that follows ``title`` in PROTOCOL.md."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    section = text[text.index(title) :]
    block = re.search(r"```hex\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return [bytes.fromhex(line.split("#")[0]) for line in block.group(1).splitlines()]


def test_worked_example_in_the_protocol_document_is_what_the_code_sends() -> None:
    # The document is what a vendor implements: its example must be byte-exact.
    sent = PROFILE.encode_command(EXAMPLE, seq=7, address=12)
    assert b"".join(_hex_blocks("### Worked example: play")) == sent
    ack = PROFILE.encode_reply(Ack(CommandKind.PLAY, ResultCode.OK), seq=7, address=12)
    assert b"".join(_hex_blocks("### Worked example: the acknowledgement")) == ack


def test_example_frame_layout() -> None:
    sent = PROFILE.encode_command(EXAMPLE, seq=7, address=12)
    assert sent[0] == 0x7E
    assert sent[1:9] == bytes.fromhex("01 0007 000c 01 0024")
    assert bcd_area("611002101201") in sent
    assert "快转移".encode("gb18030") in sent
    assert crc16(sent[1:-2]) == int.from_bytes(sent[-2:], "big")


def test_crc_is_ccitt_false() -> None:
    # The standard check value of CRC-16/CCITT-FALSE (a.k.a. CRC-16/IBM-3740).
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"\x00" + b"123456789") != crc16(b"123456789")


def test_escaping_keeps_the_start_marker_unique() -> None:
    assert escape(b"\x7e\x7d\x00") == b"\x7d\x5e\x7d\x5d\x00"
    # seq 0x7E7D and address 0x7D7E put both special bytes in the header.
    sent = PROFILE.encode_command(Command(CommandKind.STATUS), seq=0x7E7D, address=0x7D7E)
    assert sent.count(0x7E) == 1
    assert decode_all(sent) == [Received(0x7E7D, 0x7D7E, Command(CommandKind.STATUS))]


# -- round trips ---------------------------------------------------------------------------------
@given(commands(), seqs, addresses)
def test_commands_round_trip(command: Command, seq: int, address: int) -> None:
    sent = PROFILE.encode_command(command, seq=seq, address=address)
    assert 0x7E not in sent[1:]
    assert decode_all(sent) == [Received(seq, address, command)]


@given(replies(), seqs, addresses)
def test_replies_round_trip(reply: Ack | StatusReport, seq: int, address: int) -> None:
    sent = PROFILE.encode_reply(reply, seq=seq, address=address)
    assert decode_all(sent) == [Received(seq, address, reply)]


def test_minimal_ack_without_extras_is_accepted() -> None:
    # A device may answer BUSY with the result byte alone (no retry-after).
    from adapters.serial_transmitter.framing import frame

    sent = frame(3, 9, 0x81, bytes([ResultCode.BUSY]))
    assert decode_all(sent) == [Received(3, 9, Ack(CommandKind.PLAY, ResultCode.BUSY))]


# -- resilience ----------------------------------------------------------------------------------
@settings(max_examples=150)
@given(
    st.lists(st.tuples(commands(), seqs, addresses), min_size=1, max_size=5),
    st.lists(st.binary(max_size=40), min_size=6, max_size=6),
    st.randoms(use_true_random=False),
)
def test_frames_survive_noise_between_them_and_any_split(
    items: list[tuple[Command, int, int]], noises: list[bytes], rnd: random.Random
) -> None:
    frames = [PROFILE.encode_command(c, seq=s, address=a) for c, s, a in items]
    stream = b"".join(n + f for n, f in zip(noises, frames, strict=False)) + noises[-1]
    cuts = sorted(rnd.sample(range(len(stream) + 1), min(8, len(stream) + 1)))
    decoder = PROFILE.decoder()
    got: list[Received] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += decode_all(stream[start:end], decoder)
        assert decoder.buffered <= HEADER.size + MAX_BODY + CRC_SIZE
    assert got == [Received(s, a, c) for c, s, a in items]


@given(st.binary(max_size=2000))
def test_pure_noise_never_raises(noise: bytes) -> None:
    decoder = PROFILE.decoder()
    for item in decoder.feed(noise):
        assert isinstance(item, Received | Garbled)
    # Whatever the noise left behind, the next frame is read.
    good = PROFILE.encode_reply(Ack(CommandKind.STOP, ResultCode.OK), seq=1, address=2)
    assert decode_all(good, decoder) == [Received(1, 2, Ack(CommandKind.STOP, ResultCode.OK))]


def test_byte_at_a_time() -> None:
    sent = PROFILE.encode_command(EXAMPLE, seq=65535, address=65534)
    decoder = PROFILE.decoder()
    got: list[Received] = []
    for byte in sent:
        got += decode_all(bytes([byte]), decoder)
    assert got == [Received(65535, 65534, EXAMPLE)]


def test_bad_crc_is_reported_with_its_header() -> None:
    sent = bytearray(PROFILE.encode_command(EXAMPLE, seq=7, address=12))
    sent[20] ^= 0x01  # a body byte (not 7D/7E either way)
    (item,) = PROFILE.decoder().feed(bytes(sent))
    assert isinstance(item, Garbled)
    assert "bad CRC" in item.reason
    assert (item.seq, item.address) == (7, 12)


def test_a_frame_cut_short_by_the_next_one() -> None:
    first = PROFILE.encode_command(EXAMPLE, seq=1, address=3)
    second = PROFILE.encode_command(EXAMPLE, seq=2, address=3)
    items = PROFILE.decoder().feed(first[:15] + second)
    assert isinstance(items[0], Garbled)
    assert "cut short" in items[0].reason
    assert items[1] == Received(2, 3, EXAMPLE)


def test_oversized_length_is_dropped_at_the_header() -> None:
    decoder = PROFILE.decoder()
    header = HEADER.pack(1, 5, 6, 0x81, MAX_BODY + 1)
    items = decoder.feed(bytes([0x7E]) + escape(header) + b"\x00" * 5000)
    assert [type(i) for i in items] == [Garbled]
    assert "limit" in items[0].reason  # type: ignore[union-attr]
    assert decoder.buffered == 0
    assert decoder.discarded == 5000


def test_a_silent_line_after_a_bogus_length_does_not_hold_the_next_frame() -> None:
    # With length-only resync a bogus header would make the decoder wait for 4 KiB that never
    # come; the start marker of the real ack ends the bogus frame at once.
    decoder = PROFILE.decoder()
    bogus = bytes([0x7E]) + escape(HEADER.pack(1, 5, 6, 0x81, 4000)) + b"\x01\x02"
    ack = PROFILE.encode_reply(Ack(CommandKind.PLAY, ResultCode.OK), seq=9, address=4)
    items = decoder.feed(bogus + ack)
    assert items[-1] == Received(9, 4, Ack(CommandKind.PLAY, ResultCode.OK))


def test_unknown_version_type_and_malformed_body_are_garbled() -> None:
    from adapters.serial_transmitter.framing import frame

    wrong_version = bytearray(frame(1, 2, 0x81, b"\x00"))
    wrong_version[1] = 0x02
    assert "version" in PROFILE.decoder().feed(bytes(wrong_version))[0].reason  # type: ignore[union-attr]
    (unknown_type,) = PROFILE.decoder().feed(frame(1, 2, 0x09, b""))
    assert isinstance(unknown_type, Garbled)
    assert "type" in unknown_type.reason
    (short_body,) = PROFILE.decoder().feed(frame(1, 2, 0x01, b"\x00\x01"))
    assert isinstance(short_body, Garbled)
    assert "missing" in short_body.reason
    (bad_result,) = PROFILE.decoder().feed(frame(1, 2, 0x81, b"\x77"))
    assert isinstance(bad_result, Garbled)


def test_invalid_escape_drops_the_frame() -> None:
    items = PROFILE.decoder().feed(b"\x7e\x01\x7d\x11\x00")
    assert [type(i) for i in items] == [Garbled]


# -- encoding limits -----------------------------------------------------------------------------
def test_limits_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="areas"):
        PROFILE.encode_command(
            Command(CommandKind.PLAY, areas=("611002101201",) * 256), seq=1, address=1
        )
    with pytest.raises(ProtocolError, match="content"):
        PROFILE.encode_command(
            Command(CommandKind.PLAY, content=Content.of_text("警" * 2000)), seq=1, address=1
        )
    with pytest.raises(ProtocolError, match="warning id"):
        PROFILE.encode_command(Command(CommandKind.PLAY, warning_id="x" * 65), seq=1, address=1)
    with pytest.raises(ProtocolError, match="sequence"):
        PROFILE.encode_command(Command(CommandKind.STATUS), seq=70000, address=1)
    with pytest.raises(ProtocolError):
        Content.of_audio(-1)


def test_gb18030_is_shorter_than_utf8_for_chinese() -> None:
    text = "商州区暴雨红色预警，请立即转移至安全地带。"
    gb = Command(CommandKind.PLAY, content=Content.of_text(text))
    utf8 = Command(CommandKind.PLAY, content=Content.of_text(text, ContentKind.TEXT_UTF8))
    assert len(PROFILE.encode_command(gb, seq=1, address=1)) < len(
        PROFILE.encode_command(utf8, seq=1, address=1)
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("12", 12), ("0x000c", 12), (" 65534 ", 65534), ("0", None), ("65535", None), ("TX-1", None)],
)
def test_addresses(text: str, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(ProtocolError, match="transmitter address"):
            PROFILE.parse_address(text)
    else:
        assert PROFILE.parse_address(text) == expected


# -- areas ---------------------------------------------------------------------------------------
def test_area_codes() -> None:
    assert normalise_area("611002") == "611002000000"
    with pytest.raises(ProtocolError):
        normalise_area("61100210120")
    assert covers("611002000000", "611002101201")
    assert covers("611002101000", "611002101201")
    assert not covers("611002101201", "611002101000")
    assert not covers("611003000000", "611002101201")


def test_select_areas() -> None:
    village = "611002101201"
    assert select_areas(("611002", "611002000000", "bad"), village, 10) == ("611002000000",)
    assert select_areas((), village, 10) == (village,)
    assert select_areas((), "", 10) == ()
    many = tuple(f"6110{n:02d}000000" for n in range(1, 40))
    assert select_areas(many, village, 10) == ("611002000000",)
    assert select_areas((*many, "610000000000"), village, 10) == ("611002000000", "610000000000")


def test_fault_flag_names() -> None:
    assert (FaultFlag.HIGH_VSWR | FaultFlag.MAINS_LOST).names() == ["high_vswr", "mains_lost"]
    assert FaultFlag.NONE.names() == []


# -- the registry --------------------------------------------------------------------------------
def test_builtin_profile_is_default_and_satisfies_the_protocol() -> None:
    assert DEFAULT_PROFILE == "tocsin-v1"
    profile = get_profile("tocsin-v1")
    assert isinstance(profile, FramingProfile)
    assert isinstance(profile.decoder(), FrameDecoder)
    assert "tocsin-v1" in profile_names()


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(UnknownProfile, match=r"available: .*tocsin-v1"):
        get_profile("acme-v9")


def test_registering_a_profile() -> None:
    class Renamed(TocsinV1Profile):
        name = "lab-v1"

    register_profile("lab-v1", Renamed)
    try:
        assert "lab-v1" in profile_names()
        assert isinstance(get_profile("lab-v1"), Renamed)
        with pytest.raises(ValueError, match="built in"):
            register_profile("tocsin-v1", Renamed)
    finally:
        unregister_profile("lab-v1")
    assert "lab-v1" not in profile_names()

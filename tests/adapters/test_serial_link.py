"""The serial layer every serial kind builds on, against a device on a real pseudo-terminal:
AT exchanges (echo, unsolicited codes during a command, prompts, binary blocks, error codes),
timeouts that never hang and never mix up answers, the port going away and coming back, and
open errors that name the port and the cause."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from waiting import wait_until

from adapters.serial_link import at as at_module
from adapters.serial_link.at import AtChannel, AtError, Urc
from adapters.serial_link.errors import PortClosed, PortUnavailable, ResponseTimeout
from adapters.serial_link.lines import LineSplitter
from adapters.serial_link.link import SerialLink
from adapters.serial_link.pty_device import CTRL_Z, AtDevice
from adapters.serial_link.settings import SerialPortSettings

#: An SMS-DELIVER as a modem shows it after ``+CMT: ,23``.
INBOUND_PDU = "07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07"


class Modem(AtDevice):
    """A small AT device: enough commands to exercise the channel."""

    def __init__(self, link: Path, **knobs: float) -> None:
        super().__init__(link=link, **knobs)
        self.hang: set[str] = set()
        self.pdus: list[bytes] = []
        self.slow: dict[str, float] = {}
        self.sbd = b"reply \r\nOK inside"
        #: Answer AT+SBDRB in two writes, cut after these bytes (an echo or an ERROR cut by
        #: the UART's read chunks).
        self.split_sbdrb: tuple[bytes, bytes] | None = None

    def handle(self, command: str) -> Sequence[str] | None:
        if command in self.hang:
            self.raw_answer(b"")  # answer nothing at all
            return ()
        if command in self.slow:
            body = f"\r\n+SLOW: {command}\r\n\r\nOK\r\n".encode()
            self.raw_answer(b"")
            self.reply(body, delay=self.slow[command])
            return ()
        if command == "AT+CSQ":
            # A new message arrives while the command is answered: its URC comes first.
            self.unsolicited(
                "+CMT: ,23",
                "07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07",
            )
            return ["+CSQ: 21,99"]
        if command == "AT+CREG?":
            return ["+CREG: 0,1"]
        if command.startswith("AT+CMGS="):
            self.expect_payload(b"\r\n> ", self._pdu, terminator=CTRL_Z)
            return ()
        if command == "AT+SBDRB" and self.split_sbdrb is not None:
            first, rest = self.split_sbdrb
            self.raw_answer(first)
            self.reply(rest, delay=0.1)
            return ()
        if command == "AT+SBDRB":
            checksum = (sum(self.sbd) & 0xFFFF).to_bytes(2, "big")
            self.raw_answer(len(self.sbd).to_bytes(2, "big") + self.sbd + checksum + b"\r\nOK\r\n")
            return ()
        if command == "AT+BADSUM":
            self.raw_answer(b"\x00\x02hi\x00\x00\r\nOK\r\n")
            return ()
        if command == "AT+CMSERR":
            self.raw_answer(b"\r\n+CMS ERROR: 38\r\n")
            return ()
        if command == "AT+CMEERR":
            self.raw_answer(b"\r\n+CME ERROR: SIM not inserted\r\n")
            return ()
        return None

    def _pdu(self, data: bytes) -> Sequence[str]:
        self.pdus.append(data)
        return [f"+CMGS: {len(self.pdus)}"]


@pytest.fixture
async def modem(tmp_path: Path) -> AsyncIterator[Modem]:
    async with Modem(tmp_path / "ttyMODEM", latency=0.002) as device:
        yield device


class Channel:
    """An AtChannel on the modem, with what it saw."""

    def __init__(self, device: Modem, **options: float) -> None:
        self.urcs: list[Urc] = []
        self.opens = 0
        self.closes: list[str] = []
        self.at = AtChannel(
            port=device.path,
            baudrate=115200,
            name="test",
            on_urc=self.urcs.append,
            urcs={"+CMT:": 1, "+CMTI:": 0, "+CREG:": 0},
            on_open=self._set_up,
            on_close=self.closes.append,
            command_timeout=options.get("command_timeout", 1.0),
            reopen_max=0.2,
        )

    async def _set_up(self) -> None:
        self.opens += 1
        await self.at.command("ATE0")


@pytest.fixture
async def channel(modem: Modem) -> AsyncIterator[Channel]:
    ch = Channel(modem)
    await ch.at.open(within=5)
    yield ch
    await ch.at.close()


async def test_answers_and_the_set_up_turn_echo_off(modem: Modem, channel: Channel) -> None:
    assert channel.opens == 1
    assert modem.echo is False
    reply = await channel.at.command("AT+CREG?")
    assert reply.lines == ("+CREG: 0,1",)
    assert reply.value("+CREG:") == "0,1"
    assert channel.urcs == [], "a command's own response prefix is not an unsolicited code"


async def test_echo_is_tolerated(modem: Modem, channel: Channel) -> None:
    modem.echo = True
    assert (await channel.at.command("AT+CSQ")).lines == ("+CSQ: 21,99",)


async def test_an_unsolicited_code_during_a_command_reaches_the_handler_with_its_pdu(
    channel: Channel,
) -> None:
    reply = await channel.at.command("AT+CSQ")
    assert reply.lines == ("+CSQ: 21,99",)
    assert len(channel.urcs) == 1
    assert channel.urcs[0].line == "+CMT: ,23"
    assert channel.urcs[0].extra[0].startswith("07911326")


async def test_lines_with_no_command_in_flight_go_to_the_handler(
    modem: Modem, channel: Channel
) -> None:
    modem.unsolicited("RDY")
    modem.unsolicited('+CMTI: "SM",4')
    await wait_until(lambda: len(channel.urcs) >= 2, within=2, what="two URCs")
    assert [u.line for u in channel.urcs] == ["RDY", '+CMTI: "SM",4']


async def test_payload_after_the_prompt(modem: Modem, channel: Channel) -> None:
    reply = await channel.at.command("AT+CMGS=5", payload=b"0011AABB" + CTRL_Z)
    assert reply.value("+CMGS:") == "1"
    assert modem.pdus == [b"0011AABB"]


async def test_a_prompt_that_never_comes_times_out_and_is_cancelled_with_esc(
    modem: Modem, channel: Channel
) -> None:
    modem.hang.add("AT+CMGS=9")
    with pytest.raises(ResponseTimeout, match="no prompt to AT\\+CMGS=9"):
        await channel.at.command("AT+CMGS=9", payload=b"00" + CTRL_Z, within=0.2)
    assert modem.pdus == [], "the payload is not written without the prompt"
    await wait_until(lambda: modem.received_bytes.endswith(b"\x1b"), within=2, what="ESC")
    assert (await channel.at.command("AT+CREG?")).lines == ("+CREG: 0,1",)


def _sbd_block(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data + (sum(data) & 0xFFFF).to_bytes(2, "big")


@pytest.mark.parametrize(
    ("first", "rest", "error"),
    [
        # The echo (a modem that rebooted has it on again) cut after its first bytes.
        (b"AT+SB", b"DRB\r" + _sbd_block(b"hello") + b"\r\nOK\r\n", False),
        (b"A", b"T+SBDRB\r" + _sbd_block(b"hello") + b"\r\nOK\r\n", False),
        # An error answer instead of the block, cut in the middle of its word.
        (b"ER", b"ROR\r\n", True),
        (b"+CM", b"E ERROR: 100\r\n", True),
    ],
)
async def test_binary_block_answer_split_across_reads(
    channel: Channel, modem: Modem, first: bytes, rest: bytes, error: bool
) -> None:
    modem.split_sbdrb = (first, rest)
    async with asyncio.timeout(3):
        if error:
            with pytest.raises(AtError):
                await channel.at.command("AT+SBDRB", binary_reply=True)
        else:
            reply = await channel.at.command("AT+SBDRB", binary_reply=True)
            assert reply.binary == b"hello"


async def test_binary_block(channel: Channel, modem: Modem) -> None:
    reply = await channel.at.command("AT+SBDRB", binary_reply=True)
    assert reply.binary == modem.sbd, "CR LF and OK inside the block are data, not lines"
    with pytest.raises(AtError, match="wrong checksum"):
        await channel.at.command("AT+BADSUM", binary_reply=True)
    assert (await channel.at.command("AT+CREG?")).lines == ("+CREG: 0,1",)


async def test_error_results(channel: Channel) -> None:
    with pytest.raises(AtError) as plain:
        await channel.at.command("AT+NOPE")
    assert (plain.value.family, plain.value.code, plain.value.final) == (None, None, "ERROR")
    with pytest.raises(AtError) as cms:
        await channel.at.command("AT+CMSERR")
    assert (cms.value.family, cms.value.code) == ("CMS", 38)
    with pytest.raises(AtError) as cme:
        await channel.at.command("AT+CMEERR")
    assert (cme.value.family, cme.value.code, cme.value.text) == ("CME", None, "SIM not inserted")


async def test_a_late_answer_is_not_taken_for_the_next_command(
    modem: Modem, channel: Channel
) -> None:
    modem.slow["AT+LATE"] = 0.4
    with pytest.raises(ResponseTimeout):
        await channel.at.command("AT+LATE", within=0.1)
    await asyncio.sleep(0.35)  # the late answer arrives during or before the resync
    reply = await channel.at.command("AT+CREG?")
    assert reply.lines == ("+CREG: 0,1",)


async def test_a_command_is_never_written_to_a_reopened_device_before_its_set_up(
    modem: Modem, channel: Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a timeout the next command resynchronises first; if the device goes away and comes
    # back meanwhile (the quiet pause after the resync's OK), the command must not go to the
    # new device ahead of its set-up (echo off, PDU mode, the PIN…).
    monkeypatch.setattr(at_module, "RESYNC_QUIET", 0.5)
    modem.hang.add("AT+HANG")
    with pytest.raises(ResponseTimeout):
        await channel.at.command("AT+HANG", within=0.1)
    before = len(modem.commands)
    pending = asyncio.create_task(channel.at.command("AT+CREG?", within=2))
    await wait_until(lambda: modem.commands[before:] == ["AT"], within=2, what="the resync")
    modem.unplug()
    modem.replug()
    async with asyncio.timeout(3):
        with contextlib.suppress(PortClosed):
            await pending
        assert await channel.at.wait_ready(3)
    after_replug = modem.commands[before + 1 :]
    assert after_replug[:1] == ["ATE0"], after_replug
    assert channel.opens == 2


async def test_a_silent_device_times_out_every_command_and_never_hangs(
    modem: Modem, channel: Channel
) -> None:
    modem.silent = True
    for _ in range(3):
        async with asyncio.timeout(4):
            with pytest.raises(ResponseTimeout):
                await channel.at.command("AT+CREG?", within=0.2)
    modem.silent = False
    assert (await channel.at.command("AT+CREG?")).lines == ("+CREG: 0,1",)


async def test_garbage_answers_time_out_and_noise_is_bounded(
    modem: Modem, channel: Channel
) -> None:
    modem.garbage = 1.0
    with pytest.raises(ResponseTimeout):
        await channel.at.command("AT+CREG?", within=0.2)
    modem.garbage = 0.0
    modem.reply(modem.noise(10_000))
    await asyncio.sleep(0.1)
    assert (await channel.at.command("AT+CREG?")).lines == ("+CREG: 0,1",)


async def test_commands_are_serialised(modem: Modem, channel: Channel) -> None:
    modem.latency = 0.05
    replies = await asyncio.gather(*(channel.at.command("AT+CREG?") for _ in range(5)))
    assert all(r.lines == ("+CREG: 0,1",) for r in replies)
    # One command at a time: each command line reached the device only after the previous
    # answer, so the device never saw two commands arrive together.
    assert modem.commands[-5:] == ["AT+CREG?"] * 5


async def test_unplug_mid_command_fails_it_at_once_and_replug_sets_the_device_up_again(
    modem: Modem, channel: Channel
) -> None:
    modem.hang.add("AT+CREG?")
    pending = asyncio.create_task(channel.at.command("AT+CREG?", within=30))
    await asyncio.sleep(0.05)
    modem.unplug()
    async with asyncio.timeout(1):
        with pytest.raises(PortClosed, match="device disconnected"):
            await pending
    assert channel.closes == ["device disconnected"]
    assert not channel.at.ready
    with pytest.raises(PortClosed, match="not ready"):
        await channel.at.command("AT")

    modem.hang.clear()
    modem.replug()
    assert await channel.at.wait_ready(5)
    assert channel.opens == 2, "the device is set up again after it comes back"
    assert modem.echo is False
    assert (await channel.at.command("AT+CREG?")).lines == ("+CREG: 0,1",)


async def test_close_while_a_command_hangs_is_prompt(modem: Modem, channel: Channel) -> None:
    modem.hang.add("AT+CREG?")
    pending = asyncio.create_task(channel.at.command("AT+CREG?", within=30))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(1):
        await channel.at.close()
        with pytest.raises(PortClosed):
            await pending


async def test_open_errors_name_the_port_and_the_cause(modem: Modem, tmp_path: Path) -> None:
    missing = SerialLink(port=str(tmp_path / "gone"), baudrate=9600, name="t", on_bytes=print)
    with pytest.raises(PortUnavailable, match="gone: no such port"):
        await missing.open(within=2)

    plain_file = tmp_path / "not-a-tty"
    plain_file.write_text("")
    not_tty = SerialLink(port=str(plain_file), baudrate=9600, name="t", on_bytes=print)
    with pytest.raises(PortUnavailable, match="not-a-tty: not a serial device"):
        await not_tty.open(within=2)

    first = SerialLink(port=modem.path, baudrate=9600, name="t", on_bytes=lambda _: None)
    await first.open(within=2)
    try:
        second = SerialLink(port=modem.path, baudrate=9600, name="t", on_bytes=print)
        with pytest.raises(PortUnavailable, match="port is busy"):
            await second.open(within=2)
    finally:
        await first.close()


async def test_a_device_that_does_not_answer_its_set_up_is_unavailable(modem: Modem) -> None:
    modem.silent = True
    ch = Channel(modem, command_timeout=0.2)
    with pytest.raises(PortUnavailable, match=r"device did not set up: .*no answer to ATE0"):
        await ch.at.open(within=5)
    assert not ch.at.ready


async def test_replug_points_the_link_at_a_new_pty(modem: Modem) -> None:
    before = modem.pty_path
    assert os.readlink(modem.path) == before
    modem.unplug()
    with pytest.raises(FileNotFoundError):  # an unplugged device has no by-id link
        os.readlink(modem.path)
    modem.replug()
    assert os.readlink(modem.path) == modem.pty_path


def test_line_splitter_bounds_noise() -> None:
    lines: list[str] = []
    splitter = LineSplitter(lines.append, max_line=64)
    splitter.feed(b"$BDFKI,TXA,Y*00\r\n$BD")
    splitter.feed(b"TXR,1*00\r\n\r\n")
    splitter.feed(b"x" * 100)
    splitter.feed(b"\r\n$OK*00\n")
    assert lines == ["$BDFKI,TXA,Y*00", "$BDTXR,1*00", "$OK*00"]
    assert splitter.dropped >= 64


def test_port_settings_explain_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="not a device path"):
        SerialPortSettings(port="ttyUSB0")
    with pytest.raises(ValueError, match="not a standard baud rate"):
        SerialPortSettings(port="/dev/ttyUSB0", baudrate=115201)
    assert SerialPortSettings(port="/dev/ttyUSB0").baudrate == 115200


async def test_a_closed_port_can_be_opened_again_at_once(modem: Modem) -> None:
    for _ in range(3):
        link = SerialLink(port=modem.path, baudrate=9600, name="t", on_bytes=lambda _: None)
        await link.open(within=2)
        await link.close()


async def test_a_cancelled_command_does_not_leave_its_answer_for_the_next(
    modem: Modem, channel: Channel
) -> None:
    modem.slow["AT+LATE"] = 0.3
    pending = asyncio.create_task(channel.at.command("AT+LATE", within=5))
    await asyncio.sleep(0.05)
    pending.cancel()  # the engine's send timeout gives up on a batch
    with pytest.raises(asyncio.CancelledError):
        await pending
    await asyncio.sleep(0.3)
    assert (await channel.at.command("AT+CREG?")).lines == ("+CREG: 0,1",)


async def test_a_stray_line_before_a_binary_block_is_not_read_as_its_length(
    modem: Modem, channel: Channel
) -> None:
    """A late answer to an earlier command arriving on its own just before AT+SBDRB's block:
    'OK' is no 20 KB length."""
    checksum = (sum(modem.sbd) & 0xFFFF).to_bytes(2, "big")
    block = len(modem.sbd).to_bytes(2, "big") + modem.sbd + checksum + b"\r\nOK\r\n"
    modem.hang.add("AT+SBDRB")  # answered by hand below, in two chunks
    pending = asyncio.create_task(channel.at.command("AT+SBDRB", binary_reply=True, within=2))
    await wait_until(lambda: "AT+SBDRB" in modem.commands, within=2, what="the command")
    modem.reply(b"OK\r\n")
    await asyncio.sleep(0.05)
    modem.reply(block)
    reply = await pending
    assert reply.binary == modem.sbd

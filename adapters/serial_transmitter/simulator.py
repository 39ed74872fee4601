"""Simulated wireless-broadcast transmitter controllers on a pseudo-terminal: the
``transmitter`` profile of ``tocsin simulate modem`` and the peer of the adapter's tests.

One :class:`TransmitterBusDevice` is the serial line (a pty); on it sit one or more
:class:`SimulatedTransmitter`, each with its address and the villages it serves, answering the
commands addressed to it as PROTOCOL.md says: PLAY / TEST / STOP acknowledged (``UNKNOWN_AREA``
when it serves none of the areas), STATUS with its state, a resend (same sequence number)
acknowledged again without broadcasting twice, a frame with a bad CRC answered ``BAD_CRC``.

Fault knobs, per transmitter: ``answer`` = ``ok`` | ``busy`` | ``fault`` | ``unsupported`` |
``never`` (acts, but its answers never arrive); ``drop_answers`` (the next N answers are
lost). On the line: ``bad_crc`` (the fraction of answers sent with a corrupted CRC), and the
common ``latency``, ``silent``, ``garbage``, ``unplug()`` / ``replug()`` of
:class:`~adapters.serial_link.pty_device.PtyDevice`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from adapters.serial_link.pty_device import PtyDevice
from adapters.serial_transmitter.messages import (
    Ack,
    Command,
    CommandKind,
    FaultFlag,
    Garbled,
    ProtocolError,
    Received,
    Reply,
    ResultCode,
    StatusReport,
    TransmitterState,
    normalise_area,
    overlaps,
)
from adapters.serial_transmitter.profiles import (
    DEFAULT_PROFILE,
    FramingProfile,
    UnknownProfile,
    get_profile,
    profile_names,
)
from adapters.simulator_args import fraction

Answer = Literal["ok", "busy", "fault", "unsupported", "never"]
ANSWERS: tuple[Answer, ...] = ("ok", "busy", "fault", "unsupported", "never")


@dataclass(slots=True)
class SimulatedTransmitter:
    """One transmitter controller on the simulated line."""

    address: int
    #: 12-digit codes of the villages (or towns) it serves.
    villages: tuple[str, ...]
    answer: Answer = "ok"
    #: What a BUSY answer says: seconds until free.
    busy_for: int = 30
    #: The next this many answers are lost on the way back (the transmitter still acts).
    drop_answers: int = 0
    frequency_hz: int = 88_100_000
    forward_power_w: float = 50.0
    reflected_power_w: float = 1.0
    faults: FaultFlag = FaultFlag.NONE
    temperature_c: int = 35
    firmware: str = "TOCSIN-SIM-1.0"
    state: TransmitterState = TransmitterState.IDLE
    #: Every command addressed to it, in order, resends included.
    commands: list[tuple[int, Command]] = field(default_factory=list)
    #: Commands it acted on (broadcast, test, stop) — a resend is not acted on twice.
    broadcasts: list[Command] = field(default_factory=list)
    stops: list[Command] = field(default_factory=list)
    status_queries: int = 0
    duplicates: int = 0
    #: The last command acted on: its sequence number and answer (a resend gets it again).
    last: tuple[int, Reply] | None = None

    def serves(self, areas: Sequence[str]) -> bool:
        """Whether any of the command's areas concerns one of its villages (none: all)."""
        return not areas or any(overlaps(a, v) for a in areas for v in self.villages)

    def status(self) -> StatusReport:
        broken = FaultFlag.AMPLIFIER if self.answer == "fault" else FaultFlag.NONE
        return StatusReport(
            state=TransmitterState.FAULT if self.answer == "fault" else self.state,
            frequency_hz=self.frequency_hz,
            forward_power_w=0.0 if self.answer == "fault" else self.forward_power_w,
            reflected_power_w=self.reflected_power_w,
            faults=self.faults | broken,
            temperature_c=self.temperature_c,
            firmware=self.firmware,
        )

    def handle(self, seq: int, command: Command) -> Reply:
        """The answer to ``command`` (and what it does about it)."""
        self.commands.append((seq, command))
        if command.kind is CommandKind.STATUS:
            self.status_queries += 1
            return self.status()
        if self.last is not None and self.last[0] == seq:
            self.duplicates += 1  # a resend: answer again, do not broadcast again
            return self.last[1]
        reply = self._act(command)
        self.last = (seq, reply)
        return reply

    def _act(self, command: Command) -> Ack:
        kind = command.kind
        if self.answer == "unsupported":
            return Ack(kind, ResultCode.UNSUPPORTED)
        if self.answer == "fault":
            return Ack(kind, ResultCode.FAULT, faults=self.faults | FaultFlag.AMPLIFIER)
        if self.answer == "busy" and kind is not CommandKind.STOP:
            return Ack(kind, ResultCode.BUSY, retry_after=self.busy_for)
        if not self.serves(command.areas):
            return Ack(kind, ResultCode.UNKNOWN_AREA, unknown_areas=command.areas)
        if kind is CommandKind.STOP:
            self.stops.append(command)
            self.state = TransmitterState.IDLE
        else:
            self.broadcasts.append(command)
        return Ack(kind, ResultCode.OK)


class TransmitterBusDevice(PtyDevice):
    """A serial line (RS-232 / RS-485) with one or more simulated transmitters on it."""

    description = "wireless-broadcast transmitter controllers"

    def __init__(
        self,
        *,
        transmitters: Sequence[SimulatedTransmitter] | None = None,
        profile: str = DEFAULT_PROFILE,
        link: str | Path | None = None,
        latency: float = 0.0,
        garbage: float = 0.0,
        bad_crc: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(link=link, latency=latency, garbage=garbage, seed=seed)
        if transmitters is None:
            transmitters = [SimulatedTransmitter(1, ("611002101201",))]
        self.transmitters = {t.address: t for t in transmitters}
        self.profile: FramingProfile = get_profile(profile)
        self._decoder = self.profile.decoder()
        self.bad_crc = bad_crc
        #: Frames that could not be read (the adapter's bytes, corrupted on the way).
        self.garbled: list[Garbled] = []

    def __getitem__(self, address: int) -> SimulatedTransmitter:
        return self.transmitters[address]

    def on_plug(self) -> None:
        self._decoder.reset()

    def received(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            if isinstance(item, Garbled):
                self.garbled.append(item)
                self._bad_frame(item)
            elif isinstance(item.message, Command):
                self._command(item)

    def _command(self, item: Received) -> None:
        assert isinstance(item.message, Command)  # noqa: S101 — checked by the caller
        transmitter = self.transmitters.get(item.address)
        if transmitter is None:
            return  # nobody with that address on the bus: silence
        reply = transmitter.handle(item.seq, item.message)
        self._answer(transmitter, item.seq, reply)

    def _bad_frame(self, item: Garbled) -> None:
        if item.seq is None or item.address is None or item.kind is None:
            return
        transmitter = self.transmitters.get(item.address)
        if transmitter is None or not item.reason.startswith("bad CRC"):
            return
        try:
            kind = CommandKind(item.kind & 0x7F)
        except ValueError:
            return
        self._answer(transmitter, item.seq, Ack(kind, ResultCode.BAD_CRC))

    def _answer(self, transmitter: SimulatedTransmitter, seq: int, reply: Reply) -> None:
        if transmitter.answer == "never":
            return
        if transmitter.drop_answers > 0:
            transmitter.drop_answers -= 1
            return
        frame = self.profile.encode_reply(reply, seq=seq, address=transmitter.address)
        if self.bad_crc and self.random.random() < self.bad_crc:
            frame = corrupt_crc(frame)
        self.reply(frame)


def corrupt_crc(frame: bytes) -> bytes:
    """The frame with its last byte changed (not into 7D/7E, which would change its framing):
    a CRC that no longer matches."""
    last = frame[-1] ^ 0x01
    if last in (0x7D, 0x7E):
        last ^= 0x03
    return frame[:-1] + bytes([last])


# -- tocsin simulate modem --profile transmitter ---------------------------------------------------
def parse_transmitters(spec: str) -> list[SimulatedTransmitter]:
    """``"1=611002101201,611002101202;2=611002102000"``: address = villages, ``;`` between
    transmitters."""
    found: list[SimulatedTransmitter] = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        address_text, _, villages_text = part.partition("=")
        try:
            address = int(address_text, 0)
        except ValueError:
            raise ValueError(f"transmitter {part!r}: {address_text!r} is not an address") from None
        if not 1 <= address <= 0xFFFE:
            raise ValueError(f"transmitter {part!r}: address outside 1–65534")
        try:
            villages = tuple(normalise_area(v) for v in villages_text.split(",") if v.strip())
        except ProtocolError as exc:
            raise ValueError(f"transmitter {part!r}: {exc}") from None
        if not villages:
            raise ValueError(f"transmitter {part!r}: give the villages it serves after =")
        found.append(SimulatedTransmitter(address, villages))
    if not found:
        raise ValueError("--transmitters names no transmitter")
    return found


def _answer(raw: str) -> Answer:
    for answer in ANSWERS:
        if raw == answer:
            return answer
    raise argparse.ArgumentTypeError(f"one of {', '.join(ANSWERS)}")


def add_arguments(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--transmitters",
        default="1=611002101201,611002101202;2=611002102000",
        help="the transmitters on the line and the villages each serves: "
        "'ADDR=CODE,CODE;ADDR=CODE' (default: %(default)s)",
    )
    parser.add_argument(
        "--framing",
        default=DEFAULT_PROFILE,
        help=f"framing profile ({', '.join(profile_names())}; default %(default)s)",
    )
    parser.add_argument(
        "--answer",
        type=_answer,
        default="ok",
        help="how every transmitter answers commands: ok, busy, fault, unsupported, or never "
        "(acts but its answers never arrive)",
    )
    parser.add_argument("--busy-for", type=int, default=30, help="seconds a BUSY answer gives")
    parser.add_argument(
        "--bad-crc", type=fraction, default=0.0, help="fraction of answers with a corrupted CRC"
    )


def build(args: argparse.Namespace, *, link: str) -> TransmitterBusDevice:
    transmitters = parse_transmitters(args.transmitters)
    for transmitter in transmitters:
        transmitter.answer = args.answer
        transmitter.busy_for = args.busy_for
    try:
        device = TransmitterBusDevice(
            transmitters=transmitters,
            profile=args.framing,
            link=link,
            bad_crc=args.bad_crc,
            seed=getattr(args, "seed", None),
        )
    except UnknownProfile as exc:
        raise ValueError(str(exc)) from None
    return device


def settings_hint(path: str, *, device: PtyDevice | None = None) -> str:
    """The block for this line: its port, and the transmitters the simulator has on it."""
    ids = (
        [str(a) for a in sorted(device.transmitters)]
        if isinstance(device, TransmitterBusDevice)
        else ["1", "2"]
    )
    listed = ", ".join(f'"{i}"' for i in ids)
    return (
        "[adapters.transmitters]\n"
        'kind = "serial_transmitter"\n'
        'channels = ["transmitter"]\n'
        "concurrency = 1\n"
        "[adapters.transmitters.settings]\n"
        f'port = "{path}"\n'
        "baudrate = 9600\n"
        'profile = "tocsin-v1"\n'
        f"transmitters = [{listed}]\n"
        "command_timeout = 2.0\n"
    )

"""Framing profiles: how commands and replies (``messages.py``) become bytes on the serial line
and back. ``tocsin-v1`` (``framing.py``) is Tocsin's own; a vendor's controller that speaks
its own framing gets a profile class of its own, chosen by name in the adapter's settings
(``profile = "…"``). The adapter and the simulator only use the :class:`FramingProfile`
interface, so nothing else changes for a new profile.

Adding a profile (see README.md, "Adding a vendor profile"):

1. Write a class with the attributes and methods of :class:`FramingProfile`: map each
   :class:`~adapters.serial_transmitter.messages.Command` onto the vendor's frame in
   ``encode_command``, and write a streaming ``decoder()`` that turns received bytes, split
   anywhere, into ``Received`` / ``Garbled`` items with bounded memory.
   ``encode_reply`` lets the simulator play the vendor's device (for tests).
2. Register it: from your own distribution, in the entry-point group
   ``tocsin.transmitter_profiles`` (``acme-v2 = "acme_tocsin.framing:AcmeV2Profile"``); or in
   code with :func:`register_profile` (tests).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from adapters.serial_transmitter.framing import TocsinV1Profile
from adapters.serial_transmitter.messages import Command, ContentKind, Decoded, Reply

ENTRY_POINT_GROUP = "tocsin.transmitter_profiles"
DEFAULT_PROFILE = TocsinV1Profile.name


@runtime_checkable
class FrameDecoder(Protocol):
    """A streaming decoder for one serial line (one per open port)."""

    #: Bytes skipped as noise so far (outside any frame).
    discarded: int

    def feed(self, data: bytes) -> list[Decoded]:
        """The frames completed by ``data`` (a chunk split anywhere). Never raises for what
        the line brings: a frame it cannot read is a ``Garbled`` item."""

    def reset(self) -> None:
        """Forget a partial frame (the port was reopened)."""


@runtime_checkable
class FramingProfile(Protocol):
    """One framing of the transmitter protocol."""

    #: Its name in settings (``profile = "tocsin-v1"``).
    name: str
    #: One line for README tables and ``probe``.
    description: str
    #: Most area codes one command can carry.
    max_areas: int
    #: Most bytes of content (encoded text) one command can carry.
    max_content_bytes: int
    #: Most warnings one STOP (or Update) can name.
    max_references: int
    #: What content the framing can carry (text encodings, stored clips).
    content_kinds: frozenset[ContentKind]
    #: Sequence numbers run 0 … seq_modulus - 1 and wrap.
    seq_modulus: int

    def parse_address(self, text: str) -> int:
        """The line address of ``Dispatch.address``; ``ProtocolError`` when it is not one."""

    def encode_command(self, command: Command, *, seq: int, address: int) -> bytes:
        """The frame for ``command`` to the transmitter at ``address``; ``ProtocolError``
        when the command cannot be expressed (too long, too many areas)."""

    def encode_reply(self, reply: Reply, *, seq: int, address: int) -> bytes:
        """The frame a device answers with (the simulator speaks it)."""

    def decoder(self) -> FrameDecoder:
        """A fresh streaming decoder."""


class UnknownProfile(LookupError):
    """No profile of that name is installed; the message lists those that are."""


ProfileFactory = Callable[[], FramingProfile]

_BUILTIN: dict[str, ProfileFactory] = {TocsinV1Profile.name: TocsinV1Profile}
_registered: dict[str, ProfileFactory] = {}


def register_profile(name: str, factory: ProfileFactory) -> None:
    """Make a profile available by name in this process (tests, embedding applications)."""
    if name in _BUILTIN:
        raise ValueError(f"profile {name!r} is built in and cannot be replaced")
    _registered[name] = factory


def unregister_profile(name: str) -> None:
    _registered.pop(name, None)


def _installed() -> dict[str, ProfileFactory]:
    found: dict[str, ProfileFactory] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    return found


def profile_names() -> list[str]:
    """Every available profile name: built in, installed through entry points, registered."""
    return sorted({*_BUILTIN, *_registered, *_installed()})


def get_profile(name: str) -> FramingProfile:
    factory = _BUILTIN.get(name) or _registered.get(name) or _installed().get(name)
    if factory is None:
        raise UnknownProfile(
            f"unknown framing profile {name!r}; available: {', '.join(profile_names())}"
        )
    profile = factory()
    if profile.name != name:
        raise UnknownProfile(f"profile {name!r} names itself {profile.name!r}; they must match")
    return profile

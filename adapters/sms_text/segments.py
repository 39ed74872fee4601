"""How many SMS segments a text takes, and shortening a text to fit.

A text in the GSM 7-bit alphabet takes 160 characters in one segment and 153 per part when
concatenated (extension characters such as ``€`` count twice); anything else is sent as UCS-2:
70 UTF-16 code units, 67 per part (an emoji is two). Chinese text is always UCS-2. Written here
rather than taken from a library: the only SMS libraries on PyPI that split text are
unmaintained, and the rule is these few lines (the fake server counts independently, and the
tests compare)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True, slots=True)
class Segments:
    encoding: Encoding
    #: Septets (GSM-7) or UTF-16 code units (UCS-2).
    units: int
    count: int


def _sizes(text: str) -> tuple[Encoding, list[int] | None]:
    """The encoding, and each character's size in its units (septets or UTF-16 code units);
    None when every character is one unit (the common case, counted without a list)."""
    if _GSM7_BASIC.issuperset(text):
        return "GSM-7", None
    if (_GSM7_BASIC | _GSM7_EXTENDED).issuperset(text):
        return "GSM-7", [1 if c in _GSM7_BASIC else 2 for c in text]
    if max(text) <= "\uffff":
        return "UCS-2", None
    return "UCS-2", [2 if ord(c) > 0xFFFF else 1 for c in text]


def _count(encoding: Encoding, units: int, sizes: list[int] | None) -> int:
    single, part = (160, 153) if encoding == "GSM-7" else (70, 67)
    if units <= single:
        return 1
    if sizes is None:
        return -(-units // part)
    # Packed part by part: a character is never split between two parts (an emoji's surrogate
    # pair, a GSM escape and its character), so a part may hold one unit less than its size.
    parts, used = 1, 0
    for size in sizes:
        if used + size > part:
            parts, used = parts + 1, 0
        used += size
    return parts


# The same text goes to everyone a warning reaches: counted once.
@functools.lru_cache(maxsize=256)
def count_segments(text: str) -> Segments:
    encoding, sizes = _sizes(text)
    units = len(text) if sizes is None else sum(sizes)
    return Segments(encoding, units, _count(encoding, units, sizes))


@functools.lru_cache(maxsize=256)
def fit(text: str, max_segments: int, *, keep_tail: str = "") -> str:
    """``text`` shortened to at most ``max_segments`` segments: cut before ``keep_tail`` (the
    confirmation request, which must survive) and marked with an ellipsis."""
    if count_segments(text).count <= max_segments:
        return text
    tail = keep_tail if keep_tail and text.endswith(keep_tail) else ""
    head = text[: len(text) - len(tail)] if tail else text
    # Cut by characters until it fits: a few steps from an estimate, never a loop over the text.
    encoding = count_segments(text).encoding
    budget = (153 if encoding == "GSM-7" else 67) * max_segments
    cut = max(0, min(len(head), budget - len(tail) - 1))
    while cut > 0:
        candidate = head[:cut].rstrip() + "…" + tail
        if count_segments(candidate).count <= max_segments:
            return candidate
        cut -= max(1, cut // 50)
    return tail[: budget - 1] if tail else "…"


def split(text: str, *, udh_octets: int = 6) -> tuple[Encoding, tuple[str, ...]]:
    """``text`` as the parts of a concatenated SMS (one part when it fits in one segment).

    A part holds 153 septets (GSM-7) or 67 UTF-16 code units (UCS-2) after a 6-octet
    concatenation header (8-bit reference); ``udh_octets=7`` (16-bit reference) leaves 152 / 66.
    A character is never split between parts: an emoji's surrogate pair and a GSM escape with
    its character stay together, so a part may hold one unit less than its size. With the
    default header the parts are exactly those :func:`count_segments` counts."""
    encoding, sizes = _sizes(text) if text else ("GSM-7", None)
    units = len(text) if sizes is None else sum(sizes)
    if encoding == "GSM-7":
        single, part = 160, (140 - udh_octets) * 8 // 7
    else:
        single, part = 70, (140 - udh_octets) // 2
    if units <= single:
        return encoding, (text,)
    if sizes is None:
        return encoding, tuple(text[i : i + part] for i in range(0, len(text), part))
    parts: list[str] = []
    start, used = 0, 0
    for i, size in enumerate(sizes):
        if used + size > part:
            parts.append(text[start:i])
            start, used = i, 0
        used += size
    parts.append(text[start:])
    return encoding, tuple(parts)

"""Replies from people and devices: the comparison with the confirm words, and phone numbers
as logs may show them. Shared by every adapter that takes replies (Twilio, GSM modems, satellite
terminals), so "１", "收到！" and " y " count the same everywhere."""

from __future__ import annotations

import unicodedata


def normalise_reply(text: str) -> str:
    """A reply as compared with the confirm words: NFKC (full-width ``１`` → ``1``), no
    spaces or punctuation, case-folded."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in folded if not (c.isspace() or unicodedata.category(c)[0] == "P"))


def masked(number: str) -> str:
    """A phone number for logs: enough to tell numbers apart, not enough to call."""
    return number[:-4].rstrip("0123456789") + "…" + number[-4:] if len(number) > 4 else "…"

"""Plain-text tables for the printable reports: columns aligned on a terminal or a printout
whatever the mix of Chinese and Latin text (a Chinese character takes two columns), and times
in China Standard Time."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

#: The reports' clock: the deployments are in China (as the warnings' own texts say).
CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")


def width(text: str) -> int:
    """Columns ``text`` takes: East Asian wide and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, columns: int, *, right: bool = False) -> str:
    fill = " " * max(0, columns - width(text))
    return fill + text if right else text + fill


def table(rows: Sequence[Sequence[str]], *, right: Sequence[bool], gap: str = "  ") -> list[str]:
    """Rows (the first is the heading) as aligned lines; ``right`` says which columns are
    aligned right. Trailing spaces are dropped."""
    widths = [max(width(row[i]) for row in rows) for i in range(len(right))]
    return [
        gap.join(
            pad(cell, w, right=r) for cell, w, r in zip(row, widths, right, strict=True)
        ).rstrip()
        for row in rows
    ]


def china_time(value: object, *, seconds: bool = False) -> str:
    """An ISO 8601 time (or unix seconds) as ``2026-07-12 11:00`` in China Standard Time; the
    text itself when it is not one, '-' when empty."""
    if value is None or value == "":
        return "-"
    try:
        if isinstance(value, int | float):
            moment = datetime.fromtimestamp(float(value), UTC)
        else:
            moment = datetime.fromisoformat(str(value))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return str(value)
    return moment.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")

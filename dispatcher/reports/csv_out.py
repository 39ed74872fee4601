"""CSV as the reports write it: UTF-8 with a byte-order mark (so spreadsheets read the Chinese
text), a header row, CRLF line ends, and text that a spreadsheet would take for a formula
(starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) given a leading ``'``
— as the delivery log's export does (docs/log.md). A phone number therefore reads
``'+8613800000001``, which also keeps a spreadsheet from turning it into a number."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

CSV_MEDIA_TYPE = "text/csv"
BOM = "\ufeff".encode()
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: object) -> object:
    """A value as a CSV cell: None empty, booleans 1/0, numbers as they are, text guarded."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return 1 if value else 0
    if isinstance(value, int | float):
        return value
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def csv_bytes(rows: Iterable[Sequence[Any]]) -> bytes:
    """Rows as CSV lines (no byte-order mark: put :data:`BOM` before the header)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows([cell(v) for v in row] for row in rows)
    return buffer.getvalue().encode("utf-8")


def unguard(text: str) -> str:
    """A cell as written back to its text (for tests and tools reading the CSV)."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_STARTS) else text

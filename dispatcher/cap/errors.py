"""The one exception a CAP message that Tocsin cannot accept raises."""

from __future__ import annotations


class CapError(ValueError):
    """A CAP message was rejected. ``message`` says what is wrong in words a duty officer can
    act on; ``field`` is the CAP element path (e.g. ``alert/info/severity``) when one is to
    blame; ``line`` (1-based) and ``column`` (0-based, as expat counts) locate it in the
    submitted document when they are known."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.message = message
        self.field = field
        self.line = line
        self.column = column
        super().__init__(message + _location(line, column))


def _location(line: int | None, column: int | None) -> str:
    if line is None:
        return ""
    return f" (line {line})" if column is None else f" (line {line}, column {column})"

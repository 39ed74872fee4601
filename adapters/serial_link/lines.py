"""Bytes to lines for sentence protocols (BeiDou ``$…*hh``): split on CR/LF, bounded so that
noise without line ends cannot grow the buffer, undecodable bytes kept visible."""

from __future__ import annotations

from collections.abc import Callable

#: Longer than any sentence a device sends; a longer "line" is noise and is dropped.
MAX_LINE = 4096


class LineSplitter:
    """Feed bytes as they arrive; ``on_line`` gets each non-empty line, decoded as ASCII with
    anything else replaced (a sentence protocol is ASCII; the checksum then rejects it)."""

    def __init__(self, on_line: Callable[[str], None], *, max_line: int = MAX_LINE) -> None:
        self._on_line = on_line
        self._max = max_line
        self._buffer = bytearray()
        #: How many bytes of noise were dropped for being too long a line.
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            cr = self._buffer.find(b"\r")
            lf = self._buffer.find(b"\n")
            ends = [i for i in (cr, lf) if i >= 0]
            if not ends:
                if len(self._buffer) > self._max:
                    self.dropped += len(self._buffer)
                    self._buffer.clear()
                return
            end = min(ends)
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if len(raw) > self._max:
                self.dropped += len(raw)
                continue
            line = raw.decode("ascii", errors="replace").strip()
            if line:
                self._on_line(line)

    def clear(self) -> None:
        self._buffer.clear()

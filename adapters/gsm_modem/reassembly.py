"""Putting the parts of a concatenated inbound SMS back together (a reply is usually one part,
but a phone sends a long one, or one with an emoji in a GSM-7 text, as several)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace

from adapters.gsm_modem.pdu import Deliver


@dataclass(slots=True)
class _Pending:
    first_seen: float
    parts: dict[int, Deliver] = field(default_factory=dict)


class Reassembler:
    """Parts keyed by (sender, reference, part count), bounded in number and age: a part whose
    siblings never come is dropped after ``timeout`` seconds (the sender's phone gave up), and
    at most ``max_messages`` incomplete messages are held (the oldest goes first)."""

    def __init__(self, *, timeout: float = 600.0, max_messages: int = 256) -> None:
        self._timeout = timeout
        self._max = max_messages
        self._pending: OrderedDict[tuple[str, int, int], _Pending] = OrderedDict()
        #: Incomplete messages dropped (timed out or pushed out).
        self.dropped = 0

    def add(self, message: Deliver, now: float) -> Deliver | None:
        """The whole message when ``message`` completes it (or is a single one), else None."""
        concat = message.concatenation
        if concat is None or concat.parts <= 1:
            return replace(message, concatenation=None)
        self._prune(now)
        key = (message.sender, concat.reference, concat.parts)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(now)
            while len(self._pending) > self._max:
                self._pending.popitem(last=False)
                self.dropped += 1
        pending.parts[concat.part] = message
        if len(pending.parts) < concat.parts:
            return None
        del self._pending[key]
        ordered = [pending.parts[i] for i in range(1, concat.parts + 1)]
        return replace(ordered[0], text="".join(p.text for p in ordered), concatenation=None)

    def _prune(self, now: float) -> None:
        while self._pending:
            key, oldest = next(iter(self._pending.items()))
            if now - oldest.first_seen <= self._timeout:
                break
            del self._pending[key]
            self.dropped += 1

    def __len__(self) -> int:
        return len(self._pending)

"""The loudspeaker MQTT protocol, version 1: topics and payloads, as documented for speaker
vendors in ``adapters/mqtt_speaker/PROTOCOL.md``. Pure functions, no I/O: the adapter, the
fleet simulator and the tests share them, so the two ends cannot drift apart.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: The version every payload carries as ``"v"``; a speaker ignores versions it does not know.
PROTOCOL_VERSION = 1
DEFAULT_ROOT = "tocsin/v1"
#: Longest ``text`` a speaker must accept (bytes, UTF-8); longer texts are cut at a sentence.
MAX_TEXT_BYTES = 4000


class AckState(enum.StrEnum):
    """What a speaker reports about one warning, in this order (``failed`` at any point)."""

    RECEIVED = "received"
    PLAYING = "playing"
    PLAYED = "played"
    FAILED = "failed"
    #: After a Cancel: the speaker stopped (or was not playing) the referenced warning.
    STOPPED = "stopped"


class DeviceState(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class ProtocolError(ValueError):
    """A payload or topic that does not follow the protocol; the message says what is wrong."""


# -- topics -------------------------------------------------------------------------------------
def _check_level(value: str, what: str) -> str:
    if not value or any(c in value for c in "/+#\0"):
        raise ProtocolError(f"{what} {value!r} cannot be used in a topic (empty, or has / + # NUL)")
    return value


def area_alert_topic(root: str, area_code: str) -> str:
    return f"{root}/area/{_check_level(area_code, 'area code')}/alert"


def device_topic(root: str, device_id: str, leaf: str) -> str:
    return f"{root}/device/{_check_level(device_id, 'device id')}/{leaf}"


def ack_subscription(root: str, shared_group: str | None = None) -> str:
    """Every speaker's acks; with ``shared_group``, as an MQTT shared subscription
    (``$share/<group>/…``): the broker gives each ack to one member of the group only."""
    topic = f"{root}/device/+/ack"
    if shared_group is None:
        return topic
    return f"$share/{_check_level(shared_group, 'shared group')}/{topic}"


def state_subscription(root: str) -> str:
    return f"{root}/device/+/state"


def device_of(root: str, topic: str) -> tuple[str, str] | None:
    """``(device_id, leaf)`` for ``{root}/device/{device_id}/{leaf}``, else None."""
    prefix = f"{root}/device/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :].split("/")
    if len(rest) != 2 or not rest[0]:
        return None
    return rest[0], rest[1]


# -- alerts (dispatcher → speaker) --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Alert:
    """What a speaker is told to play (or, for a Cancel, to stop)."""

    id: str
    status: str
    type: str
    level: str
    event: str
    headline: str
    text: str
    sent: datetime
    expires: datetime
    repeat: int = 2
    volume: int | None = None
    audio_url: str | None = None
    audio_sha256: str | None = None
    #: Warning ids this one updates or cancels (a speaker stops playing them).
    references: tuple[str, ...] = ()
    #: Set on per-device publishes (retries, tests): the dispatcher's delivery id, echoed in the
    #: speaker's acks.
    delivery: int | None = None

    def payload(self) -> bytes:
        body: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "id": self.id,
            "status": self.status,
            "type": self.type,
            "level": self.level,
            "event": self.event,
            "headline": self.headline,
            "text": _cut(self.text, MAX_TEXT_BYTES),
            "repeat": self.repeat,
            "sent": self.sent.isoformat(),
            "expires": self.expires.isoformat(),
        }
        if self.volume is not None:
            body["volume"] = self.volume
        if self.audio_url:
            body["audio"] = {"url": self.audio_url, "sha256": self.audio_sha256}
        if self.references:
            body["references"] = list(self.references)
        if self.delivery is not None:
            body["delivery"] = self.delivery
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _cut(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    cut = raw[:limit].decode(errors="ignore")
    end = cut.rfind("。")
    return cut[: end + 1] if end > 0 else cut


def parse_alert(payload: bytes) -> Alert:
    """Parse an alert (what a speaker does); :class:`ProtocolError` names what is wrong."""
    body = _object(payload, "alert")
    audio = body.get("audio", {})
    if not isinstance(audio, dict):
        raise ProtocolError("alert: audio must be an object with url and sha256")
    references = body.get("references", [])
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise ProtocolError("alert: references must be a list of warning ids")
    repeat = _optional_int(body, "repeat")
    volume = _optional_int(body, "volume")
    if volume is not None and volume > 100:
        raise ProtocolError("alert: volume must be 0–100")
    return Alert(
        id=_str(body, "id"),
        status=_str(body, "status"),
        type=_str(body, "type"),
        level=_str(body, "level"),
        event=str(body.get("event", "")),
        headline=str(body.get("headline", "")),
        text=_str(body, "text"),
        sent=_time(body, "sent"),
        expires=_time(body, "expires"),
        repeat=repeat if repeat else 1,
        volume=volume,
        audio_url=audio.get("url"),
        audio_sha256=audio.get("sha256"),
        references=tuple(references),
        delivery=_optional_int(body, "delivery"),
    )


def _time(body: Mapping[str, Any], key: str) -> datetime:
    """An ISO 8601 time with its UTC offset (speakers compare it with their own clock)."""
    text = _str(body, key)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ProtocolError(f"field {key!r} is not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise ProtocolError(f"field {key!r} has no UTC offset: {text!r}")
    return value


# -- acks (speaker → dispatcher) ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ack:
    warning_id: str
    state: AckState
    #: The speaker's own clock (seconds since the epoch), if it sent one.
    ts: float | None = None
    plays: int | None = None
    error: str = ""
    #: The delivery id, when the alert carried one.
    delivery: int | None = None

    def payload(self) -> bytes:
        body: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": self.warning_id, "state": self.state}
        if self.ts is not None:
            body["ts"] = self.ts
        if self.plays is not None:
            body["plays"] = self.plays
        if self.error:
            body["error"] = self.error
        if self.delivery is not None:
            body["delivery"] = self.delivery
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def parse_ack(payload: bytes) -> Ack:
    """Parse an ack; :class:`ProtocolError` names the first thing wrong with it."""
    body = _object(payload, "ack")
    state_text = _str(body, "state")
    try:
        state = AckState(state_text)
    except ValueError:
        raise ProtocolError(
            f"ack: state {state_text!r} is not one of {', '.join(s.value for s in AckState)}"
        ) from None
    ts = body.get("ts")
    if ts is not None and (
        isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)
    ):
        raise ProtocolError("ack: ts must be a number of seconds since the epoch")
    plays = _optional_int(body, "plays")
    error = body.get("error", "")
    if not isinstance(error, str):
        raise ProtocolError("ack: error must be a string")
    return Ack(
        warning_id=_str(body, "id"),
        state=state,
        ts=float(ts) if ts is not None else None,
        plays=plays,
        error=error[:200],
        delivery=_optional_int(body, "delivery"),
    )


# -- device state (speaker → dispatcher, retained; last will "offline") -------------------------
@dataclass(frozen=True, slots=True)
class StateMessage:
    state: DeviceState
    ts: float | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> bytes:
        body: dict[str, Any] = dict(self.detail)
        body.update({"v": PROTOCOL_VERSION, "state": self.state.value})
        if self.ts is not None:
            body["ts"] = self.ts
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


#: What a speaker's state may say of itself besides online/offline (kept, shown in the API):
#: firmware version, volume 0–100, signal (dBm), seconds since boot, its heartbeat interval in
#: seconds, the id of the warning it is playing.
STATE_DETAIL_FIELDS = ("fw", "volume", "rssi", "uptime", "heartbeat", "playing")


def parse_state(payload: bytes) -> StateMessage:
    """A state message. A bare ``online`` / ``offline`` (some firmwares' last will) is
    accepted too."""
    text = payload.strip()
    if text in (b"online", b"offline"):
        return StateMessage(DeviceState(text.decode()))
    body = _object(payload, "state")
    state_text = _str(body, "state")
    try:
        state = DeviceState(state_text)
    except ValueError:
        raise ProtocolError(f"state: {state_text!r} is neither online nor offline") from None
    ts = body.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
        raise ProtocolError("state: ts must be a number of seconds since the epoch")
    detail = {k: body[k] for k in STATE_DETAIL_FIELDS if k in body and _small(body[k])}
    return StateMessage(state, float(ts) if ts is not None else None, detail)


# -- helpers ------------------------------------------------------------------------------------
def _object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"{what}: not JSON ({_preview(payload)})") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"{what}: not a JSON object")
    version = body.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"{what}: protocol version {version!r}, expected {PROTOCOL_VERSION}")
    return body


def _str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"field {key!r} must be a non-empty string")
    return value


def _optional_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ProtocolError(f"field {key!r} must be a non-negative integer")
    return value


def _small(value: object) -> bool:
    return isinstance(value, str | int | float | bool) and len(str(value)) <= 100


def _preview(payload: bytes) -> str:
    return repr(payload[:40]) + ("…" if len(payload) > 40 else "")

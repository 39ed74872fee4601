"""``[adapters.<name>.settings]`` of an ``mqtt_speaker`` instance."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)

from adapters.mqtt_speaker.protocol import DEFAULT_ROOT
from dispatcher.durations import Seconds


class MqttSpeakerSettings(BaseModel):
    """The broker and how Tocsin talks to the speakers behind it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    #: A secret reference (``env:MQTT_PASSWORD``, ``file:/path``, ``credential:name``).
    password: SecretStr | None = None
    tls: bool = False
    #: CA bundle that signed the broker's certificate (the system's when absent).
    ca_file: FilePath | None = None
    #: Client certificate and key, when the broker requires one.
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    #: MQTT client ids are ``<client_id>-pub`` and ``<client_id>-acks``; unique per node (with
    #: ``shared_group``, ``<client_id>-<node>-pub`` and ``-acks``: the node's name makes them so).
    client_id: str = Field("tocsin", min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: Several dispatcher nodes: the MQTT shared-subscription group their ack connections join
    #: (``$share/<group>/<topic_root>/device/+/ack``), so each ack reaches one node. Every node
    #: still sees every speaker's state. The ack connection then keeps no session (README).
    shared_group: str | None = Field(None, max_length=64)
    topic_root: str = Field(DEFAULT_ROOT, min_length=1, pattern=r"^[^+#]+[^/+#]$")
    keepalive: Seconds = 30.0
    #: How long start() waits for the broker before reporting "not ready".
    connect_timeout: Seconds = 10.0
    #: How long one publish waits for the broker's PUBACK before the delivery is retried.
    publish_timeout: Seconds = 10.0
    #: Publishes awaiting a PUBACK at once; more wait their turn (never an unbounded pile).
    publish_concurrency: int = Field(200, ge=1, le=10_000)
    reconnect_min: Seconds = 0.5
    reconnect_max: Seconds = 30.0
    #: How long the broker keeps the ack connection's session (and the acks queued in it) while
    #: the dispatcher is away, e.g. restarting.
    ack_session_expiry: Seconds = 3600.0
    #: MQTT version of the ack connection. Alerts always use MQTT 5 (message expiry); acks need
    #: no MQTT 5 feature, and paho decodes 3.1.1 messages about twice as fast (bench/RESULTS.md).
    ack_protocol: Literal["5", "3.1.1"] = "3.1.1"
    #: How many times a speaker plays each alert.
    repeat: int = Field(2, ge=1, le=10)
    #: Volume the speakers are asked to play at (0–100); their own setting when absent.
    volume: int | None = Field(None, ge=0, le=100)
    #: How long after its last message an "online" speaker counts as silent (heartbeats stopped
    #: without a last will, e.g. after a broker restart). Shown in probes; silent speakers are
    #: still sent to.
    heartbeat_timeout: Seconds = 300.0
    #: How long probe() listens for the speakers' retained states.
    probe_listen: Seconds = 2.0

    @field_validator("shared_group")
    @classmethod
    def _one_topic_level(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/+#\0")):
            raise ValueError(
                "a shared subscription group is one MQTT topic level: not empty, "
                "no '/', '+', '#' or NUL"
            )
        return value

    @model_validator(mode="after")
    def _tls_files(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "cert_file and key_file go together (a client certificate and its key)"
            )
        uses_files = self.ca_file or self.cert_file
        if uses_files and not self.tls:
            raise ValueError("ca_file/cert_file are given but tls is false; set tls = true")
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min is larger than reconnect_max")
        return self

    def tls_paths(self) -> list[Path]:
        return [p for p in (self.ca_file, self.cert_file, self.key_file) if p is not None]

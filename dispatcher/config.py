"""Typed configuration loaded from TOML files.

Every error names the file, the key and what is wrong; secrets are resolved from references
(:mod:`dispatcher.secrets`) and never appear in errors, logs or ``repr``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from dispatcher.domain import Channel
from dispatcher.durations import Seconds
from dispatcher.policy import Policy
from dispatcher.schedules.spec import ScheduleSpec
from dispatcher.secrets import SecretError, resolve_secret

if TYPE_CHECKING:
    from dispatcher.adapter_config import AdapterSpec


class ApiRole(enum.StrEnum):
    DUTY_OFFICER = "duty_officer"
    OPERATOR = "operator"
    INSTALLER = "installer"
    ADMIN = "admin"
    #: A grid member (网格员) confirming households reached door-to-door, for their own grids;
    #: the token names the person (``person_id``).
    GRID_MEMBER = "grid_member"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    #: Seconds to wait for in-flight requests on shutdown.
    shutdown_timeout: Seconds = 10.0


class StoreConfig(_Model):
    #: SQLite database file, relative to the config file's folder unless absolute (the
    #: embedded default: one node).
    path: str = "var/tocsin.db"
    #: Or a PostgreSQL database (libpq DSN, ``postgresql://user@host/db`` or ``host=… dbname=…``):
    #: several nodes may share it. No password here: ``password_secret``, or libpq's own
    #: ~/.pgpass / PGPASSFILE.
    dsn: str | None = None
    #: A secret reference (env:, file:, credential:) holding the database password.
    password_secret: str | None = None

    @model_validator(mode="after")
    def _dsn_without_password(self) -> Self:
        if self.dsn is None:
            if self.password_secret is not None:
                raise ValueError("password_secret is for a PostgreSQL dsn; no dsn is given")
            return self
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict

        try:
            parts = conninfo_to_dict(self.dsn)
        except ProgrammingError:
            # Never echo the DSN: it may hold a password.
            raise ValueError("dsn: not a valid PostgreSQL connection string") from None
        if parts.get("password"):
            raise ValueError(
                "dsn: holds a password; put it in password_secret (a secret reference) instead"
            )
        return self


class NodeConfig(_Model):
    """This dispatcher node among several on one PostgreSQL database (docs/deployment.md)."""

    #: The node's name, unique among the nodes on the database (default: the host name);
    #: ``tocsin serve --node NAME`` overrides it. At most 56 characters: PostgreSQL keeps 63
    #: bytes of a connection's application_name, "tocsin <name> scheduler", which is how
    #: GET /v1/nodes finds the scheduler's leader.
    name: (
        Annotated[str, Field(min_length=1, max_length=56, pattern=r"^[A-Za-z0-9_.:-]+$")] | None
    ) = None
    #: How often the node says it is alive (its row in /v1/nodes).
    heartbeat: Seconds = 5.0
    #: A node not heard from for this long is shown as gone.
    dead_after: Seconds = 30.0
    #: How often a node not leading the scheduler tries to take the lead; a leader that dies
    #: is replaced within this (PostgreSQL frees its lock when its connection drops).
    leader_check: Seconds = 2.0


class SyntheticDirectoryConfig(_Model):
    """Parameters of the synthetic city generator (:mod:`dispatcher.synthetic`)."""

    counties: Annotated[int, Field(ge=1, le=50)] = 1
    towns_per_county: Annotated[int, Field(ge=1, le=100)] = 4
    villages_per_town: Annotated[int, Field(ge=1, le=100)] = 5
    grids_per_village: Annotated[int, Field(ge=1, le=50)] = 4
    households_per_grid: Annotated[int, Field(ge=1, le=500)] = 20
    persons_per_household: Annotated[float, Field(ge=1.0, le=10.0)] = 3.0
    seed: int = 1


class DirectoryConfig(_Model):
    #: Load the directory from these CSV files at start when the store's directory is empty.
    csv_dir: str | None = None
    #: Or generate a synthetic city at start when the store's directory is empty (the demo).
    synthetic: SyntheticDirectoryConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.csv_dir is not None and self.synthetic is not None:
            raise ValueError("set either csv_dir or synthetic, not both")
        return self


class PolicyConfig(_Model):
    #: The level policy file, relative to the config file's folder unless absolute.
    file: str = "policy.toml"


class CapConfig(_Model):
    #: CAP <sender> for warnings posted as JSON.
    sender: str = Field(default="tocsin@localhost", min_length=1)
    #: Expiry given to a JSON warning that names none.
    default_expiry: Seconds = 6 * 3600.0
    #: Longest expiry accepted; a warning must be re-issued after that.
    max_expiry: Seconds = 7 * 86400.0


class TokenConfig(_Model):
    """An API bearer token, stored as the SHA-256 of the token (tokens are random, 32+ bytes)."""

    name: str = Field(min_length=1)
    role: ApiRole
    #: Hex SHA-256 of the token, as printed by ``tocsin token new``.
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    #: Or a secret reference (env:, file:, credential:) holding that hex digest.
    sha256_secret: str | None = None
    #: For role grid_member: the directory person the token belongs to.
    person_id: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_hash(self) -> Self:
        if (self.sha256 is None) == (self.sha256_secret is None):
            raise ValueError("give exactly one of sha256 or sha256_secret")
        if (self.role is ApiRole.GRID_MEMBER) != (self.person_id is not None):
            raise ValueError("person_id is required for role grid_member, and only for it")
        return self


class ApiConfig(_Model):
    tokens: tuple[TokenConfig, ...] = ()


class EngineConfig(_Model):
    """How the engine claims, retries and escalates (see docs/engine.md)."""

    #: Deliveries claimed per batch (the adapter's max_batch and rate limit may cut it).
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    #: How long a claimed delivery stays leased; a crashed engine's work is claimed again after.
    lease: Seconds = 120.0
    #: Exponential backoff between attempts: retry_base × 2^(attempt-1), capped, with jitter.
    retry_base: Seconds = 5.0
    retry_cap: Seconds = 600.0
    #: How long a loudspeaker or transmitter has to report played before it is sent again.
    device_ack_timeout: Seconds = 120.0
    #: How long a visit task collects unreached households before it goes to the grid member.
    visit_delay: Seconds = 120.0
    #: On SIGTERM: how long in-flight sends may take before the daemon stops anyway.
    drain_timeout: Seconds = 10.0
    #: Acknowledgements and status reports recorded per transaction.
    report_batch: Annotated[int, Field(ge=1, le=100_000)] = 2000
    #: A device that said it was online but has not been heard from for this long is shown
    #: as silent (its heartbeats stopped without a last will; GET /v1/devices).
    device_heartbeat_timeout: Annotated[Seconds, Field(gt=0)] = 300.0


class AdapterInstanceConfig(_Model):
    """One adapter instance, ``[adapters.<name>]``."""

    #: The adapter kind (entry-point name in group tocsin.adapters), e.g. "simulated".
    kind: str = Field(min_length=1)
    #: The channels this instance serves; default: every channel of its kind.
    channels: tuple[Channel, ...] = ()
    #: Token bucket: sends per second (None: unlimited) and the burst allowed.
    rate_per_second: Annotated[float, Field(gt=0)] | None = None
    burst: Annotated[int, Field(ge=1)] | None = None
    #: Largest batch handed to send(); default: the kind's max_batch.
    batch_size: Annotated[int, Field(ge=1, le=10_000)] | None = None
    #: A send() that takes longer is abandoned and its deliveries retried.
    send_timeout: Seconds = 30.0
    #: Batches handed to this instance at once.
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    #: Circuit breaker: after this many consecutive failed batches the instance is paused
    #: for breaker_pause seconds (its deliveries fall over to the next channel, if any).
    breaker_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    breaker_pause: Seconds = 30.0
    #: Kind-specific settings, validated by the kind's own model.
    settings: dict[str, Any] = Field(default_factory=dict)


class LoggingConfig(_Model):
    level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")


class TocsinConfig(_Model):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    node: NodeConfig = NodeConfig()
    directory: DirectoryConfig = DirectoryConfig()
    policy: PolicyConfig = PolicyConfig()
    cap: CapConfig = CapConfig()
    api: ApiConfig = ApiConfig()
    engine: EngineConfig = EngineConfig()
    #: Adapter instances by name, in order of preference per channel.
    adapters: dict[str, AdapterInstanceConfig] = Field(default_factory=dict)
    logging: LoggingConfig = LoggingConfig()
    #: Scheduled test broadcasts and drills, ``[[schedules]]`` (docs/schedules.md).
    schedules: tuple[ScheduleSpec, ...] = ()


class ConfigError(Exception):
    """Configuration problems, each as ``file: key: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ApiToken:
    name: str
    role: ApiRole
    digest: SecretStr
    #: The directory person behind a grid_member token.
    person_id: str | None = None

    def matches(self, token: str) -> bool:
        candidate = hashlib.sha256(token.encode("utf-8")).hexdigest()
        return hmac.compare_digest(candidate, self.digest.get_secret_value())


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config with paths made absolute, secrets resolved and the policy loaded."""

    path: Path
    settings: TocsinConfig
    policy: Policy
    policy_path: Path
    store_path: Path
    csv_dir: Path | None
    tokens: tuple[ApiToken, ...]
    #: The configured adapter instances, their settings validated by their kinds.
    adapters: tuple[AdapterSpec, ...] = ()
    #: The PostgreSQL DSN with its password resolved; None: the SQLite file ``store_path``.
    store_dsn: SecretStr | None = None
    #: This node's name ([node] name, or the host name).
    node_name: str = "tocsin"

    @property
    def store_target(self) -> Path | str:
        """What the directory tools open: the SQLite file, or the PostgreSQL DSN (a secret:
        never log it; log :attr:`store_location`)."""
        return self.store_path if self.store_dsn is None else self.store_dsn.get_secret_value()

    @property
    def store_location(self) -> str:
        """Where the store is, for logs: the file, or the DSN without a password."""
        if self.store_dsn is None:
            return str(self.store_path)
        from dispatcher.store.pg_base import redact_dsn

        return redact_dsn(self.store_dsn.get_secret_value())


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _validation_problems(path: Path, error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        loc = tuple(p for p in item["loc"] if not str(p).startswith("function-"))
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against the production template)"
        problems.append(f"{path}: {format_loc(loc)}: {msg}")
    return problems


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file does not exist"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None


def load_policy(path: Path) -> Policy:
    data = _read_toml(path)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_validation_problems(path, exc)) from None


def load_config(path: str | Path) -> LoadedConfig:
    """Load and validate a config file and the policy it names; raise ConfigError listing all
    problems found."""
    config_path = Path(path).resolve()
    data = _read_toml(config_path)
    try:
        settings = TocsinConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_validation_problems(config_path, exc)) from None

    base = config_path.parent
    problems: list[str] = []

    policy_path = _relative(base, settings.policy.file)
    policy: Policy | None = None
    try:
        policy = load_policy(policy_path)
    except ConfigError as exc:
        problems.extend(f"{p} (policy.file in {config_path})" for p in exc.problems)

    tokens: list[ApiToken] = []
    for index, token in enumerate(settings.api.tokens):
        if token.sha256 is not None:
            tokens.append(
                ApiToken(token.name, token.role, SecretStr(token.sha256), token.person_id)
            )
            continue
        try:
            digest = resolve_secret(token.sha256_secret or "", base_dir=base)
        except SecretError as exc:
            problems.append(f"{config_path}: api.tokens[{index}].sha256_secret: {exc}")
            continue
        value = digest.get_secret_value().strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            problems.append(
                f"{config_path}: api.tokens[{index}].sha256_secret: the secret must hold a "
                "64-character hex SHA-256 digest (see `tocsin token new`)"
            )
            continue
        tokens.append(ApiToken(token.name, token.role, SecretStr(value), token.person_id))
    names = [t.name for t in settings.api.tokens]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{config_path}: api.tokens: token name {name!r} is used twice")
    schedule_ids = [s.id for s in settings.schedules]
    for sid in sorted({s for s in schedule_ids if schedule_ids.count(s) > 1}):
        problems.append(f"{config_path}: schedules: schedule id {sid!r} is used twice")

    csv_dir = None
    if settings.directory.csv_dir is not None:
        csv_dir = _relative(base, settings.directory.csv_dir)
        if not csv_dir.is_dir():
            problems.append(f"{config_path}: directory.csv_dir: {csv_dir} is not a folder")

    from dispatcher.adapter_config import build_adapter_specs

    adapters, adapter_problems = build_adapter_specs(config_path, settings.adapters, base)
    problems.extend(adapter_problems)
    for name, instance in settings.adapters.items():
        if instance.send_timeout >= settings.engine.lease:
            problems.append(
                f"{config_path}: adapters.{name}.send_timeout: must be shorter than engine.lease "
                f"({settings.engine.lease:g}s), or a slow send would be claimed twice"
            )

    store_dsn: SecretStr | None = None
    if settings.store.dsn is not None:
        dsn = settings.store.dsn
        if settings.store.password_secret is not None:
            try:
                password = resolve_secret(settings.store.password_secret, base_dir=base)
            except SecretError as exc:
                problems.append(f"{config_path}: store.password_secret: {exc}")
            else:
                from psycopg.conninfo import make_conninfo

                dsn = make_conninfo(dsn, password=password.get_secret_value())
        store_dsn = SecretStr(dsn)

    if problems or policy is None:
        raise ConfigError(problems)
    return LoadedConfig(
        path=config_path,
        settings=settings,
        policy=policy,
        policy_path=policy_path,
        store_path=_relative(base, settings.store.path),
        csv_dir=csv_dir,
        tokens=tuple(tokens),
        adapters=adapters,
        store_dsn=store_dsn,
        node_name=settings.node.name or default_node_name(),
    )


def default_node_name() -> str:
    """The host's name, as a node's name may be: its first label, other characters as ``-``,
    at most 56 characters."""
    label = socket.gethostname().split(".")[0] or "tocsin"
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", label)[:56]


def _relative(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else (base / path).resolve()

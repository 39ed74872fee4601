"""Adapter instances in the config (``[adapters.<name>]``): the kind is found through the
``tocsin.adapters`` entry points, its settings are validated by the kind's own model, secret
settings are resolved from references and never shown, and every problem names the file and
the key."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from adapters.simulated import SimulatedAdapter, SimulatedSettings
from dispatcher.adapter import Outcome, ProbeResult
from dispatcher.adapter_config import build_adapter_specs
from dispatcher.config import AdapterInstanceConfig, ApiRole, ConfigError, load_config
from dispatcher.domain import Channel

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "config" / "policy.toml"

#: The minimum of config/demo.toml a config needs, with the policy by absolute path.
BASE = f"""
[store]
path = "var/test.db"

[policy]
file = "{POLICY}"

[[api.tokens]]
name = "desk"
role = "duty_officer"
sha256 = "{"ab" * 32}"
"""


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tocsin.toml"
    path.write_text(BASE + body, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


# -- test-only kinds (passed to build_adapter_specs with kinds=) --------------------------------


class _VaultSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account: str
    token: SecretStr


class _VaultAdapter:
    """A kind with a secret setting and only the sms channel."""

    kind: ClassVar[str] = "vault_sms"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.SMS})
    settings_model: ClassVar[type[BaseModel]] = _VaultSettings
    max_batch: ClassVar[int] = 50
    description: ClassVar[str] = "test-only kind with a secret"

    def __init__(self, *, name: str, settings: _VaultSettings) -> None:
        self._name = name
        self.settings = settings

    def __repr__(self) -> str:
        return f"_VaultAdapter(name={self._name!r}, settings={self.settings!r})"

    @property
    def name(self) -> str:
        return self._name

    async def start(self, context: Any) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, batch: Sequence[Any]) -> Sequence[Outcome]:
        return []

    async def probe(self) -> ProbeResult:
        return ProbeResult(ok=True, summary="vault")


class _WindowSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    opens: int = 0
    closes: int = 1

    @model_validator(mode="after")
    def _ordered(self) -> _WindowSettings:
        if self.closes <= self.opens:
            raise ValueError("closes must come after opens")
        return self


class _WindowAdapter(_VaultAdapter):
    """A kind whose settings model checks two fields together (a model-level error)."""

    kind: ClassVar[str] = "window"
    settings_model: ClassVar[type[BaseModel]] = _WindowSettings


KINDS: dict[str, Any] = {
    "vault_sms": _VaultAdapter,
    "window": _WindowAdapter,
    "simulated": SimulatedAdapter,
}


def build(tmp_path: Path, **instances: dict[str, Any]) -> tuple[tuple[Any, ...], list[str]]:
    configs = {name: AdapterInstanceConfig.model_validate(raw) for name, raw in instances.items()}
    return build_adapter_specs(tmp_path / "tocsin.toml", configs, tmp_path, kinds=KINDS)


# -- through load_config -----------------------------------------------------------------------


def test_simulated_instances_load(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
[adapters.sim_sms]
kind = "simulated"
channels = ["sms"]
rate_per_second = 50

[adapters.sim_sms.settings]
ack_probability = 0.8
ack_delay = "3s"

[adapters.sim_devices]
kind = "simulated"
batch_size = 5000
""",
    )
    config = load_config(path)
    sms, devices = config.adapters
    assert sms.name == "sim_sms"
    assert sms.factory is SimulatedAdapter
    assert sms.channels == frozenset({Channel.SMS})
    assert sms.config.rate_per_second == 50
    assert isinstance(sms.settings, SimulatedSettings)
    assert (sms.settings.ack_probability, sms.settings.ack_delay) == (0.8, 3.0)
    assert sms.batch_size == SimulatedAdapter.max_batch
    # Channels default to every channel of the kind; batch_size is capped at max_batch.
    assert devices.channels == frozenset(Channel)
    assert devices.settings == SimulatedSettings()
    assert devices.batch_size == 1000
    adapter = sms.create()
    assert isinstance(adapter, SimulatedAdapter)
    assert adapter.name == "sim_sms"
    assert adapter.settings is sms.settings


def test_unknown_kind(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[adapters.x]\nkind = "carrier_pigeon"\n')
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: adapters.x.kind: unknown adapter kind 'carrier_pigeon'")
    assert "simulated" in problem


def test_unknown_kind_with_none_installed(tmp_path: Path) -> None:
    specs, problems = build_adapter_specs(
        tmp_path / "t.toml",
        {"x": AdapterInstanceConfig(kind="simulated")},
        tmp_path,
        kinds={},
    )
    assert specs == ()
    assert problems == [
        f"{tmp_path / 't.toml'}: adapters.x.kind: unknown adapter kind 'simulated' "
        "(installed: none)"
    ]


def test_channel_that_is_not_a_channel(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[adapters.x]\nkind = "simulated"\nchannels = ["fax"]\n')
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: adapters.x.channels[0]: ")
    assert "'sms'" in problem


def test_channel_the_kind_cannot_serve(tmp_path: Path) -> None:
    specs, problems = build(
        tmp_path,
        x={"kind": "vault_sms", "channels": ["sms", "voice", "speaker"], "settings": {}},
    )
    assert specs == ()
    assert problems == [
        f"{tmp_path / 'tocsin.toml'}: adapters.x.channels: kind vault_sms cannot serve "
        "speaker, voice (it serves sms)"
    ]


def test_unknown_setting(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[adapters.x]\nkind = "simulated"\n[adapters.x.settings]\nack_dalay = "3s"\n',
    )
    assert problems_of(path) == [
        f"{path}: adapters.x.settings.ack_dalay: unknown setting for kind simulated"
    ]


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ('failure_rate = "lots"', "valid number"),
        ("failure_rate = 1.5", "less than or equal to 1"),
        ('ack_delay = "soon"', "not a duration"),
        ('fail_addresses = "+8613800000000"', "tuple"),
        ("delivered_report = 3", "boolean"),
        ("seed = 1.5", "integer"),
    ],
)
def test_bad_setting_names_the_field(tmp_path: Path, setting: str, words: str) -> None:
    path = write_config(
        tmp_path, f'[adapters.x]\nkind = "simulated"\n[adapters.x.settings]\n{setting}\n'
    )
    (problem,) = problems_of(path)
    key = setting.split(" ", maxsplit=1)[0]
    assert problem.startswith(f"{path}: adapters.x.settings.{key}: ")
    assert words in problem


def test_rates_that_add_up_to_more_than_one_name_a_key(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[adapters.x]\nkind = "simulated"\n'
        "[adapters.x.settings]\nfailure_rate = 0.7\nretry_rate = 0.4\n",
    )
    assert problems_of(path) == [
        f"{path}: adapters.x.settings.retry_rate: failure_rate + retry_rate cannot exceed 1"
    ]


def test_every_adapter_problem_is_reported(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
[adapters.a]
kind = "nope"

[adapters.b]
kind = "simulated"
[adapters.b.settings]
latency = "fast"
hang_rate = 2

[adapters.c]
kind = "simulated"
""",
    )
    problems = problems_of(path)
    assert [p.split(": ")[1] for p in problems] == [
        "adapters.a.kind",
        "adapters.b.settings.latency",
        "adapters.b.settings.hang_rate",
    ]


def test_instance_keys_are_checked(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, '[adapters.x]\nkind = "simulated"\nrate_per_second = 0\nbatchsize = 5\n'
    )
    problems = problems_of(path)
    assert sorted(p.split(": ")[1] for p in problems) == [
        "adapters.x.batchsize",
        "adapters.x.rate_per_second",
    ]


def test_model_level_setting_error_names_the_settings_table(tmp_path: Path) -> None:
    _, problems = build(tmp_path, x={"kind": "window", "settings": {"opens": 5, "closes": 2}})
    assert problems == [
        f"{tmp_path / 'tocsin.toml'}: adapters.x.settings: closes must come after opens"
    ]


# -- secret settings ---------------------------------------------------------------------------


def test_secret_setting_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "tw-auth-9f8e7d6c5b4a"
    monkeypatch.setenv("TOCSIN_TEST_VAULT_TOKEN", secret)
    specs, problems = build(
        tmp_path,
        vault={
            "kind": "vault_sms",
            "settings": {"account": "AC123", "token": "env:TOCSIN_TEST_VAULT_TOKEN"},
        },
    )
    assert problems == []
    (spec,) = specs
    assert isinstance(spec.settings, _VaultSettings)
    assert spec.settings.token.get_secret_value() == secret
    assert spec.settings.account == "AC123"
    adapter = spec.create()
    for shown in (
        repr(spec),
        str(spec),
        repr(specs),
        repr(spec.settings),
        spec.settings.model_dump_json(),
        repr(adapter),
    ):
        assert secret not in shown
    assert "AC123" in repr(spec)  # the rest is shown
    # The raw config keeps the reference, never the value.
    assert spec.config.settings["token"] == "env:TOCSIN_TEST_VAULT_TOKEN"


def test_secret_setting_from_file_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "vault.token").write_text("from-a-file\n", encoding="utf-8")
    specs, problems = build(
        tmp_path,
        vault={"kind": "vault_sms", "settings": {"account": "AC1", "token": "file:vault.token"}},
    )
    assert problems == []
    assert specs[0].settings.token.get_secret_value() == "from-a-file"


def test_missing_secret_names_the_setting(tmp_path: Path) -> None:
    assert "TOCSIN_TEST_UNSET" not in os.environ
    specs, problems = build(
        tmp_path,
        vault={
            "kind": "vault_sms",
            "settings": {"account": "AC1", "token": "env:TOCSIN_TEST_UNSET"},
        },
    )
    assert specs == ()
    assert problems == [
        f"{tmp_path / 'tocsin.toml'}: adapters.vault.settings.token: "
        "environment variable TOCSIN_TEST_UNSET is not set"
    ]


def test_secret_written_into_the_config_is_refused(tmp_path: Path) -> None:
    specs, problems = build(
        tmp_path,
        vault={"kind": "vault_sms", "settings": {"account": "AC1", "token": "plain-secret-123"}},
    )
    assert specs == ()
    (problem,) = problems
    assert problem.startswith(f"{tmp_path / 'tocsin.toml'}: adapters.vault.settings.token: ")
    assert "not a secret reference" in problem


def test_secret_written_into_the_config_is_not_echoed(tmp_path: Path) -> None:
    _, problems = build(
        tmp_path,
        vault={"kind": "vault_sms", "settings": {"account": "AC1", "token": "plain-secret-123"}},
    )
    assert problems
    assert all("plain-secret-123" not in p for p in problems)


# -- API tokens for grid members ---------------------------------------------------------------


def test_grid_member_token_requires_person_id(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f'[[api.tokens]]\nname = "gm"\nrole = "grid_member"\nsha256 = "{"cd" * 32}"\n',
    )
    assert problems_of(path) == [
        f"{path}: api.tokens[1]: person_id is required for role grid_member, and only for it"
    ]


def test_grid_member_token_with_person_id_loads(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f'[[api.tokens]]\nname = "gm"\nrole = "grid_member"\nsha256 = "{"cd" * 32}"\n'
        'person_id = "P1"\n',
    )
    tokens = {t.name: t for t in load_config(path).tokens}
    assert tokens["gm"].role is ApiRole.GRID_MEMBER
    assert tokens["gm"].person_id == "P1"
    assert tokens["desk"].person_id is None


def test_person_id_only_for_grid_members(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f'[[api.tokens]]\nname = "op"\nrole = "operator"\nsha256 = "{"cd" * 32}"\n'
        'person_id = "P1"\n',
    )
    assert problems_of(path) == [
        f"{path}: api.tokens[1]: person_id is required for role grid_member, and only for it"
    ]


def test_a_send_timeout_shorter_than_a_send_can_take_is_refused(tmp_path: Path) -> None:
    """A kind whose one send can outlast send_timeout (an SBD session, a modem's batch budget)
    says so: otherwise the engine gives up on a send that then goes out anyway, and sends it
    again."""
    path = write_config(
        tmp_path,
        """
[adapters.satellite]
kind = "iridium_sbd"
channels = ["modem"]
[adapters.satellite.settings]
port = "/dev/ttyUSB0"

[adapters.modems]
kind = "gsm_modem"
channels = ["modem"]
send_timeout = "30s"
[adapters.modems.settings]
port = "/dev/ttyUSB1"
send_budget = "40s"
""",
    )
    problems = problems_of(path)
    assert any(
        p.endswith(
            "adapters.satellite.send_timeout: 30s is too short for this iridium_sbd: one send "
            "can take 105s (session_timeout + 3 × command_timeout); set send_timeout above "
            "that, or the engine gives up on sends that then go out anyway and are sent again"
        )
        for p in problems
    ), problems
    assert any(
        "adapters.modems.send_timeout: 30s" in p and "40s (send_budget)" in p for p in problems
    )

    fixed = path.read_text(encoding="utf-8")
    fixed = fixed.replace(
        'channels = ["modem"]\n[adapters.satellite',
        'channels = ["modem"]\nsend_timeout = "110s"\n[adapters.satellite',
    )
    fixed = fixed.replace('send_budget = "40s"', 'send_budget = "25s"')
    path.write_text(fixed, encoding="utf-8")
    assert {s.name for s in load_config(path).adapters} == {"satellite", "modems"}

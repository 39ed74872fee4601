"""Config and policy loading: every error names the file, the key and what is wrong; secrets
are resolved from references and never shown."""

from __future__ import annotations

import hashlib
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from dispatcher.adapter import adapter_kinds
from dispatcher.cli import main as cli_main
from dispatcher.config import (
    AdapterInstanceConfig,
    ConfigError,
    TocsinConfig,
    TokenConfig,
    load_config,
    load_policy,
)
from dispatcher.durations import parse_duration
from dispatcher.secrets import SecretError, resolve_secret

ROOT = Path(__file__).resolve().parent.parent


def _config_dir(tmp_path: Path, body: str) -> Path:
    shutil.copy(ROOT / "config" / "policy.toml", tmp_path / "policy.toml")
    path = tmp_path / "tocsin.toml"
    path.write_text(body, encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


@pytest.mark.parametrize("name", ["demo.toml", "production.toml"])
def test_shipped_configs_are_valid(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if name == "production.toml":
        # The template reads its token hash from systemd credentials and its CSVs from /etc.
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "tocsin-token-duty-desk-1").write_text("ab" * 32 + "\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        text = (ROOT / "config" / name).read_text(encoding="utf-8")
        text = text.replace('csv_dir = "/etc/tocsin/directory"', f'csv_dir = "{tmp_path}"')
        text = text.replace(
            'file = "/etc/tocsin/policy.toml"', f'file = "{ROOT / "config" / "policy.toml"}"'
        )
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
    else:
        path = ROOT / "config" / name
    config = load_config(path)
    assert config.tokens
    assert set(config.policy.levels) == {"red", "orange", "yellow", "blue"}


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = _config_dir(tmp_path, "[server]\nhots = '0.0.0.0'\n")
    assert _problems(path) == [
        f"{path}: server.hots: unknown key (check the spelling against the production template)"
    ]


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = _config_dir(tmp_path, "[server]\nport = 'eighty'\n")
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}: server.port: ")
    assert "integer" in problem


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    path = _config_dir(tmp_path, "[server]\nport = \n")
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}: not valid TOML")
    assert "line 2" in problem


def test_token_errors_are_all_reported(tmp_path: Path) -> None:
    path = _config_dir(
        tmp_path,
        "[[api.tokens]]\nname='a'\nrole='chief'\nsha256='" + "0" * 64 + "'\n"
        "[[api.tokens]]\nname='b'\nrole='admin'\n",
    )
    problems = _problems(path)
    assert any("api.tokens[0].role" in p and "duty_officer" in p for p in problems)
    assert any(
        "api.tokens[1]" in p and "exactly one of sha256 or sha256_secret" in p for p in problems
    )


def test_policy_error_names_policy_file_and_key(tmp_path: Path) -> None:
    path = _config_dir(tmp_path, "")
    (tmp_path / "policy.toml").write_text(
        "[levels.red]\n[[levels.red.rules]]\naudience='everyone'\nchannels=['speaker']\n"
    )
    problems = _problems(path)
    assert any(
        p.startswith(f"{tmp_path / 'policy.toml'}: levels.red.rules[0]")
        and "speaker is for devices" in p
        for p in problems
    )


def test_policy_must_cover_every_level(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text("[levels.red]\n[[levels.red.rules]]\naudience='everyone'\nchannels=['sms']\n")
    with pytest.raises(ConfigError) as info:
        load_policy(bad)
    assert info.value.problems == [
        f"{bad}: (top level): the policy has no entry for level(s) orange, yellow, blue"
    ]


def test_missing_policy_file(tmp_path: Path) -> None:
    path = _config_dir(tmp_path, "[policy]\nfile = 'nope.toml'\n")
    (problem,) = _problems(path)
    assert "nope.toml: file does not exist" in problem


def test_policy_duration_and_attempts_validated(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text(
        "\n".join(
            f"[levels.{lv}]\nack_timeout='ten minutes'\nmax_attempts=0\n"
            f"[[levels.{lv}.rules]]\naudience='devices'\ndevice_kinds=['loudspeaker']"
            for lv in ("red", "orange", "yellow", "blue")
        )
    )
    with pytest.raises(ConfigError) as info:
        load_policy(bad)
    text = "\n".join(info.value.problems)
    assert "levels.red.ack_timeout" in text and "'ten minutes' is not a duration" in text
    assert "levels.red.max_attempts" in text


def test_token_hash_from_secret_file_is_never_shown(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"s3cret-token").hexdigest()
    (tmp_path / "token.hash").write_text(digest + "\n")
    path = _config_dir(
        tmp_path,
        "[[api.tokens]]\nname='desk'\nrole='duty_officer'\nsha256_secret='file:token.hash'\n",
    )
    config = load_config(path)
    (token,) = config.tokens
    assert token.matches("s3cret-token")
    assert not token.matches("s3cret-tokeN")
    assert digest not in repr(config)
    assert digest not in str(token)


def test_secret_reference_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOCSIN_NO_SUCH", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(SecretError, match="not a secret reference"):
        resolve_secret("hunter2")
    with pytest.raises(SecretError, match="TOCSIN_NO_SUCH is not set"):
        resolve_secret("env:TOCSIN_NO_SUCH")
    with pytest.raises(SecretError, match="CREDENTIALS_DIRECTORY is not set"):
        resolve_secret("credential:x")
    with pytest.raises(SecretError, match="does not exist"):
        resolve_secret(f"file:{tmp_path / 'missing'}")
    monkeypatch.setenv("TOCSIN_SECRET", "value-1")
    assert resolve_secret("env:TOCSIN_SECRET").get_secret_value() == "value-1"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "cred").write_text("value-2\n")
    secret = resolve_secret("credential:cred")
    assert secret.get_secret_value() == "value-2"
    assert "value-2" not in repr(secret)


def test_secret_reference_problem_in_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOCSIN_TOKEN_HASH", raising=False)
    path = _config_dir(
        tmp_path,
        "[[api.tokens]]\nname='desk'\nrole='admin'\nsha256_secret='env:TOCSIN_TOKEN_HASH'\n",
    )
    assert _problems(path) == [
        f"{path}: api.tokens[0].sha256_secret: environment variable TOCSIN_TOKEN_HASH is not set"
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("2d", 172800), (5, 5), ("250ms", 0.25)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "m10", "10 minutes", "-5s", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check-config", str(ROOT / "config" / "demo.toml")]) == 0
    assert "OK" in capsys.readouterr().out
    path = _config_dir(tmp_path, "[store]\npaht = 'x'\n")
    assert cli_main(["check-config", str(path)]) == 2
    assert f"{path}: store.paht: unknown key" in capsys.readouterr().err


def _option_paths(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """(section, key) for every option of the config model, nested models expanded."""
    found: list[tuple[str, str]] = []
    for name, info in model.model_fields.items():
        inner = info.annotation
        candidates = [inner, *getattr(inner, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if name == "tokens":  # an array of tables, checked key by key below
            continue
        if name == "settings" and prefix.startswith("adapters."):
            continue  # kind-specific, documented by each adapter kind
        if name == "adapters":  # named instances: the template shows one
            found += _option_paths(nested[-1], f"{prefix}{name}.rehearsal_sms.")
            continue
        if name == "rules" and prefix == "schedules.":
            # The level policy's rule grammar, documented in config/policy.toml.
            found.append(("schedules", name))
            continue
        if nested:
            found += _option_paths(nested[0], f"{prefix}{name}.")
        else:
            found.append((prefix.rstrip("."), name))
    return found


def test_production_template_documents_every_option() -> None:
    text = (ROOT / "config" / "production.toml").read_text(encoding="utf-8")
    lines = [line.lstrip("# ").strip() for line in text.splitlines()]
    missing = []
    for section, key in _option_paths(TocsinConfig):
        header = f"[{section}]"
        in_section = header in lines or f"[[{section}]]" in lines
        if not in_section or not any(line.startswith(f"{key} =") for line in lines):
            missing.append(f"{section}.{key}")
    assert "[[api.tokens]]" in lines
    token_keys = [k for _, k in _option_paths(TokenConfig)]
    missing += [
        f"api.tokens.{k}"
        for k in token_keys
        if not any(line.startswith(f"{k} =") for line in lines)
    ]
    assert missing == []


_ADAPTER_HEADER = re.compile(r"^\[adapters\.([A-Za-z0-9_-]+)\]$")
_SETTINGS_HEADER = re.compile(r"^\[adapters\.([A-Za-z0-9_-]+)\.settings\]$")
_KEY_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")


def _commented_adapter_blocks(text: str) -> dict[str, list[str]]:
    """Each commented ``# [adapters.NAME]`` example of the template, uncommented: from its header
    through its ``[adapters.NAME.settings]`` lines, up to the next instance's header or the end of
    the comment. Only headers and ``key = value`` lines are kept; the prose between them is not
    TOML."""
    blocks: dict[str, list[str]] = {}
    current: str | None = None
    for raw in text.splitlines():
        if not raw.startswith("#"):
            current = None  # a blank or live line ends the commented example
            continue
        line = raw[1:].strip()
        header = _ADAPTER_HEADER.match(line)
        if header:
            current = header.group(1)
            assert current not in blocks, f"two examples named adapters.{current}"
            blocks[current] = [line]
            continue
        if current is None:
            continue
        settings = _SETTINGS_HEADER.match(line)
        if settings:
            assert settings.group(1) == current, f"{line} inside the adapters.{current} example"
            blocks[current].append(line)
        elif _KEY_LINE.match(line):
            blocks[current].append(line)
    return blocks


_TEMPLATE = (ROOT / "config" / "production.toml").read_text(encoding="utf-8")
_ADAPTER_EXAMPLES = _commented_adapter_blocks(_TEMPLATE)


def _template_with(body: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The production template made loadable here (as in test_shipped_configs_are_valid), with
    ``body`` appended; the secrets its examples reference are given as credentials."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "tocsin-token-duty-desk-1").write_text("ab" * 32 + "\n")
    (creds / "mqtt-password").write_text("broker-secret\n")
    (creds / "twilio-auth-token").write_text("0123456789abcdef0123456789abcdef\n")
    (creds / "modem-pin").write_text("1234\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    text = _TEMPLATE.replace('csv_dir = "/etc/tocsin/directory"', f'csv_dir = "{tmp_path}"')
    text = text.replace(
        'file = "/etc/tocsin/policy.toml"', f'file = "{ROOT / "config" / "policy.toml"}"'
    )
    path = tmp_path / "production.toml"
    path.write_text(text + "\n" + body + "\n", encoding="utf-8")
    return path


def test_production_template_has_an_example_of_every_adapter_kind() -> None:
    kinds = set()
    for name, lines in _ADAPTER_EXAMPLES.items():
        data = tomllib.loads("\n".join(lines))
        kinds.add(data["adapters"][name]["kind"])
    assert set(adapter_kinds()) - kinds == set()


@pytest.mark.parametrize("name", sorted(_ADAPTER_EXAMPLES))
def test_production_template_adapter_example_is_valid(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each commented adapter example, uncommented, passes the real loader: the kind exists,
    every documented setting is one the kind's settings model has, and the values validate."""
    lines = _ADAPTER_EXAMPLES[name]
    instance = tomllib.loads("\n".join(lines))["adapters"][name]
    settings = instance.get("settings", {})
    assert settings, f"adapters.{name}: the example shows no settings"
    config = load_config(_template_with("\n".join(lines), tmp_path, monkeypatch))
    (spec,) = [s for s in config.adapters if s.name == name]
    model = adapter_kinds()[instance["kind"]].settings_model
    # The loader already refuses an unknown key (extra="forbid"); say so by name here too,
    # should a kind's model ever accept extras.
    assert set(settings) - set(model.model_fields) == set()
    assert set(instance) - {"settings"} - set(AdapterInstanceConfig.model_fields) == set()
    assert isinstance(spec.settings, model)

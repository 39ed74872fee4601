"""`tocsin adapters list|probe`, as an installer runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispatcher.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


def test_list_shows_installed_kinds_with_channels_and_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(["adapters", "list", "--json"]) == 0
    kinds = {k["kind"]: k for k in json.loads(capsys.readouterr().out)}
    simulated = kinds["simulated"]
    assert simulated["channels"] == ["modem", "sms", "speaker", "transmitter", "voice"]
    assert "ack_probability" in simulated["settings"]
    assert cli_main(["adapters", "list"]) == 0
    out = capsys.readouterr().out
    assert "simulated:" in out
    # A default made by a factory (a list, a mapping) is shown as what it makes.
    assert "PydanticUndefined" not in out
    assert "confirm_words (default ['1', '收到', 'Y'])" in out


def test_probe_reports_every_configured_instance(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ROOT / "config" / "demo.toml")
    assert cli_main(["adapters", "probe", "--config", config, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in results] == ["demo_devices", "demo_sms", "demo_voice"]
    assert all(r["ok"] and r["kind"] == "simulated" for r in results)
    assert cli_main(["adapters", "probe", "--config", config, "demo_sms"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok  demo_sms (simulated)") and "demo_voice" not in out


def test_probe_of_an_unknown_instance_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ROOT / "config" / "demo.toml")
    assert cli_main(["adapters", "probe", "--config", config, "speakers"]) == 2
    assert "no adapter instance named speakers" in capsys.readouterr().err

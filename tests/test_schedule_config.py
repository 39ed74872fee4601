"""``[[schedules]]`` in the config: every problem names the file and the key, and the example
the production template documents is a valid schedule."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest

from dispatcher.config import ConfigError, load_config
from dispatcher.domain import Level
from dispatcher.schedules.spec import ScheduleSpec, ScheduleStatus

ROOT = Path(__file__).resolve().parent.parent

_SCHEDULE = """
[[schedules]]
id = "{id}"
cron = "{cron}"
areas = ["611002"]
rules = [{{ audience = "devices", device_kinds = ["loudspeaker"] }}]
headline = "应急广播例行测试"
"""


def _config(tmp_path: Path, body: str) -> Path:
    shutil.copy(ROOT / "config" / "policy.toml", tmp_path / "policy.toml")
    path = tmp_path / "tocsin.toml"
    path.write_text(body, encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_a_schedule_in_the_config(tmp_path: Path) -> None:
    path = _config(tmp_path, _SCHEDULE.format(id="weekly", cron="0 10 * * 1"))
    (spec,) = load_config(path).settings.schedules
    assert (spec.id, spec.status, spec.level) == ("weekly", ScheduleStatus.TEST, Level.BLUE)
    assert spec.areas == ("611002000000",)
    assert (spec.grace, spec.expires_after, spec.report_after) == (3600.0, 7200.0, None)


def test_problems_name_the_file_and_the_key(tmp_path: Path) -> None:
    body = (
        _SCHEDULE.format(id="weekly", cron="* 10 * * 1")
        + _SCHEDULE.format(id="bad id", cron="0 10 * * 1")
        + 'quiet_hours = "22:00"\ncolour = "red"\n'
    )
    problems = _problems(_config(tmp_path, body))
    path = tmp_path / "tocsin.toml"
    assert f"{path}: schedules[0].cron: this expression fires" in "\n".join(problems)
    assert any(p.startswith(f"{path}: schedules[1].id: ") for p in problems)
    assert any(p.startswith(f"{path}: schedules[1].quiet_hours: ") for p in problems)
    assert f"{path}: schedules[1].colour: unknown key" in "\n".join(problems)


def test_a_fallback_in_a_schedule_is_refused(tmp_path: Path) -> None:
    body = _SCHEDULE.format(id="weekly", cron="0 10 * * 1").replace(
        '"loudspeaker"] }',
        '"loudspeaker"], fallback = { audience = "village_cadres", channels = ["voice"] } }',
    )
    (problem,) = _problems(_config(tmp_path, body))
    assert "schedules[0].rules: rules[0].fallback: a schedule takes no fallback" in problem


def test_an_id_used_twice(tmp_path: Path) -> None:
    body = _SCHEDULE.format(id="weekly", cron="0 10 * * 1") + _SCHEDULE.format(
        id="weekly", cron="0 9 * * 2"
    )
    (problem,) = _problems(_config(tmp_path, body))
    assert problem == f"{tmp_path / 'tocsin.toml'}: schedules: schedule id 'weekly' is used twice"


def test_the_production_templates_example_is_valid() -> None:
    text = (ROOT / "config" / "production.toml").read_text(encoding="utf-8")
    block = text[text.index("# [[schedules]]") :]
    lines = []
    for line in block.splitlines():
        if not line.startswith("#"):
            break
        # The commented-out settings (key = value), not the prose between them.
        if re.match(r"^# [a-z_]+ = ", line):
            lines.append(line[2:])
    (spec,) = tomllib.loads("[[schedules]]\n" + "\n".join(lines))["schedules"]
    parsed = ScheduleSpec.model_validate(spec)
    assert parsed.cron == "0 10 * * 1"
    assert parsed.quiet_hours == "22:00-07:00"
    assert parsed.report_after == 180.0
    assert set(spec) == set(ScheduleSpec.model_fields)

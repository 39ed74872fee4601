"""`tocsin schedule` against the API on a real port: add (from options and from a TOML file in
the config's [[schedules]] form), list, run now, the runs, remove; and the problems refused
before the daemon is asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from api.harness import CITY_SHAPE, COUNTY, TOKENS
from api.live_server import LiveServer

from dispatcher.cli import main
from dispatcher.config import ApiRole
from dispatcher.synthetic import load_synthetic


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("cli-schedule")
    city = folder / "city.db"
    load_synthetic(city, CITY_SHAPE, progress=False)
    with LiveServer(city, folder) as server:
        yield server


@pytest.fixture(autouse=True)
def _client(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TOCSIN_URL", live.url)
    monkeypatch.setenv("TOCSIN_TOKEN", TOKENS[ApiRole.DUTY_OFFICER])
    # The daemon runs in this process: keep its log lines out of the command's output.
    with structlog.testing.capture_logs():
        yield


def test_add_list_run_and_remove(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "schedule",
            "add",
            "--id",
            "speakers",
            "--cron",
            "0 10 * * 1",
            "--area",
            COUNTY,
            "--devices",
            "loudspeaker",
            "--people",
            "grid_members=sms",
            "--headline",
            "应急广播例行测试",
            "--quiet-hours",
            "22:00-07:00",
            "--grace",
            "2h",
        ]
    )
    added = json.loads(capsys.readouterr().out)
    assert status == 0, added
    assert added["rules"] == [
        {"audience": "devices", "device_kinds": ["loudspeaker"]},
        {"audience": "grid_members", "channels": ["sms"]},
    ]
    assert added["grace"] == 7200.0

    assert main(["schedule", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["id", "source", "on"]
    (row,) = [line for line in table if line.startswith("speakers ")]
    assert "0 10 * * 1" in row and " api " in row and "Test" in row

    assert main(["schedule", "run-now", "speakers", "--force"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert (run["state"], run["kind"]) == ("ran", "manual")

    assert main(["schedule", "runs", "speakers"]) == 0
    runs = capsys.readouterr().out
    assert "manual" in runs and run["warning_id"] in runs

    assert main(["schedule", "remove", "speakers"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] is True
    assert main(["schedule", "remove", "speakers"]) == 1
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "not_found"


def test_add_from_a_toml_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "drill.toml"
    path.write_text(
        "[[schedules]]\n"
        'id = "drill"\n'
        'cron = "0 9 12 5 *"\n'
        'status = "Exercise"\n'
        'level = "yellow"\n'
        f'areas = ["{COUNTY[:6]}"]\n'
        'rules = [{ audience = "devices", device_kinds = ["loudspeaker"] }]\n'
        'headline = "年度防汛演练"\n'
        "enabled = false\n",
        encoding="utf-8",
    )
    assert main(["schedule", "add", str(path)]) == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["id"], added["status"], added["enabled"]) == ("drill", "Exercise", False)
    assert added["areas"] == [COUNTY]
    assert added["next_fire_at"] is None
    assert main(["schedule", "remove", "drill"]) == 0


def test_a_refused_schedule_exits_1_with_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "schedule",
            "add",
            "--cron",
            "* 10 * * 1",
            "--area",
            COUNTY,
            "--devices",
            "loudspeaker",
            "--headline",
            "测试",
        ]
    )
    assert status == 1
    assert json.loads(capsys.readouterr().err)["error"]["field"] == "cron"


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["schedule", "add", "--cron", "0 10 * * 1"], "--headline, --area, --devices or --people"),
        (
            [
                *("schedule", "add", "--cron", "0 10 * * 1", "--headline", "x"),
                *("--area", COUNTY, "--people", "grid_members"),
            ],
            "AUDIENCE=CHANNELS",
        ),
    ],
)
def test_problems_refused_before_asking(argv: list[str], problem: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert problem in str(exited.value)

"""The installer's commands for Twilio, run as an installer runs them (a subprocess) against the
fake Twilio server: `tocsin adapters probe` checks the credentials and that the senders belong
to the account; `tocsin adapters test` sends one test SMS or call and follows its status by
asking Twilio (the callbacks go to the daemon, not to the command)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from adapters.twilio.fake_script import FakeScript, NumberScript
from adapters.twilio.fake_server import FakeTwilio

ROOT = Path(__file__).resolve().parents[2]
SID = "AC" + "3" * 32
TOKEN = "installer-token"
SENDER = "+8610690000001"
PERSON = "+8613812345678"


def write_config(tmp_path: Path, api_url: str, *, sender: str = SENDER) -> Path:
    config = tmp_path / "tocsin.toml"
    config.write_text(
        f"""
[store]
path = "{tmp_path / "tocsin.db"}"

[policy]
file = "{ROOT / "config" / "policy.toml"}"

[adapters.sms]
kind = "twilio_sms"
channels = ["sms"]

[adapters.sms.settings]
account_sid = "{SID}"
auth_token = "env:INSTALLER_TWILIO_TOKEN"
public_url = "https://tocsin.example.cn"
api_base_url = "{api_url}"
senders = ["{sender}"]

[adapters.voice]
kind = "twilio_voice"
channels = ["voice"]

[adapters.voice.settings]
account_sid = "{SID}"
auth_token = "env:INSTALLER_TWILIO_TOKEN"
public_url = "https://tocsin.example.cn"
api_base_url = "{api_url}"
callers = ["{sender}"]
"""
    )
    return config


async def tocsin(*args: str, token: str = TOKEN) -> tuple[int, str, str]:
    env = {**os.environ, "INSTALLER_TWILIO_TOKEN": token}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_probe_checks_credentials_and_senders(tmp_path: Path) -> None:
    async with FakeTwilio(accounts={SID: TOKEN}, numbers=[SENDER]) as fake:
        config = write_config(tmp_path, fake.url)
        code, out, err = await tocsin("adapters", "probe", "--config", str(config))
        assert code == 0, out + err
        assert "ok  sms (twilio_sms): account active" in out
        assert "ok  voice (twilio_voice): account active" in out
        # A wrong token: the probe says the credentials were refused (and never shows them).
        code, out, err = await tocsin(
            "adapters", "probe", "--config", str(config), "sms", token="wrong-token"
        )
        assert code == 1
        assert "refused the credentials: 20003" in out
        assert "wrong-token" not in out + err
        # A sender that is not the account's.
        other = write_config(tmp_path, fake.url, sender="+8610690000099")
        code, out, _ = await tocsin("adapters", "probe", "--config", str(other), "sms")
        assert code == 1
        assert "not numbers of this account: +8610690000099" in out


async def test_test_sms_and_call_follow_their_status(tmp_path: Path) -> None:
    script = FakeScript(per_number={"+8613800000404": NumberScript(call="busy")})
    async with FakeTwilio(accounts={SID: TOKEN}, numbers=[SENDER], script=script) as fake:
        config = write_config(tmp_path, fake.url)
        code, out, err = await tocsin(
            "adapters", "test", "--config", str(config), "sms", "--to", PERSON, "--wait", "10s"
        )
        assert code == 0, out + err
        assert "outcome: Accepted(reference='SM" in out
        assert "report: " in out
        assert "delivered" in out
        (message,) = fake.sent
        assert message.to == PERSON
        assert message.body.startswith("【测试，非真实预警】")
        # No delivery of the store is named in the status callback URL.
        assert message.status_callback == "https://tocsin.example.cn/hooks/sms/status"

        code, out, err = await tocsin(
            "adapters", "test", "--config", str(config), "voice", "--to", PERSON, "--wait", "10s"
        )
        assert code == 0, out + err
        assert "outcome: Accepted(reference='CA" in out
        code, out, err = await tocsin(
            "adapters",
            "test",
            "--config",
            str(config),
            "voice",
            "--to",
            "+8613800000404",
            "--wait",
            "10s",
        )
        assert code == 1
        assert "call busy" in out

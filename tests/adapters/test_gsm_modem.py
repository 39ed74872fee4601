"""The ``gsm_modem`` adapter against the GSM modem simulator on a real pseudo-terminal: what it
writes (checked by an independent PDU decoder), status reports, replies, +CMS errors, a modem
that is not registered, answers ERROR or noise or nothing, is unplugged or restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from dispatches import make_dispatch, make_warning
from pydantic import ValidationError
from recording import RecordingContext
from smspdudecoder.fields import SMSSubmit
from waiting import wait_until

from adapters.gsm_modem.adapter import CONFIRM_TAIL, GsmModemAdapter, csq_dbm
from adapters.gsm_modem.settings import GsmModemSettings
from adapters.gsm_modem.simulator import TIANTONG_IDENTITY, GsmModemSimulator
from adapters.sms_text.segments import count_segments
from dispatcher.adapter import (
    Accepted,
    AdapterNotReady,
    Dispatch,
    Failed,
    PacesItself,
    Report,
    ReportState,
    Retry,
    WarningContent,
)
from dispatcher.domain import Channel

PERSON = "+8613812345678"
SATPHONE = "+8617400000001"
WARNING_TEXT = (
    "【商洛市气象台暴雨红色预警】预计未来3小时商州区大荆镇降雨量将达100毫米以上，"
    "可能引发山洪、泥石流、滑坡，请沿河、沟道和山坡下的群众立即转移到安全地带，"
    "网格员逐户通知独居老人和行动不便人员，转移途中注意避开桥梁和低洼路段，"
    "不要涉水过河。请关注商洛市气象台和应急管理局发布的最新预警信息，"
    "如遇险情请拨打119或110求救。" + CONFIRM_TAIL
)


def warning(**changes: Any) -> WarningContent:
    return make_warning(area_codes=("611002101000",), **changes)


def to_person(delivery_id: int, address: str = PERSON, text: str = WARNING_TEXT) -> Dispatch:
    return make_dispatch(
        channel=Channel.SMS,
        delivery_id=delivery_id,
        address=address,
        target_id=f"P{delivery_id}",
        warning=warning(),
        text=text,
    )


def to_satphone(delivery_id: int, address: str = SATPHONE) -> Dispatch:
    return make_dispatch(
        channel=Channel.MODEM,
        delivery_id=delivery_id,
        address=address,
        target_id="MDM-1",
        area_code="611002101000",
        warning=warning(),
        text=WARNING_TEXT,
    )


def settings_for(path: str, **changes: Any) -> GsmModemSettings:
    return GsmModemSettings.model_validate(
        {
            "port": path,
            "command_timeout": 0.5,
            "open_timeout": 3,
            "reopen_max": 0.3,
            "submit_timeout": 1.0,
            "send_budget": 5,
            "registration_check": 0,
            **changes,
        }
    )


@pytest.fixture
async def modem(tmp_path: Path) -> AsyncIterator[GsmModemSimulator]:
    async with GsmModemSimulator(link=tmp_path / "ttyGSM", seed=1) as simulator:
        yield simulator


@pytest.fixture
async def started(
    modem: GsmModemSimulator,
) -> AsyncIterator[tuple[GsmModemAdapter, RecordingContext]]:
    adapter = GsmModemAdapter(name="modem", settings=settings_for(modem.path))
    context = RecordingContext(name="modem")
    async with asyncio.timeout(5):
        await adapter.start(context)
    yield adapter, context
    async with asyncio.timeout(5):
        await adapter.stop()


def reports_of(context: RecordingContext, state: ReportState) -> list[Report]:
    return [r for r in context.reports if r.state is state]


# -- set-up ---------------------------------------------------------------------------------------
async def test_start_sets_the_modem_up_for_pdu_mode_and_direct_reports(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    assert modem.commands[:4] == ["ATE0", "AT+CMEE=1", "AT+CPIN?", "AT+CMGF=0"]
    assert "AT+CNMI=2,2,0,1,0" in modem.commands
    assert (modem.echo, modem.cmee, modem.cmgf, modem.cnmi) == (False, 1, 0, (2, 2, 0, 1, 0))


async def test_start_on_a_missing_port_names_the_port(tmp_path: Path) -> None:
    adapter = GsmModemAdapter(name="modem", settings=settings_for(str(tmp_path / "nothing")))
    async with asyncio.timeout(5):
        with pytest.raises(AdapterNotReady, match="nothing: no such port"):
            await adapter.start(RecordingContext(name="modem"))
        await adapter.stop()


async def test_a_silent_modem_is_not_ready(modem: GsmModemSimulator) -> None:
    modem.silent = True
    adapter = GsmModemAdapter(name="modem", settings=settings_for(modem.path, open_timeout=1.5))
    async with asyncio.timeout(5):
        with pytest.raises(AdapterNotReady, match="ttyGSM"):
            await adapter.start(RecordingContext(name="modem"))
        await adapter.stop()


async def test_the_sim_pin_is_entered_and_a_wrong_one_only_once(tmp_path: Path) -> None:
    async with GsmModemSimulator(link=tmp_path / "ttyPIN", sim_pin="4321") as modem:
        async with asyncio.timeout(10):
            without = GsmModemAdapter(name="modem", settings=settings_for(modem.path))
            with pytest.raises(AdapterNotReady, match="sim_pin"):
                await without.start(RecordingContext(name="modem"))
            await without.stop()

            wrong = GsmModemAdapter(
                name="modem", settings=settings_for(modem.path, sim_pin="1111", open_timeout=2)
            )
            with pytest.raises(AdapterNotReady, match="refused sim_pin"):
                await wrong.start(RecordingContext(name="modem"))
            await wrong.stop()
            # One attempt used of three: a wrong setting never blocks the SIM.
            assert sum(c.startswith("AT+CPIN=") for c in modem.commands) == 1

            right = GsmModemAdapter(name="modem", settings=settings_for(modem.path, sim_pin="4321"))
            await right.start(RecordingContext(name="modem"))
            assert modem.pin_entered
            [outcome] = await right.send([to_person(1, text="测试")])
            assert isinstance(outcome, Accepted)
            await right.stop()


def test_settings_refuse_a_bad_pin_and_cnmi() -> None:
    with pytest.raises(ValidationError, match="PIN"):
        GsmModemSettings(port="/dev/ttyUSB0", sim_pin="12ab")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="CNMI"):
        GsmModemSettings(port="/dev/ttyUSB0", cnmi="2;2")
    with_pin = GsmModemSettings(port="/dev/ttyUSB0", sim_pin="1234")  # type: ignore[arg-type]
    assert "1234" not in repr(with_pin)


# -- sending --------------------------------------------------------------------------------------
async def test_a_chinese_warning_goes_out_as_ucs2_parts_and_is_delivered(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, context = started
    async with asyncio.timeout(5):
        [outcome] = await adapter.send([to_person(7)])
    assert isinstance(outcome, Accepted)
    expected_parts = count_segments(WARNING_TEXT).count
    assert expected_parts == 3
    assert outcome.detail["parts"] == expected_parts
    assert outcome.detail["encoding"] == "UCS-2"
    assert outcome.detail["mr"] == [0, 1, 2]
    assert outcome.reference.startswith("mr=0,1,2;")

    # What went over the line, read by an independent decoder.
    decoded = [SMSSubmit.decode(StringIO(part.pdu)) for part in modem.sent]
    assert "".join(d["user_data"]["data"] for d in decoded) == WARNING_TEXT
    references = set()
    for number, d in enumerate(decoded, start=1):
        assert d["recipient"]["number"] == PERSON[1:]
        assert d["recipient"]["toa"]["ton"] == "international"
        assert d["dcs"]["encoding"] == "ucs2"
        assert d["header"]["srr"] is True
        [element] = d["user_data"]["header"]["elements"]
        assert element["data"]["parts_count"] == 3
        assert element["data"]["part_number"] == number
        references.add(element["data"]["reference"])
    assert len(references) == 1

    await wait_until(
        lambda: reports_of(context, ReportState.DELIVERED), within=3, what="a delivered report"
    )
    [delivered] = context.reports
    assert delivered.delivery_id == 7
    assert delivered.from_address == PERSON
    assert delivered.detail["parts"] == 3


async def test_a_long_text_is_shortened_keeping_the_confirmation_request(
    modem: GsmModemSimulator,
) -> None:
    adapter = GsmModemAdapter(name="modem", settings=settings_for(modem.path, max_parts=2))
    async with asyncio.timeout(5):
        await adapter.start(RecordingContext(name="modem"))
        [outcome] = await adapter.send([to_person(1, text=WARNING_TEXT * 4)])
        await adapter.stop()
    assert isinstance(outcome, Accepted)
    assert outcome.detail == {**outcome.detail, "parts": 2, "shortened": True}
    text = "".join(part.submit.text for part in modem.sent)
    assert text.endswith("…" + CONFIRM_TAIL)


async def test_message_references_wrap_and_reports_match_by_reference_and_number(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, context = started
    modem._next_mr = 255  # the next references are 255, then 0
    modem.no_reports.add(SATPHONE)
    async with asyncio.timeout(5):
        first = await adapter.send([to_person(1, text="测试" * 40)])  # two parts
        # The same reference for another number must not complete delivery 1's part.
        modem.no_reports.discard(SATPHONE)
        modem._next_mr = 0
        modem.statuses[SATPHONE] = [0x41]
        second = await adapter.send([to_satphone(2)])
    assert first[0].detail["mr"] == [255, 0]  # type: ignore[union-attr]
    assert second[0].detail["mr"][0] == 0  # type: ignore[union-attr]
    await wait_until(lambda: len(context.reports) >= 2, within=3, what="two reports")
    await asyncio.sleep(0.1)
    by_delivery = {r.delivery_id: r.state for r in context.reports}
    assert by_delivery == {1: ReportState.DELIVERED, 2: ReportState.FAILED}


@pytest.mark.parametrize(
    ("statuses", "state", "retryable"),
    [
        ([0x21, 0x00], ReportState.DELIVERED, True),  # still trying, then delivered
        ([0x41], ReportState.FAILED, False),  # incompatible destination
        ([0x21, 0x62], ReportState.FAILED, True),  # the SMSC gave up on a silent handset
    ],
)
async def test_status_reports_deliver_or_fail(
    started: tuple[GsmModemAdapter, RecordingContext],
    modem: GsmModemSimulator,
    statuses: list[int],
    state: ReportState,
    retryable: bool,
) -> None:
    adapter, context = started
    modem.statuses[PERSON] = statuses
    async with asyncio.timeout(5):
        [outcome] = await adapter.send([to_person(3, text="测试")])
    assert isinstance(outcome, Accepted)
    await wait_until(lambda: context.reports, within=3, what="a report")
    await asyncio.sleep(0.1 * len(statuses))  # a later report for the same part is ignored
    [report] = context.reports
    assert (report.state, report.delivery_id, report.retryable) == (state, 3, retryable)
    if state is ReportState.FAILED:
        assert report.reason.startswith("SMS centre: ")
        assert report.detail["tp_st"] == f"0x{statuses[-1]:02X}"


async def test_one_failed_part_fails_the_message_once(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, context = started
    modem.statuses[PERSON] = [0x46]  # every part: validity period expired
    async with asyncio.timeout(5):
        await adapter.send([to_person(4)])
    await wait_until(lambda: context.reports, within=3, what="a report")
    await asyncio.sleep(0.2)
    [report] = context.reports
    assert report.state is ReportState.FAILED
    assert report.retryable  # the handset was off: sending again may reach it
    parts = count_segments(WARNING_TEXT).count
    assert adapter.counters.unmatched_reports == parts - 1  # the other parts' reports


async def test_an_invalid_number_and_an_expired_warning_fail(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, _ = started
    expired = replace(
        to_person(2), warning=warning(expires=datetime.now(UTC) - timedelta(seconds=1))
    )
    async with asyncio.timeout(5):
        outcomes = await adapter.send([to_person(1, address="+86 12"), expired, to_person(3)])
    assert isinstance(outcomes[0], Failed)
    assert "invalid number" in outcomes[0].reason
    assert isinstance(outcomes[1], Failed)
    assert "expired" in outcomes[1].reason
    assert isinstance(outcomes[2], Accepted)


async def test_a_national_number_is_read_in_the_default_region(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, _ = started
    async with asyncio.timeout(5):
        [outcome] = await adapter.send([to_person(1, address="138 1234 5678", text="hi")])
    assert isinstance(outcome, Accepted)
    assert modem.sent[0].submit.destination == PERSON


async def test_paces_itself_at_the_configured_rate(modem: GsmModemSimulator) -> None:
    adapter = GsmModemAdapter(
        name="modem", settings=settings_for(modem.path, messages_per_minute=15)
    )
    assert isinstance(adapter, PacesItself)
    rate = adapter.send_rate()
    assert (rate.per_second, rate.burst) == (0.25, 1)


# -- replies --------------------------------------------------------------------------------------
async def test_a_satphone_reply_acknowledges_its_delivery(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, context = started
    modem.no_reports.add(SATPHONE)
    async with asyncio.timeout(5):
        [outcome] = await adapter.send([to_satphone(11)])
    assert isinstance(outcome, Accepted)
    modem.receive_sms(SATPHONE, "收到！")
    await wait_until(lambda: context.reports, within=3, what="a report")
    [ack] = context.reports
    assert ack.state is ReportState.ACKNOWLEDGED
    # A device is matched only by delivery id (never by from_address alone).
    assert (ack.delivery_id, ack.from_address, ack.warning_id) == (11, SATPHONE, "w1")
    assert ack.detail["reply"] == "收到！"
    assert [s.address for s in context.statuses] == [SATPHONE]


async def test_a_persons_reply_acknowledges_even_without_a_remembered_send(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    _, context = started
    modem.receive_sms("+8613912345678", "１")  # full-width one
    modem.receive_sms("+8613912345678", "什么意思？")  # not a confirmation
    modem.receive_sms("+8613912345678", "y")
    await wait_until(lambda: len(context.reports) >= 2, within=3, what="two reports")
    await asyncio.sleep(0.1)
    assert [(r.state, r.delivery_id, r.from_address) for r in context.reports] == [
        (ReportState.ACKNOWLEDGED, None, "+8613912345678"),
        (ReportState.ACKNOWLEDGED, None, "+8613912345678"),
    ]


async def test_a_long_reply_in_parts_is_put_together(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, context = started
    modem.receive_sms("+8613912345678", "收到" * 40)  # two parts, not a confirmation
    modem.receive_sms("+8613912345678", "收到")
    await wait_until(lambda: context.reports, within=3, what="a report")
    assert adapter.counters.replies == 2
    assert len(context.reports) == 1


async def test_stored_replies_are_read_and_deleted_when_the_modem_only_stores(
    modem: GsmModemSimulator,
) -> None:
    adapter = GsmModemAdapter(name="modem", settings=settings_for(modem.path, cnmi="2,1,0,2,0"))
    context = RecordingContext(name="modem")
    async with asyncio.timeout(5):
        await adapter.start(context)
        [outcome] = await adapter.send([to_satphone(5)])
        assert isinstance(outcome, Accepted)
        # The status report is stored (+CDSI), the reply too (+CMTI): both read with AT+CMGR.
        await wait_until(lambda: context.reports, within=3, what="a report")
        modem.receive_sms(SATPHONE, "1")
        await wait_until(lambda: len(context.reports) >= 2, within=3, what="two reports")
        await wait_until(lambda: not modem.stored, within=3, what="the modem's storage emptied")
        await adapter.stop()
    assert [(r.state, r.delivery_id) for r in context.reports] == [
        (ReportState.DELIVERED, 5),
        (ReportState.ACKNOWLEDGED, 5),
    ]
    # The reports are announced in "SR", the reply in "SM", both from index 1: each read and
    # deleted in the storage its announcement names, one read at a time.
    reads = [c for c in modem.commands if c.startswith(("AT+CPMS=", "AT+CMGR=", "AT+CMGD="))]
    triples = [tuple(reads[i : i + 3]) for i in range(0, len(reads), 3)]
    assert all(t[0].startswith("AT+CPMS=") and t[1] == f"AT+CMGR={t[2][8:]}" for t in triples), (
        reads
    )
    assert [t[0] for t in triples][-1] == 'AT+CPMS="SM"'
    assert {t[0] for t in triples[:-1]} == {'AT+CPMS="SR"'}


async def test_a_malformed_pdu_is_dropped_and_the_reader_goes_on(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, context = started
    modem.unsolicited("+CMT: ,30", "0891683108200505F0040D9168311735")
    modem.unsolicited("+CDS: 25", "ZZ")
    modem.receive_sms("+8613912345678", "1")
    await wait_until(lambda: context.reports, within=3, what="a report")
    assert adapter.counters.malformed == 2


# -- errors from the modem -------------------------------------------------------------------------
async def test_cms_errors_retry_or_fail(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, _ = started
    modem.cms_errors.extend([42, 1, 515])
    async with asyncio.timeout(5):
        outcomes = await adapter.send([to_person(1), to_person(2), to_person(3)])
        later = await adapter.send([to_person(4, text="测试")])
    congestion, unassigned, busy = outcomes
    assert isinstance(congestion, Retry)
    assert congestion.reason == "+CMS ERROR 42: congestion"
    assert congestion.after == 10
    assert congestion.detail["cms_error"] == 42
    assert isinstance(unassigned, Failed)
    assert "unassigned" in unassigned.reason
    assert isinstance(busy, Retry)
    assert isinstance(later[0], Accepted)


async def test_an_smsc_problem_fails_the_batch_without_more_attempts(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, _ = started
    modem.smsc = None
    async with asyncio.timeout(5):
        outcomes = await adapter.send([to_person(1), to_person(2)])
    assert all(isinstance(o, Failed) for o in outcomes)
    assert "AT+CSCA" in outcomes[0].reason  # type: ignore[union-attr]
    assert sum(c.startswith("AT+CMGS=") for c in modem.commands) == 1


async def test_not_registered_is_a_retry_without_sending(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, _ = started
    modem.registered = False
    async with asyncio.timeout(5):
        outcomes = await adapter.send([to_person(1), to_person(2)])
    assert all(isinstance(o, Retry) and "not registered" in o.reason for o in outcomes)
    assert not any(c.startswith("AT+CMGS") for c in modem.commands)
    modem.registered = True
    async with asyncio.timeout(5):
        [outcome] = await adapter.send([to_person(3, text="测试")])
    assert isinstance(outcome, Accepted)


async def test_a_plain_error_makes_the_adapter_set_the_modem_up_again(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, _ = started
    modem.cmee = 0  # the modem forgot its settings without saying so
    modem.cms_errors.append(500)
    async with asyncio.timeout(5):
        [outcome] = await adapter.send([to_person(1, text="测试")])
        assert isinstance(outcome, Retry)
        assert "ERROR" in outcome.reason
        await wait_until(lambda: modem.cmee == 1, within=3, what="the modem set up again")
        [again] = await adapter.send([to_person(1, text="测试")])
    assert isinstance(again, Accepted)


async def test_garbage_and_silence_are_retries_and_the_modem_recovers(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, _ = started
    for fault in ("garbage", "silent"):
        setattr(modem, fault, 1.0 if fault == "garbage" else True)
        started_at = time.monotonic()
        async with asyncio.timeout(5):
            [outcome] = await adapter.send([to_person(1, text="测试")])
        assert isinstance(outcome, Retry), fault
        assert time.monotonic() - started_at < 3
        setattr(modem, fault, 0.0 if fault == "garbage" else False)
        async with asyncio.timeout(5):
            [outcome] = await adapter.send([to_person(2, text="测试")])
        assert isinstance(outcome, Accepted), fault


# -- the port going away, the modem restarting -------------------------------------------------
async def test_unplugged_mid_send_retries_then_recovers_and_sets_up_again(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, context = started
    modem.submit_delay = 0.3
    async with asyncio.timeout(10):
        sending = asyncio.ensure_future(adapter.send([to_person(1), to_person(2)]))
        await wait_until(
            lambda: modem.sent, within=3, what="a part sent"
        )  # the first part is in the modem's hands
        modem.unplug()
        outcomes = await sending
        assert all(isinstance(o, Retry) for o in outcomes)
        [not_ready] = await adapter.send([to_person(3)])
        assert isinstance(not_ready, Retry)
        assert "not ready" in not_ready.reason
        reason = adapter.not_ready_reason()
        assert reason is not None
        assert reason.startswith(f"{modem.path}: ")
        assert reason.endswith("reopening")
        setups = modem.commands.count("ATE0")
        modem.replug()
        modem.submit_delay = 0.0
        await wait_until(
            lambda: modem.commands.count("ATE0") > setups and modem.cnmi[1] == 2,
            within=3,
            what="the modem set up again",
        )
        await wait_until(
            lambda: adapter.not_ready_reason() is None, within=3, what="the adapter ready"
        )
        [outcome] = await adapter.send([to_person(4, text="测试")])
    assert isinstance(outcome, Accepted)
    await wait_until(
        lambda: any(r.delivery_id == 4 for r in context.reports),
        within=3,
        what="a report for delivery 4",
    )


async def test_a_modem_restart_is_followed_by_a_new_set_up(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, context = started
    modem.reset()
    assert modem.cmgf == 1  # forgotten
    async with asyncio.timeout(5):
        await wait_until(
            lambda: modem.cmgf == 0 and modem.cnmi == (2, 2, 0, 1, 0),
            within=3,
            what="the restarted modem set up again",
        )
        [outcome] = await adapter.send([to_person(1, text="测试")])
    assert isinstance(outcome, Accepted)
    await wait_until(lambda: context.reports, within=3, what="a report")  # +CDS routed again
    assert adapter.counters.initialisations == 2


async def test_stop_is_prompt_while_a_command_hangs(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, _ = started
    adapter.settings = adapter.settings.model_copy(update={"submit_timeout": 30.0})
    async with asyncio.timeout(5):
        modem.submit_delay = 60  # the network never answers
        sending = asyncio.ensure_future(adapter.send([to_person(1, text="测试")]))
        await wait_until(lambda: modem.sent, within=3, what="a part sent")
        started_at = time.monotonic()
        await adapter.stop()
        assert time.monotonic() - started_at < 1.0
        [outcome] = await sending
    assert isinstance(outcome, Retry)


# -- probe ----------------------------------------------------------------------------------------
async def test_probe_before_start_shows_identity_signal_and_registration(
    modem: GsmModemSimulator,
) -> None:
    adapter = GsmModemAdapter(name="modem", settings=settings_for(modem.path))
    async with asyncio.timeout(5):
        result = await adapter.probe()
    assert result.ok, result.summary
    assert "Quectel EC20F" in result.summary
    assert "signal -71 dBm (CSQ 21)" in result.summary
    assert "registered, home network on CHINA MOBILE" in result.summary
    assert result.details["imei"] == "861234567890123"
    assert result.details["smsc"] == "+8613800290500"
    assert modem.cmgf == 1  # a probe changes nothing on the modem


async def test_probe_of_a_running_tiantong_phone_without_signal(tmp_path: Path) -> None:
    async with GsmModemSimulator(link=tmp_path / "ttyTT", identity=TIANTONG_IDENTITY) as phone:
        adapter = GsmModemAdapter(name="modem", settings=settings_for(phone.path))
        async with asyncio.timeout(5):
            await adapter.start(RecordingContext(name="modem"))
            phone.registered = False
            phone.rssi = 99
            result = await adapter.probe()
            await adapter.stop()
    assert not result.ok
    assert "China Satcom TT-SAT SM100" in result.summary
    assert "no signal" in result.summary
    assert "not registered, searching" in result.summary


async def test_probe_of_a_missing_port(tmp_path: Path) -> None:
    adapter = GsmModemAdapter(name="modem", settings=settings_for(str(tmp_path / "gone")))
    async with asyncio.timeout(5):
        result = await adapter.probe()
    assert not result.ok
    assert "gone: no such port" in result.summary


def test_csq_to_dbm() -> None:
    assert [csq_dbm(v) for v in (0, 1, 21, 31, 99, None)] == [-113, -111, -71, -51, None, None]


# -- races between status reports, replies and sends in flight ---------------------------------
async def test_a_parts_report_arriving_while_later_parts_are_sent_still_counts(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    # A satellite phone takes a while per part: part 1's +CDS comes while part 2 is in flight.
    adapter, context = started
    modem.submit_delay = 0.2
    async with asyncio.timeout(5):
        [outcome] = await adapter.send([to_person(8)])
    assert isinstance(outcome, Accepted)
    assert outcome.detail["parts"] == 3
    await wait_until(
        lambda: reports_of(context, ReportState.DELIVERED), within=3, what="a delivered report"
    )
    assert adapter.counters.unmatched_reports == 0


async def test_a_report_overtaking_the_cmgs_answer_still_counts(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    # Some modems put the +CDS on the line before the +CMGS: <mr> of the same message.
    adapter, context = started
    modem.submit_delay = 0.3
    loop = asyncio.get_running_loop()
    modem.report_later = lambda part: loop.call_later(  # type: ignore[method-assign]
        0.05, modem._status_report, part, 0x00
    )
    async with asyncio.timeout(5):
        [outcome] = await adapter.send([to_person(9, text="测试")])
    assert isinstance(outcome, Accepted)
    await wait_until(
        lambda: reports_of(context, ReportState.DELIVERED), within=3, what="a delivered report"
    )
    [delivered] = context.reports
    assert delivered.delivery_id == 9


async def test_a_reply_while_the_new_message_is_still_going_out_confirms_the_new_one(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, context = started
    async with asyncio.timeout(5):
        [first] = await adapter.send([to_person(1, text="测试")])
        assert isinstance(first, Accepted)
        modem.submit_delay = 0.3
        sending = asyncio.ensure_future(adapter.send([to_person(2)]))
        # The person has the first part of warning 2 and answers it before the rest is out.
        await wait_until(lambda: len(modem.sent) >= 3, within=3, what="part 1 of delivery 2")
        modem.receive_sms(PERSON, "1")
        await wait_until(
            lambda: reports_of(context, ReportState.ACKNOWLEDGED), within=3, what="an ack"
        )
        [second] = await sending
    assert isinstance(second, Accepted)
    [ack] = reports_of(context, ReportState.ACKNOWLEDGED)
    assert ack.delivery_id == 2


async def test_a_modem_restart_mid_batch_waits_for_the_new_set_up(
    started: tuple[GsmModemAdapter, RecordingContext], modem: GsmModemSimulator
) -> None:
    adapter, _ = started
    modem.submit_delay = 0.5  # the reset surely comes while the first +CMGS is in flight
    async with asyncio.timeout(5):
        sending = asyncio.ensure_future(
            adapter.send([to_person(i, text="测试") for i in (1, 2, 3)])
        )
        await wait_until(lambda: modem.sent, within=3, what="the first message out")
        modem.reset()  # while the first +CMGS is in flight
        outcomes = await sending
    # Nothing is written to a modem half set up (text mode, no +CDS routing): the batch waits
    # for the set-up, then goes on.
    assert [type(o) for o in outcomes] == [Accepted, Accepted, Accepted], outcomes
    restart = len(modem.commands) - modem.commands[::-1].index("ATE0") - 1
    cnmi = modem.commands.index("AT+CNMI=2,2,0,1,0", restart)
    assert not any(c.startswith("AT+CMGS") for c in modem.commands[restart:cnmi])

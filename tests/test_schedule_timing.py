"""When schedules fire, as pure functions of the trigger, the last run and the clock: crontab
expressions in Asia/Shanghai (weekdays numbered as in crontab, not as APScheduler 3 numbers
them), expressions refused as mistakes, quiet hours, and the catch-up's choice between running
late and recording missed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dispatcher.schedules.timing import (
    SHANGHAI,
    QuietHours,
    crontab_trigger,
    crontab_weekdays,
    due_fires,
    next_fire,
)

HOUR = timedelta(hours=1)


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def _local(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=SHANGHAI)  # type: ignore[misc]


def test_monday_ten_oclock_is_monday_two_utc() -> None:
    trigger = crontab_trigger("0 10 * * 1")
    # From a Wednesday: the next Monday, not the Tuesday APScheduler 3 would read "1" as.
    fire = next_fire(trigger, _utc(2026, 7, 8, 0, 0))
    assert fire == _utc(2026, 7, 13, 2, 0)
    assert fire is not None and fire.astimezone(SHANGHAI).strftime("%A %H:%M") == "Monday 10:00"
    # Exactly at a fire time, the next one is a week on.
    assert next_fire(trigger, _utc(2026, 7, 13, 2, 0)) == _utc(2026, 7, 20, 2, 0)


def test_fire_times_across_the_date_boundary() -> None:
    # Monday 07:30 in China is still Sunday 23:30 in UTC.
    early = crontab_trigger("30 7 * * 1")
    assert next_fire(early, _utc(2026, 7, 8, 0, 0)) == _utc(2026, 7, 12, 23, 30)
    # The 1st of the month at 01:00 in China is the last day of the month before in UTC.
    monthly = crontab_trigger("0 1 1 * *")
    assert next_fire(monthly, _utc(2026, 7, 8, 0, 0)) == _utc(2026, 7, 31, 17, 0)
    # The server's own zone plays no part: the same instant asked in another offset.
    assert next_fire(early, _utc(2026, 7, 8, 0, 0).astimezone(SHANGHAI)) == _utc(
        2026, 7, 12, 23, 30
    )


def test_the_yearly_drill() -> None:
    drill = crontab_trigger("0 9 12 5 *")
    assert next_fire(drill, _utc(2026, 7, 8)) == _local(2027, 5, 12, 9, 0)


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("1", "mon"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("5-7", "sun,fri,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("1/2", "sun,mon,wed,fri"),
        ("sat,sun", "sun,sat"),
        ("MON-wed", "mon,tue,wed"),
        ("*", "*"),
    ],
)
def test_crontab_weekdays_become_day_names(field: str, days: str) -> None:
    assert crontab_weekdays(field) == days


def test_weekday_ranges_and_lists_fire_on_the_crontab_days() -> None:
    weekdays = crontab_trigger("0 8 * * 1-5")
    fires: list[datetime] = []
    at = _local(2026, 7, 5, 0, 0)  # a Sunday
    for _ in range(6):
        fire = next_fire(weekdays, at)
        assert fire is not None
        fires.append(fire)
        at = fire
    assert [f.astimezone(SHANGHAI).strftime("%a") for f in fires] == [
        "Mon",
        "Tue",
        "Wed",
        "Thu",
        "Fri",
        "Mon",
    ]


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("0 10 * *", "5 fields"),
        ("* 10 * * 1", "at most once an hour"),
        ("*/30 9 * * *", "at most once an hour"),
        ("0 10 1 * 1", "not both"),
        ("0 10 * * 8", "day of week '8'"),
        ("0 10 * * 5-1", "runs backwards"),
        ("0 25 * * *", "higher than the maximum"),
        ("0 9 31 2 *", "never fires"),
    ],
)
def test_expressions_refused(expression: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        crontab_trigger(expression)


def test_hourly_is_allowed() -> None:
    hourly = crontab_trigger("0 * * * *")
    assert next_fire(hourly, _utc(2026, 7, 8, 0, 30)) == _utc(2026, 7, 8, 1, 0)


def test_quiet_hours_past_midnight() -> None:
    quiet = QuietHours.parse("22:00-07:00")
    assert str(quiet) == "22:00-07:00"
    assert quiet.contains(_local(2026, 7, 8, 22, 0))
    assert quiet.contains(_local(2026, 7, 9, 3, 0))
    assert quiet.contains(_local(2026, 7, 9, 6, 59))
    assert not quiet.contains(_local(2026, 7, 9, 7, 0))
    assert not quiet.contains(_local(2026, 7, 8, 21, 59))
    # Read in China's time whatever the offset given: 14:30 UTC is 22:30 there.
    assert quiet.contains(_utc(2026, 7, 8, 14, 30))
    lunch = QuietHours.parse("12:00-13:30")
    assert lunch.contains(_local(2026, 7, 8, 12, 45))
    assert not lunch.contains(_local(2026, 7, 8, 13, 30))


@pytest.mark.parametrize("text", ["22:00", "22:00-24:00", "7:00-8:00", "10:00-10:00"])
def test_bad_quiet_hours(text: str) -> None:
    with pytest.raises(ValueError, match="quiet hours"):
        QuietHours.parse(text)


WEEKLY = crontab_trigger("0 10 * * 1")
MONDAY = _local(2026, 11, 30, 10, 0)


def test_nothing_due_before_the_fire_time() -> None:
    due = due_fires(WEEKLY, since=MONDAY - 2 * HOUR, now=MONDAY - timedelta(seconds=1), grace=HOUR)
    assert due.run is None
    assert due.missed == ()


def test_on_time_and_within_grace_it_runs() -> None:
    on_time = due_fires(WEEKLY, since=MONDAY - 2 * HOUR, now=MONDAY, grace=HOUR)
    assert on_time.run == MONDAY
    late = due_fires(
        WEEKLY, since=MONDAY - 2 * HOUR, now=MONDAY + 59 * timedelta(minutes=1), grace=HOUR
    )
    assert late.run == MONDAY
    assert late.missed == ()


def test_past_the_grace_window_it_is_missed() -> None:
    due = due_fires(
        WEEKLY, since=MONDAY - 2 * HOUR, now=MONDAY + HOUR + timedelta(seconds=1), grace=HOUR
    )
    assert due.run is None
    assert due.missed == (MONDAY,)


def test_the_newest_runs_late_and_older_ones_are_missed() -> None:
    since = MONDAY - timedelta(weeks=3, hours=1)
    due = due_fires(WEEKLY, since=since, now=MONDAY + timedelta(minutes=20), grace=HOUR)
    assert due.run == MONDAY
    assert due.missed == tuple(MONDAY - timedelta(weeks=w) for w in (3, 2, 1))


def test_the_last_fire_time_handled_is_not_due_again() -> None:
    due = due_fires(WEEKLY, since=MONDAY, now=MONDAY + timedelta(minutes=5), grace=HOUR)
    assert due.run is None
    assert due.missed == ()


def test_a_long_stop_lists_the_newest_missed_and_counts_the_rest() -> None:
    hourly = crontab_trigger("0 * * * *")
    since = MONDAY - timedelta(days=10)
    due = due_fires(hourly, since=since, now=MONDAY + timedelta(minutes=10), grace=HOUR, keep=5)
    assert due.run == MONDAY
    assert due.missed == tuple(MONDAY - timedelta(hours=h) for h in (5, 4, 3, 2, 1))
    # Ten days of hourly fire times after ``since``: 240, the newest of which runs.
    assert due.earlier == 240 - 1 - 5
    everything_missed = due_fires(
        hourly,
        since=since,
        now=MONDAY + timedelta(hours=2, minutes=30),
        grace=timedelta(minutes=10),
        keep=5,
    )
    assert everything_missed.run is None
    assert everything_missed.missed[-1] == MONDAY + timedelta(hours=2)
    assert len(everything_missed.missed) + everything_missed.earlier == 240 + 2

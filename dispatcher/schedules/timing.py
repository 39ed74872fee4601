"""When schedules fire: crontab expressions read in Asia/Shanghai, quiet hours, and which fire
times are due — pure functions of the trigger, the last recorded run and the clock, so tests
drive them with a controllable clock instead of waiting.

APScheduler 3 numbers weekdays from Monday = 0, crontab from Sunday = 0 (its own docs call
this a historical mistake, fixed only in 4.x): ``CronTrigger.from_crontab("0 10 * * 1")``
fires on Tuesdays. :func:`crontab_trigger` rewrites the day-of-week field into day names
first, so an expression means what it means in crontab.
"""

from __future__ import annotations

import functools
import re
from collections import deque
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

#: Every schedule is read in China's time, whatever the server's zone.
SHANGHAI = ZoneInfo("Asia/Shanghai")
#: A test broadcast sounds loudspeakers: an expression firing more often than this (a ``*``
#: in the minute field) is refused as the mistake it almost always is.
MIN_INTERVAL = timedelta(hours=1)
#: Missed fire times recorded one by one at a catch-up; older ones are counted in a note.
MAX_LISTED_MISSED = 1000

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAY_NUMBER = re.compile(r"^[0-7]$")
_CLOCK = "([01][0-9]|2[0-3]):([0-5][0-9])"
#: Quiet hours as written: HH:MM-HH:MM.
QUIET_HOURS_PATTERN = f"^{_CLOCK}-{_CLOCK}$"
_QUIET = re.compile(QUIET_HOURS_PATTERN)
# The verdict on an expression's interval must not depend on the day it is checked.
_INTERVAL_FROM = datetime(2025, 1, 1, tzinfo=SHANGHAI)


class FireTimes(Protocol):
    """What a trigger answers (APScheduler's ``BaseTrigger``)."""

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None: ...


def _day(token: str) -> int:
    if _DAY_NUMBER.match(token):
        return int(token)
    if token in _DAY_NAMES:
        return _DAY_NAMES.index(token)
    raise ValueError(f"day of week {token!r}: use 0-7 (0 and 7 are Sunday) or sun … sat")


def crontab_weekdays(field: str) -> str:
    """Crontab's day-of-week field (0 or 7 = Sunday; names, ranges, lists, steps) as day names,
    which APScheduler reads the same way."""
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.lower().split(","):
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"day of week {item!r}: the step must be a whole number ≥ 1")
            step = int(step_text)
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            first, _, last = span.partition("-")
            low, high = _day(first), _day(last)
            if low > high:
                raise ValueError(f"day of week {item!r}: the range runs backwards")
        else:
            low = _day(span)
            # "1/2" is "1-7/2" in crontab.
            high = 7 if slash else low
        days.update(day % 7 for day in range(low, high + 1, step))
    return ",".join(_DAY_NAMES[day] for day in sorted(days))


@functools.lru_cache(maxsize=512)
def crontab_trigger(expression: str) -> CronTrigger:
    """A trigger for a 5-field crontab expression (minute hour day month day-of-week) in
    Asia/Shanghai; ValueError says what is wrong with it. Cached: a trigger only answers
    questions (every schedule read and listed builds one)."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"a cron expression has 5 fields (minute hour day month day-of-week), "
            f"this one {len(fields)}: e.g. '0 10 * * 1' is Mondays at 10:00"
        )
    if fields[2] != "*" and fields[4] != "*":
        # crontab fires when either matches, APScheduler only when both do.
        raise ValueError(
            "give a day of the month or a day of the week, not both (crontab reads the two "
            "as either-or, which is rarely what is meant)"
        )
    fields[4] = crontab_weekdays(fields[4])
    # Imported here: the config imports this module, and most commands read no schedule.
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(" ".join(fields), timezone=SHANGHAI)
    _check_interval(trigger)
    return trigger


def _check_interval(trigger: CronTrigger) -> None:
    # From midnight, the first fire time is the first minute value of the first matching hour:
    # with a second minute value the next fire is in the same hour, with one the fire times
    # are whole hours apart (Asia/Shanghai keeps no daylight saving). Two fire times tell.
    first = trigger.get_next_fire_time(None, _INTERVAL_FROM)
    if first is None:
        raise ValueError("this expression never fires (e.g. 31 February)")
    second = trigger.get_next_fire_time(first, first)
    if second is not None and second - first < MIN_INTERVAL:
        raise ValueError(
            f"this expression fires {_clock(first)} and {_clock(second)}: a test "
            "broadcast may fire at most once an hour (is there a * in the minute field?)"
        )


def _clock(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).strftime("%a %H:%M")


def next_fire(trigger: FireTimes, now: datetime) -> datetime | None:
    """The first fire time after ``now``."""
    return trigger.get_next_fire_time(None, now + timedelta(microseconds=1))


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily span in Asia/Shanghai when a schedule must not sound, e.g. 22:00-07:00 (it may
    run past midnight). The start is inside, the end is not."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        match = _QUIET.fullmatch(text)
        if match is None:
            raise ValueError(f"quiet hours {text!r}: write them as HH:MM-HH:MM, e.g. 22:00-07:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if (h1, m1) == (h2, m2):
            raise ValueError("quiet hours: the start and the end are the same time")
        return cls(time(h1, m1), time(h2, m2))

    def contains(self, moment: datetime) -> bool:
        local = moment.astimezone(SHANGHAI).time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True, slots=True)
class DueFires:
    """What a catch-up finds between the last handled fire time and now."""

    #: The newest fire time due, when it is within the grace window: it runs now (late, if
    #: the daemon was down at the time).
    run: datetime | None
    #: The other fire times due, oldest first: recorded as missed.
    missed: tuple[datetime, ...]
    #: Missed fire times older than every one in ``missed``, beyond MAX_LISTED_MISSED:
    #: counted (in the oldest listed one's note), not listed.
    earlier: int = 0


def due_fires(
    trigger: FireTimes,
    *,
    since: datetime,
    now: datetime,
    grace: timedelta,
    keep: int = MAX_LISTED_MISSED,
) -> DueFires:
    """The fire times after ``since`` (the last one handled, or when the schedule became
    active) up to ``now``: the newest runs if ``now`` is within ``grace`` of it, every other
    one is missed. Nothing due: ``DueFires(None, ())``."""
    newest: deque[datetime] = deque(maxlen=keep + 1)
    dropped = 0
    fire = trigger.get_next_fire_time(None, since + timedelta(microseconds=1))
    while fire is not None and fire <= now:
        if len(newest) == newest.maxlen:
            dropped += 1
        newest.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    if not newest:
        return DueFires(None, ())
    run: datetime | None = None
    if now - newest[-1] <= grace:
        run = newest.pop()
    elif len(newest) > keep:
        # Every one is missed: the listed ones are the newest ``keep``.
        newest.popleft()
        dropped += 1
    return DueFires(run, tuple(newest), dropped)

"""A schedule as the config (``[[schedules]]``) and the API (``POST /v1/schedules``) give it.

Its plan ``rules`` are the level policy's rule grammar (:class:`dispatcher.policy.PolicyRule`),
e.g. ``[{audience = "devices", device_kinds = ["loudspeaker"]}]``; they replace the level's
rules for the warnings the schedule makes. Durations are seconds or text like ``"1h"``.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from dispatcher.domain import Level, Status
from dispatcher.durations import parse_duration
from dispatcher.policy import AudienceSelector, PolicyRule
from dispatcher.schedules.timing import QUIET_HOURS_PATTERN, QuietHours, crontab_trigger
from dispatcher.warning_input import normalise_area_code

#: Schedule ids: short, safe in URLs, CAP identifiers and file names.
SCHEDULE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_AREA_CODE_PATTERN = r"^[0-9]{6}([0-9]{6})?$"
_DURATION_TEXT = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
_DAY = 86400.0


class ScheduleStatus(enum.StrEnum):
    """What a schedule's warnings are: never Actual."""

    #: A check of the devices (and people) it reaches; silent devices go on the maintenance
    #: list, villages never fall back to people.
    TEST = Status.TEST.value
    #: A drill: handled as a real warning would be, fallbacks and visits included.
    EXERCISE = Status.EXERCISE.value

    @property
    def status(self) -> Status:
        return Status(self.value)


ScheduleId = Annotated[str, StringConstraints(pattern=SCHEDULE_ID_PATTERN)]
AreaCode = Annotated[
    str, StringConstraints(pattern=_AREA_CODE_PATTERN), AfterValidator(normalise_area_code)
]
# Not blank; no whitespace stripping, so what the schema says is what is accepted.
_Text = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")]
_LongText = Annotated[str, StringConstraints(max_length=4000)]


def _duration(value: object) -> float:
    # Stricter than parse_duration (no spaces), so the OpenAPI pattern says exactly what passes.
    if isinstance(value, str) and not re.fullmatch(_DURATION_TEXT, value):
        raise ValueError(f"{value!r} is not a duration; write e.g. '90s', '10m', '1h30m', '2d'")
    return parse_duration(value)


def _duration_schema(**bounds: float) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", **bounds},
                {"type": "string", "pattern": _DURATION_TEXT},
            ],
            "description": "seconds, or text like '90s', '10m', '1h30m', '2d'",
        }
    )


Grace = Annotated[
    float,
    BeforeValidator(_duration),
    Field(gt=0, le=7 * _DAY),
    _duration_schema(exclusiveMinimum=0, maximum=7 * _DAY),
]
Lifetime = Annotated[
    float,
    BeforeValidator(_duration),
    Field(ge=60, le=7 * _DAY),
    _duration_schema(minimum=60, maximum=7 * _DAY),
]
ReportDelay = Annotated[
    float,
    BeforeValidator(_duration),
    Field(ge=0, le=_DAY),
    _duration_schema(minimum=0, maximum=_DAY),
]


class _ScheduleFields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: What people call it, e.g. "每周一喇叭测试".
    name: Annotated[str, StringConstraints(max_length=200)] = ""
    #: 5-field crontab (minute hour day month day-of-week), always read in Asia/Shanghai;
    #: day-of-week 0 and 7 are Sunday.
    cron: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    #: Test (a check of the devices) or Exercise (a drill). Never Actual.
    status: ScheduleStatus = ScheduleStatus.TEST
    #: The level the warnings carry (their timeouts and attempts come from its policy).
    level: Level = Level.BLUE
    #: Target area codes (a code covers everything beneath it).
    areas: tuple[AreaCode, ...] = Field(min_length=1, max_length=5000)
    #: Who and which channels, in the level policy's grammar; replaces the level's rules.
    rules: tuple[PolicyRule, ...] = Field(min_length=1, max_length=len(AudienceSelector))
    #: CAP event, headline and the message (CAP description) read out and sent.
    event: _Text = "应急广播测试"
    headline: _Text
    message: _LongText = ""
    #: HH:MM-HH:MM in Asia/Shanghai: a run that would fall inside is skipped (recorded).
    quiet_hours: Annotated[str, StringConstraints(pattern=QUIET_HOURS_PATTERN)] | None = None
    #: A fire time missed while the daemon was down still runs this long after it.
    grace: Grace = 3600.0
    #: How long each run's warning stays in force.
    expires_after: Lifetime = 7200.0
    #: When to make the test report after a run (None: the level's device_ack_timeout + 1 min).
    report_after: ReportDelay | None = None
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        crontab_trigger(value)
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _valid_quiet_hours(cls, value: str | None) -> str | None:
        if value is not None:
            QuietHours.parse(value)
        return value

    @field_validator("rules")
    @classmethod
    def _rules(cls, value: tuple[PolicyRule, ...]) -> tuple[PolicyRule, ...]:
        seen: set[AudienceSelector] = set()
        for index, rule in enumerate(value):
            if rule.audience in seen:
                raise ValueError(
                    f"rules[{index}]: audience {rule.audience.value} has two rules: give it one "
                    "rule whose channels list its ladder in order"
                )
            seen.add(rule.audience)
            if rule.fallback is not None:
                raise ValueError(
                    f"rules[{index}].fallback: a schedule takes no fallback of its own; a drill "
                    "(Exercise) falls back as its level's policy says, a Test never does"
                )
        return value

    @property
    def quiet(self) -> QuietHours | None:
        return QuietHours.parse(self.quiet_hours) if self.quiet_hours is not None else None


class ScheduleSpec(_ScheduleFields):
    """One schedule: ``[[schedules]]`` in the config, or a stored one."""

    #: Lower-case letters, digits, - and _; the schedule's name in the API and the CLI.
    id: ScheduleId

    def stored(self) -> str:
        """As the store keeps it."""
        return self.model_dump_json()

    @classmethod
    def from_stored(cls, text: str) -> ScheduleSpec:
        return cls.model_validate_json(text)


class ScheduleInput(_ScheduleFields):
    """A new schedule posted to the API; without an id, one is made up."""

    id: ScheduleId | None = None

    def with_id(self, schedule_id: str) -> ScheduleSpec:
        fields: dict[str, Any] = self.model_dump(exclude={"id"}, exclude_defaults=True)
        return ScheduleSpec.model_validate({**fields, "id": schedule_id})

"""The level policy: for each warning level, who is reached through which channels.

Loaded from a TOML file (``config/policy.toml``) and validated here; the planner turns it into
set-based SQL.
"""

from __future__ import annotations

import enum
from typing import Annotated, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dispatcher.domain import Audience, Channel, DeviceKind, Level, Role, WarningRecord
from dispatcher.durations import Seconds


class AudienceSelector(enum.StrEnum):
    """Who a policy rule reaches. Each selector has a fixed priority (lower is sooner)."""

    DEVICES = "devices"
    GRID_MEMBERS = "grid_members"
    VILLAGE_CADRES = "village_cadres"
    RESCUE_TEAMS = "rescue_teams"
    HAZARD_MONITORS = "hazard_monitors"
    VULNERABLE = "vulnerable"
    LIVES_ALONE = "lives_alone"
    HOUSEHOLDS = "households"
    EVERYONE = "everyone"

    @property
    def priority(self) -> int:
        return _PRIORITY[self]

    @property
    def audience(self) -> Audience:
        """The coverage level a delivery for this selector counts toward."""
        if self is AudienceSelector.DEVICES:
            return Audience.DEVICE
        if self is AudienceSelector.GRID_MEMBERS:
            return Audience.GRID_MEMBER
        if self is AudienceSelector.HOUSEHOLDS:
            return Audience.HOUSEHOLD
        return Audience.PERSON

    @property
    def role(self) -> Role | None:
        return _ROLE.get(self)


# Devices reach the most people per message; grid members then organise everyone else;
# vulnerable people cannot wait for the general SMS queue.
_PRIORITY = {
    AudienceSelector.DEVICES: 0,
    AudienceSelector.GRID_MEMBERS: 10,
    AudienceSelector.VILLAGE_CADRES: 15,
    AudienceSelector.RESCUE_TEAMS: 15,
    AudienceSelector.HAZARD_MONITORS: 15,
    AudienceSelector.VULNERABLE: 20,
    AudienceSelector.LIVES_ALONE: 20,
    AudienceSelector.HOUSEHOLDS: 30,
    AudienceSelector.EVERYONE: 40,
}
_ROLE = {
    AudienceSelector.GRID_MEMBERS: Role.GRID_MEMBER,
    AudienceSelector.VILLAGE_CADRES: Role.VILLAGE_CADRE,
    AudienceSelector.RESCUE_TEAMS: Role.RESCUE_TEAM,
    AudienceSelector.HAZARD_MONITORS: Role.HAZARD_MONITOR,
}


def _check_ladder(channels: tuple[Channel, ...]) -> None:
    """A people ladder: sms and voice only, each once."""
    bad = [c.value for c in channels if c not in (Channel.SMS, Channel.VOICE)]
    if bad:
        raise ValueError(f"people are reached by sms or voice; {', '.join(bad)} is for devices")
    if len(set(channels)) != len(channels):
        raise ValueError(
            "channels is a ladder (first, then the next if not acknowledged): "
            "name each channel once"
        )


class DeviceFallback(BaseModel):
    """Who a village falls back to when none of its devices played a warning (offline,
    failed, or no played report after every attempt): ``fallback = { audience =
    "village_cadres", channels = ["voice", "sms"] }`` in a devices rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A role selector: the people of that role in the village (grid_members: the members
    #: of the village's grids).
    audience: AudienceSelector
    #: Their ladder: the first channel at once, the next if that is not acknowledged.
    channels: tuple[Channel, ...]

    # Field validators, so an error names its key (levels.red.rules[0].fallback.audience).
    @field_validator("audience")
    @classmethod
    def _role_audience(cls, value: AudienceSelector) -> AudienceSelector:
        if value.role is None:
            roles = ", ".join(s.value for s in AudienceSelector if s.role is not None)
            raise ValueError(
                f"a village falls back to people of one role ({roles}), not {value.value}"
            )
        return value

    @field_validator("channels")
    @classmethod
    def _ladder(cls, value: tuple[Channel, ...]) -> tuple[Channel, ...]:
        if not value:
            raise ValueError("a fallback needs channels, e.g. ['voice', 'sms']")
        _check_ladder(value)
        return value


class PolicyRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    audience: AudienceSelector
    channels: tuple[Channel, ...] = ()
    device_kinds: tuple[DeviceKind, ...] = ()
    #: Devices rules only: whom a village's people hear from when its devices did not play.
    fallback: DeviceFallback | None = None

    @field_validator("fallback")
    @classmethod
    def _fallback_for_devices(
        cls, value: DeviceFallback | None, info: ValidationInfo
    ) -> DeviceFallback | None:
        audience = info.data.get("audience")
        if value is not None and audience is not None and audience is not AudienceSelector.DEVICES:
            raise ValueError("fallback belongs only in a devices rule")
        return value

    @model_validator(mode="after")
    def _check_channels(self) -> Self:
        if self.audience is AudienceSelector.DEVICES:
            if not self.device_kinds:
                raise ValueError("a devices rule needs device_kinds, e.g. ['loudspeaker']")
            if self.channels:
                raise ValueError(
                    "a devices rule takes device_kinds, not channels (the kind sets the channel)"
                )
        else:
            if not self.channels:
                raise ValueError(f"a {self.audience.value} rule needs channels, e.g. ['sms']")
            _check_ladder(self.channels)
            if self.device_kinds:
                raise ValueError("device_kinds belongs only in a devices rule")
        return self


class LevelPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: How long a person has to acknowledge one step of their ladder before the next step.
    ack_timeout: Seconds = 600.0
    #: How long a loudspeaker or transmitter has to report played (None: the engine's
    #: ``device_ack_timeout``).
    device_ack_timeout: Annotated[Seconds, Field(gt=0)] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    #: After the last step of a person's ladder goes unacknowledged, task their grid member
    #: to visit the household.
    visit: bool = False
    rules: tuple[PolicyRule, ...] = Field(min_length=1)

    @property
    def device_fallback(self) -> DeviceFallback | None:
        """The devices rule's fallback, if it has one."""
        for rule in self.rules:
            if rule.audience is AudienceSelector.DEVICES:
                return rule.fallback
        return None

    @model_validator(mode="after")
    def _one_rule_per_audience(self) -> Self:
        seen: set[AudienceSelector] = set()
        for rule in self.rules:
            if rule.audience in seen:
                raise ValueError(
                    f"audience {rule.audience.value} has two rules: give it one rule whose "
                    "channels list its ladder in order"
                )
            seen.add(rule.audience)
        return self


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    levels: dict[Level, LevelPolicy]

    @model_validator(mode="after")
    def _every_level(self) -> Self:
        missing = [lvl.value for lvl in Level if lvl not in self.levels]
        if missing:
            raise ValueError(f"the policy has no entry for level(s) {', '.join(missing)}")
        return self

    def for_level(self, level: Level) -> LevelPolicy:
        return self.levels[level]


#: A warning's own plan rules (``WarningRecord.plan_rules``), as JSON.
PLAN_RULES: TypeAdapter[tuple[PolicyRule, ...]] = TypeAdapter(tuple[PolicyRule, ...])


def plan_rules_json(rules: tuple[PolicyRule, ...]) -> str:
    return PLAN_RULES.dump_json(rules, exclude_defaults=True).decode()


def plan_policy(policy: Policy, warning: WarningRecord) -> Policy:
    """The policy ``warning`` is planned with: the level policy, or, for a warning that
    carries its own rules (a scheduled test broadcast or drill), the level policy with the
    level's rules replaced by those. The level's other settings (timeouts, attempts, visits)
    stay; so does its village fallback, carried onto the warning's devices rule: the engine
    applies the level's fallback (to an Exercise; a Test never falls back), and the planner
    must know it to leave out what a fallback has added already."""
    if warning.plan_rules is None:
        return policy
    level = policy.for_level(warning.level)
    fallback = level.device_fallback
    rules = tuple(
        rule.model_copy(update={"fallback": fallback})
        if rule.audience is AudienceSelector.DEVICES
        else rule
        for rule in PLAN_RULES.validate_json(warning.plan_rules)
    )
    replaced = level.model_copy(update={"rules": rules})
    return policy.model_copy(update={"levels": {**policy.levels, warning.level: replaced}})

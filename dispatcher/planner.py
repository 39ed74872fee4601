"""The planner: a warning, the level policy and the directory become delivery rows.

Each statement is one set-based ``INSERT … SELECT`` over the directory — never a Python loop
over people — in portable SQL with ``?`` placeholders. A plan is a list of stages, each
committed by the store in its own short write transaction
(:meth:`dispatcher.store.base.Store.execute_plan`), so the engine starts on the first stage's
deliveries while the rest is planned and can record outcomes between stages:

1. devices (loudspeakers, transmitters, modems): a few thousand rows, milliseconds;
2. people, tier by tier — rules of priority ≤ 15 (grid members, cadres, rescue teams, hazard
   monitors), then ≤ 20 (vulnerable, living alone), then the rest (households, everyone) —
   each tier in chunks of covered villages (by code) small enough that no stage holds the
   writer for long.

Ladders: a rule's ``channels`` are the steps of an escalation ladder, in order. A person's
first step is the first channel of the most urgent rule that matched them; their row for the
other channel, if any rule gives them one, is planned ``held`` (the engine releases it when the
first step fails or goes unacknowledged, and skips it when the person acknowledges).

One row per person and channel: a person's rows are all planned in the tier of the most urgent
rule that matched them (later tiers exclude people matched by an earlier tier's rules), so a
person's whole ladder is committed in one transaction. Each row keeps the audience and
priority of the most urgent rule that gives its channel (a grid member who is also vulnerable
is texted once, as a grid member).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dispatcher.domain import Channel, DeviceKind, MsgType, Role, WarningRecord
from dispatcher.policy import AudienceSelector, LevelPolicy, Policy
from dispatcher.store.base import PlanStage, SqlStatement, VillageRange

#: Within the devices tier, loudspeakers first: one MQTT publish reaches a whole village.
DEVICE_PRIORITY = {
    DeviceKind.LOUDSPEAKER: 0,
    DeviceKind.TRANSMITTER: 1,
    DeviceKind.MODEM: 5,
}

#: People tiers by rule priority: ≤ 15 (grid members, cadres, rescue teams, hazard monitors),
#: ≤ 20 (vulnerable, living alone), then the rest (households, everyone).
TIER_LIMITS: tuple[int, ...] = (15, 20)

#: Persons per chunk of villages, per tier, so that no stage holds the writer for more than
#: about 0.1–0.3 s on the reference machine (bench/RESULTS.md). A chunk's statements read
#: every person of its villages through persons_village (about 0.15–0.3 µs each per
#: statement) and write a row for some of them (about 4–5 µs each with the counts and the
#: commit): at red, tier 1 writes a row for about 1 person in 75 (and carries the coverage
#: targets), tier 2 for about 1 in 4 (both channels), the rest for nearly everyone.
CHUNK_PERSONS: tuple[int, ...] = (250_000, 150_000, 50_000)
#: Chunks of coverage targets alone (a warning without people rules, e.g. a Cancel).
COVERAGE_CHUNK_PERSONS = 500_000

_PERSON_CHANNELS = (Channel.SMS, Channel.VOICE)

_COLUMNS = (
    "warning_seq, audience, target_id, channel, area_code, priority, state, attempts, due_at, "
    "updated_at"
)

# The warning's internal key, evaluated once per statement.
_WARNING_SEQ = "(SELECT w.seq FROM warnings w WHERE w.id = ?)"
_WARNING_AREAS = "SELECT wa.area_code FROM warning_areas wa WHERE wa.warning_id = ?"

# The villages (and towns …) under any of the warning's target codes.
_COVERED_AREAS = f"SELECT c.descendant FROM area_closure c WHERE c.ancestor IN ({_WARNING_AREAS})"
# The areas above the targets: a transmitter serving a whole county is used for a village
# warning too (its protocol addresses individual villages).
_AREAS_ABOVE = f"SELECT c.ancestor FROM area_closure c WHERE c.descendant IN ({_WARNING_AREAS})"


@dataclass(frozen=True, slots=True)
class _PersonRule:
    selector: AudienceSelector
    predicate: str
    #: The ladder, in order.
    channels: tuple[Channel, ...]

    @property
    def tier(self) -> int:
        return _tier(self.selector.priority)

    @property
    def always(self) -> bool:
        return self.selector is AudienceSelector.EVERYONE


def _tier(priority: int) -> int:
    for index, limit in enumerate(TIER_LIMITS):
        if priority <= limit:
            return index
    return len(TIER_LIMITS)


def _person_predicate(selector: AudienceSelector) -> str:
    role: Role | None = selector.role
    if role is not None:
        return f"(p.roles & {role.bit}) != 0"
    if selector is AudienceSelector.VULNERABLE:
        return "p.vulnerable = 1"
    if selector is AudienceSelector.LIVES_ALONE:
        return "p.lives_alone = 1"
    if selector is AudienceSelector.HOUSEHOLDS:
        # One contact per household: the member with a phone whose id sorts first.
        return (
            "(p.household_id IS NOT NULL AND p.id = (SELECT min(h.id) FROM persons h "
            "WHERE h.household_id = p.household_id AND h.phone IS NOT NULL))"
        )
    if selector is AudienceSelector.EVERYONE:
        return "1 = 1"
    raise ValueError(f"no person predicate for {selector}")


def device_stage(warning: WarningRecord, policy: Policy, *, now: float) -> PlanStage | None:
    """Stage 1 when the level reaches devices: it needs no directory counts, so it can be
    committed while the village chunks of the later stages are being sized. It is the first
    stage :func:`plan_stages` returns for the same arguments; never the last (the coverage
    targets follow it)."""
    kinds = _device_kinds(policy.for_level(warning.level))
    if not kinds:
        return None
    return PlanStage(1, (_device_statement(warning.id, kinds, now),), label="devices")


def plan_stages(
    warning: WarningRecord,
    policy: Policy,
    *,
    now: float,
    villages: Sequence[tuple[str, int]],
    chunk_persons: int | None = None,
) -> list[PlanStage]:
    """The stages that create ``warning``'s deliveries, in order; the last one has ``last``.

    ``villages``: the covered villages with their number of persons, to size the chunks.
    The list is deterministic for the same warning, policy and villages. Which person is
    planned never depends on it: the chunks of a tier cover every village code between
    them (the first is open below, the last open above). ``chunk_persons`` overrides the
    chunk size of every tier (tests).

    A Cancel is sent to the devices only (so loudspeakers and transmitters stop); people
    are not messaged again. Coverage targets are written with the first people tier's
    chunks, or in chunks of their own when there is no people tier.
    """
    level_policy = policy.for_level(warning.level)
    stages: list[PlanStage] = []
    first = device_stage(warning, policy, now=now)
    if first is not None:
        stages.append(first)
    rules = [] if warning.msg_type is MsgType.CANCEL else _person_rules(level_policy)
    guard = _fallback_guard(level_policy)
    tiers = sorted({r.tier for r in rules})
    for position, tier in enumerate(tiers):
        tier_rules = [r for r in rules if r.tier == tier]
        earlier = [r for r in rules if r.tier < tier]
        rest = [r for r in rules if r.tier >= tier]
        size = chunk_persons or CHUNK_PERSONS[tier]
        chunks = _village_chunks(villages, size)
        for index, chunk in enumerate(chunks, 1):
            statements = [
                statement
                for channel in _PERSON_CHANNELS
                if (
                    statement := _person_statement(
                        warning.id, channel, tier_rules, earlier, rest, now, chunk, guard
                    )
                )
                is not None
            ]
            stages.append(
                PlanStage(
                    len(stages) + 1,
                    tuple(statements),
                    coverage=chunk if position == 0 else None,
                    label=f"people tier {tier + 1}, chunk {index}/{len(chunks)}",
                )
            )
    if not tiers:
        chunks = _village_chunks(villages, chunk_persons or COVERAGE_CHUNK_PERSONS)
        for index, chunk in enumerate(chunks, 1):
            stages.append(
                PlanStage(
                    len(stages) + 1,
                    (),
                    coverage=chunk,
                    label=f"coverage targets, chunk {index}/{len(chunks)}",
                )
            )
    stages[-1] = dataclasses.replace(stages[-1], last=True)
    return stages


def plan_statements(warning: WarningRecord, policy: Policy, *, now: float) -> list[SqlStatement]:
    """The same deliveries as :func:`plan_stages`, as one statement per target kind and
    channel over every covered village: one transaction's worth (tests, the benchmark's
    floor)."""
    level_policy = policy.for_level(warning.level)
    statements: list[SqlStatement] = []
    device_kinds = _device_kinds(level_policy)
    if device_kinds:
        statements.append(_device_statement(warning.id, device_kinds, now))
    if warning.msg_type is MsgType.CANCEL:
        return statements
    rules = _person_rules(level_policy)
    guard = _fallback_guard(level_policy)
    for channel in _PERSON_CHANNELS:
        statement = _person_statement(warning.id, channel, rules, [], rules, now, None, guard)
        if statement is not None:
            statements.append(statement)
    return statements


def _village_chunks(villages: Sequence[tuple[str, int]], size: int) -> list[VillageRange]:
    """Consecutive ranges of village codes holding about ``size`` persons each; together
    they cover every code (at least one range, open at both ends)."""
    bounds: list[str] = []
    total = 0
    ordered = sorted(villages)
    for position, (code, persons) in enumerate(ordered):
        total += persons
        if total >= size and position < len(ordered) - 1:
            bounds.append(code)
            total = 0
    edges: list[str | None] = [None, *bounds, None]
    return [VillageRange(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def _device_kinds(level_policy: LevelPolicy) -> list[DeviceKind]:
    kinds: list[DeviceKind] = []
    for rule in level_policy.rules:
        if rule.audience is AudienceSelector.DEVICES:
            kinds.extend(k for k in rule.device_kinds if k not in kinds)
    return kinds


def _person_rules(level_policy: LevelPolicy) -> list[_PersonRule]:
    """The level's people rules, most urgent first (ties in AudienceSelector order)."""
    order = list(AudienceSelector)
    rules = [
        _PersonRule(rule.audience, _person_predicate(rule.audience), rule.channels)
        for rule in level_policy.rules
        if rule.audience is not AudienceSelector.DEVICES
    ]
    return sorted(rules, key=lambda r: (r.selector.priority, order.index(r.selector)))


def _fallback_guard(level_policy: LevelPolicy) -> int | None:
    """The role bit of the level's village fallback people, if it has a fallback.

    The engine adds a fallback person's deliveries when a village's devices did not play
    (:mod:`dispatcher.store.engine_ops`), which can happen before the stage that plans
    that person has committed: the person statements then leave out a (person, channel)
    the engine has added already. Only people holding the role are looked up (about one in
    75), so the check costs little."""
    fallback = level_policy.device_fallback
    if fallback is None or fallback.audience.role is None:
        return None
    return fallback.audience.role.bit


def _device_statement(warning_id: str, kinds: list[DeviceKind], now: float) -> SqlStatement:
    kind_marks = ", ".join("?" * len(kinds))
    channel_case = " ".join(f"WHEN '{k.value}' THEN '{k.channel.value}'" for k in DeviceKind)
    priority_case = " ".join(f"WHEN '{k.value}' THEN {DEVICE_PRIORITY[k]}" for k in DeviceKind)
    sql = (
        f"INSERT INTO deliveries ({_COLUMNS}) "
        f"SELECT {_WARNING_SEQ}, 'device', d.id, CASE d.kind {channel_case} END, d.area_code, "
        f"CASE d.kind {priority_case} END, 'pending', 0, ?, ? "
        f"FROM devices d WHERE d.kind IN ({kind_marks}) AND EXISTS ("
        "SELECT 1 FROM device_areas da WHERE da.device_id = d.id AND "
        f"(da.area_code IN ({_COVERED_AREAS}) OR da.area_code IN ({_AREAS_ABOVE}))) "
        "ORDER BY 6, d.id"
    )
    params = (warning_id, now, now, *(k.value for k in kinds), warning_id, warning_id)
    return SqlStatement(sql, params)


def _any(rules: Sequence[_PersonRule]) -> str | None:
    """SQL for "one of these rules matches"; None when one always does."""
    if any(r.always for r in rules):
        return None
    return "(" + " OR ".join(r.predicate for r in rules) + ")"


def _case(rules: Sequence[_PersonRule], value: Callable[[_PersonRule], str]) -> str:
    """The value of the first of ``rules`` (most urgent first) that matches."""
    branches: list[tuple[_PersonRule, str]] = []
    for rule in rules:
        branches.append((rule, value(rule)))
        if rule.always:
            break
    if len({v for _, v in branches}) == 1:
        return branches[0][1]
    *whens, (_, last_value) = branches
    sql = " ".join(f"WHEN {r.predicate} THEN {v}" for r, v in whens)
    return f"CASE {sql} ELSE {last_value} END"


def _state_sql(channel: Channel, tier_rules: Sequence[_PersonRule]) -> str:
    """'pending' when ``channel`` is the person's first step, else 'held'.

    The first step is the first channel of the most urgent rule that matched; for a row of
    this tier's statement that rule is one of the tier's (earlier tiers' rules are excluded,
    and every row matches one of the tier's)."""
    return _case(tier_rules, lambda r: "'pending'" if r.channels[0] is channel else "'held'")


def _person_statement(
    warning_id: str,
    channel: Channel,
    tier_rules: Sequence[_PersonRule],
    earlier: Sequence[_PersonRule],
    rest: Sequence[_PersonRule],
    now: float,
    villages: VillageRange | None,
    guard: int | None = None,
) -> SqlStatement | None:
    """The ``channel`` rows of the persons whose most urgent matching rule is one of
    ``tier_rules`` (``earlier``: the more urgent tiers' rules, whose persons are planned
    already; ``rest``: this tier's and the later tiers' rules, which give the channel).
    None when no rule in ``rest`` gives ``channel``."""
    givers = [r for r in rest if channel in r.channels]
    if not givers:
        return None
    # Matched by a rule of this tier, and by a rule that gives the channel; each is left
    # out when always true or implied by the other.
    conditions: list[str] = []
    in_tier = _any(tier_rules)
    gets_channel = _any(givers)
    tier_set = {r.selector for r in tier_rules}
    giver_set = {r.selector for r in givers}
    if in_tier is None or gets_channel is None:
        conditions += [c for c in (in_tier, gets_channel) if c is not None]
    elif tier_set <= giver_set:
        conditions.append(in_tier)
    elif giver_set <= tier_set:
        conditions.append(gets_channel)
    else:
        conditions += [in_tier, gets_channel]
    if earlier:
        conditions.append("NOT (" + " OR ".join(r.predicate for r in earlier) + ")")
    if villages is not None and all(r.selector.role is not None for r in tier_rules):
        # Implied by the rules (every one is a role); stated so that an index of the few
        # persons with a role (partial, WHERE roles != 0) can serve the tier's statements.
        conditions.append("p.roles != 0")
    audience_sql = _case(givers, lambda r: f"'{r.selector.audience.value}'")
    priority_sql = _case(givers, lambda r: str(r.selector.priority))
    areas = _COVERED_AREAS
    bounds: list[str] = []
    # The chunk's villages, said of the persons too (implied by the IN): PostgreSQL estimates
    # the IN's closure range at one row and would walk the persons index once per village;
    # with the range on p.village_code it reads the chunk's persons in one range.
    person_range = ""
    if villages is not None:
        if villages.after is not None:
            areas += " AND c.descendant > ?"
            person_range += " AND p.village_code > ?"
            bounds.append(villages.after)
        if villages.upto is not None:
            areas += " AND c.descendant <= ?"
            person_range += " AND p.village_code <= ?"
            bounds.append(villages.upto)
    guard_params: tuple[str, ...] = ()
    if guard is not None:
        # Not a (person, channel) the engine has added already (a village fallback).
        # Only this warning's rows: from its first (a cadre has rows of every warning).
        conditions.append(
            f"((p.roles & {guard}) = 0 OR NOT EXISTS (SELECT 1 FROM deliveries d "
            "WHERE d.target_id = p.id AND d.id >= (SELECT min(r.first_id) FROM "
            f"delivery_ranges r WHERE r.warning_seq = {_WARNING_SEQ}) "
            f"AND d.warning_seq = {_WARNING_SEQ} AND d.channel = ? AND d.audience != 'visit'))"
        )
        guard_params = (warning_id, warning_id, channel.value)
    where = "".join(f" AND {c}" for c in conditions)
    sql = (
        f"INSERT INTO deliveries ({_COLUMNS}) "
        f"SELECT {_WARNING_SEQ}, {audience_sql}, p.id, ?, p.village_code, {priority_sql}, "
        f"{_state_sql(channel, tier_rules)}, 0, ?, ? "
        f"FROM persons p WHERE p.phone IS NOT NULL AND p.village_code IN ({areas})"
        f"{person_range}{where}"
    )
    return SqlStatement(
        sql, (warning_id, channel.value, now, now, warning_id, *bounds, *bounds, *guard_params)
    )

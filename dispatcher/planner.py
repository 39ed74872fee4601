"""The planner: a warning, the level policy and the directory become delivery rows.

Each statement is one set-based ``INSERT … SELECT`` over the directory — never a Python loop
over people — in portable SQL with ``?`` placeholders, executed by the store in one transaction
(:meth:`dispatcher.store.base.Store.execute_plan`).

People: one statement per channel. A person matched by several rules of the same channel gets
one delivery, with the audience and priority of the most urgent rule that matched (a grid
member who is also vulnerable is texted once, as a grid member).
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.domain import Channel, DeviceKind, MsgType, Role, WarningRecord
from dispatcher.policy import AudienceSelector, LevelPolicy, Policy
from dispatcher.store.base import SqlStatement

#: Within the devices tier, loudspeakers first: one MQTT publish reaches a whole village.
DEVICE_PRIORITY = {
    DeviceKind.LOUDSPEAKER: 0,
    DeviceKind.TRANSMITTER: 1,
    DeviceKind.MODEM: 5,
}

_COLUMNS = (
    "warning_seq, audience, target_id, channel, area_code, priority, state, attempts, due_at, "
    "updated_at"
)

# The warning's internal key, evaluated once per statement.
_WARNING_SEQ = "(SELECT w.seq FROM warnings w WHERE w.id = ?)"

# The villages (and towns …) under any of the warning's target codes.
_COVERED_AREAS = (
    "SELECT c.descendant FROM area_closure c WHERE c.ancestor IN "
    "(SELECT wa.area_code FROM warning_areas wa WHERE wa.warning_id = ?)"
)
# The areas above the targets: a transmitter serving a whole county is used for a village
# warning too (its protocol addresses individual villages).
_AREAS_ABOVE = (
    "SELECT c.ancestor FROM area_closure c WHERE c.descendant IN "
    "(SELECT wa.area_code FROM warning_areas wa WHERE wa.warning_id = ?)"
)


@dataclass(frozen=True, slots=True)
class _PersonRule:
    selector: AudienceSelector
    predicate: str


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


def plan_statements(warning: WarningRecord, policy: Policy, *, now: float) -> list[SqlStatement]:
    """The statements that create ``warning``'s deliveries.

    A Cancel is sent to the devices only (so loudspeakers and transmitters stop); people are
    not messaged again.
    """
    level_policy = policy.for_level(warning.level)
    statements: list[SqlStatement] = []
    device_kinds = _device_kinds(level_policy)
    if device_kinds:
        statements.append(_device_statement(warning.id, device_kinds, now))
    if warning.msg_type is MsgType.CANCEL:
        return statements
    for channel in (Channel.SMS, Channel.VOICE):
        rules = _person_rules(level_policy, channel)
        if rules:
            statements.append(_person_statement(warning.id, channel, rules, now))
    return statements


def _device_kinds(level_policy: LevelPolicy) -> list[DeviceKind]:
    kinds: list[DeviceKind] = []
    for rule in level_policy.rules:
        if rule.audience is AudienceSelector.DEVICES:
            kinds.extend(k for k in rule.device_kinds if k not in kinds)
    return kinds


def _person_rules(level_policy: LevelPolicy, channel: Channel) -> list[_PersonRule]:
    selectors = {
        rule.audience
        for rule in level_policy.rules
        if rule.audience is not AudienceSelector.DEVICES and channel in rule.channels
    }
    ordered = sorted(selectors, key=lambda s: (s.priority, list(AudienceSelector).index(s)))
    return [_PersonRule(s, _person_predicate(s)) for s in ordered]


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


def _person_statement(
    warning_id: str, channel: Channel, rules: list[_PersonRule], now: float
) -> SqlStatement:
    audience_case = " ".join(
        f"WHEN {r.predicate} THEN '{r.selector.audience.value}'" for r in rules
    )
    priority_case = " ".join(f"WHEN {r.predicate} THEN {r.selector.priority}" for r in rules)
    if any(r.selector is AudienceSelector.EVERYONE for r in rules):
        matches = ""
    else:
        matches = " AND (" + " OR ".join(r.predicate for r in rules) + ")"
    if len(rules) == 1:
        audience_sql = f"'{rules[0].selector.audience.value}'"
        priority_sql = str(rules[0].selector.priority)
    else:
        audience_sql = f"CASE {audience_case} END"
        priority_sql = f"CASE {priority_case} END"
    sql = (
        f"INSERT INTO deliveries ({_COLUMNS}) "
        f"SELECT {_WARNING_SEQ}, {audience_sql}, p.id, ?, p.village_code, {priority_sql}, "
        "'pending', 0, ?, ? "
        f"FROM persons p WHERE p.phone IS NOT NULL "
        f"AND p.village_code IN ({_COVERED_AREAS}){matches}"
    )
    return SqlStatement(sql, (warning_id, channel.value, now, now, warning_id))

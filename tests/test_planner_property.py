"""Property: for any people, policy and target areas, the set-based planner creates exactly the
person deliveries a plain Python reading of the policy says it should — which person, which
channel, under which rule, and whether it is their ladder's first step (pending) or a later
one (held) — both in one go and in stages of village chunks of any size."""

from __future__ import annotations

import sqlite3
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from small_directory import (
    CITY,
    COUNTY_A,
    COUNTY_B,
    TOWN_A1,
    VILLAGE_A1a,
    VILLAGE_A1b,
    VILLAGE_B1a,
    make_warning,
)
from stores import StoreTarget

from dispatcher.domain import Channel, Level, Role, Status
from dispatcher.planner import plan_stages, plan_statements
from dispatcher.policy import AudienceSelector, Policy
from dispatcher.store.connections import Db
from dispatcher.store.migrations import migrate_sqlite

VILLAGES = (VILLAGE_A1a, VILLAGE_A1b, VILLAGE_B1a)
UNDER = {
    CITY: set(VILLAGES),
    COUNTY_A: {VILLAGE_A1a, VILLAGE_A1b},
    COUNTY_B: {VILLAGE_B1a},
    TOWN_A1: {VILLAGE_A1a, VILLAGE_A1b},
    **{v: {v} for v in VILLAGES},
}
PERSON_SELECTORS = [s for s in AudienceSelector if s is not AudienceSelector.DEVICES]

people = st.lists(
    st.tuples(
        st.sampled_from(VILLAGES),
        st.integers(min_value=0, max_value=15),  # role bits
        st.booleans(),  # vulnerable
        st.booleans(),  # lives alone
        st.booleans(),  # has a phone
        st.integers(min_value=0, max_value=3),  # household number within the village
    ),
    max_size=25,
)
LADDERS = [
    (Channel.SMS,),
    (Channel.VOICE,),
    (Channel.SMS, Channel.VOICE),
    (Channel.VOICE, Channel.SMS),
]
rules = st.lists(
    st.tuples(st.sampled_from(PERSON_SELECTORS), st.sampled_from(LADDERS)),
    min_size=1,
    max_size=5,
    unique_by=lambda rule: rule[0],  # one rule per audience
)
targets = st.sets(st.sampled_from(sorted(UNDER)), min_size=1, max_size=3)


def _directory(conn: Db, persons: list[tuple[str, int, bool, bool, bool, int]]) -> None:
    areas = [
        (CITY, "city", "city", None),
        (COUNTY_A, "a", "county", CITY),
        (COUNTY_B, "b", "county", CITY),
        (TOWN_A1, "a1", "town", COUNTY_A),
        (VILLAGE_A1a, "a1a", "village", TOWN_A1),
        (VILLAGE_A1b, "a1b", "village", TOWN_A1),
        (VILLAGE_B1a, "b1a", "village", COUNTY_B),
    ]
    conn.executemany("INSERT INTO areas VALUES (?,?,?,?)", areas)
    for ancestor, below in UNDER.items():
        for village in below | {ancestor}:
            conn.execute(
                "INSERT INTO area_closure VALUES (?,?,0) ON CONFLICT DO NOTHING",
                (ancestor, village),
            )
    for ancestor, descendant, depth in (
        (COUNTY_A, TOWN_A1, 1),
        (CITY, TOWN_A1, 2),
        (CITY, COUNTY_A, 1),
        (CITY, COUNTY_B, 1),
    ):
        conn.execute(
            "INSERT INTO area_closure VALUES (?,?,?) ON CONFLICT DO NOTHING",
            (ancestor, descendant, depth),
        )
    for village in VILLAGES:
        conn.execute("INSERT INTO grids VALUES (?,?,'')", (f"g{village}", village))
        for n in range(4):
            conn.execute(
                "INSERT INTO households VALUES (?,?,?,'')",
                (f"h{village}-{n}", f"g{village}", village),
            )
    for i, (village, roles, vulnerable, alone, phone, house) in enumerate(persons):
        conn.execute(
            "INSERT INTO persons (id, name, phone, household_id, village_code, roles, "
            "vulnerable, lives_alone) VALUES (?,?,?,?,?,?,?,?)",
            (
                f"p{i:03d}",
                "x",
                f"+86138{i:08d}" if phone else None,
                f"h{village}-{house}",
                village,
                roles,
                int(vulnerable),
                int(alone),
            ),
        )


def _matches(
    selector: AudienceSelector,
    person: tuple[str, int, bool, bool, bool, int],
    index: int,
    persons: list[tuple[str, int, bool, bool, bool, int]],
) -> bool:
    village, roles, vulnerable, alone, _phone, house = person
    role: Role | None = selector.role
    if role is not None:
        return bool(roles & role.bit)
    if selector is AudienceSelector.VULNERABLE:
        return vulnerable
    if selector is AudienceSelector.LIVES_ALONE:
        return alone
    if selector is AudienceSelector.HOUSEHOLDS:
        housemates = [
            j for j, p in enumerate(persons) if p[0] == village and p[5] == house and p[4]
        ]
        return bool(housemates) and min(housemates) == index
    return True  # everyone


def _expected(
    persons: list[tuple[str, int, bool, bool, bool, int]],
    policy_rules: list[tuple[AudienceSelector, tuple[Channel, ...]]],
    covered: set[str],
) -> list[tuple[str, str, str, int, str]]:
    """The policy read plainly: a person's ladder starts with the first channel of the most
    urgent rule that matched them; each channel's row is under the most urgent rule giving
    it, pending when it is the first step, held otherwise."""
    urgency = sorted(policy_rules, key=lambda r: (r[0].priority, PERSON_SELECTORS.index(r[0])))
    expected = []
    for i, person in enumerate(persons):
        if person[0] not in covered or not person[4]:
            continue
        matched = [(s, chans) for s, chans in urgency if _matches(s, person, i, persons)]
        if not matched:
            continue
        first = matched[0][1][0]
        for channel in (Channel.SMS, Channel.VOICE):
            givers = [s for s, chans in matched if channel in chans]
            if givers:
                best = givers[0]
                state = "pending" if channel is first else "held"
                expected.append(
                    (f"p{i:03d}", channel.value, best.audience.value, best.priority, state)
                )
    return sorted(expected)


@settings(
    max_examples=80,
    deadline=None,
    # One database for every example: each runs in a transaction it rolls back.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    persons=people,
    policy_rules=rules,
    areas=targets,
    chunk_persons=st.integers(min_value=1, max_value=12),
)
def test_planner_matches_a_plain_reading_of_the_policy(
    store_target: StoreTarget,
    persons: list[tuple[str, int, bool, bool, bool, int]],
    policy_rules: list[tuple[AudienceSelector, tuple[Channel, ...]]],
    areas: set[str],
    chunk_persons: int,
) -> None:
    level_rules = [
        {"audience": s.value, "channels": [c.value for c in chans]} for s, chans in policy_rules
    ]
    policy = Policy.model_validate({"levels": {lv.value: {"rules": level_rules} for lv in Level}})
    covered = set().union(*(UNDER[a] for a in areas))
    expected = _expected(persons, policy_rules, covered)
    villages = [(v, sum(1 for p in persons if p[0] == v)) for v in sorted(covered)]
    warning = make_warning(tuple(sorted(areas)), ident="w", status=Status.TEST)
    one_go = plan_statements(warning, policy, now=time.time())
    stages = plan_stages(
        warning, policy, now=time.time(), villages=villages, chunk_persons=chunk_persons
    )
    staged = [statement for stage in stages for statement in stage.statements]

    conn = store_target.connect()
    try:
        if isinstance(conn, sqlite3.Connection):
            migrate_sqlite(conn)  # (PostgreSQL's test databases are migrated already)
        conn.execute("BEGIN")
        _directory(conn, persons)
        conn.execute(
            "INSERT INTO warnings (id, identifier, sender, sent, status, msg_type, level, event, "
            "headline, description, instruction, area_codes, expires, urgency, certainty, "
            "category, language, created_by, created_at) VALUES "
            "('w','w','s','','Test','Alert','red','e','h','','','[]','','','','','','t','')"
        )
        conn.executemany("INSERT INTO warning_areas VALUES ('w', ?)", [(a,) for a in areas])
        got = {}
        for name, statements in (("one go", one_go), ("staged", staged)):
            conn.execute("DELETE FROM deliveries")
            for statement in statements:
                conn.execute(statement.sql, statement.params)
            got[name] = sorted(
                tuple(row)
                for row in conn.execute(
                    "SELECT target_id, channel, audience, priority, state FROM deliveries "
                    "WHERE audience != 'device'"
                ).fetchall()
            )
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    assert got["one go"] == expected
    assert got["staged"] == expected

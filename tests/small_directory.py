"""A small hand-made directory whose every expected delivery is known (planner and warning
service tests)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from stores import StoreTarget

from dispatcher.domain import (
    Level,
    MsgType,
    Role,
    Status,
    WarningRecord,
    roles_to_mask,
)
from dispatcher.store.connections import Db
from dispatcher.store.sqlite import connect

CITY = "611000000000"
COUNTY_A = "611002000000"
COUNTY_B = "611021000000"
TOWN_A1 = "611002001000"
VILLAGE_A1a = "611002001001"
VILLAGE_A1b = "611002001002"
TOWN_B1 = "611021001000"
VILLAGE_B1a = "611021001001"

GM = roles_to_mask({Role.GRID_MEMBER})
CADRE = roles_to_mask({Role.VILLAGE_CADRE})


#: Where a helper writes: a SQLite file, or a tests/stores.py StoreTarget (either database).
Target = Path | StoreTarget


def open_db(db: Target) -> Db:
    return db.connect() if isinstance(db, StoreTarget) else connect(db)


def fill_small_directory(db: Target) -> None:
    conn = open_db(db)
    areas = [
        (CITY, "商洛市", "city", None),
        (COUNTY_A, "商州区", "county", CITY),
        (COUNTY_B, "洛南县", "county", CITY),
        (TOWN_A1, "大荆镇", "town", COUNTY_A),
        (VILLAGE_A1a, "东村", "village", TOWN_A1),
        (VILLAGE_A1b, "西村", "village", TOWN_A1),
        (TOWN_B1, "石门镇", "town", COUNTY_B),
        (VILLAGE_B1a, "南村", "village", TOWN_B1),
    ]
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO areas VALUES (?,?,?,?)", areas)
    parents = {a[0]: a[3] for a in areas}
    for code in parents:
        node: str | None = code
        depth = 0
        while node is not None:
            conn.execute("INSERT INTO area_closure VALUES (?,?,?)", (node, code, depth))
            node, depth = parents[node], depth + 1
    conn.executemany(
        "INSERT INTO grids VALUES (?,?,?)",
        [("g-a", VILLAGE_A1a, "一组"), ("g-b", VILLAGE_A1b, "一组"), ("g-c", VILLAGE_B1a, "一组")],
    )
    conn.executemany(
        "INSERT INTO households VALUES (?,?,?,?)",
        [
            ("h1", "g-a", VILLAGE_A1a, ""),
            ("h2", "g-a", VILLAGE_A1a, ""),
            ("h3", "g-b", VILLAGE_A1b, ""),
            ("h4", "g-c", VILLAGE_B1a, ""),
        ],
    )
    persons = [
        # id, phone, household, village, roles, vulnerable, lives_alone
        ("p01", "+8613800000001", "h1", VILLAGE_A1a, GM, 1, 0),  # grid member, also vulnerable
        ("p02", "+8613800000002", "h1", VILLAGE_A1a, 0, 0, 0),
        ("p03", None, "h1", VILLAGE_A1a, 0, 1, 0),  # no phone: reached by speakers only
        ("p04", "+8613800000004", "h2", VILLAGE_A1a, 0, 1, 1),  # vulnerable, lives alone
        ("p05", "+8613800000005", "h3", VILLAGE_A1b, CADRE, 0, 0),
        ("p06", "+8613800000006", "h3", VILLAGE_A1b, GM, 0, 0),
        ("p07", "+8613800000007", "h4", VILLAGE_B1a, GM, 0, 0),  # other county
        ("p08", "+8613800000008", "h4", VILLAGE_B1a, 0, 0, 0),
    ]
    conn.executemany(
        "INSERT INTO persons (id, name, phone, household_id, village_code, roles, vulnerable, "
        "lives_alone) VALUES (?,?,?,?,?,?,?,?)",
        [(p[0], f"人{p[0]}", *p[1:]) for p in persons],
    )
    conn.executemany(
        "INSERT INTO grid_members VALUES (?,?)", [("g-a", "p01"), ("g-b", "p06"), ("g-c", "p07")]
    )
    devices = [
        ("spk-a1a", "loudspeaker", VILLAGE_A1a, [VILLAGE_A1a]),
        ("spk-a1b", "loudspeaker", VILLAGE_A1b, [VILLAGE_A1b]),
        ("spk-b1a", "loudspeaker", VILLAGE_B1a, [VILLAGE_B1a]),
        ("tx-a", "transmitter", COUNTY_A, [COUNTY_A]),  # county-wide transmitter
        ("tx-a1", "transmitter", TOWN_A1, [VILLAGE_A1a, VILLAGE_A1b]),
        ("mdm-a1", "modem", TOWN_A1, [TOWN_A1]),
    ]
    for dev_id, kind, area, serves in devices:
        conn.execute(
            "INSERT INTO devices (id, kind, name, adapter, address, area_code) "
            "VALUES (?,?,?,?,?,?)",
            (dev_id, kind, dev_id, kind, dev_id, area),
        )
        conn.executemany("INSERT INTO device_areas VALUES (?,?)", [(dev_id, s) for s in serves])
    conn.execute("COMMIT")
    conn.close()


def make_warning(
    areas: tuple[str, ...],
    *,
    ident: str | None = None,
    level: Level = Level.RED,
    msg_type: MsgType = MsgType.ALERT,
    status: Status = Status.EXERCISE,
    expires_in: timedelta = timedelta(hours=1),
) -> WarningRecord:
    """A stored-shape warning for planner and store tests (the API path builds its own)."""
    now = datetime.now(UTC)
    ident = ident or f"w-{time.time_ns()}"
    return WarningRecord(
        id=ident,
        identifier=ident,
        sender="test@tocsin",
        sent=now,
        status=status,
        msg_type=msg_type,
        level=level,
        event="暴雨",
        headline="暴雨红色预警",
        description="",
        instruction="",
        area_codes=areas,
        expires=now + expires_in,
    )


def add_person(
    db: Target,
    person_id: str,
    *,
    village: str,
    household: str | None = None,
    phone: str | None = "auto",
    roles: int = 0,
    vulnerable: bool = False,
    lives_alone: bool = False,
) -> None:
    """Add one person to the small directory (``phone="auto"``: a number from the id)."""
    import zlib

    auto = f"+86139{zlib.crc32(person_id.encode()) % 10**8:08d}"
    number = auto if phone == "auto" else phone
    conn = open_db(db)
    try:
        conn.execute(
            "INSERT INTO persons (id, name, phone, household_id, village_code, roles, "
            "vulnerable, lives_alone) VALUES (?,?,?,?,?,?,?,?)",
            (
                person_id,
                f"人{person_id}",
                number,
                household,
                village,
                roles,
                int(vulnerable),
                int(lives_alone),
            ),
        )
    finally:
        conn.close()


def delivery_rows(db: Target, warning_id: str) -> list[tuple[str, str, str, int, str]]:
    """The warning's deliveries as (target, channel, audience, priority, state), sorted; a
    list, so a duplicate shows."""
    conn = open_db(db)
    try:
        rows = conn.execute(
            "SELECT target_id, channel, audience, priority, state FROM deliveries "
            "WHERE warning_seq = (SELECT seq FROM warnings WHERE id = ?)",
            (warning_id,),
        ).fetchall()
    finally:
        conn.close()
    return sorted((r[0], r[1], r[2], int(r[3]), r[4]) for r in rows)


def coverage_targets(db: Target, warning_id: str) -> dict[str, tuple[int, int, int]]:
    """village → (grid members, households, persons) as the plan recorded them."""
    conn = open_db(db)
    try:
        rows = conn.execute(
            "SELECT village_code, grid_members, households, persons FROM coverage_targets "
            "WHERE warning_seq = (SELECT seq FROM warnings WHERE id = ?)",
            (warning_id,),
        ).fetchall()
    finally:
        conn.close()
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}

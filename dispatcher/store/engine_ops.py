"""The engine's side of the store: claiming due deliveries under a lease, recording
outcomes, acknowledgements and the coverage they add, escalation, and the timer sweep.

Every method is one write transaction on the writer thread, working on a batch. Timers are rows:
``deliveries.due_at`` says when each delivery is next looked at (see DeliveryState).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from dispatcher.adapter import ReportState, WarningContent
from dispatcher.domain import (
    TERMINAL_DELIVERY_STATES,
    Audience,
    DeliveryState,
    Level,
    MsgType,
    Status,
    WarningState,
)
from dispatcher.engine.types import (
    Ack,
    AckOutcome,
    AckResult,
    AdapterAck,
    ClaimedDelivery,
    HouseholdConfirmation,
    LevelRules,
    RecordResult,
    SweepResult,
    Transition,
    VillageFallback,
)
from dispatcher.store.connections import Db, StoreConnections
from dispatcher.store.state_counts import bump_state_counts
from dispatcher.store.stop import log_warning_event, stop_warning

__all__ = ["VISIT_PRIORITY", "EngineOps"]

#: Visit tasks go out with the grid members' own messages.
VISIT_PRIORITY = 10

#: Computes the delay before retry number ``attempt`` (honouring a provider's retry-after).
RetryDelay = Callable[[int, float | None], float]

_TERMINAL = frozenset(s.value for s in TERMINAL_DELIVERY_STATES)
_STOPPED = frozenset(
    {
        DeliveryState.CANCELLED.value,
        DeliveryState.SUPERSEDED.value,
        DeliveryState.EXPIRED.value,
        DeliveryState.SKIPPED.value,
    }
)
_PEOPLE_AUDIENCES = frozenset(
    {Audience.GRID_MEMBER.value, Audience.HOUSEHOLD.value, Audience.PERSON.value}
)
_NOT_YET_SENT = ("held", "pending", "retry_wait")
#: States a report can put a delivery in before the engine has recorded its send's outcome.
_REPORTED = frozenset({DeliveryState.DELIVERED.value, DeliveryState.ACKNOWLEDGED.value})


@dataclass(slots=True)
class _WarningInfo:
    seq: int
    id: str
    level: str
    expires: float
    state: str
    msg_type: str = MsgType.ALERT.value
    status: str = Status.ACTUAL.value
    #: Whether any of its deliveries are held / for household contacts (None: not looked up).
    has_held: bool | None = None
    has_household_steps: bool | None = None
    covered_villages: frozenset[str] | None = None
    #: Its first delivery id and the id before its first event (None: not looked up): a
    #: target's rows of other warnings (devices have one per warning and test broadcast)
    #: are skipped through the target indexes' rowid.
    first_delivery: int | None = None
    events_after: int | None = None


@dataclass(slots=True)
class _Batch:
    """Counter changes and facts gathered during one transaction, written at its end."""

    conn: Db
    now: float
    levels: Mapping[str, LevelRules]
    visit_delay: float
    warnings: dict[int, _WarningInfo] = field(default_factory=dict)
    state_deltas: dict[int, dict[str, int]] = field(default_factory=dict)
    coverage: dict[tuple[int, str, str], int] = field(default_factory=dict)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    escalated: int = 0
    visits: int = 0
    #: Stopped deliveries acknowledged in this batch (their state does not say so).
    acked_stopped: set[int] = field(default_factory=set)
    #: Read ahead for a batch of reports: deliveries by id, provider references, the people
    #: and devices they are for, the grids people serve. Kept in step with this batch's own
    #: changes to deliveries.
    rows: dict[int, _Row] = field(default_factory=dict)
    refs: dict[tuple[str, str], int] = field(default_factory=dict)
    persons: dict[str, tuple[str | None, str, str | None, str]] = field(default_factory=dict)
    device_addresses: dict[str, str] = field(default_factory=dict)
    grids: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    #: (warning id, device address) → the device delivery a report names that way (None:
    #: none), read ahead for a batch of device acknowledgements.
    device_acks: dict[tuple[str, str], int | None] = field(default_factory=dict)
    #: Device → the villages it serves (read ahead for a batch of device reports).
    device_villages: dict[str, list[str]] = field(default_factory=dict)
    #: Warning seq → its covered villages, kept by the store across batches (a warning's
    #: areas never change): a city-wide warning covers thousands of villages.
    covered_cache: dict[int, frozenset[str]] = field(default_factory=dict)
    #: (warning seq, village) fallen back in this batch (their events are not written yet).
    fallen: set[tuple[int, str]] = field(default_factory=set)
    #: Deliveries added to each warning in this batch (village fallbacks), for its ranges.
    added: dict[int, list[int]] = field(default_factory=dict)

    def set_state(self, row: _Row, state: str) -> None:
        if row.id in self.rows:
            self.rows[row.id] = replace(row, state=state)

    def has_held(self, seq: int) -> bool:
        info = self.warning(seq)
        if info.has_held is None:
            found = self.conn.execute(
                "SELECT n FROM delivery_state_counts WHERE warning_seq = ? AND state = 'held'",
                (seq,),
            ).fetchone()
            info.has_held = bool(found and found[0])
        return info.has_held

    def covered_villages(self, seq: int) -> frozenset[str]:
        """The villages under the warning's areas (a device reaches only these for it)."""
        info = self.warning(seq)
        if info.covered_villages is None and seq in self.covered_cache:
            info.covered_villages = self.covered_cache[seq]
        if info.covered_villages is None:
            info.covered_villages = self.covered_cache[seq] = frozenset(
                r[0]
                for r in self.conn.execute(
                    "SELECT c.descendant FROM area_closure c JOIN areas a ON a.code = "
                    "c.descendant AND a.level = 'village' WHERE c.ancestor IN "
                    "(SELECT area_code FROM warning_areas WHERE warning_id = ?)",
                    (info.id,),
                )
            )
        return info.covered_villages

    def first_delivery(self, seq: int) -> int:
        """The warning's lowest delivery id (its plan's first row)."""
        info = self.warning(seq)
        if info.first_delivery is None:
            (first,) = self.conn.execute(
                "SELECT min(first_id) FROM delivery_ranges WHERE warning_seq = ?", (seq,)
            ).fetchone()
            info.first_delivery = 0 if first is None else int(first)
        return info.first_delivery

    def events_after(self, seq: int) -> int:
        """An event id below every event of the warning."""
        info = self.warning(seq)
        if info.events_after is None:
            (first,) = self.conn.execute(
                "SELECT min(id) FROM delivery_events WHERE warning_id = ?", (info.id,)
            ).fetchone()
            info.events_after = 0 if first is None else int(first) - 1
        return info.events_after

    def has_household_steps(self, seq: int) -> bool:
        info = self.warning(seq)
        if info.has_household_steps is None:
            found = self.conn.execute(
                "SELECT 1 FROM plan_counts WHERE warning_id = ? AND audience = 'household' LIMIT 1",
                (info.id,),
            ).fetchone()
            info.has_household_steps = found is not None
        return info.has_household_steps

    def warning(self, seq: int) -> _WarningInfo:
        info = self.warnings.get(seq)
        if info is None:
            row = self.conn.execute(
                "SELECT seq, id, level, expires, state, msg_type, status FROM warnings "
                "WHERE seq = ?",
                (seq,),
            ).fetchone()
            info = _WarningInfo(
                row[0],
                row[1],
                row[2],
                datetime.fromisoformat(row[3]).timestamp(),
                row[4],
                row[5],
                row[6],
            )
            self.warnings[seq] = info
        return info

    def rules(self, seq: int) -> LevelRules:
        return self.levels[self.warning(seq).level]

    def move(self, seq: int, old: str, new: str, n: int = 1) -> None:
        deltas = self.state_deltas.setdefault(seq, {})
        deltas[old] = deltas.get(old, 0) - n
        deltas[new] = deltas.get(new, 0) + n

    def event(
        self,
        seq: int,
        delivery_id: int | None,
        state: str,
        *,
        attempt: int = 0,
        adapter: str = "",
        reason: str = "",
        detail: Mapping[str, Any] | None = None,
        target_id: str | None = None,
        channel: str | None = None,
        area_code: str | None = None,
        at: float | None = None,
    ) -> None:
        self.events.append(
            (
                self.now if at is None else at,
                self.warning(seq).id,
                delivery_id,
                state,
                attempt,
                adapter,
                reason,
                json.dumps(dict(detail or {}), ensure_ascii=False, default=str),
                target_id,
                channel,
                area_code,
            )
        )

    def flush(self) -> None:
        if self.events:
            self.conn.executemany(
                "INSERT INTO delivery_events (at, warning_id, delivery_id, state, attempt, "
                "adapter, reason, detail, target_id, channel, area_code) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                self.events,
            )
        for seq in sorted(self.state_deltas):  # in one order, as claims do
            bump_state_counts(self.conn, seq, self.state_deltas[seq])
        for seq, ids in self.added.items():
            # A warning's deliveries are found through its rowid ranges (a Cancel or an
            # Update stops them that way): one range per run of consecutive ids.
            self.conn.executemany(
                "INSERT INTO delivery_ranges (warning_seq, first_id, last_id) VALUES (?, ?, ?)",
                [(seq, first, last) for first, last in _runs(ids)],
            )
        if self.coverage:
            self.conn.executemany(
                "INSERT INTO coverage_counts (warning_seq, village_code, kind, n) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (warning_seq, village_code, kind) "
                "DO UPDATE SET n = coverage_counts.n + excluded.n",
                [(seq, village, kind, n) for (seq, village, kind), n in self.coverage.items()],
            )


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    warning_seq: int
    audience: str
    target_id: str
    channel: str
    area_code: str
    state: str
    attempts: int


_ROW_COLUMNS = "id, warning_seq, audience, target_id, channel, area_code, state, attempts"


def _row(values: Sequence[Any]) -> _Row:
    return _Row(*values)


class EngineOps(StoreConnections):
    """Mixed into both stores (:class:`dispatcher.store.sql_store.SqlStore`)."""

    #: How many warnings' covered villages are kept between acknowledgement batches.
    _COVERED_KEPT = 64

    def _covered_villages_cache(self) -> dict[int, frozenset[str]]:
        cache: dict[int, frozenset[str]] | None = getattr(self, "_covered_villages", None)
        if cache is None or len(cache) > self._COVERED_KEPT:
            cache = {}
            self._covered_villages: dict[int, frozenset[str]] = cache
        return cache

    # -- claiming ------------------------------------------------------------------------------
    async def claim_due(
        self,
        channel: str,
        limit: int,
        *,
        now: float,
        lease: float,
        priorities: Sequence[int],
        urgent: bool = False,
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due deliveries of ``channel``, most urgent first, and read
        what sending them needs (address, warning, visit households). ``urgent`` claims
        (devices) go before queued bulk writes."""

        node = self.node

        def run(conn: Db) -> list[ClaimedDelivery]:
            rows: list[_Row] = []
            for priority in priorities:
                if len(rows) >= limit:
                    break
                rows.extend(
                    _row(r)
                    for r in conn.execute(
                        f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE channel = ? "
                        "AND priority = ? AND state IN ('pending','retry_wait') "
                        f"AND due_at <= ? ORDER BY due_at LIMIT ?{self._skip_locked}",
                        (channel, priority, now, limit - len(rows)),
                    )
                )
            if not rows:
                return []
            _update_ids(
                conn,
                "state = 'sending', attempts = attempts + 1, due_at = ?, updated_at = ?, "
                "leased_by = ?",
                (now + lease, now, node),
                [r.id for r in rows],
            )
            deltas: dict[int, dict[str, int]] = {}
            for r in rows:
                d = deltas.setdefault(r.warning_seq, {})
                d[r.state] = d.get(r.state, 0) - 1
                d["sending"] = d.get("sending", 0) + 1
            # Claims on several nodes run side by side and update the same counter rows: in
            # one order (warning, then state) they wait for each other but never deadlock.
            for seq in sorted(deltas):
                bump_state_counts(conn, seq, deltas[seq])
            return _resolve(conn, rows)

        # Not exclusive: on PostgreSQL claims of several nodes run beside each other, each
        # taking only rows no other claim holds (FOR UPDATE SKIP LOCKED).
        return await self._write_tx(run, urgent=urgent, exclusive=False)

    async def reclaim_own_leases(self, *, now: float) -> int:
        """At a node's start: every delivery still leased by this node (or leased before
        leases named their node) was being sent by this node's previous run, which is gone;
        make it due again now (it may have been sent: at least once). Other nodes' leases are
        theirs: a lease of a node that is gone ends through the sweep when it expires."""
        node = self.node

        def run(conn: Db) -> int:
            rows = [
                _row(r)
                for r in conn.execute(
                    # Through deliveries_leased (the sending ones only).
                    f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE state = 'sending' "
                    "AND (leased_by = ? OR leased_by IS NULL)",
                    (node,),
                )
            ]
            rows.sort(key=lambda r: r.id)
            batch = _Batch(conn, now, {}, 0.0)
            _reclaim(batch, rows, "the daemon stopped during the send")
            batch.flush()
            return len(rows)

        return await self._write_tx(run)

    # -- outcomes ------------------------------------------------------------------------------
    async def record_transitions(
        self,
        transitions: Sequence[Transition],
        *,
        now: float,
        levels: Mapping[str, LevelRules],
        visit_delay: float,
        addresses: Mapping[int, str] | None = None,
        urgent: bool = False,
    ) -> RecordResult:
        """Apply the engine's decisions for sent deliveries, log each, and escalate."""

        def run(conn: Db) -> RecordResult:
            result = _record(conn, transitions, now, levels, visit_delay, addresses or {})
            return result

        return await self._write_tx(run, urgent=urgent)

    async def fall_over(
        self,
        claimed: Sequence[ClaimedDelivery],
        *,
        now: float,
        resume_at: float | None,
        reason: str,
        levels: Mapping[str, LevelRules],
        visit_delay: float,
    ) -> int:
        """No adapter can take these claimed deliveries. A person's delivery with a later
        ladder step fails over to it at once. The rest wait until ``resume_at`` without the
        attempt counting — or, when ``resume_at`` is None (no adapter is configured for the
        channel at all: none will come back), fail for good, and a person's ladder moves on
        (a visit task). Returns how many fell over or failed."""

        def run(conn: Db) -> int:
            batch = _Batch(conn, now, levels, visit_delay)
            fell = _fall_over(batch, claimed, resume_at, reason)
            batch.flush()
            return fell

        return await self._write_tx(run)

    # -- acknowledgements ----------------------------------------------------------------------
    async def apply_acks(
        self,
        acks: Sequence[Ack],
        *,
        now: float,
        levels: Mapping[str, LevelRules],
        visit_delay: float,
        retry_delay: RetryDelay,
    ) -> list[AckOutcome]:
        """Apply acknowledgements and status reports, once each, in one transaction."""

        covered = self._covered_villages_cache()

        def run(conn: Db) -> list[AckOutcome]:
            batch = _Batch(conn, now, levels, visit_delay, covered_cache=covered)
            _read_ahead(batch, acks)
            outcomes = [_apply_ack(batch, ack, retry_delay) for ack in acks]
            batch.flush()
            return outcomes

        return await self._write_tx(run)

    # -- timers --------------------------------------------------------------------------------
    async def sweep(
        self,
        *,
        now: float,
        levels: Mapping[str, LevelRules],
        visit_delay: float,
        limit: int = 5000,
    ) -> SweepResult:
        """Expire warnings past their expiry, reclaim expired leases, enforce acknowledgement
        deadlines (resend to devices, escalate people), and mark warnings complete."""

        def run(conn: Db) -> SweepResult:
            result = _sweep(conn, now, levels, visit_delay, limit)
            return result

        return await self._write_tx(run)

    async def next_due_at(self, channel: str, priorities: Sequence[int]) -> float | None:
        """The earliest due time of the channel's waiting deliveries (None: nothing waits)."""

        def run(conn: Db) -> float | None:
            best: float | None = None
            for priority in priorities:
                row = conn.execute(
                    "SELECT min(due_at) FROM deliveries WHERE channel = ? AND priority = ? "
                    "AND state IN ('pending','retry_wait')",
                    (channel, priority),
                ).fetchone()
                if row[0] is not None and (best is None or row[0] < best):
                    best = float(row[0])
            return best

        return await self._read(run)

    async def warning_contents(self, seqs: Iterable[int]) -> dict[int, WarningContent]:
        wanted = sorted(set(seqs))

        def run(conn: Db) -> dict[int, WarningContent]:
            out: dict[int, WarningContent] = {}
            for seq in wanted:
                row = conn.execute(
                    "SELECT id, status, msg_type, level, event, headline, description, "
                    "instruction, area_codes, sent, expires, audio_url, audio_sha256 "
                    "FROM warnings WHERE seq = ?",
                    (seq,),
                ).fetchone()
                if row is None:
                    continue
                out[seq] = WarningContent(
                    id=row[0],
                    status=Status(row[1]),
                    msg_type=MsgType(row[2]),
                    level=Level(row[3]),
                    event=row[4],
                    headline=row[5],
                    description=row[6],
                    instruction=row[7],
                    area_codes=tuple(json.loads(row[8])),
                    sent=datetime.fromisoformat(row[9]),
                    expires=datetime.fromisoformat(row[10]),
                    audio_url=row[11],
                    audio_sha256=row[12],
                    # What this Update or Cancel replaces: devices stop playing those.
                    references=tuple(
                        r[0]
                        for r in conn.execute(
                            "SELECT id FROM warnings WHERE superseded_by = ? ORDER BY seq",
                            (row[0],),
                        )
                    ),
                )
            return out

        return await self._read(run)

    async def person_grid_ids(self, person_id: str) -> list[str]:
        """The grids a grid member serves."""

        def run(conn: Db) -> list[str]:
            rows = conn.execute(
                "SELECT grid_id FROM grid_members WHERE person_id = ? ORDER BY grid_id",
                (person_id,),
            )
            return [r[0] for r in rows]

        return await self._read(run)

    async def household_grid_id(self, household_id: str) -> str | None:
        def run(conn: Db) -> str | None:
            row = conn.execute(
                "SELECT grid_id FROM households WHERE id = ?", (household_id,)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._read(run)


# -- claiming -----------------------------------------------------------------------------------
def _resolve(conn: Db, rows: Sequence[_Row]) -> list[ClaimedDelivery]:
    person_ids = [r.target_id for r in rows if r.audience != Audience.DEVICE.value]
    device_ids = [r.target_id for r in rows if r.audience == Audience.DEVICE.value]
    visit_ids = [r.id for r in rows if r.audience == Audience.VISIT.value]
    phones: dict[str, str | None] = {}
    for chunk in _chunks(person_ids, 900):
        marks = ",".join("?" * len(chunk))
        phones.update(
            conn.execute(f"SELECT id, phone FROM persons WHERE id IN ({marks})", chunk).fetchall()
        )
    devices: dict[str, tuple[str, str]] = {}
    for chunk in _chunks(device_ids, 900):
        marks = ",".join("?" * len(chunk))
        for device_id, address, adapter in conn.execute(
            f"SELECT id, address, adapter FROM devices WHERE id IN ({marks})", chunk
        ):
            devices[device_id] = (address or device_id, adapter)
    households: dict[int, list[str]] = {}
    for chunk_ids in _chunks(visit_ids, 900):
        marks = ",".join("?" * len(chunk_ids))
        for delivery_id, household_id in conn.execute(
            "SELECT vh.delivery_id, vh.household_id FROM visit_households vh "
            f"WHERE vh.delivery_id IN ({marks}) AND NOT EXISTS (SELECT 1 FROM reached r "
            "WHERE r.warning_seq = vh.warning_seq AND r.kind = 'household' "
            "AND r.target_id = vh.household_id) ORDER BY vh.household_id",
            chunk_ids,
        ):
            households.setdefault(delivery_id, []).append(household_id)
    warnings = {
        seq: (wid, level)
        for seq, wid, level in conn.execute(
            "SELECT seq, id, level FROM warnings WHERE seq IN "
            f"({','.join(str(s) for s in {r.warning_seq for r in rows})})"
        )
    }
    out = []
    for r in rows:
        if r.audience == Audience.DEVICE.value:
            address, adapter = devices.get(r.target_id, (None, ""))
        else:
            address, adapter = phones.get(r.target_id), ""
        wid, level = warnings[r.warning_seq]
        out.append(
            ClaimedDelivery(
                id=r.id,
                warning_seq=r.warning_seq,
                warning_id=wid,
                level=level,
                audience=r.audience,
                target_id=r.target_id,
                channel=r.channel,
                area_code=r.area_code,
                attempt=r.attempts + 1,
                address=address,
                adapter=adapter,
                households=tuple(households.get(r.id, ())),
            )
        )
    return out


def _reclaim(batch: _Batch, rows: Sequence[_Row], why: str) -> None:
    batch.conn.executemany(
        "UPDATE deliveries SET state = 'retry_wait', due_at = ?, updated_at = ?, "
        "leased_by = NULL WHERE id = ?",
        [(batch.now, batch.now, r.id) for r in rows],
    )
    for r in rows:
        batch.move(r.warning_seq, "sending", "retry_wait")
        batch.event(
            r.warning_seq,
            r.id,
            "retry_wait",
            attempt=r.attempts,
            reason=f"lease expired: {why}",
            target_id=r.target_id,
            channel=r.channel,
            area_code=r.area_code,
        )


def _waited_already(conn: Db, delivery_id: int, state: str, reason: str) -> bool:
    """Whether the delivery's last logged event is this wait, for this reason."""
    last = conn.execute(
        "SELECT state, reason FROM delivery_events WHERE delivery_id = ? ORDER BY id DESC LIMIT 1",
        (delivery_id,),
    ).fetchone()
    return last is not None and tuple(last) == (state, reason)


def _fall_over(
    batch: _Batch, claimed: Sequence[ClaimedDelivery], resume_at: float | None, reason: str
) -> int:
    conn = batch.conn
    fell = 0
    for c in claimed:
        now_in = conn.execute(
            "SELECT state, attempts FROM deliveries WHERE id = ?", (c.id,)
        ).fetchone()
        if now_in is None or now_in[0] != DeliveryState.SENDING.value:
            continue  # cancelled, superseded or expired since it was claimed
        if int(now_in[1]) != c.attempt:
            continue  # the lease ran out and another claim has it now
        held = None
        if c.audience in _PEOPLE_AUDIENCES:
            held = conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE target_id = ? AND warning_seq = ? "
                "AND state = 'held' ORDER BY priority, id LIMIT 1",
                (c.target_id, c.warning_seq),
            ).fetchone()
        if held is None and resume_at is None:
            conn.execute(
                "UPDATE deliveries SET state = 'failed', due_at = ?, updated_at = ?, "
                "leased_by = NULL WHERE id = ?",
                (batch.now, batch.now, c.id),
            )
            batch.move(c.warning_seq, "sending", "failed")
            batch.event(
                c.warning_seq,
                c.id,
                "failed",
                attempt=c.attempt,
                reason=reason,
                target_id=c.target_id,
                channel=c.channel,
                area_code=c.area_code,
            )
            row = _Row(
                c.id,
                c.warning_seq,
                c.audience,
                c.target_id,
                c.channel,
                c.area_code,
                "failed",
                c.attempt,
            )
            _escalate(batch, row, f"{c.channel} failed: {reason}")
            fell += 1
            continue
        if held is None:
            conn.execute(
                "UPDATE deliveries SET state = 'retry_wait', due_at = ?, attempts = ?, "
                "updated_at = ?, leased_by = NULL WHERE id = ? AND state = 'sending'",
                (resume_at, c.attempt - 1, batch.now, c.id),
            )
            batch.move(c.warning_seq, "sending", "retry_wait")
            # Waiting on for the same reason (a modem unplugged for ten minutes is looked at
            # again every few seconds) is one line in the log, not one per look.
            if not _waited_already(conn, c.id, "retry_wait", reason):
                batch.event(
                    c.warning_seq,
                    c.id,
                    "retry_wait",
                    attempt=c.attempt - 1,
                    reason=reason,
                    target_id=c.target_id,
                    channel=c.channel,
                    area_code=c.area_code,
                )
            continue
        step = _row(held)
        conn.execute(
            "UPDATE deliveries SET state = 'failed', due_at = ?, updated_at = ?, "
            "leased_by = NULL WHERE id = ? AND state = 'sending'",
            (batch.now, batch.now, c.id),
        )
        conn.execute(
            "UPDATE deliveries SET state = 'pending', due_at = ?, updated_at = ? WHERE id = ?",
            (batch.now, batch.now, step.id),
        )
        batch.move(c.warning_seq, "sending", "failed")
        batch.move(c.warning_seq, "held", "pending")
        batch.event(
            c.warning_seq,
            c.id,
            "failed",
            attempt=c.attempt,
            reason=f"{reason}; fell over to {step.channel}",
            target_id=c.target_id,
            channel=c.channel,
            area_code=c.area_code,
        )
        batch.event(
            step.warning_seq,
            step.id,
            "pending",
            reason=f"escalated: {c.channel} unavailable",
            detail={"after_delivery": c.id},
            target_id=step.target_id,
            channel=step.channel,
            area_code=step.area_code,
        )
        fell += 1
    return fell


# -- recording outcomes -------------------------------------------------------------------------
def _record(
    conn: Db,
    transitions: Sequence[Transition],
    now: float,
    levels: Mapping[str, LevelRules],
    visit_delay: float,
    addresses: Mapping[int, str],
) -> RecordResult:
    batch = _Batch(conn, now, levels, visit_delay)
    current: dict[int, _Row] = {}
    ids = [t.delivery_id for t in transitions]
    for chunk in _chunks(ids, 900):
        marks = ",".join("?" * len(chunk))
        for values in conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE id IN ({marks})", chunk
        ):
            found = _row(values)
            current[found.id] = found
    updates: dict[tuple[str, float, int], list[int]] = {}
    recorded = 0
    deadlines: list[tuple[float, float, int]] = []
    refs = []
    stale = 0
    escalate: list[tuple[_Row, str]] = []
    for t in transitions:
        maybe = current.get(t.delivery_id)
        if maybe is None:
            continue
        row = maybe
        detail = dict(t.detail)
        if t.delivery_id in addresses:
            detail.setdefault("address", addresses[t.delivery_id])
        if t.reference:
            detail["reference"] = t.reference
        if row.state in _REPORTED and t.state in (DeliveryState.SENT, DeliveryState.DELIVERED):
            # The adapter's report (delivered, acknowledged) was recorded before its outcome:
            # keep the reported state; take the acknowledgement deadline and the reference.
            if row.state == DeliveryState.DELIVERED.value and t.due_at is not None:
                deadlines.append((t.due_at, now, row.id))
            if t.reference:
                refs.append((t.adapter, t.reference, row.id))
            _log_outcome_only(batch, row, t, detail, f"reported {row.state} already")
            continue
        if row.state != DeliveryState.SENDING.value:
            # Cancelled, superseded or expired while the adapter was sending: what happened is
            # logged, the delivery keeps its terminal state.
            stale += 1
            _log_outcome_only(batch, row, t, detail, f"delivery already {row.state}")
            continue
        if row.attempts != t.attempt + int(t.uncount_attempt):
            # This lease ran out (the send outlasted it, or the store was away) and the
            # delivery was claimed again, here or on another node: that attempt's outcome
            # decides; this one is logged.
            stale += 1
            _log_outcome_only(
                batch, row, t, detail, f"lease taken over: attempt {row.attempts} is sending"
            )
            continue
        key = (t.state.value, t.due_at if t.due_at is not None else now, -int(t.uncount_attempt))
        updates.setdefault(key, []).append(row.id)
        recorded += 1
        batch.move(row.warning_seq, row.state, t.state.value)
        if t.uncount_attempt and _waited_already(conn, row.id, t.state.value, t.reason):
            continue  # put back unsent again for the same reason: logged once
        batch.event(
            row.warning_seq,
            row.id,
            t.state.value,
            attempt=t.attempt,
            adapter=t.adapter,
            reason=t.reason,
            detail=detail,
            target_id=row.target_id,
            channel=row.channel,
            area_code=row.area_code,
        )
        if t.reference:
            refs.append((t.adapter, t.reference, row.id))
        if t.escalate:
            escalate.append((row, f"{row.channel} {t.state.value}: {t.reason}"))
    # Most of a batch shares its new state and due time (one clock reading per batch): one
    # statement per group instead of one per delivery.
    for (state, due_at, attempts_delta), ids in updates.items():
        _update_ids(
            conn,
            "state = ?, due_at = ?, attempts = attempts + ?, updated_at = ?, leased_by = NULL",
            (state, due_at, attempts_delta, now),
            ids,
        )
    if deadlines:
        conn.executemany("UPDATE deliveries SET due_at = ?, updated_at = ? WHERE id = ?", deadlines)
    if refs:
        conn.executemany(
            "INSERT INTO delivery_refs (adapter, reference, delivery_id) VALUES (?, ?, ?) "
            "ON CONFLICT (adapter, reference) DO UPDATE SET delivery_id = excluded.delivery_id",
            refs,
        )
    for row, why in escalate:
        _escalate(batch, row, why)
    batch.flush()
    return RecordResult(
        recorded=recorded, stale=stale, escalated=batch.escalated, visits_created=batch.visits
    )


def _log_outcome_only(
    batch: _Batch, row: _Row, t: Transition, detail: Mapping[str, Any], why: str
) -> None:
    """Log an outcome that does not change the delivery's state, saying why."""
    batch.event(
        row.warning_seq,
        row.id,
        t.state.value,
        attempt=t.attempt,
        adapter=t.adapter,
        reason=(t.reason + "; " if t.reason else "") + why,
        detail=detail,
        target_id=row.target_id,
        channel=row.channel,
        area_code=row.area_code,
    )


# -- escalation ---------------------------------------------------------------------------------
def _escalate(batch: _Batch, row: _Row, why: str) -> None:
    """``row`` ended without an acknowledgement: release the target's next held step, or, when
    the ladder is exhausted, task the household's grid member to visit. A device's villages
    that no device played the warning in fall back to people (:func:`_fall_back_villages`)."""
    if row.audience == Audience.DEVICE.value:
        _fall_back_villages(batch, row, why)
        return
    if row.audience not in _PEOPLE_AUDIENCES:
        return
    siblings = [
        _row(r)
        for r in batch.conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE target_id = ? AND warning_seq = ? "
            "AND id != ? ORDER BY priority, id",
            (row.target_id, row.warning_seq, row.id),
        )
    ]
    if any(s.state == DeliveryState.ACKNOWLEDGED.value for s in siblings):
        return
    held = [s for s in siblings if s.state == DeliveryState.HELD.value]
    if held:
        _release_held(batch, held[0], f"escalated: {why}", {"after_delivery": row.id})
        batch.escalated += 1
        return
    if any(s.state not in _TERMINAL for s in siblings):
        return  # another step is still under way
    if row.audience == Audience.GRID_MEMBER.value or not batch.rules(row.warning_seq).visit:
        return
    if batch.warning(row.warning_seq).state != WarningState.ACTIVE.value:
        return
    _add_visit(batch, row)


def _release_held(batch: _Batch, step: _Row, reason: str, detail: dict[str, Any]) -> None:
    """A held step of a ladder is due now (its previous step ended, or its village fell back)."""
    batch.conn.execute(
        "UPDATE deliveries SET state = 'pending', due_at = ?, updated_at = ? WHERE id = ?",
        (batch.now, batch.now, step.id),
    )
    batch.set_state(step, "pending")
    batch.move(step.warning_seq, "held", "pending")
    batch.event(
        step.warning_seq,
        step.id,
        "pending",
        attempt=step.attempts,
        reason=reason,
        detail=detail,
        target_id=step.target_id,
        channel=step.channel,
        area_code=step.area_code,
    )


def _add_visit(batch: _Batch, row: _Row) -> None:
    conn = batch.conn
    seq = row.warning_seq
    found = conn.execute(
        "SELECT p.household_id, h.grid_id FROM persons p JOIN households h "
        "ON h.id = p.household_id WHERE p.id = ?",
        (row.target_id,),
    ).fetchone()
    if found is None:
        return
    household_id, grid_id = found
    already = conn.execute(
        "SELECT 1 FROM reached WHERE warning_seq = ? AND kind = 'household' AND target_id = ? "
        "UNION ALL SELECT 1 FROM visit_households WHERE warning_seq = ? AND household_id = ?",
        (seq, household_id, seq, household_id),
    ).fetchone()
    if already is not None:
        return
    # A task not sent yet (or waiting to be tried again) names its households when it is sent:
    # join it rather than send the grid member a second one.
    task = conn.execute(
        "SELECT vt.delivery_id FROM visit_tasks vt JOIN deliveries d ON d.id = vt.delivery_id "
        "WHERE vt.warning_seq = ? AND vt.grid_id = ? AND d.state IN ('pending', 'retry_wait') "
        "LIMIT 1",
        (seq, grid_id),
    ).fetchone()
    if task is None:
        member = conn.execute(
            "SELECT gm.person_id, g.village_code FROM grid_members gm "
            "JOIN persons p ON p.id = gm.person_id JOIN grids g ON g.id = gm.grid_id "
            "WHERE gm.grid_id = ? AND p.phone IS NOT NULL ORDER BY gm.person_id LIMIT 1",
            (grid_id,),
        ).fetchone()
        if member is None:
            batch.event(
                seq,
                row.id,
                row.state,
                reason=f"no grid member with a phone in grid {grid_id} to visit "
                f"household {household_id}",
                target_id=row.target_id,
                channel=row.channel,
                area_code=row.area_code,
            )
            return
        person_id, village_code = member
        due = batch.now + batch.visit_delay
        cursor = conn.execute(
            "INSERT INTO deliveries (warning_seq, audience, target_id, channel, area_code, "
            "priority, state, attempts, due_at, updated_at) "
            "VALUES (?, 'visit', ?, 'sms', ?, ?, 'pending', 0, ?, ?) RETURNING id",
            (seq, person_id, village_code, VISIT_PRIORITY, due, batch.now),
        )
        (delivery_id,) = cursor.fetchone()
        conn.execute(
            "INSERT INTO delivery_ranges (warning_seq, first_id, last_id) VALUES (?, ?, ?)",
            (seq, delivery_id, delivery_id),
        )
        conn.execute(
            "INSERT INTO visit_tasks (delivery_id, warning_seq, grid_id) VALUES (?, ?, ?)",
            (delivery_id, seq, grid_id),
        )
        conn.execute(
            "INSERT INTO plan_counts (warning_id, area_code, audience, channel, count) "
            "VALUES (?, ?, 'visit', 'sms', 1) ON CONFLICT (warning_id, area_code, audience, "
            "channel) DO UPDATE SET count = plan_counts.count + 1",
            (batch.warning(seq).id, village_code),
        )
        deltas = batch.state_deltas.setdefault(seq, {})
        deltas["pending"] = deltas.get("pending", 0) + 1
        batch.event(
            seq,
            delivery_id,
            "pending",
            reason=f"visit task for grid {grid_id}",
            detail={"grid_id": grid_id},
            target_id=person_id,
            channel="sms",
            area_code=village_code,
        )
        batch.visits += 1
    else:
        delivery_id = int(task[0])
    conn.execute(
        "INSERT INTO visit_households (warning_seq, household_id, grid_id, added_at, "
        "delivery_id) VALUES (?, ?, ?, ?, ?)",
        (seq, household_id, grid_id, batch.now, delivery_id),
    )


# -- village fallback ---------------------------------------------------------------------------
#: The log's event for a village falling back to people (``delivery_id`` NULL; ``target_id``
#: the device whose end set it off, ``area_code`` the village).
VILLAGE_FALLBACK_EVENT = "village_fallback"
_TERMINAL_SQL = ",".join(f"'{s}'" for s in sorted(_TERMINAL))


def _fall_back_villages(batch: _Batch, row: _Row, why: str) -> None:
    """Device delivery ``row`` ended without playing (failed, or unacknowledged after its
    attempts). Each village it was for falls back to the level's fallback people when no
    device there played the warning or still may: no other device delivery of the warning
    serving the village is open, and the village is not reached. Once per village and
    warning; only for an active Alert or Update (a Test checks the devices themselves)."""
    seq = row.warning_seq
    info = batch.warning(seq)
    rules = batch.levels.get(info.level)
    fallback = rules.fallback if rules is not None else None
    if (
        fallback is None
        or info.state != WarningState.ACTIVE.value
        or info.msg_type == MsgType.CANCEL.value
        or info.status == Status.TEST.value
        or batch.now >= info.expires
    ):
        return
    conn = batch.conn
    for village in _device_villages(batch, row):
        if (seq, village) in batch.fallen:
            continue
        if conn.execute(
            "SELECT 1 FROM reached WHERE warning_seq = ? AND kind = 'village' AND target_id = ?",
            (seq, village),
        ).fetchone():
            continue
        devices = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT da.device_id FROM area_closure c JOIN device_areas da "
                "ON da.area_code = c.ancestor WHERE c.descendant = ?",
                (village,),
            )
        ]
        marks = ",".join("?" * len(devices))
        if conn.execute(
            f"SELECT 1 FROM deliveries WHERE target_id IN ({marks}) AND id >= ? "
            "AND warning_seq = ? AND audience = 'device' AND id != ? "
            f"AND state NOT IN ({_TERMINAL_SQL}) LIMIT 1",
            (*devices, batch.first_delivery(seq), seq, row.id),
        ).fetchone():
            continue  # another device may still play it
        # Through the devices' events (delivery_events_target), not the warning's: a
        # city-wide warning has millions. ``warning_id || ''`` keeps the planner off
        # delivery_events_warning: SQLite's INDEXED BY, spelt so PostgreSQL reads it too.
        if conn.execute(
            "SELECT 1 FROM delivery_events "
            f"WHERE target_id IN ({marks}) AND id > ? AND warning_id || '' = ? AND state = ? "
            "AND area_code = ? LIMIT 1",
            (*devices, batch.events_after(seq), info.id, VILLAGE_FALLBACK_EVENT, village),
        ).fetchone():
            continue  # fell back already
        batch.fallen.add((seq, village))
        _fall_back_village(batch, row, village, fallback, why)


def _fall_back_village(
    batch: _Batch, device: _Row, village: str, fallback: VillageFallback, why: str
) -> None:
    """Reach ``village``'s fallback people at once: release their held step on the
    fallback's first channel, or add one (pending, due now) with the rest of the fallback's
    ladder held behind it; nothing for those who acknowledged already."""
    conn = batch.conn
    seq = device.warning_seq
    if fallback.selector == "grid_members":
        people = conn.execute(
            "SELECT DISTINCT p.id, p.village_code FROM grids g "
            "JOIN grid_members gm ON gm.grid_id = g.id JOIN persons p ON p.id = gm.person_id "
            "WHERE g.village_code = ? AND p.phone IS NOT NULL ORDER BY p.id",
            (village,),
        ).fetchall()
    else:
        people = conn.execute(
            "SELECT id, village_code FROM persons WHERE village_code = ? AND roles != 0 "
            "AND (roles & ?) != 0 AND phone IS NOT NULL ORDER BY id",
            (village, fallback.role_bit),
        ).fetchall()
    reason = f"village {village} devices did not play ({device.target_id} {why}): fallback"
    first, *later = fallback.channels
    released: list[int] = []
    added: list[int] = []
    reached = 0
    for person_id, person_village in people:
        if conn.execute(
            "SELECT 1 FROM reached WHERE warning_seq = ? AND kind = 'person' AND target_id = ?",
            (seq, person_id),
        ).fetchone():
            reached += 1
            continue
        steps = [
            _row(r)
            for r in conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE target_id = ? AND id >= ? "
                "AND warning_seq = ? AND audience != 'visit' ORDER BY priority, id",
                (person_id, batch.first_delivery(seq), seq),
            )
        ]
        # Their deliveries keep one audience (a grid member stays one).
        audience = steps[0].audience if steps else fallback.audience
        on_first = [s for s in steps if s.channel == first]
        held = [s for s in on_first if s.state == DeliveryState.HELD.value]
        if held:
            step = held[0]
            _release_held(batch, step, reason, {"village": village, "after_delivery": device.id})
            released.append(step.id)
        elif not on_first:
            added.append(
                _add_fallback_step(batch, seq, person_id, person_village, audience, first, fallback)
            )
            batch.event(
                seq,
                added[-1],
                "pending",
                reason=reason,
                detail={"village": village, "after_delivery": device.id},
                target_id=person_id,
                channel=first,
                area_code=person_village,
            )
        channels = {s.channel for s in steps}
        for channel in later:
            if channel in channels:
                continue  # they get it already (one message per channel)
            step_id = _add_fallback_step(
                batch, seq, person_id, person_village, audience, channel, fallback, held=True
            )
            batch.event(
                seq,
                step_id,
                "held",
                reason=reason,
                detail={"village": village, "after_delivery": device.id},
                target_id=person_id,
                channel=channel,
                area_code=person_village,
            )
    batch.escalated += len(released) + len(added)
    batch.event(
        seq,
        None,
        VILLAGE_FALLBACK_EVENT,
        attempt=device.attempts,
        reason=(
            f"{reason} to {fallback.selector} by {', '.join(fallback.channels)}"
            + ("" if people else f"; no {fallback.selector} with a phone in the village")
        ),
        detail={
            "village": village,
            "after_delivery": device.id,
            "audience": fallback.selector,
            "channels": list(fallback.channels),
            "people": len(people),
            "released": released,
            "added": added,
            "already_reached": reached,
        },
        target_id=device.target_id,
        channel=device.channel,
        area_code=village,
    )


def _add_fallback_step(
    batch: _Batch,
    seq: int,
    person_id: str,
    area_code: str,
    audience: str,
    channel: str,
    fallback: VillageFallback,
    *,
    held: bool = False,
) -> int:
    """Insert one delivery of a fallback ladder (not part of the plan's counts: the plan is
    what was planned; the log and the state counts have it)."""
    state = DeliveryState.HELD.value if held else DeliveryState.PENDING.value
    cursor = batch.conn.execute(
        "INSERT INTO deliveries (warning_seq, audience, target_id, channel, area_code, "
        "priority, state, attempts, due_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?) "
        "RETURNING id",
        (
            seq,
            audience,
            person_id,
            channel,
            area_code,
            fallback.priority,
            state,
            batch.now,
            batch.now,
        ),
    )
    delivery_id = int(cursor.fetchone()[0])
    batch.added.setdefault(seq, []).append(delivery_id)
    deltas = batch.state_deltas.setdefault(seq, {})
    deltas[state] = deltas.get(state, 0) + 1
    if held:
        batch.warning(seq).has_held = True
    return delivery_id


# -- acknowledgements ---------------------------------------------------------------------------
def _apply_ack(batch: _Batch, ack: Ack, retry_delay: RetryDelay) -> AckOutcome:
    if isinstance(ack, HouseholdConfirmation):
        return _confirm_household(batch, ack)
    return _apply_report(batch, ack, retry_delay)


def _find_delivery(batch: _Batch, ack: AdapterAck) -> tuple[_Row | None, str]:
    conn = batch.conn
    report = ack.report
    if report.delivery_id is not None:
        if not 0 < report.delivery_id < 2**63:
            # Beyond SQLite's integers the lookup would raise, and the intake would retry the
            # batch forever, stalling every acknowledgement behind it.
            return None, f"no delivery {report.delivery_id}"
        return _delivery(batch, report.delivery_id)
    if report.reference:
        ref_id = batch.refs.get((ack.adapter, report.reference))
        if ref_id is None:
            ref = conn.execute(
                "SELECT delivery_id FROM delivery_refs WHERE adapter = ? AND reference = ?",
                (ack.adapter, report.reference),
            ).fetchone()
            if ref is None:
                return None, (f"no delivery with reference {report.reference!r} from {ack.adapter}")
            ref_id = int(ref[0])
        return _delivery(batch, ref_id)
    if report.from_address:
        if report.warning_id is not None:
            # A device's report names the warning it played and itself.
            device_row = _device_delivery(batch, report.warning_id, report.from_address)
            if device_row is not None:
                return device_row, ""
        persons = [
            r[0]
            for r in conn.execute("SELECT id FROM persons WHERE phone = ?", (report.from_address,))
        ]
        if not persons:
            if report.warning_id is not None:
                return None, (
                    f"warning {report.warning_id} has no delivery to a device at "
                    f"{report.from_address!r}, and no person has that phone"
                )
            return None, "the sender is not in the directory"
        marks = ",".join("?" * len(persons))
        found = conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE target_id IN ({marks}) "
            "AND state IN ('sending','sent','delivered','unacknowledged') "
            "ORDER BY id DESC LIMIT 1",
            persons,
        ).fetchone()
        if found is None:
            return None, "no delivery to the sender is awaiting an acknowledgement"
        if report.reply_id and not _first_reply(batch, ack.adapter, report.reply_id, found[0]):
            return None, f"reply {report.reply_id} was applied already"
        return _row(found), ""
    return None, "the report names no delivery, reference or sender"


def _first_reply(batch: _Batch, adapter: str, reply_id: str, delivery_id: int) -> bool:
    """Remember that the reply ``reply_id`` was applied (to ``delivery_id``); False when it was
    before. Kept beside the providers' references: one table, one unique key, any node."""
    inserted = batch.conn.execute(
        "INSERT INTO delivery_refs (adapter, reference, delivery_id) VALUES (?, ?, ?) "
        "ON CONFLICT (adapter, reference) DO NOTHING",
        (adapter, f"reply:{reply_id}", delivery_id),
    )
    return inserted.rowcount == 1


def _device_delivery(batch: _Batch, warning_id: str, address: str) -> _Row | None:
    """The delivery of ``warning_id`` to the device at ``address`` (read ahead for a batch,
    else looked up alone)."""
    key = (warning_id, address)
    if key not in batch.device_acks:
        _match_device_acks(batch, warning_id, [address])
    delivery_id = batch.device_acks.get(key)
    return None if delivery_id is None else batch.rows.get(delivery_id)


def _match_device_acks(batch: _Batch, warning_id: str, addresses: Sequence[str]) -> None:
    """Find the deliveries of ``warning_id`` to the devices at ``addresses`` (a device's
    ``address``, or its id when it has none), in any state: one query for the devices and one
    for their deliveries per chunk. Fills ``batch.device_acks`` (None: no such delivery),
    ``batch.rows`` and ``batch.device_addresses``."""
    conn = batch.conn
    found = conn.execute("SELECT seq FROM warnings WHERE id = ?", (warning_id,)).fetchone()
    first = 0 if found is None else batch.first_delivery(int(found[0]))
    for chunk in _chunks(sorted(set(addresses)), 450):
        for address in chunk:
            batch.device_acks[(warning_id, address)] = None
        if found is None:
            continue
        marks = ",".join("?" * len(chunk))
        # By primary key first: a speaker's address is usually its id, or empty.
        at: dict[str, list[str]] = {}
        for device_id, device_address in conn.execute(
            f"SELECT id, address FROM devices WHERE id IN ({marks})", chunk
        ):
            batch.device_addresses[device_id] = device_address or ""
            if device_address in ("", device_id):
                at.setdefault(device_id, []).append(device_id)
        rest = [a for a in chunk if a not in at]
        if rest:
            rest_marks = ",".join("?" * len(rest))
            for device_id, device_address in conn.execute(
                f"SELECT id, address FROM devices WHERE address IN ({rest_marks})", rest
            ):
                batch.device_addresses[device_id] = device_address
                at.setdefault(device_address, []).append(device_id)
        owner = {d: a for a, ids in at.items() for d in ids}
        if not owner:
            continue
        device_marks = ",".join("?" * len(owner))
        best: dict[str, _Row] = {}
        for values in conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE target_id IN ({device_marks}) "
            "AND id >= ? AND warning_seq = ? AND audience = 'device'",
            (*owner, first, int(found[0])),
        ):
            row = batch.rows.get(values[0]) or _row(values)
            address = owner[row.target_id]
            # Two devices at one address (or two deliveries): one still open, else the newest.
            if address not in best or _preferred(row, best[address]):
                best[address] = row
        for address, row in best.items():
            batch.rows[row.id] = row
            batch.device_acks[(warning_id, address)] = row.id


def _preferred(row: _Row, other: _Row) -> bool:
    open_now, open_other = row.state not in _TERMINAL, other.state not in _TERMINAL
    return open_now > open_other or (open_now == open_other and row.id > other.id)


def _delivery(batch: _Batch, delivery_id: int) -> tuple[_Row | None, str]:
    row = batch.rows.get(delivery_id)
    if row is None:
        found = batch.conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)
        ).fetchone()
        if found is None:
            return None, f"no delivery {delivery_id}"
        row = _row(found)
    return row, ""


def _read_ahead(batch: _Batch, acks: Sequence[Ack]) -> None:
    """Read what a batch of reports needs in a few set queries instead of several point
    queries per report."""
    conn = batch.conn
    ids = {
        a.report.delivery_id
        for a in acks
        if isinstance(a, AdapterAck)
        and a.report.delivery_id is not None
        and 0 < a.report.delivery_id < 2**63
    }
    by_adapter: dict[str, list[str]] = {}
    for a in acks:
        if isinstance(a, AdapterAck) and a.report.delivery_id is None and a.report.reference:
            by_adapter.setdefault(a.adapter, []).append(a.report.reference)
    for adapter, references in by_adapter.items():
        for chunk in _chunks(references, 900):
            marks = ",".join("?" * len(chunk))
            for reference, delivery_id in conn.execute(
                "SELECT reference, delivery_id FROM delivery_refs "
                f"WHERE adapter = ? AND reference IN ({marks})",
                (adapter, *chunk),
            ):
                batch.refs[(adapter, reference)] = int(delivery_id)
                ids.add(int(delivery_id))
    for chunk_ids in _chunks(sorted(ids), 900):
        marks = ",".join("?" * len(chunk_ids))
        for values in conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE id IN ({marks})", chunk_ids
        ):
            row = _row(values)
            batch.rows[row.id] = row
    # Device acknowledgements that name only the warning and the device: per warning.
    by_warning: dict[str, list[str]] = {}
    for a in acks:
        if (
            isinstance(a, AdapterAck)
            and a.report.delivery_id is None
            and not a.report.reference
            and a.report.from_address
            and a.report.warning_id is not None
        ):
            by_warning.setdefault(a.report.warning_id, []).append(a.report.from_address)
    for warning_id, addresses in by_warning.items():
        _match_device_acks(batch, warning_id, addresses)
    people = sorted({r.target_id for r in batch.rows.values() if r.audience != "device"})
    devices = sorted({r.target_id for r in batch.rows.values() if r.audience == "device"})
    for chunk in _chunks(people, 900):
        marks = ",".join("?" * len(chunk))
        for person_id, phone, other, household, village in conn.execute(
            "SELECT id, phone, other_phones, household_id, village_code FROM persons "
            f"WHERE id IN ({marks})",
            chunk,
        ):
            batch.persons[person_id] = (phone, other or "", household, village)
        for person_id, grid_id, grid_village in conn.execute(
            "SELECT gm.person_id, g.id, g.village_code FROM grid_members gm "
            f"JOIN grids g ON g.id = gm.grid_id WHERE gm.person_id IN ({marks}) "
            "ORDER BY gm.person_id, g.id",
            chunk,
        ):
            batch.grids.setdefault(person_id, []).append((grid_id, grid_village))
    for person_id in people:
        batch.grids.setdefault(person_id, [])
    for chunk in _chunks(devices, 900):
        marks = ",".join("?" * len(chunk))
        for device_id, address in conn.execute(
            f"SELECT id, address FROM devices WHERE id IN ({marks})", chunk
        ):
            batch.device_addresses[device_id] = address or ""
        for device_id in chunk:
            batch.device_villages[device_id] = []
        for device_id, village in conn.execute(
            f"SELECT DISTINCT da.device_id, c.descendant FROM device_areas da "
            "JOIN area_closure c ON c.ancestor = da.area_code "
            "JOIN areas a ON a.code = c.descendant AND a.level = 'village' "
            f"WHERE da.device_id IN ({marks}) ORDER BY da.device_id, c.descendant",
            chunk,
        ):
            batch.device_villages[device_id].append(village)


def _person(batch: _Batch, person_id: str) -> tuple[str | None, str, str | None, str] | None:
    if person_id in batch.persons:
        return batch.persons[person_id]
    found = batch.conn.execute(
        "SELECT phone, other_phones, household_id, village_code FROM persons WHERE id = ?",
        (person_id,),
    ).fetchone()
    if found is None:
        return None
    batch.persons[person_id] = (found[0], found[1] or "", found[2], found[3])
    return batch.persons[person_id]


def _person_grids(batch: _Batch, person_id: str) -> list[tuple[str, str]]:
    """The grids a person serves as grid member, with their villages."""
    if person_id not in batch.grids:
        batch.grids[person_id] = [
            (g, v)
            for g, v in batch.conn.execute(
                "SELECT g.id, g.village_code FROM grid_members gm JOIN grids g "
                "ON g.id = gm.grid_id WHERE gm.person_id = ? ORDER BY g.id",
                (person_id,),
            )
        ]
    return batch.grids[person_id]


def _target_addresses(batch: _Batch, row: _Row) -> set[str]:
    if row.audience == Audience.DEVICE.value:
        address = batch.device_addresses.get(row.target_id)
        if address is not None:
            return {row.target_id} | ({address} if address else set())
    else:
        person = _person(batch, row.target_id)
        if person is None:
            return set()
        phone, other, _household, _village = person
        return {p for p in [phone, *other.split(";")] if p}
    found = batch.conn.execute(
        "SELECT address FROM devices WHERE id = ?", (row.target_id,)
    ).fetchone()
    return {row.target_id} | ({found[0]} if found and found[0] else set())


def _apply_report(batch: _Batch, ack: AdapterAck, retry_delay: RetryDelay) -> AckOutcome:
    report = ack.report
    row, why = _find_delivery(batch, ack)
    if row is None:
        return AckOutcome(AckResult.REJECTED, why)
    warning = batch.warning(row.warning_seq)
    if report.warning_id is not None and report.warning_id != warning.id:
        return AckOutcome(
            AckResult.REJECTED,
            f"delivery {row.id} belongs to warning {warning.id}, not {report.warning_id}",
            row.id,
        )
    if report.from_address is not None and report.from_address not in _target_addresses(batch, row):
        return AckOutcome(
            AckResult.REJECTED,
            f"delivery {row.id} is for {row.target_id}, not for {report.from_address}",
            row.id,
        )
    # Tocsin's clock decides what is in time and orders the log; a device's or provider's
    # own time (its clock may be wrong) is kept in the detail.
    at = ack.received_at
    detail = dict(report.detail)
    if report.at is not None:
        detail["reported_at"] = report.at

    def log(state: str) -> None:
        batch.event(
            row.warning_seq,
            row.id,
            state,
            attempt=row.attempts,
            adapter=ack.adapter,
            reason=report.reason,
            detail=detail,
            target_id=row.target_id,
            channel=row.channel,
            area_code=row.area_code,
            at=at,
        )

    if report.state is ReportState.DELIVERED:
        if row.state not in ("sending", "sent"):
            return AckOutcome(AckResult.DUPLICATE, f"delivery is {row.state}", row.id)
        batch.conn.execute(
            "UPDATE deliveries SET state = 'delivered', updated_at = ?, leased_by = NULL "
            "WHERE id = ?",
            (batch.now, row.id),
        )
        batch.set_state(row, "delivered")
        batch.move(row.warning_seq, row.state, "delivered")
        log("delivered")
        return AckOutcome(AckResult.APPLIED, "", row.id)
    if report.state is ReportState.FAILED:
        if row.state not in ("sending", "sent", "delivered"):
            return AckOutcome(AckResult.DUPLICATE, f"delivery is {row.state}", row.id)
        rules = batch.rules(row.warning_seq)
        if report.retryable and row.attempts < rules.max_attempts:
            due = batch.now + retry_delay(row.attempts, None)
            new = "retry_wait"
        else:
            due, new = batch.now, "failed"
        batch.conn.execute(
            "UPDATE deliveries SET state = ?, due_at = ?, updated_at = ?, leased_by = NULL "
            "WHERE id = ?",
            (new, due, batch.now, row.id),
        )
        batch.set_state(row, new)
        batch.move(row.warning_seq, row.state, new)
        log(new)
        if new == "failed":
            _escalate(batch, row, f"{row.channel} failed: {report.reason}")
        return AckOutcome(AckResult.APPLIED, "", row.id)
    # Acknowledged.
    if row.state == DeliveryState.ACKNOWLEDGED.value:
        return AckOutcome(AckResult.DUPLICATE, "already acknowledged", row.id)
    in_time = at <= warning.expires
    if not in_time:
        detail["late"] = True
    if row.state not in _STOPPED:
        batch.conn.execute(
            "UPDATE deliveries SET state = 'acknowledged', updated_at = ?, leased_by = NULL "
            "WHERE id = ?",
            (batch.now, row.id),
        )
        batch.set_state(row, "acknowledged")
        batch.move(row.warning_seq, row.state, "acknowledged")
    elif (
        row.id in batch.acked_stopped
        or batch.conn.execute(
            "SELECT 1 FROM delivery_events WHERE target_id = ? AND delivery_id = ? "
            "AND state = 'acknowledged' LIMIT 1",
            (row.target_id, row.id),
        ).fetchone()
    ):
        # A stopped delivery keeps its state when acknowledged: the log says it was.
        return AckOutcome(AckResult.DUPLICATE, f"already acknowledged ({row.state})", row.id)
    else:
        batch.acked_stopped.add(row.id)
    log("acknowledged")
    source = ack.adapter
    if row.audience == Audience.DEVICE.value:
        _reach_device_villages(batch, row, at, in_time, source)
    else:
        _reach_person(batch, row, at, in_time, source)
    return AckOutcome(AckResult.APPLIED if in_time else AckResult.LATE, "", row.id)


def _reach(
    batch: _Batch,
    seq: int,
    kind: str,
    target_id: str,
    village_code: str,
    at: float,
    in_time: bool,
    source: str,
    delivery_id: int | None,
) -> bool:
    inserted = batch.conn.execute(
        "INSERT INTO reached (warning_seq, kind, target_id, village_code, at, in_time, "
        "source, delivery_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (seq, kind, target_id, village_code, at, int(in_time), source, delivery_id),
    ).rowcount
    if inserted and in_time:
        key = (seq, village_code, kind)
        batch.coverage[key] = batch.coverage.get(key, 0) + 1
    return bool(inserted)


def _reach_device_villages(batch: _Batch, row: _Row, at: float, in_time: bool, source: str) -> None:
    for village in _device_villages(batch, row):
        _reach(batch, row.warning_seq, "village", village, village, at, in_time, source, row.id)


def _device_villages(batch: _Batch, row: _Row) -> list[str]:
    """The villages a device delivery is for: those the device serves inside the warning's
    areas."""
    covered = batch.covered_villages(row.warning_seq)
    served = batch.device_villages.get(row.target_id)
    if served is None:
        served = batch.device_villages[row.target_id] = [
            village
            for (village,) in batch.conn.execute(
                "SELECT DISTINCT c.descendant FROM device_areas da "
                "JOIN area_closure c ON c.ancestor = da.area_code "
                "JOIN areas a ON a.code = c.descendant AND a.level = 'village' "
                "WHERE da.device_id = ? ORDER BY c.descendant",
                (row.target_id,),
            )
        ]
    return [village for village in served if village in covered]


def _reach_person(batch: _Batch, row: _Row, at: float, in_time: bool, source: str) -> None:
    seq = row.warning_seq
    person = _person(batch, row.target_id)
    household_id, village = (person[2], person[3]) if person else (None, row.area_code)
    _reach(batch, seq, "person", row.target_id, village, at, in_time, source, row.id)
    grids = _person_grids(batch, row.target_id)
    if grids:
        # Counted where the plan counts grid members: under their (first) grid's village.
        grid_village = grids[0][1]
        _reach(batch, seq, "grid_member", row.target_id, grid_village, at, in_time, source, row.id)
        for village_code in sorted({v for _g, v in grids}):
            _reach(batch, seq, "village", village_code, village_code, at, in_time, source, row.id)
    if batch.has_held(seq):
        # Their later steps (a ladder has at most one sendable step; the rest are held).
        _skip_steps(
            batch, seq, [row.target_id], None, f"{row.target_id} acknowledged by {row.channel}"
        )
    if household_id:
        _reach(batch, seq, "household", household_id, village, at, in_time, source, row.id)
        if batch.has_household_steps(seq):
            _skip_household_steps(batch, seq, household_id, f"household {household_id} reached")


def _skip_steps(
    batch: _Batch, seq: int, target_ids: Sequence[str], audience: str | None, why: str
) -> None:
    """Skip the not-yet-sent deliveries of these targets for this warning."""
    for target_id in target_ids:
        for values in batch.conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE target_id = ? AND warning_seq = ? "
            f"AND state IN {_NOT_YET_SENT}",
            (target_id, seq),
        ).fetchall():
            step = _row(values)
            if audience is not None and step.audience != audience:
                continue
            if step.audience == Audience.VISIT.value:
                continue  # a task for the households of their grid, not a step of their own
            batch.conn.execute(
                "UPDATE deliveries SET state = 'skipped', updated_at = ? WHERE id = ?",
                (batch.now, step.id),
            )
            batch.set_state(step, "skipped")
            batch.move(seq, step.state, "skipped")
            batch.event(
                seq,
                step.id,
                "skipped",
                attempt=step.attempts,
                reason=why,
                target_id=step.target_id,
                channel=step.channel,
                area_code=step.area_code,
            )


def _skip_household_steps(batch: _Batch, seq: int, household_id: str, why: str) -> None:
    members = [
        r[0]
        for r in batch.conn.execute(
            "SELECT id FROM persons WHERE household_id = ?", (household_id,)
        )
    ]
    _skip_steps(batch, seq, members, Audience.HOUSEHOLD.value, why)


def _confirm_household(batch: _Batch, ack: HouseholdConfirmation) -> AckOutcome:
    conn = batch.conn
    found = conn.execute("SELECT seq FROM warnings WHERE id = ?", (ack.warning_id,)).fetchone()
    if found is None:
        return AckOutcome(AckResult.REJECTED, f"no warning {ack.warning_id}")
    seq = int(found[0])
    household = conn.execute(
        "SELECT village_code FROM households WHERE id = ?", (ack.household_id,)
    ).fetchone()
    if household is None:
        return AckOutcome(AckResult.REJECTED, f"no household {ack.household_id}")
    member = conn.execute(
        "SELECT 1 FROM grid_members gm JOIN households h ON h.grid_id = gm.grid_id "
        "WHERE h.id = ? AND gm.person_id = ?",
        (ack.household_id, ack.person_id),
    ).fetchone()
    if member is None:
        return AckOutcome(
            AckResult.REJECTED,
            f"{ack.person_id} is not a grid member of household {ack.household_id}'s grid",
        )
    covered = conn.execute(
        "SELECT 1 FROM area_closure c WHERE c.descendant = ? AND c.ancestor IN "
        "(SELECT area_code FROM warning_areas WHERE warning_id = ?)",
        (household[0], ack.warning_id),
    ).fetchone()
    if covered is None:
        return AckOutcome(
            AckResult.REJECTED, f"household {ack.household_id} is outside the warning's areas"
        )
    at = ack.received_at
    in_time = at <= batch.warning(seq).expires
    if not _reach(
        batch, seq, "household", ack.household_id, household[0], at, in_time, ack.source, None
    ):
        return AckOutcome(AckResult.DUPLICATE, "household already reached")
    batch.event(
        seq,
        None,
        "household_reached",
        reason=f"visited by grid member {ack.person_id}",
        detail={"household_id": ack.household_id, "late": not in_time},
        target_id=ack.household_id,
        area_code=household[0],
        adapter=ack.source,
    )
    _skip_household_steps(batch, seq, ack.household_id, f"household {ack.household_id} visited")
    return AckOutcome(AckResult.APPLIED if in_time else AckResult.LATE)


# -- timers -------------------------------------------------------------------------------------
def _sweep(
    conn: Db,
    now: float,
    levels: Mapping[str, LevelRules],
    visit_delay: float,
    limit: int,
) -> SweepResult:
    expired = []
    for warning_id, expires in conn.execute(
        "SELECT id, expires FROM warnings WHERE state = 'active'"
    ).fetchall():
        if datetime.fromisoformat(expires).timestamp() <= now and stop_warning(
            conn, warning_id, WarningState.EXPIRED, None, now
        ):
            expired.append(warning_id)
    batch = _Batch(conn, now, levels, visit_delay)
    rows = [
        _row(r)
        for r in conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM deliveries "
            "WHERE state IN ('sending','sent','delivered') AND due_at <= ? ORDER BY due_at "
            "LIMIT ?",
            (now, limit),
        )
    ]
    leases = [r for r in rows if r.state == DeliveryState.SENDING.value]
    _reclaim(batch, leases, "the send did not finish in time")
    unacked = 0
    resends = 0
    for r in rows:
        if r.state == DeliveryState.SENDING.value:
            continue
        rules = batch.rules(r.warning_seq)
        if r.audience == Audience.DEVICE.value and r.attempts < rules.max_attempts:
            new, reason = "pending", "no played report in time; sending again"
            resends += 1
        else:
            new, reason = "unacknowledged", "no acknowledgement in time"
            unacked += 1
        conn.execute(
            "UPDATE deliveries SET state = ?, due_at = ?, updated_at = ? WHERE id = ?",
            (new, now, now, r.id),
        )
        batch.move(r.warning_seq, r.state, new)
        batch.event(
            r.warning_seq,
            r.id,
            new,
            attempt=r.attempts,
            reason=reason,
            target_id=r.target_id,
            channel=r.channel,
            area_code=r.area_code,
        )
        if new == "unacknowledged":
            _escalate(batch, r, f"{r.channel} not acknowledged in time")
    batch.flush()
    completed = []
    open_states = ",".join(f"'{s.value}'" for s in DeliveryState if s.value not in _TERMINAL)
    for seq, warning_id in conn.execute(
        "SELECT seq, id FROM warnings WHERE completed_at IS NULL AND planned_at IS NOT NULL"
    ).fetchall():
        (open_count,) = conn.execute(
            "SELECT coalesce(sum(n), 0) FROM delivery_state_counts "
            f"WHERE warning_seq = ? AND state IN ({open_states})",
            (seq,),
        ).fetchone()
        if open_count == 0:
            conn.execute("UPDATE warnings SET completed_at = ? WHERE seq = ?", (_iso(now), seq))
            log_warning_event(conn, warning_id, "completed", now, {})
            completed.append(warning_id)
    return SweepResult(
        leases_reclaimed=len(leases),
        unacknowledged=unacked,
        device_resends=resends,
        escalated=batch.escalated,
        visits_created=batch.visits,
        warnings_expired=tuple(expired),
        warnings_completed=tuple(completed),
    )


T = TypeVar("T")


def _update_ids(conn: Db, assignments: str, params: tuple[Any, ...], ids: Sequence[int]) -> None:
    """``UPDATE deliveries SET <assignments> WHERE id IN (<ids>)``, in chunks."""
    for chunk in _chunks(ids, 900):
        marks = ",".join("?" * len(chunk))
        conn.execute(
            f"UPDATE deliveries SET {assignments} WHERE id IN ({marks})", (*params, *chunk)
        )


def _runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Runs of consecutive integers, as (first, last)."""
    runs: list[tuple[int, int]] = []
    for i in sorted(ids):
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")

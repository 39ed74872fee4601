-- Tocsin schema, version 3: the engine (dispatch, leases, acknowledgements, escalation,
-- coverage roll-up) and the delivery log's filters.

-- Planning runs in stages (devices and grid members first) so the first loudspeaker command
-- leaves before every person's row is written; plan_stage is the last stage committed.
ALTER TABLE warnings ADD COLUMN plan_stage INTEGER NOT NULL DEFAULT 0;
-- Set when every delivery of the warning is in a terminal state.
ALTER TABLE warnings ADD COLUMN completed_at TEXT;

-- The engine claims one channel at a time (each channel has its own adapters and rate), by
-- priority then due time: one index range per (channel, priority).
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries(channel, priority, due_at) WHERE state IN ('pending','retry_wait');
-- A target's deliveries: the other steps of a person's ladder (released when one fails, skipped
-- when they acknowledge) and the deliveries a reply or a call acknowledges. Written once per
-- row at planning and never updated (target_id does not change), so dispatch pays nothing.
CREATE INDEX deliveries_target ON deliveries(target_id);
-- Leases to reclaim and acknowledgement deadlines to enforce, by due time.
CREATE INDEX deliveries_in_flight ON deliveries(due_at) WHERE state IN ('sending','sent','delivered');

-- Phone number → person, for replies and calls that acknowledge.
CREATE INDEX persons_phone ON persons(phone) WHERE phone IS NOT NULL;

-- Provider references (a Twilio SID, a modem message reference) → delivery, for status
-- callbacks that name only the reference.
CREATE TABLE delivery_refs (
    adapter     TEXT NOT NULL,
    reference   TEXT NOT NULL,
    delivery_id INTEGER NOT NULL,
    PRIMARY KEY (adapter, reference)
) WITHOUT ROWID;

-- Deliveries per warning and state, kept by every transition so progress is one small read.
CREATE TABLE delivery_state_counts (
    warning_seq INTEGER NOT NULL,
    state       TEXT NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (warning_seq, state)
) WITHOUT ROWID;

-- The delivery log, filterable by target, channel and area without joining millions of rows.
ALTER TABLE delivery_events ADD COLUMN target_id TEXT;
ALTER TABLE delivery_events ADD COLUMN channel TEXT;
ALTER TABLE delivery_events ADD COLUMN area_code TEXT;
CREATE INDEX delivery_events_target ON delivery_events(target_id, id) WHERE target_id IS NOT NULL;

-- Coverage roll-up. Denominators per village, written when the warning is planned, from the
-- directory as it was then.
CREATE TABLE coverage_targets (
    warning_seq  INTEGER NOT NULL,
    village_code TEXT NOT NULL,
    grid_members INTEGER NOT NULL,
    households   INTEGER NOT NULL,
    persons      INTEGER NOT NULL,
    PRIMARY KEY (warning_seq, village_code)
) WITHOUT ROWID;

-- Who or what has been reached, once each (the primary key makes acknowledgements
-- idempotent). kind: village, grid_member, household, person. in_time = 0 for an
-- acknowledgement that came after the warning expired: recorded, not counted.
CREATE TABLE reached (
    warning_seq  INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    target_id    TEXT NOT NULL,
    village_code TEXT NOT NULL,
    at           REAL NOT NULL,
    in_time      INTEGER NOT NULL,
    source       TEXT NOT NULL,            -- adapter name, or api:<token name>
    delivery_id  INTEGER,
    PRIMARY KEY (warning_seq, kind, target_id)
) WITHOUT ROWID;

-- Counts of `reached` (in time) per village and kind, kept with every insert into `reached`,
-- so reading the coverage of a city-wide warning sums ~1,500 rows instead of millions.
CREATE TABLE coverage_counts (
    warning_seq  INTEGER NOT NULL,
    village_code TEXT NOT NULL,
    kind         TEXT NOT NULL,
    n            INTEGER NOT NULL,
    PRIMARY KEY (warning_seq, village_code, kind)
) WITHOUT ROWID;

-- Door-to-door tasks: households whose people went unreached through every channel, named in
-- a visit delivery to their grid member.
CREATE TABLE visit_households (
    warning_seq  INTEGER NOT NULL,
    household_id TEXT NOT NULL,
    grid_id      TEXT NOT NULL,
    added_at     REAL NOT NULL,
    delivery_id  INTEGER NOT NULL,          -- the visit delivery that names it
    PRIMARY KEY (warning_seq, household_id)
) WITHOUT ROWID;
CREATE INDEX visit_households_delivery ON visit_households(delivery_id);
CREATE TABLE visit_tasks (
    delivery_id INTEGER PRIMARY KEY,
    warning_seq INTEGER NOT NULL,
    grid_id     TEXT NOT NULL
);
CREATE INDEX visit_tasks_grid ON visit_tasks(warning_seq, grid_id);

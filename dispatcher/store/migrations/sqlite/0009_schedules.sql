-- Tocsin schema, version 9: scheduled test broadcasts and drills (docs/schedules.md).
--
-- A warning may carry its own plan rules (a JSON array in the level policy's rule grammar) that
-- replace its level's rules when it is planned; NULL plans it by the level policy. Only Test
-- and Exercise warnings made by a schedule carry them, and an Update or Cancel of such a
-- warning inherits them.
ALTER TABLE warnings ADD COLUMN plan_rules TEXT;

-- One row per schedule, from the config ([[schedules]], upserted at start) or from the API.
-- The schedule itself is a JSON document validated by dispatcher.schedules.spec.ScheduleSpec;
-- what the runner looks up is in columns. A removed schedule keeps its row (deleted_at) so
-- its runs keep their history; an id can be used again.
CREATE TABLE schedules (
    id           TEXT PRIMARY KEY,
    source       TEXT NOT NULL CHECK (source IN ('config', 'api')),
    cron         TEXT NOT NULL,             -- also in spec; a changed cron is active anew
    spec         TEXT NOT NULL,             -- JSON, ScheduleSpec
    enabled      INTEGER NOT NULL,
    -- Fire times after this are due: set at creation, and again when the cron changes or the
    -- schedule is enabled again, so a disabled month is not recorded as missed runs.
    active_since TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    deleted_at   TEXT
);

-- Every fire time of a schedule that was handled: ran (a warning was made), missed (the
-- daemon was down past the grace window), skipped_quiet (inside quiet hours) or failed (the
-- warning was refused); running while its warning is being made. The unique key is the
-- claim: the node whose INSERT succeeds runs that fire time, every other node skips it.
-- The PostgreSQL store keeps the same unique key (INSERT … ON CONFLICT DO NOTHING
-- RETURNING id), which enforces one run per fire time across nodes.
CREATE TABLE schedule_runs (
    id          INTEGER PRIMARY KEY,
    schedule_id TEXT NOT NULL REFERENCES schedules(id),
    fire_at     TEXT NOT NULL,              -- the scheduled time (UTC); run-now: the request time
    kind        TEXT NOT NULL CHECK (kind IN ('cron', 'manual')),
    state       TEXT NOT NULL
                CHECK (state IN ('running', 'ran', 'missed', 'skipped_quiet', 'failed')),
    started_at  TEXT NOT NULL,              -- when this node handled it (UTC)
    warning_id  TEXT REFERENCES warnings(id),
    node        TEXT NOT NULL DEFAULT '',   -- host:pid of the node that claimed it
    principal   TEXT NOT NULL DEFAULT '',   -- who asked: "scheduler", or a run-now's token
    note        TEXT NOT NULL DEFAULT '',
    report      TEXT,                       -- JSON: the test report's summary counts
    reported_at TEXT,
    UNIQUE (schedule_id, fire_at)
);
CREATE INDEX schedule_runs_warning ON schedule_runs(warning_id) WHERE warning_id IS NOT NULL;
-- Runs whose report is still to be made (at start, and after each run).
CREATE INDEX schedule_runs_unreported ON schedule_runs(started_at)
    WHERE state = 'ran' AND report IS NULL;

-- Tocsin schema, version 1 (SQLite dialect).
-- Directory: areas, grids, households, persons, devices. Warnings, deliveries, the
-- append-only delivery event log, the audit log and idempotency keys.

CREATE TABLE areas (
    code        TEXT PRIMARY KEY,            -- 12-digit statistical code
    name        TEXT NOT NULL,
    level       TEXT NOT NULL CHECK (level IN ('province','city','county','town','village')),
    parent_code TEXT REFERENCES areas(code)
) WITHOUT ROWID;
CREATE INDEX areas_parent ON areas(parent_code);

-- Every (ancestor, descendant) pair including (a, a): "a code covers everything beneath it"
-- becomes a join instead of a recursive query per request.
CREATE TABLE area_closure (
    ancestor   TEXT NOT NULL,
    descendant TEXT NOT NULL,
    depth      INTEGER NOT NULL,
    PRIMARY KEY (ancestor, descendant)
) WITHOUT ROWID;
CREATE INDEX area_closure_descendant ON area_closure(descendant, ancestor);

CREATE TABLE grids (
    id           TEXT PRIMARY KEY,
    village_code TEXT NOT NULL REFERENCES areas(code),
    name         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX grids_village ON grids(village_code);

CREATE TABLE households (
    id           TEXT PRIMARY KEY,
    grid_id      TEXT NOT NULL REFERENCES grids(id),
    village_code TEXT NOT NULL,              -- denormalised from the grid for set-based planning
    address      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX households_grid ON households(grid_id);

CREATE TABLE persons (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    phone              TEXT,                 -- primary number, E.164
    other_phones       TEXT NOT NULL DEFAULT '',  -- ';'-separated E.164
    household_id       TEXT REFERENCES households(id),
    village_code       TEXT NOT NULL,        -- from the household, or given for people without one
    roles              INTEGER NOT NULL DEFAULT 0,  -- bit mask of dispatcher.domain.Role
    vulnerable         INTEGER NOT NULL DEFAULT 0,
    lives_alone        INTEGER NOT NULL DEFAULT 0,
    preferred_channels TEXT NOT NULL DEFAULT ''     -- ';'-separated channel names
);
CREATE INDEX persons_village ON persons(village_code);
CREATE INDEX persons_household ON persons(household_id);

-- Which grids a grid member serves.
CREATE TABLE grid_members (
    grid_id   TEXT NOT NULL REFERENCES grids(id),
    person_id TEXT NOT NULL REFERENCES persons(id),
    PRIMARY KEY (grid_id, person_id)
) WITHOUT ROWID;
CREATE INDEX grid_members_person ON grid_members(person_id);

CREATE TABLE devices (
    id        TEXT PRIMARY KEY,
    kind      TEXT NOT NULL CHECK (kind IN ('loudspeaker','transmitter','modem')),
    name      TEXT NOT NULL DEFAULT '',
    adapter   TEXT NOT NULL DEFAULT '',     -- adapter instance name from the config
    address   TEXT NOT NULL DEFAULT '',     -- MQTT device id, serial port, phone number
    area_code TEXT NOT NULL REFERENCES areas(code)  -- where it is installed
);

-- The areas a device's broadcast reaches (a speaker: its village; a transmitter: several).
CREATE TABLE device_areas (
    device_id TEXT NOT NULL REFERENCES devices(id),
    area_code TEXT NOT NULL REFERENCES areas(code),
    PRIMARY KEY (device_id, area_code)
) WITHOUT ROWID;
CREATE INDEX device_areas_area ON device_areas(area_code);

CREATE TABLE warnings (
    seq          INTEGER PRIMARY KEY,       -- internal key: deliveries carry 8 bytes, not 32
    id           TEXT NOT NULL UNIQUE,      -- the public id (hex UUID)
    identifier   TEXT NOT NULL,
    sender       TEXT NOT NULL,
    sent         TEXT NOT NULL,
    status       TEXT NOT NULL,
    msg_type     TEXT NOT NULL,
    level        TEXT NOT NULL,
    event        TEXT NOT NULL,
    headline     TEXT NOT NULL,
    description  TEXT NOT NULL,
    instruction  TEXT NOT NULL,
    area_codes   TEXT NOT NULL,             -- JSON array
    area_desc    TEXT NOT NULL DEFAULT '',
    expires      TEXT NOT NULL,
    urgency      TEXT NOT NULL,
    certainty    TEXT NOT NULL,
    category     TEXT NOT NULL,
    language     TEXT NOT NULL,
    refs         TEXT NOT NULL DEFAULT '[]', -- JSON array of "sender,identifier,sent"
    note         TEXT NOT NULL DEFAULT '',
    audio_url    TEXT,
    audio_sha256 TEXT,
    state        TEXT NOT NULL DEFAULT 'active',
    superseded_by TEXT,
    planned_at   TEXT,                      -- NULL until the planner has written its deliveries
    created_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (sender, identifier)
);
CREATE INDEX warnings_sent ON warnings(sent DESC);
CREATE INDEX warnings_unplanned ON warnings(created_at) WHERE planned_at IS NULL;

-- The warning's target area codes (12-digit), as rows for set-based planning.
CREATE TABLE warning_areas (
    warning_id TEXT NOT NULL REFERENCES warnings(id),
    area_code  TEXT NOT NULL,
    PRIMARY KEY (warning_id, area_code)
) WITHOUT ROWID;

CREATE TABLE idempotency_keys (
    principal    TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    warning_id   TEXT NOT NULL REFERENCES warnings(id),
    created_at   TEXT NOT NULL,
    PRIMARY KEY (principal, key)
) WITHOUT ROWID;

-- Millions of rows per city-wide warning: kept narrow, and without a foreign key on the warning
-- (the planner inserts only inside the transaction that checked the warning), because per-row
-- checks and a 32-byte text key per row cost a third of the planning time.
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY,
    warning_seq  INTEGER NOT NULL,          -- warnings.seq
    audience     TEXT NOT NULL,             -- device, grid_member, household, person
    target_id    TEXT NOT NULL,             -- devices.id when audience = 'device', else persons.id
    channel      TEXT NOT NULL,
    area_code    TEXT NOT NULL,             -- the village (or town) of the target, for counts
    priority     INTEGER NOT NULL,          -- lower is sooner
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    due_at       REAL NOT NULL,             -- unix seconds
    lease_until  REAL,
    updated_at   REAL NOT NULL
);
-- The address (phone, device id) and household are read from the directory when a batch is
-- sent or acknowledged, by primary key; the address actually used is recorded in the event.
-- A warning's deliveries are found through the rowid ranges its plan wrote (one writer, one
-- transaction per plan: the range is contiguous), not through an index on warning_seq, which
-- would cost a third of the time of planning a city-wide warning.
CREATE TABLE delivery_ranges (
    warning_seq INTEGER NOT NULL,
    first_id    INTEGER NOT NULL,
    last_id     INTEGER NOT NULL,
    PRIMARY KEY (warning_seq, first_id)
) WITHOUT ROWID;
-- Claim order for the engine: open work by priority then due time.
CREATE INDEX deliveries_due ON deliveries(priority, due_at) WHERE state IN ('pending','retry_wait');

-- Plan counts per warning, area, audience and channel, written by the planner in the same
-- transaction as the deliveries so reading a plan never scans millions of rows.
CREATE TABLE plan_counts (
    warning_id TEXT NOT NULL REFERENCES warnings(id),
    area_code  TEXT NOT NULL,
    audience   TEXT NOT NULL,
    channel    TEXT NOT NULL,
    count      INTEGER NOT NULL,
    PRIMARY KEY (warning_id, area_code, audience, channel)
) WITHOUT ROWID;

-- Append-only: what operators read as the delivery log. delivery_id is NULL for events
-- that concern a whole warning (planned, superseded, cancelled).
CREATE TABLE delivery_events (
    id          INTEGER PRIMARY KEY,
    at          REAL NOT NULL,
    warning_id  TEXT NOT NULL,
    delivery_id INTEGER,
    state       TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 0,
    adapter     TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL DEFAULT '',
    detail      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX delivery_events_warning ON delivery_events(warning_id, id);
CREATE INDEX delivery_events_delivery ON delivery_events(delivery_id, id);
CREATE TRIGGER delivery_events_no_update BEFORE UPDATE ON delivery_events
BEGIN SELECT RAISE(ABORT, 'delivery_events is append-only'); END;
CREATE TRIGGER delivery_events_no_delete BEFORE DELETE ON delivery_events
BEGIN SELECT RAISE(ABORT, 'delivery_events is append-only'); END;

CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    principal TEXT NOT NULL,
    role      TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL DEFAULT '',
    detail    TEXT NOT NULL DEFAULT '{}'
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

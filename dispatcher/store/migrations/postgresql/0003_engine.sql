-- Tocsin schema, version 3: the engine (dispatch, leases, acknowledgements, escalation,
-- coverage roll-up) and the delivery log's filters. See the SQLite migration for the why.

ALTER TABLE warnings ADD COLUMN plan_stage bigint NOT NULL DEFAULT 0;
ALTER TABLE warnings ADD COLUMN completed_at text;

-- Claims: one index range per (channel, priority).
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries(channel, priority, due_at) WHERE state IN ('pending','retry_wait');
CREATE INDEX deliveries_target ON deliveries(target_id);
CREATE INDEX deliveries_in_flight ON deliveries(due_at) WHERE state IN ('sending','sent','delivered');

CREATE INDEX persons_phone ON persons(phone) WHERE phone IS NOT NULL;

-- Provider references → delivery.
CREATE TABLE delivery_refs (
    adapter     text NOT NULL,
    reference   text NOT NULL,
    delivery_id bigint NOT NULL,
    PRIMARY KEY (adapter, reference)
);

-- Deliveries per warning and state, kept by every transition.
CREATE TABLE delivery_state_counts (
    warning_seq bigint NOT NULL,
    state       text NOT NULL,
    n           bigint NOT NULL,
    PRIMARY KEY (warning_seq, state)
);

ALTER TABLE delivery_events ADD COLUMN target_id text;
ALTER TABLE delivery_events ADD COLUMN channel text;
ALTER TABLE delivery_events ADD COLUMN area_code text;
CREATE INDEX delivery_events_target ON delivery_events(target_id, id) WHERE target_id IS NOT NULL;

-- Coverage roll-up: denominators per village, written when the warning is planned.
CREATE TABLE coverage_targets (
    warning_seq  bigint NOT NULL,
    village_code text NOT NULL,
    grid_members bigint NOT NULL,
    households   bigint NOT NULL,
    persons      bigint NOT NULL,
    PRIMARY KEY (warning_seq, village_code)
);

-- Who or what has been reached, once each. in_time: 0/1.
CREATE TABLE reached (
    warning_seq  bigint NOT NULL,
    kind         text NOT NULL,
    target_id    text NOT NULL,
    village_code text NOT NULL,
    at           double precision NOT NULL,
    in_time      bigint NOT NULL,
    source       text NOT NULL,            -- adapter name, or api:<token name>
    delivery_id  bigint,
    PRIMARY KEY (warning_seq, kind, target_id)
);

-- Counts of `reached` (in time) per village and kind.
CREATE TABLE coverage_counts (
    warning_seq  bigint NOT NULL,
    village_code text NOT NULL,
    kind         text NOT NULL,
    n            bigint NOT NULL,
    PRIMARY KEY (warning_seq, village_code, kind)
);

-- Door-to-door tasks.
CREATE TABLE visit_households (
    warning_seq  bigint NOT NULL,
    household_id text NOT NULL,
    grid_id      text NOT NULL,
    added_at     double precision NOT NULL,
    delivery_id  bigint NOT NULL,          -- the visit delivery that names it
    PRIMARY KEY (warning_seq, household_id)
);
CREATE INDEX visit_households_delivery ON visit_households(delivery_id);
-- delivery_id is the visit delivery's id, inserted explicitly: no identity.
CREATE TABLE visit_tasks (
    delivery_id bigint PRIMARY KEY,
    warning_seq bigint NOT NULL,
    grid_id     text NOT NULL
);
CREATE INDEX visit_tasks_grid ON visit_tasks(warning_seq, grid_id);

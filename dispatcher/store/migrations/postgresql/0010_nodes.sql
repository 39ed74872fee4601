-- Tocsin schema, version 10: several dispatcher nodes on one database.

-- The node holding a delivery's sending lease (NULL when not leased).
ALTER TABLE deliveries ADD COLUMN leased_by text;
-- A node's leases, to release or reclaim them when it stops or is gone.
CREATE INDEX deliveries_leased ON deliveries(leased_by) WHERE state = 'sending';

-- One row per dispatcher node. seen_at is its heartbeat; leader_since is set while it holds
-- the scheduler lock. Times are unix seconds.
CREATE TABLE nodes (
    name         text PRIMARY KEY,
    host         text NOT NULL,
    pid          bigint NOT NULL,
    version      text NOT NULL,
    api_url      text,
    started_at   double precision NOT NULL,
    seen_at      double precision NOT NULL,
    stopped_at   double precision,
    leader_since double precision
);

-- Tocsin schema, version 10: several dispatcher nodes on one database (PostgreSQL; an SQLite
-- store has one node, but keeps the same schema).

-- The node holding a delivery's sending lease (NULL when not leased).
ALTER TABLE deliveries ADD COLUMN leased_by TEXT;
-- A node's leases, to release or reclaim them when it stops or is gone.
CREATE INDEX deliveries_leased ON deliveries(leased_by) WHERE state = 'sending';

-- One row per dispatcher node. seen_at is its heartbeat; leader_since is set while it holds
-- the scheduler lock. Times are unix seconds.
CREATE TABLE nodes (
    name         TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL,
    api_url      TEXT,
    started_at   REAL NOT NULL,
    seen_at      REAL NOT NULL,
    stopped_at   REAL,
    leader_since REAL
);

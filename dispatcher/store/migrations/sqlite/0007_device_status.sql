-- Tocsin schema, version 7: each device's connection state as its adapter last reported it
-- (online or offline, when it was last heard from, what it says of itself: firmware, volume,
-- signal), one row per adapter and address. The engine keeps the newest state per device in
-- memory and writes them here in batches (dispatcher/engine/device_status.py); a status older
-- than the stored one never replaces it.
CREATE TABLE device_status (
    adapter    TEXT NOT NULL,               -- adapter instance name from the config
    address    TEXT NOT NULL,               -- the address the adapter knows the device by
    online     INTEGER NOT NULL,
    last_seen  REAL NOT NULL,               -- unix seconds, the adapter's clock
    detail     TEXT NOT NULL DEFAULT '{}',  -- JSON object
    updated_at REAL NOT NULL,               -- unix seconds, when the daemon recorded it
    PRIMARY KEY (adapter, address)
) WITHOUT ROWID;

-- A directory device is matched to its status by (adapter, the address the engine sends to:
-- devices.address, or the id when it has none). This index on the same expression finds the
-- statuses no directory device has (GET /v1/devices?unregistered=true) without reading every
-- device once per status.
CREATE INDEX devices_adapter_address ON devices(adapter, COALESCE(NULLIF(address, ''), id));

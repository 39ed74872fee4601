-- Tocsin schema, version 7: each device's connection state as its adapter last reported it,
-- one row per adapter and address (dispatcher/engine/device_status.py).
CREATE TABLE device_status (
    adapter    text NOT NULL,               -- adapter instance name from the config
    address    text NOT NULL,               -- the address the adapter knows the device by
    online     bigint NOT NULL,             -- 0/1
    last_seen  double precision NOT NULL,   -- unix seconds, the adapter's clock
    detail     text NOT NULL DEFAULT '{}',  -- JSON object
    updated_at double precision NOT NULL,   -- unix seconds, when the daemon recorded it
    PRIMARY KEY (adapter, address)
);

-- A directory device's status key: (adapter, its address or else its id). The queries use the
-- same expression.
CREATE INDEX devices_adapter_address ON devices(adapter, COALESCE(NULLIF(address, ''), id));

-- Indexes for the counts beneath an area (GET /v1/areas); see the SQLite migration.

-- People without a phone, per village (partial: only the few without one).
CREATE INDEX persons_village_no_phone ON persons(village_code) WHERE phone IS NULL;

-- Devices are counted where they are installed.
CREATE INDEX devices_area ON devices(area_code);

-- Indexes for the counts beneath an area (GET /v1/areas): each count walks area_closure from
-- the listed areas and reaches the directory through an index, never through table rows.

-- People without a phone, per village: the API counts them and subtracts them from everyone
-- (persons_village) to tell how many have a phone. Counting those with a phone without this
-- index reads every person's row: for a county of 290,000 people about a second when the rows
-- are not stored village by village. Partial, so it holds only the few without a phone; the
-- planner's statements (phone IS NOT NULL) cannot use it and keep their plans.
CREATE INDEX persons_village_no_phone ON persons(village_code) WHERE phone IS NULL;

-- Devices are counted where they are installed.
CREATE INDEX devices_area ON devices(area_code);

-- Tocsin schema, version 4: reading coverage.

-- Acknowledgements that came after the warning expired (in_time = 0) are recorded in `reached`
-- but not counted in `coverage_counts`; the coverage report shows how many there were. They
-- are few, and this partial index holds only them, so counting them never reads the millions
-- of in-time rows of a city-wide warning (and costs nothing when an in-time row is written).
-- in_time is a column of the index, not only its condition, so the count reads the index alone.
CREATE INDEX reached_late ON reached(warning_seq, kind, in_time) WHERE in_time = 0;

-- Tocsin schema, version 4: reading coverage. Late acknowledgements (in_time = 0) only.
CREATE INDEX reached_late ON reached(warning_seq, kind, in_time) WHERE in_time = 0;

-- Tocsin schema, version 6: a delivery's history is read through its target
-- (delivery_events_target), never by delivery id alone, and each index on the event log costs
-- every send and acknowledgement a B-tree insert: drop the unused one.
DROP INDEX delivery_events_delivery;

-- Tocsin schema, version 6: the delivery log is read through its target; drop the unused index.
DROP INDEX delivery_events_delivery;

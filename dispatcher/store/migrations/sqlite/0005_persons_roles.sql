-- Tocsin schema, version 5: the people with a role (grid members, cadres, rescue teams, hazard
-- monitors) by village. Planning's first people tier reads only them (its statements also say
-- `roles != 0` so SQLite can use this index): about 1 % of a city, found without reading
-- every person's row (tier 1 of a city-wide plan: ~1.1 s → ~0.5 s).
CREATE INDEX persons_roles ON persons(village_code) WHERE roles != 0;

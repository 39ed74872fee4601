-- Tocsin schema, version 5: the people with a role, by village (planning's first people tier).
CREATE INDEX persons_roles ON persons(village_code) WHERE roles != 0;

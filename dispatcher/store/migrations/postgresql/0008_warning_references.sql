-- What an Update or Cancel replaces, found by the replacing warning's id.
CREATE INDEX warnings_superseded_by ON warnings(superseded_by) WHERE superseded_by IS NOT NULL;

-- What an Update or Cancel replaces is read when its deliveries are sent (devices stop playing
-- the referenced warnings): find those by the replacing warning's id.
CREATE INDEX warnings_superseded_by ON warnings(superseded_by) WHERE superseded_by IS NOT NULL;

-- The last health status announced for each key (`key:<id>`) and service
-- (`service:<id>`). Changing it is a compare-and-set, so when several instances see the
-- same change only one announces it.
CREATE TABLE health_states (
    subject    TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    disruption BOOLEAN NOT NULL,
    since      INTEGER NOT NULL
);

-- Running instances report the master keys they hold every few seconds: a master-key
-- rotation waits until every live instance holds the new key, and retiring a key is
-- refused while a live instance still wraps new data with it. A change of master key
-- (another current KEK) moves the change feed, so running instances follow at once.
CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    current_kek TEXT NOT NULL,
    keks        TEXT NOT NULL,
    version     TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    seen_at     INTEGER NOT NULL
);
CREATE INDEX instances_seen ON instances (seen_at);

CREATE TRIGGER master_keys_insert_noted AFTER INSERT ON master_keys
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER master_keys_delete_noted AFTER DELETE ON master_keys
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER master_keys_update_noted AFTER UPDATE ON master_keys
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;

-- Running instances report the master keys they hold every few seconds: a master-key
-- rotation waits until every live instance holds the new key, and retiring a key is
-- refused while a live instance still wraps new data with it. A change of master key
-- (another current KEK) moves the change feed, so running instances follow at once.
CREATE TABLE instances (
    id          TEXT PRIMARY KEY,
    current_kek TEXT NOT NULL,
    keks        TEXT NOT NULL,
    version     TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    seen_at     BIGINT NOT NULL
);
CREATE INDEX instances_seen ON instances (seen_at);

CREATE CONSTRAINT TRIGGER master_keys_changed AFTER INSERT OR UPDATE OR DELETE ON master_keys
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION keyward_note_change();

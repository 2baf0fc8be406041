-- The change feed: one number moved by every committed transaction that changes what the
-- proxy snapshot is built from, announced on the `keyward_changes` channel. Instances
-- LISTEN and rebuild at once, and read the number every second to confirm they are current
-- (a NOTIFY sent while a listener was reconnecting is lost).
--
-- The triggers are deferred to commit: the feed row is locked last, after every other lock
-- the transaction takes, so it adds no lock-order deadlock, and its number follows commit
-- order. A transaction moves it once (`keyward.change_noted` lives until commit), so a
-- bulk import costs one update, and NOTIFY with one payload is folded by PostgreSQL.
-- Stamping a key's or token's last use is not a change.
CREATE TABLE change_feed (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    number BIGINT NOT NULL
);
INSERT INTO change_feed (id, number) VALUES (1, 0);

CREATE FUNCTION keyward_note_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('keyward.change_noted', true) IS DISTINCT FROM 'yes' THEN
        PERFORM set_config('keyward.change_noted', 'yes', true);
        UPDATE change_feed SET number = number + 1 WHERE id = 1;
        PERFORM pg_notify('keyward_changes', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER keys_added_or_removed AFTER INSERT OR DELETE ON keys
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION keyward_note_change();
CREATE CONSTRAINT TRIGGER keys_changed AFTER UPDATE ON keys
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.last_used_at IS NOT DISTINCT FROM NEW.last_used_at)
    EXECUTE FUNCTION keyward_note_change();

CREATE CONSTRAINT TRIGGER key_versions_changed AFTER INSERT OR UPDATE OR DELETE ON key_versions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION keyward_note_change();

CREATE CONSTRAINT TRIGGER app_tokens_added_or_removed AFTER INSERT OR DELETE ON app_tokens
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION keyward_note_change();
CREATE CONSTRAINT TRIGGER app_tokens_changed AFTER UPDATE ON app_tokens
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.last_used_at IS NOT DISTINCT FROM NEW.last_used_at)
    EXECUTE FUNCTION keyward_note_change();

CREATE CONSTRAINT TRIGGER custom_services_changed AFTER INSERT OR UPDATE OR DELETE ON custom_services
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION keyward_note_change();

CREATE CONSTRAINT TRIGGER base_url_overrides_changed AFTER INSERT OR UPDATE OR DELETE ON base_url_overrides
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION keyward_note_change();

CREATE CONSTRAINT TRIGGER key_flags_changed AFTER INSERT OR UPDATE OR DELETE ON key_flags
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION keyward_note_change();

CREATE CONSTRAINT TRIGGER pool_strategies_changed AFTER INSERT OR UPDATE OR DELETE ON pool_strategies
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION keyward_note_change();

CREATE CONSTRAINT TRIGGER rotations_changed AFTER INSERT OR UPDATE OR DELETE ON rotations
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION keyward_note_change();

CREATE CONSTRAINT TRIGGER containments_changed AFTER INSERT OR UPDATE OR DELETE ON containments
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION keyward_note_change();

-- The change feed: one number moved by every change to what the proxy snapshot is built
-- from; instances read it a few times a second (SQLite has no LISTEN). Stamping a key's or
-- token's last use is not a change.
CREATE TABLE change_feed (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    number INTEGER NOT NULL
);
INSERT INTO change_feed (id, number) VALUES (1, 0);

CREATE TRIGGER keys_insert_noted AFTER INSERT ON keys
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER keys_delete_noted AFTER DELETE ON keys
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER keys_update_noted AFTER UPDATE ON keys WHEN OLD.last_used_at IS NEW.last_used_at
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER key_versions_insert_noted AFTER INSERT ON key_versions
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER key_versions_delete_noted AFTER DELETE ON key_versions
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER key_versions_update_noted AFTER UPDATE ON key_versions
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER app_tokens_insert_noted AFTER INSERT ON app_tokens
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER app_tokens_delete_noted AFTER DELETE ON app_tokens
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER app_tokens_update_noted AFTER UPDATE ON app_tokens WHEN OLD.last_used_at IS NEW.last_used_at
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER custom_services_insert_noted AFTER INSERT ON custom_services
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER custom_services_delete_noted AFTER DELETE ON custom_services
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER custom_services_update_noted AFTER UPDATE ON custom_services
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER base_url_overrides_insert_noted AFTER INSERT ON base_url_overrides
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER base_url_overrides_delete_noted AFTER DELETE ON base_url_overrides
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER base_url_overrides_update_noted AFTER UPDATE ON base_url_overrides
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER key_flags_insert_noted AFTER INSERT ON key_flags
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER key_flags_delete_noted AFTER DELETE ON key_flags
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER key_flags_update_noted AFTER UPDATE ON key_flags
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER pool_strategies_insert_noted AFTER INSERT ON pool_strategies
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER pool_strategies_delete_noted AFTER DELETE ON pool_strategies
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER pool_strategies_update_noted AFTER UPDATE ON pool_strategies
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER rotations_insert_noted AFTER INSERT ON rotations
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER rotations_delete_noted AFTER DELETE ON rotations
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER rotations_update_noted AFTER UPDATE ON rotations
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER containments_insert_noted AFTER INSERT ON containments
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER containments_delete_noted AFTER DELETE ON containments
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;
CREATE TRIGGER containments_update_noted AFTER UPDATE ON containments
BEGIN UPDATE change_feed SET number = number + 1 WHERE id = 1; END;

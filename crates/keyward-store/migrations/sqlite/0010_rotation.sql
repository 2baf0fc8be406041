-- When each key's current value became current (for rotation policies), backfilled from
-- the current version; the key's own rotation rule lives in `controls`.
ALTER TABLE keys ADD COLUMN rotated_at INTEGER;
UPDATE keys SET rotated_at = (SELECT v.created_at FROM key_versions v
    WHERE v.key_id = keys.id AND v.version = keys.current_version);
UPDATE keys SET rotated_at = created_at WHERE rotated_at IS NULL;

-- When each key was last probed for health, and what the probe said. Claiming the next
-- probe is one conditional upsert, so instances sharing the database (and restarts) never
-- probe a key more often than its probe budget allows.
CREATE TABLE key_probes (
    key_id     TEXT PRIMARY KEY REFERENCES keys (id) ON DELETE CASCADE,
    probed_at  BIGINT NOT NULL,
    verdict    TEXT
);

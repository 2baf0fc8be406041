-- Guided rotations (keyward_core::guided_rotation): one row per rotation, every step a
-- compare-and-set on `revision` applied together with the version states it moves. At
-- most one rotation per key is active (the partial unique index); the traffic counters are
-- added to by the proxy's event writer and are not part of the compare-and-set.
CREATE TABLE rotations (
    id               TEXT PRIMARY KEY,
    key_id           TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    step             TEXT NOT NULL,
    old_version      BIGINT NOT NULL,
    new_version      BIGINT NOT NULL,
    managed          TEXT,
    canary_percent   BIGINT NOT NULL,
    window_ms        BIGINT NOT NULL,
    window_ends_at   BIGINT,
    validation       TEXT,
    verification     TEXT,
    canary_served    BIGINT NOT NULL DEFAULT 0,
    canary_rejected  BIGINT NOT NULL DEFAULT 0,
    fallback_served  BIGINT NOT NULL DEFAULT 0,
    new_rejected_at  BIGINT,
    created_by       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    revision         BIGINT NOT NULL
);
CREATE UNIQUE INDEX rotations_one_active ON rotations (key_id)
    WHERE step IN ('creating', 'pending', 'validated', 'canary', 'promoted');
CREATE INDEX rotations_by_key ON rotations (key_id, id);

-- Guided rotations (keyward_core::guided_rotation): one row per rotation, every step a
-- compare-and-set on `revision` applied together with the version states it moves. At
-- most one rotation per key is active (the partial unique index); the traffic counters are
-- added to by the proxy's event writer and are not part of the compare-and-set.
CREATE TABLE rotations (
    id               TEXT PRIMARY KEY,
    key_id           TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    step             TEXT NOT NULL,
    old_version      INTEGER NOT NULL,
    new_version      INTEGER NOT NULL,
    managed          TEXT,
    canary_percent   INTEGER NOT NULL,
    window_ms        INTEGER NOT NULL,
    window_ends_at   INTEGER,
    validation       TEXT,
    verification     TEXT,
    canary_served    INTEGER NOT NULL DEFAULT 0,
    canary_rejected  INTEGER NOT NULL DEFAULT 0,
    fallback_served  INTEGER NOT NULL DEFAULT 0,
    new_rejected_at  INTEGER,
    created_by       TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    revision         INTEGER NOT NULL
);
CREATE UNIQUE INDEX rotations_one_active ON rotations (key_id)
    WHERE step IN ('creating', 'pending', 'validated', 'canary', 'promoted');
CREATE INDEX rotations_by_key ON rotations (key_id, id);

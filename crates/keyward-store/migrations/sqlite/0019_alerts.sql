-- Anomaly alerts about a key or an app token: one unresolved alert per subject and signal
-- (later findings refresh last_seen_at), acknowledged and resolved with who, when and a
-- comment.
CREATE TABLE alerts (
    id               TEXT PRIMARY KEY,
    subject_kind     TEXT NOT NULL,
    subject_id       TEXT NOT NULL,
    signal           TEXT NOT NULL,
    severity         TEXT NOT NULL,
    status           TEXT NOT NULL,
    score            DOUBLE PRECISION NOT NULL,
    reason           TEXT NOT NULL,
    opened_at        BIGINT NOT NULL,
    last_seen_at     BIGINT NOT NULL,
    acknowledged_by  TEXT,
    acknowledged_at  BIGINT,
    acknowledged_comment TEXT,
    resolved_by      TEXT,
    resolved_at      BIGINT,
    resolved_comment TEXT
);
CREATE UNIQUE INDEX alerts_unresolved ON alerts (subject_kind, subject_id, signal) WHERE status <> 'resolved';
CREATE INDEX alerts_subject ON alerts (subject_kind, subject_id, id);
CREATE INDEX alerts_status ON alerts (status, id);

-- Mutes: alerts about a subject (one signal, or every signal when NULL) are not raised
-- until `until`.
CREATE TABLE alert_mutes (
    id           TEXT PRIMARY KEY,
    subject_kind TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    signal       TEXT,
    until        BIGINT NOT NULL,
    reason       TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX alert_mutes_until ON alert_mutes (until);

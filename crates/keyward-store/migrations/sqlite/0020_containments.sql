-- The graduated response: how far each alert has escalated, and the measures in force —
-- an app token's rate cut to a share (throttle), a key or token refused (freeze) — with
-- the alert that caused them (or the person who froze by hand). One measure of each kind
-- per subject.
ALTER TABLE alerts ADD COLUMN stage TEXT NOT NULL DEFAULT 'alerted';

CREATE TABLE containments (
    subject_kind TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    measure      TEXT NOT NULL,
    requests     BIGINT,
    per_seconds  BIGINT,
    alert_id     TEXT,
    reason       TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (subject_kind, subject_id, measure)
);

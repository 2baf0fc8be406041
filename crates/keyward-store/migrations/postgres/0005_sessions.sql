-- Sign-in sessions: only hashes of the cookie's secret and of the CSRF token are kept.
CREATE TABLE sessions (
    public_id    TEXT PRIMARY KEY,
    secret_hash  BYTEA NOT NULL,
    csrf_hash    BYTEA NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    mfa_at       BIGINT,
    source       TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

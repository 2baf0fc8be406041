-- TOTP second factors: the secret only sealed under the master key; the last accepted time
-- step, so no code is accepted twice; recovery codes only as hashes.
CREATE TABLE user_mfa (
    user_id       TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    sealed_secret TEXT NOT NULL,
    kek_id        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    confirmed_at  BIGINT,
    last_step     BIGINT
);
CREATE INDEX user_mfa_kek ON user_mfa (kek_id);

CREATE TABLE mfa_recovery_codes (
    user_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash BYTEA NOT NULL,
    used_at   BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

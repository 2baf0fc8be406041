-- Keyward vault schema, PostgreSQL dialect. Timestamps are Unix milliseconds (UTC).
-- Keep in step with ../sqlite/0001_vault.sql: both backends pass one conformance suite.

CREATE TABLE vault_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE master_keys (
    kek_id     TEXT PRIMARY KEY,
    is_current BOOLEAN NOT NULL,
    verifier   BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE categories (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    builtin    BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
INSERT INTO categories (id, name, builtin, created_at) VALUES
    ('financial-data', 'Financial Data', TRUE, 0),
    ('llm-providers', 'LLM Providers', TRUE, 1),
    ('other', 'Other', TRUE, 2);

CREATE TABLE environments (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    builtin    BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
INSERT INTO environments (id, name, builtin, created_at) VALUES
    ('development', 'Development', TRUE, 0),
    ('staging', 'Staging', TRUE, 1),
    ('production', 'Production', TRUE, 2);

CREATE TABLE custom_services (
    id         TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE base_url_overrides (
    service_id TEXT PRIMARY KEY,
    base_url   TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE keys (
    id              TEXT PRIMARY KEY,
    service_id      TEXT NOT NULL,
    environment     TEXT NOT NULL REFERENCES environments (id),
    alias           TEXT NOT NULL,
    alias_lower     TEXT NOT NULL,
    description     TEXT,
    owner           TEXT,
    tags            TEXT NOT NULL,
    criticality     TEXT NOT NULL,
    enabled         BOOLEAN NOT NULL,
    expires_at      BIGINT,
    current_version BIGINT NOT NULL,
    current_hint    TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    last_used_at    BIGINT,
    deleted_at      BIGINT,
    deleted_by      TEXT
);
-- An alias is unique per service and environment among live keys (case-insensitive).
CREATE UNIQUE INDEX keys_live_alias ON keys (service_id, environment, alias_lower) WHERE deleted_at IS NULL;
-- Filtered listings walk ids newest-first within a service/environment.
CREATE INDEX keys_by_service_environment ON keys (service_id, environment, id);
CREATE INDEX keys_by_environment ON keys (environment, id);
CREATE INDEX keys_deleted ON keys (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE key_tags (
    key_id TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    tag    TEXT NOT NULL,
    PRIMARY KEY (tag, key_id)
);
CREATE INDEX key_tags_by_key ON key_tags (key_id);

CREATE TABLE key_versions (
    key_id      TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    state       TEXT NOT NULL,
    hint        TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    kek_id      TEXT NOT NULL,
    wrapped_dek BYTEA NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (key_id, version)
);
CREATE INDEX key_versions_by_kek ON key_versions (kek_id);

CREATE TABLE management_tokens (
    id           TEXT PRIMARY KEY,
    public_id    TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    secret_hash  BYTEA NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL,
    username_lower TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL,
    disabled       BOOLEAN NOT NULL,
    created_at     BIGINT NOT NULL
);

-- App tokens: what applications present to the proxy. Keep in step with ../sqlite/.
-- `scope` is JSON: services, environments, key_ids, allowed_networks, rate_limit, budget.
CREATE TABLE app_tokens (
    id           TEXT PRIMARY KEY,
    public_id    TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    secret_hash  BYTEA NOT NULL,
    scope        TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

-- The proxy's state and metering. Keep in step with ../postgres/.

-- Per-key limits and budget, as JSON: {"limits": [...], "budget": {...}}.
ALTER TABLE keys ADD COLUMN controls TEXT NOT NULL DEFAULT '{}';

-- What the proxy learned about a key (rejected by the provider, quota-limited).
CREATE TABLE key_flags (
    key_id TEXT PRIMARY KEY,
    kind   TEXT NOT NULL,
    reason TEXT NOT NULL,
    since  INTEGER NOT NULL,
    until  INTEGER
);

-- How each service+environment pool shares traffic (absent: round_robin).
CREATE TABLE pool_strategies (
    service_id  TEXT NOT NULL,
    environment TEXT NOT NULL,
    strategy    TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (service_id, environment)
);

-- One row per proxied call. Endpoint is the path only: queries can carry credentials.
CREATE TABLE usage_records (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    at                 INTEGER NOT NULL,
    token_id           TEXT,
    key_id             TEXT,
    service_id         TEXT NOT NULL,
    environment        TEXT,
    method             TEXT NOT NULL,
    endpoint           TEXT NOT NULL,
    status             INTEGER NOT NULL,
    outcome            TEXT NOT NULL,
    error_code         TEXT,
    latency_ms         INTEGER NOT NULL,
    request_bytes      INTEGER NOT NULL,
    response_bytes     INTEGER NOT NULL,
    cache              TEXT NOT NULL,
    retries            INTEGER NOT NULL,
    model              TEXT,
    input_tokens       INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    output_tokens      INTEGER NOT NULL,
    credits            INTEGER NOT NULL,
    cost_nanos         INTEGER NOT NULL
);
CREATE INDEX usage_records_at ON usage_records (at);
CREATE INDEX usage_records_key_at ON usage_records (key_id, at);
CREATE INDEX usage_records_token_at ON usage_records (token_id, at);

-- Hourly sums per service, key and token ('' for none): what charts, usage queries above
-- minute granularity, and quota/budget counters after a restart read.
CREATE TABLE usage_hourly (
    hour          INTEGER NOT NULL,
    service_id    TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    token_id      TEXT NOT NULL,
    requests      INTEGER NOT NULL,
    errors        INTEGER NOT NULL,
    cache_hits    INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    credits       INTEGER NOT NULL,
    cost_nanos    INTEGER NOT NULL,
    PRIMARY KEY (hour, service_id, key_id, token_id)
);
CREATE INDEX usage_hourly_key ON usage_hourly (key_id, hour);
CREATE INDEX usage_hourly_token ON usage_hourly (token_id, hour);

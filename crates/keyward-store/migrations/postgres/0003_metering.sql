-- The proxy's state and metering. Keep in step with ../sqlite/.

-- Per-key limits and budget, as JSON: {"limits": [...], "budget": {...}}.
ALTER TABLE keys ADD COLUMN controls TEXT NOT NULL DEFAULT '{}';

-- What the proxy learned about a key (rejected by the provider, quota-limited).
CREATE TABLE key_flags (
    key_id TEXT PRIMARY KEY,
    kind   TEXT NOT NULL,
    reason TEXT NOT NULL,
    since  BIGINT NOT NULL,
    until  BIGINT
);

-- How each service+environment pool shares traffic (absent: round_robin).
CREATE TABLE pool_strategies (
    service_id  TEXT NOT NULL,
    environment TEXT NOT NULL,
    strategy    TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (service_id, environment)
);

-- One row per proxied call. Endpoint is the path only: queries can carry credentials.
CREATE TABLE usage_records (
    id                 BIGSERIAL PRIMARY KEY,
    at                 BIGINT NOT NULL,
    token_id           TEXT,
    key_id             TEXT,
    service_id         TEXT NOT NULL,
    environment        TEXT,
    method             TEXT NOT NULL,
    endpoint           TEXT NOT NULL,
    status             BIGINT NOT NULL,
    outcome            TEXT NOT NULL,
    error_code         TEXT,
    latency_ms         BIGINT NOT NULL,
    request_bytes      BIGINT NOT NULL,
    response_bytes     BIGINT NOT NULL,
    cache              TEXT NOT NULL,
    retries            BIGINT NOT NULL,
    model              TEXT,
    input_tokens       BIGINT NOT NULL,
    cached_tokens      BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    output_tokens      BIGINT NOT NULL,
    credits            BIGINT NOT NULL,
    cost_nanos         BIGINT NOT NULL
);
CREATE INDEX usage_records_at ON usage_records (at);
CREATE INDEX usage_records_key_at ON usage_records (key_id, at);
CREATE INDEX usage_records_token_at ON usage_records (token_id, at);

-- Hourly sums per service, key and token ('' for none): what charts, usage queries above
-- minute granularity, and quota/budget counters after a restart read.
CREATE TABLE usage_hourly (
    hour          BIGINT NOT NULL,
    service_id    TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    token_id      TEXT NOT NULL,
    requests      BIGINT NOT NULL,
    errors        BIGINT NOT NULL,
    cache_hits    BIGINT NOT NULL,
    input_tokens  BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    credits       BIGINT NOT NULL,
    cost_nanos    BIGINT NOT NULL,
    PRIMARY KEY (hour, service_id, key_id, token_id)
);
CREATE INDEX usage_hourly_key ON usage_hourly (key_id, hour);
CREATE INDEX usage_hourly_token ON usage_hourly (token_id, hour);

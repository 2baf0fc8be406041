-- The rollups collapsed to the key and the service and environment it belongs to: what
-- the dashboard, the key page and vault-wide totals read. A key's day is one row here
-- however many app tokens, models and networks used it — in the full rollups it is one
-- row per combination (tens of thousands per day at 10 M records), which made the
-- dashboard's week by key and the vault totals grow with traffic. Written in the same
-- transaction as usage_rollups, adding up the same way; filled here from what exists.
CREATE TABLE usage_key_rollups (
    grain          SMALLINT NOT NULL,
    bucket         BIGINT NOT NULL,
    key_id         TEXT NOT NULL,
    service_id     TEXT NOT NULL,
    environment    TEXT NOT NULL,
    requests       BIGINT NOT NULL DEFAULT 0,
    errors         BIGINT NOT NULL DEFAULT 0,
    cache_hits     BIGINT NOT NULL DEFAULT 0,
    saved_credits  BIGINT NOT NULL DEFAULT 0,
    rejected       BIGINT NOT NULL DEFAULT 0,
    throttled      BIGINT NOT NULL DEFAULT 0,
    outages        BIGINT NOT NULL DEFAULT 0,
    input_tokens   BIGINT NOT NULL DEFAULT 0,
    cached_tokens  BIGINT NOT NULL DEFAULT 0,
    output_tokens  BIGINT NOT NULL DEFAULT 0,
    credits        BIGINT NOT NULL DEFAULT 0,
    cost_nanos     BIGINT NOT NULL DEFAULT 0,
    unpriced       BIGINT NOT NULL DEFAULT 0,
    latency_ms_sum BIGINT NOT NULL DEFAULT 0,
    lat_0          BIGINT NOT NULL DEFAULT 0,
    lat_1          BIGINT NOT NULL DEFAULT 0,
    lat_2          BIGINT NOT NULL DEFAULT 0,
    lat_3          BIGINT NOT NULL DEFAULT 0,
    lat_4          BIGINT NOT NULL DEFAULT 0,
    lat_5          BIGINT NOT NULL DEFAULT 0,
    lat_6          BIGINT NOT NULL DEFAULT 0,
    lat_7          BIGINT NOT NULL DEFAULT 0,
    lat_8          BIGINT NOT NULL DEFAULT 0,
    lat_9          BIGINT NOT NULL DEFAULT 0,
    lat_10         BIGINT NOT NULL DEFAULT 0,
    lat_11         BIGINT NOT NULL DEFAULT 0,
    cache_misses   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (grain, bucket, key_id, service_id, environment)
);
CREATE INDEX usage_key_rollups_key ON usage_key_rollups (key_id, grain, bucket);

INSERT INTO usage_key_rollups (grain, bucket, key_id, service_id, environment, requests, errors, cache_hits, saved_credits, rejected, throttled, outages, input_tokens, cached_tokens, output_tokens, credits, cost_nanos, unpriced, latency_ms_sum, lat_0, lat_1, lat_2, lat_3, lat_4, lat_5, lat_6, lat_7, lat_8, lat_9, lat_10, lat_11, cache_misses)
SELECT grain, bucket, key_id, service_id, environment, SUM(requests), SUM(errors), SUM(cache_hits), SUM(saved_credits), SUM(rejected), SUM(throttled), SUM(outages), SUM(input_tokens), SUM(cached_tokens), SUM(output_tokens), SUM(credits), SUM(cost_nanos), SUM(unpriced), SUM(latency_ms_sum), SUM(lat_0), SUM(lat_1), SUM(lat_2), SUM(lat_3), SUM(lat_4), SUM(lat_5), SUM(lat_6), SUM(lat_7), SUM(lat_8), SUM(lat_9), SUM(lat_10), SUM(lat_11), SUM(cache_misses)
FROM usage_rollups GROUP BY grain, bucket, key_id, service_id, environment;

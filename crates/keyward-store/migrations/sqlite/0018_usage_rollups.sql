-- Usage rollups: sums per time bucket and per dimension, written by every instance
-- (each adds its batch's sums to the row: rollups from several instances add up).
-- grain: 0 minute, 1 hour, 2 day, 3 week (from Monday), 4 month — UTC bucket starts in
-- Unix milliseconds. Dimensions are '' where a call had none. lat_0..lat_11 count calls by
-- latency: <= 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000 ms, and slower.
-- Replaces usage_hourly, whose sums become the hour/day/week/month rows (without model,
-- environment, network or latency, which it did not keep).
CREATE TABLE usage_rollups (
    grain          INTEGER NOT NULL,
    bucket         INTEGER NOT NULL,
    key_id         TEXT NOT NULL,
    token_id       TEXT NOT NULL,
    service_id     TEXT NOT NULL,
    model          TEXT NOT NULL,
    environment    TEXT NOT NULL,
    network        TEXT NOT NULL,
    requests       INTEGER NOT NULL DEFAULT 0,
    errors         INTEGER NOT NULL DEFAULT 0,
    cache_hits     INTEGER NOT NULL DEFAULT 0,
    saved_credits  INTEGER NOT NULL DEFAULT 0,
    rejected       INTEGER NOT NULL DEFAULT 0,
    throttled      INTEGER NOT NULL DEFAULT 0,
    outages        INTEGER NOT NULL DEFAULT 0,
    input_tokens   INTEGER NOT NULL DEFAULT 0,
    cached_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens  INTEGER NOT NULL DEFAULT 0,
    credits        INTEGER NOT NULL DEFAULT 0,
    cost_nanos     INTEGER NOT NULL DEFAULT 0,
    unpriced       INTEGER NOT NULL DEFAULT 0,
    latency_ms_sum INTEGER NOT NULL DEFAULT 0,
    lat_0          INTEGER NOT NULL DEFAULT 0,
    lat_1          INTEGER NOT NULL DEFAULT 0,
    lat_2          INTEGER NOT NULL DEFAULT 0,
    lat_3          INTEGER NOT NULL DEFAULT 0,
    lat_4          INTEGER NOT NULL DEFAULT 0,
    lat_5          INTEGER NOT NULL DEFAULT 0,
    lat_6          INTEGER NOT NULL DEFAULT 0,
    lat_7          INTEGER NOT NULL DEFAULT 0,
    lat_8          INTEGER NOT NULL DEFAULT 0,
    lat_9          INTEGER NOT NULL DEFAULT 0,
    lat_10         INTEGER NOT NULL DEFAULT 0,
    lat_11         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grain, bucket, key_id, token_id, service_id, model, environment, network)
);
CREATE INDEX usage_rollups_key ON usage_rollups (key_id, grain, bucket);
CREATE INDEX usage_rollups_token ON usage_rollups (token_id, grain, bucket);

INSERT INTO usage_rollups (grain, bucket, key_id, token_id, service_id, model, environment, network,
    requests, errors, cache_hits, input_tokens, cached_tokens, output_tokens, credits, cost_nanos, unpriced)
SELECT 1, hour AS b, key_id, token_id, service_id, '', '', '',
    SUM(requests), SUM(errors), SUM(cache_hits), SUM(input_tokens), SUM(cached_tokens), SUM(output_tokens),
    SUM(credits), SUM(cost_nanos), SUM(unpriced)
FROM usage_hourly GROUP BY b, key_id, token_id, service_id;

INSERT INTO usage_rollups (grain, bucket, key_id, token_id, service_id, model, environment, network,
    requests, errors, cache_hits, input_tokens, cached_tokens, output_tokens, credits, cost_nanos, unpriced)
SELECT 2, (hour / 86400000) * 86400000 AS b, key_id, token_id, service_id, '', '', '',
    SUM(requests), SUM(errors), SUM(cache_hits), SUM(input_tokens), SUM(cached_tokens), SUM(output_tokens),
    SUM(credits), SUM(cost_nanos), SUM(unpriced)
FROM usage_hourly GROUP BY b, key_id, token_id, service_id;

INSERT INTO usage_rollups (grain, bucket, key_id, token_id, service_id, model, environment, network,
    requests, errors, cache_hits, input_tokens, cached_tokens, output_tokens, credits, cost_nanos, unpriced)
SELECT 3, ((hour - 345600000) / 604800000) * 604800000 + 345600000 AS b, key_id, token_id, service_id, '', '', '',
    SUM(requests), SUM(errors), SUM(cache_hits), SUM(input_tokens), SUM(cached_tokens), SUM(output_tokens),
    SUM(credits), SUM(cost_nanos), SUM(unpriced)
FROM usage_hourly GROUP BY b, key_id, token_id, service_id;

INSERT INTO usage_rollups (grain, bucket, key_id, token_id, service_id, model, environment, network,
    requests, errors, cache_hits, input_tokens, cached_tokens, output_tokens, credits, cost_nanos, unpriced)
SELECT 4, CAST(strftime('%s', hour / 1000, 'unixepoch', 'start of month') AS INTEGER) * 1000 AS b, key_id, token_id, service_id, '', '', '',
    SUM(requests), SUM(errors), SUM(cache_hits), SUM(input_tokens), SUM(cached_tokens), SUM(output_tokens),
    SUM(credits), SUM(cost_nanos), SUM(unpriced)
FROM usage_hourly GROUP BY b, key_id, token_id, service_id;

-- The last eight days of per-call records become minute rows, so minute views keep their
-- recent past across the upgrade.
INSERT INTO usage_rollups (grain, bucket, key_id, token_id, service_id, model, environment, network,
    requests, errors, cache_hits, rejected, throttled, outages, input_tokens, cached_tokens, output_tokens,
    credits, cost_nanos, unpriced, latency_ms_sum, lat_0, lat_1, lat_2, lat_3, lat_4, lat_5, lat_6, lat_7, lat_8, lat_9, lat_10, lat_11)
SELECT 0, (at / 60000) * 60000 AS b, COALESCE(key_id, ''), COALESCE(token_id, ''), service_id,
    COALESCE(model, ''), COALESCE(environment, ''), '',
    COUNT(*), SUM(CASE WHEN outcome <> 'success' THEN 1 ELSE 0 END), SUM(CASE WHEN cache = 'hit' THEN 1 ELSE 0 END),
    SUM(CASE WHEN answer = 'rejected' THEN 1 ELSE 0 END),
    SUM(CASE WHEN answer IN ('quota_limited', 'throttled') THEN 1 ELSE 0 END),
    SUM(CASE WHEN answer = 'outage' OR (answer IS NULL AND outcome = 'failed') THEN 1 ELSE 0 END),
    SUM(input_tokens + cache_write_tokens), SUM(cached_tokens), SUM(output_tokens), SUM(credits), SUM(cost_nanos),
    SUM(unpriced), SUM(CASE WHEN outcome <> 'refused' THEN latency_ms ELSE 0 END),
    SUM(CASE WHEN outcome <> 'refused' AND latency_ms <= 10 THEN 1 ELSE 0 END), SUM(CASE WHEN outcome <> 'refused' AND latency_ms > 10 AND latency_ms <= 25 THEN 1 ELSE 0 END), SUM(CASE WHEN outcome <> 'refused' AND latency_ms > 25 AND latency_ms <= 50 THEN 1 ELSE 0 END), SUM(CASE WHEN outcome <> 'refused' AND latency_ms > 50 AND latency_ms <= 100 THEN 1 ELSE 0 END), SUM(CASE WHEN outcome <> 'refused' AND latency_ms > 100 AND latency_ms <= 250 THEN 1 ELSE 0 END), SUM(CASE WHEN outcome <> 'refused' AND latency_ms > 250 AND latency_ms <= 500 THEN 1 ELSE 0 END), SUM(CASE WHEN outcome <> 'refused' AND latency_ms > 500 AND latency_ms <= 1000 THEN 1 ELSE 0 END), SUM(CASE WHEN outcome <> 'refused' AND latency_ms > 1000 AND latency_ms <= 2500 THEN 1 ELSE 0 END), SUM(CASE WHEN outcome <> 'refused' AND latency_ms > 2500 AND latency_ms <= 5000 THEN 1 ELSE 0 END), SUM(CASE WHEN outcome <> 'refused' AND latency_ms > 5000 AND latency_ms <= 10000 THEN 1 ELSE 0 END), SUM(CASE WHEN outcome <> 'refused' AND latency_ms > 10000 AND latency_ms <= 30000 THEN 1 ELSE 0 END), SUM(CASE WHEN outcome <> 'refused' AND latency_ms > 30000 THEN 1 ELSE 0 END)
FROM usage_records WHERE at >= (SELECT COALESCE(MAX(at), 0) - 691200000 FROM usage_records)
GROUP BY b, COALESCE(key_id, ''), COALESCE(token_id, ''), service_id, COALESCE(model, ''), COALESCE(environment, '');

DROP TABLE usage_hourly;

-- Cacheable calls the provider answered (the cache had nothing fresh), per rollup: what
-- the recommendations weigh as "caching would save". Zero for rollups written before.
ALTER TABLE usage_rollups ADD COLUMN cache_misses BIGINT NOT NULL DEFAULT 0;

-- What each provider answer meant by the service's rules (rejected, quota_limited,
-- throttled, failed, outage, unclassified, success; NULL when there was no answer), and
-- whether the call's model or endpoint had no price (its cost is then a conservative
-- estimate). Hourly sums count unpriced calls so the usage API and dashboard can say so.
ALTER TABLE usage_records ADD COLUMN answer TEXT;
ALTER TABLE usage_records ADD COLUMN unpriced INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_hourly ADD COLUMN unpriced INTEGER NOT NULL DEFAULT 0;

-- An emergency revocation's check at the provider, as JSON ({"outcome","status","at"}):
-- whether the old value is now refused there (revoked_verified) or still accepted (still_live).
ALTER TABLE keys ADD COLUMN revocation_check TEXT;

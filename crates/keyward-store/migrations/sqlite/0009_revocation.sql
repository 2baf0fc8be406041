-- Emergency revocation: a revoked key is never injected again; who, when and why.
ALTER TABLE keys ADD COLUMN revoked_at INTEGER;
ALTER TABLE keys ADD COLUMN revoked_by TEXT;
ALTER TABLE keys ADD COLUMN revoke_reason TEXT;

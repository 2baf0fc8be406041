-- Notification webhooks and the deliveries queued for them. A delivery is unique per
-- webhook and event (`dedupe`), so an event noticed by several instances, or again an
-- hour later, is sent once; `claimed_until` leases a due delivery to one instance.
CREATE TABLE webhooks (
    id                     TEXT PRIMARY KEY,
    url                    TEXT NOT NULL,
    kinds                  TEXT NOT NULL,
    categories             TEXT NOT NULL,
    allow_private_network  BOOLEAN NOT NULL,
    created_by             TEXT NOT NULL,
    created_at             BIGINT NOT NULL
);
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    dedupe           TEXT NOT NULL,
    body             TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    status           TEXT NOT NULL,
    next_attempt_at  BIGINT,
    claimed_until    BIGINT,
    last_status      BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    UNIQUE (webhook_id, dedupe)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);

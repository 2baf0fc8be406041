-- Approval requests for sensitive operations (and break-glass actions awaiting review).
-- The operation, approver roles and decisions are JSON; `revision` makes every change a
-- compare-and-set, so one approval cannot be used twice, even across instances.
CREATE TABLE approvals (
    id                TEXT PRIMARY KEY,
    status            TEXT NOT NULL,
    operation         TEXT NOT NULL,
    operation_hash    TEXT NOT NULL,
    reason            TEXT NOT NULL,
    requested_by_id   TEXT NOT NULL,
    requested_by      TEXT NOT NULL,
    required          BIGINT NOT NULL,
    approver_roles    TEXT NOT NULL,
    decisions         TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    executed_at       BIGINT,
    revision          BIGINT NOT NULL
);
CREATE INDEX approvals_status ON approvals (status);
CREATE INDEX approvals_requester ON approvals (requested_by_id);

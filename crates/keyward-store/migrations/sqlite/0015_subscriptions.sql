-- Personal e-mail subscriptions live beside webhooks (url `mailto:…`): the owner is the
-- user they belong to; each user has at most one.
ALTER TABLE webhooks ADD COLUMN owner_id TEXT;
CREATE UNIQUE INDEX webhooks_owner ON webhooks (owner_id) WHERE owner_id IS NOT NULL;

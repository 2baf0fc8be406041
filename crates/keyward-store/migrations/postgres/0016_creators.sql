-- Who created each account and management token, by id (the user's or token's), so an
-- approval decided by an account or token the requester made is refused (four eyes means
-- two people). NULL: made at the server's console (setup, the CLI) or before this migration.
ALTER TABLE users ADD COLUMN created_by_id TEXT;
ALTER TABLE management_tokens ADD COLUMN created_by_id TEXT;

-- Custom roles, grants of a role limited to categories and environments, and where users,
-- roles and management tokens may connect from. Lists are JSON text; NULL means no limit.
CREATE TABLE custom_roles (
    id          TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    permissions TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE user_grants (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX user_grants_user ON user_grants (user_id);
CREATE INDEX user_grants_role ON user_grants (role);

CREATE TABLE role_networks (
    role     TEXT PRIMARY KEY,
    networks TEXT NOT NULL
);

ALTER TABLE users ADD COLUMN allowed_networks TEXT;
ALTER TABLE management_tokens ADD COLUMN scope TEXT;
ALTER TABLE management_tokens ADD COLUMN allowed_networks TEXT;

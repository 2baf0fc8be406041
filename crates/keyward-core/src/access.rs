//! Roles and permissions.
//!
//! Handlers never check roles; they declare the [`Permission`] they need and the HTTP layer
//! resolves it for whoever is calling (a management token today; users and sessions, scoped
//! grants and custom roles later) in one place.

use serde::{Deserialize, Serialize};

use crate::Error;

/// One thing a caller may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read services, categories and environments.
    CatalogRead,
    /// Add custom services, override base URLs, add environments and categories.
    CatalogWrite,
    /// Read key metadata (never values).
    KeysRead,
    /// Create keys, edit metadata, enable/disable, add versions.
    KeysWrite,
    /// Soft-delete and restore keys.
    KeysDelete,
    /// Destroy deleted keys for good.
    KeysPurge,
    /// See app tokens (never their secrets).
    AppTokensRead,
    /// Create and revoke app tokens.
    AppTokensWrite,
    /// Read, export and verify the audit trail.
    AuditRead,
    /// See users (never their password hashes).
    UsersRead,
    /// Create, disable and enable users (only an owner may create an owner).
    UsersWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    KeyManager,
    Auditor,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Owner,
        Role::Admin,
        Role::KeyManager,
        Role::Auditor,
        Role::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::KeyManager => "key_manager",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Owner | Role::Admin => true,
            Role::KeyManager => matches!(
                permission,
                CatalogRead | KeysRead | KeysWrite | KeysDelete | AppTokensRead | AppTokensWrite
            ),
            Role::Auditor => matches!(
                permission,
                CatalogRead | KeysRead | AppTokensRead | AuditRead | UsersRead
            ),
            Role::Viewer => matches!(permission, CatalogRead | KeysRead | AppTokensRead),
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            Error::invalid(
                "invalid_role",
                format!(
                    "`{}` is not a role (expected one of: owner, admin, key_manager, auditor, viewer)",
                    crate::label::printable(s)
                ),
            )
        })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owner_and_admin_purge_and_viewers_only_read() {
        assert!(Role::Owner.allows(Permission::KeysPurge));
        assert!(!Role::KeyManager.allows(Permission::KeysPurge));
        assert!(Role::KeyManager.allows(Permission::KeysWrite));
        assert!(!Role::Viewer.allows(Permission::KeysWrite));
        assert!(Role::Viewer.allows(Permission::KeysRead));
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().ok(), Some(role));
        }
    }
}

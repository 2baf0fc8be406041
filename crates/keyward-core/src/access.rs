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
    /// Read a key's value (an explicit, audited reveal).
    KeysReveal,
    /// Read and verify the audit trail.
    AuditRead,
    /// Export the audit trail in bulk.
    AuditExport,
    /// See users (never their password hashes).
    UsersRead,
    /// Create, disable and enable users (only an owner may create an owner).
    UsersWrite,
    /// Change roles, grants and policies, and reset someone's MFA.
    AccessWrite,
}

impl Permission {
    pub const ALL: [Permission; 14] = [
        Permission::CatalogRead,
        Permission::CatalogWrite,
        Permission::KeysRead,
        Permission::KeysWrite,
        Permission::KeysDelete,
        Permission::KeysPurge,
        Permission::KeysReveal,
        Permission::AppTokensRead,
        Permission::AppTokensWrite,
        Permission::AuditRead,
        Permission::AuditExport,
        Permission::UsersRead,
        Permission::UsersWrite,
        Permission::AccessWrite,
    ];

    /// Operations a signed-in person may do only shortly after an MFA check (the MFA
    /// policy says how shortly): reveal, delete, purge, export, and changes to access.
    pub fn needs_step_up(self) -> bool {
        use Permission::*;
        matches!(
            self,
            KeysReveal | KeysDelete | KeysPurge | AuditExport | AccessWrite
        )
    }
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
                CatalogRead
                    | KeysRead
                    | KeysWrite
                    | KeysDelete
                    | KeysReveal
                    | AppTokensRead
                    | AppTokensWrite
            ),
            Role::Auditor => matches!(
                permission,
                CatalogRead | KeysRead | AppTokensRead | AuditRead | AuditExport | UsersRead
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
        assert!(
            !Role::Auditor.allows(Permission::KeysReveal),
            "auditors never see values"
        );
        assert!(!Role::Viewer.allows(Permission::KeysReveal));
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().ok(), Some(role));
        }
    }
}

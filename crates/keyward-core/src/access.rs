//! Roles, permissions, scopes and what a caller may do.
//!
//! Handlers never check roles; they declare the [`Permission`] they need and the HTTP layer
//! resolves it, in one place, against the caller's [`Access`]: a base role that applies
//! everywhere, plus grants of built-in or custom roles limited to categories and
//! environments ([`Scope`]). A permission on keys or app tokens can be held in part of the
//! vault ([`Reach::Within`]); everything else (users, audit, catalog, policies) only counts
//! when held everywhere.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::id::{GrantId, UserId};

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
    /// Create keys, edit metadata, enable/disable.
    KeysWrite,
    /// Add a new value to a key (rotation).
    KeysRotate,
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
    /// Approve or deny others' requests for sensitive operations; review break-glass ones.
    ApprovalsDecide,
    /// Take a backup of the whole vault (owners only among the built-in roles: it carries
    /// everything, sealed).
    VaultBackup,
}

impl Permission {
    pub const ALL: [Permission; 17] = [
        Permission::CatalogRead,
        Permission::CatalogWrite,
        Permission::KeysRead,
        Permission::KeysWrite,
        Permission::KeysRotate,
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
        Permission::ApprovalsDecide,
        Permission::VaultBackup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::CatalogRead => "catalog_read",
            Permission::CatalogWrite => "catalog_write",
            Permission::KeysRead => "keys_read",
            Permission::KeysWrite => "keys_write",
            Permission::KeysRotate => "keys_rotate",
            Permission::KeysDelete => "keys_delete",
            Permission::KeysPurge => "keys_purge",
            Permission::KeysReveal => "keys_reveal",
            Permission::AppTokensRead => "app_tokens_read",
            Permission::AppTokensWrite => "app_tokens_write",
            Permission::AuditRead => "audit_read",
            Permission::AuditExport => "audit_export",
            Permission::UsersRead => "users_read",
            Permission::UsersWrite => "users_write",
            Permission::AccessWrite => "access_write",
            Permission::ApprovalsDecide => "approvals_decide",
            Permission::VaultBackup => "vault_backup",
        }
    }

    /// Permissions that can be held for part of the vault (some categories and
    /// environments). The others only count when held everywhere.
    pub fn scoped(self) -> bool {
        use Permission::*;
        matches!(
            self,
            KeysRead
                | KeysWrite
                | KeysRotate
                | KeysDelete
                | KeysPurge
                | KeysReveal
                | AppTokensRead
                | AppTokensWrite
        )
    }

    /// Operations a signed-in person may do only shortly after an MFA check (the MFA
    /// policy says how shortly): reveal, rotate, delete, purge, export, approving,
    /// changes to access, and backups.
    pub fn needs_step_up(self) -> bool {
        use Permission::*;
        matches!(
            self,
            KeysReveal
                | KeysRotate
                | KeysDelete
                | KeysPurge
                | AuditExport
                | AccessWrite
                | ApprovalsDecide
                | VaultBackup
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

    pub fn permissions(self) -> PermissionSet {
        Permission::ALL
            .into_iter()
            .filter(|p| self.allows(*p))
            .collect()
    }

    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Owner => true,
            Role::Admin => permission != VaultBackup,
            Role::KeyManager => matches!(
                permission,
                CatalogRead
                    | KeysRead
                    | KeysWrite
                    | KeysRotate
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

impl std::str::FromStr for Permission {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "invalid_permission",
                    format!("`{}` is not a permission", crate::label::printable(s)),
                )
            })
    }
}

/// A set of permissions: what a role is made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PermissionSet(u32);

impl PermissionSet {
    pub fn contains(self, p: Permission) -> bool {
        self.0 & Self::bit(p) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    /// Whether every permission of `other` is in this set.
    pub fn includes(self, other: PermissionSet) -> bool {
        self.0 & other.0 == other.0
    }

    fn bit(p: Permission) -> u32 {
        let index = Permission::ALL.iter().position(|q| *q == p).unwrap_or(0);
        1 << index
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |bits, p| bits | Self::bit(p)))
    }
}

impl Serialize for PermissionSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for PermissionSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<Permission>::deserialize(d)?.into_iter().collect())
    }
}

/// Where a grant applies. `None` means every category (or environment).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default)]
    pub categories: Option<BTreeSet<String>>,
    #[serde(default)]
    pub environments: Option<BTreeSet<String>>,
}

impl Scope {
    pub fn everywhere() -> Self {
        Self::default()
    }

    pub fn is_everywhere(&self) -> bool {
        self.categories.is_none() && self.environments.is_none()
    }

    pub fn covers(&self, category: &str, environment: &str) -> bool {
        self.categories
            .as_ref()
            .is_none_or(|c| c.contains(category))
            && self
                .environments
                .as_ref()
                .is_none_or(|e| e.contains(environment))
    }

    /// Whether everything `other` covers, this covers too.
    pub fn contains(&self, other: &Scope) -> bool {
        fn within(outer: &Option<BTreeSet<String>>, inner: &Option<BTreeSet<String>>) -> bool {
            match (outer, inner) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(o), Some(i)) => i.is_subset(o),
            }
        }
        within(&self.categories, &other.categories)
            && within(&self.environments, &other.environments)
    }

    /// Checks the names; an empty list would cover nothing, so it is refused.
    pub fn validate(self) -> Result<Self, Error> {
        for list in [&self.categories, &self.environments].into_iter().flatten() {
            if list.is_empty() {
                return Err(Error::invalid(
                    "invalid_scope",
                    "a scope lists at least one category or environment (leave it out for all)",
                ));
            }
            for name in list {
                crate::label::slug("scope entry", name)?;
            }
        }
        Ok(self)
    }
}

/// A role by name: built in, or a custom one (by its slug).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RoleRef {
    Builtin(Role),
    Custom(String),
}

impl RoleRef {
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text.parse::<Role>() {
            Ok(role) => Ok(RoleRef::Builtin(role)),
            Err(_) => crate::label::slug("role", text).map(RoleRef::Custom),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            RoleRef::Builtin(role) => role.as_str(),
            RoleRef::Custom(id) => id,
        }
    }
}

/// A role an owner or admin defined as a set of permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRole {
    /// A slug; never the name of a built-in role.
    pub id: String,
    pub description: String,
    pub permissions: PermissionSet,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl CustomRole {
    pub fn validate_id(id: &str) -> Result<String, Error> {
        let id = crate::label::slug("role id", id)?;
        if id.parse::<Role>().is_ok() {
            return Err(Error::conflict(
                "role_exists",
                format!("`{id}` is a built-in role"),
            ));
        }
        Ok(id)
    }
}

/// A role given to a user for part of the vault, on top of their base role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: GrantId,
    pub user_id: UserId,
    pub role: RoleRef,
    pub scope: Scope,
    pub created_by: String,
    pub created_at: Timestamp,
}

/// How far a caller's permission reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    Nowhere,
    Everywhere,
    /// Only keys (and app tokens) in these scopes.
    Within(Vec<Scope>),
}

impl Reach {
    pub fn covers(&self, category: &str, environment: &str) -> bool {
        match self {
            Reach::Nowhere => false,
            Reach::Everywhere => true,
            Reach::Within(scopes) => scopes.iter().any(|s| s.covers(category, environment)),
        }
    }

    pub fn is_everywhere(&self) -> bool {
        matches!(self, Reach::Everywhere)
    }
}

/// What one caller may do: permission sets, each limited to a scope. Resolved once per
/// request from the caller's base role and grants (or a token's role and scope).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    entries: Vec<(PermissionSet, Scope)>,
}

impl Access {
    pub fn new(entries: Vec<(PermissionSet, Scope)>) -> Self {
        Self { entries }
    }

    /// Everything `role` allows, everywhere.
    pub fn of_role(role: Role) -> Self {
        Self::new(vec![(role.permissions(), Scope::everywhere())])
    }

    /// How far `permission` reaches. A permission that cannot be scoped reaches only
    /// where it is held everywhere.
    pub fn reach(&self, permission: Permission) -> Reach {
        let scopes: Vec<&Scope> = self
            .entries
            .iter()
            .filter(|(set, _)| set.contains(permission))
            .map(|(_, scope)| scope)
            .collect();
        if scopes.iter().any(|s| s.is_everywhere()) {
            Reach::Everywhere
        } else if scopes.is_empty() || !permission.scoped() {
            Reach::Nowhere
        } else {
            Reach::Within(scopes.into_iter().cloned().collect())
        }
    }

    /// Whether this caller holds everything `other` would give, at least as widely — so
    /// granting `other` to someone is no escalation for this caller.
    pub fn includes(&self, permissions: PermissionSet, scope: &Scope) -> bool {
        permissions.iter().all(|p| match self.reach(p) {
            Reach::Nowhere => false,
            Reach::Everywhere => true,
            Reach::Within(scopes) => scopes.iter().any(|s| s.contains(scope)),
        })
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
        assert!(Role::Owner.allows(Permission::VaultBackup));
        assert!(
            !Role::Admin.allows(Permission::VaultBackup),
            "a backup carries the whole vault: owners only"
        );
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().ok(), Some(role));
        }
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>().ok(), Some(p));
        }
    }

    fn set(names: &[&str]) -> Option<BTreeSet<String>> {
        Some(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_scoped_grant_reaches_its_keys_and_never_global_permissions() {
        let financial_prod = Scope {
            categories: set(&["financial-data"]),
            environments: set(&["production"]),
        };
        let access = Access::new(vec![
            (Role::Viewer.permissions(), Scope::everywhere()),
            (Role::Admin.permissions(), financial_prod.clone()),
        ]);
        assert_eq!(access.reach(Permission::KeysRead), Reach::Everywhere);
        let write = access.reach(Permission::KeysWrite);
        assert!(write.covers("financial-data", "production"));
        assert!(!write.covers("financial-data", "staging"));
        assert!(!write.covers("llm", "production"));
        // Admin in one category is not admin of users, audit or the catalog.
        assert_eq!(access.reach(Permission::UsersWrite), Reach::Nowhere);
        assert_eq!(access.reach(Permission::CatalogWrite), Reach::Nowhere);
        assert_eq!(access.reach(Permission::AuditRead), Reach::Nowhere);
        // Granting within what one holds is fine; wider is not.
        let kv = Role::KeyManager.permissions();
        assert!(access.includes(kv, &financial_prod));
        assert!(!access.includes(kv, &Scope::everywhere()));
        let narrower = Scope {
            categories: set(&["financial-data"]),
            environments: set(&["production"]),
        };
        assert!(financial_prod.contains(&narrower));
        assert!(!narrower.contains(&Scope::everywhere()));
    }

    #[test]
    fn permission_sets_round_trip_and_scopes_validate() {
        let kv = Role::KeyManager.permissions();
        let json = serde_json::to_string(&kv).expect("json");
        assert!(json.contains("keys_write"), "{json}");
        assert_eq!(
            serde_json::from_str::<PermissionSet>(&json).expect("back"),
            kv
        );
        assert!(Role::Owner.permissions().includes(kv));
        assert!(!Role::Viewer.permissions().includes(kv));
        let empty = Scope {
            categories: Some(BTreeSet::new()),
            environments: None,
        };
        assert_eq!(
            empty.validate().err().map(|e| e.code),
            Some("invalid_scope")
        );
        assert_eq!(
            RoleRef::parse("admin").ok(),
            Some(RoleRef::Builtin(Role::Admin))
        );
        assert_eq!(
            RoleRef::parse("billing-reader").ok(),
            Some(RoleRef::Custom("billing-reader".into()))
        );
        assert!(CustomRole::validate_id("viewer").is_err());
    }
}

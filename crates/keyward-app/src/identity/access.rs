//! Who may do what, where, and from where — as use cases: resolving a caller's [`Access`]
//! (base role everywhere, grants of built-in or custom roles for some categories and
//! environments, network allowlists per user, role and token), and managing custom roles,
//! grants, base roles, allowlists and management tokens.
//!
//! Nobody can hand out more than they hold: a role, grant or token is refused unless the
//! actor holds every permission in it at least as widely (`Access::includes`).

use std::net::IpAddr;

use ipnet::IpNet;
use keyward_core::access::{Access, CustomRole, Grant, PermissionSet, Role, RoleRef, Scope};
use keyward_core::audit::ActorKind;
use keyward_core::id::{GrantId, TokenId, UserId};
use keyward_core::token::ManagementToken;
use keyward_core::user::User;
use keyward_core::{Error, ErrorKind, Timestamp, label};
use keyward_crypto::token;
use secrecy::SecretString;
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::{Change, Subject};
use keyward_core::access::Permission;

/// At most this many networks in one allowlist.
const NETWORKS_MAX: usize = 64;

fn network_refused() -> Error {
    Error::new(
        ErrorKind::Forbidden,
        "network_not_allowed",
        "management access is not allowed from this address",
    )
}

fn admits(networks: &[IpNet], source: Option<IpAddr>) -> bool {
    networks.is_empty() || source.is_some_and(|ip| networks.iter().any(|n| n.contains(&ip)))
}

fn no_escalation() -> Error {
    Error::new(
        ErrorKind::Forbidden,
        "escalation_refused",
        "you cannot give permissions you do not hold yourself (at least as widely)",
    )
}

fn owner_required() -> Error {
    Error::new(
        ErrorKind::Forbidden,
        "owner_required",
        "only an owner may give the owner role",
    )
}

pub fn validate_networks(networks: Vec<IpNet>) -> Result<Vec<IpNet>, Error> {
    if networks.len() > NETWORKS_MAX {
        return Err(Error::invalid(
            "too_many_networks",
            format!("an allowlist has at most {NETWORKS_MAX} networks"),
        ));
    }
    Ok(networks.into_iter().map(|n| n.trunc()).collect())
}

/// What the built-in and custom roles hold, looked up by name.
struct RoleBook {
    custom: Vec<CustomRole>,
    networks: Vec<(String, Vec<IpNet>)>,
}

impl RoleBook {
    fn permissions(&self, role: &RoleRef) -> PermissionSet {
        match role {
            RoleRef::Builtin(role) => role.permissions(),
            RoleRef::Custom(id) => self
                .custom
                .iter()
                .find(|r| &r.id == id)
                .map(|r| r.permissions)
                .unwrap_or_default(),
        }
    }

    fn admits(&self, role: &str, source: Option<IpAddr>) -> bool {
        self.networks
            .iter()
            .find(|(name, _)| name == role)
            .is_none_or(|(_, networks)| admits(networks, source))
    }
}

impl App {
    async fn role_book(&self) -> Result<RoleBook, Error> {
        Ok(RoleBook {
            custom: self.store.custom_roles().await?,
            networks: self.store.role_networks().await?,
        })
    }

    /// A signed-in user's access from `source`: their base role everywhere plus each
    /// grant, except grants whose role's allowlist does not admit `source`.
    /// `network_not_allowed` if the user's own allowlist, or their base role's, refuses it.
    pub async fn user_access(&self, user: &User, source: Option<IpAddr>) -> Result<Access, Error> {
        let book = self.role_book().await?;
        if !admits(&user.allowed_networks, source) || !book.admits(user.role.as_str(), source) {
            return Err(network_refused());
        }
        let mut entries = vec![(user.role.permissions(), Scope::everywhere())];
        for grant in self.store.grants(&user.id).await? {
            if book.admits(grant.role.as_str(), source) {
                entries.push((book.permissions(&grant.role), grant.scope));
            }
        }
        Ok(Access::new(entries))
    }

    /// A management token's access from `source`: its role within its scope.
    pub async fn token_access(
        &self,
        token: &ManagementToken,
        source: Option<IpAddr>,
    ) -> Result<Access, Error> {
        let book = self.role_book().await?;
        if !admits(&token.allowed_networks, source) || !book.admits(token.role.as_str(), source) {
            return Err(network_refused());
        }
        Ok(Access::new(vec![(
            token.role.permissions(),
            token.scope.clone(),
        )]))
    }

    // ----------------------------------------------------------------- roles

    pub async fn custom_roles(&self) -> Result<Vec<CustomRole>, Error> {
        self.store.custom_roles().await
    }

    pub async fn create_role(
        &self,
        actor: &Actor,
        id: &str,
        description: &str,
        permissions: PermissionSet,
    ) -> Result<CustomRole, Error> {
        let id = CustomRole::validate_id(id)?;
        if !actor.access.includes(permissions, &Scope::everywhere()) {
            return Err(no_escalation());
        }
        let approval_target: String = format!("role:{id}");
        let approval_payload =
            json!({"create": {"permissions": permissions, "description": description}});
        let now = self.now();
        let role = CustomRole {
            id,
            description: keyward_core::label::text("description", Some(description), 1_000)?
                .unwrap_or_default(),
            permissions,
            created_at: now,
            updated_at: now,
        };
        self.apply(
            actor,
            Change::new(
                "role.create",
                Subject::vault(format!("role:{}", role.id)),
                Permission::AccessWrite,
                json!({"permissions": role.permissions}),
            )
            .access_change(approval_target, approval_payload),
            self.store.insert_custom_role(&role),
        )
        .await?;
        Ok(role)
    }

    pub async fn update_role(
        &self,
        actor: &Actor,
        id: &str,
        description: Option<&str>,
        permissions: Option<PermissionSet>,
    ) -> Result<CustomRole, Error> {
        let mut role = self.custom_role(id).await?;
        if let Some(description) = description {
            role.description = keyward_core::label::text("description", Some(description), 1_000)?
                .unwrap_or_default();
        }
        if let Some(permissions) = permissions {
            if !actor.access.includes(permissions, &Scope::everywhere()) {
                return Err(no_escalation());
            }
            role.permissions = permissions;
        }
        let approval_target: String = format!("role:{}", role.id);
        let approval_payload =
            json!({"update": {"permissions": role.permissions, "description": role.description}});
        role.updated_at = self.now();
        self.apply(
            actor,
            Change::new(
                "role.update",
                Subject::vault(format!("role:{}", role.id)),
                Permission::AccessWrite,
                json!({"permissions": role.permissions}),
            )
            .access_change(approval_target, approval_payload),
            async {
                if self.store.update_custom_role(&role).await? {
                    Ok(())
                } else {
                    Err(role_not_found(&role.id))
                }
            },
        )
        .await?;
        Ok(role)
    }

    pub async fn delete_role(&self, actor: &Actor, id: &str) -> Result<(), Error> {
        self.custom_role(id).await?;
        let approval_target: String = format!("role:{id}");
        let approval_payload = json!({"delete": true});
        self.apply(
            actor,
            Change::new(
                "role.delete",
                Subject::vault(format!("role:{id}")),
                Permission::AccessWrite,
                json!({}),
            )
            .access_change(approval_target, approval_payload),
            async {
                if self.store.delete_custom_role(id).await? {
                    Ok(())
                } else {
                    Err(role_not_found(id))
                }
            },
        )
        .await
    }

    async fn custom_role(&self, id: &str) -> Result<CustomRole, Error> {
        self.store
            .custom_roles()
            .await?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| role_not_found(id))
    }

    // ---------------------------------------------------------------- grants

    pub async fn grants(&self, user_id: &UserId) -> Result<Vec<Grant>, Error> {
        self.user(user_id).await?;
        self.store.grants(user_id).await
    }

    /// Gives `user_id` a role for part of the vault (e.g. key_manager for Financial Data
    /// in production).
    pub async fn add_grant(
        &self,
        actor: &Actor,
        user_id: &UserId,
        role: RoleRef,
        scope: Scope,
    ) -> Result<Grant, Error> {
        self.user(user_id).await?;
        let scope = scope.validate()?;
        let book = self.role_book().await?;
        if let RoleRef::Custom(id) = &role
            && !book.custom.iter().any(|r| &r.id == id)
        {
            return Err(Error::invalid(
                "unknown_role",
                format!("there is no role `{id}`"),
            ));
        }
        self.check_can_give(actor, &role, book.permissions(&role), &scope)?;
        let approval_target: String = format!("user:{user_id}");
        let approval_payload = json!({"grant": {"role": role.as_str(), "scope": scope}});
        let now = self.now();
        let grant = Grant {
            id: GrantId::generate(now, &*self.random),
            user_id: user_id.clone(),
            role,
            scope,
            created_by: actor.name.clone(),
            created_at: now,
        };
        self.apply(actor, Change::new("grant.create", Subject::vault(format!("user:{user_id}")), Permission::AccessWrite, json!({"grant": grant.id.as_str(), "role": grant.role.as_str(), "scope": grant.scope})).access_change(approval_target, approval_payload), self.store.insert_grant(&grant))
        .await?;
        Ok(grant)
    }

    pub async fn remove_grant(
        &self,
        actor: &Actor,
        user_id: &UserId,
        grant_id: &GrantId,
    ) -> Result<(), Error> {
        let approval_target: String = format!("user:{user_id}");
        let approval_payload = json!({"remove_grant": grant_id.as_str()});
        self.apply(
            actor,
            Change::new(
                "grant.delete",
                Subject::vault(format!("user:{user_id}")),
                Permission::AccessWrite,
                json!({"grant": grant_id.as_str()}),
            )
            .access_change(approval_target, approval_payload),
            async {
                if self.store.delete_grant(user_id, grant_id).await? {
                    Ok(())
                } else {
                    Err(Error::not_found(
                        "grant_not_found",
                        "this user has no such grant",
                    ))
                }
            },
        )
        .await
    }

    fn check_can_give(
        &self,
        actor: &Actor,
        role: &RoleRef,
        permissions: PermissionSet,
        scope: &Scope,
    ) -> Result<(), Error> {
        if *role == RoleRef::Builtin(Role::Owner)
            && actor.kind != ActorKind::System
            && actor.role != Role::Owner
        {
            return Err(owner_required());
        }
        if !actor.access.includes(permissions, scope) {
            return Err(no_escalation());
        }
        Ok(())
    }

    /// Changes a user's base role (it applies everywhere).
    pub async fn set_user_role(
        &self,
        actor: &Actor,
        user_id: &UserId,
        role: Role,
    ) -> Result<User, Error> {
        let user = self.user(user_id).await?;
        if actor.kind == ActorKind::User && actor.id == user_id.as_str() {
            return Err(Error::conflict(
                "cannot_change_own_role",
                "you cannot change your own role",
            ));
        }
        if user.role == Role::Owner && actor.role != Role::Owner && actor.kind != ActorKind::System
        {
            return Err(owner_required());
        }
        self.check_can_give(
            actor,
            &RoleRef::Builtin(role),
            role.permissions(),
            &Scope::everywhere(),
        )?;
        let approval_target: String = format!("user:{user_id}");
        let approval_payload = json!({"role": role});
        self.apply(
            actor,
            Change::new(
                "user.role",
                Subject::vault(format!("user:{user_id}")),
                Permission::AccessWrite,
                json!({"from": user.role, "to": role}),
            )
            .access_change(approval_target, approval_payload),
            self.store.set_user_role(user_id, role),
        )
        .await?;
        self.user(user_id).await
    }

    /// Where a user may work from (empty: anywhere their roles allow).
    pub async fn set_user_networks(
        &self,
        actor: &Actor,
        user_id: &UserId,
        networks: Vec<IpNet>,
    ) -> Result<User, Error> {
        self.user(user_id).await?;
        let networks = validate_networks(networks)?;
        let approval_target: String = format!("user:{user_id}");
        let approval_payload = json!({"allowed_networks": networks});
        self.apply(
            actor,
            Change::new(
                "user.networks",
                Subject::vault(format!("user:{user_id}")),
                Permission::AccessWrite,
                json!({"allowed_networks": networks}),
            )
            .access_change(approval_target, approval_payload),
            self.store.set_user_networks(user_id, &networks),
        )
        .await?;
        self.user(user_id).await
    }

    pub async fn role_networks(&self) -> Result<Vec<(String, Vec<IpNet>)>, Error> {
        self.store.role_networks().await
    }

    /// Where holders of `role` (base role, grant or token) may work from.
    pub async fn set_role_networks(
        &self,
        actor: &Actor,
        role: &str,
        networks: Vec<IpNet>,
    ) -> Result<(), Error> {
        let role = RoleRef::parse(role)?;
        if let RoleRef::Custom(id) = &role {
            self.custom_role(id).await?;
        }
        let networks = validate_networks(networks)?;
        let approval_target: String = format!("role:{}", role.as_str());
        let approval_payload = json!({"allowed_networks": networks});
        self.apply(
            actor,
            Change::new(
                "role.networks",
                Subject::vault(format!("role:{}", role.as_str())),
                Permission::AccessWrite,
                json!({"allowed_networks": networks}),
            )
            .access_change(approval_target, approval_payload),
            self.store.set_role_networks(role.as_str(), &networks),
        )
        .await
    }

    // -------------------------------------------------------- management tokens

    pub async fn tokens(&self) -> Result<Vec<ManagementToken>, Error> {
        self.store.tokens().await
    }

    /// A token for automation, within what `actor` holds.
    pub async fn create_token(
        &self,
        actor: &Actor,
        name: &str,
        role: Role,
        expires_at: Option<keyward_core::Timestamp>,
        limits: TokenLimits,
    ) -> Result<(ManagementToken, secrecy::SecretString), Error> {
        if expires_at.is_some_and(|at| at <= self.now()) {
            return Err(Error::invalid(
                "expires_at_in_past",
                "the expiry must be in the future",
            ));
        }
        self.check_can_give(
            actor,
            &RoleRef::Builtin(role),
            role.permissions(),
            &limits.scope,
        )?;
        let limits = TokenLimits {
            allowed_networks: validate_networks(limits.allowed_networks)?,
            ..limits
        };
        self.issue_limited_token(actor, name, role, expires_at, limits)
            .await
    }

    pub async fn revoke_token(&self, actor: &Actor, id: &TokenId) -> Result<(), Error> {
        self.apply(
            actor,
            Change::new(
                "token.revoke",
                Subject::vault(format!("token:{id}")),
                Permission::AccessWrite,
                json!({}),
            )
            .access_change(format!("token:{id}"), json!({"revoke": true})),
            async {
                if self.store.revoke_token(id, self.now()).await? {
                    Ok(())
                } else {
                    Err(Error::not_found(
                        "token_not_found",
                        "there is no such live token",
                    ))
                }
            },
        )
        .await
    }
}

fn role_not_found(id: &str) -> Error {
    Error::not_found(
        "role_not_found",
        format!(
            "there is no custom role `{}`",
            keyward_core::label::printable(id)
        ),
    )
}

/// What limits a management token beyond its role.
#[derive(Debug, Clone, Default)]
pub struct TokenLimits {
    pub scope: keyward_core::access::Scope,
    pub allowed_networks: Vec<ipnet::IpNet>,
}

impl App {
    /// Issues a management API token; the returned secret is shown once and never stored.
    pub async fn issue_token(
        &self,
        actor: &Actor,
        name: &str,
        role: Role,
        expires_at: Option<Timestamp>,
    ) -> Result<(ManagementToken, SecretString), Error> {
        self.issue_limited_token(actor, name, role, expires_at, TokenLimits::default())
            .await
    }

    /// [`App::issue_token`] for part of the vault and/or from some networks only.
    pub async fn issue_limited_token(
        &self,
        actor: &Actor,
        name: &str,
        role: Role,
        expires_at: Option<Timestamp>,
        limits: TokenLimits,
    ) -> Result<(ManagementToken, SecretString), Error> {
        let scope = limits.scope.validate()?;
        let now = self.now();
        let issued = token::issue(token::MANAGEMENT_PREFIX, &*self.random);
        let record = ManagementToken {
            id: TokenId::generate(now, &*self.random),
            public_id: issued.public_id,
            name: label::name("token name", name)?,
            role,
            secret_hash: issued.secret_hash,
            created_by: actor.name.clone(),
            created_by_id: actor.person_id(),
            created_at: now,
            expires_at,
            last_used_at: None,
            revoked_at: None,
            scope,
            allowed_networks: limits.allowed_networks,
        };
        // Bound to what the token can do, not to its id (a new one each time it is asked for).
        let terms = json!({"create": {"name": name, "role": role, "scope": record.scope,
                                      "allowed_networks": record.allowed_networks,
                                      "expires_at": expires_at.map(|t| t.to_string())}});
        let change = Change::new(
            "token.create",
            Subject::vault(format!("token:{}", record.id)),
            Permission::AccessWrite,
            json!({"name": record.name, "role": role.as_str(), "public_id": record.public_id,
                   "scope": record.scope, "allowed_networks": record.allowed_networks}),
        )
        .access_change("tokens", terms);
        self.apply(actor, change, self.store.insert_token(&record))
            .await?;
        Ok((record, issued.token))
    }

    /// Resolves a presented bearer token to its record, or `Unauthenticated`. Every failure
    /// looks the same to the caller.
    pub async fn authenticate_token(&self, presented: &str) -> Result<ManagementToken, Error> {
        let denied = || {
            Error::new(
                ErrorKind::Unauthenticated,
                "invalid_token",
                "the token is missing, malformed, unknown, expired or revoked",
            )
        };
        let parsed = token::parse(token::MANAGEMENT_PREFIX, presented).ok_or_else(denied)?;
        let record = self
            .store
            .token_by_public_id(&parsed.public_id)
            .await?
            .ok_or_else(denied)?;
        let now = self.now();
        if !parsed.matches(&record.secret_hash) || !record.usable_at(now) {
            return Err(denied());
        }
        // Record use at most once a minute: a write per API call would serialise SQLite.
        if record
            .last_used_at
            .is_none_or(|at| now.duration_since(at).as_secs() >= 60)
        {
            self.store.touch_token(&record.id, now).await?;
        }
        Ok(record)
    }
}

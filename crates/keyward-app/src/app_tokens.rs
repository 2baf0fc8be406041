//! App tokens: what applications present to the proxy — issued once with their scope,
//! limits and budget, listed within the caller's reach, revoked.

use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::app_token::{AppToken, AppTokenDraft};
use keyward_core::id::AppTokenId;
use keyward_crypto::token;
use secrecy::SecretString;
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::{Change, Subject};

impl App {
    /// Issues an app token after checking its scope names real services, environments and
    /// live keys that fall inside it. The secret is returned once and never stored.
    pub async fn create_app_token(
        &self,
        actor: &Actor,
        draft: AppTokenDraft,
    ) -> Result<(AppToken, SecretString), Error> {
        let now = self.now();
        let draft = draft.validate(now)?;
        let catalog = self.catalog().await?;
        for service in &draft.services {
            if catalog.get(service).is_none() {
                return Err(Error::invalid(
                    "unknown_service",
                    format!("there is no service `{service}`"),
                ));
            }
        }
        for environment in &draft.environments {
            self.require_environment(environment).await?;
        }
        let id = AppTokenId::generate(now, &*self.random);
        // A token may reach only keys its creator could manage (no escalation by token): the
        // pipeline checks the creator's reach over every service × environment — before the
        // named keys are looked up, so a refused caller learns nothing about them.
        let change = Change::new(
            "app_token.create",
            Subject::Areas {
                target: format!("app_token:{id}"),
                areas: self.areas_of(&draft.services, &draft.environments).await?,
            },
            Permission::AppTokensWrite,
            json!({
                "name": draft.name,
                "services": draft.services,
                "environments": draft.environments,
            }),
        )
        .refreshes_proxy();
        let admitted = self.admit(actor, change).await?;
        for key_id in &draft.key_ids {
            let key = self
                .store
                .key(key_id)
                .await?
                .filter(|k| k.deleted_at.is_none())
                .ok_or_else(|| {
                    Error::invalid("unknown_key", format!("there is no live key {key_id}"))
                })?;
            if !draft.services.contains(&key.service_id)
                || !draft.environments.contains(&key.environment)
            {
                return Err(Error::invalid(
                    "key_out_of_scope",
                    format!(
                        "key {key_id} ({} in {}) is outside the token's services and environments",
                        key.service_id, key.environment
                    ),
                ));
            }
        }
        let issued = token::issue(token::APP_PREFIX, &*self.random);
        let record = AppToken {
            id,
            public_id: issued.public_id,
            name: draft.name,
            secret_hash: issued.secret_hash,
            services: draft.services,
            environments: draft.environments,
            key_ids: draft.key_ids,
            allowed_networks: draft.allowed_networks,
            rate_limit: draft.rate_limit,
            budget: draft.budget,
            created_by: actor.name.clone(),
            created_at: now,
            expires_at: draft.expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        self.commit(
            actor,
            admitted.detail("public_id", record.public_id.as_str()),
            self.store.insert_app_token(&record),
        )
        .await?;
        tracing::info!(app_token = %record.id, actor = %actor.name, "app token created");
        Ok((record, issued.token))
    }

    /// The app token, if `permission` reaches every service and environment it can use
    /// (otherwise `app_token_not_found` — it is outside what the caller manages).
    pub async fn app_token_for(
        &self,
        actor: &Actor,
        permission: Permission,
        id: &AppTokenId,
    ) -> Result<AppToken, Error> {
        let not_found =
            || Error::not_found("app_token_not_found", format!("there is no app token {id}"));
        let token = self.store.app_token(id).await?.ok_or_else(not_found)?;
        if self.app_token_within(actor, permission, &token).await? {
            Ok(token)
        } else {
            Err(not_found())
        }
    }

    pub(crate) async fn app_token_within(
        &self,
        actor: &Actor,
        permission: Permission,
        token: &AppToken,
    ) -> Result<bool, Error> {
        let reach = actor.access.reach(permission);
        if reach.is_everywhere() {
            return Ok(true);
        }
        let catalog = self.catalog().await?;
        Ok(token.services.iter().all(|service| {
            let category = catalog.get(service).map_or("", |s| s.category.as_str());
            token
                .environments
                .iter()
                .all(|environment| reach.covers(category, environment))
        }))
    }

    /// App tokens `actor` may see: those whose every service and environment they can read.
    pub async fn app_tokens(&self, actor: &Actor) -> Result<Vec<AppToken>, Error> {
        let mut visible = Vec::new();
        for token in self.store.app_tokens().await? {
            if self
                .app_token_within(actor, Permission::AppTokensRead, &token)
                .await?
            {
                visible.push(token);
            }
        }
        Ok(visible)
    }

    /// Revokes a token; revoking a revoked token changes nothing and is not an error.
    pub async fn revoke_app_token(
        &self,
        actor: &Actor,
        id: &AppTokenId,
    ) -> Result<AppToken, Error> {
        let token = self
            .app_token_for(actor, Permission::AppTokensWrite, id)
            .await?;
        let change = Change::new(
            "app_token.revoke",
            Subject::Areas {
                target: format!("app_token:{id}"),
                areas: self.areas_of(&token.services, &token.environments).await?,
            },
            Permission::AppTokensWrite,
            json!({}),
        )
        .refreshes_proxy();
        if self
            .apply(actor, change, self.store.revoke_app_token(id, self.now()))
            .await?
        {
            tracing::warn!(app_token = %id, actor = %actor.name, "app token revoked");
        }
        self.app_token_for(actor, Permission::AppTokensWrite, id)
            .await
    }
}

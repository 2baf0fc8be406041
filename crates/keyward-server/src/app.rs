//! The management operations, one method per use case, free of HTTP: validate with the
//! domain, seal with the keyring, persist through the store port. The HTTP handlers and the
//! CLI are thin adapters over this.

use std::net::IpAddr;
use std::sync::Arc;

use jiff::Timestamp;
use keyward_core::access::{Access, Permission, Reach, Role};
use keyward_core::app_token::{AppToken, AppTokenDraft};
use keyward_core::approval::{ApprovalAction, Operation};
use keyward_core::audit::{ActorKind, AuditDraft, AuditOutcome};
use keyward_core::catalog::{ServiceCatalog, builtin_services};
use keyward_core::guided_rotation::RotationTraffic;
use keyward_core::id::{AppTokenId, KeyId, TokenId};
use keyward_core::key::{
    Key, KeyArea, KeyChanges, KeyDraft, KeyDraftInput, KeyFilter, KeyVersion, Page, PageRequest,
    RecoveryWindow, SealContext, VersionState,
};
use keyward_core::ports::Store;
use keyward_core::service::{Category, Environment, ServiceDefinition, validate_base_url};
use keyward_core::token::ManagementToken;
use keyward_core::usage::{
    KeyFlag, Outcome, PoolSetting, PoolStrategy, PricingTable, UsageBucket, UsageGrouping,
    UsageQuery,
};
use keyward_core::user::User;
use keyward_core::{Clock, Error, ErrorKind, Randomness, label, secret};
use keyward_crypto::{Keyring, token};
use keyward_proxy::{Proxy, ProxyConfig, ProxyEvent, Snapshot};
use secrecy::SecretString;
use serde_json::json;

use crate::approvals::GateFacts;
use crate::audit::{AuditLog, outcome_of};
use crate::vault::Vault;

/// Who is acting: recorded in `created_by`/`deleted_by` and in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    /// The user's or token's id; empty for Keyward itself.
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The client's address, when the action came over the network.
    pub source: Option<IpAddr>,
    /// What this actor may do, and where (resolved from role, grants and scope).
    pub access: Access,
    /// What the request says about approval (`X-Keyward-Approval`).
    pub approval: Option<crate::approvals::ApprovalUse>,
}

impl Actor {
    /// Someone not (yet) authenticated; `name` is what they claimed to be, if anything.
    pub fn anonymous(name: &str, source: Option<IpAddr>) -> Self {
        Self {
            kind: ActorKind::Anonymous,
            id: String::new(),
            name: name.to_owned(),
            role: Role::Viewer,
            source,
            access: Access::default(),
            approval: None,
        }
    }

    /// Keyward itself, or an operator at the server's console (the CLI): `name` says which.
    pub fn system(name: &str) -> Self {
        Self {
            kind: ActorKind::System,
            id: String::new(),
            name: name.to_owned(),
            role: Role::Owner,
            source: None,
            access: Access::of_role(Role::Owner),
            approval: None,
        }
    }
}

#[derive(Debug)]
pub struct App {
    pub store: Arc<dyn Store>,
    pub(crate) keyring: Arc<Keyring>,
    /// The data plane; its snapshot is rebuilt after every write here.
    pub proxy: Arc<Proxy>,
    /// The proxy's events, until the server's batch writer takes them.
    events: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<ProxyEvent>>>,
    pub audit: AuditLog,
    /// Password hashing, capped and off the async threads.
    pub passwords: crate::users::Passwords,
    /// Failed sign-ins per account and address (this instance's count).
    pub attempts: std::sync::Mutex<keyward_core::throttle::Attempts>,
    pub throttle: keyward_core::throttle::ThrottlePolicy,
    pub clock: Arc<dyn Clock>,
    pub random: Arc<dyn Randomness>,
    pub recovery_window: RecoveryWindow,
    /// Usage records older than this many days are pruned (hourly sums are kept).
    pub usage_retention_days: u16,
    pub session_policy: keyward_core::session::SessionPolicy,
    /// Whether the session cookie is `Secure` (served over HTTPS).
    pub secure_cookies: bool,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Whether idle keys get active health probes.
    pub health_probes: bool,
    /// What compliance checks know of each current value (never the value itself).
    pub(crate) secret_traits: crate::compliance::TraitsCache,
    /// Sends notification e-mail, when SMTP is configured.
    pub(crate) mailer: Option<crate::notifications::Mailer>,
    builtin: Vec<ServiceDefinition>,
    /// This server's own Prometheus recorder (never the process-global one).
    pub metrics: crate::metrics::Metrics,
}

/// The settings the management operations need.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    pub recovery_window: RecoveryWindow,
    pub usage_retention_days: u16,
    /// How long past its expiry a key is still injected (with a warning).
    pub expiry_grace: std::time::Duration,
    pub pricing: PricingTable,
    pub sessions: keyward_core::session::SessionPolicy,
    pub secure_cookies: bool,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub health_probes: bool,
    pub smtp: Option<crate::config::Smtp>,
}

impl AppOptions {
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self {
            recovery_window: settings.recovery_window,
            usage_retention_days: settings.usage_retention_days,
            expiry_grace: settings.expiry_grace,
            pricing: settings.pricing.clone(),
            sessions: settings.sessions,
            secure_cookies: settings.secure_cookies,
            trusted_proxies: settings.trusted_proxies.clone(),
            health_probes: settings.health_probes,
            smtp: settings.smtp.clone(),
        }
    }
}

/// Why someone wants to see a value: 4–500 characters, kept in the trail.
fn reveal_reason(reason: &str) -> Result<String, Error> {
    match label::text("reason", Some(reason), 500)? {
        Some(reason) if reason.chars().count() >= 4 => Ok(reason),
        _ => Err(Error::invalid(
            "reason_required",
            "say why the value is needed (at least 4 characters)",
        )),
    }
}

fn key_not_found(id: &KeyId) -> Error {
    Error::not_found("key_not_found", format!("there is no key {id}"))
}

fn out_of_scope_error(service_id: &str, environment: &str) -> Error {
    Error::new(
        ErrorKind::Forbidden,
        "out_of_scope",
        format!(
            "your grants do not allow this for {} keys in {}",
            label::printable(service_id),
            label::printable(environment)
        ),
    )
}

/// What limits a management token beyond its role.
#[derive(Debug, Clone, Default)]
pub struct TokenLimits {
    pub scope: keyward_core::access::Scope,
    pub allowed_networks: Vec<ipnet::IpNet>,
}

/// What depends on a key (see [`App::impact`]).
#[derive(Debug, Clone)]
pub struct Impact {
    pub key: Key,
    /// Active app tokens the proxy would inject this key for.
    pub tokens: Vec<AppToken>,
    pub last_7_days: keyward_core::usage::UsageTotals,
    pub last_30_days: keyward_core::usage::UsageTotals,
    pub last_used_at: Option<Timestamp>,
    /// Other active keys of the same service and environment (that the caller may see).
    pub other_active_keys: usize,
}

/// Input for a new key: metadata plus the secret and whether to skip the format check.
#[derive(Debug)]
pub struct NewKey {
    pub draft: KeyDraftInput,
    pub secret: SecretString,
    pub force: bool,
}

impl App {
    pub fn new(
        vault: Vault,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Randomness>,
        options: AppOptions,
    ) -> Result<Self, Error> {
        let keyring = Arc::new(vault.keyring);
        let (proxy, events) = Proxy::new(
            keyring.clone(),
            clock.clone(),
            random.clone(),
            ProxyConfig {
                expiry_grace: options.expiry_grace,
                ..ProxyConfig::default()
            },
            options.pricing,
        )?;
        Ok(Self {
            audit: AuditLog::new(vault.store.clone(), vault.audit_keys, clock.clone()),
            passwords: crate::users::Passwords::new(crate::users::HASH_CONCURRENCY, &*random)?,
            attempts: std::sync::Mutex::default(),
            throttle: keyward_core::throttle::ThrottlePolicy::default(),
            store: vault.store,
            keyring,
            proxy: Arc::new(proxy),
            events: std::sync::Mutex::new(Some(events)),
            clock,
            random,
            recovery_window: options.recovery_window,
            usage_retention_days: options.usage_retention_days,
            session_policy: options.sessions,
            secure_cookies: options.secure_cookies,
            trusted_proxies: options.trusted_proxies,
            health_probes: options.health_probes,
            secret_traits: crate::compliance::TraitsCache::default(),
            mailer: options
                .smtp
                .as_ref()
                .map(crate::notifications::Mailer::new)
                .transpose()?,
            builtin: builtin_services()?,
            metrics: crate::metrics::Metrics::default(),
        })
    }

    /// Records an entry in the audit trail (for what has no operation of its own here:
    /// sign-in failures, refused requests, exports). Fails closed like every entry.
    pub async fn record_audit(
        &self,
        actor: &Actor,
        action: &str,
        target: Option<String>,
        outcome: AuditOutcome,
        details: serde_json::Value,
    ) -> Result<(), Error> {
        let entry = self.audit_entry(actor, action, target, outcome, &details)?;
        self.audit.record(&entry).await.map(drop)
    }

    fn audit_entry(
        &self,
        actor: &Actor,
        action: &str,
        target: Option<String>,
        outcome: AuditOutcome,
        details: &serde_json::Value,
    ) -> Result<AuditDraft, Error> {
        Ok(AuditDraft {
            at: self.now(),
            actor_kind: actor.kind,
            actor_id: actor.id.clone(),
            actor_name: actor.name.clone(),
            source: actor.source.map(|ip| ip.to_string()),
            action: action.to_owned(),
            target,
            outcome,
            details: AuditDraft::details_from(details)?,
        })
    }

    /// Writes the audit entry for `action`, then runs `op`. If the entry cannot be written,
    /// `op` never runs (fail closed); if `op` fails, a failure entry with its error code
    /// follows (best effort: the operation did not happen either way).
    pub(crate) async fn audited<T>(
        &self,
        actor: &Actor,
        action: &str,
        target: String,
        details: serde_json::Value,
        op: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let entry = self.audit_entry(
            actor,
            action,
            Some(target.clone()),
            AuditOutcome::Success,
            &details,
        )?;
        self.audit.record(&entry).await?;
        let result = op.await;
        if let Err(e) = &result {
            let mut details = details;
            if let Some(map) = details.as_object_mut() {
                map.insert("error".into(), e.code.into());
            }
            let failed =
                self.audit_entry(actor, action, Some(target), outcome_of(&result), &details);
            if let Err(audit_error) = async { self.audit.record(&failed?).await }.await {
                tracing::error!(error = %audit_error, action, "could not record an operation's failure in the audit trail");
            }
        }
        result
    }

    /// Now, at the store's millisecond precision, so a response shows exactly what was stored.
    pub fn now(&self) -> Timestamp {
        let now = self.clock.now();
        Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now)
    }

    /// The catalog as stored now (built-ins + custom services + overrides). Read per request
    /// so every instance sharing the database sees the same catalog.
    pub async fn catalog(&self) -> Result<ServiceCatalog, Error> {
        let custom = self.store.custom_services().await?;
        let overrides = self.store.base_url_overrides().await?;
        Ok(ServiceCatalog::assemble(
            self.builtin.clone(),
            custom,
            &overrides,
        ))
    }

    /// Hands the proxy's events to the (single) batch writer.
    pub fn take_proxy_events(&self) -> Option<tokio::sync::mpsc::Receiver<ProxyEvent>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Writes a batch of proxy events: usage records (with their hourly sums), the latest
    /// use per key and per token, and key flags raised or cleared.
    pub async fn record_events(&self, events: Vec<ProxyEvent>) -> Result<(), Error> {
        let mut records = Vec::new();
        let mut flags: std::collections::HashMap<KeyId, Option<KeyFlag>> =
            std::collections::HashMap::new();
        let mut rotations: std::collections::HashMap<KeyId, RotationTraffic> =
            std::collections::HashMap::new();
        for event in events {
            match event {
                ProxyEvent::Usage(record) => records.push(*record),
                ProxyEvent::Flag(flag) => {
                    flags.insert(flag.key_id.clone(), Some(flag));
                }
                ProxyEvent::FlagCleared(key) => {
                    flags.insert(key, None);
                }
                ProxyEvent::Rotation(key, seen) => {
                    rotations.entry(key).or_default().add(&seen);
                }
            }
        }
        let mut keys: std::collections::HashMap<&KeyId, Timestamp> =
            std::collections::HashMap::new();
        let mut tokens: std::collections::HashMap<&AppTokenId, Timestamp> =
            std::collections::HashMap::new();
        for r in &records {
            // A key was used if the call reached the provider with it.
            if let Some(key) = r
                .key_id
                .as_ref()
                .filter(|_| !matches!(r.outcome, Outcome::Refused | Outcome::Failed))
            {
                let k = keys.entry(key).or_insert(r.at);
                *k = (*k).max(r.at);
            }
            if let Some(token) = &r.token_id {
                let t = tokens.entry(token).or_insert(r.at);
                *t = (*t).max(r.at);
            }
        }
        let keys: Vec<_> = keys.into_iter().map(|(id, at)| (id.clone(), at)).collect();
        let tokens: Vec<_> = tokens
            .into_iter()
            .map(|(id, at)| (id.clone(), at))
            .collect();
        self.metrics
            .observe(&records, |service| self.proxy.knows_service(service));
        if let Err(e) = self.store.record_usage(&records).await {
            self.metrics.usage_write_failed();
            return Err(e);
        }
        self.store.record_key_use(&keys).await?;
        self.store.record_app_token_use(&tokens).await?;
        let raised: Vec<KeyFlag> = flags.values().flatten().cloned().collect();
        if !raised.is_empty() {
            self.store.set_key_flags(&raised).await?;
        }
        for (key, flag) in flags {
            if flag.is_none() {
                self.store.clear_key_flag(&key).await?;
            }
        }
        let rotations: Vec<(KeyId, RotationTraffic)> = rotations.into_iter().collect();
        self.store.add_rotation_traffic(&rotations).await?;
        Ok(())
    }

    /// Restores quota and budget counters from the hourly usage sums (start-up): everything
    /// since the start of last month covers every calendar window and budget period.
    pub async fn restore_meters(&self) -> Result<(), Error> {
        let now = self.now();
        let since = now
            .checked_sub(jiff::SignedDuration::from_hours(32 * 24))
            .unwrap_or(now);
        self.proxy
            .seed_meters(self.store.hourly_use_since(since).await?);
        Ok(())
    }

    /// Rebuilds the proxy's snapshot from the store and swaps it in.
    pub async fn refresh_proxy(&self) -> Result<(), Error> {
        let catalog = self.catalog().await?;
        let tokens = self.store.app_tokens().await?;
        let keys = self.store.live_keys().await?;
        let alternates = self.rotation_alternates().await?;
        let flags = self.store.key_flags().await?;
        let pools = self.store.pool_settings().await?;
        self.proxy.install(Snapshot::build(
            &catalog, tokens, keys, alternates, flags, &pools,
        ));
        Ok(())
    }

    /// Clears what the proxy learned about a key (e.g. after fixing it at the provider).
    pub async fn clear_key_flag(&self, actor: &Actor, id: &KeyId) -> Result<Key, Error> {
        let key = self.key_for(actor, Permission::KeysWrite, id).await?;
        self.audited(
            actor,
            "key.flag.clear",
            format!("key:{id}"),
            json!({}),
            self.store.clear_key_flag(id),
        )
        .await?;
        self.proxy.clear_key_flag(id);
        self.changed().await;
        tracing::info!(key = %id, actor = %actor.name, "key flag cleared");
        Ok(key)
    }

    pub async fn pool_settings(&self) -> Result<Vec<PoolSetting>, Error> {
        self.store.pool_settings().await
    }

    /// Chooses how a service+environment pool shares traffic.
    pub async fn set_pool_strategy(
        &self,
        actor: &Actor,
        service_id: &str,
        environment: &str,
        strategy: PoolStrategy,
    ) -> Result<PoolSetting, Error> {
        let catalog = self.catalog().await?;
        if catalog.get(service_id).is_none() {
            return Err(Error::not_found(
                "service_not_found",
                format!("there is no service `{}`", label::printable(service_id)),
            ));
        }
        self.require_environment(environment).await?;
        self.ensure_reach(
            actor,
            Permission::KeysWrite,
            service_id,
            environment,
            || out_of_scope_error(service_id, environment),
        )
        .await?;
        let setting = PoolSetting {
            service_id: service_id.to_owned(),
            environment: environment.to_owned(),
            strategy,
        };
        self.audited(
            actor,
            "pool.set",
            format!("pool:{service_id}/{environment}"),
            json!({"strategy": strategy.as_str()}),
            self.store.set_pool_strategy(&setting, self.now()),
        )
        .await?;
        self.changed().await;
        tracing::info!(service = service_id, environment, strategy = strategy.as_str(), actor = %actor.name, "pool strategy set");
        Ok(setting)
    }

    /// Usage of one key the actor may read, or of everything for someone who reads
    /// everywhere (sums across keys would tell about keys outside a grant's scope).
    pub async fn usage(
        &self,
        actor: &Actor,
        query: &UsageQuery,
    ) -> Result<Vec<UsageBucket>, Error> {
        match &query.key_id {
            Some(key) => {
                self.key(actor, key).await?;
            }
            None if !actor.access.reach(Permission::KeysRead).is_everywhere() => {
                return Err(Error::new(
                    ErrorKind::Forbidden,
                    "out_of_scope",
                    "your grants cover only part of the vault: ask for one key's usage (`key=`)",
                ));
            }
            None => {}
        }
        self.store.usage(query).await
    }

    /// Usage per key (sparklines, "by key" tables): all keys for someone who reads
    /// everywhere, otherwise only the keys their grants let them read.
    pub async fn usage_by_key(
        &self,
        actor: &Actor,
        query: &UsageQuery,
    ) -> Result<std::collections::BTreeMap<String, Vec<UsageBucket>>, Error> {
        let rows = self.store.usage_grouped(query, UsageGrouping::Key).await?;
        let visible: Option<std::collections::HashSet<String>> =
            if actor.access.reach(Permission::KeysRead).is_everywhere() {
                None
            } else {
                let keys = self
                    .list_keys(
                        actor,
                        KeyFilter::default(),
                        None,
                        PageRequest::new(None, Some(PageRequest::MAX_LIMIT))?,
                    )
                    .await?;
                Some(keys.items.into_iter().map(|k| k.id.to_string()).collect())
            };
        let mut out: std::collections::BTreeMap<String, Vec<UsageBucket>> = Default::default();
        for (key, bucket) in rows {
            if visible.as_ref().is_none_or(|v| v.contains(&key)) {
                out.entry(key).or_default().push(bucket);
            }
        }
        Ok(out)
    }

    /// What depends on a key, shown before it is deleted, disabled or revoked: the active
    /// app tokens that can use it, its traffic and cost over 7 and 30 days, its last use,
    /// and how many other active keys in its pool could take its traffic.
    pub async fn impact(&self, actor: &Actor, id: &KeyId) -> Result<Impact, Error> {
        let key = self.key(actor, id).await?;
        let now = self.now();
        let tokens = self
            .app_tokens(actor)
            .await?
            .into_iter()
            .filter(|t| {
                t.status(now) == keyward_core::app_token::AppTokenStatus::Active && t.may_use(&key)
            })
            .collect();
        let totals = |days: i64| async move {
            let from = now - jiff::SignedDuration::from_hours(24 * days);
            let query = UsageQuery::new(
                from,
                now,
                keyward_core::usage::Granularity::Hour,
                Some(id.clone()),
                None,
                None,
            )?;
            let mut sum = keyward_core::usage::UsageTotals::default();
            for bucket in self.store.usage(&query).await? {
                sum += bucket.totals;
            }
            Ok::<_, Error>(sum)
        };
        let last_7_days = totals(7).await?;
        let last_30_days = totals(30).await?;
        let pool = self
            .list_keys(
                actor,
                KeyFilter {
                    service_ids: Some(vec![key.service_id.clone()]),
                    environment: Some(key.environment.clone()),
                    status: Some(keyward_core::key::KeyStatus::Active),
                    ..KeyFilter::default()
                },
                None,
                PageRequest::new(None, Some(PageRequest::MAX_LIMIT))?,
            )
            .await?;
        let other_active_keys = pool.items.iter().filter(|k| k.id != key.id).count();
        Ok(Impact {
            last_used_at: key.last_used_at,
            key,
            tokens,
            last_7_days,
            last_30_days,
            other_active_keys,
        })
    }

    /// Rebuilds the snapshot if the store changed since `last` (e.g. through another
    /// instance sharing the database). The marker is read before the rebuild, so a change
    /// that lands during it is caught by the next poll.
    pub async fn refresh_proxy_if_changed(
        &self,
        last: &mut Option<Vec<i64>>,
    ) -> Result<bool, Error> {
        let marker = self.store.change_marker().await?;
        if last.as_ref() == Some(&marker) {
            return Ok(false);
        }
        self.refresh_proxy().await?;
        *last = Some(marker);
        Ok(true)
    }

    /// After a write: the proxy must see it before the caller hears it succeeded (a revoked
    /// token or disabled key stops working at once). A failed refresh is logged; the
    /// write itself stands.
    pub(crate) async fn changed(&self) {
        if let Err(e) = self.refresh_proxy().await {
            tracing::error!(error = %e, "could not refresh the proxy snapshot after a change");
        }
    }

    // ------------------------------------------------------------------ keys

    pub async fn create_key(&self, actor: &Actor, new: NewKey) -> Result<Key, Error> {
        let now = self.now();
        let draft = KeyDraft::validate(new.draft, now)?;
        let catalog = self.catalog().await?;
        let service = catalog.get(&draft.service_id).ok_or_else(|| {
            Error::invalid(
                "unknown_service",
                format!("there is no service `{}`", draft.service_id),
            )
        })?;
        self.require_environment(&draft.environment).await?;
        self.ensure_reach(
            actor,
            Permission::KeysWrite,
            &draft.service_id,
            &draft.environment,
            || out_of_scope_error(&draft.service_id, &draft.environment),
        )
        .await?;
        let value = secret::normalize(&new.secret)?;
        secret::check_format(service, &value, new.force)?;
        let hint = secret::hint(service, &value)?;
        let id = KeyId::generate(now, &*self.random);
        let fingerprint = self.audit.fingerprint(&value);
        let sealed = self
            .keyring
            .seal(&*self.random, &value, &SealContext::key_secret(&id, 1))?;
        drop(value);
        let key = Key {
            id: id.clone(),
            service_id: draft.service_id,
            environment: draft.environment,
            alias: draft.alias,
            description: draft.description,
            owner: draft.owner,
            tags: draft.tags,
            criticality: draft.criticality,
            enabled: draft.enabled,
            expires_at: draft.expires_at,
            current_version: 1,
            current_hint: hint.clone(),
            created_by: actor.name.clone(),
            created_at: now,
            updated_at: now,
            last_used_at: None,
            deleted_at: None,
            deleted_by: None,
            revoked: None,
            rotated_at: now,
            rotation_rule: None,
            limits: draft.limits,
            budget: draft.budget,
        };
        let version = KeyVersion {
            key_id: id,
            version: 1,
            state: VersionState::Current,
            hint,
            sealed,
            created_by: actor.name.clone(),
            created_at: now,
        };
        self.audited(
            actor,
            "key.create",
            format!("key:{}", key.id),
            json!({
                "service": key.service_id,
                "environment": key.environment,
                "alias": key.alias,
                "version": 1,
                "fingerprint": fingerprint,
            }),
            self.store.insert_key(&key, &version),
        )
        .await?;
        self.changed().await;
        tracing::info!(key = %key.id, service = %key.service_id, environment = %key.environment, actor = %actor.name, "key created");
        Ok(key)
    }

    /// Refuses an actor without `permission` over the whole vault: for use cases that are
    /// not about one key (policies, access), so a caller other than the API's route guard
    /// (a page) cannot skip the check.
    pub fn require_everywhere(actor: &Actor, permission: Permission) -> Result<(), Error> {
        if actor.access.reach(permission).is_everywhere() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Forbidden,
                "forbidden",
                format!("this needs the `{}` permission", permission.as_str()),
            ))
        }
    }

    async fn require_environment(&self, id: &str) -> Result<(), Error> {
        if self.store.environments().await?.iter().any(|e| e.id == id) {
            Ok(())
        } else {
            Err(Error::invalid(
                "unknown_environment",
                format!("there is no environment `{}`", label::printable(id)),
            ))
        }
    }

    /// The key, if `actor` may see it (a key outside every scope they can read is
    /// `key_not_found`, as if it did not exist).
    pub async fn key(&self, actor: &Actor, id: &KeyId) -> Result<Key, Error> {
        self.key_for(actor, Permission::KeysRead, id).await
    }

    /// The key, if `actor` holds `permission` where it lives: not visible at all is
    /// `key_not_found`; visible but outside the permission's scope is `out_of_scope`.
    /// Every key use case starts here — the one place grants' scopes are applied.
    pub async fn key_for(
        &self,
        actor: &Actor,
        permission: Permission,
        id: &KeyId,
    ) -> Result<Key, Error> {
        let key = self.store.key(id).await?.ok_or_else(|| key_not_found(id))?;
        self.ensure_reach(actor, permission, &key.service_id, &key.environment, || {
            key_not_found(id)
        })
        .await?;
        Ok(key)
    }

    /// Whether `actor`'s `permission` covers keys of `service_id` in `environment`; if not,
    /// `hidden()` when they cannot even read there, else `out_of_scope`.
    async fn ensure_reach(
        &self,
        actor: &Actor,
        permission: Permission,
        service_id: &str,
        environment: &str,
        hidden: impl FnOnce() -> Error,
    ) -> Result<(), Error> {
        let reach = actor.access.reach(permission);
        if reach.is_everywhere() {
            return Ok(());
        }
        let category = self
            .catalog()
            .await?
            .get(service_id)
            .map(|s| s.category.clone())
            .unwrap_or_default();
        if reach.covers(&category, environment) {
            return Ok(());
        }
        if actor
            .access
            .reach(Permission::KeysRead)
            .covers(&category, environment)
        {
            Err(Error::new(
                ErrorKind::Forbidden,
                "out_of_scope",
                format!("your grants do not allow this for {service_id} keys in {environment}"),
            ))
        } else {
            Err(hidden())
        }
    }

    /// The key areas (services × environments) `reach` covers, for listing in SQL; `None`
    /// for everywhere.
    async fn areas(&self, reach: &Reach) -> Result<Option<Vec<KeyArea>>, Error> {
        let scopes = match reach {
            Reach::Everywhere => return Ok(None),
            Reach::Nowhere => return Ok(Some(Vec::new())),
            Reach::Within(scopes) => scopes,
        };
        let catalog = self.catalog().await?;
        Ok(Some(
            scopes
                .iter()
                .map(|scope| KeyArea {
                    service_ids: scope.categories.as_ref().map(|categories| {
                        categories
                            .iter()
                            .flat_map(|c| catalog.ids_in_category(c))
                            .collect()
                    }),
                    environments: scope
                        .environments
                        .as_ref()
                        .map(|e| e.iter().cloned().collect()),
                })
                .collect(),
        ))
    }

    /// Filters by category become the category's list of services; only keys `actor` may
    /// read are listed.
    pub async fn list_keys(
        &self,
        actor: &Actor,
        mut filter: KeyFilter,
        category: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Key>, Error> {
        if let Some(category) = category {
            let in_category = self.catalog().await?.ids_in_category(category);
            filter.service_ids = Some(match filter.service_ids.take() {
                Some(services) => services
                    .into_iter()
                    .filter(|s| in_category.contains(s))
                    .collect(),
                None => in_category,
            });
        }
        filter.areas = self
            .areas(&actor.access.reach(Permission::KeysRead))
            .await?;
        self.store.list_keys(&filter, &page, self.now()).await
    }

    async fn save(
        &self,
        actor: &Actor,
        action: &str,
        details: serde_json::Value,
        mut key: Key,
        before: Timestamp,
    ) -> Result<Key, Error> {
        // Timestamps are millisecond-precise in the store; make sure an update is visible as one.
        let now = self.now();
        key.updated_at = if now.as_millisecond() > before.as_millisecond() {
            now
        } else {
            Timestamp::from_millisecond(before.as_millisecond() + 1).unwrap_or(now)
        };
        self.audited(
            actor,
            action,
            format!("key:{}", key.id),
            details,
            self.store.update_key(&key, before),
        )
        .await?;
        self.changed().await;
        Ok(key)
    }

    pub async fn update_key(
        &self,
        actor: &Actor,
        id: &KeyId,
        changes: KeyChanges,
    ) -> Result<Key, Error> {
        let mut key = self.key_for(actor, Permission::KeysWrite, id).await?;
        let before = key.updated_at;
        let fields = changes.field_names();
        if !changes.apply(&mut key, self.now())? {
            return Ok(key);
        }
        let key = self
            .save(actor, "key.update", json!({"fields": fields}), key, before)
            .await?;
        tracing::info!(key = %id, actor = %actor.name, "key metadata updated");
        Ok(key)
    }

    pub async fn set_enabled(
        &self,
        actor: &Actor,
        id: &KeyId,
        enabled: bool,
    ) -> Result<Key, Error> {
        let mut key = self.key_for(actor, Permission::KeysWrite, id).await?;
        key.ensure_not_deleted()?;
        if enabled {
            key.ensure_not_revoked()?;
        }
        if key.enabled == enabled {
            return Ok(key);
        }
        if !enabled {
            self.gate_key(actor, ApprovalAction::Disable, &key, json!({}))
                .await?;
        }
        let before = key.updated_at;
        key.enabled = enabled;
        let action = if enabled { "key.enable" } else { "key.disable" };
        let key = self.save(actor, action, json!({}), key, before).await?;
        tracing::info!(key = %id, actor = %actor.name, enabled, "key enabled state changed");
        Ok(key)
    }

    /// Adds a version that is current at once (an immediate rotation, without a dual-key
    /// window). A value to try before it takes over goes through a guided rotation
    /// (`guided_rotation.rs`), which owns pending versions.
    pub async fn add_version(
        &self,
        actor: &Actor,
        id: &KeyId,
        secret_value: SecretString,
        force: bool,
        state: VersionState,
    ) -> Result<KeyVersion, Error> {
        if state != VersionState::Current {
            return Err(Error::invalid(
                "invalid_version_state",
                "a value added directly is current at once; to try a value first, start a rotation (POST /api/v1/keys/{id}/rotations)",
            ));
        }
        let key = self.key_for(actor, Permission::KeysRotate, id).await?;
        key.ensure_not_deleted()?;
        key.ensure_not_revoked()?;
        let catalog = self.catalog().await?;
        let service = catalog.require(&key.service_id)?;
        let value = secret::normalize(&secret_value)?;
        secret::check_format(service, &value, force)?;
        let number = self.next_version_number(id).await?;
        let now = self.now();
        let fingerprint = self.audit.fingerprint(&value);
        // Bound to the new value (by its fingerprint): approvers approve this value only.
        self.gate_key(
            actor,
            ApprovalAction::Rotate,
            &key,
            json!({"fingerprint": fingerprint, "state": state.to_string()}),
        )
        .await?;
        let version = self.seal_version(service, id, number, state, &value, actor, now)?;
        self.audited(
            actor,
            "key.version.add",
            format!("key:{id}"),
            json!({"version": number, "state": state.to_string(), "fingerprint": fingerprint}),
            self.store.add_version(&version, now),
        )
        .await?;
        self.changed().await;
        tracing::info!(key = %id, version = number, state = %state, actor = %actor.name, "key version added");
        Ok(version)
    }

    /// The number the key's next version gets.
    pub(crate) async fn next_version_number(&self, id: &KeyId) -> Result<u32, Error> {
        Ok(self
            .store
            .versions(id)
            .await?
            .iter()
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            + 1)
    }

    /// A new version of key `id` holding `value` (normalized and format-checked), sealed
    /// for exactly that key and version number.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seal_version(
        &self,
        service: &ServiceDefinition,
        id: &KeyId,
        number: u32,
        state: VersionState,
        value: &SecretString,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<KeyVersion, Error> {
        Ok(KeyVersion {
            key_id: id.clone(),
            version: number,
            state,
            hint: secret::hint(service, value)?,
            sealed: self.keyring.seal(
                &*self.random,
                value,
                &SealContext::key_secret(id, number),
            )?,
            created_by: actor.name.clone(),
            created_at: now,
        })
    }

    /// A stored version's value (for injection-like uses: validation, probes, admin calls).
    pub(crate) async fn version_value(
        &self,
        id: &KeyId,
        number: u32,
    ) -> Result<SecretString, Error> {
        let version = self
            .store
            .versions(id)
            .await?
            .into_iter()
            .find(|v| v.version == number)
            .ok_or_else(|| Error::internal(format!("key {id} has no version {number}")))?;
        Ok(self.keyring.unseal(
            &version.sealed,
            &SealContext::key_secret(id, version.version),
        )?)
    }

    /// Passes `action` on `key` through the approval gate (see `approvals.rs`).
    pub(crate) async fn gate_key(
        &self,
        actor: &Actor,
        action: ApprovalAction,
        key: &Key,
        payload: serde_json::Value,
    ) -> Result<(), Error> {
        let category = self
            .catalog()
            .await?
            .get(&key.service_id)
            .map(|s| s.category.clone());
        let operation = Operation {
            action,
            target: format!("key:{}", key.id),
            payload,
        };
        let facts = GateFacts {
            category: category.as_deref(),
            environment: Some(&key.environment),
            criticality: Some(key.criticality),
        };
        self.gate(actor, &operation, facts).await
    }

    /// Emergency disable (break-glass): stops all use of a key at once, without waiting for
    /// approvals, and files the action for review afterwards.
    pub async fn emergency_disable(
        &self,
        actor: &Actor,
        id: &KeyId,
        reason: &str,
    ) -> Result<Key, Error> {
        let reason = reveal_reason(reason)?;
        let mut key = self.key_for(actor, Permission::KeysWrite, id).await?;
        key.ensure_not_deleted()?;
        let review = self
            .break_glass_on_key(actor, ApprovalAction::Disable, id, &reason)
            .await?;
        let before = key.updated_at;
        key.enabled = false;
        let key = self
            .save(
                actor,
                "key.disable",
                json!({"break_glass": true, "reason": reason, "review": review.as_str()}),
                key,
                before,
            )
            .await?;
        tracing::warn!(key = %id, actor = %actor.name, "key disabled in an emergency (break-glass)");
        Ok(key)
    }

    /// Files a break-glass act on a key (done without approval) for review afterwards.
    async fn break_glass_on_key(
        &self,
        actor: &Actor,
        action: ApprovalAction,
        id: &KeyId,
        reason: &str,
    ) -> Result<keyward_core::id::ApprovalId, Error> {
        let operation = Operation {
            action,
            target: format!("key:{id}"),
            payload: json!({}),
        };
        self.flag_break_glass(actor, operation, reason.to_owned())
            .await
    }

    /// Emergency revocation: stops every use of the key at once — on this instance before
    /// answering, on others within their next snapshot poll (half a second) — with no
    /// approval to wait for, and files the act for review. Irreversible; needs `keys_write`
    /// and a reason. The proxy then answers `key_revoked`.
    pub async fn revoke_key(&self, actor: &Actor, id: &KeyId, reason: &str) -> Result<Key, Error> {
        let reason = reveal_reason(reason)?;
        let mut key = self.key_for(actor, Permission::KeysWrite, id).await?;
        key.ensure_not_deleted()?;
        if key.revoked.is_some() {
            return Err(Error::conflict(
                "key_already_revoked",
                format!("key {id} is already revoked"),
            ));
        }
        let review = self
            .break_glass_on_key(actor, ApprovalAction::Revoke, id, &reason)
            .await?;
        let before = key.updated_at;
        key.revoked = Some(keyward_core::key::Revocation {
            at: self.now(),
            by: actor.name.clone(),
            reason: reason.clone(),
        });
        let key = self
            .save(
                actor,
                "key.revoke",
                json!({"reason": reason, "review": review.as_str()}),
                key,
                before,
            )
            .await?;
        tracing::warn!(key = %id, actor = %actor.name, "key revoked in an emergency");
        self.notify(
            keyward_core::notification::NotificationKind::KeyRevoked,
            crate::notifications::About::key(
                self.category_of(&key).await.as_deref(),
                &key.environment,
            ),
            format!("key_revoked:{id}"),
            json!({"key": id.as_str(), "alias": key.alias, "service": key.service_id,
                   "environment": key.environment, "by": actor.name, "reason": reason}),
        )
        .await;
        Ok(key)
    }

    /// Reveals a key's value: the explicit, audited way a person sees it (never through
    /// reading metadata). A reason is required and recorded with the value's fingerprint;
    /// `version` defaults to the current one.
    pub async fn reveal_key(
        &self,
        actor: &Actor,
        id: &KeyId,
        version: Option<u32>,
        reason: &str,
    ) -> Result<(KeyVersion, SecretString), Error> {
        let reason = reveal_reason(reason)?;
        let key = self.key_for(actor, Permission::KeysReveal, id).await?;
        key.ensure_not_deleted()?;
        let wanted = version.unwrap_or(key.current_version);
        self.gate_key(
            actor,
            ApprovalAction::Reveal,
            &key,
            json!({"version": wanted}),
        )
        .await?;
        let version = self
            .store
            .versions(id)
            .await?
            .into_iter()
            .find(|v| v.version == wanted)
            .ok_or_else(|| {
                Error::not_found(
                    "version_not_found",
                    format!("key {id} has no version {wanted}"),
                )
            })?;
        let value = self.keyring.unseal(
            &version.sealed,
            &SealContext::key_secret(id, version.version),
        )?;
        self.audited(
            actor,
            "key.reveal",
            format!("key:{id}"),
            json!({"version": version.version, "reason": reason,
                   "fingerprint": self.audit.fingerprint(&value)}),
            async { Ok(()) },
        )
        .await?;
        tracing::warn!(key = %id, version = version.version, actor = %actor.name, "key value revealed");
        Ok((version, value))
    }

    /// Sends `service_id`'s validation request with a value not stored yet (the add-key
    /// wizard's Validate button). Needs `keys_write` where the key would live; the format is
    /// checked first; audited with the value's fingerprint and the verdict.
    pub async fn validate_secret(
        &self,
        actor: &Actor,
        service_id: &str,
        environment: &str,
        secret: &SecretString,
    ) -> Result<keyward_proxy::Validation, Error> {
        let catalog = self.catalog().await?;
        let service = catalog.get(service_id).ok_or_else(|| {
            Error::invalid(
                "unknown_service",
                format!("there is no service `{}`", label::printable(service_id)),
            )
        })?;
        self.require_environment(environment).await?;
        self.ensure_reach(
            actor,
            Permission::KeysWrite,
            service_id,
            environment,
            || out_of_scope_error(service_id, environment),
        )
        .await?;
        let value = secret::normalize(secret)?;
        secret::check_format(service, &value, false)?;
        let fingerprint = self.audit.fingerprint(&value);
        self.validated(
            actor,
            format!("service:{service_id}"),
            service,
            &value,
            fingerprint,
        )
        .await
    }

    /// Sends the key's validation request with its current value: does the stored key
    /// still work? Needs `keys_write` on the key; audited.
    pub async fn validate_key(
        &self,
        actor: &Actor,
        id: &KeyId,
    ) -> Result<keyward_proxy::Validation, Error> {
        let key = self.key_for(actor, Permission::KeysWrite, id).await?;
        key.ensure_not_deleted()?;
        let catalog = self.catalog().await?;
        let service = catalog
            .get(&key.service_id)
            .ok_or_else(|| Error::internal(format!("key {id} names an unknown service")))?;
        let value = self.version_value(id, key.current_version).await?;
        let fingerprint = self.audit.fingerprint(&value);
        self.validated(actor, format!("key:{id}"), service, &value, fingerprint)
            .await
    }

    /// Runs a validation request and records it (`key.validate`) with its verdict.
    async fn validated(
        &self,
        actor: &Actor,
        target: String,
        service: &ServiceDefinition,
        value: &SecretString,
        fingerprint: String,
    ) -> Result<keyward_proxy::Validation, Error> {
        let result = self.proxy.validate(service, value).await;
        let details = match &result {
            Ok(v) => json!({"service": service.id, "fingerprint": fingerprint,
                            "verdict": v.verdict, "status": v.status}),
            Err(e) => json!({"service": service.id, "fingerprint": fingerprint, "error": e.code}),
        };
        let entry = self.audit_entry(
            actor,
            "key.validate",
            Some(target),
            outcome_of(&result),
            &details,
        )?;
        self.audit.record(&entry).await?;
        result
    }

    pub async fn versions(&self, actor: &Actor, id: &KeyId) -> Result<Vec<KeyVersion>, Error> {
        self.key(actor, id).await?;
        self.store.versions(id).await
    }

    pub async fn delete_key(&self, actor: &Actor, id: &KeyId) -> Result<Key, Error> {
        let mut key = self.key_for(actor, Permission::KeysDelete, id).await?;
        key.ensure_not_deleted()?;
        self.gate_key(actor, ApprovalAction::Delete, &key, json!({}))
            .await?;
        let before = key.updated_at;
        key.deleted_at = Some(self.now());
        key.deleted_by = Some(actor.name.clone());
        let key = self
            .save(actor, "key.delete", json!({}), key, before)
            .await?;
        tracing::info!(key = %id, actor = %actor.name, "key soft-deleted");
        Ok(key)
    }

    pub async fn restore_key(&self, actor: &Actor, id: &KeyId) -> Result<Key, Error> {
        let mut key = self.key_for(actor, Permission::KeysDelete, id).await?;
        if key.deleted_at.is_none() {
            return Err(Error::conflict(
                "key_not_deleted",
                format!("key {id} is not deleted"),
            ));
        }
        let before = key.updated_at;
        key.deleted_at = None;
        key.deleted_by = None;
        let key = self
            .save(actor, "key.restore", json!({}), key, before)
            .await?;
        tracing::info!(key = %id, actor = %actor.name, "key restored");
        Ok(key)
    }

    /// Destroys a deleted key. Inside the recovery window the caller must confirm by
    /// repeating the key's alias.
    pub async fn purge_key(
        &self,
        actor: &Actor,
        id: &KeyId,
        confirm_alias: Option<&str>,
    ) -> Result<(), Error> {
        let key = self.key_for(actor, Permission::KeysPurge, id).await?;
        let Some(deleted_at) = key.deleted_at else {
            return Err(Error::conflict(
                "key_not_deleted",
                format!("key {id} is not deleted; delete it first"),
            ));
        };
        let purgeable_at = self.recovery_window.purgeable_at(deleted_at);
        if self.now() < purgeable_at && confirm_alias != Some(key.alias.as_str()) {
            return Err(Error::conflict(
                "confirmation_required",
                format!(
                    "key {id} is inside its recovery window until {purgeable_at}; to purge it now send {{\"confirm\": \"<the key's alias>\"}}"
                ),
            ));
        }
        self.gate_key(actor, ApprovalAction::Purge, &key, json!({}))
            .await?;
        self.audited(
            actor,
            "key.purge",
            format!("key:{id}"),
            json!({"alias": key.alias, "service": key.service_id, "environment": key.environment}),
            self.store.purge_key(id),
        )
        .await?;
        self.changed().await;
        tracing::warn!(key = %id, actor = %actor.name, "key purged");
        Ok(())
    }

    /// Purges keys whose recovery window has passed; run periodically.
    /// Deletes usage records past the retention period; returns how many.
    pub async fn prune_usage(&self) -> Result<u64, Error> {
        let cutoff = self
            .now()
            .saturating_sub(jiff::SignedDuration::from_hours(
                i64::from(self.usage_retention_days) * 24,
            ))
            .unwrap_or(Timestamp::MIN);
        self.store.prune_usage(cutoff).await
    }

    pub async fn purge_expired(&self) -> Result<usize, Error> {
        let cutoff = self
            .now()
            .saturating_sub(self.recovery_window.duration())
            .unwrap_or(Timestamp::MIN);
        let purged = self
            .audited(
                &Actor::system("recovery-window"),
                "key.purge_expired",
                "keys".to_owned(),
                json!({"deleted_before": cutoff.to_string()}),
                self.store.purge_deleted_before(cutoff),
            )
            .await?;
        if !purged.is_empty() {
            self.changed().await;
        }
        for id in &purged {
            tracing::info!(key = %id, "key purged after its recovery window");
        }
        Ok(purged.len())
    }

    // --------------------------------------------------------------- catalog

    pub async fn create_service(
        &self,
        actor: &Actor,
        mut service: ServiceDefinition,
    ) -> Result<ServiceDefinition, Error> {
        service.builtin = false;
        service.validate()?;
        if self.builtin.iter().any(|b| b.id == service.id) {
            return Err(Error::conflict(
                "service_exists",
                format!("`{}` is a built-in service", service.id),
            ));
        }
        if !self
            .store
            .categories()
            .await?
            .iter()
            .any(|c| c.id == service.category)
        {
            return Err(Error::invalid(
                "unknown_category",
                format!("there is no category `{}`", service.category),
            ));
        }
        self.audited(
            actor,
            "service.create",
            format!("service:{}", service.id),
            json!({"base_url": service.base_url, "category": service.category}),
            self.store.insert_custom_service(&service, self.now()),
        )
        .await?;
        self.changed().await;
        tracing::info!(service = %service.id, actor = %actor.name, "custom service added");
        Ok(service)
    }

    /// Overrides (or with `None` resets) a service's base URL.
    pub async fn set_base_url(
        &self,
        actor: &Actor,
        id: &str,
        base_url: Option<&str>,
    ) -> Result<ServiceDefinition, Error> {
        self.catalog().await?.require(id)?;
        if let Some(url) = base_url {
            validate_base_url(url)?;
        }
        self.audited(
            actor,
            "service.base_url.set",
            format!("service:{id}"),
            json!({"base_url": base_url}),
            self.store.set_base_url_override(id, base_url, self.now()),
        )
        .await?;
        self.changed().await;
        tracing::info!(service = %id, actor = %actor.name, base_url = ?base_url, "service base URL changed");
        self.catalog().await?.require(id).cloned()
    }

    pub async fn create_environment(
        &self,
        actor: &Actor,
        id: &str,
        name: &str,
    ) -> Result<Environment, Error> {
        let env = Environment {
            id: label::slug("environment id", id)?,
            name: label::name("environment name", name)?,
            builtin: false,
        };
        self.audited(
            actor,
            "environment.create",
            format!("environment:{}", env.id),
            json!({"name": env.name}),
            self.store.insert_environment(&env, self.now()),
        )
        .await?;
        Ok(env)
    }

    pub async fn create_category(
        &self,
        actor: &Actor,
        id: &str,
        name: &str,
    ) -> Result<Category, Error> {
        let category = Category {
            id: label::slug("category id", id)?,
            name: label::name("category name", name)?,
            builtin: false,
        };
        self.audited(
            actor,
            "category.create",
            format!("category:{}", category.id),
            json!({"name": category.name}),
            self.store.insert_category(&category, self.now()),
        )
        .await?;
        Ok(category)
    }

    // ------------------------------------------------------------ app tokens

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
        // A token may reach only keys its creator could manage: no escalation by token.
        for service in &draft.services {
            for environment in &draft.environments {
                self.ensure_reach(
                    actor,
                    Permission::AppTokensWrite,
                    service,
                    environment,
                    || out_of_scope_error(service, environment),
                )
                .await?;
            }
        }
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
            id: AppTokenId::generate(now, &*self.random),
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
        self.audited(
            actor,
            "app_token.create",
            format!("app_token:{}", record.id),
            json!({
                "name": record.name,
                "services": record.services,
                "environments": record.environments,
                "public_id": record.public_id,
            }),
            self.store.insert_app_token(&record),
        )
        .await?;
        self.changed().await;
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

    async fn app_token_within(
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
        self.app_token_for(actor, Permission::AppTokensWrite, id)
            .await?;
        let revoked = self
            .audited(
                actor,
                "app_token.revoke",
                format!("app_token:{id}"),
                json!({}),
                self.store.revoke_app_token(id, self.now()),
            )
            .await?;
        if revoked {
            self.changed().await;
            tracing::warn!(app_token = %id, actor = %actor.name, "app token revoked");
        }
        self.app_token_for(actor, Permission::AppTokensWrite, id)
            .await
    }

    // ----------------------------------------------------------------- users

    /// Stores a user whose password is already hashed.
    pub async fn create_user(&self, actor: &Actor, user: &User) -> Result<(), Error> {
        self.audited(
            actor,
            "user.create",
            format!("user:{}", user.id),
            json!({"username": user.username, "role": user.role.as_str()}),
            self.store.insert_user(user),
        )
        .await
    }

    // ---------------------------------------------------------------- tokens

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
            created_at: now,
            expires_at,
            last_used_at: None,
            revoked_at: None,
            scope,
            allowed_networks: limits.allowed_networks,
        };
        self.audited(
            actor,
            "token.create",
            format!("token:{}", record.id),
            json!({"name": record.name, "role": role.as_str(), "public_id": record.public_id,
                   "scope": record.scope, "allowed_networks": record.allowed_networks}),
            self.store.insert_token(&record),
        )
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

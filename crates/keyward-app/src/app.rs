//! The management operations, one method per use case, free of HTTP: validate with the
//! domain, seal with the keyring, persist through the store port. The HTTP handlers and the
//! CLI are thin adapters over this.

use std::net::IpAddr;
use std::sync::Arc;

use jiff::Timestamp;
use keyward_core::access::{Access, Permission, Role};
use keyward_core::audit::{ActorKind, AuditDraft, AuditOutcome};
use keyward_core::catalog::builtin_services;
use keyward_core::key::RecoveryWindow;
use keyward_core::mfa::MfaStanding;
use keyward_core::ports::Store;
use keyward_core::service::ServiceDefinition;
use keyward_core::usage::PricingTable;
use keyward_core::{Clock, Error, ErrorKind, Randomness};
use keyward_crypto::Keyring;
use keyward_proxy::{Proxy, ProxyConfig, ProxyEvent, Snapshot};

use crate::audit::AuditLog;
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
    /// Where the actor stands with MFA: the change pipeline refuses a step-up operation
    /// without a recent check, whatever face (API, page, CLI) the request came through.
    pub mfa: MfaStanding,
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
            mfa: MfaStanding::NotApplicable,
        }
    }

    /// The id of the user or token acting, recorded as the creator of what they create;
    /// `None` for Keyward itself and the console.
    pub fn person_id(&self) -> Option<String> {
        matches!(self.kind, ActorKind::User | ActorKind::Token).then(|| self.id.clone())
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
            mfa: MfaStanding::NotApplicable,
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
    pub passwords: crate::identity::users::Passwords,
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
    pub(crate) secret_traits: crate::lifecycle::compliance::TraitsCache,
    /// Sends notification e-mail, when SMTP is configured.
    pub(crate) mailer: Option<crate::notifications::Mailer>,
    pub(crate) builtin: Vec<ServiceDefinition>,
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
    pub smtp: Option<crate::notifications::Smtp>,
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
            passwords: crate::identity::users::Passwords::new(
                crate::identity::users::HASH_CONCURRENCY,
                &*random,
            )?,
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
            secret_traits: crate::lifecycle::compliance::TraitsCache::default(),
            mailer: options
                .smtp
                .as_ref()
                .map(crate::notifications::Mailer::new)
                .transpose()?,
            builtin: builtin_services()?,
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

    pub(crate) fn audit_entry(
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

    /// Now, at the store's millisecond precision, so a response shows exactly what was stored.
    pub fn now(&self) -> Timestamp {
        let now = self.clock.now();
        Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now)
    }

    /// Hands the proxy's events to the (single) batch writer.
    pub fn take_proxy_events(&self) -> Option<tokio::sync::mpsc::Receiver<ProxyEvent>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take()
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
}

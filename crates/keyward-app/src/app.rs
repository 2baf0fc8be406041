//! The management operations, one method per use case, free of HTTP: validate with the
//! domain, seal with the keyring, persist through the store port. The HTTP handlers and the
//! CLI are thin adapters over this.

use std::sync::Arc;

use jiff::Timestamp;
use keyward_core::access::Permission;
use keyward_core::audit::{AuditDraft, AuditOutcome};
use keyward_core::catalog::builtin_services;
use keyward_core::key::RecoveryWindow;
use keyward_core::ports::Store;
use keyward_core::service::ServiceDefinition;
use keyward_core::usage::PricingTable;
use keyward_core::{Clock, Error, ErrorKind, Randomness};
use keyward_proxy::{Proxy, ProxyConfig, ProxyEvent, Snapshot};

use crate::actor::Actor;
use crate::audit::log::AuditLog;
use crate::vault::Vault;

#[derive(Debug)]
pub struct App {
    /// Only use cases reach the store: the edges go through `App`'s methods.
    pub(crate) store: Arc<dyn Store>,
    pub(crate) keyring: Arc<keyward_crypto::LiveKeyring>,
    /// The key file this process reads its master keys from (re-read when it changes), and
    /// what it looked like when last read.
    pub(crate) key_file: Option<crate::key_file::WatchedKeyFile>,
    /// The PKCS#11 token master keys come from (the pkcs11 source, or a file source still
    /// holding the token's keys): searched for keys another process generated there.
    pub(crate) hsm: Option<Arc<keyward_crypto::hsm::Hsm>>,
    /// This process among the instances: its id (fresh at every start) and start time.
    pub(crate) instance: (String, jiff::Timestamp),
    /// The data plane; its snapshot is rebuilt after every write here.
    pub proxy: Arc<Proxy>,
    /// The proxy's events, until the server's batch writer takes them.
    events: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<ProxyEvent>>>,
    pub(crate) audit: AuditLog,
    /// Password hashing, capped and off the async threads.
    pub passwords: crate::identity::passwords::Passwords,
    /// Failed sign-ins per account and address (this instance's count).
    pub attempts: std::sync::Mutex<keyward_core::throttle::Attempts>,
    pub throttle: keyward_core::throttle::ThrottlePolicy,
    pub clock: Arc<dyn Clock>,
    pub random: Arc<dyn Randomness>,
    pub recovery_window: RecoveryWindow,
    /// Usage records older than this many days are pruned (rollups longer than a minute are kept).
    pub usage_retention_days: u16,
    pub session_policy: keyward_core::session::SessionPolicy,
    /// Whether the session cookie is `Secure` (served over HTTPS).
    pub secure_cookies: bool,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Whether idle keys get active health probes.
    pub health_probes: bool,
    /// How long before a quota or budget runs out it is announced (zero: never).
    pub forecast_lead: std::time::Duration,
    /// Scheduled backups as configured (`None`: off), for the pages to show.
    pub backup_schedule: Option<keyward_core::backup::BackupSchedule>,
    /// Audit entries younger than this many days are never pruned.
    pub audit_retention_min_days: u32,
    /// Hour and day rollups older than this many days are pruned (`None`: kept).
    pub rollup_retention_days: Option<u32>,
    /// Finished notification deliveries older than this many days are pruned (`None`: kept).
    pub notification_log_retention_days: Option<u32>,
    /// What compliance checks know of each current value (never the value itself).
    pub(crate) secret_traits: crate::lifecycle::traits::TraitsCache,
    /// Sends notification e-mail, when SMTP is configured.
    pub(crate) mailer: Option<crate::notifications::mail::Mailer>,
    pub(crate) builtin: Vec<ServiceDefinition>,
    /// The anomaly detectors over every key's and token's usage (`App::watch_usage`).
    pub(crate) watch: tokio::sync::Mutex<crate::alerts::watch::Watch>,
    /// The last forecasts computed, and when (`App::forecasts`).
    pub(crate) forecasts: crate::allowance::ForecastCache,
    /// Token sightings this instance has stored (`App::watch_sightings`).
    pub(crate) known_sightings: std::sync::Mutex<
        std::collections::HashSet<(
            keyward_core::id::AppTokenId,
            keyward_core::sighting::SightingKind,
            String,
        )>,
    >,
}

/// Where shared limits live.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://` or `rediss://`; secret because it may carry a password.
    pub url: secrecy::SecretString,
    /// The CA (PEM) a `rediss://` server's certificate must chain to, instead of the
    /// system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// What this vault's keys in Redis start with.
    pub prefix: String,
    /// Bytes of cached answers shared through Redis (0: each instance caches alone).
    pub cache_max_bytes: u64,
    pub on_outage: keyward_proxy::shared::OutagePolicy,
}

/// The settings the management operations need.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    pub recovery_window: RecoveryWindow,
    pub usage_retention_days: u16,
    /// How long past its expiry a key is still injected (with a warning).
    pub expiry_grace: std::time::Duration,
    /// How long before a quota or budget runs out it is announced (zero: never).
    pub forecast_lead: std::time::Duration,
    /// Redis for limits, quotas and budgets shared by every instance.
    pub redis: Option<RedisOptions>,
    /// How long the proxy goes on injecting keys without confirming its snapshot is current
    /// (`None`: the proxy's default, 10 s).
    pub max_snapshot_staleness: Option<std::time::Duration>,
    pub pricing: PricingTable,
    pub sessions: keyward_core::session::SessionPolicy,
    pub secure_cookies: bool,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub public_url: Option<String>,
    pub health_probes: bool,
    pub smtp: Option<crate::notifications::mail::Smtp>,
    pub backup_schedule: Option<keyward_core::backup::BackupSchedule>,
    /// Audit entries younger than this are never pruned (at least
    /// [`keyward_core::audit::AUDIT_RETENTION_FLOOR_DAYS`]).
    pub audit_retention_min_days: u32,
    /// Hour and day usage rollups older than this many days are pruned (`None`: kept).
    pub rollup_retention_days: Option<u32>,
    /// Finished notification deliveries older than this many days are pruned.
    pub notification_log_retention_days: Option<u32>,
}

impl App {
    pub fn new(
        vault: Vault,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Randomness>,
        options: AppOptions,
    ) -> Result<Self, Error> {
        let keyring = Arc::new(keyward_crypto::LiveKeyring::new(vault.keyring));
        let (mut proxy, events) = Proxy::new(
            keyring.clone(),
            clock.clone(),
            random.clone(),
            ProxyConfig {
                expiry_grace: options.expiry_grace,
                max_snapshot_staleness: options
                    .max_snapshot_staleness
                    .unwrap_or(ProxyConfig::default().max_snapshot_staleness),
                public_url: options.public_url.clone(),
                ..ProxyConfig::default()
            },
            options.pricing,
        )?;
        // Names this process among the instances (its master-key reports, its budget holds
        // in Redis): fresh at every start, so a process that died is never mistaken for it.
        let mut id = [0u8; 8];
        random.fill(&mut id);
        let instance_id = id.iter().map(|b| format!("{b:02x}")).collect::<String>();
        if let Some(redis) = &options.redis {
            use secrecy::ExposeSecret;
            let lanes = proxy.lanes();
            let shared = keyward_proxy::shared::SharedLimits::new(
                redis.url.expose_secret(),
                redis.ca_pem.clone(),
                &redis.prefix,
                instance_id.clone(),
                redis.on_outage,
                lanes,
            )?;
            shared.share_cache(redis.cache_max_bytes);
            proxy = proxy.with_shared_limits(Arc::new(shared));
        }
        let started_at = clock.now();
        Ok(Self {
            audit: AuditLog::new(vault.store.clone(), vault.audit_keys, clock.clone()),
            passwords: crate::identity::passwords::Passwords::new(
                crate::identity::passwords::HASH_CONCURRENCY,
                &*random,
            )?,
            attempts: std::sync::Mutex::default(),
            throttle: keyward_core::throttle::ThrottlePolicy::default(),
            store: vault.store,
            keyring,
            key_file: vault.key_file.map(crate::key_file::WatchedKeyFile::new),
            hsm: vault.hsm,
            instance: (instance_id, started_at),
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
            forecast_lead: options.forecast_lead,
            backup_schedule: options.backup_schedule,
            audit_retention_min_days: options
                .audit_retention_min_days
                .max(keyward_core::audit::AUDIT_RETENTION_FLOOR_DAYS),
            rollup_retention_days: options.rollup_retention_days,
            notification_log_retention_days: options.notification_log_retention_days,
            secret_traits: crate::lifecycle::traits::TraitsCache::default(),
            mailer: options
                .smtp
                .as_ref()
                .map(crate::notifications::mail::Mailer::new)
                .transpose()?,
            builtin: builtin_services()?,
            watch: tokio::sync::Mutex::new(crate::alerts::watch::Watch::new()?),
            forecasts: crate::allowance::ForecastCache::default(),
            known_sightings: std::sync::Mutex::default(),
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
        let containments = self.store.containments().await?;
        // Keys, limits or budgets may have changed: forecasts are computed afresh.
        *self.forecasts.lock().await = None;
        let recoverable = self.recoverable_keys().await?;
        self.proxy.install(
            Snapshot::build(
                &catalog,
                tokens,
                keys,
                alternates,
                flags,
                &pools,
                &containments,
            )
            .with_recoverable(recoverable),
        );
        Ok(())
    }

    /// Every deleted key not yet purged (those are in their recovery window).
    async fn recoverable_keys(&self) -> Result<Vec<keyward_core::key::Key>, Error> {
        let filter = keyward_core::key::KeyFilter {
            status: Some(keyward_core::key::KeyStatus::Deleted),
            ..Default::default()
        };
        let now = self.now();
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = keyward_core::key::PageRequest::new(
                cursor,
                Some(keyward_core::key::PageRequest::MAX_LIMIT),
            )?;
            let found = self.store.list_keys(&filter, &page, now).await?;
            keys.extend(found.items);
            match found.next {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Rebuilds the snapshot if the store's change number moved since `last` (a change made
    /// through another instance, or `None`: resync in full), and either way confirms the
    /// snapshot current — an instance that cannot confirm it for long stops injecting keys.
    /// The number is read before the rebuild, so a change committed during it is caught by
    /// the next check.
    pub async fn refresh_proxy_if_changed(&self, last: &mut Option<i64>) -> Result<bool, Error> {
        let number = self.store.change_number().await?;
        if *last == Some(number) {
            self.proxy.confirm_current();
            return Ok(false);
        }
        // Another current master key (a rotation elsewhere) is followed before new data is
        // sealed here.
        self.follow_master_keys().await?;
        self.refresh_proxy().await?;
        *last = Some(number);
        Ok(true)
    }

    /// A listener told of every change committed by any instance, where the store has one.
    pub async fn change_listener(
        &self,
    ) -> Result<Option<Box<dyn keyward_core::ports::ChangeListener>>, Error> {
        self.store.change_listener().await
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

    /// Whether the store answers (`/readyz`), and which backend it is.
    pub async fn ready(&self) -> Result<&'static str, Error> {
        self.store.ping().await?;
        // Without its token an instance can neither seal nor open a data key it has not
        // cached: it is not ready, whatever the store says.
        if let Some(hsm) = &self.hsm {
            hsm.check()?;
        }
        Ok(self.store.backend())
    }

    /// Where the master keys are used: `token` (a PKCS#11 token) or `memory`.
    pub fn master_key_home(&self) -> &'static str {
        if self.hsm.is_some() {
            "token"
        } else {
            "memory"
        }
    }

    /// `sqlite` or `postgres`.
    pub fn store_backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Signs an audit checkpoint over the entries since the last one (periodically, and
    /// once at shutdown).
    pub async fn sign_checkpoint(
        &self,
    ) -> Result<Option<keyward_core::audit::AuditCheckpoint>, Error> {
        self.audit.checkpoint().await
    }

    /// The store's housekeeping (planner statistics, WAL checkpoints); run hourly.
    pub async fn maintain_store(&self) -> Result<(), Error> {
        self.store.maintain().await
    }

    /// Closes the store cleanly (SQLite checkpoints its WAL into the database file).
    pub async fn close(&self) {
        self.store.close().await;
    }
}

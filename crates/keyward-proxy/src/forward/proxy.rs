//! The data plane's state — the snapshot it decides with, the keyring, one pooled client
//! per lane, limits, health, cache and the sink finished calls go to — and what the rest of
//! Keyward asks of it (install a snapshot, read gauges, flags, quota and spending).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderMap, Method};
use keyward_core::guided_rotation::RotationTraffic;
use keyward_core::id::KeyId;
use keyward_core::usage::{KeyFlag, KeyFlagKind, PricingTable, Subject, UsageRecord};
use keyward_core::{Clock, Error};
use keyward_crypto::LiveKeyring;

use crate::cache::ResponseCache;
use crate::health::KeyHealth;
use crate::quota::Meters;
use crate::upstream::UpstreamClient;
use crate::{Snapshot, TokenRateLimits};

/// A request as it reached `/proxy/{service}/{path}`.
#[derive(Debug)]
pub struct Inbound<B> {
    pub method: Method,
    pub service: String,
    /// The path after `/proxy/{service}`, as sent (percent-encoded), starting with `/`.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: B,
    pub source: IpAddr,
    /// The serving lane (thread) the request arrived on: its upstream connections are that
    /// lane's own, so their I/O never wakes another thread. Taken modulo `lanes`.
    pub lane: usize,
}

/// Tunables of the data plane.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub connect_timeout: Duration,
    /// Longest silence between two reads from the upstream (not a total deadline: LLM
    /// streams may run for minutes).
    pub read_timeout: Duration,
    pub max_request_body: usize,
    /// Tries per request that is safe to repeat (idempotent), across the key pool.
    pub max_attempts: usize,
    /// First backoff step; doubles per attempt, with full jitter.
    pub retry_base: Duration,
    /// Longest wait before a retry; a `Retry-After` beyond it fails over to the next key
    /// (or returns the upstream's answer) instead of waiting.
    pub retry_wait_cap: Duration,
    /// How long a key counts as quota-limited after a throttle that names no time.
    pub quota_hold: Duration,
    /// Total size of the response cache.
    pub cache_max_bytes: u64,
    /// Largest answer the cache keeps.
    pub cache_max_entry_bytes: usize,
    /// How much of a 200 answer is read to look for a soft error (they are small).
    pub soft_error_peek_bytes: usize,
    /// Serving lanes, one upstream connection pool each (default: one per CPU).
    pub lanes: usize,
    /// How long past its `expires_at` a key is still injected (with a warning header and a
    /// metric); zero: an expired key is refused at once.
    pub expiry_grace: Duration,
    /// Where clients reach Keyward (`https://keyward.example`, maybe with a path prefix,
    /// no trailing `/`): links in answers are rewritten to `{public_url}/proxy/{service}/…`.
    /// `None`: `http://` and the request's `Host`.
    pub public_url: Option<String>,
    /// How long keys are still injected after the snapshot was last confirmed current; past
    /// it every call is refused `store_unavailable` (the view may hold revoked keys).
    pub max_snapshot_staleness: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
            max_request_body: 10 * 1024 * 1024,
            max_attempts: 3,
            retry_base: Duration::from_millis(200),
            retry_wait_cap: Duration::from_secs(5),
            quota_hold: Duration::from_secs(60),
            cache_max_bytes: 64 * 1024 * 1024,
            cache_max_entry_bytes: 1024 * 1024,
            soft_error_peek_bytes: 64 * 1024,
            lanes: std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            expiry_grace: Duration::ZERO,
            public_url: None,
            max_snapshot_staleness: Duration::from_secs(10),
        }
    }
}

/// What the proxy reports to the server's batch writer, off the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyEvent {
    Usage(Box<UsageRecord>),
    Flag(KeyFlag),
    FlagCleared(KeyId),
    /// What one request showed about a key's rotation (canary or fallback use).
    Rotation(KeyId, RotationTraffic),
}

/// Point-in-time figures about the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyGauges {
    /// Events dropped since start because the writer fell behind.
    pub dropped_events: u64,
    /// Events waiting for the writer.
    pub queued_events: usize,
    pub cache_entries: u64,
    pub cache_bytes: u64,
    /// Calls answered with a key past its expiry, inside the grace period.
    pub expired_key_uses: u64,
    /// LLM answers too large to read their usage: passed through, not metered.
    pub uninspected_bodies: u64,
    /// Since the snapshot was last confirmed current (`None`: never).
    pub snapshot_age: Option<Duration>,
    /// Whether calls are refused because it went unconfirmed too long.
    pub snapshot_stale: bool,
    /// Redis-backed limits: whether Redis answers, failed calls, live instances.
    pub shared_limits: Option<SharedGauges>,
}

/// How the Redis-backed limits are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedGauges {
    pub up: bool,
    pub errors: u64,
    pub live_instances: u64,
}

/// Bound of the event channel: when the writer falls this far behind, events are dropped
/// (and counted) rather than slowing requests down.
pub const EVENT_CHANNEL_CAPACITY: usize = 10_000;

/// Where finished calls go: the event channel, the meters, the prices.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(super) events: tokio::sync::mpsc::Sender<ProxyEvent>,
    pub(super) dropped: AtomicU64,
    pub(super) expired_key_uses: AtomicU64,
    pub(super) uninspected_bodies: AtomicU64,
    pub(crate) meters: Arc<Meters>,
    pub(super) pricing: PricingTable,
}

impl Sink {
    pub(crate) fn emit(&self, event: ProxyEvent) {
        if self.events.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The data plane: a snapshot to decide with, the keyring to unseal with, a pooled client,
/// and the in-memory state that must outlive snapshots (limits, flags, cache).
#[derive(Debug)]
pub struct Proxy {
    pub(super) snapshot: RwLock<Arc<Snapshot>>,
    pub(super) keyring: Arc<LiveKeyring>,
    /// One per serving lane (see `Inbound::lane`).
    pub(crate) clients: Vec<UpstreamClient>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(super) random: Arc<dyn keyward_core::Randomness>,
    pub(super) config: ProxyConfig,
    pub(super) rate_limits: TokenRateLimits,
    pub(crate) health: KeyHealth,
    pub(super) cache: ResponseCache,
    pub(crate) sink: Arc<Sink>,
    pub(super) currency: Currency,
    /// Limits, quotas and budgets shared with every instance through Redis, if configured.
    pub(super) shared: Option<Arc<crate::shared::SharedLimits>>,
}

/// When the snapshot was last known to match the store. Kept on the monotonic clock, not
/// the injected one: it measures how long this process has gone without hearing from the
/// store, which neither a wall-clock step nor a test moving business time by days should
/// open or close.
#[derive(Debug)]
pub(super) struct Currency {
    origin: std::time::Instant,
    /// Milliseconds after `origin` of the last confirmation; `u64::MAX`: never confirmed.
    confirmed_ms: AtomicU64,
}

impl Currency {
    fn new() -> Self {
        Self {
            origin: std::time::Instant::now(),
            confirmed_ms: AtomicU64::new(u64::MAX),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn confirm(&self) {
        self.confirmed_ms
            .store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// How long since the last confirmation; `None` if there never was one.
    fn age(&self) -> Option<Duration> {
        let confirmed = self.confirmed_ms.load(Ordering::Relaxed);
        (confirmed != u64::MAX)
            .then(|| Duration::from_millis(self.elapsed_ms().saturating_sub(confirmed)))
    }
}

impl Proxy {
    /// The proxy and the receiving end of its events (for the batch writer).
    pub fn new(
        keyring: Arc<LiveKeyring>,
        clock: Arc<dyn Clock>,
        random: Arc<dyn keyward_core::Randomness>,
        config: ProxyConfig,
        pricing: PricingTable,
    ) -> Result<(Self, tokio::sync::mpsc::Receiver<ProxyEvent>), Error> {
        let clients = (0..config.lanes.max(1))
            .map(|_| {
                UpstreamClient::new(
                    config.connect_timeout,
                    config.read_timeout,
                    Duration::from_secs(90),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (events, receiver) = tokio::sync::mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let proxy = Self {
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            keyring,
            clients,
            clock,
            random,
            rate_limits: TokenRateLimits::default(),
            health: KeyHealth::default(),
            cache: ResponseCache::new(config.cache_max_bytes, config.cache_max_entry_bytes),
            config,
            currency: Currency::new(),
            shared: None,
            sink: Arc::new(Sink {
                events,
                dropped: AtomicU64::new(0),
                expired_key_uses: AtomicU64::new(0),
                uninspected_bodies: AtomicU64::new(0),
                meters: Arc::new(Meters::default()),
                pricing,
            }),
        };
        Ok((proxy, receiver))
    }

    /// Shares rate limits, quotas and budgets with every instance through Redis.
    #[must_use]
    pub fn with_shared_limits(mut self, shared: Arc<crate::shared::SharedLimits>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Shares open circuits with every instance (a job, every second, with Redis): the ones
    /// open here are published, and a key another instance's circuit holds open is kept
    /// out here too, so a failing key stops taking traffic everywhere at once.
    pub async fn share_circuits(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let now = self.clock.now();
        let open: Vec<(String, i64)> = self
            .health
            .open_circuits(now)
            .into_iter()
            .map(|(key, until)| (key.to_string(), until.as_millisecond()))
            .collect();
        let Some(everywhere) = shared.exchange_circuits(&open).await else {
            return;
        };
        let snapshot = self.snapshot();
        for (key, until) in everywhere {
            let (Ok(id), Ok(until)) = (
                key.parse::<KeyId>(),
                jiff::Timestamp::from_millisecond(until),
            ) else {
                continue;
            };
            if until > now && snapshot.has_key(&id) {
                self.health.open_elsewhere(&id, until);
            }
        }
    }

    /// The Redis-backed limits, when configured (for their jobs, `/readyz` and `/metrics`).
    pub fn shared_limits(&self) -> Option<&Arc<crate::shared::SharedLimits>> {
        self.shared.as_ref()
    }

    /// Replaces the snapshot; requests already running keep the one they started with.
    pub fn install(&self, snapshot: Snapshot) {
        let live: std::collections::HashSet<_> = snapshot.token_ids().cloned().collect();
        self.rate_limits.retain(|id| live.contains(id));
        self.health.retain(|k| snapshot.has_key(k));
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        self.currency.confirm();
    }

    /// Records that the snapshot was just found to match the store (its change number did
    /// not move).
    pub fn confirm_current(&self) {
        self.currency.confirm();
    }

    /// How long since the snapshot was last confirmed current (`None`: never installed).
    pub fn snapshot_age(&self) -> Option<Duration> {
        self.currency.age()
    }

    /// Whether the snapshot went unconfirmed for longer than `max_snapshot_staleness`: the
    /// proxy refuses every call meanwhile.
    pub fn snapshot_stale(&self) -> bool {
        self.snapshot_age()
            .is_none_or(|age| age > self.config.max_snapshot_staleness)
    }

    /// The snapshot to decide a call with, or `store_unavailable` when it may be out of date:
    /// better no answer than one from a view that may still hold a revoked key or token.
    pub(super) fn current_snapshot(&self) -> Result<Arc<Snapshot>, Error> {
        if self.snapshot_stale() {
            return Err(Error::unavailable(
                "Keyward cannot confirm its view of the vault is current (the database is unreachable); calls are refused until it can",
            ));
        }
        Ok(self.snapshot())
    }

    /// Restores quota and budget counters from the store's hourly rollups (at start-up).
    pub fn seed_meters(&self, uses: Vec<keyward_core::usage::HourlyUse>) {
        self.sink.meters.seed(uses);
    }

    /// How many serving lanes the proxy has connection pools for.
    pub fn lanes(&self) -> usize {
        self.clients.len()
    }

    /// Events dropped because the writer fell behind.
    pub fn dropped_events(&self) -> u64 {
        self.sink.dropped.load(Ordering::Relaxed)
    }

    /// Point-in-time figures for the metrics endpoint.
    pub fn gauges(&self) -> ProxyGauges {
        ProxyGauges {
            dropped_events: self.dropped_events(),
            queued_events: self
                .sink
                .events
                .max_capacity()
                .saturating_sub(self.sink.events.capacity()),
            cache_entries: self.cache.entry_count(),
            cache_bytes: self.cache.weighted_size(),
            expired_key_uses: self.sink.expired_key_uses.load(Ordering::Relaxed),
            uninspected_bodies: self.sink.uninspected_bodies.load(Ordering::Relaxed),
            snapshot_age: self.snapshot_age(),
            snapshot_stale: self.snapshot_stale(),
            shared_limits: self.shared.as_ref().map(|s| SharedGauges {
                up: s.is_up(),
                errors: s.errors(),
                live_instances: s.live_instances(),
            }),
        }
    }

    /// Whether `id` names a service in the current snapshot (so it may be a metrics label:
    /// a name the client made up may not).
    pub fn knows_service(&self, id: &str) -> bool {
        self.snapshot().service(id).is_ok()
    }

    /// The flag in force for a key (as the proxy sees it now), for the API.
    pub fn key_flag(&self, key: &KeyId) -> Option<KeyFlag> {
        let snapshot = self.snapshot();
        let stored = snapshot.live_key(key).and_then(|k| k.flag.clone());
        self.health.flag(key, stored.as_ref(), self.clock.now())
    }

    /// Clears a key's flag here (the caller clears the stored one).
    pub fn clear_key_flag(&self, key: &KeyId) {
        self.health.clear(key, self.clock.now());
    }

    /// The share (0–1) of the key's tightest quota used in its current window, as this
    /// instance counts it; `None` for a key without limits or not in the snapshot.
    pub fn quota_used(&self, key: &KeyId) -> Option<f64> {
        let snapshot = self.snapshot();
        let live = snapshot.live_key(key)?;
        if live.key.limits.is_empty() {
            return None;
        }
        let calendar = &snapshot.service(&live.key.service_id).ok()?.quota_calendar;
        let free = self
            .sink
            .meters
            .headroom(key, &live.key.limits, calendar, self.clock.now());
        Some((1.0 - free).clamp(0.0, 1.0))
    }

    /// The price table calls are charged by.
    pub fn pricing(&self) -> &keyward_core::usage::PricingTable {
        &self.sink.pricing
    }

    /// Budget spent and reserved in the current period, in nano-dollars.
    pub fn spending(&self, subject: &Subject) -> Option<(u64, u64)> {
        self.sink.meters.spending(subject)
    }

    pub(super) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn raise(
        &self,
        key: &keyward_core::id::KeyId,
        kind: KeyFlagKind,
        reason: String,
        hold: Option<Duration>,
    ) {
        let now = self.clock.now();
        let flag = KeyFlag {
            key_id: key.clone(),
            kind,
            reason,
            since: now,
            until: hold.and_then(|h| now.checked_add(h).ok()),
        };
        tracing::warn!(key = %flag.key_id, kind = flag.kind.as_str(), reason = %flag.reason, "key flagged");
        self.health.raise(flag.clone());
        self.sink.emit(ProxyEvent::Flag(flag));
    }
}

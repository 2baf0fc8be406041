//! Limits shared by every instance, decided in Redis: app-token rate limits (GCRA on Redis's
//! clock), key quotas in their calendar windows and key rates, credit weights, and money
//! budgets with reserve-before / settle-after.
//!
//! One Lua script decides a whole call in one round trip: the token's rate and budget, then
//! the candidate keys in the pool's order — the first whose every limit and budget has room
//! is counted and its budget held, all or nothing. A call with nothing to count (no rate,
//! no budget, no key limits) never reaches Redis. Settlements (the real cost replacing the
//! hold, LLM tokens counted after the answer) are queued and sent in one batch by a job,
//! off the request path.
//!
//! Holds are kept per instance in the budget's hash (`r:<instance>`); every instance
//! announces itself in a sorted set every second, and a hold whose instance has not been
//! seen for [`DEAD_AFTER`] is dropped by the next script that reads the budget — so
//! reservations expire when an instance dies holding them. Counters are created from the
//! store's sums the instance restored (`SET … NX` / `HSETNX`): seeding never adds twice.
//!
//! When Redis cannot be reached (or answers garbage, or slowly), the outage is counted and
//! the instance stops calling it until the heartbeat gets an answer again: rate limits fall
//! back to this instance's share (the limit divided by the instances last seen alive), and
//! quotas and budgets refuse (`limits_unavailable`) or, with `limits_on_redis_outage =
//! "local"`, are counted here alone.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use jiff::Timestamp;
use keyward_core::app_token::{AppToken, Budget};
use keyward_core::id::KeyId;
use keyward_core::service::{Limit, LimitUnit, QuotaCalendar};
use keyward_core::usage::{CALENDAR_LIMIT_MIN_SECONDS, Subject, budget_window, limit_window};
use keyward_core::{Error, ErrorKind};
use redis::aio::ConnectionManager;

use crate::quota::{Meters, Spend};

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// An instance not seen for this long is dead: its budget holds are dropped.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
/// How long a call to Redis may take before it counts as an outage.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(250);

/// What quotas and budgets do while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutagePolicy {
    /// Refuse calls that a quota or budget would count (`503 limits_unavailable`).
    #[default]
    Closed,
    /// Count them on this instance alone (each instance may then spend the whole allowance).
    Local,
}

/// The connection to Redis and what this instance knows of it.
pub struct SharedLimits {
    client: redis::Client,
    /// One connection per serving lane (created on that lane, so its I/O stays there) and
    /// one for the jobs, on the main runtime (the last).
    connections: Vec<OnceLock<ConnectionManager>>,
    prefix: String,
    instance: String,
    policy: OutagePolicy,
    /// [`UNKNOWN`], [`UP`] or [`DOWN`].
    state: AtomicU8,
    errors: AtomicU64,
    /// Instances seen alive at the last heartbeat (at least 1).
    live: AtomicU64,
    pending: Mutex<Vec<Settlement>>,
    admit: redis::Script,
    settle: redis::Script,
    heartbeat: redis::Script,
    swap: redis::Script,
    circuits: redis::Script,
    cache_put: redis::Script,
    /// Bytes the shared response cache may hold (0: answers are cached per instance only).
    cache_max_bytes: AtomicU64,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("instance", &self.instance)
            .field("up", &self.is_up())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A settlement waiting for the next batch.
#[derive(Debug, Clone, PartialEq)]
enum Settlement {
    /// Replace a hold of `held` by `cost` actually spent (zero when the call failed).
    Budget { key: String, held: u64, cost: u64 },
    /// LLM tokens read from an answer, counted in a calendar window.
    CalendarTokens { key: String, tokens: u64 },
    /// LLM tokens counted against a rate (`interval` ms per token).
    RateTokens {
        key: String,
        tokens: u64,
        interval: f64,
        span_ms: u64,
    },
}

/// What a call holds in Redis until its answer is known: settled with the real cost and
/// tokens, or — dropped unsettled (the call failed) — released.
#[derive(Debug)]
pub struct SharedHold {
    limits: std::sync::Arc<SharedLimits>,
    budgets: Vec<(String, u64)>,
    token_counters: Vec<Settlement>,
}

impl SharedHold {
    /// The call's real cost replaces its holds; its LLM tokens are counted.
    pub fn settle(mut self, cost_nanos: u64, tokens: u64) {
        let mut batch = Vec::new();
        for (key, held) in std::mem::take(&mut self.budgets) {
            batch.push(Settlement::Budget {
                key,
                held,
                cost: cost_nanos,
            });
        }
        if tokens > 0 {
            for counter in std::mem::take(&mut self.token_counters) {
                batch.push(match counter {
                    Settlement::CalendarTokens { key, .. } => {
                        Settlement::CalendarTokens { key, tokens }
                    }
                    Settlement::RateTokens {
                        key,
                        interval,
                        span_ms,
                        ..
                    } => Settlement::RateTokens {
                        key,
                        tokens,
                        interval,
                        span_ms,
                    },
                    other => other,
                });
            }
        }
        self.limits.queue(batch);
    }
}

impl Drop for SharedHold {
    fn drop(&mut self) {
        let batch = std::mem::take(&mut self.budgets)
            .into_iter()
            .map(|(key, held)| Settlement::Budget { key, held, cost: 0 })
            .collect();
        self.limits.queue(batch);
    }
}

/// What a call holds until its answer is known, wherever it was decided.
#[derive(Debug)]
pub enum Hold {
    /// This instance's own budget reservation.
    Local(crate::quota::Reservation),
    /// Holds and counters in Redis.
    Shared(SharedHold),
}

impl Hold {
    /// Settles with the call's real cost (and, in Redis, its LLM tokens).
    pub fn settle(self, cost_nanos: u64, tokens: u64) {
        match self {
            Self::Local(reservation) => reservation.settle(cost_nanos),
            Self::Shared(hold) => hold.settle(cost_nanos, tokens),
        }
    }
}

/// The token's part of a call: its rate and budget (counted once per call, with the first
/// key choice).
#[derive(Debug, Clone, Copy)]
pub struct TokenPart<'a> {
    pub token: &'a AppToken,
}

/// A candidate key's terms.
#[derive(Debug, Clone, Copy)]
pub struct KeyPart<'a> {
    pub id: &'a KeyId,
    pub limits: &'a [Limit],
    pub budget: Option<Budget>,
}

/// What Redis decided.
#[derive(Debug)]
pub enum Decision {
    /// Admitted: the candidate chosen (an index into the keys given, if any were), what
    /// is held for the token (its budget) and for the key (its budget and token counters).
    Admitted {
        chosen: Option<usize>,
        token_hold: Option<SharedHold>,
        key_hold: Option<SharedHold>,
    },
    /// Refused with the reason of the first refusal.
    Refused(Error),
}

impl SharedLimits {
    /// A client for `url` (`redis://` or `rediss://`); connections are made lazily and
    /// again after every failure, so an unreachable Redis at start is an outage, not an
    /// error. `lanes` serving lanes get a connection each.
    pub fn new(
        url: &str,
        ca_pem: Option<Vec<u8>>,
        prefix: &str,
        instance: String,
        policy: OutagePolicy,
        lanes: usize,
    ) -> Result<Self, Error> {
        // The error would quote the URL, which may hold a password: not passed on.
        let invalid = |_| {
            Error::invalid(
                "invalid_redis_url",
                "redis_url must be redis://[user:password@]host[:port][/db] or rediss://… (TLS)",
            )
        };
        // `rediss://` checks the server's certificate against the system's roots, or
        // against `redis_ca_file` when one is given.
        let client = match ca_pem {
            Some(root) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            )
            .map_err(invalid)?,
            None => redis::Client::open(url).map_err(invalid)?,
        };
        Ok(Self {
            client,
            connections: (0..=lanes.max(1)).map(|_| OnceLock::new()).collect(),
            prefix: prefix.to_owned(),
            instance,
            policy,
            state: AtomicU8::new(UNKNOWN),
            errors: AtomicU64::new(0),
            live: AtomicU64::new(1),
            pending: Mutex::new(Vec::new()),
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
            heartbeat: redis::Script::new(HEARTBEAT),
            swap: redis::Script::new(SWAP),
            circuits: redis::Script::new(CIRCUITS),
            cache_put: redis::Script::new(CACHE_PUT),
            cache_max_bytes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Whether the last exchange with Redis succeeded.
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UP
    }

    /// Calls that failed, timed out or were answered with something unexpected.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Instances seen alive at the last heartbeat.
    pub fn live_instances(&self) -> u64 {
        self.live.load(Ordering::Relaxed).max(1)
    }

    pub fn policy(&self) -> OutagePolicy {
        self.policy
    }

    fn connection(&self, lane: usize) -> Result<ConnectionManager, redis::RedisError> {
        let slot = &self.connections[lane.min(self.connections.len() - 1)];
        if let Some(connection) = slot.get() {
            return Ok(connection.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(slot.get_or_init(|| made).clone())
    }

    fn failed(&self, e: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.state.swap(DOWN, Ordering::Relaxed) != DOWN {
            let quotas = match self.policy {
                OutagePolicy::Closed => "quotas and budgets refuse calls",
                OutagePolicy::Local => "quotas and budgets are counted on this instance alone",
            };
            tracing::error!(error = %e, "Redis cannot be reached: app-token rate limits fall back to this instance's share and {quotas} until it answers");
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        lane: usize,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut connection = self.connection(lane).map_err(|e| e.to_string())?;
        match tokio::time::timeout(
            RESPONSE_TIMEOUT * 2,
            invocation.invoke_async::<T>(&mut connection),
        )
        .await
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".to_owned()),
        }
    }

    /// Announces this instance, learns how many are alive, and — answered — ends an outage.
    /// Run every second by a job (on the main runtime).
    pub async fn heartbeat(&self) {
        let mut invocation = self.heartbeat.prepare_invoke();
        invocation
            .key(self.name("instances"))
            .arg(&self.instance)
            .arg(u64::try_from(DEAD_AFTER.as_millis()).unwrap_or(5000));
        match self
            .run::<i64>(self.connections.len() - 1, &invocation)
            .await
        {
            Ok(live) => {
                self.live
                    .store(u64::try_from(live).unwrap_or(1).max(1), Ordering::Relaxed);
                if self.state.swap(UP, Ordering::Relaxed) != UP {
                    tracing::info!(
                        live,
                        "Redis answers: limits, quotas and budgets are shared again"
                    );
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Sends the queued settlements in one batch (a job, every 100 ms). A batch Redis does
    /// not take is kept for the next try.
    pub async fn flush(&self) {
        let batch = std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if batch.is_empty() || !self.is_up() {
            self.requeue(batch);
            return;
        }
        let mut invocation = self.settle.prepare_invoke();
        invocation.arg(&self.instance);
        for item in &batch {
            match item {
                Settlement::Budget { key, held, cost } => {
                    invocation.key(key).arg("b").arg(*held).arg(*cost);
                }
                Settlement::CalendarTokens { key, tokens } => {
                    invocation.key(key).arg("c").arg(*tokens).arg(0);
                }
                Settlement::RateTokens {
                    key,
                    tokens,
                    interval,
                    span_ms,
                } => {
                    invocation
                        .key(key)
                        .arg("r")
                        .arg(*tokens)
                        .arg(format!("{interval}:{span_ms}"));
                }
            }
        }
        if let Err(e) = self
            .run::<i64>(self.connections.len() - 1, &invocation)
            .await
        {
            self.failed(&e);
            self.requeue(batch);
        }
    }

    /// The connection of the jobs and management calls (the main runtime's).
    fn main_lane(&self) -> usize {
        self.connections.len() - 1
    }

    /// A small value every instance shares (e.g. a sign-in failure count), by name under
    /// this vault's prefix. `None` when Redis cannot answer (the caller falls back).
    pub async fn value(&self, name: &str) -> Option<Option<String>> {
        if !self.is_up() {
            return None;
        }
        let mut connection = self.connection(self.main_lane()).ok()?;
        let mut command = redis::cmd("GET");
        command.arg(self.name(name));
        match tokio::time::timeout(
            RESPONSE_TIMEOUT * 2,
            command.query_async::<Option<String>>(&mut connection),
        )
        .await
        {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.failed(&e);
                None
            }
            Err(_) => {
                self.failed(&"no answer in time");
                None
            }
        }
    }

    /// Replaces a shared value if it is still `expected` (`None`: absent) — with `new`
    /// kept for `ttl`, or removed when `new` is `None`. `Some(false)`: another instance
    /// changed it first (read again and retry); `None`: Redis cannot answer.
    pub async fn swap_value(
        &self,
        name: &str,
        expected: Option<&str>,
        new: Option<&str>,
        ttl: Duration,
    ) -> Option<bool> {
        if !self.is_up() {
            return None;
        }
        let mut invocation = self.swap.prepare_invoke();
        invocation
            .key(self.name(name))
            .arg(expected.unwrap_or(""))
            .arg(new.unwrap_or(""))
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        match self.run::<i64>(self.main_lane(), &invocation).await {
            Ok(swapped) => Some(swapped == 1),
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// Every shared value whose name starts with `prefix` (names without this vault's
    /// prefix); `None` when Redis cannot answer.
    pub async fn values(&self, prefix: &str) -> Option<Vec<(String, String)>> {
        if !self.is_up() {
            return None;
        }
        let mut connection = self.connection(self.main_lane()).ok()?;
        let pattern = format!("{}*", self.name(prefix));
        let mut cursor = 0u64;
        let mut names: Vec<String> = Vec::new();
        loop {
            let mut command = redis::cmd("SCAN");
            command
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500);
            let page = tokio::time::timeout(
                RESPONSE_TIMEOUT * 2,
                command.query_async::<(u64, Vec<String>)>(&mut connection),
            )
            .await;
            match page {
                Ok(Ok((next, found))) => {
                    names.extend(found);
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    self.failed(&e);
                    return None;
                }
                Err(_) => {
                    self.failed(&"no answer in time");
                    return None;
                }
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let short = name.strip_prefix(&self.prefix).unwrap_or(&name).to_owned();
            if let Some(Some(value)) = self.value(&short).await {
                out.push((short, value));
            }
        }
        Some(out)
    }

    /// Publishes the circuits open here (key id → open until, Unix ms) and returns every
    /// circuit open on any instance, in one round trip (a job, every second).
    pub async fn exchange_circuits(&self, open: &[(String, i64)]) -> Option<Vec<(String, i64)>> {
        if !self.is_up() {
            return None;
        }
        let mut invocation = self.circuits.prepare_invoke();
        invocation.key(self.name("circuits"));
        for (key, until) in open {
            invocation.arg(key).arg(*until);
        }
        match self.run::<Vec<String>>(self.main_lane(), &invocation).await {
            Ok(flat) => Some(
                flat.chunks_exact(2)
                    .filter_map(|pair| Some((pair[0].clone(), pair[1].parse().ok()?)))
                    .collect(),
            ),
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// Shares cached answers through Redis too, holding at most `max_bytes` (0: off).
    pub fn share_cache(&self, max_bytes: u64) {
        self.cache_max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// Whether cached answers are shared.
    pub fn caches(&self) -> bool {
        self.cache_max_bytes.load(Ordering::Relaxed) > 0 && self.is_up()
    }

    /// A cached answer another instance stored (bytes as [`crate::cache::CachedResponse`]
    /// encodes them); `None` on a miss or when Redis cannot answer.
    pub async fn cached(&self, lane: usize, key: &str) -> Option<Vec<u8>> {
        if !self.caches() {
            return None;
        }
        let mut connection = self.connection(lane).ok()?;
        let mut command = redis::cmd("GET");
        command.arg(self.name(&format!("cache:{key}")));
        match tokio::time::timeout(
            RESPONSE_TIMEOUT * 2,
            command.query_async::<Option<Vec<u8>>>(&mut connection),
        )
        .await
        {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                self.failed(&e);
                None
            }
            Err(_) => {
                self.failed(&"no answer in time");
                None
            }
        }
    }

    /// Stores a cached answer for every instance for `ttl`, evicting the entries closest to
    /// their end while the shared cache would exceed its size.
    pub async fn store_cached(&self, lane: usize, key: &str, bytes: Vec<u8>, ttl: Duration) {
        let max = self.cache_max_bytes.load(Ordering::Relaxed);
        if max == 0 || !self.is_up() || bytes.len() as u64 > max {
            return;
        }
        let mut invocation = self.cache_put.prepare_invoke();
        invocation
            .key(self.name(&format!("cache:{key}")))
            .key(self.name("cache-index"))
            .arg(bytes)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg(max);
        if let Err(e) = self.run::<i64>(lane, &invocation).await {
            self.failed(&e);
        }
    }

    fn requeue(&self, mut batch: Vec<Settlement>) {
        if batch.is_empty() {
            return;
        }
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: a long outage keeps the newest settlements (holds expire anyway).
        batch.append(&mut pending);
        batch.truncate(100_000);
        *pending = batch;
    }

    fn queue(&self, batch: Vec<Settlement>) {
        if !batch.is_empty() {
            self.pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(batch);
        }
    }

    fn name(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Counts one request against the token's rate only (a cached answer: nothing else is
    /// spent). `None` when Redis cannot decide (the caller falls back).
    pub async fn rate_only(
        self: &std::sync::Arc<Self>,
        lane: usize,
        token: &AppToken,
    ) -> Option<Result<(), Error>> {
        match self
            .decide(
                lane,
                Some(TokenPart { token }),
                &[],
                Spend::default(),
                0,
                None,
            )
            .await?
        {
            Decision::Admitted { .. } => Some(Ok(())),
            Decision::Refused(e) => Some(Err(e)),
        }
    }

    /// Decides a call in one round trip: the token's rate and budget (when `token` is
    /// given), then the first of `keys` whose limits and budget have room. `None` when
    /// Redis cannot decide (an outage: the caller falls back).
    pub async fn decide(
        self: &std::sync::Arc<Self>,
        lane: usize,
        token: Option<TokenPart<'_>>,
        keys: &[KeyPart<'_>],
        spend: Spend,
        max_cost: u64,
        seeds: Option<(&Meters, &QuotaCalendar, Timestamp)>,
    ) -> Option<Decision> {
        if !self.is_up() {
            return None;
        }
        let mut invocation = self.admit.prepare_invoke();
        invocation
            .key(self.name("instances"))
            .arg(&self.instance)
            .arg(u64::try_from(DEAD_AFTER.as_millis()).unwrap_or(5000));
        let mut budget_keys: Vec<Option<String>> = Vec::new();
        let now = seeds.map_or_else(Timestamp::now, |(_, _, now)| now);
        let mut token_budget_key = None;
        match token {
            Some(TokenPart { token }) => {
                match token.rate_limit {
                    Some(rate) => {
                        invocation
                            .arg(1)
                            .arg(rate.requests.max(1))
                            .arg(u64::from(rate.per_seconds) * 1000)
                            .key(self.name(&format!("rate:{}", token.id)));
                    }
                    None => {
                        invocation.arg(0);
                    }
                }
                match token.budget {
                    Some(budget) => {
                        let subject = Subject::Token(token.id.clone());
                        let key = self.budget_key(&subject, &budget, now);
                        self.push_budget(
                            &mut invocation,
                            &key,
                            &subject,
                            &budget,
                            max_cost,
                            seeds,
                            now,
                        );
                        token_budget_key = Some(key);
                    }
                    None => {
                        invocation.arg(0);
                    }
                }
            }
            None => {
                invocation.arg(0).arg(0);
            }
        }
        invocation.arg(keys.len());
        let mut token_counters: Vec<Vec<Settlement>> = Vec::with_capacity(keys.len());
        for key in keys {
            let mut counters = Vec::new();
            invocation.arg(key.limits.len());
            for limit in key.limits {
                let amount = match limit.unit {
                    LimitUnit::Requests | LimitUnit::Symbols => spend.requests,
                    LimitUnit::Credits => spend.credits,
                    LimitUnit::Tokens => 0,
                };
                let tokens = u8::from(limit.unit == LimitUnit::Tokens);
                if limit.window_seconds >= CALENDAR_LIMIT_MIN_SECONDS {
                    let calendar = seeds.map(|(_, c, _)| c);
                    let window = calendar.map_or_else(
                        || keyward_core::usage::utc_day(now),
                        |c| limit_window(limit, c, now),
                    );
                    let name = self.name(&format!(
                        "quota:{}:{}:{}:{}",
                        key.id,
                        limit.unit.as_str(),
                        limit.window_seconds,
                        window.start.as_millisecond()
                    ));
                    let seed = seeds.map_or(0, |(meters, _, _)| {
                        meters.restored_use(&Subject::Key(key.id.clone()), window, limit.unit)
                    });
                    invocation
                        .arg("c")
                        .arg(limit.max)
                        .arg(0)
                        .arg(amount)
                        .arg(tokens)
                        .arg(seed)
                        .arg(window.end.as_millisecond() + 60_000)
                        .key(&name);
                    if tokens == 1 {
                        counters.push(Settlement::CalendarTokens {
                            key: name,
                            tokens: 0,
                        });
                    }
                } else {
                    let span_ms = limit.window_seconds.max(1) * 1000;
                    let name = self.name(&format!(
                        "keyrate:{}:{}:{}",
                        key.id,
                        limit.unit.as_str(),
                        limit.window_seconds
                    ));
                    invocation
                        .arg("r")
                        .arg(limit.max.max(1))
                        .arg(span_ms)
                        .arg(amount)
                        .arg(tokens)
                        .arg(0)
                        .arg(0)
                        .key(&name);
                    if tokens == 1 {
                        #[expect(clippy::cast_precision_loss, reason = "limits are far below 2^52")]
                        let interval = span_ms as f64 / limit.max.max(1) as f64;
                        counters.push(Settlement::RateTokens {
                            key: name,
                            tokens: 0,
                            interval,
                            span_ms,
                        });
                    }
                }
            }
            match key.budget {
                Some(budget) => {
                    let subject = Subject::Key(key.id.clone());
                    let name = self.budget_key(&subject, &budget, now);
                    self.push_budget(
                        &mut invocation,
                        &name,
                        &subject,
                        &budget,
                        max_cost,
                        seeds,
                        now,
                    );
                    budget_keys.push(Some(name));
                }
                None => {
                    invocation.arg(0);
                    budget_keys.push(None);
                }
            }
            token_counters.push(counters);
        }
        let answer: Vec<redis::Value> = match self.run(lane, &invocation).await {
            Ok(answer) => answer,
            Err(e) => {
                self.failed(&e);
                return None;
            }
        };
        match read_answer(&answer) {
            Some(Answer::Admitted(index)) => {
                let chosen = index.checked_sub(1);
                let token_hold = token_budget_key
                    .filter(|_| max_cost > 0)
                    .map(|key| SharedHold {
                        limits: self.clone(),
                        budgets: vec![(key, max_cost)],
                        token_counters: Vec::new(),
                    });
                let key_hold = chosen.map(|i| SharedHold {
                    limits: self.clone(),
                    budgets: budget_keys
                        .get(i)
                        .cloned()
                        .flatten()
                        .filter(|_| max_cost > 0)
                        .map(|name| (name, max_cost))
                        .into_iter()
                        .collect(),
                    token_counters: token_counters
                        .get_mut(i)
                        .map(std::mem::take)
                        .unwrap_or_default(),
                });
                Some(Decision::Admitted {
                    chosen,
                    token_hold,
                    key_hold,
                })
            }
            Some(Answer::Refused { code, wait_ms, key }) => {
                let wait = Duration::from_millis(wait_ms).max(Duration::from_secs(1));
                let whose = key
                    .checked_sub(1)
                    .and_then(|i| keys.get(i))
                    .map_or_else(String::new, |k| format!("key {}", k.id));
                Some(Decision::Refused(match code.as_str() {
                    "rate_limited" => Error::limited(
                        "rate_limited",
                        token.map_or_else(String::new, |t| {
                            let rate = t.token.rate_limit.unwrap_or(keyward_core::app_token::RateLimit {
                                requests: 0,
                                per_seconds: 0,
                            });
                            format!(
                                "app token {} is limited to {} requests per {} s (across every instance)",
                                t.token.id, rate.requests, rate.per_seconds
                            )
                        }),
                        wait,
                    ),
                    "token_budget" => Error::limited(
                        "budget_exceeded",
                        token.map_or_else(String::new, |t| {
                            format!("app token {} has reached its budget for this period", t.token.id)
                        }),
                        wait,
                    ),
                    "key_budget" => Error::limited(
                        "budget_exceeded",
                        format!("{whose} has reached its budget for this period"),
                        wait,
                    ),
                    _ => Error::limited(
                        "quota_exhausted",
                        format!("{whose} has used its provider quota; try again later"),
                        wait,
                    ),
                }))
            }
            None => {
                self.failed(&"an answer Keyward's script does not give");
                None
            }
        }
    }

    fn budget_key(&self, subject: &Subject, budget: &Budget, now: Timestamp) -> String {
        let window = budget_window(budget, now);
        let who = match subject {
            Subject::Key(id) => id.to_string(),
            Subject::Token(id) => id.to_string(),
        };
        self.name(&format!("budget:{who}:{}", window.start.as_millisecond()))
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one budget's part of the script's arguments"
    )]
    fn push_budget(
        &self,
        invocation: &mut redis::ScriptInvocation<'_>,
        name: &str,
        subject: &Subject,
        budget: &Budget,
        max_cost: u64,
        seeds: Option<(&Meters, &QuotaCalendar, Timestamp)>,
        now: Timestamp,
    ) {
        let window = budget_window(budget, now);
        let seed = seeds.map_or(0, |(meters, _, _)| meters.restored_cost(subject, window));
        invocation
            .arg(1)
            .arg(budget.limit_micros.saturating_mul(1000))
            .arg(seed)
            .arg(max_cost)
            .arg(window.end.as_millisecond() + 86_400_000)
            .key(name);
    }
}

/// The script's answer, read.
enum Answer {
    /// `{1, index}`: index 1-based into the keys, 0 when none were given.
    Admitted(usize),
    /// `{0, code, wait ms, key index}`.
    Refused {
        code: String,
        wait_ms: u64,
        key: usize,
    },
}

fn read_answer(values: &[redis::Value]) -> Option<Answer> {
    let int = |v: &redis::Value| match v {
        redis::Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    match values {
        [first, index] if int(first) == Some(1) => {
            Some(Answer::Admitted(usize::try_from(int(index)?).ok()?))
        }
        [first, code, wait, key] if int(first) == Some(0) => {
            let code = match code {
                redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
                redis::Value::SimpleString(text) => text.clone(),
                _ => return None,
            };
            Some(Answer::Refused {
                code,
                wait_ms: int(wait)?,
                key: usize::try_from(int(key)?).ok()?,
            })
        }
        _ => None,
    }
}

/// Decides a call (see the module doc). KEYS[1] is the set of instances; every other key is
/// named in the order its arguments come. Time is Redis's own.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ai, ki = 0, 1
local function arg() ai = ai + 1; return ARGV[ai] end
local function num() return tonumber(arg()) end
local function nextkey() ki = ki + 1; return KEYS[ki] end
local instances = KEYS[1]
local instance = arg()
local dead_after = num()

-- Spent plus the holds of every live instance; a dead instance's holds are dropped.
local function budget_used(key, seed, expire_at)
  redis.call('HSETNX', key, 'spent', seed)
  redis.call('PEXPIREAT', key, expire_at)
  local fields = redis.call('HGETALL', key)
  local used = 0
  for i = 1, #fields, 2 do
    local f, v = fields[i], tonumber(fields[i + 1]) or 0
    if f == 'spent' then
      used = used + v
    elseif string.sub(f, 1, 2) == 'r:' then
      local owner = string.sub(f, 3)
      local seen = redis.call('ZSCORE', instances, owner)
      if owner ~= instance and ((not seen) or tonumber(seen) < now - dead_after) then
        redis.call('HDEL', key, f)
      else
        used = used + v
      end
    end
  end
  return used
end

-- GCRA: `interval` ms per unit, at most `span` ms of units outstanding.
local function gcra(key, interval, span, amount, room_only)
  local stored = redis.call('GET', key)
  local tat = (stored and tonumber(stored)) or now
  if tat < now then tat = now end
  if room_only then
    local over = tat - now - (span - interval)
    if over > 0 then return false, tat, over end
    return true, tat, 0
  end
  local new_tat = tat + amount * interval
  local over = new_tat - now - span
  if over > 0 then return false, tat, over end
  return true, new_tat, 0
end

local writes = {}
if num() == 1 then
  local requests, per = num(), num()
  local key = nextkey()
  local ok, tat, wait = gcra(key, per / requests, per, 1, false)
  if not ok then return {0, 'rate_limited', math.ceil(wait), 0} end
  table.insert(writes, {'tat', key, tat, per})
end
if num() == 1 then
  local limit, seed, cost, expire = num(), num(), num(), num()
  local key = nextkey()
  if budget_used(key, seed, expire) + cost > limit then
    return {0, 'token_budget', math.max(expire - 86400000 - now, 1000), 0}
  end
  if cost > 0 then table.insert(writes, {'hold', key, cost}) end
end
local count = num()
local chosen = 0
local first = nil
for c = 1, count do
  local mine = {}
  local ok = true
  for _ = 1, num() do
    local kind, max, span, amount, tokens, seed, expire = arg(), num(), num(), num(), num(), num(), num()
    local key = nextkey()
    if ok then
      if kind == 'c' then
        redis.call('SET', key, seed, 'NX', 'PXAT', expire)
        local used = tonumber(redis.call('GET', key)) or 0
        local over
        if tokens == 1 then over = used >= max else over = used + amount > max end
        if over then
          ok = false
          first = first or {'quota_exhausted', expire - 60000 - now, c}
        elseif amount > 0 then
          table.insert(mine, {'incr', key, amount})
        end
      else
        local good, tat, wait = gcra(key, span / max, span, amount, tokens == 1)
        if not good then
          ok = false
          first = first or {'quota_exhausted', wait, c}
        elseif tokens ~= 1 and amount > 0 then
          table.insert(mine, {'tat', key, tat, span})
        end
      end
    end
  end
  if num() == 1 then
    local limit, seed, cost, expire = num(), num(), num(), num()
    local key = nextkey()
    if ok then
      if budget_used(key, seed, expire) + cost > limit then
        ok = false
        first = first or {'key_budget', expire - 86400000 - now, c}
      elseif cost > 0 then
        table.insert(mine, {'hold', key, cost})
      end
    end
  end
  if ok then
    chosen = c
    for _, w in ipairs(mine) do table.insert(writes, w) end
    break
  end
end
if count > 0 and chosen == 0 then
  return {0, first[1], math.max(math.ceil(first[2]), 0), first[3]}
end
for _, w in ipairs(writes) do
  if w[1] == 'tat' then
    redis.call('SET', w[2], tostring(w[3]), 'PX', math.ceil(w[4]) * 2 + 1000)
  elseif w[1] == 'incr' then
    redis.call('INCRBY', w[2], w[3])
  else
    redis.call('HINCRBY', w[2], 'r:' .. instance, w[3])
  end
end
return {1, chosen}
";

/// Applies a batch of settlements: per key, a kind (`b` budget, `c` calendar tokens, `r`
/// rate tokens) and two numbers.
const SETTLE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local instance = ARGV[1]
for i = 1, #KEYS do
  local key, kind, a, b = KEYS[i], ARGV[3 * i - 1], tonumber(ARGV[3 * i]), ARGV[3 * i + 1]
  if kind == 'b' then
    if redis.call('EXISTS', key) == 1 then
      local left = redis.call('HINCRBY', key, 'r:' .. instance, -a)
      if left <= 0 then redis.call('HDEL', key, 'r:' .. instance) end
      redis.call('HINCRBY', key, 'spent', tonumber(b))
    end
  elseif kind == 'c' then
    if redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, a) end
  else
    local sep = string.find(b, ':')
    local interval, span = tonumber(string.sub(b, 1, sep - 1)), tonumber(string.sub(b, sep + 1))
    local stored = redis.call('GET', key)
    local tat = (stored and tonumber(stored)) or now
    if tat < now then tat = now end
    redis.call('SET', key, tostring(tat + a * interval), 'PX', span * 2 + 1000)
  end
end
return #KEYS
";

/// Open circuits shared by instances: one hash of key id → open until (Unix ms). ARGV holds
/// this instance's open circuits (a later end wins); the answer is every circuit still
/// open by Redis's clock, ended ones dropped.
const CIRCUITS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') or 0
  if tonumber(ARGV[i + 1]) > current then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
local all = redis.call('HGETALL', KEYS[1])
local open = {}
for i = 1, #all, 2 do
  if (tonumber(all[i + 1]) or 0) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(open, all[i])
    table.insert(open, all[i + 1])
  end
end
return open
";

/// Stores one cached answer: KEYS[1] the entry (ARGV[1], kept ARGV[2] ms), KEYS[2] the index
/// (entry → expiry, ms), with each entry's size in `KEYS[2]:sizes` and their sum in
/// `KEYS[2]:total`. Expired entries are dropped first; then, while the total would exceed
/// ARGV[3] bytes, the entry closest to its end.
const CACHE_PUT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sizes = KEYS[2] .. ':sizes'
local total_key = KEYS[2] .. ':total'
local function forget(name)
  local size = tonumber(redis.call('HGET', sizes, name) or '0') or 0
  redis.call('HDEL', sizes, name)
  redis.call('ZREM', KEYS[2], name)
  redis.call('DEL', name)
  redis.call('DECRBY', total_key, size)
end
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do forget(name) end
if redis.call('ZSCORE', KEYS[2], KEYS[1]) then forget(KEYS[1]) end
local size = string.len(ARGV[1])
local max = tonumber(ARGV[3])
while (tonumber(redis.call('GET', total_key) or '0') or 0) + size > max do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #oldest == 0 then break end
  forget(oldest[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), KEYS[1])
redis.call('HSET', sizes, KEYS[1], size)
redis.call('INCRBY', total_key, size)
return size
";

/// Compare-and-set of one value: KEYS[1] replaced by ARGV[2] (kept ARGV[3] ms; empty:
/// removed) only if it is still ARGV[1] (empty: absent).
const SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
";

/// Records this instance as alive (Redis's time), forgets long-gone ones, and counts the
/// live.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, now - 3600000)
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[2]), '+inf')
";

/// Whether a call needs Redis at all: a rate or budget on the token, a limit or budget on
/// any candidate key.
pub fn needs_shared(token: Option<&AppToken>, keys: &[KeyPart<'_>]) -> bool {
    token.is_some_and(|t| t.rate_limit.is_some() || t.budget.is_some())
        || keys
            .iter()
            .any(|k| !k.limits.is_empty() || k.budget.is_some())
}

/// The refusal while quotas and budgets cannot be decided (`limits_on_redis_outage =
/// "closed"`).
pub fn unavailable() -> Error {
    Error {
        retry_after: Some(Duration::from_secs(5)),
        ..Error::new(
            ErrorKind::Unavailable,
            "limits_unavailable",
            "quotas and budgets are shared through Redis, which cannot be reached; calls they would count are refused until it answers",
        )
    }
}

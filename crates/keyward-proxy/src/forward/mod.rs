//! Forwarding one request: find the app token where the provider's SDK put its key, check
//! it against the snapshot, apply limits, budgets and the cache, build the upstream URL from
//! the service definition only, strip hop-by-hop headers and every client credential,
//! inject the real key, stream both bodies through — and meter what the call consumed.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use keyward_core::guided_rotation::RotationTraffic;
use keyward_core::id::KeyId;
use keyward_core::key::{KeyVersion, SealContext};
use keyward_core::service::SoftErrorKind;
use keyward_core::usage::{
    CacheOutcome, KeyFlag, KeyFlagKind, Outcome, PricingTable, Subject, TokenUsage, UsageRecord,
};
use keyward_core::{Clock, Error, ErrorKind};
use keyward_crypto::Keyring;
use secrecy::SecretString;

use crate::cache::{CachedResponse, ResponseCache, client_allows, storable};
use crate::health::KeyHealth;
use crate::meter::{LlmRequest, UsageReader, inspect_request};
use crate::quota::{Meters, Reservation, Spend};
use crate::redact::{redact_bytes, redact_stream};
use crate::upstream::{BoxError, ProxyBody, SendError, UpstreamClient, full_body, stream_body};
use crate::{Alternate, LiveKey, Route, Snapshot, TokenRateLimits};

mod rewrite;

pub use rewrite::{ENVIRONMENT_HEADER, TOKEN_HEADER};
use rewrite::{bad_request, check_path, client_query, find_token, strip_hop_by_hop};
pub(crate) use rewrite::{upstream_headers, upstream_url};

/// `hit` or `miss` on answers to cacheable requests.
pub const CACHE_HEADER: &str = "x-keyward-cache";
/// Set when Keyward injected a key past its expiry, inside the configured grace period.
pub const WARNING_HEADER: &str = "x-keyward-warning";

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

/// Which of a key's values one try injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueRole {
    Current,
    /// A guided rotation's pending value, for a canary share of requests.
    Canary,
    /// The value before the rotation, during the dual-key window.
    Previous,
}

/// The value a try injects: the `second` after the provider rejected the first, if the key
/// has one. `canary` says whether this request drew the canary (pending value first).
fn value_to_try(key: &LiveKey, second: bool, canary: bool) -> Option<(&KeyVersion, ValueRole)> {
    match (&key.alternate, second) {
        (Some(Alternate::Canary { version, .. }), false) if canary => {
            Some((version, ValueRole::Canary))
        }
        (Some(Alternate::Canary { .. }), true) if canary => {
            Some((&key.current, ValueRole::Current))
        }
        (Some(Alternate::Fallback(previous)), true) => Some((previous, ValueRole::Previous)),
        (_, false) => Some((&key.current, ValueRole::Current)),
        (_, true) => None,
    }
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
}

/// Bound of the event channel: when the writer falls this far behind, events are dropped
/// (and counted) rather than slowing requests down.
pub const EVENT_CHANNEL_CAPACITY: usize = 10_000;

/// Where finished calls go: the event channel, the meters, the prices.
#[derive(Debug)]
pub(crate) struct Sink {
    events: tokio::sync::mpsc::Sender<ProxyEvent>,
    dropped: AtomicU64,
    expired_key_uses: AtomicU64,
    pub(crate) meters: Arc<Meters>,
    pricing: PricingTable,
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
    snapshot: RwLock<Arc<Snapshot>>,
    keyring: Arc<Keyring>,
    /// One per serving lane (see `Inbound::lane`).
    pub(crate) clients: Vec<UpstreamClient>,
    pub(crate) clock: Arc<dyn Clock>,
    random: Arc<dyn keyward_core::Randomness>,
    config: ProxyConfig,
    rate_limits: TokenRateLimits,
    pub(crate) health: KeyHealth,
    cache: ResponseCache,
    pub(crate) sink: Arc<Sink>,
}

/// One call in progress: the usage record being filled in, and what it holds.
#[derive(Debug)]
struct Exchange {
    record: UsageRecord,
    started: Instant,
    reservations: Vec<Reservation>,
    reader: Option<UsageReader>,
    /// The key used had expired at this time (injected inside the grace period).
    expired_at: Option<jiff::Timestamp>,
}

impl Exchange {
    fn new<B>(inbound: &Inbound<B>, now: jiff::Timestamp) -> Self {
        let endpoint: String = inbound.path.chars().take(200).collect();
        Self {
            record: UsageRecord {
                at: now,
                token_id: None,
                key_id: None,
                service_id: keyward_core::label::printable(&inbound.service)
                    .chars()
                    .take(64)
                    .collect(),
                environment: None,
                method: inbound.method.as_str().chars().take(16).collect(),
                endpoint,
                status: 0,
                outcome: Outcome::Refused,
                error_code: None,
                latency_ms: 0,
                request_bytes: 0,
                response_bytes: 0,
                cache: CacheOutcome::None,
                retries: 0,
                model: None,
                tokens: TokenUsage::default(),
                credits: 0,
                cost_nanos: 0,
            },
            started: Instant::now(),
            reservations: Vec::new(),
            reader: None,
            expired_at: None,
        }
    }

    fn mark_latency(&mut self) {
        self.record.latency_ms =
            u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX);
    }
}

/// Finishes an exchange when the response body ends or is dropped (an abandoned stream
/// still records what was seen): reads the usage, prices it, settles budgets, charges
/// token limits, and sends the record.
#[derive(Debug)]
struct Finisher {
    exchange: Option<Exchange>,
    sink: Arc<Sink>,
}

impl Finisher {
    fn feed(&mut self, chunk: Bytes) -> Bytes {
        let Some(exchange) = self.exchange.as_mut() else {
            return chunk;
        };
        let out = match exchange.reader.as_mut() {
            Some(reader) => reader.feed(chunk),
            None => chunk,
        };
        exchange.record.response_bytes += out.len() as u64;
        out
    }

    fn flush(&mut self) -> Bytes {
        let Some(exchange) = self.exchange.as_mut() else {
            return Bytes::new();
        };
        let rest = exchange
            .reader
            .as_mut()
            .map(UsageReader::flush)
            .unwrap_or_default();
        exchange.record.response_bytes += rest.len() as u64;
        rest
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        let Some(mut exchange) = self.exchange.take() else {
            return;
        };
        if let Some(mut reader) = exchange.reader.take() {
            reader.finish();
            if let Some(model) = reader.model.take() {
                exchange.record.model = Some(model);
            }
            if let Some(tokens) = reader.tokens {
                exchange.record.tokens = tokens;
                let price = exchange
                    .record
                    .model
                    .as_deref()
                    .and_then(|m| self.sink.pricing.price(&exchange.record.service_id, m));
                exchange.record.cost_nanos = price.map_or(0, |p| p.cost_nanos(&tokens));
                if let Some(key) = &exchange.record.key_id {
                    self.sink.meters.charge_tokens(key, tokens.total());
                }
            }
        }
        for reservation in exchange.reservations.drain(..) {
            // The token's budget and the key's budget are each charged the call's cost.
            reservation.settle(exchange.record.cost_nanos);
        }
        self.sink.emit(ProxyEvent::Usage(Box::new(exchange.record)));
    }
}

/// What `handle` decided to answer with; the exchange's record is finished by the caller.
enum Delivery {
    Cached(Arc<CachedResponse>),
    Upstream {
        upstream: Upstream,
        secret: SecretString,
        cache_key: Option<String>,
        ttl: Option<u32>,
    },
}

/// What to do with an upstream answer.
enum Verdict {
    Deliver,
    /// Try again (after `wait`) with the next usable key.
    Retry(Duration),
}

impl Proxy {
    /// The proxy and the receiving end of its events (for the batch writer).
    pub fn new(
        keyring: Arc<Keyring>,
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
            sink: Arc::new(Sink {
                events,
                dropped: AtomicU64::new(0),
                expired_key_uses: AtomicU64::new(0),
                meters: Arc::new(Meters::default()),
                pricing,
            }),
        };
        Ok((proxy, receiver))
    }

    /// Replaces the snapshot; requests already running keep the one they started with.
    pub fn install(&self, snapshot: Snapshot) {
        let live: std::collections::HashSet<_> = snapshot.token_ids().cloned().collect();
        self.rate_limits.retain(|id| live.contains(id));
        self.health.retain(|k| snapshot.has_key(k));
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
    }

    /// Restores quota and budget counters from the store's hourly sums (at start-up).
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

    /// Budget spent and reserved in the current period, in nano-dollars.
    pub fn spending(&self, subject: &Subject) -> Option<(u64, u64)> {
        self.sink.meters.spending(subject)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn raise(&self, key: &LiveKey, kind: KeyFlagKind, reason: String, hold: Option<Duration>) {
        let now = self.clock.now();
        let flag = KeyFlag {
            key_id: key.key.id.clone(),
            kind,
            reason,
            since: now,
            until: hold.and_then(|h| now.checked_add(h).ok()),
        };
        tracing::warn!(key = %flag.key_id, kind = flag.kind.as_str(), reason = %flag.reason, "key flagged");
        self.health.raise(flag.clone());
        self.sink.emit(ProxyEvent::Flag(flag));
    }

    /// Forwards one request. Errors are Keyward's own (token, scope, limits, upstream
    /// unreachable); any answer from the upstream, error or not, is passed through. Every
    /// call, refused or not, yields a usage record.
    pub async fn forward<S, E>(&self, inbound: Inbound<S>) -> Result<Response<ProxyBody>, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let mut exchange = Exchange::new(&inbound, self.clock.now());
        match self.handle(inbound, &mut exchange).await {
            Ok(Delivery::Cached(hit)) => Ok(self.answer_from_cache(&hit, exchange)),
            Ok(Delivery::Upstream {
                upstream,
                secret,
                cache_key,
                ttl,
            }) => {
                self.deliver(upstream, &secret, exchange, cache_key, ttl)
                    .await
            }
            Err(error) => {
                exchange.mark_latency();
                exchange.record.outcome = match error.kind {
                    ErrorKind::UpstreamFailed | ErrorKind::UpstreamTimeout => Outcome::Failed,
                    _ => Outcome::Refused,
                };
                exchange.record.error_code = Some(error.code.to_owned());
                // The status Keyward answers with is the HTTP layer's business; the record
                // keeps the stable error code (and status 0: no upstream answer).
                exchange.reservations.clear();
                self.sink.emit(ProxyEvent::Usage(Box::new(exchange.record)));
                Err(error)
            }
        }
    }

    async fn handle<S, E>(
        &self,
        inbound: Inbound<S>,
        exchange: &mut Exchange,
    ) -> Result<Delivery, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let now = exchange.record.at;
        let client = &self.clients[inbound.lane % self.clients.len()];
        let snapshot = self.snapshot();
        let service = snapshot.service(&inbound.service)?;
        let presented = find_token(service, &inbound.headers, inbound.query.as_deref())
            .ok_or_else(|| Error::new(ErrorKind::Unauthenticated, "missing_token", format!(
                "send your Keyward app token where the {} SDK sends its key, or in X-Keyward-Token", service.name
            )))?;
        let token = snapshot.authenticate(&presented, now, inbound.source)?;
        exchange.record.token_id = Some(token.id.clone());
        let environment =
            match inbound.headers.get(ENVIRONMENT_HEADER) {
                Some(value) => Some(value.to_str().map_err(|_| {
                    bad_request("invalid_header", "X-Keyward-Environment is not text")
                })?),
                None => None,
            };
        let route = snapshot.route(
            token,
            &inbound.service,
            environment,
            now,
            self.config.expiry_grace,
        )?;
        exchange.record.environment = Some(route.environment.clone());
        self.rate_limits.check(&route.token)?;
        if let Some(length) = content_length(&inbound.headers)?
            && length > self.config.max_request_body as u64
        {
            return Err(too_large(self.config.max_request_body));
        }
        check_path(&inbound.path)?;
        let query = client_query(route.service, inbound.query.as_deref());

        // The cache answers before any budget or quota is spent.
        let cache_ttl = (inbound.method == Method::GET)
            .then(|| route.service.cache_ttl(&inbound.path, &query))
            .flatten();
        let (may_read, may_store) = client_allows(&inbound.headers);
        let cache_key = cache_ttl.map(|_| {
            ResponseCache::key(&route.service.id, &route.environment, &inbound.path, &query)
        });
        if let Some(key) = &cache_key {
            exchange.record.cache = CacheOutcome::Miss;
            if may_read && let Some(hit) = self.cache.get(key, now) {
                exchange.record.cache = CacheOutcome::Hit;
                return Ok(Delivery::Cached(hit));
            }
        }

        let limit = self.config.max_request_body;
        let llm = route
            .service
            .usage
            .filter(|_| inbound.method == Method::POST);
        // A request that is safe to repeat is buffered (within the size limit) so a retry or
        // a failover can send it again, and so is an LLM request (to read its model and
        // output allowance) and any request to a pool with a key in rotation (a value the
        // provider rejects is followed by the key's other one); anything else streams
        // through exactly once.
        let repeatable = is_idempotent(&inbound.method);
        let rotating = route.candidates.iter().any(|k| k.alternate.is_some());
        let mut body = if repeatable || llm.is_some() || rotating {
            Outgoing::Buffered(collect_limited(inbound.body, limit).await?)
        } else {
            Outgoing::Streaming(Some(stream_body(limited(inbound.body, limit))))
        };
        let mut request = LlmRequest::default();
        if let Outgoing::Buffered(bytes) = &mut body {
            exchange.record.request_bytes = bytes.len() as u64;
            if let Some(format) = llm {
                let (seen, rewritten) = inspect_request(format, &inbound.path, bytes);
                if let Some(rewritten) = rewritten {
                    *bytes = rewritten;
                }
                request = seen;
                exchange.record.model = request.model.clone();
            }
        } else if let Some(length) = content_length(&inbound.headers)? {
            exchange.record.request_bytes = length;
        }

        // Budgets: the most this call can cost is reserved before it is sent.
        let max_cost = llm.map_or(0, |_| {
            self.max_cost(&route, &request, exchange.record.request_bytes)
        });
        if let Some(budget) = route.token.budget {
            let reservation = self.sink.meters.reserve(
                &[(Subject::Token(route.token.id.clone()), budget)],
                max_cost,
                now,
            )?;
            exchange.reservations.push(reservation);
        }
        let spend = Spend {
            requests: 1,
            credits: u64::from(route.service.credits(&inbound.path, &query)),
        };
        let ordered = self.order(&route, now);
        let mut cursor = 0;
        let (mut key, mut key_reservation) =
            self.pick(&ordered, &mut cursor, &route, spend, max_cost)?;

        let attempts = if repeatable {
            self.config.max_attempts.max(1)
        } else {
            1
        };
        let mut attempt = 0;
        let mut canary = self.draws_canary(&key);
        // Whether this try is the key's second value, after the provider rejected the first.
        let mut second = false;
        loop {
            if !second {
                attempt += 1;
            }
            let last = attempt >= attempts;
            exchange.record.key_id = Some(key.key.id.clone());
            exchange.record.credits = exchange
                .record
                .credits
                .saturating_add(u32::try_from(spend.credits).unwrap_or(u32::MAX));
            exchange.record.retries = u32::try_from(attempt - 1).unwrap_or(u32::MAX);
            let (version, role) = value_to_try(&key, second, canary)
                .ok_or_else(|| Error::internal("a key ran out of values to try"))?;
            let secret = self.keyring.unseal(
                &version.sealed,
                &SealContext::key_secret(&key.key.id, version.version),
            )?;
            let url = upstream_url(route.service, &inbound.path, &query, &secret)?;
            let mut headers = upstream_headers(route.service, &inbound.headers, &secret)?;
            let request_body = match &mut body {
                Outgoing::Buffered(bytes) => {
                    // The length of what is sent (the body may have been rewritten).
                    headers.remove(header::CONTENT_LENGTH);
                    full_body(bytes.clone())
                }
                Outgoing::Streaming(stream) => stream.take().ok_or_else(|| {
                    Error::internal("a streamed request body cannot be sent twice")
                })?,
            };
            let mut outgoing = http::Request::new(request_body);
            *outgoing.method_mut() = inbound.method.clone();
            *outgoing.uri_mut() = http::Uri::try_from(url.as_str())
                .map_err(|_| bad_request("invalid_path", "the path is not valid in a URL"))?;
            *outgoing.headers_mut() = headers;
            let attempt_started = Instant::now();
            let sent = client.send(outgoing).await;
            let attempt_ms =
                u64::try_from(attempt_started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    self.health
                        .record_call(&key.key.id, true, attempt_ms, self.clock.now());
                    let error = upstream_error(&e, limit, &route.service.name);
                    if last || error.kind == ErrorKind::TooLarge {
                        return Err(error);
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                    (key, key_reservation) =
                        match self.pick(&ordered, &mut cursor, &route, spend, max_cost) {
                            Ok(next) => next,
                            Err(_) => return Err(error),
                        };
                    canary = self.draws_canary(&key);
                    second = false;
                    continue;
                }
            };
            exchange.mark_latency();
            let status = response.0.status;
            self.health.record_call(
                &key.key.id,
                status.is_server_error(),
                attempt_ms,
                self.clock.now(),
            );
            if (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
                && !second
                && value_to_try(&key, true, canary).is_some()
            {
                // The provider refused the rotation's new value (a canary, or the freshly
                // promoted one): the key's other value gets the same request, and the key
                // is not flagged — one of its values works.
                let now = self.clock.now();
                let traffic = match role {
                    ValueRole::Canary => RotationTraffic {
                        canary_rejected: 1,
                        new_rejected_at: Some(now),
                        ..RotationTraffic::default()
                    },
                    _ => RotationTraffic {
                        new_rejected_at: Some(now),
                        ..RotationTraffic::default()
                    },
                };
                self.sink
                    .emit(ProxyEvent::Rotation(key.key.id.clone(), traffic));
                second = true;
                continue;
            }
            let mut upstream = Upstream::new(response);
            let verdict = self
                .judge(&mut upstream, &key, &route, last, ordered.len(), attempt)
                .await;
            if let Verdict::Retry(wait) = verdict
                && let Ok(next) = {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    self.pick(&ordered, &mut cursor, &route, spend, max_cost)
                }
            {
                (key, key_reservation) = next;
                canary = self.draws_canary(&key);
                second = false;
                continue;
            }
            // A key the provider accepts again is no longer flagged as rejected.
            if status.is_success()
                && !upstream.soft_error
                && self
                    .health
                    .flag(&key.key.id, key.flag.as_ref(), self.clock.now())
                    .is_some_and(|f| f.kind == KeyFlagKind::Rejected)
            {
                self.health.clear(&key.key.id, self.clock.now());
                self.sink.emit(ProxyEvent::FlagCleared(key.key.id.clone()));
            }
            if status.is_success() && role != ValueRole::Current {
                let traffic = if role == ValueRole::Canary {
                    RotationTraffic {
                        canary_served: 1,
                        ..RotationTraffic::default()
                    }
                } else {
                    RotationTraffic {
                        fallback_served: 1,
                        ..RotationTraffic::default()
                    }
                };
                self.sink
                    .emit(ProxyEvent::Rotation(key.key.id.clone(), traffic));
            }
            exchange.record.status = status.as_u16();
            exchange.record.outcome = if upstream.soft_error {
                Outcome::SoftError
            } else if status.is_success() || status.is_redirection() {
                Outcome::Success
            } else {
                Outcome::UpstreamError
            };
            if let Some(reservation) = key_reservation.take() {
                exchange.reservations.push(reservation);
            }
            exchange.expired_at = key.key.expires_at.filter(|at| *at <= now);
            if let Some(format) = llm {
                let sse = upstream
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/event-stream"));
                exchange.reader = Some(UsageReader::new(format, sse, request.strip_usage_chunk));
            }
            let store_in_cache = cache_key.filter(|_| {
                may_store
                    && status == StatusCode::OK
                    && !upstream.soft_error
                    && storable(&upstream.headers)
            });
            return Ok(Delivery::Upstream {
                upstream,
                secret,
                cache_key: store_in_cache,
                ttl: cache_ttl,
            });
        }
    }

    /// The most a call can cost: its model's price (or the service's dearest, for a model
    /// Keyward has no price for) for every input byte as a token and the full output
    /// allowance.
    fn max_cost(&self, route: &Route<'_>, request: &LlmRequest, input_bytes: u64) -> u64 {
        let pricing = &self.sink.pricing;
        request
            .model
            .as_deref()
            .and_then(|m| pricing.price(&route.service.id, m))
            .or_else(|| pricing.dearest(&route.service.id))
            .map_or(0, |p| p.max_cost_nanos(input_bytes, request.max_output))
    }

    /// The pool in the order to try: healthy keys by the pool's strategy, then keys the
    /// provider rejected (the flag may be stale); quota-limited keys are left out.
    fn order(&self, route: &Route<'_>, now: jiff::Timestamp) -> Vec<Arc<LiveKey>> {
        use keyward_core::usage::PoolStrategy;
        let meters = &self.sink.meters;
        let mut healthy = Vec::with_capacity(route.candidates.len());
        let mut rejected = Vec::new();
        for key in &route.candidates {
            // An open circuit keeps traffic away until its trial is due.
            if !self.health.admits(&key.key.id, now) {
                continue;
            }
            match self
                .health
                .flag(&key.key.id, key.flag.as_ref(), now)
                .map(|f| f.kind)
            {
                None => healthy.push(key.clone()),
                Some(KeyFlagKind::Rejected) => rejected.push(key.clone()),
                Some(KeyFlagKind::QuotaLimited) => {}
            }
        }
        match route.strategy {
            PoolStrategy::RoundRobin => {}
            PoolStrategy::LeastUsed => {
                healthy.sort_by_key(|k| meters.used_today(&k.key.id, now));
            }
            PoolStrategy::QuotaAware => {
                let calendar = &route.service.quota_calendar;
                let mut scored: Vec<(f64, Arc<LiveKey>)> = healthy
                    .drain(..)
                    .map(|k| (meters.headroom(&k.key.id, &k.key.limits, calendar, now), k))
                    .collect();
                scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                healthy = scored.into_iter().map(|(_, k)| k).collect();
            }
        }
        healthy.extend(rejected);
        healthy
    }

    /// The next key (from `cursor`, wrapping) whose limits and budget admit the call; the
    /// refusal of the first key tried if none does.
    fn pick(
        &self,
        ordered: &[Arc<LiveKey>],
        cursor: &mut usize,
        route: &Route<'_>,
        spend: Spend,
        max_cost: u64,
    ) -> Result<(Arc<LiveKey>, Option<Reservation>), Error> {
        let now = self.clock.now();
        if ordered.is_empty() {
            let open: Vec<jiff::Timestamp> = route
                .candidates
                .iter()
                .filter_map(|k| self.health.passive(&k.key.id, now).2)
                .filter(|until| *until > now)
                .collect();
            if let Some(until) = open.iter().min() {
                return Err(Error {
                    retry_after: Some(
                        keyward_core::usage::until(now, *until).max(Duration::from_secs(1)),
                    ),
                    ..Error::new(
                        ErrorKind::Unavailable,
                        "circuit_open",
                        format!(
                            "every usable {} key for {} failed repeatedly; Keyward tries again shortly",
                            route.service.name, route.environment
                        ),
                    )
                });
            }
            let until = route
                .candidates
                .iter()
                .filter_map(|k| self.health.flag(&k.key.id, k.flag.as_ref(), now))
                .filter_map(|f| f.until)
                .min();
            let wait = until.map_or(self.config.quota_hold, |u| {
                keyward_core::usage::until(now, u)
            });
            return Err(Error::limited(
                "quota_exhausted",
                format!(
                    "every {} key for {} is quota-limited; try again later",
                    route.service.name, route.environment
                ),
                wait.max(Duration::from_secs(1)),
            ));
        }
        let mut first_refusal = None;
        for _ in 0..ordered.len() {
            let key = &ordered[*cursor % ordered.len()];
            *cursor += 1;
            let taken = self.sink.meters.take(
                &key.key.id,
                &key.key.limits,
                &route.service.quota_calendar,
                spend,
                now,
            );
            let reserved = taken.and_then(|()| match key.key.budget {
                Some(budget) => self
                    .sink
                    .meters
                    .reserve(&[(Subject::Key(key.key.id.clone()), budget)], max_cost, now)
                    .map(Some),
                None => Ok(None),
            });
            match reserved {
                Ok(reservation) => return Ok((key.clone(), reservation)),
                Err(e) => {
                    first_refusal.get_or_insert(e);
                }
            }
        }
        Err(first_refusal.unwrap_or_else(|| Error::internal("no key was tried")))
    }

    /// Looks at an upstream answer: flags the key when the provider rejected or throttled
    /// it, and says whether to try again.
    async fn judge(
        &self,
        upstream: &mut Upstream,
        key: &LiveKey,
        route: &Route<'_>,
        last: bool,
        pool_size: usize,
        attempt: usize,
    ) -> Verdict {
        let status = upstream.status;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            self.raise(
                key,
                KeyFlagKind::Rejected,
                format!("the provider answered HTTP {}", status.as_u16()),
                None,
            );
            return if !last && pool_size > 1 {
                Verdict::Retry(Duration::ZERO)
            } else {
                Verdict::Deliver
            };
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let told = retry_after(&upstream.headers);
            let wait = told.unwrap_or_else(|| self.backoff(attempt));
            if status == StatusCode::TOO_MANY_REQUESTS
                && told.is_none_or(|w| w > self.config.retry_wait_cap)
            {
                let hold = told.unwrap_or(self.config.quota_hold);
                self.raise(
                    key,
                    KeyFlagKind::QuotaLimited,
                    "the provider answered HTTP 429".into(),
                    Some(hold),
                );
            }
            if last {
                return Verdict::Deliver;
            }
            if wait <= self.config.retry_wait_cap {
                return Verdict::Retry(wait);
            }
            return if pool_size > 1 {
                Verdict::Retry(Duration::ZERO)
            } else {
                Verdict::Deliver
            };
        }
        if status == StatusCode::OK && !route.service.soft_errors.is_empty() {
            upstream.peek(self.config.soft_error_peek_bytes).await;
            if let Some(kind) = upstream
                .complete_json()
                .and_then(|body| route.service.soft_error(&body))
            {
                upstream.soft_error = true;
                if kind == SoftErrorKind::Throttled {
                    self.raise(
                        key,
                        KeyFlagKind::QuotaLimited,
                        "the provider answered HTTP 200 with a throttling notice".into(),
                        Some(self.config.quota_hold),
                    );
                    if !last && pool_size > 1 {
                        return Verdict::Retry(Duration::ZERO);
                    }
                }
            }
        }
        Verdict::Deliver
    }

    /// Builds the client's response: the upstream's status and headers (hop-by-hop removed),
    /// the body with the key masked, metered, and — for a cacheable answer — stored.
    async fn deliver(
        &self,
        mut upstream: Upstream,
        secret: &SecretString,
        exchange: Exchange,
        cache_key: Option<String>,
        ttl: Option<u32>,
    ) -> Result<Response<ProxyBody>, Error> {
        let mut headers = std::mem::take(&mut upstream.headers);
        strip_hop_by_hop(&mut headers);
        let status = upstream.status;
        let cached_marker = exchange.record.cache;
        if exchange
            .reader
            .as_ref()
            .is_some_and(UsageReader::alters_body)
        {
            headers.remove(header::CONTENT_LENGTH);
        }
        if let (Some(key), Some(ttl)) = (cache_key, ttl) {
            upstream.peek(self.cache.max_entry_bytes() + 1).await;
            if let Some(body) = upstream.complete_body() {
                let masked = redact_bytes(&body, secret);
                let now = self.clock.now();
                self.cache.insert(
                    key,
                    CachedResponse {
                        status,
                        headers: headers.clone(),
                        body: masked,
                        stored_at: now,
                        expires_at: now
                            .checked_add(Duration::from_secs(u64::from(ttl)))
                            .unwrap_or(now),
                    },
                );
            }
        }
        if cached_marker != CacheOutcome::None {
            headers.insert(CACHE_HEADER, HeaderValue::from_static("miss"));
        }
        if let Some(expired) = exchange.expired_at {
            self.sink.expired_key_uses.fetch_add(1, Ordering::Relaxed);
            if let Ok(value) = HeaderValue::from_str(&format!(
                "key_expired; expired_at={expired}; injected during the grace period, replace the key"
            )) {
                headers.insert(WARNING_HEADER, value);
            }
        }
        let mut finisher = Finisher {
            exchange: Some(exchange),
            sink: self.sink.clone(),
        };
        let head = upstream.head.take();
        let rest = upstream.rest.take();
        let source = futures_util::stream::iter(head.map(Ok))
            .chain(futures_util::stream::iter(rest).flatten());
        let masked = redact_stream(source, secret);
        let metered = masked
            .map(Some)
            .chain(futures_util::stream::once(async { None }))
            .filter_map(move |item| {
                let out = match item {
                    Some(Ok(chunk)) => Some(Ok(finisher.feed(chunk))),
                    Some(Err(e)) => Some(Err(e)),
                    None => Some(Ok(finisher.flush())),
                };
                std::future::ready(out.filter(|r: &Result<Bytes, BoxError>| {
                    r.as_ref().map_or(true, |b| !b.is_empty())
                }))
            });
        let mut out = Response::builder().status(status);
        if let Some(h) = out.headers_mut() {
            *h = headers;
        }
        out.body(stream_body(metered))
            .map_err(|e| Error::internal(format!("cannot build the response: {e}")))
    }

    fn answer_from_cache(
        &self,
        hit: &CachedResponse,
        mut exchange: Exchange,
    ) -> Response<ProxyBody> {
        let now = exchange.record.at;
        exchange.mark_latency();
        exchange.record.status = hit.status.as_u16();
        exchange.record.outcome = Outcome::Success;
        exchange.record.response_bytes = hit.body.len() as u64;
        self.sink.emit(ProxyEvent::Usage(Box::new(exchange.record)));
        let mut headers = hit.headers.clone();
        headers.insert(CACHE_HEADER, HeaderValue::from_static("hit"));
        let age = keyward_core::usage::until(hit.stored_at, now).as_secs();
        if let Ok(age) = HeaderValue::from_str(&age.to_string()) {
            headers.insert(header::AGE, age);
        }
        let mut out = Response::new(full_body(hit.body.clone()));
        *out.status_mut() = hit.status;
        *out.headers_mut() = headers;
        out
    }

    /// Whether a request tries `key`'s canary value first: `percent`% of them do.
    fn draws_canary(&self, key: &LiveKey) -> bool {
        let Some(Alternate::Canary { percent, .. }) = &key.alternate else {
            return false;
        };
        let mut bytes = [0u8; 4];
        self.random.fill(&mut bytes);
        u32::from_le_bytes(bytes) % 100 < u32::from(*percent)
    }

    /// Exponential backoff with full jitter: a random wait up to `base × 2^(attempt-1)`,
    /// capped.
    fn backoff(&self, attempt: usize) -> Duration {
        let exponent = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(16);
        let ceiling = self
            .config
            .retry_base
            .saturating_mul(1 << exponent)
            .min(self.config.retry_wait_cap);
        let mut bytes = [0u8; 8];
        self.random.fill(&mut bytes);
        let fraction = f64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            / f64::from(u32::MAX);
        ceiling.mul_f64(fraction)
    }
}

type UpstreamStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// An upstream answer whose first bytes may have been read ahead (to look for a soft error
/// or to cache it) without losing them.
struct Upstream {
    status: StatusCode,
    headers: HeaderMap,
    head: Option<Bytes>,
    rest: Option<UpstreamStream>,
    /// Whether `head` is the whole body.
    complete: bool,
    soft_error: bool,
}

impl Upstream {
    fn new((parts, body): (http::response::Parts, crate::upstream::IdleTimeoutBody)) -> Self {
        Self {
            status: parts.status,
            headers: parts.headers,
            head: None,
            rest: Some(Box::pin(body)),
            complete: false,
            soft_error: false,
        }
    }

    /// Reads up to `limit` bytes ahead (not more, unless a chunk is larger), unless the
    /// declared length already exceeds it.
    async fn peek(&mut self, limit: usize) {
        if self.complete
            || content_length(&self.headers)
                .ok()
                .flatten()
                .is_some_and(|n| n > limit as u64)
        {
            return;
        }
        let Some(rest) = self.rest.as_mut() else {
            return;
        };
        let mut buffer = bytes::BytesMut::from(self.head.take().unwrap_or_default().as_ref());
        while buffer.len() <= limit {
            match rest.next().await {
                Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                Some(Err(_)) => break,
                None => {
                    self.complete = true;
                    self.rest = None;
                    break;
                }
            }
        }
        self.head = Some(buffer.freeze());
    }

    fn complete_body(&self) -> Option<Bytes> {
        self.complete.then(|| self.head.clone().unwrap_or_default())
    }

    fn complete_json(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        match serde_json::from_slice(&self.complete_body()?) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => None,
        }
    }
}

/// The request body as it will be sent: kept for retries, or a one-shot stream.
enum Outgoing {
    Buffered(Bytes),
    Streaming(Option<ProxyBody>),
}

/// Methods RFC 9110 defines as idempotent: repeating them is safe.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// `retry-after-ms` (OpenAI) or `retry-after` in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| number("retry-after").map(Duration::from_secs_f64))
}

/// A body stream that fails once it has carried more than `limit` bytes.
fn limited<S, E>(
    body: S,
    limit: usize,
) -> impl Stream<Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let mut seen = 0usize;
    body.map(move |chunk| {
        let chunk = chunk.map_err(Into::into)?;
        seen += chunk.len();
        if seen > limit {
            return Err(Box::new(BodyTooLarge) as Box<dyn std::error::Error + Send + Sync>);
        }
        Ok(chunk)
    })
}

/// Reads a whole body (for requests that may be sent more than once), within `limit`.
async fn collect_limited<S, E>(body: S, limit: usize) -> Result<Bytes, Error>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let mut body = std::pin::pin!(limited(body, limit));
    let mut buffer = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => buffer.extend_from_slice(&chunk),
            Err(e) if e.is::<BodyTooLarge>() => return Err(too_large(limit)),
            Err(_) => {
                return Err(bad_request(
                    "body_unreadable",
                    "the request body could not be read",
                ));
            }
        }
    }
    Ok(buffer.freeze())
}

#[derive(Debug)]
struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body too large")
    }
}

impl std::error::Error for BodyTooLarge {}

fn too_large(limit: usize) -> Error {
    Error::new(
        ErrorKind::TooLarge,
        "body_too_large",
        format!("the request body is larger than {limit} bytes"),
    )
}

fn upstream_error(e: &SendError, limit: usize, service: &str) -> Error {
    if let SendError::Failed(e) = e
        && crate::upstream::has_source(e.as_ref(), |s| s.is::<BodyTooLarge>())
    {
        return too_large(limit);
    }
    if matches!(e, SendError::Timeout) {
        Error::new(
            ErrorKind::UpstreamTimeout,
            "upstream_timeout",
            format!("{service} did not answer in time"),
        )
    } else {
        Error::new(
            ErrorKind::UpstreamFailed,
            "upstream_unavailable",
            format!("{service} could not be reached"),
        )
    }
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| bad_request("invalid_header", "Content-Length is not a number"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_and_idempotency() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(
            retry_after(&headers),
            Some(Duration::from_millis(250)),
            "OpenAI's millisecond header wins"
        );
        headers.insert("retry-after-ms", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
        assert!(
            is_idempotent(&Method::GET)
                && is_idempotent(&Method::PUT)
                && is_idempotent(&Method::DELETE)
        );
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}

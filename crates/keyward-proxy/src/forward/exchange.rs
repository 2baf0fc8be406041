//! The exchange: one call's usage record from the first check to the last byte, the
//! upstream answer read ahead where it must be (soft errors, caching) without losing bytes,
//! the response delivered — hop-by-hop headers dropped, the key masked, metered, cached —
//! and the record finished (priced, budgets settled, sent) when the body ends or is dropped.
//! Also the size limits on both bodies.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use keyward_core::usage::{CacheOutcome, Outcome, TokenUsage, UsageRecord};
use keyward_core::{Error, ErrorKind};
use secrecy::SecretString;

use super::proxy::{Inbound, Proxy, ProxyEvent, Sink};
use super::rewrite::{bad_request, strip_hop_by_hop};
use crate::cache::CachedResponse;
use crate::links::{LinkRewriter, rewrite_stream};
use crate::meter::UsageReader;
use crate::redact::{redact_bytes, redact_stream};
use crate::upstream::{BoxError, ProxyBody, SendError, full_body, stream_body};
use keyward_core::service::ServiceDefinition;

/// `hit` or `miss` on answers to cacheable requests.
pub const CACHE_HEADER: &str = "x-keyward-cache";
/// Set when Keyward injected a key past its expiry, inside the configured grace period.
pub const WARNING_HEADER: &str = "x-keyward-warning";

/// One call in progress: the usage record being filled in, and what it holds.
#[derive(Debug)]
pub(super) struct Exchange {
    pub(super) record: UsageRecord,
    /// The serving lane the call arrived on (its own Redis connection).
    pub(super) lane: usize,
    pub(super) started: Instant,
    pub(super) reservations: Vec<crate::shared::Hold>,
    pub(super) reader: Option<UsageReader>,
    /// The key used had expired at this time (injected inside the grace period).
    pub(super) expired_at: Option<jiff::Timestamp>,
    /// The request's `Host`: where the client reaches Keyward, unless `public_url` is set.
    pub(super) host: Option<HeaderValue>,
    /// Turns links to the provider into links through Keyward, when the answer may hold
    /// some (see [`Exchange::plan_links`]).
    pub(super) links: Option<LinkRewriter>,
    /// Whether the answer's body is rewritten too (not only its headers).
    pub(super) links_in_body: bool,
}

impl Exchange {
    pub(super) fn new<B>(inbound: &Inbound<B>, now: jiff::Timestamp) -> Self {
        let endpoint: String = inbound.path.chars().take(200).collect();
        Self {
            lane: inbound.lane,
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
                answer: None,
                unpriced: false,
                source: Some(inbound.source),
                saved_credits: 0,
            },
            started: Instant::now(),
            reservations: Vec::new(),
            reader: None,
            expired_at: None,
            host: None,
            links: None,
            links_in_body: false,
        }
    }

    /// Prepares link rewriting for an answer with these headers, only when it may hold
    /// links: a `Link`/`Location` header (any service), or a JSON or text body from a
    /// service the catalog says links to itself (`link_origins`: Polygon's `next_url`).
    /// Scanning every body of every service cost about a tenth of the proxy's CPU per
    /// request (measured with `benches/proxy.rs`), for providers that never send links.
    pub(super) fn plan_links(
        &mut self,
        service: &ServiceDefinition,
        headers: &HeaderMap,
        public_url: Option<&str>,
    ) {
        let in_headers = [header::LINK, header::LOCATION, header::CONTENT_LOCATION]
            .iter()
            .any(|name| headers.contains_key(name));
        self.links_in_body = !service.link_origins.is_empty() && has_links_to_rewrite(headers);
        if in_headers || self.links_in_body {
            let public = match public_url {
                Some(url) => url.to_owned(),
                None => crate::links::origin_of_host(self.host.as_ref()),
            };
            self.links = LinkRewriter::new(
                std::iter::once(service.base_url.as_str())
                    .chain(service.link_origins.iter().map(String::as_str)),
                &format!("{public}/proxy/{}", service.id),
            );
        }
    }

    pub(super) fn mark_latency(&mut self) {
        self.record.latency_ms =
            u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX);
    }
}

/// Finishes an exchange when the response body ends or is dropped (an abandoned stream
/// still records what was seen): reads the usage, prices it, settles budgets, charges
/// token limits, and sends the record.
#[derive(Debug)]
pub(super) struct Finisher {
    pub(super) exchange: Option<Exchange>,
    pub(super) sink: Arc<Sink>,
}

impl Finisher {
    pub(super) fn feed(&mut self, chunk: Bytes) -> Bytes {
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

    pub(super) fn flush(&mut self) -> Bytes {
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
            if reader.overflowed() {
                self.sink.uninspected_bodies.fetch_add(1, Ordering::Relaxed);
            }
            // A stream that began as a success and then carried the provider's error
            // (Anthropic's `event: error`) counts as what the error meant, in health and
            // metrics; it is already on its way to the client, unchanged.
            if let Some(class) = reader.stream_error
                && exchange.record.answer == Some(keyward_core::answer::AnswerClass::Success)
            {
                exchange.record.answer = Some(class);
                exchange.record.outcome = keyward_core::usage::Outcome::SoftError;
            }
            if let Some(tokens) = reader.tokens {
                exchange.record.tokens = tokens;
                let (price, unpriced) = self.sink.pricing.charge(
                    &exchange.record.service_id,
                    exchange.record.model.as_deref(),
                );
                exchange.record.unpriced = unpriced;
                exchange.record.cost_nanos = price.map_or(0, |p| p.cost_nanos(&tokens));
                if let Some(key) = &exchange.record.key_id {
                    self.sink.meters.charge_tokens(key, tokens.total());
                }
            }
        }
        let tokens = exchange.record.tokens.total();
        for reservation in exchange.reservations.drain(..) {
            // The token's budget and the key's budget are each charged the call's cost.
            reservation.settle(exchange.record.cost_nanos, tokens);
        }
        self.sink.emit(ProxyEvent::Usage(Box::new(exchange.record)));
    }
}

/// What `handle` decided to answer with; the exchange's record is finished by the caller.
// One per request, moved once: boxing the large variant would only add an allocation to the
// hot path.
#[allow(clippy::large_enum_variant)]
pub(super) enum Delivery {
    Cached(Arc<CachedResponse>),
    Upstream {
        upstream: Upstream,
        secret: SecretString,
        cache_key: Option<String>,
        ttl: Option<u32>,
    },
}

type UpstreamStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// An upstream answer whose first bytes may have been read ahead (to look for a soft error
/// or to cache it) without losing them.
pub(super) struct Upstream {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) head: Option<Bytes>,
    pub(super) rest: Option<UpstreamStream>,
    /// Whether `head` is the whole body.
    pub(super) complete: bool,
    /// The error that broke the body off while it was read ahead: the client must see the
    /// break too, never a shorter body that looks whole.
    pub(super) broken: Option<BoxError>,
}

impl Upstream {
    pub(super) fn new(
        (parts, body): (http::response::Parts, crate::upstream::IdleTimeoutBody),
    ) -> Self {
        Self {
            status: parts.status,
            headers: parts.headers,
            head: None,
            rest: Some(Box::pin(body)),
            complete: false,
            broken: None,
        }
    }

    /// Reads up to `limit` bytes ahead (not more, unless a chunk is larger), unless the
    /// declared length already exceeds it.
    pub(super) async fn peek(&mut self, limit: usize) {
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
                Some(Err(e)) => {
                    self.broken = Some(e);
                    self.rest = None;
                    break;
                }
                None => {
                    self.complete = true;
                    self.rest = None;
                    break;
                }
            }
        }
        self.head = Some(buffer.freeze());
    }

    pub(super) fn complete_body(&self) -> Option<Bytes> {
        self.complete.then(|| self.head.clone().unwrap_or_default())
    }
}

/// The request body as it will be sent: kept for retries, or a one-shot stream.
pub(super) enum Outgoing {
    Buffered(Bytes),
    Streaming(Option<ProxyBody>),
}

/// A body stream that fails once it has carried more than `limit` bytes.
pub(super) fn limited<S, E>(
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
pub(super) async fn collect_limited<S, E>(body: S, limit: usize) -> Result<Bytes, Error>
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

pub(super) fn too_large(limit: usize) -> Error {
    Error::new(
        ErrorKind::TooLarge,
        "body_too_large",
        format!("the request body is larger than {limit} bytes"),
    )
}

pub(super) fn upstream_error(e: &SendError, limit: usize, service: &str) -> Error {
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

/// How much of an answer that may hold links is read ahead to rewrite it whole (and keep
/// its `Content-Length`); a longer one is rewritten as it streams.
const LINK_PEEK_BYTES: usize = 256 * 1024;

/// Whether an answer's body may hold links worth rewriting: JSON and text, never an event
/// stream (held back, it would stall) or binary data.
fn has_links_to_rewrite(headers: &HeaderMap) -> bool {
    let Some(kind) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
    else {
        return false;
    };
    !kind.starts_with("text/event-stream")
        && (kind.starts_with("application/json")
            || kind.contains("+json")
            || kind.starts_with("text/"))
}

/// `Link`, `Location` and `Content-Location` with their links rewritten.
fn rewrite_link_headers(headers: &mut HeaderMap, rewriter: &LinkRewriter) {
    for name in [header::LINK, header::LOCATION, header::CONTENT_LOCATION] {
        let rewritten: Vec<HeaderValue> = headers
            .get_all(&name)
            .iter()
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|text| rewriter.header(text))
                    .and_then(|text| HeaderValue::from_str(&text).ok())
                    .unwrap_or_else(|| value.clone())
            })
            .collect();
        if rewritten.is_empty() {
            continue;
        }
        headers.remove(&name);
        for value in rewritten {
            headers.append(&name, value);
        }
    }
}

pub(super) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
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

impl Proxy {
    /// Builds the client's response: the upstream's status and headers (hop-by-hop removed),
    /// the body with the key masked, metered, and — for a cacheable answer — stored.
    pub(super) async fn deliver(
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
                let entry = std::sync::Arc::new(CachedResponse {
                    status,
                    headers: headers.clone(),
                    body: masked,
                    credits: exchange.record.credits,
                    stored_at: now,
                    expires_at: now
                        .checked_add(Duration::from_secs(u64::from(ttl)))
                        .unwrap_or(now),
                });
                // Other instances read it from Redis (stored off the answer's path; the
                // body is the masked one).
                if let Some(shared) = self.shared.as_ref().filter(|s| s.caches())
                    && entry.body.len() <= self.cache.max_entry_bytes()
                {
                    let (shared, bytes, key, lane) =
                        (shared.clone(), entry.encode(), key.clone(), exchange.lane);
                    tokio::spawn(async move {
                        shared
                            .store_cached(lane, &key, bytes, Duration::from_secs(u64::from(ttl)))
                            .await;
                    });
                }
                self.cache.insert(key, entry);
            }
        }
        if cached_marker != CacheOutcome::None {
            headers.insert(CACHE_HEADER, HeaderValue::from_static("miss"));
        }
        let mut stream_links = None;
        if let Some(rewriter) = &exchange.links {
            rewrite_link_headers(&mut headers, rewriter);
            if exchange.links_in_body {
                upstream.peek(LINK_PEEK_BYTES).await;
                if let Some(body) = upstream.complete_body() {
                    // A whole body: rewritten at once, its length told exactly (the key is
                    // masked on the way out, below, as for every body).
                    if let Some(rewritten) = rewriter.rewrite(&body) {
                        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
                        upstream.head = Some(Bytes::from(rewritten));
                    }
                } else {
                    // Too long to hold: rewritten as it streams; its length may change.
                    headers.remove(header::CONTENT_LENGTH);
                    stream_links = Some(rewriter.clone());
                }
            }
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
        let broken = upstream.broken.take();
        let rest = upstream.rest.take();
        let source = futures_util::stream::iter(head.map(Ok))
            .chain(futures_util::stream::iter(broken.map(Err)))
            .chain(futures_util::stream::iter(rest).flatten());
        let masked = redact_stream(source, secret);
        let linked: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>> =
            match stream_links {
                Some(rewriter) => Box::pin(rewrite_stream(masked, rewriter)),
                None => Box::pin(masked),
            };
        let metered = linked
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

    pub(super) fn answer_from_cache(
        &self,
        hit: &CachedResponse,
        mut exchange: Exchange,
    ) -> Response<ProxyBody> {
        let now = exchange.record.at;
        exchange.mark_latency();
        exchange.record.status = hit.status.as_u16();
        exchange.record.outcome = Outcome::Success;
        let mut headers = hit.headers.clone();
        headers.insert(CACHE_HEADER, HeaderValue::from_static("hit"));
        let mut body = hit.body.clone();
        if let Some(rewriter) = &exchange.links {
            rewrite_link_headers(&mut headers, rewriter);
            if exchange.links_in_body
                && let Some(rewritten) = rewriter.rewrite(&body)
            {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
                body = Bytes::from(rewritten);
            }
        }
        exchange.record.response_bytes = body.len() as u64;
        self.sink.emit(ProxyEvent::Usage(Box::new(exchange.record)));
        let age = keyward_core::usage::until(hit.stored_at, now).as_secs();
        if let Ok(age) = HeaderValue::from_str(&age.to_string()) {
            headers.insert(header::AGE, age);
        }
        let mut out = Response::new(full_body(body));
        *out.status_mut() = hit.status;
        *out.headers_mut() = headers;
        out
    }
}

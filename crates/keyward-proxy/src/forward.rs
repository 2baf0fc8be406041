//! Forwarding one request: find the app token where the provider's SDK put its key, check
//! it against the snapshot, build the upstream URL from the service definition only, strip
//! hop-by-hop headers and every client credential, inject the real key, and stream both
//! bodies through.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response};
use keyward_core::key::SealContext;
use keyward_core::service::{KeyPlacement, ServiceDefinition};
use keyward_core::{Clock, Error, ErrorKind};
use keyward_crypto::Keyring;
use secrecy::{ExposeSecret, SecretString};

use crate::redact::redact_stream;
use crate::{LiveKey, Snapshot, TokenRateLimits};

/// Where clients may always put their app token, whatever the service.
pub const TOKEN_HEADER: &str = "x-keyward-token";
/// Chooses the environment (must be in the token's scope); default: the token's first.
pub const ENVIRONMENT_HEADER: &str = "x-keyward-environment";

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus `host`.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that carry credentials for one provider or another; a client's are never passed on.
const CREDENTIAL_HEADERS: [&str; 7] = [
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "x-api-token",
    "x-finnhub-token",
    "cookie",
];

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
        }
    }
}

/// That an app token used a key at a time: sent off the request path, written in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    pub key: keyward_core::id::KeyId,
    pub token: keyward_core::id::AppTokenId,
    pub at: jiff::Timestamp,
}

/// Bound of the use channel: when the writer falls this far behind, uses are dropped (and
/// counted) rather than slowing requests down.
pub const USE_CHANNEL_CAPACITY: usize = 10_000;

/// The data plane: a snapshot to decide with, the keyring to unseal with, a pooled client.
#[derive(Debug)]
pub struct Proxy {
    snapshot: RwLock<Arc<Snapshot>>,
    keyring: Arc<Keyring>,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    random: Arc<dyn keyward_core::Randomness>,
    config: ProxyConfig,
    rate_limits: TokenRateLimits,
    uses: tokio::sync::mpsc::Sender<KeyUse>,
    dropped_uses: std::sync::atomic::AtomicU64,
}

fn bad_request(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Malformed, code, message)
}

impl Proxy {
    /// The proxy and the receiving end of its use records (for the batch writer).
    pub fn new(
        keyring: Arc<Keyring>,
        clock: Arc<dyn Clock>,
        random: Arc<dyn keyward_core::Randomness>,
        config: ProxyConfig,
    ) -> Result<(Self, tokio::sync::mpsc::Receiver<KeyUse>), Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))?;
        let (uses, receiver) = tokio::sync::mpsc::channel(USE_CHANNEL_CAPACITY);
        let proxy = Self {
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            keyring,
            client,
            clock,
            random,
            config,
            rate_limits: TokenRateLimits::default(),
            uses,
            dropped_uses: std::sync::atomic::AtomicU64::new(0),
        };
        Ok((proxy, receiver))
    }

    /// Replaces the snapshot; requests already running keep the one they started with.
    pub fn install(&self, snapshot: Snapshot) {
        let live: std::collections::HashSet<_> = snapshot.token_ids().cloned().collect();
        self.rate_limits.retain(|id| live.contains(id));
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forwards one request. Errors are Keyward's own (token, scope, limits, upstream
    /// unreachable); any answer from the upstream, error or not, is passed through.
    pub async fn forward<S, E>(&self, inbound: Inbound<S>) -> Result<Response<reqwest::Body>, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let now = self.clock.now();
        let snapshot = self.snapshot();
        let service = snapshot.service(&inbound.service)?;
        let presented = find_token(service, &inbound.headers, inbound.query.as_deref())
            .ok_or_else(|| Error::new(ErrorKind::Unauthenticated, "missing_token", format!(
                "send your Keyward app token where the {} SDK sends its key, or in X-Keyward-Token", service.name
            )))?;
        let token = snapshot.authenticate(&presented, now, inbound.source)?;
        let environment =
            match inbound.headers.get(ENVIRONMENT_HEADER) {
                Some(value) => Some(value.to_str().map_err(|_| {
                    bad_request("invalid_header", "X-Keyward-Environment is not text")
                })?),
                None => None,
            };
        let route = snapshot.route(token, &inbound.service, environment, now)?;
        self.rate_limits.check(&route.token)?;
        if let Some(length) = content_length(&inbound.headers)?
            && length > self.config.max_request_body as u64
        {
            return Err(too_large(self.config.max_request_body));
        }

        let limit = self.config.max_request_body;
        // A request that is safe to repeat is buffered (within the size limit) so a retry or
        // a failover can send it again; anything else streams through exactly once.
        let repeatable = is_idempotent(&inbound.method);
        let mut body = if repeatable {
            Outgoing::Buffered(collect_limited(inbound.body, limit).await?)
        } else {
            Outgoing::Streaming(Some(reqwest::Body::wrap_stream(limited(
                inbound.body,
                limit,
            ))))
        };
        let candidates: Vec<Arc<LiveKey>> = std::iter::once(route.key.clone())
            .chain(route.fallbacks.iter().cloned())
            .collect();
        let attempts = if repeatable {
            self.config.max_attempts.max(1)
        } else {
            1
        };
        let mut attempt = 0;
        loop {
            let key = &candidates[attempt % candidates.len()];
            attempt += 1;
            let last = attempt >= attempts;
            let secret = self.keyring.unseal(
                &key.current.sealed,
                &SealContext::key_secret(&key.key.id, key.current.version),
            )?;
            let url = upstream_url(
                route.service,
                &inbound.path,
                inbound.query.as_deref(),
                &secret,
            )?;
            let headers = upstream_headers(route.service, &inbound.headers, &secret)?;
            let request_body = match &mut body {
                Outgoing::Buffered(bytes) => reqwest::Body::from(bytes.clone()),
                Outgoing::Streaming(stream) => stream.take().ok_or_else(|| {
                    Error::internal("a streamed request body cannot be sent twice")
                })?,
            };
            let sent = self
                .client
                .request(inbound.method.clone(), url)
                .headers(headers)
                .body(request_body)
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    let error = upstream_error(&e, limit, &route.service.name);
                    if last || error.kind == ErrorKind::TooLarge {
                        return Err(error);
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
            };
            self.record_use(&key.key.id, &route.token.id, now);
            let status = response.status();
            if !last && (status == 401 || status == 403) && candidates.len() > 1 {
                tracing::warn!(key = %key.key.id, status = status.as_u16(), "upstream refused the key; failing over");
                continue;
            }
            if !last && (status == 429 || status.is_server_error()) {
                let wait = retry_after(response.headers()).unwrap_or_else(|| self.backoff(attempt));
                if wait <= self.config.retry_wait_cap {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                if candidates.len() > 1 {
                    continue; // a long wait: try the next key now instead
                }
            }
            return into_response(response, &secret);
        }
    }

    fn record_use(
        &self,
        key: &keyward_core::id::KeyId,
        token: &keyward_core::id::AppTokenId,
        at: jiff::Timestamp,
    ) {
        let used = KeyUse {
            key: key.clone(),
            token: token.clone(),
            at,
        };
        if self.uses.try_send(used).is_err() {
            self.dropped_uses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
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

/// The request body as it will be sent: kept for retries, or a one-shot stream.
enum Outgoing {
    Buffered(Bytes),
    Streaming(Option<reqwest::Body>),
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

/// The upstream's answer, passed on with hop-by-hop headers removed and the key masked.
fn into_response(
    response: reqwest::Response,
    secret: &SecretString,
) -> Result<Response<reqwest::Body>, Error> {
    let mut out = Response::builder()
        .status(response.status())
        .version(response.version());
    if let Some(headers) = out.headers_mut() {
        *headers = response.headers().clone();
        strip_hop_by_hop(headers);
    }
    let body = reqwest::Body::wrap_stream(redact_stream(response.bytes_stream(), secret));
    out.body(body)
        .map_err(|e| Error::internal(format!("cannot build the response: {e}")))
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

fn upstream_error(e: &reqwest::Error, limit: usize, service: &str) -> Error {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if err.is::<BodyTooLarge>() {
            return too_large(limit);
        }
        source = err.source();
    }
    if e.is_timeout() {
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

/// The app token, from wherever this service's SDK puts its key, or `X-Keyward-Token`.
fn find_token(
    service: &ServiceDefinition,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<String> {
    if let Some(value) = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(value.trim().to_owned());
    }
    for placement in std::iter::once(&service.auth).chain(&service.alternate_auth) {
        let found = match placement {
            KeyPlacement::Header { name, prefix } => headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    strip_prefix_ignore_case(v.trim(), prefix.trim())
                        .trim()
                        .to_owned()
                }),
            KeyPlacement::Query { name } => query.and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == name.as_str())
                    .map(|(_, v)| v.into_owned())
            }),
        };
        if let Some(value) = found.filter(|v| v.starts_with("kwp_")) {
            return Some(value);
        }
    }
    None
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> &'a str {
    if !prefix.is_empty()
        && value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        &value[prefix.len()..]
    } else {
        value
    }
}

/// Rejects paths that could escape the service's base URL: dot segments (also
/// percent-encoded, once or twice), backslashes, control characters, and anything that is
/// not a plain absolute path.
fn check_path(path: &str) -> Result<(), Error> {
    let refuse = || {
        bad_request(
            "invalid_path",
            "the path must be a plain absolute path without `..` segments",
        )
    };
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(refuse());
    }
    let mut decoded = path.to_owned();
    for _ in 0..3 {
        if decoded.chars().any(|c| c == '\\' || c.is_control())
            || decoded
                .split('/')
                .any(|segment| segment == ".." || segment == ".")
        {
            return Err(refuse());
        }
        let next = percent_decode(&decoded);
        if next == decoded {
            break;
        }
        decoded = next;
    }
    Ok(())
}

fn percent_decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The upstream URL: the service's base URL, the client's path, the client's query minus
/// any credential parameter, plus the real key if this service takes it in the query.
/// Whatever the input, the result's scheme, host and port are the base URL's.
fn upstream_url(
    service: &ServiceDefinition,
    path: &str,
    query: Option<&str>,
    secret: &SecretString,
) -> Result<url::Url, Error> {
    check_path(path)?;
    let base = url::Url::parse(&service.base_url)
        .map_err(|e| Error::internal(format!("bad base URL for {}: {e}", service.id)))?;
    let joined = format!("{}{}", service.base_url.trim_end_matches('/'), path);
    let mut url = url::Url::parse(&joined)
        .map_err(|_| bad_request("invalid_path", "the path is not valid in a URL"))?;
    if url.scheme() != base.scheme()
        || url.host() != base.host()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err(bad_request(
            "invalid_path",
            "the path would leave the service's host",
        ));
    }
    let credential_params: Vec<&str> = std::iter::once(&service.auth)
        .chain(&service.alternate_auth)
        .filter_map(|p| match p {
            KeyPlacement::Query { name } => Some(name.as_str()),
            KeyPlacement::Header { .. } => None,
        })
        .collect();
    let kept: Vec<(String, String)> = query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| !credential_params.contains(&k.as_ref()))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    url.set_query(None);
    let injected = match &service.auth {
        KeyPlacement::Query { name } => Some(name.as_str()),
        KeyPlacement::Header { .. } => None,
    };
    if !kept.is_empty() || injected.is_some() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in &kept {
            pairs.append_pair(k, v);
        }
        if let Some(name) = injected {
            pairs.append_pair(name, secret.expose_secret());
        }
    }
    Ok(url)
}

/// The client's headers minus hop-by-hop, Keyward's own and every credential, plus the
/// real key where the service expects it (marked sensitive so it is never logged).
fn upstream_headers(
    service: &ServiceDefinition,
    inbound: &HeaderMap,
    secret: &SecretString,
) -> Result<HeaderMap, Error> {
    let mut headers = inbound.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    for name in [TOKEN_HEADER, ENVIRONMENT_HEADER]
        .into_iter()
        .chain(CREDENTIAL_HEADERS)
    {
        headers.remove(name);
    }
    for placement in std::iter::once(&service.auth).chain(&service.alternate_auth) {
        if let KeyPlacement::Header { name, .. } = placement {
            headers.remove(name.as_str());
        }
    }
    if let KeyPlacement::Header { name, prefix } = &service.auth {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::internal(format!("bad auth header name for {}", service.id)))?;
        let mut value = HeaderValue::from_str(&format!("{prefix}{}", secret.expose_secret()))
            .map_err(|_| Error::internal("the stored key cannot be sent as a header"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::catalog::builtin_services;

    use super::*;

    fn service(id: &str) -> ServiceDefinition {
        builtin_services()
            .expect("catalog")
            .into_iter()
            .find(|s| s.id == id)
            .expect("service")
    }

    fn secret() -> SecretString {
        SecretString::from("REAL-KEY".to_owned())
    }

    #[test]
    fn upstream_urls_never_leave_the_service_host() {
        let openai = service("openai");
        let ok =
            upstream_url(&openai, "/v1/chat/completions", Some("a=1"), &secret()).expect("url");
        assert_eq!(
            ok.as_str(),
            "https://api.openai.com/v1/chat/completions?a=1"
        );
        for evil in [
            "/../admin",
            "/v1/../../etc",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/%252e%252e/x",
            "/v1/%2e%2e%2fsecret",
            "//evil.example/x",
            "/\\evil",
            "/v1/.%2e/x",
            "/a/./b",
            "/x%00y",
        ] {
            assert!(
                upstream_url(&openai, evil, None, &secret()).is_err(),
                "{evil} must be refused"
            );
        }
        for tricky in [
            "/@evil.example/x",
            "/v1/models@evil.example",
            "/:80@evil.example/",
        ] {
            let url = upstream_url(&openai, tricky, None, &secret()).expect("stays on the host");
            assert_eq!(url.host_str(), Some("api.openai.com"), "{tricky}");
        }
    }

    #[test]
    fn query_credentials_are_replaced_by_the_real_key() {
        let av = service("alpha-vantage");
        let url = upstream_url(
            &av,
            "/query",
            Some("function=GLOBAL_QUOTE&apikey=kwp_x_y&symbol=IBM"),
            &secret(),
        )
        .expect("url");
        assert_eq!(
            url.query(),
            Some("function=GLOBAL_QUOTE&symbol=IBM&apikey=REAL-KEY")
        );
        let polygon = service("polygon");
        let url = upstream_url(
            &polygon,
            "/v3/x",
            Some("apiKey=client-own&limit=1"),
            &secret(),
        )
        .expect("url");
        assert_eq!(
            url.query(),
            Some("limit=1"),
            "header services drop query credentials and add none"
        );
    }

    #[test]
    fn headers_lose_hop_by_hop_and_credentials_and_gain_the_key() {
        let anthropic = service("anthropic");
        let mut inbound = HeaderMap::new();
        for (k, v) in [
            ("x-api-key", "kwp_token"),
            ("authorization", "Bearer other"),
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "hop"),
            ("keep-alive", "timeout=5"),
            ("host", "keyward.local"),
            ("cookie", "a=b"),
            ("x-keyward-token", "kwp_t"),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ] {
            inbound.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = upstream_headers(&anthropic, &inbound, &secret()).expect("headers");
        assert_eq!(out.get("x-api-key").map(|v| v.is_sensitive()), Some(true));
        assert_eq!(
            out.get("x-api-key").and_then(|v| v.to_str().ok()),
            Some("REAL-KEY")
        );
        for gone in [
            "authorization",
            "connection",
            "x-custom",
            "keep-alive",
            "host",
            "cookie",
            "x-keyward-token",
        ] {
            assert!(out.get(gone).is_none(), "{gone} must not be forwarded");
        }
        assert_eq!(
            out.get("anthropic-version").and_then(|v| v.to_str().ok()),
            Some("2023-06-01")
        );
        let bearer =
            upstream_headers(&service("openai"), &HeaderMap::new(), &secret()).expect("headers");
        assert_eq!(
            bearer.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer REAL-KEY")
        );
    }

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

    #[test]
    fn tokens_are_found_where_each_sdk_puts_its_key() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer kwp_abc_def"),
        );
        assert_eq!(
            find_token(&service("openai"), &headers, None).as_deref(),
            Some("kwp_abc_def")
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-goog-api-key", HeaderValue::from_static("kwp_g_1"));
        assert_eq!(
            find_token(&service("gemini"), &headers, None).as_deref(),
            Some("kwp_g_1")
        );
        assert_eq!(
            find_token(&service("gemini"), &HeaderMap::new(), Some("key=kwp_q_1")).as_deref(),
            Some("kwp_q_1")
        );
        assert_eq!(
            find_token(
                &service("alpha-vantage"),
                &HeaderMap::new(),
                Some("function=X&apikey=kwp_a_b")
            )
            .as_deref(),
            Some("kwp_a_b")
        );
        assert_eq!(
            find_token(
                &service("alpha-vantage"),
                &HeaderMap::new(),
                Some("apikey=REALKEY")
            ),
            None
        );
        let mut headers = HeaderMap::new();
        headers.insert(TOKEN_HEADER, HeaderValue::from_static("kwp_h_1"));
        assert_eq!(
            find_token(&service("finnhub"), &headers, None).as_deref(),
            Some("kwp_h_1")
        );
    }
}

//! Admission: everything decided before a key is chosen — the app token (found where the
//! service's SDK puts its key), its route (scope, environment, pool), its rate limit, the
//! request's size and path, the cache (which answers before anything is spent), the body
//! (buffered when it may be sent twice or must be read: LLM model and output allowance),
//! and the token's budget, reserved at the call's highest possible cost.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use http::Method;
use keyward_core::usage::{CacheOutcome, Subject};
use keyward_core::{Error, ErrorKind};

use super::exchange::{Exchange, Outgoing, collect_limited, content_length, limited, too_large};
use super::proxy::{Inbound, Proxy};
use super::rewrite::{ENVIRONMENT_HEADER, bad_request, check_path, client_query, find_token};
use crate::cache::{CachedResponse, ResponseCache, client_allows};
use crate::meter::{LlmRequest, inspect_request};
use crate::quota::Spend;
use crate::upstream::stream_body;
use crate::{Route, Snapshot};

/// What admission decided: the cache's answer, or a request to send.
// One per request, moved once: boxing the large variant would only add an allocation to the
// hot path.
#[allow(clippy::large_enum_variant)]
pub(super) enum Admission<'s> {
    Cached(Arc<CachedResponse>),
    Send(Admitted<'s>),
}

/// A request past every check, with what sending it needs.
pub(super) struct Admitted<'s> {
    pub(super) route: Route<'s>,
    pub(super) method: Method,
    pub(super) path: String,
    /// The client's query without credential parameters.
    pub(super) query: Vec<(String, String)>,
    pub(super) headers: http::HeaderMap,
    pub(super) lane: usize,
    pub(super) body: Outgoing,
    /// What the LLM request asked for (model, output allowance, usage chunk wanted).
    pub(super) request: LlmRequest,
    pub(super) llm: Option<keyward_core::service::UsageFormat>,
    /// Safe to send again (RFC 9110 idempotent): retries and failover allowed.
    pub(super) repeatable: bool,
    pub(super) max_cost: u64,
    pub(super) spend: Spend,
    pub(super) cache_key: Option<String>,
    pub(super) cache_ttl: Option<u32>,
    pub(super) may_store: bool,
}

impl Proxy {
    /// Admits `inbound` against `snapshot`, filling in `exchange`'s record as it learns
    /// (token, environment, cache, sizes, model); any refusal is Keyward's own error.
    pub(super) async fn admit<'s, S, E>(
        &self,
        snapshot: &'s Snapshot,
        inbound: Inbound<S>,
        exchange: &mut Exchange,
    ) -> Result<Admission<'s>, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let now = exchange.record.at;
        let service = snapshot.service(&inbound.service)?;
        // Only the Host's bytes (a reference count): a URL is written only for an answer
        // with links to rewrite.
        exchange.host = inbound.headers.get(http::header::HOST).cloned();
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
        let route = match snapshot.route(
            token.clone(),
            &inbound.service,
            environment,
            now,
            self.config.expiry_grace,
        ) {
            Ok(route) => route,
            Err(e) => {
                exchange.record.key_id =
                    snapshot.dormant_key(e.code, &token, &inbound.service, environment, now);
                return Err(e);
            }
        };
        exchange.record.environment = Some(route.environment.clone());
        // With shared limits the token's rate is counted in Redis, with the key (one round
        // trip), or alone for a cached answer.
        if self.shared.is_none() {
            self.rate_limits.check(&route.token)?;
        }
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
            let hit = match self.cache.get(key, now) {
                Some(hit) if may_read => Some(hit),
                None if may_read => self.shared_cached(inbound.lane, key, now).await,
                _ => None,
            };
            if let Some(hit) = hit {
                if let Some(shared) = &self.shared
                    && route.token.rate_limit.is_some()
                {
                    match shared.rate_only(inbound.lane, &route.token).await {
                        Some(decided) => decided?,
                        None => self
                            .rate_limits
                            .check_share(&route.token, shared.live_instances())?,
                    }
                }
                exchange.record.cache = CacheOutcome::Hit;
                exchange.record.saved_credits = hit.credits;
                exchange.plan_links(
                    route.service,
                    &hit.headers,
                    self.config.public_url.as_deref(),
                );
                return Ok(Admission::Cached(hit));
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
        if let Some(budget) = route.token.budget
            && self.shared.is_none()
        {
            let reservation = self.sink.meters.reserve(
                &[(Subject::Token(route.token.id.clone()), budget)],
                max_cost,
                now,
            )?;
            exchange
                .reservations
                .push(crate::shared::Hold::Local(reservation));
        }
        let spend = Spend {
            requests: 1,
            credits: u64::from(route.service.credits(&inbound.path, &query)),
        };
        Ok(Admission::Send(Admitted {
            route,
            method: inbound.method,
            path: inbound.path,
            query,
            headers: inbound.headers,
            lane: inbound.lane,
            body,
            request,
            llm,
            repeatable,
            max_cost,
            spend,
            cache_key,
            cache_ttl,
            may_store,
        }))
    }

    /// An answer another instance cached (through Redis, when the shared cache is on),
    /// kept here too for its remaining time.
    async fn shared_cached(
        &self,
        lane: usize,
        key: &str,
        now: jiff::Timestamp,
    ) -> Option<Arc<CachedResponse>> {
        let shared = self.shared.as_ref().filter(|s| s.caches())?;
        let entry = CachedResponse::decode(&shared.cached(lane, key).await?)?;
        if entry.expires_at <= now {
            return None;
        }
        let entry = Arc::new(entry);
        self.cache.insert(key.to_owned(), entry.clone());
        Some(entry)
    }

    /// The most a call can cost: its model's price (or the conservative fallback for a
    /// model Keyward has no price for) for every input byte as a token and the full output
    /// allowance.
    fn max_cost(&self, route: &Route<'_>, request: &LlmRequest, input_bytes: u64) -> u64 {
        self.sink
            .pricing
            .charge(&route.service.id, request.model.as_deref())
            .0
            .map_or(0, |p| p.max_cost_nanos(input_bytes, request.max_output))
    }
}

/// Methods RFC 9110 defines as idempotent: repeating them is safe.
pub(super) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

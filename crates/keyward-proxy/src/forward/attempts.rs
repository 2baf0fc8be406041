//! The attempt loop: the pool in the order to try (strategy, health, quota), a key picked
//! within its limits and budget, the real value unsealed and injected, the answer read by
//! the service's rules and acted on — a rotation's other value after a rejected new one, a
//! retry after `Retry-After` or a jittered backoff, failover to the next key for a rejected,
//! exhausted or long-throttled key — and the key flagged as the provider's answer says.
//! Only a request safe to repeat is tried more than once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use http::header::{self, HeaderMap};
use keyward_core::answer::{AnswerClass, Lapse, retry_after};
use keyward_core::guided_rotation::RotationTraffic;
use keyward_core::key::{KeyVersion, SealContext};
use keyward_core::service::ServiceDefinition;
use keyward_core::usage::{KeyFlagKind, Outcome, Subject};
use keyward_core::{Error, ErrorKind};

use super::admission::Admitted;
use super::exchange::{Delivery, Exchange, Outgoing, Upstream, upstream_error};
use super::proxy::{Proxy, ProxyEvent};
use super::rewrite::{bad_request, upstream_headers, upstream_url};
use crate::cache::storable;
use crate::meter::UsageReader;
use crate::quota::Spend;
use crate::shared::{Decision, Hold, KeyPart, OutagePolicy, TokenPart, needs_shared};
use crate::upstream::full_body;
use crate::{Alternate, LiveKey, Route};

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

/// What to do with an upstream answer.
enum Verdict {
    Deliver,
    /// Try again (after `wait`) with the next usable key.
    Retry(Duration),
}

/// What an upstream answer means, with what it said about waiting.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) class: AnswerClass,
    pub(crate) lapses: Option<Lapse>,
    /// The flag's reason: the status and the matching rule (never the body).
    pub(crate) reason: String,
    /// What the answer said about waiting: `Retry-After`, `retry-after-ms`, a body delay.
    pub(crate) told: Option<Duration>,
    /// How long the rate-limit headers say a spent limit stays spent.
    pub(crate) spent_for: Option<Duration>,
}

impl Answer {
    /// What an answer with `status`, `headers` and (what was read of) `body`, to a request
    /// for `path`, means by the service's rules — for calls, validations and probes alike.
    pub(crate) fn read(
        service: &ServiceDefinition,
        status: u16,
        path: &str,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: jiff::Timestamp,
    ) -> Self {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let classification = service.classify(status, path, body);
        let told = if classification.class == AnswerClass::Success {
            None
        } else {
            retry_after(&header, now).or_else(|| body.and_then(|b| service.body_retry_delay(b)))
        };
        Answer {
            spent_for: service.spent_until(&header, now),
            told,
            class: classification.class,
            lapses: classification.lapses,
            reason: classification.reason,
        }
    }
}

/// Whether an answer is a stream of server-sent events.
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// Where the key choice stands within one call: the pool's order and how far it went.
pub(super) struct Pick<'o, 'r> {
    ordered: &'o [Arc<LiveKey>],
    cursor: usize,
    route: &'o Route<'r>,
    spend: Spend,
    max_cost: u64,
    lane: usize,
}

impl Proxy {
    /// Sends an admitted request, trying keys and values until an answer is worth
    /// delivering (or the attempts run out), and returns it with what delivering needs.
    pub(super) async fn attempt(
        &self,
        admitted: Admitted<'_>,
        exchange: &mut Exchange,
    ) -> Result<Delivery, Error> {
        let Admitted {
            route,
            method,
            path,
            query,
            headers: headers_in,
            lane,
            mut body,
            request,
            llm,
            repeatable,
            max_cost,
            spend,
            cache_key,
            cache_ttl,
            may_store,
        } = admitted;
        let now = exchange.record.at;
        let client = &self.clients[lane % self.clients.len()];
        let limit = self.config.max_request_body;
        let ordered = self.order(&route, now);
        // The token's rate and budget are counted with the first key chosen.
        let mut token_pending = true;
        let mut pick = Pick {
            ordered: &ordered,
            cursor: 0,
            route: &route,
            spend,
            max_cost,
            lane,
        };
        let (mut key, mut key_reservation) = self
            .pick(&mut pick, &mut token_pending, &mut exchange.reservations)
            .await?;

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
            let secret = self.keyring.get().unseal(
                &version.sealed,
                &SealContext::key_secret(&key.key.id, version.version),
            )?;
            let url = upstream_url(route.service, &path, &query, &secret)?;
            let mut headers = upstream_headers(route.service, &headers_in, &secret)?;
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
            *outgoing.method_mut() = method.clone();
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
                    (key, key_reservation) = match self
                        .pick(&mut pick, &mut token_pending, &mut exchange.reservations)
                        .await
                    {
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
            let mut upstream = Upstream::new(response);
            let answer = self.read_answer(&mut upstream, route.service, &path).await;
            self.health.record_call(
                &key.key.id,
                answer.class == AnswerClass::Outage,
                attempt_ms,
                self.clock.now(),
            );
            if answer.class == AnswerClass::Rejected
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
            let verdict = self.judge(&answer, &key, route.service, last, ordered.len(), attempt);
            if let Verdict::Retry(wait) = verdict
                && let Ok(next) = {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    self.pick(&mut pick, &mut token_pending, &mut exchange.reservations)
                        .await
                }
            {
                (key, key_reservation) = next;
                canary = self.draws_canary(&key);
                second = false;
                continue;
            }
            // A key the provider accepts again is no longer flagged as rejected.
            if answer.class == AnswerClass::Success
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
            exchange.record.answer = Some(answer.class);
            exchange.record.outcome = match answer.class {
                AnswerClass::Success => Outcome::Success,
                _ if status.is_success() => Outcome::SoftError,
                _ => Outcome::UpstreamError,
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
                    && answer.class == AnswerClass::Success
                    && storable(&upstream.headers)
            });
            exchange.plan_links(
                route.service,
                &upstream.headers,
                self.config.public_url.as_deref(),
            );
            return Ok(Delivery::Upstream {
                upstream,
                secret,
                cache_key: store_in_cache,
                ttl: cache_ttl,
            });
        }
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

    /// The next key (from the cursor, wrapping) whose limits and budget admit the call; the
    /// refusal of the first key tried if none does. With shared limits the decision is
    /// Redis's — one round trip, with the token's rate and budget the first time
    /// (`token_pending`), whose hold goes to `holds` — unless nothing would be counted, or
    /// Redis cannot be reached (then the token's rate falls back to this instance's share,
    /// and quotas and budgets refuse or count here, as `limits_on_redis_outage` says).
    async fn pick(
        &self,
        pick: &mut Pick<'_, '_>,
        token_pending: &mut bool,
        holds: &mut Vec<Hold>,
    ) -> Result<(Arc<LiveKey>, Option<Hold>), Error> {
        let Pick {
            ordered,
            route,
            spend,
            max_cost,
            lane,
            ..
        } = *pick;
        let now = self.clock.now();
        if ordered.is_empty() {
            return Err(self.nothing_to_pick(route, now));
        }
        let calendar = &route.service.quota_calendar;
        if let Some(shared) = &self.shared {
            let count = ordered.len();
            let rotated: Vec<&Arc<LiveKey>> = (0..count)
                .map(|i| &ordered[(pick.cursor + i) % count])
                .collect();
            let parts: Vec<KeyPart<'_>> = rotated
                .iter()
                .map(|k| KeyPart {
                    id: &k.key.id,
                    limits: &k.key.limits,
                    budget: k.key.budget,
                })
                .collect();
            let token = token_pending.then_some(TokenPart {
                token: &route.token,
            });
            if needs_shared(token.map(|t| t.token), &parts) {
                let decided = shared
                    .decide(
                        lane,
                        token,
                        &parts,
                        spend,
                        max_cost,
                        Some((&self.sink.meters, calendar, now)),
                    )
                    .await;
                match decided {
                    Some(Decision::Admitted {
                        chosen,
                        token_hold,
                        key_hold,
                    }) => {
                        *token_pending = false;
                        holds.extend(token_hold.map(Hold::Shared));
                        let index = chosen.unwrap_or(0).min(count - 1);
                        pick.cursor += index + 1;
                        let key = rotated[index].clone();
                        self.sink
                            .meters
                            .record(&key.key.id, &key.key.limits, calendar, spend, now);
                        return Ok((key, key_hold.map(Hold::Shared)));
                    }
                    Some(Decision::Refused(e)) => return Err(e),
                    None => {
                        let counted = (*token_pending && route.token.budget.is_some())
                            || parts
                                .iter()
                                .any(|k| !k.limits.is_empty() || k.budget.is_some());
                        if *token_pending {
                            self.rate_limits
                                .check_share(&route.token, shared.live_instances())?;
                        }
                        if counted && shared.policy() == OutagePolicy::Closed {
                            return Err(crate::shared::unavailable());
                        }
                        if *token_pending && let Some(budget) = route.token.budget {
                            holds.push(Hold::Local(self.sink.meters.reserve(
                                &[(Subject::Token(route.token.id.clone()), budget)],
                                max_cost,
                                now,
                            )?));
                        }
                    }
                }
            }
            *token_pending = false;
        }
        let mut first_refusal = None;
        for _ in 0..ordered.len() {
            let key = &ordered[pick.cursor % ordered.len()];
            pick.cursor += 1;
            let taken = self
                .sink
                .meters
                .take(&key.key.id, &key.key.limits, calendar, spend, now);
            let reserved = taken.and_then(|()| match key.key.budget {
                Some(budget) => self
                    .sink
                    .meters
                    .reserve(&[(Subject::Key(key.key.id.clone()), budget)], max_cost, now)
                    .map(|r| Some(Hold::Local(r))),
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

    /// Why no key can be tried: every usable one's circuit is open, or every one is
    /// quota-limited.
    fn nothing_to_pick(&self, route: &Route<'_>, now: jiff::Timestamp) -> Error {
        let open: Vec<jiff::Timestamp> = route
            .candidates
            .iter()
            .filter_map(|k| self.health.passive(&k.key.id, now).2)
            .filter(|until| *until > now)
            .collect();
        if let Some(until) = open.iter().min() {
            return Error {
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
            };
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
        Error::limited(
            "quota_exhausted",
            format!(
                "every {} key for {} is quota-limited; try again later",
                route.service.name, route.environment
            ),
            wait.max(Duration::from_secs(1)),
        )
    }

    /// Reads what an answer means by the service's rules, reading the body ahead first
    /// when a rule for this status looks at it (never for an event stream, which must not
    /// be held back).
    async fn read_answer(
        &self,
        upstream: &mut Upstream,
        service: &ServiceDefinition,
        path: &str,
    ) -> Answer {
        let status = upstream.status.as_u16();
        if !is_event_stream(&upstream.headers) && service.answer_reads_body(status, path) {
            upstream.peek(self.config.soft_error_peek_bytes).await;
        }
        let body = upstream.complete_body();
        Answer::read(
            service,
            status,
            path,
            &upstream.headers,
            body.as_deref(),
            self.clock.now(),
        )
    }

    /// Acts on what an answer means: flags the key as the provider's rules say, and says
    /// whether to try again (after a wait, or at once with the next key).
    fn judge(
        &self,
        answer: &Answer,
        key: &LiveKey,
        service: &ServiceDefinition,
        last: bool,
        pool_size: usize,
        attempt: usize,
    ) -> Verdict {
        let fail_over = || {
            if !last && pool_size > 1 {
                Verdict::Retry(Duration::ZERO)
            } else {
                Verdict::Deliver
            }
        };
        match answer.class {
            AnswerClass::Success => {
                // A limit the headers say is spent for longer than a retry would wait
                // (Groq's daily request cap) holds the key until it resets.
                if let Some(wait) = answer.spent_for.filter(|w| *w > self.config.retry_wait_cap) {
                    self.raise(
                        &key.key.id,
                        KeyFlagKind::QuotaLimited,
                        "the provider's rate-limit headers say the allowance is spent".into(),
                        Some(wait),
                    );
                }
                Verdict::Deliver
            }
            AnswerClass::Rejected => {
                self.raise(
                    &key.key.id,
                    KeyFlagKind::Rejected,
                    answer.reason.clone(),
                    None,
                );
                fail_over()
            }
            AnswerClass::QuotaLimited => {
                let hold = self.hold(answer, service);
                self.raise(
                    &key.key.id,
                    KeyFlagKind::QuotaLimited,
                    answer.reason.clone(),
                    Some(hold),
                );
                fail_over()
            }
            AnswerClass::Throttled => match self.wait_for(answer, service) {
                Some(wait) if wait <= self.config.retry_wait_cap => {
                    if last {
                        Verdict::Deliver
                    } else {
                        Verdict::Retry(wait)
                    }
                }
                Some(wait) => {
                    self.raise(
                        &key.key.id,
                        KeyFlagKind::QuotaLimited,
                        answer.reason.clone(),
                        Some(wait),
                    );
                    fail_over()
                }
                None => {
                    self.raise(
                        &key.key.id,
                        KeyFlagKind::QuotaLimited,
                        answer.reason.clone(),
                        Some(self.config.quota_hold),
                    );
                    if last {
                        Verdict::Deliver
                    } else {
                        Verdict::Retry(self.backoff(attempt))
                    }
                }
            },
            AnswerClass::Outage => {
                let wait = answer.told.unwrap_or_else(|| self.backoff(attempt));
                if last {
                    Verdict::Deliver
                } else if wait <= self.config.retry_wait_cap {
                    Verdict::Retry(wait)
                } else {
                    fail_over()
                }
            }
            AnswerClass::Failed | AnswerClass::Unclassified => Verdict::Deliver,
        }
    }

    /// How long a quota-limited key is held: until the quota lapses, or the configured hold
    /// when nothing says.
    pub(crate) fn hold(&self, answer: &Answer, service: &ServiceDefinition) -> Duration {
        self.wait_for(answer, service)
            .unwrap_or(self.config.quota_hold)
    }

    /// When a throttle or quota lapses: the rule's lapse (by the service's quota calendar),
    /// else what the answer said — or later, if the rate-limit headers say a limit stays
    /// spent longer (Groq's daily request cap behind a short `retry-after`).
    fn wait_for(&self, answer: &Answer, service: &ServiceDefinition) -> Option<Duration> {
        let now = self.clock.now();
        let said = answer
            .lapses
            .and_then(|lapse| lapse.until(&service.quota_calendar, now, answer.told))
            .map(|until| keyward_core::usage::until(now, until))
            .or(answer.told);
        match (said, answer.spent_for) {
            (Some(said), Some(spent)) => Some(said.max(spent)),
            (said, spent) => said.or(spent),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::admission::is_idempotent;
    use http::{HeaderMap, HeaderValue, Method};

    #[test]
    fn idempotency_and_event_streams() {
        let mut headers = HeaderMap::new();
        assert!(!is_event_stream(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        assert!(is_event_stream(&headers));
        assert!(
            is_idempotent(&Method::GET)
                && is_idempotent(&Method::PUT)
                && is_idempotent(&Method::DELETE)
        );
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}

//! Forwarding one request: find the app token where the provider's SDK put its key, check
//! it against the snapshot, apply limits, budgets and the cache, build the upstream URL from
//! the service definition only, strip hop-by-hop headers and every client credential,
//! inject the real key, stream both bodies through — and meter what the call consumed.
//!
//! `proxy.rs` holds the data plane's state; a call passes `admission.rs` (token, route,
//! limits, cache, body, budget), then `attempts.rs` (key order, injection, judging the
//! answer, retries and failover), and `exchange.rs` delivers the answer and finishes its
//! usage record. `rewrite.rs` is the security boundary: what of the client's request may
//! reach the provider.

use bytes::Bytes;
use futures_util::Stream;
use http::Response;
use keyward_core::usage::Outcome;
use keyward_core::{Error, ErrorKind};

mod admission;
mod attempts;
mod exchange;
mod proxy;
mod rewrite;

use admission::Admission;
pub(crate) use attempts::Answer;
pub use exchange::{CACHE_HEADER, WARNING_HEADER};
use exchange::{Delivery, Exchange};
pub use proxy::{
    EVENT_CHANNEL_CAPACITY, Inbound, Proxy, ProxyConfig, ProxyEvent, ProxyGauges, SharedGauges,
};
pub use rewrite::{ENVIRONMENT_HEADER, TOKEN_HEADER};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use rewrite::{check_path, client_query};
pub(crate) use rewrite::{upstream_headers, upstream_url};

use crate::upstream::ProxyBody;

impl Proxy {
    /// Forwards one request. Errors are Keyward's own (token, scope, limits, upstream
    /// unreachable); any answer from the upstream, error or not, is passed through. Every
    /// call, refused or not, yields a usage record.
    pub async fn forward<S, E>(&self, inbound: Inbound<S>) -> Result<Response<ProxyBody>, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let mut inbound = inbound;
        if let Some(path) = crate::links::undo_joined_link(
            &inbound.path,
            self.config.public_url.as_deref().unwrap_or_default(),
            &inbound.service,
        ) {
            inbound.path = path;
        }
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

    /// Admission, then the attempts; what to answer with (the exchange's record is
    /// finished by the caller).
    async fn handle<S, E>(
        &self,
        inbound: Inbound<S>,
        exchange: &mut Exchange,
    ) -> Result<Delivery, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let snapshot = self.current_snapshot()?;
        match self.admit(&snapshot, inbound, exchange).await? {
            Admission::Cached(hit) => Ok(Delivery::Cached(hit)),
            Admission::Send(admitted) => self.attempt(admitted, exchange).await,
        }
    }
}

//! A service's validation request: the cheapest call that tells whether a key works,
//! sent with a candidate or stored value (the add-key wizard's Validate button; later
//! rotations and health probes). The key goes where the service's SDK would put it, by the
//! same code the proxy injects with; nothing of the answer's body comes back, since a
//! provider may echo the key.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use keyward_core::Error;
use keyward_core::answer::AnswerClass;
use keyward_core::service::ServiceDefinition;
use secrecy::SecretString;
use serde::Serialize;

use crate::Proxy;
use crate::forward::{upstream_headers, upstream_url};
use crate::upstream::{SendError, full_body};

/// How much of a validation answer is read to look for a soft error.
const ANSWER_PEEK: usize = 64 * 1024;

/// What the provider said about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A 2xx answer without a soft error: the key works.
    Valid,
    /// 401 or 403: the provider does not accept this key.
    Rejected,
    /// 429, or a throttling soft error: the key is known but out of allowance right now.
    Throttled,
    /// Any other answer (a 5xx, a failure wrapped in a 200): nothing can be concluded.
    Inconclusive,
    /// No answer in time, or no connection.
    Unreachable,
}

impl Verdict {
    /// The word the API and pages use (`valid`, `rejected`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Rejected => "rejected",
            Verdict::Throttled => "throttled",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Unreachable => "unreachable",
        }
    }
}

/// The outcome of one validation request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Validation {
    pub verdict: Verdict,
    /// The provider's HTTP status, when it answered.
    pub status: Option<u16>,
    /// A sentence for people; never carries the provider's body.
    pub message: String,
    /// Whether the request spent quota (some providers have no free "whoami" call).
    pub costs_quota: bool,
    pub latency_ms: u64,
    /// What the answer meant by the service's rules (`None` when there was no answer).
    pub answer: Option<AnswerClass>,
    /// For a quota-limited or throttled key: how long the allowance stays spent, and why
    /// (the flag's reason). Health probes flag the key with these, as calls do.
    #[serde(skip)]
    pub hold: Option<(Duration, String)>,
}

impl Proxy {
    /// Sends `service`'s validation request with `secret` and judges the answer.
    pub async fn validate(
        &self,
        service: &ServiceDefinition,
        secret: &SecretString,
    ) -> Result<Validation, Error> {
        let Some(request) = &service.validation else {
            return Err(Error::invalid(
                "no_validation_request",
                format!("{} declares no validation request", service.name),
            ));
        };
        let (path, query) = request
            .path
            .split_once('?')
            .unwrap_or((request.path.as_str(), ""));
        let kept: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let url = upstream_url(service, path, &kept, secret)?;
        let mut extra = HeaderMap::new();
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                Error::internal(format!("bad validation header for {}", service.id))
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                Error::internal(format!("bad validation header for {}", service.id))
            })?;
            extra.insert(name, value);
        }
        let headers = upstream_headers(service, &extra, secret)?;
        let method = http::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| Error::internal(format!("bad validation method for {}", service.id)))?;
        let mut outgoing = http::Request::builder()
            .method(method)
            .uri(url.as_str())
            .body(full_body(bytes::Bytes::new()))
            .map_err(|_| Error::internal("the validation request cannot be built"))?;
        *outgoing.headers_mut() = headers;

        let started = Instant::now();
        let answer = self.clients[0].send(outgoing).await;
        let elapsed =
            |started: Instant| u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (parts, mut body) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                let message = match e {
                    SendError::Timeout => format!("{} did not answer in time", service.name),
                    // The error may name the URL, which may carry the key: say less.
                    SendError::Failed(_) => format!("{} could not be reached", service.name),
                };
                return Ok(Validation {
                    verdict: Verdict::Unreachable,
                    status: None,
                    message,
                    costs_quota: request.costs_quota,
                    latency_ms: elapsed(started),
                    answer: None,
                    hold: None,
                });
            }
        };
        let mut read = bytes::BytesMut::new();
        while read.len() <= ANSWER_PEEK {
            match tokio::time::timeout(Duration::from_secs(10), body.next()).await {
                Ok(Some(Ok(chunk))) => read.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let latency_ms = elapsed(started);
        let status = parts.status.as_u16();
        let answer = crate::forward::Answer::read(
            service,
            status,
            path,
            &parts.headers,
            Some(&read),
            self.clock.now(),
        );
        let hold = matches!(
            answer.class,
            AnswerClass::QuotaLimited | AnswerClass::Throttled
        )
        .then(|| (self.hold(&answer, service), answer.reason.clone()));
        let (verdict, message) = judge(&service.name, status, answer.class);
        Ok(Validation {
            verdict,
            status: Some(status),
            message,
            costs_quota: request.costs_quota,
            latency_ms,
            answer: Some(answer.class),
            hold,
        })
    }
}

/// The verdict on what an answer meant.
fn judge(name: &str, status: u16, class: AnswerClass) -> (Verdict, String) {
    match class {
        AnswerClass::Rejected => (
            Verdict::Rejected,
            format!("{name} rejected this key (HTTP {status})"),
        ),
        AnswerClass::QuotaLimited | AnswerClass::Throttled => (
            Verdict::Throttled,
            format!("{name} knows this key but it is out of allowance right now"),
        ),
        AnswerClass::Success if (200..300).contains(&status) => {
            (Verdict::Valid, format!("{name} accepted this key"))
        }
        AnswerClass::Failed if (200..300).contains(&status) => (
            Verdict::Inconclusive,
            format!("{name} answered with an error; the key may be invalid"),
        ),
        _ => (
            Verdict::Inconclusive,
            format!("{name} answered HTTP {status}; try again later"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_what_the_answer_meant() {
        use AnswerClass::*;
        let v = |status, class| judge("P", status, class).0;
        assert_eq!(v(200, Success), Verdict::Valid);
        assert_eq!(v(204, Success), Verdict::Valid);
        assert_eq!(v(400, Rejected), Verdict::Rejected, "Gemini's bad key");
        assert_eq!(
            v(200, Rejected),
            Verdict::Rejected,
            "Alpha Vantage's bad key"
        );
        assert_eq!(v(429, Throttled), Verdict::Throttled);
        assert_eq!(v(200, QuotaLimited), Verdict::Throttled);
        assert_eq!(v(200, Failed), Verdict::Inconclusive);
        assert_eq!(v(500, Outage), Verdict::Inconclusive);
        assert_eq!(v(302, Success), Verdict::Inconclusive);
        assert_eq!(v(418, Unclassified), Verdict::Inconclusive);
    }
}

//! What an app token has been seen doing: the source networks it calls from, the models
//! it asks for and the shapes of the endpoints it calls. The first time a token does
//! something new after it has settled in — a network, a model, an endpoint shape it never
//! used — is a sign its secret is used by someone else (`new_network`, `new_model`,
//! `new_endpoint` alerts). A token still learning (its first sighting of that kind less
//! than [`SIGHTING_LEARN`] ago) alerts on nothing.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};

use crate::anomaly::{Finding, Signal};
use crate::id::AppTokenId;
use crate::usage::UsageRecord;

/// How long a token's habits are learned before something new is worth an alert.
pub const SIGHTING_LEARN: SignedDuration = SignedDuration::from_hours(24);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SightingKind {
    Network,
    Model,
    Endpoint,
}

string_enum!(SightingKind { Network = "network", Model = "model", Endpoint = "endpoint" }, "invalid_sighting", "sighting kind");

impl SightingKind {
    pub fn signal(self) -> Signal {
        match self {
            Self::Network => Signal::NewNetwork,
            Self::Model => Signal::NewModel,
            Self::Endpoint => Signal::NewEndpoint,
        }
    }
}

/// One thing a token did, first seen at `at` in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sighting {
    pub token: AppTokenId,
    pub kind: SightingKind,
    pub value: String,
    pub at: Timestamp,
}

/// An endpoint's shape: its path with what varies per call replaced — a segment starting
/// with a digit (a number, a date) or a long one holding digits (an id) becomes `:n`
/// (`v2` and `profile2` stay), an upper-case symbol (a ticker) `:sym` —, at most six segments. So
/// `/v2/aggs/ticker/AAPL/range/1/day/2023-01-09` is `/v2/aggs/ticker/:sym/range/:n`, and a
/// token that only ever asked for quotes is seen calling an account endpoint.
pub fn endpoint_shape(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut shape = String::new();
    for segment in path.split('/').filter(|s| !s.is_empty()).take(6) {
        shape.push('/');
        let numeric = segment.starts_with(|c: char| c.is_ascii_digit());
        let id_like = segment.len() >= 12 && segment.chars().any(|c| c.is_ascii_digit());
        if numeric || id_like {
            shape.push_str(":n");
        } else if segment.len() <= 6
            && segment
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '.' || c == '-')
        {
            shape.push_str(":sym");
        } else {
            shape.extend(segment.chars().take(40));
        }
    }
    if shape.is_empty() {
        shape.push('/');
    }
    shape
}

/// What a batch of calls shows each token doing, once per token, kind and value (at the
/// earliest call). Only calls that passed the token check count: a refused presenter is
/// not the token's user.
pub fn sightings(records: &[UsageRecord]) -> BTreeSet<Sighting> {
    // Calls repeat: each distinct (token, source, model, service, path) once, borrowed, and
    // only those shaped and formatted (the writer sees every call).
    type Distinct<'a> = (
        &'a AppTokenId,
        Option<std::net::IpAddr>,
        Option<&'a str>,
        &'a str,
        &'a str,
    );
    let mut distinct: std::collections::HashMap<Distinct<'_>, Timestamp> = Default::default();
    for r in records {
        let Some(token) = &r.token_id else { continue };
        if matches!(
            r.error_code.as_deref(),
            Some("invalid_token" | "missing_token")
        ) {
            continue;
        }
        let at = distinct
            .entry((
                token,
                r.source,
                r.model.as_deref().filter(|m| !m.is_empty()),
                &r.service_id,
                &r.endpoint,
            ))
            .or_insert(r.at);
        *at = (*at).min(r.at);
    }
    let mut seen: std::collections::BTreeMap<(AppTokenId, SightingKind, String), Timestamp> =
        Default::default();
    for ((token, source, model, service, endpoint), at) in distinct {
        let mut add = |kind: SightingKind, value: String| {
            let first = seen.entry((token.clone(), kind, value)).or_insert(at);
            *first = (*first).min(at);
        };
        if let Some(source) = source {
            add(SightingKind::Network, crate::rollup::source_network(source));
        }
        if let Some(model) = model {
            add(SightingKind::Model, model.to_owned());
        }
        add(
            SightingKind::Endpoint,
            format!("{service} {}", endpoint_shape(endpoint)),
        );
    }
    seen.into_iter()
        .map(|((token, kind, value), at)| Sighting {
            token,
            kind,
            value,
            at,
        })
        .collect()
}

/// The alert for a token doing something new, with what it usually does.
pub fn finding(sighting: &Sighting, usual: &[String]) -> Finding {
    let (what, habit) = match sighting.kind {
        SightingKind::Network => ("call from", "calls from"),
        SightingKind::Model => ("call for model", "uses"),
        SightingKind::Endpoint => ("call to", "calls"),
    };
    let mut known: Vec<&str> = usual.iter().map(String::as_str).take(5).collect();
    known.sort_unstable();
    let more = usual.len().saturating_sub(known.len());
    let usual = if known.is_empty() {
        "nothing else".to_owned()
    } else if more > 0 {
        format!("{} and {more} more", known.join(", "))
    } else {
        known.join(", ")
    };
    Finding {
        signal: sighting.kind.signal(),
        at: sighting.at,
        score: 1.0,
        reason: format!(
            "first {what} {}; this token {habit} {usual}",
            sighting.value
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_shapes_drop_what_varies_per_call() {
        for (path, shape) in [
            (
                "/v2/aggs/ticker/AAPL/range/1/day/2023-01-09/2023-01-09",
                "/v2/aggs/ticker/:sym/range/:n",
            ),
            ("/api/v1/quote?symbol=MSFT", "/api/v1/quote"),
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/query", "/query"),
            ("", "/"),
            ("/v3/reference/tickers/BRK.B", "/v3/reference/tickers/:sym"),
            ("/api/v1/stock/profile2", "/api/v1/stock/profile2"),
            (
                "/v1/threads/thread_abc123def456/runs",
                "/v1/threads/:n/runs",
            ),
        ] {
            assert_eq!(endpoint_shape(path), shape, "{path}");
        }
    }

    #[test]
    fn a_finding_says_what_is_new_and_what_is_usual() {
        let s = Sighting {
            token: "atk_01JD0000000000000000000000".parse().expect("id"),
            kind: SightingKind::Network,
            value: "198.51.100.0/24".into(),
            at: Timestamp::from_second(1_800_000_000).expect("ts"),
        };
        let f = finding(&s, &["203.0.113.0/24".into()]);
        assert_eq!(f.signal, Signal::NewNetwork);
        assert_eq!(
            f.reason,
            "first call from 198.51.100.0/24; this token calls from 203.0.113.0/24"
        );
    }
}

//! Usage rollups: a batch of usage records summed per time bucket (minute, hour, day, week,
//! month — UTC) and per dimension (key, app token, service, model, environment, source
//! network). Every instance writes the rollups of its own batches and the store *adds* them
//! to what is there, so rollups of the same bucket from several instances sum up and every
//! instance reads the same figures. Analytics, quota and budget restoration, anomaly
//! detection and forecasts read rollups; raw records stay for the per-call questions.
//!
//! Everything summed is a count, so sums merge by addition — including latency, kept as a
//! fixed histogram rather than a list of samples (p50/p95 are read from the merged
//! histogram, accurate to its bucket bounds).

use std::collections::HashMap;
use std::net::IpAddr;

use jiff::Timestamp;

use crate::answer::AnswerClass;
use crate::usage::{CacheOutcome, Granularity, Outcome, UsageRecord, UsageTotals};

/// Minute rollups are kept this long (charts of the last hours, the anomaly detector's
/// recent windows, and its replay after a restart); longer grains are kept for good.
pub const MINUTE_ROLLUPS_KEPT_DAYS: i64 = 8;

/// What a rollup row is about; `""` where a call had none (a refusal before a key was
/// chosen, a call without a model).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RollupDims {
    pub key_id: String,
    pub token_id: String,
    pub service_id: String,
    pub model: String,
    pub environment: String,
    pub network: String,
}

/// One bucket's sums for one combination of dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    pub granularity: Granularity,
    pub bucket: Timestamp,
    pub dims: RollupDims,
    pub totals: UsageTotals,
}

impl UsageTotals {
    /// Adds one call.
    pub fn count(&mut self, r: &UsageRecord) {
        self.requests += 1;
        self.errors += u64::from(r.outcome != Outcome::Success);
        self.cache_hits += u64::from(r.cache == CacheOutcome::Hit);
        self.cache_misses += u64::from(r.cache == CacheOutcome::Miss);
        self.saved_credits += u64::from(r.saved_credits);
        self.input_tokens += r.tokens.input.saturating_add(r.tokens.cache_write);
        self.cached_tokens += r.tokens.cached_input;
        self.output_tokens += r.tokens.output;
        self.credits += u64::from(r.credits);
        self.cost_nanos = self.cost_nanos.saturating_add(r.cost_nanos);
        self.unpriced += u64::from(r.unpriced);
        match r.answer {
            Some(AnswerClass::Rejected) => self.rejected += 1,
            Some(AnswerClass::QuotaLimited | AnswerClass::Throttled) => self.throttled += 1,
            Some(AnswerClass::Outage) => self.outages += 1,
            _ if r.outcome == Outcome::Failed => self.outages += 1,
            _ => {}
        }
        // Latency means the provider's (or the cache's) answer time: Keyward's own
        // refusals answer in microseconds and would drag every percentile down.
        if r.outcome != Outcome::Refused {
            self.latency_ms_sum += u64::from(r.latency_ms);
            self.latency.add(r.latency_ms);
        }
    }

    /// Share of calls that succeeded (0–1); `None` without calls.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0)
            .then(|| (self.requests - self.errors.min(self.requests)) as f64 / self.requests as f64)
    }
}

/// A call's source network as a value (formatted only once per rollup row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Network {
    V4([u8; 3]),
    V6([u16; 3]),
}

impl Network {
    fn of(address: IpAddr) -> Self {
        match address.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Self::V4([a, b, c])
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Self::V6([s[0], s[1], s[2]])
            }
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            Self::V6([a, b, c]) => write!(f, "{a:x}:{b:x}:{c:x}::/48"),
        }
    }
}

/// The network a call came from, as the allowlists write networks: IPv4 by /24, IPv6 by
/// /48 (a site) — fine enough to tell a new place from the usual one, coarse enough that
/// an app's servers share one. An IPv4 address mapped into IPv6 counts as IPv4.
pub fn source_network(address: IpAddr) -> String {
    Network::of(address).to_string()
}

/// Sums a batch of usage records into rollups of every granularity. Records are summed
/// once, per minute and borrowed dimensions (no allocation per call: this runs for every
/// call the proxy serves, on the usage writer); the longer grains are sums of those.
pub fn rollups(records: &[UsageRecord]) -> Vec<Rollup> {
    type Borrowed<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, Option<Network>);
    let mut minutes: HashMap<(Timestamp, Borrowed<'_>), UsageTotals> = HashMap::new();
    for r in records {
        let dims = (
            r.key_id.as_ref().map_or("", |k| k.as_str()),
            r.token_id.as_ref().map_or("", |t| t.as_str()),
            r.service_id.as_str(),
            r.model.as_deref().unwrap_or(""),
            r.environment.as_deref().unwrap_or(""),
            r.source.map(Network::of),
        );
        minutes
            .entry((Granularity::Minute.bucket_start(r.at), dims))
            .or_default()
            .count(r);
    }
    let mut sums: HashMap<(Granularity, Timestamp, RollupDims), UsageTotals> = HashMap::new();
    for ((minute, (key, token, service, model, environment, network)), totals) in minutes {
        let dims = RollupDims {
            key_id: key.to_owned(),
            token_id: token.to_owned(),
            service_id: service.to_owned(),
            model: model.to_owned(),
            environment: environment.to_owned(),
            network: network.map(|n| n.to_string()).unwrap_or_default(),
        };
        for &granularity in Granularity::ALL {
            *sums
                .entry((granularity, granularity.bucket_start(minute), dims.clone()))
                .or_default() += totals;
        }
    }
    in_write_order(sums)
}

/// The rollups collapsed to the key, service and environment (app token, model and network
/// left empty): the key-level rows the store keeps beside the full ones, so questions that
/// split no further than the key read one row per key and bucket.
pub fn by_key(rollups: &[Rollup]) -> Vec<Rollup> {
    let mut sums: HashMap<(Granularity, Timestamp, RollupDims), UsageTotals> = HashMap::new();
    for r in rollups {
        let dims = RollupDims {
            key_id: r.dims.key_id.clone(),
            service_id: r.dims.service_id.clone(),
            environment: r.dims.environment.clone(),
            ..RollupDims::default()
        };
        *sums.entry((r.granularity, r.bucket, dims)).or_default() += r.totals;
    }
    in_write_order(sums)
}

/// Summed rollups in a fixed order, so concurrent writers take row locks in the same order.
fn in_write_order(sums: HashMap<(Granularity, Timestamp, RollupDims), UsageTotals>) -> Vec<Rollup> {
    let mut out: Vec<Rollup> = sums
        .into_iter()
        .map(|((granularity, bucket, dims), totals)| Rollup {
            granularity,
            bucket,
            dims,
            totals,
        })
        .collect();
    out.sort_by(|a, b| {
        (a.granularity as u8, a.bucket, &a.dims).cmp(&(b.granularity as u8, b.bucket, &b.dims))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::TokenUsage;

    fn record(at_ms: i64, latency_ms: u32) -> UsageRecord {
        UsageRecord {
            at: Timestamp::from_millisecond(at_ms).unwrap(),
            token_id: None,
            key_id: None,
            service_id: "openai".into(),
            environment: Some("production".into()),
            method: "POST".into(),
            endpoint: "/v1/chat/completions".into(),
            status: 200,
            outcome: Outcome::Success,
            error_code: None,
            latency_ms,
            request_bytes: 0,
            response_bytes: 0,
            cache: CacheOutcome::None,
            retries: 0,
            model: Some("gpt-4o".into()),
            tokens: TokenUsage {
                input: 10,
                output: 5,
                ..TokenUsage::default()
            },
            credits: 1,
            cost_nanos: 1_000,
            answer: Some(AnswerClass::Success),
            unpriced: false,
            source: Some("203.0.113.9".parse().unwrap()),
            saved_credits: 0,
        }
    }

    #[test]
    fn networks_are_sites_not_addresses() {
        assert_eq!(
            source_network("198.51.100.77".parse().unwrap()),
            "198.51.100.0/24"
        );
        assert_eq!(
            source_network("::ffff:198.51.100.77".parse().unwrap()),
            "198.51.100.0/24"
        );
        assert_eq!(
            source_network("2001:db8:aa:1::5".parse().unwrap()),
            "2001:db8:aa::/48"
        );
    }

    #[test]
    fn a_batch_sums_per_bucket_of_every_granularity() {
        // 2026-12-07T14:59:30Z and 14:59:45 share a minute; 15:00:10 starts the next hour.
        let base = 1_796_655_570_000;
        let records = [
            record(base, 40),
            record(base + 15_000, 300),
            record(base + 40_000, 40),
        ];
        let rolled = rollups(&records);
        let count = |g: Granularity| rolled.iter().filter(|r| r.granularity == g).count();
        assert_eq!(count(Granularity::Minute), 2);
        assert_eq!(count(Granularity::Hour), 2);
        assert_eq!(count(Granularity::Day), 1);
        assert_eq!(count(Granularity::Week), 1);
        assert_eq!(count(Granularity::Month), 1);
        let month = rolled
            .iter()
            .find(|r| r.granularity == Granularity::Month)
            .unwrap();
        assert_eq!(month.bucket.to_string(), "2026-12-01T00:00:00Z");
        assert_eq!(month.totals.requests, 3);
        assert_eq!(month.totals.input_tokens, 30);
        assert_eq!(month.totals.latency.count(), 3);
        assert_eq!(month.totals.latency_ms_sum, 380);
        assert_eq!(month.dims.network, "203.0.113.0/24");
        assert_eq!(month.dims.model, "gpt-4o");
        let week = rolled
            .iter()
            .find(|r| r.granularity == Granularity::Week)
            .unwrap();
        assert_eq!(
            week.bucket.to_string(),
            "2026-12-07T00:00:00Z",
            "weeks start on Monday"
        );
    }

    #[test]
    fn key_level_rollups_collapse_tokens_models_and_networks() {
        let base = 1_796_655_570_000;
        let mut other_model = record(base + 1_000, 60);
        other_model.model = Some("gpt-4o-mini".into());
        other_model.source = Some("198.51.100.7".parse().unwrap());
        let mut other_env = record(base + 2_000, 60);
        other_env.environment = Some("staging".into());
        let full = rollups(&[record(base, 40), other_model, other_env]);
        let keyed = by_key(&full);
        let days: Vec<&Rollup> = keyed
            .iter()
            .filter(|r| r.granularity == Granularity::Day)
            .collect();
        assert_eq!(days.len(), 2, "one row per environment: {days:?}");
        let production = days
            .iter()
            .find(|r| r.dims.environment == "production")
            .unwrap();
        assert_eq!(production.totals.requests, 2);
        assert_eq!(production.totals.latency.count(), 2);
        assert_eq!(production.dims.model, "");
        assert_eq!(production.dims.network, "");
        let sum = |rows: &[Rollup]| -> u64 { rows.iter().map(|r| r.totals.requests).sum() };
        assert_eq!(sum(&keyed), sum(&full), "nothing lost or counted twice");
    }

    #[test]
    fn refusals_count_as_errors_but_not_as_latency() {
        let mut refused = record(0, 0);
        refused.outcome = Outcome::Refused;
        refused.answer = None;
        let mut rejected = record(0, 120);
        rejected.outcome = Outcome::UpstreamError;
        rejected.answer = Some(AnswerClass::Rejected);
        let mut t = UsageTotals::default();
        t.count(&refused);
        t.count(&rejected);
        assert_eq!((t.requests, t.errors, t.rejected), (2, 2, 1));
        assert_eq!(t.latency.count(), 1);
        assert_eq!(t.success_rate(), Some(0.0));
    }
}

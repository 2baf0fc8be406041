//! Prometheus metrics for `/metrics`.
//!
//! Proxy figures are derived from the usage records as the batch writer takes them, so the
//! request path pays nothing for them; gauges (dropped and queued events, cache size) are
//! read from the proxy when scraped. The recorder belongs to the `App` — not installed
//! globally — so every server (and every test) has its own.
//!
//! Label values are only ever names Keyward defines: catalog service ids (a service name
//! the client made up is counted as `unknown`), outcomes, cache results and error codes.
//! Never key or token ids, paths or anything else from the request.

use keyward_core::usage::{Outcome, UsageRecord};
use keyward_proxy::ProxyGauges;
use metrics::{Recorder, with_local_recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Upstream latency buckets in seconds: a cache hit is well under a millisecond, an LLM
/// answer can take a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let builder = PrometheusBuilder::new();
        // Only fails for an empty bucket list.
        let builder = match builder.set_buckets(LATENCY_BUCKETS) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let metrics = Self { recorder, handle };
        metrics.describe();
        metrics
    }
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        with_local_recorder(&self.recorder as &dyn Recorder, f)
    }

    fn describe(&self) {
        self.with(|| {
            metrics::describe_counter!(
                "keyward_proxy_requests_total",
                "Proxy calls by service, outcome (success, upstream_error, soft_error, refused, failed) and cache result"
            );
            metrics::describe_counter!(
                "keyward_proxy_refusals_total",
                "Calls Keyward answered itself with an error, by error code"
            );
            metrics::describe_histogram!(
                "keyward_proxy_latency_seconds",
                metrics::Unit::Seconds,
                "Time from the request to the end of the answer's headers, by service"
            );
            metrics::describe_counter!(
                "keyward_proxy_retries_total",
                "Extra attempts (retries and failovers) by service"
            );
            metrics::describe_counter!(
                "keyward_proxy_tokens_total",
                "LLM tokens by service and kind (input, cached_input, cache_write, output)"
            );
            metrics::describe_counter!(
                "keyward_proxy_cost_nanodollars_total",
                "Priced cost of proxied calls in billionths of a US dollar, by service"
            );
            metrics::describe_counter!(
                "keyward_proxy_answers_total",
                "Provider answers by service and what the service's rules say they mean (success, rejected, quota_limited, throttled, failed, outage, unclassified)"
            );
            metrics::describe_counter!(
                "keyward_proxy_unpriced_calls_total",
                "Calls to a model or endpoint without a listed price, charged at the conservative fallback, by service"
            );
            metrics::describe_counter!(
                "keyward_proxy_uninspected_bodies_total",
                "LLM answers too large to read their usage: passed through and not metered"
            );
            metrics::describe_gauge!(
                "keyward_snapshot_age_seconds",
                "Seconds since this instance last confirmed its view of the vault matches the store (-1: never)"
            );
            metrics::describe_gauge!(
                "keyward_snapshot_stale",
                "1 while the view went unconfirmed past max_snapshot_staleness and proxied calls are refused"
            );
            metrics::describe_gauge!(
                "keyward_redis_up",
                "1 while Redis answers and limits, quotas and budgets are shared; 0 during an outage (absent without redis_url)"
            );
            metrics::describe_counter!(
                "keyward_redis_errors_total",
                "Calls to Redis that failed, timed out or got an answer Keyward does not expect"
            );
            metrics::describe_gauge!(
                "keyward_redis_live_instances",
                "Instances Redis saw alive at the last heartbeat (the divisor of a token's rate during an outage)"
            );
            metrics::describe_gauge!(
                "keyward_backup_last_success_timestamp_seconds",
                "When the vault's last scheduled backup succeeded, Unix seconds (0: never; absent without backup_schedule)"
            );
            metrics::describe_gauge!(
                "keyward_backup_last_failed",
                "1 when the vault's last scheduled backup failed"
            );
            metrics::describe_gauge!(
                "keyward_backup_last_bytes",
                "Size of the vault's last successful scheduled backup"
            );
            metrics::describe_gauge!(
                "keyward_backup_last_duration_seconds",
                "How long the vault's last scheduled backup took"
            );
            metrics::describe_counter!(
                "keyward_hsm_operations_total",
                "Operations sent to the PKCS#11 token by kind (encrypt: wrapping, decrypt: unwrapping); absent without a token"
            );
            metrics::describe_counter!(
                "keyward_hsm_data_key_cache_hits_total",
                "Data keys served from the short-lived in-memory cache instead of the PKCS#11 token"
            );
            metrics::describe_counter!(
                "keyward_usage_write_failures_total",
                "Usage batches the store refused (the events in them are lost)"
            );
        });
    }

    /// Counts a batch of finished calls. `known` says whether a service id is in the catalog.
    /// Counts are summed per label set first and each counter is touched once per batch
    /// (a registry lookup per record and label set showed in the proxy's CPU per request).
    pub fn observe<'a>(
        &self,
        records: impl IntoIterator<Item = &'a UsageRecord>,
        known: impl Fn(&str) -> bool,
    ) {
        use std::collections::HashMap;
        let mut requests: HashMap<(&str, &'static str, &'static str), u64> = HashMap::new();
        let mut answers: HashMap<(&str, &'static str), u64> = HashMap::new();
        let mut unpriced: HashMap<&str, u64> = HashMap::new();
        let mut refusals: HashMap<&str, u64> = HashMap::new();
        let mut latencies: HashMap<&str, Vec<f64>> = HashMap::new();
        let mut retries: HashMap<&str, u64> = HashMap::new();
        let mut tokens: HashMap<(&str, &'static str), u64> = HashMap::new();
        let mut cost: HashMap<&str, u64> = HashMap::new();
        for r in records {
            let service = if known(&r.service_id) {
                r.service_id.as_str()
            } else {
                "unknown"
            };
            *requests
                .entry((service, r.outcome.as_str(), r.cache.as_str()))
                .or_default() += 1;
            if let Some(answer) = r.answer {
                *answers.entry((service, answer.as_str())).or_default() += 1;
            }
            if r.unpriced {
                *unpriced.entry(service).or_default() += 1;
            }
            if r.outcome == Outcome::Refused {
                *refusals
                    .entry(r.error_code.as_deref().unwrap_or("unknown"))
                    .or_default() += 1;
                continue;
            }
            latencies
                .entry(service)
                .or_default()
                .push(f64::from(r.latency_ms) / 1000.0);
            if r.retries > 0 {
                *retries.entry(service).or_default() += u64::from(r.retries);
            }
            let t = r.tokens;
            for (kind, n) in [
                ("input", t.input),
                ("cached_input", t.cached_input),
                ("cache_write", t.cache_write),
                ("output", t.output),
            ] {
                if n > 0 {
                    *tokens.entry((service, kind)).or_default() += n;
                }
            }
            if r.cost_nanos > 0 {
                *cost.entry(service).or_default() += r.cost_nanos;
            }
        }
        self.with(|| {
            for ((service, outcome, cache), n) in requests {
                metrics::counter!(
                    "keyward_proxy_requests_total",
                    "service" => service.to_owned(),
                    "outcome" => outcome,
                    "cache" => cache,
                )
                .increment(n);
            }
            for ((service, answer), n) in answers {
                metrics::counter!(
                    "keyward_proxy_answers_total",
                    "service" => service.to_owned(),
                    "answer" => answer,
                )
                .increment(n);
            }
            for (service, n) in unpriced {
                metrics::counter!("keyward_proxy_unpriced_calls_total", "service" => service.to_owned())
                    .increment(n);
            }
            for (code, n) in refusals {
                metrics::counter!("keyward_proxy_refusals_total", "code" => code.to_owned())
                    .increment(n);
            }
            for (service, values) in latencies {
                let histogram =
                    metrics::histogram!("keyward_proxy_latency_seconds", "service" => service.to_owned());
                for value in values {
                    histogram.record(value);
                }
            }
            for (service, n) in retries {
                metrics::counter!("keyward_proxy_retries_total", "service" => service.to_owned())
                    .increment(n);
            }
            for ((service, kind), n) in tokens {
                metrics::counter!("keyward_proxy_tokens_total", "service" => service.to_owned(), "kind" => kind)
                    .increment(n);
            }
            for (service, n) in cost {
                metrics::counter!("keyward_proxy_cost_nanodollars_total", "service" => service.to_owned())
                    .increment(n);
            }
        });
    }

    /// The vault's last scheduled backup, as every instance reads it from the store.
    pub fn backup_status(&self, scheduled: bool, last: Option<&keyward_app::backup::BackupRecord>) {
        if !scheduled {
            return;
        }
        #[allow(clippy::cast_precision_loss, reason = "gauges are floats")]
        self.with(|| {
            let success = last.and_then(|l| l.last_success_at).unwrap_or(0);
            metrics::gauge!("keyward_backup_last_success_timestamp_seconds")
                .set(success as f64 / 1000.0);
            metrics::gauge!("keyward_backup_last_failed")
                .set(f64::from(u8::from(last.is_some_and(|l| l.error.is_some()))));
            if let Some(last) = last.filter(|l| l.error.is_none()) {
                metrics::gauge!("keyward_backup_last_bytes").set(last.bytes as f64);
                metrics::gauge!("keyward_backup_last_duration_seconds").set(last.seconds);
            }
        });
    }

    pub fn usage_write_failed(&self) {
        self.with(|| metrics::counter!("keyward_usage_write_failures_total").increment(1));
    }

    /// The Prometheus text exposition, with the proxy's gauges and the token's counts as
    /// of now.
    pub fn render(
        &self,
        gauges: ProxyGauges,
        hsm: Option<keyward_crypto::hsm::HsmCallCounts>,
    ) -> String {
        #[expect(clippy::cast_precision_loss, reason = "gauges are far below 2^52")]
        self.with(|| {
            metrics::counter!("keyward_proxy_events_dropped_total").absolute(gauges.dropped_events);
            metrics::gauge!("keyward_proxy_events_queued").set(gauges.queued_events as f64);
            metrics::gauge!("keyward_proxy_cache_entries").set(gauges.cache_entries as f64);
            metrics::gauge!("keyward_proxy_cache_bytes").set(gauges.cache_bytes as f64);
            metrics::counter!("keyward_proxy_expired_key_uses_total")
                .absolute(gauges.expired_key_uses);
            metrics::counter!("keyward_proxy_uninspected_bodies_total")
                .absolute(gauges.uninspected_bodies);
            metrics::gauge!("keyward_snapshot_age_seconds")
                .set(gauges.snapshot_age.map_or(-1.0, |age| age.as_secs_f64()));
            metrics::gauge!("keyward_snapshot_stale")
                .set(f64::from(u8::from(gauges.snapshot_stale)));
            if let Some(shared) = gauges.shared_limits {
                metrics::gauge!("keyward_redis_up").set(f64::from(u8::from(shared.up)));
                metrics::counter!("keyward_redis_errors_total").absolute(shared.errors);
                metrics::gauge!("keyward_redis_live_instances").set(shared.live_instances as f64);
            }
            if let Some(hsm) = hsm {
                metrics::counter!("keyward_hsm_operations_total", "operation" => "encrypt")
                    .absolute(hsm.encrypt);
                metrics::counter!("keyward_hsm_operations_total", "operation" => "decrypt")
                    .absolute(hsm.decrypt);
                metrics::counter!("keyward_hsm_data_key_cache_hits_total").absolute(hsm.cache_hits);
            }
        });
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use keyward_core::answer::AnswerClass;
    use keyward_core::usage::{CacheOutcome, TokenUsage};

    fn record(service: &str, outcome: Outcome) -> UsageRecord {
        UsageRecord {
            at: Timestamp::UNIX_EPOCH,
            token_id: None,
            key_id: None,
            service_id: service.to_owned(),
            environment: None,
            method: "POST".into(),
            endpoint: "/v1/chat/completions".into(),
            status: 200,
            outcome,
            error_code: (outcome == Outcome::Refused).then(|| "budget_exceeded".to_owned()),
            latency_ms: 12,
            request_bytes: 10,
            response_bytes: 20,
            cache: CacheOutcome::Miss,
            retries: 1,
            model: None,
            tokens: TokenUsage {
                input: 5,
                output: 1,
                ..TokenUsage::default()
            },
            credits: 1,
            cost_nanos: 8250,
            answer: (outcome == Outcome::Success).then_some(AnswerClass::Success),
            unpriced: outcome == Outcome::Success,
            source: None,
            saved_credits: 0,
        }
    }

    #[test]
    fn counts_calls_with_bounded_labels_and_renders_gauges() {
        let metrics = Metrics::default();
        metrics.observe(
            &[
                record("openai", Outcome::Success),
                record("openai", Outcome::Refused),
                record("made-up-by-client", Outcome::Success),
            ],
            |s| s == "openai",
        );
        let text = metrics.render(
            ProxyGauges {
                dropped_events: 7,
                queued_events: 2,
                cache_entries: 3,
                cache_bytes: 4096,
                expired_key_uses: 2,
                uninspected_bodies: 3,
                snapshot_age: Some(std::time::Duration::from_millis(1500)),
                snapshot_stale: false,
                shared_limits: Some(keyward_proxy::SharedGauges {
                    up: false,
                    errors: 4,
                    live_instances: 3,
                }),
            },
            Some(keyward_crypto::hsm::HsmCallCounts {
                encrypt: 2,
                decrypt: 5,
                cache_hits: 40,
            }),
        );
        for line in [
            r#"keyward_proxy_requests_total{service="openai",outcome="success",cache="miss"} 1"#,
            r#"keyward_proxy_requests_total{service="unknown",outcome="success",cache="miss"} 1"#,
            r#"keyward_proxy_refusals_total{code="budget_exceeded"} 1"#,
            r#"keyward_proxy_tokens_total{service="openai",kind="input"} 5"#,
            r#"keyward_proxy_cost_nanodollars_total{service="openai"} 8250"#,
            r#"keyward_proxy_retries_total{service="openai"} 1"#,
            "keyward_proxy_events_dropped_total 7",
            "keyward_proxy_cache_bytes 4096",
            "keyward_proxy_expired_key_uses_total 2",
            r#"keyward_proxy_answers_total{service="openai",answer="success"} 1"#,
            r#"keyward_proxy_unpriced_calls_total{service="openai"} 1"#,
            "keyward_proxy_uninspected_bodies_total 3",
            "keyward_snapshot_age_seconds 1.5",
            "keyward_snapshot_stale 0",
            "keyward_redis_up 0",
            "keyward_redis_errors_total 4",
            "keyward_redis_live_instances 3",
            r#"keyward_hsm_operations_total{operation="decrypt"} 5"#,
            "keyward_hsm_data_key_cache_hits_total 40",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("made-up-by-client"));
        assert!(text.contains("keyward_proxy_latency_seconds_bucket"));
    }
}

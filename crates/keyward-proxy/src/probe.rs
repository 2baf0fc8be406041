//! Active health probes: a key's validation request sent by Keyward itself, spent from the
//! key's own allowance like any call (a probe the allowance cannot afford is not sent),
//! metered as a usage record, and fed to the key's passive health and breaker.

use keyward_core::Error;
use keyward_core::key::Key;
use keyward_core::service::ServiceDefinition;
use keyward_core::usage::{CacheOutcome, KeyFlagKind, Outcome, TokenUsage, UsageRecord};
use secrecy::SecretString;

use crate::forward::ProxyEvent;
use crate::quota::Spend;
use crate::{Proxy, Validation, Verdict};

impl Proxy {
    /// Probes `key` with `value` (its current value). `None` when the key's allowance
    /// cannot afford the request now: then nothing is sent.
    pub async fn probe(
        &self,
        service: &ServiceDefinition,
        key: &Key,
        value: &SecretString,
    ) -> Result<Option<Validation>, Error> {
        let request = service.validation.as_ref().ok_or_else(|| {
            Error::invalid(
                "no_validation_request",
                format!("{} declares no validation request", service.name),
            )
        })?;
        let path = request
            .path
            .split_once('?')
            .map_or(request.path.as_str(), |(p, _)| p);
        let now = self.clock.now();
        let spend = Spend {
            requests: 1,
            credits: u64::from(service.credits(path, &[])),
        };
        if self
            .sink
            .meters
            .take(&key.id, &key.limits, &service.quota_calendar, spend, now)
            .is_err()
        {
            return Ok(None);
        }
        let validation = self.validate(service, value).await?;
        let now = self.clock.now();
        let failed = matches!(
            validation.answer,
            None | Some(keyward_core::answer::AnswerClass::Outage)
        );
        self.health
            .record_call(&key.id, failed, validation.latency_ms, now);
        match validation.verdict {
            Verdict::Rejected => {
                self.raise(
                    &key.id,
                    KeyFlagKind::Rejected,
                    format!(
                        "a health probe got HTTP {}",
                        validation.status.unwrap_or_default()
                    ),
                    None,
                );
            }
            Verdict::Throttled => {
                if let Some((hold, reason)) = &validation.hold {
                    self.raise(
                        &key.id,
                        KeyFlagKind::QuotaLimited,
                        format!("a health probe got {reason}"),
                        Some(*hold),
                    );
                }
            }
            Verdict::Valid
                if self
                    .health
                    .flag(&key.id, None, now)
                    .is_some_and(|f| f.kind == KeyFlagKind::Rejected) =>
            {
                self.health.clear(&key.id, now);
                self.sink.emit(ProxyEvent::FlagCleared(key.id.clone()));
            }
            _ => {}
        }
        self.sink.emit(ProxyEvent::Usage(Box::new(UsageRecord {
            at: now,
            token_id: None,
            key_id: Some(key.id.clone()),
            service_id: service.id.clone(),
            environment: Some(key.environment.clone()),
            method: request.method.chars().take(16).collect(),
            endpoint: path.chars().take(200).collect(),
            status: validation.status.unwrap_or(0),
            outcome: match validation.verdict {
                Verdict::Valid => Outcome::Success,
                Verdict::Unreachable => Outcome::Failed,
                Verdict::Throttled | Verdict::Inconclusive
                    if validation.status.is_some_and(|s| s < 300) =>
                {
                    Outcome::SoftError
                }
                _ => Outcome::UpstreamError,
            },
            error_code: None,
            latency_ms: u32::try_from(validation.latency_ms).unwrap_or(u32::MAX),
            request_bytes: 0,
            response_bytes: 0,
            cache: CacheOutcome::None,
            retries: 0,
            model: None,
            tokens: TokenUsage::default(),
            credits: u32::try_from(spend.credits).unwrap_or(u32::MAX),
            cost_nanos: 0,
            answer: validation.answer,
            unpriced: false,
            source: None,
            saved_credits: 0,
        })));
        Ok(Some(validation))
    }

    /// A key's calls over the last five minutes on this instance, its breaker and until
    /// when it stays open.
    pub fn passive_health(
        &self,
        key: &keyward_core::id::KeyId,
    ) -> (
        keyward_core::health::CallStats,
        keyward_core::health::BreakerState,
        Option<jiff::Timestamp>,
    ) {
        self.health.passive(key, self.clock.now())
    }
}

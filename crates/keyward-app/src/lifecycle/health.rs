//! Key and service health (`impl App`): what real traffic says (every instance's calls
//! over the last five minutes, from the usage records), the provider's flags, this
//! instance's circuit breakers, and active probes of idle keys within each key's probe
//! budget. Rules live in `keyward_core::health`; this file gathers the evidence, sends the
//! probes and announces changes (`health_changed`) once across instances.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::health::{
    Assessment, BreakerState, CallStats, HealthState, HealthStatus, PASSIVE_WINDOW, assess_key,
    next_probe_at, probe_interval, service_status,
};
use keyward_core::id::KeyId;
use keyward_core::key::{Key, KeyStatus};
use keyward_core::notification::NotificationKind;
use keyward_core::usage::KeyFlag;
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;

/// One key's health.
#[derive(Debug, Clone)]
pub struct KeyHealth {
    pub key: Key,
    pub assessment: Assessment,
    /// Calls with the key over the last five minutes, on every instance.
    pub calls: CallStats,
    /// This instance's circuit breaker for the key, and until when it stays open.
    pub breaker: BreakerState,
    pub breaker_open_until: Option<Timestamp>,
    pub flag: Option<KeyFlag>,
    /// The last active probe: when, and its verdict (none while it runs).
    pub last_probe: Option<(Timestamp, Option<String>)>,
    /// When the key is probed next if nothing else is heard of it; `None` when it is not
    /// probed (probes off, not active, or the service has no validation request).
    pub next_probe_at: Option<Timestamp>,
}

/// One service's health, from its keys'.
#[derive(Debug, Clone)]
pub struct ServiceHealth {
    pub service_id: String,
    pub name: String,
    pub status: HealthStatus,
    /// Many of its keys failing at once: the provider, not a key, is the likely cause.
    pub disruption: bool,
    pub keys: usize,
    pub failing: usize,
    pub calls: CallStats,
}

#[derive(Debug, Clone)]
pub struct HealthReport {
    pub at: Timestamp,
    pub keys: Vec<KeyHealth>,
    pub services: Vec<ServiceHealth>,
}

/// Whether to use this instance's circuit breakers. Announcements leave them out: they
/// differ between instances, and instances that disagreed would announce back and forth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breakers {
    Local,
    Ignored,
}

impl App {
    /// The health of every active key the caller can read, and of their services.
    pub async fn health(&self, actor: &Actor) -> Result<HealthReport, Error> {
        let reach = actor.access.reach(Permission::KeysRead);
        let catalog = self.catalog().await?;
        let keys = self
            .active_keys()
            .await?
            .into_iter()
            .filter(|k| {
                let category = catalog
                    .get(&k.service_id)
                    .map(|s| s.category.as_str())
                    .unwrap_or_default();
                reach.covers(category, &k.environment)
            })
            .collect();
        self.health_of(keys, Breakers::Local).await
    }

    /// One key's health (any state but deleted).
    pub async fn key_health(&self, actor: &Actor, id: &KeyId) -> Result<KeyHealth, Error> {
        let key = self.key_for(actor, Permission::KeysRead, id).await?;
        key.ensure_not_deleted()?;
        self.health_of(vec![key], Breakers::Local)
            .await?
            .keys
            .pop()
            .ok_or_else(|| Error::internal("a key's health report is missing"))
    }

    async fn active_keys(&self) -> Result<Vec<Key>, Error> {
        let now = self.now();
        Ok(self
            .store
            .live_keys()
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|k| k.status(now) == KeyStatus::Active)
            .collect())
    }

    async fn health_of(&self, keys: Vec<Key>, breakers: Breakers) -> Result<HealthReport, Error> {
        let now = self.now();
        let since = now.checked_sub(PASSIVE_WINDOW).unwrap_or(now);
        let calls: HashMap<KeyId, CallStats> = self
            .store
            .recent_calls(since)
            .await?
            .into_iter()
            .map(|c| (c.key_id, c.stats))
            .collect();
        let flags: HashMap<KeyId, KeyFlag> = self
            .store
            .key_flags()
            .await?
            .into_iter()
            .filter(|f| f.in_force(now))
            .map(|f| (f.key_id.clone(), f))
            .collect();
        let probes = self.last_probes().await?;
        let catalog = self.catalog().await?;
        let mut report = Vec::with_capacity(keys.len());
        for key in keys {
            let stats = calls.get(&key.id).copied().unwrap_or_default();
            let (breaker, open_until) = match breakers {
                Breakers::Local => {
                    let (_, state, until) = self.proxy.passive_health(&key.id);
                    (state, until)
                }
                Breakers::Ignored => (BreakerState::Closed, None),
            };
            let flag = flags.get(&key.id).cloned();
            let assessment = assess_key(&stats, breaker, flag.as_ref().map(|f| f.kind));
            let last_probe = probes.get(&key.id).cloned();
            let probed = self.health_probes
                && key.status(now) == KeyStatus::Active
                && catalog
                    .get(&key.service_id)
                    .is_some_and(|s| s.validation.is_some());
            let next_probe = probed
                .then(|| next_probe_at(last_evidence(&key, last_probe.as_ref()), &key.limits));
            report.push(KeyHealth {
                key,
                assessment,
                calls: stats,
                breaker,
                breaker_open_until: open_until,
                flag,
                last_probe,
                next_probe_at: next_probe,
            });
        }
        let mut by_service: BTreeMap<&str, Vec<&KeyHealth>> = BTreeMap::new();
        for k in &report {
            by_service.entry(&k.key.service_id).or_default().push(k);
        }
        let services = by_service
            .into_iter()
            .map(|(service_id, keys)| {
                let statuses: Vec<HealthStatus> =
                    keys.iter().map(|k| k.assessment.status).collect();
                let (status, disruption) = service_status(&statuses);
                let calls = keys.iter().fold(CallStats::default(), |mut sum, k| {
                    sum.calls += k.calls.calls;
                    sum.failures += k.calls.failures;
                    sum.latency_ms_total += k.calls.latency_ms_total;
                    sum
                });
                ServiceHealth {
                    service_id: service_id.to_owned(),
                    name: catalog
                        .get(service_id)
                        .map_or_else(|| service_id.to_owned(), |s| s.name.clone()),
                    status,
                    disruption,
                    keys: keys.len(),
                    failing: statuses
                        .iter()
                        .filter(|s| **s != HealthStatus::Healthy)
                        .count(),
                    calls,
                }
            })
            .collect();
        Ok(HealthReport {
            at: now,
            keys: report,
            services,
        })
    }

    /// Every key's last probe: when, and its verdict.
    async fn last_probes(&self) -> Result<HashMap<KeyId, (Timestamp, Option<String>)>, Error> {
        Ok(self
            .store
            .probes()
            .await?
            .into_iter()
            .map(|(id, at, verdict)| (id, (at, verdict)))
            .collect())
    }

    /// Probes every active, idle key whose probe is due, each at most once per its probe
    /// interval across all instances (the store's claim). Returns how many were sent.
    pub async fn run_probes(&self) -> Result<usize, Error> {
        if !self.health_probes {
            return Ok(0);
        }
        let now = self.now();
        let catalog = self.catalog().await?;
        let probes = self.last_probes().await?;
        let mut sent = 0;
        for (key, version) in self.store.live_keys().await? {
            if key.status(now) != KeyStatus::Active {
                continue;
            }
            let Some(service) = catalog.get(&key.service_id) else {
                continue;
            };
            if service.validation.is_none()
                || next_probe_at(last_evidence(&key, probes.get(&key.id)), &key.limits) > now
            {
                continue;
            }
            let last_before = now.checked_sub(probe_interval(&key.limits)).unwrap_or(now);
            if !self.store.claim_probe(&key.id, now, last_before).await? {
                continue;
            }
            // One key that cannot be read must not stop the probes of the others.
            let value = match self.version_value(&key.id, version.version).await {
                Ok(value) => value,
                Err(e) => {
                    tracing::warn!(key = %key.id, error = %e, "a key could not be unsealed for its health probe");
                    self.store.set_probe_verdict(&key.id, "error").await?;
                    continue;
                }
            };
            let verdict = match self.proxy.probe(service, &key, &value).await {
                Ok(Some(validation)) => {
                    sent += 1;
                    validation.verdict.as_str()
                }
                Ok(None) => "no_allowance",
                Err(e) => {
                    tracing::warn!(key = %key.id, error = %e, "a health probe could not be sent");
                    "error"
                }
            };
            drop(value);
            self.store.set_probe_verdict(&key.id, verdict).await?;
        }
        Ok(sent)
    }

    /// Compares every active key's and service's health with the last announced one and
    /// queues `health_changed` for each change this instance is first to record. A key's
    /// first status is announced only when it is not healthy. Returns how many changed.
    pub async fn announce_health_changes(&self) -> Result<usize, Error> {
        let keys = self.active_keys().await?;
        let report = self.health_of(keys, Breakers::Ignored).await?;
        let known: HashMap<String, HealthState> = self
            .store
            .health_states()
            .await?
            .into_iter()
            .map(|s| (s.subject.clone(), s))
            .collect();
        let catalog = self.catalog().await?;
        let mut changed = 0;
        for k in &report.keys {
            let subject = format!("key:{}", k.key.id);
            let category = catalog.get(&k.key.service_id).map(|s| s.category.clone());
            let data = json!({"key": k.key.id.as_str(), "alias": k.key.alias,
                              "service": k.key.service_id, "environment": k.key.environment,
                              "reasons": k.assessment.reasons});
            if self
                .announce(
                    &known,
                    subject,
                    (k.assessment.status, false),
                    crate::notifications::about::About::key(
                        category.as_deref(),
                        &k.key.environment,
                    ),
                    data,
                )
                .await?
            {
                changed += 1;
            }
        }
        for s in &report.services {
            let subject = format!("service:{}", s.service_id);
            let category = catalog.get(&s.service_id).map(|d| d.category.clone());
            let data = json!({"service": s.service_id, "name": s.name, "keys": s.keys,
                              "failing": s.failing, "disruption": s.disruption});
            if self
                .announce(
                    &known,
                    subject,
                    (s.status, s.disruption),
                    crate::notifications::about::About {
                        category: category.as_deref(),
                        environment: None,
                    },
                    data,
                )
                .await?
            {
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn announce(
        &self,
        known: &HashMap<String, HealthState>,
        subject: String,
        (status, disruption): (HealthStatus, bool),
        about: crate::notifications::about::About<'_>,
        mut data: serde_json::Value,
    ) -> Result<bool, Error> {
        let previous = known.get(&subject);
        if previous.is_some_and(|p| (p.status, p.disruption) == (status, disruption)) {
            return Ok(false);
        }
        let next = HealthState {
            subject,
            status,
            disruption,
            since: self.now(),
        };
        let expected = previous.map(|p| (p.status, p.disruption));
        if !self.store.set_health_state(&next, expected).await? {
            return Ok(false);
        }
        let first_and_fine = previous.is_none() && status == HealthStatus::Healthy && !disruption;
        if first_and_fine {
            return Ok(false);
        }
        data["status"] = status.as_str().into();
        data["previous"] = previous.map(|p| p.status.as_str()).into();
        self.notify(
            NotificationKind::HealthChanged,
            about,
            format!("health:{}:{}", next.subject, next.since.as_millisecond()),
            data,
        )
        .await;
        Ok(true)
    }
}

/// The last time anything told us about the key: created, a new value, real traffic, or
/// its last probe.
fn last_evidence(key: &Key, last_probe: Option<&(Timestamp, Option<String>)>) -> Timestamp {
    [
        Some(key.created_at),
        Some(key.rotated_at),
        key.last_used_at,
        last_probe.map(|(at, _)| *at),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(key.created_at)
}

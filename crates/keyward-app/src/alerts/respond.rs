//! The graduated response as use cases: the vault's response policy; escalating open
//! alerts on its schedule (throttle the token, then freeze the key or token — one
//! instance acts, by a compare-and-set on the alert's stage, and every instance's proxy
//! follows within its half-second change poll); freezing by hand; lifting a freeze
//! (approval-gated, `ApprovalAction::Unfreeze`); and what is in force.

use jiff::{SignedDuration, Timestamp};
use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::alert::{Alert, AlertFilter, AlertStatus, AlertSubject};
use keyward_core::approval::ApprovalAction;
use keyward_core::audit::AuditOutcome;
use keyward_core::key::Criticality;
use keyward_core::notification::NotificationKind;
use keyward_core::response::{
    Containment, Measure, ResponsePolicy, Stage, SubjectFacts, throttled_rate,
};
use keyward_core::usage::{Granularity, UsageQuery};
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::notifications::about::About;
use crate::pipeline::{Change, Subject};

/// The vault setting holding the response policy (JSON); absent means alerts only.
pub const RESPONSE_POLICY_SETTING: &str = "response_policy";

/// The system actor that escalates.
const RESPONDER: &str = "anomaly-response";

/// How far back a token's usual rate is read when it is throttled without a configured
/// limit (its busiest hour before the alert).
const USUAL_RATE_DAYS: i64 = 7;

impl App {
    pub async fn response_policy(&self) -> Result<ResponsePolicy, Error> {
        self.stored_policy(RESPONSE_POLICY_SETTING, ResponsePolicy::default())
            .await
    }

    /// Replaces the response policy — an access change (it can freeze keys), so it passes
    /// the approval policy's gate like one.
    pub async fn set_response_policy(
        &self,
        actor: &Actor,
        policy: ResponsePolicy,
    ) -> Result<ResponsePolicy, Error> {
        let policy = policy.validate()?;
        let value = serde_json::to_value(&policy)
            .map_err(|e| Error::internal(format!("cannot describe the policy: {e}")))?;
        let text = value.to_string();
        let change = Change::new(
            "policy.response.update",
            Subject::vault("policy:response"),
            Permission::AccessWrite,
            json!({"rules": policy.rules.len()}),
        )
        .access_change("policy:response", value);
        self.apply(
            actor,
            change,
            self.store_policy(RESPONSE_POLICY_SETTING, &text),
        )
        .await?;
        Ok(policy)
    }

    /// Moves every open alert along the policy's schedule. Returns how many steps were
    /// taken (by this instance; another may have taken some).
    pub async fn escalate_alerts(&self) -> Result<usize, Error> {
        let policy = self.response_policy().await?;
        if policy.rules.is_empty() {
            return Ok(0);
        }
        let now = self.now();
        let filter = AlertFilter {
            status: Some(AlertStatus::Open),
            ..AlertFilter::default()
        };
        let mut taken = 0;
        let mut cursor = None;
        loop {
            let page = self.store.alerts(&filter, cursor.as_ref(), 200).await?;
            cursor = page.last().map(|a| a.id.clone());
            for alert in &page {
                if alert.stage == Stage::Frozen {
                    continue;
                }
                let facts = self.subject_facts(&alert.subject).await?;
                let Some(escalation) = policy.escalation(alert, &facts) else {
                    continue;
                };
                let due = escalation.due(alert, now);
                if due > alert.stage
                    && self
                        .store
                        .advance_alert_stage(&alert.id, alert.stage, due)
                        .await?
                {
                    self.take_step(alert, due, escalation.throttle_percent, &facts)
                        .await?;
                    taken += 1;
                }
            }
            if cursor.is_none() {
                return Ok(taken);
            }
        }
    }

    /// Puts the measure of `stage` in force for `alert` (this instance won the stage).
    async fn take_step(
        &self,
        alert: &Alert,
        stage: Stage,
        percent: u8,
        facts: &SubjectFacts,
    ) -> Result<(), Error> {
        let measure = match (stage, &alert.subject) {
            (Stage::Frozen, _) => Measure::Freeze,
            (Stage::Throttled, AlertSubject::Token(id)) => {
                let configured = self.store.app_token(id).await?.and_then(|t| t.rate_limit);
                let usual = self.usual_hourly_requests(id, alert.opened_at).await?;
                Measure::Throttle(throttled_rate(configured, usual, percent))
            }
            _ => return Ok(()),
        };
        let now = self.now();
        let containment = Containment {
            subject: alert.subject.clone(),
            measure,
            alert: Some(alert.id.clone()),
            reason: format!("{}: {}", alert.signal, alert.reason),
            by: RESPONDER.into(),
            at: now,
        };
        let mut details = json!({
            "alert": alert.id, "signal": alert.signal, "stage": stage, "measure": measure.name(),
        });
        if let Measure::Throttle(limit) = measure {
            details["rate_limit"] = json!(limit);
        }
        self.record_audit(
            &Actor::system(RESPONDER),
            "alert.escalated",
            Some(alert.subject.target()),
            AuditOutcome::Success,
            details.clone(),
        )
        .await?;
        self.store.contain(&containment).await?;
        self.refresh_proxy().await?;
        details["subject"] = json!({"kind": alert.subject.kind(), "id": alert.subject.id()});
        details["reason"] = json!(alert.reason);
        let environment = facts.environment.as_deref();
        self.notify(
            NotificationKind::AlertEscalated,
            About {
                category: facts.categories.first().map(String::as_str),
                environment,
            },
            format!("alert_escalated:{}:{stage}", alert.id),
            details,
        )
        .await;
        Ok(())
    }

    /// A token's busiest hour of requests in the days before `before`.
    async fn usual_hourly_requests(
        &self,
        id: &keyward_core::id::AppTokenId,
        before: Timestamp,
    ) -> Result<u64, Error> {
        let from = before
            .checked_sub(SignedDuration::from_hours(24 * USUAL_RATE_DAYS))
            .unwrap_or(before);
        let end = Granularity::Hour.bucket_start(before);
        if end <= from {
            return Ok(0);
        }
        let query = UsageQuery::new(from, end, Granularity::Hour, None, Some(id.clone()), None)?;
        Ok(self
            .store
            .usage(&query)
            .await?
            .iter()
            .map(|b| b.totals.requests)
            .max()
            .unwrap_or(0))
    }

    /// Categories and criticality of an alert's subject, for the policy's conditions: a
    /// key's own; a token's services' categories and the most critical key it can reach.
    pub(crate) async fn subject_facts(
        &self,
        subject: &AlertSubject,
    ) -> Result<SubjectFacts, Error> {
        let catalog = self.catalog().await?;
        let category = |service: &str| catalog.get(service).map(|s| s.category.clone());
        Ok(match subject {
            AlertSubject::Key(id) => match self.store.key(id).await? {
                Some(key) => SubjectFacts {
                    categories: category(&key.service_id).into_iter().collect(),
                    criticality: Some(key.criticality),
                    environment: Some(key.environment.clone()),
                },
                None => SubjectFacts::default(),
            },
            AlertSubject::Token(id) => match self.store.app_token(id).await? {
                Some(token) => {
                    let mut categories: Vec<String> =
                        token.services.iter().filter_map(|s| category(s)).collect();
                    categories.sort();
                    categories.dedup();
                    let criticality: Option<Criticality> = self
                        .store
                        .live_keys()
                        .await?
                        .into_iter()
                        .map(|(key, _)| key)
                        .filter(|k| token.services.contains(&k.service_id))
                        .filter(|k| token.environments.contains(&k.environment))
                        .filter(|k| token.key_ids.is_empty() || token.key_ids.contains(&k.id))
                        .map(|k| k.criticality)
                        .max();
                    SubjectFacts {
                        categories,
                        criticality,
                        environment: token.environments.first().cloned(),
                    }
                }
                None => SubjectFacts::default(),
            },
        })
    }

    /// Measures in force on keys and tokens the actor may read.
    pub async fn containments(&self, actor: &Actor) -> Result<Vec<Containment>, Error> {
        let mut out = Vec::new();
        for c in self.store.containments().await? {
            let readable = match &c.subject {
                AlertSubject::Key(id) => self.key(actor, id).await.is_ok(),
                AlertSubject::Token(id) => self
                    .app_token_for(actor, Permission::AppTokensRead, id)
                    .await
                    .is_ok(),
            };
            if readable {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Freezes a key or token now, by hand (an incident someone saw first).
    pub async fn freeze(
        &self,
        actor: &Actor,
        subject: AlertSubject,
        reason: &str,
    ) -> Result<Containment, Error> {
        let reason = reason_of(reason)?;
        self.ensure_exists(actor, &subject).await?;
        let containment = Containment {
            subject,
            measure: Measure::Freeze,
            alert: None,
            reason,
            by: actor.name.clone(),
            at: self.now(),
        };
        let (target, permission) = self.alert_subject(&containment.subject).await?;
        let change = Change::new(
            "containment.freeze",
            target,
            permission,
            json!({"reason": containment.reason}),
        )
        .refreshes_proxy();
        self.apply(actor, change, async {
            if self.store.contain(&containment).await? {
                Ok(())
            } else {
                Err(Error::conflict("already_frozen", "it is frozen already"))
            }
        })
        .await?;
        Ok(containment)
    }

    /// Lifts a freeze (and a throttle, if one is in force too): always approval-gated — by
    /// the approval policy's `unfreeze` rules, or one owner's or admin's approval when
    /// none match — and audited.
    pub async fn unfreeze(&self, actor: &Actor, subject: AlertSubject) -> Result<(), Error> {
        self.ensure_exists(actor, &subject).await?;
        let frozen = self
            .store
            .containments()
            .await?
            .into_iter()
            .find(|c| c.subject == subject && c.measure == Measure::Freeze)
            .ok_or_else(|| Error::not_found("not_frozen", "it is not frozen"))?;
        let (target, permission) = self.alert_subject(&subject).await?;
        let change = Change::new(
            "containment.unfreeze",
            target,
            permission,
            json!({"alert": frozen.alert, "frozen_at": frozen.at, "frozen_by": frozen.by}),
        )
        .approval(
            ApprovalAction::Unfreeze,
            json!({"subject": subject.target(), "frozen_at": frozen.at}),
        )
        .refreshes_proxy();
        self.apply(actor, change, async {
            self.store.lift_containment(&subject, "throttle").await?;
            if self.store.lift_containment(&subject, "freeze").await? {
                Ok(())
            } else {
                Err(Error::not_found("not_frozen", "it is not frozen"))
            }
        })
        .await
    }

    /// After an alert is resolved: the throttle it caused ends (a freeze stays until an
    /// approved unfreeze).
    pub(crate) async fn lift_alert_throttle(
        &self,
        actor: &Actor,
        alert: &Alert,
    ) -> Result<(), Error> {
        let caused = self.store.containments().await?.into_iter().any(|c| {
            c.alert.as_ref() == Some(&alert.id) && matches!(c.measure, Measure::Throttle(_))
        });
        if !caused {
            return Ok(());
        }
        self.record_audit(
            actor,
            "containment.throttle_lifted",
            Some(alert.subject.target()),
            AuditOutcome::Success,
            json!({"alert": alert.id}),
        )
        .await?;
        self.store
            .lift_containment(&alert.subject, "throttle")
            .await?;
        self.refresh_proxy().await
    }

    /// The subject exists and the actor may see it.
    async fn ensure_exists(&self, actor: &Actor, subject: &AlertSubject) -> Result<(), Error> {
        match subject {
            AlertSubject::Key(id) => self.key(actor, id).await.map(drop),
            AlertSubject::Token(id) => self
                .app_token_for(actor, Permission::AppTokensRead, id)
                .await
                .map(drop),
        }
    }
}

/// A person's reason for a mute or a freeze: 4–500 characters.
pub(super) fn reason_of(reason: &str) -> Result<String, Error> {
    keyward_core::label::text("reason", Some(reason), 500)?
        .filter(|r| r.chars().count() >= 4)
        .ok_or_else(|| Error::invalid("reason_required", "say why (at least 4 characters)"))
}

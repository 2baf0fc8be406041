//! Alerts: the watcher's findings stored (one unresolved per subject and signal), audited
//! and announced (`anomaly_detected`), unless muted; listed within the reader's reach;
//! acknowledged, resolved and muted through the change pipeline.

pub mod respond;
pub mod sightings;
pub mod watch;

use jiff::{SignedDuration, Timestamp};
use keyward_core::access::{Permission, Reach};
use keyward_core::alert::{
    Alert, AlertFilter, AlertMute, AlertNote, AlertStatus, AlertSubject, MUTE_MAX_DAYS,
};
use keyward_core::anomaly::{Finding, Signal};
use keyward_core::audit::AuditOutcome;
use keyward_core::id::{AlertId, MuteId};
use keyward_core::notification::NotificationKind;
use keyward_core::ports::AlertWrite;
use keyward_core::usage::UsageGrouping;
use keyward_core::{Error, ErrorKind};
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::notifications::about::About;
use crate::pipeline::{Change, Subject};

/// Alerts per page at most.
pub const ALERTS_PAGE_MAX: u32 = 200;

impl App {
    /// Judges the minutes that have settled since the last call, for every key and app
    /// token, and raises what it finds. Returns how many alerts it opened.
    pub async fn watch_usage(&self) -> Result<usize, Error> {
        let now = self.now();
        let mut watch = self.watch.lock().await;
        let mut opened = 0;
        while let Some((from, to)) = watch.due(now) {
            let query = watch::minute_query(from, to)?;
            let mut minutes = watch::Minutes::new();
            for by in [UsageGrouping::Key, UsageGrouping::Token] {
                let rows = self.store.usage_grouped(&query, by).await?;
                watch::by_subject(rows, by, &mut minutes);
            }
            let found = watch.feed(from, to, &minutes, now);
            if found.is_empty() {
                continue;
            }
            let mutes = self.store.mutes(now).await?;
            for (subject, finding) in found {
                if mutes
                    .iter()
                    .any(|m| m.silences(&subject, finding.signal, now))
                {
                    continue;
                }
                opened += usize::from(self.raise_alert(subject, &finding).await?);
            }
        }
        Ok(opened)
    }

    /// Stores a finding as an alert; audits and announces it when it is a new one.
    async fn raise_alert(&self, subject: AlertSubject, finding: &Finding) -> Result<bool, Error> {
        let now = self.now();
        let alert = Alert::open(AlertId::generate(now, &*self.random), subject, finding, now);
        if self.store.insert_alert(&alert).await? != AlertWrite::Opened {
            return Ok(false);
        }
        let details = json!({
            "alert": alert.id, "signal": alert.signal, "severity": alert.severity,
            "score": alert.score, "reason": alert.reason,
        });
        self.record_audit(
            &Actor::system("anomaly-detector"),
            "alert.raised",
            Some(alert.subject.target()),
            AuditOutcome::Success,
            details.clone(),
        )
        .await?;
        let key = match &alert.subject {
            AlertSubject::Key(id) => self.store.key(id).await?,
            AlertSubject::Token(_) => None,
        };
        let category = match &key {
            Some(key) => self
                .catalog()
                .await?
                .get(&key.service_id)
                .map(|s| s.category.clone()),
            None => None,
        };
        let about = match &key {
            Some(key) => About::key(category.as_deref(), &key.environment),
            None => About::default(),
        };
        let mut data = details;
        data["subject"] = json!({"kind": alert.subject.kind(), "id": alert.subject.id()});
        data["opened_at"] = json!(alert.opened_at);
        self.notify(
            NotificationKind::AnomalyDetected,
            about,
            format!("alert:{}", alert.id),
            data,
        )
        .await;
        Ok(true)
    }

    /// Alerts the actor may read: about keys they may read, and about app tokens if they
    /// may read app tokens. Newest first.
    pub async fn alerts(
        &self,
        actor: &Actor,
        filter: &AlertFilter,
        before: Option<&AlertId>,
        limit: u32,
    ) -> Result<Vec<Alert>, Error> {
        if !(1..=ALERTS_PAGE_MAX).contains(&limit) {
            return Err(Error::invalid(
                "invalid_limit",
                format!("limit must be 1–{ALERTS_PAGE_MAX}"),
            ));
        }
        let everywhere = actor.access.reach(Permission::KeysRead).is_everywhere();
        let tokens = actor.access.reach(Permission::AppTokensRead) != Reach::Nowhere;
        let mut out = Vec::new();
        let mut cursor = before.cloned();
        // Pages until `limit` readable alerts are found (a scoped reader skips others').
        loop {
            let page = self.store.alerts(filter, cursor.as_ref(), limit).await?;
            let last = page.last().map(|a| a.id.clone());
            for alert in page {
                if self
                    .may_read_alert(actor, &alert, everywhere, tokens)
                    .await?
                {
                    out.push(alert);
                    if out.len() == limit as usize {
                        return Ok(out);
                    }
                }
            }
            match last {
                Some(id) => cursor = Some(id),
                None => return Ok(out),
            }
        }
    }

    async fn may_read_alert(
        &self,
        actor: &Actor,
        alert: &Alert,
        everywhere: bool,
        tokens: bool,
    ) -> Result<bool, Error> {
        Ok(match &alert.subject {
            AlertSubject::Token(_) => tokens,
            AlertSubject::Key(_) if everywhere => true,
            AlertSubject::Key(id) => match self.key(actor, id).await {
                Ok(_) => true,
                Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Forbidden) => false,
                Err(e) => return Err(e),
            },
        })
    }

    /// One alert the actor may read.
    pub async fn alert(&self, actor: &Actor, id: &AlertId) -> Result<Alert, Error> {
        let alert = self.store.alert(id).await?.ok_or_else(alert_not_found)?;
        let everywhere = actor.access.reach(Permission::KeysRead).is_everywhere();
        let tokens = actor.access.reach(Permission::AppTokensRead) != Reach::Nowhere;
        if !self
            .may_read_alert(actor, &alert, everywhere, tokens)
            .await?
        {
            return Err(alert_not_found());
        }
        Ok(alert)
    }

    /// Where a change about an alert's subject lands, for the pipeline.
    async fn alert_subject(&self, subject: &AlertSubject) -> Result<(Subject, Permission), Error> {
        Ok(match subject {
            AlertSubject::Key(id) => match self.store.key(id).await? {
                Some(key) => (self.subject_of(&key).await?, Permission::KeysWrite),
                None => (Subject::vault(subject.target()), Permission::KeysWrite),
            },
            AlertSubject::Token(_) => {
                (Subject::vault(subject.target()), Permission::AppTokensWrite)
            }
        })
    }

    /// Someone is on it: open → acknowledged, with an optional comment.
    pub async fn acknowledge_alert(
        &self,
        actor: &Actor,
        id: &AlertId,
        comment: Option<&str>,
    ) -> Result<Alert, Error> {
        self.move_alert(actor, id, AlertStatus::Acknowledged, comment)
            .await
    }

    /// Done: open or acknowledged → resolved; a later finding opens a new alert.
    pub async fn resolve_alert(
        &self,
        actor: &Actor,
        id: &AlertId,
        comment: Option<&str>,
    ) -> Result<Alert, Error> {
        self.move_alert(actor, id, AlertStatus::Resolved, comment)
            .await
    }

    async fn move_alert(
        &self,
        actor: &Actor,
        id: &AlertId,
        to: AlertStatus,
        comment: Option<&str>,
    ) -> Result<Alert, Error> {
        let comment = keyward_core::label::text("comment", comment, 1000)?;
        let mut alert = self.alert(actor, id).await?;
        let from: &[AlertStatus] = match to {
            AlertStatus::Acknowledged => &[AlertStatus::Open],
            AlertStatus::Resolved => &[AlertStatus::Open, AlertStatus::Acknowledged],
            AlertStatus::Open => &[],
        };
        if !from.contains(&alert.status) {
            return Err(Error::new(
                ErrorKind::Conflict,
                "alert_state",
                format!("the alert is {}", alert.status),
            ));
        }
        let note = AlertNote {
            by: actor.name.clone(),
            at: self.now(),
            comment: comment.clone(),
        };
        alert.status = to;
        match to {
            AlertStatus::Acknowledged => alert.acknowledged = Some(note),
            _ => alert.resolved = Some(note),
        }
        let (subject, permission) = self.alert_subject(&alert.subject).await?;
        let action = match to {
            AlertStatus::Acknowledged => "alert.acknowledge",
            _ => "alert.resolve",
        };
        let change = Change::new(
            action,
            subject,
            permission,
            json!({"alert": alert.id, "signal": alert.signal, "comment": comment}),
        );
        let stored = alert.clone();
        self.apply(actor, change, async {
            if self.store.update_alert_status(&stored, from).await? {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorKind::Conflict,
                    "alert_state",
                    "the alert changed meanwhile; reload it",
                ))
            }
        })
        .await?;
        if to == AlertStatus::Resolved {
            self.lift_alert_throttle(actor, &alert).await?;
        }
        Ok(alert)
    }

    /// Silences alerts about a subject (one signal, or all) for `minutes`.
    pub async fn mute_alerts(
        &self,
        actor: &Actor,
        subject: AlertSubject,
        signal: Option<Signal>,
        minutes: i64,
        reason: &str,
    ) -> Result<AlertMute, Error> {
        if !(1..=MUTE_MAX_DAYS * 24 * 60).contains(&minutes) {
            return Err(Error::invalid(
                "invalid_mute",
                format!("a mute lasts 1 minute to {MUTE_MAX_DAYS} days"),
            ));
        }
        let reason = respond::reason_of(reason)?;
        match &subject {
            AlertSubject::Key(id) => {
                self.key(actor, id).await?;
            }
            AlertSubject::Token(id) => {
                self.app_token_for(actor, Permission::AppTokensRead, id)
                    .await?;
            }
        }
        let now = self.now();
        let mute = AlertMute {
            id: MuteId::generate(now, &*self.random),
            subject,
            signal,
            until: now
                .checked_add(SignedDuration::from_mins(minutes))
                .unwrap_or(Timestamp::MAX),
            reason,
            created_by: actor.name.clone(),
            created_at: now,
        };
        let (target, permission) = self.alert_subject(&mute.subject).await?;
        let change = Change::new(
            "alert.mute",
            target,
            permission,
            json!({"mute": mute.id, "signal": mute.signal, "until": mute.until, "reason": mute.reason}),
        );
        self.apply(actor, change, self.store.insert_mute(&mute))
            .await?;
        Ok(mute)
    }

    /// Mutes in force that the actor may see.
    pub async fn mutes(&self, actor: &Actor) -> Result<Vec<AlertMute>, Error> {
        let mut out = Vec::new();
        for mute in self.store.mutes(self.now()).await? {
            let readable = match &mute.subject {
                AlertSubject::Key(id) => self.key(actor, id).await.is_ok(),
                AlertSubject::Token(id) => self
                    .app_token_for(actor, Permission::AppTokensRead, id)
                    .await
                    .is_ok(),
            };
            if readable {
                out.push(mute);
            }
        }
        Ok(out)
    }

    /// Ends a mute early.
    pub async fn unmute_alerts(&self, actor: &Actor, id: &MuteId) -> Result<(), Error> {
        let mute = self
            .mutes(actor)
            .await?
            .into_iter()
            .find(|m| &m.id == id)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    "mute_not_found",
                    "no such mute in force",
                )
            })?;
        let (target, permission) = self.alert_subject(&mute.subject).await?;
        let change = Change::new("alert.unmute", target, permission, json!({"mute": mute.id}));
        self.apply(actor, change, async {
            self.store.delete_mute(id).await?;
            Ok(())
        })
        .await
    }
}

fn alert_not_found() -> Error {
    Error::new(ErrorKind::NotFound, "alert_not_found", "no such alert")
}

//! Alerts: what the anomaly detector (`crate::anomaly`) found about a key or an app token,
//! kept until someone acknowledges or resolves it — one open alert per subject and signal,
//! which later findings only refresh — and mutes that silence a subject's alerts (all, or
//! one signal) for a while.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::anomaly::{Finding, Signal};
use crate::id::{AlertId, AppTokenId, KeyId, MuteId};

/// What an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertSubject {
    Key(KeyId),
    Token(AppTokenId),
}

impl AlertSubject {
    /// `key` or `token`, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Key(_) => "key",
            Self::Token(_) => "token",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Key(id) => id.as_str(),
            Self::Token(id) => id.as_str(),
        }
    }

    /// The audit target: `key:…` or `app_token:…`.
    pub fn target(&self) -> String {
        match self {
            Self::Key(id) => format!("key:{id}"),
            Self::Token(id) => format!("app_token:{id}"),
        }
    }

    pub fn parse(kind: &str, id: &str) -> Result<Self, Error> {
        match kind {
            "key" => Ok(Self::Key(id.parse()?)),
            "token" => Ok(Self::Token(id.parse()?)),
            other => Err(Error::invalid(
                "invalid_alert_subject",
                format!("`{}` is not key or token", crate::label::printable(other)),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Open,
    Acknowledged,
    Resolved,
}

string_enum!(AlertStatus { Open = "open", Acknowledged = "acknowledged", Resolved = "resolved" }, "invalid_alert_status", "alert status");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

string_enum!(Severity { Warning = "warning", Critical = "critical" }, "invalid_severity", "alert severity");

impl Severity {
    /// Critical: signs of a leak or a revoked key (rejections, use of a key that should be
    /// idle, a new network), and anything far out (robust score ≥ 20); else a warning.
    pub fn of(signal: Signal, score: f64) -> Self {
        match signal {
            Signal::RejectionBurst | Signal::DormantKeyUse | Signal::NewNetwork => Self::Critical,
            _ if score.abs() >= 20.0 => Self::Critical,
            _ => Self::Warning,
        }
    }
}

/// How far the graduated response (`crate::response`) has gone for one alert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    #[default]
    Alerted,
    Throttled,
    Frozen,
}

string_enum!(Stage { Alerted = "alerted", Throttled = "throttled", Frozen = "frozen" }, "invalid_stage", "response stage");

/// Who did something to an alert, when, and what they said.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertNote {
    pub by: String,
    pub at: Timestamp,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: AlertId,
    pub subject: AlertSubject,
    pub signal: Signal,
    pub severity: Severity,
    pub status: AlertStatus,
    /// The finding that opened it (later findings of the same episode refresh `last_seen_at`).
    pub score: f64,
    pub reason: String,
    pub opened_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub acknowledged: Option<AlertNote>,
    pub resolved: Option<AlertNote>,
    /// How far the graduated response (`crate::response`) has gone.
    pub stage: Stage,
}

impl Alert {
    pub fn open(id: AlertId, subject: AlertSubject, finding: &Finding, now: Timestamp) -> Self {
        Self {
            id,
            subject,
            signal: finding.signal,
            severity: Severity::of(finding.signal, finding.score),
            status: AlertStatus::Open,
            score: finding.score,
            reason: finding.reason.clone(),
            opened_at: finding.at.min(now),
            last_seen_at: now,
            acknowledged: None,
            resolved: None,
            stage: Stage::Alerted,
        }
    }
}

/// Silences alerts about a subject (one signal, or all) until a time.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertMute {
    pub id: MuteId,
    pub subject: AlertSubject,
    pub signal: Option<Signal>,
    pub until: Timestamp,
    pub reason: String,
    pub created_by: String,
    pub created_at: Timestamp,
}

impl AlertMute {
    pub fn silences(&self, subject: &AlertSubject, signal: Signal, now: Timestamp) -> bool {
        &self.subject == subject && self.signal.is_none_or(|s| s == signal) && self.until > now
    }
}

/// Longest mute.
pub const MUTE_MAX_DAYS: i64 = 90;

/// Which alerts a listing wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertFilter {
    pub status: Option<AlertStatus>,
    pub signal: Option<Signal>,
    pub subject: Option<AlertSubject>,
}

//! Notifications: webhooks that subscribe to kinds of events (per kind and per category),
//! the deliveries queued for them with their retry schedule, and the rule for where a
//! webhook may point. The HTTP call and its signature live in the server and crypto crates.

use std::net::IpAddr;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::id::{DeliveryId, UserId, WebhookId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    RotationDue,
    RotationOverdue,
    /// A guided rotation moved (promoted, retired, revoked-verified, old key still live).
    RotationStep,
    KeyExpiring,
    KeyExpired,
    KeyRevoked,
    HealthChanged,
    ApprovalRequested,
    /// The anomaly detector opened an alert about a key or an app token.
    AnomalyDetected,
    /// The graduated response throttled or froze a key or token over an open alert.
    AlertEscalated,
    /// A key's quota will run out within the lead time at the current pace.
    QuotaForecast,
    /// A key's or app token's budget will run out within the lead time at the current pace.
    BudgetForecast,
}

string_enum!(NotificationKind {
    RotationDue = "rotation_due", RotationOverdue = "rotation_overdue", RotationStep = "rotation_step",
    KeyExpiring = "key_expiring", KeyExpired = "key_expired", KeyRevoked = "key_revoked",
    HealthChanged = "health_changed", ApprovalRequested = "approval_requested",
    AnomalyDetected = "anomaly_detected", AlertEscalated = "alert_escalated",
    QuotaForecast = "quota_forecast", BudgetForecast = "budget_forecast"
}, "invalid_notification_kind", "notification kind");

/// A subscriber: where to send, and what it wants. Either a webhook an admin registered
/// (`https://…`) or a person's own e-mail subscription (`mailto:…`, with its `owner`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: WebhookId,
    pub url: String,
    /// The user whose personal subscription this is: only events about keys they may read
    /// reach them.
    pub owner: Option<UserId>,
    /// Kinds it wants; empty: every kind.
    pub kinds: Vec<NotificationKind>,
    /// Categories it wants (events about keys of services in them); empty: all.
    pub categories: Vec<String>,
    /// An admin allowed a loopback or private-network address.
    pub allow_private_network: bool,
    pub created_by: String,
    pub created_at: Timestamp,
}

impl Webhook {
    /// The address of an e-mail subscription.
    pub fn email(&self) -> Option<&str> {
        self.url.strip_prefix("mailto:")
    }

    /// Whether an event of `kind` (about a key in `category`, if about a key) goes here.
    pub fn wants(&self, kind: NotificationKind, category: Option<&str>) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&kind))
            && (self.categories.is_empty()
                || category.is_some_and(|c| self.categories.iter().any(|w| w == c)))
    }
}

/// Whether an address is reachable only inside this host or network (loopback, private,
/// link-local, unique-local, unspecified, multicast, documentation, CGNAT): what a webhook
/// may not call unless an admin allows it, so a subscriber cannot make Keyward probe its
/// own network.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Refuses a webhook address that resolves (or is) internal, unless allowed.
pub fn ensure_reachable(addresses: &[IpAddr], allow_private_network: bool) -> Result<(), Error> {
    if addresses.is_empty() {
        return Err(Error::invalid(
            "invalid_webhook_url",
            "the webhook's host does not resolve",
        ));
    }
    if !allow_private_network && addresses.iter().any(|ip| is_internal(*ip)) {
        return Err(Error::invalid(
            "webhook_url_private",
            "the webhook points at a loopback or private-network address; an admin may allow it with `allow_private_network`",
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    /// Every attempt failed.
    Failed,
}

string_enum!(DeliveryStatus { Pending = "pending", Delivered = "delivered", Failed = "failed" },
    "invalid_delivery_status", "delivery status");

/// Waits after the first, second, … failed attempt; after the last one the delivery fails.
pub const RETRY_DELAYS: [SignedDuration; 5] = [
    SignedDuration::from_secs(10),
    SignedDuration::from_secs(30),
    SignedDuration::from_mins(2),
    SignedDuration::from_mins(10),
    SignedDuration::from_hours(1),
];

/// One event on its way to one webhook, with its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: DeliveryId,
    pub webhook_id: WebhookId,
    pub kind: NotificationKind,
    /// The same event is queued once per webhook (e.g. `rotation_due:key_…:2026-12-10`).
    pub dedupe: String,
    /// The JSON body, exactly as signed and sent.
    pub body: String,
    pub attempts: u32,
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<Timestamp>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Delivery {
    pub fn new(
        id: DeliveryId,
        webhook_id: WebhookId,
        kind: NotificationKind,
        dedupe: String,
        body: String,
        now: Timestamp,
    ) -> Self {
        Self {
            id,
            webhook_id,
            kind,
            dedupe,
            body,
            attempts: 0,
            status: DeliveryStatus::Pending,
            next_attempt_at: Some(now),
            last_status: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// The delivery after an attempt that got `outcome` (the receiver's status, or why
    /// there was none): delivered on 2xx, else retried on the schedule, then failed.
    pub fn after_attempt(&self, outcome: Result<u16, String>, now: Timestamp) -> Self {
        let attempts = self.attempts + 1;
        let (status, last_status, last_error) = match outcome {
            Ok(code) if (200..300).contains(&code) => (DeliveryStatus::Delivered, Some(code), None),
            Ok(code) => (
                DeliveryStatus::Pending,
                Some(code),
                Some(format!("HTTP {code}")),
            ),
            Err(e) => (DeliveryStatus::Pending, None, Some(e)),
        };
        let delay = RETRY_DELAYS.get(attempts as usize - 1);
        let (status, next_attempt_at) = match (status, delay) {
            (DeliveryStatus::Pending, Some(delay)) => (
                DeliveryStatus::Pending,
                Some(now.saturating_add(*delay).unwrap_or(now)),
            ),
            (DeliveryStatus::Pending, None) => (DeliveryStatus::Failed, None),
            (other, _) => (other, None),
        };
        Self {
            attempts,
            status,
            next_attempt_at,
            last_status,
            last_error,
            updated_at: now,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    #[test]
    fn failed_attempts_back_off_then_fail_and_a_2xx_delivers() {
        let mut d = Delivery::new(
            "dlv_01JD0000000000000000000000".parse().expect("id"),
            "whk_01JD0000000000000000000000".parse().expect("id"),
            NotificationKind::KeyRevoked,
            "key_revoked:key_x".into(),
            "{}".into(),
            at(0),
        );
        let mut now = 0;
        for (n, delay) in RETRY_DELAYS.iter().enumerate() {
            d = d.after_attempt(Ok(500), at(now));
            assert_eq!(
                (d.attempts, d.status),
                (n as u32 + 1, DeliveryStatus::Pending)
            );
            assert_eq!(d.next_attempt_at, Some(at(now) + *delay));
            now += delay.as_secs();
        }
        let failed = d.after_attempt(Err("no answer in time".into()), at(now));
        assert_eq!(
            (failed.status, failed.next_attempt_at),
            (DeliveryStatus::Failed, None)
        );
        assert_eq!(failed.last_error.as_deref(), Some("no answer in time"));
        let ok = d.after_attempt(Ok(204), at(now));
        assert_eq!(
            (ok.status, ok.last_status, ok.last_error),
            (DeliveryStatus::Delivered, Some(204), None)
        );
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(is_internal(ip), "{ip}");
            assert_eq!(
                ensure_reachable(&[ip], false).map_err(|e| e.code),
                Err("webhook_url_private")
            );
            assert!(ensure_reachable(&[ip], true).is_ok());
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(!is_internal(ip.parse().expect("ip")), "{ip}");
        }
        // One internal address among public ones is enough to refuse.
        let mixed: Vec<IpAddr> = vec![
            "8.8.8.8".parse().expect("ip"),
            "10.0.0.1".parse().expect("ip"),
        ];
        assert!(ensure_reachable(&mixed, false).is_err());
        assert_eq!(
            ensure_reachable(&[], true).map_err(|e| e.code),
            Err("invalid_webhook_url")
        );
    }

    #[test]
    fn subscriptions_filter_by_kind_and_category() {
        let hook = Webhook {
            id: "whk_01JD0000000000000000000000".parse().expect("id"),
            url: "https://hooks.example.com/keyward".into(),
            owner: None,
            kinds: vec![NotificationKind::KeyRevoked],
            categories: vec!["llm-providers".into()],
            allow_private_network: false,
            created_by: "ada".into(),
            created_at: at(0),
        };
        assert!(hook.wants(NotificationKind::KeyRevoked, Some("llm-providers")));
        assert!(!hook.wants(NotificationKind::KeyRevoked, Some("financial-data")));
        assert!(!hook.wants(NotificationKind::RotationDue, Some("llm-providers")));
        assert!(!hook.wants(NotificationKind::KeyRevoked, None));
        let all = Webhook {
            kinds: vec![],
            categories: vec![],
            ..hook
        };
        assert!(all.wants(NotificationKind::ApprovalRequested, None));
        assert_eq!(all.email(), None);
        let mail = Webhook {
            url: "mailto:ada@example.com".into(),
            ..all
        };
        assert_eq!(mail.email(), Some("ada@example.com"));
    }
}

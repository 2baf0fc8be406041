//! Alerts and mutes.

use super::*;
use keyward_core::alert::{Alert, AlertFilter, AlertMute, AlertNote, AlertStatus, AlertSubject};
use keyward_core::anomaly::{Finding, Signal};
use keyward_core::app_token::RateLimit;
use keyward_core::id::AppTokenId;
use keyward_core::id::{AlertId, MuteId};
use keyward_core::ports::AlertWrite;
use keyward_core::response::{Containment, Measure, Stage};
use keyward_core::sighting::{Sighting, SightingKind};

fn finding(signal: Signal, at: i64) -> Finding {
    Finding {
        signal,
        at: ts(at),
        score: 12.5,
        reason: "412 requests in 5 min; usual for Tuesday 03:00 ET is 0–6".into(),
    }
}

async fn one_unresolved_alert_per_subject_and_signal(store: Arc<dyn Store>) {
    let r = rng();
    let key = AlertSubject::Key(KeyId::generate(ts(1), &r));
    let first = Alert::open(
        AlertId::generate(ts(10), &r),
        key.clone(),
        &finding(Signal::RequestSpike, 10),
        ts(10),
    );
    assert_eq!(
        store.insert_alert(&first).await.expect("insert"),
        AlertWrite::Opened
    );
    // The same anomaly found again (another instance, a later minute): refreshed, not doubled.
    let again = Alert::open(
        AlertId::generate(ts(20), &r),
        key.clone(),
        &finding(Signal::RequestSpike, 20),
        ts(20),
    );
    assert_eq!(
        store.insert_alert(&again).await.expect("again"),
        AlertWrite::Refreshed(first.id.clone())
    );
    let stored = store.alert(&first.id).await.expect("read").expect("stored");
    assert_eq!((stored.opened_at, stored.last_seen_at), (ts(10), ts(20)));
    assert_eq!(stored.reason, first.reason);
    // Another signal about the same key is its own alert.
    let other = Alert::open(
        AlertId::generate(ts(30), &r),
        key.clone(),
        &finding(Signal::ErrorSpike, 30),
        ts(30),
    );
    assert_eq!(
        store.insert_alert(&other).await.expect("other"),
        AlertWrite::Opened
    );

    // Acknowledge (compare-and-set from open), then resolve; a new alert may then open.
    let mut acked = stored.clone();
    acked.status = AlertStatus::Acknowledged;
    acked.acknowledged = Some(AlertNote {
        by: "user:ada".into(),
        at: ts(40),
        comment: Some("looking".into()),
    });
    assert!(
        store
            .update_alert_status(&acked, &[AlertStatus::Open])
            .await
            .expect("ack")
    );
    assert!(
        !store
            .update_alert_status(&acked, &[AlertStatus::Open])
            .await
            .expect("ack twice")
    );
    let mut resolved = acked.clone();
    resolved.status = AlertStatus::Resolved;
    resolved.resolved = Some(AlertNote {
        by: "user:ada".into(),
        at: ts(50),
        comment: None,
    });
    assert!(
        store
            .update_alert_status(&resolved, &[AlertStatus::Open, AlertStatus::Acknowledged])
            .await
            .expect("resolve")
    );
    let read = store.alert(&first.id).await.expect("read").expect("stored");
    assert_eq!(
        read.acknowledged
            .as_ref()
            .and_then(|n| n.comment.as_deref()),
        Some("looking")
    );
    assert_eq!(read.resolved.as_ref().map(|n| n.at), Some(ts(50)));
    let later = Alert::open(
        AlertId::generate(ts(60), &r),
        key.clone(),
        &finding(Signal::RequestSpike, 60),
        ts(60),
    );
    assert_eq!(
        store.insert_alert(&later).await.expect("later"),
        AlertWrite::Opened
    );

    // Listing: newest first, filtered, paged by id.
    let all = store
        .alerts(&AlertFilter::default(), None, 10)
        .await
        .expect("all");
    assert_eq!(
        all.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        vec![later.id.clone(), other.id.clone(), first.id.clone()]
    );
    let open = AlertFilter {
        status: Some(AlertStatus::Open),
        signal: Some(Signal::RequestSpike),
        subject: Some(key.clone()),
    };
    assert_eq!(store.alerts(&open, None, 10).await.expect("open").len(), 1);
    assert_eq!(
        store
            .alerts(&AlertFilter::default(), Some(&other.id), 10)
            .await
            .expect("page")[0]
            .id,
        first.id
    );

    // Mutes in force, and gone.
    let mute = AlertMute {
        id: MuteId::generate(ts(70), &r),
        subject: key.clone(),
        signal: Some(Signal::RequestSpike),
        until: ts(1_000),
        reason: "load test".into(),
        created_by: "user:ada".into(),
        created_at: ts(70),
    };
    store.insert_mute(&mute).await.expect("mute");
    assert_eq!(
        store.mutes(ts(999)).await.expect("mutes"),
        vec![mute.clone()]
    );
    assert!(
        store.mutes(ts(1_000)).await.expect("mutes").is_empty(),
        "expired"
    );
    assert!(store.delete_mute(&mute.id).await.expect("delete"));
    assert!(!store.delete_mute(&mute.id).await.expect("delete twice"));
}

async fn an_alert_escalates_once_and_its_measures_move_the_change_number(store: Arc<dyn Store>) {
    let r = rng();
    let token = AlertSubject::Token(AppTokenId::generate(ts(1), &r));
    let alert = Alert::open(
        AlertId::generate(ts(10), &r),
        token.clone(),
        &finding(Signal::RequestSpike, 10),
        ts(10),
    );
    store.insert_alert(&alert).await.expect("insert");
    // Two instances race to throttle: one wins.
    assert!(
        store
            .advance_alert_stage(&alert.id, Stage::Alerted, Stage::Throttled)
            .await
            .expect("advance")
    );
    assert!(
        !store
            .advance_alert_stage(&alert.id, Stage::Alerted, Stage::Throttled)
            .await
            .expect("lost race")
    );
    assert_eq!(
        store
            .alert(&alert.id)
            .await
            .expect("read")
            .expect("there")
            .stage,
        Stage::Throttled
    );

    let marker = store.change_number().await.expect("change number");
    let throttle = Containment {
        subject: token.clone(),
        measure: Measure::Throttle(RateLimit {
            requests: 3,
            per_seconds: 60,
        }),
        alert: Some(alert.id.clone()),
        reason: "request_spike: 412 requests in 5 min".into(),
        by: "anomaly-response".into(),
        at: ts(20),
    };
    assert!(store.contain(&throttle).await.expect("contain"));
    assert!(
        !store.contain(&throttle).await.expect("twice"),
        "one of each kind per subject"
    );
    let throttled = store.change_number().await.expect("change number");
    assert_ne!(marker, throttled, "a throttle reaches every proxy");
    let freeze = Containment {
        measure: Measure::Freeze,
        at: ts(30),
        by: "ada".into(),
        alert: None,
        ..throttle.clone()
    };
    assert!(store.contain(&freeze).await.expect("freeze"));
    let frozen = store.change_number().await.expect("change number");
    assert_ne!(frozen, throttled);
    assert_eq!(
        store.containments().await.expect("list"),
        vec![throttle.clone(), freeze.clone()]
    );
    assert!(
        store
            .lift_containment(&token, "freeze")
            .await
            .expect("lift")
    );
    assert!(
        !store
            .lift_containment(&token, "freeze")
            .await
            .expect("again")
    );
    assert_eq!(store.containments().await.expect("list"), vec![throttle]);
    assert_ne!(store.change_number().await.expect("change number"), frozen);
}

async fn a_sighting_is_new_once(store: Arc<dyn Store>) {
    let r = rng();
    let token = AppTokenId::generate(ts(1), &r);
    let seen = |value: &str, at: i64| Sighting {
        token: token.clone(),
        kind: SightingKind::Network,
        value: value.into(),
        at: ts(at),
    };
    let first = vec![seen("203.0.113.0/24", 10), seen("198.51.100.0/24", 20)];
    assert_eq!(store.record_sightings(&first).await.expect("record"), first);
    // Another instance saw one of them too, and one more: only the new one comes back.
    let again = vec![seen("203.0.113.0/24", 30), seen("192.0.2.0/24", 40)];
    assert_eq!(
        store.record_sightings(&again).await.expect("again"),
        vec![seen("192.0.2.0/24", 40)]
    );
    let history = store
        .token_sightings(&token, SightingKind::Network)
        .await
        .expect("history");
    assert_eq!(
        history,
        vec![
            ("203.0.113.0/24".to_owned(), ts(10)),
            ("198.51.100.0/24".to_owned(), ts(20)),
            ("192.0.2.0/24".to_owned(), ts(40)),
        ]
    );
    assert!(
        store
            .token_sightings(&token, SightingKind::Model)
            .await
            .expect("none")
            .is_empty()
    );
}

conformance!(
    a_sighting_is_new_once,
    one_unresolved_alert_per_subject_and_signal,
    an_alert_escalates_once_and_its_measures_move_the_change_number,
);

//! Retention at the application level: a deleted key stays restorable for its recovery
//! window and is purged — key, versions and sealed values — by the server's hourly job once
//! the window has passed, as an audited system action (only runs that purge are audited).

use std::sync::Arc;

use keyward_core::ManualClock;
use reqwest::{Method, StatusCode};

use crate::helpers::{Backend, OPENAI_KEY, TestApp, audit_actions};

#[tokio::test]
async fn a_deleted_key_is_purged_by_the_hourly_job_only_after_its_recovery_window() {
    let clock = Arc::new(ManualClock::new(
        "2026-12-01T12:00:00Z"
            .parse::<keyward_core::Timestamp>()
            .unwrap(),
    ));
    let Some(app) = TestApp::spawn_with_clock(
        Backend::Sqlite,
        keyward_server::config::RawSettings {
            recovery_window_days: Some("7".into()),
            ..Default::default()
        },
        clock.clone(),
    )
    .await
    else {
        return;
    };
    let key = app
        .create_key("openai", "production", "old", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .call(Method::DELETE, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert!(status.is_success(), "{body}");
    let deleted = || async {
        let (_, listed) = app.call(Method::GET, "/api/v1/deleted-keys", None).await;
        listed["items"].as_array().map_or(0, Vec::len)
    };

    // Inside the window the job leaves it alone: it can still be restored.
    clock.advance(jiff::SignedDuration::from_hours(6 * 24 + 23));
    assert_eq!(app.app.purge_expired().await.unwrap(), 0);
    assert_eq!(deleted().await, 1);

    // Past it, the job purges it; nothing of it is left to restore or read.
    clock.advance(jiff::SignedDuration::from_hours(2));
    assert_eq!(app.app.purge_expired().await.unwrap(), 1);
    assert_eq!(deleted().await, 0);
    let (status, _) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .call(Method::POST, &format!("/api/v1/keys/{id}/restore"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, versions) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}/versions"), None)
        .await;
    assert!(
        versions["items"].as_array().is_none_or(Vec::is_empty),
        "{versions}"
    );

    // The run that purged is in the audit trail, by the system, with the cutoff it used;
    // runs with nothing to purge (the job's own at start, ours inside the window) wrote
    // nothing — an hourly job must not add 24 entries a day per instance.
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=key.purge_expired", None)
        .await;
    assert_eq!(audit_actions(&trail), ["key.purge_expired"], "{trail}");
    assert_eq!(app.app.purge_expired().await.unwrap(), 0);
    let (_, again) = app
        .call(Method::GET, "/api/v1/audit?action=key.purge_expired", None)
        .await;
    assert_eq!(audit_actions(&again).len(), 1, "{again}");
    assert!(
        trail["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"]["kind"] == "system" && e["details"]["deleted_before"].is_string()),
        "{trail}"
    );
}

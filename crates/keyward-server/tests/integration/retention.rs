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

/// An archive in memory that can be told to fail when asked to make it durable.
#[derive(Default)]
struct MemoryArchive {
    lines: Vec<String>,
    fail_commit: bool,
    committed: bool,
}

impl keyward_app::retention::AuditArchive for MemoryArchive {
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        self.lines.push(line.to_owned());
        Ok(())
    }
    fn commit(&mut self) -> std::io::Result<()> {
        if self.fail_commit {
            return Err(std::io::Error::other("disk full"));
        }
        self.committed = true;
        Ok(())
    }
}

async fn verify(app: &TestApp) -> serde_json::Value {
    let (status, report) = app.call(Method::GET, "/api/v1/audit/verify", None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    report
}

#[tokio::test]
async fn old_audit_entries_are_exported_then_pruned_behind_a_signed_checkpoint() {
    let clock = Arc::new(ManualClock::new(
        "2025-01-01T00:00:00Z"
            .parse::<keyward_core::Timestamp>()
            .unwrap(),
    ));
    let Some(app) = TestApp::spawn_with_clock(
        Backend::Sqlite,
        keyward_server::config::RawSettings {
            audit_retention_min_days: Some("90".into()),
            ..Default::default()
        },
        clock.clone(),
    )
    .await
    else {
        return;
    };
    let system = keyward_app::Actor::system("test");
    for alias in ["a", "b", "c"] {
        app.create_key("openai", "production", alias, OPENAI_KEY)
            .await;
    }
    // The head signed (now, or already by the server's own checkpoint job).
    app.app.sign_checkpoint().await.unwrap();
    let old = verify(&app).await["last_seq"].as_u64().unwrap();
    clock.advance(jiff::SignedDuration::from_hours(24 * 200));
    app.create_key("openai", "production", "recent", OPENAI_KEY)
        .await;
    let cutoff = app.app.now() - jiff::SignedDuration::from_hours(24 * 100);

    // Never inside the configured minimum.
    let mut archive = MemoryArchive::default();
    let too_recent = app.app.now() - jiff::SignedDuration::from_hours(24 * 30);
    let e = app
        .app
        .prune_audit(&system, too_recent, &mut archive)
        .await
        .unwrap_err();
    assert_eq!(e.code, "audit_retention_too_short");

    // An archive that cannot be made durable: nothing is pruned.
    let mut failing = MemoryArchive {
        fail_commit: true,
        ..Default::default()
    };
    let e = app
        .app
        .prune_audit(&system, cutoff, &mut failing)
        .await
        .unwrap_err();
    assert_eq!(e.code, "audit_archive_failed");
    assert_eq!(
        verify(&app).await["verified"],
        verify(&app).await["last_seq"]
    );
    let (_, first) = app.call(Method::GET, "/api/v1/audit?limit=1", None).await;
    assert_eq!(first["events"][0]["seq"], 1, "nothing went: {first}");

    // Exported up to the old checkpoint, then removed; the rest still verifies.
    let pruned = app
        .app
        .prune_audit(&system, cutoff, &mut archive)
        .await
        .unwrap()
        .expect("something to prune");
    assert_eq!(pruned.through, old);
    assert!(archive.committed);
    assert_eq!(archive.lines.len() as u64, old - pruned.from + 1);
    let exported: serde_json::Value = serde_json::from_str(&archive.lines[0]).unwrap();
    assert_eq!(exported["seq"], pruned.from);
    let report = verify(&app).await;
    assert_eq!(report["ok"], true, "{report}");
    let (_, first) = app.call(Method::GET, "/api/v1/audit?limit=1", None).await;
    assert_eq!(first["events"][0]["seq"], old + 1, "{first}");
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=audit.prune", None)
        .await;
    // The run whose archive failed (its entry, then its failure) and this one.
    let prunes = trail["events"].as_array().unwrap();
    assert_eq!(prunes.len(), 3, "{trail}");
    assert_eq!(prunes[1]["outcome"], "failure");
    assert_eq!(prunes[1]["details"]["error"], "audit_archive_failed");
    assert_eq!(prunes[2]["details"]["through"], old);

    // Nothing older left: a second run does nothing and writes nothing.
    let mut again = MemoryArchive::default();
    assert!(
        app.app
            .prune_audit(&system, cutoff, &mut again)
            .await
            .unwrap()
            .is_none()
    );
    assert!(again.lines.is_empty());

    // Removing more behind the store's back — up to a later signed checkpoint — is caught.
    app.create_key("openai", "production", "between", OPENAI_KEY)
        .await;
    app.app.sign_checkpoint().await.unwrap();
    let later = verify(&app).await["last_seq"].as_u64().unwrap();
    app.create_key("openai", "production", "after", OPENAI_KEY)
        .await;
    app.db()
        .execute_raw(&format!("DELETE FROM audit_events WHERE seq <= {later}"))
        .await;
    let report = verify(&app).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_broken"]["kind"], "missing", "{report}");
}

#[tokio::test]
async fn raw_usage_and_rollups_have_their_own_retention_and_pruning_is_audited() {
    let clock = Arc::new(ManualClock::new(
        "2026-01-05T15:00:00Z"
            .parse::<keyward_core::Timestamp>()
            .unwrap(),
    ));
    let Some(app) = TestApp::spawn_with_clock(
        Backend::Sqlite,
        keyward_server::config::RawSettings {
            usage_retention_days: Some("30".into()),
            usage_rollup_retention_days: Some("90".into()),
            ..Default::default()
        },
        clock.clone(),
    )
    .await
    else {
        return;
    };
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let key_id: keyward_core::id::KeyId = key["id"].as_str().unwrap().parse().unwrap();
    let record = |at: keyward_core::Timestamp| keyward_core::usage::UsageRecord {
        at,
        token_id: None,
        key_id: Some(key_id.clone()),
        service_id: "openai".into(),
        environment: Some("production".into()),
        method: "POST".into(),
        endpoint: "/v1/chat/completions".into(),
        status: 200,
        outcome: keyward_core::usage::Outcome::Success,
        error_code: None,
        latency_ms: 12,
        request_bytes: 100,
        response_bytes: 900,
        cache: keyward_core::usage::CacheOutcome::None,
        retries: 0,
        model: None,
        tokens: keyward_core::usage::TokenUsage::default(),
        credits: 1,
        cost_nanos: 0,
        answer: None,
        unpriced: false,
        source: None,
        saved_credits: 0,
    };
    app.app
        .record_events(vec![keyward_proxy::ProxyEvent::Usage(Box::new(record(
            app.app.now(),
        )))])
        .await
        .unwrap();
    let hours = |app: &TestApp| {
        let base = app.base.clone();
        let (client, token) = (app.client.clone(), app.token.clone());
        async move {
            let usage: serde_json::Value = client
                .get(format!(
                    "{base}/api/v1/usage?from=2026-01-05T00:00:00Z&to=2026-01-06T00:00:00Z&granularity=hour"
                ))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            usage["totals"]["requests"].as_u64().unwrap_or(0)
        }
    };
    assert_eq!(hours(&app).await, 1);

    // 40 days on: the raw record is gone, the hour rollup kept; audited once.
    clock.advance(jiff::SignedDuration::from_hours(24 * 40));
    assert_eq!(app.app.prune_usage().await.unwrap(), 1);
    assert_eq!(hours(&app).await, 1, "rollups outlive raw records");
    assert_eq!(app.app.prune_usage().await.unwrap(), 0);
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=usage.prune", None)
        .await;
    assert_eq!(audit_actions(&trail), ["usage.prune"], "{trail}");
    assert_eq!(trail["events"][0]["details"]["records"], 1);
    assert_eq!(trail["events"][0]["actor"]["kind"], "system");

    // Past the rollup retention the hour and day rollups go too.
    clock.advance(jiff::SignedDuration::from_hours(24 * 60));
    app.app.prune_usage().await.unwrap();
    assert_eq!(hours(&app).await, 0);
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=usage.prune", None)
        .await;
    assert_eq!(audit_actions(&trail).len(), 2, "{trail}");
    assert!(
        trail["events"][1]["details"]["rollup_rows"]
            .as_u64()
            .unwrap()
            >= 2
    );
}

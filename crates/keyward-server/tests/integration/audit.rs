//! The audit trail end to end: what gets recorded, that a secret never does, that edits
//! made behind Keyward's back are found (API and CLI), and that nothing happens when the
//! trail cannot be written.

use keyward_core::access::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, OPENAI_KEY, TestApp, assert_error};

async fn entries(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app
        .call(Method::GET, &format!("/api/v1/audit?{query}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

async fn verify(app: &TestApp) -> Value {
    let (status, body) = app.call(Method::GET, "/api/v1/audit/verify", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn management_actions_denials_and_failed_sign_ins_are_recorded(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap();
    let created = entries(&app, &format!("target=key:{id}")).await;
    assert_eq!(created.len(), 1, "{created:?}");
    let entry = &created[0];
    assert_eq!(entry["action"], "key.create");
    assert_eq!(entry["outcome"], "success");
    assert_eq!(entry["actor"]["kind"], "token");
    assert_eq!(entry["source"], "127.0.0.1");
    assert_eq!(entry["details"]["service"], "openai");
    let fingerprint = entry["details"]["fingerprint"].as_str().unwrap();
    assert!(fingerprint.starts_with("hmac:"), "{fingerprint}");

    // The same value added again as a version has the same fingerprint.
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{id}/versions"),
            Some(json!({"secret": OPENAI_KEY, "force": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let versions = entries(&app, &format!("target=key:{id}&action=key.version")).await;
    assert_eq!(versions[0]["details"]["fingerprint"], fingerprint);

    // A wrong credential and a refused permission are entries too.
    let bad = app
        .call_as("kwm_nope_nope", Method::GET, "/api/v1/keys", None)
        .await;
    assert_error(&bad, StatusCode::UNAUTHORIZED, "invalid_token");
    let viewer = app.token_with_role(Role::Viewer).await;
    let refused = app
        .call_as(&viewer, Method::DELETE, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    let denied = entries(&app, "outcome=denied").await;
    let actions: Vec<&str> = denied.iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"auth.token"), "{actions:?}");
    assert!(actions.contains(&"access.denied"), "{actions:?}");
    let refusal = denied
        .iter()
        .find(|e| e["action"] == "access.denied")
        .unwrap();
    assert_eq!(refusal["details"]["permission"], "keys_delete");
    assert_eq!(refusal["details"]["method"], "DELETE");
    // Viewers may not read the trail; auditors may.
    assert_error(
        &app.call_as(&viewer, Method::GET, "/api/v1/audit", None)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let auditor = app.token_with_role(Role::Auditor).await;
    let (status, _) = app
        .call_as(&auditor, Method::GET, "/api/v1/audit/verify", None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // A failed operation leaves its attempt and its failure.
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"id": "production", "name": "Again"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let attempts = entries(&app, "action=environment.create").await;
    let outcomes: Vec<&str> = attempts
        .iter()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["success", "failure"]);
    assert_eq!(attempts[1]["details"]["error"], "environment_exists");

    // Export is JSON Lines, audited itself, and nowhere holds the secret.
    let response = app
        .client
        .get(format!("{}/api/v1/audit/export", app.base))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    assert!(!text.contains(&OPENAI_KEY[8..40]), "no secret in the trail");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 6);
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64())
    );
    assert_eq!(entries(&app, "action=audit.export").await.len(), 1);
    let report = verify(&app).await;
    assert_eq!(report["ok"], true, "{report}");
}

#[tokio::test]
async fn management_actions_denials_and_failed_sign_ins_are_recorded_sqlite() {
    management_actions_denials_and_failed_sign_ins_are_recorded(Backend::Sqlite).await;
}

#[tokio::test]
async fn management_actions_denials_and_failed_sign_ins_are_recorded_postgres() {
    management_actions_denials_and_failed_sign_ins_are_recorded(Backend::Postgres).await;
}

#[tokio::test]
async fn tampering_is_reported_with_its_sequence_number_by_the_api_and_the_cli() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    for alias in ["a", "b", "c", "d"] {
        app.create_key("openai", "production", alias, OPENAI_KEY)
            .await;
    }
    assert_eq!(verify(&app).await["ok"], true);
    let checkpoint = app.app.sign_checkpoint().await.unwrap().unwrap();
    let out = app.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));

    let target = 3;
    let original =
        entries(&app, &format!("after={}&limit=1", target - 1)).await[0]["actor"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
    app.db()
        .execute_raw(&format!(
            "UPDATE audit_events SET actor_name = 'someone else' WHERE seq = {target}"
        ))
        .await;
    let report = verify(&app).await;
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_broken"]["seq"], target);
    assert_eq!(report["first_broken"]["kind"], "altered");
    let out = app.cli(&["audit", "verify"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("BROKEN at entry {target}")),
        "{stderr}"
    );

    // Deleting the newest entries and moving the head back is caught by the signature.
    // (Everything from the checkpoint on goes: a background job may have appended after it.)
    app.db()
        .execute_raw(&format!(
            "UPDATE audit_events SET actor_name = '{original}' WHERE seq = {target}"
        ))
        .await;
    assert_eq!(verify(&app).await["ok"], true, "edit undone");
    let last = checkpoint.seq;
    app.db()
        .execute_raw(&format!(
            "DELETE FROM audit_events WHERE seq >= {last}; \
             UPDATE audit_chain_head SET seq = {}, hash = (SELECT hash FROM audit_events WHERE seq = {}) WHERE id = 1",
            last - 1,
            last - 1
        ))
        .await;
    let report = verify(&app).await;
    assert_eq!(report["first_broken"]["seq"], last);
    assert_eq!(report["first_broken"]["kind"], "truncated");

    // A forged checkpoint does not verify.
    app.db()
        .execute_raw(&format!(
            "UPDATE audit_checkpoints SET signature = '{}' WHERE seq = {last}",
            "ab".repeat(64)
        ))
        .await;
    assert_eq!(verify(&app).await["first_broken"]["kind"], "bad_checkpoint");
}

/// Fail closed: with the audit table refusing writes, a key cannot be created, a token
/// cannot be revoked, and nothing changed.
async fn nothing_happens_when_the_trail_cannot_be_written(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let token = app
        .app_token(json!({"name": "svc", "services": ["openai"], "environments": ["production"]}))
        .await;
    let token_id = token["id"].as_str().unwrap().to_owned();
    let before = app.key_count().await;
    app.db()
        .execute_raw(app.db().break_audit_writes_sql())
        .await;

    let refused = app
        .call(
            Method::POST,
            "/api/v1/keys",
            Some(json!({"service": "openai", "environment": "production", "alias": "x", "secret": OPENAI_KEY, "force": true})),
        )
        .await;
    assert_error(
        &refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
    );
    assert_eq!(app.key_count().await, before, "no key was created");
    let refused = app
        .call(
            Method::POST,
            &format!("/api/v1/app-tokens/{token_id}/revoke"),
            None,
        )
        .await;
    assert_error(
        &refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
    );
    let (_, still) = app
        .call(Method::GET, &format!("/api/v1/app-tokens/{token_id}"), None)
        .await;
    assert_eq!(
        still["revoked_at"],
        Value::Null,
        "the token was not revoked"
    );
}

#[tokio::test]
async fn nothing_happens_when_the_trail_cannot_be_written_sqlite() {
    nothing_happens_when_the_trail_cannot_be_written(Backend::Sqlite).await;
}

#[tokio::test]
async fn nothing_happens_when_the_trail_cannot_be_written_postgres() {
    nothing_happens_when_the_trail_cannot_be_written(Backend::Postgres).await;
}

/// The trail streams to a webhook as JSON Lines, in order, and a batch the receiver
/// refused is sent again.
#[tokio::test]
async fn entries_stream_to_a_webhook_and_refused_batches_are_resent() {
    use std::sync::{Arc, Mutex};
    #[derive(Default)]
    struct Received {
        calls: u32,
        lines: Vec<Value>,
        last_seq_headers: Vec<String>,
    }
    let received = Arc::new(Mutex::new(Received::default()));
    let state = received.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let mut r = state.lock().unwrap();
                r.calls += 1;
                if r.calls == 1 {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                assert_eq!(headers["content-type"], "application/x-ndjson");
                r.last_seq_headers.push(
                    headers["x-keyward-audit-last-seq"]
                        .to_str()
                        .unwrap()
                        .to_owned(),
                );
                r.lines.extend(
                    body.lines()
                        .map(|l| serde_json::from_str::<Value>(l).unwrap()),
                );
                StatusCode::NO_CONTENT
            }
        }),
    );
    let base = crate::helpers::serve_fake(receiver).await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        keyward_server::config::RawSettings {
            audit_webhook_url: Some(format!("{base}/hook")),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    app.create_key("openai", "production", "hooked", OPENAI_KEY)
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let done = {
            let r = received.lock().unwrap();
            r.lines.iter().any(|l| l["action"] == "key.create")
        };
        if done {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "webhook got nothing");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = received.lock().unwrap();
    assert!(r.calls >= 2, "the refused first batch was sent again");
    let seqs: Vec<u64> = r.lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "in order, none lost"
    );
    assert!(
        !r.lines
            .iter()
            .any(|l| l.to_string().contains(&OPENAI_KEY[8..40]))
    );
    assert_eq!(
        r.last_seq_headers.last().unwrap(),
        &seqs.last().unwrap().to_string()
    );
}

/// `X-Forwarded-For` names the source only when a trusted proxy sends it; from a trusted
/// proxy a malformed one is a 400.
#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let send = |app: &TestApp, xff: &'static str| {
        app.client
            .get(format!("{}/api/v1/keys", app.base))
            .bearer_auth("kwm_wrong_wrong")
            .header("x-forwarded-for", xff)
            .send()
    };
    let sources = |events: &Value| -> Vec<String> {
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["source"].as_str().map(str::to_owned))
            .collect()
    };
    let direct = TestApp::spawn(Backend::Sqlite).await.unwrap();
    assert_eq!(
        send(&direct, "203.0.113.9").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, trail) = direct
        .call(Method::GET, "/api/v1/audit?action=auth.token", None)
        .await;
    assert_eq!(
        sources(&trail),
        ["127.0.0.1"],
        "a spoofed header is ignored"
    );

    let behind = TestApp::spawn_with(
        Backend::Sqlite,
        keyward_server::config::RawSettings {
            trusted_proxies: Some("127.0.0.1/32".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        send(&behind, "198.51.100.4, 203.0.113.9")
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, trail) = behind
        .call(Method::GET, "/api/v1/audit?action=auth.token", None)
        .await;
    assert_eq!(sources(&trail), ["203.0.113.9"]);
    let malformed = send(&behind, "203.0.113.9, not-an-address").await.unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let body: Value = malformed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_forwarded_for");
}

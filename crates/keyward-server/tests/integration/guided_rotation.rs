//! Guided rotations end to end against a fake OpenAI that keeps its own set of live keys:
//! the whole walk under a steady stream of proxied calls that must all succeed, a managed
//! rotation through the provider's admin API, and the bad inputs.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_core::ManualClock;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, OPENAI_KEY, TestApp, assert_error, audit_actions, serve_fake};

/// The rotation's new value (a different, well-formed project key).
pub const NEW_KEY: &str =
    "sk-proj-Zyxwvutsrqponmlkjihgfedcba9876543210ZYXWVUTSRQPONMLKJIHGFEDCBA_-9876543210NEWK";
/// An OpenAI admin key, for the Administration API only.
pub const ADMIN_KEY: &str =
    "sk-admin-AdminAdminAdminAdminAdminAdminAdminAdminAdminAdminAdminAdmin0123456789ADMN";

#[derive(Default)]
struct State {
    /// Keys the provider accepts now.
    live: HashSet<String>,
    /// Service accounts created through the admin API: id → (name, key).
    accounts: BTreeMap<String, (String, String)>,
    /// Inference calls per key seen.
    calls: BTreeMap<String, u64>,
    /// Admin API calls: method and path, and whether the admin key was sent.
    admin_calls: Vec<(String, String, bool)>,
}

/// A fake OpenAI with a set of live keys the test changes, and the service-account part of
/// the Administration API (creates `sk-svcacct-…` keys, deleting an account kills its key).
#[derive(Clone, Default)]
pub struct KeyedProvider {
    state: Arc<Mutex<State>>,
    created: Arc<AtomicU64>,
}

impl KeyedProvider {
    pub async fn start(live: &[&str]) -> (Self, String) {
        let provider = Self::default();
        provider
            .state
            .lock()
            .unwrap()
            .live
            .extend(live.iter().map(|k| (*k).to_owned()));
        let handler = provider.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let handler = handler.clone();
            async move { handler.answer(request).await }
        });
        (provider, serve_fake(app).await)
    }

    pub fn accept(&self, key: &str) {
        self.state.lock().unwrap().live.insert(key.to_owned());
    }

    pub fn revoke(&self, key: &str) {
        self.state.lock().unwrap().live.remove(key);
    }

    pub fn calls_with(&self, key: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .calls
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    fn admin_calls(&self) -> Vec<(String, String, bool)> {
        self.state.lock().unwrap().admin_calls.clone()
    }

    fn account_keys(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.accounts.values().map(|(_, k)| k.clone()).collect()
    }

    async fn answer(&self, request: Request) -> Response {
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let bearer = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        let body = axum::body::to_bytes(request.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let refused = || {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})),
            )
                .into_response()
        };
        if let Some(rest) = path.strip_prefix("/v1/organization/projects/") {
            let mut state = self.state.lock().unwrap();
            let admin = bearer == ADMIN_KEY;
            state
                .admin_calls
                .push((method.clone(), path.clone(), admin));
            if !admin {
                return refused();
            }
            let parts: Vec<&str> = rest.split('/').collect();
            return match (method.as_str(), parts.as_slice()) {
                ("POST", [_project, "service_accounts"]) => {
                    let name = serde_json::from_slice::<Value>(&body).unwrap_or_default()["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let n = self.created.fetch_add(1, Ordering::Relaxed) + 1;
                    let id = format!("svc_acct_{n}");
                    let key = format!("sk-svcacct-{}{n:04}", "K".repeat(60));
                    state.live.insert(key.clone());
                    state
                        .accounts
                        .insert(id.clone(), (name.clone(), key.clone()));
                    axum::Json(json!({"object": "organization.project.service_account", "id": id, "name": name, "role": "member",
                        "created_at": 1_700_000_000, "api_key": {"object": "organization.project.service_account.api_key",
                        "value": key, "name": "Secret Key", "created_at": 1_700_000_000, "id": format!("key_{n}")}}))
                        .into_response()
                }
                ("GET", [_project, "service_accounts"]) => {
                    let data: Vec<Value> = state
                        .accounts
                        .iter()
                        .map(|(id, (name, _))| json!({"object": "organization.project.service_account", "id": id, "name": name}))
                        .collect();
                    axum::Json(json!({"object": "list", "data": data})).into_response()
                }
                ("DELETE", [_project, "service_accounts", id]) => {
                    match state.accounts.remove(*id) {
                        Some((_, key)) => {
                            state.live.remove(&key);
                            axum::Json(json!({"object": "organization.project.service_account.deleted", "id": id, "deleted": true}))
                                .into_response()
                        }
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                }
                _ => StatusCode::NOT_FOUND.into_response(),
            };
        }
        let live = {
            let mut state = self.state.lock().unwrap();
            *state.calls.entry(bearer.clone()).or_default() += 1;
            state.live.contains(&bearer)
        };
        if !live {
            return refused();
        }
        match path.as_str() {
            "/v1/models" => axum::Json(json!({"object": "list", "data": [{"id": "gpt-5.4-mini"}]}))
                .into_response(),
            "/v1/chat/completions" => axum::Json(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-5.4-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
            }))
            .into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

/// Proxied calls that keep coming (a GET and an LLM POST in turn) until stopped; every
/// answer that is not a 200 is kept with its body.
pub struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    pub fn start(base: &str, token: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let (base, token) = (base.to_owned(), token.to_owned());
        let task = {
            let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let request = if n.is_multiple_of(2) {
                        http.get(format!("{base}/proxy/openai/v1/models"))
                    } else {
                        http.post(format!("{base}/proxy/openai/v1/chat/completions"))
                            .json(&json!({"model": "gpt-5.4-mini", "messages": [{"role": "user", "content": "hi"}]}))
                    };
                    let answer = request.bearer_auth(&token).send().await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    match answer {
                        Ok(a) if a.status() == StatusCode::OK => {}
                        Ok(a) => {
                            let status = a.status();
                            let body = a.text().await.unwrap_or_default();
                            failures.lock().unwrap().push(format!("{status} {body}"));
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        Self {
            stop,
            sent,
            failures,
            task,
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops and returns (calls sent, failures).
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), failures)
    }
}

async fn rotation(app: &TestApp, id: &str) -> Value {
    let (status, body) = app
        .call(Method::GET, &format!("/api/v1/rotations/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn step(app: &TestApp, id: &str, name: &str, body: Option<Value>) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        &format!("/api/v1/rotations/{id}/{name}"),
        body,
    )
    .await
}

/// Waits (up to 10 s) until the rotation satisfies `done` (traffic is written in batches,
/// background steps run every two seconds).
async fn rotation_until(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = rotation(app, id).await;
        if done(&r) {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotation never got there: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(mut until: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !until() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_rotation_runs_under_a_steady_stream_that_never_fails() {
    let clock = Arc::new(ManualClock::new(
        "2026-12-01T10:00:00Z".parse().expect("time"),
    ));
    let Some(app) =
        TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone()).await
    else {
        return;
    };
    let (provider, base) = KeyedProvider::start(&[OPENAI_KEY]).await;
    app.point_service("openai", &base).await;
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    // A budget and usage before the rotation: both belong to the key and must survive it.
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/keys/{key_id}"),
            Some(json!({"budget": {"limit_usd": 50.0, "period": "month"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = app
        .app_token(
            json!({"name": "stream", "services": ["openai"], "environments": ["production"]}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let stream = Stream::start(&app.base, &token);
    wait_for(|| stream.sent() > 20).await;

    // pending: stored, not used; the provider does not know the value yet.
    let (status, started) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{key_id}/rotations"),
            Some(json!({"secret": NEW_KEY, "window_minutes": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(started["step"], "pending");
    assert!(
        !started.to_string().contains(NEW_KEY),
        "no value in answers"
    );
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            started["old_version"].as_u64(),
            started["new_version"].as_u64()
        ),
        (Some(1), Some(2))
    );

    // Bad input: a second rotation, promoting before validation, odd canary shares.
    let second = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{key_id}/rotations"),
            Some(json!({"secret": NEW_KEY})),
        )
        .await;
    assert_error(&second, StatusCode::CONFLICT, "rotation_in_progress");
    assert_eq!(second.1["error"]["reference"], id.as_str());
    let direct = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{key_id}/versions"),
            Some(json!({"secret": NEW_KEY})),
        )
        .await;
    assert_error(&direct, StatusCode::CONFLICT, "rotation_in_progress");

    let (status, rejected) = step(&app, &id, "validate", None).await;
    assert_eq!(status, StatusCode::OK, "{rejected}");
    assert_eq!(
        (
            rejected["step"].as_str(),
            rejected["validation"]["verdict"].as_str()
        ),
        (Some("pending"), Some("rejected"))
    );
    let early = step(&app, &id, "promote", None).await;
    assert_error(&early, StatusCode::CONFLICT, "rotation_not_validated");
    assert_error(
        &step(&app, &id, "canary", Some(json!({"percent": 10}))).await,
        StatusCode::CONFLICT,
        "rotation_not_validated",
    );

    // validated: the provider accepts the new value now.
    provider.accept(NEW_KEY);
    let (_, validated) = step(&app, &id, "validate", None).await;
    assert_eq!(validated["step"], "validated", "{validated}");
    let (_, again) = step(&app, &id, "validate", None).await;
    assert_eq!(
        again["revision"], validated["revision"],
        "a repeat is a no-op"
    );
    assert_error(
        &step(&app, &id, "canary", Some(json!({"percent": 80}))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_canary_percent",
    );

    // canary: half the requests try the new value first; a rejection of it is retried
    // with the current value inside the same request.
    let (_, canary) = step(&app, &id, "canary", Some(json!({"percent": 50}))).await;
    assert_eq!(canary["step"], "canary", "{canary}");
    let before = provider.calls_with(NEW_KEY);
    wait_for(|| provider.calls_with(NEW_KEY) > before + 10).await;
    provider.revoke(NEW_KEY);
    let sent = stream.sent();
    wait_for(|| stream.sent() > sent + 20).await;
    provider.accept(NEW_KEY);
    let seen = rotation_until(&app, &id, |r| {
        r["traffic"]["canary_served"].as_u64() > Some(5)
            && r["traffic"]["canary_rejected"].as_u64() > Some(0)
    })
    .await;
    assert_eq!(seen["traffic"]["fallback_served"], 0);

    // promoted: the new value is current, the old one answers when the provider rejects
    // the new one (the dual-key window).
    let (_, promoted) = step(&app, &id, "promote", None).await;
    assert_eq!(promoted["step"], "promoted", "{promoted}");
    assert_eq!(promoted["window_ends_at"], "2026-12-01T11:00:00Z");
    let (_, now_key) = app
        .call(Method::GET, &format!("/api/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(now_key["current_version"], 2);
    provider.revoke(NEW_KEY);
    let old_before = provider.calls_with(OPENAI_KEY);
    wait_for(|| provider.calls_with(OPENAI_KEY) > old_before + 20).await;
    provider.accept(NEW_KEY);
    rotation_until(&app, &id, |r| {
        r["traffic"]["fallback_served"].as_u64() > Some(5)
    })
    .await;
    let (_, k) = app
        .call(Method::GET, &format!("/api/v1/keys/{key_id}"), None)
        .await;
    assert!(
        k["flag"].is_null(),
        "a key with a working value is not flagged: {k}"
    );

    // Retiring inside the window needs a confirmation.
    assert_error(
        &step(&app, &id, "retire", None).await,
        StatusCode::CONFLICT,
        "confirmation_required",
    );
    assert_error(
        &step(&app, &id, "cancel", None).await,
        StatusCode::CONFLICT,
        "rotation_promoted",
    );

    // retired, by itself at the end of the window; the probe finds the old value alive.
    clock.advance(jiff::SignedDuration::from_mins(61));
    let live = rotation_until(&app, &id, |r| r["step"] == "old_key_live").await;
    assert_eq!(live["revoke_at"], "https://platform.openai.com/api-keys");
    assert_eq!(live["verification"]["verdict"], "valid");
    let old_at_retirement = provider.calls_with(OPENAI_KEY);
    let sent = stream.sent();
    wait_for(|| stream.sent() > sent + 30).await;
    assert_eq!(
        provider.calls_with(OPENAI_KEY),
        old_at_retirement,
        "a retired value is never injected"
    );

    // revoked-verified once the provider rejects the old value.
    provider.revoke(OPENAI_KEY);
    let (_, verified) = step(&app, &id, "verify", None).await;
    assert_eq!(verified["step"], "revoked_verified", "{verified}");
    assert_eq!(verified["verification"]["status"], 401);
    assert!(verified["next"].as_array().unwrap().is_empty());

    let (sent, failures) = stream.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(sent > 200, "the stream kept going ({sent} calls)");

    // Usage history and the budget are the key's: every call of the stream is on it.
    let usage = app.usage_until(&format!("key={key_id}"), sent).await;
    assert_eq!(usage["totals"]["errors"], 0, "{usage}");
    let (_, k) = app
        .call(Method::GET, &format!("/api/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(k["budget"]["limit_usd"], 50.0, "{k}");
    let (_, versions) = app
        .call(
            Method::GET,
            &format!("/api/v1/keys/{key_id}/versions"),
            None,
        )
        .await;
    let states: Vec<(u64, String)> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(states, vec![(2, "current".into()), (1, "retired".into())]);

    let (_, trail) = app
        .call(
            Method::GET,
            &format!("/api/v1/audit?target=key:{key_id}&limit=200"),
            None,
        )
        .await;
    let actions = audit_actions(&trail);
    for action in [
        "key.rotation.start",
        "key.rotation.validate",
        "key.rotation.canary",
        "key.rotation.promote",
        "key.rotation.retire",
        "key.rotation.verify",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} missing from {actions:?}"
        );
    }
    assert!(!trail.to_string().contains(NEW_KEY));

    // A finished rotation lets the key rotate again; a revoked key cannot.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{key_id}/revoke"),
            Some(json!({"reason": "test over"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_error(
        &app.call(
            Method::POST,
            &format!("/api/v1/keys/{key_id}/rotations"),
            Some(json!({"secret": OPENAI_KEY})),
        )
        .await,
        StatusCode::CONFLICT,
        "key_revoked",
    );
}

#[tokio::test]
async fn a_managed_rotation_creates_and_revokes_keys_through_the_admin_api() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let (provider, base) = KeyedProvider::start(&[OPENAI_KEY]).await;
    app.point_service("openai", &base).await;
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let admin = app
        .create_key("openai", "production", "admin", ADMIN_KEY)
        .await;
    let admin_id = admin["id"].as_str().unwrap().to_owned();

    let start = |project: &str| json!({"managed": {"admin_key": admin_id, "project": project}, "window_minutes": 0});
    assert_error(
        &app.call(
            Method::POST,
            &format!("/api/v1/keys/{key_id}/rotations"),
            Some(start("../../admin")),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_project",
    );
    assert_error(
        &app.call(
            Method::POST,
            &format!("/api/v1/keys/{key_id}/rotations"),
            Some(
                json!({"secret": NEW_KEY, "managed": {"admin_key": admin_id, "project": "proj_1"}}),
            ),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "rotation_value_required",
    );
    assert_error(
        &app.call(
            Method::POST,
            &format!("/api/v1/keys/{key_id}/rotations"),
            Some(json!({"secret": NEW_KEY, "window_minutes": 43_201})),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_window",
    );
    assert!(provider.admin_calls().is_empty(), "refusals call nobody");

    // First managed rotation: Keyward creates the new key; the old one was made by hand,
    // so it can only be verified, and it is still live.
    let mut created = Vec::new();
    for round in 0..2 {
        let (status, r) = app
            .call(
                Method::POST,
                &format!("/api/v1/keys/{key_id}/rotations"),
                Some(start("proj_abc")),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        assert_eq!(r["step"], "pending", "{r}");
        let id = r["id"].as_str().unwrap().to_owned();
        let provider_key = r["managed"]["provider_key"].as_str().unwrap().to_owned();
        created.push(provider_key);
        let values = provider.account_keys();
        assert!(
            values.iter().all(|v| !r.to_string().contains(v.as_str())),
            "no value in answers"
        );
        assert_eq!(
            step(&app, &id, "validate", None).await.1["step"],
            "validated"
        );
        assert_eq!(step(&app, &id, "promote", None).await.1["step"], "promoted");
        let (_, done) = step(&app, &id, "retire", Some(json!({"confirm": true}))).await;
        if round == 0 {
            assert_eq!(done["step"], "old_key_live", "{done}");
            provider.revoke(OPENAI_KEY);
            assert_eq!(
                step(&app, &id, "verify", None).await.1["step"],
                "revoked_verified"
            );
        } else {
            // The second rotation deletes the first one's account itself, and proves it.
            assert_eq!(done["step"], "revoked_verified", "{done}");
        }
    }
    let calls = provider.admin_calls();
    assert!(
        calls.iter().all(|(_, _, admin)| *admin),
        "every admin call carries the admin key"
    );
    assert!(
        calls.iter().any(|(m, p, _)| m == "DELETE"
            && p == &format!(
                "/v1/organization/projects/proj_abc/service_accounts/{}",
                created[0]
            )),
        "{calls:?}"
    );
    assert_eq!(
        provider.account_keys().len(),
        1,
        "only the current key is left at the provider"
    );

    // The key works with the last created value.
    let token = app
        .app_token(json!({"name": "t", "services": ["openai"], "environments": ["production"], "key_ids": [key_id]}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = app
        .client
        .get(format!("{}/proxy/openai/v1/models", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let (_, trail) = app
        .call(
            Method::GET,
            &format!("/api/v1/audit?target=key:{key_id}&limit=200"),
            None,
        )
        .await;
    let actions = audit_actions(&trail);
    assert!(
        actions.iter().any(|a| a == "key.rotation.create"),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| a == "key.rotation.revoke_at_provider"),
        "{actions:?}"
    );
    for value in provider.account_keys() {
        assert!(!trail.to_string().contains(&value));
    }
}

/// The steps of a rotation in order, as the crash test asks for them.
fn rotation_steps() -> Vec<(&'static str, Option<Value>)> {
    vec![
        (
            "start",
            Some(json!({"secret": NEW_KEY, "window_minutes": 30})),
        ),
        ("validate", None),
        ("canary", Some(json!({"percent": 20}))),
        ("promote", None),
        ("retire", Some(json!({"confirm": true}))),
        ("verify", None),
    ]
}

/// Asks for one step; `start` is answered by the rotation itself or, once one exists,
/// by `rotation_in_progress` naming it — the documented way to resume.
async fn ask(
    server: &crate::helpers::Process,
    token: &str,
    key_id: &str,
    rotation: Option<&str>,
    (name, body): &(&'static str, Option<Value>),
) -> (StatusCode, Value) {
    match (*name, rotation) {
        ("start", _) => {
            server
                .call(
                    token,
                    Method::POST,
                    &format!("/api/v1/keys/{key_id}/rotations"),
                    body.clone(),
                )
                .await
        }
        (name, Some(id)) => {
            server
                .call(
                    token,
                    Method::POST,
                    &format!("/api/v1/rotations/{id}/{name}"),
                    body.clone(),
                )
                .await
        }
        (name, None) => panic!("no rotation to {name}"),
    }
}

/// Proxied calls with `token`; all must succeed.
async fn proxied_calls(base: &str, token: &str, n: u64) {
    let http = reqwest::Client::new();
    for _ in 0..n {
        let answer = http
            .get(format!("http://{base}/proxy/openai/v1/models"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
    }
}

/// Waits until the key's usage counts `n` calls (written in batches).
async fn usage_reaches(server: &crate::helpers::Process, token: &str, key_id: &str, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, usage) = server
            .call(
                token,
                Method::GET,
                &format!("/api/v1/usage?key={key_id}"),
                None,
            )
            .await;
        if usage["totals"]["requests"] == n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "usage stuck: {usage}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_every_rotation_step_converges_with_one_current_version_and_no_lost_usage() {
    use crate::helpers::{Process, cli_token};
    let (_provider, fake) = KeyedProvider::start(&[OPENAI_KEY, NEW_KEY]).await;
    let dir = tempfile::tempdir().unwrap();
    let envs: Vec<(&str, &str)> = vec![];
    let token = cli_token(dir.path(), &envs);
    let mut server = Process::serve(dir.path(), &envs, "start");
    let (status, body) = server
        .call(
            &token,
            Method::PATCH,
            "/api/v1/services/openai",
            Some(json!({"base_url": fake})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let steps = rotation_steps();
    for kill_at in 0..steps.len() {
        let (status, key) = server
            .call(
                &token,
                Method::POST,
                "/api/v1/keys",
                Some(json!({"service": "openai", "environment": "production",
                    "alias": format!("crash-{kill_at}"), "secret": OPENAI_KEY})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        let key_id = key["id"].as_str().unwrap().to_owned();
        let (_, app_token) = server
            .call(
                &token,
                Method::POST,
                "/api/v1/app-tokens",
                Some(
                    json!({"name": format!("crash-{kill_at}"), "services": ["openai"],
                    "environments": ["production"], "key_ids": [key_id]}),
                ),
            )
            .await;
        let app_token = app_token["token"].as_str().unwrap().to_owned();

        let mut rotation: Option<String> = None;
        for s in &steps[..kill_at] {
            let (status, r) = ask(&server, &token, &key_id, rotation.as_deref(), s).await;
            assert!(status.is_success(), "{} before the kill: {r}", s.0);
            rotation = r["id"].as_str().map(str::to_owned);
        }
        proxied_calls(&server.base, &app_token, 20).await;
        usage_reaches(&server, &token, &key_id, 20).await;

        // The step is under way when the process dies (a few milliseconds in, varying).
        let in_flight = {
            let (base, token, key_id, rotation, s) = (
                server.base.clone(),
                token.clone(),
                key_id.clone(),
                rotation.clone(),
                steps[kill_at].clone(),
            );
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let url = match rotation {
                    Some(id) if s.0 != "start" => {
                        format!("http://{base}/api/v1/rotations/{id}/{}", s.0)
                    }
                    _ => format!("http://{base}/api/v1/keys/{key_id}/rotations"),
                };
                let mut request = http.post(url).bearer_auth(&token);
                if let Some(body) = s.1 {
                    request = request.json(&body);
                }
                let _ = request.send().await;
            })
        };
        tokio::time::sleep(Duration::from_millis(2 * kill_at as u64)).await;
        server.kill();
        let _ = in_flight.await;
        server = Process::serve(dir.path(), &envs, &format!("after-kill-{kill_at}"));

        // Resume: ask for the interrupted step again, then the rest.
        for s in &steps[kill_at..] {
            let (status, r) = ask(&server, &token, &key_id, rotation.as_deref(), s).await;
            let r =
                if status == StatusCode::CONFLICT && r["error"]["code"] == "rotation_in_progress" {
                    rotation = r["error"]["reference"].as_str().map(str::to_owned);
                    let (_, again) = server
                        .call(
                            &token,
                            Method::GET,
                            &format!("/api/v1/rotations/{}", rotation.as_deref().unwrap()),
                            None,
                        )
                        .await;
                    again
                } else {
                    assert!(
                        status.is_success(),
                        "{} after the kill at {}: {r}",
                        s.0,
                        steps[kill_at].0
                    );
                    r
                };
            rotation = r["id"].as_str().map(str::to_owned).or(rotation);
        }

        // Converged: one rotation, finished; exactly one current version, the new one.
        let (_, rotations) = server
            .call(
                &token,
                Method::GET,
                &format!("/api/v1/keys/{key_id}/rotations"),
                None,
            )
            .await;
        let rotations = rotations.as_array().unwrap();
        assert_eq!(
            rotations.len(),
            1,
            "kill at {}: {rotations:?}",
            steps[kill_at].0
        );
        assert!(
            ["old_key_live", "revoked_verified"].contains(&rotations[0]["step"].as_str().unwrap()),
            "kill at {}: {}",
            steps[kill_at].0,
            rotations[0]
        );
        let (_, versions) = server
            .call(
                &token,
                Method::GET,
                &format!("/api/v1/keys/{key_id}/versions"),
                None,
            )
            .await;
        let current: Vec<u64> = versions
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["state"] == "current")
            .map(|v| v["version"].as_u64().unwrap())
            .collect();
        assert_eq!(current, vec![2], "kill at {}: {versions}", steps[kill_at].0);
        assert!(
            versions
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v["state"] != "pending"),
            "{versions}"
        );
        // Every call recorded before the kill is still there, and the key goes on working.
        proxied_calls(&server.base, &app_token, 5).await;
        usage_reaches(&server, &token, &key_id, 25).await;
    }
    server.stop();
}

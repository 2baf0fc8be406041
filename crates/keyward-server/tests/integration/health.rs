//! Key and service health: active probes stay within each key's probe budget (a key on a
//! 25-requests-a-day plan is probed at most once a day, and the probe counts against the
//! allowance); passive health from real traffic tells a bad key from a service
//! disruption; changes are announced once as `health_changed` webhooks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jiff::{SignedDuration, Timestamp};
use keyward_core::access::Role;
use keyward_core::{Clock, ManualClock};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, OPENAI_KEY, TestApp, serve_fake};
use crate::notifications::Receiver;
use crate::validation::AV_KEY;

/// Alpha Vantage that answers quotes for `AV_KEY` and remembers when each call came.
#[derive(Clone, Default)]
struct Quotes {
    calls: Arc<Mutex<Vec<String>>>,
}

impl Quotes {
    async fn start() -> (Self, String) {
        let quotes = Self::default();
        let seen = quotes.calls.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let seen = seen.clone();
            async move {
                let query = request.uri().query().unwrap_or_default().to_owned();
                seen.lock().unwrap().push(query.clone());
                if query.contains(&format!("apikey={AV_KEY}")) {
                    axum::Json(
                        json!({"Global Quote": {"01. symbol": "IBM", "05. price": "241.10"}}),
                    )
                    .into_response()
                } else {
                    axum::Json(json!({"Error Message": "the parameter apikey is invalid"}))
                        .into_response()
                }
            }
        });
        (quotes, serve_fake(app).await)
    }

    fn probes(&self) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|q| q.contains("symbol=IBM"))
            .count()
    }
}

#[tokio::test]
async fn a_key_on_a_25_a_day_plan_is_probed_at_most_once_a_day_and_the_probe_is_counted() {
    // 01:00 in New York, so a whole Alpha Vantage day follows each probe.
    let start: Timestamp = "2026-12-01T06:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let Some(app) =
        TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone()).await
    else {
        return;
    };
    let (quotes, base) = Quotes::start().await;
    app.point_service("alpha-vantage", &base).await;
    let (status, key) = app
        .call(
            Method::POST,
            "/api/v1/keys",
            Some(
                json!({"service": "alpha-vantage", "environment": "production",
                        "alias": "free", "secret": AV_KEY, "plan": "Free"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let id = key["id"].as_str().unwrap().to_owned();
    let (_, health) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}/health"), None)
        .await;
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(
        health["next_probe_at"]
            .as_str()
            .unwrap()
            .parse::<Timestamp>()
            .unwrap(),
        start + SignedDuration::from_hours(24),
        "a new key is probed once it has been idle for its interval: {health}"
    );

    // Three days in ten-minute steps; the background loop runs too, on the same clock.
    let mut probed_at = Vec::new();
    for _ in 0..(3 * 24 * 6) {
        clock.advance(SignedDuration::from_mins(10));
        let before = quotes.probes();
        app.app.run_probes().await.unwrap();
        if quotes.probes() > before {
            probed_at.push(clock.now());
        }
    }
    assert_eq!(quotes.probes(), 3, "one probe a day: {probed_at:?}");
    for pair in probed_at.windows(2) {
        assert!(
            pair[1].duration_since(pair[0]) >= SignedDuration::from_hours(24),
            "{probed_at:?}"
        );
    }
    let (_, health) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}/health"), None)
        .await;
    assert_eq!(health["last_probe"]["verdict"], "valid", "{health}");

    // Probes are metered like any call ...
    let to = clock.now() + SignedDuration::from_hours(1);
    let usage = app
        .usage_until(&format!("key={id}&from={start}&to={to}&granularity=day"), 3)
        .await;
    assert_eq!(usage["totals"]["errors"], 0, "{usage}");
    // ... and spend from the key's allowance: today's probe plus 24 calls use all 25.
    let token = app
        .app_token(
            json!({"name": "quotes", "services": ["alpha-vantage"], "environments": ["production"]}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut refused = None;
    for i in 0..25 {
        clock.advance(SignedDuration::from_secs(2));
        let answer = app
            .client
            .get(format!(
                "{}/proxy/alpha-vantage/query?function=GLOBAL_QUOTE&symbol=S{i}",
                app.base
            ))
            .header("x-keyward-token", &token)
            .send()
            .await
            .unwrap();
        if answer.status() != StatusCode::OK {
            let body: Value = answer.json().await.unwrap();
            refused = Some((i, body["error"]["code"].clone()));
            break;
        }
    }
    assert_eq!(
        refused,
        Some((24, json!("quota_exhausted"))),
        "the 25th call of the day is refused because the probe took one"
    );
    assert_eq!(quotes.probes(), 3, "a key in use is not probed");
}

/// OpenAI whose `/v1/models` fails with 503 while `outage` is set, and otherwise
/// accepts only `OPENAI_KEY`.
pub(crate) async fn openai(outage: Arc<AtomicBool>, calls: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new().fallback(move |request: Request| {
        let outage = outage.clone();
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if outage.load(Ordering::SeqCst) {
                return (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
            }
            let authorization = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if authorization == format!("Bearer {OPENAI_KEY}") {
                axum::Json(json!({"object": "list", "data": []})).into_response()
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": {"message": "Incorrect API key provided"}})),
                )
                    .into_response()
            }
        }
    });
    serve_fake(app).await
}

async fn health(app: &TestApp) -> Value {
    let (status, body) = app.call(Method::GET, "/api/v1/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn key_status<'a>(health: &'a Value, alias: &str) -> &'a Value {
    health["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["alias"] == alias)
        .unwrap_or_else(|| panic!("no {alias} in {health}"))
}

/// Waits until the health report satisfies `done` (usage is written in batches).
async fn health_until(app: &TestApp, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report = health(app).await;
        if done(&report) {
            return report;
        }
        assert!(std::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_bad_key_is_told_apart_from_a_service_disruption_and_changes_are_announced() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let outage = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let base = openai(outage.clone(), calls.clone()).await;
    app.point_service("openai", &base).await;
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let (status, hook) = app
        .call(
            Method::POST,
            "/api/v1/webhooks",
            Some(json!({"url": url, "kinds": ["health_changed"], "allow_private_network": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    app.create_key("openai", "production", "good", OPENAI_KEY)
        .await;
    let wrong = format!("{}Q", &OPENAI_KEY[..OPENAI_KEY.len() - 1]);
    app.create_key("openai", "production", "revoked-upstream", &wrong)
        .await;
    let report = health(&app).await;
    assert_eq!(report["services"][0]["status"], "healthy", "{report}");
    assert_eq!(app.app.announce_health_changes().await.unwrap(), 0);

    // One key the provider rejects: that key is down, the service only degraded.
    let token = app
        .app_token(json!({"name": "t", "services": ["openai"], "environments": ["production"]}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let call = || {
        app.client
            .get(format!("{}/proxy/openai/v1/models", app.base))
            .bearer_auth(&token)
            .send()
    };
    for _ in 0..4 {
        assert_eq!(call().await.unwrap().status(), StatusCode::OK);
    }
    let report = health_until(&app, |h| {
        key_status(h, "revoked-upstream")["status"] == "down"
    })
    .await;
    assert_eq!(key_status(&report, "good")["status"], "healthy", "{report}");
    assert_eq!(
        key_status(&report, "revoked-upstream")["reasons"][0],
        "the provider rejects the key (401/403)"
    );
    let service = &report["services"][0];
    assert_eq!(
        (
            &service["status"],
            &service["disruption"],
            &service["failing_keys"]
        ),
        (&json!("degraded"), &json!(false), &json!(1)),
        "{report}"
    );
    // (The background loop may announce too; each change is announced once whoever sees
    // it first.)
    app.app.announce_health_changes().await.unwrap();
    app.app.announce_health_changes().await.unwrap();
    receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 2, "the key and its service, once each");
    let bodies: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let about_key = bodies
        .iter()
        .find(|b| b["data"]["alias"] == "revoked-upstream")
        .unwrap_or_else(|| panic!("{bodies:?}"));
    assert_eq!(
        (&about_key["kind"], &about_key["data"]["status"]),
        (&json!("health_changed"), &json!("down"))
    );

    // The pages say the same: the dashboard's health panel and the key's page.
    let (_, ada, _) = crate::browser::enrolled_user(&app, "ada", Role::Admin).await;
    let (_, _, dashboard) = crate::ui::get_page(&app, &ada.cookie, "/").await;
    assert!(
        dashboard.contains("data-service-health=\"openai\"")
            && dashboard.contains("the provider rejects the key"),
        "{dashboard}"
    );
    let bad = key_status(&report, "revoked-upstream")["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, _, page) = crate::ui::get_page(&app, &ada.cookie, &format!("/keys/{bad}")).await;
    assert!(page.contains("data-health=\"down\""), "{page}");

    // The provider fails for everyone: the good key fails too, and the service shows a
    // disruption rather than two bad keys.
    // (A POST is sent once, so each failure is recorded on the key that was tried: the good
    // one until five failures open its circuit, then the rejected one until its circuit
    // opens too; after that Keyward answers `circuit_open` itself.)
    outage.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        let answer = app
            .client
            .post(format!("{}/proxy/openai/v1/chat/completions", app.base))
            .bearer_auth(&token)
            .json(
                &json!({"model": "gpt-5.4-mini", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let report = health_until(&app, |h| {
        h["services"][0]["disruption"] == true
            && key_status(h, "good")["last_5_minutes"]["failures"] == 5
    })
    .await;
    assert_ne!(key_status(&report, "good")["status"], "healthy", "{report}");
    assert!(
        key_status(&report, "good")["last_5_minutes"]["failures"]
            .as_u64()
            .unwrap()
            >= 1,
        "{report}"
    );
    app.app.announce_health_changes().await.unwrap();
    let got = receiver.wait_for(4).await;
    let bodies: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(
        bodies
            .iter()
            .any(|b| b["data"]["service"] == "openai" && b["data"]["disruption"] == true),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn a_failing_key_is_cut_off_by_its_circuit_and_tried_again_later() {
    let clock = Arc::new(ManualClock::new(
        "2026-12-01T12:00:00Z".parse::<Timestamp>().unwrap(),
    ));
    let Some(app) =
        TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone()).await
    else {
        return;
    };
    let outage = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let base = openai(outage.clone(), calls.clone()).await;
    app.point_service("openai", &base).await;
    let key = app
        .create_key("openai", "production", "only", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap().to_owned();
    let token = app
        .app_token(json!({"name": "t", "services": ["openai"], "environments": ["production"]}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let call = || async {
        let answer = app
            .client
            .get(format!("{}/proxy/openai/v1/models", app.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        (
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    // Provider errors until the circuit opens (five failed attempts in a row).
    let mut opened = false;
    for _ in 0..5 {
        if call().await.1 == "circuit_open" {
            opened = true;
            break;
        }
    }
    assert!(opened, "the circuit never opened");
    let sent = calls.load(Ordering::SeqCst);
    assert!(sent >= 5, "{sent}");
    let (status, code) = call().await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "circuit_open")
    );
    assert_eq!(calls.load(Ordering::SeqCst), sent, "no traffic while open");
    let (_, health) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}/health"), None)
        .await;
    assert_eq!(
        (&health["status"], &health["circuit"]),
        (&json!("down"), &json!("open")),
        "{health}"
    );

    // Later, a trial goes through; the provider has recovered and the circuit closes.
    outage.store(false, Ordering::SeqCst);
    clock.advance(SignedDuration::from_secs(31));
    assert_eq!(call().await.0, StatusCode::OK);
    assert_eq!(call().await.0, StatusCode::OK);
    let (_, health) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}/health"), None)
        .await;
    assert_eq!(health["circuit"], "closed", "{health}");
}

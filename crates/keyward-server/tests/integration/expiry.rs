//! Expiry: an expired key is not injected (`key_expired`), unless a configured grace
//! period still allows it — then every answer carries a warning header and the metric
//! counts it; past the grace period it is refused too. On an injected clock.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use keyward_core::{Clock, ManualClock};
use keyward_server::config::RawSettings;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, OPENAI_KEY, TestApp};

async fn call(app: &TestApp, token: &str) -> (StatusCode, Option<String>, Value) {
    let answer = app
        .client
        .get(format!("{}/proxy/openai/v1/models", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let warning = answer
        .headers()
        .get("x-keyward-warning")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, warning, answer.json().await.unwrap_or(Value::Null))
}

async fn expiring_key_and_token(app: &TestApp, clock: &ManualClock) -> String {
    let (_, base) = crate::validation::Provider::start().await;
    app.point_service("openai", &base).await;
    let expires = clock.now() + SignedDuration::from_hours(1);
    let (status, key) = app
        .call(
            Method::POST,
            "/api/v1/keys",
            Some(
                json!({"service": "openai", "environment": "production", "alias": "main",
                "secret": OPENAI_KEY, "expires_at": expires.to_string()}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    app.app_token(json!({"name": "t", "services": ["openai"], "environments": ["production"]}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Timestamp::from_second(1_796_000_000).unwrap(),
    ))
}

#[tokio::test]
async fn an_expired_key_is_used_only_inside_the_grace_period_and_with_a_warning() {
    let clock = clock();
    let Some(app) = TestApp::spawn_with_clock(
        Backend::Sqlite,
        RawSettings {
            expiry_grace_minutes: Some("30".into()),
            ..Default::default()
        },
        clock.clone(),
    )
    .await
    else {
        return;
    };
    let token = expiring_key_and_token(&app, &clock).await;
    let (status, warning, _) = call(&app, &token).await;
    assert_eq!((status, warning), (StatusCode::OK, None));

    clock.advance(SignedDuration::from_mins(61));
    let (status, warning, _) = call(&app, &token).await;
    assert_eq!(status, StatusCode::OK, "inside the grace period");
    let warning = warning.expect("a warning header");
    assert!(warning.starts_with("key_expired;"), "{warning}");
    let (_, key) = app.call(Method::GET, "/api/v1/keys?limit=1", None).await;
    assert_eq!(key["items"][0]["status"], "expired", "{key}");
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("keyward_proxy_expired_key_uses_total 1"),
        "{metrics}"
    );

    clock.advance(SignedDuration::from_mins(30));
    let (status, _, body) = call(&app, &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "past the grace period");
    assert_eq!(body["error"]["code"], "key_expired", "{body}");
}

#[tokio::test]
async fn without_a_grace_period_an_expired_key_is_refused_at_once() {
    let clock = clock();
    let Some(app) =
        TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone()).await
    else {
        return;
    };
    let token = expiring_key_and_token(&app, &clock).await;
    clock.advance(SignedDuration::from_mins(61));
    let (status, _, body) = call(&app, &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "key_expired", "{body}");
}

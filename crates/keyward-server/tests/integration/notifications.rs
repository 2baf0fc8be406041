//! Notification webhooks: bad addresses refused; an event reaches the webhooks that want
//! it, signed as documented (checked here with an independent HMAC); a failing receiver is
//! retried on the backoff schedule and every attempt is in the delivery log; reminders are
//! queued once per key and date. On an injected clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jiff::{SignedDuration, Timestamp};
use keyward_core::{Clock, ManualClock};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, OPENAI_KEY, TestApp, assert_error, serve_fake};

#[derive(Debug, Clone)]
pub struct Received {
    pub signature: String,
    pub delivery: String,
    pub event: String,
    pub body: Vec<u8>,
}

/// A receiver that answers with the next planned status (then 200) and keeps every call.
#[derive(Clone, Default)]
pub struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    plan: Arc<Mutex<Vec<StatusCode>>>,
}

impl Receiver {
    pub async fn start(plan: Vec<StatusCode>) -> (Self, String) {
        let receiver = Self {
            plan: Arc::new(Mutex::new(plan)),
            ..Self::default()
        };
        let handler = receiver.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let handler = handler.clone();
            async move {
                let (signature, delivery, event) = {
                    let header = |name: &str| {
                        request
                            .headers()
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default()
                    };
                    (
                        header("x-keyward-signature"),
                        header("x-keyward-delivery"),
                        header("x-keyward-event"),
                    )
                };
                let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                    .await
                    .unwrap()
                    .to_vec();
                handler.received.lock().unwrap().push(Received {
                    signature,
                    delivery,
                    event,
                    body,
                });
                let mut plan = handler.plan.lock().unwrap();
                let status = if plan.is_empty() {
                    StatusCode::OK
                } else {
                    plan.remove(0)
                };
                status.into_response()
            }
        });
        (receiver, serve_fake(app).await)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} calls came",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The documented check, implemented independently of Keyward's code.
fn signature_is_valid(secret: &str, signature: &str, body: &[u8]) -> bool {
    use aws_lc_rs::hmac;
    let mut parts = signature.split(',');
    let (Some(t), Some(v1)) = (
        parts.next().and_then(|p| p.strip_prefix("t=")),
        parts.next().and_then(|p| p.strip_prefix("v1=")),
    ) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    let Ok(tag) = hex::decode(v1) else {
        return false;
    };
    hmac::verify(&key, &message, &tag).is_ok()
}

async fn log(app: &TestApp, hook: &str) -> Value {
    app.call(
        Method::GET,
        &format!("/api/v1/webhooks/{hook}/deliveries"),
        None,
    )
    .await
    .1
}

async fn create(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.call(Method::POST, "/api/v1/webhooks", Some(body)).await
}

#[tokio::test]
async fn events_are_signed_retried_with_backoff_and_logged() {
    let clock = Arc::new(ManualClock::new(
        Timestamp::from_second(1_796_000_000).unwrap(),
    ));
    let Some(app) =
        TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone()).await
    else {
        return;
    };
    let (receiver, url) = Receiver::start(vec![
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
    ])
    .await;

    // Bad input: nothing is registered.
    assert_error(
        &create(&app, json!({"url": "ftp://example.com/x"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_webhook_url",
    );
    assert_error(
        &create(&app, json!({"url": "https://user:pw@example.com/x"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_webhook_url",
    );
    assert_error(
        &create(&app, json!({"url": url})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "webhook_url_private",
    );
    assert_error(
        &create(&app, json!({"url": "http://169.254.169.254/latest"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "webhook_url_private",
    );
    assert_error(
        &create(
            &app,
            json!({"url": url, "kinds": ["everything"], "allow_private_network": true}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_notification_kind",
    );
    let viewer = app
        .token_with_role(keyward_core::access::Role::KeyManager)
        .await;
    let refused = app
        .call_as(
            &viewer,
            Method::POST,
            "/api/v1/webhooks",
            Some(json!({"url": url, "allow_private_network": true})),
        )
        .await;
    assert_eq!(refused.0, StatusCode::FORBIDDEN, "{}", refused.1);
    let (_, listed) = app.call(Method::GET, "/api/v1/webhooks", None).await;
    assert_eq!(listed, json!([]));

    let (status, hook) = create(
        &app,
        json!({"url": url, "kinds": ["key_revoked", "key_expiring"], "categories": ["llm-providers"], "allow_private_network": true}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{hook}");
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    // A webhook for another category hears nothing of this.
    let (_, other_receiver_url) = Receiver::start(vec![]).await;
    let (status, _) = create(
        &app,
        json!({"url": other_receiver_url, "categories": ["financial-data"], "allow_private_network": true}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{key_id}/revoke"),
            Some(json!({"reason": "leaked in a log"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // First attempt at once: 500, logged, next one in 10 s.
    let got = receiver.wait_for(1).await;
    assert!(
        signature_is_valid(&secret, &got[0].signature, &got[0].body),
        "{got:?}"
    );
    assert!(!signature_is_valid(
        "whsec_wrong",
        &got[0].signature,
        &got[0].body
    ));
    assert_eq!(got[0].event, "key_revoked");
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        (
            body["kind"].as_str(),
            body["data"]["key"].as_str(),
            body["data"]["reason"].as_str()
        ),
        (
            Some("key_revoked"),
            Some(key_id.as_str()),
            Some("leaked in a log")
        ),
        "{body}"
    );
    assert!(!String::from_utf8_lossy(&got[0].body).contains(OPENAI_KEY));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let first = loop {
        let l = log(&app, &hook_id).await;
        if l[0]["attempts"] == 1 {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "{l}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (
            first[0]["status"].as_str(),
            first[0]["last_status"].as_u64()
        ),
        (Some("pending"), Some(500)),
        "{first}"
    );
    let next: Timestamp = first[0]["next_attempt_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        next.duration_since(clock.now()),
        SignedDuration::from_secs(10)
    );

    // Not before its time; then 503 and a 30 s wait; then delivered.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "no retry before the backoff has passed"
    );
    clock.advance(SignedDuration::from_secs(10));
    receiver.wait_for(2).await;
    // The next wait counts from when the second attempt is recorded: move the clock only
    // after that, or the retry lands 30 s after the moved time.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let l = log(&app, &hook_id).await;
        if l[0]["attempts"] == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{l}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    clock.advance(SignedDuration::from_secs(30));
    let got = receiver.wait_for(3).await;
    assert!(
        got.iter()
            .all(|r| r.delivery == got[0].delivery && r.body == got[0].body),
        "one delivery, retried"
    );
    assert!(
        got.iter()
            .all(|r| signature_is_valid(&secret, &r.signature, &r.body))
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let done = loop {
        let l = log(&app, &hook_id).await;
        if l[0]["status"] == "delivered" {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "{l}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (
            done[0]["attempts"].as_u64(),
            done[0]["last_status"].as_u64()
        ),
        (Some(3), Some(200)),
        "{done}"
    );

    // Reminders: a key expiring in three days is announced once, however often it is seen.
    let expires = clock.now() + SignedDuration::from_hours(72);
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/keys",
            Some(
                json!({"service": "openai", "environment": "staging", "alias": "soon",
            "secret": OPENAI_KEY, "expires_at": expires.to_string()}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app.app.scan_reminders().await.unwrap(), 1);
    assert_eq!(app.app.scan_reminders().await.unwrap(), 0, "queued once");
    let got = receiver.wait_for(4).await;
    assert_eq!(got[3].event, "key_expiring");
    assert!(signature_is_valid(&secret, &got[3].signature, &got[3].body));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Deleting the webhook ends its deliveries and its log.
    let (status, _) = app
        .call(Method::DELETE, &format!("/api/v1/webhooks/{hook_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(
        &app.call(
            Method::GET,
            &format!("/api/v1/webhooks/{hook_id}/deliveries"),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "webhook_not_found",
    );
}

#[tokio::test]
async fn a_receiver_that_never_answers_well_ends_failed_after_every_retry() {
    let clock = Arc::new(ManualClock::new(
        Timestamp::from_second(1_796_000_000).unwrap(),
    ));
    let Some(app) =
        TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone()).await
    else {
        return;
    };
    let (receiver, url) = Receiver::start(vec![StatusCode::BAD_GATEWAY; 10]).await;
    let (_, hook) = create(&app, json!({"url": url, "allow_private_network": true})).await;
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    app.call(
        Method::POST,
        &format!("/api/v1/keys/{}/revoke", key["id"].as_str().unwrap()),
        Some(json!({"reason": "test"})),
    )
    .await;
    receiver.wait_for(1).await;
    for (n, delay) in keyward_core::notification::RETRY_DELAYS.iter().enumerate() {
        // Wait until the attempt is recorded before moving the clock on.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, l) = app
                .call(
                    Method::GET,
                    &format!("/api/v1/webhooks/{hook_id}/deliveries"),
                    None,
                )
                .await;
            if l[0]["attempts"] == n as u64 + 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{l}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        clock.advance(*delay);
        receiver.wait_for(n + 2).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let failed = loop {
        let (_, l) = app
            .call(
                Method::GET,
                &format!("/api/v1/webhooks/{hook_id}/deliveries"),
                None,
            )
            .await;
        if l[0]["status"] == "failed" {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "{l}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (
            failed[0]["attempts"].as_u64(),
            failed[0]["last_status"].as_u64()
        ),
        (Some(6), Some(502)),
        "{failed}"
    );
    clock.advance(SignedDuration::from_hours(5));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        receiver.received().len(),
        6,
        "a failed delivery is not tried again"
    );
}

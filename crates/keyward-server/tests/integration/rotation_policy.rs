//! Rotation policies: a default and per-category rules, a key's own rule over both; keys
//! turn due inside the reminder window and overdue past the maximum age (on an injected
//! clock), a new current value starts the clock again, and the dashboard says so.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use keyward_core::ManualClock;
use keyward_core::access::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, OPENAI_KEY, TestApp, assert_error};

#[tokio::test]
async fn keys_turn_due_then_overdue_and_a_rotation_resets_the_clock() {
    let clock = Arc::new(ManualClock::new(
        Timestamp::from_second(1_796_000_000).unwrap(),
    ));
    let Some(app) =
        TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone()).await
    else {
        return;
    };
    let llm = app
        .create_key("openai", "production", "llm", OPENAI_KEY)
        .await;
    let llm = llm["id"].as_str().unwrap().to_owned();
    let market = app
        .create_key("alpha-vantage", "production", "quotes", "ABCDEFGH12345678")
        .await;
    let market = market["id"].as_str().unwrap().to_owned();
    let state = |id: String| {
        let app = &app;
        async move {
            let (_, key) = app
                .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
                .await;
            key["rotation"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    assert_eq!(state(llm.clone()).await, "no_policy");

    // Bad policies change nothing.
    let put = |body| {
        let app = &app;
        async move {
            app.call(Method::PUT, "/api/v1/policies/rotation", Some(body))
                .await
        }
    };
    assert_error(
        &put(json!({"categories": {"nope": {"max_age_days": 30}}})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_category",
    );
    assert_error(
        &put(json!({"default": {"max_age_days": 10, "remind_days": 10}})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_rotation_rule",
    );
    let viewer = app.token_with_role(Role::Viewer).await;
    let refused = app
        .call_as(
            &viewer,
            Method::PUT,
            "/api/v1/policies/rotation",
            Some(json!({})),
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");

    let (status, policy) = put(json!({
        "default": {"max_age_days": 365, "remind_days": 30},
        "categories": {"llm-providers": {"max_age_days": 90, "remind_days": 14}}
    }))
    .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    assert_eq!(state(llm.clone()).await, "ok");

    clock.advance(SignedDuration::from_hours(24 * 80));
    assert_eq!(
        state(llm.clone()).await,
        "due",
        "inside the 14-day reminder"
    );
    assert_eq!(state(market.clone()).await, "ok", "the default is a year");
    clock.advance(SignedDuration::from_hours(24 * 11));
    assert_eq!(state(llm.clone()).await, "overdue");
    let (_, listed) = app.call(Method::GET, "/api/v1/keys", None).await;
    assert!(
        listed.to_string().contains("\"overdue\""),
        "listings carry it too"
    );

    // The key's own rule wins; clearing it falls back to the category's.
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/keys/{llm}"),
            Some(json!({"rotation": {"max_age_days": 365, "remind_days": 7}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state(llm.clone()).await, "ok");
    app.call(
        Method::PATCH,
        &format!("/api/v1/keys/{llm}"),
        Some(json!({"rotation": null})),
    )
    .await;
    assert_eq!(state(llm.clone()).await, "overdue");

    // A new current value starts the clock again; usage and budget stay with the key.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{llm}/versions"),
            Some(json!({"secret": OPENAI_KEY.replace("WXYZ", "NEWW")})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(state(llm.clone()).await, "ok");
    let (_, key) = app
        .call(Method::GET, &format!("/api/v1/keys/{llm}"), None)
        .await;
    assert_eq!(
        key["rotation"]["rotated_at"]
            .as_str()
            .unwrap()
            .parse::<Timestamp>()
            .unwrap(),
        keyward_core::Clock::now(&*clock)
    );
}

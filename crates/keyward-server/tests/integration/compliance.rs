//! Key strength and compliance through the API and the pages: format, entropy, age,
//! exposure since the last rotation, the same value in another environment (found by
//! fingerprint), a documented owner — and never the value itself in the answer.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, OPENAI_KEY, TestApp, assert_error};

const NEW_OPENAI_KEY: &str =
    "sk-proj-Zyxwvutsrqponmlkjihgfedcba9876543210ZYXWVUTSRQPONMLKJIHGFEDCBA_-9876543210abcd";

async fn create(app: &TestApp, body: Value) -> String {
    let (status, key) = app.call(Method::POST, "/api/v1/keys", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    key["id"].as_str().unwrap().to_owned()
}

fn failing(key: &Value) -> Vec<(String, String)> {
    key["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] != "pass")
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(id: &str, status: &str) -> (String, String) {
    (id.to_owned(), status.to_owned())
}

#[tokio::test]
async fn every_check_is_reported_without_the_value_and_rotation_clears_exposure_and_copies() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let (status, _) = app
        .call(
            Method::PUT,
            "/api/v1/policies/rotation",
            Some(json!({"default": {"max_age_days": 90, "remind_days": 14}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let prod = create(
        &app,
        json!({"service": "openai", "environment": "production", "alias": "prod",
               "secret": OPENAI_KEY, "owner": "data-team"}),
    )
    .await;
    let copy = create(
        &app,
        json!({"service": "openai", "environment": "staging", "alias": "stage-copy",
               "secret": OPENAI_KEY, "owner": "data-team"}),
    )
    .await;
    create(
        &app,
        json!({"service": "alpha-vantage", "environment": "production", "alias": "demo",
               "secret": "demo"}),
    )
    .await;
    create(
        &app,
        json!({"service": "openai", "environment": "production", "alias": "odd",
               "secret": "not-an-openai-key-at-all-Q7x9", "force": true, "owner": "ops"}),
    )
    .await;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{prod}/reveal"),
            Some(json!({"reason": "debugging a 401 from the provider"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, report) = app.call(Method::GET, "/api/v1/compliance", None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let text = report.to_string();
    assert!(
        !text.contains(OPENAI_KEY) && !text.contains("not-an-openai-key-at-all-Q7x9"),
        "no value in the answer"
    );
    let by_alias = |alias: &str| {
        report["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["alias"] == alias)
            .unwrap_or_else(|| panic!("{alias} missing: {report}"))
            .clone()
    };
    let p = by_alias("prod");
    assert_eq!(p["status"], "non_compliant", "{p}");
    assert_eq!(
        failing(&p),
        vec![pair("exposure", "warn"), pair("unique", "fail")],
        "{p}"
    );
    assert_eq!(p["exposures"], 1);
    assert_eq!(p["same_value"][0]["alias"], "stage-copy");
    assert_eq!(p["same_value"][0]["environment"], "staging");
    assert!(p["fingerprint"].as_str().unwrap().starts_with("hmac:"));
    assert_eq!(
        p["fingerprint"],
        by_alias("stage-copy")["fingerprint"],
        "equal values, equal fingerprints"
    );
    assert_eq!(
        failing(&by_alias("demo")),
        vec![pair("strength", "fail"), pair("owner", "fail")]
    );
    assert_eq!(failing(&by_alias("odd")), vec![pair("format", "fail")]);
    assert_eq!(by_alias("odd")["format_ok"], false);
    assert_eq!(
        report["summary"],
        json!({"compliant": 0, "attention": 0, "non_compliant": 4})
    );

    // A new value: no longer a copy, and the reveal exposed the old one.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{prod}/versions"),
            Some(json!({"secret": NEW_OPENAI_KEY})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, p) = app
        .call(
            Method::GET,
            &format!("/api/v1/keys/{prod}/compliance"),
            None,
        )
        .await;
    assert_eq!(p["status"], "compliant", "{p}");
    assert_eq!(p["exposures"], 1, "the count stays");
    let (_, c) = app
        .call(
            Method::GET,
            &format!("/api/v1/keys/{copy}/compliance"),
            None,
        )
        .await;
    assert_eq!(c["status"], "compliant", "{c}");

    let missing = app
        .call(
            Method::GET,
            "/api/v1/keys/key_01JD0000000000000000000000/compliance",
            None,
        )
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "key_not_found");

    // The pages: the dashboard's security panel and the key's checks.
    let (_, ada, _) =
        crate::browser::enrolled_user(&app, "ada", keyward_core::access::Role::Admin).await;
    let (_, _, dashboard) = crate::ui::get_page(&app, &ada.cookie, "/").await;
    assert!(
        dashboard.contains("data-non-compliant=\"2\""),
        "demo and odd remain: {dashboard}"
    );
    let (_, _, page) = crate::ui::get_page(&app, &ada.cookie, &format!("/keys/{prod}")).await;
    assert!(
        page.contains("data-compliance=\"compliant\"")
            && page.contains("data-check=\"exposure\" data-check-status=\"pass\""),
        "{page}"
    );
}

//! `/api/v1/app-tokens`: issue once, scope checks, revoke.

use keyward_core::access::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::{OPENAI_KEY, TestApp, assert_error};

async fn tokens_are_shown_once_scoped_and_revocable(app: &TestApp) {
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let key_id = key["id"].as_str().unwrap();
    let (status, created) = app
        .call(
            Method::POST,
            "/api/v1/app-tokens",
            Some(json!({
                "name": "summariser", "services": ["openai", "alpha-vantage"], "environments": ["production", "staging"],
                "key_ids": [key_id], "allowed_networks": ["10.0.0.0/8", "127.0.0.1"],
                "rate_limit": {"requests": 60, "per_seconds": 60}, "budget": {"limit_usd": 25.5, "period": "month"},
                "expires_at": "2099-01-01T00:00:00Z"
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap();
    let prefix = created["token_prefix"]
        .as_str()
        .unwrap()
        .trim_end_matches('…');
    assert!(
        token.starts_with("kwp_") && token.starts_with(prefix) && token.len() > prefix.len() + 40,
        "{created}"
    );
    assert_eq!(created["status"], "active");
    assert_eq!(created["environments"], json!(["production", "staging"]));
    assert_eq!(
        created["allowed_networks"],
        json!(["10.0.0.0/8", "127.0.0.1/32"])
    );
    assert_eq!(
        created["budget"],
        json!({"limit_usd": 25.5, "period": "month"})
    );
    assert!(created.get("secret_hash").is_none());
    let id = created["id"].as_str().unwrap();

    let (_, fetched) = app
        .call(Method::GET, &format!("/api/v1/app-tokens/{id}"), None)
        .await;
    assert!(
        fetched.get("token").is_none(),
        "the token is never shown again: {fetched}"
    );
    assert_eq!(fetched["token_prefix"], created["token_prefix"]);
    let (_, listed) = app.call(Method::GET, "/api/v1/app-tokens", None).await;
    assert_eq!(listed[0]["id"], id);
    assert!(
        !listed.to_string().contains(&token[prefix.len()..]),
        "no listing carries the secret"
    );

    let (status, revoked) = app
        .call(
            Method::POST,
            &format!("/api/v1/app-tokens/{id}/revoke"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revoked["status"], "revoked");
    let (status, again) = app
        .call(
            Method::POST,
            &format!("/api/v1/app-tokens/{id}/revoke"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "revoking twice is harmless");
    assert_eq!(
        again["revoked_at"], revoked["revoked_at"],
        "the first revocation time stays"
    );
}

async fn bad_scopes_are_refused_and_store_nothing(app: &TestApp) {
    let key = app
        .create_key("finnhub", "staging", "fh", "abcdefghij0123456789")
        .await;
    let base = json!({"name": "app", "services": ["openai"], "environments": ["production"]});
    let with = |field: &str, value: serde_json::Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    let create = |body: serde_json::Value| async move {
        app.call(Method::POST, "/api/v1/app-tokens", Some(body))
            .await
    };
    assert_error(
        &create(with("services", json!(["nope"]))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_service",
    );
    assert_error(
        &create(with("services", json!([]))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "scope_empty",
    );
    assert_error(
        &create(with("environments", json!(["moon"]))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_environment",
    );
    assert_error(
        &create(with("key_ids", json!(["key_01JD0000000000000000000000"]))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_key",
    );
    assert_error(
        &create(with("key_ids", json!([key["id"]]))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "key_out_of_scope",
    );
    assert_error(
        &create(with("allowed_networks", json!(["10.0.0.0/40"]))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_network",
    );
    assert_error(
        &create(with("rate_limit", json!({"requests": 0, "per_seconds": 1}))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_rate_limit",
    );
    assert_error(
        &create(with("budget", json!({"limit_usd": -1, "period": "day"}))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_budget",
    );
    assert_error(
        &create(with("budget", json!({"limit_usd": 1, "period": "year"}))).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    assert_error(
        &create(with("expires_at", json!("2001-01-01T00:00:00Z"))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "expires_at_in_past",
    );
    assert_error(
        &create(with("scopes", json!([]))).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    let (_, listed) = app.call(Method::GET, "/api/v1/app-tokens", None).await;
    assert_eq!(listed, json!([]), "nothing was stored");
    assert_error(
        &app.call(
            Method::GET,
            "/api/v1/app-tokens/atk_01JD0000000000000000000000",
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "app_token_not_found",
    );
    assert_error(
        &app.call(Method::POST, "/api/v1/app-tokens/garbage/revoke", None)
            .await,
        StatusCode::NOT_FOUND,
        "app_token_not_found",
    );
}

both_backends!(
    tokens_are_shown_once_scoped_and_revocable,
    bad_scopes_are_refused_and_store_nothing
);

#[tokio::test]
async fn viewers_see_app_tokens_but_cannot_issue_them() {
    let app = TestApp::spawn(crate::helpers::Backend::Sqlite)
        .await
        .unwrap();
    let viewer = app.token_with_role(Role::Viewer).await;
    let manager = app.token_with_role(Role::KeyManager).await;
    let body = json!({"name": "app", "services": ["openai"], "environments": ["production"]});
    assert_eq!(
        app.call_as(&viewer, Method::GET, "/api/v1/app-tokens", None)
            .await
            .0,
        StatusCode::OK
    );
    assert_error(
        &app.call_as(
            &viewer,
            Method::POST,
            "/api/v1/app-tokens",
            Some(body.clone()),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(
        app.call_as(&manager, Method::POST, "/api/v1/app-tokens", Some(body))
            .await
            .0,
        StatusCode::CREATED
    );
}

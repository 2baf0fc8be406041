//! Management tokens and roles at the API boundary.

use keyward_core::access::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, OPENAI_KEY, TestApp, assert_error};

#[tokio::test]
async fn every_api_route_requires_a_valid_token() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    for (method, path) in [
        (Method::GET, "/api/v1/keys"),
        (Method::POST, "/api/v1/keys"),
        (Method::GET, "/api/v1/services"),
        (Method::GET, "/api/v1/environments"),
        (Method::GET, "/api/v1/deleted-keys"),
    ] {
        for token in [
            "",
            "kwm_nope",
            "kwm_abcdefghijkl_0000000000000000000000000000000000000000000",
        ] {
            let result = app.call_as(token, method.clone(), path, None).await;
            assert_eq!(
                result.0,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
        }
    }
    let response = reqwest::get(format!("{}/api/v1/keys", app.base))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"keyward\""
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    // Health and the OpenAPI document are public.
    assert_eq!(
        reqwest::get(format!("{}/healthz", app.base))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", app.base))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        reqwest::get(format!("{}/api/v1/openapi.json", app.base))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn roles_limit_what_a_token_may_do() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap();
    let viewer = app.token_with_role(Role::Viewer).await;
    let manager = app.token_with_role(Role::KeyManager).await;

    assert_eq!(
        app.call_as(&viewer, Method::GET, "/api/v1/keys", None)
            .await
            .0,
        StatusCode::OK
    );
    let body = json!({"service": "openai", "environment": "production", "alias": "v", "secret": OPENAI_KEY});
    assert_error(
        &app.call_as(&viewer, Method::POST, "/api/v1/keys", Some(body.clone()))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &app.call_as(&viewer, Method::DELETE, &format!("/api/v1/keys/{id}"), None)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    assert_eq!(
        app.call_as(&manager, Method::POST, "/api/v1/keys", Some(body))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        app.call_as(
            &manager,
            Method::DELETE,
            &format!("/api/v1/keys/{id}"),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    let purge = app
        .call_as(
            &manager,
            Method::POST,
            &format!("/api/v1/keys/{id}/purge"),
            Some(json!({"confirm": "main"})),
        )
        .await;
    assert_error(&purge, StatusCode::FORBIDDEN, "forbidden");
    assert_error(
        &app.call_as(
            &manager,
            Method::POST,
            "/api/v1/environments",
            Some(json!({"id": "qa", "name": "QA"})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let past = app
        .app
        .now()
        .checked_sub(jiff::SignedDuration::from_secs(1))
        .unwrap();
    let (_, token) = app
        .app
        .issue_token(
            &keyward_app::Actor::system("test"),
            "old",
            Role::Owner,
            Some(past),
        )
        .await
        .unwrap();
    let token = secrecy::ExposeSecret::expose_secret(&token).to_owned();
    assert_error(
        &app.call_as(&token, Method::GET, "/api/v1/keys", None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
}

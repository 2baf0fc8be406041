//! Scoped grants, custom roles, network allowlists and reveal, through the API.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use keyward_core::ManualClock;
use keyward_core::access::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::browser::{PASSWORD, add_user, browse, code_now, enrolled_user, renew, sign_in};
use crate::helpers::{Backend, OPENAI_KEY, TestApp, assert_error, audit_actions};

const ALPHA_KEY: &str = "ABCDEFGHIJ123456";

async fn token(app: &TestApp, body: Value) -> String {
    let (status, created) = app.call(Method::POST, "/api/v1/tokens", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["token"].as_str().unwrap().to_owned()
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A key manager for market data in production only: manages exactly those keys, sees the
/// rest only through their base role, and cannot hand out more than they hold.
#[tokio::test]
async fn a_grant_scoped_to_a_category_and_environment_reaches_only_those_keys() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let market_prod = app
        .create_key("alpha-vantage", "production", "av-prod", ALPHA_KEY)
        .await;
    let market_staging = app
        .create_key("alpha-vantage", "staging", "av-staging", ALPHA_KEY)
        .await;
    let llm = app
        .create_key("openai", "production", "llm", OPENAI_KEY)
        .await;
    let id = |k: &Value| k["id"].as_str().unwrap().to_owned();

    // A token that is key_manager in financial-data/production and nothing else.
    let scoped = token(
        &app,
        json!({"name": "fin", "role": "key_manager",
               "scope": {"categories": ["financial-data"], "environments": ["production"]}}),
    )
    .await;
    let (_, page) = app
        .call_as(&scoped, Method::GET, "/api/v1/keys", None)
        .await;
    assert_eq!(
        ids(&page),
        [id(&market_prod)],
        "the listing shows only its keys"
    );
    let (status, _) = app
        .call_as(
            &scoped,
            Method::POST,
            &format!("/api/v1/keys/{}/disable", id(&market_prod)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for other in [&market_staging, &llm] {
        let hidden = app
            .call_as(
                &scoped,
                Method::GET,
                &format!("/api/v1/keys/{}", id(other)),
                None,
            )
            .await;
        assert_error(&hidden, StatusCode::NOT_FOUND, "key_not_found");
    }
    let created = app
        .call_as(
            &scoped,
            Method::POST,
            "/api/v1/keys",
            Some(json!({"service": "alpha-vantage", "environment": "staging",
                        "alias": "nope", "secret": ALPHA_KEY})),
        )
        .await;
    assert_error(&created, StatusCode::FORBIDDEN, "out_of_scope");
    let usage = app
        .call_as(&scoped, Method::GET, "/api/v1/usage", None)
        .await;
    assert_error(&usage, StatusCode::FORBIDDEN, "out_of_scope");
    let global = app
        .call_as(&scoped, Method::GET, "/api/v1/audit", None)
        .await;
    assert_error(&global, StatusCode::FORBIDDEN, "forbidden");
    // App tokens only within reach: one that could also call OpenAI is refused.
    let wide = app
        .call_as(
            &scoped,
            Method::POST,
            "/api/v1/app-tokens",
            Some(json!({"name": "x", "services": ["alpha-vantage", "openai"],
                        "environments": ["production"]})),
        )
        .await;
    assert_error(&wide, StatusCode::FORBIDDEN, "out_of_scope");

    // A user: viewer everywhere plus the same grant; sees everything, changes only theirs.
    let kim = add_user(&app, "kim", Role::Viewer).await;
    let (status, grant) = app
        .call(
            Method::POST,
            &format!("/api/v1/users/{kim}/grants"),
            Some(json!({"role": "key_manager",
                        "scope": {"categories": ["financial-data"], "environments": ["production"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{grant}");
    let b = sign_in(&app, "kim", PASSWORD).await.unwrap();
    let (_, page) = browse(&app, &b, Method::GET, "/api/v1/keys", None, None, None).await;
    assert_eq!(ids(&page).len(), 3, "viewer everywhere");
    let enable = |key: &Value| format!("/api/v1/keys/{}/enable", id(key));
    let mine = browse(
        &app,
        &b,
        Method::POST,
        &enable(&market_prod),
        None,
        Some(&b.csrf),
        None,
    )
    .await;
    assert_eq!(mine.0, StatusCode::OK, "{}", mine.1);
    let theirs = browse(
        &app,
        &b,
        Method::POST,
        &enable(&llm),
        None,
        Some(&b.csrf),
        None,
    )
    .await;
    assert_error(&theirs, StatusCode::FORBIDDEN, "out_of_scope");

    // No escalation: an admin scoped to market data cannot mint a global token or grant.
    let fin_admin = token(
        &app,
        json!({"name": "fin-admin", "role": "admin", "scope": {"categories": ["financial-data"]}}),
    )
    .await;
    let refused = app
        .call_as(
            &fin_admin,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "x", "role": "viewer"})),
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!(
                "/api/v1/users/{kim}/grants/{}",
                grant["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let gone = browse(
        &app,
        &b,
        Method::POST,
        &enable(&market_prod),
        None,
        Some(&b.csrf),
        None,
    )
    .await;
    assert_error(&gone, StatusCode::FORBIDDEN, "forbidden");
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=grant", None)
        .await;
    assert_eq!(audit_actions(&trail), ["grant.create", "grant.delete"]);
}

/// Custom roles are made of permissions, given by grants, refused while in use, and
/// never wider than what their creator holds.
#[tokio::test]
async fn custom_roles_are_sets_of_permissions() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let key = app
        .create_key("openai", "production", "llm", OPENAI_KEY)
        .await;
    let (status, role) = app
        .call(
            Method::POST,
            "/api/v1/roles",
            Some(
                json!({"id": "llm-operator", "description": "flips LLM keys",
                        "permissions": ["keys_read", "keys_write"]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{role}");
    let taken = app
        .call(
            Method::POST,
            "/api/v1/roles",
            Some(json!({"id": "admin", "permissions": []})),
        )
        .await;
    assert_error(&taken, StatusCode::CONFLICT, "role_exists");
    let bad = app
        .call(
            Method::POST,
            "/api/v1/roles",
            Some(json!({"id": "x", "permissions": ["fly"]})),
        )
        .await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST, "{}", bad.1);

    let vic = add_user(&app, "vic", Role::Viewer).await;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/v1/users/{vic}/grants"),
            Some(json!({"role": "llm-operator", "scope": {"categories": ["llm-providers"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let b = sign_in(&app, "vic", PASSWORD).await.unwrap();
    let path = format!("/api/v1/keys/{}/disable", key["id"].as_str().unwrap());
    let (status, _) = browse(&app, &b, Method::POST, &path, None, Some(&b.csrf), None).await;
    assert_eq!(status, StatusCode::OK);
    let in_use = app
        .call(Method::DELETE, "/api/v1/roles/llm-operator", None)
        .await;
    assert_error(&in_use, StatusCode::CONFLICT, "role_in_use");
    let (_, roles) = app.call(Method::GET, "/api/v1/roles", None).await;
    let names: Vec<&str> = roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "owner",
            "admin",
            "key_manager",
            "auditor",
            "viewer",
            "llm-operator"
        ]
    );
    // A key manager (with MFA) cannot create roles at all; an admin cannot create a role
    // wider than themselves (they hold everything, so try as a scoped admin token).
    let fin_admin = token(
        &app,
        json!({"name": "fa", "role": "admin", "scope": {"categories": ["financial-data"]}}),
    )
    .await;
    let wider = app
        .call_as(
            &fin_admin,
            Method::POST,
            "/api/v1/roles",
            Some(json!({"id": "sneaky", "permissions": ["keys_read"]})),
        )
        .await;
    assert_error(&wider, StatusCode::FORBIDDEN, "forbidden");
}

/// Allowlists: a user, a role or a token limited to networks is refused from elsewhere
/// (403 `network_not_allowed`, audited); the client's address comes from the peer, or from
/// `X-Forwarded-For` only when the peer is a trusted proxy.
#[tokio::test]
async fn network_allowlists_for_users_roles_and_tokens() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        keyward_server::config::RawSettings {
            trusted_proxies: Some("127.0.0.1/32".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let office = |ip: &str| ("x-forwarded-for", ip.to_owned());
    let call = |token: String, from: (&'static str, String)| {
        let app = &app;
        async move {
            let response = app
                .client
                .get(format!("{}/api/v1/keys", app.base))
                .bearer_auth(token)
                .header(from.0, from.1)
                .send()
                .await
                .unwrap();
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let limited = token(
        &app,
        json!({"name": "ci", "role": "viewer", "allowed_networks": ["203.0.113.0/24"]}),
    )
    .await;
    assert_eq!(
        call(limited.clone(), office("203.0.113.9")).await.0,
        StatusCode::OK
    );
    let outside = call(limited.clone(), office("198.51.100.7")).await;
    assert_error(&outside, StatusCode::FORBIDDEN, "network_not_allowed");

    // A role's allowlist applies to every holder of the role.
    let auditor = app.token_with_role(Role::Auditor).await;
    let (status, _) = app
        .call(
            Method::PUT,
            "/api/v1/roles/auditor/networks",
            Some(json!({"allowed_networks": ["10.0.0.0/8"]})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        call(auditor.clone(), office("10.1.2.3")).await.0,
        StatusCode::OK
    );
    let refused = call(auditor, office("203.0.113.9")).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "network_not_allowed");

    // A user's allowlist stops sign-in from elsewhere, before any session exists.
    let kim = add_user(&app, "kim", Role::Viewer).await;
    let (status, _) = app
        .call(
            Method::PUT,
            &format!("/api/v1/users/{kim}/networks"),
            Some(json!({"allowed_networks": ["192.0.2.0/24"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let login = |ip: &str| {
        app.client
            .post(format!("{}/api/v1/auth/login", app.base))
            .header("x-forwarded-for", ip)
            .json(&json!({"username": "kim", "password": PASSWORD}))
            .send()
    };
    let away = login("198.51.100.1").await.unwrap();
    assert_eq!(away.status(), StatusCode::FORBIDDEN);
    assert!(away.headers().get("set-cookie").is_none());
    assert_eq!(login("192.0.2.44").await.unwrap().status(), StatusCode::OK);
    let bad = app
        .call(
            Method::PUT,
            &format!("/api/v1/users/{kim}/networks"),
            Some(json!({"allowed_networks": ["not-a-network"]})),
        )
        .await;
    assert_eq!(bad.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.1);
    assert_eq!(bad.1["error"]["code"], "invalid_network", "{}", bad.1);
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=access.denied", None)
        .await;
    assert!(trail.to_string().contains("network_not_allowed"));
}

/// Reveal: an explicit POST with a reason, a recent MFA check for people, only for roles
/// that may (never auditors or viewers), audited with the value's fingerprint and never
/// cached; reading metadata never shows the value.
#[tokio::test]
async fn reveal_is_explicit_stepped_up_and_audited() {
    let start = Timestamp::from_second(1_796_000_010).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let app = TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone())
        .await
        .unwrap();
    let key = app
        .create_key("openai", "production", "llm", OPENAI_KEY)
        .await;
    let path = format!("/api/v1/keys/{}/reveal", key["id"].as_str().unwrap());
    let (_, read) = app
        .call(
            Method::GET,
            &format!("/api/v1/keys/{}", key["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(!read.to_string().contains(OPENAI_KEY));

    let (_, b, phone) = enrolled_user(&app, "kim", Role::KeyManager).await;
    let no_reason = browse(
        &app,
        &b,
        Method::POST,
        &path,
        Some(json!({"reason": ""})),
        Some(&b.csrf),
        None,
    )
    .await;
    assert_error(
        &no_reason,
        StatusCode::UNPROCESSABLE_ENTITY,
        "reason_required",
    );
    let response = app
        .client
        .post(format!("{}{path}", app.base))
        .header("cookie", &b.cookie)
        .header("x-csrf-token", &b.csrf)
        .json(&json!({"reason": "debugging a 401 from OpenAI"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["value"], OPENAI_KEY);
    assert_eq!(body["version"], 1);

    clock.advance(SignedDuration::from_mins(5));
    let stale = browse(
        &app,
        &b,
        Method::POST,
        &path,
        Some(json!({"reason": "again please"})),
        Some(&b.csrf),
        None,
    )
    .await;
    assert_error(&stale, StatusCode::FORBIDDEN, "step_up_required");
    let (b, _) = renew(
        &app,
        &b,
        "/api/v1/auth/mfa/verify",
        json!({"code": code_now(&app, &phone)}),
    )
    .await
    .unwrap();
    let again = browse(
        &app,
        &b,
        Method::POST,
        &path,
        Some(json!({"reason": "again please"})),
        Some(&b.csrf),
        None,
    )
    .await;
    assert_eq!(again.0, StatusCode::OK);

    for role in [Role::Auditor, Role::Viewer] {
        let token = app.token_with_role(role).await;
        let refused = app
            .call_as(
                &token,
                Method::POST,
                &path,
                Some(json!({"reason": "curious"})),
            )
            .await;
        assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    }
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=key.reveal", None)
        .await;
    let events = trail["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0]["details"]["reason"],
        "debugging a 401 from OpenAI"
    );
    assert!(
        events[0]["details"]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("hmac:")
    );
    assert!(
        !trail.to_string().contains(OPENAI_KEY),
        "never the value itself"
    );
}

//! The key lifecycle over the API, and every documented bad input.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::{OPENAI_KEY, TestApp, assert_error};

async fn full_lifecycle(app: &TestApp) {
    let (status, key) = app
        .call(
            Method::POST,
            "/api/v1/keys",
            Some(json!({
                "service": "openai", "environment": "production", "alias": "Summariser",
                "secret": format!("  {OPENAI_KEY}\n"), "description": "prod LLM", "owner": "data-team",
                "tags": ["LLM", "prod"], "criticality": "critical", "expires_at": "2099-01-01T00:00:00Z"
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    assert_eq!(key["hint"], "sk-proj-…WXYZ");
    assert_eq!(key["status"], "active");
    assert_eq!(key["tags"], json!(["llm", "prod"]));
    assert_eq!(key["criticality"], "critical");
    assert!(key.get("secret").is_none());
    let id = key["id"].as_str().unwrap().to_owned();

    let (status, fetched) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, key, "GET returns exactly what create returned");

    let (status, patched) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            Some(json!({"description": null, "tags": ["renamed"], "alias": "Summariser v2"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["description"], serde_json::Value::Null);
    assert_eq!(
        patched["owner"], "data-team",
        "absent fields are left alone"
    );
    assert_eq!(patched["alias"], "Summariser v2");

    let (_, disabled) = app
        .call(Method::POST, &format!("/api/v1/keys/{id}/disable"), None)
        .await;
    assert_eq!(disabled["status"], "disabled");
    let (_, listed) = app
        .call(Method::GET, "/api/v1/keys?status=disabled", None)
        .await;
    assert_eq!(listed["items"][0]["id"], id.as_str());
    let (_, enabled) = app
        .call(Method::POST, &format!("/api/v1/keys/{id}/enable"), None)
        .await;
    assert_eq!(enabled["status"], "active");

    let new_value = OPENAI_KEY.replace("WXYZ", "ABCD");
    let (status, v2) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{id}/versions"),
            Some(json!({"secret": new_value})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v2}");
    assert_eq!(
        (
            v2["version"].as_u64(),
            v2["state"].as_str(),
            v2["hint"].as_str()
        ),
        (Some(2), Some("current"), Some("sk-proj-…ABCD"))
    );
    // A value to try before it takes over goes through a guided rotation.
    let (status, pending) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{id}/versions"),
            Some(json!({"secret": OPENAI_KEY, "state": "pending"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{pending}");
    assert_eq!(pending["error"]["code"], "invalid_version_state");
    let (status, rotation) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{id}/rotations"),
            Some(json!({"secret": OPENAI_KEY})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rotation}");
    assert_eq!(rotation["step"], "pending");
    let (_, versions) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}/versions"), None)
        .await;
    let states: Vec<_> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["pending", "current", "previous"]);
    assert!(
        versions
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["kek_id"].as_str().unwrap().starts_with("kek_"))
    );
    let (_, key_now) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(
        (
            key_now["current_version"].as_u64(),
            key_now["hint"].as_str()
        ),
        (Some(2), Some("sk-proj-…ABCD"))
    );

    let (status, deleted) = app
        .call(Method::DELETE, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["status"], "deleted");
    assert!(deleted["purge_after"].is_string());
    let (_, live) = app.call(Method::GET, "/api/v1/keys", None).await;
    assert!(
        live["items"].as_array().unwrap().is_empty(),
        "deleted keys leave the default listing"
    );
    let (_, gone) = app.call(Method::GET, "/api/v1/deleted-keys", None).await;
    assert_eq!(gone["items"][0]["id"], id.as_str());

    let (status, restored) = app
        .call(Method::POST, &format!("/api/v1/keys/{id}/restore"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(restored["status"], "active");

    app.call(Method::DELETE, &format!("/api/v1/keys/{id}"), None)
        .await;
    let refused = app
        .call(Method::POST, &format!("/api/v1/keys/{id}/purge"), None)
        .await;
    assert_error(&refused, StatusCode::CONFLICT, "confirmation_required");
    let wrong = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{id}/purge"),
            Some(json!({"confirm": "nope"})),
        )
        .await;
    assert_error(&wrong, StatusCode::CONFLICT, "confirmation_required");
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{id}/purge"),
            Some(json!({"confirm": "Summariser v2"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error(
        &app.call(Method::GET, &format!("/api/v1/keys/{id}"), None)
            .await,
        StatusCode::NOT_FOUND,
        "key_not_found",
    );
}

async fn listing_filters_and_cursor_pagination(app: &TestApp) {
    for i in 0..7 {
        app.create_key("openai", "production", &format!("llm {i}"), OPENAI_KEY)
            .await;
    }
    app.create_key("alpha-vantage", "production", "av", "ABCDEFGH12345678")
        .await;
    app.create_key("finnhub", "staging", "fh", "abcdefghij0123456789")
        .await;

    let (_, fin) = app
        .call(Method::GET, "/api/v1/keys?category=financial-data", None)
        .await;
    assert_eq!(fin["items"].as_array().unwrap().len(), 2);
    let (_, fin_prod) = app
        .call(
            Method::GET,
            "/api/v1/keys?category=financial-data&environment=production",
            None,
        )
        .await;
    assert_eq!(fin_prod["items"][0]["service"], "alpha-vantage");
    let (_, searched) = app.call(Method::GET, "/api/v1/keys?q=LLM%203", None).await;
    assert_eq!(searched["items"].as_array().unwrap().len(), 1);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/keys?service=openai&limit=3&cursor={c}"),
            None => "/api/v1/keys?service=openai&limit=3".to_owned(),
        };
        let (status, page) = app.call(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first, no duplicates");
}

async fn bad_input_is_refused_and_changes_nothing(app: &TestApp) {
    let existing = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let id = existing["id"].as_str().unwrap().to_owned();
    let before = app.key_count().await;
    let create = |body: serde_json::Value| async move {
        app.call(Method::POST, "/api/v1/keys", Some(body)).await
    };
    let base = json!({"service": "openai", "environment": "production", "alias": "other", "secret": OPENAI_KEY});
    let with = |field: &str, value: serde_json::Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };

    assert_error(
        &app.raw(
            Method::POST,
            "/api/v1/keys",
            "application/json",
            "{\"service\": ",
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    assert_error(
        &app.raw(Method::POST, "/api/v1/keys", "text/plain", "{}")
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    assert_error(
        &create(with("colour", json!("blue"))).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    assert_error(
        &create(json!({"service": "openai"})).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    assert_error(
        &create(with("service", json!("nope"))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_service",
    );
    assert_error(
        &create(with("environment", json!("moon"))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_environment",
    );
    assert_error(
        &create(with("alias", json!(""))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_alias",
    );
    assert_error(
        &create(with("alias", json!("x".repeat(65)))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_alias",
    );
    assert_error(
        &create(with("description", json!("x".repeat(1001)))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "text_too_long",
    );
    assert_error(
        &create(with("tags", json!(["bad tag"]))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_tag",
    );
    assert_error(
        &create(with("criticality", json!("urgent"))).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    assert_error(
        &create(with("expires_at", json!("2001-01-01T00:00:00Z"))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "expires_at_in_past",
    );
    assert_error(
        &create(with("alias", json!("MAIN"))).await,
        StatusCode::CONFLICT,
        "alias_taken",
    );
    assert_error(
        &create(with("secret", json!("not-an-openai-key"))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "secret_format_mismatch",
    );
    assert_error(
        &create(with("secret", json!(existing["hint"]))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "secret_masked",
    );
    assert_error(
        &create(with("secret", json!("sk-proj-****WXYZ"))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "secret_masked",
    );
    assert_error(
        &create(with("secret", json!(""))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "secret_empty",
    );
    assert_eq!(
        app.key_count().await,
        before,
        "no refused request stored anything"
    );

    let (status, _) = create(json!({"service": "openai", "environment": "production", "alias": "forced", "secret": "not-an-openai-key", "force": true})).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "force stores a key that fails the format check"
    );

    let unknown = "key_01JD0000000000000000000000";
    assert_error(
        &app.call(Method::GET, &format!("/api/v1/keys/{unknown}"), None)
            .await,
        StatusCode::NOT_FOUND,
        "key_not_found",
    );
    assert_error(
        &app.call(Method::GET, "/api/v1/keys/garbage", None).await,
        StatusCode::NOT_FOUND,
        "key_not_found",
    );
    assert_error(
        &app.call(
            Method::PATCH,
            &format!("/api/v1/keys/{unknown}"),
            Some(json!({"alias": "x"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "key_not_found",
    );
    assert_error(
        &app.call(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            Some(json!({"secret": "x"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    assert_error(
        &app.call(Method::GET, "/api/v1/keys?limit=0", None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_limit",
    );
    assert_error(
        &app.call(Method::GET, "/api/v1/keys?status=lost", None)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_status",
    );
    assert_error(
        &app.call(Method::GET, "/api/v1/keys?cursor=zzz", None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_cursor",
    );
    assert_error(
        &app.call(Method::GET, "/api/v1/keys?colour=1", None).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    );
    assert_error(
        &app.call(Method::GET, "/api/v1/nowhere", None).await,
        StatusCode::NOT_FOUND,
        "route_not_found",
    );
    assert_error(
        &app.call(Method::PUT, "/api/v1/keys", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    let huge = json!({"service": "openai", "environment": "production", "alias": "big", "secret": OPENAI_KEY, "description": "x".repeat(100_000)});
    assert_eq!(create(huge).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    // A deleted key refuses edits until restored; purge before delete is refused.
    assert_error(
        &app.call(Method::POST, &format!("/api/v1/keys/{id}/purge"), None)
            .await,
        StatusCode::CONFLICT,
        "key_not_deleted",
    );
    assert_error(
        &app.call(Method::POST, &format!("/api/v1/keys/{id}/restore"), None)
            .await,
        StatusCode::CONFLICT,
        "key_not_deleted",
    );
    app.call(Method::DELETE, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_error(
        &app.call(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            Some(json!({"alias": "x"})),
        )
        .await,
        StatusCode::CONFLICT,
        "key_deleted",
    );
    assert_error(
        &app.call(Method::POST, &format!("/api/v1/keys/{id}/disable"), None)
            .await,
        StatusCode::CONFLICT,
        "key_deleted",
    );
    assert_error(
        &app.call(
            Method::POST,
            &format!("/api/v1/keys/{id}/versions"),
            Some(json!({"secret": OPENAI_KEY})),
        )
        .await,
        StatusCode::CONFLICT,
        "key_deleted",
    );
    assert_error(
        &app.call(Method::DELETE, &format!("/api/v1/keys/{id}"), None)
            .await,
        StatusCode::CONFLICT,
        "key_deleted",
    );
    let (_, versions) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}/versions"), None)
        .await;
    assert_eq!(
        versions.as_array().unwrap().len(),
        1,
        "refused version was not stored"
    );

    // Restoring into an alias that was reused meanwhile is a conflict, and the key stays deleted.
    app.create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    assert_error(
        &app.call(Method::POST, &format!("/api/v1/keys/{id}/restore"), None)
            .await,
        StatusCode::CONFLICT,
        "alias_taken",
    );
    let (_, still) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(still["status"], "deleted");
}

/// What the OpenAPI document allows, the API takes: JSON Schema counts `90.0` as an
/// integer, so does Keyward (a fraction stays refused); a body that is JSON but not a
/// service definition is a semantic refusal (422), as schemathesis holds the API to.
async fn numbers_and_definitions_as_the_document_says(app: &TestApp) {
    let key = app
        .create_key("openai", "production", "whole", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap();
    let (status, patched) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            Some(json!({"rotation": {"max_age_days": 90.0}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["rotation"]["rule"]["max_age_days"], 90, "{patched}");
    let (status, refused) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            Some(json!({"rotation": {"max_age_days": 90.5}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_body");
    let (status, refused) = app
        .call(
            Method::POST,
            "/api/v1/services",
            Some(json!({"name": "half"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_service");
    let (status, refused) = app
        .call(Method::GET, "/api/v1/deleted-keys?status=active", None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
}

both_backends!(
    full_lifecycle,
    listing_filters_and_cursor_pagination,
    bad_input_is_refused_and_changes_nothing,
    numbers_and_definitions_as_the_document_says
);

//! Services, categories and environments over the API; the OpenAPI document.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::{TestApp, assert_error};

async fn builtin_services_and_custom_ones(app: &TestApp) {
    let (_, services) = app.call(Method::GET, "/api/v1/services", None).await;
    let services = services.as_array().unwrap();
    assert!(services.len() >= 14);
    let av = services
        .iter()
        .find(|s| s["id"] == "alpha-vantage")
        .unwrap();
    assert_eq!(av["auth"], json!({"in": "query", "name": "apikey"}));
    assert_eq!(av["category"], "financial-data");
    assert!(
        av["plans"][0]["limits"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
    );
    let (_, llms) = app
        .call(Method::GET, "/api/v1/services?category=llm-providers", None)
        .await;
    assert!(
        llms.as_array()
            .unwrap()
            .iter()
            .all(|s| s["category"] == "llm-providers")
    );

    let custom = json!({
        "id": "acme-quotes", "name": "ACME Quotes", "category": "financial-data",
        "base_url": "https://quotes.acme.example", "auth": {"in": "header", "name": "x-acme-key"},
        "key_format": "acme_[a-z0-9]{16}", "quota_calendar": {"reset": "rolling"}, "where_to_get": "ACME console"
    });
    let (status, created) = app
        .call(Method::POST, "/api/v1/services", Some(custom.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["builtin"], false);
    assert_error(
        &app.call(Method::POST, "/api/v1/services", Some(custom.clone()))
            .await,
        StatusCode::CONFLICT,
        "service_exists",
    );
    let mut shadow = custom.clone();
    shadow["id"] = json!("openai");
    assert_error(
        &app.call(Method::POST, "/api/v1/services", Some(shadow))
            .await,
        StatusCode::CONFLICT,
        "service_exists",
    );
    let mut bad_regex = custom.clone();
    bad_regex["id"] = json!("acme-2");
    bad_regex["key_format"] = json!("([unclosed");
    assert_error(
        &app.call(Method::POST, "/api/v1/services", Some(bad_regex))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_pattern",
    );
    let mut bad_url = custom.clone();
    bad_url["id"] = json!("acme-3");
    bad_url["base_url"] = json!("https://user:pw@acme.example");
    assert_error(
        &app.call(Method::POST, "/api/v1/services", Some(bad_url))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_url",
    );

    // A key for the custom service is checked against its format.
    let key = json!({"service": "acme-quotes", "environment": "development", "alias": "a", "secret": "wrong"});
    assert_error(
        &app.call(Method::POST, "/api/v1/keys", Some(key)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "secret_format_mismatch",
    );
    let key = json!({"service": "acme-quotes", "environment": "development", "alias": "a", "secret": "acme_0123456789abcdef"});
    let (status, created) = app.call(Method::POST, "/api/v1/keys", Some(key)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["hint"], "…cdef");

    let (status, overridden) = app
        .call(
            Method::PATCH,
            "/api/v1/services/openai",
            Some(json!({"base_url": "http://127.0.0.1:9999"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(overridden["base_url"], "http://127.0.0.1:9999");
    let (_, fetched) = app.call(Method::GET, "/api/v1/services/openai", None).await;
    assert_eq!(fetched["base_url"], "http://127.0.0.1:9999");
    let (_, reset) = app
        .call(
            Method::PATCH,
            "/api/v1/services/openai",
            Some(json!({"base_url": null})),
        )
        .await;
    assert_eq!(reset["base_url"], "https://api.openai.com");
    assert_error(
        &app.call(
            Method::PATCH,
            "/api/v1/services/openai",
            Some(json!({"base_url": "not a url"})),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_url",
    );
    assert_error(
        &app.call(
            Method::PATCH,
            "/api/v1/services/nope",
            Some(json!({"base_url": null})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "service_not_found",
    );
    assert_error(
        &app.call(Method::GET, "/api/v1/services/nope", None).await,
        StatusCode::NOT_FOUND,
        "service_not_found",
    );
}

async fn environments_and_categories(app: &TestApp) {
    let (_, envs) = app.call(Method::GET, "/api/v1/environments", None).await;
    let ids: Vec<_> = envs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["development", "staging", "production"]);
    let (status, qa) = app
        .call(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"id": "qa", "name": "QA"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(qa["builtin"], false);
    assert_error(
        &app.call(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"id": "qa", "name": "QA"})),
        )
        .await,
        StatusCode::CONFLICT,
        "environment_exists",
    );
    assert_error(
        &app.call(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"id": "Q A", "name": "QA"})),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_slug",
    );
    assert_error(
        &app.call(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"id": "x", "name": ""})),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_name",
    );
    let key = json!({"service": "finnhub", "environment": "qa", "alias": "q", "secret": "abcdefghij0123456789"});
    assert_eq!(
        app.call(Method::POST, "/api/v1/keys", Some(key)).await.0,
        StatusCode::CREATED
    );

    let (_, cats) = app.call(Method::GET, "/api/v1/categories", None).await;
    assert_eq!(cats.as_array().unwrap().len(), 3);
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/categories",
            Some(json!({"id": "crypto", "name": "Crypto data"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_error(
        &app.call(
            Method::POST,
            "/api/v1/categories",
            Some(json!({"id": "crypto", "name": "Again"})),
        )
        .await,
        StatusCode::CONFLICT,
        "category_exists",
    );
}

both_backends!(
    builtin_services_and_custom_ones,
    environments_and_categories
);

#[tokio::test]
async fn openapi_document_is_3_1_and_covers_every_route() {
    let app = TestApp::spawn(crate::helpers::Backend::Sqlite)
        .await
        .unwrap();
    let doc: serde_json::Value = reqwest::get(format!("{}/api/v1/openapi.json", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/keys", &["get", "post"][..]),
        ("/api/v1/keys/{id}", &["get", "patch", "delete"]),
        ("/api/v1/keys/{id}/enable", &["post"]),
        ("/api/v1/keys/{id}/disable", &["post"]),
        ("/api/v1/keys/{id}/versions", &["get", "post"]),
        ("/api/v1/keys/{id}/restore", &["post"]),
        ("/api/v1/keys/{id}/purge", &["post"]),
        ("/api/v1/deleted-keys", &["get"]),
        ("/api/v1/services", &["get", "post"]),
        ("/api/v1/services/{id}", &["get", "patch"]),
        ("/api/v1/categories", &["get", "post"]),
        ("/api/v1/environments", &["get", "post"]),
        ("/api/v1/app-tokens", &["get", "post"]),
        ("/api/v1/app-tokens/{id}", &["get"]),
        ("/api/v1/app-tokens/{id}/revoke", &["post"]),
    ] {
        for method in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path} missing from OpenAPI"
            );
        }
    }
    let secret = &doc["components"]["schemas"]["CreateKeyRequest"]["properties"]["secret"];
    assert_eq!(secret["writeOnly"], true, "{secret}");
    assert!(
        doc["components"]["schemas"]["KeyResponse"]["properties"]
            .get("secret")
            .is_none()
    );
}

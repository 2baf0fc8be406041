//! Validation requests (the add-key wizard's Validate button, and re-checking a stored key)
//! against a fake provider that accepts only one key and records what it was sent.

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, OPENAI_KEY, TestApp, assert_error, audit_actions, serve_fake};

pub const AV_KEY: &str = "ABCDEFGH12345678";

/// What the fake saw: path, query and the credential headers.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    query: String,
    pub authorization: Option<String>,
}

#[derive(Clone, Default)]
pub struct Provider {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Provider {
    pub async fn start() -> (Self, String) {
        let provider = Self::default();
        let handler = provider.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let handler = handler.clone();
            async move { handler.answer(request) }
        });
        (provider, serve_fake(app).await)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn answer(&self, request: Request) -> Response {
        let uri = request.uri().clone();
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.seen.lock().unwrap().push(Seen {
            path: uri.path().to_owned(),
            query: uri.query().unwrap_or_default().to_owned(),
            authorization: authorization.clone(),
        });
        let query: Vec<(String, String)> =
            url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        match uri.path() {
            // OpenAI: bearer key; echoes the key in its error like some providers do.
            "/v1/models" if authorization.as_deref() == Some(&format!("Bearer {OPENAI_KEY}")) => {
                axum::Json(json!({"object": "list", "data": [{"id": "gpt-5.4-mini"}]}))
                    .into_response()
            }
            "/v1/models" => (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": format!("Incorrect API key provided: {}", authorization.unwrap_or_default())}})),
            )
                .into_response(),
            // Alpha Vantage: 200 with a soft error, as the real one answers.
            "/query" if param("apikey").as_deref() == Some(AV_KEY) => {
                axum::Json(json!({"Note": "Thank you for using Alpha Vantage! Our standard API rate limit is 25 requests per day."}))
                    .into_response()
            }
            "/query" => axum::Json(json!({"Error Message": "the parameter apikey is invalid or missing"}))
                .into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

async fn validate(app: &TestApp, service: &str, secret: &str) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        &format!("/api/v1/services/{service}/validate"),
        Some(json!({"secret": secret, "environment": "production"})),
    )
    .await
}

#[tokio::test]
async fn a_candidate_key_is_validated_where_the_service_expects_it_and_nothing_is_stored() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let (provider, base) = Provider::start().await;
    app.point_service("openai", &base).await;
    app.point_service("alpha-vantage", &base).await;

    let (status, body) = validate(&app, "openai", OPENAI_KEY).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["verdict"], "valid", "{body}");
    assert_eq!(body["status"], 200);
    assert_eq!(body["costs_quota"], false);
    let seen = provider.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/models");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );

    // A well-formed key the provider refuses; its echo of the key never comes back.
    let wrong = OPENAI_KEY.replace("WXYZ", "QQQQ");
    let (status, body) = validate(&app, "openai", &wrong).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["verdict"], "rejected", "{body}");
    assert_eq!(body["status"], 401);
    assert!(!body.to_string().contains(&wrong), "{body}");

    // A value in the wrong format is refused before any call.
    let (status, body) = validate(&app, "openai", "not-a-key").await;
    assert_error(
        &(status, body),
        StatusCode::UNPROCESSABLE_ENTITY,
        "secret_format_mismatch",
    );
    assert_eq!(provider.seen().len(), 2);

    // Query-parameter services: the key goes in `apikey`, the request's own parameters
    // stay; a 200 carrying a rate-limit note means the key is known but throttled.
    let (status, body) = validate(&app, "alpha-vantage", AV_KEY).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["verdict"], "throttled", "{body}");
    assert_eq!(body["costs_quota"], true);
    let last = provider.seen().pop().unwrap();
    assert_eq!(last.path, "/query");
    assert!(last.query.contains("function=GLOBAL_QUOTE"), "{last:?}");
    assert!(last.query.contains(&format!("apikey={AV_KEY}")), "{last:?}");
    // Alpha Vantage refuses a key with HTTP 200 and "the parameter apikey is invalid".
    let (_, body) = validate(&app, "alpha-vantage", "ZZZZZZZZ12345678").await;
    assert_eq!(body["verdict"], "rejected", "{body}");
    assert_eq!(body["answer"], "rejected", "{body}");

    assert_eq!(app.key_count().await, 0, "validation stores nothing");

    // Audited with the fingerprint and the verdict, never the value.
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=key.validate", None)
        .await;
    assert_eq!(audit_actions(&trail), vec!["key.validate"; 4], "{trail}");
    let text = trail.to_string();
    assert!(
        !text.contains(OPENAI_KEY) && !text.contains(AV_KEY),
        "{text}"
    );
    assert!(text.contains("\"verdict\":\"rejected\""), "{text}");
    assert!(text.contains("hmac:"), "{text}");
}

#[tokio::test]
async fn a_stored_key_is_validated_with_its_current_value_and_an_unreachable_provider_says_so() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let (_provider, base) = Provider::start().await;
    app.point_service("openai", &base).await;
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap();
    let (status, body) = app
        .call(Method::POST, &format!("/api/v1/keys/{id}/validate"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["verdict"], "valid", "{body}");

    // A viewer may not send a key's validation request.
    let viewer = app
        .token_with_role(keyward_core::access::Role::Viewer)
        .await;
    let refused = app
        .call_as(
            &viewer,
            Method::POST,
            &format!("/api/v1/keys/{id}/validate"),
            None,
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");

    // Nothing listens here any more.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    app.point_service("openai", &closed).await;
    let (status, body) = app
        .call(Method::POST, &format!("/api/v1/keys/{id}/validate"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["verdict"], "unreachable", "{body}");
    assert!(body["status"].is_null());
}

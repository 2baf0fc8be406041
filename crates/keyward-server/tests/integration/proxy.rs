//! The proxy end to end against a fake provider that accepts only the real key and records
//! everything Keyward sends it.

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use reqwest::Method;
use serde_json::json;

use crate::helpers::{Backend, OPENAI_KEY, TestApp, assert_error, serve_fake};

const AV_KEY: &str = "ABCDEFGH12345678";
/// A second valid OpenAI key, for pools.
fn openai_key_b() -> String {
    OPENAI_KEY.replace("WXYZ", "BBBB")
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: String,
    headers: HeaderMap,
}

#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Lets `/v1/slow-stream` send its second event.
    release: Arc<tokio::sync::Notify>,
    /// How many more times `/v1/flaky` answers 503.
    flaky: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    async fn start() -> (Self, String) {
        let upstream = Self::default();
        let recorder = upstream.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let recorder = recorder.clone();
            async move { recorder.answer(request).await }
        });
        (upstream, serve_fake(app).await)
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }

    async fn answer(&self, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        // A body the proxy cut off (over the size limit) never arrives whole.
        let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        let seen = Seen {
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            headers: parts.headers.clone(),
        };
        self.seen.lock().unwrap().push(seen.clone());
        if seen.path == "/v1/slow-stream" {
            let release = self.release.clone();
            let events = futures_util::stream::unfold(0u8, move |step| {
                let release = release.clone();
                async move {
                    match step {
                        0 => Some((
                            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(
                                b"data: first\n\n",
                            )),
                            1,
                        )),
                        1 => {
                            release.notified().await;
                            Some((Ok(axum::body::Bytes::from_static(b"data: second\n\n")), 2))
                        }
                        _ => None,
                    }
                }
            });
            return (
                [("content-type", "text/event-stream")],
                axum::body::Body::from_stream(events),
            )
                .into_response();
        }
        let auth = seen
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if seen.path == "/v1/limited" {
            return if auth == format!("Bearer {OPENAI_KEY}") {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "3600")],
                    "daily quota used",
                )
                    .into_response()
            } else {
                axum::Json(json!({"served_by": "b"})).into_response()
            };
        }
        if seen.path == "/v1/flaky"
            && self
                .flaky
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok()
        {
            return (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
        }
        if seen.path == "/v1/echo" {
            // Like a provider quoting the key it was given in an error message.
            let given = seen
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body =
                format!("{{\"error\":{{\"message\":\"Incorrect API key provided: {given}\"}}}}");
            return (
                StatusCode::UNAUTHORIZED,
                [("content-type", "application/json")],
                body,
            )
                .into_response();
        }
        if seen.path == "/query" && seen.query.contains("function=THROTTLE") {
            return axum::Json(json!({"Information": "Please consider spreading out your free API requests more sparingly (1 request per second). Premium plans lift the free key rate limit (25 requests per day)."}))
                .into_response();
        }
        if seen.path == "/query" {
            return if seen.query.contains(&format!("apikey={AV_KEY}")) {
                axum::Json(json!({"Global Quote": {"01. symbol": "IBM", "05. price": "231.10"}}))
                    .into_response()
            } else {
                axum::Json(json!({"Error Message": "the parameter apikey is invalid or missing."}))
                    .into_response()
            };
        }
        if auth != format!("Bearer {OPENAI_KEY}") && auth != format!("Bearer {}", openai_key_b()) {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"code": "invalid_api_key"}})),
            )
                .into_response();
        }
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if request["stream"] == true {
            let mut events = "data: {\"model\":\"gpt-5.4-mini-2026-03-17\",\"choices\":[{\"delta\":{\"content\":\"Bull\"}}],\"usage\":null}\n\n\
                          data: {\"model\":\"gpt-5.4-mini-2026-03-17\",\"choices\":[{\"delta\":{\"content\":\"ish\"}}],\"usage\":null}\n\n".to_owned();
            if request["stream_options"]["include_usage"] == true {
                events.push_str("data: {\"model\":\"gpt-5.4-mini-2026-03-17\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n");
            }
            events.push_str("data: [DONE]\n\n");
            return ([("content-type", "text/event-stream")], events).into_response();
        }
        axum::Json(json!({"id": "chatcmpl-1", "model": "gpt-5.4-mini-2026-03-17", "choices": [{"message": {"content": "Bullish"}}], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}))
            .into_response()
    }
}

struct Setup {
    app: TestApp,
    upstream: Upstream,
    token: String,
    openai_key: String,
}

async fn setup() -> Setup {
    setup_on(Backend::Sqlite).await.unwrap()
}

async fn setup_on(backend: Backend) -> Option<Setup> {
    let app = TestApp::spawn(backend).await?;
    let (upstream, base) = Upstream::start().await;
    for service in ["openai", "alpha-vantage"] {
        app.point_service(service, &base).await;
    }
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    app.create_key("alpha-vantage", "production", "av", AV_KEY)
        .await;
    let (status, created) = app
        .call(Method::POST, "/api/v1/app-tokens", Some(json!({"name": "app", "services": ["openai", "alpha-vantage"], "environments": ["production"]})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    Some(Setup {
        app,
        upstream,
        token: created["token"].as_str().unwrap().to_owned(),
        openai_key: key["id"].as_str().unwrap().to_owned(),
    })
}

fn proxy_url(s: &Setup, rest: &str) -> String {
    format!("{}/proxy/{rest}", s.app.base)
}

async fn chat(s: &Setup, token: &str, stream: bool) -> reqwest::Response {
    s.app
        .client
        .post(proxy_url(s, "openai/v1/chat/completions"))
        .bearer_auth(token)
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "connection-specific")
        .header("cookie", "session=client")
        .header("x-custom", "kept")
        .json(&json!({"model": "gpt-5.4-mini", "stream": stream, "messages": [{"role": "user", "content": "AAPL?"}]}))
        .send()
        .await
        .unwrap()
}

/// A GET sent as raw bytes, so the path reaches the server exactly as written.
async fn raw_get(base: &str, path: &str, token: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    raw_request(
        base,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
}

/// Sends `request` as raw bytes; the status and the whole answer, read until the server
/// closes the connection.
async fn raw_request(base: &str, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

async fn error_of(response: reqwest::Response) -> (StatusCode, serde_json::Value) {
    let status = response.status();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn injects_the_real_key_where_the_provider_expects_it_and_strips_the_rest() {
    let s = setup().await;
    let response = chat(&s, &s.token, false).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Bullish");
    let seen = s.upstream.last();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {OPENAI_KEY}").as_str()
    );
    assert_eq!(seen.headers["x-custom"], "kept");
    for gone in ["cookie", "x-hop", "x-keyward-token"] {
        assert!(
            seen.headers.get(gone).is_none(),
            "{gone} reached the upstream"
        );
    }
    let all = format!("{:?}{}", seen.headers, seen.query);
    assert!(
        !all.contains(&s.token) && !all.contains("kwp_"),
        "the app token reached the upstream: {all}"
    );

    let streamed = chat(&s, &s.token, true).await;
    assert_eq!(streamed.status(), StatusCode::OK);
    assert_eq!(streamed.headers()["content-type"], "text/event-stream");
    let text = streamed.text().await.unwrap();
    assert!(
        text.contains("\"Bull\"") && text.contains("[DONE]"),
        "{text}"
    );

    // Market data: the token in `apikey=` is swapped for the real key.
    let url = format!(
        "{}?function=GLOBAL_QUOTE&symbol=IBM&apikey={}",
        proxy_url(&s, "alpha-vantage/query"),
        s.token
    );
    let quote: serde_json::Value = s
        .app
        .client
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(quote["Global Quote"]["05. price"], "231.10");
    assert_eq!(
        s.upstream.last().query,
        format!("function=GLOBAL_QUOTE&symbol=IBM&apikey={AV_KEY}")
    );

    // X-Keyward-Token works for any service.
    let response = s
        .app
        .client
        .get(format!(
            "{}?function=X",
            proxy_url(&s, "alpha-vantage/query")
        ))
        .header("x-keyward-token", &s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        s.upstream
            .last()
            .query
            .ends_with(&format!("apikey={AV_KEY}"))
    );
}

#[tokio::test]
async fn refused_requests_never_reach_the_upstream() {
    let s = setup().await;
    let before = s.upstream.count();
    let refuse = |response: (StatusCode, serde_json::Value), status: StatusCode, code: &str| {
        assert_error(&response, status, code)
    };

    let anonymous = s
        .app
        .client
        .post(proxy_url(&s, "openai/v1/chat/completions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    refuse(
        error_of(anonymous).await,
        StatusCode::UNAUTHORIZED,
        "missing_token",
    );
    let forged = format!("{}AAAA", &s.token[..s.token.len() - 4]);
    refuse(
        error_of(chat(&s, &forged, false).await).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    let unknown = s
        .app
        .client
        .get(proxy_url(&s, "nope/x"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    refuse(
        error_of(unknown).await,
        StatusCode::NOT_FOUND,
        "service_not_found",
    );
    let out_of_scope = s
        .app
        .client
        .get(proxy_url(&s, "finnhub/api/v1/quote"))
        .header("x-keyward-token", &s.token)
        .send()
        .await
        .unwrap();
    refuse(
        error_of(out_of_scope).await,
        StatusCode::FORBIDDEN,
        "token_out_of_scope",
    );
    let wrong_env = s
        .app
        .client
        .get(proxy_url(&s, "openai/v1/models"))
        .bearer_auth(&s.token)
        .header("x-keyward-environment", "staging")
        .send()
        .await
        .unwrap();
    refuse(
        error_of(wrong_env).await,
        StatusCode::FORBIDDEN,
        "token_out_of_scope",
    );
    // Sent byte for byte: an HTTP client library would normalise these paths itself.
    for evil in [
        "/proxy/openai/../../admin",
        "/proxy/openai/v1/../../x",
        "/proxy/openai/%2e%2e/%2e%2e/admin",
        "/proxy/openai/v1/%2E%2E/x",
        "/proxy/openai/%252e%252e/x",
        "/proxy/openai/v1/..%2f..%2fadmin",
        "/proxy/openai/v1/%5c..%5cadmin",
    ] {
        let (status, body) = raw_get(&s.app.base, evil, &s.token).await;
        assert!(status == 400 || status == 404, "{evil}: {status} {body}");
        if status == 400 {
            assert!(body.contains("invalid_path"), "{evil}: {body}");
        }
    }
    let scheme_relative = s
        .app
        .client
        .get(proxy_url(&s, "openai//evil.example/x"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    refuse(
        error_of(scheme_relative).await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    );
    // A declared length over the limit is refused from the head alone, before any of the
    // body is read (sent as raw bytes: the head, then nothing).
    let (status, answer) = raw_request(
        &s.app.base,
        &format!(
            "POST /proxy/openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
            s.token,
            10 * 1024 * 1024 + 1
        ),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    // A client that sends such a body anyway gets the 413, or — when the connection is
    // closed while it is still writing (the server may: RFC 9110 §15.5.14) — an error of
    // its own; never an upstream call.
    let huge = s
        .app
        .client
        .post(proxy_url(&s, "openai/v1/chat/completions"))
        .bearer_auth(&s.token)
        .body(vec![b'x'; 10 * 1024 * 1024 + 1])
        .send()
        .await;
    if let Ok(huge) = huge {
        refuse(
            error_of(huge).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        );
    }
    assert_eq!(
        s.upstream.count(),
        before,
        "no refused request reached the upstream"
    );
}

#[tokio::test]
async fn revoking_a_token_or_disabling_a_key_takes_effect_at_once() {
    let s = setup().await;
    assert_eq!(chat(&s, &s.token, false).await.status(), StatusCode::OK);
    let before = s.upstream.count();

    s.app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{}/disable", s.openai_key),
            None,
        )
        .await;
    assert_error(
        &error_of(chat(&s, &s.token, false).await).await,
        StatusCode::FORBIDDEN,
        "key_disabled",
    );
    s.app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{}/enable", s.openai_key),
            None,
        )
        .await;
    assert_eq!(chat(&s, &s.token, false).await.status(), StatusCode::OK);

    let (_, tokens) = s.app.call(Method::GET, "/api/v1/app-tokens", None).await;
    let id = tokens[0]["id"].as_str().unwrap();
    s.app
        .call(
            Method::POST,
            &format!("/api/v1/app-tokens/{id}/revoke"),
            None,
        )
        .await;
    assert_error(
        &error_of(chat(&s, &s.token, false).await).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    s.app
        .call(
            Method::DELETE,
            &format!("/api/v1/keys/{}", s.openai_key),
            None,
        )
        .await;
    assert_eq!(
        s.upstream.count(),
        before + 1,
        "only the call between enable and revoke went upstream"
    );
}

/// Two instances share one database; a token revoked through one stops working on the
/// other within a second (it hears of it through the store's change feed).
async fn revocation_reaches_every_instance_within_a_second(backend: Backend) {
    let Some(s) = setup_on(backend).await else {
        return;
    };
    let other = s.app.sibling().await;
    let call_other = || {
        s.app
            .client
            .post(format!("{}/proxy/openai/v1/chat/completions", other.base))
            .bearer_auth(&s.token)
            .json(&json!({"model": "m", "messages": []}))
            .send()
    };
    assert_eq!(call_other().await.unwrap().status(), StatusCode::OK);
    let (_, tokens) = s.app.call(Method::GET, "/api/v1/app-tokens", None).await;
    let id = tokens[0]["id"].as_str().unwrap();
    s.app
        .call(
            Method::POST,
            &format!("/api/v1/app-tokens/{id}/revoke"),
            None,
        )
        .await;
    let revoked_at = std::time::Instant::now();
    loop {
        let status = call_other().await.unwrap().status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        // Generous for a loaded CI machine; SQLite's change number is polled every 250 ms.
        assert!(
            revoked_at.elapsed() < std::time::Duration::from_millis(1500),
            "the other instance still accepts the token"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!(
        "revocation reached the other instance after {:?}",
        revoked_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_reaches_other_instances_sqlite() {
    revocation_reaches_every_instance_within_a_second(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_reaches_other_instances_postgres() {
    revocation_reaches_every_instance_within_a_second(Backend::Postgres).await;
}

#[tokio::test]
async fn a_token_over_its_rate_limit_is_refused_locally_with_retry_after() {
    let s = setup().await;
    let (_, created) = s
        .app
        .call(
            Method::POST,
            "/api/v1/app-tokens",
            Some(json!({"name": "slow", "services": ["openai"], "environments": ["production"], "rate_limit": {"requests": 2, "per_seconds": 60}})),
        )
        .await;
    let limited = created["token"].as_str().unwrap().to_owned();
    assert_eq!(chat(&s, &limited, false).await.status(), StatusCode::OK);
    assert_eq!(chat(&s, &limited, false).await.status(), StatusCode::OK);
    let before = s.upstream.count();
    let refused = chat(&s, &limited, false).await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=30).contains(&retry_after),
        "one request comes back every 30 s: {retry_after}"
    );
    assert_error(
        &error_of(refused).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    assert_eq!(
        s.upstream.count(),
        before,
        "a rate-limited request never reaches the upstream"
    );
    assert_eq!(
        chat(&s, &s.token, false).await.status(),
        StatusCode::OK,
        "other tokens are unaffected"
    );
}

#[tokio::test]
async fn server_sent_events_pass_through_without_buffering() {
    let s = setup().await;
    let mut response = s
        .app
        .client
        .get(proxy_url(&s, "openai/v1/slow-stream"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    // The upstream holds its second event until we have the first: a buffering proxy would hang here.
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), response.chunk())
        .await
        .expect("the first event arrived while the upstream stream was still open")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    s.upstream.release.notify_one();
    let rest = response.text().await.unwrap();
    assert_eq!(rest, "data: second\n\n");
}

#[tokio::test]
async fn last_use_of_key_and_token_is_recorded_off_the_request_path() {
    let s = setup().await;
    let (_, before) = s
        .app
        .call(Method::GET, &format!("/api/v1/keys/{}", s.openai_key), None)
        .await;
    assert!(before["last_used_at"].is_null());
    assert_eq!(chat(&s, &s.token, false).await.status(), StatusCode::OK);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, key) = s
            .app
            .call(Method::GET, &format!("/api/v1/keys/{}", s.openai_key), None)
            .await;
        let (_, tokens) = s.app.call(Method::GET, "/api/v1/app-tokens", None).await;
        if key["last_used_at"].is_string() && tokens[0]["last_used_at"].is_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "use was not recorded: {key} {tokens}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn safe_requests_are_retried_and_fail_over_while_others_are_sent_once() {
    let s = setup().await;
    let get = |path: &str| {
        s.app
            .client
            .get(proxy_url(&s, &format!("openai/v1/{path}")))
            .bearer_auth(&s.token)
            .send()
    };

    // Two 503s, then success: a GET is retried with backoff.
    s.upstream
        .flaky
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let before = s.upstream.count();
    assert_eq!(get("flaky").await.unwrap().status(), StatusCode::OK);
    assert_eq!(s.upstream.count(), before + 3);

    // A POST is not safe to repeat: the 503 comes back after one try.
    s.upstream
        .flaky
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let before = s.upstream.count();
    let post = s
        .app
        .client
        .post(proxy_url(&s, "openai/v1/flaky"))
        .bearer_auth(&s.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.upstream.count(), before + 1);

    // A pool: key A answers 429 with a day-long Retry-After, so the proxy fails over to B
    // at once instead of waiting.
    s.app
        .create_key("openai", "production", "b", &openai_key_b())
        .await;
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let response = get("limited").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.json::<serde_json::Value>().await.unwrap()["served_by"],
            "b"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "no waiting out a long Retry-After"
        );
    }

    // A key the provider rejects: the next key in the pool is tried.
    s.app
        .create_key(
            "openai",
            "production",
            "rejected",
            &OPENAI_KEY.replace("WXYZ", "BAAD"),
        )
        .await;
    for _ in 0..3 {
        assert_eq!(
            get("models").await.unwrap().status(),
            StatusCode::OK,
            "every turn of the pool ends on a valid key"
        );
    }
}

#[tokio::test]
async fn a_response_that_echoes_the_key_has_it_masked() {
    let s = setup().await;
    let response = s
        .app
        .client
        .get(proxy_url(&s, "openai/v1/echo"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let length: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = response.text().await.unwrap();
    assert!(!body.contains(OPENAI_KEY), "the key came back: {body}");
    assert!(
        body.contains(&format!("Bearer {}", "*".repeat(OPENAI_KEY.len()))),
        "{body}"
    );
    assert_eq!(body.len(), length, "the mask keeps Content-Length true");
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_cut_off_with_413_and_the_proxy_keeps_serving() {
    let s = setup().await;
    // No Content-Length: the limit can only be enforced while the body streams through
    // (a POST to a market-data API is neither repeatable nor an LLM call, so it is not
    // buffered).
    // Sent raw, chunked, as one chunk one byte over the limit and then nothing more: the
    // server has read everything the client sent when it refuses, so its answer is never
    // lost to a reset and the 413 must arrive.
    let limit = 10 * 1024 * 1024;
    let request = format!(
        "POST /proxy/alpha-vantage/query?function=GLOBAL_QUOTE&apikey={} HTTP/1.1\r\n\
         Host: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}",
        s.token,
        limit + 1,
        "x".repeat(limit + 1)
    );
    let (status, answer) = raw_request(&s.app.base, &request).await;
    assert_eq!(status, 413, "{}", &answer[..answer.len().min(500)]);
    assert!(answer.contains("body_too_large"), "{answer}");
    let (status, _) = error_of(chat(&s, &s.token, false).await).await;
    assert_eq!(status, StatusCode::OK, "the next call is served as usual");
}

#[tokio::test]
async fn upstream_failures_are_clear_errors_and_upstream_errors_pass_through() {
    let s = setup().await;
    // Rotate in a wrong value: the provider's own 401 comes back unchanged.
    s.app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{}/versions", s.openai_key),
            Some(json!({"secret": OPENAI_KEY.replace("WXYZ", "NOPE")})),
        )
        .await;
    let (status, body) = error_of(chat(&s, &s.token, false).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["error"]["code"], "invalid_api_key",
        "the upstream's body, not Keyward's"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    s.app
        .call(
            Method::PATCH,
            "/api/v1/services/openai",
            Some(json!({"base_url": dead})),
        )
        .await;
    assert_error(
        &error_of(chat(&s, &s.token, false).await).await,
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
    );
}

async fn av_get(s: &Setup, query: &str) -> reqwest::Response {
    s.app
        .client
        .get(format!(
            "{}?{query}&apikey={}",
            proxy_url(s, "alpha-vantage/query"),
            s.token
        ))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn market_data_is_cached_soft_throttles_flag_the_key_and_quotas_refuse_locally() {
    let s = setup().await;
    let before = s.upstream.count();
    let first = av_get(&s, "function=GLOBAL_QUOTE&symbol=IBM").await;
    assert_eq!(first.headers()["x-keyward-cache"], "miss");
    let first = first.text().await.unwrap();
    let second = av_get(&s, "symbol=IBM&function=GLOBAL_QUOTE").await;
    assert_eq!(second.headers()["x-keyward-cache"], "hit");
    assert_eq!(
        second.text().await.unwrap(),
        first,
        "the same answer, from the cache"
    );
    assert_eq!(
        s.upstream.count(),
        before + 1,
        "the second call never left Keyward"
    );

    // Alpha Vantage's HTTP 200 throttle notice: passed on, not cached, key quota-limited.
    let throttled = av_get(&s, "function=THROTTLE&symbol=IBM").await;
    assert_eq!(throttled.status(), StatusCode::OK);
    assert!(throttled.text().await.unwrap().contains("Information"));
    let (_, keys) = s
        .app
        .call(Method::GET, "/api/v1/keys?service=alpha-vantage", None)
        .await;
    let av = &keys["items"][0];
    assert_eq!(av["flag"]["kind"], "quota_limited", "{av}");
    assert!(av["flag"]["until"].is_string());
    let count = s.upstream.count();
    let refused = av_get(&s, "function=GLOBAL_QUOTE&symbol=MSFT").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exhausted");
    assert_eq!(
        s.upstream.count(),
        count,
        "a quota-limited key is not called"
    );

    // Clearing the flag and holding the key to 3 requests a day (2 spent so far).
    let id = av["id"].as_str().unwrap();
    let (status, _) = s
        .app
        .call(Method::DELETE, &format!("/api/v1/keys/{id}/flag"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, updated) = s
        .app
        .call(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            Some(json!({"limits": [{"max": 3, "unit": "requests", "window_seconds": 86400}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert!(updated["flag"].is_null());
    assert_eq!(
        av_get(&s, "function=GLOBAL_QUOTE&symbol=MSFT")
            .await
            .status(),
        StatusCode::OK
    );
    let count = s.upstream.count();
    let exhausted = av_get(&s, "function=GLOBAL_QUOTE&symbol=AAPL").await;
    assert_eq!(exhausted.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = exhausted.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry > 0 && retry <= 25 * 3600,
        "until midnight US/Eastern: {retry}"
    );
    assert_eq!(
        s.upstream.count(),
        count,
        "quota refusals never reach the upstream"
    );
    let (status, plan) = s
        .app
        .call(
            Method::PATCH,
            &format!("/api/v1/keys/{id}"),
            Some(json!({"plan": "Gold"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(plan["error"]["code"], "unknown_plan");
}

#[tokio::test]
async fn llm_calls_cost_the_same_streamed_or_not_and_budgets_refuse_before_the_call() {
    let s = setup().await;
    assert_eq!(chat(&s, &s.token, false).await.status(), StatusCode::OK);
    let streamed = chat(&s, &s.token, true).await.text().await.unwrap();
    assert!(
        !streamed.contains("\"usage\":{"),
        "the usage chunk Keyward asked for is removed: {streamed}"
    );
    assert!(streamed.contains("[DONE]"));
    let usage = s
        .app
        .usage_until(&format!("key={}&granularity=minute", s.openai_key), 2)
        .await;
    // gpt-5.4-mini: 5 input tokens × $0.75/M + 1 output token × $4.50/M = $0.00000825 per call.
    let totals = &usage["totals"];
    assert_eq!(
        (
            totals["input_tokens"].as_u64(),
            totals["output_tokens"].as_u64()
        ),
        (Some(10), Some(2)),
        "{usage}"
    );
    let cost = totals["cost_usd"].as_f64().unwrap();
    assert!((cost - 2.0 * 0.000_008_25).abs() < 1e-12, "{usage}");

    // A token with a tiny budget: the call's maximum cost does not fit, so nothing is sent.
    let (_, created) = s
        .app
        .call(Method::POST, "/api/v1/app-tokens", Some(json!({"name": "thrifty", "services": ["openai"], "environments": ["production"], "budget": {"limit_usd": 0.0001, "period": "day"}})))
        .await;
    let thrifty = created["token"].as_str().unwrap().to_owned();
    let count = s.upstream.count();
    let refused = chat(&s, &thrifty, false).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exceeded");
    assert_eq!(
        s.upstream.count(),
        count,
        "an over-budget call never reaches the upstream"
    );
    let refusals = s
        .app
        .usage_until(&format!("token={}", created["id"].as_str().unwrap()), 1)
        .await;
    assert_eq!(refusals["totals"]["errors"], 1, "refusals are metered too");
}

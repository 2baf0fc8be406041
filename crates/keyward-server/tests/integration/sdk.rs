//! The official `openai` and `anthropic` Python SDKs, unmodified, pointed at Keyward with an
//! app token: normal and streamed calls reach a fake provider that accepts only the real
//! keys, and the streamed and normal calls record the same cost. Likewise Google's
//! `google-genai` and four market-data clients (`alpha_vantage`, `polygon-api-client`,
//! `finnhub-python`, `twelvedata`), changing only their base URL and key.
//!
//! Needs a Python with these packages (`tests/sdk/requirements.txt`): `KEYWARD_TEST_PYTHON`, or
//! `python3`. `.ci/run` installs them into a venv; elsewhere the test skips loudly.

use std::path::Path;
use std::process::Command;

use keyward_store::testing::service_missing;
use serde_json::{Value, json};

use crate::fake_llm::usage;
use crate::llm::Llms;

fn python() -> String {
    std::env::var("KEYWARD_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Whether `python` can import `modules` (`"openai, anthropic"`); else the missing one.
fn sdks_installed(python: &str, modules: &str) -> Result<(), String> {
    let check = Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if check.status.success() {
        Ok(())
    } else {
        // The traceback's last line names the missing module.
        let stderr = String::from_utf8_lossy(&check.stderr);
        Err(stderr.trim().lines().last().unwrap_or_default().to_owned())
    }
}

/// Runs `tests/sdk/{script}` with Keyward's URL and an app token (and none of the
/// variables that would lead a client elsewhere), and returns what it printed as JSON.
async fn run_script(python: String, script: &str, base: &str, token: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let (base, token) = (base.to_owned(), token.to_owned());
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(python);
        command
            .arg(path)
            .env("KEYWARD_URL", base)
            .env("KEYWARD_APP_TOKEN", token)
            .env("NO_PROXY", "*");
        // The clients must not find a real key or another base URL in the environment.
        for name in [
            "OPENAI_API_KEY",
            "ANTHROPIC_API_KEY",
            "OPENAI_BASE_URL",
            "ANTHROPIC_BASE_URL",
            "GOOGLE_API_KEY",
            "GEMINI_API_KEY",
            "POLYGON_API_KEY",
        ] {
            command.env_remove(name);
        }
        command.output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn official_python_sdks_work_unmodified_through_the_proxy() {
    let python = python();
    if let Err(why) = sdks_installed(&python, "openai, anthropic") {
        service_missing(
            "the openai and anthropic Python SDKs",
            &format!(
                "{why}; pip install -r crates/keyward-server/tests/sdk/requirements.txt and set KEYWARD_TEST_PYTHON"
            ),
        );
        return;
    }
    let s = Llms::start().await;
    let seen = run_script(python, "official_sdks.py", &s.app.base, &s.token).await;
    assert_eq!(
        seen,
        json!({
            "openai_plain": "Bullish", "openai_plain_usage": [5, 1],
            "openai_streamed": "Bullish", "openai_streamed_usage_chunks": 0,
            "anthropic_plain": "Bullish", "anthropic_plain_usage": [12, 3],
            "anthropic_streamed": "Bullish", "anthropic_streamed_usage": [12, 3],
        })
    );
    assert_eq!(
        s.fake.completions.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "every call reached the provider with the real key"
    );

    for (key, cost) in [
        (&s.openai_key, usage::OPENAI_COST),
        (&s.anthropic_key, usage::ANTHROPIC_COST),
    ] {
        let totals = s.usage(&format!("key={key}"), 2).await;
        assert_eq!(totals["errors"], 0, "{totals}");
        let recorded = totals["cost_usd"].as_f64().unwrap();
        assert!(
            (recorded - 2.0 * cost).abs() < 1e-12,
            "streamed + plain = 2 × ${cost} from the pricing table, recorded ${recorded}"
        );
    }
}

/// Keys the client-library fakes accept, one per service.
const GEMINI_KEY: &str = "AIzaSyA-gemini-real-key-0123456789abcdef";
const AV_REAL: &str = "AVREALKEY0123456";
const POLYGON_REAL: &str = "polygonRealKey0123456789abcdefgh";
const FINNHUB_REAL: &str = "finnhubrealkey012345";
const TWELVE_REAL: &str = "twelvedatarealkey0123456789abcde";

/// One fake for Gemini, Alpha Vantage, Polygon, Finnhub and Twelve Data, answering as
/// PROVIDERS.md records and only to the real keys, each where its provider expects it.
async fn market_and_gemini_fake() -> String {
    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    fn query(request: &Request, name: &str) -> Option<String> {
        url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
    fn header(request: &Request, name: &str) -> Option<String> {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
    let app = axum::Router::new().fallback(|request: Request| async move {
        // The Finnhub client joins `API_URL` and `/quote` with a slash of its own; the
        // provider, like most servers, reads `//` as `/`.
        let path = request.uri().path().replace("//", "/");
        let denied = (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "bad key"}))).into_response();
        // google-genai 3.x calls `v1`; older clients and the REST docs use `v1beta`.
        if path.starts_with("/v1beta/models/gemini-2.5-pro:") || path.starts_with("/v1/models/gemini-2.5-pro:") {
            if header(&request, "x-goog-api-key").as_deref() != Some(GEMINI_KEY) {
                return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                    "details": [{"reason": "API_KEY_INVALID"}]}}))).into_response();
            }
            let usage = json!({"promptTokenCount": 812, "cachedContentTokenCount": 512,
                "candidatesTokenCount": 64, "thoughtsTokenCount": 120, "totalTokenCount": 996});
            let chunk = |text: &str, usage: Value| json!({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "STOP", "index": 0}], "usageMetadata": usage, "modelVersion": "gemini-2.5-pro"});
            if path.ends_with(":streamGenerateContent") {
                let body = format!(
                    "data: {}\r\n\r\ndata: {}\r\n\r\n",
                    chunk("Bull", json!({"promptTokenCount": 812, "candidatesTokenCount": 1})),
                    chunk("ish", usage)
                );
                return ([("content-type", "text/event-stream")], body).into_response();
            }
            return axum::Json(chunk("Bullish", usage)).into_response();
        }
        match path.as_str() {
            "/query" => {
                if query(&request, "apikey").as_deref() != Some(AV_REAL) {
                    return axum::Json(json!({"Error Message": "the parameter apikey is invalid or missing."})).into_response();
                }
                if query(&request, "symbol").as_deref() == Some("MSFT") {
                    return axum::Json(json!({"Information": "Thank you for using Alpha Vantage! Please consider spreading out your free API requests more sparingly (1 request per second). You may subscribe to any of the premium plans at https://www.alphavantage.co/premium/ to lift the free key rate limit (25 requests per day)"})).into_response();
                }
                axum::Json(json!({"Meta Data": {"1. Information": "Daily Prices", "2. Symbol": "IBM"},
                    "Time Series (Daily)": {"2026-12-04": {"1. open": "240.00", "4. close": "241.10", "5. volume": "100"}}}))
                    .into_response()
            }
            "/v3/reference/tickers" => {
                if header(&request, "authorization") != Some(format!("Bearer {POLYGON_REAL}")) {
                    return denied;
                }
                // Page 1 links to page 2 on the provider's own host, as Polygon does.
                if query(&request, "cursor").as_deref() == Some("page2") {
                    axum::Json(json!({"results": [{"ticker": "AAPL"}], "status": "OK"})).into_response()
                } else {
                    axum::Json(json!({"results": [{"ticker": "A"}], "status": "OK",
                        "next_url": "https://api.polygon.io/v3/reference/tickers?cursor=page2"})).into_response()
                }
            }
            "/api/v1/quote" => {
                if query(&request, "token").as_deref() != Some(FINNHUB_REAL) {
                    return denied;
                }
                axum::Json(json!({"c": 241.1, "d": 1.2, "dp": 0.5, "h": 242.0, "l": 239.0, "o": 240.0, "pc": 239.9, "t": 1764892800}))
                    .into_response()
            }
            // The Twelve Data client loads indicator metadata when it starts.
            "/technical_indicators" => axum::Json(json!({})).into_response(),
            "/price" => {
                if query(&request, "apikey").as_deref() != Some(TWELVE_REAL) {
                    return axum::Json(json!({"code": 401, "message": "**apikey** parameter is incorrect or not specified.", "status": "error"})).into_response();
                }
                axum::Json(json!({"price": "241.10000"})).into_response()
            }
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    });
    crate::helpers::serve_fake(app).await
}

#[tokio::test]
async fn client_libraries_from_pypi_work_by_changing_only_base_url_and_key() {
    let python = python();
    if let Err(why) = sdks_installed(
        &python,
        "google.genai, alpha_vantage, polygon, finnhub, twelvedata",
    ) {
        service_missing(
            "the google-genai, alpha_vantage, polygon-api-client, finnhub-python and twelvedata Python packages",
            &format!(
                "{why}; pip install -r crates/keyward-server/tests/sdk/requirements.txt and set KEYWARD_TEST_PYTHON"
            ),
        );
        return;
    }
    let Some(app) = crate::helpers::TestApp::spawn(crate::helpers::Backend::Sqlite).await else {
        return;
    };
    let fake = market_and_gemini_fake().await;
    let services = [
        "gemini",
        "alpha-vantage",
        "polygon",
        "finnhub",
        "twelve-data",
    ];
    let mut keys = std::collections::HashMap::new();
    for (service, secret) in
        services
            .iter()
            .zip([GEMINI_KEY, AV_REAL, POLYGON_REAL, FINNHUB_REAL, TWELVE_REAL])
    {
        app.point_service(service, &fake).await;
        let key = app.create_key(service, "production", "sdk", secret).await;
        keys.insert(*service, key["id"].as_str().unwrap().to_owned());
    }
    let token = app
        .app_token(
            json!({"name": "libraries", "services": services, "environments": ["production"]}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let seen = run_script(python, "client_libraries.py", &app.base, &token).await;
    assert_eq!(
        seen,
        json!({
            "gemini_plain": "Bullish", "gemini_plain_usage": [812, 64], "gemini_streamed": "Bullish",
            "alpha_vantage_close": "241.10", "alpha_vantage_symbol": "IBM", "alpha_vantage_throttle": true,
            "polygon_tickers": ["A", "AAPL"],
            "finnhub_quote": 241.1,
            "twelve_data_price": "241.10000",
        })
    );
    // The streamed and plain Gemini calls cost the same, thinking tokens billed as output.
    let totals = app.usage_until(&format!("key={}", keys["gemini"]), 2).await["totals"].clone();
    assert_eq!(totals["errors"], 0, "{totals}");
    assert_eq!(totals["output_tokens"], 2 * (64 + 120), "{totals}");
    assert_eq!(totals["unpriced"], 0, "{totals}");
    // Alpha Vantage's throttle notice flagged its key until the next reset.
    let (_, av) = app
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/keys/{}", keys["alpha-vantage"]),
            None,
        )
        .await;
    assert_eq!(av["flag"]["kind"], "quota_limited", "{av}");
}

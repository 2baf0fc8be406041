//! Provider fidelity: for each of the 14 built-in services, a fake that answers with every
//! shape PROVIDERS.md documents — rejected keys, throttles, exhausted quotas (HTTP 200
//! bodies included), outages, links — and a check that the key is flagged (or not) as
//! documented, the answer is never cached, the client sees what the provider said, and
//! `/metrics` counts what the answer meant. Also: the app token is accepted everywhere the
//! service's SDKs put a key, and the real key arrives where the provider expects it.
//!
//! The table in `crates/keyward-core/catalog/README.md` names these cases.

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use keyward_core::ManualClock;
use keyward_core::service::KeyPlacement;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, serve_fake};

/// One request the fake provider received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: String,
    headers: HeaderMap,
}

/// What the fake answers next.
#[derive(Debug, Clone)]
struct Canned {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    content_type: &'static str,
    body: &'static str,
}

/// A provider that answers every request with the canned answer and remembers requests.
#[derive(Clone)]
struct Provider {
    answer: Arc<Mutex<Canned>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Provider {
    async fn start() -> (Self, String) {
        let provider = Self {
            answer: Arc::new(Mutex::new(Canned {
                status: 200,
                headers: Vec::new(),
                content_type: "application/json",
                body: r#"{"ok":true}"#,
            })),
            seen: Arc::default(),
        };
        let state = provider.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let state = state.clone();
            async move {
                state.seen.lock().unwrap().push(Seen {
                    path: request.uri().path().to_owned(),
                    query: request.uri().query().unwrap_or_default().to_owned(),
                    headers: request.headers().clone(),
                });
                let canned = state.answer.lock().unwrap().clone();
                let mut response =
                    (StatusCode::from_u16(canned.status).unwrap(), canned.body).into_response();
                let headers = response.headers_mut();
                headers.insert("content-type", canned.content_type.parse().unwrap());
                for (name, value) in canned.headers {
                    headers.append(name, value.parse().unwrap());
                }
                response
            }
        });
        (provider, serve_fake(app).await)
    }

    fn answer_with(&self, canned: Canned) {
        *self.answer.lock().unwrap() = canned;
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

/// One documented answer of one service, and what Keyward must make of it.
struct Case {
    service: &'static str,
    shape: &'static str,
    method: Method,
    /// The path and query the client sends under `/proxy/{service}` (cacheable where the
    /// service caches anything, so "never cached" is proven).
    path: &'static str,
    answer: Canned,
    /// What the service's rules say the answer means.
    means: &'static str,
    /// The key's flag afterwards: `rejected`, `quota_limited` or none.
    flag: Option<&'static str>,
    /// What the client gets when it differs from the provider's body (`{kw}` is the
    /// service's proxy URL): rewritten links.
    client_body: Option<&'static str>,
}

fn canned(status: u16, body: &'static str) -> Canned {
    Canned {
        status,
        headers: Vec::new(),
        content_type: "application/json",
        body,
    }
}

fn with_headers(mut answer: Canned, headers: &[(&'static str, &'static str)]) -> Canned {
    answer.headers = headers.to_vec();
    answer
}

fn text(status: u16, body: &'static str) -> Canned {
    Canned {
        content_type: "text/plain; charset=utf-8",
        ..canned(status, body)
    }
}

#[allow(clippy::too_many_lines, reason = "the table of documented answers")]
fn cases() -> Vec<Case> {
    let case = |service, shape, method, path, answer, means, flag| Case {
        service,
        shape,
        method,
        path,
        answer,
        means,
        flag,
        client_body: None,
    };
    let chat = "/v1/chat/completions";
    let rejected = Some("rejected");
    let quota = Some("quota_limited");
    vec![
        // OpenAI
        case(
            "openai",
            "401 invalid_api_key",
            Method::POST,
            chat,
            canned(
                401,
                r#"{"error":{"message":"Incorrect API key provided: sk-pr****abcd.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "openai",
            "429 insufficient_quota",
            Method::POST,
            chat,
            canned(
                429,
                r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
            ),
            "quota_limited",
            quota,
        ),
        case(
            "openai",
            "429 rate_limit_exceeded, retry-after 1 s",
            Method::POST,
            chat,
            with_headers(
                canned(
                    429,
                    r#"{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}"#,
                ),
                &[("retry-after", "1")],
            ),
            "throttled",
            None,
        ),
        case(
            "openai",
            "429 rate_limit_exceeded, requests spent for 6 minutes",
            Method::POST,
            chat,
            with_headers(
                canned(
                    429,
                    r#"{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}"#,
                ),
                &[
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "6m0s"),
                ],
            ),
            "throttled",
            quota,
        ),
        case(
            "openai",
            "200 with the request allowance spent (x-ratelimit-*)",
            Method::POST,
            chat,
            with_headers(
                canned(
                    200,
                    r#"{"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
                ),
                &[
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "6m0s"),
                ],
            ),
            "success",
            quota,
        ),
        case(
            "openai",
            "503 outage",
            Method::POST,
            chat,
            canned(
                503,
                r#"{"error":{"message":"The server is overloaded","type":"server_error"}}"#,
            ),
            "outage",
            None,
        ),
        case(
            "openai",
            "400 bad request",
            Method::POST,
            chat,
            canned(
                400,
                r#"{"error":{"message":"Unrecognized request argument","type":"invalid_request_error"}}"#,
            ),
            "unclassified",
            None,
        ),
        // Anthropic
        case(
            "anthropic",
            "401 authentication_error",
            Method::POST,
            "/v1/messages",
            canned(
                401,
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_011C"}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "anthropic",
            "529 overloaded_error",
            Method::POST,
            "/v1/messages",
            canned(
                529,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
            "outage",
            None,
        ),
        case(
            "anthropic",
            "429 rate_limit_error, retry-after 30 s",
            Method::POST,
            "/v1/messages",
            with_headers(
                canned(
                    429,
                    r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
                ),
                &[("retry-after", "30")],
            ),
            "throttled",
            quota,
        ),
        case(
            "anthropic",
            "400 billing_error (status UNCONFIRMED)",
            Method::POST,
            "/v1/messages",
            canned(
                400,
                r#"{"type":"error","error":{"type":"billing_error","message":"Your credit balance is too low"}}"#,
            ),
            "quota_limited",
            quota,
        ),
        // Gemini
        case(
            "gemini",
            "400 API_KEY_INVALID",
            Method::POST,
            "/v1beta/models/gemini-2.5-pro:generateContent",
            canned(
                400,
                r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "gemini",
            "429 per-day quota",
            Method::POST,
            "/v1beta/models/gemini-2.5-pro:generateContent",
            canned(
                429,
                r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}"#,
            ),
            "quota_limited",
            quota,
        ),
        case(
            "gemini",
            "429 per-minute quota, retryDelay 26s",
            Method::POST,
            "/v1beta/models/gemini-2.5-pro:generateContent",
            canned(
                429,
                r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"26s"}]}}"#,
            ),
            "throttled",
            quota,
        ),
        case(
            "gemini",
            "400 invalid argument",
            Method::POST,
            "/v1beta/models/gemini-2.5-pro:generateContent",
            canned(
                400,
                r#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#,
            ),
            "unclassified",
            None,
        ),
        // Mistral
        case(
            "mistral",
            "401 {detail: Unauthorized}",
            Method::POST,
            chat,
            canned(401, r#"{"detail":"Unauthorized"}"#),
            "rejected",
            rejected,
        ),
        case(
            "mistral",
            "401 {message: Unauthorized}",
            Method::POST,
            chat,
            canned(401, r#"{"message":"Unauthorized","request_id":"r1"}"#),
            "rejected",
            rejected,
        ),
        case(
            "mistral",
            "429 (body UNCONFIRMED)",
            Method::POST,
            chat,
            canned(429, r#"{"message":"Requests rate limit exceeded"}"#),
            "throttled",
            quota,
        ),
        // Groq
        case(
            "groq",
            "401 invalid_api_key",
            Method::POST,
            "/openai/v1/chat/completions",
            canned(
                401,
                r#"{"error":{"message":"Invalid API Key","type":"invalid_request_error","code":"invalid_api_key"}}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "groq",
            "429, retry-after 2 s, daily requests spent",
            Method::POST,
            "/openai/v1/chat/completions",
            with_headers(
                canned(
                    429,
                    r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
                ),
                &[
                    ("retry-after", "2"),
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "7h30m0s"),
                ],
            ),
            "throttled",
            quota,
        ),
        case(
            "groq",
            "429, retry-after 2 s",
            Method::POST,
            "/openai/v1/chat/completions",
            with_headers(
                canned(
                    429,
                    r#"{"error":{"message":"Rate limit reached","type":"tokens","code":"rate_limit_exceeded"}}"#,
                ),
                &[("retry-after", "2")],
            ),
            "throttled",
            None,
        ),
        // Cohere
        case(
            "cohere",
            "401 invalid api token",
            Method::POST,
            "/v2/chat",
            canned(401, r#"{"message":"invalid api token"}"#),
            "rejected",
            rejected,
        ),
        case(
            "cohere",
            "429 monthly trial limit (wording UNCONFIRMED)",
            Method::POST,
            "/v2/chat",
            canned(
                429,
                r#"{"message":"You are using a Trial key, which is limited to 1000 API calls / month."}"#,
            ),
            "quota_limited",
            quota,
        ),
        case(
            "cohere",
            "429 per-minute limit",
            Method::POST,
            "/v2/chat",
            canned(
                429,
                r#"{"message":"You are past the per minute request limit, please wait and try again later."}"#,
            ),
            "throttled",
            quota,
        ),
        case(
            "cohere",
            "200 check-api-key {valid: false} (UNCONFIRMED)",
            Method::POST,
            "/v1/check-api-key",
            canned(200, r#"{"valid":false}"#),
            "rejected",
            rejected,
        ),
        // Alpha Vantage: everything is HTTP 200.
        case(
            "alpha-vantage",
            "200 Information: daily limit",
            Method::GET,
            "/query?function=GLOBAL_QUOTE&symbol=IBM",
            canned(
                200,
                r#"{"Information":"Thank you for using Alpha Vantage! Please consider spreading out your free API requests more sparingly (1 request per second). You may subscribe to any of the premium plans at https://www.alphavantage.co/premium/ to lift the free key rate limit (25 requests per day), raise the per-second burst limit, and instantly unlock all premium endpoints"}"#,
            ),
            "quota_limited",
            quota,
        ),
        case(
            "alpha-vantage",
            "200 Note: the old per-minute notice",
            Method::GET,
            "/query?function=GLOBAL_QUOTE&symbol=IBM",
            canned(
                200,
                r#"{"Note":"Thank you for using Alpha Vantage! Our standard API call frequency is 5 calls per minute and 500 calls per day. Please visit https://www.alphavantage.co/premium/ if you would like to target a higher API call frequency."}"#,
            ),
            "throttled",
            quota,
        ),
        case(
            "alpha-vantage",
            "200 Error Message: apikey invalid",
            Method::GET,
            "/query?function=GLOBAL_QUOTE&symbol=IBM",
            canned(
                200,
                r#"{"Error Message":"the parameter apikey is invalid or missing. Please claim your free API key on (https://www.alphavantage.co/support/#api-key). It should take less than 20 seconds."}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "alpha-vantage",
            "200 Error Message: invalid call",
            Method::GET,
            "/query?function=GLOBAL_QUOTE&symbol=NOPE",
            canned(
                200,
                r#"{"Error Message":"Invalid API call. Please retry or visit the documentation (https://www.alphavantage.co/documentation/) for GLOBAL_QUOTE."}"#,
            ),
            "failed",
            None,
        ),
        case(
            "alpha-vantage",
            "200 Information: premium endpoint",
            Method::GET,
            "/query?function=GLOBAL_QUOTE&symbol=IBM",
            canned(
                200,
                r#"{"Information":"Thank you for using Alpha Vantage! This is a premium endpoint. You may subscribe to any of the premium plans at https://www.alphavantage.co/premium/ to instantly unlock all premium endpoints"}"#,
            ),
            "failed",
            None,
        ),
        // Polygon / Massive
        case(
            "polygon",
            "401 Unknown API Key",
            Method::GET,
            "/v3/reference/tickers/AAPL",
            canned(
                401,
                r#"{"status":"ERROR","request_id":"a1","error":"Unknown API Key"}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "polygon",
            "400 API Key was not provided",
            Method::GET,
            "/v3/reference/tickers/AAPL",
            canned(
                400,
                r#"{"status":"ERROR","request_id":"a1","error":"API Key was not provided"}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "polygon",
            "403 NOT_AUTHORIZED (plan)",
            Method::GET,
            "/v3/reference/tickers/AAPL",
            canned(
                403,
                r#"{"status":"NOT_AUTHORIZED","request_id":"a1","message":"You are not entitled to this data. Please upgrade your plan at https://polygon.io/pricing"}"#,
            ),
            "failed",
            None,
        ),
        case(
            "polygon",
            "429 per minute",
            Method::GET,
            "/v3/reference/tickers/AAPL",
            canned(
                429,
                r#"{"status":"ERROR","request_id":"a1","error":"You've exceeded the maximum requests per minute, please wait or upgrade your subscription to continue."}"#,
            ),
            "throttled",
            quota,
        ),
        case(
            "polygon",
            "429 with an empty body",
            Method::GET,
            "/v3/reference/tickers/AAPL",
            canned(429, ""),
            "throttled",
            quota,
        ),
        Case {
            client_body: Some(
                r#"{"results":[{"ticker":"A"}],"status":"OK","next_url":"{kw}/v3/reference/tickers?cursor=YWN0aXZlPXRydWU","alias":"{kw}/v2/x"}"#,
            ),
            ..case(
                "polygon",
                "200 with next_url (links)",
                Method::GET,
                "/v3/reference/tickers?active=true",
                with_headers(
                    canned(
                        200,
                        r#"{"results":[{"ticker":"A"}],"status":"OK","next_url":"https://api.polygon.io/v3/reference/tickers?cursor=YWN0aXZlPXRydWU","alias":"https://api.massive.com/v2/x"}"#,
                    ),
                    &[(
                        "link",
                        "<https://api.polygon.io/v3/reference/tickers?cursor=YWN0aXZlPXRydWU>; rel=\"next\"",
                    )],
                ),
                "success",
                None,
            )
        },
        // Finnhub
        case(
            "finnhub",
            "401 Invalid API key",
            Method::GET,
            "/api/v1/quote?symbol=AAPL",
            canned(401, r#"{"error":"Invalid API key."}"#),
            "rejected",
            rejected,
        ),
        case(
            "finnhub",
            "429 API limit reached (JSON)",
            Method::GET,
            "/api/v1/quote?symbol=AAPL",
            canned(
                429,
                r#"{"error":"API limit reached. Please try again later. Remaining Limit: 0"}"#,
            ),
            "throttled",
            quota,
        ),
        case(
            "finnhub",
            "429 API limit reached (plain text)",
            Method::GET,
            "/api/v1/quote?symbol=AAPL",
            text(
                429,
                "API limit reached. Please try again later. Remaining Limit: 0",
            ),
            "throttled",
            quota,
        ),
        case(
            "finnhub",
            "429 for a missing token",
            Method::GET,
            "/api/v1/quote?symbol=AAPL",
            canned(
                429,
                r#"{"error":"API limit reached. Please sign up for a free account to continue using the API."}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "finnhub",
            "403 premium endpoint (text UNCONFIRMED)",
            Method::GET,
            "/api/v1/quote?symbol=AAPL",
            canned(
                403,
                r#"{"error":"You don't have access to this resource."}"#,
            ),
            "failed",
            None,
        ),
        // Twelve Data: the envelope arrives with HTTP 200 or the real status.
        case(
            "twelve-data",
            "200 code 429: credits for the minute",
            Method::GET,
            "/quote?symbol=AAPL",
            canned(
                200,
                r#"{"code":429,"message":"You have run out of API credits for the current minute. 9 API credits were used, with the current limit being 8. Wait for the next minute or consider switching to a higher tier plan at https://twelvedata.com/pricing","status":"error"}"#,
            ),
            "throttled",
            quota,
        ),
        case(
            "twelve-data",
            "429 code 429: credits for the day",
            Method::GET,
            "/quote?symbol=AAPL",
            canned(
                429,
                r#"{"code":429,"message":"You have run out of API credits for the day. 801 API credits were used, with the current limit being 800.","status":"error"}"#,
            ),
            "quota_limited",
            quota,
        ),
        case(
            "twelve-data",
            "200 code 401: bad key",
            Method::GET,
            "/quote?symbol=AAPL",
            canned(
                200,
                r#"{"code":401,"message":"**apikey** parameter is incorrect or not specified.","status":"error"}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "twelve-data",
            "401 code 401: bad key",
            Method::GET,
            "/quote?symbol=AAPL",
            canned(
                401,
                r#"{"code":401,"message":"**apikey** parameter is incorrect or not specified.","status":"error"}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "twelve-data",
            "200 code 404: unknown symbol",
            Method::GET,
            "/quote?symbol=NOPE",
            canned(
                200,
                r#"{"code":404,"message":"**symbol** not found: NOPE","status":"error"}"#,
            ),
            "failed",
            None,
        ),
        // Financial Modeling Prep
        case(
            "fmp",
            "401 Invalid API KEY",
            Method::GET,
            "/stable/quote?symbol=AAPL",
            canned(
                401,
                r#"{"Error Message":"Invalid API KEY. Feel free to create a Free API Key."}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "fmp",
            "429 Limit Reach",
            Method::GET,
            "/stable/quote?symbol=AAPL",
            canned(
                429,
                r#"{"Error Message":"Limit Reach . Please upgrade your plan or visit our documentation for more details at https://site.financialmodelingprep.com/"}"#,
            ),
            "quota_limited",
            quota,
        ),
        case(
            "fmp",
            "200 Limit Reach",
            Method::GET,
            "/stable/quote?symbol=AAPL",
            canned(
                200,
                r#"{"Error Message":"Limit Reach . Please upgrade your plan or visit our documentation for more details at https://site.financialmodelingprep.com/"}"#,
            ),
            "quota_limited",
            quota,
        ),
        case(
            "fmp",
            "402 premium endpoint (status UNCONFIRMED)",
            Method::GET,
            "/stable/quote?symbol=AAPL",
            canned(
                402,
                r#"{"Error Message":"Premium Query Parameter: this value is not available under your current subscription."}"#,
            ),
            "failed",
            None,
        ),
        // Tiingo
        case(
            "tiingo",
            "401 Invalid token (status UNCONFIRMED)",
            Method::GET,
            "/iex/aapl",
            canned(401, r#"{"detail":"Invalid token."}"#),
            "rejected",
            rejected,
        ),
        case(
            "tiingo",
            "200 plain text: monthly symbols spent",
            Method::GET,
            "/iex/aapl",
            text(
                200,
                "You have run over your 500 symbol look up for this month. Please upgrade at https://api.tiingo.com/pricing to have your limits increased.",
            ),
            "quota_limited",
            quota,
        ),
        // Nasdaq Data Link
        case(
            "nasdaq-data-link",
            "400 QEAx01 bad key",
            Method::GET,
            "/api/v3/datasets/FRED/GDP.json",
            canned(
                400,
                r#"{"quandl_error":{"code":"QEAx01","message":"We could not recognize your API key: XXXX. Please check your API key and try again."}}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "nasdaq-data-link",
            "403 QEPx04 key required (error envelope)",
            Method::GET,
            "/api/v3/datasets/FRED/GDP.json",
            canned(
                403,
                r#"{"error":{"code":"QEPx04","message":"A valid API key is required to retrieve data."}}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "nasdaq-data-link",
            "403 QEPx02 premium data",
            Method::GET,
            "/api/v3/datasets/FRED/GDP.json",
            canned(
                403,
                r#"{"quandl_error":{"code":"QEPx02","message":"You do not have permission to view this dataset."}}"#,
            ),
            "failed",
            None,
        ),
        case(
            "nasdaq-data-link",
            "429 QELx02 daily limit",
            Method::GET,
            "/api/v3/datasets/FRED/GDP.json",
            canned(
                429,
                r#"{"quandl_error":{"code":"QELx02","message":"You have exceeded the API speed limit of 50000 calls per day."}}"#,
            ),
            "quota_limited",
            quota,
        ),
        case(
            "nasdaq-data-link",
            "429 QELx04 ten-minute limit",
            Method::GET,
            "/api/v3/datasets/FRED/GDP.json",
            canned(
                429,
                r#"{"quandl_error":{"code":"QELx04","message":"You have exceeded the API speed limit of 2000 calls per 10 minutes."}}"#,
            ),
            "quota_limited",
            quota,
        ),
        case(
            "nasdaq-data-link",
            "404 QECx02 not found",
            Method::GET,
            "/api/v3/datasets/FRED/GDP.json",
            canned(
                404,
                r#"{"quandl_error":{"code":"QECx02","message":"You have submitted an incorrect Quandl code."}}"#,
            ),
            "failed",
            None,
        ),
        // Marketstack
        case(
            "marketstack",
            "401 invalid_access_key",
            Method::GET,
            "/v2/eod?symbols=AAPL",
            canned(
                401,
                r#"{"error":{"code":"invalid_access_key","message":"You have not supplied a valid API Access Key."}}"#,
            ),
            "rejected",
            rejected,
        ),
        case(
            "marketstack",
            "429 too_many_requests: monthly volume",
            Method::GET,
            "/v2/eod?symbols=AAPL",
            canned(
                429,
                r#"{"error":{"code":"too_many_requests","message":"The given user account has reached its monthly allowed request volume."}}"#,
            ),
            "quota_limited",
            quota,
        ),
        case(
            "marketstack",
            "429 rate_limit_reached: per second",
            Method::GET,
            "/v2/eod?symbols=AAPL",
            canned(
                429,
                r#"{"error":{"code":"rate_limit_reached","message":"The given user account has reached the rate limit."}}"#,
            ),
            "throttled",
            None,
        ),
        case(
            "marketstack",
            "403 function_access_restricted",
            Method::GET,
            "/v2/eod?symbols=AAPL",
            canned(
                403,
                r#"{"error":{"code":"function_access_restricted","message":"The current subscription plan does not support this API endpoint."}}"#,
            ),
            "failed",
            None,
        ),
        case(
            "marketstack",
            "418, fits no rule",
            Method::GET,
            "/v2/eod?symbols=AAPL",
            canned(418, r#"{"error":{"code":"teapot"}}"#),
            "unclassified",
            None,
        ),
        // Last: two retried calls open the key's circuit.
        case(
            "marketstack",
            "500 internal_error",
            Method::GET,
            "/v2/eod?symbols=AAPL",
            canned(
                500,
                r#"{"error":{"code":"internal_error","message":"An internal error occurred."}}"#,
            ),
            "outage",
            None,
        ),
    ]
}

/// The one key each service's fake expects (the value is never checked by format here).
fn real_key(service: &str) -> String {
    format!(
        "{}-REAL-key-0123456789abcdefABCDEF",
        service.replace('-', "")
    )
}

/// Sends one call with the app token in the service's own place.
async fn call(app: &TestApp, token: &str, case: &Case) -> reqwest::Response {
    let url = format!("{}/proxy/{}{}", app.base, case.service, case.path);
    let request = app
        .client
        .request(case.method.clone(), url)
        .header("x-keyward-token", token);
    let request = if case.method == Method::POST {
        request
            .header("content-type", "application/json")
            .body(r#"{"model":"gpt-5.4-mini","messages":[]}"#)
    } else {
        request
    };
    request.send().await.unwrap()
}

async fn key_flag(app: &TestApp, id: &str) -> Value {
    let (_, key) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    key["flag"].clone()
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits (up to 5 s: metrics follow the usage writer's batches) until the `/metrics`
/// series named `series` (name and labels) counts at least `n`.
async fn counted(app: &TestApp, series: &str, n: usize) -> bool {
    let line = format!("{series} ");
    for _ in 0..100 {
        let text = metrics(app).await;
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if count >= n {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn every_documented_answer_of_every_service_is_read_as_the_provider_means_it() {
    // Half past a minute on a Monday: "next minute" lapses are 30 s away, beyond a retry.
    let clock = Arc::new(ManualClock::new("2026-12-07T15:00:30Z".parse().unwrap()));
    let Some(app) = TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock).await
    else {
        return;
    };
    let (provider, base) = Provider::start().await;
    let cases = cases();
    let services: Vec<&str> = {
        let mut s: Vec<&str> = cases.iter().map(|c| c.service).collect();
        s.dedup();
        s
    };
    assert_eq!(services.len(), 14, "every built-in service has cases");
    let mut counts: std::collections::HashMap<(&str, &str), usize> = Default::default();
    for service in &services {
        app.point_service(service, &base).await;
        let key = app
            .create_key(service, "production", "fidelity", &real_key(service))
            .await;
        let id = key["id"].as_str().unwrap().to_owned();
        let token = app
            .app_token(json!({"name": format!("t-{service}"), "services": [service], "environments": ["production"]}))
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        for case in cases.iter().filter(|c| c.service == *service) {
            let what = format!("{} {}", case.service, case.shape);
            let (status, _) = app
                .call(Method::DELETE, &format!("/api/v1/keys/{id}/flag"), None)
                .await;
            assert!(
                status.is_success() || status == StatusCode::NOT_FOUND,
                "{what}: {status}"
            );
            provider.answer_with(case.answer.clone());
            let before = provider.calls();
            let response = call(&app, &token, case).await;
            assert_eq!(response.status().as_u16(), case.answer.status, "{what}");
            assert!(provider.calls() > before, "{what}: the provider was asked");
            let headers = response.headers().clone();
            for (name, value) in &case.answer.headers {
                if *name != "link" {
                    assert_eq!(headers[*name], *value, "{what}: the client sees {name}");
                }
            }
            let body = response.text().await.unwrap();
            let proxy_url = format!("{}/proxy/{}", app.base, case.service);
            match case.client_body {
                None => assert_eq!(body, case.answer.body, "{what}: the provider's own answer"),
                Some(expected) => {
                    assert_eq!(
                        body,
                        expected.replace("{kw}", &proxy_url),
                        "{what}: links rewritten"
                    );
                    assert!(
                        !body.contains("api.polygon.io") && !body.contains("api.massive.com"),
                        "{what}"
                    );
                    assert_eq!(
                        headers["link"],
                        format!(
                            "<{proxy_url}/v3/reference/tickers?cursor=YWN0aXZlPXRydWU>; rel=\"next\""
                        ),
                        "{what}: Link header rewritten"
                    );
                    assert_eq!(
                        headers["content-length"],
                        body.len().to_string().as_str(),
                        "{what}"
                    );
                }
            }
            assert!(!body.contains(&real_key(service)), "{what}: never the key");
            let flag = key_flag(&app, &id).await;
            match case.flag {
                None => assert!(flag.is_null(), "{what}: not flagged, got {flag}"),
                Some(kind) => assert_eq!(flag["kind"], kind, "{what}: {flag}"),
            }

            // Never cached unless it succeeded: the same call again is not answered from
            // the cache. A cached success gets its links rewritten from the cache too.
            let again = call(&app, &token, case).await;
            let hit = again
                .headers()
                .get("x-keyward-cache")
                .map(|v| v.to_str().unwrap().to_owned());
            if case.means == "success" && case.method == Method::GET {
                assert_eq!(hit.as_deref(), Some("hit"), "{what}: a success is cached");
                assert_eq!(
                    again.text().await.unwrap(),
                    body,
                    "{what}: the same links from the cache"
                );
            } else {
                assert_ne!(
                    hit.as_deref(),
                    Some("hit"),
                    "{what}: an error answer was cached"
                );
                let _ = again.text().await;
            }
            let n = counts.entry((case.service, case.means)).or_default();
            *n += 1;
            assert!(
                counted(
                    &app,
                    &format!(
                        "keyward_proxy_answers_total{{service=\"{}\",answer=\"{}\"}}",
                        case.service, case.means
                    ),
                    *n
                )
                .await,
                "{what}: /metrics does not count it as {}\n{}",
                case.means,
                metrics(&app).await
            );
        }
    }
}

/// Where each placement of `service` carries a value: header (with its prefix) or query.
fn carried(placement: &KeyPlacement, seen: &Seen) -> Option<String> {
    match placement {
        KeyPlacement::Header { name, prefix } => seen
            .headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix(prefix.as_str()))
            .map(str::to_owned),
        KeyPlacement::Query { name } => url::form_urlencoded::parse(seen.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned()),
    }
}

#[tokio::test]
async fn the_token_goes_where_every_sdk_puts_a_key_and_the_real_key_where_the_provider_wants_it() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let (provider, base) = Provider::start().await;
    let services = keyward_core::catalog::builtin_services().unwrap();
    assert_eq!(services.len(), 14);
    let mut places = 0;
    for service in &services {
        app.point_service(&service.id, &base).await;
        app.create_key(
            &service.id,
            "production",
            "placement",
            &real_key(&service.id),
        )
        .await;
        let token = app
            .app_token(json!({"name": format!("p-{}", service.id), "services": [service.id], "environments": ["production"]}))
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        for placement in std::iter::once(&service.auth).chain(&service.alternate_auth) {
            let mut url = format!("{}/proxy/{}/x/y?symbol=AAPL", app.base, service.id);
            let mut request = app.client.get(&url);
            match placement {
                KeyPlacement::Header { name, prefix } => {
                    request = request.header(name.as_str(), format!("{prefix}{token}"));
                }
                KeyPlacement::Query { name } => {
                    url = format!("{url}&{name}={token}");
                    request = app.client.get(&url);
                }
            }
            let response = request.send().await.unwrap();
            let what = format!("{} token in {placement:?}", service.id);
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "{what}: {}",
                response.text().await.unwrap()
            );
            let seen = provider.last();
            assert_eq!(seen.path, "/x/y", "{what}");
            assert_eq!(
                carried(&service.auth, &seen).as_deref(),
                Some(real_key(&service.id).as_str()),
                "{what}: the real key arrives where the provider expects it"
            );
            let everything = format!("{:?} {}", seen.headers, seen.query);
            assert!(
                !everything.contains(&token),
                "{what}: the app token never leaves Keyward"
            );
            for other in &service.alternate_auth {
                if other != &service.auth {
                    assert_eq!(carried(other, &seen), None, "{what}: nothing in {other:?}");
                }
            }
            places += 1;
        }
    }
    let documented: usize = services.iter().map(|s| 1 + s.alternate_auth.len()).sum();
    assert_eq!(places, documented, "every documented placement was tried");
}

#[tokio::test]
async fn enormous_and_truncated_answers_pass_through_without_stalling_anyone() {
    use axum::body::Body;
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    // 9 MiB of JSON from an LLM (beyond what the usage reader keeps), 1 MiB from Alpha
    // Vantage (beyond what the answer rules read), and a body cut off mid-way.
    let big_llm = Arc::new(format!(
        "{{\"pad\":\"{}\",\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":1}}}}",
        "x".repeat(9 * 1024 * 1024)
    ));
    let big_av = Arc::new(format!(
        "{{\"Information\":\"{}\"}}",
        "rate limit ".repeat(100_000)
    ));
    let (llm, av) = (big_llm.clone(), big_av.clone());
    let fake = axum::Router::new().fallback(move |request: Request| {
        let (llm, av) = (llm.clone(), av.clone());
        async move {
            match request.uri().path() {
                "/v1/chat/completions" => {
                    ([("content-type", "application/json")], (*llm).clone()).into_response()
                }
                "/query" => ([("content-type", "application/json")], (*av).clone()).into_response(),
                "/v1/truncated" => {
                    // Headers and half a body go out; then the connection breaks.
                    let body = futures_util::stream::unfold(0, |step| async move {
                        match step {
                            0 => Some((Ok("{\"usage\":{\"prompt_tok"), 1)),
                            1 => {
                                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                                Some((Err(std::io::Error::other("connection reset")), 2))
                            }
                            _ => None,
                        }
                    });
                    (
                        [("content-type", "application/json")],
                        Body::from_stream(body),
                    )
                        .into_response()
                }
                _ => axum::Json(json!({"object": "list", "data": []})).into_response(),
            }
        }
    });
    let base = serve_fake(fake).await;
    for service in ["openai", "alpha-vantage"] {
        app.point_service(service, &base).await;
        app.create_key(service, "production", "big", &real_key(service))
            .await;
    }
    let token = app
        .app_token(json!({"name": "big", "services": ["openai", "alpha-vantage"], "environments": ["production"]}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let models = || {
        app.client
            .get(format!("{}/proxy/openai/v1/models", app.base))
            .bearer_auth(&token)
            .send()
    };
    // The enormous answer's headers are in; its body is not read yet. Other calls are
    // served meanwhile (were it stalling them, these would never answer).
    let enormous = app
        .client
        .post(format!("{}/proxy/openai/v1/chat/completions", app.base))
        .bearer_auth(&token)
        .json(&json!({"model": "gpt-5.4-mini", "messages": []}))
        .send()
        .await
        .unwrap();
    assert!(enormous.headers().get("content-length").is_some());
    for _ in 0..5 {
        assert_eq!(models().await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        enormous.text().await.unwrap(),
        *big_llm,
        "every byte, unchanged"
    );

    let av = app
        .client
        .get(format!(
            "{}/proxy/alpha-vantage/query?function=GLOBAL_QUOTE&symbol=IBM",
            app.base
        ))
        .header("x-keyward-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(av.status(), StatusCode::OK);
    assert_eq!(
        av.text().await.unwrap(),
        *big_av,
        "too large to judge: passed on as it is"
    );

    // A body that breaks off breaks off for the client too (never a shorter body that
    // looks whole), whether before or after the headers reached it.
    let cut = app
        .client
        .get(format!("{}/proxy/openai/v1/truncated", app.base))
        .bearer_auth(&token)
        .send()
        .await;
    match cut {
        Err(_) => {}
        Ok(response) => assert!(
            response.text().await.is_err(),
            "a truncated body looked whole"
        ),
    }
    // The proxy keeps serving.
    assert_eq!(models().await.unwrap().status(), StatusCode::OK);
    assert!(
        counted(&app, "keyward_proxy_uninspected_bodies_total", 1).await,
        "{}",
        metrics(&app).await
    );
}

#[tokio::test]
async fn behind_a_reverse_proxy_links_lead_to_the_public_url_and_joined_links_still_work() {
    let settings = keyward_server::config::RawSettings {
        public_url: Some("https://keyward.example.com/gw/".into()),
        ..Default::default()
    };
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, settings).await else {
        return;
    };
    let (provider, base) = Provider::start().await;
    app.point_service("polygon", &base).await;
    app.create_key("polygon", "production", "main", &real_key("polygon"))
        .await;
    let token = app
        .app_token(json!({"name": "gw", "services": ["polygon"], "environments": ["production"]}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    provider.answer_with(Canned {
        status: 200,
        headers: vec![("location", "https://api.polygon.io/v3/moved")],
        content_type: "application/json",
        body: r#"{"status":"OK","results":[],"next_url":"https://api.polygon.io/v3/reference/tickers?cursor=c2"}"#,
    });
    let page = app
        .client
        .get(format!(
            "{}/proxy/polygon/v3/reference/tickers?market=stocks",
            app.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.headers()["location"],
        "https://keyward.example.com/gw/proxy/polygon/v3/moved"
    );
    let body: Value = page.json().await.unwrap();
    assert_eq!(
        body["next_url"],
        "https://keyward.example.com/gw/proxy/polygon/v3/reference/tickers?cursor=c2"
    );
    // A client that keeps only the link's path and joins it onto its base URL (the Polygon
    // SDK does) arrives, after the reverse proxy drops `/gw`, at the repeated prefix.
    let joined = app
        .client
        .get(format!(
            "{}/proxy/polygon/gw/proxy/polygon/v3/reference/tickers?cursor=c2",
            app.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(joined.status(), StatusCode::OK);
    let seen = provider.last();
    assert_eq!(seen.path, "/v3/reference/tickers");
    assert_eq!(seen.query, "cursor=c2");
}

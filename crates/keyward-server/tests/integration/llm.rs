//! LLM metering end to end: Anthropic and Gemini usage read from JSON and SSE, streams the
//! client abandons, tokens per minute, and money budgets under heavy concurrency.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fake_llm::{ANTHROPIC_KEY, FakeLlm, GEMINI_KEY, usage};
use crate::helpers::{Backend, OPENAI_KEY, TestApp};

pub struct Llms {
    pub app: TestApp,
    pub fake: FakeLlm,
    /// An app token for all three services in production.
    pub token: String,
    /// Key ids by service.
    pub openai_key: String,
    pub anthropic_key: String,
    pub gemini_key: String,
}

impl Llms {
    pub async fn start() -> Self {
        let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
        let (fake, base) = FakeLlm::start().await;
        let mut ids = Vec::new();
        for (service, secret) in [
            ("openai", OPENAI_KEY),
            ("anthropic", ANTHROPIC_KEY),
            ("gemini", GEMINI_KEY),
        ] {
            app.point_service(service, &base).await;
            let key = app.create_key(service, "production", "main", secret).await;
            ids.push(key["id"].as_str().unwrap().to_owned());
        }
        let token = app
            .app_token(json!({"name": "llm-app", "services": ["openai", "anthropic", "gemini"], "environments": ["production"]}))
            .await;
        let [openai_key, anthropic_key, gemini_key] = <[String; 3]>::try_from(ids).unwrap();
        Self {
            app,
            fake,
            token: token["token"].as_str().unwrap().to_owned(),
            openai_key,
            anthropic_key,
            gemini_key,
        }
    }

    pub fn url(&self, rest: &str) -> String {
        format!("{}/proxy/{rest}", self.app.base)
    }

    pub async fn anthropic(&self, stream: bool, hold: bool) -> reqwest::Response {
        let mut request = self
            .app
            .client
            .post(self.url("anthropic/v1/messages"))
            .header("x-api-key", &self.token)
            .header("anthropic-version", "2023-06-01")
            .json(
                &json!({"model": "claude-sonnet-4-20250514", "max_tokens": 256, "stream": stream,
                          "messages": [{"role": "user", "content": "NVDA?"}]}),
            );
        if hold {
            request = request.header("x-test-hold", "1");
        }
        request.send().await.unwrap()
    }

    pub async fn gemini(&self, stream: bool) -> reqwest::Response {
        let path = if stream {
            "gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        } else {
            "gemini/v1beta/models/gemini-2.5-pro:generateContent"
        };
        self.app
            .client
            .post(self.url(path))
            .header("x-goog-api-key", &self.token)
            .json(&json!({"contents": [{"parts": [{"text": "MSFT?"}]}], "generationConfig": {"maxOutputTokens": 512}}))
            .send()
            .await
            .unwrap()
    }

    pub async fn openai(&self, token: &str, body: &Value) -> reqwest::Response {
        self.app
            .client
            .post(self.url("openai/v1/chat/completions"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Per-minute usage totals for the query, once they count `requests` calls.
    pub async fn usage(&self, query: &str, requests: u64) -> Value {
        self.app
            .usage_until(&format!("granularity=minute&{query}"), requests)
            .await["totals"]
            .clone()
    }
}

fn assert_usd(actual: &Value, expected: f64) {
    let actual = actual.as_f64().unwrap();
    assert!(
        (actual - expected).abs() < 1e-12,
        "cost {actual} != {expected}"
    );
}

#[tokio::test]
async fn anthropic_and_gemini_calls_cost_the_same_streamed_or_not() {
    let s = Llms::start().await;
    let plain: Value = s.anthropic(false, false).await.json().await.unwrap();
    assert_eq!(plain["content"][0]["text"], "Bullish", "{plain}");
    let streamed = s.anthropic(true, false).await;
    assert_eq!(streamed.status(), StatusCode::OK);
    let streamed = streamed.text().await.unwrap();
    assert!(
        streamed.contains("event: message_delta") && streamed.contains("message_stop"),
        "the stream passes through whole: {streamed}"
    );
    let totals = s.usage(&format!("key={}", s.anthropic_key), 2).await;
    assert_eq!(
        (
            &totals["input_tokens"],
            &totals["cached_tokens"],
            &totals["output_tokens"]
        ),
        (&json!(24), &json!(200), &json!(6)),
        "{totals}"
    );
    assert_usd(&totals["cost_usd"], 2.0 * usage::ANTHROPIC_COST);

    let plain: Value = s.gemini(false).await.json().await.unwrap();
    assert_eq!(
        plain["candidates"][0]["content"]["parts"][0]["text"],
        "Bullish"
    );
    let streamed = s.gemini(true).await.text().await.unwrap();
    assert_eq!(streamed.matches("data: ").count(), 2, "{streamed}");
    let totals = s.usage(&format!("key={}", s.gemini_key), 2).await;
    assert_eq!(
        (&totals["input_tokens"], &totals["output_tokens"]),
        (&json!(40), &json!(20)),
        "the stream's last totals count once, thinking tokens included: {totals}"
    );
    assert_usd(&totals["cost_usd"], 2.0 * usage::GEMINI_COST);
    assert_eq!(totals["errors"], 0);
}

#[tokio::test]
async fn a_stream_the_client_abandons_still_records_what_was_seen() {
    let s = Llms::start().await;
    let mut response = s.anthropic(true, true).await;
    let first = response.chunk().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("message_start"),
        "the upstream's first event arrives before the stream ends"
    );
    drop(response);
    // message_start said 12 input, 100 cache reads and 1 output token so far.
    let totals = s.usage(&format!("key={}", s.anthropic_key), 1).await;
    assert_eq!(
        (
            &totals["input_tokens"],
            &totals["cached_tokens"],
            &totals["output_tokens"]
        ),
        (&json!(12), &json!(100), &json!(1)),
        "{totals}"
    );
    assert_usd(&totals["cost_usd"], 0.000_081);
}

#[tokio::test]
async fn tokens_per_minute_are_counted_after_the_answer_and_refused_before_the_next_call() {
    let s = Llms::start().await;
    let (status, key) = s
        .app
        .call(
            Method::PATCH,
            &format!("/api/v1/keys/{}", s.openai_key),
            Some(json!({"limits": [{"max": 10, "unit": "tokens", "window_seconds": 60}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    let chat = json!({"model": "gpt-5.4-mini", "messages": [{"role": "user", "content": "TSLA?"}]});
    // Each call uses 6 tokens: the second still finds room, the third does not.
    for _ in 0..2 {
        assert_eq!(s.openai(&s.token, &chat).await.status(), StatusCode::OK);
    }
    let before = s.fake.requests();
    let refused = s.openai(&s.token, &chat).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exhausted");
    assert_eq!(s.fake.requests(), before, "refused before the upstream");
}

#[tokio::test]
async fn a_budget_is_never_overshot_by_a_thousand_concurrent_calls() {
    const CALLS: usize = 1000;
    const BUDGET_USD: f64 = 0.005;
    let s = Llms::start().await;
    let created = s
        .app
        .app_token(
            json!({"name": "metered", "services": ["openai"], "environments": ["production"],
                          "budget": {"limit_usd": BUDGET_USD, "period": "day"}}),
        )
        .await;
    let token = created["token"].as_str().unwrap().to_owned();
    // The fake spends the whole allowance (5 in, 100 out) and takes 50 ms, so calls overlap.
    let chat = json!({"model": "gpt-5.4-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "AMD?"}]});
    let body_bytes = serde_json::to_vec(&chat).unwrap().len() as f64;
    let max_cost = (body_bytes * 0.75 + 100.0 * 4.50) / 1e6;
    let actual_cost = (5.0 * 0.75 + 100.0 * 4.50) / 1e6;

    let calls = (0..CALLS).map(|_| {
        let (s, token, chat) = (&s, &token, &chat);
        async move {
            let response = s.openai(token, chat).await;
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            (status, body)
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let served = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    for (status, body) in &results {
        if *status != StatusCode::OK {
            assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
            assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
        }
    }
    assert!(served >= 1, "the budget admits what fits");
    assert_eq!(
        s.fake.completions.load(std::sync::atomic::Ordering::SeqCst),
        served,
        "refused calls never reached the provider"
    );
    let spent = served as f64 * actual_cost;
    assert!(
        spent <= BUDGET_USD + max_cost,
        "{served} calls spent ${spent}: more than the ${BUDGET_USD} budget plus one call's maximum ${max_cost}"
    );
    let id = created["id"].as_str().unwrap();
    let totals = s.usage(&format!("token={id}"), CALLS as u64).await;
    assert_eq!(totals["errors"], (CALLS - served) as u64, "{totals}");
    assert!(totals["cost_usd"].as_f64().unwrap() <= BUDGET_USD + max_cost);
}

#[tokio::test]
async fn metrics_count_calls_by_service_and_outcome_without_ids_or_client_input() {
    let s = Llms::start().await;
    let chat = json!({"model": "gpt-5.4-mini", "messages": [{"role": "user", "content": "IBM?"}]});
    assert_eq!(s.openai(&s.token, &chat).await.status(), StatusCode::OK);
    let refused = s.openai("kwp_nope_nope", &chat).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let made_up = s
        .app
        .client
        .get(s.url("evil-service-name/x"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(made_up.status(), StatusCode::NOT_FOUND);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let response = s
            .app
            .client
            .get(format!("{}/metrics", s.app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let text = response.text().await.unwrap();
        if text.contains("keyward_proxy_refusals_total{code=\"service_not_found\"}") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never showed the calls:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for line in [
        r#"keyward_proxy_requests_total{service="openai",outcome="success",cache="none"} 1"#,
        r#"keyward_proxy_requests_total{service="openai",outcome="refused",cache="none"} 1"#,
        r#"keyward_proxy_requests_total{service="unknown",outcome="refused",cache="none"} 1"#,
        r#"keyward_proxy_refusals_total{code="invalid_token"} 1"#,
        r#"keyward_proxy_tokens_total{service="openai",kind="output"} 1"#,
        r#"keyward_proxy_cost_nanodollars_total{service="openai"} 8250"#,
        "keyward_proxy_events_dropped_total 0",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    for secretish in [
        "evil-service-name",
        s.openai_key.as_str(),
        "kwp_",
        "chat/completions",
    ] {
        assert!(!text.contains(secretish), "{secretish} in metrics:\n{text}");
    }
}

/// A SIGTERM right after a burst of calls: the usage still queued for the batch writer is
/// written before the store closes.
#[tokio::test]
async fn a_graceful_shutdown_writes_the_usage_still_queued() {
    use crate::helpers::{Process, cli_token};
    const CALLS: u64 = 25;
    let (_fake, upstream) = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = cli_token(dir.path(), &[]);
    let server = Process::serve(dir.path(), &[], "before-stop");
    let api = |method, path: &'static str, body| server.call(&admin, method, path, Some(body));
    let (status, _) = api(
        Method::PATCH,
        "/api/v1/services/openai",
        json!({"base_url": upstream}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, key) = api(Method::POST, "/api/v1/keys", json!({"service": "openai", "environment": "production", "alias": "main", "secret": OPENAI_KEY})).await;
    let (_, token) = api(
        Method::POST,
        "/api/v1/app-tokens",
        json!({"name": "app", "services": ["openai"], "environments": ["production"]}),
    )
    .await;
    let chat = json!({"model": "gpt-5.4-mini", "messages": [{"role": "user", "content": "ORCL?"}]});
    for _ in 0..CALLS {
        let (status, _) = server
            .call(
                token["token"].as_str().unwrap(),
                Method::POST,
                "/proxy/openai/v1/chat/completions",
                Some(chat.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    server.stop();

    let server = Process::serve(dir.path(), &[], "after-stop");
    let (_, usage) = server
        .call(
            &admin,
            Method::GET,
            &format!("/api/v1/usage?key={}", key["id"].as_str().unwrap()),
            None,
        )
        .await;
    server.stop();
    assert_eq!(usage["totals"]["requests"], CALLS, "{usage}");
    assert_usd(
        &usage["totals"]["cost_usd"],
        CALLS as f64 * usage::OPENAI_COST,
    );
}

#[tokio::test]
async fn a_model_without_a_price_is_charged_at_the_dearest_never_free_and_counted_as_unpriced() {
    let s = Llms::start().await;
    let ask = |model: &str| {
        s.app
            .client
            .post(s.url("anthropic/v1/messages"))
            .header("x-api-key", &s.token)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    // Opus is Anthropic's dearest listed model; an unknown one costs what Opus would.
    assert_eq!(
        ask("claude-opus-4-5").await.unwrap().status(),
        StatusCode::OK
    );
    let priced = s.usage(&format!("key={}", s.anthropic_key), 1).await;
    assert_eq!(priced["unpriced"], 0, "{priced}");
    assert_eq!(ask("claude-next-9").await.unwrap().status(), StatusCode::OK);
    let both = s.usage(&format!("key={}", s.anthropic_key), 2).await;
    assert_eq!(both["unpriced"], 1, "{both}");
    let (priced_cost, both_cost) = (
        priced["cost_usd"].as_f64().unwrap(),
        both["cost_usd"].as_f64().unwrap(),
    );
    assert!(priced_cost > 0.0);
    assert!(
        (both_cost - 2.0 * priced_cost).abs() < 1e-12,
        "the unpriced call cost {} (Opus: {priced_cost})",
        both_cost - priced_cost
    );
    let metrics = s
        .app
        .client
        .get(format!("{}/metrics", s.app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("keyward_proxy_unpriced_calls_total{service=\"anthropic\"} 1"),
        "{metrics}"
    );
}

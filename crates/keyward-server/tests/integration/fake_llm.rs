//! A local stand-in for OpenAI, Anthropic and Gemini: answers in each provider's own shapes
//! (plain JSON and Server-Sent Events, with usage where the real API puts it) and accepts
//! only the real keys, so a call that works proves Keyward injected the right key where
//! that provider expects it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::helpers::{OPENAI_KEY, serve_fake};

pub const ANTHROPIC_KEY: &str = "sk-ant-api03-Qm7vT2xK9pLw4RzN8cYb3HsJf6UdGa1EoVi5Xt0BnMqWkZy-ArLe_9PuSgCh7DjFo2NbTm4KxVw8RyQs3ZcLp6HvGu1AiEw-AA";
pub const GEMINI_KEY: &str = "AIzaSyD4rT8vKq2Lm9Xw3Np7Zc6Bh1Fj5Gs0Ye8";

/// Usage the fake reports, and what the pricing table makes of it.
pub mod usage {
    /// gpt-5.4-mini: 5 × $0.75/M + 1 × $4.50/M.
    pub const OPENAI_COST: f64 = 0.000_008_25;
    /// claude-sonnet-4: 12 × $3/M + 100 cached × $0.30/M + 3 × $15/M.
    pub const ANTHROPIC_COST: f64 = 0.000_111;
    /// gemini-2.5-pro: 20 × $1.25/M + (4 + 6 thinking) × $10/M.
    pub const GEMINI_COST: f64 = 0.000_125;
}

#[derive(Clone, Default)]
pub struct FakeLlm {
    /// Every request that reached the fake, accepted or not.
    pub requests: Arc<AtomicUsize>,
    /// Requests answered with a completion (right key).
    pub completions: Arc<AtomicUsize>,
}

impl FakeLlm {
    pub async fn start() -> (Self, String) {
        let fake = Self::default();
        let handler = fake.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let handler = handler.clone();
            async move { handler.answer(request).await }
        });
        (fake, serve_fake(app).await)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    async fn answer(&self, request: Request) -> Response {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
            .await
            .unwrap_or_default();
        let json: Value = serde_json::from_slice(&body).unwrap_or_default();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let hold = parts.headers.contains_key("x-test-hold");
        let path = parts.uri.path();
        if path.starts_with("/v1/messages") {
            if header("x-api-key") != ANTHROPIC_KEY {
                return error(
                    StatusCode::UNAUTHORIZED,
                    json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
                );
            }
            self.completions.fetch_add(1, Ordering::SeqCst);
            return anthropic(&json, hold);
        }
        if let Some(rest) = path.strip_prefix("/v1beta/models/") {
            if header("x-goog-api-key") != GEMINI_KEY {
                return error(
                    StatusCode::FORBIDDEN,
                    json!({"error": {"code": 403, "message": "API key not valid.", "status": "PERMISSION_DENIED"}}),
                );
            }
            self.completions.fetch_add(1, Ordering::SeqCst);
            return gemini(rest.contains(":streamGenerateContent"));
        }
        if header("authorization") != format!("Bearer {OPENAI_KEY}") {
            return error(
                StatusCode::UNAUTHORIZED,
                json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "code": "invalid_api_key"}}),
            );
        }
        self.completions.fetch_add(1, Ordering::SeqCst);
        if path.ends_with("/chat/completions") {
            return openai_chat(&json).await;
        }
        error(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": "unknown path"}}),
        )
    }
}

fn error(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn sse(events: Vec<String>, then_hold: bool) -> Response {
    let stream = futures_util::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, std::io::Error>(Bytes::from(e))),
    );
    let body = if then_hold {
        // Sends what it has, then never finishes: the client has to walk away.
        Body::from_stream(futures_util::StreamExt::chain(
            stream,
            futures_util::stream::pending(),
        ))
    } else {
        Body::from_stream(stream)
    };
    ([("content-type", "text/event-stream")], body).into_response()
}

/// OpenAI chat completions. With `max_tokens`, the answer takes 50 ms and uses the whole
/// allowance: the most expensive call the request allows, for the budget tests.
async fn openai_chat(request: &Value) -> Response {
    let model = "gpt-5.4-mini-2026-03-17";
    let output = match request["max_tokens"].as_u64() {
        Some(max) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            max
        }
        None => 1,
    };
    let usage =
        json!({"prompt_tokens": 5, "completion_tokens": output, "total_tokens": 5 + output});
    if request["stream"] != true {
        return axum::Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_764_000_000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Bullish"}, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |choices: Value, usage: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_764_000_000, "model": model, "choices": choices, "usage": usage})
        )
    };
    let mut events = vec![
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": "Bull"}, "finish_reason": null}]),
            Value::Null,
        ),
        chunk(
            json!([{"index": 0, "delta": {"content": "ish"}, "finish_reason": "stop"}]),
            Value::Null,
        ),
    ];
    if request["stream_options"]["include_usage"] == true {
        events.push(chunk(json!([]), usage));
    }
    events.push("data: [DONE]\n\n".to_owned());
    sse(events, false)
}

/// Anthropic messages: input and cache reads in `message_start`, the output count in
/// `message_delta`.
fn anthropic(request: &Value, hold: bool) -> Response {
    let model = request["model"]
        .as_str()
        .unwrap_or("claude-sonnet-4-20250514");
    let message = |content: Value, stop: Value, output: u64| {
        json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
               "stop_reason": stop, "stop_sequence": null,
               "usage": {"input_tokens": 12, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0, "output_tokens": output}})
    };
    if request["stream"] != true {
        return axum::Json(message(
            json!([{"type": "text", "text": "Bullish"}]),
            json!("end_turn"),
            3,
        ))
        .into_response();
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let start = event(
        "message_start",
        json!({"type": "message_start", "message": message(json!([]), Value::Null, 1)}),
    );
    if hold {
        return sse(vec![start], true);
    }
    sse(
        vec![
            start,
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Bullish"}}),
            ),
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            event(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 3}}),
            ),
            event("message_stop", json!({"type": "message_stop"})),
        ],
        false,
    )
}

/// Gemini generateContent; streams repeat growing `usageMetadata` totals.
fn gemini(stream: bool) -> Response {
    let answer = |text: &str, candidates: u64, thoughts: u64| {
        json!({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}],
               "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": candidates, "thoughtsTokenCount": thoughts,
                                 "totalTokenCount": 20 + candidates + thoughts},
               "modelVersion": "gemini-2.5-pro"})
    };
    if !stream {
        return axum::Json(answer("Bullish", 4, 6)).into_response();
    }
    sse(
        vec![
            format!("data: {}\r\n\r\n", answer("Bull", 1, 6)),
            format!("data: {}\r\n\r\n", answer("ish", 4, 6)),
        ],
        false,
    )
}

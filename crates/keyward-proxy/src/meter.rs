//! Reading LLM usage: what a request asks for (model, output allowance, streaming) and what
//! the answer reports (token counts), from JSON bodies and from Server-Sent Events alike —
//! both go through the same `observe`, so a streamed call and the same call unstreamed
//! record the same usage and cost.

use bytes::{Bytes, BytesMut};
use keyward_core::answer::AnswerClass;
use keyward_core::service::UsageFormat;
use keyward_core::usage::TokenUsage;
use serde_json::{Map, Value};

/// What an LLM request declares about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmRequest {
    pub model: Option<String>,
    /// The output allowance the request names (`max_tokens`, `max_completion_tokens`, …).
    pub max_output: Option<u64>,
    pub stream: bool,
    /// Keyward asked for the usage chunk the client did not (OpenAI `include_usage`), so
    /// that chunk must be removed from the stream before the client sees it.
    pub strip_usage_chunk: bool,
}

/// Reads an LLM request body; for an OpenAI chat stream that does not ask for usage, returns
/// a rewritten body that does (so the call can be metered) and marks the extra chunk for
/// removal.
pub fn inspect_request(
    format: UsageFormat,
    path: &str,
    body: &[u8],
) -> (LlmRequest, Option<Bytes>) {
    let mut request = LlmRequest::default();
    if format == UsageFormat::Gemini {
        // /v1beta/models/{model}:generateContent or :streamGenerateContent
        if let Some(rest) = path.split("/models/").nth(1) {
            let (model, method) = rest.split_once(':').unwrap_or((rest, ""));
            request.model = Some(model.to_owned());
            request.stream = method.starts_with("streamGenerateContent");
        }
    }
    let Ok(Value::Object(mut json)) = serde_json::from_slice::<Value>(body) else {
        return (request, None);
    };
    if let Some(model) = json.get("model").and_then(Value::as_str) {
        request.model = Some(model.to_owned());
    }
    request.max_output = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| json.get(*k).and_then(Value::as_u64))
        .or_else(|| {
            json.get("generationConfig")
                .and_then(|c| c.get("maxOutputTokens"))
                .and_then(Value::as_u64)
        });
    if json.get("stream").and_then(Value::as_bool) == Some(true) {
        request.stream = true;
    }
    let mut rewritten = None;
    if format == UsageFormat::Openai && request.stream && path.ends_with("/chat/completions") {
        let asked = json
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
        if !asked {
            let options = json
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(options) = options {
                options.insert("include_usage".into(), Value::Bool(true));
                if let Ok(body) = serde_json::to_vec(&json) {
                    rewritten = Some(Bytes::from(body));
                    request.strip_usage_chunk = true;
                }
            }
        }
    }
    (request, rewritten)
}

/// Largest JSON body kept to read its usage; bigger answers are passed on unread.
const JSON_KEEP_MAX: usize = 8 * 1024 * 1024;
/// Longest incomplete SSE event held back while waiting for its end.
const SSE_EVENT_MAX: usize = 1024 * 1024;

/// Accumulates usage from an answer as it streams past.
#[derive(Debug)]
pub struct UsageReader {
    format: UsageFormat,
    sse: bool,
    strip_usage_chunk: bool,
    /// JSON: the body so far. SSE: the incomplete tail of the current event.
    pending: BytesMut,
    overflowed: bool,
    pub tokens: Option<TokenUsage>,
    pub model: Option<String>,
    /// An error the provider sent inside a successful stream (Anthropic's `event: error`,
    /// e.g. `overloaded_error` mid-answer): what the answer really meant.
    pub stream_error: Option<AnswerClass>,
}

impl UsageReader {
    pub fn new(format: UsageFormat, sse: bool, strip_usage_chunk: bool) -> Self {
        Self {
            format,
            sse,
            strip_usage_chunk: strip_usage_chunk && sse,
            pending: BytesMut::new(),
            overflowed: false,
            tokens: None,
            model: None,
            stream_error: None,
        }
    }

    /// Whether the answer was too large to read its usage (passed through unmetered).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Whether the body the client gets may differ from the upstream's (so its length does).
    pub fn alters_body(&self) -> bool {
        self.strip_usage_chunk
    }

    /// Reads a chunk and returns what to pass on: the chunk itself, or for SSE the complete
    /// events it finishes (minus the usage chunk Keyward added).
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        if !self.sse {
            if !self.overflowed {
                if self.pending.len() + chunk.len() > JSON_KEEP_MAX {
                    self.overflowed = true;
                    self.pending = BytesMut::new();
                } else {
                    self.pending.extend_from_slice(&chunk);
                }
            }
            return chunk;
        }
        self.pending.extend_from_slice(&chunk);
        let Some(end) = last_event_end(&self.pending) else {
            if self.pending.len() > SSE_EVENT_MAX {
                // Not SSE as we know it: stop holding bytes back.
                self.overflowed = true;
                return self.pending.split().freeze();
            }
            return Bytes::new();
        };
        let complete = self.pending.split_to(end).freeze();
        if !self.strip_usage_chunk {
            self.observe_events(&complete);
            return complete;
        }
        let mut out = BytesMut::with_capacity(complete.len());
        for event in split_events(&complete) {
            let keep = match event_json(event) {
                Some(json) => {
                    let usage_only = json
                        .get("choices")
                        .and_then(Value::as_array)
                        .is_some_and(Vec::is_empty)
                        && json.get("usage").is_some_and(Value::is_object);
                    self.observe(&json);
                    !usage_only
                }
                None => true,
            };
            if keep {
                out.extend_from_slice(event);
            }
        }
        out.freeze()
    }

    /// Whatever is still held back (an unterminated last event) at the end of the stream.
    pub fn flush(&mut self) -> Bytes {
        if self.sse {
            let rest = self.pending.split().freeze();
            if let Some(json) = event_json(&rest) {
                self.observe(&json);
            }
            rest
        } else {
            Bytes::new()
        }
    }

    /// Reads a complete JSON body (non-streamed answers) once the stream has ended.
    pub fn finish(&mut self) {
        if self.sse || self.overflowed || self.pending.is_empty() {
            return;
        }
        let body = std::mem::take(&mut self.pending);
        // A JSON array holds a streamed answer's objects (Gemini without SSE).
        let is_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
        if is_array {
            if let Ok(items) = serde_json::from_slice::<Vec<UsageFields>>(&body) {
                items
                    .into_iter()
                    .for_each(|item| self.observe(&item.into_value()));
            }
        } else if let Ok(fields) = serde_json::from_slice::<UsageFields>(&body) {
            self.observe(&fields.into_value());
        }
    }

    fn observe_events(&mut self, events: &[u8]) {
        for event in split_events(events) {
            if let Some(data) = event_data(event)
                && let Ok(fields) = serde_json::from_str::<UsageFields>(&data)
            {
                self.observe(&fields.into_value());
            }
        }
    }

    /// Updates the counts from one JSON object: a whole answer or one streamed event.
    pub fn observe(&mut self, value: &Value) {
        let Value::Object(object) = value else { return };
        match self.format {
            UsageFormat::Openai | UsageFormat::Mistral => self.observe_openai(object),
            UsageFormat::Groq => {
                // Streams: `x_groq.usage` on the final chunk, without being asked.
                if let Some(Value::Object(x_groq)) = object.get("x_groq")
                    && let Some(usage) = x_groq.get("usage")
                {
                    let mut inner = Map::new();
                    inner.insert("usage".into(), usage.clone());
                    self.observe_openai(&inner);
                }
                self.observe_openai(object);
            }
            UsageFormat::Anthropic => {
                if let Some(Value::Object(error)) = object.get("error") {
                    self.stream_error = Some(anthropic_error_class(error));
                }
                self.observe_anthropic(object);
            }
            UsageFormat::Gemini => self.observe_gemini(object),
            UsageFormat::Cohere => self.observe_cohere(object),
        }
    }

    fn set_model(&mut self, object: &Map<String, Value>, field: &str) {
        if let Some(model) = object.get(field).and_then(Value::as_str) {
            self.model = Some(model.to_owned());
        }
    }

    fn observe_openai(&mut self, object: &Map<String, Value>) {
        // Responses API streams wrap the final answer: {"type":"response.completed","response":{…}}.
        if let Some(Value::Object(inner)) = object.get("response") {
            self.observe_openai(inner);
        }
        self.set_model(object, "model");
        let Some(Value::Object(usage)) = object.get("usage") else {
            return;
        };
        let number = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        // Chat Completions name them prompt/completion, Responses input/output.
        let (input, details, output) = if usage.contains_key("prompt_tokens") {
            (
                "prompt_tokens",
                "prompt_tokens_details",
                "completion_tokens",
            )
        } else {
            ("input_tokens", "input_tokens_details", "output_tokens")
        };
        let details = usage.get(details);
        let detail = |k: &str| number(details.and_then(|d| d.get(k)));
        let (prompt, cached, written) = (
            number(usage.get(input)),
            detail("cached_tokens"),
            detail("cache_write_tokens"),
        );
        // The prompt count includes cached and cache-write tokens, billed at their own
        // rates; reasoning tokens are inside the output count and billed as output.
        self.tokens = Some(TokenUsage {
            input: prompt.saturating_sub(cached).saturating_sub(written),
            cached_input: cached,
            cache_write: written,
            output: number(usage.get(output)),
        });
    }

    fn observe_anthropic(&mut self, object: &Map<String, Value>) {
        if let Some(Value::Object(message)) = object.get("message") {
            // message_start carries the message with its input usage.
            self.observe_anthropic(message);
        }
        self.set_model(object, "model");
        let Some(Value::Object(usage)) = object.get("usage") else {
            return;
        };
        let mut tokens = self.tokens.unwrap_or_default();
        let number = |k: &str| usage.get(k).and_then(Value::as_u64);
        // message_delta repeats counts cumulatively: every field present replaces the old.
        if let Some(n) = number("input_tokens") {
            tokens.input = n;
        }
        if let Some(n) = number("cache_read_input_tokens") {
            tokens.cached_input = n;
        }
        if let Some(n) = number("cache_creation_input_tokens") {
            tokens.cache_write = n;
        }
        if let Some(n) = number("output_tokens") {
            tokens.output = n;
        }
        self.tokens = Some(tokens);
    }

    fn observe_cohere(&mut self, object: &Map<String, Value>) {
        // Streams: the `message-end` event carries `delta.usage`.
        if let Some(Value::Object(delta)) = object.get("delta") {
            self.observe_cohere(delta);
        }
        let Some(Value::Object(usage)) = object.get("usage") else {
            return;
        };
        // Cohere bills `billed_units`; `tokens` also counts template tokens it does not
        // charge for. The SDK types the counts as floats.
        let Some(Value::Object(billed)) = usage.get("billed_units") else {
            return;
        };
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "token counts, clamped to be non-negative"
        )]
        let number = |k: &str| {
            billed
                .get(k)
                .and_then(Value::as_f64)
                .filter(|n| n.is_finite())
                .map_or(0, |n| n.max(0.0).round() as u64)
        };
        self.tokens = Some(TokenUsage {
            input: number("input_tokens"),
            cached_input: 0,
            cache_write: 0,
            output: number("output_tokens"),
        });
    }

    fn observe_gemini(&mut self, object: &Map<String, Value>) {
        self.set_model(object, "modelVersion");
        let Some(Value::Object(usage)) = object.get("usageMetadata") else {
            return;
        };
        let number = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
        let cached = number("cachedContentTokenCount");
        // Streams repeat growing totals; the last one seen is the answer's.
        self.tokens = Some(TokenUsage {
            input: (number("promptTokenCount") + number("toolUsePromptTokenCount"))
                .saturating_sub(cached),
            cached_input: cached,
            cache_write: 0,
            output: number("candidatesTokenCount") + number("thoughtsTokenCount"),
        });
    }
}

/// What an Anthropic error object means (its `type`, as the errors page lists them).
fn anthropic_error_class(error: &Map<String, Value>) -> AnswerClass {
    match error.get("type").and_then(Value::as_str) {
        Some("overloaded_error" | "api_error" | "timeout_error") => AnswerClass::Outage,
        Some("rate_limit_error") => AnswerClass::Throttled,
        Some("authentication_error" | "permission_error") => AnswerClass::Rejected,
        Some("billing_error") => AnswerClass::QuotaLimited,
        _ => AnswerClass::Failed,
    }
}

/// The end (exclusive) of the last complete event in `buffer`: after a blank line.
fn last_event_end(buffer: &[u8]) -> Option<usize> {
    let mut end = None;
    let mut i = 0;
    while i + 1 < buffer.len() {
        if buffer[i] == b'\n' && buffer[i + 1] == b'\n' {
            end = Some(i + 2);
            i += 2;
        } else if buffer[i] == b'\n' && buffer[i + 1] == b'\r' && buffer.get(i + 2) == Some(&b'\n')
        {
            end = Some(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    end
}

/// Complete events, each with its terminating blank line.
fn split_events(buffer: &[u8]) -> Vec<&[u8]> {
    let mut events = Vec::new();
    let mut start = 0;
    while let Some(len) = first_event_end(&buffer[start..]) {
        events.push(&buffer[start..start + len]);
        start += len;
    }
    if start < buffer.len() {
        events.push(&buffer[start..]);
    }
    events
}

fn first_event_end(buffer: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buffer.len() {
        if buffer[i] == b'\n' && buffer[i + 1] == b'\n' {
            return Some(i + 2);
        }
        if buffer[i] == b'\n' && buffer[i + 1] == b'\r' && buffer.get(i + 2) == Some(&b'\n') {
            return Some(i + 3);
        }
        i += 1;
    }
    None
}

/// The JSON in an event's `data:` lines, if any.
fn event_json(event: &[u8]) -> Option<Value> {
    serde_json::from_str(&event_data(event)?).ok()
}

/// An event's `data:` lines joined, unless there are none or it is OpenAI's `[DONE]`.
fn event_data(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() || data == ["[DONE]"] {
        return None;
    }
    Some(data.join("\n"))
}

/// The only top-level parts of an answer (or event) that usage is read from. Deserializing
/// into this skips everything else — the generated text above all — without building it,
/// which a whole `serde_json::Value` would (an allocation per string, array and object).
/// Each part stays a `Value`, so a part of an unexpected type is ignored by `observe`
/// rather than failing the whole read.
#[derive(Debug, Default, serde::Deserialize)]
struct UsageFields {
    model: Option<Value>,
    #[serde(rename = "modelVersion")]
    model_version: Option<Value>,
    usage: Option<Value>,
    #[serde(rename = "usageMetadata")]
    usage_metadata: Option<Value>,
    /// OpenAI Responses streams: `{"type":"response.completed","response":{…}}`.
    response: Option<Value>,
    /// Anthropic `message_start`: the message with its input usage.
    message: Option<Value>,
    /// Groq streams: `x_groq.usage` on the final chunk.
    x_groq: Option<Value>,
    /// Cohere `message-end`: `delta.usage` (only the usage is kept, never the text).
    delta: Option<DeltaUsage>,
    /// Anthropic `event: error` inside a stream.
    error: Option<Value>,
}

/// The usage inside a stream event's `delta`; the rest of it (generated text) is skipped.
#[derive(Debug, Default, serde::Deserialize)]
struct DeltaUsage {
    usage: Option<Value>,
}

impl UsageFields {
    /// The same parts as a JSON object, for [`UsageReader::observe`].
    fn into_value(self) -> Value {
        let parts = [
            ("model", self.model),
            ("modelVersion", self.model_version),
            ("usage", self.usage),
            ("usageMetadata", self.usage_metadata),
            ("response", self.response),
            ("message", self.message),
            ("x_groq", self.x_groq),
            ("error", self.error),
            (
                "delta",
                self.delta.and_then(|d| d.usage).map(|usage| {
                    let mut delta = Map::new();
                    delta.insert("usage".into(), usage);
                    Value::Object(delta)
                }),
            ),
        ];
        Value::Object(
            parts
                .into_iter()
                .filter_map(|(key, value)| Some((key.to_owned(), value?)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI_JSON: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-5.4-mini-2026-03-17",
        "choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],
        "usage":{"prompt_tokens":1536,"completion_tokens":58,"total_tokens":1594,"prompt_tokens_details":{"cached_tokens":1280}}}"#;

    fn openai_stream(with_usage: bool) -> String {
        let mut s = String::new();
        for (i, word) in ["Bullish", " crossover."].iter().enumerate() {
            s.push_str(&format!(
                "data: {{\"id\":\"c\",\"model\":\"gpt-5.4-mini-2026-03-17\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}}}}],\"usage\":null,\"n\":{i}}}\n\n"
            ));
        }
        if with_usage {
            s.push_str("data: {\"id\":\"c\",\"model\":\"gpt-5.4-mini-2026-03-17\",\"choices\":[],\"usage\":{\"prompt_tokens\":1536,\"completion_tokens\":58,\"prompt_tokens_details\":{\"cached_tokens\":1280}}}\n\n");
        }
        s.push_str("data: [DONE]\n\n");
        s
    }

    fn read(reader: &mut UsageReader, body: &str, chunk: usize) -> String {
        let mut out = Vec::new();
        for piece in body.as_bytes().chunks(chunk) {
            out.extend_from_slice(&reader.feed(Bytes::copy_from_slice(piece)));
        }
        out.extend_from_slice(&reader.flush());
        reader.finish();
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn streamed_and_unstreamed_openai_answers_meter_the_same() {
        let mut plain = UsageReader::new(UsageFormat::Openai, false, false);
        assert_eq!(
            read(&mut plain, OPENAI_JSON, 7),
            OPENAI_JSON,
            "JSON passes through untouched"
        );
        let expected = TokenUsage {
            input: 256,
            cached_input: 1280,
            cache_write: 0,
            output: 58,
        };
        assert_eq!(plain.tokens, Some(expected));
        for chunk in [1, 5, 64, 10_000] {
            let mut streamed = UsageReader::new(UsageFormat::Openai, true, false);
            assert_eq!(
                read(&mut streamed, &openai_stream(true), chunk),
                openai_stream(true)
            );
            assert_eq!(streamed.tokens, Some(expected), "chunk size {chunk}");
            assert_eq!(streamed.model.as_deref(), Some("gpt-5.4-mini-2026-03-17"));
        }
    }

    #[test]
    fn the_usage_chunk_keyward_asked_for_is_removed() {
        let body = br#"{"model":"gpt-5.4-mini","stream":true,"messages":[]}"#;
        let (request, rewritten) =
            inspect_request(UsageFormat::Openai, "/v1/chat/completions", body);
        assert!(request.stream && request.strip_usage_chunk);
        let rewritten: Value =
            serde_json::from_slice(&rewritten.expect("rewritten")).expect("json");
        assert_eq!(
            rewritten["stream_options"]["include_usage"],
            Value::Bool(true)
        );

        let asked = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":99}"#;
        let (request, rewritten) =
            inspect_request(UsageFormat::Openai, "/v1/chat/completions", asked);
        assert!(rewritten.is_none() && !request.strip_usage_chunk);
        assert_eq!(request.max_output, Some(99));

        let mut reader = UsageReader::new(UsageFormat::Openai, true, true);
        let out = read(&mut reader, &openai_stream(true), 13);
        assert_eq!(
            out,
            openai_stream(false),
            "the client gets the stream it asked for"
        );
        assert_eq!(reader.tokens.map(|t| t.output), Some(58));
    }

    #[test]
    fn anthropic_usage_comes_from_message_start_and_the_last_delta() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-6\",\"usage\":{\"input_tokens\":18,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":1900,\"output_tokens\":1}}}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Volume\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":11}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let mut streamed = UsageReader::new(UsageFormat::Anthropic, true, false);
        assert_eq!(read(&mut streamed, stream, 9), stream);
        let json = r#"{"id":"msg_1","type":"message","model":"claude-sonnet-4-6","content":[],
            "usage":{"input_tokens":18,"cache_creation_input_tokens":0,"cache_read_input_tokens":1900,"output_tokens":11}}"#;
        let mut plain = UsageReader::new(UsageFormat::Anthropic, false, false);
        read(&mut plain, json, 100);
        let expected = TokenUsage {
            input: 18,
            cached_input: 1900,
            cache_write: 0,
            output: 11,
        };
        assert_eq!(
            (streamed.tokens, plain.tokens),
            (Some(expected), Some(expected))
        );
        assert_eq!(streamed.model.as_deref(), Some("claude-sonnet-4-6"));
    }

    #[test]
    fn gemini_usage_takes_the_last_totals_and_the_model_from_the_path() {
        let (request, _) = inspect_request(
            UsageFormat::Gemini,
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
            br#"{"generationConfig":{"maxOutputTokens":512}}"#,
        );
        assert_eq!(request.model.as_deref(), Some("gemini-2.5-pro"));
        assert!(request.stream);
        assert_eq!(request.max_output, Some(512));
        let stream = concat!(
            "data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":812,\"cachedContentTokenCount\":512,\"candidatesTokenCount\":10}}\r\n\r\n",
            "data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":812,\"cachedContentTokenCount\":512,\"candidatesTokenCount\":64,\"thoughtsTokenCount\":120},\"modelVersion\":\"gemini-2.5-pro\"}\r\n\r\n",
        );
        let mut reader = UsageReader::new(UsageFormat::Gemini, true, false);
        read(&mut reader, stream, 11);
        assert_eq!(
            reader.tokens,
            Some(TokenUsage {
                input: 300,
                cached_input: 512,
                cache_write: 0,
                output: 184
            })
        );
        let mut array = UsageReader::new(UsageFormat::Gemini, false, false);
        read(
            &mut array,
            "[{\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":1}},{\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":9}}]",
            4,
        );
        assert_eq!(array.tokens.map(|t| (t.input, t.output)), Some((5, 9)));
    }

    #[test]
    fn groq_mistral_cohere_and_openai_cache_writes_are_read_as_billed() {
        let groq = concat!(
            "data: {\"id\":\"c\",\"model\":\"llama-3.3-70b-versatile\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"x_groq\":{\"id\":\"req_1\"}}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"x_groq\":{\"id\":\"req_1\",\"usage\":{\"prompt_tokens\":35,\"completion_tokens\":120,\"total_tokens\":155,\"queue_time\":0.012}}}\n\n",
            "data: [DONE]\n\n",
        );
        let mut reader = UsageReader::new(UsageFormat::Groq, true, false);
        assert_eq!(read(&mut reader, groq, 17), groq);
        assert_eq!(reader.tokens.map(|t| (t.input, t.output)), Some((35, 120)));
        assert_eq!(reader.model.as_deref(), Some("llama-3.3-70b-versatile"));

        let (request, rewritten) = inspect_request(
            UsageFormat::Mistral,
            "/v1/chat/completions",
            br#"{"model":"mistral-small-latest","stream":true}"#,
        );
        assert!(
            request.stream && rewritten.is_none(),
            "Mistral is never asked for a usage chunk"
        );
        let mistral = "data: {\"model\":\"mistral-small-latest\",\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":57,\"completion_tokens\":203,\"total_tokens\":260}}\n\ndata: [DONE]\n\n";
        let mut reader = UsageReader::new(UsageFormat::Mistral, true, false);
        read(&mut reader, mistral, 5);
        assert_eq!(reader.tokens.map(|t| (t.input, t.output)), Some((57, 203)));

        let cohere = concat!(
            "event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"Up\"}}}}\n\n",
            "event: message-end\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\",\"usage\":{\"billed_units\":{\"input_tokens\":31.0,\"output_tokens\":88.0},\"tokens\":{\"input_tokens\":252.0,\"output_tokens\":88.0},\"cached_tokens\":0}}}\n\n",
        );
        let mut streamed = UsageReader::new(UsageFormat::Cohere, true, false);
        read(&mut streamed, cohere, 9);
        let mut plain = UsageReader::new(UsageFormat::Cohere, false, false);
        read(
            &mut plain,
            r#"{"id":"x","message":{"content":[{"type":"text","text":"Up"}]},"usage":{"billed_units":{"input_tokens":31,"output_tokens":88},"tokens":{"input_tokens":252,"output_tokens":88}}}"#,
            13,
        );
        let billed = Some(TokenUsage {
            input: 31,
            output: 88,
            ..TokenUsage::default()
        });
        assert_eq!((streamed.tokens, plain.tokens), (billed, billed));

        let mut openai = UsageReader::new(UsageFormat::Openai, false, false);
        read(
            &mut openai,
            r#"{"model":"gpt-5.5","usage":{"input_tokens":900,"input_tokens_details":{"cached_tokens":512,"cache_write_tokens":100},"output_tokens":140,"output_tokens_details":{"reasoning_tokens":64}}}"#,
            50,
        );
        assert_eq!(
            openai.tokens,
            Some(TokenUsage {
                input: 288,
                cached_input: 512,
                cache_write: 100,
                output: 140
            }),
            "reasoning tokens are inside the output count"
        );
    }

    #[test]
    fn an_error_inside_a_successful_stream_is_what_the_answer_meant() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-6\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        let mut reader = UsageReader::new(UsageFormat::Anthropic, true, false);
        assert_eq!(read(&mut reader, stream, 6), stream, "passed through");
        assert_eq!(reader.stream_error, Some(AnswerClass::Outage));
        assert_eq!(reader.tokens.map(|t| t.input), Some(9));
        let mut fine = UsageReader::new(UsageFormat::Anthropic, true, false);
        read(&mut fine, "event: ping\ndata: {\"type\":\"ping\"}\n\n", 3);
        assert_eq!(fine.stream_error, None);
    }

    #[test]
    fn an_abandoned_stream_still_counts_what_was_seen() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\"";
        let mut reader = UsageReader::new(UsageFormat::Anthropic, true, false);
        reader.feed(Bytes::from(stream));
        assert_eq!(reader.tokens.map(|t| (t.input, t.output)), Some((40, 1)));
    }
}

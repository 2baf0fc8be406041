//! Extractors whose rejections are the API's JSON errors rather than axum's plain text,
//! and whose messages never quote string values from the request (they may be secrets).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Replaces every double-quoted string in a deserializer message with `"…"`. serde quotes
/// field names with backticks, which stay; string values use double quotes and go.
pub fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quotes = false;
    for c in message.chars() {
        match (c, in_quotes) {
            ('"', false) => {
                in_quotes = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                in_quotes = false;
                out.push('"');
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

/// A JSON body; unknown fields are refused by the DTOs' `deny_unknown_fields`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), "body_unreadable", e.body_text()))?;
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(Self(value)),
            // JSON Schema (and so the OpenAPI document) counts `3.0` as an integer; serde
            // does not. Such a body is read once more with its whole numbers written whole.
            Err(JsonRejection::JsonDataError(e)) if e.body_text().contains("floating point") => {
                read_with_whole_numbers(&bytes)
                    .map(Self)
                    .ok_or_else(|| invalid_body(&e))
            }
            Err(JsonRejection::JsonDataError(e)) => Err(invalid_body(&e)),
            Err(e) => Err(ApiError::bad_request(
                "invalid_json",
                format!(
                    "the body is not valid JSON: {}",
                    redact_quoted(&e.body_text())
                ),
            )),
        }
    }
}

fn invalid_body(e: &axum::extract::rejection::JsonDataError) -> ApiError {
    ApiError::bad_request(
        "invalid_body",
        format!(
            "the JSON body does not fit this endpoint: {}",
            redact_quoted(&e.body_text())
        ),
    )
}

/// `application/json`, or a `+json` type, with any parameters.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// `body` with every number that has no fraction (`2.0`, `1e3`) made an integer, then
/// deserialized; the text it went through (a body may hold a key's value) is wiped.
fn read_with_whole_numbers<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    make_whole(&mut value);
    let read = T::deserialize(&value).ok();
    wipe(&mut value);
    read
}

fn make_whole(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            // Within ±2^53 a float holds its integer exactly.
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() <= 9_007_199_254_740_992.0
            {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(make_whole),
        Value::Object(map) => map.values_mut().for_each(make_whole),
        _ => {}
    }
}

fn wipe(value: &mut serde_json::Value) {
    use serde_json::Value;
    use zeroize::Zeroize;
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe),
        Value::Object(map) => map.values_mut().for_each(wipe),
        _ => {}
    }
}

/// An optional JSON body: empty means `T::default()`.
pub fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    // No body, or JSON `null`: the defaults (the document marks these bodies optional).
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_data() {
            "invalid_body"
        } else {
            "invalid_json"
        };
        ApiError::bad_request(
            code,
            format!(
                "the JSON body is not usable: {}",
                redact_quoted(&e.to_string())
            ),
        )
    })
}

#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("bad query string: {}", redact_quoted(&e.body_text())),
                )
            })
    }
}

#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e: PathRejection| {
                ApiError::bad_request(
                    "invalid_path",
                    format!("bad path parameter: {}", redact_quoted(&e.body_text())),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::{read_with_whole_numbers, redact_quoted};

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Numbers {
        version: u32,
        share: f64,
    }

    #[test]
    fn whole_floats_are_integers_as_json_schema_says_and_fractions_stay_refused() {
        let read = read_with_whole_numbers::<Numbers>(br#"{"version": 7.0, "share": 2.5}"#);
        assert_eq!(
            read,
            Some(Numbers {
                version: 7,
                share: 2.5
            })
        );
        assert_eq!(
            read_with_whole_numbers::<Numbers>(br#"{"version": 1e3, "share": 1.0}"#),
            Some(Numbers {
                version: 1000,
                share: 1.0
            })
        );
        assert_eq!(
            read_with_whole_numbers::<Numbers>(br#"{"version": 7.5, "share": 1}"#),
            None
        );
        assert_eq!(
            read_with_whole_numbers::<Numbers>(br#"{"version": -1.0, "share": 1}"#),
            None
        );
    }

    #[test]
    fn string_values_are_redacted_but_field_names_kept() {
        let msg = "invalid type: string \"sk-proj-SECRET\", expected a boolean at line 1 column 30 for `force`";
        let out = redact_quoted(msg);
        assert!(!out.contains("SECRET"));
        assert!(out.contains("`force`"));
        assert!(out.contains("line 1 column 30"));
    }
}

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
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            )),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::bad_request(
                "invalid_body",
                format!(
                    "the JSON body does not fit this endpoint: {}",
                    redact_quoted(&e.body_text())
                ),
            )),
            Err(JsonRejection::BytesRejection(e)) => {
                Err(ApiError::new(e.status(), "body_unreadable", e.body_text()))
            }
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
    use super::redact_quoted;

    #[test]
    fn string_values_are_redacted_but_field_names_kept() {
        let msg = "invalid type: string \"sk-proj-SECRET\", expected a boolean at line 1 column 30 for `force`";
        let out = redact_quoted(msg);
        assert!(!out.contains("SECRET"));
        assert!(out.contains("`force`"));
        assert!(out.contains("line 1 column 30"));
    }
}

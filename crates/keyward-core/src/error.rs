//! One error type for the domain and its ports.
//!
//! Each error carries a stable snake_case `code` (part of the public API contract), a
//! human sentence, and a [`ErrorKind`] that the HTTP layer maps to a status code. Messages
//! must never contain secret material: they are shown to callers and written to logs.

use std::fmt;

/// What class of failure this is; the HTTP crate owns the mapping to status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request violates a rule (bad name, bad format, …).
    Invalid,
    /// The request itself is malformed (unusable path, header or query).
    Malformed,
    /// The thing asked for does not exist (or is not visible to the caller).
    NotFound,
    /// The request conflicts with current state (duplicate alias, concurrent edit, …).
    Conflict,
    /// No or bad credentials.
    Unauthenticated,
    /// Credentials are fine but do not allow this.
    Forbidden,
    /// A dependency (the database) cannot be reached right now.
    Unavailable,
    /// A local limit (rate, quota, budget) refuses the request for now.
    Limited,
    /// The request is larger than allowed.
    TooLarge,
    /// The upstream provider failed or answered with garbage.
    UpstreamFailed,
    /// The upstream provider did not answer in time.
    UpstreamTimeout,
    /// A bug or an unexpected state; details are logged, not returned.
    Internal,
    /// Nothing was done yet: the operation now waits for approval (`reference` names the
    /// approval request). Not a failure of the request, so the HTTP layer answers 202.
    Accepted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    /// Stable, documented, snake_case.
    pub code: &'static str,
    pub message: String,
    /// For `Limited`: when trying again can succeed (sent as `Retry-After`).
    pub retry_after: Option<std::time::Duration>,
    /// An id the caller needs next (for `Accepted`: the approval request).
    pub reference: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            retry_after: None,
            reference: None,
        }
    }

    /// The operation was not done; it waits for the approval request `reference`.
    pub fn accepted(code: &'static str, message: impl Into<String>, reference: String) -> Self {
        Self {
            reference: Some(reference),
            ..Self::new(ErrorKind::Accepted, code, message)
        }
    }
    /// A local limit refuses the request; `retry_after` says when it would pass.
    pub fn limited(
        code: &'static str,
        message: impl Into<String>,
        retry_after: std::time::Duration,
    ) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(ErrorKind::Limited, code, message)
        }
    }
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, "store_unavailable", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "internal_error", message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for Error {}

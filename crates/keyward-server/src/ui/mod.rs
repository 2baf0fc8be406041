//! The web UI: server-rendered HTML (maud: checked at compile time, escaped by default), one
//! stylesheet and one script of our own served from the binary under content-hashed names,
//! and a strict Content-Security-Policy on every page. Forms work without JavaScript: they
//! POST (with the session's CSRF token in a hidden field) and redirect.
//!
//! Pages call the same `App` use cases as the API; the session, CSRF and permission checks
//! are the API's own (`http::auth`), run for every page by the guard its route declares
//! (`guard`, from `crate::routes`), so a page can never do what the API would refuse.
//! `frame` is what every page is made of; the other modules are pages.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

pub(crate) mod add_key;
pub(crate) mod admin;
pub(crate) mod alerts;
pub mod approval;
pub(crate) mod assets;
mod chart;
pub(crate) mod dashboard;
pub(crate) mod frame;
pub(crate) mod freeze;
pub(crate) mod guard;
pub(crate) mod key;
pub(crate) mod key_form;
pub(crate) mod mfa;
pub(crate) mod parts;
pub(crate) mod rotate;
pub(crate) mod rotation;
pub(crate) mod sign_in;
pub(crate) mod tokens;
pub(crate) mod usage;

/// The policy every page is served with: our own files only, no inline code, no framing.
/// `connect-src 'self'` lets our script call our own API (the add-key wizard's Validate,
/// which keeps the typed key in its field); nothing else may be fetched.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// Every page: the CSP, no framing, no sniffing, no referrer to other sites; pages are never cached (they
/// show what a signed-in person may see), static files are.
pub(crate) async fn page_headers(request: Request, next: Next) -> Response {
    let is_static = request.uri().path().starts_with("/static/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: with no-referrer Chromium sends `Origin: null` on
    // form posts, which the CSRF check (rightly) refuses. Nothing leaks to other sites.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_static {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

//! The JSON API: handlers, extractors, middleware, health endpoints and the OpenAPI
//! document (routed from `crate::routes`).
//!
//! Architecture invariant: this module (and only this crate) knows status codes. Handlers
//! are thin: extract, call [`App`], map the result.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use keyward_proxy::ProxyBody;

use keyward_app::App;

pub(crate) mod access;
pub(crate) mod alerts;
pub(crate) mod app_tokens;
pub(crate) mod approvals;
pub(crate) mod audit;
pub mod auth;
pub(crate) mod backups;
pub(crate) mod catalog;
pub mod client_ip;
pub(crate) mod compliance;
pub mod error;
pub mod extract;
pub(crate) mod health;
pub(crate) mod keys;
pub(crate) mod mfa;
pub mod openapi;
mod proxy;
pub mod rotations;
mod schema;
pub(crate) mod sessions;
pub(crate) mod usage;
pub(crate) mod users;
pub(crate) mod webhooks;

use error::ApiError;

/// Largest accepted API request body. Keys are at most 4 KiB; 64 KiB leaves ample room for
/// metadata and custom service definitions while bounding memory per request.
pub const BODY_LIMIT: usize = 64 * 1024;

pub(crate) const API_PREFIX: &str = "/api/v1";

/// The OpenAPI document, rendered once when the router is built (`crate::routes`).
#[derive(Debug, Clone)]
pub struct OpenApiJson(pub Arc<str>);

pub(crate) async fn openapi(axum::Extension(json): axum::Extension<OpenApiJson>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.0.to_string(),
    )
        .into_response()
}

pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub(crate) async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.ready().await {
        Ok(_) if app.proxy.snapshot_stale() => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the proxy could not confirm its view of the vault is current for longer than max_snapshot_staleness; proxied calls are refused until it does",
        )
        .into_response(),
        Ok(backend) => {
            // A Redis outage does not take the instance out of a load balancer (every
            // instance shares the same Redis): it is reported, and `/metrics` counts it.
            let limits = match app.proxy.shared_limits() {
                None => "local",
                Some(shared) if shared.is_up() => "shared",
                Some(_) => "redis_unreachable",
            };
            Json(serde_json::json!({"status": "ready", "store": backend, "limits": limits,
                "master_key": app.master_key_home()}))
            .into_response()
        }
        Err(e) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.message).into_response()
        }
    }
}

/// Prometheus text format. Unauthenticated like the health checks: it carries counts by
/// service and outcome, never ids, paths or values (see `crate::metrics`).
pub(crate) async fn metrics(
    State(app): State<Arc<App>>,
    axum::Extension(metrics): axum::Extension<Arc<crate::metrics::Metrics>>,
) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(app.proxy.gauges(), app.hsm_calls()),
    )
        .into_response()
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no such endpoint; see /api/v1/openapi.json",
    )
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

/// API responses describe secrets' metadata: never cache them, never sniff them.
pub(crate) async fn api_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Every request a serving lane receives. `/proxy/…` goes straight to the data plane on
/// the lane's own thread — no router and no middleware, which cost about 9 % of a proxied
/// call's CPU; everything else is the management router, run on the main runtime, where
/// the store's connections live (a connection opened on a serving thread would depend on
/// that thread's runtime to make progress, and die with it).
pub async fn dispatch(
    app: Arc<App>,
    router: Router,
    main: tokio::runtime::Handle,
    peer: SocketAddr,
    lane: usize,
    mut request: axum::http::Request<hyper::body::Incoming>,
) -> axum::http::Response<ProxyBody> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    if request.uri().path().starts_with(proxy::PREFIX) {
        let (method, started) = (request.method().clone(), Instant::now());
        let path = request.uri().path().to_owned();
        let response = proxy::proxy(&app, peer, lane, request).await;
        log_request(&method, &path, response.status(), started);
        return response;
    }
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    let response = match main.spawn(router.oneshot(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(e) => ApiError::from(keyward_core::Error::internal(format!(
            "the request was cancelled: {e}"
        )))
        .into_response(),
    };
    response.map(|body| body.map_err(Into::into).boxed_unsync())
}

/// One line per request: method, path (never the query string, which can carry keys on
/// the proxy), status and duration.
fn log_request(method: &axum::http::Method, path: &str, status: StatusCode, started: Instant) {
    tracing::info!(%method, %path, status = status.as_u16(), ms = started.elapsed().as_millis() as u64, "request");
}

pub(crate) async fn access_log(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    log_request(&method, &path, response.status(), started);
    response
}

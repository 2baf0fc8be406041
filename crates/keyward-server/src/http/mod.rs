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
use utoipa::OpenApi;

use keyward_app::App;

pub(crate) mod access;
pub(crate) mod app_tokens;
pub(crate) mod approvals;
pub(crate) mod audit;
pub mod auth;
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
pub(crate) mod sessions;
pub(crate) mod usage;
pub(crate) mod users;
pub(crate) mod webhooks;

use error::ApiError;

/// Largest accepted API request body. Keys are at most 4 KiB; 64 KiB leaves ample room for
/// metadata and custom service definitions while bounding memory per request.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "Keyward management API", description = "Self-hosted API key vault and key-injecting proxy. Errors are `{\"error\":{\"code\",\"message\"}}`."),
    paths(
        keys::create_key, keys::list_keys, keys::list_deleted_keys, keys::get_key, keys::update_key,
        keys::enable_key, keys::disable_key, keys::list_versions, keys::add_version, keys::delete_key,
        keys::restore_key, keys::purge_key, keys::reveal_key, keys::validate_secret, keys::validate_key, keys::key_impact, keys::revoke_key, keys::get_rotation_policy, keys::set_rotation_policy,
        catalog::list_services, catalog::get_service, catalog::create_service, catalog::update_service,
        catalog::list_categories, catalog::create_category, catalog::list_environments, catalog::create_environment,
        app_tokens::create_app_token, app_tokens::list_app_tokens, app_tokens::get_app_token, app_tokens::revoke_app_token,
        keys::clear_key_flag, usage::usage, usage::list_pools, usage::set_pool,
        audit::list_audit, audit::export_audit, audit::verify_audit,
        users::setup, users::create_user, users::list_users, users::get_user, users::disable_user, users::enable_user,
        sessions::sign_in, sessions::sign_out, sessions::sign_out_everywhere, sessions::who_am_i,
        sessions::list_sessions, sessions::end_session, sessions::list_lockouts, sessions::lift_lockout,
        mfa::mfa_status, mfa::start_enrolment, mfa::confirm_enrolment, mfa::step_up,
        mfa::regenerate_recovery_codes, mfa::reset_mfa, mfa::get_mfa_policy, mfa::set_mfa_policy,
        access::list_roles, access::create_role, access::update_role, access::delete_role,
        access::list_grants, access::add_grant, access::remove_grant, access::set_user_role,
        access::set_user_networks, access::set_role_networks, access::list_tokens,
        access::create_token, access::revoke_token,
        approvals::list_approvals, approvals::get_approval, approvals::approve, approvals::deny,
        approvals::cancel, approvals::get_policy, approvals::set_policy,
        rotations::start_rotation, rotations::list_rotations, rotations::get_rotation,
        rotations::validate_rotation, rotations::canary_rotation, rotations::promote_rotation,
        rotations::retire_rotation, rotations::verify_rotation, rotations::cancel_rotation,
        webhooks::create_webhook, webhooks::list_webhooks, webhooks::delete_webhook, webhooks::list_deliveries,
        webhooks::get_subscription, webhooks::put_subscription, webhooks::delete_subscription,
        health::health, health::key_health, compliance::compliance, compliance::key_compliance,
    ),
    modifiers(&BearerAuth),
    tags((name = "keys", description = "Stored API keys and their versions"), (name = "catalog", description = "Services, categories, environments"),
        (name = "app-tokens", description = "Credentials applications present to the proxy"),
        (name = "usage", description = "Metered calls through the proxy"),
        (name = "audit", description = "The tamper-evident audit trail"),
        (name = "users", description = "People who sign in"),
        (name = "auth", description = "Signing in and out; sessions; second factors"),
        (name = "access", description = "Roles, scoped grants, network allowlists, management tokens"),
        (name = "approvals", description = "Approval requests for sensitive operations, and the policy"),
        (name = "compliance", description = "Key strength and compliance checks"),
        (name = "health", description = "Key and service health: real traffic, provider flags, circuit breakers, probes"),
        (name = "notifications", description = "Webhooks for rotation, expiry, revocation, health and approval events; signed with HMAC-SHA256"),
        (name = "rotations", description = "Guided rotations: pending, validated, canary, promoted with a dual-key window, retired, revoked-verified"))
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("kwm_<public id>_<secret>")
                    .build(),
            ),
        );
    }
}

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
        Ok(backend) => {
            Json(serde_json::json!({"status": "ready", "store": backend})).into_response()
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
        metrics.render(app.proxy.gauges()),
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

//! The HTTP surface: routes, middleware, health endpoints and the OpenAPI document.
//!
//! Architecture invariant: this module (and only this crate) knows status codes. Handlers
//! are thin: extract, call [`App`], map the result.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use keyward_proxy::ProxyBody;
use utoipa::OpenApi;

use crate::app::App;

mod app_tokens;
mod audit;
pub mod auth;
mod catalog;
pub mod client_ip;
pub mod error;
pub mod extract;
mod keys;
mod mfa;
mod proxy;
mod sessions;
mod usage;
pub(crate) mod users;

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
        keys::restore_key, keys::purge_key,
        catalog::list_services, catalog::get_service, catalog::create_service, catalog::update_service,
        catalog::list_categories, catalog::create_category, catalog::list_environments, catalog::create_environment,
        app_tokens::create_app_token, app_tokens::list_app_tokens, app_tokens::get_app_token, app_tokens::revoke_app_token,
        keys::clear_key_flag, usage::usage, usage::list_pools, usage::set_pool,
        audit::list_audit, audit::export_audit, audit::verify_audit,
        users::create_user, users::list_users, users::get_user, users::disable_user, users::enable_user,
        sessions::sign_in, sessions::sign_out, sessions::sign_out_everywhere, sessions::who_am_i,
        sessions::list_sessions, sessions::end_session, sessions::list_lockouts, sessions::lift_lockout,
        mfa::mfa_status, mfa::start_enrolment, mfa::confirm_enrolment, mfa::step_up,
        mfa::regenerate_recovery_codes, mfa::reset_mfa, mfa::get_mfa_policy, mfa::set_mfa_policy,
    ),
    modifiers(&BearerAuth),
    tags((name = "keys", description = "Stored API keys and their versions"), (name = "catalog", description = "Services, categories, environments"),
        (name = "app-tokens", description = "Credentials applications present to the proxy"),
        (name = "usage", description = "Metered calls through the proxy"),
        (name = "audit", description = "The tamper-evident audit trail"),
        (name = "users", description = "People who sign in"),
        (name = "auth", description = "Signing in and out; sessions"))
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

pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/keys", post(keys::create_key).get(keys::list_keys))
        .route("/deleted-keys", get(keys::list_deleted_keys))
        .route(
            "/keys/{id}",
            get(keys::get_key)
                .patch(keys::update_key)
                .delete(keys::delete_key),
        )
        .route("/keys/{id}/enable", post(keys::enable_key))
        .route("/keys/{id}/disable", post(keys::disable_key))
        .route(
            "/keys/{id}/versions",
            get(keys::list_versions).post(keys::add_version),
        )
        .route("/keys/{id}/restore", post(keys::restore_key))
        .route("/keys/{id}/flag", delete(keys::clear_key_flag))
        .route("/pools", get(usage::list_pools))
        .route("/pools/{service}/{environment}", put(usage::set_pool))
        .route("/usage", get(usage::usage))
        .route("/keys/{id}/purge", post(keys::purge_key))
        .route(
            "/services",
            get(catalog::list_services).post(catalog::create_service),
        )
        .route(
            "/services/{id}",
            get(catalog::get_service).patch(catalog::update_service),
        )
        .route(
            "/categories",
            get(catalog::list_categories).post(catalog::create_category),
        )
        .route(
            "/environments",
            get(catalog::list_environments).post(catalog::create_environment),
        )
        .route(
            "/app-tokens",
            post(app_tokens::create_app_token).get(app_tokens::list_app_tokens),
        )
        .route("/app-tokens/{id}", get(app_tokens::get_app_token))
        .route(
            "/app-tokens/{id}/revoke",
            post(app_tokens::revoke_app_token),
        )
        .route("/auth/login", post(sessions::sign_in))
        .route("/auth/logout", post(sessions::sign_out))
        .route("/auth/logout-all", post(sessions::sign_out_everywhere))
        .route("/auth/session", get(sessions::who_am_i))
        .route("/auth/mfa", get(mfa::mfa_status))
        .route("/auth/mfa/enroll", post(mfa::start_enrolment))
        .route("/auth/mfa/confirm", post(mfa::confirm_enrolment))
        .route("/auth/mfa/verify", post(mfa::step_up))
        .route(
            "/auth/mfa/recovery-codes",
            post(mfa::regenerate_recovery_codes),
        )
        .route("/users/{id}/mfa", delete(mfa::reset_mfa))
        .route(
            "/policies/mfa",
            get(mfa::get_mfa_policy).put(mfa::set_mfa_policy),
        )
        .route("/auth/lockouts", get(sessions::list_lockouts))
        .route("/auth/lockouts/lift", post(sessions::lift_lockout))
        .route("/sessions", get(sessions::list_sessions))
        .route("/sessions/{id}", delete(sessions::end_session))
        .route("/users", get(users::list_users).post(users::create_user))
        .route("/users/{id}", get(users::get_user))
        .route("/users/{id}/disable", post(users::disable_user))
        .route("/users/{id}/enable", post(users::enable_user))
        .route("/audit", get(audit::list_audit))
        .route("/audit/export", get(audit::export_audit))
        .route("/audit/verify", get(audit::verify_audit))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(api_headers));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .fallback(not_found)
        .layer(middleware::from_fn(access_log))
        .with_state(app)
}

async fn openapi() -> Response {
    match ApiDoc::openapi().to_pretty_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => ApiError::from(keyward_core::Error::internal(format!(
            "cannot render OpenAPI: {e}"
        )))
        .into_response(),
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.store.ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ready", "store": app.store.backend()}))
            .into_response(),
        Err(e) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.message).into_response()
        }
    }
}

/// Prometheus text format. Unauthenticated like the health checks: it carries counts by
/// service and outcome, never ids, paths or values (see `crate::metrics`).
async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(app.proxy.gauges()),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no such endpoint; see /api/v1/openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

/// API responses describe secrets' metadata: never cache them, never sniff them.
async fn api_headers(request: Request, next: Next) -> Response {
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

async fn access_log(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    log_request(&method, &path, response.status(), started);
    response
}

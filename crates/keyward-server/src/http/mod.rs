//! The HTTP surface: routes, middleware, health endpoints and the OpenAPI document.
//!
//! Architecture invariant: this module (and only this crate) knows status codes. Handlers
//! are thin: extract, call [`App`], map the result.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::Method;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use axum::{Json, Router};
use keyward_proxy::ProxyBody;
use utoipa::OpenApi;

use keyward_core::access::Permission;

use keyward_app::App;

mod access;
mod app_tokens;
mod approvals;
mod audit;
pub mod auth;
mod catalog;
pub mod client_ip;
mod compliance;
pub mod error;
pub mod extract;
mod health;
mod keys;
mod mfa;
pub mod openapi;
mod proxy;
pub mod rotations;
pub(crate) mod sessions;
mod usage;
pub(crate) mod users;
mod webhooks;

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

/// Who may call a route. The handler's extractors enforce it; the table declares it, so
/// the authorization matrix test can hold every route to its declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Anyone: health, metrics, sign-in, the OpenAPI document.
    Public,
    /// Any authenticated caller (sign-out, who am I, one's own MFA enrolment).
    SignedIn,
    /// A signed-in person with a recent MFA check (a session, not a token).
    SteppedUp,
    /// The permission — with its scope, the MFA policy and step-up where it needs one.
    Permission(Permission),
}

/// One route: method, full path, guard, handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub guard: Guard,
    handler: MethodRouter<Arc<App>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({:?})", self.method, self.path, self.guard)
    }
}

fn route(
    method: Method,
    path: &'static str,
    guard: Guard,
    handler: MethodRouter<Arc<App>>,
) -> Route {
    Route {
        method,
        path,
        guard,
        handler,
    }
}

/// Every route Keyward serves (except `/proxy/…`, the data plane, which authenticates app
/// tokens itself). The router is built from this table and nothing else.
pub fn routes() -> Vec<Route> {
    use Guard::{Public, SignedIn, SteppedUp};
    use Method as M;
    use Permission as P;
    let p = Guard::Permission;
    vec![
        route(M::GET, "/healthz", Public, get(healthz)),
        route(M::GET, "/readyz", Public, get(readyz)),
        route(M::GET, "/metrics", Public, get(metrics)),
        route(M::GET, "/api/v1/openapi.json", Public, get(openapi)),
        // keys
        route(
            M::POST,
            "/api/v1/keys",
            p(P::KeysWrite),
            post(keys::create_key),
        ),
        route(M::GET, "/api/v1/keys", p(P::KeysRead), get(keys::list_keys)),
        route(
            M::GET,
            "/api/v1/deleted-keys",
            p(P::KeysRead),
            get(keys::list_deleted_keys),
        ),
        route(
            M::GET,
            "/api/v1/keys/{id}",
            p(P::KeysRead),
            get(keys::get_key),
        ),
        route(
            M::PATCH,
            "/api/v1/keys/{id}",
            p(P::KeysWrite),
            patch(keys::update_key),
        ),
        route(
            M::DELETE,
            "/api/v1/keys/{id}",
            p(P::KeysDelete),
            delete(keys::delete_key),
        ),
        route(
            M::POST,
            "/api/v1/keys/{id}/enable",
            p(P::KeysWrite),
            post(keys::enable_key),
        ),
        route(
            M::POST,
            "/api/v1/keys/{id}/disable",
            p(P::KeysWrite),
            post(keys::disable_key),
        ),
        route(
            M::GET,
            "/api/v1/keys/{id}/versions",
            p(P::KeysRead),
            get(keys::list_versions),
        ),
        route(
            M::POST,
            "/api/v1/keys/{id}/versions",
            p(P::KeysRotate),
            post(keys::add_version),
        ),
        route(
            M::POST,
            "/api/v1/keys/{id}/restore",
            p(P::KeysDelete),
            post(keys::restore_key),
        ),
        route(
            M::POST,
            "/api/v1/keys/{id}/purge",
            p(P::KeysPurge),
            post(keys::purge_key),
        ),
        route(
            M::POST,
            "/api/v1/keys/{id}/reveal",
            p(P::KeysReveal),
            post(keys::reveal_key),
        ),
        route(
            M::POST,
            "/api/v1/keys/{id}/revoke",
            p(P::KeysWrite),
            post(keys::revoke_key),
        ),
        route(
            M::POST,
            "/api/v1/webhooks",
            p(P::AccessWrite),
            post(webhooks::create_webhook),
        ),
        route(
            M::GET,
            "/api/v1/webhooks",
            p(P::AccessWrite),
            get(webhooks::list_webhooks),
        ),
        route(
            M::DELETE,
            "/api/v1/webhooks/{id}",
            p(P::AccessWrite),
            delete(webhooks::delete_webhook),
        ),
        route(
            M::GET,
            "/api/v1/webhooks/{id}/deliveries",
            p(P::AccessWrite),
            get(webhooks::list_deliveries),
        ),
        route(
            M::POST,
            "/api/v1/keys/{id}/rotations",
            p(P::KeysRotate),
            post(rotations::start_rotation),
        ),
        route(
            M::GET,
            "/api/v1/keys/{id}/rotations",
            p(P::KeysRead),
            get(rotations::list_rotations),
        ),
        route(
            M::GET,
            "/api/v1/rotations/{id}",
            p(P::KeysRead),
            get(rotations::get_rotation),
        ),
        route(
            M::POST,
            "/api/v1/rotations/{id}/validate",
            p(P::KeysRotate),
            post(rotations::validate_rotation),
        ),
        route(
            M::POST,
            "/api/v1/rotations/{id}/canary",
            p(P::KeysRotate),
            post(rotations::canary_rotation),
        ),
        route(
            M::POST,
            "/api/v1/rotations/{id}/promote",
            p(P::KeysRotate),
            post(rotations::promote_rotation),
        ),
        route(
            M::POST,
            "/api/v1/rotations/{id}/retire",
            p(P::KeysRotate),
            post(rotations::retire_rotation),
        ),
        route(
            M::POST,
            "/api/v1/rotations/{id}/verify",
            p(P::KeysRotate),
            post(rotations::verify_rotation),
        ),
        route(
            M::POST,
            "/api/v1/rotations/{id}/cancel",
            p(P::KeysRotate),
            post(rotations::cancel_rotation),
        ),
        route(
            M::GET,
            "/api/v1/policies/rotation",
            p(P::KeysRead),
            get(keys::get_rotation_policy),
        ),
        route(
            M::PUT,
            "/api/v1/policies/rotation",
            p(P::AccessWrite),
            put(keys::set_rotation_policy),
        ),
        route(
            M::GET,
            "/api/v1/health",
            p(P::KeysRead),
            get(health::health),
        ),
        route(
            M::GET,
            "/api/v1/keys/{id}/health",
            p(P::KeysRead),
            get(health::key_health),
        ),
        route(
            M::GET,
            "/api/v1/compliance",
            p(P::KeysRead),
            get(compliance::compliance),
        ),
        route(
            M::GET,
            "/api/v1/keys/{id}/compliance",
            p(P::KeysRead),
            get(compliance::key_compliance),
        ),
        route(
            M::GET,
            "/api/v1/keys/{id}/impact",
            p(P::KeysRead),
            get(keys::key_impact),
        ),
        route(
            M::POST,
            "/api/v1/keys/{id}/validate",
            p(P::KeysWrite),
            post(keys::validate_key),
        ),
        route(
            M::POST,
            "/api/v1/services/{id}/validate",
            p(P::KeysWrite),
            post(keys::validate_secret),
        ),
        route(
            M::DELETE,
            "/api/v1/keys/{id}/flag",
            p(P::KeysWrite),
            delete(keys::clear_key_flag),
        ),
        // pools and usage
        route(
            M::GET,
            "/api/v1/pools",
            p(P::KeysRead),
            get(usage::list_pools),
        ),
        route(
            M::PUT,
            "/api/v1/pools/{service}/{environment}",
            p(P::KeysWrite),
            put(usage::set_pool),
        ),
        route(M::GET, "/api/v1/usage", p(P::KeysRead), get(usage::usage)),
        // catalog
        route(
            M::GET,
            "/api/v1/services",
            p(P::CatalogRead),
            get(catalog::list_services),
        ),
        route(
            M::POST,
            "/api/v1/services",
            p(P::CatalogWrite),
            post(catalog::create_service),
        ),
        route(
            M::GET,
            "/api/v1/services/{id}",
            p(P::CatalogRead),
            get(catalog::get_service),
        ),
        route(
            M::PATCH,
            "/api/v1/services/{id}",
            p(P::CatalogWrite),
            patch(catalog::update_service),
        ),
        route(
            M::GET,
            "/api/v1/categories",
            p(P::CatalogRead),
            get(catalog::list_categories),
        ),
        route(
            M::POST,
            "/api/v1/categories",
            p(P::CatalogWrite),
            post(catalog::create_category),
        ),
        route(
            M::GET,
            "/api/v1/environments",
            p(P::CatalogRead),
            get(catalog::list_environments),
        ),
        route(
            M::POST,
            "/api/v1/environments",
            p(P::CatalogWrite),
            post(catalog::create_environment),
        ),
        // app tokens
        route(
            M::POST,
            "/api/v1/app-tokens",
            p(P::AppTokensWrite),
            post(app_tokens::create_app_token),
        ),
        route(
            M::GET,
            "/api/v1/app-tokens",
            p(P::AppTokensRead),
            get(app_tokens::list_app_tokens),
        ),
        route(
            M::GET,
            "/api/v1/app-tokens/{id}",
            p(P::AppTokensRead),
            get(app_tokens::get_app_token),
        ),
        route(
            M::POST,
            "/api/v1/app-tokens/{id}/revoke",
            p(P::AppTokensWrite),
            post(app_tokens::revoke_app_token),
        ),
        // signing in, sessions, MFA
        route(
            M::POST,
            "/api/v1/auth/login",
            Public,
            post(sessions::sign_in),
        ),
        route(
            M::POST,
            "/api/v1/auth/logout",
            SignedIn,
            post(sessions::sign_out),
        ),
        route(
            M::POST,
            "/api/v1/auth/logout-all",
            SignedIn,
            post(sessions::sign_out_everywhere),
        ),
        route(
            M::GET,
            "/api/v1/auth/session",
            SignedIn,
            get(sessions::who_am_i),
        ),
        route(M::GET, "/api/v1/auth/mfa", SignedIn, get(mfa::mfa_status)),
        route(
            M::GET,
            "/api/v1/me/subscription",
            SignedIn,
            get(webhooks::get_subscription),
        ),
        route(
            M::PUT,
            "/api/v1/me/subscription",
            SignedIn,
            put(webhooks::put_subscription),
        ),
        route(
            M::DELETE,
            "/api/v1/me/subscription",
            SignedIn,
            delete(webhooks::delete_subscription),
        ),
        route(
            M::POST,
            "/api/v1/auth/mfa/enroll",
            SignedIn,
            post(mfa::start_enrolment),
        ),
        route(
            M::POST,
            "/api/v1/auth/mfa/confirm",
            SignedIn,
            post(mfa::confirm_enrolment),
        ),
        route(
            M::POST,
            "/api/v1/auth/mfa/verify",
            SignedIn,
            post(mfa::step_up),
        ),
        route(
            M::POST,
            "/api/v1/auth/mfa/recovery-codes",
            SteppedUp,
            post(mfa::regenerate_recovery_codes),
        ),
        route(
            M::GET,
            "/api/v1/auth/lockouts",
            p(P::UsersRead),
            get(sessions::list_lockouts),
        ),
        route(
            M::POST,
            "/api/v1/auth/lockouts/lift",
            p(P::UsersWrite),
            post(sessions::lift_lockout),
        ),
        route(
            M::GET,
            "/api/v1/sessions",
            p(P::UsersRead),
            get(sessions::list_sessions),
        ),
        route(
            M::DELETE,
            "/api/v1/sessions/{id}",
            p(P::UsersWrite),
            delete(sessions::end_session),
        ),
        route(M::POST, "/api/v1/setup", Public, post(users::setup)),
        // users and access
        route(
            M::GET,
            "/api/v1/users",
            p(P::UsersRead),
            get(users::list_users),
        ),
        route(
            M::POST,
            "/api/v1/users",
            p(P::UsersWrite),
            post(users::create_user),
        ),
        route(
            M::GET,
            "/api/v1/users/{id}",
            p(P::UsersRead),
            get(users::get_user),
        ),
        route(
            M::POST,
            "/api/v1/users/{id}/disable",
            p(P::UsersWrite),
            post(users::disable_user),
        ),
        route(
            M::POST,
            "/api/v1/users/{id}/enable",
            p(P::UsersWrite),
            post(users::enable_user),
        ),
        route(
            M::DELETE,
            "/api/v1/users/{id}/mfa",
            p(P::AccessWrite),
            delete(mfa::reset_mfa),
        ),
        route(
            M::PUT,
            "/api/v1/users/{id}/role",
            p(P::AccessWrite),
            put(access::set_user_role),
        ),
        route(
            M::PUT,
            "/api/v1/users/{id}/networks",
            p(P::AccessWrite),
            put(access::set_user_networks),
        ),
        route(
            M::GET,
            "/api/v1/users/{id}/grants",
            p(P::UsersRead),
            get(access::list_grants),
        ),
        route(
            M::POST,
            "/api/v1/users/{id}/grants",
            p(P::AccessWrite),
            post(access::add_grant),
        ),
        route(
            M::DELETE,
            "/api/v1/users/{id}/grants/{grant}",
            p(P::AccessWrite),
            delete(access::remove_grant),
        ),
        route(
            M::GET,
            "/api/v1/roles",
            p(P::UsersRead),
            get(access::list_roles),
        ),
        route(
            M::POST,
            "/api/v1/roles",
            p(P::AccessWrite),
            post(access::create_role),
        ),
        route(
            M::PATCH,
            "/api/v1/roles/{id}",
            p(P::AccessWrite),
            patch(access::update_role),
        ),
        route(
            M::DELETE,
            "/api/v1/roles/{id}",
            p(P::AccessWrite),
            delete(access::delete_role),
        ),
        route(
            M::PUT,
            "/api/v1/roles/{id}/networks",
            p(P::AccessWrite),
            put(access::set_role_networks),
        ),
        route(
            M::GET,
            "/api/v1/tokens",
            p(P::UsersRead),
            get(access::list_tokens),
        ),
        route(
            M::POST,
            "/api/v1/tokens",
            p(P::AccessWrite),
            post(access::create_token),
        ),
        route(
            M::POST,
            "/api/v1/tokens/{id}/revoke",
            p(P::AccessWrite),
            post(access::revoke_token),
        ),
        route(
            M::GET,
            "/api/v1/policies/mfa",
            p(P::UsersRead),
            get(mfa::get_mfa_policy),
        ),
        route(
            M::PUT,
            "/api/v1/policies/mfa",
            p(P::AccessWrite),
            put(mfa::set_mfa_policy),
        ),
        // approvals
        route(
            M::GET,
            "/api/v1/approvals",
            SignedIn,
            get(approvals::list_approvals),
        ),
        route(
            M::GET,
            "/api/v1/approvals/{id}",
            SignedIn,
            get(approvals::get_approval),
        ),
        route(
            M::POST,
            "/api/v1/approvals/{id}/approve",
            p(P::ApprovalsDecide),
            post(approvals::approve),
        ),
        route(
            M::POST,
            "/api/v1/approvals/{id}/deny",
            p(P::ApprovalsDecide),
            post(approvals::deny),
        ),
        route(
            M::POST,
            "/api/v1/approvals/{id}/cancel",
            SignedIn,
            post(approvals::cancel),
        ),
        route(
            M::GET,
            "/api/v1/policies/approvals",
            p(P::UsersRead),
            get(approvals::get_policy),
        ),
        route(
            M::PUT,
            "/api/v1/policies/approvals",
            p(P::AccessWrite),
            put(approvals::set_policy),
        ),
        // audit
        route(
            M::GET,
            "/api/v1/audit",
            p(P::AuditRead),
            get(audit::list_audit),
        ),
        route(
            M::GET,
            "/api/v1/audit/export",
            p(P::AuditExport),
            get(audit::export_audit),
        ),
        route(
            M::GET,
            "/api/v1/audit/verify",
            p(P::AuditRead),
            get(audit::verify_audit),
        ),
    ]
}

const API_PREFIX: &str = "/api/v1";

/// The whole HTTP face: the API under `/api/v1`, the pages, `/metrics` from `metrics`.
pub fn router(app: Arc<App>, metrics: Arc<crate::metrics::Metrics>) -> Router {
    let mut api = Router::new();
    let mut top = Router::new();
    for r in routes() {
        match r.path.strip_prefix(API_PREFIX) {
            Some(path) => api = api.route(path, r.handler),
            None => top = top.route(r.path, r.handler),
        }
    }
    let api = api
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(api_headers));
    top.nest(API_PREFIX, api)
        .merge(crate::ui::router())
        .fallback(not_found)
        .layer(middleware::from_fn(access_log))
        .layer(axum::Extension(metrics))
        .with_state(app)
}

async fn openapi() -> Response {
    match openapi::document().to_pretty_json() {
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
async fn metrics(
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

//! Every route Keyward serves — the API, the health checks and the pages — with the guard
//! that admits its callers, in one table. The router is built from this table and nothing
//! else; the OpenAPI document takes each operation's guard from it, and the authorization
//! matrix test holds every route, API and page, to its declaration.
//!
//! API guards are enforced by each handler's extractors (`http::auth`); page guards by one
//! layer built from the declaration (`ui::guard`), so a page handler never checks who may
//! see it.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::middleware;
use axum::routing::{MethodRouter, delete, get, patch, post, put};

use keyward_app::App;
use keyward_core::access::Permission;

pub use crate::http::auth::Guard;
use crate::{http, ui};

/// Which face of Keyward a route belongs to: they answer refusals differently (the API
/// with its JSON error and status, a page with a redirect to sign in or a refusal page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    /// The JSON API under `/api/v1`, the health checks and `/metrics`.
    Api,
    /// The web UI: HTML pages and form posts, sessions only.
    Page,
}

/// One route: method, full path, guard, face, handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub guard: Guard,
    pub face: Face,
    handler: MethodRouter<Arc<App>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({:?})", self.method, self.path, self.guard)
    }
}

fn api_route(
    method: Method,
    path: &'static str,
    guard: Guard,
    handler: MethodRouter<Arc<App>>,
) -> Route {
    Route {
        method,
        path,
        guard,
        face: Face::Api,
        handler,
    }
}

fn page(
    method: Method,
    path: &'static str,
    guard: Guard,
    handler: MethodRouter<Arc<App>>,
) -> Route {
    Route {
        method,
        path,
        guard,
        face: Face::Page,
        handler,
    }
}

/// Every route Keyward serves (except `/proxy/…`, the data plane, which authenticates app
/// tokens itself).
pub fn routes() -> Vec<Route> {
    let mut all = api();
    all.extend(pages());
    all
}

/// The OpenAPI document, each operation completed from its declared guard.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let table = routes();
    http::openapi::document(|path, method| {
        table
            .iter()
            .find(|r| r.face == Face::Api && r.path == path && r.method.as_str() == method)
            .map(|r| r.guard)
    })
}

/// The whole HTTP face: the API under `/api/v1`, the pages behind their guards, `/metrics`
/// from `metrics`.
pub fn router(app: Arc<App>, metrics: Arc<crate::metrics::Metrics>) -> Router {
    // Serialising our own document cannot meet bad input; should it fail anyway, the
    // endpoint says so in the API's error shape rather than the server refusing to start.
    let openapi = openapi().to_pretty_json().unwrap_or_else(|e| {
        serde_json::json!({"error": {"code": "internal", "message": format!("cannot render OpenAPI: {e}")}})
            .to_string()
    });
    let mut api = Router::new();
    let mut top = Router::new();
    let mut pages = Router::new();
    for r in routes() {
        match (r.face, r.path.strip_prefix(http::API_PREFIX)) {
            (Face::Api, Some(path)) => api = api.route(path, r.handler),
            (Face::Api, None) => top = top.route(r.path, r.handler),
            (Face::Page, _) => {
                let guard =
                    middleware::from_fn_with_state((app.clone(), r.guard), ui::guard::admit);
                pages = pages.route(r.path, r.handler.route_layer(guard));
            }
        }
    }
    let api = api
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(http::BODY_LIMIT))
        .layer(middleware::from_fn(http::api_headers));
    let pages = pages.layer(middleware::from_fn(ui::page_headers));
    top.nest(http::API_PREFIX, api)
        .merge(pages)
        .fallback(http::not_found)
        .layer(middleware::from_fn(http::access_log))
        .layer(axum::Extension(metrics))
        .layer(axum::Extension(http::OpenApiJson(openapi.into())))
        .with_state(app)
}

/// The web UI. A page's guard is what it shows or changes: sections need the permission
/// they list, forms the permission of the use case they run (step-up included).
fn pages() -> Vec<Route> {
    use Guard::{Enrolling, Public, SignedIn};
    use Method as M;
    use Permission as P;
    use ui::{add_key, admin, alerts, dashboard, freeze, key, mfa, rotate, sign_in, tokens, usage};
    let p = Guard::Permission;
    vec![
        page(M::GET, "/login", Public, get(sign_in::login_form)),
        page(M::POST, "/login", Public, post(sign_in::login)),
        page(M::GET, "/setup", Public, get(sign_in::setup_form)),
        page(M::POST, "/setup", Public, post(sign_in::setup)),
        page(M::GET, "/static/{file}", Public, get(ui::assets::asset)),
        page(M::POST, "/logout", Enrolling, post(sign_in::logout)),
        page(M::GET, "/mfa/enroll", Enrolling, get(mfa::start_page)),
        page(M::POST, "/mfa/enroll", Enrolling, post(mfa::start)),
        page(M::POST, "/mfa/confirm", Enrolling, post(mfa::confirm)),
        page(M::GET, "/mfa/verify", SignedIn, get(mfa::verify_page)),
        page(M::POST, "/mfa/verify", SignedIn, post(mfa::verify)),
        page(M::GET, "/", SignedIn, get(dashboard::page)),
        page(M::GET, "/keys/new", p(P::KeysWrite), get(add_key::form)),
        page(M::POST, "/keys/new", p(P::KeysWrite), post(add_key::create)),
        page(M::GET, "/keys/deleted", p(P::KeysRead), get(key::deleted)),
        page(M::GET, "/keys/{id}", p(P::KeysRead), get(key::detail)),
        page(M::POST, "/keys/{id}/edit", p(P::KeysWrite), post(key::edit)),
        page(
            M::POST,
            "/keys/{id}/enable",
            p(P::KeysWrite),
            post(key::enable),
        ),
        page(
            M::GET,
            "/keys/{id}/disable",
            p(P::KeysWrite),
            get(key::disable_form),
        ),
        page(
            M::POST,
            "/keys/{id}/disable",
            p(P::KeysWrite),
            post(key::disable),
        ),
        page(
            M::POST,
            "/keys/{id}/validate",
            p(P::KeysWrite),
            post(key::validate),
        ),
        page(
            M::POST,
            "/keys/{id}/rotate",
            p(P::KeysRotate),
            post(rotate::rotate),
        ),
        page(
            M::POST,
            "/keys/{id}/rotations",
            p(P::KeysRotate),
            post(rotate::start),
        ),
        page(
            M::POST,
            "/rotations/{id}/{action}",
            p(P::KeysRotate),
            post(rotate::step),
        ),
        page(
            M::GET,
            "/keys/{id}/revoke",
            p(P::KeysWrite),
            get(key::revoke_form),
        ),
        page(
            M::POST,
            "/keys/{id}/revoke",
            p(P::KeysWrite),
            post(key::revoke),
        ),
        page(
            M::POST,
            "/keys/{id}/revocation/verify",
            p(P::KeysWrite),
            post(key::verify_revocation),
        ),
        page(
            M::GET,
            "/keys/{id}/reveal",
            p(P::KeysReveal),
            get(key::reveal_form),
        ),
        page(
            M::POST,
            "/keys/{id}/reveal",
            p(P::KeysReveal),
            post(key::reveal),
        ),
        page(
            M::GET,
            "/keys/{id}/delete",
            p(P::KeysDelete),
            get(key::delete_form),
        ),
        page(
            M::POST,
            "/keys/{id}/delete",
            p(P::KeysDelete),
            post(key::delete),
        ),
        page(
            M::POST,
            "/keys/{id}/restore",
            p(P::KeysDelete),
            post(key::restore),
        ),
        page(
            M::POST,
            "/keys/{id}/purge",
            p(P::KeysPurge),
            post(key::purge),
        ),
        page(
            M::GET,
            "/keys/{id}/freeze",
            p(P::KeysWrite),
            get(freeze::key_form),
        ),
        page(
            M::POST,
            "/keys/{id}/freeze",
            p(P::KeysWrite),
            post(freeze::freeze_key),
        ),
        page(
            M::POST,
            "/keys/{id}/unfreeze",
            p(P::KeysWrite),
            post(freeze::unfreeze_key),
        ),
        page(
            M::GET,
            "/app-tokens/{id}/freeze",
            p(P::AppTokensWrite),
            get(freeze::token_form),
        ),
        page(
            M::POST,
            "/app-tokens/{id}/freeze",
            p(P::AppTokensWrite),
            post(freeze::freeze_token),
        ),
        page(
            M::POST,
            "/app-tokens/{id}/unfreeze",
            p(P::AppTokensWrite),
            post(freeze::unfreeze_token),
        ),
        page(
            M::GET,
            "/app-tokens",
            p(P::AppTokensRead),
            get(tokens::list),
        ),
        page(
            M::POST,
            "/app-tokens",
            p(P::AppTokensWrite),
            post(tokens::create),
        ),
        page(
            M::POST,
            "/app-tokens/{id}/revoke",
            p(P::AppTokensWrite),
            post(tokens::revoke),
        ),
        page(M::GET, "/usage", p(P::KeysRead), get(usage::page)),
        page(
            M::GET,
            "/recommendations",
            p(P::KeysRead),
            get(usage::recommendations_page),
        ),
        page(M::GET, "/alerts", p(P::KeysRead), get(alerts::page_alerts)),
        page(
            M::POST,
            "/alerts/{id}/note",
            p(P::KeysWrite),
            post(alerts::note),
        ),
        page(M::GET, "/approvals", SignedIn, get(admin::approvals)),
        page(
            M::POST,
            "/approvals/{id}/decide",
            p(P::ApprovalsDecide),
            post(admin::decide),
        ),
        page(
            M::POST,
            "/approvals/{id}/cancel",
            SignedIn,
            post(admin::cancel),
        ),
        page(M::GET, "/audit", p(P::AuditRead), get(admin::audit)),
        page(M::GET, "/users", p(P::UsersRead), get(admin::users)),
        page(M::POST, "/users", p(P::UsersWrite), post(admin::add_user)),
        page(
            M::POST,
            "/users/{id}/enable",
            p(P::UsersWrite),
            post(admin::enable_user),
        ),
        page(
            M::POST,
            "/users/{id}/disable",
            p(P::UsersWrite),
            post(admin::disable_user),
        ),
        page(M::GET, "/settings", SignedIn, get(admin::settings)),
        page(
            M::POST,
            "/settings/mfa",
            p(P::AccessWrite),
            post(admin::save_mfa_policy),
        ),
        page(
            M::POST,
            "/settings/backup",
            p(P::VaultBackup),
            post(admin::download_backup),
        ),
        page(
            M::POST,
            "/settings/notifications",
            SignedIn,
            post(admin::save_subscription),
        ),
        page(
            M::POST,
            "/settings/notifications/delete",
            SignedIn,
            post(admin::delete_subscription),
        ),
        page(
            M::POST,
            "/logout/everywhere",
            SignedIn,
            post(admin::sign_out_everywhere),
        ),
    ]
}

/// The API, the health checks, `/metrics` and the OpenAPI document.
fn api() -> Vec<Route> {
    use Guard::{Public, SignedIn, SteppedUp};
    use Method as M;
    use Permission as P;
    let p = Guard::Permission;
    vec![
        api_route(M::GET, "/healthz", Public, get(http::healthz)),
        api_route(M::GET, "/readyz", Public, get(http::readyz)),
        api_route(M::GET, "/metrics", Public, get(http::metrics)),
        api_route(M::GET, "/api/v1/openapi.json", Public, get(http::openapi)),
        // keys
        api_route(
            M::POST,
            "/api/v1/keys",
            p(P::KeysWrite),
            post(http::keys::create_key),
        ),
        api_route(
            M::GET,
            "/api/v1/keys",
            p(P::KeysRead),
            get(http::keys::list_keys),
        ),
        api_route(
            M::GET,
            "/api/v1/deleted-keys",
            p(P::KeysRead),
            get(http::keys::list_deleted_keys),
        ),
        api_route(
            M::GET,
            "/api/v1/keys/{id}",
            p(P::KeysRead),
            get(http::keys::get_key),
        ),
        api_route(
            M::PATCH,
            "/api/v1/keys/{id}",
            p(P::KeysWrite),
            patch(http::keys::update_key),
        ),
        api_route(
            M::DELETE,
            "/api/v1/keys/{id}",
            p(P::KeysDelete),
            delete(http::keys::delete_key),
        ),
        api_route(
            M::POST,
            "/api/v1/keys/{id}/enable",
            p(P::KeysWrite),
            post(http::keys::enable_key),
        ),
        api_route(
            M::POST,
            "/api/v1/keys/{id}/disable",
            p(P::KeysWrite),
            post(http::keys::disable_key),
        ),
        api_route(
            M::GET,
            "/api/v1/keys/{id}/versions",
            p(P::KeysRead),
            get(http::keys::list_versions),
        ),
        api_route(
            M::POST,
            "/api/v1/keys/{id}/versions",
            p(P::KeysRotate),
            post(http::keys::add_version),
        ),
        api_route(
            M::POST,
            "/api/v1/keys/{id}/restore",
            p(P::KeysDelete),
            post(http::keys::restore_key),
        ),
        api_route(
            M::POST,
            "/api/v1/keys/{id}/purge",
            p(P::KeysPurge),
            post(http::keys::purge_key),
        ),
        api_route(
            M::POST,
            "/api/v1/keys/{id}/reveal",
            p(P::KeysReveal),
            post(http::keys::reveal_key),
        ),
        api_route(
            M::POST,
            "/api/v1/keys/{id}/revoke",
            p(P::KeysWrite),
            post(http::keys::revoke_key),
        ),
        api_route(
            M::POST,
            "/api/v1/keys/{id}/revocation/verify",
            p(P::KeysWrite),
            post(http::keys::verify_revocation),
        ),
        api_route(
            M::POST,
            "/api/v1/webhooks",
            p(P::AccessWrite),
            post(http::webhooks::create_webhook),
        ),
        api_route(
            M::GET,
            "/api/v1/webhooks",
            p(P::AccessWrite),
            get(http::webhooks::list_webhooks),
        ),
        api_route(
            M::DELETE,
            "/api/v1/webhooks/{id}",
            p(P::AccessWrite),
            delete(http::webhooks::delete_webhook),
        ),
        api_route(
            M::GET,
            "/api/v1/webhooks/{id}/deliveries",
            p(P::AccessWrite),
            get(http::webhooks::list_deliveries),
        ),
        api_route(
            M::POST,
            "/api/v1/keys/{id}/rotations",
            p(P::KeysRotate),
            post(http::rotations::start_rotation),
        ),
        api_route(
            M::GET,
            "/api/v1/keys/{id}/rotations",
            p(P::KeysRead),
            get(http::rotations::list_rotations),
        ),
        api_route(
            M::GET,
            "/api/v1/rotations/{id}",
            p(P::KeysRead),
            get(http::rotations::get_rotation),
        ),
        api_route(
            M::POST,
            "/api/v1/rotations/{id}/validate",
            p(P::KeysRotate),
            post(http::rotations::validate_rotation),
        ),
        api_route(
            M::POST,
            "/api/v1/rotations/{id}/canary",
            p(P::KeysRotate),
            post(http::rotations::canary_rotation),
        ),
        api_route(
            M::POST,
            "/api/v1/rotations/{id}/promote",
            p(P::KeysRotate),
            post(http::rotations::promote_rotation),
        ),
        api_route(
            M::POST,
            "/api/v1/rotations/{id}/retire",
            p(P::KeysRotate),
            post(http::rotations::retire_rotation),
        ),
        api_route(
            M::POST,
            "/api/v1/rotations/{id}/verify",
            p(P::KeysRotate),
            post(http::rotations::verify_rotation),
        ),
        api_route(
            M::POST,
            "/api/v1/rotations/{id}/cancel",
            p(P::KeysRotate),
            post(http::rotations::cancel_rotation),
        ),
        api_route(
            M::GET,
            "/api/v1/policies/rotation",
            p(P::KeysRead),
            get(http::keys::get_rotation_policy),
        ),
        api_route(
            M::PUT,
            "/api/v1/policies/rotation",
            p(P::AccessWrite),
            put(http::keys::set_rotation_policy),
        ),
        api_route(
            M::GET,
            "/api/v1/health",
            p(P::KeysRead),
            get(http::health::health),
        ),
        api_route(
            M::GET,
            "/api/v1/keys/{id}/health",
            p(P::KeysRead),
            get(http::health::key_health),
        ),
        api_route(
            M::GET,
            "/api/v1/compliance",
            p(P::KeysRead),
            get(http::compliance::compliance),
        ),
        api_route(
            M::GET,
            "/api/v1/keys/{id}/compliance",
            p(P::KeysRead),
            get(http::compliance::key_compliance),
        ),
        api_route(
            M::GET,
            "/api/v1/keys/{id}/impact",
            p(P::KeysRead),
            get(http::keys::key_impact),
        ),
        api_route(
            M::POST,
            "/api/v1/keys/{id}/validate",
            p(P::KeysWrite),
            post(http::keys::validate_key),
        ),
        api_route(
            M::POST,
            "/api/v1/services/{id}/validate",
            p(P::KeysWrite),
            post(http::keys::validate_secret),
        ),
        api_route(
            M::DELETE,
            "/api/v1/keys/{id}/flag",
            p(P::KeysWrite),
            delete(http::keys::clear_key_flag),
        ),
        // alerts
        api_route(
            M::GET,
            "/api/v1/alerts",
            p(P::KeysRead),
            get(http::alerts::list_alerts),
        ),
        api_route(
            M::GET,
            "/api/v1/alerts/{id}",
            p(P::KeysRead),
            get(http::alerts::get_alert),
        ),
        api_route(
            M::POST,
            "/api/v1/alerts/{id}/acknowledge",
            p(P::KeysWrite),
            post(http::alerts::acknowledge_alert),
        ),
        api_route(
            M::POST,
            "/api/v1/alerts/{id}/resolve",
            p(P::KeysWrite),
            post(http::alerts::resolve_alert),
        ),
        api_route(
            M::GET,
            "/api/v1/alert-mutes",
            p(P::KeysRead),
            get(http::alerts::list_mutes),
        ),
        api_route(
            M::POST,
            "/api/v1/alert-mutes",
            p(P::KeysWrite),
            post(http::alerts::create_mute),
        ),
        api_route(
            M::DELETE,
            "/api/v1/alert-mutes/{id}",
            p(P::KeysWrite),
            delete(http::alerts::delete_mute),
        ),
        api_route(
            M::GET,
            "/api/v1/policies/response",
            p(P::KeysRead),
            get(http::alerts::get_response_policy),
        ),
        api_route(
            M::PUT,
            "/api/v1/policies/response",
            p(P::AccessWrite),
            put(http::alerts::set_response_policy),
        ),
        api_route(
            M::GET,
            "/api/v1/containments",
            p(P::KeysRead),
            get(http::alerts::list_containments),
        ),
        api_route(
            M::POST,
            "/api/v1/keys/{id}/freeze",
            p(P::KeysWrite),
            post(http::alerts::freeze_key),
        ),
        api_route(
            M::POST,
            "/api/v1/keys/{id}/unfreeze",
            p(P::KeysWrite),
            post(http::alerts::unfreeze_key),
        ),
        api_route(
            M::POST,
            "/api/v1/app-tokens/{id}/freeze",
            p(P::AppTokensWrite),
            post(http::alerts::freeze_token),
        ),
        api_route(
            M::POST,
            "/api/v1/app-tokens/{id}/unfreeze",
            p(P::AppTokensWrite),
            post(http::alerts::unfreeze_token),
        ),
        // pools and usage
        api_route(
            M::GET,
            "/api/v1/pools",
            p(P::KeysRead),
            get(http::usage::list_pools),
        ),
        api_route(
            M::PUT,
            "/api/v1/pools/{service}/{environment}",
            p(P::KeysWrite),
            put(http::usage::set_pool),
        ),
        api_route(
            M::GET,
            "/api/v1/usage",
            p(P::KeysRead),
            get(http::usage::usage),
        ),
        api_route(
            M::GET,
            "/api/v1/forecasts",
            p(P::KeysRead),
            get(http::usage::forecasts),
        ),
        api_route(
            M::GET,
            "/api/v1/recommendations",
            p(P::KeysRead),
            get(http::usage::recommendations),
        ),
        // catalog
        api_route(
            M::GET,
            "/api/v1/services",
            p(P::CatalogRead),
            get(http::catalog::list_services),
        ),
        api_route(
            M::POST,
            "/api/v1/services",
            p(P::CatalogWrite),
            post(http::catalog::create_service),
        ),
        api_route(
            M::GET,
            "/api/v1/services/{id}",
            p(P::CatalogRead),
            get(http::catalog::get_service),
        ),
        api_route(
            M::PATCH,
            "/api/v1/services/{id}",
            p(P::CatalogWrite),
            patch(http::catalog::update_service),
        ),
        api_route(
            M::GET,
            "/api/v1/categories",
            p(P::CatalogRead),
            get(http::catalog::list_categories),
        ),
        api_route(
            M::POST,
            "/api/v1/categories",
            p(P::CatalogWrite),
            post(http::catalog::create_category),
        ),
        api_route(
            M::GET,
            "/api/v1/environments",
            p(P::CatalogRead),
            get(http::catalog::list_environments),
        ),
        api_route(
            M::POST,
            "/api/v1/environments",
            p(P::CatalogWrite),
            post(http::catalog::create_environment),
        ),
        // app tokens
        api_route(
            M::POST,
            "/api/v1/app-tokens",
            p(P::AppTokensWrite),
            post(http::app_tokens::create_app_token),
        ),
        api_route(
            M::GET,
            "/api/v1/app-tokens",
            p(P::AppTokensRead),
            get(http::app_tokens::list_app_tokens),
        ),
        api_route(
            M::GET,
            "/api/v1/app-tokens/{id}",
            p(P::AppTokensRead),
            get(http::app_tokens::get_app_token),
        ),
        api_route(
            M::POST,
            "/api/v1/app-tokens/{id}/revoke",
            p(P::AppTokensWrite),
            post(http::app_tokens::revoke_app_token),
        ),
        // signing in, sessions, MFA
        api_route(
            M::POST,
            "/api/v1/auth/login",
            Public,
            post(http::sessions::sign_in),
        ),
        api_route(
            M::POST,
            "/api/v1/auth/logout",
            SignedIn,
            post(http::sessions::sign_out),
        ),
        api_route(
            M::POST,
            "/api/v1/auth/logout-all",
            SignedIn,
            post(http::sessions::sign_out_everywhere),
        ),
        api_route(
            M::GET,
            "/api/v1/auth/session",
            SignedIn,
            get(http::sessions::who_am_i),
        ),
        api_route(
            M::GET,
            "/api/v1/auth/mfa",
            SignedIn,
            get(http::mfa::mfa_status),
        ),
        api_route(
            M::GET,
            "/api/v1/me/subscription",
            SignedIn,
            get(http::webhooks::get_subscription),
        ),
        api_route(
            M::PUT,
            "/api/v1/me/subscription",
            SignedIn,
            put(http::webhooks::put_subscription),
        ),
        api_route(
            M::DELETE,
            "/api/v1/me/subscription",
            SignedIn,
            delete(http::webhooks::delete_subscription),
        ),
        api_route(
            M::POST,
            "/api/v1/auth/mfa/enroll",
            SignedIn,
            post(http::mfa::start_enrolment),
        ),
        api_route(
            M::POST,
            "/api/v1/auth/mfa/confirm",
            SignedIn,
            post(http::mfa::confirm_enrolment),
        ),
        api_route(
            M::POST,
            "/api/v1/auth/mfa/verify",
            SignedIn,
            post(http::mfa::step_up),
        ),
        api_route(
            M::POST,
            "/api/v1/auth/mfa/recovery-codes",
            SteppedUp,
            post(http::mfa::regenerate_recovery_codes),
        ),
        api_route(
            M::GET,
            "/api/v1/auth/lockouts",
            p(P::UsersRead),
            get(http::sessions::list_lockouts),
        ),
        api_route(
            M::POST,
            "/api/v1/auth/lockouts/lift",
            p(P::UsersWrite),
            post(http::sessions::lift_lockout),
        ),
        api_route(
            M::GET,
            "/api/v1/sessions",
            p(P::UsersRead),
            get(http::sessions::list_sessions),
        ),
        api_route(
            M::DELETE,
            "/api/v1/sessions/{id}",
            p(P::UsersWrite),
            delete(http::sessions::end_session),
        ),
        api_route(M::POST, "/api/v1/setup", Public, post(http::users::setup)),
        // users and access
        api_route(
            M::GET,
            "/api/v1/users",
            p(P::UsersRead),
            get(http::users::list_users),
        ),
        api_route(
            M::POST,
            "/api/v1/users",
            p(P::UsersWrite),
            post(http::users::create_user),
        ),
        api_route(
            M::GET,
            "/api/v1/users/{id}",
            p(P::UsersRead),
            get(http::users::get_user),
        ),
        api_route(
            M::POST,
            "/api/v1/users/{id}/disable",
            p(P::UsersWrite),
            post(http::users::disable_user),
        ),
        api_route(
            M::POST,
            "/api/v1/users/{id}/enable",
            p(P::UsersWrite),
            post(http::users::enable_user),
        ),
        api_route(
            M::DELETE,
            "/api/v1/users/{id}/mfa",
            p(P::AccessWrite),
            delete(http::mfa::reset_mfa),
        ),
        api_route(
            M::PUT,
            "/api/v1/users/{id}/role",
            p(P::AccessWrite),
            put(http::access::set_user_role),
        ),
        api_route(
            M::PUT,
            "/api/v1/users/{id}/networks",
            p(P::AccessWrite),
            put(http::access::set_user_networks),
        ),
        api_route(
            M::GET,
            "/api/v1/users/{id}/grants",
            p(P::UsersRead),
            get(http::access::list_grants),
        ),
        api_route(
            M::POST,
            "/api/v1/users/{id}/grants",
            p(P::AccessWrite),
            post(http::access::add_grant),
        ),
        api_route(
            M::DELETE,
            "/api/v1/users/{id}/grants/{grant}",
            p(P::AccessWrite),
            delete(http::access::remove_grant),
        ),
        api_route(
            M::GET,
            "/api/v1/roles",
            p(P::UsersRead),
            get(http::access::list_roles),
        ),
        api_route(
            M::POST,
            "/api/v1/roles",
            p(P::AccessWrite),
            post(http::access::create_role),
        ),
        api_route(
            M::PATCH,
            "/api/v1/roles/{id}",
            p(P::AccessWrite),
            patch(http::access::update_role),
        ),
        api_route(
            M::DELETE,
            "/api/v1/roles/{id}",
            p(P::AccessWrite),
            delete(http::access::delete_role),
        ),
        api_route(
            M::PUT,
            "/api/v1/roles/{id}/networks",
            p(P::AccessWrite),
            put(http::access::set_role_networks),
        ),
        api_route(
            M::GET,
            "/api/v1/tokens",
            p(P::UsersRead),
            get(http::access::list_tokens),
        ),
        api_route(
            M::POST,
            "/api/v1/tokens",
            p(P::AccessWrite),
            post(http::access::create_token),
        ),
        api_route(
            M::POST,
            "/api/v1/tokens/{id}/revoke",
            p(P::AccessWrite),
            post(http::access::revoke_token),
        ),
        api_route(
            M::GET,
            "/api/v1/policies/mfa",
            p(P::UsersRead),
            get(http::mfa::get_mfa_policy),
        ),
        api_route(
            M::PUT,
            "/api/v1/policies/mfa",
            p(P::AccessWrite),
            put(http::mfa::set_mfa_policy),
        ),
        // approvals
        api_route(
            M::GET,
            "/api/v1/approvals",
            SignedIn,
            get(http::approvals::list_approvals),
        ),
        api_route(
            M::GET,
            "/api/v1/approvals/{id}",
            SignedIn,
            get(http::approvals::get_approval),
        ),
        api_route(
            M::POST,
            "/api/v1/approvals/{id}/approve",
            p(P::ApprovalsDecide),
            post(http::approvals::approve),
        ),
        api_route(
            M::POST,
            "/api/v1/approvals/{id}/deny",
            p(P::ApprovalsDecide),
            post(http::approvals::deny),
        ),
        api_route(
            M::POST,
            "/api/v1/approvals/{id}/cancel",
            SignedIn,
            post(http::approvals::cancel),
        ),
        api_route(
            M::GET,
            "/api/v1/policies/approvals",
            p(P::UsersRead),
            get(http::approvals::get_policy),
        ),
        api_route(
            M::PUT,
            "/api/v1/policies/approvals",
            p(P::AccessWrite),
            put(http::approvals::set_policy),
        ),
        // audit
        api_route(
            M::GET,
            "/api/v1/audit",
            p(P::AuditRead),
            get(http::audit::list_audit),
        ),
        api_route(
            M::GET,
            "/api/v1/audit/export",
            p(P::AuditExport),
            get(http::audit::export_audit),
        ),
        api_route(
            M::POST,
            "/api/v1/backups",
            p(P::VaultBackup),
            post(http::backups::create_backup),
        ),
        api_route(
            M::GET,
            "/api/v1/audit/verify",
            p(P::AuditRead),
            get(http::audit::verify_audit),
        ),
    ]
}

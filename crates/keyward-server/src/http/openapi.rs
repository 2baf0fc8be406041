//! The OpenAPI document: what each handler declares (utoipa), completed from the route
//! table so that every operation lists every status it can answer — 401/403 from its guard
//! (and 422 `no_session` for session-only ones),
//! 400/413/415/422 from its body, 400/422 from its query, 400/404 from its path, 500 from
//! anywhere — each with the error body. Derived, so a new route cannot forget them.

use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use super::auth::Guard;
use super::{
    access, alerts, app_tokens, approvals, audit, backups, catalog, compliance, health, keys, mfa,
    rotations, sessions, usage, users, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Keyward management API", description = "Self-hosted API key vault and key-injecting proxy. Errors are `{\"error\":{\"code\",\"message\"}}`."),
    paths(
        keys::create_key, keys::list_keys, keys::list_deleted_keys, keys::get_key, keys::update_key,
        keys::enable_key, keys::disable_key, keys::list_versions, keys::add_version, keys::delete_key,
        keys::restore_key, keys::purge_key, keys::reveal_key, keys::validate_secret, keys::validate_key, keys::key_impact, keys::revoke_key, keys::verify_revocation, keys::get_rotation_policy, keys::set_rotation_policy,
        catalog::list_services, catalog::get_service, catalog::create_service, catalog::update_service,
        catalog::list_categories, catalog::create_category, catalog::list_environments, catalog::create_environment,
        app_tokens::create_app_token, app_tokens::list_app_tokens, app_tokens::get_app_token, app_tokens::revoke_app_token,
        keys::clear_key_flag, usage::usage, usage::list_pools, usage::set_pool,
        audit::list_audit, audit::export_audit, audit::verify_audit, backups::create_backup,
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
        usage::forecasts, usage::recommendations, alerts::list_alerts, alerts::get_alert, alerts::acknowledge_alert, alerts::resolve_alert,
        alerts::create_mute, alerts::list_mutes, alerts::delete_mute,
        alerts::get_response_policy, alerts::set_response_policy, alerts::list_containments,
        alerts::freeze_key, alerts::unfreeze_key, alerts::freeze_token, alerts::unfreeze_token,
    ),
    modifiers(&BearerAuth),
    tags((name = "keys", description = "Stored API keys and their versions"), (name = "catalog", description = "Services, categories, environments"),
        (name = "app-tokens", description = "Credentials applications present to the proxy"),
        (name = "usage", description = "Metered calls through the proxy"),
        (name = "audit", description = "The tamper-evident audit trail"),
        (name = "backups", description = "Encrypted, signed backups of the whole vault"),
        (name = "users", description = "People who sign in"),
        (name = "auth", description = "Signing in and out; sessions; second factors"),
        (name = "access", description = "Roles, scoped grants, network allowlists, management tokens"),
        (name = "approvals", description = "Approval requests for sensitive operations, and the policy"),
        (name = "compliance", description = "Key strength and compliance checks"),
        (name = "health", description = "Key and service health: real traffic, provider flags, circuit breakers, probes"),
        (name = "notifications", description = "Webhooks for rotation, expiry, revocation, health and approval events; signed with HMAC-SHA256"),
        (name = "alerts", description = "What the anomaly detector found about keys and app tokens: acknowledge, resolve, mute"),
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

/// Why an undeclared status can happen, as the document says it.
fn describe(status: u16) -> &'static str {
    match status {
        400 => {
            "Malformed request: body, query or path cannot be read (`invalid_json`, `invalid_body`, `invalid_query`, `invalid_path`, …)"
        }
        401 => "Not authenticated (`unauthenticated`, `invalid_token`, `session_expired`, …)",
        403 => {
            "Refused: permission, scope, network, MFA, CSRF or approval (`forbidden`, `out_of_scope`, `step_up_required`, `approval_required`, …)"
        }
        404 => "No such object, or not one the caller may see",
        413 => "Body too large (`body_too_large`)",
        415 => "The body must be JSON (`unsupported_media_type`)",
        422 => {
            "The request is well-formed but not acceptable (a field's value, a reference, a policy)"
        }
        500 => {
            "Keyward could not complete the request (`internal_error`); nothing half-done is kept"
        }
        _ => "Error",
    }
}

/// The statuses an operation can answer beyond its handler's own, from how it is reached.
fn implied(guard: Guard, operation: &Operation) -> Vec<u16> {
    let mut statuses = vec![500];
    if guard != Guard::Public {
        statuses.extend([401, 403]);
    }
    // Session-only operations answer a token with `no_session`.
    if matches!(guard, Guard::SignedIn | Guard::SteppedUp) {
        statuses.push(422);
    }
    if operation.request_body.is_some() {
        statuses.extend([400, 413, 415, 422]);
    }
    let located = |place: ParameterIn| {
        operation.parameters.iter().flatten().any(|p| match p {
            RefOr::T(p) => p.parameter_in == place,
            RefOr::Ref(_) => false,
        })
    };
    if located(ParameterIn::Query) {
        statuses.extend([400, 422]);
    }
    if located(ParameterIn::Path) {
        statuses.extend([400, 404]);
    }
    statuses
}

/// The complete document served at `/api/v1/openapi.json`, given each operation's declared
/// guard (`guard_of(path, method)`, from the route table).
pub fn document(guard_of: impl Fn(&str, &str) -> Option<Guard>) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for (path, item) in &mut doc.paths.paths {
        let operations = [
            ("GET", &mut item.get),
            ("PUT", &mut item.put),
            ("POST", &mut item.post),
            ("DELETE", &mut item.delete),
            ("PATCH", &mut item.patch),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation.as_mut() else {
                continue;
            };
            let guard = guard_of(path, method).unwrap_or(Guard::Public);
            for status in implied(guard, operation) {
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(describe(status))
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                                        .build(),
                                )
                                .build(),
                        )
                    });
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{openapi as document, routes};

    /// Every routed API operation is in the document, and lists its guard's statuses.
    #[test]
    fn every_operation_lists_what_its_guard_body_and_parameters_can_answer() {
        let doc = document();
        let mut checked = 0;
        for route in routes() {
            if !route.path.starts_with("/api/v1/") || route.path == "/api/v1/openapi.json" {
                continue;
            }
            let item = doc
                .paths
                .paths
                .get(route.path)
                .unwrap_or_else(|| panic!("{route:?} is not documented"));
            let operation = match route.method.as_str() {
                "GET" => item.get.as_ref(),
                "PUT" => item.put.as_ref(),
                "POST" => item.post.as_ref(),
                "DELETE" => item.delete.as_ref(),
                "PATCH" => item.patch.as_ref(),
                _ => None,
            }
            .unwrap_or_else(|| panic!("{route:?} is not documented"));
            // Every routed operation is in the document; the guard's statuses, written out
            // here rather than taken from `implied`.
            let listed = &operation.responses.responses;
            if route.guard != Guard::Public {
                assert!(
                    listed.contains_key("401") && listed.contains_key("403"),
                    "{route:?}"
                );
            }
            checked += 1;
        }
        assert!(checked > 80, "only {checked} operations checked");
    }

    /// What schemathesis found missing before: a body's, a path's and a query's statuses.
    #[test]
    fn bodies_paths_and_queries_bring_their_statuses() {
        let doc = document();
        let statuses = |path: &str, method: &str| -> Vec<String> {
            let item = &doc.paths.paths[path];
            let op = match method {
                "get" => item.get.as_ref(),
                "post" => item.post.as_ref(),
                _ => None,
            }
            .expect("documented");
            op.responses.responses.keys().cloned().collect()
        };
        let create = statuses("/api/v1/keys", "post");
        for s in ["400", "401", "403", "413", "415", "422", "500"] {
            assert!(
                create.contains(&s.to_owned()),
                "POST /keys lacks {s}: {create:?}"
            );
        }
        let one = statuses("/api/v1/keys/{id}", "get");
        assert!(one.contains(&"404".to_owned()) && one.contains(&"400".to_owned()));
        assert!(!one.contains(&"415".to_owned()), "no body, no 415: {one:?}");
        let audit = statuses("/api/v1/audit", "get");
        assert!(audit.contains(&"422".to_owned()), "{audit:?}");
        let login = statuses("/api/v1/auth/login", "post");
        assert!(login.contains(&"415".to_owned()), "{login:?}");
    }
}

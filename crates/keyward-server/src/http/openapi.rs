//! The OpenAPI document: what each handler declares (utoipa), completed from the route
//! table so that every operation lists every status it can answer — 401/403 from its guard
//! (and 422 `no_session` for session-only ones),
//! 400/413/415/422 from its body, 400/422 from its query, 400/404 from its path, 500 from
//! anywhere — each with the error body. Derived, so a new route cannot forget them.

use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use super::ApiDoc;
use super::auth::Guard;

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

/// The schema of a built-in role: one of the names `Role::ALL` has (for `schema_with`).
pub fn role_schema() -> utoipa::openapi::schema::Object {
    use keyward_core::access::Role;
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(Role::ALL.iter().map(|r| r.as_str())))
        .build()
}

/// The schema of a permission set: names from `Permission::ALL` (for `schema_with`).
pub fn permissions_schema() -> utoipa::openapi::schema::Array {
    use keyward_core::access::Permission;
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .enum_values(Some(Permission::ALL.iter().map(|p| p.as_str()))),
        )
        .build()
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

//! The authorization matrix, generated from the route table (`keyward_server::http::routes`):
//! every route × anonymous × every built-in role (as a management token) × a grant scoped
//! away from the objects in the path × sessions (fresh MFA, stale MFA, MFA not yet set up,
//! expired) → the status the route's declared guard implies. A route whose handler does
//! not enforce its declaration — or that declares nothing but is not public — fails here.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use keyward_core::ManualClock;
use keyward_core::access::{Permission, Role};
use keyward_server::http::{Guard, routes};
use reqwest::header::COOKIE;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::browser::{Browser, PASSWORD, add_user, code_now, enrolled_user, sign_in, sign_in_with};
use crate::helpers::{Backend, OPENAI_KEY, TestApp};

/// Error codes that mean "authorization refused" (as opposed to a refusal by the
/// operation itself, such as `owner_required` or a validation error).
const AUTHZ_CODES: [&str; 6] = [
    "forbidden",
    "mfa_enrolment_required",
    "step_up_required",
    "csrf_failed",
    "network_not_allowed",
    "out_of_scope",
];

#[derive(Clone)]
enum Credential {
    None,
    Token(String),
    Session(Browser),
}

struct Caller {
    name: &'static str,
    credential: Credential,
    /// A second session of the same user, for `/auth/logout` (which would otherwise end
    /// the one the rest of the walk uses).
    spare: Option<Credential>,
    expect: Box<dyn Fn(&Guard) -> Expect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Past authorization: anything but 401 or an authorization 403.
    Allowed,
    Unauthenticated,
    Refused(&'static str),
    /// A session-only route called with a token: `no_session`.
    NoSession,
    /// Scoped away: never a success, never an out-of-scope object in the body.
    OutOfScope,
}

/// Values for the path's parameters: real objects, so an out-of-scope caller meets them.
struct Fixtures {
    params: BTreeMap<&'static str, String>,
    /// Ids an out-of-scope caller must never see.
    hidden: Vec<String>,
}

fn concrete(path: &str, f: &Fixtures, route_path: &str) -> String {
    let mut out = path.to_owned();
    let id = if route_path.starts_with("/api/v1/keys/") {
        &f.params["key"]
    } else if route_path.starts_with("/api/v1/services/") {
        &f.params["service"]
    } else if route_path.starts_with("/api/v1/app-tokens/") {
        &f.params["app_token"]
    } else if route_path.starts_with("/api/v1/users/") {
        &f.params["user"]
    } else if route_path.starts_with("/api/v1/roles/") {
        &f.params["role"]
    } else if route_path.starts_with("/api/v1/tokens/") {
        &f.params["token"]
    } else {
        &f.params["session"]
    };
    out = out.replace("{id}", id);
    out = out.replace("{grant}", &f.params["grant"]);
    out = out.replace("{service}", "openai");
    out.replace("{environment}", "production")
}

async fn send(
    app: &TestApp,
    credential: &Credential,
    method: &Method,
    path: &str,
) -> (StatusCode, Value) {
    let mut request = app
        .client
        .request(method.clone(), format!("{}{path}", app.base));
    match credential {
        Credential::None => {}
        Credential::Token(token) => request = request.bearer_auth(token),
        Credential::Session(b) => {
            request = request.header(COOKIE, &b.cookie);
            if !method.is_safe() {
                request = request.header("x-csrf-token", &b.csrf);
            }
        }
    }
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        request = request.json(&json!({}));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn check(
    expect: Expect,
    method: &Method,
    status: StatusCode,
    body: &Value,
    fixtures: &Fixtures,
) -> Result<(), String> {
    let code = body["error"]["code"].as_str().unwrap_or("");
    let authz_refusal = status == StatusCode::UNAUTHORIZED
        || (status == StatusCode::FORBIDDEN && AUTHZ_CODES.contains(&code));
    let ok = match expect {
        // Past authorization, and the handler answered (no 5xx for a bare request).
        Expect::Allowed => !authz_refusal && !status.is_server_error(),
        Expect::Unauthenticated => status == StatusCode::UNAUTHORIZED,
        Expect::Refused(want) => status == StatusCode::FORBIDDEN && code == want,
        Expect::NoSession => status == StatusCode::UNPROCESSABLE_ENTITY && code == "no_session",
        Expect::OutOfScope => {
            let text = body.to_string();
            // An error may repeat the id the caller sent; an answer must not show the object.
            let leaked = body.get("error").is_none()
                && fixtures.hidden.iter().any(|id| text.contains(id.as_str()));
            // Reading may succeed (the listing is filtered); changing must not.
            !leaked
                && status != StatusCode::UNAUTHORIZED
                && (*method == Method::GET || !status.is_success())
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected {expect:?}, got {status} {body}"))
    }
}

fn by_role(role: Role) -> impl Fn(&Guard) -> Expect {
    move |guard| match guard {
        Guard::Public | Guard::SignedIn => Expect::Allowed,
        Guard::SteppedUp => Expect::NoSession,
        Guard::Permission(p) if role.allows(*p) => Expect::Allowed,
        Guard::Permission(_) => Expect::Refused("forbidden"),
    }
}

#[tokio::test]
async fn every_route_answers_every_caller_as_its_guard_declares() {
    let start = Timestamp::from_second(1_796_000_010).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let app = TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone())
        .await
        .unwrap();

    // Objects for the paths: an LLM key, an app token for it, a user with a grant, a
    // custom role, a management token.
    let key = app
        .create_key("openai", "production", "matrix", OPENAI_KEY)
        .await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let app_token = app
        .app_token(json!({"name": "m", "services": ["openai"], "environments": ["production"]}))
        .await;
    let app_token_id = app_token["id"].as_str().unwrap().to_owned();
    let target = add_user(&app, "target", Role::Viewer).await;
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/roles",
            Some(json!({"id": "matrix-role", "permissions": ["keys_read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, grant) = app
        .call(
            Method::POST,
            &format!("/api/v1/users/{target}/grants"),
            Some(json!({"role": "key_manager", "scope": {"categories": ["financial-data"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{grant}");
    let (status, token) = app
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "victim", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{token}");
    let fixtures = Fixtures {
        params: BTreeMap::from([
            ("key", key_id.clone()),
            ("service", "openai".to_owned()),
            ("app_token", app_token_id.clone()),
            ("user", target.clone()),
            ("grant", grant["id"].as_str().unwrap().to_owned()),
            ("role", "matrix-role".to_owned()),
            ("token", token["id"].as_str().unwrap().to_owned()),
            ("session", "nosuchsession".to_owned()),
        ]),
        hidden: vec![key_id.clone(), app_token_id.clone()],
    };

    // Callers.
    let mut callers = vec![Caller {
        name: "anonymous",
        credential: Credential::None,
        spare: None,
        expect: Box::new(|g| {
            if *g == Guard::Public {
                Expect::Allowed
            } else {
                Expect::Unauthenticated
            }
        }),
    }];
    for role in Role::ALL {
        callers.push(Caller {
            name: role.as_str(),
            credential: Credential::Token(app.token_with_role(role).await),
            spare: None,
            expect: Box::new(by_role(role)),
        });
    }
    // An admin, but only for market data: nothing global, and the LLM key is out of reach.
    let (_, scoped) = app
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "fin-admin", "role": "admin",
                        "scope": {"categories": ["financial-data"]}})),
        )
        .await;
    callers.push(Caller {
        name: "out-of-scope admin",
        credential: Credential::Token(scoped["token"].as_str().unwrap().to_owned()),
        spare: None,
        expect: Box::new(|g| match g {
            Guard::Public | Guard::SignedIn => Expect::Allowed,
            Guard::SteppedUp => Expect::NoSession,
            Guard::Permission(p) if !p.scoped() => Expect::Refused("forbidden"),
            Guard::Permission(_) => Expect::OutOfScope,
        }),
    });
    // Sessions: a viewer (no MFA needed), an admin without a second factor yet, and an
    // admin whose MFA check is older than the step-up window.
    add_user(&app, "vera", Role::Viewer).await;
    let viewer = sign_in(&app, "vera", PASSWORD).await.unwrap();
    // Someone else's, so the viewer's "sign out everywhere" leaves it to expire.
    add_user(&app, "eve", Role::Viewer).await;
    let expiring = sign_in(&app, "eve", PASSWORD).await.unwrap();
    callers.push(Caller {
        name: "viewer session",
        credential: Credential::Session(viewer),
        spare: Some(Credential::Session(
            sign_in(&app, "vera", PASSWORD).await.unwrap(),
        )),
        expect: Box::new(|g| match g {
            Guard::SteppedUp => Expect::Refused("mfa_enrolment_required"),
            other => by_role(Role::Viewer)(other),
        }),
    });
    add_user(&app, "newbie", Role::Admin).await;
    let unenrolled = sign_in(&app, "newbie", PASSWORD).await.unwrap();
    callers.push(Caller {
        name: "admin session without MFA",
        credential: Credential::Session(unenrolled),
        spare: Some(Credential::Session(
            sign_in(&app, "newbie", PASSWORD).await.unwrap(),
        )),
        expect: Box::new(|g| match g {
            Guard::Public | Guard::SignedIn => Expect::Allowed,
            _ => Expect::Refused("mfa_enrolment_required"),
        }),
    });
    let (_, stale, phone) = enrolled_user(&app, "stella", Role::Admin).await;
    clock.advance(SignedDuration::from_mins(6));
    let stella_spare = sign_in_with(
        &app,
        json!({"username": "stella", "password": PASSWORD, "code": code_now(&app, &phone)}),
    )
    .await
    .unwrap();
    callers.push(Caller {
        name: "admin session, MFA 6 min ago",
        credential: Credential::Session(stale),
        spare: Some(Credential::Session(stella_spare)),
        expect: Box::new(|g| match g {
            Guard::SteppedUp => Expect::Refused("step_up_required"),
            Guard::Permission(p) if p.needs_step_up() => Expect::Refused("step_up_required"),
            other => by_role(Role::Admin)(other),
        }),
    });

    // Signing out would end a session mid-walk: those routes go last, `/auth/logout` with
    // the spare session and `/auth/logout-all` (which ends both) at the very end.
    let mut table = routes();
    table.sort_by_key(|r| match r.path {
        "/api/v1/auth/logout" => 1,
        "/api/v1/auth/logout-all" => 2,
        _ => 0,
    });
    let mut failures = Vec::new();
    let mut checked = 0;
    for caller in &callers {
        for r in &table {
            let path = concrete(r.path, &fixtures, r.path);
            let credential = match (&caller.spare, r.path) {
                (Some(spare), "/api/v1/auth/logout") => spare,
                _ => &caller.credential,
            };
            let (status, body) = send(&app, credential, &r.method, &path).await;
            let expect = (caller.expect)(&r.guard);
            if let Err(why) = check(expect, &r.method, status, &body, &fixtures) {
                failures.push(format!("{} {} as {}: {why}", r.method, r.path, caller.name));
            }
            checked += 1;
        }
    }
    // Expired: a session of the viewer's, idle past its limit. The first request learns
    // it ended; the cookie opens nothing after that either.
    clock.advance(SignedDuration::from_mins(31));
    let expired = Credential::Session(expiring);
    let (_, first) = send(&app, &expired, &Method::GET, "/api/v1/auth/session").await;
    assert_eq!(first["error"]["code"], "session_expired", "{first}");
    for r in &table {
        let path = concrete(r.path, &fixtures, r.path);
        let (status, body) = send(&app, &expired, &r.method, &path).await;
        let expect = if r.guard == Guard::Public {
            Expect::Allowed
        } else {
            Expect::Unauthenticated
        };
        if let Err(why) = check(expect, &r.method, status, &body, &fixtures) {
            failures.push(format!("{} {} as expired session: {why}", r.method, r.path));
        }
        checked += 1;
    }
    eprintln!(
        "authorization matrix: {checked} cells ({} routes × {} callers + expired session)",
        table.len(),
        callers.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= table.len() * 11, "{checked}");

    // Every permission is declared by some route, and every guarded route appears in the
    // OpenAPI document (the table and the docs cannot drift apart).
    for p in Permission::ALL {
        assert!(
            table.iter().any(|r| r.guard == Guard::Permission(p)),
            "no route declares {p:?}"
        );
    }
    let (_, openapi) = app.call(Method::GET, "/api/v1/openapi.json", None).await;
    for r in table
        .iter()
        .filter(|r| r.path.starts_with("/api/v1/") && r.path != "/api/v1/openapi.json")
    {
        let documented = &openapi["paths"][r.path][r.method.as_str().to_lowercase()];
        assert!(
            documented.is_object(),
            "{} {} is not in the OpenAPI document",
            r.method,
            r.path
        );
    }
}

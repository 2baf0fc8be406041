//! The authorization matrix, generated from the route table (`keyward_server::routes`):
//! every route, API and page, × anonymous × every built-in role (as a management token) ×
//! grants scoped away from the objects in the path (a token and a session) × sessions
//! (fresh MFA, stale MFA, MFA not yet set up, expired) → the answer the route's declared
//! guard implies: for the API its status and error code, for a page the redirect to sign
//! in, to enrolment or to the code prompt, or the refusal page. A route whose handler does
//! not enforce its declaration — or that declares nothing but is not public — fails here.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use keyward_core::ManualClock;
use keyward_core::access::{Permission, Role};
use keyward_server::routes::{Face, Guard, Route, routes};
use reqwest::header::{COOKIE, LOCATION};
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
    /// How this person signs in again, for the routes that end sessions (walked last, each
    /// with a session of its own so the rest of the walk keeps the main one).
    login: Option<Login>,
    expect: Box<Expectation>,
}

/// What a caller should meet at a route, from the route's face and declared guard.
type Expectation = dyn Fn(Face, &Guard) -> Expect;

struct Login {
    username: &'static str,
    phone: Option<keyward_crypto::totp::TotpSecret>,
}

/// Routes that end the session they are called with (or all of the person's sessions).
const ENDS_SESSIONS: [&str; 4] = [
    "/api/v1/auth/logout",
    "/logout",
    "/logout/everywhere",
    "/api/v1/auth/logout-all",
];

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
    /// A page: sent to the sign-in page.
    SignIn,
    /// A page: sent to enrol a second factor first.
    Enrol,
    /// A page: sent to the code prompt first.
    StepUp,
}

/// Values for the path's parameters: real objects, so an out-of-scope caller meets them.
struct Fixtures {
    params: BTreeMap<&'static str, String>,
    /// Ids an out-of-scope caller must never see.
    hidden: Vec<String>,
}

fn concrete(path: &str, f: &Fixtures, route_path: &str) -> String {
    let mut out = path.to_owned();
    let route_path = route_path.strip_prefix("/api/v1").unwrap_or(route_path);
    let route_path = &format!("/api/v1{route_path}");
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
    out = out.replace("{action}", "cancel");
    out = out.replace("{file}", "nosuch.css");
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

/// A page request as a browser sends it: the cookie, and a form post's `csrf` field.
async fn send_page(
    app: &TestApp,
    client: &reqwest::Client,
    credential: &Credential,
    method: &Method,
    path: &str,
) -> (StatusCode, Value) {
    let mut request = client.request(method.clone(), format!("{}{path}", app.base));
    let mut csrf = String::new();
    match credential {
        Credential::None => {}
        // Pages take sessions only: a token is no one.
        Credential::Token(token) => request = request.bearer_auth(token),
        Credential::Session(b) => {
            request = request.header(COOKIE, &b.cookie);
            csrf = b.csrf.clone();
        }
    }
    if !method.is_safe() {
        request = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let html = response.text().await.unwrap_or_default();
    // The refusal's code, as pages write it on their error message.
    let code = html
        .split("data-code=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_owned();
    (
        status,
        json!({"location": location, "code": code, "html": html}),
    )
}

fn check_page(
    expect: Expect,
    method: &Method,
    status: StatusCode,
    page: &Value,
    fixtures: &Fixtures,
) -> Result<(), String> {
    let location = page["location"].as_str().unwrap_or_default();
    let code = page["code"].as_str().unwrap_or_default();
    let html = page["html"].as_str().unwrap_or_default();
    // The guard's redirects: exactly these places (a handler's own redirect after a change,
    // such as signing out to `/login?notice=signed_out`, is not a refusal).
    let sent_to = |to: &str| {
        status == StatusCode::SEE_OTHER
            && (location == to || (to.ends_with('=') && location.starts_with(to)))
    };
    let authz_refusal = sent_to("/login")
        || sent_to("/mfa/enroll")
        || sent_to("/mfa/verify?next=")
        || (status == StatusCode::FORBIDDEN && AUTHZ_CODES.contains(&code));
    let ok = match expect {
        Expect::Allowed => !authz_refusal && !status.is_server_error(),
        Expect::SignIn | Expect::Unauthenticated => sent_to("/login"),
        Expect::Enrol => sent_to("/mfa/enroll"),
        Expect::StepUp => sent_to("/mfa/verify?next="),
        Expect::Refused(want) => status == StatusCode::FORBIDDEN && code == want,
        Expect::NoSession => false,
        Expect::OutOfScope => {
            let leaked =
                status.is_success() && fixtures.hidden.iter().any(|id| html.contains(id.as_str()));
            // Reading may succeed (lists are filtered); a form post must be refused, not
            // answered with the redirect that follows a change.
            !leaked && !sent_to("/login") && (*method == Method::GET || status.is_client_error())
        }
    };
    if ok {
        Ok(())
    } else {
        let shown: String = html.chars().take(300).collect();
        Err(format!(
            "expected {expect:?}, got {status} {location} [{code}] {shown}"
        ))
    }
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
        // Redirects are the pages' answers; the API never gives them.
        Expect::SignIn | Expect::Enrol | Expect::StepUp => false,
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

/// A management token: the API as its role allows; on pages, no one.
fn token_of(role: Role) -> impl Fn(Face, &Guard) -> Expect {
    move |face, guard| match (face, guard) {
        (_, Guard::Public) => Expect::Allowed,
        (Face::Page, _) => Expect::SignIn,
        (Face::Api, Guard::SignedIn | Guard::Enrolling) => Expect::Allowed,
        (Face::Api, Guard::SteppedUp) => Expect::NoSession,
        (Face::Api, Guard::Permission(p)) if role.allows(*p) => Expect::Allowed,
        (Face::Api, Guard::Permission(_)) => Expect::Refused("forbidden"),
    }
}

/// A session of someone with `role` and a fresh MFA check (or none needed).
fn session_of(role: Role) -> impl Fn(Face, &Guard) -> Expect {
    move |_, guard| match guard {
        Guard::Public | Guard::SignedIn | Guard::Enrolling => Expect::Allowed,
        Guard::SteppedUp => Expect::Allowed,
        Guard::Permission(p) if role.allows(*p) => Expect::Allowed,
        Guard::Permission(_) => Expect::Refused("forbidden"),
    }
}

fn anonymous(face: Face, guard: &Guard) -> Expect {
    match (face, guard) {
        (_, Guard::Public) => Expect::Allowed,
        (Face::Api, _) => Expect::Unauthenticated,
        (Face::Page, _) => Expect::SignIn,
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
        login: None,
        expect: Box::new(anonymous),
    }];
    for role in Role::ALL {
        callers.push(Caller {
            name: role.as_str(),
            credential: Credential::Token(app.token_with_role(role).await),
            login: None,
            expect: Box::new(token_of(role)),
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
        login: None,
        expect: Box::new(|face, g| match (face, g) {
            (_, Guard::Public) => Expect::Allowed,
            (Face::Page, _) => Expect::SignIn,
            (Face::Api, Guard::SignedIn | Guard::Enrolling) => Expect::Allowed,
            (Face::Api, Guard::SteppedUp) => Expect::NoSession,
            (Face::Api, Guard::Permission(p)) if !p.scoped() => Expect::Refused("forbidden"),
            (Face::Api, Guard::Permission(_)) => Expect::OutOfScope,
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
        login: Some(Login {
            username: "vera",
            phone: None,
        }),
        expect: Box::new(|face, g| match g {
            Guard::SteppedUp => Expect::Refused("mfa_enrolment_required"),
            other => session_of(Role::Viewer)(face, other),
        }),
    });
    add_user(&app, "newbie", Role::Admin).await;
    let unenrolled = sign_in(&app, "newbie", PASSWORD).await.unwrap();
    callers.push(Caller {
        name: "admin session without MFA",
        credential: Credential::Session(unenrolled),
        login: Some(Login {
            username: "newbie",
            phone: None,
        }),
        expect: Box::new(|face, g| match (face, g) {
            (_, Guard::Public | Guard::Enrolling) => Expect::Allowed,
            (Face::Api, Guard::SignedIn) => Expect::Allowed,
            // A permission the role lacks (an owner's) is refused before MFA is asked.
            (Face::Api, Guard::Permission(p)) if !Role::Admin.allows(*p) => {
                Expect::Refused("forbidden")
            }
            (Face::Api, _) => Expect::Refused("mfa_enrolment_required"),
            (Face::Page, _) => Expect::Enrol,
        }),
    });
    let (_, stale, phone) = enrolled_user(&app, "stella", Role::Admin).await;
    clock.advance(SignedDuration::from_mins(6));
    callers.push(Caller {
        name: "admin session, MFA 6 min ago",
        credential: Credential::Session(stale),
        login: Some(Login {
            username: "stella",
            phone: Some(phone),
        }),
        expect: Box::new(|face, g| {
            let stale = match face {
                Face::Api => Expect::Refused("step_up_required"),
                Face::Page => Expect::StepUp,
            };
            match g {
                Guard::SteppedUp => stale,
                Guard::Permission(p) if p.needs_step_up() && Role::Admin.allows(*p) => stale,
                other => session_of(Role::Admin)(face, other),
            }
        }),
    });
    // A person who reads everything but manages keys only for market data, with a fresh
    // MFA check: past every guard, refused by the use case for the LLM key.
    let (fina, fresh, fina_phone) = enrolled_user(&app, "fina", Role::Viewer).await;
    let (status, grant) = app
        .call(
            Method::POST,
            &format!("/api/v1/users/{fina}/grants"),
            Some(json!({"role": "key_manager", "scope": {"categories": ["financial-data"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{grant}");
    callers.push(Caller {
        name: "out-of-scope key manager session",
        credential: Credential::Session(fresh),
        login: Some(Login {
            username: "fina",
            phone: Some(fina_phone),
        }),
        expect: Box::new(|face, g| match g {
            Guard::Permission(p) if !Role::Viewer.allows(*p) && Role::KeyManager.allows(*p) => {
                Expect::OutOfScope
            }
            other => session_of(Role::Viewer)(face, other),
        }),
    });

    // Signing out would end a session mid-walk: those routes go last, each with a session
    // of its own.
    let mut table = routes();
    table.sort_by_key(|r| {
        ENDS_SESSIONS
            .iter()
            .position(|p| *p == r.path)
            .map_or(0, |i| i + 1)
    });
    let pages = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for caller in &callers {
        for r in &table {
            let credential = match (&caller.login, ENDS_SESSIONS.contains(&r.path)) {
                (Some(login), true) => fresh_session(&app, &clock, login).await,
                _ => caller.credential.clone(),
            };
            let expect = (caller.expect)(r.face, &r.guard);
            if let Err(why) = walk(&app, &pages, r, &credential, expect, &fixtures).await {
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
        let expect = anonymous(r.face, &r.guard);
        if let Err(why) = walk(&app, &pages, r, &expired, expect, &fixtures).await {
            failures.push(format!("{} {} as expired session: {why}", r.method, r.path));
        }
        checked += 1;
    }
    let page_routes = table.iter().filter(|r| r.face == Face::Page).count();
    eprintln!(
        "authorization matrix: {checked} cells ({} routes — {} API, {page_routes} pages — × {} callers + expired session)",
        table.len(),
        table.len() - page_routes,
        callers.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= table.len() * 12, "{checked}");
    assert!(page_routes >= 49, "{page_routes} page routes");

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
        .filter(|r| r.face == Face::Api)
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

/// One cell: the route called by one credential, judged by its face's rules.
async fn walk(
    app: &TestApp,
    pages: &reqwest::Client,
    r: &Route,
    credential: &Credential,
    expect: Expect,
    fixtures: &Fixtures,
) -> Result<(), String> {
    let path = concrete(r.path, fixtures, r.path);
    match r.face {
        Face::Api => {
            let (status, body) = send(app, credential, &r.method, &path).await;
            check(expect, &r.method, status, &body, fixtures)
        }
        Face::Page => {
            let (status, page) = send_page(app, pages, credential, &r.method, &path).await;
            check_page(expect, &r.method, status, &page, fixtures)
        }
    }
}

/// A new session for `login` (a new time step first when a code is needed: a code is
/// accepted once).
async fn fresh_session(app: &TestApp, clock: &ManualClock, login: &Login) -> Credential {
    let mut body = json!({"username": login.username, "password": PASSWORD});
    if let Some(phone) = &login.phone {
        clock.advance(SignedDuration::from_secs(31));
        body["code"] = json!(code_now(app, phone));
    }
    Credential::Session(sign_in_with(app, body).await.unwrap())
}

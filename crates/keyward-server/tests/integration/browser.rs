//! A browser's view of Keyward for tests: a session cookie and its CSRF token, signing in
//! (with a second factor where the user has one), and requests made with the cookie.

use keyward_core::access::Role;
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};

use keyward_crypto::totp::TotpSecret;

use crate::helpers::TestApp;

pub const PASSWORD: &str = "tangerine violin orbit";

#[derive(Debug, Clone)]
pub struct Browser {
    pub cookie: String,
    pub csrf: String,
    pub session_id: String,
}

pub async fn add_user(app: &TestApp, name: &str, role: Role) -> String {
    app.app
        .add_user(
            &keyward_app::Actor::system("test"),
            name,
            SecretString::from(PASSWORD),
            role,
        )
        .await
        .unwrap()
        .id
        .to_string()
}

pub async fn sign_in(
    app: &TestApp,
    name: &str,
    password: &str,
) -> Result<Browser, (StatusCode, Value)> {
    sign_in_with(app, json!({"username": name, "password": password})).await
}

/// Signs in with the password and a TOTP code (or whatever `body` holds).
pub async fn sign_in_with(app: &TestApp, body: Value) -> Result<Browser, (StatusCode, Value)> {
    let response = app
        .client
        .post(format!("{}/api/v1/auth/login", app.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    session_from(response).await.map(|(browser, _)| browser)
}

/// The new session an answer hands over (sign-in, MFA confirmation, step-up), with the
/// answer's body; or the refusal, which must not set a cookie.
pub async fn session_from(
    response: reqwest::Response,
) -> Result<(Browser, Value), (StatusCode, Value)> {
    let status = response.status();
    let set_cookie = response
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status != StatusCode::OK {
        assert!(set_cookie.is_none(), "no cookie for a refusal");
        return Err((status, body));
    }
    let set_cookie = set_cookie.unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let browser = Browser {
        cookie: set_cookie.split(';').next().unwrap().to_owned(),
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
        session_id: body["session"]["id"].as_str().unwrap().to_owned(),
    };
    Ok((browser, body))
}

/// A state-changing request with the cookie and its CSRF token that may hand over a new
/// session (`/auth/mfa/confirm`, `/auth/mfa/verify`).
pub async fn renew(
    app: &TestApp,
    b: &Browser,
    path: &str,
    body: Value,
) -> Result<(Browser, Value), (StatusCode, Value)> {
    let response = app
        .client
        .post(format!("{}{path}", app.base))
        .header(COOKIE, &b.cookie)
        .header("x-csrf-token", &b.csrf)
        .json(&body)
        .send()
        .await
        .unwrap();
    session_from(response).await
}

/// The user's phone: the code an authenticator app shows at the server's time now.
pub fn code_now(app: &TestApp, phone: &TotpSecret) -> String {
    phone
        .code_at(app.app.now().as_second().try_into().unwrap())
        .unwrap()
}

/// Enrols the signed-in user in TOTP: starts, reads the secret like a phone scanning the
/// QR code, confirms with a first code. Returns the renewed session, the phone and the
/// recovery codes.
pub async fn enrol(app: &TestApp, b: &Browser) -> (Browser, TotpSecret, Vec<String>) {
    let (status, setup) = browse(
        app,
        b,
        Method::POST,
        "/api/v1/auth/mfa/enroll",
        None,
        Some(&b.csrf),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{setup}");
    let phone = TotpSecret::from_base32(setup["secret"].as_str().unwrap()).unwrap();
    let (renewed, body) = renew(
        app,
        b,
        "/api/v1/auth/mfa/confirm",
        json!({"code": code_now(app, &phone)}),
    )
    .await
    .unwrap();
    let codes = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (renewed, phone, codes)
}

/// A user with `role`, signed in and enrolled in MFA (so the session is fresh).
pub async fn enrolled_user(app: &TestApp, name: &str, role: Role) -> (String, Browser, TotpSecret) {
    let id = add_user(app, name, role).await;
    let first = sign_in(app, name, PASSWORD).await.unwrap();
    let (browser, phone, _) = enrol(app, &first).await;
    (id, browser, phone)
}

pub async fn whoami(app: &TestApp, b: &Browser) -> (StatusCode, Value) {
    browse(
        app,
        b,
        Method::GET,
        "/api/v1/auth/session",
        None,
        None,
        None,
    )
    .await
}

/// A request with the browser's cookie; `csrf` and `site` say which protections it carries.
pub async fn browse(
    app: &TestApp,
    b: &Browser,
    method: Method,
    path: &str,
    body: Option<Value>,
    csrf: Option<&str>,
    site: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = app
        .client
        .request(method, format!("{}{path}", app.base))
        .header(COOKIE, &b.cookie);
    if let Some(csrf) = csrf {
        request = request.header("x-csrf-token", csrf);
    }
    if let Some(site) = site {
        request = request.header("sec-fetch-site", site);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

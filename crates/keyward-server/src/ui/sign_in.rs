//! `/login`, `/setup` and `/logout` as plain HTML forms.

use std::sync::Arc;

use axum::Form;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::frame::{bare, page};
use crate::http::auth::ClientAddress;
use crate::http::sessions::set_cookie;
use keyward_app::App;
use keyward_app::identity::mfa::SecondFactor;

#[derive(Default, Deserialize)]
pub struct Notice {
    /// A fixed message key (never text from the URL).
    #[serde(default)]
    notice: Option<String>,
}

fn notice_text(key: Option<&str>) -> Option<&'static str> {
    match key? {
        "set_up" => Some("Keyward is set up. Sign in with the owner you just created."),
        "signed_out" => Some("You are signed out."),
        _ => None,
    }
}

/// What the sign-in form shows again after a refusal: the username, never a secret.
struct LoginState<'a> {
    username: &'a str,
    error: Option<&'a str>,
    ask_code: bool,
    notice: Option<&'static str>,
}

fn login_markup(s: &LoginState<'_>) -> Markup {
    html! {
        section class="auth" aria-labelledby="title" {
            h1 id="title" { "Sign in to Keyward" }
            @if let Some(notice) = s.notice { p class="flash" role="status" { (notice) } }
            @if let Some(error) = s.error { p class="flash error" role="alert" { (error) } }
            form method="post" action="/login" {
                div class="field" {
                    label for="username" { "Username" }
                    input id="username" name="username" type="text" autocomplete="username"
                        required value=(s.username) autofocus[!s.ask_code];
                }
                div class="field" {
                    label for="password" { "Password" }
                    div class="secret" {
                        input id="password" name="password" type="password"
                            autocomplete="current-password" required;
                        button type="button" class="quiet" data-toggle-secret="password"
                            aria-pressed="false" hidden { "Show" }
                    }
                }
                div class="field" {
                    label for="code" { "Authenticator code" }
                    input id="code" name="code" type="text" inputmode="numeric"
                        autocomplete="one-time-code" spellcheck="false" autofocus[s.ask_code];
                    span class="help" { "Six digits from your app, if you set one up. Lost it? Use a recovery code." }
                }
                button type="submit" { "Sign in" }
            }
        }
    }
}

pub async fn login_form(Query(q): Query<Notice>) -> Response {
    let state = LoginState {
        username: "",
        error: None,
        ask_code: false,
        notice: notice_text(q.notice.as_deref()),
    };
    page(StatusCode::OK, bare("Sign in", login_markup(&state)))
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: SecretString,
    #[serde(default)]
    code: String,
}

/// A form post from another site is refused before anything else (the browser says so).
fn cross_site(parts: &Parts) -> bool {
    parts
        .headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| !matches!(site, "same-origin" | "none"))
}

pub async fn login(
    State(app): State<Arc<App>>,
    ClientAddress(source): ClientAddress,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    if cross_site(&parts) {
        return (StatusCode::FORBIDDEN, "cross-site form posts are refused").into_response();
    }
    let Ok(Form(form)) =
        Form::<LoginForm>::from_request(Request::from_parts(parts, body), &app).await
    else {
        return page(
            StatusCode::BAD_REQUEST,
            bare(
                "Sign in",
                login_markup(&LoginState {
                    username: "",
                    error: Some("The form was incomplete; please fill it in again."),
                    ask_code: false,
                    notice: None,
                }),
            ),
        );
    };
    let code = form.code.trim();
    let factor = if code.is_empty() {
        None
    } else if code.chars().all(|c| c.is_ascii_digit() || c == ' ') {
        Some(SecondFactor::Totp(SecretString::from(code.to_owned())))
    } else {
        Some(SecondFactor::RecoveryCode(SecretString::from(
            code.to_owned(),
        )))
    };
    match app
        .sign_in(&form.username, form.password, factor, source)
        .await
    {
        Ok(signed) => {
            let max_age = signed
                .session
                .expires_at
                .duration_since(app.now())
                .as_secs()
                .max(0);
            match set_cookie(&app, signed.token.expose_secret(), max_age) {
                Ok(cookie) => {
                    let mut response = Redirect::to("/").into_response();
                    response.headers_mut().insert(header::SET_COOKIE, cookie);
                    response
                }
                Err(e) => crate::http::error::ApiError::from(e).into_response(),
            }
        }
        Err(e) => {
            let (status, message, ask_code) = match e.code {
                "mfa_required" => (
                    StatusCode::UNAUTHORIZED,
                    "Enter the code from your authenticator app.",
                    true,
                ),
                "invalid_mfa_code" => (
                    StatusCode::UNAUTHORIZED,
                    "That code is wrong, expired or already used.",
                    true,
                ),
                "too_many_attempts" => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many failed attempts; wait a little and try again.",
                    false,
                ),
                "network_not_allowed" => (
                    StatusCode::FORBIDDEN,
                    "Signing in is not allowed from this network.",
                    false,
                ),
                _ => (
                    StatusCode::UNAUTHORIZED,
                    "The username or password is wrong.",
                    false,
                ),
            };
            let state = LoginState {
                username: &form.username,
                error: Some(message),
                ask_code,
                notice: None,
            };
            page(status, bare("Sign in", login_markup(&state)))
        }
    }
}

fn setup_markup(username: &str, error: Option<&str>) -> Markup {
    html! {
        section class="auth" aria-labelledby="title" {
            h1 id="title" { "Set up Keyward" }
            p { "Create the first owner. The one-time setup token was printed by " code { "keyward serve" } "." }
            @if let Some(error) = error { p class="flash error" role="alert" { (error) } }
            form method="post" action="/setup" {
                div class="field" {
                    label for="setup_token" { "Setup token" }
                    input id="setup_token" name="setup_token" type="password" autocomplete="off"
                        spellcheck="false" required;
                }
                div class="field" {
                    label for="username" { "Owner username" }
                    input id="username" name="username" type="text" autocomplete="username"
                        required value=(username);
                }
                div class="field" {
                    label for="password" { "Password" }
                    input id="password" name="password" type="password" autocomplete="new-password" required;
                    span class="help" { "At least 12 characters; a long passphrase is best." }
                }
                button type="submit" { "Create owner" }
            }
        }
    }
}

pub async fn setup_form() -> Response {
    page(StatusCode::OK, bare("Set up", setup_markup("", None)))
}

#[derive(Deserialize)]
pub struct SetupForm {
    setup_token: SecretString,
    username: String,
    password: SecretString,
}

pub async fn setup(
    State(app): State<Arc<App>>,
    ClientAddress(source): ClientAddress,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    if cross_site(&parts) {
        return (StatusCode::FORBIDDEN, "cross-site form posts are refused").into_response();
    }
    let Ok(Form(form)) =
        Form::<SetupForm>::from_request(Request::from_parts(parts, body), &app).await
    else {
        return page(
            StatusCode::BAD_REQUEST,
            bare("Set up", setup_markup("", Some("The form was incomplete."))),
        );
    };
    match app
        .complete_setup(
            form.setup_token.expose_secret(),
            &form.username,
            form.password,
            source,
        )
        .await
    {
        Ok(_) => Redirect::to("/login?notice=set_up").into_response(),
        Err(e) => {
            let status = crate::http::error::ApiError::from(e.clone()).status;
            page(
                status,
                bare("Set up", setup_markup(&form.username, Some(&e.message))),
            )
        }
    }
}

/// Signs out (a form post carrying the session's CSRF token).
pub async fn logout(State(app): State<Arc<App>>, request: Request) -> Response {
    let (super::frame::Viewer { caller, .. }, _) = match super::guard::form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    if let Some(session) = &caller.session
        && let Err(e) = app.sign_out(&caller.actor, session).await
    {
        return crate::http::error::ApiError::from(e).into_response();
    }
    let mut response = Redirect::to("/login?notice=signed_out").into_response();
    if let Ok(cleared) = set_cookie(&app, "", 0) {
        response.headers_mut().insert(header::SET_COOKIE, cleared);
    }
    response
}

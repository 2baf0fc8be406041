//! `/mfa/enroll` and `/mfa/confirm`: setting up the authenticator app — a QR code (SVG,
//! shown as a `data:` image, which the CSP allows) and the secret for typing in, then the
//! first code, then the recovery codes, shown once.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use maud::{Markup, html};
use secrecy::{ExposeSecret, SecretString};

use super::frame::{Viewer, bare, field, page};
use super::guard::form_post;
use crate::http::sessions::set_cookie;
use keyward_app::App;

fn start_markup(csrf: &str, required: bool) -> Markup {
    html! {
        section class="auth" aria-labelledby="title" {
            h1 id="title" { "Set up a second factor" }
            @if required {
                p class="flash" role="status" { "Your role needs an authenticator app before you can do anything else." }
            }
            p { "You will scan a QR code with an authenticator app (1Password, Google Authenticator, Authy, …) and type the first code it shows." }
            form method="post" action="/mfa/enroll" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Set up authenticator" }
            }
        }
    }
}

pub async fn start_page(viewer: Viewer) -> Response {
    let required = viewer.caller.actor.mfa == keyward_core::mfa::MfaStanding::EnrolmentRequired;
    page(
        StatusCode::OK,
        bare("Second factor", start_markup(&viewer.csrf, required)),
    )
}

fn confirm_markup(csrf: &str, secret: &str, qr: &str, error: Option<&str>) -> Markup {
    let qr = format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(qr)
    );
    html! {
        section class="auth" aria-labelledby="title" {
            h1 id="title" { "Scan this code" }
            @if let Some(error) = error { p class="flash error" role="alert" { (error) } }
            img class="qr" src=(qr) alt="QR code for your authenticator app" width="200" height="200";
            p { "Or type this secret into the app:" }
            p class="mono" id="totp-secret" { (secret) }
            form method="post" action="/mfa/confirm" {
                input type="hidden" name="csrf" value=(csrf);
                div class="field" {
                    label for="code" { "First code from the app" }
                    input id="code" name="code" type="text" inputmode="numeric"
                        autocomplete="one-time-code" required autofocus;
                }
                button type="submit" { "Confirm" }
            }
        }
    }
}

/// Starts enrolment (a new secret each time) and shows it.
pub async fn start(State(app): State<Arc<App>>, request: Request) -> Response {
    let (Viewer { caller, .. }, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let Some(session) = caller.session.clone() else {
        return (StatusCode::FORBIDDEN, "sign in first").into_response();
    };
    let user = match app.user(&session.user_id).await {
        Ok(user) => user,
        Err(e) => return crate::http::error::ApiError::from(e).into_response(),
    };
    match app.start_mfa_enrolment(&caller.actor, &user).await {
        Ok(setup) => {
            let csrf = field(&fields, "csrf").unwrap_or_default();
            page(
                StatusCode::OK,
                bare(
                    "Second factor",
                    confirm_markup(
                        csrf,
                        setup.secret.expose_secret(),
                        setup.qr_svg.expose_secret(),
                        None,
                    ),
                ),
            )
        }
        Err(e) => crate::http::error::ApiError::from(e).into_response(),
    }
}

/// Confirms with the first code; the session is replaced (new cookie), and the recovery
/// codes are shown once.
pub async fn confirm(State(app): State<Arc<App>>, request: Request) -> Response {
    let (Viewer { caller, .. }, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let Some(session) = caller.session.clone() else {
        return (StatusCode::FORBIDDEN, "sign in first").into_response();
    };
    let code = SecretString::from(field(&fields, "code").unwrap_or_default().to_owned());
    match app
        .confirm_mfa_enrolment(&caller.actor, &session, code)
        .await
    {
        Ok((renewed, codes)) => {
            let max_age = renewed
                .session
                .expires_at
                .duration_since(app.now())
                .as_secs()
                .max(0);
            let cookie = match set_cookie(&app, renewed.token.expose_secret(), max_age) {
                Ok(cookie) => cookie,
                Err(e) => return crate::http::error::ApiError::from(e).into_response(),
            };
            let markup = html! {
                section class="auth" aria-labelledby="title" {
                    h1 id="title" { "Save your recovery codes" }
                    p { "Each works once instead of a code if you lose your phone. They are shown only now." }
                    ul class="mono recovery" {
                        @for code in &codes { li { (code.expose_secret()) } }
                    }
                    a class="button" href="/" { "Continue to Keyward" }
                }
            };
            let mut response = page(StatusCode::OK, bare("Recovery codes", markup));
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            response
        }
        Err(e) => {
            // A wrong code: start again (a new secret), with the reason.
            let message = if e.code == "invalid_mfa_code" {
                "That code did not match; scan the new code below and try again.".to_owned()
            } else {
                e.message.clone()
            };
            let csrf = field(&fields, "csrf").unwrap_or_default();
            let user = match app.user(&session.user_id).await {
                Ok(user) => user,
                Err(e) => return crate::http::error::ApiError::from(e).into_response(),
            };
            match app.start_mfa_enrolment(&caller.actor, &user).await {
                Ok(setup) => page(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    bare(
                        "Second factor",
                        confirm_markup(
                            csrf,
                            setup.secret.expose_secret(),
                            setup.qr_svg.expose_secret(),
                            Some(&message),
                        ),
                    ),
                ),
                Err(e) => crate::http::error::ApiError::from(e).into_response(),
            }
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct Next {
    next: Option<String>,
}

fn verify_markup(csrf: &str, next: &str, error: Option<&str>) -> Markup {
    html! {
        section class="auth" aria-labelledby="title" {
            h1 id="title" { "Confirm it is you" }
            p { "This action needs a fresh code from your authenticator app." }
            @if let Some(error) = error { p class="flash error" role="alert" { (error) } }
            form method="post" action="/mfa/verify" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                div class="field" {
                    label for="code" { "Authentication code" }
                    input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code"
                        required autofocus;
                    span class="help" { "Or one of your recovery codes." }
                }
                button type="submit" { "Confirm" }
                " " a href="/" { "Cancel" }
            }
        }
    }
}

pub async fn verify_page(
    viewer: Viewer,
    axum::extract::Query(q): axum::extract::Query<Next>,
) -> Response {
    let next = q
        .next
        .filter(|n| super::frame::local_path(n))
        .unwrap_or_else(|| "/".into());
    page(
        StatusCode::OK,
        bare(
            "Confirm it is you",
            verify_markup(&viewer.csrf, &next, None),
        ),
    )
}

/// Step-up from a page: the session is swapped for one that records the check (new
/// cookie), then back to where the viewer was going.
pub async fn verify(State(app): State<Arc<App>>, request: Request) -> Response {
    let (Viewer { caller, csrf }, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let next = field(&fields, "next")
        .filter(|n| super::frame::local_path(n))
        .unwrap_or("/")
        .to_owned();
    let code = field(&fields, "code").unwrap_or_default().trim().to_owned();
    let factor = if code.chars().all(|c| c.is_ascii_digit() || c == ' ') {
        keyward_app::identity::mfa::SecondFactor::Totp(SecretString::from(code))
    } else {
        keyward_app::identity::mfa::SecondFactor::RecoveryCode(SecretString::from(code))
    };
    let Some(session) = caller.session.as_ref() else {
        return axum::response::Redirect::to("/login").into_response();
    };
    match app.step_up(&caller.actor, session, factor).await {
        Ok(renewed) => {
            let max_age = renewed
                .session
                .expires_at
                .duration_since(app.now())
                .as_secs()
                .max(0);
            match set_cookie(&app, renewed.token.expose_secret(), max_age) {
                Ok(cookie) => {
                    let mut response = axum::response::Redirect::to(&next).into_response();
                    response.headers_mut().insert(header::SET_COOKIE, cookie);
                    response
                }
                Err(e) => crate::http::error::ApiError::from(e).into_response(),
            }
        }
        Err(e) => {
            let status = crate::http::error::ApiError::from(e.clone()).status;
            page(
                status,
                bare(
                    "Confirm it is you",
                    verify_markup(&csrf, &next, Some(&e.message)),
                ),
            )
        }
    }
}

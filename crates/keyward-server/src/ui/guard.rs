//! The guard in front of every page, built from the route's declaration in the route table
//! (`crate::routes`): the page handlers behind it never check who may see them.
//!
//! A page takes only a session (the cookie; a form post also its `csrf` field). Someone not
//! signed in is sent to the sign-in page; someone the MFA policy wants enrolled first, to
//! enrolment (except on the enrolment pages themselves); a permission the viewer does not
//! hold anywhere is refused on a page that says so (audited as `access.denied`, as in the
//! API); a permission that needs a recent MFA check sends a stale viewer to the code prompt,
//! which comes back to the page (a GET) or to the page the form was on (a post). Reach to
//! the one object in the path stays the use case's check.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use keyward_app::App;
use keyward_core::mfa::MfaStanding;
use maud::html;
use secrecy::ExposeSecret;

use super::approval;
use super::frame::{Viewer, bare, error_page, local_path, page, unguarded};
use crate::http::auth::{Guard, authenticate_page, authorize, session_cookie};

/// The largest form a page accepts: ample for a key, a description and a reason.
const FORM_LIMIT: usize = 64 * 1024;

/// Runs `guard` for a page request and hands the admitted [`Viewer`] to the handler in the
/// request's extensions.
pub async fn admit(
    State((app, guard)): State<(Arc<App>, Guard)>,
    request: Request,
    next: Next,
) -> Response {
    if guard == Guard::Public {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    // A form post carries its CSRF token in the body: read it (bounded) and put it back.
    let (body, form_csrf) = if parts.method.is_safe() {
        (body, None)
    } else {
        let bytes = match axum::body::to_bytes(body, FORM_LIMIT).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "form_too_large",
                    "The form is too large.",
                );
            }
        };
        let csrf = url::form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        (Body::from(bytes), Some(csrf))
    };
    let caller = match authenticate_page(&parts, &app, form_csrf.as_deref()).await {
        Ok(caller) => caller,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            return Redirect::to("/login").into_response();
        }
        Err(e) => return refusal(e.status, e.code, &e.message),
    };
    if caller.actor.mfa == MfaStanding::EnrolmentRequired && guard != Guard::Enrolling {
        return Redirect::to("/mfa/enroll").into_response();
    }
    let csrf = match session_cookie(&parts, app.secure_cookies) {
        Some(cookie) => app.csrf_for_cookie(cookie).expose_secret().to_owned(),
        None => return Redirect::to("/login").into_response(),
    };
    let viewer = Viewer { caller, csrf };
    let permission = match guard {
        Guard::Permission(permission) => Some(permission),
        Guard::Public | Guard::SignedIn | Guard::Enrolling | Guard::SteppedUp => None,
    };
    if let Some(permission) = permission
        && let Err(refused) = authorize(&app, &parts, &viewer.caller, permission).await
    {
        return error_page(&viewer, &come_back_to(&parts), "Not allowed", refused);
    }
    if guard == Guard::SteppedUp
        && let Some(refused) = viewer.caller.actor.mfa.refusal(true)
    {
        return error_page(&viewer, &come_back_to(&parts), "Confirm it is you", refused);
    }
    parts.extensions.insert(viewer);
    next.run(Request::from_parts(parts, body)).await
}

/// Where the code prompt sends the viewer back to: the page itself for a GET; for a form
/// post, the page the form was on (the browser's same-origin `Referer`), else the start.
fn come_back_to(parts: &Parts) -> String {
    if parts.method.is_safe() {
        return parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    }
    parts
        .headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| url::Url::parse(r).ok())
        .filter(|r| {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok());
            let port = r.port().map(|p| format!(":{p}")).unwrap_or_default();
            host == Some(&format!("{}{port}", r.host_str().unwrap_or_default()))
        })
        .map(|r| match r.query() {
            Some(q) => format!("{}?{q}", r.path()),
            None => r.path().to_owned(),
        })
        .filter(|p| local_path(p))
        .unwrap_or_else(|| "/".to_owned())
}

/// A refusal before anyone is known (a form without its CSRF token, a network the account
/// may not use): a bare page with the reason.
fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    page(
        status,
        bare(
            "Not allowed",
            html! {
                section class="auth" {
                    h1 { "Not allowed" }
                    p class="flash error" role="alert" data-code=(code) { (message) }
                    p { a href="/" { "Back to Keyward" } }
                }
            },
        ),
    )
}

/// A form post from a signed-in page: the viewer its guard admitted (the session, with the
/// form's `csrf` field checked as the CSRF token) and the fields, with `approval` and
/// `reason` read onto the actor for every form alike.
pub async fn form_post(request: Request) -> Result<(Viewer, Vec<(String, String)>), Response> {
    let (mut parts, body) = request.into_parts();
    let mut viewer = parts.extensions.remove::<Viewer>().ok_or_else(unguarded)?;
    let fields = form_fields(body).await?;
    if let Some(approval) = approval::from_form(&fields) {
        viewer.caller.actor.approval = Some(approval);
    }
    Ok((viewer, fields))
}

/// A form's fields, read once the guard has let the post through.
pub async fn form_fields(body: Body) -> Result<Vec<(String, String)>, Response> {
    let bytes = axum::body::to_bytes(body, FORM_LIMIT).await.map_err(|_| {
        refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "form_too_large",
            "The form is too large.",
        )
    })?;
    Ok(url::form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::frame::field;

    fn post_from(referer: Option<&str>) -> Parts {
        let mut request =
            axum::http::Request::post("/keys/k1/rotate").header(header::HOST, "kw.local:8080");
        if let Some(r) = referer {
            request = request.header(header::REFERER, r);
        }
        request.body(()).map(|r| r.into_parts().0).expect("request")
    }

    #[test]
    fn a_post_comes_back_to_the_page_its_form_was_on_never_elsewhere() {
        assert_eq!(
            come_back_to(&post_from(Some(
                "http://kw.local:8080/keys/k1?tab=versions"
            ))),
            "/keys/k1?tab=versions"
        );
        assert_eq!(
            come_back_to(&post_from(Some("https://evil.example/keys"))),
            "/"
        );
        assert_eq!(
            come_back_to(&post_from(Some("http://kw.local:9999/x"))),
            "/"
        );
        assert_eq!(come_back_to(&post_from(None)), "/");
        let get = axum::http::Request::get("/keys/k1/reveal?x=1")
            .body(())
            .map(|r| r.into_parts().0)
            .expect("request");
        assert_eq!(come_back_to(&get), "/keys/k1/reveal?x=1");
    }

    #[tokio::test]
    async fn fields_are_read_from_a_form_body() {
        let fields = form_fields(Body::from("csrf=a&reason=x%20y"))
            .await
            .expect("a small form");
        assert_eq!(field(&fields, "reason"), Some("x y"));
    }
}

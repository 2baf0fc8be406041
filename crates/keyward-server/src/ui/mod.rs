//! The web UI: server-rendered HTML (maud: checked at compile time, escaped by default), one
//! stylesheet and one script of our own served from the binary under content-hashed names,
//! and a strict Content-Security-Policy on every page. Forms work without JavaScript: they
//! POST (with the session's CSRF token in a hidden field) and redirect.
//!
//! Pages call the same `App` use cases as the API; the session, CSRF and permission checks
//! are the API's own (`http::auth`), so a page can never do what the API would refuse.

use std::sync::LazyLock;

use axum::extract::{FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::http::auth::Caller;
use keyward_app::App;

pub(crate) mod add_key;
pub(crate) mod admin;
pub mod approval;
mod chart;
pub(crate) mod dashboard;
pub(crate) mod guard;
pub(crate) mod key;
pub(crate) mod mfa;
pub(crate) mod rotation;
pub(crate) mod sign_in;
pub(crate) mod tokens;
pub(crate) mod usage;

/// The policy every page is served with: our own files only, no inline code, no framing.
/// `connect-src 'self'` lets our script call our own API (the add-key wizard's Validate,
/// which keeps the typed key in its field); nothing else may be fetched.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

const CSS: &str = include_str!("../../static/app.css");
const JS: &str = include_str!("../../static/app.js");

/// Static files under names that change with their content, so they can be cached forever.
struct Assets {
    css: String,
    js: String,
}

static ASSETS: LazyLock<Assets> = LazyLock::new(|| {
    let name = |stem: &str, ext: &str, content: &str| {
        let hash = keyward_crypto::token::secret_hash(content);
        format!("{stem}.{}.{ext}", hex::encode(&hash[..6]))
    };
    Assets {
        css: name("app", "css", CSS),
        js: name("app", "js", JS),
    }
});

pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = if file == ASSETS.css {
        (CSS, "text/css; charset=utf-8")
    } else if file == ASSETS.js {
        (JS, "text/javascript; charset=utf-8")
    } else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// Every page: the CSP, no framing, no sniffing, no referrer to other sites; pages are never cached (they
/// show what a signed-in person may see), static files are.
pub(crate) async fn page_headers(request: Request, next: Next) -> Response {
    let is_static = request.uri().path().starts_with("/static/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: with no-referrer Chromium sends `Origin: null` on
    // form posts, which the CSRF check (rightly) refuses. Nothing leaks to other sites.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_static {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A signed-in person viewing a page, with the CSRF token their forms carry — admitted by
/// the page's guard (`guard::admit`), which hands it to the handler.
#[derive(Clone)]
pub struct Viewer {
    pub caller: Caller,
    pub csrf: String,
}

impl Viewer {
    /// Whether the viewer holds `permission` anywhere (for showing a section or button;
    /// per-key buttons also check the key's category and environment).
    pub fn may(&self, permission: keyward_core::access::Permission) -> bool {
        !matches!(
            self.caller.actor.access.reach(permission),
            keyward_core::access::Reach::Nowhere
        )
    }
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("actor", &self.caller.actor.name)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        parts.extensions.remove::<Viewer>().ok_or_else(unguarded)
    }
}

/// A page handler that wants a viewer on a route declared public: a mistake in the route
/// table, answered as one rather than served to nobody in particular.
fn unguarded() -> Response {
    tracing::error!("a page that needs a signed-in viewer is routed without a guard");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "this page is routed without its guard",
    )
        .into_response()
}

/// A form post from a signed-in page: the viewer its guard admitted (the session, with the
/// form's `csrf` field checked as the CSRF token) and the fields, with `approval` and
/// `reason` read onto the actor for every form alike.
pub async fn form_post(request: Request) -> Result<(Viewer, Vec<(String, String)>), Response> {
    let (mut parts, body) = request.into_parts();
    let mut viewer = parts.extensions.remove::<Viewer>().ok_or_else(unguarded)?;
    let fields = guard::form_fields(body).await?;
    if let Some(approval) = approval::from_form(&fields) {
        viewer.caller.actor.approval = Some(approval);
    }
    Ok((viewer, fields))
}

/// The value of a form field.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Category ids → their display names ("llm-providers" → "LLM Providers").
pub async fn category_names(
    app: &App,
) -> Result<std::collections::BTreeMap<String, String>, keyward_core::Error> {
    Ok(app
        .categories()
        .await?
        .into_iter()
        .map(|c| (c.id, c.name))
        .collect())
}

/// A standalone page (sign-in, setup): no navigation.
fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Keyward" }
                link rel="stylesheet" href={ "/static/" (ASSETS.css) };
                script type="module" src={ "/static/" (ASSETS.js) } {}
            }
            body { main id="main" { (body) } }
        }
    }
}

/// The sidebar sections, in the order of the UI guide.
const SECTIONS: [(&str, &str); 9] = [
    ("Dashboard", "/"),
    ("Add a key", "/keys/new"),
    ("Deleted keys", "/keys/deleted"),
    ("Usage", "/usage"),
    ("Approvals", "/approvals"),
    ("Audit log", "/audit"),
    ("App tokens", "/app-tokens"),
    ("Users & roles", "/users"),
    ("Settings", "/settings"),
];

fn section_list(viewer: &Viewer, current: &str) -> Markup {
    use keyward_core::access::Permission as P;
    let shown = |href: &str| match href {
        "/keys/new" => viewer.may(P::KeysWrite),
        "/audit" => viewer.may(P::AuditRead),
        "/users" => viewer.may(P::UsersRead),
        _ => true,
    };
    html! {
        ul {
            @for (label, href) in SECTIONS.iter().filter(|(_, href)| shown(href)) {
                li {
                    @if *href == current {
                        a href=(href) aria-current="page" { (label) }
                    } @else {
                        a href=(href) { (label) }
                    }
                }
            }
        }
    }
}

/// A page inside the frame: sidebar (a `<details>` menu at phone width), top bar with the
/// user menu and sign-out, and the content.
fn framed(viewer: &Viewer, current: &str, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Keyward" }
                link rel="stylesheet" href={ "/static/" (ASSETS.css) };
                script type="module" src={ "/static/" (ASSETS.js) } {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                div class="frame" {
                    div class="sidebar" {
                        // A plain list beside the page; at phone width a menu that opens
                        // without JavaScript.
                        div class="brand" { "Keyward" }
                        nav class="side" aria-label="Sections" { (section_list(viewer, current)) }
                        details class="menu" {
                            summary { "Keyward · menu" }
                            nav aria-label="Sections (menu)" { (section_list(viewer, current)) }
                        }
                    }
                    div class="main" {
                        header class="topbar" {
                            h1 { (title) }
                            div class="user" {
                                span { (viewer.caller.actor.name) " · " (viewer.caller.actor.role.as_str()) }
                                form method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(viewer.csrf);
                                    button class="quiet" type="submit" { "Sign out" }
                                }
                            }
                        }
                        main id="main" { (content) }
                    }
                }
            }
        }
    }
}

/// A page that could not be shown, with the reason (the error's own message).
pub fn error_page(viewer: &Viewer, current: &str, title: &str, e: keyward_core::Error) -> Response {
    if let Some(prompt) = step_up_prompt(viewer, &e, current) {
        return prompt;
    }
    let status = crate::http::error::ApiError::from(e.clone()).status;
    page(
        status,
        framed(
            viewer,
            current,
            title,
            html! { p class="flash error" role="alert" data-code=(e.code) { (e.message) } },
        ),
    )
}

/// A use case refused for want of a recent MFA check: the way on is the code prompt,
/// coming back to `next`.
pub fn step_up_prompt(viewer: &Viewer, e: &keyward_core::Error, next: &str) -> Option<Response> {
    if e.code == "step_up_required" {
        mfa::needs_step_up(viewer, next)
    } else {
        None
    }
}

/// A path on this site (`/keys/…`), never another origin (`//evil`, `https://…`): where a
/// form may send the browser back to.
pub fn local_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && !path.chars().any(|c| c.is_control() || c == '\\')
}

/// HTML with its status.
fn page(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

//! What every signed-in page is made of: the [`Viewer`] its guard admitted, the frame
//! (sidebar, top bar), bare pages for signing in, error pages that turn a missing step-up
//! into the code prompt, and small helpers for form fields and local paths.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::assets::ASSETS;
use crate::http::auth::Caller;
use keyward_app::App;

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
pub(super) fn unguarded() -> Response {
    tracing::error!("a page that needs a signed-in viewer is routed without a guard");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "this page is routed without its guard",
    )
        .into_response()
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

/// Every page's `<head>`: the title, our stylesheet and our script (nothing inline).
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Keyward" }
            link rel="stylesheet" href={ "/static/" (ASSETS.css) };
            script type="module" src={ "/static/" (ASSETS.js) } {}
        }
    }
}

/// A standalone page (sign-in, setup): no navigation.
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main id="main" { (body) } }
        }
    }
}

/// The sidebar sections, in the order of the UI guide.
const SECTIONS: [(&str, &str); 11] = [
    ("Dashboard", "/"),
    ("Add a key", "/keys/new"),
    ("Deleted keys", "/keys/deleted"),
    ("Analytics", "/usage"),
    ("Recommendations", "/recommendations"),
    ("Alerts", "/alerts"),
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
pub fn framed(viewer: &Viewer, current: &str, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
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
        needs_step_up(viewer, next)
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
pub fn page(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}
/// For pages whose action needs a recent MFA check (reveal, delete, restore, purge): when
/// the viewer's is stale, the way to the step-up page, which comes back to `next`.
pub fn needs_step_up(viewer: &Viewer, next: &str) -> Option<Response> {
    match viewer.caller.actor.mfa {
        keyward_core::mfa::MfaStanding::Stale { enrolled: true } => {
            let mut url = url::Url::parse("http://keyward.invalid/mfa/verify").ok()?;
            url.query_pairs_mut().append_pair("next", next);
            let target = format!("/mfa/verify?{}", url.query().unwrap_or_default());
            Some(axum::response::Redirect::to(&target).into_response())
        }
        _ => None,
    }
}

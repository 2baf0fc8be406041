//! Freezing a key or an app token by hand and lifting a freeze, one page for both kinds of
//! subject (`/keys/{id}/freeze`, `/app-tokens/{id}/freeze`). It says what is in force and
//! why (the alert that escalated, or who froze it); a freeze reaches every instance within
//! the snapshot poll. Lifting one always passes the approval gate, so the page's first
//! answer is "Request approval", and the inbox links the requester back here to complete
//! the approved request.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyward_core::access::Permission;
use keyward_core::alert::AlertSubject;
use keyward_core::response::{Containment, Measure};
use keyward_core::{Error, ErrorKind};
use maud::{Markup, html};

use super::approval;
use super::frame::{Viewer, error_page, field, framed, page, step_up_prompt};
use super::guard::form_post;
use super::parts::relative;
use keyward_app::App;

/// Which kind of subject a route is about; the path's `{id}` is parsed as one.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Key,
    Token,
}

impl Kind {
    fn subject(self, id: &str) -> Result<AlertSubject, Error> {
        AlertSubject::parse(
            match self {
                Self::Key => "key",
                Self::Token => "token",
            },
            id,
        )
    }
}

/// Where this subject's pages live: its freeze page and the page it came from.
fn paths(subject: &AlertSubject) -> (String, String) {
    match subject {
        AlertSubject::Key(id) => (format!("/keys/{id}/freeze"), format!("/keys/{id}")),
        AlertSubject::Token(id) => (
            format!("/app-tokens/{id}/freeze"),
            format!("/app-tokens#token-{id}"),
        ),
    }
}

/// The subject's name as its own page shows it; an error if the viewer may not change it.
async fn name_of(app: &App, viewer: &Viewer, subject: &AlertSubject) -> Result<String, Error> {
    let actor = &viewer.caller.actor;
    Ok(match subject {
        AlertSubject::Key(id) => app.key_for(actor, Permission::KeysWrite, id).await?.alias,
        AlertSubject::Token(id) => {
            app.app_token_for(actor, Permission::AppTokensWrite, id)
                .await?
                .name
        }
    })
}

/// One measure in force, in words: what, since when, why, by whom or which alert.
pub fn measure_words(c: &Containment, now: jiff::Timestamp) -> Markup {
    html! {
        @match c.measure {
            Measure::Freeze => { strong { "Frozen" } }
            Measure::Throttle(limit) => { strong { "Throttled" } " to " (limit.requests) " per " (limit.per_seconds) " s" }
        }
        " " (relative(now, Some(c.at)))
        @if let Some(alert) = &c.alert {
            " by alert " a href="/alerts?view=all" class="mono" { (alert) }
        } @else {
            " by " (c.by)
        }
        ": " (c.reason)
    }
}

struct Shown<'a> {
    error: Option<&'a Error>,
    under: Option<&'a str>,
    reason: &'a str,
    requested: bool,
}

async fn markup(
    app: &App,
    viewer: &Viewer,
    subject: &AlertSubject,
    shown: &Shown<'_>,
) -> Result<(String, Markup), Error> {
    let name = name_of(app, viewer, subject).await?;
    let now = app.now();
    let measures: Vec<Containment> = app
        .containments(&viewer.caller.actor)
        .await?
        .into_iter()
        .filter(|c| c.subject == *subject)
        .collect();
    let frozen = measures.iter().any(|c| c.measure == Measure::Freeze);
    let (here, back) = paths(subject);
    let what = match subject {
        AlertSubject::Key(_) => "key",
        AlertSubject::Token(_) => "app token",
    };
    let content = html! {
        @if shown.requested {
            p class="flash" role="status" { "Approval requested: the freeze is lifted once someone approves it and you complete it here (the approvals inbox links back)." }
        }
        @if let Some(e) = shown.error { p class="flash error" role="alert" data-code=(e.code) { (e.message) } }
        section class="panel narrow" aria-labelledby="freeze-title" data-frozen[frozen] {
            h2 id="freeze-title" { @if frozen { "Frozen" } @else { "Freeze" } }
            @if measures.is_empty() {
                p class="muted" { "Nothing is in force on this " (what) "." }
            } @else {
                ul class="plain" {
                    @for c in &measures { li { (measure_words(c, now)) } }
                }
            }
            @if frozen {
                form method="post" action={ (here.trim_end_matches("/freeze")) "/unfreeze" } {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    p { "Lifting the freeze lets " strong { (name) } " serve again on every instance (a throttle in force is lifted with it). It needs someone else's approval." }
                    (approval::controls(shown.error, shown.under, shown.reason, false, html! {
                        button type="submit" { "Lift the freeze" }
                    }))
                    " " a href=(back) { "Cancel" }
                }
            } @else {
                form method="post" action=(here) {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    p { "Freezing refuses every call "
                        @match subject { AlertSubject::Key(_) => { "that would use " strong { (name) } } AlertSubject::Token(_) => { "made with " strong { (name) } } }
                        " with " code { "403 frozen" } " on every instance within a second. Nothing is deleted; lifting it needs an approval." }
                    div class="field" {
                        label for="freeze-reason" { "Why" }
                        input id="freeze-reason" name="reason" type="text" required minlength="4" maxlength="500" value=(shown.reason);
                        span class="help" { "Kept in the audit trail and shown to whoever lifts it." }
                    }
                    button type="submit" class="danger" { "Freeze " (name) }
                    " " a href=(back) { "Cancel" }
                }
            }
        }
    };
    let title = if frozen {
        format!("Frozen: {name}")
    } else {
        format!("Freeze {name}")
    };
    Ok((title, content))
}

async fn show(
    app: &App,
    viewer: &Viewer,
    kind: Kind,
    id: &str,
    status: StatusCode,
    shown: &Shown<'_>,
) -> Response {
    let current = match kind {
        Kind::Key => "/",
        Kind::Token => "/app-tokens",
    };
    let result = async {
        let subject = kind.subject(id)?;
        markup(app, viewer, &subject, shown).await
    }
    .await;
    match result {
        Ok((title, content)) => page(status, framed(viewer, current, &title, content)),
        Err(e) => error_page(viewer, current, "Freeze", e),
    }
}

async fn form(
    app: Arc<App>,
    viewer: Viewer,
    kind: Kind,
    id: String,
    under: Option<&str>,
) -> Response {
    let shown = Shown {
        error: None,
        under,
        reason: "",
        requested: false,
    };
    show(&app, &viewer, kind, &id, StatusCode::OK, &shown).await
}

pub async fn key_form(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(under): Query<approval::UnderApproval>,
) -> Response {
    form(app, viewer, Kind::Key, id, under.id()).await
}

pub async fn token_form(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(under): Query<approval::UnderApproval>,
) -> Response {
    form(app, viewer, Kind::Token, id, under.id()).await
}

/// Freezes or lifts, then goes back to the subject's page; a refusal is answered on the
/// freeze page with the reason typed kept (and, for the approval gate, the way to ask).
async fn act(app: Arc<App>, kind: Kind, id: String, request: Request, freeze: bool) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let reason = field(&fields, "reason")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let result = async {
        let subject = kind.subject(&id)?;
        if freeze {
            app.freeze(&viewer.caller.actor, subject.clone(), &reason)
                .await?;
        } else {
            app.unfreeze(&viewer.caller.actor, subject.clone()).await?;
        }
        Ok::<_, Error>(subject)
    }
    .await;
    match result {
        Ok(subject) => {
            let (_, back) = paths(&subject);
            let to = match (&subject, freeze) {
                (AlertSubject::Key(_), true) => format!("{back}?notice=frozen"),
                (AlertSubject::Key(_), false) => format!("{back}?notice=unfrozen"),
                (AlertSubject::Token(_), _) => back,
            };
            Redirect::to(&to).into_response()
        }
        Err(e) if e.kind == ErrorKind::Accepted => {
            let shown = Shown {
                error: None,
                under: None,
                reason: "",
                requested: true,
            };
            show(&app, &viewer, kind, &id, StatusCode::OK, &shown).await
        }
        Err(e) => {
            let (here, _) = paths(&match kind.subject(&id) {
                Ok(subject) => subject,
                Err(e) => return error_page(&viewer, "/", "Freeze", e),
            });
            if let Some(prompt) = step_up_prompt(&viewer, &e, &here) {
                return prompt;
            }
            let status = crate::http::error::ApiError::from(e.clone()).status;
            let shown = Shown {
                error: Some(&e),
                under: None,
                reason: &reason,
                requested: false,
            };
            show(&app, &viewer, kind, &id, status, &shown).await
        }
    }
}

pub async fn freeze_key(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    act(app, Kind::Key, id, request, true).await
}

pub async fn unfreeze_key(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    act(app, Kind::Key, id, request, false).await
}

pub async fn freeze_token(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    act(app, Kind::Token, id, request, true).await
}

pub async fn unfreeze_token(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    act(app, Kind::Token, id, request, false).await
}

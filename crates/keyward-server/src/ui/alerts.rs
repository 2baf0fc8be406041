//! The alerts page: what the anomaly detector found about keys and app tokens (open,
//! acknowledged, resolved, or all), each with its reason in words and numbers, and the
//! forms to acknowledge or resolve one with a comment — also posted from the dashboard's
//! alert panel, which `alert_rows` draws too.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::alert::{Alert, AlertFilter, AlertStatus, AlertSubject};
use maud::{Markup, html};
use serde::Deserialize;

use super::frame::{Viewer, error_page, field, framed, local_path, page};
use super::guard::form_post;
use super::parts::relative;
use keyward_app::App;

#[derive(Debug, Default, Deserialize)]
pub struct AlertsView {
    view: Option<String>,
}

const VIEWS: [(&str, &str); 4] = [
    ("open", "Open"),
    ("acknowledged", "Acknowledged"),
    ("resolved", "Resolved"),
    ("all", "All"),
];

pub async fn page_alerts(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(q): Query<AlertsView>,
) -> Response {
    let view = q
        .view
        .filter(|v| VIEWS.iter().any(|(id, _)| id == v))
        .unwrap_or_else(|| "open".into());
    let filter = AlertFilter {
        status: view.parse::<AlertStatus>().ok(),
        ..AlertFilter::default()
    };
    let alerts = match app.alerts(&viewer.caller.actor, &filter, None, 200).await {
        Ok(a) => a,
        Err(e) => return error_page(&viewer, "/alerts", "Alerts", e),
    };
    let content = html! {
        (super::admin::tabs("/alerts", &view, &VIEWS))
        (alert_table(&viewer, &alerts, app.now(), &format!("/alerts?view={view}")))
    };
    page(
        StatusCode::OK,
        framed(&viewer, "/alerts", "Alerts", content),
    )
}

/// The alerts as a table with their actions; `back` is where the forms return to.
pub fn alert_table(viewer: &Viewer, alerts: &[Alert], now: jiff::Timestamp, back: &str) -> Markup {
    let acts = viewer.may(Permission::KeysWrite);
    html! {
        @if alerts.is_empty() {
            div class="table-wrap" { p class="empty" { "No alerts here. The detector watches every key and app token; what it finds shows up here and goes to the anomaly_detected webhooks." } }
        } @else {
            div class="table-wrap" {
                table class="keys alerts" {
                    thead { tr {
                        th scope="col" { "Severity" } th scope="col" { "About" } th scope="col" { "Signal" }
                        th scope="col" { "Why" } th scope="col" { "Opened" } th scope="col" { "Status" }
                        th scope="col" { span class="sr-only" { "Actions" } }
                    } }
                    tbody {
                        @for a in alerts {
                            tr id={ "alert-" (a.id) } {
                                td data-label="Severity" { span class={ "badge " (a.severity.as_str()) } { (a.severity.as_str()) } }
                                td data-label="About" class="mono" { (subject_link(&a.subject)) }
                                td data-label="Signal" { (a.signal.as_str().replace('_', " ")) }
                                td data-label="Why" { (a.reason) }
                                td data-label="Opened" { (relative(now, Some(a.opened_at))) }
                                td data-label="Status" {
                                    span class={ "badge " (a.status.as_str()) } { (a.status.as_str()) }
                                    @if a.stage != keyward_core::response::Stage::Alerted {
                                        " " span class="badge expired" data-stage=(a.stage.as_str()) { (a.stage.as_str()) }
                                    }
                                    @if let Some(note) = a.resolved.as_ref().or(a.acknowledged.as_ref()) {
                                        " " span class="muted small" { "by " (note.by) @if let Some(c) = &note.comment { ": " (c) } }
                                    }
                                }
                                td class="actions" {
                                    @if acts && a.status != AlertStatus::Resolved {
                                        form method="post" action={ "/alerts/" (a.id) "/note" } {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            input type="hidden" name="next" value=(back);
                                            label class="sr-only" for={ "comment-" (a.id) } { "Comment" }
                                            input id={ "comment-" (a.id) } name="comment" type="text" placeholder="Comment";
                                            @if a.status == AlertStatus::Open {
                                                button type="submit" name="to" value="acknowledged" class="small" { "Acknowledge" }
                                            }
                                            button type="submit" name="to" value="resolved" class="quiet small" { "Resolve" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn subject_link(subject: &AlertSubject) -> Markup {
    html! {
        @match subject {
            AlertSubject::Key(id) => a href={ "/keys/" (id) } { (id) },
            AlertSubject::Token(id) => a href="/app-tokens" { (id) },
        }
    }
}

/// Acknowledge or resolve, with a comment; back to the page the form was on.
pub async fn note(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let comment = field(&fields, "comment").filter(|c| !c.trim().is_empty());
    let back = field(&fields, "next")
        .filter(|n| local_path(n))
        .unwrap_or("/alerts")
        .to_owned();
    let result = async {
        let id = id
            .parse()
            .map_err(|_| Error::not_found("alert_not_found", "no such alert"))?;
        let actor = &viewer.caller.actor;
        match field(&fields, "to") {
            Some("acknowledged") => app.acknowledge_alert(actor, &id, comment).await,
            Some("resolved") => app.resolve_alert(actor, &id, comment).await,
            _ => Err(Error::invalid(
                "invalid_alert_status",
                "acknowledge or resolve",
            )),
        }
    }
    .await;
    match result {
        Ok(_) => Redirect::to(&back).into_response(),
        Err(e) => error_page(&viewer, "/alerts", "Alerts", e),
    }
}

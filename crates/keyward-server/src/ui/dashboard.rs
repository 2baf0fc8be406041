//! `/`: the key overview — totals, per-category counts, and the table of keys the viewer
//! may see (the API's own listing, so scopes apply).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use keyward_core::key::{Key, KeyFilter, KeyStatus, PageRequest};
use maud::{Markup, html};

use super::{Viewer, framed};
use crate::app::App;

fn status_badge(status: KeyStatus) -> Markup {
    let word = status.as_str();
    html! { span class={ "badge " (word) } { (word) } }
}

fn relative(now: jiff::Timestamp, at: Option<jiff::Timestamp>) -> Markup {
    let Some(at) = at else {
        return html! { span class="muted" { "never" } };
    };
    let secs = now.duration_since(at).as_secs().max(0);
    let text = match secs {
        0..60 => "just now".to_owned(),
        60..3_600 => format!("{} min ago", secs / 60),
        3_600..86_400 => format!("{} h ago", secs / 3_600),
        _ => format!("{} d ago", secs / 86_400),
    };
    html! { time datetime=(at.to_string()) title=(at.to_string()) { (text) } }
}

async fn page_for(app: &App, viewer: &Viewer) -> Result<Markup, keyward_core::Error> {
    let keys: Vec<Key> = app
        .list_keys(
            &viewer.caller.actor,
            KeyFilter::default(),
            None,
            PageRequest::new(None, Some(PageRequest::MAX_LIMIT))?,
        )
        .await?
        .items;
    let catalog = app.catalog().await?;
    let names = super::category_names(app).await?;
    let now = app.now();
    let mut by_category: BTreeMap<String, usize> = BTreeMap::new();
    for key in &keys {
        let category = catalog
            .get(&key.service_id)
            .map(|s| {
                names
                    .get(&s.category)
                    .cloned()
                    .unwrap_or_else(|| s.category.clone())
            })
            .unwrap_or_else(|| "Other".to_owned());
        *by_category.entry(category).or_default() += 1;
    }
    let active = keys
        .iter()
        .filter(|k| k.status(now) == KeyStatus::Active)
        .count();
    Ok(html! {
        section class="cards" aria-label="Totals" {
            div class="card" { div class="label" { "Keys" } div class="value" { (keys.len()) } }
            div class="card" { div class="label" { "Active" } div class="value" { (active) } }
            @for (category, count) in &by_category {
                div class="card" { div class="label" { (category) } div class="value" { (count) } }
            }
        }
        section aria-labelledby="keys-title" {
            h2 id="keys-title" { "Keys" }
            @if keys.is_empty() {
                div class="table-wrap" { p class="empty" { "No keys yet. Add your first key through the API or the add-key wizard." } }
            } @else {
                div class="table-wrap" {
                    table class="keys" {
                        thead { tr {
                            th scope="col" { "Alias" } th scope="col" { "Service" }
                            th scope="col" { "Environment" } th scope="col" { "Status" }
                            th scope="col" { "Hint" } th scope="col" { "Last used" }
                        } }
                        tbody {
                            @for key in &keys {
                                tr {
                                    td data-label="Alias" { (key.alias) }
                                    td data-label="Service" { (key.service_id) }
                                    td data-label="Environment" { (key.environment) }
                                    td data-label="Status" { (status_badge(key.status(now))) }
                                    td data-label="Hint" class="mono" { (key.current_hint) }
                                    td data-label="Last used" { (relative(now, key.last_used_at)) }
                                }
                                @if let Some(description) = &key.description {
                                    tr class="description" { td colspan="6" class="muted" { (description) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct Flash {
    /// The id of a key just added (only used to say so).
    added: Option<String>,
}

pub async fn page(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    axum::extract::Query(flash): axum::extract::Query<Flash>,
) -> Response {
    match page_for(&app, &viewer).await {
        Ok(content) => {
            let content = html! {
                @if flash.added.is_some() {
                    p class="flash" role="status" { "Key added. Its value is stored encrypted; only its hint is shown." }
                }
                p { a class="button" href="/keys/new" { "Add a key" } }
                (content)
            };
            super::page(StatusCode::OK, framed(&viewer, "/", "Dashboard", content))
        }
        Err(e) => {
            let status = crate::http::error::ApiError::from(e.clone()).status;
            super::page(
                status,
                framed(
                    &viewer,
                    "/",
                    "Dashboard",
                    html! { p class="flash error" role="alert" { (e.message) } },
                ),
            )
        }
    }
}

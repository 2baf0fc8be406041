//! `/usage`: requests per day over a week, a month or a quarter; success against failure;
//! cost; by service and by key. Built from per-key sums, so a viewer whose grants cover part
//! of the vault sees exactly the keys they may read.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use jiff::SignedDuration;
use keyward_core::Error;
use keyward_core::key::{KeyFilter, PageRequest};
use keyward_core::usage::{Granularity, UsageBucket, UsageQuery, UsageTotals};
use maud::{Markup, html};
use serde::Deserialize;

use super::chart::{daily, daily_bars, usd};
use super::frame::{Viewer, error_page, framed, page as html_page};
use keyward_app::App;

#[derive(Debug, Default, Deserialize)]
pub struct Range {
    days: Option<u16>,
}

const RANGES: [(u16, &str); 3] = [(7, "7 days"), (30, "30 days"), (90, "90 days")];

fn success_rate(t: &UsageTotals) -> String {
    if t.requests == 0 {
        "—".into()
    } else {
        format!(
            "{:.1}%",
            100.0 * t.requests.saturating_sub(t.errors) as f64 / t.requests as f64
        )
    }
}

async fn markup(app: &App, viewer: &Viewer, days: u16) -> Result<Markup, Error> {
    let actor = &viewer.caller.actor;
    let now = app.now();
    let per_key = app
        .usage_by_key(
            actor,
            &UsageQuery::new(
                now - SignedDuration::from_hours(24 * i64::from(days)),
                now,
                Granularity::Day,
                None,
                None,
                None,
            )?,
        )
        .await?;
    let keys = app
        .list_keys(
            actor,
            KeyFilter::default(),
            None,
            PageRequest::new(None, Some(PageRequest::MAX_LIMIT))?,
        )
        .await?
        .items;
    let alias: BTreeMap<String, (String, String)> = keys
        .into_iter()
        .map(|k| (k.id.to_string(), (k.alias, k.service_id)))
        .collect();
    let all: Vec<UsageBucket> = per_key.values().flatten().cloned().collect();
    let series = daily(&all, now, usize::from(days));
    let mut total = UsageTotals::default();
    for (_, t) in &series {
        total += *t;
    }
    let mut by_service: BTreeMap<String, UsageTotals> = BTreeMap::new();
    let mut by_key: Vec<(String, String, UsageTotals)> = Vec::new();
    for (id, buckets) in &per_key {
        let mut sum = UsageTotals::default();
        for b in buckets {
            sum += b.totals;
        }
        let (name, service) = alias
            .get(id)
            .cloned()
            .unwrap_or_else(|| ("(deleted key)".into(), "—".into()));
        *by_service.entry(service.clone()).or_default() += sum;
        by_key.push((name, service, sum));
    }
    by_key.sort_by_key(|k| std::cmp::Reverse(k.2.requests));
    let mut services: Vec<(String, UsageTotals)> = by_service.into_iter().collect();
    services.sort_by_key(|s| std::cmp::Reverse(s.1.requests));
    let table = |rows: Vec<(Markup, &UsageTotals)>, first: &str| {
        html! {
            div class="table-wrap" {
                table {
                    thead { tr {
                        th scope="col" { (first) } th scope="col" class="num" { "Requests" }
                        th scope="col" class="num" { "Failed" } th scope="col" class="num" { "Success" }
                        th scope="col" class="num" { "Tokens in / out" } th scope="col" class="num" { "Cost" }
                    } }
                    tbody {
                        @for (name, t) in rows {
                            tr {
                                td { (name) }
                                td class="num" { (t.requests) }
                                td class="num" { (t.errors) }
                                td class="num" { (success_rate(t)) }
                                td class="num" { (t.input_tokens) " / " (t.output_tokens) }
                                td class="num" { (usd(t.cost_nanos)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(html! {
        nav class="filters" aria-label="Period" {
            @for (n, label) in RANGES {
                @if n == days { a class="button small" aria-current="page" href={ "/usage?days=" (n) } { (label) } }
                @else { a class="button quiet small" href={ "/usage?days=" (n) } { (label) } }
            }
        }
        section class="cards" aria-label="Totals" {
            div class="card" { div class="label" { "Requests" } div class="value" { (total.requests) } }
            div class="card" { div class="label" { "Failed" } div class="value" { (total.errors) } }
            div class="card" { div class="label" { "Success rate" } div class="value" { (success_rate(&total)) } }
            div class="card" { div class="label" { "Cost" } div class="value" { (usd(total.cost_nanos)) } }
            div class="card" { div class="label" { "Cache hits" } div class="value" { (total.cache_hits) } }
        }
        div class="panel" { (daily_bars(&series, "Requests per day")) }
        div class="columns" {
            section aria-labelledby="by-service" {
                h2 id="by-service" { "By service" }
                @if services.is_empty() { p class="muted" { "No traffic in this period." } }
                @else { (table(services.iter().map(|(s, t)| (html! { (s) }, t)).collect(), "Service")) }
            }
            section aria-labelledby="by-key" {
                h2 id="by-key" { "By key" }
                @if by_key.is_empty() { p class="muted" { "No traffic in this period." } }
                @else { (table(by_key.iter().map(|(k, s, t)| (html! { (k) " " span class="muted" { (s) } }, t)).collect(), "Key")) }
            }
        }
    })
}

pub async fn page(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(range): Query<Range>,
) -> Response {
    let days = range
        .days
        .filter(|d| RANGES.iter().any(|(n, _)| n == d))
        .unwrap_or(30);
    match markup(&app, &viewer, days).await {
        Ok(content) => html_page(StatusCode::OK, framed(&viewer, "/usage", "Usage", content)),
        Err(e) => error_page(&viewer, "/usage", "Usage", e),
    }
}

//! `/usage`, the analytics page: a day (by hour), a week or a month (by day) or a quarter
//! (by week) of requests and failures, latency (p50/p95), cost and what the cache saved,
//! drawn as SVG on the server; every quota and budget against its limit with when it runs
//! out; the same sums by service, key and model; each view as CSV from the API. Built from
//! the shared rollups per key, so every instance shows the same and a viewer whose grants
//! cover part of the vault sees exactly the keys they may read.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use jiff::{SignedDuration, Timestamp};
use keyward_app::App;
use keyward_app::forecasts::{Allowance, AllowanceForecast};
use keyward_core::alert::AlertSubject;
use keyward_core::budget::BudgetPeriod;
use keyward_core::key::{KeyFilter, PageRequest};
use keyward_core::usage::{Granularity, UsageBucket, UsageGrouping, UsageQuery, UsageTotals};
use keyward_core::{Error, ErrorKind};
use maud::{Markup, html};
use serde::Deserialize;

use super::chart::{filled, latency_lines, quota_meter, requests_bars, usd, value_bars};
use super::frame::{Viewer, error_page, framed, page as html_page};

#[derive(Debug, Default, Deserialize)]
pub struct Range {
    view: Option<String>,
    /// The older links: 7, 30 or 90 days.
    days: Option<u16>,
}

/// A view: its name, label, how far back and in which buckets.
#[derive(Debug, Clone, Copy)]
struct View {
    name: &'static str,
    label: &'static str,
    hours: i64,
    granularity: Granularity,
}

const VIEWS: [View; 4] = [
    View {
        name: "day",
        label: "Day",
        hours: 24,
        granularity: Granularity::Hour,
    },
    View {
        name: "week",
        label: "Week",
        hours: 7 * 24,
        granularity: Granularity::Day,
    },
    View {
        name: "month",
        label: "Month",
        hours: 30 * 24,
        granularity: Granularity::Day,
    },
    View {
        name: "quarter",
        label: "Quarter",
        hours: 91 * 24,
        granularity: Granularity::Week,
    },
];

fn success_rate(t: &UsageTotals) -> String {
    t.success_rate()
        .map_or("—".into(), |r| format!("{:.1}%", r * 100.0))
}

fn ms(v: Option<u32>) -> String {
    v.map_or("—".into(), |v| format!("{v} ms"))
}

/// `Dec 6 14:05 UTC`.
pub fn when(at: Timestamp) -> String {
    at.strftime("%b %-d %H:%M UTC").to_string()
}

/// What an allowance is, in words: `500 requests a day`, `$5.00 a week`.
fn allowance_words(f: &AllowanceForecast) -> String {
    match &f.allowance {
        Allowance::Quota {
            unit,
            window_seconds,
        } => {
            let per = match window_seconds {
                3_600 => "an hour".to_owned(),
                86_400 => "a day".to_owned(),
                604_800 => "a week".to_owned(),
                2_592_000 | 2_678_400 => "a month".to_owned(),
                s if s % 86_400 == 0 => format!("per {} days", s / 86_400),
                s => format!("per {} h", s / 3_600),
            };
            format!("{} {} {per}", f.forecast.limit, unit.as_str())
        }
        Allowance::Budget { period } => {
            let period = match period {
                BudgetPeriod::Day => "day",
                BudgetPeriod::Month => "month",
            };
            format!("${:.2} budget per {period}", f.forecast.limit)
        }
    }
}

fn amount(f: &AllowanceForecast, v: f64) -> String {
    match f.allowance {
        Allowance::Budget { .. } => format!("${v:.2}"),
        Allowance::Quota { .. } => format!("{}", v.round()),
    }
}

/// Every quota and budget against its limit (shared sums), and when it runs out at the
/// current pace. Used on the analytics page, the dashboard and a key's page.
pub fn forecasts_table(forecasts: &[AllowanceForecast], now: Timestamp) -> Markup {
    html! {
        div class="table-wrap" {
            table data-forecasts=(forecasts.len()) {
                thead { tr {
                    th scope="col" { "Key or token" } th scope="col" { "Allowance" }
                    th scope="col" { "Used" } th scope="col" class="num" { "This window" }
                    th scope="col" { "Runs out" }
                } }
                tbody {
                    @for f in forecasts {
                        tr data-runs-out=[f.forecast.runs_out_at.map(|t| t.to_string())] {
                            td {
                                @match &f.subject {
                                    AlertSubject::Key(id) => a href={ "/keys/" (id) } { (f.name) },
                                    AlertSubject::Token(_) => { (f.name) " " span class="muted" { "token" } },
                                }
                            }
                            td { (allowance_words(f)) }
                            td { (quota_meter(Some(f.used_share()))) }
                            td class="num" { (amount(f, f.forecast.used)) " of " (amount(f, f.forecast.limit)) }
                            td {
                                @match f.forecast.runs_out_at {
                                    Some(at) if at <= now => span class="badge expired" { "spent" },
                                    Some(at) => {
                                        span class="badge expiring" { (when(at)) }
                                        " " span class="muted small" { "at this pace (" (format!("{:.1}", f.forecast.pace)) "× usual)" }
                                    },
                                    None => {
                                        span class="muted" { "not before " (when(f.forecast.window_end)) }
                                    },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn totals_table(rows: Vec<(Markup, &UsageTotals)>, first: &str) -> Markup {
    html! {
        div class="table-wrap" {
            table {
                thead { tr {
                    th scope="col" { (first) } th scope="col" class="num" { "Requests" }
                    th scope="col" class="num" { "Failed" } th scope="col" class="num" { "Success" }
                    th scope="col" class="num" { "p95" }
                    th scope="col" class="num" { "Tokens in / out" } th scope="col" class="num" { "Cost" }
                } }
                tbody {
                    @for (name, t) in rows {
                        tr {
                            td { (name) }
                            td class="num" { (t.requests) }
                            td class="num" { (t.errors) }
                            td class="num" { (success_rate(t)) }
                            td class="num" { (ms(t.latency.quantile(0.95))) }
                            td class="num" { (t.input_tokens) " / " (t.output_tokens) }
                            td class="num" { (usd(t.cost_nanos)) }
                        }
                    }
                }
            }
        }
    }
}

fn summed(buckets: &[UsageBucket]) -> UsageTotals {
    let mut sum = UsageTotals::default();
    for b in buckets {
        sum += b.totals;
    }
    sum
}

/// `/api/v1/usage` for this view, as CSV.
fn csv_link(from: Timestamp, to: Timestamp, view: View, group_by: &str) -> String {
    format!(
        "/api/v1/usage?from={from}&to={to}&granularity={}&group_by={group_by}&format=csv",
        view.granularity.as_str()
    )
}

async fn markup(app: &App, viewer: &Viewer, view: View) -> Result<Markup, Error> {
    let actor = &viewer.caller.actor;
    let now = app.now();
    let from = view
        .granularity
        .bucket_start(now - SignedDuration::from_hours(view.hours));
    let to = view
        .granularity
        .next_bucket(view.granularity.bucket_start(now));
    let query = UsageQuery::new(from, to, view.granularity, None, None, None)?;
    let per_key = app.usage_by_key(actor, &query).await?;
    // By model needs the whole vault's reach (sums across keys); a scoped reader goes without.
    let by_model = match app.usage_grouped(actor, &query, UsageGrouping::Model).await {
        Ok(rows) => Some(rows),
        Err(e) if e.kind == ErrorKind::Forbidden => None,
        Err(e) => return Err(e),
    };
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
    let series = filled(&all, view.granularity, from, to);
    let total = summed(&all);
    let mut by_service: BTreeMap<String, UsageTotals> = BTreeMap::new();
    let mut by_key: Vec<(String, String, String, UsageTotals)> = Vec::new();
    for (id, buckets) in &per_key {
        let sum = summed(buckets);
        let (name, service) = alias
            .get(id)
            .cloned()
            .unwrap_or_else(|| ("(deleted key)".into(), "—".into()));
        *by_service.entry(service.clone()).or_default() += sum;
        by_key.push((id.clone(), name, service, sum));
    }
    by_key.sort_by_key(|k| std::cmp::Reverse(k.3.requests));
    let mut services: Vec<(String, UsageTotals)> = by_service.into_iter().collect();
    services.sort_by_key(|s| std::cmp::Reverse(s.1.requests));
    let mut models: Vec<(String, UsageTotals)> = by_model
        .unwrap_or_default()
        .into_iter()
        .filter(|(model, _)| !model.is_empty())
        .map(|(model, buckets)| (model, summed(&buckets)))
        .collect();
    models.sort_by_key(|m| std::cmp::Reverse(m.1.cost_nanos));
    let forecasts = app.forecasts(actor).await?;
    let cost: Vec<(Timestamp, f64)> = series
        .iter()
        .map(|(at, t)| (*at, t.cost_nanos as f64 / 1e9))
        .collect();
    let hits: Vec<(Timestamp, f64)> = series
        .iter()
        .map(|(at, t)| (*at, t.cache_hits as f64))
        .collect();
    let per = view.granularity.as_str();
    Ok(html! {
        nav class="filters" aria-label="Period" {
            @for v in VIEWS {
                @if v.name == view.name { a class="button small" aria-current="page" href={ "/usage?view=" (v.name) } { (v.label) } }
                @else { a class="button quiet small" href={ "/usage?view=" (v.name) } { (v.label) } }
            }
            span class="muted small" {
                "CSV: "
                a href=(csv_link(from, to, view, "key")) download { "by key" }
                @if !models.is_empty() || actor.access.reach(keyward_core::access::Permission::KeysRead).is_everywhere() {
                    " · " a href=(csv_link(from, to, view, "service")) download { "by service" }
                    " · " a href=(csv_link(from, to, view, "model")) download { "by model" }
                }
            }
        }
        section class="cards" aria-label="Totals" data-requests=(total.requests) {
            div class="card" { div class="label" { "Requests" } div class="value" { (total.requests) } }
            div class="card" { div class="label" { "Failed" } div class="value" { (total.errors) } }
            div class="card" { div class="label" { "Success rate" } div class="value" { (success_rate(&total)) } }
            div class="card" { div class="label" { "Latency p50 / p95" } div class="value" { (ms(total.latency.quantile(0.5))) " / " (ms(total.latency.quantile(0.95))) } }
            div class="card" { div class="label" { "Tokens in / out" } div class="value" { (total.input_tokens) " / " (total.output_tokens) } }
            div class="card" { div class="label" { "Cost" } div class="value" { (usd(total.cost_nanos)) } }
            div class="card" { div class="label" { "Cache hits" } div class="value" { (total.cache_hits) } div class="muted small" { "saved " (total.saved_credits) " credits" } }
        }
        div class="charts" {
            div class="panel" { h2 { "Requests per " (per) } (requests_bars(&series, view.granularity, &format!("Requests per {per}"))) }
            div class="panel" { h2 { "Latency" } (latency_lines(&series, view.granularity)) }
            div class="panel" {
                h2 { "Cost per " (per) }
                (value_bars(&cost, view.granularity, "cost", None,
                    &format!("Cost per {per}: {} in all, {} unpriced calls", usd(total.cost_nanos), total.unpriced)))
            }
            div class="panel" {
                h2 { "Cache hits per " (per) }
                (value_bars(&hits, view.granularity, "saved", None,
                    &format!("Cache hits per {per}: {} answered from the cache, saving {} credits", total.cache_hits, total.saved_credits)))
            }
        }
        section aria-labelledby="allowances" {
            h2 id="allowances" { "Quotas and budgets" }
            p class="muted small" { "Used in the current window, from the sums every instance shares, and when it runs out at today's pace (by the market's usual day)." }
            @if forecasts.is_empty() { p class="muted" { "No key has a quota of an hour or longer or a budget, and no token a budget." } }
            @else { (forecasts_table(&forecasts, now)) }
        }
        div class="columns" {
            section aria-labelledby="by-service" {
                h2 id="by-service" { "By service" }
                @if services.is_empty() { p class="muted" { "No traffic in this period." } }
                @else { (totals_table(services.iter().map(|(s, t)| (html! { (s) }, t)).collect(), "Service")) }
            }
            section aria-labelledby="by-key" {
                h2 id="by-key" { "By key" }
                @if by_key.is_empty() { p class="muted" { "No traffic in this period." } }
                @else { (totals_table(by_key.iter().map(|(id, k, s, t)| (html! { a href={ "/keys/" (id) } { (k) } " " span class="muted" { (s) } }, t)).collect(), "Key")) }
            }
        }
        @if !models.is_empty() {
            section aria-labelledby="by-model" {
                h2 id="by-model" { "By model" }
                (totals_table(models.iter().map(|(m, t)| (html! { code { (m) } }, t)).collect(), "Model"))
            }
        }
    })
}

pub async fn page(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(range): Query<Range>,
) -> Response {
    let legacy = match range.days {
        Some(7) => Some("week"),
        Some(90) => Some("quarter"),
        Some(_) => Some("month"),
        None => None,
    };
    let wanted = range.view.as_deref().or(legacy).unwrap_or("month");
    let view = VIEWS
        .into_iter()
        .find(|v| v.name == wanted)
        .unwrap_or(VIEWS[2]);
    match markup(&app, &viewer, view).await {
        Ok(content) => html_page(
            StatusCode::OK,
            framed(&viewer, "/usage", "Analytics", content),
        ),
        Err(e) => error_page(&viewer, "/usage", "Analytics", e),
    }
}

/// `/recommendations`: what the last 30 days say could be cheaper or safer, with the
/// estimated monthly saving or the risk.
pub async fn recommendations_page(State(app): State<Arc<App>>, viewer: Viewer) -> Response {
    let found = match app.recommendations(&viewer.caller.actor).await {
        Ok(found) => found,
        Err(e) => return error_page(&viewer, "/recommendations", "Recommendations", e),
    };
    let total: f64 = found.iter().filter_map(|r| r.monthly_saving_usd).sum();
    let content = html! {
        p class="muted" {
            "From the last 30 days of usage. "
            @if total > 0.0 { "Together these could save about " strong { (format!("${total:.2}")) } " a month." }
        }
        @if found.is_empty() {
            div class="table-wrap" { p class="empty" { "Nothing to recommend: every key is used, fits its plan and holds its own value." } }
        } @else {
            div class="table-wrap" {
                table data-recommendations=(found.len()) {
                    thead { tr {
                        th scope="col" { "About" } th scope="col" { "What" }
                        th scope="col" { "Why" } th scope="col" class="num" { "Saving a month" } th scope="col" { "Risk" }
                    } }
                    tbody {
                        @for r in &found {
                            tr data-kind=(r.kind.as_str()) {
                                td {
                                    @if let Some(id) = &r.key { a href={ "/keys/" (id) } { (r.about) } }
                                    @else { code { (r.about) } }
                                }
                                td { (r.kind.as_str().replace('_', " ")) }
                                td { (r.detail) }
                                td class="num" { @if let Some(s) = r.monthly_saving_usd { (format!("${s:.2}")) } @else { "—" } }
                                td {
                                    @match r.risk {
                                        Some(keyward_core::recommend::Risk::High) => span class="badge expired" { "high" },
                                        Some(keyward_core::recommend::Risk::Medium) => span class="badge expiring" { "medium" },
                                        Some(keyward_core::recommend::Risk::Low) => span class="badge disabled" { "low" },
                                        None => span class="muted" { "—" },
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    html_page(
        StatusCode::OK,
        framed(&viewer, "/recommendations", "Recommendations", content),
    )
}

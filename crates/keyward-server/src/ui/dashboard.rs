//! `/`: the key overview — totals, per-category counts, the security panel, and the table
//! of keys the viewer may see (the API's own listing, so scopes apply) with a 7-day
//! sparkline, quota bar and quick actions; search and filters live in the URL.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use jiff::{SignedDuration, Timestamp};
use keyward_core::access::Permission;
use keyward_core::audit::AuditFilter;
use keyward_core::key::{Key, KeyFilter, KeyStatus, PageRequest};
use keyward_core::usage::{Granularity, KeyFlag, KeyFlagKind, UsageQuery};
use maud::{Markup, html};
use serde::Deserialize;

use super::chart::{daily_requests, quota_meter, sparkline};
use super::frame::{Viewer, error_page, framed};
use super::parts::{display_status, flag_word, relative, status_badge};
use keyward_app::App;

/// Search and filters, as they appear in the URL.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Filters {
    #[serde(default)]
    q: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    tag: String,
    /// The id of a key just added (only used to say so).
    added: Option<String>,
}

const STATUSES: [&str; 8] = [
    "active",
    "disabled",
    "expiring",
    "expired",
    "quota_limited",
    "rejected",
    "revoked",
    "deleted",
];

fn non_empty(text: &str) -> Option<String> {
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

struct Row {
    key: Key,
    status: &'static str,
    flag: Option<KeyFlag>,
    week: Vec<u64>,
    quota: Option<f64>,
    can_write: bool,
    can_rotate: bool,
    rotation: keyward_core::rotation::RotationStatus,
}

async fn page_for(app: &App, viewer: &Viewer, f: &Filters) -> Result<Markup, keyward_core::Error> {
    let actor = &viewer.caller.actor;
    let stored_status = match f.status.as_str() {
        "active" | "expiring" | "quota_limited" | "rejected" => Some(KeyStatus::Active),
        "" => None,
        other => Some(other.parse::<KeyStatus>()?),
    };
    let filter = KeyFilter {
        service_ids: non_empty(&f.service).map(|s| vec![s]),
        environment: non_empty(&f.environment),
        status: stored_status,
        tag: non_empty(&f.tag).map(|t| t.to_lowercase()),
        text: non_empty(&f.q),
        areas: None,
    };
    let category = non_empty(&f.category);
    let keys: Vec<Key> = app
        .list_keys(
            actor,
            filter,
            category.as_deref(),
            PageRequest::new(None, Some(PageRequest::MAX_LIMIT))?,
        )
        .await?
        .items;
    let catalog = app.catalog().await?;
    let names = super::frame::category_names(app).await?;
    let now = app.now();
    let week = app
        .usage_headlines_by_key(
            actor,
            // Day rollups: the sparklines are daily (a seventh of the hourly rows' work).
            &UsageQuery::new(
                now - SignedDuration::from_hours(24 * 7),
                now,
                Granularity::Day,
                None,
                None,
                None,
            )?,
        )
        .await?;
    let rotation = app.rotation_context().await?;
    // Quotas of an hour or longer and budgets from the sums every instance shares; a key
    // with only shorter limits falls back to this instance's meters.
    let forecasts = app.forecasts(actor).await?;
    let mut shared_quota: BTreeMap<String, f64> = BTreeMap::new();
    for f in &forecasts {
        if let keyward_core::alert::AlertSubject::Key(id) = &f.subject {
            let share = shared_quota.entry(id.to_string()).or_default();
            *share = share.max(f.used_share().min(1.0));
        }
    }
    let write = actor.access.reach(Permission::KeysWrite);
    let rotate = actor.access.reach(Permission::KeysRotate);
    let mut rows = Vec::new();
    for key in keys {
        let flag = app.proxy.key_flag(&key.id);
        let status = display_status(&key, now, flag.as_ref());
        if !f.status.is_empty() && f.status != status {
            continue;
        }
        let buckets = week.get(key.id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let category = catalog
            .get(&key.service_id)
            .map(|s| s.category.clone())
            .unwrap_or_default();
        rows.push(Row {
            week: daily_requests(buckets, now, 7),
            quota: shared_quota
                .get(key.id.as_str())
                .copied()
                .or_else(|| app.proxy.quota_used(&key.id)),
            can_write: write.covers(&category, &key.environment),
            can_rotate: rotate.covers(&category, &key.environment),
            rotation: rotation.status(&key),
            status,
            flag,
            key,
        });
    }
    let mut by_category: BTreeMap<String, usize> = BTreeMap::new();
    for row in &rows {
        let category = catalog
            .get(&row.key.service_id)
            .map(|s| {
                names
                    .get(&s.category)
                    .cloned()
                    .unwrap_or_else(|| s.category.clone())
            })
            .unwrap_or_else(|| "Other".to_owned());
        *by_category.entry(category).or_default() += 1;
    }
    let active = rows.iter().filter(|r| r.status == "active").count();
    // Calls to models without a listed price this week: charged at a conservative estimate.
    let unpriced: u64 = week.values().flatten().map(|day| day.unpriced).sum();
    let revealed = if actor.access.reach(Permission::AuditRead).is_everywhere() {
        Some(
            app.audit_events(
                actor,
                &AuditFilter {
                    action: Some("key.reveal".into()),
                    from: Some(now - SignedDuration::from_hours(24 * 7)),
                    limit: 50,
                    ..AuditFilter::default()
                },
            )
            .await?,
        )
    } else {
        None
    };
    let mut services: Vec<(&str, &str)> = catalog
        .iter()
        .map(|s| (s.id.as_str(), s.name.as_str()))
        .collect();
    services.sort_by_key(|(_, name)| name.to_lowercase());
    let environments = app.environments().await?;
    let health = app.health(actor).await?;
    let compliance = app.compliance(actor).await?;
    let open_alerts = app
        .alerts(
            actor,
            &keyward_core::alert::AlertFilter {
                status: Some(keyward_core::alert::AlertStatus::Open),
                ..Default::default()
            },
            None,
            5,
        )
        .await?;
    let filtered = !(f.q.is_empty()
        && f.category.is_empty()
        && f.service.is_empty()
        && f.environment.is_empty()
        && f.status.is_empty()
        && f.tag.is_empty());
    Ok(html! {
        section class="cards" aria-label="Totals" {
            div class="card" { div class="label" { "Keys" } div class="value" data-total-keys { (rows.len()) } }
            div class="card" { div class="label" { "Active" } div class="value" { (active) } }
            div class={ "card" @if unpriced > 0 { " signal" } }
                title="Calls to a model without a listed price in the last 7 days: charged at the service's fallback or dearest price, never free" {
                div class="label" { "Unpriced calls (7 days)" } div class="value" data-unpriced-calls { (unpriced) }
            }
            @for (category, count) in &by_category {
                div class="card" { div class="label" { (category) } div class="value" { (count) } }
            }
        }
        (security_panel(now, &rows, revealed.as_deref(), &compliance))
        section id="open-alerts" class="alerts-panel" aria-labelledby="alerts-title" data-open-alerts=(open_alerts.len()) data-live="15" {
            div class="heading" {
                h2 id="alerts-title" { "Open alerts" }
                a class="button quiet small" href="/alerts" { "All alerts" }
            }
            (super::alerts::alert_table(viewer, &open_alerts, now, "/"))
        }
        (health_panel(&health))
        (allowances_panel(&forecasts, now))
        section aria-labelledby="keys-title" {
            div class="heading" {
                h2 id="keys-title" { "Keys" }
                @if viewer.may(Permission::KeysWrite) { a class="button" href="/keys/new" { "Add a key" } }
            }
            form method="get" action="/" class="filters" role="search" aria-label="Filter keys" {
                label class="sr-only" for="q" { "Search" }
                input id="q" name="q" type="search" placeholder="Search alias or description" value=(f.q);
                label class="sr-only" for="f-category" { "Category" }
                select id="f-category" name="category" {
                    option value="" { "All categories" }
                    @for (id, name) in &names { option value=(id) selected[f.category == *id] { (name) } }
                }
                label class="sr-only" for="f-service" { "Service" }
                select id="f-service" name="service" {
                    option value="" { "All services" }
                    @for (id, name) in &services { option value=(id) selected[f.service == *id] { (name) } }
                }
                label class="sr-only" for="f-environment" { "Environment" }
                select id="f-environment" name="environment" {
                    option value="" { "All environments" }
                    @for e in &environments { option value=(e.id) selected[f.environment == e.id] { (e.name) } }
                }
                label class="sr-only" for="f-status" { "Status" }
                select id="f-status" name="status" {
                    option value="" { "Any status" }
                    @for s in STATUSES { option value=(s) selected[f.status == s] { (s.replace('_', "-")) } }
                }
                label class="sr-only" for="f-tag" { "Tag" }
                input id="f-tag" name="tag" type="text" placeholder="Tag" value=(f.tag);
                button type="submit" class="quiet" { "Filter" }
                @if filtered { a href="/" { "Clear" } }
            }
            @if rows.is_empty() {
                div class="table-wrap" { p class="empty" {
                    @if filtered { "No key matches these filters." } @else { "No keys yet. Add your first key with the add-key wizard." }
                } }
            } @else {
                div class="table-wrap" {
                    table class="keys" {
                        thead { tr {
                            th scope="col" { "Alias" } th scope="col" { "Service" }
                            th scope="col" { "Environment" } th scope="col" { "Status" }
                            th scope="col" { "Hint" } th scope="col" { "Last used" }
                            th scope="col" { "7 days" } th scope="col" { "Quota" }
                            th scope="col" { span class="sr-only" { "Actions" } }
                        } }
                        tbody {
                            @for row in &rows {
                                @let key = &row.key;
                                tr data-key=(key.id) {
                                    td data-label="Alias" { a href={ "/keys/" (key.id) } { (key.alias) } }
                                    td data-label="Service" { (key.service_id) }
                                    td data-label="Environment" { (key.environment) }
                                    td data-label="Status" { (status_badge(row.status)) }
                                    td data-label="Hint" class="mono" { (key.current_hint) }
                                    td data-label="Last used" class="last-used" { (relative(now, key.last_used_at)) }
                                    td data-label="7 days" { (sparkline(&row.week, &key.alias)) }
                                    td data-label="Quota" { (quota_meter(row.quota)) }
                                    td class="actions" {
                                        @if row.can_write && key.deleted_at.is_none() {
                                            @if key.enabled {
                                                a class="button quiet small" href={ "/keys/" (key.id) "/disable" } { "Disable…" }
                                            } @else {
                                                form method="post" action={ "/keys/" (key.id) "/enable" } {
                                                    input type="hidden" name="csrf" value=(viewer.csrf);
                                                    input type="hidden" name="back" value="/";
                                                    button type="submit" class="quiet small" { "Enable" }
                                                }
                                            }
                                        }
                                        @if row.can_rotate && key.deleted_at.is_none() {
                                            a class="button quiet small" href={ "/keys/" (key.id) "#rotate" } { "Rotate" }
                                        }
                                        button type="button" class="quiet small" data-copy={ "/proxy/" (key.service_id) "/" } hidden { "Copy proxy URL" }
                                    }
                                }
                                @if let Some(description) = &key.description {
                                    tr class="description" { td colspan="9" class="muted" { (description) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// What needs attention: only the signals that exist (rotation policies come later).
fn security_panel(
    now: Timestamp,
    rows: &[Row],
    revealed: Option<&[keyward_core::audit::AuditEvent]>,
    compliance: &[keyward_app::lifecycle::compliance::KeyCompliance],
) -> Markup {
    use keyward_core::compliance::ComplianceStatus;
    let non_compliant: Vec<&keyward_app::lifecycle::compliance::KeyCompliance> = compliance
        .iter()
        .filter(|k| k.compliance.status == ComplianceStatus::NonCompliant)
        .collect();
    let attention = compliance
        .iter()
        .filter(|k| k.compliance.status == ComplianceStatus::Attention)
        .count();
    let never_used: Vec<&Row> = rows
        .iter()
        .filter(|r| r.key.last_used_at.is_none() && r.key.deleted_at.is_none())
        .collect();
    let expiring: Vec<&Row> = rows
        .iter()
        .filter(|r| matches!(r.status, "expiring" | "expired"))
        .collect();
    let flagged: Vec<&Row> = rows.iter().filter(|r| r.flag.is_some()).collect();
    let rotation_due: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.key.deleted_at.is_none()
                && r.key.revoked.is_none()
                && matches!(
                    r.rotation.state,
                    keyward_core::rotation::RotationState::Due
                        | keyward_core::rotation::RotationState::Overdue
                )
        })
        .collect();
    let link = |r: &Row| html! { a href={ "/keys/" (r.key.id) } { (r.key.alias) } };
    html! {
        section class="security" aria-labelledby="security-title" {
            h2 id="security-title" { "Security" }
            div class="cards" {
                div class={ "card signal" @if !flagged.is_empty() { " bad" } } {
                    div class="label" { "Flagged by the proxy" }
                    div class="value" { (flagged.len()) }
                    @for r in &flagged {
                        div class="small" { (link(r)) " — " (flag_word(r.flag.as_ref().map_or(KeyFlagKind::Rejected, |f| f.kind))) }
                    }
                }
                div class={ "card signal" @if !non_compliant.is_empty() { " bad" } } data-signal="compliance" {
                    div class="label" { "Non-compliant keys" }
                    div class="value" data-non-compliant=(non_compliant.len()) { (non_compliant.len()) }
                    div class="small muted" { (compliance.len() - non_compliant.len() - attention) " compliant, " (attention) " need attention" }
                    @for k in non_compliant.iter().take(5) {
                        div class="small" {
                            a href={ "/keys/" (k.key.id) "#compliance" } { (k.key.alias) } " — "
                            (k.compliance.checks.iter().filter(|c| c.status == keyward_core::compliance::CheckStatus::Fail).map(|c| failed_check_words(c.id)).collect::<Vec<_>>().join(", "))
                        }
                    }
                }
                div class={ "card signal" @if !rotation_due.is_empty() { " warn" } } data-signal="rotation" {
                    div class="label" { "Rotation due or overdue" }
                    div class="value" { (rotation_due.len()) }
                    @for r in &rotation_due {
                        div class="small" { (link(r)) " — " (r.rotation.state.as_str()) " " (relative(now, r.rotation.due_at)) }
                    }
                }
                div class={ "card signal" @if !expiring.is_empty() { " warn" } } {
                    div class="label" { "Expiring or expired" }
                    div class="value" { (expiring.len()) }
                    @for r in &expiring {
                        div class="small" { (link(r)) " — " (relative(now, r.key.expires_at)) }
                    }
                }
                div class="card signal" {
                    div class="label" { "Never used" }
                    div class="value" { (never_used.len()) }
                    @for r in never_used.iter().take(5) { div class="small" { (link(r)) } }
                }
                @if let Some(revealed) = revealed {
                    div class={ "card signal" @if !revealed.is_empty() { " warn" } } {
                        div class="label" { "Revealed in the last 7 days" }
                        div class="value" { (revealed.len()) }
                        @for e in revealed.iter().rev().take(5) {
                            @let target = e.entry.target.as_deref().unwrap_or_default();
                            @let key = rows.iter().find(|r| target.strip_prefix("key:") == Some(r.key.id.as_str()));
                            div class="small" {
                                @if let Some(r) = key { (link(r)) } @else { span class="mono" { (target) } }
                                " by " (e.entry.actor_name)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A failed compliance check in a few words, for the security panel.
fn failed_check_words(id: &str) -> &str {
    match id {
        "format" => "wrong format",
        "strength" => "weak value",
        "age" => "rotation overdue",
        "unique" => "value reused across environments",
        "owner" => "no owner",
        other => other,
    }
}

/// Each service's health from its active keys, and the keys that are not healthy.
/// Quotas and budgets that matter now: used 70 % or more, or running out within their
/// window at today's pace (the rest are on the analytics page).
fn allowances_panel(
    forecasts: &[keyward_app::forecasts::AllowanceForecast],
    now: Timestamp,
) -> Markup {
    let pressing: Vec<keyward_app::forecasts::AllowanceForecast> = forecasts
        .iter()
        .filter(|f| f.used_share() >= 0.7 || f.forecast.runs_out_at.is_some())
        .take(5)
        .cloned()
        .collect();
    html! {
        section id="allowances" class="allowances" aria-labelledby="allowances-title" data-live="30" data-pressing=(pressing.len()) {
            div class="heading" {
                h2 id="allowances-title" { "Quotas and budgets" }
                a class="button quiet small" href="/usage#allowances" { "All of them" }
            }
            @if pressing.is_empty() {
                p class="muted" {
                    @if forecasts.is_empty() { "No quota of an hour or longer and no budget to watch." }
                    @else { "All " (forecasts.len()) " quotas and budgets last their window at today's pace." }
                }
            } @else {
                (super::usage::forecasts_table(&pressing, now))
            }
        }
    }
}

fn health_panel(report: &keyward_app::lifecycle::health::HealthReport) -> Markup {
    if report.services.is_empty() {
        return html! {};
    }
    html! {
        section id="health" class="health" aria-labelledby="health-title" data-live="15" {
            h2 id="health-title" { "Health" }
            div class="cards" {
                @for s in &report.services {
                    @let status = s.status.as_str();
                    div class={ "card signal" @if s.status == keyward_core::health::HealthStatus::Down || s.disruption { " bad" } @else if s.failing > 0 { " warn" } } data-service-health=(s.service_id) {
                        div class="label" { (s.name) }
                        div class="value small" { span class={ "badge health-" (status) } { (status) } }
                        div class="small" {
                            (s.keys) " active " (if s.keys == 1 { "key" } else { "keys" })
                            @if s.failing > 0 { ", " (s.failing) " not healthy" }
                            @if let Some(ms) = s.calls.mean_latency_ms() { " · " (ms) " ms" }
                        }
                        @if s.disruption {
                            div class="small" data-disruption { "Many keys failing at once: likely a provider disruption, not bad keys." }
                        }
                        @for k in report.keys.iter().filter(|k| k.key.service_id == s.service_id && k.assessment.status != keyward_core::health::HealthStatus::Healthy) {
                            div class="small" {
                                a href={ "/keys/" (k.key.id) } { (k.key.alias) } " — " (k.assessment.reasons.join("; "))
                            }
                        }
                    }
                }
            }
        }
    }
}

pub async fn page(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(filters): Query<Filters>,
) -> Response {
    match page_for(&app, &viewer, &filters).await {
        Ok(content) => {
            let content = html! {
                @if filters.added.is_some() {
                    p class="flash" role="status" { "Key added. Its value is stored encrypted; only its hint is shown." }
                }
                (content)
            };
            super::frame::page(StatusCode::OK, framed(&viewer, "/", "Dashboard", content))
        }
        Err(e) => error_page(&viewer, "/", "Dashboard", e),
    }
}

//! One key: `/keys/{id}` (metadata and its edit form, enable/disable, validate, versions,
//! the usage chart, the audit trail for the key, the app tokens that can use it), the
//! reveal page, the delete page with its impact assessment, and the deleted keys with
//! restore and purge. Every action is a form post through the same `App` use cases as the
//! API; buttons are shown only to those who may use them.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::audit::AuditFilter;
use keyward_core::id::KeyId;
use keyward_core::key::{Criticality, Key, KeyChanges, KeyFilter, KeyStatus, PageRequest};
use keyward_core::service::Limit;
use keyward_core::usage::{Granularity, UsageQuery, UsageTotals};
use maud::{Markup, html};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::approval;
use super::chart::{daily, daily_bars, quota_meter, short_day, usd, value_bars};
use super::frame::{Viewer, error_page, field, framed, page};
use super::guard::form_post;
use super::key_form::{Refused, Typed, expiry_of, field_of, parse_id, tags_of};
use super::parts::{display_status, flag_word, impact_line, relative, status_badge};
use crate::http::auth::Caller;
use keyward_app::App;

/// Fixed notices a redirect may ask for (never text from the URL).
#[derive(Debug, Default, Deserialize)]
pub struct Notice {
    notice: Option<String>,
    /// An approval from the inbox, for the form named by `form` (`rotate`, `rotation`).
    approval: Option<String>,
    form: Option<String>,
}

impl Notice {
    /// The approval a form completes, if the URL carries one for it.
    fn under(&self, form: &str) -> Option<&str> {
        if self.form.as_deref() == Some(form) {
            approval::valid_id(self.approval.as_deref())
        } else {
            None
        }
    }
}

fn notice_text(notice: Option<&str>) -> Option<(&'static str, bool)> {
    Some(match notice? {
        "saved" => ("Changes saved.", false),
        "enabled" => ("Key enabled: the proxy uses it again.", false),
        "disabled" => ("Key disabled: the proxy no longer injects it.", false),
        "valid" => ("Validation: the provider accepted this key.", false),
        "rejected" => (
            "Validation: the provider rejected this key (401/403).",
            true,
        ),
        "throttled" => (
            "Validation: the provider knows this key but it is out of allowance now.",
            true,
        ),
        "inconclusive" => (
            "Validation: the provider's answer was not conclusive; try again later.",
            true,
        ),
        "unreachable" => ("Validation: the provider could not be reached.", true),
        "restored" => ("Key restored.", false),
        "revoked" => (
            "Revoked: no instance injects this key any more. Revoke it at the provider too, and add a new key.",
            true,
        ),
        "revocation_checked" => (
            "The provider was asked about the revoked value; its answer is under “At the provider”.",
            false,
        ),
        "rotated" => (
            "Rotated: the new value is the current version; the old one is kept as previous.",
            false,
        ),
        "approval_requested" => (
            "Approval requested: the operation runs once someone approves it.",
            false,
        ),
        "frozen" => (
            "Frozen: no instance injects this key until the freeze is lifted (with an approval).",
            true,
        ),
        "unfrozen" => ("Freeze lifted: the proxy uses this key again.", false),
        _ => return None,
    })
}

/// Whether the viewer may do `permission` on this key (its category and environment).
/// The catalog is read once by the page, not once per button.
fn may(
    catalog: &keyward_core::catalog::ServiceCatalog,
    viewer_caller: &Caller,
    permission: Permission,
    key: &Key,
) -> bool {
    let category = catalog
        .get(&key.service_id)
        .map(|s| s.category.clone())
        .unwrap_or_default();
    viewer_caller
        .actor
        .access
        .reach(permission)
        .covers(&category, &key.environment)
}

pub async fn detail(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(notice): Query<Notice>,
) -> Response {
    match detail_markup(&app, &viewer, &id, &notice, None).await {
        Ok((title, content)) => page(StatusCode::OK, framed(&viewer, "/", &title, content)),
        Err(e) => error_page(&viewer, "/", "Key", e),
    }
}

async fn detail_markup(
    app: &App,
    viewer: &Viewer,
    id: &str,
    query: &Notice,
    refused: Option<&Refused>,
) -> Result<(String, Markup), Error> {
    let notice = query.notice.as_deref();
    let actor = &viewer.caller.actor;
    let id = parse_id(id)?;
    let key = app.key(actor, &id).await?;
    let now = app.now();
    let versions = app.versions(actor, &id).await?;
    let buckets = app
        .usage(
            actor,
            &UsageQuery::new(
                now - jiff::SignedDuration::from_hours(24 * 30),
                now,
                Granularity::Day,
                Some(id.clone()),
                None,
                None,
            )?,
        )
        .await?;
    let days = daily(&buckets, now, 30);
    let total: UsageTotals = days.iter().fold(Default::default(), |mut sum, (_, t)| {
        sum += *t;
        sum
    });
    let forecasts = app.key_forecasts(actor, &id).await?;
    let impact = app.impact(actor, &id).await?;
    let trail = if actor.access.reach(Permission::AuditRead).is_everywhere() {
        app.audit_events(
            actor,
            &AuditFilter {
                target: Some(format!("key:{id}")),
                limit: 20,
                ..AuditFilter::default()
            },
        )
        .await?
    } else {
        Vec::new()
    };
    let catalog = app.catalog().await?;
    let can_write = may(&catalog, &viewer.caller, Permission::KeysWrite, &key);
    let can_reveal = may(&catalog, &viewer.caller, Permission::KeysReveal, &key);
    let can_delete = may(&catalog, &viewer.caller, Permission::KeysDelete, &key);
    let can_rotate = may(&catalog, &viewer.caller, Permission::KeysRotate, &key);
    let edit_refused = refused.filter(|r| r.form == "edit");
    let rotate_refused = refused.filter(|r| r.form == "rotate");
    let rotation_refused = refused.filter(|r| r.form == "rotation");
    let deleted = key.deleted_at.is_some();
    let flag = app.proxy.key_flag(&key.id);
    let status = display_status(&key, now, flag.as_ref());
    let health = if deleted {
        None
    } else {
        Some(app.key_health(actor, &id).await?)
    };
    let compliance = if deleted || key.revoked.is_some() {
        None
    } else {
        Some(app.key_compliance(actor, &id).await?)
    };
    let rotation = app.rotation_context().await?.status(&key);
    let latest = app.rotations(actor, &id).await?.into_iter().next();
    let revoke_link = match &latest {
        Some(r) => app.revoke_link(r).await?,
        None => None,
    };
    let managed_possible = catalog
        .get(&key.service_id)
        .is_some_and(|s| s.key_management.is_some());
    let admin_keys = if managed_possible && can_rotate {
        app.list_keys(
            actor,
            KeyFilter {
                service_ids: Some(vec![key.service_id.clone()]),
                status: Some(KeyStatus::Active),
                ..KeyFilter::default()
            },
            None,
            PageRequest::new(None, Some(PageRequest::MAX_LIMIT))?,
        )
        .await?
        .items
        .into_iter()
        .filter(|k| k.id != key.id)
        .collect()
    } else {
        Vec::new()
    };
    let proxy_url = format!("/proxy/{}/", key.service_id);
    let subject = keyward_core::alert::AlertSubject::Key(key.id.clone());
    let measures: Vec<keyward_core::response::Containment> = app
        .containments(actor)
        .await?
        .into_iter()
        .filter(|c| c.subject == subject)
        .collect();
    let frozen = measures
        .iter()
        .any(|c| c.measure == keyward_core::response::Measure::Freeze);
    let content = html! {
        @if let Some((text, bad)) = notice_text(notice) {
            p class={ "flash" @if bad { " error" } } role="status" { (text) }
        }
        section class="summary" aria-label="Key" {
            dl class="facts" {
                dt { "Status" } dd { (status_badge(status)) }
                dt { "Service" } dd { (key.service_id) }
                dt { "Environment" } dd { (key.environment) }
                dt { "Hint" } dd class="mono" { (key.current_hint) }
                dt { "Criticality" } dd { (key.criticality.as_str()) }
                dt { "Last used" } dd { (relative(now, key.last_used_at)) }
                dt { "Rotation" } dd data-rotation=(rotation.state.as_str()) {
                    @match (rotation.state, rotation.due_at) {
                        (keyward_core::rotation::RotationState::NoPolicy, _) => { span class="muted" { "no policy · value set " (relative(now, Some(rotation.rotated_at))) } }
                        (state, Some(due)) => { span class={ "badge " (state.as_str()) } { (state.as_str()) } " due " (short_day(due)) " · value set " (relative(now, Some(rotation.rotated_at))) }
                        (state, None) => { (state.as_str()) }
                    }
                }
                dt { "Quota" } dd { (quota_meter(app.proxy.quota_used(&key.id))) }
                @if let Some(h) = &health { (health_facts(h, now)) }
                dt { "Proxy URL" } dd class="mono" { (proxy_url) }
                @if let Some(r) = &key.revoked {
                    dt { "Revoked" } dd class="warn" { (relative(now, Some(r.at))) " by " (r.by) ": " (r.reason) }
                    dt { "At the provider" } dd data-revocation=(r.check.as_ref().map_or("unchecked", |c| c.outcome.as_str())) {
                        (revocation_check_words(r.check.as_ref(), now))
                        @if can_write && !deleted {
                            form class="inline" method="post" action={ "/keys/" (key.id) "/revocation/verify" } {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button type="submit" class="quiet" { "Check at the provider" }
                            }
                        }
                    }
                }
                @if let Some(flag) = &flag {
                    dt { "Warning" } dd class="warn" { (flag_word(flag.kind)) ": " (flag.reason) }
                }
                @for c in &measures {
                    dt { "Response" } dd class="warn" data-containment=(c.measure.name()) { (super::freeze::measure_words(c, now)) }
                }
            }
            @if !deleted {
                div class="actions" {
                    @if can_write {
                        @if key.enabled {
                            a class="button quiet" href={ "/keys/" (key.id) "/disable" } { "Disable…" }
                        } @else {
                            form method="post" action={ "/keys/" (key.id) "/enable" } {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button type="submit" class="quiet" { "Enable" }
                            }
                        }
                        form method="post" action={ "/keys/" (key.id) "/validate" } {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button type="submit" class="quiet" { "Validate" }
                        }
                    }
                    button type="button" class="quiet" data-copy=(proxy_url) hidden { "Copy proxy URL" }
                    @if can_reveal {
                        a class="button quiet" href={ "/keys/" (key.id) "/reveal" } { "Reveal…" }
                    }
                    @if can_write && key.revoked.is_none() {
                        @if frozen {
                            a class="button" href={ "/keys/" (key.id) "/freeze" } { "Lift the freeze…" }
                        } @else {
                            a class="button danger" href={ "/keys/" (key.id) "/freeze" } { "Freeze…" }
                        }
                        a class="button danger" href={ "/keys/" (key.id) "/revoke" } { "Revoke…" }
                    }
                    @if can_delete {
                        a class="button danger" href={ "/keys/" (key.id) "/delete" } { "Delete…" }
                    }
                }
            }
        }
        @if !deleted || latest.is_some() {
            (super::rotation::section(viewer, &key, &super::rotation::RotationView {
                latest: latest.as_ref(),
                managed_possible,
                admin_keys: &admin_keys,
                may_rotate: can_rotate && !deleted,
                revoke_link: revoke_link.as_deref(),
                impact: &impact,
                refused: rotation_refused.map(|r| (&r.error, &r.typed)),
                under: query.under("rotation"),
            }, now))
        }
        @if let Some(c) = &compliance { (compliance_section(c)) }
        section aria-labelledby="usage-title" {
            h2 id="usage-title" { "Usage, last 30 days" }
            div class="cards" {
                div class="card" { div class="label" { "Requests" } div class="value" { (total.requests) } }
                div class="card" { div class="label" { "Failed" } div class="value" { (total.errors) } }
                div class="card" { div class="label" { "Cost" } div class="value" { (usd(total.cost_nanos)) } }
                div class="card" { div class="label" { "Tokens (in/out)" } div class="value small" { (total.input_tokens) " / " (total.output_tokens) } }
            }
            div class="panel" { (daily_bars(&days, "Requests per day")) }
            @for limit in key.limits.iter().filter(|l| l.window_seconds == 86_400) {
                div class="panel" data-quota-history=(limit.unit.as_str()) {
                    h3 { "Daily quota: " (limit.max) " " (limit.unit.as_str()) }
                    (daily_quota_use(&days, limit))
                }
            }
            @if !forecasts.is_empty() {
                h3 id="allowances" { "Quotas and budget" }
                (super::usage::forecasts_table(&forecasts, now))
            }
        }
        div class="columns" {
            section aria-labelledby="details-title" {
                h2 id="details-title" { "Details" }
                @if can_write && !deleted {
                    (edit_form(viewer, &key, edit_refused))
                } @else {
                    dl class="facts" {
                        dt { "Alias" } dd { (key.alias) }
                        dt { "Description" } dd { (key.description.clone().unwrap_or_default()) }
                        dt { "Owner" } dd { (key.owner.clone().unwrap_or_default()) }
                        dt { "Tags" } dd { (key.tags.join(", ")) }
                        dt { "Expires" } dd { (key.expires_at.map(|t| t.to_string()).unwrap_or_else(|| "never".into())) }
                    }
                }
            }
            section aria-labelledby="tokens-title" {
                h2 id="tokens-title" { "App tokens that can use it" }
                @if impact.tokens.is_empty() {
                    p class="muted" { "No active app token can use this key." }
                } @else {
                    ul class="plain" {
                        @for t in &impact.tokens {
                            li { (t.name) " " span class="muted" { "· last used " (relative(now, t.last_used_at)) } }
                        }
                    }
                }
                h2 id="versions" { "Versions" }
                @if can_rotate && !deleted {
                    (rotate_form(viewer, &key, &impact, rotate_refused.map(|r| &r.error), query.under("rotate")))
                }
                div class="table-wrap" {
                    table {
                        thead { tr { th scope="col" { "Version" } th scope="col" { "State" } th scope="col" { "Hint" } th scope="col" { "Added" } } }
                        tbody {
                            @for v in versions.iter().rev() {
                                tr {
                                    td class="num" { (v.version) }
                                    td { span class={ "badge " (v.state.as_str()) } { (v.state.as_str()) } }
                                    td class="mono" { (v.hint) }
                                    td { (relative(now, Some(v.created_at))) " by " (v.created_by) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !trail.is_empty() {
            section aria-labelledby="trail-title" {
                h2 id="trail-title" { "Audit trail for this key" }
                div class="table-wrap" {
                    table class="trail" {
                        thead { tr { th scope="col" { "When" } th scope="col" { "Action" } th scope="col" { "Who" } th scope="col" { "Outcome" } } }
                        tbody {
                            @for e in trail.iter().rev() {
                                tr {
                                    td { (relative(now, Some(e.entry.at))) }
                                    td class="mono" { (e.entry.action) }
                                    td { (e.entry.actor_name) }
                                    td { (e.entry.outcome.as_str()) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok((key.alias.clone(), content))
}

/// Each UTC day's use of a daily quota against its limit (the dashed line), in the quota's
/// own unit: how close the key came on its busiest days.
fn daily_quota_use(days: &[(jiff::Timestamp, UsageTotals)], limit: &Limit) -> Markup {
    let series: Vec<(jiff::Timestamp, f64)> = days
        .iter()
        .map(|(day, t)| (*day, t.spent(limit.unit) as f64))
        .collect();
    let busiest = series.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    let full = series
        .iter()
        .filter(|(_, v)| *v >= limit.max as f64)
        .count();
    let words = format!(
        "{} per UTC day against a limit of {}: at most {busiest:.0}, at the limit on {full} of {} days",
        limit.unit.as_str(),
        limit.max,
        series.len()
    );
    value_bars(
        &series,
        Granularity::Day,
        "quota",
        Some(limit.max as f64),
        &words,
    )
}

/// The key's health: status and why, the last five minutes of calls, the circuit, probes.
fn health_facts(h: &keyward_app::lifecycle::health::KeyHealth, now: jiff::Timestamp) -> Markup {
    let status = h.assessment.status.as_str();
    html! {
        dt { "Health" }
        dd data-health=(status) {
            span class={ "badge health-" (status) } { (status) }
            @for reason in &h.assessment.reasons { " · " (reason) }
            div class="small muted" {
                (h.calls.calls) " calls, " (h.calls.failures) " failed in the last 5 minutes"
                @if let Some(ms) = h.calls.mean_latency_ms() { " · mean " (ms) " ms" }
                @if h.breaker != keyward_core::health::BreakerState::Closed {
                    " · circuit " (h.breaker.as_str())
                    @if let Some(until) = h.breaker_open_until { " until " (relative(now, Some(until))) }
                }
            }
            div class="small muted" {
                @match &h.last_probe {
                    Some((at, verdict)) => { "Last probe " (relative(now, Some(*at))) ": " (verdict.as_deref().unwrap_or("running")) }
                    None => { "Not probed yet" }
                }
                @if let Some(next) = h.next_probe_at { " · next when idle " (relative(now, Some(next))) }
            }
        }
    }
}

/// Strength and compliance: the overall status and every check with its finding.
fn compliance_section(c: &keyward_app::lifecycle::compliance::KeyCompliance) -> Markup {
    let status = c.compliance.status.as_str();
    html! {
        section id="compliance" aria-labelledby="compliance-title" {
            h2 id="compliance-title" { "Strength and compliance " span class={ "badge compliance-" (status) } data-compliance=(status) { (status.replace('_', "-")) } }
            ul class="plain checks" {
                @for check in &c.compliance.checks {
                    li data-check=(check.id) data-check-status=(check.status.as_str()) {
                        span class={ "badge check-" (check.status.as_str()) } { (check.status.as_str()) }
                        " " strong { (check.id) } ": " (check.detail)
                    }
                }
            }
            p class="small muted" { "Fingerprint " span class="mono" { (c.traits.fingerprint) } " — the same value anywhere has the same fingerprint; it reveals nothing about the value." }
        }
    }
}

fn edit_form(viewer: &Viewer, key: &Key, refused: Option<&Refused>) -> Markup {
    let typed = refused.map_or_else(|| Typed::of(key), |r| r.typed.clone());
    let error_for = |name: &str| {
        refused
            .filter(|r| field_of(r.error.code) == name)
            .map(|r| r.error.message.clone())
    };
    let general = refused
        .filter(|r| field_of(r.error.code) == "form")
        .map(|r| r.error.message.clone());
    html! {
        form method="post" action={ "/keys/" (key.id) "/edit" } class="panel" id="edit" {
            @if let Some(message) = general { p class="flash error" role="alert" { "Not saved: " (message) } }
            input type="hidden" name="csrf" value=(viewer.csrf);
            div class="field" {
                label for="alias" { "Alias" }
                input id="alias" name="alias" type="text" required value=(typed.alias);
                @if let Some(e) = error_for("alias") { span class="error" role="alert" { (e) } }
            }
            div class="field" {
                label for="description" { "Description" }
                textarea id="description" name="description" rows="2" { (typed.description) }
                @if let Some(e) = error_for("description") { span class="error" role="alert" { (e) } }
            }
            div class="field" {
                label for="owner" { "Owner" }
                input id="owner" name="owner" type="text" value=(typed.owner);
                @if let Some(e) = error_for("owner") { span class="error" role="alert" { (e) } }
            }
            div class="field" {
                label for="tags" { "Tags" }
                input id="tags" name="tags" type="text" value=(typed.tags);
                @if let Some(e) = error_for("tags") { span class="error" role="alert" { (e) } }
            }
            div class="field" {
                label for="criticality" { "Criticality" }
                select id="criticality" name="criticality" {
                    @for level in ["low", "medium", "high", "critical"] {
                        option value=(level) selected[typed.criticality == level] { (level) }
                    }
                }
            }
            div class="field" {
                label for="expires" { "Expires on" }
                input id="expires" name="expires" type="date" value=(typed.expires);
                @if let Some(e) = error_for("expires") { span class="error" role="alert" { (e) } }
            }
            button type="submit" { "Save changes" }
        }
    }
}

fn rotate_form(
    viewer: &Viewer,
    key: &Key,
    impact: &keyward_app::Impact,
    error: Option<&Error>,
    under: Option<&str>,
) -> Markup {
    html! {
        details class="panel" id="rotate" open[error.is_some() || under.is_some()] {
            summary { "Rotate now: replace the value at once" }
            (impact_line(impact))
            form method="post" action={ "/keys/" (key.id) "/rotate" } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                @if let Some(e) = error { p class="flash error" role="alert" { "Not rotated: " (e.message) } }
                div class="field" {
                    label for="new-secret" { "New value" }
                    div class="secret" {
                        input id="new-secret" name="secret" type="password" autocomplete="off" spellcheck="false" required;
                        button type="button" class="quiet" data-toggle-secret="new-secret" aria-pressed="false" hidden { "Show" }
                    }
                    span class="help" { "Keyward sends the service's check request with it first; a value the provider rejects is not stored." }
                }
                (approval::controls(error, under, "", false, html! { button type="submit" { "Rotate" } }))
            }
        }
    }
}

/// The refusal of an action, shown on a page of its own with a way back.
fn refused(viewer: &Viewer, back: &str, e: Error) -> Response {
    let status = crate::http::error::ApiError::from(e.clone()).status;
    page(
        status,
        framed(
            viewer,
            "/",
            "Not done",
            html! {
                p class="flash error" role="alert" { (e.message) }
                p { a href=(back) { "Back" } }
            },
        ),
    )
}

pub async fn edit(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (Viewer { caller, csrf }, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let get = |name: &str| field(&fields, name).unwrap_or_default().trim().to_owned();
    let typed = Typed {
        alias: get("alias"),
        description: get("description"),
        owner: get("owner"),
        tags: get("tags"),
        criticality: get("criticality"),
        expires: get("expires"),
        ..Typed::default()
    };
    let result = async {
        let id = parse_id(&id)?;
        let optional = |v: &str| Some(Some(v.to_owned()).filter(|v| !v.is_empty()));
        let changes = KeyChanges {
            alias: Some(typed.alias.clone()),
            description: optional(&typed.description),
            owner: optional(&typed.owner),
            tags: Some(tags_of(&typed.tags)),
            criticality: Some(typed.criticality.parse::<Criticality>()?),
            expires_at: Some(expiry_of(&typed.expires)?),
            limits: None,
            budget: None,
            rotation_rule: None,
        };
        app.update_key(&caller.actor, &id, changes).await
    }
    .await;
    match result {
        Ok(key) => Redirect::to(&format!("/keys/{}?notice=saved", key.id)).into_response(),
        Err(error) => {
            let refused = Refused {
                form: "edit",
                typed,
                error,
            };
            refused_on_page(&app, Viewer { caller, csrf }, &id, refused).await
        }
    }
}

/// The key page again with a refused form filled in as it was sent.
pub(super) async fn refused_on_page(
    app: &App,
    viewer: Viewer,
    id: &str,
    refused: Refused,
) -> Response {
    let status = crate::http::error::ApiError::from(refused.error.clone()).status;
    match detail_markup(app, &viewer, id, &Notice::default(), Some(&refused)).await {
        Ok((title, content)) => page(status, framed(&viewer, "/", &title, content)),
        Err(_) => error_page(&viewer, "/", "Key", refused.error),
    }
}

/// Asks before disabling: what depends on the key, and whether its pool can take over.
pub async fn disable_form(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(under): Query<approval::UnderApproval>,
) -> Response {
    disable_page(&app, &viewer, &id, StatusCode::OK, None, under.id()).await
}

/// Asks before disabling, with the impact; after a refusal, why (and, if the policy wants
/// an approval, the way to ask for it).
async fn disable_page(
    app: &App,
    viewer: &Viewer,
    id: &str,
    status: StatusCode,
    error: Option<&Error>,
    under: Option<&str>,
) -> Response {
    let result = async {
        let id = parse_id(id)?;
        // Only those who may disable it are asked.
        app.key_for(&viewer.caller.actor, Permission::KeysWrite, &id)
            .await?;
        let impact = app.impact(&viewer.caller.actor, &id).await?;
        let key = &impact.key;
        let content = html! {
            @if let Some(e) = error { p class="flash error" role="alert" { (e.message) } }
            section class="panel narrow" aria-labelledby="impact-title" {
                (impact_facts(&impact, app.now()))
                form method="post" action={ "/keys/" (key.id) "/disable" } {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    p { "Disabling stops the proxy from using " strong { (key.alias) } " until it is enabled again; nothing is deleted." }
                    (approval::controls(error, under, "", false, html! {
                        button type="submit" class="danger" { "Disable " (key.alias) }
                    }))
                    " " a href={ "/keys/" (key.id) } { "Cancel" }
                }
            }
        };
        Ok::<_, Error>((format!("Disable {}", key.alias), content))
    }
    .await;
    match result {
        Ok((title, content)) => page(status, framed(viewer, "/", &title, content)),
        Err(e) => error_page(viewer, "/", "Disable", e),
    }
}

pub async fn enable(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    toggle(app, id, request, true).await
}

pub async fn disable(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    toggle(app, id, request, false).await
}

async fn toggle(app: Arc<App>, id: String, request: Request, enabled: bool) -> Response {
    let (Viewer { caller, csrf }, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let back = field(&fields, "back")
        .filter(|b| super::frame::local_path(b))
        .map(str::to_owned);
    let result = async {
        let id = parse_id(&id)?;
        app.set_enabled(&caller.actor, &id, enabled).await
    }
    .await;
    let word = if enabled { "enabled" } else { "disabled" };
    match result {
        Ok(key) => match back {
            Some(back) => Redirect::to(&back).into_response(),
            None => Redirect::to(&format!("/keys/{}?notice={word}", key.id)).into_response(),
        },
        Err(e) if e.kind == keyward_core::ErrorKind::Accepted => {
            Redirect::to(&format!("/keys/{id}?notice=approval_requested")).into_response()
        }
        // A refused disable is answered on the page that asks before disabling.
        Err(e) if !enabled => {
            let status = crate::http::error::ApiError::from(e.clone()).status;
            disable_page(&app, &Viewer { caller, csrf }, &id, status, Some(&e), None).await
        }
        Err(e) => refused(&Viewer { caller, csrf }, &format!("/keys/{id}"), e),
    }
}

pub async fn validate(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (viewer, _) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let result = async {
        let id = parse_id(&id)?;
        app.validate_key(&viewer.caller.actor, &id).await
    }
    .await;
    match result {
        Ok(v) => Redirect::to(&format!("/keys/{id}?notice={}", v.verdict.as_str())).into_response(),
        Err(e) => refused(&viewer, &format!("/keys/{id}"), e),
    }
}

// ------------------------------------------------------------------ reveal

/// How long a revealed value stays on the page (and in the clipboard).
const REVEAL_SECONDS: u32 = 30;

pub async fn reveal_form(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(under): Query<approval::UnderApproval>,
) -> Response {
    // Only those who may reveal it are asked.
    let key = match async {
        app.key_for(
            &viewer.caller.actor,
            Permission::KeysReveal,
            &parse_id(&id)?,
        )
        .await
    }
    .await
    {
        Ok(key) => key,
        Err(e) => return error_page(&viewer, "/", "Reveal", e),
    };
    let content = reveal_form_markup(&viewer, &key, "", None, under.id());
    page(
        StatusCode::OK,
        framed(&viewer, "/", &format!("Reveal {}", key.alias), content),
    )
}

fn reveal_form_markup(
    viewer: &Viewer,
    key: &Key,
    reason: &str,
    error: Option<&Error>,
    approval: Option<&str>,
) -> Markup {
    html! {
        @if let Some(e) = error {
            p class="flash error" role="alert" { (e.message) }
        }
        form method="post" action={ "/keys/" (key.id) "/reveal" } class="panel narrow" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            p { "The value of " strong { (key.alias) } " (" (key.service_id) ", " (key.environment) ") will show for "
                (REVEAL_SECONDS) " seconds. The reveal and your reason are recorded in the audit trail." }
            div class="field" {
                label for="reason" { "Reason" }
                input id="reason" name="reason" type="text" required minlength="4" maxlength="500" value=(reason);
                span class="help" { "Why you need the value, e.g. “configure the batch job's fallback”." }
            }
            (approval::controls(error, approval, reason, true, html! { button type="submit" { "Reveal" } }))
            " " a href={ "/keys/" (key.id) } { "Cancel" }
        }
    }
}

pub async fn reveal(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let Viewer { caller, csrf } = viewer;
    let reason = field(&fields, "reason")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let key = match async { app.key(&caller.actor, &parse_id(&id)?).await }.await {
        Ok(key) => key,
        Err(e) => return refused(&Viewer { caller, csrf }, "/", e),
    };
    match app.reveal_key(&caller.actor, &key.id, None, &reason).await {
        Ok((version, value)) => {
            let viewer = Viewer { caller, csrf };
            let content = html! {
                section class="panel narrow reveal" data-reveal-seconds=(REVEAL_SECONDS) {
                    p { "Version " (version.version) " of " strong { (key.alias) } ". It disappears in "
                        span data-countdown { (REVEAL_SECONDS) } " seconds." }
                    div class="secret" {
                        output id="revealed" class="mono revealed" { (value.expose_secret()) }
                        button type="button" class="quiet" data-copy-from="revealed" hidden { "Copy" }
                    }
                    p class="help muted" { "Copying puts it on the clipboard for " (REVEAL_SECONDS)
                        " seconds, then Keyward clears it where the browser allows." }
                    p { a href={ "/keys/" (key.id) } { "Done" } }
                }
            };
            drop(value);
            let mut response = page(
                StatusCode::OK,
                framed(&viewer, "/", &format!("Reveal {}", key.alias), content),
            );
            // Without JavaScript the page still goes away after the time: the browser
            // loads the key's page instead.
            if let Ok(refresh) = axum::http::HeaderValue::from_str(&format!(
                "{REVEAL_SECONDS}; url=/keys/{}",
                key.id
            )) {
                response.headers_mut().insert("refresh", refresh);
            }
            response
        }
        Err(e) if e.kind == keyward_core::ErrorKind::Accepted => {
            Redirect::to(&format!("/keys/{}?notice=approval_requested", key.id)).into_response()
        }
        Err(e) => {
            let viewer = Viewer { caller, csrf };
            let status = crate::http::error::ApiError::from(e.clone()).status;
            page(
                status,
                framed(
                    &viewer,
                    "/",
                    &format!("Reveal {}", key.alias),
                    reveal_form_markup(&viewer, &key, &reason, Some(&e), None),
                ),
            )
        }
    }
}

// ------------------------------------------------------------------ delete, restore

pub async fn delete_form(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(under): Query<approval::UnderApproval>,
) -> Response {
    match delete_markup(&app, &viewer, &id, None, under.id()).await {
        Ok((title, content)) => page(StatusCode::OK, framed(&viewer, "/", &title, content)),
        Err(e) => error_page(&viewer, "/", "Delete", e),
    }
}

async fn delete_markup(
    app: &App,
    viewer: &Viewer,
    id: &str,
    error: Option<&Error>,
    approval: Option<&str>,
) -> Result<(String, Markup), Error> {
    let id = parse_id(id)?;
    app.key_for(&viewer.caller.actor, Permission::KeysDelete, &id)
        .await?;
    let impact = app.impact(&viewer.caller.actor, &id).await?;
    let key = &impact.key;
    let now = app.now();
    let critical = key.criticality == Criticality::Critical;
    let content = html! {
        @if let Some(e) = error { p class="flash error" role="alert" { (e.message) } }
        section class="panel narrow" aria-labelledby="impact-title" {
            (impact_facts(&impact, now))
            form method="post" action={ "/keys/" (key.id) "/delete" } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                p { "Deleting stops all use at once. The key can be restored from Deleted keys within the recovery window." }
                @if critical {
                    div class="field" {
                        label for="confirm" { "Type the alias " code { (key.alias) } " to confirm (a critical key)" }
                        input id="confirm" name="confirm" type="text" required autocomplete="off";
                    }
                }
                (approval::controls(error, approval, "", false, html! {
                    button type="submit" class="danger" { "Delete " (key.alias) }
                }))
                " " a href={ "/keys/" (key.id) } { "Cancel" }
            }
        }
    };
    Ok((format!("Delete {}", key.alias), content))
}

/// What depends on a key, for every confirmation that stops it (delete, revoke).
fn impact_facts(impact: &keyward_app::Impact, now: jiff::Timestamp) -> Markup {
    html! {
            h2 id="impact-title" { "Impact" }
            dl class="facts impact" {
                dt { "App tokens using it" } dd {
                    @if impact.tokens.is_empty() { "none" } @else {
                        (impact.tokens.len()) ": "
                        @for (i, t) in impact.tokens.iter().enumerate() { @if i > 0 { ", " } (t.name) }
                    }
                }
                dt { "Requests, last 7 days" } dd data-requests-7d=(impact.last_7_days.requests) { (impact.last_7_days.requests) " (" (impact.last_7_days.errors) " failed, " (usd(impact.last_7_days.cost_nanos)) ")" }
                dt { "Requests, last 30 days" } dd { (impact.last_30_days.requests) }
                dt { "Last used" } dd { (relative(now, impact.last_used_at)) }
                dt { "Other active keys in its pool" } dd {
                    (impact.other_active_keys)
                    @if impact.other_active_keys == 0 && !impact.tokens.is_empty() {
                        " — " strong class="warn" { "requests through these tokens will fail" }
                    }
                }
            }
    }
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let result = async {
        let key_id = parse_id(&id)?;
        let key = app.key(&viewer.caller.actor, &key_id).await?;
        if key.criticality == Criticality::Critical
            && field(&fields, "confirm").map(str::trim) != Some(key.alias.as_str())
        {
            return Err(Error::invalid(
                "confirmation_mismatch",
                "type the key's alias exactly to delete a critical key",
            ));
        }
        app.delete_key(&viewer.caller.actor, &key_id).await
    }
    .await;
    match result {
        Ok(_) => Redirect::to("/keys/deleted").into_response(),
        Err(e) if e.kind == keyward_core::ErrorKind::Accepted => {
            Redirect::to(&format!("/keys/{id}?notice=approval_requested")).into_response()
        }
        Err(e) => {
            let status = crate::http::error::ApiError::from(e.clone()).status;
            match delete_markup(&app, &viewer, &id, Some(&e), None).await {
                Ok((title, content)) => page(status, framed(&viewer, "/", &title, content)),
                Err(_) => error_page(&viewer, "/", "Delete", e),
            }
        }
    }
}

/// `?approval=…&key=…`: the inbox sends a requester back to purge `key` under an approval.
#[derive(Debug, Default, Deserialize)]
pub struct PurgeUnder {
    approval: Option<String>,
    key: Option<String>,
    notice: Option<String>,
}

/// A refused purge, shown on its row: which key, why, and the alias typed.
struct PurgeRefused {
    key: KeyId,
    error: Error,
    confirm: String,
}

pub async fn deleted(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(under): Query<PurgeUnder>,
) -> Response {
    let requested = under.notice.as_deref() == Some("approval_requested");
    let under = approval::valid_id(under.approval.as_deref())
        .zip(under.key.as_deref().and_then(|k| parse_id(k).ok()));
    deleted_page(&app, &viewer, StatusCode::OK, None, under, requested).await
}

async fn deleted_page(
    app: &App,
    viewer: &Viewer,
    status: StatusCode,
    refused: Option<&PurgeRefused>,
    under: Option<(&str, KeyId)>,
    requested: bool,
) -> Response {
    let result = async {
        let page = app
            .list_keys(
                &viewer.caller.actor,
                KeyFilter {
                    status: Some(KeyStatus::Deleted),
                    ..KeyFilter::default()
                },
                None,
                PageRequest::new(None, Some(PageRequest::MAX_LIMIT))?,
            )
            .await?;
        Ok::<_, Error>((page.items, app.catalog().await?))
    }
    .await;
    let (keys, catalog) = match result {
        Ok(read) => read,
        Err(e) => return error_page(viewer, "/keys/deleted", "Deleted keys", e),
    };
    let now = app.now();
    let window = app.recovery_window;
    let mut rows = Vec::new();
    for key in &keys {
        let restore = may(&catalog, &viewer.caller, Permission::KeysDelete, key);
        let purge = may(&catalog, &viewer.caller, Permission::KeysPurge, key);
        rows.push((key, restore, purge));
    }
    let content = html! {
        @if requested {
            p class="flash" role="status" { (notice_text(Some("approval_requested")).map_or("", |(text, _)| text)) }
        }
        p class="muted" { "Deleted keys are kept for " (window.in_days()) " days, then purged for good. Restoring brings a key back as it was." }
        @if keys.is_empty() {
            div class="table-wrap" { p class="empty" { "No deleted keys." } }
        } @else {
            div class="table-wrap" {
                table class="keys" {
                    thead { tr {
                        th scope="col" { "Alias" } th scope="col" { "Service" } th scope="col" { "Environment" }
                        th scope="col" { "Deleted" } th scope="col" { "Purged on" } th scope="col" { span class="sr-only" { "Actions" } }
                    } }
                    tbody {
                        @for (key, restore, purge) in &rows {
                            @let deleted_at = key.deleted_at.unwrap_or(now);
                            tr {
                                td data-label="Alias" { (key.alias) }
                                td data-label="Service" { (key.service_id) }
                                td data-label="Environment" { (key.environment) }
                                td data-label="Deleted" { (relative(now, Some(deleted_at))) " by " (key.deleted_by.clone().unwrap_or_default()) }
                                td data-label="Purged on" { (short_day(window.purgeable_at(deleted_at))) }
                                td class="actions" {
                                    @if *restore {
                                        form method="post" action={ "/keys/" (key.id) "/restore" } {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            button type="submit" class="quiet" { "Restore " (key.alias) }
                                        }
                                    }
                                    @if *purge {
                                        @let refusal = refused.filter(|r| r.key == key.id);
                                        @let approved = under.as_ref().filter(|(_, k)| *k == key.id).map(|(a, _)| *a);
                                        form method="post" action={ "/keys/" (key.id) "/purge" } id={ "purge-" (key.id) } {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            @if let Some(r) = refusal { p class="flash error" role="alert" { "Not purged: " (r.error.message) } }
                                            label class="sr-only" for={ "confirm-" (key.id) } { "Type the alias to purge now" }
                                            input id={ "confirm-" (key.id) } name="confirm" type="text" placeholder="alias, to purge now" autocomplete="off"
                                                value=(refusal.map_or("", |r| r.confirm.as_str()));
                                            (approval::controls(refusal.map(|r| &r.error), approved, "", false, html! {
                                                button type="submit" class="danger" { "Purge" }
                                            }))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(
        status,
        framed(viewer, "/keys/deleted", "Deleted keys", content),
    )
}

pub async fn restore(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (viewer, _) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let result = async {
        let id = parse_id(&id)?;
        app.restore_key(&viewer.caller.actor, &id).await
    }
    .await;
    match result {
        Ok(key) => Redirect::to(&format!("/keys/{}?notice=restored", key.id)).into_response(),
        Err(e) => refused(&viewer, "/keys/deleted", e),
    }
}

pub async fn purge(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let confirm = field(&fields, "confirm").map(str::trim);
    let key_id = match parse_id(&id) {
        Ok(key_id) => key_id,
        Err(e) => return refused(&viewer, "/keys/deleted", e),
    };
    match app.purge_key(&viewer.caller.actor, &key_id, confirm).await {
        Ok(()) => Redirect::to("/keys/deleted").into_response(),
        Err(e) if e.kind == keyward_core::ErrorKind::Accepted => {
            Redirect::to("/keys/deleted?notice=approval_requested").into_response()
        }
        Err(error) => {
            let status = crate::http::error::ApiError::from(error.clone()).status;
            let refusal = PurgeRefused {
                key: key_id,
                error,
                confirm: confirm.unwrap_or_default().to_owned(),
            };
            deleted_page(&app, &viewer, status, Some(&refusal), None, false).await
        }
    }
}

// ------------------------------------------------------------------ revoke

pub async fn revoke_form(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    match revoke_markup(&app, &viewer, &id, None, "").await {
        Ok((title, content)) => page(StatusCode::OK, framed(&viewer, "/", &title, content)),
        Err(e) => error_page(&viewer, "/", "Revoke", e),
    }
}

/// What the provider said to a revoked value, in words.
fn revocation_check_words(
    check: Option<&keyward_core::key::RevocationCheck>,
    now: jiff::Timestamp,
) -> String {
    use keyward_core::key::RevocationOutcome as O;
    let Some(check) = check else {
        return "not checked: revoke the value at the provider, then check".to_owned();
    };
    let words = match check.outcome {
        O::RevokedVerified => "the provider refuses the old value: revoked everywhere",
        O::StillLive => "the provider STILL ACCEPTS the old value: revoke it at the provider",
        O::Inconclusive => "the provider's answer proved nothing; check again",
        O::Deferred => "the key's allowance could not afford a check; check again later",
        O::Unverifiable => "this service has no validation request to check with",
    };
    format!(
        "{words} (checked {})",
        relative(now, Some(check.at)).into_string()
    )
}

/// Asks the provider whether a revoked key's old value is dead there too.
pub async fn verify_revocation(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (viewer, _) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let result = async {
        let key_id = parse_id(&id)?;
        app.verify_revocation(&viewer.caller.actor, &key_id).await
    }
    .await;
    match result {
        Ok(key) => {
            Redirect::to(&format!("/keys/{}?notice=revocation_checked", key.id)).into_response()
        }
        Err(e) => error_page(&viewer, "/", "Check at the provider", e),
    }
}

async fn revoke_markup(
    app: &App,
    viewer: &Viewer,
    id: &str,
    error: Option<&Error>,
    reason: &str,
) -> Result<(String, Markup), Error> {
    let id = parse_id(id)?;
    app.key_for(&viewer.caller.actor, Permission::KeysWrite, &id)
        .await?;
    let impact = app.impact(&viewer.caller.actor, &id).await?;
    let key = &impact.key;
    let content = html! {
        @if let Some(e) = error { p class="flash error" role="alert" { (e.message) } }
        section class="panel narrow" aria-labelledby="impact-title" {
            (impact_facts(&impact, app.now()))
            form method="post" action={ "/keys/" (key.id) "/revoke" } {
                input type="hidden" name="csrf" value=(viewer.csrf);
                p { strong { "Emergency revocation" } " stops every use of " (key.alias)
                    " at once, on every instance within a second, without waiting for approval. "
                    "It cannot be undone: add a new key afterwards, and revoke the value at the provider too. "
                    "The act is filed for review." }
                div class="field" {
                    label for="reason" { "Reason" }
                    input id="reason" name="reason" type="text" required minlength="4" maxlength="500" value=(reason);
                }
                p {
                    label class="check" {
                        input name="at_provider" type="checkbox" value="yes";
                        " I revoked it at the provider too — ask the provider now whether the old value is dead"
                    }
                }
                button type="submit" class="danger" { "Revoke " (key.alias) " now" }
                " " a href={ "/keys/" (key.id) } { "Cancel" }
            }
        }
    };
    Ok((format!("Revoke {}", key.alias), content))
}

pub async fn revoke(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (viewer, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let reason = field(&fields, "reason")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let at_provider = field(&fields, "at_provider") == Some("yes");
    let result = async {
        let key_id = parse_id(&id)?;
        app.revoke_key(&viewer.caller.actor, &key_id, &reason, at_provider)
            .await
    }
    .await;
    match result {
        Ok(key) => Redirect::to(&format!("/keys/{}?notice=revoked", key.id)).into_response(),
        Err(e) => {
            let status = crate::http::error::ApiError::from(e.clone()).status;
            match revoke_markup(&app, &viewer, &id, Some(&e), &reason).await {
                Ok((title, content)) => page(status, framed(&viewer, "/", &title, content)),
                Err(_) => error_page(&viewer, "/", "Revoke", e),
            }
        }
    }
}

//! Guided rotation on the key page: the start form (a new value, or — for services with a
//! key-management API — a stored admin key and project), the running rotation with its
//! evidence (validation, canary and fallback counts, the window, the revocation probe) and
//! one button per step it can take next. The forms post to `rotate`, through the same use
//! cases as `/api/v1/rotations`; every step may be repeated harmlessly.

use keyward_core::Error;
use keyward_core::guided_rotation::{Rotation, RotationStep};
use keyward_core::key::Key;
use maud::{Markup, html};

use super::frame::Viewer;
use super::key_form::Typed;
use super::parts::{impact_line, relative};

/// What the key page knows about its rotations.
pub struct RotationView<'a> {
    /// The latest rotation, if any.
    pub latest: Option<&'a Rotation>,
    /// The service has a key-management API Keyward can drive.
    pub managed_possible: bool,
    /// The other stored keys of the same service, offered as the admin key.
    pub admin_keys: &'a [Key],
    pub may_rotate: bool,
    /// The provider's page to revoke a still-live old key on.
    pub revoke_link: Option<&'a str>,
    /// What depends on the key, shown before a rotation starts.
    pub impact: &'a keyward_app::Impact,
    /// A refused start: why, and what was typed (never the value).
    pub refused: Option<(&'a Error, &'a Typed)>,
    /// An approval from the inbox this form completes.
    pub under: Option<&'a str>,
}

/// The rotation part of a key page: the latest rotation (if any) and, when none is
/// running, the form to start one.
pub fn section(
    viewer: &Viewer,
    key: &Key,
    view: &RotationView<'_>,
    now: jiff::Timestamp,
) -> Markup {
    let RotationView {
        latest,
        managed_possible,
        admin_keys,
        may_rotate,
        revoke_link,
        impact,
        refused,
        under,
    } = *view;
    let error = refused.map(|(e, _)| e);
    let typed = refused.map(|(_, t)| t);
    let window = typed.map_or("1440", |t| t.window_minutes.as_str());
    let project = typed.map_or("", |t| t.project.as_str());
    let admin = typed.map_or("", |t| t.admin_key.as_str());
    let running = latest.filter(|r| r.step.is_active() || r.step == RotationStep::OldKeyLive);
    html! {
        section id="rotation" aria-labelledby="rotation-title" {
            h2 id="rotation-title" { "Guided rotation" }
            @if let Some(r) = latest {
                (rotation_panel(viewer, r, may_rotate, revoke_link, now))
            }
            @if may_rotate && running.is_none() && key.deleted_at.is_none() && key.revoked.is_none() {
                details class="panel" open[latest.is_none() || refused.is_some() || under.is_some()] {
                    summary { "Start a rotation" }
                    @if let Some(e) = error { p class="flash error" role="alert" { "Not started: " (e.message) } }
                    p class="help" { "The new value is stored as pending and used only once it is validated and promoted; the old one stays as a fallback for the window, then Keyward retires it and checks that the provider rejects it." }
                    (impact_line(impact))
                    form method="post" action={ "/keys/" (key.id) "/rotations" } {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        div class="field" {
                            label for="rotation-secret" { "New value" }
                            div class="secret" {
                                input id="rotation-secret" name="secret" type="password" autocomplete="off" spellcheck="false";
                                button type="button" class="quiet" data-toggle-secret="rotation-secret" aria-pressed="false" hidden { "Show" }
                            }
                            @if managed_possible {
                                span class="help" { "Or leave it empty and let Keyward create the key with an admin key below." }
                            }
                        }
                        @if managed_possible {
                            div class="field" {
                                label for="rotation-admin" { "Admin key (managed rotation)" }
                                select id="rotation-admin" name="admin_key" {
                                    option value="" { "— none: I give the new value —" }
                                    @for k in admin_keys {
                                        option value=(k.id) selected[k.id.as_str() == admin] { (k.alias) " (" (k.environment) ", " (k.current_hint) ")" }
                                    }
                                }
                            }
                            div class="field" {
                                label for="rotation-project" { "Project id" }
                                input id="rotation-project" name="project" placeholder="proj_…" autocomplete="off" value=(project);
                            }
                        }
                        div class="field" {
                            label for="rotation-window" { "Dual-key window (minutes)" }
                            input id="rotation-window" name="window_minutes" type="number" min="0" max="43200" value=(window);
                            span class="help" { "How long the old value answers when the provider rejects the new one." }
                        }
                        (super::approval::controls(error, under, "", false, html! { button type="submit" { "Start rotation" } }))
                    }
                }
            }
        }
    }
}

fn probe_line(
    label: &str,
    probe: Option<&keyward_core::guided_rotation::ProbeRecord>,
    now: jiff::Timestamp,
) -> Markup {
    html! {
        dt { (label) }
        dd {
            @match probe {
                Some(p) => {
                    span class={ "verdict " (p.verdict) } { (p.verdict) }
                    @if let Some(status) = p.status { " (HTTP " (status) ")" }
                    " · " (relative(now, Some(p.at)))
                }
                None => { span class="muted" { "not yet" } }
            }
        }
    }
}

fn rotation_panel(
    viewer: &Viewer,
    r: &Rotation,
    may_rotate: bool,
    revoke_link: Option<&str>,
    now: jiff::Timestamp,
) -> Markup {
    let window_open = r.window_ends_at.is_some_and(|end| now < end);
    html! {
        div class="panel" data-rotation-step=(r.step.as_str()) {
            p {
                span class={ "badge " (r.step.as_str()) } { (r.step.as_str().replace('_', " ")) }
                " " (r.step.summary())
            }
            @if r.step == RotationStep::OldKeyLive {
                p class="flash error" role="alert" {
                    "Old key still live — revoke it at the provider"
                    @if let Some(link) = revoke_link { " (" a href=(link) rel="noopener noreferrer" target="_blank" { "open the provider's key page" } ")" }
                    ", then verify again."
                }
            }
            dl class="facts" {
                dt { "Versions" } dd { (r.old_version) " → " (r.new_version) }
                @if let Some(m) = &r.managed {
                    dt { "Managed" } dd { "through the provider's API, project " span class="mono" { (m.project) } }
                }
                (probe_line("Validation", r.validation.as_ref(), now))
                @if r.canary_percent > 0 {
                    dt { "Canary" } dd { (r.canary_percent) "% · " (r.traffic.canary_served) " served, " (r.traffic.canary_rejected) " rejected" }
                }
                @if let Some(end) = r.window_ends_at {
                    dt { "Dual-key window" } dd {
                        @if window_open { "open until " (end) } @else { "ended " (relative(now, Some(end))) }
                        " · " (r.traffic.fallback_served) " requests fell back to the old value"
                    }
                }
                @if let Some(at) = r.traffic.new_rejected_at {
                    dt { "New value rejected" } dd class="warn" { "last " (relative(now, Some(at))) }
                }
                (probe_line("Revocation check", r.verification.as_ref(), now))
                dt { "Started" } dd { (relative(now, Some(r.created_at))) " by " (r.created_by) }
            }
            @if may_rotate {
                div class="actions" {
                    @for action in r.step.next_actions() {
                        form method="post" action={ "/rotations/" (r.id) "/" (action) } {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            @match *action {
                                "canary" => {
                                    label class="check" { "Share " input name="percent" type="number" min="1" max="50" value=(if r.canary_percent > 0 { r.canary_percent } else { 10 }) aria-label="Canary share in percent"; "%" }
                                    button type="submit" class="quiet" { "Canary" }
                                }
                                "retire" => {
                                    @if window_open {
                                        label class="check" { input type="checkbox" name="confirm" value="yes"; "Retire before the window ends" }
                                    }
                                    button type="submit" class="danger" { "Retire old value" }
                                }
                                "cancel" => { button type="submit" class="quiet" { "Cancel rotation" } }
                                "promote" => { button type="submit" { "Promote" } }
                                "validate" => { button type="submit" { "Validate new value" } }
                                "verify" => { button type="submit" { "Verify revocation" } }
                                other => { button type="submit" class="quiet" { (other) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

//! `/keys/new`: adding a key — services grouped by category with where to get a key and
//! its format, the secret in a masked field with a show/hide toggle, and the metadata.
//! A refused form comes back with what was typed, except the secret.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyward_core::catalog::ServiceCatalog;
use keyward_core::key::{Criticality, KeyDraftInput};
use maud::{Markup, html};
use secrecy::SecretString;
use serde::Deserialize;

use super::frame::{Viewer, field, framed, page};
use super::guard::form_post;
use super::key_form::{expiry_of, field_of, tags_of};
use keyward_app::{App, NewKey};

/// What the form shows (again): everything but the secret.
#[derive(Debug, Default, Clone)]
struct Typed {
    service: String,
    environment: String,
    alias: String,
    description: String,
    tags: String,
    criticality: String,
    expires: String,
}

/// One service in the picker, with its guidance.
struct ServiceChoice {
    id: String,
    name: String,
    /// What a key looks like.
    format: Option<String>,
    /// Where to get one.
    url: Option<String>,
    docs: Option<String>,
    where_to_get: String,
    /// "Free: 25 requests / day; Premium: 75 requests / minute".
    plans: String,
}

/// A plan's limits in words: `25 requests / day`.
fn plan_words(plan: &keyward_core::service::PlanLimits) -> String {
    let limits: Vec<String> = plan
        .limits
        .iter()
        .map(|l| {
            let unit = l.unit.as_str();
            let window = match l.window_seconds {
                1 => "second".to_owned(),
                60 => "minute".to_owned(),
                3_600 => "hour".to_owned(),
                86_400 => "day".to_owned(),
                2_592_000 | 2_678_400 => "month".to_owned(),
                s => format!("{s} s"),
            };
            format!("{} {unit} / {window}", l.max)
        })
        .collect();
    if limits.is_empty() {
        plan.plan.clone()
    } else {
        format!("{}: {}", plan.plan, limits.join(", "))
    }
}

struct Choices {
    /// Category name → its services.
    services: BTreeMap<String, Vec<ServiceChoice>>,
    environments: Vec<(String, String)>,
}

async fn choices(app: &App) -> Result<Choices, keyward_core::Error> {
    let catalog: ServiceCatalog = app.catalog().await?;
    let names = super::frame::category_names(app).await?;
    let mut services: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for s in catalog.iter() {
        let category = names
            .get(&s.category)
            .cloned()
            .unwrap_or_else(|| s.category.clone());
        services.entry(category).or_default().push(ServiceChoice {
            id: s.id.clone(),
            name: s.name.clone(),
            format: s.key_format_description.clone(),
            url: s.key_url.clone().or_else(|| s.docs_url.clone()),
            docs: s.docs_url.clone(),
            where_to_get: s.where_to_get.clone(),
            plans: s
                .plans
                .iter()
                .map(plan_words)
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let environments = app
        .environments()
        .await?
        .into_iter()
        .map(|e| (e.id, e.name))
        .collect();
    Ok(Choices {
        services,
        environments,
    })
}

/// A validation result to show beside the secret: its verdict word and sentence.
type Checked = Option<(String, String)>;

fn form_markup(
    viewer: &Viewer,
    c: &Choices,
    typed: &Typed,
    error: Option<(&str, &str)>,
    checked: &Checked,
) -> Markup {
    let error_for = |name: &str| error.filter(|(f, _)| *f == name).map(|(_, m)| m.to_owned());
    let criticalities = ["low", "medium", "high", "critical"];
    html! {
        @if let Some((_, message)) = error {
            p class="flash error" role="alert" { "The key was not added: " (message) }
        }
        form method="post" action="/keys/new" class="wizard" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            fieldset {
                legend { "1. Service" }
                div class="field" {
                    label for="service-search" { "Find a service" }
                    input id="service-search" type="search" data-filter-select="service"
                        placeholder="Type to narrow the list, e.g. polygon" hidden;
                }
                div class="field" {
                    label for="service" { "Service" }
                    select id="service" name="service" required {
                        option value="" { "Choose a service…" }
                        @for (category, services) in &c.services {
                            optgroup label=(category) {
                                @for s in services {
                                    option value=(s.id) selected[s.id == typed.service] { (s.name) }
                                }
                            }
                        }
                    }
                    @if let Some(e) = error_for("service") { span class="error" { (e) } }
                }
                div id="service-guide" class="help" data-guide-for="service" aria-live="polite" {}
                details class="guides" {
                    summary { "Where to get a key, and what it looks like" }
                    dl {
                        @for services in c.services.values() {
                            @for s in services {
                                dt data-service=(s.id) { (s.name) }
                                dd data-service=(s.id) {
                                    @if !s.where_to_get.is_empty() { (s.where_to_get) " " }
                                    @if let Some(format) = &s.format { (format) ". " }
                                    @if !s.plans.is_empty() { span class="plans" { "Plans — " (s.plans) ". " } }
                                    @if let Some(url) = &s.url { a href=(url) rel="noopener noreferrer" { "Get a key" } }
                                    @if let Some(docs) = &s.docs { " · " a href=(docs) rel="noopener noreferrer" { "Docs" } }
                                }
                            }
                        }
                    }
                }
            }
            fieldset {
                legend { "2. The key" }
                div class="field" {
                    label for="secret" { "API key" }
                    div class="secret" {
                        input id="secret" name="secret" type="password" autocomplete="off"
                            spellcheck="false" required;
                        button type="button" class="quiet" data-toggle-secret="secret"
                            aria-pressed="false" hidden { "Show" }
                    }
                    span class="help" { "Stored encrypted; after this only its hint is ever shown." }
                    @if let Some(e) = error_for("secret") { span class="error" { (e) } }
                }
                div class="validate" {
                    button type="submit" name="intent" value="validate" formnovalidate class="quiet"
                        data-validate { "Validate" }
                    output id="validation" aria-live="polite" class={ "verdict " (checked.as_ref().map_or("", |(v, _)| v.as_str())) } {
                        @if let Some((_, message)) = checked { (message) }
                    }
                    span class="help" { "Sends the service's cheapest check request with this key through Keyward; nothing is stored." }
                }
            }
            fieldset {
                legend { "3. Details" }
                div class="field" {
                    label for="alias" { "Alias" }
                    input id="alias" name="alias" type="text" required value=(typed.alias);
                    span class="help" { "A short name, unique per service and environment." }
                    @if let Some(e) = error_for("alias") { span class="error" { (e) } }
                }
                div class="field" {
                    label for="environment" { "Environment" }
                    select id="environment" name="environment" required {
                        @for (id, name) in &c.environments {
                            option value=(id) selected[*id == typed.environment] { (name) }
                        }
                    }
                }
                div class="field" {
                    label for="description" { "Description" }
                    textarea id="description" name="description" rows="2" { (typed.description) }
                }
                div class="field" {
                    label for="tags" { "Tags" }
                    input id="tags" name="tags" type="text" value=(typed.tags);
                    span class="help" { "Comma-separated, e.g. earnings, batch" }
                    @if let Some(e) = error_for("tags") { span class="error" { (e) } }
                }
                div class="field" {
                    label for="criticality" { "Criticality" }
                    select id="criticality" name="criticality" {
                        @for level in criticalities {
                            option value=(level) selected[typed.criticality == level || (typed.criticality.is_empty() && level == "medium")] { (level) }
                        }
                    }
                }
                div class="field" {
                    label for="expires" { "Expires on (optional)" }
                    input id="expires" name="expires" type="date" value=(typed.expires);
                    @if let Some(e) = error_for("expires") { span class="error" { (e) } }
                }
            }
            button type="submit" { "Add key" }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Preselect {
    service: Option<String>,
}

pub async fn form(
    State(app): State<Arc<App>>,
    viewer: Viewer,
    Query(pre): Query<Preselect>,
) -> Response {
    let choices = match choices(&app).await {
        Ok(c) => c,
        Err(e) => return crate::http::error::ApiError::from(e).into_response(),
    };
    let typed = Typed {
        service: pre.service.unwrap_or_default(),
        environment: "production".into(),
        ..Typed::default()
    };
    page(
        StatusCode::OK,
        framed(
            &viewer,
            "/keys/new",
            "Add a key",
            form_markup(&viewer, &choices, &typed, None, &None),
        ),
    )
}

pub async fn create(State(app): State<Arc<App>>, request: Request) -> Response {
    // The page's own session, to show the form again on a refusal.
    let (Viewer { caller, .. }, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let get = |name: &str| field(&fields, name).unwrap_or_default().to_owned();
    let typed = Typed {
        service: get("service"),
        environment: get("environment"),
        alias: get("alias"),
        description: get("description"),
        tags: get("tags"),
        criticality: get("criticality"),
        expires: get("expires"),
    };
    let csrf = field(&fields, "csrf").unwrap_or_default().to_owned();
    let refuse = |code: &'static str, message: String| Refusal {
        code,
        message,
        checked: None,
    };
    if field(&fields, "intent") == Some("validate") {
        let secret = SecretString::from(get("secret"));
        let refusal = match app
            .validate_secret(&caller.actor, &typed.service, &typed.environment, &secret)
            .await
        {
            Ok(v) => {
                let word = serde_json::to_value(v.verdict)
                    .ok()
                    .and_then(|w| w.as_str().map(str::to_owned))
                    .unwrap_or_default();
                Refusal {
                    code: "",
                    message: String::new(),
                    checked: Some((
                        word,
                        format!("{} Enter the key again to add it.", v.message),
                    )),
                }
            }
            Err(e) => refuse(e.code, e.message),
        };
        return refused_page(&app, caller, csrf, &typed, refusal).await;
    }
    let expires_at = match expiry_of(&typed.expires) {
        Ok(at) => at,
        Err(e) => {
            return refused_page(&app, caller, csrf, &typed, refuse(e.code, e.message)).await;
        }
    };
    let criticality = match typed.criticality.as_str() {
        "" => None,
        text => match text.parse::<Criticality>() {
            Ok(c) => Some(c),
            Err(e) => {
                return refused_page(&app, caller, csrf, &typed, refuse(e.code, e.message)).await;
            }
        },
    };
    let draft = KeyDraftInput {
        service_id: typed.service.clone(),
        environment: typed.environment.clone(),
        alias: typed.alias.clone(),
        description: Some(typed.description.clone()).filter(|d| !d.trim().is_empty()),
        owner: None,
        tags: tags_of(&typed.tags),
        criticality,
        enabled: None,
        expires_at,
        limits: Vec::new(),
        budget: None,
    };
    let new = NewKey {
        draft,
        secret: SecretString::from(get("secret")),
        force: false,
    };
    match app.create_key(&caller.actor, new).await {
        Ok(key) => Redirect::to(&format!("/?added={}", key.id)).into_response(),
        Err(e) => refused_page(&app, caller, csrf, &typed, refuse(e.code, e.message)).await,
    }
}

/// Why the form comes back: an error (by its code), or a validation result.
struct Refusal {
    code: &'static str,
    message: String,
    checked: Checked,
}

/// The form again, with what was typed (never the secret) and the error by its field.
async fn refused_page(
    app: &App,
    caller: crate::http::auth::Caller,
    csrf: String,
    typed: &Typed,
    refusal: Refusal,
) -> Response {
    let viewer = Viewer { caller, csrf };
    let choices = match choices(app).await {
        Ok(c) => c,
        Err(e) => return crate::http::error::ApiError::from(e).into_response(),
    };
    let error =
        (!refusal.code.is_empty()).then(|| (field_of(refusal.code), refusal.message.as_str()));
    page(
        if error.is_some() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        },
        framed(
            &viewer,
            "/keys/new",
            "Add a key",
            form_markup(&viewer, &choices, typed, error, &refusal.checked),
        ),
    )
}

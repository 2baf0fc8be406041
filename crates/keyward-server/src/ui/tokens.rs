//! `/app-tokens`: the credentials applications present to the proxy — list, create (the
//! token is shown once, with ready-to-paste snippets), revoke.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::alert::AlertSubject;
use keyward_core::app_token::{AppToken, AppTokenDraft, AppTokenStatus, BudgetPeriod, RateLimit};
use keyward_core::response::{Containment, Measure};
use maud::{Markup, html};
use secrecy::ExposeSecret;

use super::chart::usd;
use super::frame::{Viewer, error_page, field, framed, page};
use super::guard::form_post;
use super::parts::relative;
use keyward_app::App;

/// What the create form shows again after a refusal.
#[derive(Debug, Default)]
struct Typed {
    name: String,
    services: Vec<String>,
    environments: Vec<String>,
    rate: String,
    budget: String,
    period: String,
}

async fn list_markup(
    app: &App,
    viewer: &Viewer,
    typed: &Typed,
    error: Option<&Error>,
) -> Result<Markup, Error> {
    let actor = &viewer.caller.actor;
    let tokens: Vec<AppToken> = app.app_tokens(actor).await?;
    let now = app.now();
    let can_write = viewer.may(Permission::AppTokensWrite);
    let catalog = app.catalog().await?;
    let mut services: Vec<(&str, &str)> = catalog
        .iter()
        .map(|s| (s.id.as_str(), s.name.as_str()))
        .collect();
    services.sort_by_key(|(_, name)| name.to_lowercase());
    let environments = app.environments().await?;
    let measures = app.containments(actor).await?;
    let measures_of = |t: &AppToken| -> Vec<&Containment> {
        measures
            .iter()
            .filter(|c| matches!(&c.subject, AlertSubject::Token(id) if *id == t.id))
            .collect()
    };
    Ok(html! {
        @if let Some(e) = error { p class="flash error" role="alert" { "The token was not created: " (e.message) } }
        section aria-labelledby="tokens-title" {
            h2 id="tokens-title" { "App tokens" }
            @if tokens.is_empty() {
                div class="table-wrap" { p class="empty" { "No app tokens yet. Applications call the proxy with one instead of a real key." } }
            } @else {
                div class="table-wrap" {
                    table class="keys" {
                        thead { tr {
                            th scope="col" { "Name" } th scope="col" { "Services" } th scope="col" { "Environments" }
                            th scope="col" { "Limits" } th scope="col" { "Status" } th scope="col" { "Last used" }
                            th scope="col" { span class="sr-only" { "Actions" } }
                        } }
                        tbody {
                            @for t in &tokens {
                                @let status = t.status(now);
                                @let in_force = measures_of(t);
                                @let frozen = in_force.iter().any(|c| c.measure == Measure::Freeze);
                                tr id={ "token-" (t.id) } {
                                    td data-label="Name" { (t.name) " " span class="mono muted" { (t.public_id) } }
                                    td data-label="Services" { (t.services.join(", ")) }
                                    td data-label="Environments" { (t.environments.join(", ")) }
                                    td data-label="Limits" {
                                        @if let Some(r) = &t.rate_limit { (r.requests) " / " (r.per_seconds) " s" }
                                        @if let Some(b) = &t.budget { " · " (usd(b.limit_micros.saturating_mul(1_000))) " per " (if b.period == BudgetPeriod::Day { "day" } else { "month" }) }
                                    }
                                    td data-label="Status" {
                                        span class={ "badge " (status_word(status)) } { (status_word(status)) }
                                        @for c in &in_force {
                                            " " span class={ "badge " (c.measure.name()) } data-containment=(c.measure.name()) title=(c.reason) { (c.measure.name()) }
                                        }
                                    }
                                    td data-label="Last used" { (relative(now, t.last_used_at)) }
                                    td class="actions" {
                                        @if can_write && status == AppTokenStatus::Active {
                                            a class="button quiet small" href={ "/app-tokens/" (t.id) "/freeze" } { @if frozen { "Lift freeze…" } @else { "Freeze…" } }
                                            form method="post" action={ "/app-tokens/" (t.id) "/revoke" } {
                                                input type="hidden" name="csrf" value=(viewer.csrf);
                                                button type="submit" class="quiet small" { "Revoke" }
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
        @if can_write {
            section aria-labelledby="new-token-title" {
                h2 id="new-token-title" { "Create an app token" }
                form method="post" action="/app-tokens" class="panel narrow" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    div class="field" {
                        label for="name" { "Name" }
                        input id="name" name="name" type="text" required value=(typed.name);
                        span class="help" { "Which application uses it, e.g. stockpulse-web." }
                    }
                    div class="field" {
                        label for="services" { "Services" }
                        select id="services" name="services" multiple required size="6" {
                            @for (id, name) in &services {
                                option value=(id) selected[typed.services.iter().any(|s| s == id)] { (name) }
                            }
                        }
                    }
                    div class="field" {
                        label for="environments" { "Environments" }
                        select id="environments" name="environments" multiple required size="3" {
                            @for e in &environments {
                                option value=(e.id) selected[typed.environments.contains(&e.id) || (typed.environments.is_empty() && e.id == "production")] { (e.name) }
                            }
                        }
                        span class="help" { "The first chosen is the default." }
                    }
                    div class="field" {
                        label for="rate" { "Requests per minute (optional)" }
                        input id="rate" name="rate" type="text" inputmode="numeric" value=(typed.rate);
                    }
                    div class="field" {
                        label for="budget" { "Budget in US dollars (optional)" }
                        input id="budget" name="budget" type="text" inputmode="decimal" value=(typed.budget);
                        select id="period" name="period" aria-label="Budget period" {
                            option value="month" selected[typed.period != "day"] { "per month" }
                            option value="day" selected[typed.period == "day"] { "per day" }
                        }
                    }
                    button type="submit" { "Create token" }
                }
            }
        }
    })
}

fn status_word(status: AppTokenStatus) -> &'static str {
    match status {
        AppTokenStatus::Active => "active",
        AppTokenStatus::Expired => "expired",
        AppTokenStatus::Revoked => "revoked",
    }
}

pub async fn list(State(app): State<Arc<App>>, viewer: Viewer) -> Response {
    match list_markup(&app, &viewer, &Typed::default(), None).await {
        Ok(content) => page(
            StatusCode::OK,
            framed(&viewer, "/app-tokens", "App tokens", content),
        ),
        Err(e) => error_page(&viewer, "/app-tokens", "App tokens", e),
    }
}

pub async fn create(State(app): State<Arc<App>>, request: Request) -> Response {
    // Where Keyward is reached, for the snippets (only the creator sees them).
    let origin = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .map(|host| {
            let scheme = if app.secure_cookies { "https" } else { "http" };
            format!("{scheme}://{host}")
        })
        .unwrap_or_else(|| "https://keyward.example".into());
    let (Viewer { caller, csrf }, fields) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let all = |name: &str| -> Vec<String> {
        fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let get = |name: &str| field(&fields, name).unwrap_or_default().trim().to_owned();
    let typed = Typed {
        name: get("name"),
        services: all("services"),
        environments: all("environments"),
        rate: get("rate"),
        budget: get("budget"),
        period: get("period"),
    };
    let viewer = Viewer { caller, csrf };
    let draft = async {
        let rate_limit = match typed.rate.as_str() {
            "" => None,
            n => Some(RateLimit {
                requests: n.parse().map_err(|_| {
                    Error::invalid(
                        "invalid_rate_limit",
                        "requests per minute must be a whole number",
                    )
                })?,
                per_seconds: 60,
            }),
        };
        let budget_usd = match typed.budget.as_str() {
            "" => None,
            n => Some(n.trim_start_matches('$').parse::<f64>().map_err(|_| {
                Error::invalid("invalid_budget", "the budget must be an amount in dollars")
            })?),
        };
        Ok::<_, Error>(AppTokenDraft {
            name: typed.name.clone(),
            services: typed.services.clone(),
            environments: typed.environments.clone(),
            key_ids: Vec::new(),
            allowed_networks: Vec::new(),
            rate_limit,
            budget_usd,
            budget_period: budget_usd.map(|_| {
                if typed.period == "day" {
                    BudgetPeriod::Day
                } else {
                    BudgetPeriod::Month
                }
            }),
            expires_at: None,
        })
    }
    .await;
    let created = match draft {
        Ok(draft) => app.create_app_token(&viewer.caller.actor, draft).await,
        Err(e) => Err(e),
    };
    match created {
        Ok((token, secret)) => {
            let content = shown_once(&token, secret.expose_secret(), &origin);
            drop(secret);
            page(
                StatusCode::CREATED,
                framed(&viewer, "/app-tokens", "App token created", content),
            )
        }
        Err(e) => {
            let status = crate::http::error::ApiError::from(e.clone()).status;
            match list_markup(&app, &viewer, &typed, Some(&e)).await {
                Ok(content) => page(
                    status,
                    framed(&viewer, "/app-tokens", "App tokens", content),
                ),
                Err(e) => error_page(&viewer, "/app-tokens", "App tokens", e),
            }
        }
    }
}

/// The new token, once, with snippets for the services it may call.
fn shown_once(token: &AppToken, secret: &str, origin: &str) -> Markup {
    let first = token
        .services
        .first()
        .map(String::as_str)
        .unwrap_or("openai");
    let llm = token
        .services
        .iter()
        .find(|s| matches!(s.as_str(), "openai" | "mistral" | "groq"))
        .map(String::as_str);
    let market = token
        .services
        .iter()
        .find(|s| {
            matches!(
                s.as_str(),
                "alpha-vantage" | "fmp" | "twelve-data" | "marketstack"
            )
        })
        .map(String::as_str);
    let openai_sdk = llm.map(|service| {
        format!(
            "from openai import OpenAI\n\nclient = OpenAI(\n    base_url=\"{origin}/proxy/{service}/v1\",\n    api_key=\"{secret}\",\n)\nprint(client.models.list())"
        )
    });
    let curl = format!(
        "curl {origin}/proxy/{first}/v1/models \\\n  -H \"Authorization: Bearer {secret}\""
    );
    let apikey_url = market.map(|service| {
        format!("{origin}/proxy/{service}/query?function=GLOBAL_QUOTE&symbol=IBM&apikey={secret}")
    });
    html! {
        section class="panel narrow" aria-labelledby="once-title" {
            h2 id="once-title" { "Copy the token now" }
            p { "This is the only time " strong { (token.name) } "'s token is shown. Keyward keeps only its hash." }
            div class="secret" {
                output id="new-token" class="mono revealed shown-once" { (secret) }
                button type="button" class="quiet" data-copy-from="new-token" hidden { "Copy" }
            }
            h3 { "curl" }
            pre class="snippet" { code { (curl) } }
            @if let Some(snippet) = &openai_sdk {
                h3 { "OpenAI SDK (Python)" }
                pre class="snippet" { code { (snippet) } }
            }
            @if let Some(url) = &apikey_url {
                h3 { "Market data, key in the URL" }
                pre class="snippet" { code { (url) } }
            }
            p { a class="button" href="/app-tokens" { "Done" } }
        }
    }
}

pub async fn revoke(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (viewer, _) = match form_post(request).await {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let result = async {
        let id = id
            .parse()
            .map_err(|_| Error::not_found("app_token_not_found", "there is no such app token"))?;
        app.revoke_app_token(&viewer.caller.actor, &id).await
    }
    .await;
    match result {
        Ok(_) => Redirect::to("/app-tokens").into_response(),
        Err(e) => error_page(&viewer, "/app-tokens", "App tokens", e),
    }
}

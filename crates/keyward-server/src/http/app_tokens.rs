//! `/api/v1/app-tokens`: the credentials applications present to the proxy instead of a
//! provider key. The token itself is in the create response only.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use jiff::Timestamp;
use keyward_core::app_token::{
    AppToken, AppTokenDraft, AppTokenStatus, BudgetPeriod, RateLimit, micros_to_usd,
};
use keyward_core::id::AppTokenId;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Authorized, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use keyward_app::App;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    /// At least 1.
    pub requests: u32,
    /// 1–86,400.
    pub per_seconds: u32,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    /// US dollars per period (0–1,000,000,000).
    pub limit_usd: f64,
    /// `day` or `month`.
    #[schema(schema_with = super::schema::period_schema)]
    pub period: BudgetPeriod,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAppTokenRequest {
    /// 1–80 characters, e.g. the application's name.
    pub name: String,
    /// Service ids the token may call (1–100).
    pub services: Vec<String>,
    /// Environments it may use (1–100); the first is the default.
    pub environments: Vec<String>,
    /// Restrict to these keys (each must be in the services and environments above).
    #[serde(default)]
    pub key_ids: Vec<String>,
    /// Source networks allowed to use the token, as CIDRs or addresses; empty allows any.
    #[serde(default)]
    pub allowed_networks: Vec<String>,
    pub rate_limit: Option<RateLimitBody>,
    pub budget: Option<BudgetBody>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppTokenResponse {
    pub id: String,
    pub name: String,
    /// The token's recognisable, non-secret start: `kwp_<public id>_…`.
    pub token_prefix: String,
    pub services: Vec<String>,
    pub environments: Vec<String>,
    pub key_ids: Vec<String>,
    pub allowed_networks: Vec<String>,
    pub rate_limit: Option<RateLimitBody>,
    pub budget: Option<BudgetBody>,
    /// active, expired or revoked.
    #[schema(value_type = String)]
    pub status: AppTokenStatus,
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAppToken {
    /// The token. Shown only in this response; Keyward keeps only its hash.
    pub token: String,
    #[serde(flatten)]
    pub app_token: AppTokenResponse,
}

fn response(app: &App, t: AppToken) -> AppTokenResponse {
    AppTokenResponse {
        status: t.status(app.now()),
        id: t.id.to_string(),
        name: t.name,
        token_prefix: format!("kwp_{}_…", t.public_id),
        services: t.services,
        environments: t.environments,
        key_ids: t.key_ids.iter().map(ToString::to_string).collect(),
        allowed_networks: t.allowed_networks.iter().map(ToString::to_string).collect(),
        rate_limit: t.rate_limit.map(|r| RateLimitBody {
            requests: r.requests,
            per_seconds: r.per_seconds,
        }),
        budget: t.budget.map(|b| BudgetBody {
            limit_usd: micros_to_usd(b.limit_micros),
            period: b.period,
        }),
        created_by: t.created_by,
        created_at: t.created_at,
        expires_at: t.expires_at,
        last_used_at: t.last_used_at,
        revoked_at: t.revoked_at,
    }
}

fn app_token_id(text: &str) -> Result<AppTokenId, keyward_core::Error> {
    text.parse().map_err(|_| {
        keyward_core::Error::not_found(
            "app_token_not_found",
            format!(
                "there is no app token `{}`",
                keyward_core::label::printable(text)
            ),
        )
    })
}

/// Create an app token; the response holds the token, once.
#[utoipa::path(post, path = "/api/v1/app-tokens", tag = "app-tokens", request_body = CreateAppTokenRequest,
    responses((status = 201, body = CreatedAppToken), (status = 400, body = ErrorBody),
        (status = 422, description = "e.g. unknown_service, unknown_key, key_out_of_scope, invalid_network, invalid_budget", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_app_token(
    auth: Authorized<perm::AppTokensWrite>,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<CreateAppTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreatedAppToken>)> {
    let draft = AppTokenDraft {
        name: req.name,
        services: req.services,
        environments: req.environments,
        key_ids: req.key_ids,
        allowed_networks: req.allowed_networks,
        rate_limit: req.rate_limit.map(|r| RateLimit {
            requests: r.requests,
            per_seconds: r.per_seconds,
        }),
        budget_usd: req.budget.as_ref().map(|b| b.limit_usd),
        budget_period: req.budget.as_ref().map(|b| b.period),
        expires_at: req.expires_at,
    };
    let (record, token) = app.create_app_token(auth.actor(), draft).await?;
    let created = CreatedAppToken {
        token: token.expose_secret().to_owned(),
        app_token: response(&app, record),
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// List app tokens, newest first (revoked ones included).
#[utoipa::path(get, path = "/api/v1/app-tokens", tag = "app-tokens",
    responses((status = 200, body = Vec<AppTokenResponse>)), security(("bearer" = [])))]
pub async fn list_app_tokens(
    auth: Authorized<perm::AppTokensRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<AppTokenResponse>>> {
    let tokens = app.app_tokens(auth.actor()).await?;
    Ok(Json(
        tokens.into_iter().map(|t| response(&app, t)).collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/app-tokens/{id}", tag = "app-tokens", params(("id" = String, Path)),
    responses((status = 200, body = AppTokenResponse), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_app_token(
    auth: Authorized<perm::AppTokensRead>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<AppTokenResponse>> {
    let token = app
        .app_token_for(
            auth.actor(),
            keyward_core::access::Permission::AppTokensRead,
            &app_token_id(&id)?,
        )
        .await?;
    Ok(Json(response(&app, token)))
}

/// Revoke an app token at once. Revoking a revoked token is a no-op.
#[utoipa::path(post, path = "/api/v1/app-tokens/{id}/revoke", tag = "app-tokens", params(("id" = String, Path)),
    responses((status = 200, body = AppTokenResponse), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn revoke_app_token(
    auth: Authorized<perm::AppTokensWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<AppTokenResponse>> {
    let token = app
        .revoke_app_token(auth.actor(), &app_token_id(&id)?)
        .await?;
    Ok(Json(response(&app, token)))
}

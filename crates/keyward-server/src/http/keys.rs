//! `/api/v1/keys`: create, list, read, edit, enable/disable, versions, delete, restore,
//! purge. No response ever carries a key's value — only its hint.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use keyward_core::id::KeyId;
use keyward_core::key::{
    Criticality, Key, KeyChanges, KeyDraftInput, KeyFilter, KeyStatus, KeyVersion, PageRequest,
    VersionState,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::app_tokens::BudgetBody;
use super::auth::{Authorized, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery, optional_json};
use keyward_app::keys::versions::NewVersion;
use keyward_app::{App, NewKey};
use keyward_core::app_token::{Budget, micros_to_usd, usd_to_micros};
use keyward_core::service::Limit;

/// Distinguishes "field absent" (`None`) from "field: null" (`Some(None)`) in PATCH bodies.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Service id from `/api/v1/services`, e.g. `openai`.
    pub service: String,
    /// Environment id, e.g. `production`.
    pub environment: String,
    /// 1–64 characters; unique per service and environment (case-insensitive).
    pub alias: String,
    /// The key's value. Write-only: never returned.
    #[schema(value_type = String, format = Password, write_only)]
    pub secret: SecretString,
    /// Up to 1,000 characters.
    pub description: Option<String>,
    /// Person or team responsible; up to 128 characters.
    pub owner: Option<String>,
    /// Up to 20 tags of 1–40 characters (`a-z 0-9 . - _ :`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// low, medium (default), high or critical.
    #[schema(schema_with = super::schema::criticality_schema)]
    pub criticality: Option<Criticality>,
    /// Defaults to true.
    pub enabled: Option<bool>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// Store the value even if it does not match the service's key format.
    #[serde(default)]
    pub force: bool,
    /// Provider limits the proxy holds this key to, e.g.
    /// `[{"max": 25, "unit": "requests", "window_seconds": 86400}]` (unit: requests,
    /// credits, tokens or symbols). Day- and month-long limits follow the service's quota
    /// calendar.
    #[serde(default)]
    #[schema(schema_with = super::schema::limits_schema)]
    pub limits: Vec<Limit>,
    /// Copy the limits of one of the service's catalog plans (e.g. `Free`) instead.
    pub plan: Option<String>,
    /// Spending cap for this key over a day or month.
    pub budget: Option<BudgetBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    pub alias: Option<String>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<Option<String>>,
    /// Replaces all tags.
    pub tags: Option<Vec<String>>,
    #[schema(schema_with = super::schema::criticality_schema)]
    pub criticality: Option<Criticality>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<Timestamp>>,
    /// Replaces the key's limits (`[]` removes them).
    #[schema(schema_with = super::schema::optional_limits_schema)]
    pub limits: Option<Vec<Limit>>,
    /// Replaces the key's limits by a catalog plan's.
    pub plan: Option<String>,
    /// `null` removes the budget.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<BudgetBody>)]
    pub budget: Option<Option<BudgetBody>>,
    /// This key's own rotation rule `{"max_age_days", "remind_days"}`; `null` falls back to
    /// its category's (or the vault's default).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = super::schema::rotation_rule_schema)]
    pub rotation: Option<Option<keyward_core::rotation::RotationRule>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// The key's alias; required while the key is inside its recovery window.
    pub confirm: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListKeysQuery {
    /// Service id.
    pub service: Option<String>,
    /// Category id (e.g. `financial-data`).
    pub category: Option<String>,
    pub environment: Option<String>,
    /// active, disabled, expired, revoked or deleted. Without it, deleted keys are left out.
    #[param(schema_with = super::schema::key_status_schema)]
    pub status: Option<String>,
    pub tag: Option<String>,
    /// Case-insensitive text in alias or description.
    pub q: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1–200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyResponse {
    pub id: String,
    pub service: String,
    pub environment: String,
    pub alias: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub tags: Vec<String>,
    #[schema(value_type = String)]
    pub criticality: Criticality,
    pub enabled: bool,
    /// active, disabled, expired, revoked or deleted.
    #[schema(value_type = String)]
    pub status: KeyStatus,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    pub current_version: u32,
    /// E.g. `sk-proj-…WXYZ`: the only part of the value ever shown.
    pub hint: String,
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deleted_at: Option<Timestamp>,
    pub deleted_by: Option<String>,
    /// For deleted keys: when the recovery window ends and the key is purged.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub purge_after: Option<Timestamp>,
    /// For revoked keys: when, by whom and why.
    pub revocation: Option<RevocationBody>,
    /// Where the key stands against its rotation rule.
    pub rotation: Option<RotationBody>,
    #[schema(value_type = Vec<Object>)]
    pub limits: Vec<Limit>,
    pub budget: Option<BudgetBody>,
    /// What the proxy learned from the provider, while in force: `rejected` (HTTP 401/403)
    /// or `quota_limited`.
    pub flag: Option<FlagBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlagBody {
    /// `rejected` or `quota_limited`.
    pub kind: String,
    pub reason: String,
    #[schema(value_type = String, format = DateTime)]
    pub since: Timestamp,
    /// When it lapses by itself; absent: until cleared or the key works again.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub until: Option<Timestamp>,
}

fn budget(body: Option<&BudgetBody>) -> Result<Option<Budget>, keyward_core::Error> {
    body.map(|b| {
        Ok(Budget {
            limit_micros: usd_to_micros(b.limit_usd)?,
            period: b.period,
        })
    })
    .transpose()
}

/// The limits of a catalog plan of `service_id`.
async fn plan_limits(
    app: &App,
    service_id: &str,
    plan: &str,
) -> Result<Vec<Limit>, keyward_core::Error> {
    let catalog = app.catalog().await?;
    let service = catalog.get(service_id).ok_or_else(|| {
        keyward_core::Error::invalid(
            "unknown_service",
            format!(
                "there is no service `{}`",
                keyward_core::label::printable(service_id)
            ),
        )
    })?;
    service
        .plans
        .iter()
        .find(|p| p.plan.eq_ignore_ascii_case(plan))
        .map(|p| p.limits.clone())
        .ok_or_else(|| {
            keyward_core::Error::invalid(
                "unknown_plan",
                format!(
                    "{} has no plan `{}` (plans: {})",
                    service.name,
                    keyward_core::label::printable(plan),
                    service
                        .plans
                        .iter()
                        .map(|p| p.plan.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPage {
    pub items: Vec<KeyResponse>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionResponse {
    pub version: u32,
    /// current, previous, pending or retired.
    #[schema(value_type = String)]
    pub state: VersionState,
    pub hint: String,
    /// Encryption algorithm and the master key that wraps this version's data key.
    pub algorithm: String,
    pub kek_id: String,
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotationBody {
    /// no_policy, ok, due (inside the reminder window) or overdue.
    pub state: String,
    #[schema(value_type = String, format = DateTime)]
    pub rotated_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub due_at: Option<Timestamp>,
    /// The rule that applies (the key's own, its category's or the default).
    #[schema(value_type = Option<Object>)]
    pub rule: Option<keyward_core::rotation::RotationRule>,
}

impl From<keyward_core::rotation::RotationStatus> for RotationBody {
    fn from(s: keyward_core::rotation::RotationStatus) -> Self {
        Self {
            state: s.state.as_str().to_owned(),
            rotated_at: s.rotated_at,
            due_at: s.due_at,
            rule: s.rule,
        }
    }
}

/// A key as every answer shows it (reads the rotation policy; listings use
/// [`key_response_in`] with one context for the page).
async fn key_response(app: &App, key: Key) -> Result<KeyResponse, keyward_core::Error> {
    let rotation = app.rotation_context().await?;
    Ok(key_response_in(app, &rotation, key))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevocationBody {
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub by: String,
    pub reason: String,
    /// Whether the provider refuses the old value now: `revoked_verified`, `still_live`,
    /// `inconclusive`, `deferred` (no allowance for the check now) or `unverifiable`
    /// (the service has no validation request). Absent until checked.
    #[schema(value_type = Option<String>)]
    pub provider_check: Option<&'static str>,
    /// The provider's HTTP status to the check.
    pub provider_status: Option<u16>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub checked_at: Option<Timestamp>,
}

/// A key as every answer shows it, with its rotation status from `rotation`.
fn key_response_in(
    app: &App,
    rotation: &keyward_app::lifecycle::rotation_policy::RotationContext,
    key: Key,
) -> KeyResponse {
    let rotation = Some(rotation.status(&key).into());
    let status = key.status(app.now());
    let flag = app.proxy.key_flag(&key.id).map(|f| FlagBody {
        kind: f.kind.as_str().to_owned(),
        reason: f.reason,
        since: f.since,
        until: f.until,
    });
    KeyResponse {
        flag,
        limits: key.limits,
        budget: key.budget.map(|b| BudgetBody {
            limit_usd: micros_to_usd(b.limit_micros),
            period: b.period,
        }),
        purge_after: key
            .deleted_at
            .map(|at| app.recovery_window.purgeable_at(at)),
        rotation,
        revocation: key.revoked.clone().map(|r| RevocationBody {
            at: r.at,
            by: r.by,
            reason: r.reason,
            provider_check: r.check.as_ref().map(|c| c.outcome.as_str()),
            provider_status: r.check.as_ref().and_then(|c| c.status),
            checked_at: r.check.as_ref().map(|c| c.at),
        }),
        id: key.id.to_string(),
        service: key.service_id,
        environment: key.environment,
        alias: key.alias,
        description: key.description,
        owner: key.owner,
        tags: key.tags,
        criticality: key.criticality,
        enabled: key.enabled,
        status,
        expires_at: key.expires_at,
        current_version: key.current_version,
        hint: key.current_hint,
        created_by: key.created_by,
        created_at: key.created_at,
        updated_at: key.updated_at,
        last_used_at: key.last_used_at,
        deleted_at: key.deleted_at,
        deleted_by: key.deleted_by,
    }
}

fn version_response(v: KeyVersion) -> VersionResponse {
    VersionResponse {
        version: v.version,
        state: v.state,
        hint: v.hint,
        algorithm: v.sealed.algorithm,
        kek_id: v.sealed.kek_id,
        created_by: v.created_by,
        created_at: v.created_at,
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevealRequest {
    /// Why the value is needed (4–500 characters); recorded in the audit trail.
    pub reason: String,
    /// A version other than the current one.
    pub version: Option<u32>,
}

impl std::fmt::Debug for RevealRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevealRequest")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, ToSchema)]
pub struct RevealedBody {
    pub key_id: String,
    pub version: u32,
    pub hint: String,
    /// The secret itself.
    pub value: String,
}

impl std::fmt::Debug for RevealedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevealedBody")
            .field("key_id", &self.key_id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Reveal a key's value — explicitly, with a reason, after a recent MFA check for people;
/// audited as a reveal. The answer is never cached (`Cache-Control: no-store`).
#[utoipa::path(post, path = "/api/v1/keys/{id}/reveal", tag = "keys", params(("id" = String, Path)), request_body = RevealRequest,
    responses((status = 200, body = RevealedBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reveal_key(
    auth: Authorized<perm::KeysReveal>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RevealRequest>,
) -> ApiResult<Response> {
    let (version, value) = app
        .reveal_key(auth.actor(), &key_id(&id)?, req.version, &req.reason)
        .await?;
    let body = RevealedBody {
        key_id: version.key_id.to_string(),
        version: version.version,
        hint: version.hint,
        value: value.expose_secret().to_owned(),
    };
    // `Cache-Control: no-store` comes with every API answer (`api_headers`); `Pragma` is
    // for HTTP/1.0 caches in between.
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        axum::http::header::PRAGMA,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    Ok(response)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateSecretRequest {
    /// The candidate value; sent only to the service, never stored or returned.
    #[schema(value_type = String, format = Password, write_only)]
    pub secret: SecretString,
    /// Where the key would live (scopes apply); default `production`.
    pub environment: Option<String>,
}

impl std::fmt::Debug for ValidateSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateSecretRequest")
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

/// What the service said to its validation request. Never carries the provider's body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationBody {
    /// valid, rejected, throttled (throttled or out of quota), inconclusive, unreachable —
    /// by the service's answer rules, which know each provider's way of saying it.
    pub verdict: String,
    /// The provider's HTTP status, when it answered.
    pub status: Option<u16>,
    /// What the answer meant by the service's rules: success, rejected, quota_limited,
    /// throttled, failed, outage or unclassified (absent: no answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub answer: Option<&'static str>,
    pub message: String,
    /// Whether the request spent quota on the provider's side.
    pub costs_quota: bool,
    pub latency_ms: u64,
}

impl From<keyward_proxy::Validation> for ValidationBody {
    fn from(v: keyward_proxy::Validation) -> Self {
        Self {
            verdict: v.verdict.as_str().to_owned(),
            status: v.status,
            answer: v.answer.map(keyward_core::answer::AnswerClass::as_str),
            message: v.message,
            costs_quota: v.costs_quota,
            latency_ms: v.latency_ms,
        }
    }
}

/// Send a service's validation request with a value before storing it. The answer is the
/// verdict; nothing is stored. A value in the wrong format is refused without a call.
#[utoipa::path(post, path = "/api/v1/services/{id}/validate", tag = "keys", params(("id" = String, Path)), request_body = ValidateSecretRequest,
    responses((status = 200, body = ValidationBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn validate_secret(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(service): ApiPath<String>,
    ApiJson(req): ApiJson<ValidateSecretRequest>,
) -> ApiResult<Json<ValidationBody>> {
    let environment = req.environment.as_deref().unwrap_or("production");
    let validation = app
        .validate_secret(auth.actor(), &service, environment, &req.secret)
        .await?;
    Ok(Json(validation.into()))
}

/// Send the key's validation request with its current value: does it still work?
#[utoipa::path(post, path = "/api/v1/keys/{id}/validate", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = ValidationBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn validate_key(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ValidationBody>> {
    let validation = app.validate_key(auth.actor(), &key_id(&id)?).await?;
    Ok(Json(validation.into()))
}

/// Traffic and cost of a key over a period.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodBody {
    pub requests: u64,
    pub errors: u64,
    /// US dollars.
    pub cost_usd: f64,
}

impl From<&keyward_core::usage::UsageTotals> for PeriodBody {
    fn from(t: &keyward_core::usage::UsageTotals) -> Self {
        Self {
            requests: t.requests,
            errors: t.errors,
            cost_usd: t.cost_nanos as f64 / 1e9,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DependentTokenBody {
    pub id: String,
    pub name: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
}

/// What depends on a key: shown before deleting, disabling or revoking it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImpactBody {
    pub key_id: String,
    /// Active app tokens the proxy would inject this key for.
    pub tokens: Vec<DependentTokenBody>,
    pub environments: Vec<String>,
    pub last_7_days: PeriodBody,
    pub last_30_days: PeriodBody,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    /// Other active keys of the same service and environment that could take its traffic.
    pub other_active_keys: usize,
}

/// The impact assessment of a key: dependent app tokens, traffic and cost over 7 and 30
/// days, last use, and whether its pool has another key to absorb the traffic.
#[utoipa::path(get, path = "/api/v1/keys/{id}/impact", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = ImpactBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn key_impact(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ImpactBody>> {
    let impact = app.impact(auth.actor(), &key_id(&id)?).await?;
    Ok(Json(ImpactBody {
        key_id: impact.key.id.to_string(),
        tokens: impact
            .tokens
            .iter()
            .map(|t| DependentTokenBody {
                id: t.id.to_string(),
                name: t.name.clone(),
                last_used_at: t.last_used_at,
            })
            .collect(),
        environments: vec![impact.key.environment.clone()],
        last_7_days: (&impact.last_7_days).into(),
        last_30_days: (&impact.last_30_days).into(),
        last_used_at: impact.last_used_at,
        other_active_keys: impact.other_active_keys,
    }))
}

/// Store a new key.
#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 201, body = KeyResponse), (status = 400, body = ErrorBody), (status = 409, description = "alias_taken", body = ErrorBody),
        (status = 422, description = "validation failed, e.g. secret_format_mismatch, secret_masked, unknown_service", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_key(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<CreateKeyRequest>,
) -> ApiResult<(StatusCode, Json<KeyResponse>)> {
    let limits = match &req.plan {
        Some(plan) => plan_limits(&app, &req.service, plan).await?,
        None => req.limits,
    };
    let new = NewKey {
        draft: KeyDraftInput {
            service_id: req.service,
            environment: req.environment,
            alias: req.alias,
            description: req.description,
            owner: req.owner,
            tags: req.tags,
            criticality: req.criticality,
            enabled: req.enabled,
            expires_at: req.expires_at,
            limits,
            budget: budget(req.budget.as_ref())?,
        },
        secret: req.secret,
        force: req.force,
    };
    let key = app.create_key(auth.actor(), new).await?;
    Ok((StatusCode::CREATED, Json(key_response(&app, key).await?)))
}

/// List keys, newest first, with filters and cursor pagination.
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", params(ListKeysQuery),
    responses((status = 200, body = KeyPage), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_keys(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
    ApiQuery(query): ApiQuery<ListKeysQuery>,
) -> ApiResult<Json<KeyPage>> {
    let status = query
        .status
        .as_deref()
        .map(str::parse::<KeyStatus>)
        .transpose()?;
    list(&app, auth.actor(), query, status).await
}

/// List soft-deleted keys that can still be restored.
#[utoipa::path(get, path = "/api/v1/deleted-keys", tag = "keys", params(ListKeysQuery),
    responses((status = 200, body = KeyPage), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_deleted_keys(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
    ApiQuery(query): ApiQuery<ListKeysQuery>,
) -> ApiResult<Json<KeyPage>> {
    if query.status.as_deref().is_some_and(|s| s != "deleted") {
        return Err(keyward_core::Error::invalid(
            "invalid_status",
            "this lists deleted keys only: leave out `status`",
        )
        .into());
    }
    list(&app, auth.actor(), query, Some(KeyStatus::Deleted)).await
}

async fn list(
    app: &App,
    actor: &keyward_app::Actor,
    query: ListKeysQuery,
    status: Option<KeyStatus>,
) -> ApiResult<Json<KeyPage>> {
    let after = query
        .cursor
        .as_deref()
        .map(str::parse::<KeyId>)
        .transpose()
        .map_err(|_| {
            keyward_core::Error::invalid(
                "invalid_cursor",
                "the cursor is not one this API returned",
            )
        })?;
    let page = PageRequest::new(after, query.limit)?;
    let filter = KeyFilter {
        service_ids: query.service.map(|s| vec![s]),
        environment: query.environment,
        status,
        tag: query.tag.map(|t| t.to_lowercase()),
        text: query.q,
        areas: None,
    };
    let page = app
        .list_keys(actor, filter, query.category.as_deref(), page)
        .await?;
    let rotation = app.rotation_context().await?;
    Ok(Json(KeyPage {
        next_cursor: page.next.map(|id| id.to_string()),
        items: page
            .items
            .into_iter()
            .map(|k| key_response_in(app, &rotation, k))
            .collect(),
    }))
}

/// The rotation policy: a default rule and rules per category (`max_age_days`,
/// `remind_days`); a key's own rule (PATCH `rotation`) wins over both.
#[utoipa::path(get, path = "/api/v1/policies/rotation", tag = "keys",
    responses((status = 200, body = Object)), security(("bearer" = [])))]
pub async fn get_rotation_policy(
    _auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<keyward_core::rotation::RotationPolicy>> {
    Ok(Json(app.rotation_policy().await?))
}

/// Replace the rotation policy (needs `access_write`; approval where the policy says).
#[utoipa::path(put, path = "/api/v1/policies/rotation", tag = "keys", request_body = Object,
    responses((status = 200, body = Object), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_rotation_policy(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiJson(policy): ApiJson<keyward_core::rotation::RotationPolicy>,
) -> ApiResult<Json<keyward_core::rotation::RotationPolicy>> {
    Ok(Json(app.set_rotation_policy(auth.actor(), policy).await?))
}

/// Read one key's metadata (deleted keys included).
#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyResponse), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_key(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KeyResponse>> {
    let key = app.key(auth.actor(), &key_id(&id)?).await?;
    Ok(Json(key_response(&app, key).await?))
}

/// Key ids in paths: a malformed one is simply not found.
pub(super) fn key_id(text: &str) -> Result<KeyId, keyward_core::Error> {
    text.parse().map_err(|_| {
        keyward_core::Error::not_found(
            "key_not_found",
            format!("there is no key `{}`", keyward_core::label::printable(text)),
        )
    })
}

/// Change a key's metadata.
#[utoipa::path(patch, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path)), request_body = UpdateKeyRequest,
    responses((status = 200, body = KeyResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_key(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateKeyRequest>,
) -> ApiResult<Json<KeyResponse>> {
    let id = key_id(&id)?;
    let limits = match &req.plan {
        Some(plan) => {
            Some(plan_limits(&app, &app.key(auth.actor(), &id).await?.service_id, plan).await?)
        }
        None => req.limits,
    };
    let budget = match &req.budget {
        None => None,
        Some(None) => Some(None),
        Some(Some(b)) => Some(budget(Some(b))?),
    };
    let changes = KeyChanges {
        alias: req.alias,
        description: req.description,
        owner: req.owner,
        tags: req.tags,
        criticality: req.criticality,
        expires_at: req.expires_at,
        limits,
        budget,
        rotation_rule: req.rotation,
    };
    let key = app.update_key(auth.actor(), &id, changes).await?;
    Ok(Json(key_response(&app, key).await?))
}

/// Clear what the proxy learned about a key (e.g. after fixing it at the provider).
#[utoipa::path(delete, path = "/api/v1/keys/{id}/flag", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyResponse), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn clear_key_flag(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KeyResponse>> {
    let key = app.clear_key_flag(auth.actor(), &key_id(&id)?).await?;
    Ok(Json(key_response(&app, key).await?))
}

/// Enable a key (the proxy may inject it again).
#[utoipa::path(post, path = "/api/v1/keys/{id}/enable", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn enable_key(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KeyResponse>> {
    let key = app.set_enabled(auth.actor(), &key_id(&id)?, true).await?;
    Ok(Json(key_response(&app, key).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableRequest {
    /// Break-glass: stop the key now, without waiting for approvals; the action is filed
    /// for review afterwards. Needs a `reason`.
    #[serde(default)]
    pub emergency: bool,
    pub reason: Option<String>,
}

/// Disable a key (kept, but never injected). With `{"emergency": true, "reason": …}` it
/// skips any approval policy (break-glass) and is flagged for review.
#[utoipa::path(post, path = "/api/v1/keys/{id}/disable", tag = "keys", params(("id" = String, Path)), request_body = Option<DisableRequest>,
    responses((status = 200, body = KeyResponse), (status = 202, body = ErrorBody, description = "waits for approval"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn disable_key(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<KeyResponse>> {
    let req = optional_json::<DisableRequest>(&body)?;
    let id = key_id(&id)?;
    let key = if req.emergency {
        app.emergency_disable(auth.actor(), &id, req.reason.as_deref().unwrap_or(""))
            .await?
    } else {
        app.set_enabled(auth.actor(), &id, false).await?
    };
    Ok(Json(key_response(&app, key).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why (4–500 characters); recorded in the audit trail and the review.
    pub reason: String,
    /// The value was revoked at the provider too: ask the provider now whether it refuses
    /// it (`revocation.provider_check`).
    #[serde(default)]
    pub revoked_at_provider: bool,
}

/// Emergency revocation: stop every use of the key now (all instances within a second),
/// without approval; filed for review. Irreversible: the proxy answers `key_revoked`.
#[utoipa::path(post, path = "/api/v1/keys/{id}/revoke", tag = "keys", params(("id" = String, Path)), request_body = RevokeRequest,
    responses((status = 200, body = KeyResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "key_deleted, key_already_revoked")),
    security(("bearer" = [])))]
pub async fn revoke_key(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> ApiResult<Json<KeyResponse>> {
    let key = app
        .revoke_key(
            auth.actor(),
            &key_id(&id)?,
            &req.reason,
            req.revoked_at_provider,
        )
        .await?;
    Ok(Json(key_response(&app, key).await?))
}

/// After revoking a key at the provider: ask the provider (with the service's validation
/// request, within the key's probe budget) whether it now refuses the old value. The answer
/// is kept on the key as `revocation.provider_check` and audited.
#[utoipa::path(post, path = "/api/v1/keys/{id}/revocation/verify", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "key_deleted, key_not_revoked")),
    security(("bearer" = [])))]
pub async fn verify_revocation(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KeyResponse>> {
    let key = app.verify_revocation(auth.actor(), &key_id(&id)?).await?;
    Ok(Json(key_response(&app, key).await?))
}

/// List a key's versions (hints and states, never values).
#[utoipa::path(get, path = "/api/v1/keys/{id}/versions", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = Vec<VersionResponse>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_versions(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<VersionResponse>>> {
    let versions = app.versions(auth.actor(), &key_id(&id)?).await?;
    Ok(Json(versions.into_iter().map(version_response).collect()))
}

/// Add a new value for a key.
#[utoipa::path(post, path = "/api/v1/keys/{id}/versions", tag = "keys", params(("id" = String, Path)), request_body = NewVersion,
    responses((status = 201, body = VersionResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_version(
    auth: Authorized<perm::KeysRotate>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<NewVersion>,
) -> ApiResult<(StatusCode, Json<VersionResponse>)> {
    let version = app.add_version(auth.actor(), &key_id(&id)?, req).await?;
    Ok((StatusCode::CREATED, Json(version_response(version))))
}

/// Soft-delete a key: it stops working at once and can be restored during the recovery window.
#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_key(
    auth: Authorized<perm::KeysDelete>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KeyResponse>> {
    let key = app.delete_key(auth.actor(), &key_id(&id)?).await?;
    Ok(Json(key_response(&app, key).await?))
}

/// Restore a soft-deleted key.
#[utoipa::path(post, path = "/api/v1/keys/{id}/restore", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyResponse), (status = 404, body = ErrorBody), (status = 409, description = "key_not_deleted or alias_taken", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn restore_key(
    auth: Authorized<perm::KeysDelete>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KeyResponse>> {
    let key = app.restore_key(auth.actor(), &key_id(&id)?).await?;
    Ok(Json(key_response(&app, key).await?))
}

/// Destroy a deleted key and all its versions. Inside the recovery window, confirm with the alias.
#[utoipa::path(post, path = "/api/v1/keys/{id}/purge", tag = "keys", params(("id" = String, Path)), request_body = PurgeRequest,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, description = "key_not_deleted or confirmation_required", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn purge_key(
    auth: Authorized<perm::KeysPurge>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let confirm = optional_json::<PurgeRequest>(&body)?.confirm;
    app.purge_key(auth.actor(), &key_id(&id)?, confirm.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

//! `/api/v1/alerts` (what the anomaly detector found, acknowledged and resolved) and
//! `/api/v1/alert-mutes` (silencing a key's or token's alerts for a while), and the
//! graduated response: `/api/v1/policies/response`, `/api/v1/containments` (throttles and
//! freezes in force), freezing and (approval-gated) unfreezing keys and app tokens.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use jiff::Timestamp;
use keyward_core::alert::{Alert, AlertFilter, AlertMute, AlertNote, AlertSubject};
use keyward_core::id::{AlertId, MuteId};
use keyward_core::response::{Containment, Measure, ResponsePolicy};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Authorized, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use keyward_app::App;

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertNoteBody {
    pub by: String,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub comment: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertBody {
    pub id: String,
    /// `key` or `token`.
    pub subject_kind: String,
    pub subject_id: String,
    /// request_spike, request_drop, off_hours, cost_spike, error_spike, rejection_burst,
    /// new_network, new_endpoint, new_model or dormant_key_use.
    pub signal: String,
    /// warning or critical.
    pub severity: String,
    /// open, acknowledged or resolved.
    pub status: String,
    /// How far off, in robust deviations (negative for a drop).
    pub score: f64,
    /// Why, in words and numbers: "412 requests in 5 min; usual for Tuesday 03:00 ET is 0–6".
    pub reason: String,
    #[schema(value_type = String, format = DateTime)]
    pub opened_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub last_seen_at: Timestamp,
    pub acknowledged: Option<AlertNoteBody>,
    pub resolved: Option<AlertNoteBody>,
    /// How far the graduated response went: alerted, throttled or frozen.
    pub stage: String,
}

fn note(n: AlertNote) -> AlertNoteBody {
    AlertNoteBody {
        by: n.by,
        at: n.at,
        comment: n.comment,
    }
}

pub(crate) fn alert_body(a: Alert) -> AlertBody {
    AlertBody {
        id: a.id.to_string(),
        subject_kind: a.subject.kind().to_owned(),
        subject_id: a.subject.id().to_owned(),
        signal: a.signal.as_str().to_owned(),
        severity: a.severity.as_str().to_owned(),
        status: a.status.as_str().to_owned(),
        score: a.score,
        reason: a.reason,
        opened_at: a.opened_at,
        last_seen_at: a.last_seen_at,
        acknowledged: a.acknowledged.map(note),
        resolved: a.resolved.map(note),
        stage: a.stage.as_str().to_owned(),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertParams {
    /// open, acknowledged or resolved.
    pub status: Option<String>,
    /// One signal (see the alert's `signal`).
    pub signal: Option<String>,
    /// Only alerts about this key.
    pub key: Option<String>,
    /// Only alerts about this app token.
    pub token: Option<String>,
    /// The `next` of the previous page.
    pub before: Option<String>,
    /// 1–200 (default 50).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    /// Newest first.
    pub alerts: Vec<AlertBody>,
    /// Pass as `before` for the next page; absent on the last.
    pub next: Option<String>,
}

fn alert_id(text: &str) -> Result<AlertId, keyward_core::Error> {
    text.parse().map_err(|_| {
        keyward_core::Error::not_found(
            "alert_not_found",
            format!(
                "there is no alert `{}`",
                keyward_core::label::printable(text)
            ),
        )
    })
}

fn subject(
    key: Option<&str>,
    token: Option<&str>,
) -> Result<Option<AlertSubject>, keyward_core::Error> {
    match (key, token) {
        (Some(_), Some(_)) => Err(keyward_core::Error::invalid(
            "invalid_alert_subject",
            "name a key or a token, not both",
        )),
        (Some(key), None) => AlertSubject::parse("key", key)
            .map(Some)
            .map_err(|_| keyward_core::Error::invalid("invalid_key_id", "key is not a key id")),
        (None, Some(token)) => AlertSubject::parse("token", token).map(Some).map_err(|_| {
            keyward_core::Error::invalid("invalid_token_id", "token is not an app token id")
        }),
        (None, None) => Ok(None),
    }
}

/// Alerts about keys (and app tokens) the caller may read, newest first.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", params(AlertParams),
    responses((status = 200, body = AlertList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "invalid_alert_status, invalid_signal, invalid_key_id, invalid_token_id, invalid_limit")),
    security(("bearer" = [])))]
pub async fn list_alerts(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
    ApiQuery(params): ApiQuery<AlertParams>,
) -> ApiResult<Json<AlertList>> {
    let filter = AlertFilter {
        status: params.status.as_deref().map(str::parse).transpose()?,
        signal: params.signal.as_deref().map(str::parse).transpose()?,
        subject: subject(params.key.as_deref(), params.token.as_deref())?,
    };
    let before = params
        .before
        .as_deref()
        .map(|b| {
            b.parse::<AlertId>().map_err(|_| {
                keyward_core::Error::invalid("invalid_cursor", "before is not an alert id")
            })
        })
        .transpose()?;
    let limit = params.limit.unwrap_or(50);
    let alerts = app
        .alerts(auth.actor(), &filter, before.as_ref(), limit)
        .await?;
    let next = (alerts.len() == limit as usize)
        .then(|| alerts.last().map(|a| a.id.to_string()))
        .flatten();
    Ok(Json(AlertList {
        alerts: alerts.into_iter().map(alert_body).collect(),
        next,
    }))
}

/// One alert.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts", params(("id" = String, Path)),
    responses((status = 200, body = AlertBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_alert(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<AlertBody>> {
    Ok(Json(alert_body(
        app.alert(auth.actor(), &alert_id(&id)?).await?,
    )))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertNoteRequest {
    /// What was found or done (at most 1,000 characters).
    pub comment: Option<String>,
}

/// Someone is on it: open → acknowledged (audited).
#[utoipa::path(post, path = "/api/v1/alerts/{id}/acknowledge", tag = "alerts", params(("id" = String, Path)),
    request_body = AlertNoteRequest,
    responses((status = 200, body = AlertBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "alert_state: not open")),
    security(("bearer" = [])))]
pub async fn acknowledge_alert(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<AlertNoteRequest>,
) -> ApiResult<Json<AlertBody>> {
    let alert = app
        .acknowledge_alert(auth.actor(), &alert_id(&id)?, req.comment.as_deref())
        .await?;
    Ok(Json(alert_body(alert)))
}

/// Done: open or acknowledged → resolved (audited); a later finding opens a new alert.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/resolve", tag = "alerts", params(("id" = String, Path)),
    request_body = AlertNoteRequest,
    responses((status = 200, body = AlertBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "alert_state: already resolved")),
    security(("bearer" = [])))]
pub async fn resolve_alert(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<AlertNoteRequest>,
) -> ApiResult<Json<AlertBody>> {
    let alert = app
        .resolve_alert(auth.actor(), &alert_id(&id)?, req.comment.as_deref())
        .await?;
    Ok(Json(alert_body(alert)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteRequest {
    /// The key whose alerts to silence (or `token`).
    pub key: Option<String>,
    pub token: Option<String>,
    /// One signal; absent: every signal.
    pub signal: Option<String>,
    /// For how long (1 minute to 90 days).
    pub minutes: i64,
    /// Why (at least 4 characters).
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MuteBody {
    pub id: String,
    pub subject_kind: String,
    pub subject_id: String,
    pub signal: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub until: Timestamp,
    pub reason: String,
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

fn mute_body(m: AlertMute) -> MuteBody {
    MuteBody {
        id: m.id.to_string(),
        subject_kind: m.subject.kind().to_owned(),
        subject_id: m.subject.id().to_owned(),
        signal: m.signal.map(|s| s.as_str().to_owned()),
        until: m.until,
        reason: m.reason,
        created_by: m.created_by,
        created_at: m.created_at,
    }
}

/// Silence a key's or token's alerts (one signal, or all) for a while (audited).
#[utoipa::path(post, path = "/api/v1/alert-mutes", tag = "alerts", request_body = MuteRequest,
    responses((status = 201, body = MuteBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "invalid_mute, reason_required, invalid_signal, invalid_alert_subject")),
    security(("bearer" = [])))]
pub async fn create_mute(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<MuteRequest>,
) -> ApiResult<(StatusCode, Json<MuteBody>)> {
    let subject = subject(req.key.as_deref(), req.token.as_deref())?.ok_or_else(|| {
        keyward_core::Error::invalid("invalid_alert_subject", "name a key or a token")
    })?;
    let signal = req.signal.as_deref().map(str::parse).transpose()?;
    let mute = app
        .mute_alerts(auth.actor(), subject, signal, req.minutes, &req.reason)
        .await?;
    Ok((StatusCode::CREATED, Json(mute_body(mute))))
}

/// Mutes in force.
#[utoipa::path(get, path = "/api/v1/alert-mutes", tag = "alerts",
    responses((status = 200, body = Vec<MuteBody>), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_mutes(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<MuteBody>>> {
    let mutes = app.mutes(auth.actor()).await?;
    Ok(Json(mutes.into_iter().map(mute_body).collect()))
}

/// End a mute early (audited).
#[utoipa::path(delete, path = "/api/v1/alert-mutes/{id}", tag = "alerts", params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_mute(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: MuteId = id
        .parse()
        .map_err(|_| keyward_core::Error::not_found("mute_not_found", "no such mute in force"))?;
    app.unmute_alerts(auth.actor(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The graduated response policy: when an open alert throttles its token and freezes its
/// key or token.
#[utoipa::path(get, path = "/api/v1/policies/response", tag = "alerts",
    responses((status = 200, body = Object)), security(("bearer" = [])))]
pub async fn get_response_policy(
    _auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<ResponsePolicy>> {
    Ok(Json(app.response_policy().await?))
}

/// `{"rules": [{"subjects": ["token"], "categories": ["llm"], "criticalities": ["high",
/// "critical"], "signals": ["request_spike"], "severities": ["critical"],
/// "throttle_after_minutes": 0, "throttle_percent": 10, "freeze_after_minutes": 15}]}` —
/// every condition optional; the strictest matching rule wins; acknowledging an alert
/// stops its escalation. Changing it passes the approval policy's gate as an access change.
#[utoipa::path(put, path = "/api/v1/policies/response", tag = "alerts", request_body = Object,
    responses((status = 200, body = Object), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "invalid_rule")), security(("bearer" = [])))]
pub async fn set_response_policy(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiJson(policy): ApiJson<ResponsePolicy>,
) -> ApiResult<Json<ResponsePolicy>> {
    Ok(Json(app.set_response_policy(auth.actor(), policy).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContainmentBody {
    /// `key` or `token`.
    pub subject_kind: String,
    pub subject_id: String,
    /// `throttle` or `freeze`.
    pub measure: String,
    /// A throttle's rate limit: requests per `per_seconds`.
    pub requests: Option<u32>,
    pub per_seconds: Option<u32>,
    /// The alert that escalated to it; absent when a person froze it.
    pub alert: Option<String>,
    pub reason: String,
    pub by: String,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

fn containment_body(c: Containment) -> ContainmentBody {
    let limit = match c.measure {
        Measure::Throttle(limit) => Some(limit),
        Measure::Freeze => None,
    };
    ContainmentBody {
        subject_kind: c.subject.kind().to_owned(),
        subject_id: c.subject.id().to_owned(),
        measure: c.measure.name().to_owned(),
        requests: limit.map(|l| l.requests),
        per_seconds: limit.map(|l| l.per_seconds),
        alert: c.alert.map(|a| a.to_string()),
        reason: c.reason,
        by: c.by,
        at: c.at,
    }
}

/// Throttles and freezes in force on keys and tokens the caller may read.
#[utoipa::path(get, path = "/api/v1/containments", tag = "alerts",
    responses((status = 200, body = Vec<ContainmentBody>), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_containments(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<ContainmentBody>>> {
    let all = app.containments(auth.actor()).await?;
    Ok(Json(all.into_iter().map(containment_body).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeRequest {
    /// Why (at least 4 characters).
    pub reason: String,
}

fn key_subject(id: &str) -> Result<AlertSubject, keyward_core::Error> {
    AlertSubject::parse("key", id).map_err(|_| {
        keyward_core::Error::not_found(
            "key_not_found",
            format!("there is no key `{}`", keyward_core::label::printable(id)),
        )
    })
}

fn token_subject(id: &str) -> Result<AlertSubject, keyward_core::Error> {
    AlertSubject::parse("token", id).map_err(|_| {
        keyward_core::Error::not_found(
            "app_token_not_found",
            format!(
                "there is no app token `{}`",
                keyward_core::label::printable(id)
            ),
        )
    })
}

/// Freeze a key now: every instance refuses to inject it (`403 frozen`) within a second.
#[utoipa::path(post, path = "/api/v1/keys/{id}/freeze", tag = "alerts", params(("id" = String, Path)),
    request_body = FreezeRequest,
    responses((status = 201, body = ContainmentBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already_frozen"),
        (status = 422, body = ErrorBody, description = "reason_required")), security(("bearer" = [])))]
pub async fn freeze_key(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<FreezeRequest>,
) -> ApiResult<(StatusCode, Json<ContainmentBody>)> {
    let frozen = app
        .freeze(auth.actor(), key_subject(&id)?, &req.reason)
        .await?;
    Ok((StatusCode::CREATED, Json(containment_body(frozen))))
}

/// Lift a key's freeze: approval-gated (`unfreeze`; one owner's or admin's approval when
/// the approval policy says nothing more) — repeat with `X-Keyward-Approval: request`,
/// then with the approved request's id.
#[utoipa::path(post, path = "/api/v1/keys/{id}/unfreeze", tag = "alerts", params(("id" = String, Path)),
    responses((status = 204), (status = 202, body = ErrorBody, description = "approval_requested"),
        (status = 403, body = ErrorBody, description = "approval_required"),
        (status = 404, body = ErrorBody, description = "not_frozen")), security(("bearer" = [])))]
pub async fn unfreeze_key(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    app.unfreeze(auth.actor(), key_subject(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Freeze an app token now: every instance refuses it (`403 frozen`) within a second.
#[utoipa::path(post, path = "/api/v1/app-tokens/{id}/freeze", tag = "alerts", params(("id" = String, Path)),
    request_body = FreezeRequest,
    responses((status = 201, body = ContainmentBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already_frozen"),
        (status = 422, body = ErrorBody, description = "reason_required")), security(("bearer" = [])))]
pub async fn freeze_token(
    auth: Authorized<perm::AppTokensWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<FreezeRequest>,
) -> ApiResult<(StatusCode, Json<ContainmentBody>)> {
    let frozen = app
        .freeze(auth.actor(), token_subject(&id)?, &req.reason)
        .await?;
    Ok((StatusCode::CREATED, Json(containment_body(frozen))))
}

/// Lift an app token's freeze (and its throttle): approval-gated like a key's.
#[utoipa::path(post, path = "/api/v1/app-tokens/{id}/unfreeze", tag = "alerts", params(("id" = String, Path)),
    responses((status = 204), (status = 202, body = ErrorBody, description = "approval_requested"),
        (status = 403, body = ErrorBody, description = "approval_required"),
        (status = 404, body = ErrorBody, description = "not_frozen")), security(("bearer" = [])))]
pub async fn unfreeze_token(
    auth: Authorized<perm::AppTokensWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    app.unfreeze(auth.actor(), token_subject(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Guided rotations: `/api/v1/keys/{id}/rotations` (start, list) and
//! `/api/v1/rotations/{id}` with one POST per step. Every step may be repeated: a rotation
//! already past it answers 200 unchanged.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use jiff::{SignedDuration, Timestamp};
use keyward_core::guided_rotation::{ProbeRecord, Rotation, RotationTraffic};
use keyward_core::id::RotationId;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Authorized, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath, optional_json};
use super::keys::key_id;
use keyward_app::App;
use keyward_app::lifecycle::guided_rotation::NewValue;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRotationRequest {
    /// The new value, created at the provider by you. Leave out with `managed`.
    #[schema(value_type = Option<String>, format = Password, write_only)]
    pub secret: Option<SecretString>,
    /// Store a value that does not match the service's key format.
    #[serde(default)]
    pub force: bool,
    /// Let Keyward create the new key (and later revoke the old one) through the
    /// provider's key-management API, for services that declare one.
    pub managed: Option<ManagedRequest>,
    /// How long the old value stays as the fallback after promotion (0–43200, default
    /// 1440 = a day).
    #[schema(maximum = 43200)]
    pub window_minutes: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManagedRequest {
    /// A stored admin key of the same service (OpenAI: `sk-admin-…`).
    pub admin_key: String,
    /// The provider's project the key belongs to (OpenAI: `proj_…`).
    pub project: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryRequest {
    /// Share of the key's requests that try the new value first, 1–50.
    #[schema(minimum = 1, maximum = 50)]
    pub percent: u8,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireRequest {
    /// Needed to retire inside the dual-key window (or while the provider still rejects
    /// the new value now and then).
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProbeBody {
    /// `valid`, `rejected`, `throttled`, `inconclusive` or `unreachable`.
    pub verdict: String,
    pub status: Option<u16>,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrafficBody {
    pub canary_served: u64,
    pub canary_rejected: u64,
    /// Requests the old value answered because the provider rejected the new one.
    pub fallback_served: u64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub new_rejected_at: Option<Timestamp>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ManagedBody {
    pub admin_key: String,
    pub project: String,
    /// The provider's id of the key this rotation created.
    pub provider_key: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotationResponse {
    pub id: String,
    pub key_id: String,
    /// creating, pending, validated, canary, promoted, retired, revoked_verified,
    /// old_key_live or cancelled.
    pub step: String,
    /// Where the rotation stands, in words.
    pub summary: String,
    /// The steps that can be asked for now.
    pub next: Vec<String>,
    pub old_version: u32,
    pub new_version: u32,
    pub managed: Option<ManagedBody>,
    pub canary_percent: u8,
    pub window_seconds: i64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub window_ends_at: Option<Timestamp>,
    pub validation: Option<ProbeBody>,
    pub verification: Option<ProbeBody>,
    pub traffic: TrafficBody,
    /// While the old key is still live: the provider's page to revoke it on.
    pub revoke_at: Option<String>,
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    pub revision: u64,
}

fn probe_body(p: ProbeRecord) -> ProbeBody {
    ProbeBody {
        verdict: p.verdict,
        status: p.status,
        at: p.at,
    }
}

fn traffic_body(t: RotationTraffic) -> TrafficBody {
    TrafficBody {
        canary_served: t.canary_served,
        canary_rejected: t.canary_rejected,
        fallback_served: t.fallback_served,
        new_rejected_at: t.new_rejected_at,
    }
}

pub async fn rotation_response(app: &App, r: Rotation) -> ApiResult<RotationResponse> {
    let revoke_at = app.revoke_link(&r).await?;
    Ok(RotationResponse {
        id: r.id.to_string(),
        key_id: r.key_id.to_string(),
        step: r.step.to_string(),
        summary: r.step.summary().to_owned(),
        next: r
            .step
            .next_actions()
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        old_version: r.old_version,
        new_version: r.new_version,
        managed: r.managed.map(|m| ManagedBody {
            admin_key: m.admin_key.to_string(),
            project: m.project,
            provider_key: m.created,
        }),
        canary_percent: r.canary_percent,
        window_seconds: r.window.as_secs(),
        window_ends_at: r.window_ends_at,
        validation: r.validation.map(probe_body),
        verification: r.verification.map(probe_body),
        traffic: traffic_body(r.traffic),
        revoke_at,
        created_by: r.created_by,
        created_at: r.created_at,
        updated_at: r.updated_at,
        revision: r.revision,
    })
}

fn rotation_id(text: &str) -> Result<RotationId, keyward_core::Error> {
    text.parse().map_err(|_| {
        keyward_core::Error::not_found(
            "rotation_not_found",
            format!(
                "there is no rotation `{}`",
                keyward_core::label::printable(text)
            ),
        )
    })
}

/// Start a guided rotation: the new value (given, or created by Keyward through the
/// provider's key-management API) is stored as pending; nothing uses it yet.
#[utoipa::path(post, path = "/api/v1/keys/{id}/rotations", tag = "rotations", params(("id" = String, Path)), request_body = StartRotationRequest,
    responses((status = 201, body = RotationResponse), (status = 202, body = ErrorBody, description = "approval requested"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "rotation_in_progress (reference: the active rotation), key_deleted, key_revoked"),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn start_rotation(
    auth: Authorized<perm::KeysRotate>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<StartRotationRequest>,
) -> ApiResult<(StatusCode, Json<RotationResponse>)> {
    let value = match (req.secret, req.managed) {
        (Some(value), None) => NewValue::Given {
            value,
            force: req.force,
        },
        (None, Some(m)) => NewValue::Managed {
            admin_key: key_id(&m.admin_key).map_err(|_| {
                keyward_core::Error::invalid("invalid_admin_key", "`admin_key` is not a key id")
            })?,
            project: m.project,
        },
        _ => {
            return Err(keyward_core::Error::invalid(
                "rotation_value_required",
                "give either the new `secret` or `managed` (Keyward creates the key), not both",
            )
            .into());
        }
    };
    // The bound (30 days) is the domain's: `Rotation::start` refuses a longer window.
    let window = req
        .window_minutes
        .map(|m| SignedDuration::from_mins(i64::from(m)));
    let rotation = app
        .start_rotation(auth.actor(), &key_id(&id)?, value, window)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(rotation_response(&app, rotation).await?),
    ))
}

/// A key's rotations, newest first.
#[utoipa::path(get, path = "/api/v1/keys/{id}/rotations", tag = "rotations", params(("id" = String, Path)),
    responses((status = 200, body = Vec<RotationResponse>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_rotations(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<RotationResponse>>> {
    let mut out = Vec::new();
    for r in app.rotations(auth.actor(), &key_id(&id)?).await? {
        out.push(rotation_response(&app, r).await?);
    }
    Ok(Json(out))
}

/// One rotation.
#[utoipa::path(get, path = "/api/v1/rotations/{id}", tag = "rotations", params(("id" = String, Path)),
    responses((status = 200, body = RotationResponse), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_rotation(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RotationResponse>> {
    let r = app.rotation(auth.actor(), &rotation_id(&id)?).await?;
    Ok(Json(rotation_response(&app, r).await?))
}

/// Send the service's validation request with the new value; accepted moves the rotation
/// to `validated`, anything else keeps it pending with the answer recorded.
#[utoipa::path(post, path = "/api/v1/rotations/{id}/validate", tag = "rotations", params(("id" = String, Path)),
    responses((status = 200, body = RotationResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn validate_rotation(
    auth: Authorized<perm::KeysRotate>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RotationResponse>> {
    let r = app
        .validate_rotation(auth.actor(), &rotation_id(&id)?)
        .await?;
    Ok(Json(rotation_response(&app, r).await?))
}

/// Send a share of the key's requests to the new value first (a rejected try is repeated
/// with the current value, so callers see no failure).
#[utoipa::path(post, path = "/api/v1/rotations/{id}/canary", tag = "rotations", params(("id" = String, Path)), request_body = CanaryRequest,
    responses((status = 200, body = RotationResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "rotation_not_validated"), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn canary_rotation(
    auth: Authorized<perm::KeysRotate>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CanaryRequest>,
) -> ApiResult<Json<RotationResponse>> {
    let r = app
        .canary_rotation(auth.actor(), &rotation_id(&id)?, req.percent)
        .await?;
    Ok(Json(rotation_response(&app, r).await?))
}

/// Make the new value current; the old one answers whenever the provider rejects the new
/// one, until the dual-key window ends.
#[utoipa::path(post, path = "/api/v1/rotations/{id}/promote", tag = "rotations", params(("id" = String, Path)),
    responses((status = 200, body = RotationResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "rotation_not_validated")),
    security(("bearer" = [])))]
pub async fn promote_rotation(
    auth: Authorized<perm::KeysRotate>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RotationResponse>> {
    let r = app
        .promote_rotation(auth.actor(), &rotation_id(&id)?)
        .await?;
    Ok(Json(rotation_response(&app, r).await?))
}

/// Stop using the old value (happens by itself when the window ends), revoke it at the
/// provider for managed rotations, and probe it: `revoked_verified` once the provider
/// rejects it, `old_key_live` (with `revoke_at`) if it still works.
#[utoipa::path(post, path = "/api/v1/rotations/{id}/retire", tag = "rotations", params(("id" = String, Path)), request_body = RetireRequest,
    responses((status = 200, body = RotationResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "confirmation_required inside the window, rotation_not_promoted")),
    security(("bearer" = [])))]
pub async fn retire_rotation(
    auth: Authorized<perm::KeysRotate>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RotationResponse>> {
    let req = optional_json::<RetireRequest>(&body)?;
    let r = app
        .retire_rotation(auth.actor(), &rotation_id(&id)?, req.confirm)
        .await?;
    Ok(Json(rotation_response(&app, r).await?))
}

/// Probe the retired value again (after revoking it at the provider).
#[utoipa::path(post, path = "/api/v1/rotations/{id}/verify", tag = "rotations", params(("id" = String, Path)),
    responses((status = 200, body = RotationResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "rotation_not_retired")),
    security(("bearer" = [])))]
pub async fn verify_rotation(
    auth: Authorized<perm::KeysRotate>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RotationResponse>> {
    let r = app
        .verify_rotation(auth.actor(), &rotation_id(&id)?)
        .await?;
    Ok(Json(rotation_response(&app, r).await?))
}

/// Give up before promotion; the pending value is retired unused.
#[utoipa::path(post, path = "/api/v1/rotations/{id}/cancel", tag = "rotations", params(("id" = String, Path)),
    responses((status = 200, body = RotationResponse), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "rotation_promoted")),
    security(("bearer" = [])))]
pub async fn cancel_rotation(
    auth: Authorized<perm::KeysRotate>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RotationResponse>> {
    let r = app
        .cancel_rotation(auth.actor(), &rotation_id(&id)?)
        .await?;
    Ok(Json(rotation_response(&app, r).await?))
}

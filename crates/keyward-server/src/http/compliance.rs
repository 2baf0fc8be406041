//! `/api/v1/compliance` and `/api/v1/keys/{id}/compliance`: key strength and compliance —
//! format, entropy, age against the rotation policy, exposure since the last rotation, the
//! same value elsewhere (by fingerprint), a documented owner.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use jiff::Timestamp;
use keyward_core::compliance::ComplianceStatus;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{Authorized, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::ApiPath;
use super::keys::key_id;
use keyward_app::App;
use keyward_app::lifecycle::compliance::KeyCompliance;

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckBody {
    /// format, strength, age, exposure, unique, owner.
    pub id: String,
    /// pass, warn or fail.
    pub status: String,
    pub detail: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SameValueBody {
    pub key_id: String,
    pub alias: String,
    pub environment: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyComplianceBody {
    pub key_id: String,
    pub alias: String,
    pub service: String,
    pub environment: String,
    /// compliant, attention (warnings only) or non_compliant.
    pub status: String,
    pub checks: Vec<CheckBody>,
    /// Whether the value matches the provider's key format (absent: none declared).
    pub format_ok: Option<bool>,
    pub entropy_bits: u32,
    /// Keyed HMAC of the value, as in the audit trail.
    pub fingerprint: String,
    /// Reveals and exports, ever.
    pub exposures: u64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_exposed_at: Option<Timestamp>,
    /// Other keys holding the same value.
    pub same_value: Vec<SameValueBody>,
    pub owner: Option<String>,
    /// When the current value became current.
    #[schema(value_type = String, format = DateTime)]
    pub rotated_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ComplianceSummaryBody {
    pub compliant: usize,
    pub attention: usize,
    pub non_compliant: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ComplianceBody {
    pub summary: ComplianceSummaryBody,
    pub keys: Vec<KeyComplianceBody>,
}

fn body(k: KeyCompliance) -> KeyComplianceBody {
    KeyComplianceBody {
        key_id: k.key.id.to_string(),
        alias: k.key.alias,
        service: k.key.service_id,
        environment: k.key.environment,
        status: k.compliance.status.as_str().to_owned(),
        checks: k
            .compliance
            .checks
            .into_iter()
            .map(|c| CheckBody {
                id: c.id.to_owned(),
                status: c.status.as_str().to_owned(),
                detail: c.detail,
            })
            .collect(),
        format_ok: k.traits.format_ok,
        entropy_bits: k.traits.entropy_bits,
        fingerprint: k.traits.fingerprint,
        exposures: k.exposures,
        last_exposed_at: k.last_exposed_at,
        same_value: k
            .same_value
            .into_iter()
            .map(|s| SameValueBody {
                key_id: s.key_id.to_string(),
                alias: s.alias,
                environment: s.environment,
            })
            .collect(),
        owner: k.key.owner,
        rotated_at: k.key.rotated_at,
    }
}

/// Compliance of every live key the caller can read, with a summary.
#[utoipa::path(get, path = "/api/v1/compliance", tag = "compliance",
    responses((status = 200, body = ComplianceBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn compliance(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<ComplianceBody>> {
    let keys = app.compliance(auth.actor()).await?;
    let count = |s: ComplianceStatus| keys.iter().filter(|k| k.compliance.status == s).count();
    Ok(Json(ComplianceBody {
        summary: ComplianceSummaryBody {
            compliant: count(ComplianceStatus::Compliant),
            attention: count(ComplianceStatus::Attention),
            non_compliant: count(ComplianceStatus::NonCompliant),
        },
        keys: keys.into_iter().map(body).collect(),
    }))
}

/// One key's compliance.
#[utoipa::path(get, path = "/api/v1/keys/{id}/compliance", tag = "compliance", params(("id" = String, Path)),
    responses((status = 200, body = KeyComplianceBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn key_compliance(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KeyComplianceBody>> {
    Ok(Json(body(
        app.key_compliance(auth.actor(), &key_id(&id)?).await?,
    )))
}

//! `/api/v1/health` and `/api/v1/keys/{id}/health`: key and service health from real
//! traffic (every instance's, last five minutes), provider flags, this instance's circuit
//! breakers and active probes. (`/healthz` and `/readyz` are Keyward's own liveness.)

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use jiff::Timestamp;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{Authorized, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::ApiPath;
use super::keys::key_id;
use keyward_app::App;
use keyward_app::lifecycle::health::{KeyHealth, ServiceHealth};

#[derive(Debug, Serialize, ToSchema)]
pub struct CallsBody {
    pub calls: u64,
    /// Unreachable providers and 5xx answers.
    pub failures: u64,
    pub mean_latency_ms: Option<u64>,
}

impl From<keyward_core::health::CallStats> for CallsBody {
    fn from(s: keyward_core::health::CallStats) -> Self {
        Self {
            calls: s.calls,
            failures: s.failures,
            mean_latency_ms: s.mean_latency_ms(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProbeBody {
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// valid, rejected, throttled, inconclusive, unreachable, no_allowance (not sent: the
    /// key's allowance could not afford it), error; absent while the probe runs.
    pub verdict: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyHealthBody {
    pub key_id: String,
    pub alias: String,
    pub service: String,
    pub environment: String,
    /// healthy, degraded or down.
    pub status: String,
    /// Why it is not healthy, in words.
    pub reasons: Vec<String>,
    /// Calls over the last five minutes on every instance.
    pub last_5_minutes: CallsBody,
    /// This instance's circuit breaker: closed, open or half_open.
    pub circuit: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub circuit_open_until: Option<Timestamp>,
    /// rejected or quota_limited, when the provider said so.
    pub flag: Option<String>,
    pub last_probe: Option<ProbeBody>,
    /// When the key is probed if nothing else is heard of it meanwhile (absent: never).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_probe_at: Option<Timestamp>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceHealthBody {
    pub service: String,
    pub name: String,
    pub status: String,
    /// Many of the service's keys failing at once: likely the provider, not the keys.
    pub disruption: bool,
    pub keys: usize,
    pub failing_keys: usize,
    pub last_5_minutes: CallsBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub services: Vec<ServiceHealthBody>,
    pub keys: Vec<KeyHealthBody>,
}

pub(crate) fn key_health_body(k: KeyHealth) -> KeyHealthBody {
    KeyHealthBody {
        key_id: k.key.id.to_string(),
        alias: k.key.alias,
        service: k.key.service_id,
        environment: k.key.environment,
        status: k.assessment.status.as_str().to_owned(),
        reasons: k.assessment.reasons,
        last_5_minutes: k.calls.into(),
        circuit: k.breaker.as_str().to_owned(),
        circuit_open_until: k.breaker_open_until,
        flag: k.flag.map(|f| f.kind.as_str().to_owned()),
        last_probe: k.last_probe.map(|(at, verdict)| ProbeBody { at, verdict }),
        next_probe_at: k.next_probe_at,
    }
}

fn service_health_body(s: ServiceHealth) -> ServiceHealthBody {
    ServiceHealthBody {
        service: s.service_id,
        name: s.name,
        status: s.status.as_str().to_owned(),
        disruption: s.disruption,
        keys: s.keys,
        failing_keys: s.failing,
        last_5_minutes: s.calls.into(),
    }
}

/// Health of every active key the caller can read, and of their services.
#[utoipa::path(get, path = "/api/v1/health", tag = "health",
    responses((status = 200, body = HealthBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn health(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<HealthBody>> {
    let report = app.health(auth.actor()).await?;
    Ok(Json(HealthBody {
        at: report.at,
        services: report
            .services
            .into_iter()
            .map(service_health_body)
            .collect(),
        keys: report.keys.into_iter().map(key_health_body).collect(),
    }))
}

/// One key's health.
#[utoipa::path(get, path = "/api/v1/keys/{id}/health", tag = "health", params(("id" = String, Path)),
    responses((status = 200, body = KeyHealthBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn key_health(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KeyHealthBody>> {
    let health = app.key_health(auth.actor(), &key_id(&id)?).await?;
    Ok(Json(key_health_body(health)))
}

//! `/api/v1/audit`: read, export and verify the audit trail.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use keyward_core::audit::{AuditFilter, AuditOutcome, VerifyReport};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Authorized, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::ApiQuery;
use super::usage::instant;
use keyward_app::App;
use keyward_app::audit::{AuditEventBody, event_line};

/// Most entries one listing returns.
const PAGE_MAX: u32 = 1_000;
/// Most entries one export returns (page with `after`).
const EXPORT_MAX: u32 = 100_000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// An actor's id or name.
    pub actor: Option<String>,
    /// An action (`key.create`) or a family of them (`key`).
    pub action: Option<String>,
    /// A target such as `key:01J…`.
    pub target: Option<String>,
    /// `success`, `failure` or `denied`.
    #[param(schema_with = super::schema::outcome_schema)]
    pub outcome: Option<String>,
    /// From (RFC 3339), inclusive.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Until (RFC 3339), exclusive.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Only entries after this sequence number (the next page starts after the last one seen).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// At most this many (default 100, at most 1,000; exports up to 100,000).
    #[param(minimum = 1, maximum = 100000)]
    pub limit: Option<u32>,
}

impl AuditParams {
    fn filter(self, default_limit: u32, max: u32) -> Result<AuditFilter, keyward_core::Error> {
        let limit = self.limit.unwrap_or(default_limit);
        if limit == 0 || limit > max {
            return Err(keyward_core::Error::invalid(
                "invalid_limit",
                format!("limit must be between 1 and {max}"),
            ));
        }
        Ok(AuditFilter {
            actor: self.actor,
            action: self.action,
            target: self.target,
            outcome: self
                .outcome
                .as_deref()
                .map(str::parse::<AuditOutcome>)
                .transpose()?,
            from: self
                .from
                .as_deref()
                .map(|t| instant("from", t))
                .transpose()?,
            until: self.to.as_deref().map(|t| instant("to", t)).transpose()?,
            after_seq: self
                .after
                .map(|after| {
                    u64::try_from(after).map_err(|_| {
                        keyward_core::Error::invalid(
                            "invalid_after",
                            "`after` is a sequence number, 0 or more",
                        )
                    })
                })
                .transpose()?,
            limit,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEventBody>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<u64>,
}

/// Entries in sequence order, filtered.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_audit(
    auth: Authorized<perm::AuditRead>,
    State(app): State<Arc<App>>,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> ApiResult<Json<AuditPage>> {
    let filter = params.filter(100, PAGE_MAX)?;
    let events = app.audit_events(auth.actor(), &filter).await?;
    let full = events.len() == filter.limit as usize;
    let next_after = events.last().filter(|_| full).map(|e| e.seq);
    Ok(Json(AuditPage {
        events: events.into_iter().map(AuditEventBody::from).collect(),
        next_after,
    }))
}

/// The same entries as JSON Lines (one entry per line), for archiving or a SIEM. The export
/// itself is audited.
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", params(AuditParams),
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn export_audit(
    auth: Authorized<perm::AuditExport>,
    State(app): State<Arc<App>>,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> ApiResult<Response> {
    let filter = params.filter(EXPORT_MAX, EXPORT_MAX)?;
    let events = app.export_audit(auth.actor(), &filter).await?;
    let mut body = String::new();
    for event in events {
        body.push_str(&event_line(event).map_err(keyward_core::Error::internal)?);
        body.push('\n');
    }
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// Walks the whole chain and its signed checkpoints; names the first entry that was edited,
/// removed or moved.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, body = Object, description = "`ok`, `verified`, `last_seq`, `checkpoints`, `first_broken` {seq, kind}")),
    security(("bearer" = [])))]
pub async fn verify_audit(
    auth: Authorized<perm::AuditRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<VerifyReport>> {
    Ok(Json(app.verify_audit(auth.actor()).await?))
}

//! `/api/v1/usage` (metered calls over time) and `/api/v1/pools` (how each service and
//! environment shares traffic across its keys).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use jiff::Timestamp;
use keyward_core::usage::{Granularity, PoolStrategy, UsageQuery, UsageTotals, nanos_to_usd};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Authorized, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use keyward_app::App;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Start (RFC 3339); default: 24 hours before `to`.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// End, exclusive (RFC 3339); default: now.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `minute` (kept 8 days), `hour` (default), `day`, `week` (from Monday) or `month`, in
    /// UTC; at most 2,000 buckets.
    #[param(schema_with = super::schema::granularity_schema)]
    pub granularity: Option<String>,
    /// Only this key.
    pub key: Option<String>,
    /// Only this app token.
    pub token: Option<String>,
    /// Only this service.
    pub service: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this environment.
    pub environment: Option<String>,
    /// Only calls from this source network (`203.0.113.0/24`, `2001:db8:1::/48`).
    pub network: Option<String>,
    /// Split by key, token, service, model, environment or network (`groups` in the
    /// answer; by key, only keys the caller may read).
    pub group_by: Option<String>,
    /// `json` (default) or `csv`: one row per bucket (and group), for spreadsheets.
    pub format: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageTotalsBody {
    pub requests: u64,
    /// Calls that did not succeed: refused, failed, upstream or soft errors.
    pub errors: u64,
    pub cache_hits: u64,
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
    pub credits: u64,
    pub cost_usd: f64,
    /// Calls to a model without a listed price: their cost is a conservative estimate
    /// (the service's fallback or dearest price), never zero.
    pub unpriced: u64,
    /// Answers meaning the provider refused the key.
    pub rejected: u64,
    /// Answers meaning a quota or rate limit was reached.
    pub throttled: u64,
    /// Provider outages and calls that reached no one.
    pub outages: u64,
    /// Share of calls that succeeded (0–1); absent without calls.
    pub success_rate: Option<f64>,
    /// Provider credits that cache hits did not spend.
    pub saved_credits: u64,
    /// Median and 95th-percentile latency of answered calls, from a histogram (accurate to
    /// its bucket bounds: 10, 25, 50, 100, 250, 500 ms, 1, 2.5, 5, 10, 30 s).
    pub latency_p50_ms: Option<u32>,
    pub latency_p95_ms: Option<u32>,
}

impl From<UsageTotals> for UsageTotalsBody {
    fn from(t: UsageTotals) -> Self {
        Self {
            requests: t.requests,
            errors: t.errors,
            cache_hits: t.cache_hits,
            input_tokens: t.input_tokens,
            cached_tokens: t.cached_tokens,
            output_tokens: t.output_tokens,
            credits: t.credits,
            cost_usd: nanos_to_usd(t.cost_nanos),
            unpriced: t.unpriced,
            rejected: t.rejected,
            throttled: t.throttled,
            outages: t.outages,
            success_rate: t.success_rate(),
            saved_credits: t.saved_credits,
            latency_p50_ms: t.latency.quantile(0.5),
            latency_p95_ms: t.latency.quantile(0.95),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBucketBody {
    #[schema(value_type = String, format = DateTime)]
    pub start: Timestamp,
    #[serde(flatten)]
    pub totals: UsageTotalsBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageResponse {
    #[schema(value_type = String, format = DateTime)]
    pub from: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub to: Timestamp,
    pub granularity: String,
    /// Buckets with at least one call, oldest first.
    pub buckets: Vec<UsageBucketBody>,
    pub totals: UsageTotalsBody,
    /// With `group_by`: each value's buckets and totals (`buckets` then hold the sums over
    /// every group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<UsageGroupBody>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageGroupBody {
    /// The key id, token id, service, model, environment or network.
    pub group: String,
    pub buckets: Vec<UsageBucketBody>,
    pub totals: UsageTotalsBody,
}

const CSV_HEADER: &str = "group,start,requests,errors,success_rate,rejected,throttled,outages,cache_hits,saved_credits,input_tokens,cached_tokens,output_tokens,credits,cost_usd,unpriced,latency_p50_ms,latency_p95_ms\n";

/// A CSV field: quoted when it holds a comma, a quote or a line break; a leading `=`, `+`,
/// `-` or `@` is prefixed with `'` so a spreadsheet does not run it as a formula.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn csv_row(out: &mut String, group: &str, start: Timestamp, t: &UsageTotals) {
    use std::fmt::Write as _;
    let opt = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
    let _ = writeln!(
        out,
        "{},{start},{},{},{},{},{},{},{},{},{},{},{},{},{:.9},{},{},{}",
        csv_field(group),
        t.requests,
        t.errors,
        t.success_rate()
            .map(|r| format!("{r:.4}"))
            .unwrap_or_default(),
        t.rejected,
        t.throttled,
        t.outages,
        t.cache_hits,
        t.saved_credits,
        t.input_tokens,
        t.cached_tokens,
        t.output_tokens,
        t.credits,
        nanos_to_usd(t.cost_nanos),
        t.unpriced,
        opt(t.latency.quantile(0.5)),
        opt(t.latency.quantile(0.95)),
    );
}

pub(super) fn instant(field: &str, text: &str) -> Result<Timestamp, keyward_core::Error> {
    text.parse().map_err(|_| {
        keyward_core::Error::invalid(
            "invalid_time",
            format!("{field} must be an RFC 3339 time such as 2026-11-25T00:00:00Z"),
        )
    })
}

/// Metered calls through the proxy, in time buckets, optionally for one key, token,
/// service, model, environment or network, optionally split by one of them; as JSON or CSV.
#[utoipa::path(get, path = "/api/v1/usage", tag = "usage", params(UsageParams),
    responses((status = 200, description = "JSON, or CSV with format=csv",
            content((UsageResponse = "application/json"), (String = "text/csv"))),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "invalid_time, invalid_range, range_too_large, invalid_granularity, invalid_group_by, invalid_format, invalid_key_id, invalid_token_id")),
    security(("bearer" = [])))]
pub async fn usage(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let to = match params.to.as_deref() {
        Some(t) => instant("to", t)?,
        None => app.now(),
    };
    let from = match params.from.as_deref() {
        Some(f) => instant("from", f)?,
        None => to
            .checked_sub(jiff::SignedDuration::from_hours(24))
            .unwrap_or(to),
    };
    let granularity: Granularity = params.granularity.as_deref().unwrap_or("hour").parse()?;
    let key = params
        .key
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|_| keyward_core::Error::invalid("invalid_key_id", "key is not a key id"))?;
    let token = params
        .token
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|_| {
            keyward_core::Error::invalid("invalid_token_id", "token is not an app token id")
        })?;
    let csv = match params.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => {
            return Err(
                keyward_core::Error::invalid("invalid_format", "format is json or csv").into(),
            );
        }
    };
    let group_by: Option<keyward_core::usage::UsageGrouping> =
        params.group_by.as_deref().map(str::parse).transpose()?;
    let mut query = UsageQuery::new(from, to, granularity, key, token, params.service)?;
    query.model = params.model;
    query.environment = params.environment;
    query.network = params.network;
    let groups = match group_by {
        Some(by) => Some(app.usage_grouped(auth.actor(), &query, by).await?),
        None => None,
    };
    let buckets = match &groups {
        // The sums over every group, bucket by bucket.
        Some(groups) => {
            let mut sums: std::collections::BTreeMap<Timestamp, UsageTotals> = Default::default();
            for (_, buckets) in groups {
                for b in buckets {
                    *sums.entry(b.start).or_default() += b.totals;
                }
            }
            sums.into_iter()
                .map(|(start, totals)| keyward_core::usage::UsageBucket { start, totals })
                .collect()
        }
        None => app.usage(auth.actor(), &query).await?,
    };
    let sum = |buckets: &[keyward_core::usage::UsageBucket]| {
        let mut totals = UsageTotals::default();
        for b in buckets {
            totals += b.totals;
        }
        totals
    };
    if csv {
        let mut out = String::from(CSV_HEADER);
        match &groups {
            Some(groups) => {
                for (group, buckets) in groups {
                    for b in buckets {
                        csv_row(&mut out, group, b.start, &b.totals);
                    }
                }
            }
            None => {
                for b in &buckets {
                    csv_row(&mut out, "", b.start, &b.totals);
                }
            }
        }
        return Ok((
            [
                (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    axum::http::header::CONTENT_DISPOSITION,
                    "attachment; filename=\"keyward-usage.csv\"",
                ),
            ],
            out,
        )
            .into_response());
    }
    let body = |buckets: Vec<keyward_core::usage::UsageBucket>| -> Vec<UsageBucketBody> {
        buckets
            .into_iter()
            .map(|b| UsageBucketBody {
                start: b.start,
                totals: b.totals.into(),
            })
            .collect()
    };
    let totals = sum(&buckets);
    Ok(Json(UsageResponse {
        from: query.from,
        to: query.to,
        granularity: granularity.as_str().to_owned(),
        buckets: body(buckets),
        totals: totals.into(),
        groups: groups.map(|groups| {
            groups
                .into_iter()
                .map(|(group, buckets)| UsageGroupBody {
                    group,
                    totals: sum(&buckets).into(),
                    buckets: body(buckets),
                })
                .collect()
        }),
    })
    .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolBody {
    pub service: String,
    pub environment: String,
    /// `round_robin`, `least_used` or `quota_aware`.
    pub strategy: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPoolRequest {
    /// `round_robin` (default), `least_used` (fewest requests today) or `quota_aware` (most
    /// quota left).
    #[schema(schema_with = super::schema::strategy_schema)]
    pub strategy: String,
}

/// Pools whose strategy is not the default round-robin.
#[utoipa::path(get, path = "/api/v1/pools", tag = "keys",
    responses((status = 200, body = Vec<PoolBody>)), security(("bearer" = [])))]
pub async fn list_pools(
    _auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<PoolBody>>> {
    Ok(Json(
        app.pool_settings()
            .await?
            .into_iter()
            .map(|p| PoolBody {
                service: p.service_id,
                environment: p.environment,
                strategy: p.strategy.as_str().to_owned(),
            })
            .collect(),
    ))
}

/// Choose how the keys of one service and environment share traffic.
#[utoipa::path(put, path = "/api/v1/pools/{service}/{environment}", tag = "keys",
    params(("service" = String, Path), ("environment" = String, Path)), request_body = SetPoolRequest,
    responses((status = 200, body = PoolBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_pool(
    auth: Authorized<perm::KeysWrite>,
    State(app): State<Arc<App>>,
    ApiPath((service, environment)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<SetPoolRequest>,
) -> ApiResult<Json<PoolBody>> {
    let strategy: PoolStrategy = req.strategy.parse()?;
    let p = app
        .set_pool_strategy(auth.actor(), &service, &environment, strategy)
        .await?;
    Ok(Json(PoolBody {
        service: p.service_id,
        environment: p.environment,
        strategy: p.strategy.as_str().to_owned(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastBody {
    /// `key` or `token`.
    pub subject_kind: String,
    pub subject_id: String,
    /// The key's alias or the token's name.
    pub name: String,
    /// `quota` or `budget`.
    pub allowance: String,
    /// A quota's unit: requests, credits, tokens or symbols.
    pub unit: Option<String>,
    /// A quota's window in seconds (86,400: a day by the service's quota calendar).
    pub window_seconds: Option<u64>,
    /// A budget's period: day or month.
    pub period: Option<String>,
    /// Used in the current window (a budget in USD), from the shared sums.
    pub used: f64,
    pub limit: f64,
    pub used_share: f64,
    #[schema(value_type = String, format = DateTime)]
    pub window_start: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub window_end: Timestamp,
    /// When it runs out at the current pace; absent when it lasts the window.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub runs_out_at: Option<Timestamp>,
    /// What will have been used by the window's end at this pace.
    pub projected: f64,
    /// Today's pace against the usual for these hours (1 = usual).
    pub pace: f64,
}

/// Every quota (an hour or longer) and budget of the keys — and the budgets of the app
/// tokens — the caller may read: used so far in the current window and when it runs out at
/// the current pace (usual use per hour of the market's day, scaled by the last hours).
/// Soonest first.
#[utoipa::path(get, path = "/api/v1/forecasts", tag = "usage",
    responses((status = 200, body = Vec<ForecastBody>), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn forecasts(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<ForecastBody>>> {
    use keyward_app::forecasts::Allowance;
    let all = app.forecasts(auth.actor()).await?;
    Ok(Json(
        all.into_iter()
            .map(|f| {
                let used_share = f.used_share();
                let text = |v: serde_json::Result<serde_json::Value>| {
                    v.ok().and_then(|v| v.as_str().map(str::to_owned))
                };
                let (allowance, unit, window_seconds, period) = match f.allowance {
                    Allowance::Quota {
                        unit,
                        window_seconds,
                    } => (
                        "quota",
                        text(serde_json::to_value(unit)),
                        Some(window_seconds),
                        None,
                    ),
                    Allowance::Budget { period } => {
                        ("budget", None, None, text(serde_json::to_value(period)))
                    }
                };
                ForecastBody {
                    subject_kind: f.subject.kind().to_owned(),
                    subject_id: f.subject.id().to_owned(),
                    name: f.name,
                    allowance: allowance.to_owned(),
                    unit,
                    window_seconds,
                    period,
                    used: f.forecast.used,
                    limit: f.forecast.limit,
                    used_share,
                    window_start: f.window_start,
                    window_end: f.forecast.window_end,
                    runs_out_at: f.forecast.runs_out_at,
                    projected: f.forecast.projected,
                    pace: f.forecast.pace,
                }
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("gpt-4o"), "gpt-4o");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("@sum"), "'@sum");
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecommendationBody {
    /// unused_key, plan_too_small, plan_too_large, uncached, cheaper_model, shared_value or
    /// unpriced.
    pub kind: String,
    /// The key it is about, if one.
    pub key_id: Option<String>,
    /// The key's alias, or the service and model.
    pub about: String,
    pub detail: String,
    /// Dollars a month it would save (an estimate).
    pub monthly_saving_usd: Option<f64>,
    /// low, medium or high.
    pub risk: Option<String>,
}

/// What the last 30 days say could be cheaper or safer: keys unused for 30 days, plans too
/// small or too large for their use, cacheable calls the provider answered, a cheaper model
/// of the same provider at the same token counts, one value in several environments, calls
/// without a price. Riskiest and biggest savings first.
#[utoipa::path(get, path = "/api/v1/recommendations", tag = "usage",
    responses((status = 200, body = Vec<RecommendationBody>), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn recommendations(
    auth: Authorized<perm::KeysRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<RecommendationBody>>> {
    let all = app.recommendations(auth.actor()).await?;
    Ok(Json(
        all.into_iter()
            .map(|r| RecommendationBody {
                kind: r.kind.as_str().to_owned(),
                key_id: r.key.map(|k| k.to_string()),
                about: r.about,
                detail: r.detail,
                monthly_saving_usd: r.monthly_saving_usd,
                risk: r.risk.map(|risk| {
                    match risk {
                        keyward_core::recommend::Risk::Low => "low",
                        keyward_core::recommend::Risk::Medium => "medium",
                        keyward_core::recommend::Risk::High => "high",
                    }
                    .to_owned()
                }),
            })
            .collect(),
    ))
}

//! `/api/v1/webhooks`: notification webhooks (owner and admin) and their delivery logs.
//!
//! Every delivery is a JSON POST with `X-Keyward-Signature: t=<unix seconds>,v1=<hex>`:
//! HMAC-SHA256 under the webhook's secret (the `whsec_…` text, as bytes) of
//! `<t>.<body>`. Check it in constant time and refuse old `t`s. `X-Keyward-Event` names the
//! kind, `X-Keyward-Delivery` the delivery (the same id on every retry: deduplicate by it).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use jiff::Timestamp;
use keyward_core::id::WebhookId;
use keyward_core::notification::{Delivery, NotificationKind, Webhook};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Authorized, SignedIn, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use keyward_app::App;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// `http(s)://…`, without credentials. Loopback and private-network addresses are
    /// refused unless `allow_private_network`.
    pub url: String,
    /// rotation_due, rotation_overdue, rotation_step, key_expiring, key_expired,
    /// key_revoked, health_changed, approval_requested, anomaly_detected; empty or absent: all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only events about keys in these categories; empty or absent: all.
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub allow_private_network: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookResponse {
    pub id: String,
    /// `https://…`, or `mailto:…` for a person's e-mail subscription.
    pub url: String,
    /// The user a personal subscription belongs to.
    pub owner: Option<String>,
    pub kinds: Vec<String>,
    pub categories: Vec<String>,
    pub allow_private_network: bool,
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhookResponse {
    #[serde(flatten)]
    pub webhook: WebhookResponse,
    /// The signing secret, shown only now.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryResponse {
    pub id: String,
    pub kind: String,
    pub event: String,
    /// pending, delivered or failed.
    pub status: String,
    pub attempts: u32,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<Timestamp>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

fn webhook_response(w: Webhook) -> WebhookResponse {
    WebhookResponse {
        id: w.id.to_string(),
        url: w.url,
        owner: w.owner.map(|o| o.to_string()),
        kinds: w.kinds.iter().map(|k| k.as_str().to_owned()).collect(),
        categories: w.categories,
        allow_private_network: w.allow_private_network,
        created_by: w.created_by,
        created_at: w.created_at,
    }
}

fn delivery_response(d: Delivery) -> DeliveryResponse {
    DeliveryResponse {
        id: d.id.to_string(),
        kind: d.kind.as_str().to_owned(),
        event: d.dedupe,
        status: d.status.as_str().to_owned(),
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at,
        last_status: d.last_status,
        last_error: d.last_error,
        created_at: d.created_at,
        updated_at: d.updated_at,
    }
}

fn webhook_id(text: &str) -> Result<WebhookId, keyward_core::Error> {
    text.parse().map_err(|_| {
        keyward_core::Error::not_found(
            "webhook_not_found",
            format!(
                "there is no webhook `{}`",
                keyward_core::label::printable(text)
            ),
        )
    })
}

/// Register a webhook; the answer carries its signing secret once.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "notifications", request_body = CreateWebhookRequest,
    responses((status = 201, body = CreatedWebhookResponse), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "invalid_webhook_url, webhook_url_private, invalid_notification_kind, unknown_category")),
    security(("bearer" = [])))]
pub async fn create_webhook(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<CreateWebhookRequest>,
) -> ApiResult<(StatusCode, Json<CreatedWebhookResponse>)> {
    let kinds = req
        .kinds
        .iter()
        .map(|k| k.parse::<NotificationKind>())
        .collect::<Result<Vec<_>, _>>()?;
    let (webhook, secret) = app
        .create_webhook(
            auth.actor(),
            &req.url,
            kinds,
            req.categories,
            req.allow_private_network,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhookResponse {
            webhook: webhook_response(webhook),
            secret: secret.expose_secret().to_owned(),
        }),
    ))
}

/// Every webhook.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "notifications",
    responses((status = 200, body = Vec<WebhookResponse>), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_webhooks(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<WebhookResponse>>> {
    let hooks = app.webhooks(auth.actor()).await?;
    Ok(Json(hooks.into_iter().map(webhook_response).collect()))
}

/// Remove a webhook and its delivery log.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "notifications", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_webhook(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    app.delete_webhook(auth.actor(), &webhook_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A webhook's deliveries, newest first (the last 100): attempts, the receiver's last
/// status or error, when the next retry is due.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "notifications", params(("id" = String, Path)),
    responses((status = 200, body = Vec<DeliveryResponse>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_deliveries(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<DeliveryResponse>>> {
    let log = app
        .webhook_deliveries(auth.actor(), &webhook_id(&id)?)
        .await?;
    Ok(Json(log.into_iter().map(delivery_response).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRequest {
    /// Where notification e-mail goes.
    pub email: String,
    /// Kinds as for webhooks; empty or absent: all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only events about keys in these categories; empty or absent: every key you may read.
    #[serde(default)]
    pub categories: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionResponse {
    pub email: String,
    pub kinds: Vec<String>,
    pub categories: Vec<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// The last deliveries to it, newest first.
    pub deliveries: Vec<DeliveryResponse>,
}

async fn subscription_response(
    app: &App,
    actor: &keyward_app::Actor,
    w: Webhook,
) -> ApiResult<SubscriptionResponse> {
    let deliveries = app.subscription_deliveries(actor, &w).await?;
    Ok(SubscriptionResponse {
        email: w.email().unwrap_or_default().to_owned(),
        kinds: w.kinds.iter().map(|k| k.as_str().to_owned()).collect(),
        categories: w.categories,
        created_at: w.created_at,
        deliveries: deliveries.into_iter().map(delivery_response).collect(),
    })
}

/// Your own e-mail subscription, with its last deliveries.
#[utoipa::path(get, path = "/api/v1/me/subscription", tag = "notifications",
    responses((status = 200, body = SubscriptionResponse), (status = 404, body = ErrorBody, description = "subscription_not_found")),
    security(("bearer" = [])))]
pub async fn get_subscription(
    SignedIn(caller): SignedIn,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<SubscriptionResponse>> {
    let mine = app.my_subscription(&caller.actor).await?.ok_or_else(|| {
        keyward_core::Error::not_found("subscription_not_found", "you have no e-mail subscription")
    })?;
    Ok(Json(
        subscription_response(&app, &caller.actor, mine).await?,
    ))
}

/// Subscribe yourself by e-mail (replaces your earlier subscription). Only events about
/// keys you may read reach you. Needs `smtp_url` on the server.
#[utoipa::path(put, path = "/api/v1/me/subscription", tag = "notifications", request_body = SubscriptionRequest,
    responses((status = 200, body = SubscriptionResponse), (status = 403, body = ErrorBody, description = "user_required"),
        (status = 409, body = ErrorBody, description = "email_not_configured"),
        (status = 422, body = ErrorBody, description = "invalid_email, invalid_notification_kind, unknown_category")),
    security(("bearer" = [])))]
pub async fn put_subscription(
    SignedIn(caller): SignedIn,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<SubscriptionRequest>,
) -> ApiResult<Json<SubscriptionResponse>> {
    let kinds = req
        .kinds
        .iter()
        .map(|k| k.parse::<NotificationKind>())
        .collect::<Result<Vec<_>, _>>()?;
    let mine = app
        .subscribe(&caller.actor, &req.email, kinds, req.categories)
        .await?;
    Ok(Json(
        subscription_response(&app, &caller.actor, mine).await?,
    ))
}

/// End your e-mail subscription.
#[utoipa::path(delete, path = "/api/v1/me/subscription", tag = "notifications",
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_subscription(
    SignedIn(caller): SignedIn,
    State(app): State<Arc<App>>,
) -> ApiResult<StatusCode> {
    app.unsubscribe(&caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! `/api/v1/services`, `/api/v1/categories`, `/api/v1/environments`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keyward_core::service::{Category, Environment, ServiceDefinition};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Authorized, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use keyward_app::App;

/// A service definition as JSON (same shape as the catalog file).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(value_type = Object, example = json!({"id": "my-llm", "name": "My LLM", "category": "llm-providers",
    "base_url": "https://llm.example.com", "auth": {"in": "header", "name": "authorization", "prefix": "Bearer "},
    "key_format": "mk-[A-Za-z0-9]{32}", "validation": {"method": "GET", "path": "/v1/models"},
    "quota_calendar": {"reset": "rolling"}, "where_to_get": "Settings → API keys"}))]
#[serde(transparent)]
pub struct ServiceBody(pub ServiceDefinition);

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListServicesQuery {
    /// Only services of this category.
    pub category: Option<String>,
}

/// All services: the built-in catalog plus custom ones, with base-URL overrides applied.
#[utoipa::path(get, path = "/api/v1/services", tag = "catalog", params(ListServicesQuery),
    responses((status = 200, body = Vec<ServiceBody>)), security(("bearer" = [])))]
pub async fn list_services(
    _auth: Authorized<perm::CatalogRead>,
    State(app): State<Arc<App>>,
    ApiQuery(query): ApiQuery<ListServicesQuery>,
) -> ApiResult<Json<Vec<ServiceDefinition>>> {
    let catalog = app.catalog().await?;
    Ok(Json(
        catalog
            .iter()
            .filter(|s| query.category.as_deref().is_none_or(|c| s.category == c))
            .cloned()
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/services/{id}", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, body = ServiceBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_service(
    _auth: Authorized<perm::CatalogRead>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ServiceDefinition>> {
    Ok(Json(app.catalog().await?.require(&id)?.clone()))
}

/// Add a custom service.
#[utoipa::path(post, path = "/api/v1/services", tag = "catalog", request_body = ServiceBody,
    responses((status = 201, body = ServiceBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_service(
    auth: Authorized<perm::CatalogWrite>,
    State(app): State<Arc<App>>,
    ApiJson(definition): ApiJson<serde_json::Value>,
) -> ApiResult<(StatusCode, Json<ServiceDefinition>)> {
    // Any JSON object is a well-formed body; one that is not a service definition is
    // refused like any other definition that breaks the catalog's rules.
    let service = serde_json::from_value::<ServiceDefinition>(definition).map_err(|e| {
        keyward_core::Error::invalid(
            "invalid_service",
            format!(
                "this is not a service definition: {}",
                super::extract::redact_quoted(&e.to_string())
            ),
        )
    })?;
    let service = app.create_service(auth.actor(), service).await?;
    Ok((StatusCode::CREATED, Json(service)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateServiceRequest {
    /// A new base URL (e.g. Azure OpenAI, a regional endpoint), or `null` to restore the default.
    pub base_url: Option<String>,
}

/// Override (or reset) a service's base URL.
#[utoipa::path(patch, path = "/api/v1/services/{id}", tag = "catalog", params(("id" = String, Path)), request_body = UpdateServiceRequest,
    responses((status = 200, body = ServiceBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn update_service(
    auth: Authorized<perm::CatalogWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateServiceRequest>,
) -> ApiResult<Json<ServiceDefinition>> {
    Ok(Json(
        app.set_base_url(auth.actor(), &id, req.base_url.as_deref())
            .await?,
    ))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LabelBody {
    /// 1–40 characters: lowercase letters, digits, `-`.
    pub id: String,
    /// 1–80 characters.
    pub name: String,
    #[serde(default)]
    pub builtin: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLabelRequest {
    pub id: String,
    pub name: String,
}

impl From<Category> for LabelBody {
    fn from(c: Category) -> Self {
        Self {
            id: c.id,
            name: c.name,
            builtin: c.builtin,
        }
    }
}

impl From<Environment> for LabelBody {
    fn from(e: Environment) -> Self {
        Self {
            id: e.id,
            name: e.name,
            builtin: e.builtin,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/categories", tag = "catalog", responses((status = 200, body = Vec<LabelBody>)), security(("bearer" = [])))]
pub async fn list_categories(
    _auth: Authorized<perm::CatalogRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<LabelBody>>> {
    Ok(Json(
        app.categories()
            .await?
            .into_iter()
            .map(LabelBody::from)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/categories", tag = "catalog", request_body = CreateLabelRequest,
    responses((status = 201, body = LabelBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_category(
    auth: Authorized<perm::CatalogWrite>,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<CreateLabelRequest>,
) -> ApiResult<(StatusCode, Json<LabelBody>)> {
    Ok((
        StatusCode::CREATED,
        Json(
            app.create_category(auth.actor(), &req.id, &req.name)
                .await?
                .into(),
        ),
    ))
}

#[utoipa::path(get, path = "/api/v1/environments", tag = "catalog", responses((status = 200, body = Vec<LabelBody>)), security(("bearer" = [])))]
pub async fn list_environments(
    _auth: Authorized<perm::CatalogRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<LabelBody>>> {
    Ok(Json(
        app.environments()
            .await?
            .into_iter()
            .map(LabelBody::from)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/environments", tag = "catalog", request_body = CreateLabelRequest,
    responses((status = 201, body = LabelBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_environment(
    auth: Authorized<perm::CatalogWrite>,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<CreateLabelRequest>,
) -> ApiResult<(StatusCode, Json<LabelBody>)> {
    Ok((
        StatusCode::CREATED,
        Json(
            app.create_environment(auth.actor(), &req.id, &req.name)
                .await?
                .into(),
        ),
    ))
}

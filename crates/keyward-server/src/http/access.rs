//! `/api/v1/roles` (built-in and custom roles), `/api/v1/users/{id}/grants|role|networks`
//! (who may do what, where and from where), `/api/v1/role-networks` and `/api/v1/tokens`
//! (management tokens for automation, with a role, a scope and an allowlist).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ipnet::IpNet;
use jiff::Timestamp;
use keyward_core::access::{CustomRole, Grant, PermissionSet, Role, RoleRef, Scope};
use keyward_core::token::ManagementToken;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Authorized, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::users::{UserBody, user_id};
use keyward_app::{App, TokenLimits};

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleBody {
    pub id: String,
    pub builtin: bool,
    pub description: String,
    #[schema(schema_with = super::schema::permissions_schema)]
    pub permissions: PermissionSet,
    /// Where holders of this role may work from (empty: anywhere).
    #[schema(value_type = Vec<String>)]
    pub allowed_networks: Vec<IpNet>,
}

fn builtin_description(role: Role) -> &'static str {
    match role {
        Role::Owner => "everything, including creating owners",
        Role::Admin => "everything except creating owners",
        Role::KeyManager => "add, edit, rotate, reveal, delete and restore keys; app tokens",
        Role::Auditor => "read keys' metadata, the audit trail and users; never values",
        Role::Viewer => "read keys' metadata and status; never values",
    }
}

/// Built-in roles, then custom ones.
#[utoipa::path(get, path = "/api/v1/roles", tag = "access",
    responses((status = 200, body = Vec<RoleBody>)), security(("bearer" = [])))]
pub async fn list_roles(
    _auth: Authorized<perm::UsersRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<RoleBody>>> {
    let networks = app.role_networks().await?;
    let networks_of = |id: &str| {
        networks
            .iter()
            .find(|(role, _)| role == id)
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
    };
    let builtin = Role::ALL.into_iter().map(|role| RoleBody {
        id: role.as_str().to_owned(),
        builtin: true,
        description: builtin_description(role).to_owned(),
        permissions: role.permissions(),
        allowed_networks: networks_of(role.as_str()),
    });
    let custom = app.custom_roles().await?.into_iter().map(|role| RoleBody {
        allowed_networks: networks_of(&role.id),
        id: role.id,
        builtin: false,
        description: role.description,
        permissions: role.permissions,
    });
    Ok(Json(builtin.chain(custom).collect()))
}

fn custom_body(role: CustomRole) -> RoleBody {
    RoleBody {
        id: role.id,
        builtin: false,
        description: role.description,
        permissions: role.permissions,
        allowed_networks: Vec::new(),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoleRequest {
    /// A slug, not the name of a built-in role.
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[schema(schema_with = super::schema::permissions_schema)]
    pub permissions: PermissionSet,
}

/// A custom role made of permissions (only ones the caller holds everywhere).
#[utoipa::path(post, path = "/api/v1/roles", tag = "access", request_body = CreateRoleRequest,
    responses((status = 201, body = RoleBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_role(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<CreateRoleRequest>,
) -> ApiResult<(StatusCode, Json<RoleBody>)> {
    let role = app
        .create_role(auth.actor(), &req.id, &req.description, req.permissions)
        .await?;
    Ok((StatusCode::CREATED, Json(custom_body(role))))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoleRequest {
    pub description: Option<String>,
    /// The new set; absent or `null`: unchanged.
    #[schema(schema_with = super::schema::optional_permissions_schema)]
    pub permissions: Option<PermissionSet>,
}

#[utoipa::path(patch, path = "/api/v1/roles/{id}", tag = "access", params(("id" = String, Path)), request_body = UpdateRoleRequest,
    responses((status = 200, body = RoleBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn update_role(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateRoleRequest>,
) -> ApiResult<Json<RoleBody>> {
    let role = app
        .update_role(
            auth.actor(),
            &id,
            req.description.as_deref(),
            req.permissions,
        )
        .await?;
    Ok(Json(custom_body(role)))
}

#[utoipa::path(delete, path = "/api/v1/roles/{id}", tag = "access", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_role(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    app.delete_role(auth.actor(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GrantBody {
    pub id: String,
    pub role: String,
    #[schema(schema_with = super::schema::scope_schema)]
    pub scope: Scope,
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

impl From<Grant> for GrantBody {
    fn from(g: Grant) -> Self {
        Self {
            id: g.id.to_string(),
            role: g.role.as_str().to_owned(),
            scope: g.scope,
            created_by: g.created_by,
            created_at: g.created_at,
        }
    }
}

/// The roles a user holds for part of the vault, on top of their base role.
#[utoipa::path(get, path = "/api/v1/users/{id}/grants", tag = "access", params(("id" = String, Path)),
    responses((status = 200, body = Vec<GrantBody>), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_grants(
    _auth: Authorized<perm::UsersRead>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Vec<GrantBody>>> {
    let grants = app.grants(&user_id(&id)?).await?;
    Ok(Json(grants.into_iter().map(GrantBody::from).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// A built-in or custom role.
    pub role: String,
    #[serde(default)]
    #[schema(schema_with = super::schema::scope_schema)]
    pub scope: Scope,
}

/// Gives a user a role in some categories and environments (e.g. key_manager for
/// financial-data in production). Only within what the caller holds.
#[utoipa::path(post, path = "/api/v1/users/{id}/grants", tag = "access", params(("id" = String, Path)), request_body = GrantRequest,
    responses((status = 201, body = GrantBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn add_grant(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<GrantRequest>,
) -> ApiResult<(StatusCode, Json<GrantBody>)> {
    let role = RoleRef::parse(&req.role)?;
    let grant = app
        .add_grant(auth.actor(), &user_id(&id)?, role, req.scope)
        .await?;
    Ok((StatusCode::CREATED, Json(grant.into())))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}/grants/{grant}", tag = "access",
    params(("id" = String, Path), ("grant" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn remove_grant(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiPath((id, grant)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let grant = grant
        .parse()
        .map_err(|_| keyward_core::Error::not_found("grant_not_found", "there is no such grant"))?;
    app.remove_grant(auth.actor(), &user_id(&id)?, &grant)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    #[schema(schema_with = super::schema::role_schema)]
    pub role: Role,
}

/// Changes a user's base role (applies everywhere). Only an owner gives or takes the owner
/// role; nobody changes their own.
#[utoipa::path(put, path = "/api/v1/users/{id}/role", tag = "access", params(("id" = String, Path)), request_body = RoleRequest,
    responses((status = 200, body = UserBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn set_user_role(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RoleRequest>,
) -> ApiResult<Json<UserBody>> {
    Ok(Json(
        app.set_user_role(auth.actor(), &user_id(&id)?, req.role)
            .await?
            .into(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworksRequest {
    /// CIDRs (`203.0.113.0/24`, `2001:db8::/32`) or addresses; empty removes the limit.
    pub allowed_networks: Vec<String>,
}

/// Where a user may sign in and work from.
#[utoipa::path(put, path = "/api/v1/users/{id}/networks", tag = "access", params(("id" = String, Path)), request_body = NetworksRequest,
    responses((status = 200, body = UserBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn set_user_networks(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<NetworksRequest>,
) -> ApiResult<Json<UserBody>> {
    Ok(Json(
        app.set_user_networks(
            auth.actor(),
            &user_id(&id)?,
            networks(&req.allowed_networks)?,
        )
        .await?
        .into(),
    ))
}

/// Where holders of a role may work from (as base role, grant or token role).
#[utoipa::path(put, path = "/api/v1/roles/{id}/networks", tag = "access", params(("id" = String, Path)), request_body = NetworksRequest,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn set_role_networks(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<NetworksRequest>,
) -> ApiResult<StatusCode> {
    app.set_role_networks(auth.actor(), &id, networks(&req.allowed_networks)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBody {
    pub id: String,
    pub name: String,
    pub role: String,
    #[schema(schema_with = super::schema::scope_schema)]
    pub scope: Scope,
    #[schema(value_type = Vec<String>)]
    pub allowed_networks: Vec<IpNet>,
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

impl From<ManagementToken> for TokenBody {
    fn from(t: ManagementToken) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name,
            role: t.role.to_string(),
            scope: t.scope,
            allowed_networks: t.allowed_networks,
            created_by: t.created_by,
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        }
    }
}

/// Management tokens (never their secrets), newest first.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "access",
    responses((status = 200, body = Vec<TokenBody>)), security(("bearer" = [])))]
pub async fn list_tokens(
    _auth: Authorized<perm::UsersRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<TokenBody>>> {
    Ok(Json(
        app.tokens()
            .await?
            .into_iter()
            .map(TokenBody::from)
            .collect(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    #[schema(schema_with = super::schema::role_schema)]
    pub role: Role,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    #[schema(schema_with = super::schema::scope_schema)]
    pub scope: Scope,
    /// CIDRs or addresses the token may be used from (empty: anywhere its role allows).
    #[serde(default)]
    pub allowed_networks: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedTokenBody {
    /// `kwm_…`, shown only now.
    pub token: String,
    #[serde(flatten)]
    pub record: TokenBody,
}

/// A management token for automation: a role, optionally limited to a scope and to
/// networks; within what the caller holds.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "access", request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedTokenBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_token(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreatedTokenBody>)> {
    let limits = TokenLimits {
        scope: req.scope,
        allowed_networks: networks(&req.allowed_networks)?,
    };
    let (record, token) = app
        .create_token(auth.actor(), &req.name, req.role, req.expires_at, limits)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedTokenBody {
            token: token.expose_secret().to_owned(),
            record: record.into(),
        }),
    ))
}

#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", tag = "access", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn revoke_token(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id = id.parse().map_err(|_| {
        keyward_core::Error::not_found("token_not_found", "there is no such live token")
    })?;
    app.revoke_token(auth.actor(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Networks as typed in a body: a CIDR block or an address each, or `invalid_network`.
fn networks(typed: &[String]) -> Result<Vec<IpNet>, keyward_core::Error> {
    typed
        .iter()
        .map(|t| keyward_core::app_token::parse_network(t))
        .collect()
}

//! `/api/v1/users`: the people who sign in to Keyward.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use jiff::Timestamp;
use keyward_core::access::Role;
use keyward_core::id::UserId;
use keyward_core::user::User;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Authorized, ClientAddress, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use keyward_app::App;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// 1–64 letters, digits and `._-@`; unique, case-insensitive.
    pub username: String,
    /// 12–256 characters; not a common or predictable password; not containing the username.
    #[schema(value_type = String)]
    pub password: SecretString,
    #[schema(schema_with = super::schema::role_schema)]
    pub role: Role,
}

impl std::fmt::Debug for CreateUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUserRequest")
            .field("username", &self.username)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserBody {
    pub id: String,
    pub username: String,
    pub role: String,
    pub disabled: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Has a confirmed second factor.
    pub mfa_enabled: bool,
    /// Where the user may work from (empty: anywhere their roles allow).
    #[schema(value_type = Vec<String>)]
    pub allowed_networks: Vec<ipnet::IpNet>,
}

impl From<User> for UserBody {
    fn from(u: User) -> Self {
        Self {
            id: u.id.to_string(),
            username: u.username,
            role: u.role.to_string(),
            disabled: u.disabled,
            created_at: u.created_at,
            mfa_enabled: u.mfa_enabled,
            allowed_networks: u.allowed_networks,
        }
    }
}

pub(crate) fn user_id(text: &str) -> Result<UserId, keyward_core::Error> {
    text.parse()
        .map_err(|_| keyward_core::Error::not_found("user_not_found", "there is no such user"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// `kwsetup_…`, printed by `keyward serve` while no user exists.
    #[schema(value_type = String)]
    pub setup_token: SecretString,
    pub username: String,
    #[schema(value_type = String)]
    pub password: SecretString,
}

impl std::fmt::Debug for SetupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetupRequest")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// First run: creates the first owner with the one-time setup token.
#[utoipa::path(post, path = "/api/v1/setup", tag = "users", request_body = SetupRequest,
    responses((status = 201, body = UserBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn setup(
    State(app): State<Arc<App>>,
    ClientAddress(source): ClientAddress,
    ApiJson(req): ApiJson<SetupRequest>,
) -> ApiResult<(StatusCode, Json<UserBody>)> {
    use secrecy::ExposeSecret;
    let user = app
        .complete_setup(
            req.setup_token.expose_secret(),
            &req.username,
            req.password,
            source,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUserRequest,
    responses((status = 201, body = UserBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_user(
    auth: Authorized<perm::UsersWrite>,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> ApiResult<(StatusCode, Json<UserBody>)> {
    let user = app
        .add_user(auth.actor(), &req.username, req.password, req.role)
        .await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", responses((status = 200, body = Vec<UserBody>)), security(("bearer" = [])))]
pub async fn list_users(
    _auth: Authorized<perm::UsersRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<UserBody>>> {
    Ok(Json(
        app.users().await?.into_iter().map(UserBody::from).collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = UserBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_user(
    _auth: Authorized<perm::UsersRead>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<UserBody>> {
    Ok(Json(app.user(&user_id(&id)?).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/users/{id}/disable", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = UserBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
pub async fn disable_user(
    auth: Authorized<perm::UsersWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<UserBody>> {
    Ok(Json(
        app.set_user_disabled(auth.actor(), &user_id(&id)?, true)
            .await?
            .into(),
    ))
}

#[utoipa::path(post, path = "/api/v1/users/{id}/enable", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = UserBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn enable_user(
    auth: Authorized<perm::UsersWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<UserBody>> {
    Ok(Json(
        app.set_user_disabled(auth.actor(), &user_id(&id)?, false)
            .await?
            .into(),
    ))
}

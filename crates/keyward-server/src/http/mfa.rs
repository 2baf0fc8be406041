//! `/api/v1/auth/mfa/…` (one's own second factor: enrol, confirm, step up, new recovery
//! codes), `/api/v1/users/{id}/mfa` (an admin resets someone's) and `/api/v1/policies/mfa`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use keyward_core::access::Role;
use keyward_core::mfa::MfaPolicy;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Authorized, SignedIn, SteppedUp, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::sessions::{SignedInBody, second_factor, session_response};
use keyward_app::App;

fn needs_session(
    caller: &super::auth::Caller,
) -> Result<&keyward_core::session::Session, keyward_core::Error> {
    caller.session.as_ref().ok_or_else(|| {
        keyward_core::Error::invalid(
            "no_session",
            "second factors belong to people: sign in with a password first",
        )
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MfaStatusBody {
    pub enrolled: bool,
    /// Enrolment started but not confirmed with a first code.
    pub pending: bool,
    pub unused_recovery_codes: u32,
    /// The MFA policy requires a second factor for this user's role.
    pub required: bool,
}

/// The signed-in user's second factor.
#[utoipa::path(get, path = "/api/v1/auth/mfa", tag = "auth",
    responses((status = 200, body = MfaStatusBody), (status = 401, body = ErrorBody)))]
pub async fn mfa_status(
    SignedIn(caller): SignedIn,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<MfaStatusBody>> {
    let user = app.user(&needs_session(&caller)?.user_id).await?;
    let status = app.mfa_status(&user).await?;
    Ok(Json(MfaStatusBody {
        enrolled: status.enrolled,
        pending: status.pending,
        unused_recovery_codes: status.unused_recovery_codes,
        required: status.required,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MfaSetupBody {
    /// Base32, to type into the app by hand.
    pub secret: String,
    pub otpauth_uri: String,
    /// The URI as an SVG QR code.
    pub qr_svg: String,
}

/// Starts enrolment: a new TOTP secret as a QR code and as text. Nothing changes until a
/// code from the app confirms it.
#[utoipa::path(post, path = "/api/v1/auth/mfa/enroll", tag = "auth",
    responses((status = 200, body = MfaSetupBody), (status = 409, body = ErrorBody)))]
pub async fn start_enrolment(
    SignedIn(caller): SignedIn,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<MfaSetupBody>> {
    let user = app.user(&needs_session(&caller)?.user_id).await?;
    let setup = app.start_mfa_enrolment(&caller.actor, &user).await?;
    Ok(Json(MfaSetupBody {
        secret: setup.secret.expose_secret().to_owned(),
        otpauth_uri: setup.otpauth_uri.expose_secret().to_owned(),
        qr_svg: setup.qr_svg.expose_secret().to_owned(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    #[schema(value_type = String)]
    pub code: SecretString,
}

impl std::fmt::Debug for CodeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeRequest(…)")
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolledBody {
    #[serde(flatten)]
    pub signed_in: SignedInBody,
    /// Each works once instead of a code. Shown only now: store them somewhere safe.
    pub recovery_codes: Vec<String>,
}

fn shown(codes: Vec<SecretString>) -> Vec<String> {
    codes.iter().map(|c| c.expose_secret().to_owned()).collect()
}

/// Confirms enrolment with a first code. The session is replaced by a new one (new cookie
/// and CSRF token) that counts as MFA-checked; recovery codes are shown this once.
#[utoipa::path(post, path = "/api/v1/auth/mfa/confirm", tag = "auth", request_body = CodeRequest,
    responses((status = 200, body = EnrolledBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn confirm_enrolment(
    SignedIn(caller): SignedIn,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<CodeRequest>,
) -> ApiResult<Response> {
    let session = needs_session(&caller)?;
    let (signed, codes) = app
        .confirm_mfa_enrolment(&caller.actor, session, req.code)
        .await?;
    session_response(&app, signed, |signed_in| EnrolledBody {
        signed_in,
        recovery_codes: shown(codes),
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpRequest {
    #[schema(value_type = Option<String>)]
    pub code: Option<SecretString>,
    #[schema(value_type = Option<String>)]
    pub recovery_code: Option<SecretString>,
}

impl std::fmt::Debug for StepUpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepUpRequest(…)")
    }
}

/// Step-up: a fresh MFA check. The session is replaced by a new one (new cookie and CSRF
/// token) with which reveal, delete, purge, export, approvals and access changes work for
/// the policy's step-up window.
#[utoipa::path(post, path = "/api/v1/auth/mfa/verify", tag = "auth", request_body = StepUpRequest,
    responses((status = 200, body = SignedInBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn step_up(
    SignedIn(caller): SignedIn,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<StepUpRequest>,
) -> ApiResult<Response> {
    let session = needs_session(&caller)?;
    let factor = second_factor(req.code, req.recovery_code)?.ok_or_else(|| {
        keyward_core::Error::invalid("code_required", "send `code` or `recovery_code`")
    })?;
    let signed = app.step_up(&caller.actor, session, factor).await?;
    session_response(&app, signed, |body| body)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodesBody {
    pub recovery_codes: Vec<String>,
}

/// New recovery codes; the old ones stop working. Needs a recent MFA check.
#[utoipa::path(post, path = "/api/v1/auth/mfa/recovery-codes", tag = "auth",
    responses((status = 200, body = RecoveryCodesBody), (status = 403, body = ErrorBody)))]
pub async fn regenerate_recovery_codes(
    SteppedUp(caller, session): SteppedUp,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<RecoveryCodesBody>> {
    let codes = app
        .regenerate_recovery_codes(&caller.actor, &session.user_id)
        .await?;
    Ok(Json(RecoveryCodesBody {
        recovery_codes: shown(codes),
    }))
}

/// Removes a user's second factor (a lost phone) and ends their sessions; they enrol again
/// at their next sign-in.
#[utoipa::path(delete, path = "/api/v1/users/{id}/mfa", tag = "users", params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn reset_mfa(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    app.reset_mfa(auth.actor(), &super::users::user_id(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaPolicyBody {
    /// Roles whose users must have a second factor before doing anything.
    #[schema(value_type = Vec<String>)]
    pub required_roles: Vec<Role>,
    /// Minutes an MFA check counts for sensitive operations (1–60).
    pub step_up_minutes: u32,
}

impl From<MfaPolicy> for MfaPolicyBody {
    fn from(p: MfaPolicy) -> Self {
        Self {
            required_roles: p.required_roles,
            step_up_minutes: p.step_up_minutes,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/policies/mfa", tag = "users",
    responses((status = 200, body = MfaPolicyBody)), security(("bearer" = [])))]
pub async fn get_mfa_policy(
    _auth: Authorized<perm::UsersRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<MfaPolicyBody>> {
    Ok(Json(app.mfa_policy().await?.into()))
}

#[utoipa::path(put, path = "/api/v1/policies/mfa", tag = "users", request_body = MfaPolicyBody,
    responses((status = 200, body = MfaPolicyBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn set_mfa_policy(
    auth: Authorized<perm::AccessWrite>,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<MfaPolicyBody>,
) -> ApiResult<Json<MfaPolicyBody>> {
    let policy = MfaPolicy {
        required_roles: req.required_roles,
        step_up_minutes: req.step_up_minutes,
    };
    Ok(Json(app.set_mfa_policy(auth.actor(), policy).await?.into()))
}

//! `/api/v1/auth/…` (sign in and out) and `/api/v1/sessions` (admins see and end sessions).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use keyward_core::session::Session;
use keyward_core::throttle::Subject;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Authorized, ClientAddress, SignedIn, cookie_name, perm};
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::users::UserBody;
use keyward_app::App;
use keyward_app::identity::mfa::SecondFactor;
use keyward_app::identity::sessions::NewSession;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    pub username: String,
    #[schema(value_type = String)]
    pub password: SecretString,
    /// Six digits from the authenticator app, for a user with a second factor.
    #[schema(value_type = Option<String>)]
    pub code: Option<SecretString>,
    /// Instead of `code`: one of the recovery codes (each works once).
    #[schema(value_type = Option<String>)]
    pub recovery_code: Option<SecretString>,
}

impl std::fmt::Debug for SignInRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInRequest")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignedInBody {
    pub user: UserBody,
    pub session: SessionBody,
    /// Send as `X-CSRF-Token` with every state-changing request; shown only here (a new
    /// one comes with every new session, e.g. after an MFA check).
    pub csrf_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionBody {
    pub id: String,
    pub user_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub last_seen_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub mfa_at: Option<Timestamp>,
    pub source: Option<String>,
}

impl From<Session> for SessionBody {
    fn from(s: Session) -> Self {
        Self {
            id: s.public_id,
            user_id: s.user_id.to_string(),
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: s.expires_at,
            mfa_at: s.mfa_at,
            source: s.source,
        }
    }
}

/// `HttpOnly; SameSite=Strict; Path=/` always, `Secure` over HTTPS.
pub(crate) fn set_cookie(
    app: &App,
    value: &str,
    max_age_secs: i64,
) -> Result<HeaderValue, keyward_core::Error> {
    let secure = if app.secure_cookies { "; Secure" } else { "" };
    let mut header = HeaderValue::try_from(format!(
        "{}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{secure}",
        cookie_name(app.secure_cookies)
    ))
    .map_err(|_| keyward_core::Error::internal("cannot build the session cookie"))?;
    header.set_sensitive(true);
    Ok(header)
}

/// Signs in with a username and password (and, for a user with a second factor, a code);
/// answers with a session cookie and the CSRF token. A wrong password, an unknown user and a
/// disabled user get the same answer; a missing code is `mfa_required`, a wrong or reused
/// one `invalid_mfa_code`.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = SignInRequest,
    responses((status = 200, body = SignedInBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn sign_in(
    State(app): State<Arc<App>>,
    ClientAddress(source): ClientAddress,
    ApiJson(req): ApiJson<SignInRequest>,
) -> ApiResult<Response> {
    let factor = second_factor(req.code, req.recovery_code)?;
    let signed = app
        .sign_in(&req.username, req.password, factor, source)
        .await?;
    session_response(&app, signed, |body| body)
}

/// At most one of a TOTP code and a recovery code.
pub(super) fn second_factor(
    code: Option<SecretString>,
    recovery_code: Option<SecretString>,
) -> Result<Option<SecondFactor>, keyward_core::Error> {
    match (code, recovery_code) {
        (Some(_), Some(_)) => Err(keyward_core::Error::invalid(
            "one_second_factor",
            "send either `code` or `recovery_code`, not both",
        )),
        (Some(code), None) => Ok(Some(SecondFactor::Totp(code))),
        (None, Some(code)) => Ok(Some(SecondFactor::RecoveryCode(code))),
        (None, None) => Ok(None),
    }
}

/// The answer that hands a (new) session to the browser: the cookie, and a JSON body built
/// from [`SignedInBody`] by `body` (which may add fields, e.g. recovery codes).
pub(super) fn session_response<B: Serialize>(
    app: &App,
    signed: NewSession,
    body: impl FnOnce(SignedInBody) -> B,
) -> ApiResult<Response> {
    let cookie = set_cookie(
        app,
        signed.token.expose_secret(),
        signed
            .session
            .expires_at
            .duration_since(app.now())
            .as_secs()
            .max(0),
    )?;
    let base = SignedInBody {
        user: signed.user.into(),
        csrf_token: signed.csrf.expose_secret().to_owned(),
        session: signed.session.into(),
    };
    let mut response = Json(body(base)).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

fn cleared(app: &App, mut response: Response) -> ApiResult<Response> {
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(app, "", 0)?);
    Ok(response)
}

fn needs_session(caller: &super::auth::Caller) -> Result<&Session, keyward_core::Error> {
    caller.session.as_ref().ok_or_else(|| {
        keyward_core::Error::invalid("no_session", "this request was not made with a session")
    })
}

/// Ends this session.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn sign_out(
    SignedIn(caller): SignedIn,
    State(app): State<Arc<App>>,
) -> ApiResult<Response> {
    app.sign_out(&caller.actor, needs_session(&caller)?).await?;
    cleared(&app, StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndedBody {
    pub ended: u64,
}

/// Ends every session of the signed-in user, on every device.
#[utoipa::path(post, path = "/api/v1/auth/logout-all", tag = "auth",
    responses((status = 200, body = EndedBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn sign_out_everywhere(
    SignedIn(caller): SignedIn,
    State(app): State<Arc<App>>,
) -> ApiResult<Response> {
    let session = needs_session(&caller)?;
    let ended = app
        .end_user_sessions(&caller.actor, &session.user_id, "sign_out_everywhere")
        .await?;
    cleared(&app, Json(EndedBody { ended }).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmIBody {
    pub kind: String,
    pub id: String,
    pub name: String,
    pub role: String,
    pub session: Option<SessionBody>,
    /// `not_applicable` (a token), `enrolment_required` (set up MFA before anything else),
    /// `stale` (sensitive operations need a fresh MFA check) or `fresh`.
    pub mfa: String,
}

/// Who the caller is: a signed-in user (with the session) or a management token.
#[utoipa::path(get, path = "/api/v1/auth/session", tag = "auth",
    responses((status = 200, body = WhoAmIBody), (status = 401, body = ErrorBody)))]
pub async fn who_am_i(SignedIn(caller): SignedIn) -> Json<WhoAmIBody> {
    Json(WhoAmIBody {
        kind: caller.actor.kind.as_str().to_owned(),
        id: caller.actor.id,
        name: caller.actor.name,
        role: caller.actor.role.to_string(),
        session: caller.session.map(SessionBody::from),
        mfa: caller.actor.mfa.as_str().to_owned(),
    })
}

#[utoipa::path(get, path = "/api/v1/sessions", tag = "auth",
    responses((status = 200, body = Vec<SessionBody>)), security(("bearer" = [])))]
pub async fn list_sessions(
    _auth: Authorized<perm::UsersRead>,
    State(app): State<Arc<App>>,
) -> ApiResult<Json<Vec<SessionBody>>> {
    Ok(Json(
        app.sessions()
            .await?
            .into_iter()
            .map(SessionBody::from)
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/sessions/{id}", tag = "auth", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn end_session(
    auth: Authorized<perm::UsersWrite>,
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    app.end_session(auth.actor(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LockoutBody {
    /// `account` (a username as typed, lower-cased) or `source` (an address).
    pub kind: String,
    pub value: String,
    pub failures: u32,
    pub locked: bool,
    #[schema(value_type = String, format = DateTime)]
    pub blocked_until: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub last_failure: Timestamp,
}

/// Accounts and addresses whose sign-ins are delayed or locked after failures.
#[utoipa::path(get, path = "/api/v1/auth/lockouts", tag = "auth",
    responses((status = 200, body = Vec<LockoutBody>)), security(("bearer" = [])))]
pub async fn list_lockouts(
    _auth: Authorized<perm::UsersRead>,
    State(app): State<Arc<App>>,
) -> Json<Vec<LockoutBody>> {
    Json(
        app.lockouts()
            .await
            .into_iter()
            .map(|(subject, r)| {
                let (kind, value) = match subject {
                    Subject::Account(v) => ("account", v),
                    Subject::Source(v) => ("source", v),
                };
                LockoutBody {
                    kind: kind.to_owned(),
                    value,
                    failures: r.failures,
                    locked: r.locked,
                    blocked_until: r.blocked_until,
                    last_failure: r.last_failure,
                }
            })
            .collect(),
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiftLockoutRequest {
    /// `account` or `source`.
    pub kind: String,
    pub value: String,
}

/// Lifts a delay or lock early (audited).
#[utoipa::path(post, path = "/api/v1/auth/lockouts/lift", tag = "auth", request_body = LiftLockoutRequest,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn lift_lockout(
    auth: Authorized<perm::UsersWrite>,
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<LiftLockoutRequest>,
) -> ApiResult<StatusCode> {
    let subject = match req.kind.as_str() {
        "account" => Subject::Account(req.value.to_lowercase()),
        "source" => Subject::Source(req.value),
        _ => {
            return Err(keyward_core::Error::invalid(
                "invalid_kind",
                "kind is `account` or `source`",
            )
            .into());
        }
    };
    app.lift_lockout(auth.actor(), subject).await?;
    Ok(StatusCode::NO_CONTENT)
}

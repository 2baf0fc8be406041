//! Authentication and authorization, in one place.
//!
//! Handlers declare what they need in their signature — `Authorized<perm::KeysWrite>` —
//! and receive the [`Caller`] only if the check passed; there are no role checks inside
//! handlers. Today a caller is a management API token (`Authorization: Bearer kwm_…`);
//! sessions and users (with scoped grants) become further sources in [`authenticate`]
//! without touching any handler.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use keyward_core::access::{Permission, Reach};
use keyward_core::audit::{ActorKind, AuditOutcome};
use keyward_core::{Error, ErrorKind};

use super::error::ApiError;
use keyward_app::approvals::ApprovalUse;
use keyward_app::{Actor, App};
use keyward_core::mfa::MfaStanding;

/// Who may call a route, as the route table (`crate::routes`) declares it. An API handler's
/// extractors enforce it; a page's guard layer (`ui::guard`) enforces it for pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Anyone: health, metrics, sign-in, the OpenAPI document.
    Public,
    /// Any authenticated caller (sign-out, who am I, one's own MFA enrolment). On a page,
    /// one the MFA policy lets work: someone who must enrol a second factor first is sent
    /// to enrolment.
    SignedIn,
    /// Any signed-in person, even one the MFA policy still asks to enrol a second factor:
    /// the enrolment pages and signing out.
    Enrolling,
    /// A signed-in person with a recent MFA check (a session, not a token).
    SteppedUp,
    /// The permission — with its scope, the MFA policy and step-up where it needs one.
    Permission(Permission),
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Actor,
    /// The session, when the caller signed in (rather than sending a token).
    pub session: Option<keyward_core::session::Session>,
}

/// Compile-time name of a permission, for use in handler signatures.
pub trait RequiredPermission: Send + Sync + 'static {
    const PERMISSION: Permission;
}

/// Permission markers, one per [`Permission`].
pub mod perm {
    use super::{Permission, RequiredPermission};

    macro_rules! markers {
        ($($name:ident),+) => {$(
            #[derive(Debug)]
            pub struct $name;
            impl RequiredPermission for $name {
                const PERMISSION: Permission = Permission::$name;
            }
        )+};
    }
    markers!(
        CatalogRead,
        CatalogWrite,
        KeysRead,
        KeysWrite,
        KeysRotate,
        KeysDelete,
        KeysPurge,
        AppTokensRead,
        AppTokensWrite,
        KeysReveal,
        AuditRead,
        AuditExport,
        UsersRead,
        UsersWrite,
        AccessWrite,
        ApprovalsDecide,
        VaultBackup
    );
}

/// Any authenticated caller, whatever their role (for signing out and "who am I").
#[derive(Debug)]
pub struct SignedIn(pub Caller);

impl FromRequestParts<Arc<App>> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        authenticate(parts, app).await.map(Self)
    }
}

/// A signed-in person (a session, not a token) who passed an MFA check within the step-up
/// window: for changes to one's own second factor.
#[derive(Debug)]
pub struct SteppedUp(pub Caller, pub keyward_core::session::Session);

impl FromRequestParts<Arc<App>> for SteppedUp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let caller = authenticate(parts, app).await?;
        let Some(session) = caller.session.clone() else {
            return Err(Error::invalid("no_session", "this needs a signed-in session").into());
        };
        if let Some(refusal) = caller.actor.mfa.refusal(true) {
            return Err(deny(app, parts, &caller, refusal, None).await.into());
        }
        Ok(Self(caller, session))
    }
}

/// Proof that the caller holds permission `P`.
#[derive(Debug)]
pub struct Authorized<P> {
    pub caller: Caller,
    _permission: PhantomData<P>,
}

impl<P> Authorized<P> {
    pub fn actor(&self) -> &Actor {
        &self.caller.actor
    }
}

impl<P: RequiredPermission> FromRequestParts<Arc<App>> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let caller = authenticate(parts, app).await?;
        authorize(app, parts, &caller, P::PERMISSION).await?;
        Ok(Self {
            caller,
            _permission: PhantomData,
        })
    }
}

/// Whether `caller` may use `permission` somewhere (the object's scope is the use case's to
/// check) with the MFA standing it needs; a refusal is audited (`access.denied`) before
/// it is returned. The one check behind every permission guard, API and page.
pub(crate) async fn authorize(
    app: &App,
    parts: &Parts,
    caller: &Caller,
    permission: Permission,
) -> Result<(), Error> {
    if caller.actor.access.reach(permission) == Reach::Nowhere {
        let denied = Error::new(
            ErrorKind::Forbidden,
            "forbidden",
            format!(
                "your role and grants do not allow this (`{}` is required{})",
                permission.as_str(),
                if permission.scoped() {
                    ""
                } else {
                    " everywhere"
                }
            ),
        );
        return Err(deny(app, parts, caller, denied, Some(permission)).await);
    }
    if let Some(refusal) = caller.actor.mfa.refusal(permission.needs_step_up()) {
        return Err(deny(app, parts, caller, refusal, Some(permission)).await);
    }
    Ok(())
}

/// A caller refused for where they connect from (the allowlists of their user, role or
/// token); audited like any refusal.
async fn refuse_network(app: &App, parts: &Parts, actor: &Actor, refusal: Error) -> Error {
    let caller = Caller {
        actor: actor.clone(),
        session: None,
    };
    deny(app, parts, &caller, refusal, None).await
}

/// Audits a refused request (`access.denied`, with why) and turns the refusal into the
/// answer — or into the audit failure, which refuses too.
async fn deny(
    app: &App,
    parts: &Parts,
    caller: &Caller,
    refusal: Error,
    permission: Option<Permission>,
) -> Error {
    let recorded = app
        .record_audit(
            &caller.actor,
            "access.denied",
            None,
            AuditOutcome::Denied,
            serde_json::json!({
                "permission": permission,
                "reason": refusal.code,
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
            }),
        )
        .await;
    match recorded {
        Ok(()) => refusal,
        Err(e) => e,
    }
}

async fn authenticate(parts: &Parts, app: &App) -> Result<Caller, ApiError> {
    authenticate_with(parts, app, None).await
}

/// A page's caller: a session only (pages never take tokens), its CSRF token — for a form
/// post — from the form's `csrf` field.
pub(crate) async fn authenticate_page(
    parts: &Parts,
    app: &App,
    form_csrf: Option<&str>,
) -> Result<Caller, ApiError> {
    let source = source_of(parts, app)?;
    let Some(cookie) = session_cookie(parts, app.secure_cookies) else {
        return Err(Error::new(
            ErrorKind::Unauthenticated,
            "unauthenticated",
            "sign in first",
        )
        .into());
    };
    authenticate_session(parts, app, cookie, source, form_csrf).await
}

async fn authenticate_with(
    parts: &Parts,
    app: &App,
    form_csrf: Option<&str>,
) -> Result<Caller, ApiError> {
    let source = source_of(parts, app)?;
    if !parts.headers.contains_key(AUTHORIZATION)
        && let Some(cookie) = session_cookie(parts, app.secure_cookies)
    {
        return authenticate_session(parts, app, cookie, source, form_csrf).await;
    }
    let unauthenticated =
        |message: &str| Error::new(ErrorKind::Unauthenticated, "unauthenticated", message);
    let presented = match parts.headers.get(AUTHORIZATION) {
        None => Err(unauthenticated(
            "sign in, or send a management token as `Authorization: Bearer kwm_…`",
        )),
        Some(header) => header
            .to_str()
            .map_err(|_| unauthenticated("the Authorization header is not valid text"))
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .ok_or_else(|| {
                        unauthenticated("the Authorization header must use the Bearer scheme")
                    })
            }),
    };
    let record = match presented {
        Ok(token) => app.authenticate_token(token.trim()).await,
        Err(e) => Err(e),
    };
    match record {
        Ok(record) => {
            let mut actor = Actor {
                kind: ActorKind::Token,
                id: record.id.to_string(),
                name: format!("token:{} ({})", record.name, record.id),
                role: record.role,
                source,
                access: keyward_core::access::Access::default(),
                approval: approval_use(parts)?,
                mfa: MfaStanding::NotApplicable,
            };
            actor.access = match app.token_access(&record, source).await {
                Ok(access) => access,
                Err(refusal) => {
                    return Err(refuse_network(app, parts, &actor, refusal).await.into());
                }
            };
            Ok(Caller {
                actor,
                session: None,
            })
        }
        Err(e) => {
            // A request that presented nothing is not worth an entry; a wrong credential is.
            if parts.headers.contains_key(AUTHORIZATION) && e.kind == ErrorKind::Unauthenticated {
                app.record_audit(
                    &Actor::anonymous("anonymous", source),
                    "auth.token",
                    None,
                    AuditOutcome::Denied,
                    serde_json::json!({"error": e.code, "path": parts.uri.path()}),
                )
                .await?;
            }
            Err(e.into())
        }
    }
}

/// The session cookie's name: `__Host-` (Secure, whole host, path `/`) over HTTPS.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-kw_session"
    } else {
        "kw_session"
    }
}

pub(crate) fn session_cookie(parts: &Parts, secure: bool) -> Option<&str> {
    let name = cookie_name(secure);
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A session cookie authenticates only same-origin requests, and a state-changing one only
/// with the session's CSRF token in `X-CSRF-Token` (synchronizer token), after the
/// browser's own `Sec-Fetch-Site` and `Origin` say it came from this site.
async fn authenticate_session(
    parts: &Parts,
    app: &App,
    cookie: &str,
    source: Option<std::net::IpAddr>,
    form_csrf: Option<&str>,
) -> Result<Caller, ApiError> {
    let (session, user) = match app.session_user(cookie).await {
        Ok(found) => found,
        Err(e) => {
            if e.kind == ErrorKind::Unauthenticated {
                app.record_audit(
                    &Actor::anonymous("anonymous", source),
                    "auth.session",
                    None,
                    AuditOutcome::Denied,
                    serde_json::json!({"error": e.code, "path": parts.uri.path()}),
                )
                .await?;
            }
            return Err(e.into());
        }
    };
    let mut actor = Actor::for_user(&user, source);
    actor.approval = approval_use(parts)?;
    actor.access = match app.user_access(&user, source).await {
        Ok(access) => access,
        Err(refusal) => return Err(refuse_network(app, parts, &actor, refusal).await.into()),
    };
    if !parts.method.is_safe()
        && let Some(problem) = csrf_problem(parts, &session, form_csrf)
    {
        app.record_audit(
                &actor,
                "access.csrf",
                None,
                AuditOutcome::Denied,
                serde_json::json!({"problem": problem, "method": parts.method.as_str(), "path": parts.uri.path()}),
            )
            .await?;
        return Err(Error::new(
            ErrorKind::Forbidden,
            "csrf_failed",
            format!("request refused: {problem}"),
        )
        .into());
    }
    let policy = app.mfa_policy().await?;
    actor.mfa = if policy.step_up_fresh(session.mfa_at, app.now()) {
        MfaStanding::Fresh
    } else if !user.mfa_enabled && policy.required_for(user.role) {
        MfaStanding::EnrolmentRequired
    } else {
        MfaStanding::Stale {
            enrolled: user.mfa_enabled,
        }
    };
    Ok(Caller {
        actor,
        session: Some(session),
    })
}

/// Why a state-changing cookie request is not trusted, if it is not.
fn csrf_problem(
    parts: &Parts,
    session: &keyward_core::session::Session,
    form_token: Option<&str>,
) -> Option<&'static str> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Some("it came from another site (Sec-Fetch-Site)");
    }
    if let Some(origin) = header("origin") {
        let host = header("host").unwrap_or_default();
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if origin_host != host {
            return Some("its Origin is not this server");
        }
    }
    match header("x-csrf-token").or(form_token) {
        None => Some("the CSRF token is missing (X-CSRF-Token, or the form's `csrf` field)"),
        Some(token) if !App::csrf_matches(session, token) => Some("the CSRF token is wrong"),
        Some(_) => None,
    }
}

/// `X-Keyward-Approval: request` (with `X-Keyward-Reason`) or `X-Keyward-Approval: apr_…`.
fn approval_use(parts: &Parts) -> Result<Option<ApprovalUse>, ApiError> {
    let header = |name: &str| parts.headers.get(name).map(|v| v.to_str());
    let malformed = |what: &str| {
        ApiError::from(Error::new(
            ErrorKind::Malformed,
            "invalid_approval_header",
            format!("X-Keyward-Approval must be `request` or an approval id ({what})"),
        ))
    };
    let Some(value) = header("x-keyward-approval") else {
        return Ok(None);
    };
    let value = value.map_err(|_| malformed("not text"))?.trim();
    if value.eq_ignore_ascii_case("request") {
        let reason = match header("x-keyward-reason") {
            Some(Ok(reason)) => reason.to_owned(),
            Some(Err(_)) => return Err(malformed("the reason is not text")),
            None => String::new(),
        };
        return Ok(Some(ApprovalUse::Request(reason)));
    }
    value
        .parse()
        .map(|id| Some(ApprovalUse::Use(id)))
        .map_err(|_| malformed("not an approval id"))
}

/// The client's address: the connection's peer, or what a trusted proxy forwarded.
/// A malformed `X-Forwarded-For` from a trusted proxy is a 400.
pub fn source_of(parts: &Parts, app: &App) -> Result<Option<std::net::IpAddr>, ApiError> {
    let Some(peer) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
    else {
        return Ok(None);
    };
    super::client_ip::resolve(peer, &parts.headers, &app.trusted_proxies)
        .map(Some)
        .map_err(|_| {
            ApiError::from(Error::new(
                ErrorKind::Malformed,
                "invalid_forwarded_for",
                "X-Forwarded-For is not a comma-separated list of IP addresses",
            ))
        })
}

/// The client's address as an extractor (for handlers that need it without a caller).
#[derive(Debug)]
pub struct ClientAddress(pub Option<std::net::IpAddr>);

impl FromRequestParts<Arc<App>> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        source_of(parts, app).map(Self)
    }
}

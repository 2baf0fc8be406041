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
use keyward_core::access::Permission;
use keyward_core::audit::{ActorKind, AuditOutcome};
use keyward_core::{Error, ErrorKind};

use super::error::ApiError;
use crate::app::{Actor, App};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Actor,
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
        KeysDelete,
        KeysPurge,
        AppTokensRead,
        AppTokensWrite,
        AuditRead,
        UsersRead,
        UsersWrite
    );
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
        if !caller.actor.role.allows(P::PERMISSION) {
            let denied = Error::new(
                ErrorKind::Forbidden,
                "forbidden",
                format!(
                    "the {} role may not do this ({:?} is required)",
                    caller.actor.role,
                    P::PERMISSION
                ),
            );
            app.record_audit(
                &caller.actor,
                "access.denied",
                None,
                AuditOutcome::Denied,
                serde_json::json!({
                    "permission": P::PERMISSION,
                    "method": parts.method.as_str(),
                    "path": parts.uri.path(),
                }),
            )
            .await?;
            return Err(denied.into());
        }
        Ok(Self {
            caller,
            _permission: PhantomData,
        })
    }
}

async fn authenticate(parts: &Parts, app: &App) -> Result<Caller, ApiError> {
    let source = source_of(parts);
    let unauthenticated =
        |message: &str| Error::new(ErrorKind::Unauthenticated, "unauthenticated", message);
    let presented = match parts.headers.get(AUTHORIZATION) {
        None => Err(unauthenticated(
            "send a management token as `Authorization: Bearer kwm_…`",
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
        Ok(record) => Ok(Caller {
            actor: Actor {
                kind: ActorKind::Token,
                id: record.id.to_string(),
                name: format!("token:{} ({})", record.name, record.id),
                role: record.role,
                source,
            },
        }),
        Err(e) => {
            // A request that presented nothing is not worth an entry; a wrong credential is.
            if parts.headers.contains_key(AUTHORIZATION) && e.kind == ErrorKind::Unauthenticated {
                let actor = Actor {
                    kind: ActorKind::Anonymous,
                    id: String::new(),
                    name: "anonymous".into(),
                    role: keyward_core::access::Role::Viewer,
                    source,
                };
                app.record_audit(
                    &actor,
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

/// The client's address as the connection saw it.
pub fn source_of(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

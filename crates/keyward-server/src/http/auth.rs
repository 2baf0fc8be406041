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
        AppTokensWrite
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
            return Err(Error::new(
                ErrorKind::Forbidden,
                "forbidden",
                format!(
                    "the {} role may not do this ({:?} is required)",
                    caller.actor.role,
                    P::PERMISSION
                ),
            )
            .into());
        }
        Ok(Self {
            caller,
            _permission: PhantomData,
        })
    }
}

async fn authenticate(parts: &Parts, app: &App) -> Result<Caller, ApiError> {
    let unauthenticated = |message: &str| {
        ApiError::from(Error::new(
            ErrorKind::Unauthenticated,
            "unauthenticated",
            message,
        ))
    };
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        unauthenticated("send a management token as `Authorization: Bearer kwm_…`")
    })?;
    let value = header
        .to_str()
        .map_err(|_| unauthenticated("the Authorization header is not valid text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| unauthenticated("the Authorization header must use the Bearer scheme"))?;
    let record = app.authenticate_token(token.trim()).await?;
    Ok(Caller {
        actor: Actor {
            name: format!("token:{} ({})", record.name, record.id),
            role: record.role,
        },
    })
}

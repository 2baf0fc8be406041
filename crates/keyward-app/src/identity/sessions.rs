//! Sign-in sessions as use cases: sign in (a fresh session every time), resolve a cookie to
//! its user, sign out here or everywhere, and let admins list and end sessions.

use keyward_core::audit::AuditOutcome;
use keyward_core::id::UserId;
use keyward_core::session::Session;
use keyward_core::user::User;
use keyward_core::{Error, ErrorKind, Timestamp};
use keyward_crypto::token;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::{Change, Subject};
use keyward_core::access::Permission;

/// A second factor as presented.
#[derive(Debug)]
pub enum SecondFactor {
    /// Six digits from the authenticator app.
    Totp(SecretString),
    /// One of the recovery codes (each works once).
    RecoveryCode(SecretString),
}

/// What a successful sign-in hands to the browser, once.
#[derive(Debug)]
pub struct NewSession {
    pub session: Session,
    pub user: User,
    /// The cookie's value.
    pub token: SecretString,
    /// Echo as `X-CSRF-Token` on every state-changing request.
    pub csrf: SecretString,
}

/// `last_seen_at` is written at most this often per session.
const TOUCH_EVERY_SECS: i128 = 60;

fn session_ended() -> Error {
    Error::new(
        ErrorKind::Unauthenticated,
        "session_expired",
        "the session has ended; sign in again",
    )
}

impl App {
    /// Checks the credentials — and the second factor, for a user who has one — and opens
    /// a new session (never reusing an old id).
    pub async fn sign_in(
        &self,
        username: &str,
        secret: SecretString,
        factor: Option<SecondFactor>,
        source: Option<std::net::IpAddr>,
    ) -> Result<NewSession, Error> {
        let user = self.check_sign_in(username, secret, source).await?;
        let actor = Actor::for_user(&user, source);
        if let Err(refused) = self.user_access(&user, source).await {
            self.record_audit(
                &actor,
                "auth.login",
                Some(format!("user:{}", user.id)),
                AuditOutcome::Denied,
                json!({"reason": refused.code}),
            )
            .await?;
            return Err(refused);
        }
        let mfa_at = if user.mfa_enabled {
            let Some(factor) = factor else {
                self.record_audit(
                    &actor,
                    "auth.mfa",
                    Some(format!("user:{}", user.id)),
                    AuditOutcome::Denied,
                    json!({"reason": "code_missing"}),
                )
                .await?;
                return Err(Error::new(
                    ErrorKind::Unauthenticated,
                    "mfa_required",
                    "this account has a second factor: send the code from the authenticator app, or a recovery code",
                ));
            };
            self.check_second_factor(&actor, &user, factor).await?;
            Some(self.now())
        } else {
            None
        };
        let now = self.now();
        let (mut session, token, csrf) = self.issue_session(&user, source);
        session.mfa_at = mfa_at;
        session.expires_at = now
            .checked_add(self.session_policy.absolute)
            .unwrap_or(Timestamp::MAX);
        self.apply(
            &actor,
            Change::own(
                "session.create",
                format!("session:{}", session.public_id),
                json!({"expires_at": session.expires_at.to_string(), "mfa": mfa_at.is_some()}),
            ),
            self.store.insert_session(&session),
        )
        .await?;
        Ok(NewSession {
            session,
            user,
            token,
            csrf,
        })
    }

    /// A fresh session record for `user` (new id, secret and CSRF token), created now.
    fn issue_session(
        &self,
        user: &User,
        source: Option<std::net::IpAddr>,
    ) -> (Session, SecretString, SecretString) {
        let now = self.now();
        let issued = token::issue(token::SESSION_PREFIX, &*self.random);
        let csrf = self.audit.session_csrf(&issued.token);
        let csrf_hash = token::secret_hash(csrf.expose_secret());
        let session = Session {
            public_id: issued.public_id,
            secret_hash: issued.secret_hash,
            csrf_hash,
            user_id: user.id.clone(),
            created_at: now,
            last_seen_at: now,
            expires_at: now,
            mfa_at: None,
            source: source.map(|ip| ip.to_string()),
        };
        (session, issued.token, csrf)
    }

    /// Swaps `old` for a new session after an MFA check: new id, cookie and CSRF token, the
    /// same absolute end. A cookie copied before the check opens nothing afterwards.
    pub(crate) async fn renew_session(
        &self,
        actor: &Actor,
        old: &Session,
        user: &User,
    ) -> Result<NewSession, Error> {
        let (mut session, token, csrf) = self.issue_session(user, actor.source);
        session.created_at = old.created_at;
        session.expires_at = old.expires_at;
        session.mfa_at = Some(self.now());
        self.apply(
            actor,
            Change::own(
                "session.renew",
                format!("session:{}", old.public_id),
                json!({"new_session": session.public_id, "reason": "mfa"}),
            ),
            async {
                if self.store.replace_session(&old.public_id, &session).await? {
                    Ok(())
                } else {
                    Err(session_ended())
                }
            },
        )
        .await?;
        Ok(NewSession {
            session,
            user: user.clone(),
            token,
            csrf,
        })
    }

    /// The live session and its user for a cookie value, or `session_expired` /
    /// `unauthenticated`. Ends sessions that ran out or whose user was disabled.
    pub async fn session_user(&self, presented: &str) -> Result<(Session, User), Error> {
        let invalid = || {
            Error::new(
                ErrorKind::Unauthenticated,
                "unauthenticated",
                "the session cookie is not valid; sign in again",
            )
        };
        let parsed = token::parse(token::SESSION_PREFIX, presented).ok_or_else(invalid)?;
        let session = self
            .store
            .session(&parsed.public_id)
            .await?
            .filter(|s| parsed.matches(&s.secret_hash))
            .ok_or_else(invalid)?;
        let now = self.now();
        if !session.alive_at(now, &self.session_policy) {
            self.store.delete_session(&session.public_id).await?;
            return Err(session_ended());
        }
        let user = match self.store.user(&session.user_id).await? {
            Some(user) if !user.disabled => user,
            _ => {
                self.store.delete_session(&session.public_id).await?;
                return Err(session_ended());
            }
        };
        if now.duration_since(session.last_seen_at).as_secs() as i128 >= TOUCH_EVERY_SECS {
            self.store.touch_session(&session.public_id, now).await?;
        }
        Ok((session, user))
    }

    /// The CSRF token of the session behind `cookie` — for server-rendered forms, which
    /// need it on every page (it is derived from the cookie, see `AuditKeys::session_csrf`).
    pub fn csrf_for_cookie(&self, cookie: &str) -> SecretString {
        self.audit
            .session_csrf(&SecretString::from(cookie.to_owned()))
    }

    /// Whether `presented` is this session's CSRF token.
    pub fn csrf_matches(session: &Session, presented: &str) -> bool {
        token::secret_matches(presented, &session.csrf_hash)
    }

    pub async fn sign_out(&self, actor: &Actor, session: &Session) -> Result<(), Error> {
        self.apply(
            actor,
            Change::own(
                "session.end",
                format!("session:{}", session.public_id),
                json!({"reason": "sign_out"}),
            ),
            self.store.delete_session(&session.public_id),
        )
        .await
        .map(drop)
    }

    /// Ends every session of `user_id` (sign out everywhere, disabling, MFA reset).
    pub async fn end_user_sessions(
        &self,
        actor: &Actor,
        user_id: &UserId,
        reason: &str,
    ) -> Result<u64, Error> {
        self.apply(
            actor,
            Change::own(
                "session.end_all",
                format!("user:{user_id}"),
                json!({"reason": reason}),
            ),
            self.store.delete_user_sessions(user_id),
        )
        .await
    }

    pub async fn sessions(&self) -> Result<Vec<Session>, Error> {
        let now = self.now();
        Ok(self
            .store
            .sessions(now)
            .await?
            .into_iter()
            .filter(|s| s.alive_at(now, &self.session_policy))
            .collect())
    }

    /// An admin ends someone's session.
    pub async fn end_session(&self, actor: &Actor, public_id: &str) -> Result<(), Error> {
        let ended = self
            .apply(
                actor,
                Change::new(
                    "session.end",
                    Subject::vault(format!("session:{public_id}")),
                    Permission::UsersWrite,
                    json!({"reason": "ended_by_admin"}),
                ),
                self.store.delete_session(public_id),
            )
            .await?;
        if ended {
            Ok(())
        } else {
            Err(Error::not_found(
                "session_not_found",
                "there is no such session",
            ))
        }
    }

    /// Deletes sessions past their limits; run periodically.
    pub async fn prune_sessions(&self) -> Result<u64, Error> {
        let now = self.now();
        let idle_before = now
            .checked_sub(self.session_policy.idle)
            .unwrap_or(Timestamp::MIN);
        self.store.prune_sessions(now, idle_before).await
    }
}

//! Human users: creating and disabling them, and checking a password at sign-in (with the
//! capped hasher of [`super::passwords`]).

use keyward_core::audit::{ActorKind, AuditOutcome};
use keyward_core::id::UserId;
use keyward_core::throttle::{Attempts, Subject};
use keyward_core::user::{User, check_password, validate_username};
use keyward_core::{Error, ErrorKind, label};
use secrecy::SecretString;
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::{Change, Subject as ChangeSubject};
use keyward_core::access::Permission;

/// Who a sign-in attempt counts against: the account as typed, and the client's address.
pub(crate) fn attempt_subjects(account: &str, source: Option<std::net::IpAddr>) -> Vec<Subject> {
    let mut subjects = vec![Subject::Account(account.to_lowercase())];
    subjects.extend(source.map(|ip| Subject::Source(ip.to_string())));
    subjects
}

impl App {
    /// `429 too_many_attempts` (audited under `action`) while any of `subjects` is delayed
    /// or locked; checked before any password or code is looked at.
    pub(crate) async fn refuse_if_throttled(
        &self,
        subjects: &[Subject],
        actor: &Actor,
        action: &str,
    ) -> Result<(), Error> {
        let now = self.now();
        let Err(refusal) = self.with_attempts(|a| a.check(subjects, now)) else {
            return Ok(());
        };
        self.record_audit(
            actor,
            action,
            None,
            AuditOutcome::Denied,
            json!({"reason": if refusal.locked { "locked" } else { "delayed" },
                   "retry_after_s": refusal.retry_after.as_secs()}),
        )
        .await?;
        Err(Error::limited(
            "too_many_attempts",
            "too many failed attempts; wait before trying again",
            refusal.retry_after.unsigned_abs(),
        ))
    }

    /// Counts a wrong password or code against `subjects`; new locks are audited.
    pub(crate) async fn count_failure(&self, subjects: &[Subject]) -> Result<(), Error> {
        let now = self.now();
        let locked = self.with_attempts(|a| a.failure(subjects, now, &self.throttle));
        for subject in locked {
            self.record_audit(
                &Actor::system("brute-force-protection"),
                "auth.lockout",
                None,
                AuditOutcome::Success,
                json!({"subject": subject}),
            )
            .await?;
        }
        Ok(())
    }

    /// A whole sign-in (or second-factor check) passed: the account's count starts over.
    pub(crate) fn sign_in_succeeded(&self, subjects: &[Subject]) {
        if let Some(account) = subjects.first() {
            self.with_attempts(|a| a.success(account));
        }
    }

    /// Runs `f` on the failure counts (a short, non-async critical section).
    pub fn with_attempts<T>(&self, f: impl FnOnce(&mut Attempts) -> T) -> T {
        let mut attempts = self
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut attempts)
    }

    /// Accounts and addresses delayed or locked now.
    pub fn lockouts(&self) -> Vec<(Subject, keyward_core::throttle::Record)> {
        let now = self.now();
        self.with_attempts(|a| {
            a.forget_old(now, &self.throttle);
            a.blocked(now)
        })
    }

    /// Lifts a delay or lock early.
    pub async fn lift_lockout(&self, actor: &Actor, subject: Subject) -> Result<(), Error> {
        let target = match &subject {
            Subject::Account(name) => format!("account:{name}"),
            Subject::Source(ip) => format!("source:{ip}"),
        };
        let details = json!({"subject": subject});
        self.apply(
            actor,
            Change::new(
                "auth.lockout.lift",
                ChangeSubject::vault(target),
                Permission::UsersWrite,
                details,
            ),
            async {
                if self.with_attempts(|a| a.clear(&subject)) {
                    Ok(())
                } else {
                    Err(Error::not_found(
                        "lockout_not_found",
                        "that account or address is not delayed or locked",
                    ))
                }
            },
        )
        .await
    }
}

fn invalid_credentials() -> Error {
    Error::new(
        ErrorKind::Unauthenticated,
        "invalid_credentials",
        "the username or password is wrong",
    )
}

impl App {
    /// Creates a user after checking the name and the password policy.
    pub async fn add_user(
        &self,
        actor: &Actor,
        username: &str,
        secret: SecretString,
        role: keyward_core::access::Role,
    ) -> Result<User, Error> {
        use secrecy::ExposeSecret;
        let username = validate_username(username)?;
        if role == keyward_core::access::Role::Owner
            && actor.kind != ActorKind::System
            && actor.role != keyward_core::access::Role::Owner
        {
            return Err(Error::new(
                ErrorKind::Forbidden,
                "owner_required",
                "only an owner may create another owner",
            ));
        }
        check_password(secret.expose_secret(), &username)?;
        if self.store.user_by_username(&username).await?.is_some() {
            return Err(Error::conflict(
                "username_taken",
                "a user with this name already exists",
            ));
        }
        // Admitted before the (deliberately slow) password hash: a refused caller costs
        // nothing, and the approval is bound to the name and role, not to the new id.
        let id = UserId::generate(self.now(), &*self.random);
        let admitted = self
            .admit(
                actor,
                Change::new(
                    "user.create",
                    ChangeSubject::vault(format!("user:{id}")),
                    Permission::UsersWrite,
                    json!({"username": username, "role": role.as_str()}),
                )
                .needs_step_up()
                .access_change(
                    "users",
                    json!({"create": {"username": username, "role": role.as_str()}}),
                ),
            )
            .await?;
        let password_hash = self.passwords.hash(secret, self.random.clone()).await?;
        let now = self.now();
        let user = User {
            id,
            username,
            password_hash,
            role,
            disabled: false,
            created_at: now,
            created_by_id: actor.person_id(),
            mfa_enabled: false,
            allowed_networks: Vec::new(),
        };
        self.commit(actor, admitted, self.store.insert_user(&user))
            .await?;
        Ok(user)
    }

    pub async fn users(&self) -> Result<Vec<User>, Error> {
        self.store.users().await
    }

    pub async fn user(&self, id: &UserId) -> Result<User, Error> {
        self.store
            .user(id)
            .await?
            .ok_or_else(|| Error::not_found("user_not_found", format!("there is no user {id}")))
    }

    /// Disables or re-enables a user. A disabled user cannot sign in.
    pub async fn set_user_disabled(
        &self,
        actor: &Actor,
        id: &UserId,
        disabled: bool,
    ) -> Result<User, Error> {
        let user = self.user(id).await?;
        if user.disabled == disabled {
            return Ok(user);
        }
        if disabled && actor.kind == ActorKind::User && actor.id == id.as_str() {
            return Err(Error::conflict(
                "cannot_disable_self",
                "you cannot disable your own account",
            ));
        }
        let action = if disabled {
            "user.disable"
        } else {
            "user.enable"
        };
        let change = Change::new(
            action,
            ChangeSubject::vault(format!("user:{id}")),
            Permission::UsersWrite,
            json!({"username": user.username}),
        );
        self.apply(actor, change, self.store.set_user_disabled(id, disabled))
            .await?;
        if disabled {
            self.end_user_sessions(actor, id, "user_disabled").await?;
        }
        self.user(id).await
    }

    /// Checks a username and password. Unknown users, wrong passwords and disabled users get
    /// the same `invalid_credentials`, in the same time (an unknown name is checked against a
    /// dummy hash). Every attempt is audited.
    pub async fn check_sign_in(
        &self,
        username: &str,
        secret: SecretString,
        source: Option<std::net::IpAddr>,
    ) -> Result<User, Error> {
        let typed: String = label::printable(username).chars().take(64).collect();
        let subjects = attempt_subjects(&typed, source);
        let anonymous = Actor::anonymous(&typed, source);
        self.refuse_if_throttled(&subjects, &anonymous, "auth.login")
            .await?;
        let user = match validate_username(username) {
            Ok(name) => self.store.user_by_username(&name).await?,
            Err(_) => None,
        };
        let matched = self
            .passwords
            .verify(secret, user.as_ref().map(|u| u.password_hash.clone()))
            .await?;
        match user {
            Some(user) if matched && !user.disabled => {
                // With a second factor the sign-in is not over yet: the failure count is
                // reset only once the factor passed too, so a known password does not
                // buy unlimited guesses at the code.
                if !user.mfa_enabled {
                    self.sign_in_succeeded(&subjects);
                }
                let actor = Actor::for_user(&user, source);
                self.record_audit(
                    &actor,
                    "auth.login",
                    Some(format!("user:{}", user.id)),
                    AuditOutcome::Success,
                    json!({"second_factor_next": user.mfa_enabled}),
                )
                .await?;
                Ok(user)
            }
            found => {
                self.count_failure(&subjects).await?;
                let actor = anonymous;
                // Only the trail says why; the caller hears the same thing every time.
                let reason = match found {
                    None => "unknown_user",
                    Some(u) if u.disabled => "disabled",
                    Some(_) => "wrong_password",
                };
                self.record_audit(
                    &actor,
                    "auth.login",
                    None,
                    AuditOutcome::Denied,
                    json!({"reason": reason}),
                )
                .await?;
                Err(invalid_credentials())
            }
        }
    }
}

//! Human users: creating and disabling them, and checking a password at sign-in (with the
//! capped hasher of [`super::passwords`]).

use keyward_core::audit::{ActorKind, AuditOutcome};
use keyward_core::id::UserId;
use keyward_core::throttle::{Attempts, Record, Refusal, Subject};
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
        let Err(refusal) = self.throttle_check(subjects, now).await else {
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
        let locked = self.throttle_failure(subjects, now).await;
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
    pub(crate) async fn sign_in_succeeded(&self, subjects: &[Subject]) {
        if let Some(account) = subjects.first() {
            self.with_attempts(|a| a.success(account));
            self.forget_shared_attempts(account).await;
        }
    }

    /// Whether `subjects` may try now: by the counts every instance shares in Redis, or —
    /// without Redis, or while it cannot answer — by this instance's own.
    async fn throttle_check(
        &self,
        subjects: &[Subject],
        now: jiff::Timestamp,
    ) -> Result<(), Refusal> {
        if let Some(shared) = self.proxy.shared_limits() {
            let mut refusals = Vec::with_capacity(subjects.len());
            let mut answered = true;
            for subject in subjects {
                match shared.value(&shared_attempt_name(subject)).await {
                    Some(value) => refusals.extend(
                        value
                            .as_deref()
                            .and_then(Record::decode)
                            .and_then(|r| r.refusal(now)),
                    ),
                    None => {
                        answered = false;
                        break;
                    }
                }
            }
            if answered {
                return Refusal::worst(refusals.into_iter());
            }
        }
        self.with_attempts(|a| a.check(subjects, now))
    }

    /// Counts a failure here and, when Redis answers, in the count every instance shares
    /// (compare-and-set, so two instances counting at once both count); returns the
    /// subjects it locked.
    async fn throttle_failure(&self, subjects: &[Subject], now: jiff::Timestamp) -> Vec<Subject> {
        let local = self.with_attempts(|a| a.failure(subjects, now, &self.throttle));
        let Some(shared) = self.proxy.shared_limits() else {
            return local;
        };
        let mut locked = Vec::new();
        for subject in subjects {
            let limits = self.throttle.limits_for(subject);
            let name = shared_attempt_name(subject);
            let mut counted = false;
            for _ in 0..8 {
                let Some(current) = shared.value(&name).await else {
                    break;
                };
                let previous = current.as_deref().and_then(Record::decode);
                let record = Record::after_failure(previous, &limits, now);
                let keep = record
                    .keep_until(&limits)
                    .duration_since(now)
                    .unsigned_abs()
                    .max(std::time::Duration::from_secs(1));
                match shared
                    .swap_value(&name, current.as_deref(), Some(&record.encode()), keep)
                    .await
                {
                    Some(true) => {
                        if record.locked && !previous.is_some_and(|p| p.locked) {
                            locked.push(subject.clone());
                        }
                        counted = true;
                        break;
                    }
                    Some(false) => {}
                    None => break,
                }
            }
            if !counted {
                // Redis went away: this instance's own count decides meanwhile.
                return local;
            }
        }
        locked
    }

    /// Removes a subject's shared count; whether there was one (`false` without Redis).
    async fn forget_shared_attempts(&self, subject: &Subject) -> bool {
        let Some(shared) = self.proxy.shared_limits() else {
            return false;
        };
        let name = shared_attempt_name(subject);
        for _ in 0..8 {
            let Some(current) = shared.value(&name).await else {
                return false;
            };
            let Some(current) = current else {
                return false;
            };
            if shared
                .swap_value(
                    &name,
                    Some(&current),
                    None,
                    std::time::Duration::from_secs(1),
                )
                .await
                != Some(false)
            {
                return true;
            }
        }
        false
    }

    /// Runs `f` on the failure counts (a short, non-async critical section).
    pub fn with_attempts<T>(&self, f: impl FnOnce(&mut Attempts) -> T) -> T {
        let mut attempts = self
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut attempts)
    }

    /// Accounts and addresses delayed or locked now (as every instance counts them, when
    /// Redis answers).
    pub async fn lockouts(&self) -> Vec<(Subject, Record)> {
        let now = self.now();
        if let Some(shared) = self.proxy.shared_limits()
            && let Some(values) = shared.values("attempt:").await
        {
            let mut blocked: Vec<(Subject, Record)> = values
                .into_iter()
                .filter_map(|(name, value)| {
                    let subject = subject_of_shared_attempt(&name)?;
                    let record = Record::decode(&value)?;
                    (record.blocked_until > now).then_some((subject, record))
                })
                .collect();
            blocked.sort_by(|a, b| a.0.cmp(&b.0));
            return blocked;
        }
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
                let here = self.with_attempts(|a| a.clear(&subject));
                if self.forget_shared_attempts(&subject).await || here {
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

/// Where a subject's failure count lives among the values instances share.
fn shared_attempt_name(subject: &Subject) -> String {
    match subject {
        Subject::Account(name) => format!("attempt:account:{name}"),
        Subject::Source(address) => format!("attempt:source:{address}"),
    }
}

fn subject_of_shared_attempt(name: &str) -> Option<Subject> {
    let rest = name.strip_prefix("attempt:")?;
    if let Some(account) = rest.strip_prefix("account:") {
        Some(Subject::Account(account.to_owned()))
    } else {
        rest.strip_prefix("source:")
            .map(|address| Subject::Source(address.to_owned()))
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
                    self.sign_in_succeeded(&subjects).await;
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

//! Second factors as use cases: enrol an authenticator app (QR code and the secret for
//! typing in), confirm it with a first code (recovery codes are issued then), check a code
//! at sign-in and for step-up, issue new recovery codes, reset someone's factor, and the
//! policy that says who must have one.
//!
//! Codes are throttled like passwords (the same counts per account and address), and every
//! accepted code is a compare-and-set on its time step in the store, so a code is accepted
//! once — on any instance.

use keyward_core::access::{Permission, Role};
use keyward_core::audit::{ActorKind, AuditOutcome};
use keyward_core::id::UserId;
use keyward_core::mfa::{MfaEnrolment, MfaPolicy};
use keyward_core::session::Session;
use keyward_core::user::User;
use keyward_core::{Error, ErrorKind};
use keyward_crypto::totp::{self, TotpSecret};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::identity::sessions::NewSession;
pub use crate::identity::sessions::SecondFactor;
use crate::identity::users::attempt_subjects;
use crate::pipeline::{Change, Subject};

/// The vault setting that holds the MFA policy (JSON); absent means the default.
pub const MFA_POLICY_SETTING: &str = "mfa_policy";
/// How authenticator apps label the entry.
const ISSUER: &str = "Keyward";

/// What enrolment shows the user, once.
pub struct MfaSetup {
    /// Base32, for typing into the app by hand.
    pub secret: SecretString,
    pub otpauth_uri: SecretString,
    /// The URI as a QR code.
    pub qr_svg: SecretString,
}

impl std::fmt::Debug for MfaSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MfaSetup(…)")
    }
}

fn invalid_code() -> Error {
    Error::new(
        ErrorKind::Unauthenticated,
        "invalid_mfa_code",
        "the code is wrong, expired or already used",
    )
}

fn unix_secs(at: keyward_core::Timestamp) -> u64 {
    u64::try_from(at.as_second()).unwrap_or(0)
}

fn user_target(id: &UserId) -> String {
    format!("user:{id}")
}

/// What a user's MFA looks like to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaStatus {
    pub enrolled: bool,
    pub pending: bool,
    pub unused_recovery_codes: u32,
    pub required: bool,
}

impl App {
    pub async fn mfa_policy(&self) -> Result<MfaPolicy, Error> {
        self.stored_policy(MFA_POLICY_SETTING, MfaPolicy::default())
            .await
    }

    pub async fn set_mfa_policy(
        &self,
        actor: &Actor,
        policy: MfaPolicy,
    ) -> Result<MfaPolicy, Error> {
        let policy = policy.validate()?;
        let text = serde_json::to_string(&policy)
            .map_err(|e| Error::internal(format!("cannot store the MFA policy: {e}")))?;
        let details = json!({"required_roles": policy.required_roles,
                             "step_up_minutes": policy.step_up_minutes});
        let approval_target: String = "policy:mfa".into();
        let approval_payload = details.clone();
        self.apply(
            actor,
            Change::new(
                "policy.mfa.update",
                Subject::vault("policy:mfa"),
                Permission::AccessWrite,
                details,
            )
            .access_change(approval_target, approval_payload),
            self.store_policy(MFA_POLICY_SETTING, &text),
        )
        .await?;
        Ok(policy)
    }

    pub async fn mfa_status(&self, user: &User) -> Result<MfaStatus, Error> {
        let enrolment = self.store.mfa_enrolment(&user.id).await?;
        Ok(MfaStatus {
            enrolled: enrolment.as_ref().is_some_and(MfaEnrolment::confirmed),
            pending: enrolment.as_ref().is_some_and(|e| !e.confirmed()),
            unused_recovery_codes: self.store.unused_recovery_codes(&user.id).await?,
            required: self.mfa_policy().await?.required_for(user.role),
        })
    }

    /// Starts (or restarts) enrolment: a fresh secret, stored sealed and pending until the
    /// first code from the app confirms it.
    pub async fn start_mfa_enrolment(&self, actor: &Actor, user: &User) -> Result<MfaSetup, Error> {
        if user.mfa_enabled {
            return Err(Error::conflict(
                "mfa_already_enrolled",
                "you already have a second factor; ask an admin to reset it to enrol again",
            ));
        }
        let secret = TotpSecret::generate(&*self.random);
        let enrolment = MfaEnrolment {
            user_id: user.id.clone(),
            sealed_secret: secret.seal(&self.keyring.get(), &*self.random, user.id.as_str())?,
            kek_id: self.keyring.get().current_id().to_owned(),
            created_at: self.now(),
            confirmed_at: None,
            last_step: None,
        };
        let otpauth_uri = secret.otpauth_uri(ISSUER, &user.username)?;
        let qr_svg = SecretString::from(crate::identity::qr::svg(otpauth_uri.expose_secret())?);
        self.apply(
            actor,
            Change::own("mfa.enrol.start", user_target(&user.id), json!({})),
            self.store.put_pending_mfa(&enrolment),
        )
        .await?;
        Ok(MfaSetup {
            secret: secret.manual_entry(),
            otpauth_uri,
            qr_svg,
        })
    }

    /// Confirms enrolment with a code from the app; answers with the renewed session (the
    /// check counts as this session's MFA) and the recovery codes, shown this once.
    pub async fn confirm_mfa_enrolment(
        &self,
        actor: &Actor,
        session: &Session,
        code: SecretString,
    ) -> Result<(NewSession, Vec<SecretString>), Error> {
        let user = self.user(&session.user_id).await?;
        let subjects = attempt_subjects(&user.username, actor.source);
        self.refuse_if_throttled(&subjects, actor, "auth.mfa")
            .await?;
        let pending = self
            .store
            .mfa_enrolment(&user.id)
            .await?
            .filter(|e| !e.confirmed())
            .ok_or_else(|| {
                Error::conflict(
                    "mfa_not_started",
                    "there is no enrolment to confirm; start one first",
                )
            })?;
        let secret = TotpSecret::unseal(
            &self.keyring.get(),
            &pending.sealed_secret,
            user.id.as_str(),
        )?;
        let Some(step) = secret.matching_step(code.expose_secret(), unix_secs(self.now())) else {
            return Err(self
                .refuse_code(actor, &user, &subjects, "wrong_code")
                .await);
        };
        let codes = totp::recovery_codes(&*self.random);
        let hashes: Vec<Vec<u8>> = codes.iter().map(|(_, h)| h.clone()).collect();
        let now = self.now();
        self.apply(
            actor,
            Change::own(
                "mfa.enrol.confirm",
                user_target(&user.id),
                json!({"recovery_codes": hashes.len()}),
            ),
            async {
                if self.store.confirm_mfa(&user.id, step, now, &hashes).await? {
                    Ok(())
                } else {
                    Err(Error::conflict(
                        "mfa_not_started",
                        "the enrolment was confirmed or replaced meanwhile",
                    ))
                }
            },
        )
        .await?;
        self.sign_in_succeeded(&subjects).await;
        let user = self.user(&user.id).await?;
        let renewed = self.renew_session(actor, session, &user).await?;
        Ok((renewed, codes.into_iter().map(|(code, _)| code).collect()))
    }

    /// Checks a second factor for `user`: throttled and counted like a password, each TOTP
    /// step and each recovery code accepted once. Audited either way.
    pub async fn check_second_factor(
        &self,
        actor: &Actor,
        user: &User,
        factor: SecondFactor,
    ) -> Result<(), Error> {
        let subjects = attempt_subjects(&user.username, actor.source);
        self.refuse_if_throttled(&subjects, actor, "auth.mfa")
            .await?;
        let enrolment = self
            .store
            .mfa_enrolment(&user.id)
            .await?
            .filter(MfaEnrolment::confirmed)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Forbidden,
                    "mfa_enrolment_required",
                    "set up a second factor first",
                )
            })?;
        let now = self.now();
        let (method, refused) = match factor {
            SecondFactor::Totp(code) => {
                let secret = TotpSecret::unseal(
                    &self.keyring.get(),
                    &enrolment.sealed_secret,
                    user.id.as_str(),
                )?;
                match secret.matching_step(code.expose_secret(), unix_secs(now)) {
                    None => ("totp", Some("wrong_code")),
                    Some(step) if self.store.use_totp_step(&user.id, step).await? => ("totp", None),
                    Some(_) => ("totp", Some("replayed_code")),
                }
            }
            SecondFactor::RecoveryCode(code) => {
                let hash = totp::recovery_code_hash(code.expose_secret());
                if self.store.use_recovery_code(&user.id, &hash, now).await? {
                    ("recovery_code", None)
                } else {
                    ("recovery_code", Some("wrong_recovery_code"))
                }
            }
        };
        if let Some(reason) = refused {
            return Err(self.refuse_code(actor, user, &subjects, reason).await);
        }
        self.record_audit(
            actor,
            "auth.mfa",
            Some(user_target(&user.id)),
            AuditOutcome::Success,
            json!({"method": method}),
        )
        .await?;
        self.sign_in_succeeded(&subjects).await;
        Ok(())
    }

    /// Counts and audits a refused code; the caller hears only `invalid_mfa_code`.
    async fn refuse_code(
        &self,
        actor: &Actor,
        user: &User,
        subjects: &[keyward_core::throttle::Subject],
        reason: &str,
    ) -> Error {
        let recorded = async {
            self.count_failure(subjects).await?;
            self.record_audit(
                actor,
                "auth.mfa",
                Some(user_target(&user.id)),
                AuditOutcome::Denied,
                json!({"reason": reason}),
            )
            .await
        };
        match recorded.await {
            Ok(()) => invalid_code(),
            Err(e) => e,
        }
    }

    /// Step-up: a fresh MFA check for the signed-in user; the session is swapped for a new
    /// one that records the check.
    pub async fn step_up(
        &self,
        actor: &Actor,
        session: &Session,
        factor: SecondFactor,
    ) -> Result<NewSession, Error> {
        let user = self.user(&session.user_id).await?;
        self.check_second_factor(actor, &user, factor).await?;
        self.renew_session(actor, session, &user).await
    }

    /// New recovery codes (the old ones stop working), shown once.
    pub async fn regenerate_recovery_codes(
        &self,
        actor: &Actor,
        user_id: &UserId,
    ) -> Result<Vec<SecretString>, Error> {
        let codes = totp::recovery_codes(&*self.random);
        let hashes: Vec<Vec<u8>> = codes.iter().map(|(_, h)| h.clone()).collect();
        self.apply(
            actor,
            Change::own(
                "mfa.recovery_codes.replace",
                user_target(user_id),
                json!({"recovery_codes": hashes.len()}),
            ),
            self.store.replace_recovery_codes(user_id, &hashes),
        )
        .await?;
        Ok(codes.into_iter().map(|(code, _)| code).collect())
    }

    /// Removes someone's second factor (a lost phone) and ends all their sessions; they
    /// enrol again at their next sign-in. Only an owner resets an owner.
    pub async fn reset_mfa(&self, actor: &Actor, user_id: &UserId) -> Result<(), Error> {
        let user = self.user(user_id).await?;
        if user.role == Role::Owner && actor.kind != ActorKind::System && actor.role != Role::Owner
        {
            return Err(Error::new(
                ErrorKind::Forbidden,
                "owner_required",
                "only an owner may reset an owner's second factor",
            ));
        }
        let approval_target: String = user_target(user_id);
        let approval_payload = json!({"reset_mfa": true});
        self.apply(
            actor,
            Change::new(
                "mfa.reset",
                Subject::vault(user_target(user_id)),
                Permission::AccessWrite,
                json!({"username": user.username}),
            )
            .access_change(approval_target, approval_payload),
            async {
                if self.store.delete_mfa(user_id).await? {
                    Ok(())
                } else {
                    Err(Error::not_found(
                        "mfa_not_enrolled",
                        "this user has no second factor",
                    ))
                }
            },
        )
        .await?;
        self.end_user_sessions(actor, user_id, "mfa_reset").await?;
        Ok(())
    }
}

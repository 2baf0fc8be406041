//! First run: with no users yet, `keyward serve` prints a one-time setup token; whoever
//! presents it (through `/setup` in the UI or `POST /api/v1/setup`) creates the first
//! owner. The store keeps only the token's hash, in a vault setting that the first owner's
//! creation moves to `used` by compare-and-set, so two racing setups cannot both succeed.

use keyward_core::access::Role;
use keyward_core::user::User;
use keyward_core::{Error, ErrorKind};
use keyward_crypto::token;
use secrecy::{ExposeSecret, SecretString};

use crate::actor::Actor;
use crate::app::App;

/// The vault setting holding the setup token's hash (hex), or [`USED`].
const SETUP_SETTING: &str = "setup_token_hash";
const USED: &str = "used";
/// Shown in front of the token so people recognise it.
const PREFIX: &str = "kwsetup_";

fn refused() -> Error {
    Error::new(
        ErrorKind::Forbidden,
        "setup_refused",
        "setup is closed, or the setup token is wrong; it is printed by `keyward serve` while no user exists",
    )
}

impl App {
    /// A fresh setup token if the vault has no users yet (each start prints a new one and
    /// the previous stops working); `None` once someone has set Keyward up.
    pub async fn issue_setup_token(&self) -> Result<Option<SecretString>, Error> {
        if self.store.count_users().await? > 0 {
            return Ok(None);
        }
        let (secret, hash) = token::random_secret(&*self.random);
        let hash = hex::encode(&hash);
        let current = self.store.setting_or_insert(SETUP_SETTING, &hash).await?;
        if current == USED {
            return Ok(None);
        }
        if current != hash
            && !self
                .store
                .replace_setting(SETUP_SETTING, &current, &hash)
                .await?
        {
            return Err(Error::conflict(
                "setup_changed",
                "another instance issued a setup token at the same moment; restart to get a new one",
            ));
        }
        Ok(Some(SecretString::from(format!(
            "{PREFIX}{}",
            secret.expose_secret()
        ))))
    }

    /// Creates the first owner with the setup token. Audited; refused (and audited) with a
    /// wrong token or once set up.
    pub async fn complete_setup(
        &self,
        presented: &str,
        username: &str,
        password: SecretString,
        source: Option<std::net::IpAddr>,
    ) -> Result<User, Error> {
        let anonymous = Actor::anonymous(username, source);
        let stored = self.store.setting(SETUP_SETTING).await?;
        let valid = match (&stored, presented.trim().strip_prefix(PREFIX)) {
            (Some(hash), Some(secret)) if hash != USED => {
                hex::decode(hash).is_ok_and(|bytes| token::secret_matches(secret, &bytes))
            }
            _ => false,
        };
        if !valid || self.store.count_users().await? > 0 {
            self.record_audit(
                &anonymous,
                "setup",
                None,
                keyward_core::audit::AuditOutcome::Denied,
                serde_json::json!({"reason": if valid { "already_set_up" } else { "wrong_token" }}),
            )
            .await?;
            return Err(refused());
        }
        // Check name and password before the token is spent, so a typo does not lock
        // setup; give the token back if creating the owner fails anyway.
        let name = keyward_core::user::validate_username(username)?;
        keyward_core::user::check_password(password.expose_secret(), &name)?;
        let hash = stored.unwrap_or_default();
        if !self
            .store
            .replace_setting(SETUP_SETTING, &hash, USED)
            .await?
        {
            return Err(refused());
        }
        let created = self
            .add_user(&Actor::system("setup"), &name, password, Role::Owner)
            .await;
        if created.is_err() {
            self.store
                .replace_setting(SETUP_SETTING, USED, &hash)
                .await?;
        }
        created
    }
}

//! Master keys while running: every instance follows a rotation made by another process
//! without a restart, and says what it holds.
//!
//! - The key file (the file source) is re-read when it changes, so a key added on this
//!   machine (or copied here from the machine that rotated) is held within seconds; every
//!   key the vault has a record of is proved against its verifier first, and a file that
//!   fails is logged and ignored.
//! - The PKCS#11 token (the pkcs11 source) is searched for Keyward's keys every few seconds,
//!   so a key `keyward master-key rotate` generated there is held within seconds, proved
//!   the same way.
//! - When the vault's current master key changes (a rotation: it moves the change feed),
//!   the instance wraps new data keys with it from then on, provided it holds it.
//! - Every few seconds it reports its current key and every key it holds
//!   ([`InstanceReport`]): `keyward master-key rotate` waits until every live instance holds
//!   the new key before making it current (else they could not open what is rewrapped), and
//!   `retire` refuses a key a live instance still wraps new data with.

use keyward_core::Error;
use keyward_core::master_key::InstanceReport;
use keyward_crypto::{Keyring, KeyringFile};

use crate::app::App;

impl App {
    /// Re-reads a changed key file and follows the vault's current master key (see the
    /// module doc). A key file that cannot be used is logged and the keys held are kept.
    pub async fn follow_master_keys(&self) -> Result<(), Error> {
        let records = self.store.master_keys().await?;
        let held = self.keyring.get();
        let mut next: Option<Keyring> = None;
        if let Some(file) = &self.key_file
            && file.changed()
        {
            match self.read_key_file(&file.path, &held, &records, held.current_id()) {
                Ok(keyring) => {
                    let added: Vec<String> = keyring
                        .ids()
                        .filter(|id| !held.contains(id))
                        .map(str::to_owned)
                        .collect();
                    tracing::info!(added = ?added, file = %file.path.display(), "the master key file changed; re-read");
                    next = Some(keyring);
                }
                Err(message) => {
                    tracing::error!(file = %file.path.display(), error = %message, "the changed master key file cannot be used; keeping the keys held");
                }
            }
        }
        if let Some(hsm) = &self.hsm {
            let base = next.as_ref().unwrap_or(&*held);
            match self.new_token_keys(hsm, base, &records) {
                Ok(Some(keyring)) => next = Some(keyring),
                Ok(None) => {}
                Err(message) => {
                    tracing::error!(token = hsm.token_label(), error = %message, "the PKCS#11 token's new keys cannot be used; keeping the keys held");
                }
            }
        }
        let base = next.as_ref().unwrap_or(&*held);
        if let Some(current) = records.iter().find(|r| r.current)
            && base.current_id() != current.kek_id
        {
            if base.contains(&current.kek_id) {
                let switched = base
                    .switched(&current.kek_id)
                    .map_err(|e| Error::internal(e.to_string()))?;
                tracing::info!(kek = %current.kek_id, "following the vault's new current master key");
                next = Some(switched);
            } else {
                tracing::warn!(kek = %current.kek_id, "the vault's current master key is not held here: new data keys are still wrapped with {}; give this instance the new key", base.current_id());
            }
        }
        if let Some(keyring) = next {
            self.keyring.replace(keyring);
        }
        Ok(())
    }

    /// `held` with the token's keys it lacks, each key the vault has a record of proved
    /// against its verifier; `None` when there is nothing new.
    fn new_token_keys(
        &self,
        hsm: &std::sync::Arc<keyward_crypto::hsm::Hsm>,
        held: &Keyring,
        records: &[keyward_core::master_key::MasterKeyRecord],
    ) -> Result<Option<Keyring>, String> {
        let added: Vec<_> = hsm
            .master_keys()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|key| !held.contains(key.id()))
            .collect();
        if added.is_empty() {
            return Ok(None);
        }
        let ids: Vec<String> = added.iter().map(|k| k.id().to_owned()).collect();
        let keyring = held.with(added).map_err(|e| e.to_string())?;
        for record in records.iter().filter(|r| ids.contains(&r.kek_id)) {
            keyring
                .check_verifier(&record.kek_id, &record.verifier)
                .map_err(|_| format!("{} does not open its verifier", record.kek_id))?;
        }
        tracing::info!(added = ?ids, token = hsm.token_label(), "found new master keys on the PKCS#11 token");
        Ok(Some(keyring))
    }

    /// The keyring in `path` (with the token's keys held), each key the vault has a record
    /// of proved against its verifier, with `current` still current (if still held).
    fn read_key_file(
        &self,
        path: &std::path::Path,
        held: &Keyring,
        records: &[keyward_core::master_key::MasterKeyRecord],
        current: &str,
    ) -> Result<Keyring, String> {
        let mut keys = held.token_keys();
        keys.extend(KeyringFile::new(path).load().map_err(|e| e.to_string())?);
        let mut keyring = Keyring::new(keys).map_err(|e| e.to_string())?;
        for record in records.iter().filter(|r| keyring.contains(&r.kek_id)) {
            keyring
                .check_verifier(&record.kek_id, &record.verifier)
                .map_err(|_| format!("{} does not open its verifier", record.kek_id))?;
        }
        if keyring.contains(current) {
            keyring.set_current(current).map_err(|e| e.to_string())?;
        } else {
            return Err(format!(
                "it no longer holds {current}, the key this instance wraps new data with"
            ));
        }
        Ok(keyring)
    }

    /// What this instance asked of its PKCS#11 token since start (`None` without one).
    pub fn hsm_calls(&self) -> Option<keyward_crypto::hsm::HsmCallCounts> {
        self.hsm.as_ref().map(|hsm| hsm.calls())
    }

    /// Says what this instance holds (every few seconds, by a job).
    pub async fn report_instance(&self) -> Result<(), Error> {
        let keyring = self.keyring.get();
        self.store
            .report_instance(&InstanceReport {
                id: self.instance.0.clone(),
                current_kek: keyring.current_id().to_owned(),
                keks: keyring.ids().map(str::to_owned).collect(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at: self.instance.1,
                seen_at: self.now(),
            })
            .await
    }

    /// Takes this instance off the list (a clean stop); long-gone ones go too.
    pub async fn forget_instance(&self) -> Result<(), Error> {
        let day_ago = self
            .now()
            .checked_sub(jiff::SignedDuration::from_hours(24))
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        self.store.forget_instance(&self.instance.0, day_ago).await
    }
}

//! Master keys while running: every instance follows a rotation made by another process
//! without a restart, and says what it holds.
//!
//! - The key file (the file source) is re-read when it changes, so a key added on this
//!   machine (or copied here from the machine that rotated) is held within seconds; every
//!   key the vault has a record of is proved against its verifier first, and a file that
//!   fails is logged and ignored.
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
            match self.read_key_file(&file.path, &records, held.current_id()) {
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

    /// The keyring in `path`, each key the vault has a record of proved against its
    /// verifier, with `current` still current (if the file still holds it).
    fn read_key_file(
        &self,
        path: &std::path::Path,
        records: &[keyward_core::master_key::MasterKeyRecord],
        current: &str,
    ) -> Result<Keyring, String> {
        let keys = KeyringFile::new(path).load().map_err(|e| e.to_string())?;
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

//! What the master keys look like now, for `keyward master-key status`.

use keyward_core::master_key::MasterKeyRecord;

impl crate::app::App {
    /// The master keys this vault knows, with how many key versions each one wraps and the
    /// PKCS#11 token each lives in (`None`: held in memory, or not held by this process).
    pub async fn master_key_status(
        &self,
    ) -> Result<Vec<(MasterKeyRecord, u64, Option<String>)>, keyward_core::Error> {
        let usage = self.store.kek_usage().await?;
        let keyring = self.keyring.get();
        Ok(self
            .store
            .master_keys()
            .await?
            .into_iter()
            .map(|record| {
                let versions = usage
                    .iter()
                    .find(|u| u.kek_id == record.kek_id)
                    .map_or(0, |u| u.versions);
                let token = keyring.token_of(&record.kek_id).map(str::to_owned);
                (record, versions, token)
            })
            .collect())
    }
}

//! What the master keys look like now, for `keyward master-key status`.

use keyward_core::master_key::MasterKeyRecord;

impl crate::app::App {
    /// The master keys this vault knows, with how many key versions each one wraps.
    pub async fn master_key_status(
        &self,
    ) -> Result<Vec<(MasterKeyRecord, u64)>, keyward_core::Error> {
        let usage = self.store.kek_usage().await?;
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
                (record, versions)
            })
            .collect())
    }
}

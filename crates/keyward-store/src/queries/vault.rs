//! `VaultStore`: master-key records, rewrapping, the change marker and store housekeeping.

use super::*;

#[async_trait]
impl VaultStore for ThisStore {
    async fn master_keys(&self) -> Result<Vec<MasterKeyRecord>, Error> {
        let rows = sqlx::query("SELECT kek_id, is_current, verifier, created_at FROM master_keys ORDER BY created_at, kek_id")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        rows.iter()
            .map(|r| {
                Ok(MasterKeyRecord {
                    kek_id: get(r, "kek_id")?,
                    current: get(r, "is_current")?,
                    verifier: get(r, "verifier")?,
                    created_at: timestamp(get(r, "created_at")?)?,
                })
            })
            .collect()
    }

    async fn register_master_key(&self, record: &MasterKeyRecord) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        if record.current {
            sqlx::query("UPDATE master_keys SET is_current = $1")
                .bind(false)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
        }
        sqlx::query("INSERT INTO master_keys (kek_id, is_current, verifier, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&record.kek_id)
            .bind(record.current)
            .bind(&record.verifier)
            .bind(millis(record.created_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, Some(("kek_exists", "this master key is already registered"))))?;
        commit(tx).await
    }

    async fn make_master_key_current(&self, kek_id: &str) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query("UPDATE master_keys SET is_current = (kek_id = $1)")
            .bind(kek_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        let (found,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM master_keys WHERE kek_id = $1")
            .bind(kek_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        if updated.rows_affected() == 0 || found == 0 {
            return Err(Error::not_found(
                "kek_not_found",
                format!("master key {kek_id} is not registered"),
            ));
        }
        commit(tx).await
    }

    async fn kek_usage(&self) -> Result<Vec<KekUsage>, Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT m.kek_id, COUNT(v.key_id) FROM master_keys m LEFT JOIN key_versions v ON v.kek_id = m.kek_id \
             GROUP BY m.kek_id ORDER BY m.kek_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(rows
            .into_iter()
            .map(|(kek_id, n)| KekUsage {
                kek_id,
                versions: u64::try_from(n).unwrap_or(0),
            })
            .collect())
    }

    async fn versions_wrapped_by(
        &self,
        kek_id: &str,
        limit: u32,
    ) -> Result<Vec<KeyVersion>, Error> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM key_versions WHERE kek_id = $1 ORDER BY key_id, version LIMIT $2"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kek_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?
            .iter()
            .map(version_from_row)
            .collect()
    }

    async fn rewrap_version(
        &self,
        key_id: &KeyId,
        version: u32,
        old_kek_id: &str,
        sealed: &SealedSecret,
    ) -> Result<bool, Error> {
        let updated = sqlx::query(
            "UPDATE key_versions SET kek_id = $1, wrapped_dek = $2 WHERE key_id = $3 AND version = $4 AND kek_id = $5",
        )
        .bind(&sealed.kek_id)
        .bind(&sealed.wrapped_dek)
        .bind(key_id.as_str())
        .bind(i64::from(version))
        .bind(old_kek_id)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(updated.rows_affected() > 0)
    }

    async fn remove_master_key(&self, kek_id: &str) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        let current: Option<(bool,)> =
            sqlx::query_as("SELECT is_current FROM master_keys WHERE kek_id = $1")
                .bind(kek_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
        match current {
            None => {
                return Err(Error::not_found(
                    "kek_not_found",
                    format!("master key {kek_id} is not registered"),
                ));
            }
            Some((true,)) => {
                return Err(Error::conflict(
                    "kek_current",
                    format!("master key {kek_id} is current; rotate first"),
                ));
            }
            Some((false,)) => {}
        }
        let (refs,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM key_versions WHERE kek_id = $1")
            .bind(kek_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        if refs > 0 {
            return Err(Error::conflict(
                "kek_in_use",
                format!(
                    "master key {kek_id} still wraps {refs} key version(s); run `keyward master-key rotate` first"
                ),
            ));
        }
        sqlx::query("DELETE FROM master_keys WHERE kek_id = $1")
            .bind(kek_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await
    }

    async fn report_instance(&self, report: &InstanceReport) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO instances (id, current_kek, keks, version, started_at, seen_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET current_kek = $2, keks = $3, version = $4, seen_at = $6",
        )
        .bind(&report.id)
        .bind(&report.current_kek)
        .bind(report.keks.join(","))
        .bind(&report.version)
        .bind(millis(report.started_at))
        .bind(millis(report.seen_at))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(())
    }

    async fn instances_seen_since(&self, since: Timestamp) -> Result<Vec<InstanceReport>, Error> {
        let rows = sqlx::query(
            "SELECT id, current_kek, keks, version, started_at, seen_at FROM instances WHERE seen_at >= $1 ORDER BY seen_at DESC, id",
        )
        .bind(millis(since))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter()
            .map(|r| {
                let keks: String = get(r, "keks")?;
                Ok(InstanceReport {
                    id: get(r, "id")?,
                    current_kek: get(r, "current_kek")?,
                    keks: keks
                        .split(',')
                        .filter(|k| !k.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    version: get(r, "version")?,
                    started_at: timestamp(get(r, "started_at")?)?,
                    seen_at: timestamp(get(r, "seen_at")?)?,
                })
            })
            .collect()
    }

    async fn forget_instance(&self, id: &str, older_than: Timestamp) -> Result<(), Error> {
        sqlx::query("DELETE FROM instances WHERE id = $1 OR seen_at < $2")
            .bind(id)
            .bind(millis(older_than))
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(())
    }

    async fn setting(&self, name: &str) -> Result<Option<String>, Error> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT value FROM vault_settings WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        Ok(row.map(|(v,)| v))
    }

    async fn replace_setting(
        &self,
        name: &str,
        expected: &str,
        value: &str,
    ) -> Result<bool, Error> {
        let done =
            sqlx::query("UPDATE vault_settings SET value = $1 WHERE name = $2 AND value = $3")
                .bind(value)
                .bind(name)
                .bind(expected)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, Error> {
        sqlx::query("INSERT INTO vault_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        self.setting(name)
            .await?
            .ok_or_else(|| Error::internal(format!("setting {name} vanished after insert")))
    }
}

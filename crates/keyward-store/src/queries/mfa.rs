//! `MfaStore`: TOTP enrolments and recovery codes.

use super::*;

const MFA_COLUMNS: &str = "user_id, sealed_secret, kek_id, created_at, confirmed_at, last_step";

fn mfa_row(r: &DbRow) -> Result<MfaEnrolment, Error> {
    let step: Option<i64> = get(r, "last_step")?;
    Ok(MfaEnrolment {
        user_id: parse("user id", &get::<String>(r, "user_id")?)?,
        sealed_secret: get(r, "sealed_secret")?,
        kek_id: get(r, "kek_id")?,
        created_at: timestamp(get(r, "created_at")?)?,
        confirmed_at: opt_timestamp(get(r, "confirmed_at")?)?,
        last_step: step
            .map(|s| u64::try_from(s).map_err(|e| corrupt("TOTP step", e)))
            .transpose()?,
    })
}

fn step_value(step: u64) -> Result<i64, Error> {
    i64::try_from(step).map_err(|_| Error::invalid("invalid_totp_step", "time step out of range"))
}

async fn insert_recovery_codes(
    tx: &mut sqlx::Transaction<'_, Db>,
    user_id: &UserId,
    hashes: &[Vec<u8>],
) -> Result<(), Error> {
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
        .bind(user_id.as_str())
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error(e, None))?;
    for hash in hashes {
        sqlx::query(
            "INSERT INTO mfa_recovery_codes (user_id, code_hash, used_at) VALUES ($1, $2, NULL)",
        )
        .bind(user_id.as_str())
        .bind(hash)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error(e, None))?;
    }
    Ok(())
}

#[async_trait]
impl MfaStore for ThisStore {
    async fn mfa_enrolment(&self, user_id: &UserId) -> Result<Option<MfaEnrolment>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MFA_COLUMNS} FROM user_mfa WHERE user_id = $1"
        )))
        .bind(user_id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        row.as_ref().map(mfa_row).transpose()
    }

    async fn put_pending_mfa(&self, e: &MfaEnrolment) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        // Only a pending enrolment is replaced; a confirmed one makes the insert a
        // uniqueness violation, so a racing confirmation is never undone.
        sqlx::query("DELETE FROM user_mfa WHERE user_id = $1 AND confirmed_at IS NULL")
            .bind(e.user_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        sqlx::query(
            "INSERT INTO user_mfa (user_id, sealed_secret, kek_id, created_at, confirmed_at, last_step) VALUES ($1, $2, $3, $4, NULL, NULL)",
        )
        .bind(e.user_id.as_str())
        .bind(&e.sealed_secret)
        .bind(&e.kek_id)
        .bind(millis(e.created_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            db_error(
                e,
                Some((
                    "mfa_already_enrolled",
                    "this user already has a second factor; reset it first",
                )),
            )
        })?;
        commit(tx).await
    }

    async fn confirm_mfa(
        &self,
        user_id: &UserId,
        step: u64,
        at: Timestamp,
        recovery_hashes: &[Vec<u8>],
    ) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE user_mfa SET confirmed_at = $1, last_step = $2 WHERE user_id = $3 AND confirmed_at IS NULL",
        )
        .bind(millis(at))
        .bind(step_value(step)?)
        .bind(user_id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        insert_recovery_codes(&mut tx, user_id, recovery_hashes).await?;
        commit(tx).await?;
        Ok(true)
    }

    async fn use_totp_step(&self, user_id: &UserId, step: u64) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE user_mfa SET last_step = $1 WHERE user_id = $2 AND confirmed_at IS NOT NULL \
             AND (last_step IS NULL OR last_step < $1)",
        )
        .bind(step_value(step)?)
        .bind(user_id.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }

    async fn use_recovery_code(
        &self,
        user_id: &UserId,
        hash: &[u8],
        at: Timestamp,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE mfa_recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(millis(at))
        .bind(user_id.as_str())
        .bind(hash)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }

    async fn replace_recovery_codes(
        &self,
        user_id: &UserId,
        hashes: &[Vec<u8>],
    ) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        insert_recovery_codes(&mut tx, user_id, hashes).await?;
        commit(tx).await
    }

    async fn unused_recovery_codes(&self, user_id: &UserId) -> Result<u32, Error> {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_id.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    async fn delete_mfa(&self, user_id: &UserId) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        let done = sqlx::query("DELETE FROM user_mfa WHERE user_id = $1")
            .bind(user_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn mfa_wrapped_by(&self, kek_id: &str) -> Result<Vec<MfaEnrolment>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MFA_COLUMNS} FROM user_mfa WHERE kek_id = $1 ORDER BY user_id"
        )))
        .bind(kek_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(mfa_row).collect()
    }

    async fn rewrap_mfa(
        &self,
        user_id: &UserId,
        old_sealed: &str,
        new_sealed: &str,
        new_kek_id: &str,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE user_mfa SET sealed_secret = $1, kek_id = $2 WHERE user_id = $3 AND sealed_secret = $4",
        )
        .bind(new_sealed)
        .bind(new_kek_id)
        .bind(user_id.as_str())
        .bind(old_sealed)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }
}

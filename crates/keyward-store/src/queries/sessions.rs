//! `SessionStore`: sessions and sign-in throttling.

use super::*;

const SESSION_COLUMNS: &str = "public_id, secret_hash, csrf_hash, user_id, created_at, last_seen_at, expires_at, mfa_at, source";

fn session_row(r: &DbRow) -> Result<Session, Error> {
    Ok(Session {
        public_id: get(r, "public_id")?,
        secret_hash: get(r, "secret_hash")?,
        csrf_hash: get(r, "csrf_hash")?,
        user_id: parse("user id", &get::<String>(r, "user_id")?)?,
        created_at: timestamp(get(r, "created_at")?)?,
        last_seen_at: timestamp(get(r, "last_seen_at")?)?,
        expires_at: timestamp(get(r, "expires_at")?)?,
        mfa_at: opt_timestamp(get(r, "mfa_at")?)?,
        source: get(r, "source")?,
    })
}

const INSERT_SESSION: &str = "INSERT INTO sessions (public_id, secret_hash, csrf_hash, user_id, created_at, last_seen_at, expires_at, mfa_at, source) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

fn bind_session<'q>(
    query: sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments>,
    s: &'q Session,
) -> sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments> {
    query
        .bind(&s.public_id)
        .bind(&s.secret_hash)
        .bind(&s.csrf_hash)
        .bind(s.user_id.as_str())
        .bind(millis(s.created_at))
        .bind(millis(s.last_seen_at))
        .bind(millis(s.expires_at))
        .bind(s.mfa_at.map(millis))
        .bind(&s.source)
}

#[async_trait]
impl SessionStore for ThisStore {
    async fn insert_session(&self, s: &Session) -> Result<(), Error> {
        bind_session(sqlx::query(INSERT_SESSION), s)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(())
    }

    async fn session(&self, public_id: &str) -> Result<Option<Session>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE public_id = $1"
        )))
        .bind(public_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        row.as_ref().map(session_row).transpose()
    }

    async fn touch_session(&self, public_id: &str, at: Timestamp) -> Result<(), Error> {
        sqlx::query(
            "UPDATE sessions SET last_seen_at = $1 WHERE public_id = $2 AND last_seen_at < $1",
        )
        .bind(millis(at))
        .bind(public_id)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(())
    }

    async fn replace_session(&self, old_public_id: &str, new: &Session) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let gone = sqlx::query("DELETE FROM sessions WHERE public_id = $1")
            .bind(old_public_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        if gone.rows_affected() != 1 {
            return Ok(false);
        }
        bind_session(sqlx::query(INSERT_SESSION), new)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(true)
    }

    async fn delete_session(&self, public_id: &str) -> Result<bool, Error> {
        let done = sqlx::query("DELETE FROM sessions WHERE public_id = $1")
            .bind(public_id)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_user_sessions(&self, user_id: &UserId) -> Result<u64, Error> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected())
    }

    async fn sessions(&self, now: Timestamp) -> Result<Vec<Session>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE expires_at > $1 ORDER BY created_at DESC, public_id"
        )))
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(session_row).collect()
    }

    async fn prune_sessions(
        &self,
        expired_before: Timestamp,
        idle_before: Timestamp,
    ) -> Result<u64, Error> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $2")
            .bind(millis(expired_before))
            .bind(millis(idle_before))
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected())
    }
}

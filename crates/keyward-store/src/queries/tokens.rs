//! `TokenStore`: management tokens.

use super::*;

#[async_trait]
impl TokenStore for ThisStore {
    async fn insert_token(&self, t: &ManagementToken) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO management_tokens (id, public_id, name, role, secret_hash, created_by, created_at, expires_at, last_used_at, revoked_at, scope, allowed_networks, created_by_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(t.id.as_str())
        .bind(&t.public_id)
        .bind(&t.name)
        .bind(t.role.as_str())
        .bind(&t.secret_hash)
        .bind(&t.created_by)
        .bind(millis(t.created_at))
        .bind(t.expires_at.map(millis))
        .bind(t.last_used_at.map(millis))
        .bind(t.revoked_at.map(millis))
        .bind(if t.scope.is_everywhere() { None } else { Some(scope_text(&t.scope)?) })
        .bind(networks_text(&t.allowed_networks)?)
        .bind(t.created_by_id.as_deref())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, Some(("token_exists", "a token with this id already exists"))))?;
        Ok(())
    }

    async fn token_by_public_id(&self, public_id: &str) -> Result<Option<ManagementToken>, Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM management_tokens WHERE public_id = $1"
        )))
        .bind(public_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?
        .as_ref()
        .map(token_from_row)
        .transpose()
    }

    async fn touch_token(&self, id: &TokenId, at: Timestamp) -> Result<(), Error> {
        sqlx::query("UPDATE management_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(millis(at))
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<ManagementToken>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM management_tokens ORDER BY id DESC"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, id: &TokenId, at: Timestamp) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE management_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(millis(at))
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }
}

//! `AppTokenStore`: the credentials applications present to the proxy.

use super::*;

/// The JSON in `app_tokens.scope`.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredScope {
    services: Vec<String>,
    environments: Vec<String>,
    key_ids: Vec<KeyId>,
    allowed_networks: Vec<ipnet::IpNet>,
    rate_limit: Option<RateLimit>,
    budget: Option<Budget>,
}

const APP_TOKEN_COLUMNS: &str = "id, public_id, name, secret_hash, scope, created_by, created_at, expires_at, last_used_at, revoked_at";

fn app_token_from_row(row: &DbRow) -> Result<AppToken, Error> {
    let scope: StoredScope = serde_json::from_str(&get::<String>(row, "scope")?)
        .map_err(|e| corrupt("app token scope", e))?;
    Ok(AppToken {
        id: parse::<AppTokenId>("app token id", &get::<String>(row, "id")?)?,
        public_id: get(row, "public_id")?,
        name: get(row, "name")?,
        secret_hash: get(row, "secret_hash")?,
        services: scope.services,
        environments: scope.environments,
        key_ids: scope.key_ids,
        allowed_networks: scope.allowed_networks,
        rate_limit: scope.rate_limit,
        budget: scope.budget,
        created_by: get(row, "created_by")?,
        created_at: timestamp(get(row, "created_at")?)?,
        expires_at: opt_timestamp(get(row, "expires_at")?)?,
        last_used_at: opt_timestamp(get(row, "last_used_at")?)?,
        revoked_at: opt_timestamp(get(row, "revoked_at")?)?,
    })
}

#[async_trait]
impl AppTokenStore for ThisStore {
    async fn insert_app_token(&self, t: &AppToken) -> Result<(), Error> {
        let scope = serde_json::to_string(&StoredScope {
            services: t.services.clone(),
            environments: t.environments.clone(),
            key_ids: t.key_ids.clone(),
            allowed_networks: t.allowed_networks.clone(),
            rate_limit: t.rate_limit,
            budget: t.budget,
        })
        .map_err(|e| Error::internal(format!("cannot encode app token scope: {e}")))?;
        sqlx::query(
            "INSERT INTO app_tokens (id, public_id, name, secret_hash, scope, created_by, created_at, expires_at, last_used_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(t.id.as_str())
        .bind(&t.public_id)
        .bind(&t.name)
        .bind(&t.secret_hash)
        .bind(scope)
        .bind(&t.created_by)
        .bind(millis(t.created_at))
        .bind(t.expires_at.map(millis))
        .bind(t.last_used_at.map(millis))
        .bind(t.revoked_at.map(millis))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, Some(("app_token_exists", "an app token with this id already exists"))))?;
        Ok(())
    }

    async fn app_token(&self, id: &AppTokenId) -> Result<Option<AppToken>, Error> {
        let sql = format!("SELECT {APP_TOKEN_COLUMNS} FROM app_tokens WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?
            .as_ref()
            .map(app_token_from_row)
            .transpose()
    }

    async fn app_token_by_public_id(&self, public_id: &str) -> Result<Option<AppToken>, Error> {
        let sql = format!("SELECT {APP_TOKEN_COLUMNS} FROM app_tokens WHERE public_id = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(public_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?
            .as_ref()
            .map(app_token_from_row)
            .transpose()
    }

    async fn app_tokens(&self) -> Result<Vec<AppToken>, Error> {
        let sql = format!("SELECT {APP_TOKEN_COLUMNS} FROM app_tokens ORDER BY id DESC");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?
            .iter()
            .map(app_token_from_row)
            .collect()
    }

    async fn revoke_app_token(&self, id: &AppTokenId, at: Timestamp) -> Result<bool, Error> {
        let updated = sqlx::query(
            "UPDATE app_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(millis(at))
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(updated.rows_affected() > 0)
    }

    async fn record_app_token_use(&self, uses: &[(AppTokenId, Timestamp)]) -> Result<(), Error> {
        self.record_use("app_tokens", uses.iter().map(|(id, at)| (id.as_str(), *at)))
            .await
    }
}

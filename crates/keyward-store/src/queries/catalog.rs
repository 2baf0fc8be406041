//! `CatalogStore`: custom services, base-URL overrides, categories and environments.

use super::*;

#[async_trait]
impl CatalogStore for ThisStore {
    async fn custom_services(&self) -> Result<Vec<ServiceDefinition>, Error> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT definition FROM custom_services ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(json,)| serde_json::from_str(&json).map_err(|e| corrupt("custom service", e)))
            .collect()
    }

    async fn insert_custom_service(
        &self,
        service: &ServiceDefinition,
        now: Timestamp,
    ) -> Result<(), Error> {
        let json = serde_json::to_string(service)
            .map_err(|e| Error::internal(format!("cannot encode service: {e}")))?;
        sqlx::query("INSERT INTO custom_services (id, definition, created_at) VALUES ($1, $2, $3)")
            .bind(&service.id)
            .bind(json)
            .bind(millis(now))
            .execute(&self.pool)
            .await
            .map_err(|e| {
                db_error(
                    e,
                    Some(("service_exists", "a service with this id already exists")),
                )
            })?;
        Ok(())
    }

    async fn base_url_overrides(&self) -> Result<Vec<BaseUrlOverride>, Error> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT service_id, base_url FROM base_url_overrides")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        Ok(rows
            .into_iter()
            .map(|(service_id, base_url)| BaseUrlOverride {
                service_id,
                base_url,
            })
            .collect())
    }

    async fn set_base_url_override(
        &self,
        service_id: &str,
        base_url: Option<&str>,
        now: Timestamp,
    ) -> Result<(), Error> {
        let query = match base_url {
            Some(url) => sqlx::query(
                "INSERT INTO base_url_overrides (service_id, base_url, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (service_id) DO UPDATE SET base_url = excluded.base_url, updated_at = excluded.updated_at",
            )
            .bind(service_id)
            .bind(url)
            .bind(millis(now)),
            None => sqlx::query("DELETE FROM base_url_overrides WHERE service_id = $1").bind(service_id),
        };
        query
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(())
    }

    async fn environments(&self) -> Result<Vec<Environment>, Error> {
        let rows = self.labels(LabelTable::Environments).await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, builtin)| Environment { id, name, builtin })
            .collect())
    }

    async fn insert_environment(&self, e: &Environment, now: Timestamp) -> Result<(), Error> {
        self.insert_label(LabelTable::Environments, &e.id, &e.name, e.builtin, now)
            .await
    }

    async fn categories(&self) -> Result<Vec<Category>, Error> {
        let rows = self.labels(LabelTable::Categories).await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, builtin)| Category { id, name, builtin })
            .collect())
    }

    async fn insert_category(&self, c: &Category, now: Timestamp) -> Result<(), Error> {
        self.insert_label(LabelTable::Categories, &c.id, &c.name, c.builtin, now)
            .await
    }

    async fn pool_settings(&self) -> Result<Vec<PoolSetting>, Error> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT service_id, environment, strategy FROM pool_strategies ORDER BY service_id, environment",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(service_id, environment, strategy)| {
                Ok(PoolSetting {
                    service_id,
                    environment,
                    strategy: parse("pool strategy", &strategy)?,
                })
            })
            .collect()
    }

    async fn set_pool_strategy(&self, setting: &PoolSetting, now: Timestamp) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO pool_strategies (service_id, environment, strategy, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (service_id, environment) DO UPDATE SET strategy = excluded.strategy, updated_at = excluded.updated_at",
        )
        .bind(&setting.service_id)
        .bind(&setting.environment)
        .bind(setting.strategy.as_str())
        .bind(millis(now))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        commit(tx).await
    }
}

/// Environments and categories are the same kind of row: an id, a name, built in or not.
#[derive(Clone, Copy)]
enum LabelTable {
    Environments,
    Categories,
}

impl LabelTable {
    fn table(self) -> &'static str {
        match self {
            Self::Environments => "environments",
            Self::Categories => "categories",
        }
    }

    fn exists(self) -> (&'static str, &'static str) {
        match self {
            Self::Environments => (
                "environment_exists",
                "an environment with this id already exists",
            ),
            Self::Categories => ("category_exists", "a category with this id already exists"),
        }
    }
}

impl ThisStore {
    /// Moves `last_used_at` of rows in `table` (a fixed name, never input) forward, in one
    /// transaction.
    pub(super) async fn record_use<'a>(
        &self,
        table: &'static str,
        uses: impl Iterator<Item = (&'a str, Timestamp)>,
    ) -> Result<(), Error> {
        let sql = format!(
            "UPDATE {table} SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)"
        );
        let mut tx = self.begin_write().await?;
        for (id, at) in uses {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(millis(at))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
        }
        commit(tx).await
    }

    async fn labels(&self, table: LabelTable) -> Result<Vec<(String, String, bool)>, Error> {
        let sql = format!(
            "SELECT id, name, builtin FROM {} ORDER BY builtin DESC, created_at, id",
            table.table()
        );
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))
    }

    async fn insert_label(
        &self,
        table: LabelTable,
        id: &str,
        name: &str,
        builtin: bool,
        now: Timestamp,
    ) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO {} (id, name, builtin, created_at) VALUES ($1, $2, $3, $4)",
            table.table()
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(name)
            .bind(builtin)
            .bind(millis(now))
            .execute(&self.pool)
            .await
            .map_err(|err| db_error(err, Some(table.exists())))?;
        Ok(())
    }
}

//! `AccessStore`: custom roles, grants and role network allowlists.

use super::*;

fn custom_role_row(r: &DbRow) -> Result<CustomRole, Error> {
    Ok(CustomRole {
        id: get(r, "id")?,
        description: get(r, "description")?,
        permissions: serde_json::from_str(&get::<String>(r, "permissions")?)
            .map_err(|e| corrupt("role permissions", e))?,
        created_at: timestamp(get(r, "created_at")?)?,
        updated_at: timestamp(get(r, "updated_at")?)?,
    })
}

fn grant_row(r: &DbRow) -> Result<Grant, Error> {
    Ok(Grant {
        id: parse("grant id", &get::<String>(r, "id")?)?,
        user_id: parse("user id", &get::<String>(r, "user_id")?)?,
        role: RoleRef::parse(&get::<String>(r, "role")?)?,
        scope: serde_json::from_str(&get::<String>(r, "scope")?)
            .map_err(|e| corrupt("grant scope", e))?,
        created_by: get(r, "created_by")?,
        created_at: timestamp(get(r, "created_at")?)?,
    })
}

fn permissions_text(set: PermissionSet) -> Result<String, Error> {
    serde_json::to_string(&set)
        .map_err(|e| Error::internal(format!("cannot encode permissions: {e}")))
}

#[async_trait]
impl AccessStore for ThisStore {
    async fn custom_roles(&self) -> Result<Vec<CustomRole>, Error> {
        let rows = sqlx::query(
            "SELECT id, description, permissions, created_at, updated_at FROM custom_roles ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(custom_role_row).collect()
    }

    async fn insert_custom_role(&self, role: &CustomRole) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO custom_roles (id, description, permissions, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&role.id)
        .bind(&role.description)
        .bind(permissions_text(role.permissions)?)
        .bind(millis(role.created_at))
        .bind(millis(role.updated_at))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, Some(("role_exists", "a role with this id already exists"))))?;
        Ok(())
    }

    async fn update_custom_role(&self, role: &CustomRole) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE custom_roles SET description = $1, permissions = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(&role.description)
        .bind(permissions_text(role.permissions)?)
        .bind(millis(role.updated_at))
        .bind(&role.id)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_custom_role(&self, id: &str) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let (grants,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM user_grants WHERE role = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        if grants > 0 {
            return Err(Error::conflict(
                "role_in_use",
                format!("{grants} grant(s) still give this role; remove them first"),
            ));
        }
        let done = sqlx::query("DELETE FROM custom_roles WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        sqlx::query("DELETE FROM role_networks WHERE role = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn grants(&self, user_id: &UserId) -> Result<Vec<Grant>, Error> {
        let rows = sqlx::query(
            "SELECT id, user_id, role, scope, created_by, created_at FROM user_grants WHERE user_id = $1 ORDER BY id",
        )
        .bind(user_id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(grant_row).collect()
    }

    async fn insert_grant(&self, grant: &Grant) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        if let RoleRef::Custom(id) = &grant.role {
            let found: Option<(String,)> =
                sqlx::query_as("SELECT id FROM custom_roles WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| db_error(e, None))?;
            if found.is_none() {
                return Err(Error::invalid(
                    "unknown_role",
                    format!("there is no role `{id}`"),
                ));
            }
        }
        sqlx::query(
            "INSERT INTO user_grants (id, user_id, role, scope, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(grant.id.as_str())
        .bind(grant.user_id.as_str())
        .bind(grant.role.as_str())
        .bind(scope_text(&grant.scope)?)
        .bind(&grant.created_by)
        .bind(millis(grant.created_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, Some(("grant_exists", "a grant with this id already exists"))))?;
        commit(tx).await
    }

    async fn delete_grant(&self, user_id: &UserId, grant_id: &GrantId) -> Result<bool, Error> {
        let done = sqlx::query("DELETE FROM user_grants WHERE id = $1 AND user_id = $2")
            .bind(grant_id.as_str())
            .bind(user_id.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }

    async fn role_networks(&self) -> Result<Vec<(String, Vec<ipnet::IpNet>)>, Error> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT role, networks FROM role_networks ORDER BY role")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(role, text)| Ok((role, networks_from(Some(text))?)))
            .collect()
    }

    async fn set_role_networks(&self, role: &str, networks: &[ipnet::IpNet]) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM role_networks WHERE role = $1")
            .bind(role)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        if let Some(text) = networks_text(networks)? {
            sqlx::query("INSERT INTO role_networks (role, networks) VALUES ($1, $2)")
                .bind(role)
                .bind(text)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
        }
        commit(tx).await
    }
}

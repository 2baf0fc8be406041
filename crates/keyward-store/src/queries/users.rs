//! `UserStore`: people who sign in, with their network allowlists.

use super::*;

const USER_COLUMNS: &str = "id, username, password_hash, role, disabled, created_at, created_by_id, allowed_networks, \
    EXISTS (SELECT 1 FROM user_mfa m WHERE m.user_id = users.id AND m.confirmed_at IS NOT NULL) AS mfa_enabled";

fn user_row(r: &DbRow) -> Result<User, Error> {
    Ok(User {
        id: parse("user id", &get::<String>(r, "id")?)?,
        username: get(r, "username")?,
        password_hash: get(r, "password_hash")?,
        role: parse("role", &get::<String>(r, "role")?)?,
        disabled: get(r, "disabled")?,
        created_at: timestamp(get(r, "created_at")?)?,
        created_by_id: get(r, "created_by_id")?,
        mfa_enabled: get(r, "mfa_enabled")?,
        allowed_networks: networks_from(get(r, "allowed_networks")?)?,
    })
}

#[async_trait]
impl UserStore for ThisStore {
    async fn insert_user(&self, u: &User) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO users (id, username, username_lower, password_hash, role, disabled, created_at, allowed_networks, created_by_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(u.id.as_str())
        .bind(&u.username)
        .bind(u.username.to_lowercase())
        .bind(&u.password_hash)
        .bind(u.role.as_str())
        .bind(u.disabled)
        .bind(millis(u.created_at))
        .bind(networks_text(&u.allowed_networks)?)
        .bind(u.created_by_id.as_deref())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, Some(("username_taken", "a user with this name already exists"))))?;
        Ok(())
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username_lower = $1"
        )))
        .bind(username.to_lowercase())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        row.as_ref().map(user_row).transpose()
    }

    async fn user(&self, id: &UserId) -> Result<Option<User>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        row.as_ref().map(user_row).transpose()
    }

    async fn users(&self) -> Result<Vec<User>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY username_lower"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(user_row).collect()
    }

    async fn set_user_disabled(&self, id: &UserId, disabled: bool) -> Result<bool, Error> {
        let done = sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
            .bind(disabled)
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_user_role(&self, id: &UserId, role: Role) -> Result<bool, Error> {
        let done = sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
            .bind(role.as_str())
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_user_networks(
        &self,
        id: &UserId,
        networks: &[ipnet::IpNet],
    ) -> Result<bool, Error> {
        let done = sqlx::query("UPDATE users SET allowed_networks = $1 WHERE id = $2")
            .bind(networks_text(networks)?)
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }

    async fn count_users(&self) -> Result<u64, Error> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

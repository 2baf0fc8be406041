// The store implementation shared by both backends. This file is `include!`d by
// `sqlite.rs` and `postgres.rs`, each of which defines `Db`, `DbRow`, `ThisStore`,
// `MIGRATIONS`, `begin_write()`, `schema_exists()` and `backend_name()` first. SQL here must
// be valid in both dialects (`$n` placeholders work in both).

use std::borrow::Cow;
use std::str::FromStr;

use async_trait::async_trait;
use jiff::Timestamp;
use keyward_core::access::{CustomRole, Grant, PermissionSet, Role, RoleRef, Scope};
use keyward_core::app_token::{AppToken, Budget, RateLimit};
use keyward_core::audit::{
    AuditCheckpoint, AuditDraft, AuditEvent, AuditFilter, chain_hash, hash_hex, parse_hash,
};
use keyward_core::catalog::BaseUrlOverride;
use keyward_core::guided_rotation::{Rotation, RotationTraffic, VersionMove};
use keyward_core::health::{CallStats, HealthState, HealthStatus, KeyCalls};
use keyward_core::id::{AppTokenId, ApprovalId, GrantId, KeyId, RotationId, TokenId, UserId, WebhookId};
use keyward_core::notification::{Delivery, Webhook};
use keyward_core::key::{
    Revocation,
    Key, KeyFilter, KeyStatus, KeyVersion, Page, PageRequest, SealedSecret, VersionState,
};
use keyward_core::approval::{ApprovalRequest, ApprovalStatus};
use keyward_core::master_key::{KekUsage, MasterKeyRecord};
use keyward_core::mfa::MfaEnrolment;
use keyward_core::ports::{
    AccessStore, AppTokenStore, ApprovalStore, AuditStore, CatalogStore, HealthStore, MfaStore, NotificationStore, RotationStore, SessionStore, KeyStore, Store, TokenStore, UsageStore, UserStore, VaultStore,
};
use keyward_core::service::Limit;
use keyward_core::service::{Category, Environment, ServiceDefinition};
use keyward_core::token::ManagementToken;
use keyward_core::usage::{
    HourlyUse, KeyFlag, Outcome, PoolSetting, Subject, UsageBucket, UsageGrouping, UsageQuery,
    UsageRecord,
    UsageTotals,
};
use keyward_core::session::Session;
use keyward_core::user::User;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{QueryBuilder, Row, SqlSafeStr};

use crate::{corrupt, db_error};

const KEY_COLUMNS: &str = "id, service_id, environment, alias, description, owner, tags, criticality, enabled, \
    expires_at, current_version, current_hint, created_by, created_at, updated_at, last_used_at, deleted_at, deleted_by, controls, \
    revoked_at, revoked_by, revoke_reason, rotated_at";

/// A key's limits and budget, stored as one JSON column.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Controls {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    limits: Vec<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget: Option<Budget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotation: Option<keyward_core::rotation::RotationRule>,
}

fn controls_json(key: &Key) -> Result<String, Error> {
    serde_json::to_string(&Controls {
        limits: key.limits.clone(),
        budget: key.budget,
        rotation: key.rotation_rule,
    })
    .map_err(|e| Error::internal(format!("cannot encode key controls: {e}")))
}

const VERSION_COLUMNS: &str = "key_id, version, state, hint, algorithm, kek_id, wrapped_dek, nonce, ciphertext, created_by, created_at";

fn millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

fn timestamp(ms: i64) -> Result<Timestamp, Error> {
    Timestamp::from_millisecond(ms).map_err(|e| corrupt("timestamp", e))
}

fn opt_timestamp(ms: Option<i64>) -> Result<Option<Timestamp>, Error> {
    ms.map(timestamp).transpose()
}

fn version_number(v: i64) -> Result<u32, Error> {
    u32::try_from(v).map_err(|e| corrupt("version number", e))
}

fn get<'r, T>(row: &'r DbRow, column: &str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, Db> + sqlx::Type<Db>,
{
    row.try_get(column).map_err(|e| corrupt(column, e))
}

fn parse<T: FromStr<Err = Error>>(what: &str, text: &str) -> Result<T, Error> {
    text.parse().map_err(|e: Error| corrupt(what, e.message))
}

fn key_from_row(row: &DbRow) -> Result<Key, Error> {
    let tags: String = get(row, "tags")?;
    let controls: Controls = serde_json::from_str(&get::<String>(row, "controls")?)
        .map_err(|e| corrupt("controls", e))?;
    Ok(Key {
        id: parse("key id", &get::<String>(row, "id")?)?,
        service_id: get(row, "service_id")?,
        environment: get(row, "environment")?,
        alias: get(row, "alias")?,
        description: get(row, "description")?,
        owner: get(row, "owner")?,
        tags: serde_json::from_str(&tags).map_err(|e| corrupt("tags", e))?,
        criticality: parse("criticality", &get::<String>(row, "criticality")?)?,
        enabled: get(row, "enabled")?,
        expires_at: opt_timestamp(get(row, "expires_at")?)?,
        current_version: version_number(get(row, "current_version")?)?,
        current_hint: get(row, "current_hint")?,
        created_by: get(row, "created_by")?,
        created_at: timestamp(get(row, "created_at")?)?,
        updated_at: timestamp(get(row, "updated_at")?)?,
        last_used_at: opt_timestamp(get(row, "last_used_at")?)?,
        deleted_at: opt_timestamp(get(row, "deleted_at")?)?,
        deleted_by: get(row, "deleted_by")?,
        revoked: match opt_timestamp(get(row, "revoked_at")?)? {
            Some(at) => Some(Revocation {
                at,
                by: get::<Option<String>>(row, "revoked_by")?.unwrap_or_default(),
                reason: get::<Option<String>>(row, "revoke_reason")?.unwrap_or_default(),
            }),
            None => None,
        },
        rotated_at: match opt_timestamp(get(row, "rotated_at")?)? {
            Some(at) => at,
            None => timestamp(get(row, "created_at")?)?,
        },
        rotation_rule: controls.rotation,
        limits: controls.limits,
        budget: controls.budget,
    })
}

fn version_from_row(row: &DbRow) -> Result<KeyVersion, Error> {
    Ok(KeyVersion {
        key_id: parse("key id", &get::<String>(row, "key_id")?)?,
        version: version_number(get(row, "version")?)?,
        state: parse("version state", &get::<String>(row, "state")?)?,
        hint: get(row, "hint")?,
        sealed: SealedSecret {
            algorithm: get(row, "algorithm")?,
            kek_id: get(row, "kek_id")?,
            wrapped_dek: get(row, "wrapped_dek")?,
            nonce: get(row, "nonce")?,
            ciphertext: get(row, "ciphertext")?,
        },
        created_by: get(row, "created_by")?,
        created_at: timestamp(get(row, "created_at")?)?,
    })
}

fn token_from_row(row: &DbRow) -> Result<ManagementToken, Error> {
    Ok(ManagementToken {
        id: parse::<TokenId>("token id", &get::<String>(row, "id")?)?,
        public_id: get(row, "public_id")?,
        name: get(row, "name")?,
        role: parse::<Role>("role", &get::<String>(row, "role")?)?,
        secret_hash: get(row, "secret_hash")?,
        created_by: get(row, "created_by")?,
        created_by_id: get(row, "created_by_id")?,
        created_at: timestamp(get(row, "created_at")?)?,
        expires_at: opt_timestamp(get(row, "expires_at")?)?,
        last_used_at: opt_timestamp(get(row, "last_used_at")?)?,
        revoked_at: opt_timestamp(get(row, "revoked_at")?)?,
        scope: get::<Option<String>>(row, "scope")?
            .map_or(Ok(Scope::everywhere()), |t| {
                serde_json::from_str(&t).map_err(|e| corrupt("token scope", e))
            })?,
        allowed_networks: networks_from(get(row, "allowed_networks")?)?,
    })
}

const TOKEN_COLUMNS: &str = "id, public_id, name, role, secret_hash, created_by, created_by_id, created_at, expires_at, last_used_at, revoked_at, scope, allowed_networks";

fn scope_text(scope: &Scope) -> Result<String, Error> {
    serde_json::to_string(scope).map_err(|e| Error::internal(format!("cannot encode a scope: {e}")))
}

fn tags_json(tags: &[String]) -> Result<String, Error> {
    serde_json::to_string(tags).map_err(|e| Error::internal(format!("cannot encode tags: {e}")))
}

const ALIAS_TAKEN: (&str, &str) = (
    "alias_taken",
    "another key of this service and environment already has this alias",
);

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl ThisStore {
    async fn write_tags(
        tx: &mut sqlx::Transaction<'static, Db>,
        key_id: &KeyId,
        tags: &[String],
    ) -> Result<(), Error> {
        sqlx::query("DELETE FROM key_tags WHERE key_id = $1")
            .bind(key_id.as_str())
            .execute(&mut **tx)
            .await
            .map_err(|e| db_error(e, None))?;
        for tag in tags {
            sqlx::query("INSERT INTO key_tags (key_id, tag) VALUES ($1, $2)")
                .bind(key_id.as_str())
                .bind(tag)
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error(e, None))?;
        }
        Ok(())
    }

    async fn insert_version(
        tx: &mut sqlx::Transaction<'static, Db>,
        v: &KeyVersion,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO key_versions (key_id, version, state, hint, algorithm, kek_id, wrapped_dek, nonce, ciphertext, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(v.key_id.as_str())
        .bind(i64::from(v.version))
        .bind(v.state.as_str())
        .bind(&v.hint)
        .bind(&v.sealed.algorithm)
        .bind(&v.sealed.kek_id)
        .bind(&v.sealed.wrapped_dek)
        .bind(&v.sealed.nonce)
        .bind(&v.sealed.ciphertext)
        .bind(&v.created_by)
        .bind(millis(v.created_at))
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            db_error(
                e,
                Some(("concurrent_update", "this version number was just taken; retry")),
            )
        })?;
        Ok(())
    }
}

async fn commit(tx: sqlx::Transaction<'static, Db>) -> Result<(), Error> {
    tx.commit().await.map_err(|e| db_error(e, None))
}

#[async_trait]
impl KeyStore for ThisStore {
    async fn insert_keys(&self, batch: &[(Key, KeyVersion)]) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        for (key, first) in batch {
            sqlx::query(
                "INSERT INTO keys (id, service_id, environment, alias, alias_lower, description, owner, tags, criticality, enabled, \
                 expires_at, current_version, current_hint, created_by, created_at, updated_at, last_used_at, deleted_at, deleted_by, controls, \
                 revoked_at, revoked_by, revoke_reason, rotated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)",
            )
            .bind(key.id.as_str())
            .bind(&key.service_id)
            .bind(&key.environment)
            .bind(&key.alias)
            .bind(key.alias.to_lowercase())
            .bind(&key.description)
            .bind(&key.owner)
            .bind(tags_json(&key.tags)?)
            .bind(key.criticality.as_str())
            .bind(key.enabled)
            .bind(key.expires_at.map(millis))
            .bind(i64::from(key.current_version))
            .bind(&key.current_hint)
            .bind(&key.created_by)
            .bind(millis(key.created_at))
            .bind(millis(key.updated_at))
            .bind(key.last_used_at.map(millis))
            .bind(key.deleted_at.map(millis))
            .bind(&key.deleted_by)
            .bind(controls_json(key)?)
            .bind(key.revoked.as_ref().map(|r| millis(r.at)))
            .bind(key.revoked.as_ref().map(|r| r.by.clone()))
            .bind(key.revoked.as_ref().map(|r| r.reason.clone()))
            .bind(millis(key.rotated_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, Some(ALIAS_TAKEN)))?;
            Self::write_tags(&mut tx, &key.id, &key.tags).await?;
            Self::insert_version(&mut tx, first).await?;
        }
        commit(tx).await
    }

    async fn key(&self, id: &KeyId) -> Result<Option<Key>, Error> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?
            .as_ref()
            .map(key_from_row)
            .transpose()
    }

    async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: &PageRequest,
        now: Timestamp,
    ) -> Result<Page<Key>, Error> {
        let mut q: QueryBuilder<Db> =
            QueryBuilder::new(format!("SELECT {KEY_COLUMNS} FROM keys WHERE "));
        match filter.status {
            None => q.push("deleted_at IS NULL"),
            Some(KeyStatus::Deleted) => q.push("deleted_at IS NOT NULL"),
            Some(KeyStatus::Revoked) => q.push("deleted_at IS NULL AND revoked_at IS NOT NULL"),
            Some(KeyStatus::Disabled) => q
                .push("deleted_at IS NULL AND revoked_at IS NULL AND enabled = ")
                .push_bind(false),
            Some(KeyStatus::Expired) => q
                .push("deleted_at IS NULL AND revoked_at IS NULL AND enabled = ")
                .push_bind(true)
                .push(" AND expires_at <= ")
                .push_bind(millis(now)),
            Some(KeyStatus::Active) => q
                .push("deleted_at IS NULL AND revoked_at IS NULL AND enabled = ")
                .push_bind(true)
                .push(" AND (expires_at IS NULL OR expires_at > ")
                .push_bind(millis(now))
                .push(")"),
        };
        if let Some(services) = &filter.service_ids {
            if services.is_empty() {
                return Ok(Page {
                    items: vec![],
                    next: None,
                });
            }
            q.push(" AND service_id IN (");
            let mut list = q.separated(", ");
            for service in services {
                list.push_bind(service.clone());
            }
            q.push(")");
        }
        if let Some(environment) = &filter.environment {
            q.push(" AND environment = ").push_bind(environment.clone());
        }
        if let Some(areas) = &filter.areas {
            // An empty list (or an area naming no services) matches nothing.
            q.push(" AND (1 = 0");
            for area in areas {
                q.push(" OR (1 = 1");
                for (column, values) in [
                    ("service_id", &area.service_ids),
                    ("environment", &area.environments),
                ] {
                    let Some(values) = values else { continue };
                    if values.is_empty() {
                        q.push(" AND 1 = 0");
                        continue;
                    }
                    q.push(format!(" AND {column} IN ("));
                    let mut list = q.separated(", ");
                    for value in values {
                        list.push_bind(value.clone());
                    }
                    q.push(")");
                }
                q.push(")");
            }
            q.push(")");
        }
        if let Some(tag) = &filter.tag {
            q.push(" AND id IN (SELECT key_id FROM key_tags WHERE tag = ")
                .push_bind(tag.clone())
                .push(")");
        }
        if let Some(text) = filter.text.as_deref().filter(|t| !t.is_empty()) {
            let pattern = like_pattern(text);
            q.push(" AND (alias_lower LIKE ")
                .push_bind(pattern.clone())
                .push(" ESCAPE '\\' OR LOWER(COALESCE(description, '')) LIKE ")
                .push_bind(pattern)
                .push(" ESCAPE '\\')");
        }
        if let Some(after) = &page.after {
            q.push(" AND id < ").push_bind(after.as_str().to_owned());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(page.limit) + 1);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        let mut items = rows
            .iter()
            .map(key_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|k| k.id.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn update_key(&self, key: &Key, expected_updated_at: Timestamp) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE keys SET alias = $1, alias_lower = $2, description = $3, owner = $4, tags = $5, criticality = $6, \
             enabled = $7, expires_at = $8, updated_at = $9, deleted_at = $10, deleted_by = $11, controls = $14, \
             revoked_at = $15, revoked_by = $16, revoke_reason = $17 \
             WHERE id = $12 AND updated_at = $13",
        )
        .bind(&key.alias)
        .bind(key.alias.to_lowercase())
        .bind(&key.description)
        .bind(&key.owner)
        .bind(tags_json(&key.tags)?)
        .bind(key.criticality.as_str())
        .bind(key.enabled)
        .bind(key.expires_at.map(millis))
        .bind(millis(key.updated_at))
        .bind(key.deleted_at.map(millis))
        .bind(&key.deleted_by)
        .bind(key.id.as_str())
        .bind(millis(expected_updated_at))
        .bind(controls_json(key)?)
        .bind(key.revoked.as_ref().map(|r| millis(r.at)))
        .bind(key.revoked.as_ref().map(|r| r.by.clone()))
        .bind(key.revoked.as_ref().map(|r| r.reason.clone()))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, Some(ALIAS_TAKEN)))?;
        if updated.rows_affected() == 0 {
            return Err(Error::conflict(
                "concurrent_update",
                format!(
                    "key {} was changed or removed by someone else; reload and retry",
                    key.id
                ),
            ));
        }
        Self::write_tags(&mut tx, &key.id, &key.tags).await?;
        commit(tx).await
    }

    async fn add_version(&self, version: &KeyVersion, now: Timestamp) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        let rotating: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM rotations WHERE key_id = $1 AND {ACTIVE_ROTATION}"
        )))
        .bind(version.key_id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        if let Some((id,)) = rotating {
            return Err(Error::conflict(
                "rotation_in_progress",
                format!("rotation {id} is replacing this key's value; finish or cancel it first"),
            ));
        }
        if version.state == VersionState::Current {
            for (from, to) in [
                (VersionState::Previous, VersionState::Retired),
                (VersionState::Current, VersionState::Previous),
            ] {
                sqlx::query("UPDATE key_versions SET state = $1 WHERE key_id = $2 AND state = $3")
                    .bind(to.as_str())
                    .bind(version.key_id.as_str())
                    .bind(from.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_error(e, None))?;
            }
            let updated = sqlx::query(
                "UPDATE keys SET current_version = $1, current_hint = $2, updated_at = $3, rotated_at = $5 \
                 WHERE id = $4 AND deleted_at IS NULL",
            )
            .bind(i64::from(version.version))
            .bind(&version.hint)
            .bind(millis(now))
            .bind(version.key_id.as_str())
            .bind(millis(version.created_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
            if updated.rows_affected() == 0 {
                return Err(Error::not_found(
                    "key_not_found",
                    format!("there is no live key {}", version.key_id),
                ));
            }
        }
        Self::insert_version(&mut tx, version).await?;
        commit(tx).await
    }

    async fn record_key_use(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), Error> {
        self.record_use("keys", uses.iter().map(|(id, at)| (id.as_str(), *at)))
            .await
    }

    async fn live_keys(&self) -> Result<Vec<(Key, KeyVersion)>, Error> {
        let keys_sql =
            format!("SELECT {KEY_COLUMNS} FROM keys WHERE deleted_at IS NULL ORDER BY id");
        let versions_sql = format!(
            "SELECT {} FROM key_versions v JOIN keys k ON k.id = v.key_id \
             WHERE k.deleted_at IS NULL AND v.version = k.current_version ORDER BY v.key_id",
            VERSION_COLUMNS
                .split(", ")
                .map(|c| format!("v.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // One read transaction, so keys and versions come from the same instant.
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, None))?;
        let keys = sqlx::query(sqlx::AssertSqlSafe(keys_sql))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        let versions = sqlx::query(sqlx::AssertSqlSafe(versions_sql))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        tx.commit().await.map_err(|e| db_error(e, None))?;
        let mut versions = versions
            .iter()
            .map(version_from_row)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .peekable();
        let mut out = Vec::with_capacity(keys.len());
        for row in &keys {
            let key = key_from_row(row)?;
            match versions.next_if(|v| v.key_id == key.id) {
                Some(version) => out.push((key, version)),
                None => return Err(corrupt("key", format!("{} has no current version", key.id))),
            }
        }
        Ok(out)
    }

    async fn versions(&self, key_id: &KeyId) -> Result<Vec<KeyVersion>, Error> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM key_versions WHERE key_id = $1 ORDER BY version DESC"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key_id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?
            .iter()
            .map(version_from_row)
            .collect()
    }

    async fn purge_key(&self, id: &KeyId) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        // Explicit deletes rather than relying on ON DELETE CASCADE being enabled.
        for sql in [
            "DELETE FROM rotations WHERE key_id = $1",
            "DELETE FROM key_probes WHERE key_id = $1",
            "DELETE FROM key_versions WHERE key_id = $1",
            "DELETE FROM key_tags WHERE key_id = $1",
            "DELETE FROM key_flags WHERE key_id = $1",
            "DELETE FROM health_states WHERE subject = 'key:' || $1",
        ] {
            sqlx::query(sql)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
        }
        let deleted = sqlx::query("DELETE FROM keys WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn purge_deleted_before(&self, cutoff: Timestamp) -> Result<Vec<KeyId>, Error> {
        let ids: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM keys WHERE deleted_at IS NOT NULL AND deleted_at <= $1")
                .bind(millis(cutoff))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        let mut purged = Vec::with_capacity(ids.len());
        for (id,) in ids {
            let id: KeyId = parse("key id", &id)?;
            if self.purge_key(&id).await? {
                purged.push(id);
            }
        }
        Ok(purged)
    }

    async fn key_flags(&self) -> Result<Vec<KeyFlag>, Error> {
        let rows =
            sqlx::query("SELECT key_id, kind, reason, since, until FROM key_flags ORDER BY key_id")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        rows.iter()
            .map(|row| {
                Ok(KeyFlag {
                    key_id: parse("key id", &get::<String>(row, "key_id")?)?,
                    kind: parse("flag kind", &get::<String>(row, "kind")?)?,
                    reason: get(row, "reason")?,
                    since: timestamp(get(row, "since")?)?,
                    until: opt_timestamp(get(row, "until")?)?,
                })
            })
            .collect()
    }

    async fn set_key_flags(&self, flags: &[KeyFlag]) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        for flag in flags {
            sqlx::query(
                "INSERT INTO key_flags (key_id, kind, reason, since, until) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (key_id) DO UPDATE SET kind = excluded.kind, reason = excluded.reason, \
                 since = excluded.since, until = excluded.until",
            )
            .bind(flag.key_id.as_str())
            .bind(flag.kind.as_str())
            .bind(&flag.reason)
            .bind(millis(flag.since))
            .bind(flag.until.map(millis))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        }
        commit(tx).await
    }

    async fn clear_key_flag(&self, key_id: &KeyId) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM key_flags WHERE key_id = $1")
            .bind(key_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(deleted.rows_affected() > 0)
    }
}

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
    async fn record_use<'a>(
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

fn networks_from(text: Option<String>) -> Result<Vec<ipnet::IpNet>, Error> {
    text.map_or(Ok(Vec::new()), |t| {
        serde_json::from_str(&t).map_err(|e| corrupt("network list", e))
    })
}

fn networks_text(networks: &[ipnet::IpNet]) -> Result<Option<String>, Error> {
    if networks.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(networks)
        .map(Some)
        .map_err(|e| Error::internal(format!("cannot encode networks: {e}")))
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
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users WHERE username_lower = $1")))
            .bind(username.to_lowercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        row.as_ref().map(user_row).transpose()
    }

    async fn user(&self, id: &UserId) -> Result<Option<User>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1")))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        row.as_ref().map(user_row).transpose()
    }

    async fn users(&self) -> Result<Vec<User>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users ORDER BY username_lower")))
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

    async fn set_user_networks(&self, id: &UserId, networks: &[ipnet::IpNet]) -> Result<bool, Error> {
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

    async fn setting(&self, name: &str) -> Result<Option<String>, Error> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT value FROM vault_settings WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        Ok(row.map(|(v,)| v))
    }

    async fn replace_setting(&self, name: &str, expected: &str, value: &str) -> Result<bool, Error> {
        let done = sqlx::query("UPDATE vault_settings SET value = $1 WHERE name = $2 AND value = $3")
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

/// The change marker's columns.
type MarkerRow = (i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64);

/// Integers the database stores as signed 64-bit.
fn db_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_db_int(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The sums a usage query returns, in the column order of `USAGE_SUMS`.
type SumsRow = (i64, i64, i64, i64, i64, i64, i64, i64, i64);

/// The usage sums query: minutes from the records, hours and days from the hourly sums;
/// per bucket, or per `group` column (rows without one, e.g. refusals before a key was
/// chosen, are left out) and bucket. Binds: from, to, bucket size, key, token, service.
fn usage_sql(query: &UsageQuery, group: Option<&str>) -> String {
    let sums = |time: &str, requests: &str, errors: &str, hits: &str| {
        format!(
            "SELECT ({time} / $3) * $3 AS bucket, CAST(COALESCE({requests}, 0) AS BIGINT), \
             CAST(COALESCE({errors}, 0) AS BIGINT), CAST(COALESCE({hits}, 0) AS BIGINT), \
             CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT), \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(credits), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT)"
        )
    };
    let (select, table, time) = if query.granularity == keyward_core::usage::Granularity::Minute {
        (
            sums(
                "at",
                "COUNT(*)",
                "SUM(CASE WHEN outcome <> 'success' THEN 1 ELSE 0 END)",
                "SUM(CASE WHEN cache = 'hit' THEN 1 ELSE 0 END)",
            ),
            "usage_records",
            "at",
        )
    } else {
        (
            sums("hour", "SUM(requests)", "SUM(errors)", "SUM(cache_hits)"),
            "usage_hourly",
            "hour",
        )
    };
    let filter = format!(
        "FROM {table} WHERE {time} >= $1 AND {time} < $2 \
         AND ($4 IS NULL OR key_id = $4) AND ($5 IS NULL OR token_id = $5) AND ($6 IS NULL OR service_id = $6)"
    );
    match group {
        None => format!("{select} {filter} GROUP BY bucket ORDER BY bucket"),
        Some(column) => {
            let select = select.replacen("SELECT ", &format!("SELECT {column}, "), 1);
            format!(
                "{select} {filter} AND {column} IS NOT NULL AND {column} <> '' \
                 GROUP BY {column}, bucket ORDER BY {column}, bucket"
            )
        }
    }
}

fn bind_usage<Row>(
    query: &UsageQuery,
    sql: String,
) -> sqlx::query::QueryAs<'static, Db, Row, <Db as sqlx::Database>::Arguments>
where
    Row: for<'r> sqlx::FromRow<'r, DbRow>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(millis(query.from))
        .bind(millis(query.to))
        .bind(query.granularity.millis())
        .bind(query.key_id.as_ref().map(|k| k.as_str().to_owned()))
        .bind(query.token_id.as_ref().map(|t| t.as_str().to_owned()))
        .bind(query.service_id.clone())
}

fn totals(row: &SumsRow) -> UsageTotals {
    UsageTotals {
        requests: from_db_int(row.1),
        errors: from_db_int(row.2),
        cache_hits: from_db_int(row.3),
        input_tokens: from_db_int(row.4),
        cached_tokens: from_db_int(row.5),
        output_tokens: from_db_int(row.6),
        credits: from_db_int(row.7),
        cost_nanos: from_db_int(row.8),
    }
}

/// One hourly-sum row being accumulated from a batch.
#[derive(Default)]
struct HourlySums {
    requests: i64,
    errors: i64,
    cache_hits: i64,
    input_tokens: i64,
    cached_tokens: i64,
    output_tokens: i64,
    credits: i64,
    cost_nanos: i64,
}

const HOUR_MS: i64 = 3_600_000;
/// Rows per multi-row usage insert (22 binds each; SQLite allows 32,766 per statement).
const USAGE_ROWS_PER_INSERT: usize = 100;

#[async_trait]
impl UsageStore for ThisStore {
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        // Fixed-size chunks so the prepared statement is reused; only a full chunk's statement
        // is kept in the per-connection statement cache. (Caching a statement per batch size
        // grew memory with every batch: each is a program for thousands of parameters.)
        for chunk in records.chunks(USAGE_ROWS_PER_INSERT) {
            let mut insert = QueryBuilder::<Db>::new(
                "INSERT INTO usage_records (at, token_id, key_id, service_id, environment, method, endpoint, status, \
                 outcome, error_code, latency_ms, request_bytes, response_bytes, cache, retries, model, input_tokens, \
                 cached_tokens, cache_write_tokens, output_tokens, credits, cost_nanos) ",
            );
            // Placeholders come from the builder: `?` for SQLite, whose `$N` parameters are
            // named and looked up one by one (measured: with `$N`, binding 2,200 of them made
            // the usage writer cost as much CPU as a serving thread).
            insert.push_values(chunk, |mut row, r| {
                row.push_bind(millis(r.at))
                    .push_bind(r.token_id.as_ref().map(|t| t.as_str().to_owned()))
                    .push_bind(r.key_id.as_ref().map(|k| k.as_str().to_owned()))
                    .push_bind(r.service_id.clone())
                    .push_bind(r.environment.clone())
                    .push_bind(r.method.clone())
                    .push_bind(r.endpoint.clone())
                    .push_bind(i64::from(r.status))
                    .push_bind(r.outcome.as_str())
                    .push_bind(r.error_code.clone())
                    .push_bind(i64::from(r.latency_ms))
                    .push_bind(db_int(r.request_bytes))
                    .push_bind(db_int(r.response_bytes))
                    .push_bind(r.cache.as_str())
                    .push_bind(i64::from(r.retries))
                    .push_bind(r.model.clone())
                    .push_bind(db_int(r.tokens.input))
                    .push_bind(db_int(r.tokens.cached_input))
                    .push_bind(db_int(r.tokens.cache_write))
                    .push_bind(db_int(r.tokens.output))
                    .push_bind(i64::from(r.credits))
                    .push_bind(db_int(r.cost_nanos));
            });
            insert
                .build()
                .persistent(chunk.len() == USAGE_ROWS_PER_INSERT)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
        }
        let mut hourly: std::collections::BTreeMap<(i64, &str, &str, &str), HourlySums> =
            std::collections::BTreeMap::new();
        for r in records {
            let hour = millis(r.at).div_euclid(HOUR_MS) * HOUR_MS;
            let key = r.key_id.as_ref().map_or("", |k| k.as_str());
            let token = r.token_id.as_ref().map_or("", |t| t.as_str());
            let sums = hourly
                .entry((hour, r.service_id.as_str(), key, token))
                .or_default();
            sums.requests += 1;
            sums.errors += i64::from(r.outcome != Outcome::Success);
            sums.cache_hits += i64::from(r.cache == keyward_core::usage::CacheOutcome::Hit);
            sums.input_tokens += db_int(r.tokens.input.saturating_add(r.tokens.cache_write));
            sums.cached_tokens += db_int(r.tokens.cached_input);
            sums.output_tokens += db_int(r.tokens.output);
            sums.credits += i64::from(r.credits);
            sums.cost_nanos = sums.cost_nanos.saturating_add(db_int(r.cost_nanos));
        }
        for ((hour, service, key, token), s) in hourly {
            sqlx::query(
                "INSERT INTO usage_hourly (hour, service_id, key_id, token_id, requests, errors, cache_hits, input_tokens, \
                 cached_tokens, output_tokens, credits, cost_nanos) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (hour, service_id, key_id, token_id) DO UPDATE SET \
                 requests = usage_hourly.requests + excluded.requests, errors = usage_hourly.errors + excluded.errors, \
                 cache_hits = usage_hourly.cache_hits + excluded.cache_hits, \
                 input_tokens = usage_hourly.input_tokens + excluded.input_tokens, \
                 cached_tokens = usage_hourly.cached_tokens + excluded.cached_tokens, \
                 output_tokens = usage_hourly.output_tokens + excluded.output_tokens, \
                 credits = usage_hourly.credits + excluded.credits, cost_nanos = usage_hourly.cost_nanos + excluded.cost_nanos",
            )
            .bind(hour)
            .bind(service)
            .bind(key)
            .bind(token)
            .bind(s.requests)
            .bind(s.errors)
            .bind(s.cache_hits)
            .bind(s.input_tokens)
            .bind(s.cached_tokens)
            .bind(s.output_tokens)
            .bind(s.credits)
            .bind(s.cost_nanos)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        }
        commit(tx).await
    }

    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageBucket>, Error> {
        let rows: Vec<SumsRow> = bind_usage(query, usage_sql(query, None))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        rows.iter()
            .map(|row| {
                Ok(UsageBucket {
                    start: timestamp(row.0)?,
                    totals: totals(row),
                })
            })
            .collect()
    }

    async fn usage_grouped(
        &self,
        query: &UsageQuery,
        by: UsageGrouping,
    ) -> Result<Vec<(String, UsageBucket)>, Error> {
        let column = match by {
            UsageGrouping::Key => "key_id",
            UsageGrouping::Service => "service_id",
            UsageGrouping::Token => "token_id",
        };
        let rows: Vec<(String, i64, i64, i64, i64, i64, i64, i64, i64, i64)> =
            bind_usage(query, usage_sql(query, Some(column)))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(group, a, b, c, d, e, f, g, h, i)| {
                let row: SumsRow = (a, b, c, d, e, f, g, h, i);
                Ok((
                    group,
                    UsageBucket {
                        start: timestamp(row.0)?,
                        totals: totals(&row),
                    },
                ))
            })
            .collect()
    }

    async fn hourly_use_since(&self, since: Timestamp) -> Result<Vec<HourlyUse>, Error> {
        let mut out = Vec::new();
        for column in ["key_id", "token_id"] {
            let sql = format!(
                "SELECT {column}, hour, CAST(SUM(requests) AS BIGINT), CAST(SUM(credits) AS BIGINT), \
                 CAST(SUM(input_tokens + cached_tokens + output_tokens) AS BIGINT), CAST(SUM(cost_nanos) AS BIGINT) \
                 FROM usage_hourly WHERE hour >= $1 AND {column} <> '' GROUP BY {column}, hour"
            );
            let rows: Vec<(String, i64, i64, i64, i64, i64)> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(millis(since).div_euclid(HOUR_MS) * HOUR_MS)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| db_error(e, None))?;
            for (id, hour, requests, credits, tokens, cost) in rows {
                let subject = if column == "key_id" {
                    Subject::Key(parse("key id", &id)?)
                } else {
                    Subject::Token(parse("app token id", &id)?)
                };
                out.push(HourlyUse {
                    subject,
                    hour: timestamp(hour)?,
                    requests: from_db_int(requests),
                    credits: from_db_int(credits),
                    tokens: from_db_int(tokens),
                    cost_nanos: from_db_int(cost),
                });
            }
        }
        Ok(out)
    }

    async fn prune_usage(&self, before: Timestamp) -> Result<u64, Error> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM usage_records WHERE at < $1")
            .bind(millis(before))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(deleted.rows_affected())
    }
}

const AUDIT_COLUMNS: &str =
    "seq, at, actor_kind, actor_id, actor_name, source, action, target, outcome, details, hash";

fn audit_seq(v: i64) -> Result<u64, Error> {
    u64::try_from(v).map_err(|e| corrupt("audit sequence number", e))
}

fn audit_event(r: &DbRow) -> Result<AuditEvent, Error> {
    Ok(AuditEvent {
        seq: audit_seq(get(r, "seq")?)?,
        entry: AuditDraft {
            at: timestamp(get(r, "at")?)?,
            actor_kind: parse("actor kind", &get::<String>(r, "actor_kind")?)?,
            actor_id: get(r, "actor_id")?,
            actor_name: get(r, "actor_name")?,
            source: get(r, "source")?,
            action: get(r, "action")?,
            target: get(r, "target")?,
            outcome: parse("outcome", &get::<String>(r, "outcome")?)?,
            details: get(r, "details")?,
        },
        hash: get(r, "hash")?,
    })
}

#[async_trait]
impl AuditStore for ThisStore {
    async fn append_audit(&self, entry: &AuditDraft) -> Result<AuditEvent, Error> {
        let mut tx = self.begin_write().await?;
        // Taking the head row first serializes appends (row lock on PostgreSQL).
        let (seq, prev): (i64, String) = sqlx::query_as(
            "UPDATE audit_chain_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        let seq = audit_seq(seq)?;
        let prev = parse_hash(&prev).ok_or_else(|| corrupt("audit chain head", "not a hash"))?;
        let hash = hash_hex(&chain_hash(&prev, seq, entry));
        sqlx::query(
            "INSERT INTO audit_events (seq, at, actor_kind, actor_id, actor_name, source, action, target, outcome, details, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(i64::try_from(seq).map_err(|e| corrupt("audit sequence number", e))?)
        .bind(millis(entry.at))
        .bind(entry.actor_kind.as_str())
        .bind(&entry.actor_id)
        .bind(&entry.actor_name)
        .bind(&entry.source)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(entry.outcome.as_str())
        .bind(&entry.details)
        .bind(&hash)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        sqlx::query("UPDATE audit_chain_head SET hash = $1 WHERE id = 1")
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(AuditEvent {
            seq,
            entry: entry.clone(),
            hash,
        })
    }

    async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, Error> {
        let mut q =
            QueryBuilder::<Db>::new(format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE 1 = 1"));
        if let Some(actor) = &filter.actor {
            q.push(" AND (actor_id = ")
                .push_bind(actor.clone())
                .push(" OR actor_name = ")
                .push_bind(actor.clone())
                .push(")");
        }
        if let Some(action) = &filter.action {
            // `key` matches `key.create`, `key.delete`, …; an exact name matches itself.
            q.push(" AND (action = ")
                .push_bind(action.clone())
                .push(" OR action LIKE ")
                .push_bind(format!("{}.%", action.replace(['%', '_'], "")))
                .push(")");
        }
        if let Some(target) = &filter.target {
            q.push(" AND target = ").push_bind(target.clone());
        }
        if let Some(outcome) = filter.outcome {
            q.push(" AND outcome = ").push_bind(outcome.as_str());
        }
        if let Some(from) = filter.from {
            q.push(" AND at >= ").push_bind(millis(from));
        }
        if let Some(until) = filter.until {
            q.push(" AND at < ").push_bind(millis(until));
        }
        if let Some(after) = filter.after_seq {
            q.push(" AND seq > ")
                .push_bind(i64::try_from(after).unwrap_or(i64::MAX));
        }
        q.push(" ORDER BY seq LIMIT ").push_bind(i64::from(filter.limit));
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        rows.iter().map(audit_event).collect()
    }

    async fn audit_head(&self) -> Result<Option<(u64, String)>, Error> {
        let (seq, hash): (i64, String) =
            sqlx::query_as("SELECT seq, hash FROM audit_chain_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        let seq = audit_seq(seq)?;
        Ok((seq > 0).then_some((seq, hash)))
    }

    async fn insert_audit_checkpoint(&self, c: &AuditCheckpoint) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(i64::try_from(c.seq).map_err(|e| corrupt("audit sequence number", e))?)
        .bind(&c.hash)
        .bind(millis(c.at))
        .bind(&c.key_id)
        .bind(&c.signature)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            db_error(
                e,
                Some(("checkpoint_exists", "a checkpoint for this entry already exists")),
            )
        })?;
        Ok(())
    }

    async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>, Error> {
        let rows = sqlx::query("SELECT seq, hash, at, key_id, signature FROM audit_checkpoints ORDER BY seq")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        rows.iter()
            .map(|r| {
                Ok(AuditCheckpoint {
                    seq: audit_seq(get(r, "seq")?)?,
                    hash: get(r, "hash")?,
                    at: timestamp(get(r, "at")?)?,
                    key_id: get(r, "key_id")?,
                    signature: get(r, "signature")?,
                })
            })
            .collect()
    }

    async fn audit_action_counts(&self, action: &str) -> Result<Vec<(String, u64, Timestamp)>, Error> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT target, CAST(COUNT(*) AS BIGINT), MAX(at) FROM audit_events \
             WHERE action = $1 AND outcome = 'success' AND target IS NOT NULL \
             GROUP BY target ORDER BY target",
        )
        .bind(action)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(target, count, at)| {
                Ok((
                    target,
                    u64::try_from(count).map_err(|e| corrupt("count", e))?,
                    timestamp(at)?,
                ))
            })
            .collect()
    }
}

const SESSION_COLUMNS: &str =
    "public_id, secret_hash, csrf_hash, user_id, created_at, last_seen_at, expires_at, mfa_at, source";

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
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE public_id = $2 AND last_seen_at < $1")
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
    serde_json::to_string(&set).map_err(|e| Error::internal(format!("cannot encode permissions: {e}")))
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
            let found: Option<(String,)> = sqlx::query_as("SELECT id FROM custom_roles WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_error(e, None))?;
            if found.is_none() {
                return Err(Error::invalid("unknown_role", format!("there is no role `{id}`")));
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

const APPROVAL_COLUMNS: &str = "id, status, operation, operation_hash, reason, requested_by, required, approver_roles, decisions, created_at, expires_at, executed_at, revision";

fn json_text<T: serde::Serialize>(what: &str, value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::internal(format!("cannot encode {what}: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

fn approval_row(r: &DbRow) -> Result<ApprovalRequest, Error> {
    let required: i64 = get(r, "required")?;
    let revision: i64 = get(r, "revision")?;
    Ok(ApprovalRequest {
        id: parse("approval id", &get::<String>(r, "id")?)?,
        status: parse("approval status", &get::<String>(r, "status")?)?,
        operation: from_json("approval operation", &get::<String>(r, "operation")?)?,
        operation_hash: get(r, "operation_hash")?,
        reason: get(r, "reason")?,
        requested_by: from_json("approval requester", &get::<String>(r, "requested_by")?)?,
        required: u8::try_from(required).map_err(|e| corrupt("approvals required", e))?,
        approver_roles: from_json("approver roles", &get::<String>(r, "approver_roles")?)?,
        decisions: from_json("approval decisions", &get::<String>(r, "decisions")?)?,
        created_at: timestamp(get(r, "created_at")?)?,
        expires_at: timestamp(get(r, "expires_at")?)?,
        executed_at: opt_timestamp(get(r, "executed_at")?)?,
        revision: u32::try_from(revision).map_err(|e| corrupt("approval revision", e))?,
    })
}

#[async_trait]
impl ApprovalStore for ThisStore {
    async fn insert_approval(&self, a: &ApprovalRequest) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO approvals (id, status, operation, operation_hash, reason, requested_by_id, requested_by, required, \
             approver_roles, decisions, created_at, expires_at, executed_at, revision) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(a.id.as_str())
        .bind(a.status.as_str())
        .bind(json_text("operation", &a.operation)?)
        .bind(&a.operation_hash)
        .bind(&a.reason)
        .bind(&a.requested_by.id)
        .bind(json_text("requester", &a.requested_by)?)
        .bind(i64::from(a.required))
        .bind(json_text("approver roles", &a.approver_roles)?)
        .bind(json_text("decisions", &a.decisions)?)
        .bind(millis(a.created_at))
        .bind(millis(a.expires_at))
        .bind(a.executed_at.map(millis))
        .bind(i64::from(a.revision))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, Some(("approval_exists", "an approval with this id exists"))))?;
        Ok(())
    }

    async fn approval(&self, id: &ApprovalId) -> Result<Option<ApprovalRequest>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        row.as_ref().map(approval_row).transpose()
    }

    async fn approvals(
        &self,
        status: Option<ApprovalStatus>,
        requested_by: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApprovalRequest>, Error> {
        let mut q: QueryBuilder<Db> =
            QueryBuilder::new(format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE 1 = 1"));
        if let Some(status) = status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(who) = requested_by {
            q.push(" AND requested_by_id = ").push_bind(who.to_owned());
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        rows.iter().map(approval_row).collect()
    }

    async fn update_approval(&self, a: &ApprovalRequest, expected: u32) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE approvals SET status = $1, decisions = $2, executed_at = $3, revision = $4 \
             WHERE id = $5 AND revision = $6",
        )
        .bind(a.status.as_str())
        .bind(json_text("decisions", &a.decisions)?)
        .bind(a.executed_at.map(millis))
        .bind(i64::from(a.revision))
        .bind(a.id.as_str())
        .bind(i64::from(expected))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }
}

const ROTATION_COLUMNS: &str = "id, key_id, step, old_version, new_version, managed, canary_percent, window_ms, \
    window_ends_at, validation, verification, canary_served, canary_rejected, fallback_served, new_rejected_at, \
    created_by, created_at, updated_at, revision";

/// The steps in which a rotation holds its key (matches the partial unique index).
const ACTIVE_ROTATION: &str =
    "step IN ('creating', 'pending', 'validated', 'canary', 'promoted')";

fn count(r: &DbRow, column: &str) -> Result<u64, Error> {
    u64::try_from(get::<i64>(r, column)?).map_err(|e| corrupt(column, e))
}

fn opt_json<T: serde::de::DeserializeOwned>(what: &str, text: Option<String>) -> Result<Option<T>, Error> {
    text.as_deref().map(|t| from_json(what, t)).transpose()
}

fn opt_json_text<T: serde::Serialize>(what: &str, value: Option<&T>) -> Result<Option<String>, Error> {
    value.map(|v| json_text(what, v)).transpose()
}

fn rotation_row(r: &DbRow) -> Result<Rotation, Error> {
    let percent = get::<i64>(r, "canary_percent")?;
    Ok(Rotation {
        id: parse("rotation id", &get::<String>(r, "id")?)?,
        key_id: parse("key id", &get::<String>(r, "key_id")?)?,
        step: parse("rotation step", &get::<String>(r, "step")?)?,
        old_version: version_number(get(r, "old_version")?)?,
        new_version: version_number(get(r, "new_version")?)?,
        managed: opt_json("rotation management", get(r, "managed")?)?,
        canary_percent: u8::try_from(percent).map_err(|e| corrupt("canary percent", e))?,
        window: jiff::SignedDuration::from_millis(get(r, "window_ms")?),
        window_ends_at: opt_timestamp(get(r, "window_ends_at")?)?,
        validation: opt_json("rotation validation", get(r, "validation")?)?,
        verification: opt_json("rotation verification", get(r, "verification")?)?,
        traffic: RotationTraffic {
            canary_served: count(r, "canary_served")?,
            canary_rejected: count(r, "canary_rejected")?,
            fallback_served: count(r, "fallback_served")?,
            new_rejected_at: opt_timestamp(get(r, "new_rejected_at")?)?,
        },
        created_by: get(r, "created_by")?,
        created_at: timestamp(get(r, "created_at")?)?,
        updated_at: timestamp(get(r, "updated_at")?)?,
        revision: count(r, "revision")?,
    })
}

fn window_ms(rotation: &Rotation) -> i64 {
    i64::try_from(rotation.window.as_millis()).unwrap_or(i64::MAX)
}

impl ThisStore {
    /// Moves version states (and the key's current version) for one rotation step.
    async fn move_versions(
        tx: &mut sqlx::Transaction<'static, Db>,
        key_id: &KeyId,
        moves: VersionMove,
        now: Timestamp,
    ) -> Result<(), Error> {
        let set_state = |state: VersionState, version: u32, from: VersionState| {
            sqlx::query("UPDATE key_versions SET state = $1 WHERE key_id = $2 AND version = $3 AND state = $4")
                .bind(state.as_str())
                .bind(key_id.as_str())
                .bind(i64::from(version))
                .bind(from.as_str())
        };
        match moves {
            VersionMove::Promote { new, old } => {
                sqlx::query("UPDATE key_versions SET state = $1 WHERE key_id = $2 AND state = $3")
                    .bind(VersionState::Retired.as_str())
                    .bind(key_id.as_str())
                    .bind(VersionState::Previous.as_str())
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error(e, None))?;
                set_state(VersionState::Previous, old, VersionState::Current)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error(e, None))?;
                let promoted = set_state(VersionState::Current, new, VersionState::Pending)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error(e, None))?;
                let key = sqlx::query(
                    "UPDATE keys SET current_version = $1, updated_at = $2, rotated_at = $2, \
                     current_hint = (SELECT hint FROM key_versions WHERE key_id = $3 AND version = $1) \
                     WHERE id = $3 AND deleted_at IS NULL AND revoked_at IS NULL",
                )
                .bind(i64::from(new))
                .bind(millis(now))
                .bind(key_id.as_str())
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error(e, None))?;
                if promoted.rows_affected() != 1 || key.rows_affected() != 1 {
                    return Err(Error::not_found(
                        "key_not_found",
                        format!("key {key_id} is no longer live, or its pending version {new} is gone"),
                    ));
                }
            }
            VersionMove::Retire { version } => {
                for from in [VersionState::Previous, VersionState::Pending] {
                    set_state(VersionState::Retired, version, from)
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| db_error(e, None))?;
                }
                sqlx::query("UPDATE keys SET updated_at = $1 WHERE id = $2")
                    .bind(millis(now))
                    .bind(key_id.as_str())
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error(e, None))?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl RotationStore for ThisStore {
    async fn insert_rotation(&self, r: &Rotation, pending: Option<&KeyVersion>) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO rotations ({ROTATION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        )))
        .bind(r.id.as_str())
        .bind(r.key_id.as_str())
        .bind(r.step.as_str())
        .bind(i64::from(r.old_version))
        .bind(i64::from(r.new_version))
        .bind(opt_json_text("rotation management", r.managed.as_ref())?)
        .bind(i64::from(r.canary_percent))
        .bind(window_ms(r))
        .bind(r.window_ends_at.map(millis))
        .bind(opt_json_text("rotation validation", r.validation.as_ref())?)
        .bind(opt_json_text("rotation verification", r.verification.as_ref())?)
        .bind(0_i64)
        .bind(0_i64)
        .bind(0_i64)
        .bind(Option::<i64>::None)
        .bind(&r.created_by)
        .bind(millis(r.created_at))
        .bind(millis(r.updated_at))
        .bind(i64::try_from(r.revision).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            db_error(
                e,
                Some(("rotation_in_progress", "this key already has a rotation in progress; finish or cancel it first")),
            )
        })?;
        if let Some(version) = pending {
            Self::insert_version(&mut tx, version).await?;
        }
        commit(tx).await
    }

    async fn rotation(&self, id: &RotationId) -> Result<Option<Rotation>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        row.as_ref().map(rotation_row).transpose()
    }

    async fn rotations_of_key(&self, key_id: &KeyId, limit: u32) -> Result<Vec<Rotation>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations WHERE key_id = $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(key_id.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(rotation_row).collect()
    }

    async fn active_rotations(&self) -> Result<Vec<Rotation>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations WHERE {ACTIVE_ROTATION} ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(rotation_row).collect()
    }

    async fn advance_rotation(
        &self,
        next: &Rotation,
        expected: u64,
        pending: Option<&KeyVersion>,
        moves: Option<VersionMove>,
        now: Timestamp,
    ) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE rotations SET step = $1, managed = $2, canary_percent = $3, window_ends_at = $4, \
             validation = $5, verification = $6, updated_at = $7, revision = $8 \
             WHERE id = $9 AND revision = $10",
        )
        .bind(next.step.as_str())
        .bind(opt_json_text("rotation management", next.managed.as_ref())?)
        .bind(i64::from(next.canary_percent))
        .bind(next.window_ends_at.map(millis))
        .bind(opt_json_text("rotation validation", next.validation.as_ref())?)
        .bind(opt_json_text("rotation verification", next.verification.as_ref())?)
        .bind(millis(next.updated_at))
        .bind(i64::try_from(next.revision).unwrap_or(i64::MAX))
        .bind(next.id.as_str())
        .bind(i64::try_from(expected).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        if let Some(version) = pending {
            Self::insert_version(&mut tx, version).await?;
        }
        if let Some(moves) = moves {
            Self::move_versions(&mut tx, &next.key_id, moves, now).await?;
        }
        commit(tx).await?;
        Ok(true)
    }

    async fn add_rotation_traffic(&self, traffic: &[(KeyId, RotationTraffic)]) -> Result<(), Error> {
        if traffic.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (key_id, t) in traffic {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE rotations SET canary_served = canary_served + $1, canary_rejected = canary_rejected + $2, \
                 fallback_served = fallback_served + $3, \
                 new_rejected_at = CASE WHEN $4 IS NULL THEN new_rejected_at \
                     WHEN new_rejected_at IS NULL OR new_rejected_at < $4 THEN $4 ELSE new_rejected_at END \
                 WHERE key_id = $5 AND {ACTIVE_ROTATION}"
            )))
            .bind(i64::try_from(t.canary_served).unwrap_or(i64::MAX))
            .bind(i64::try_from(t.canary_rejected).unwrap_or(i64::MAX))
            .bind(i64::try_from(t.fallback_served).unwrap_or(i64::MAX))
            .bind(t.new_rejected_at.map(millis))
            .bind(key_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        }
        commit(tx).await
    }
}

#[async_trait]
impl HealthStore for ThisStore {
    async fn claim_probe(
        &self,
        key_id: &KeyId,
        now: Timestamp,
        last_before: Timestamp,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "INSERT INTO key_probes (key_id, probed_at) VALUES ($1, $2) \
             ON CONFLICT (key_id) DO UPDATE SET probed_at = $2, verdict = NULL \
             WHERE key_probes.probed_at <= $3",
        )
        .bind(key_id.as_str())
        .bind(millis(now))
        .bind(millis(last_before))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_probe_verdict(&self, key_id: &KeyId, verdict: &str) -> Result<(), Error> {
        sqlx::query("UPDATE key_probes SET verdict = $1 WHERE key_id = $2")
            .bind(verdict)
            .bind(key_id.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(())
    }

    async fn probes(&self) -> Result<Vec<(KeyId, Timestamp, Option<String>)>, Error> {
        let rows: Vec<(String, i64, Option<String>)> =
            sqlx::query_as("SELECT key_id, probed_at, verdict FROM key_probes ORDER BY key_id")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(id, at, verdict)| Ok((parse("key id", &id)?, timestamp(at)?, verdict)))
            .collect()
    }

    async fn recent_calls(&self, since: Timestamp) -> Result<Vec<KeyCalls>, Error> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT key_id, service_id, CAST(COUNT(*) AS BIGINT), \
                    CAST(SUM(CASE WHEN outcome = 'failed' OR status >= 500 THEN 1 ELSE 0 END) AS BIGINT), \
                    CAST(SUM(latency_ms) AS BIGINT) \
             FROM usage_records \
             WHERE at >= $1 AND key_id IS NOT NULL AND outcome <> 'refused' AND cache <> 'hit' \
             GROUP BY key_id, service_id ORDER BY key_id",
        )
        .bind(millis(since))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(key, service_id, calls, failures, latency)| {
                let count = |what: &str, n: i64| u64::try_from(n).map_err(|e| corrupt(what, e));
                Ok(KeyCalls {
                    key_id: parse("key id", &key)?,
                    service_id,
                    stats: CallStats {
                        calls: count("calls", calls)?,
                        failures: count("failures", failures)?,
                        latency_ms_total: count("latency", latency)?,
                    },
                })
            })
            .collect()
    }

    async fn health_states(&self) -> Result<Vec<HealthState>, Error> {
        let rows: Vec<(String, String, bool, i64)> = sqlx::query_as(
            "SELECT subject, status, disruption, since FROM health_states ORDER BY subject",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.into_iter()
            .map(|(subject, status, disruption, since)| {
                Ok(HealthState {
                    subject,
                    status: parse("health status", &status)?,
                    disruption,
                    since: timestamp(since)?,
                })
            })
            .collect()
    }

    async fn set_health_state(
        &self,
        next: &HealthState,
        expected: Option<(HealthStatus, bool)>,
    ) -> Result<bool, Error> {
        let done = match expected {
            None => sqlx::query(
                "INSERT INTO health_states (subject, status, disruption, since) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (subject) DO NOTHING",
            )
            .bind(&next.subject)
            .bind(next.status.as_str())
            .bind(next.disruption)
            .bind(millis(next.since)),
            Some((status, disruption)) => sqlx::query(
                "UPDATE health_states SET status = $2, disruption = $3, since = $4 \
                 WHERE subject = $1 AND status = $5 AND disruption = $6",
            )
            .bind(&next.subject)
            .bind(next.status.as_str())
            .bind(next.disruption)
            .bind(millis(next.since))
            .bind(status.as_str())
            .bind(disruption),
        }
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(done.rows_affected() == 1)
    }
}

const WEBHOOK_COLUMNS: &str =
    "id, url, kinds, categories, allow_private_network, created_by, created_at, owner_id";
const DELIVERY_COLUMNS: &str = "id, webhook_id, kind, dedupe, body, attempts, status, next_attempt_at, last_status, last_error, created_at, updated_at";

fn webhook_row(r: &DbRow) -> Result<Webhook, Error> {
    Ok(Webhook {
        id: parse("webhook id", &get::<String>(r, "id")?)?,
        url: get(r, "url")?,
        kinds: from_json("webhook kinds", &get::<String>(r, "kinds")?)?,
        categories: from_json("webhook categories", &get::<String>(r, "categories")?)?,
        allow_private_network: get(r, "allow_private_network")?,
        created_by: get(r, "created_by")?,
        created_at: timestamp(get(r, "created_at")?)?,
        owner: get::<Option<String>>(r, "owner_id")?
            .map(|id| parse("user id", &id))
            .transpose()?,
    })
}

fn delivery_row(r: &DbRow) -> Result<Delivery, Error> {
    let last_status: Option<i64> = get(r, "last_status")?;
    Ok(Delivery {
        id: parse("delivery id", &get::<String>(r, "id")?)?,
        webhook_id: parse("webhook id", &get::<String>(r, "webhook_id")?)?,
        kind: parse("notification kind", &get::<String>(r, "kind")?)?,
        dedupe: get(r, "dedupe")?,
        body: get(r, "body")?,
        attempts: u32::try_from(get::<i64>(r, "attempts")?).map_err(|e| corrupt("attempts", e))?,
        status: parse("delivery status", &get::<String>(r, "status")?)?,
        next_attempt_at: opt_timestamp(get(r, "next_attempt_at")?)?,
        last_status: last_status
            .map(u16::try_from)
            .transpose()
            .map_err(|e| corrupt("last status", e))?,
        last_error: get(r, "last_error")?,
        created_at: timestamp(get(r, "created_at")?)?,
        updated_at: timestamp(get(r, "updated_at")?)?,
    })
}

async fn insert_webhook<'e, E>(executor: E, w: &Webhook) -> Result<(), Error>
where
    E: sqlx::Executor<'e, Database = Db>,
{
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    )))
    .bind(w.id.as_str())
    .bind(&w.url)
    .bind(json_text("webhook kinds", &w.kinds)?)
    .bind(json_text("webhook categories", &w.categories)?)
    .bind(w.allow_private_network)
    .bind(&w.created_by)
    .bind(millis(w.created_at))
    .bind(w.owner.as_ref().map(|o| o.as_str().to_owned()))
    .execute(executor)
    .await
    .map_err(|e| db_error(e, Some(("webhook_exists", "a webhook with this id exists"))))?;
    Ok(())
}

#[async_trait]
impl NotificationStore for ThisStore {
    async fn insert_webhook(&self, w: &Webhook) -> Result<(), Error> {
        insert_webhook(&self.pool, w).await
    }

    async fn put_subscription(&self, w: &Webhook) -> Result<(), Error> {
        let owner = w
            .owner
            .as_ref()
            .ok_or_else(|| Error::internal("a subscription without an owner"))?;
        let mut tx = self.begin_write().await?;
        // Its deliveries go with it, as when a webhook is deleted.
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE webhook_id IN (SELECT id FROM webhooks WHERE owner_id = $1)",
        )
        .bind(owner.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, None))?;
        sqlx::query("DELETE FROM webhooks WHERE owner_id = $1")
            .bind(owner.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        insert_webhook(&mut *tx, w).await?;
        commit(tx).await
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(webhook_row).collect()
    }

    async fn delete_webhook(&self, id: &WebhookId) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
        commit(tx).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn enqueue_deliveries(&self, deliveries: &[Delivery]) -> Result<u64, Error> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let mut queued = 0;
        for d in deliveries {
            let done = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (webhook_id, dedupe) DO NOTHING"
            )))
            .bind(d.id.as_str())
            .bind(d.webhook_id.as_str())
            .bind(d.kind.as_str())
            .bind(&d.dedupe)
            .bind(&d.body)
            .bind(i64::from(d.attempts))
            .bind(d.status.as_str())
            .bind(d.next_attempt_at.map(millis))
            .bind(d.last_status.map(i64::from))
            .bind(&d.last_error)
            .bind(millis(d.created_at))
            .bind(millis(d.updated_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, None))?;
            queued += done.rows_affected();
        }
        commit(tx).await?;
        Ok(queued)
    }

    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<Delivery>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE status = 'pending' AND next_attempt_at <= $1 \
             AND (claimed_until IS NULL OR claimed_until < $1) ORDER BY next_attempt_at, id LIMIT $2"
        )))
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        let mut claimed = Vec::new();
        for row in &rows {
            let delivery = delivery_row(row)?;
            let won = sqlx::query(
                "UPDATE webhook_deliveries SET claimed_until = $1 \
                 WHERE id = $2 AND status = 'pending' AND (claimed_until IS NULL OR claimed_until < $3)",
            )
            .bind(millis(lease_until))
            .bind(delivery.id.as_str())
            .bind(millis(now))
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
            if won.rows_affected() == 1 {
                claimed.push(delivery);
            }
        }
        Ok(claimed)
    }

    async fn save_delivery(&self, d: &Delivery) -> Result<(), Error> {
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = $1, status = $2, next_attempt_at = $3, \
             last_status = $4, last_error = $5, updated_at = $6, claimed_until = NULL WHERE id = $7",
        )
        .bind(i64::from(d.attempts))
        .bind(d.status.as_str())
        .bind(d.next_attempt_at.map(millis))
        .bind(d.last_status.map(i64::from))
        .bind(&d.last_error)
        .bind(millis(d.updated_at))
        .bind(d.id.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(())
    }

    async fn deliveries(&self, webhook_id: &WebhookId, limit: u32) -> Result<Vec<Delivery>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(webhook_id.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        rows.iter().map(delivery_row).collect()
    }
}

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
        sqlx::query("INSERT INTO mfa_recovery_codes (user_id, code_hash, used_at) VALUES ($1, $2, NULL)")
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

    async fn replace_recovery_codes(&self, user_id: &UserId, hashes: &[Vec<u8>]) -> Result<(), Error> {
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

#[async_trait]
impl Store for ThisStore {
    fn backend(&self) -> &'static str {
        Self::backend_name()
    }

    async fn initialized(&self) -> Result<bool, Error> {
        self.schema_exists().await
    }

    async fn migrate(&self) -> Result<(), Error> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    (*sql).into_sql_str(),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&self.pool)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "migration failed");
                Error::internal(format!("database migration failed: {e}"))
            })
    }

    async fn change_marker(&self) -> Result<Vec<i64>, Error> {
        // Sums, not maxima: an update stamped earlier than the latest (clock skew between
        // instances) still changes a sum.
        let row: MarkerRow = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM keys), \
                    (SELECT CAST(COALESCE(SUM(updated_at % 1000000007), 0) AS BIGINT) FROM keys), \
                    (SELECT COUNT(*) FROM key_versions), \
                    (SELECT COUNT(*) FROM app_tokens), \
                    (SELECT CAST(COALESCE(SUM(revoked_at % 1000000007), 0) AS BIGINT) FROM app_tokens), \
                    (SELECT COUNT(*) FROM custom_services), \
                    (SELECT CAST(COALESCE(SUM(updated_at % 1000000007), 0) AS BIGINT) FROM base_url_overrides), \
                    (SELECT COUNT(*) FROM key_flags), \
                    (SELECT CAST(COALESCE(SUM((since + COALESCE(until, 0)) % 1000000007), 0) AS BIGINT) FROM key_flags), \
                    (SELECT CAST(COALESCE(SUM(updated_at % 1000000007), 0) AS BIGINT) FROM pool_strategies), \
                    (SELECT COUNT(*) FROM rotations), \
                    (SELECT CAST(COALESCE(SUM(revision), 0) AS BIGINT) FROM rotations)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(vec![
            row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9, row.10, row.11,
        ])
    }

    async fn maintain(&self) -> Result<(), Error> {
        sqlx::query(MAINTAIN_SQL)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

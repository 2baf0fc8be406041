//! The store implementation shared by both backends: one file per store trait, compiled
//! twice — as `sqlite::queries` and `postgres::queries` (each backend declares this tree with
//! `#[path]`) — against the backend's `Db`, `DbRow`, `ThisStore`, `MIGRATIONS`,
//! `begin_write()`, `schema_exists()` and `backend_name()`. SQL here must be valid in both
//! dialects (`$n` placeholders work in both). This file holds what several stores share:
//! row readers and writers, time and number conversions, and the whole `Store`.

use super::{Db, DbRow, MAINTAIN_SQL, MIGRATIONS, NEWEST_MIGRATION, ThisStore};
use keyward_core::Error;

use std::borrow::Cow;
use std::str::FromStr;

use async_trait::async_trait;
use jiff::Timestamp;
use keyward_core::access::{CustomRole, Grant, PermissionSet, Role, RoleRef, Scope};
use keyward_core::app_token::{AppToken, Budget, RateLimit};
use keyward_core::approval::{ApprovalRequest, ApprovalStatus};
use keyward_core::audit::{
    AuditCheckpoint, AuditDraft, AuditEvent, AuditFilter, chain_hash, hash_hex, parse_hash,
};
use keyward_core::catalog::BaseUrlOverride;
use keyward_core::guided_rotation::{Rotation, RotationTraffic, VersionMove};
use keyward_core::health::{CallStats, HealthState, HealthStatus, KeyCalls};
use keyward_core::id::{
    AppTokenId, ApprovalId, GrantId, KeyId, RotationId, TokenId, UserId, WebhookId,
};
use keyward_core::key::{
    Key, KeyFilter, KeyStatus, KeyVersion, Page, PageRequest, Revocation, SealedSecret,
    VersionState,
};
use keyward_core::master_key::{InstanceReport, KekUsage, MasterKeyRecord};
use keyward_core::mfa::MfaEnrolment;
use keyward_core::notification::{Delivery, Webhook};
use keyward_core::ports::{
    AccessStore, AppTokenStore, ApprovalStore, AuditStore, CatalogStore, ChangeListener,
    HealthStore, KeyStore, MfaStore, NotificationStore, RotationStore, SessionStore, Store,
    TokenStore, UsageStore, UserStore, VaultStore,
};
use keyward_core::service::Limit;
use keyward_core::service::{Category, Environment, ServiceDefinition};
use keyward_core::session::Session;
use keyward_core::token::ManagementToken;
use keyward_core::usage::{
    HourlyUse, KeyFlag, PoolSetting, Subject, UsageBucket, UsageGrouping, UsageHeadline,
    UsageQuery, UsageRecord, UsageTotals,
};
use keyward_core::user::User;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{QueryBuilder, Row, SqlSafeStr};

use crate::{corrupt, db_error};

mod access;
mod alerts;
mod app_tokens;
mod approvals;
mod audit;
mod backup;
mod catalog;
mod health;
mod keys;
mod mfa;
mod notifications;
mod rotations;
mod sessions;
mod tokens;
mod usage;
mod users;
mod vault;

const KEY_COLUMNS: &str = "id, service_id, environment, alias, description, owner, tags, criticality, enabled, \
    expires_at, current_version, current_hint, created_by, created_at, updated_at, last_used_at, deleted_at, deleted_by, controls, \
    revoked_at, revoked_by, revoke_reason, rotated_at, revocation_check";

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

/// A key's revocation check as stored (JSON), if any.
fn revocation_check_json(key: &Key) -> Result<Option<String>, Error> {
    key.revoked
        .as_ref()
        .and_then(|r| r.check.as_ref())
        .map(|check| {
            serde_json::to_string(check)
                .map_err(|e| Error::internal(format!("cannot store a revocation check: {e}")))
        })
        .transpose()
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
                check: get::<Option<String>>(row, "revocation_check")?
                    .map(|text| {
                        serde_json::from_str(&text).map_err(|e| corrupt("revocation check", e))
                    })
                    .transpose()?,
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
        scope: get::<Option<String>>(row, "scope")?.map_or(Ok(Scope::everywhere()), |t| {
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

fn json_text<T: serde::Serialize>(what: &str, value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::internal(format!("cannot encode {what}: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
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

/// The steps in which a rotation holds its key (matches the partial unique index).
const ACTIVE_ROTATION: &str = "step IN ('creating', 'pending', 'validated', 'canary', 'promoted')";

fn count(r: &DbRow, column: &str) -> Result<u64, Error> {
    u64::try_from(get::<i64>(r, column)?).map_err(|e| corrupt(column, e))
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
        self.migrate_up_to(i64::MAX).await
    }

    async fn migrate_up_to(&self, newest: i64) -> Result<(), Error> {
        let migrations = MIGRATIONS
            .iter()
            .filter(|(version, _, _)| *version <= newest)
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
        // Up to an older version, migrations the database already has beyond it are not
        // "missing" (a forced restore of an older backup into a newer vault's database).
        Migrator::with_migrations(migrations)
            .set_ignore_missing(newest < NEWEST_MIGRATION)
            .run(&self.pool)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "migration failed");
                Error::internal(format!("database migration failed: {e}"))
            })
    }

    async fn change_number(&self) -> Result<i64, Error> {
        let (number,): (i64,) = sqlx::query_as("SELECT number FROM change_feed WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(number)
    }

    async fn change_listener(&self) -> Result<Option<Box<dyn ChangeListener>>, Error> {
        self.listen_for_changes().await
    }

    async fn export_tables(
        &self,
        raw_usage: bool,
        sink: &mut dyn keyward_core::backup::ChunkSink,
    ) -> Result<i64, Error> {
        self.export_backup_tables(raw_usage, sink).await
    }

    async fn holds_a_vault(&self) -> Result<bool, Error> {
        self.store_holds_a_vault().await
    }

    async fn import_tables(
        &self,
        source: &mut dyn keyward_core::backup::ChunkSource,
    ) -> Result<u64, Error> {
        self.import_backup_tables(source).await
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

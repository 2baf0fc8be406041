//! The embedded default backend.
//!
//! WAL journal with `synchronous=FULL`: every acknowledged management write survives a
//! process kill *and* a power loss (NORMAL only survives the former). Write transactions
//! start with `BEGIN IMMEDIATE` so they queue on the busy timeout instead of failing when two
//! writers meet.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use crate::db_error;
use keyward_core::Error;

type Db = Sqlite;
type DbRow = sqlx::sqlite::SqliteRow;
type ThisStore = SqliteStore;

/// Analyses tables whose statistics are stale (bounded work; see SQLite's PRAGMA optimize).
const MAINTAIN_SQL: &str = "PRAGMA optimize=0x10002";

/// The last migration's version.
pub(crate) const NEWEST_MIGRATION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "vault",
        include_str!("../migrations/sqlite/0001_vault.sql"),
    ),
    (
        2,
        "app tokens",
        include_str!("../migrations/sqlite/0002_app_tokens.sql"),
    ),
    (
        3,
        "metering",
        include_str!("../migrations/sqlite/0003_metering.sql"),
    ),
    (
        4,
        "audit",
        include_str!("../migrations/sqlite/0004_audit.sql"),
    ),
    (
        5,
        "sessions",
        include_str!("../migrations/sqlite/0005_sessions.sql"),
    ),
    (6, "mfa", include_str!("../migrations/sqlite/0006_mfa.sql")),
    (
        7,
        "access",
        include_str!("../migrations/sqlite/0007_access.sql"),
    ),
    (
        8,
        "approvals",
        include_str!("../migrations/sqlite/0008_approvals.sql"),
    ),
    (
        9,
        "revocation",
        include_str!("../migrations/sqlite/0009_revocation.sql"),
    ),
    (
        10,
        "rotation",
        include_str!("../migrations/sqlite/0010_rotation.sql"),
    ),
    (
        11,
        "guided_rotations",
        include_str!("../migrations/sqlite/0011_guided_rotations.sql"),
    ),
    (
        12,
        "notifications",
        include_str!("../migrations/sqlite/0012_notifications.sql"),
    ),
    (
        13,
        "key probes",
        include_str!("../migrations/sqlite/0013_key_probes.sql"),
    ),
    (
        14,
        "health states",
        include_str!("../migrations/sqlite/0014_health_states.sql"),
    ),
    (
        15,
        "subscriptions",
        include_str!("../migrations/sqlite/0015_subscriptions.sql"),
    ),
    (
        16,
        "creators",
        include_str!("../migrations/sqlite/0016_creators.sql"),
    ),
    (
        17,
        "provider_answers",
        include_str!("../migrations/sqlite/0017_provider_answers.sql"),
    ),
    (
        18,
        "usage_rollups",
        include_str!("../migrations/sqlite/0018_usage_rollups.sql"),
    ),
    (
        19,
        "alerts",
        include_str!("../migrations/sqlite/0019_alerts.sql"),
    ),
    (
        20,
        "containments",
        include_str!("../migrations/sqlite/0020_containments.sql"),
    ),
    (
        21,
        "token_sightings",
        include_str!("../migrations/sqlite/0021_token_sightings.sql"),
    ),
    (
        22,
        "cache_misses",
        include_str!("../migrations/sqlite/0022_cache_misses.sql"),
    ),
    (
        23,
        "usage_key_rollups",
        include_str!("../migrations/sqlite/0023_usage_key_rollups.sql"),
    ),
    (
        24,
        "change feed",
        include_str!("../migrations/sqlite/0024_change_feed.sql"),
    ),
    (
        25,
        "instances",
        include_str!("../migrations/sqlite/0025_instances.sql"),
    ),
];

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn open(url: &str) -> Result<Self, Error> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("invalid_database_url", format!("bad SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| Error::unavailable(format!("cannot open the SQLite database: {e}")))?;
        Ok(Self { pool })
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Db>, Error> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| db_error(e, None))
    }

    async fn schema_exists(&self) -> Result<bool, Error> {
        let found: Option<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(found.is_some())
    }

    fn backend_name() -> &'static str {
        "sqlite"
    }

    /// SQLite has no `LISTEN`: instances poll the change number.
    #[allow(clippy::unused_async)]
    async fn listen_for_changes(
        &self,
    ) -> Result<Option<Box<dyn keyward_core::ports::ChangeListener>>, Error> {
        Ok(None)
    }
}

/// A read transaction for a backup: WAL gives it one snapshot from its first read to its end.
async fn backup_snapshot(pool: &SqlitePool) -> Result<sqlx::Transaction<'static, Db>, Error> {
    pool.begin().await.map_err(|e| db_error(e, None))
}

/// A value as SQLite stores it (its storage class, whatever the column declares).
fn backup_read_cell(row: &DbRow, index: usize) -> Result<keyward_core::backup::Cell, Error> {
    use keyward_core::backup::Cell;
    use sqlx::{Row, TypeInfo, ValueRef};
    let raw = row.try_get_raw(index).map_err(|e| db_error(e, None))?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    let storage = raw.type_info().name().to_owned();
    let cell = match storage.as_str() {
        "INTEGER" => row.try_get_unchecked::<i64, _>(index).map(Cell::Integer),
        "REAL" => row.try_get_unchecked::<f64, _>(index).map(Cell::Real),
        "BLOB" => row.try_get_unchecked::<Vec<u8>, _>(index).map(Cell::Bytes),
        _ => row.try_get_unchecked::<String, _>(index).map(Cell::Text),
    };
    cell.map_err(|e| db_error(e, None))
}

/// The table's columns (empty when it does not exist); SQLite binds any value anywhere.
async fn backup_column_kinds(
    tx: &mut sqlx::Transaction<'static, Db>,
    table: &str,
) -> Result<Vec<(String, crate::ColumnKind)>, Error> {
    let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM pragma_table_info($1)")
        .bind(table)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| db_error(e, None))?;
    Ok(names
        .into_iter()
        .map(|(name,)| (name, crate::ColumnKind::Any))
        .collect())
}

/// Nothing to tidy after a restore: an `INTEGER PRIMARY KEY` continues after its largest id.
fn backup_tidy_sql() -> &'static [&'static str] {
    &[]
}

// The same tree of queries is compiled once per backend, against this file's `Db`, `DbRow`
// and `ThisStore`: the duplication is the point.
#[allow(clippy::duplicate_mod)]
#[path = "queries/mod.rs"]
mod queries;

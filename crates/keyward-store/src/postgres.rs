//! The scale-out backend: any number of Keyward instances share one PostgreSQL database.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use crate::db_error;
use keyward_core::Error;

type Db = Postgres;
type DbRow = sqlx::postgres::PgRow;
type ThisStore = PostgresStore;

const MAINTAIN_SQL: &str = "ANALYZE";

/// The last migration's version.
pub(crate) const NEWEST_MIGRATION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "vault",
        include_str!("../migrations/postgres/0001_vault.sql"),
    ),
    (
        2,
        "app tokens",
        include_str!("../migrations/postgres/0002_app_tokens.sql"),
    ),
    (
        3,
        "metering",
        include_str!("../migrations/postgres/0003_metering.sql"),
    ),
    (
        4,
        "audit",
        include_str!("../migrations/postgres/0004_audit.sql"),
    ),
    (
        5,
        "sessions",
        include_str!("../migrations/postgres/0005_sessions.sql"),
    ),
    (
        6,
        "mfa",
        include_str!("../migrations/postgres/0006_mfa.sql"),
    ),
    (
        7,
        "access",
        include_str!("../migrations/postgres/0007_access.sql"),
    ),
    (
        8,
        "approvals",
        include_str!("../migrations/postgres/0008_approvals.sql"),
    ),
    (
        9,
        "revocation",
        include_str!("../migrations/postgres/0009_revocation.sql"),
    ),
    (
        10,
        "rotation",
        include_str!("../migrations/postgres/0010_rotation.sql"),
    ),
    (
        11,
        "guided_rotations",
        include_str!("../migrations/postgres/0011_guided_rotations.sql"),
    ),
    (
        12,
        "notifications",
        include_str!("../migrations/postgres/0012_notifications.sql"),
    ),
    (
        13,
        "key probes",
        include_str!("../migrations/postgres/0013_key_probes.sql"),
    ),
    (
        14,
        "health states",
        include_str!("../migrations/postgres/0014_health_states.sql"),
    ),
    (
        15,
        "subscriptions",
        include_str!("../migrations/postgres/0015_subscriptions.sql"),
    ),
    (
        16,
        "creators",
        include_str!("../migrations/postgres/0016_creators.sql"),
    ),
    (
        17,
        "provider_answers",
        include_str!("../migrations/postgres/0017_provider_answers.sql"),
    ),
    (
        18,
        "usage_rollups",
        include_str!("../migrations/postgres/0018_usage_rollups.sql"),
    ),
    (
        19,
        "alerts",
        include_str!("../migrations/postgres/0019_alerts.sql"),
    ),
    (
        20,
        "containments",
        include_str!("../migrations/postgres/0020_containments.sql"),
    ),
    (
        21,
        "token_sightings",
        include_str!("../migrations/postgres/0021_token_sightings.sql"),
    ),
    (
        22,
        "cache_misses",
        include_str!("../migrations/postgres/0022_cache_misses.sql"),
    ),
    (
        23,
        "usage_key_rollups",
        include_str!("../migrations/postgres/0023_usage_key_rollups.sql"),
    ),
    (
        24,
        "change feed",
        include_str!("../migrations/postgres/0024_change_feed.sql"),
    ),
    (
        25,
        "instances",
        include_str!("../migrations/postgres/0025_instances.sql"),
    ),
];

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub async fn open(url: &str) -> Result<Self, Error> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| {
                Error::unavailable(format!(
                    "cannot connect to PostgreSQL at {}: {e}",
                    crate::redact_url(url)
                ))
            })?;
        Ok(Self { pool })
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Db>, Error> {
        self.pool.begin().await.map_err(|e| db_error(e, None))
    }

    async fn schema_exists(&self) -> Result<bool, Error> {
        let found: Option<(String,)> = sqlx::query_as(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, None))?;
        Ok(found.is_some())
    }

    fn backend_name() -> &'static str {
        "postgres"
    }

    /// A connection kept to `LISTEN` on the change feed's channel (migration 0024).
    async fn listen_for_changes(
        &self,
    ) -> Result<Option<Box<dyn keyward_core::ports::ChangeListener>>, Error> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(|e| db_error(e, None))?;
        listener
            .listen(CHANGE_CHANNEL)
            .await
            .map_err(|e| db_error(e, None))?;
        Ok(Some(Box::new(PgChanges { listener })))
    }
}

/// The channel migration 0024's trigger notifies at every commit that moves the change feed.
const CHANGE_CHANNEL: &str = "keyward_changes";

/// Change notifications from PostgreSQL. sqlx reconnects the listener by itself; `try_recv`
/// says when it had to (`Ok(None)`), because whatever was sent meanwhile is lost.
struct PgChanges {
    listener: sqlx::postgres::PgListener,
}

impl std::fmt::Debug for PgChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgChanges")
    }
}

#[async_trait::async_trait]
impl keyward_core::ports::ChangeListener for PgChanges {
    async fn next(&mut self) -> Result<keyward_core::ports::ChangeSignal, Error> {
        match self.listener.try_recv().await {
            Ok(Some(_)) => Ok(keyward_core::ports::ChangeSignal::Changed),
            Ok(None) => Ok(keyward_core::ports::ChangeSignal::Lost),
            Err(e) => Err(db_error(e, None)),
        }
    }
}

/// A read transaction for a backup: one snapshot of every table, writers undisturbed.
async fn backup_snapshot(pool: &PgPool) -> Result<sqlx::Transaction<'static, Db>, Error> {
    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| db_error(e, None))
}

/// A value as the column's type holds it; booleans become 0/1.
fn backup_read_cell(row: &DbRow, index: usize) -> Result<keyward_core::backup::Cell, Error> {
    use keyward_core::backup::Cell;
    use sqlx::{Column, Row, TypeInfo};
    let column = &row.columns()[index];
    let get_err = |e| db_error(e, None);
    let cell = match column.type_info().name() {
        "INT8" => row
            .try_get::<Option<i64>, _>(index)
            .map_err(get_err)?
            .map(Cell::Integer),
        "INT4" => row
            .try_get::<Option<i32>, _>(index)
            .map_err(get_err)?
            .map(|v| Cell::Integer(v.into())),
        "INT2" => row
            .try_get::<Option<i16>, _>(index)
            .map_err(get_err)?
            .map(|v| Cell::Integer(v.into())),
        "BOOL" => row
            .try_get::<Option<bool>, _>(index)
            .map_err(get_err)?
            .map(|v| Cell::Integer(v.into())),
        "FLOAT8" => row
            .try_get::<Option<f64>, _>(index)
            .map_err(get_err)?
            .map(Cell::Real),
        "FLOAT4" => row
            .try_get::<Option<f32>, _>(index)
            .map_err(get_err)?
            .map(|v| Cell::Real(v.into())),
        "BYTEA" => row
            .try_get::<Option<Vec<u8>>, _>(index)
            .map_err(get_err)?
            .map(Cell::Bytes),
        "TEXT" | "VARCHAR" => row
            .try_get::<Option<String>, _>(index)
            .map_err(get_err)?
            .map(Cell::Text),
        other => {
            return Err(Error::internal(format!(
                "column `{}` has type {other}, which backups do not carry",
                column.name()
            )));
        }
    };
    Ok(cell.unwrap_or(Cell::Null))
}

/// The table's columns with their declared types (empty when it does not exist).
async fn backup_column_kinds(
    tx: &mut sqlx::Transaction<'static, Db>,
    table: &str,
) -> Result<Vec<(String, crate::ColumnKind)>, Error> {
    use crate::ColumnKind as K;
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| db_error(e, None))?;
    Ok(columns
        .into_iter()
        .map(|(name, kind)| {
            let kind = match kind.as_str() {
                "bigint" => K::BigInt,
                "integer" => K::Int,
                "smallint" => K::SmallInt,
                "boolean" => K::Bool,
                "double precision" | "real" => K::Real,
                "bytea" => K::Bytes,
                "text" | "character varying" => K::Text,
                _ => K::Any,
            };
            (name, kind)
        })
        .collect())
}

/// After a restore, the raw usage sequence continues after the largest restored id.
fn backup_tidy_sql() -> &'static [&'static str] {
    &[
        "SELECT setval(pg_get_serial_sequence('usage_records', 'id'), \
       COALESCE((SELECT MAX(id) FROM usage_records), 0) + 1, false)",
    ]
}

// The same tree of queries is compiled once per backend, against this file's `Db`, `DbRow`
// and `ThisStore`: the duplication is the point.
#[allow(clippy::duplicate_mod)]
#[path = "queries/mod.rs"]
mod queries;

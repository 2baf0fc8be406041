//! SQLite and PostgreSQL implementations of the store ports in `keyward_core::ports`.
//!
//! Architecture invariant: this is the only crate with SQL. The query code is written once
//! (`queries/`, one file per store trait) and compiled twice, once per backend module with
//! that backend's types, so the two cannot drift apart; only connection set-up, transaction
//! start and the migrations (`migrations/{sqlite,postgres}`) differ per dialect. Both pass
//! `tests/conformance/`.

use std::sync::Arc;

use keyward_core::ports::Store;
use keyward_core::{Error, ErrorKind};

mod postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The newest migration this build knows, the same on both backends (a backup from a newer
/// schema is refused).
pub const SCHEMA_VERSION: i64 = sqlite::NEWEST_MIGRATION;
const _: () = assert!(sqlite::NEWEST_MIGRATION == postgres::NEWEST_MIGRATION);

/// Every table of a vault, parents before children (the order migrations created them).
pub const BACKED_UP: &[&str] = &[
    "vault_settings",
    "master_keys",
    "categories",
    "environments",
    "custom_services",
    "base_url_overrides",
    "keys",
    "key_tags",
    "key_versions",
    "management_tokens",
    "users",
    "app_tokens",
    "key_flags",
    "pool_strategies",
    "usage_records",
    "audit_events",
    "audit_chain_head",
    "audit_checkpoints",
    "user_mfa",
    "mfa_recovery_codes",
    "custom_roles",
    "user_grants",
    "role_networks",
    "approvals",
    "rotations",
    "webhooks",
    "webhook_deliveries",
    "key_probes",
    "health_states",
    "usage_rollups",
    "alerts",
    "alert_mutes",
    "containments",
    "token_sightings",
    "usage_key_rollups",
];

/// Tables a backup leaves out, and why: they describe running processes, not the vault.
/// A restore empties the first two, so nobody stays signed in across it.
pub const LEFT_OUT: &[&str] = &[
    // Signed-in browsers: everyone signs in again after a restore.
    "sessions",
    // Which instance holds which master key right now.
    "instances",
    // The change number only grows; the restore's own inserts move it.
    "change_feed",
    // The migrations table: the manifest carries the schema version.
    "_sqlx_migrations",
];

/// How a restored value is bound: what the target column holds. SQLite takes every value
/// as it comes (`Any`); PostgreSQL needs the declared type, even for a NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    Any,
    BigInt,
    Int,
    SmallInt,
    Bool,
    Real,
    Text,
    Bytes,
}

/// Opens the store a `KEYWARD_DATABASE_URL` names: `sqlite://PATH` or `postgres://…`.
/// Connects (creating a missing SQLite file) but does not migrate.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, Error> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::open(url).await?))
    } else {
        Err(Error::invalid(
            "invalid_database_url",
            format!(
                "the database URL must start with sqlite:// or postgres:// (got `{}`)",
                redact_url(url)
            ),
        ))
    }
}

/// A database URL with any password replaced, safe to print.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.split('?').next().unwrap_or(url).to_owned(),
    }
}

/// Maps a driver error to the domain's. `conflict` names the code a uniqueness violation
/// means for the calling operation. Details are logged, not returned: they may quote SQL.
pub(crate) fn db_error(e: sqlx::Error, conflict: Option<(&'static str, &str)>) -> Error {
    if let (Some((code, message)), sqlx::Error::Database(db)) = (conflict, &e)
        && db.is_unique_violation()
    {
        return Error::conflict(code, message.to_owned());
    }
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => {
            tracing::warn!(error = %e, "database unavailable");
            Error::unavailable("the database is unavailable")
        }
        other => {
            tracing::error!(error = %other, "database error");
            Error::internal("a database error occurred; see the server log")
        }
    }
}

/// A row that does not decode into the domain means a corrupted or foreign database.
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    tracing::error!(%detail, "corrupt {what} row");
    Error::new(
        ErrorKind::Internal,
        "store_corrupt",
        format!("a stored {what} could not be read"),
    )
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://kw:hunter2@db:5432/kw"),
            "postgres://kw:***@db:5432/kw"
        );
        assert_eq!(
            redact_url("sqlite://data/keyward.db?mode=rwc"),
            "sqlite://data/keyward.db"
        );
    }
}

#[cfg(feature = "testing")]
pub mod testing;

//! Test fixtures: a fresh, migrated database per test.
//!
//! PostgreSQL tests need a server; where none answers they skip with a loud message, unless
//! `KEYWARD_TEST_REQUIRE_SERVICES=1` (set by `.ci/run`) turns the skip into a failure.

use std::sync::Arc;

use keyward_core::ports::Store;
use sqlx::{Connection, PgConnection};

/// The server used for PostgreSQL tests; override with `KEYWARD_TEST_POSTGRES_URL`
/// (a URL whose user may create databases; the database part is ignored).
pub fn postgres_admin_url() -> String {
    std::env::var("KEYWARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn services_required() -> bool {
    std::env::var("KEYWARD_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1" || v == "true")
}

/// Reports a missing service: panics when services are required, otherwise prints a loud
/// skip notice and lets the caller return early.
pub fn service_missing(service: &str, why: &str) {
    assert!(
        !services_required(),
        "{service} is required (KEYWARD_TEST_REQUIRE_SERVICES=1) but unavailable: {why}"
    );
    #[expect(clippy::print_stderr, reason = "a skipped test must be loud")]
    {
        eprintln!("\n!!!!!!!! SKIPPED: {service} is not reachable ({why}).");
        eprintln!(
            "!!!!!!!! Start it (see shared ci-services) or set KEYWARD_TEST_REQUIRE_SERVICES=1 to fail instead.\n"
        );
    }
}

/// The Redis used by tests (`KEYWARD_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`), or
/// `None` (after a loud notice) when nothing answers there and it is not required.
pub fn redis_url() -> Option<String> {
    let url = std::env::var("KEYWARD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let address = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.rsplit('@').next())
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned())
        .unwrap_or_default();
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&address)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).is_ok()
        });
    if reachable {
        Some(url)
    } else {
        service_missing("Redis", &format!("nothing answers at {address}"));
        None
    }
}

/// A database that exists for one test.
#[derive(Debug)]
pub enum TestDatabase {
    Sqlite { dir: tempfile::TempDir, url: String },
    Postgres { name: String, url: String },
}

impl TestDatabase {
    pub fn sqlite() -> Self {
        #[expect(clippy::expect_used, reason = "test fixture")]
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("keyward.db").display());
        Self::Sqlite { dir, url }
    }

    /// A fresh `kw_test_<random>` database, or `None` (after a loud notice) when PostgreSQL is
    /// unreachable and not required.
    pub async fn postgres() -> Option<Self> {
        let admin = postgres_admin_url();
        let mut conn = match PgConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(e) => {
                service_missing("PostgreSQL", &format!("{}: {e}", crate::redact_url(&admin)));
                return None;
            }
        };
        let name = format!("kw_test_{}", random_suffix());
        #[expect(clippy::expect_used, reason = "test fixture")]
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        Some(Self::Postgres {
            url: format!("{base}/{name}"),
            name,
        })
    }

    pub fn url(&self) -> &str {
        match self {
            Self::Sqlite { url, .. } | Self::Postgres { url, .. } => url,
        }
    }

    /// The SQLite file's directory (for tests that inspect the files on disk).
    pub fn dir(&self) -> Option<&std::path::Path> {
        match self {
            Self::Sqlite { dir, .. } => Some(dir.path()),
            Self::Postgres { .. } => None,
        }
    }

    pub fn postgres_name(&self) -> Option<&str> {
        match self {
            Self::Postgres { name, .. } => Some(name),
            Self::Sqlite { .. } => None,
        }
    }

    /// Opens and migrates the store.
    pub async fn store(&self) -> Arc<dyn Store> {
        #[expect(clippy::expect_used, reason = "test fixture")]
        let store = crate::open(self.url()).await.expect("open test store");
        #[expect(clippy::expect_used, reason = "test fixture")]
        store.migrate().await.expect("migrate test store");
        store
    }

    /// PostgreSQL: cuts the database off (no new connections, every open one closed) or lets
    /// it be reached again — an outage as a running instance sees it. Panics on SQLite.
    pub async fn set_reachable(&self, reachable: bool) {
        #[expect(clippy::panic, reason = "test fixture")]
        let Self::Postgres { name, .. } = self else {
            panic!("only a PostgreSQL database can be cut off")
        };
        #[expect(clippy::expect_used, reason = "test fixture")]
        let mut conn = PgConnection::connect(&postgres_admin_url())
            .await
            .expect("connect as admin");
        #[expect(clippy::expect_used, reason = "test fixture")]
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS {reachable}"
        )))
        .execute(&mut conn)
        .await
        .expect("allow or refuse connections");
        if !reachable {
            #[expect(clippy::expect_used, reason = "test fixture")]
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(name)
            .execute(&mut conn)
            .await
            .expect("close the database's connections");
        }
        let _ = conn.close().await;
    }

    /// Runs statements directly against the database, behind Keyward's back: for tests that
    /// tamper with stored rows or break a table's writes on purpose.
    pub async fn execute_raw(&self, sql: &str) {
        use sqlx::Executor;
        #[expect(clippy::expect_used, reason = "test fixture")]
        match self {
            Self::Sqlite { url, .. } => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
                conn.execute(sqlx::AssertSqlSafe(sql.to_owned()))
                    .await
                    .expect("raw SQL");
            }
            Self::Postgres { url, .. } => {
                let mut conn = PgConnection::connect(url).await.expect("connect");
                conn.execute(sqlx::AssertSqlSafe(sql.to_owned()))
                    .await
                    .expect("raw SQL");
            }
        }
    }

    /// Every table in the database's schema (what the backup lists must name).
    pub async fn table_names(&self) -> Vec<String> {
        #[expect(clippy::expect_used, reason = "test fixture")]
        let names: Vec<(String,)> = match self {
            Self::Sqlite { url, .. } => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
                sqlx::query_as(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                )
                .fetch_all(&mut conn)
                .await
                .expect("tables")
            }
            Self::Postgres { url, .. } => {
                let mut conn = PgConnection::connect(url).await.expect("connect");
                sqlx::query_as(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
                )
                .fetch_all(&mut conn)
                .await
                .expect("tables")
            }
        };
        let mut names: Vec<String> = names.into_iter().map(|(n,)| n).collect();
        names.sort();
        names
    }

    /// A fresh database of the same backend.
    pub async fn another(&self) -> Option<Self> {
        match self {
            Self::Sqlite { .. } => Some(Self::sqlite()),
            Self::Postgres { .. } => Self::postgres().await,
        }
    }

    /// Statements that make every audit append fail (a trigger that aborts the insert).
    pub fn break_audit_writes_sql(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => {
                "CREATE TRIGGER break_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'audit storage broken'); END"
            }
            Self::Postgres { .. } => {
                "CREATE FUNCTION break_audit() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit storage broken'; END $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER break_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION break_audit()"
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Self::Postgres { name, .. } = self {
            let name = name.clone();
            // Drop the database from a separate thread with its own runtime: Drop cannot await
            // and may run inside another runtime.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    if let Ok(mut conn) = PgConnection::connect(&postgres_admin_url()).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

fn random_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut bytes = [0u8; 8];
    // Uniqueness only (not security): time plus the thread id is enough, no RNG needed here.
    let tid = format!("{:?}", std::thread::current().id());
    for (i, b) in tid.bytes().chain(nanos.to_le_bytes()).enumerate() {
        bytes[i % 8] = bytes[i % 8].wrapping_mul(31).wrapping_add(b);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

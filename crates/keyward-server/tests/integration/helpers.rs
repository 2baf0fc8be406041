//! Test harness: spawn Keyward with a fresh database, talk to it over HTTP.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keyward_app::{Actor, App};
use keyward_core::access::Role;
use keyward_server::config::{RawSettings, resolve};
use keyward_server::server;
use keyward_store::testing::TestDatabase;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

pub const OPENAI_KEY: &str =
    "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_-0123456789WXYZ";

/// A running in-process server with an owner token.
pub struct TestApp {
    pub base: String,
    pub token: String,
    pub app: Arc<App>,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    settings: RawSettings,
    _dir: tempfile::TempDir,
    _db: TestDatabase,
}

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl TestApp {
    /// `None` when the backend is PostgreSQL and it is unavailable (a loud skip).
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, RawSettings::default()).await
    }

    /// Like [`TestApp::spawn`], with further settings (listen, data dir and database are
    /// the test's own).
    pub async fn spawn_with(backend: Backend, extra: RawSettings) -> Option<Self> {
        Self::spawn_with_clock(backend, extra, Arc::new(keyward_core::SystemClock)).await
    }

    /// Like [`TestApp::spawn_with`], on a clock the test controls.
    pub async fn spawn_with_clock(
        backend: Backend,
        extra: RawSettings,
        clock: Arc<dyn keyward_core::Clock>,
    ) -> Option<Self> {
        let db = match backend {
            Backend::Sqlite => TestDatabase::sqlite(),
            Backend::Postgres => TestDatabase::postgres().await?,
        };
        let dir = tempfile::tempdir().unwrap();
        let raw = RawSettings {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.path().to_path_buf()),
            database_url: Some(db.url().to_owned()),
            ..extra
        };
        let (app, base, tx) = start(&raw, clock).await;
        let (_, token) = app
            .issue_token(&Actor::system("test"), "test-owner", Role::Owner, None)
            .await
            .unwrap();
        Some(Self {
            base,
            token: token.expose_secret().to_owned(),
            app,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            settings: raw,
            _dir: dir,
            _db: db,
        })
    }

    /// A second server on the same database and master key, as another instance would be.
    pub async fn sibling(&self) -> Sibling {
        self.sibling_with(RawSettings::default()).await
    }

    /// Like [`TestApp::sibling`], with further settings (e.g. the same Redis).
    pub async fn sibling_with(&self, extra: RawSettings) -> Sibling {
        let raw = RawSettings {
            listen: self.settings.listen.clone(),
            data_dir: self.settings.data_dir.clone(),
            database_url: self.settings.database_url.clone(),
            ..extra
        };
        let (_, base, tx) = start(&raw, Arc::new(keyward_core::SystemClock)).await;
        Sibling {
            base,
            _shutdown: tx,
        }
    }

    /// The server's data directory (its master key file is `master.key` in it).
    pub fn data_dir(&self) -> &Path {
        self._dir.path()
    }

    /// The database behind the server, for tests that tamper with it directly.
    pub fn db(&self) -> &TestDatabase {
        &self._db
    }

    /// Runs the `keyward` binary against this server's data directory and database.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let dir = self._dir.path();
        let data_dir = dir.display().to_string();
        command(
            dir,
            &[
                ("KEYWARD_DATA_DIR", data_dir.as_str()),
                ("KEYWARD_DATABASE_URL", self._db.url()),
            ],
        )
        .args(args)
        .output()
        .unwrap()
    }

    pub async fn token_with_role(&self, role: Role) -> String {
        let (_, token) = self
            .app
            .issue_token(&Actor::system("test"), &format!("test-{role}"), role, None)
            .await
            .unwrap();
        token.expose_secret().to_owned()
    }

    /// Sends a request with the owner token; returns status and JSON body (or Null).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(&self.token, method, path, body).await
    }

    pub async fn call_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        json_call(
            &self.client,
            format!("{}{path}", self.base),
            token,
            method,
            body,
        )
        .await
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn create_key(&self, service: &str, env: &str, alias: &str, secret: &str) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/keys",
                Some(json!({"service": service, "environment": env, "alias": alias, "secret": secret, "force": true})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Sends the service's calls to `base_url` (a local fake provider).
    pub async fn point_service(&self, service: &str, base_url: &str) {
        let (status, body) = self
            .call(
                Method::PATCH,
                &format!("/api/v1/services/{service}"),
                Some(json!({"base_url": base_url})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Waits (up to 10 s) until `GET /api/v1/usage?{query}` counts `requests` calls: usage
    /// is written in batches off the request path. Returns the whole usage answer.
    pub async fn usage_until(&self, query: &str, requests: u64) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, usage) = self
                .call(Method::GET, &format!("/api/v1/usage?{query}"), None)
                .await;
            assert_eq!(status, StatusCode::OK, "{usage}");
            if usage["totals"]["requests"] == requests {
                return usage;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "usage not recorded: {usage}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates an app token; returns the creation response (with the token, shown once).
    pub async fn app_token(&self, request: Value) -> Value {
        let (status, body) = self
            .call(Method::POST, "/api/v1/app-tokens", Some(request))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    pub async fn key_count(&self) -> usize {
        let (_, live) = self.call(Method::GET, "/api/v1/keys?limit=200", None).await;
        let (_, deleted) = self
            .call(Method::GET, "/api/v1/deleted-keys?limit=200", None)
            .await;
        live["items"].as_array().unwrap().len() + deleted["items"].as_array().unwrap().len()
    }
}

async fn start(
    raw: &RawSettings,
    clock: Arc<dyn keyward_core::Clock>,
) -> (Arc<App>, String, tokio::sync::oneshot::Sender<()>) {
    let settings = resolve(RawSettings {
        listen: raw.listen.clone(),
        data_dir: raw.data_dir.clone(),
        database_url: raw.database_url.clone(),
        audit_webhook_url: raw.audit_webhook_url.clone(),
        session_idle_minutes: raw.session_idle_minutes.clone(),
        session_absolute_hours: raw.session_absolute_hours.clone(),
        trusted_proxies: raw.trusted_proxies.clone(),
        expiry_grace_minutes: raw.expiry_grace_minutes.clone(),
        forecast_lead_minutes: raw.forecast_lead_minutes.clone(),
        max_snapshot_staleness_seconds: raw.max_snapshot_staleness_seconds.clone(),
        recovery_window_days: raw.recovery_window_days.clone(),
        redis_url: raw.redis_url.clone(),
        redis_prefix: raw.redis_prefix.clone(),
        redis_ca_file: raw.redis_ca_file.clone(),
        shared_cache_mib: raw.shared_cache_mib.clone(),
        limits_on_redis_outage: raw.limits_on_redis_outage.clone(),
        smtp_url: raw.smtp_url.clone(),
        smtp_from: raw.smtp_from.clone(),
        health_probes: raw.health_probes.clone(),
        public_url: raw.public_url.clone(),
        usage_retention_days: raw.usage_retention_days.clone(),
        usage_rollup_retention_days: raw.usage_rollup_retention_days.clone(),
        audit_retention_min_days: raw.audit_retention_min_days.clone(),
        audit_retention_days: raw.audit_retention_days.clone(),
        audit_archive_dir: raw.audit_archive_dir.clone(),
        notification_log_retention_days: raw.notification_log_retention_days.clone(),
        backup_schedule: raw.backup_schedule.clone(),
        backup_dir: raw.backup_dir.clone(),
        backup_keep: raw.backup_keep.clone(),
        backup_recipients: raw.backup_recipients.clone(),
        backup_passphrase: raw.backup_passphrase.clone(),
        backup_raw_usage: raw.backup_raw_usage.clone(),
        ..Default::default()
    })
    .unwrap();
    let started = server::start_with_clock(&settings, clock).await.unwrap();
    let app = started.app.clone();
    let base = format!("http://{}", started.addr);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(started.run(async {
        let _ = rx.await;
    }));
    (app, base, tx)
}

/// Another instance sharing a [`TestApp`]'s database; stops when dropped.
pub struct Sibling {
    pub base: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Asserts an error response: status, `error.code`, and a non-empty message.
/// The `action`s of an `/api/v1/audit` answer, in order.
pub fn audit_actions(trail: &Value) -> Vec<String> {
    trail["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["action"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub fn assert_error(result: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(result.0, status, "{}", result.1);
    assert_eq!(result.1["error"]["code"], code, "{}", result.1);
    assert!(
        result.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        result.1
    );
}

/// Runs each async test case against SQLite and PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let app = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite).await.unwrap();
                    super::$case(&app).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(app) = $crate::helpers::TestApp::spawn($crate::helpers::Backend::Postgres).await else { return };
                    super::$case(&app).await;
                }
            )+
        }
    };
}

/// The real `keyward` binary as a child process, output captured to files.
pub struct Process {
    child: Child,
    pub base: String,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

/// A management API call with a bearer token: status and JSON body (or Null).
async fn json_call(
    client: &reqwest::Client,
    url: String,
    token: &str,
    method: Method,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Serves `app` on a fresh loopback port (a fake of the outside world); returns its base URL.
pub async fn serve_fake(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_keyward")
}

/// A command for the binary running in `dir`, with no inherited `KEYWARD_*` settings.
pub fn command(dir: &Path, envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.current_dir(dir);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("KEYWARD_")) {
        cmd.env_remove(k);
    }
    cmd.env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

impl Process {
    /// Starts `keyward serve --listen 127.0.0.1:0` in `dir` and waits until it listens.
    pub fn serve(dir: &Path, envs: &[(&str, &str)], log_name: &str) -> Self {
        let stdout_path = dir.join(format!("{log_name}.stdout"));
        let stderr_path = dir.join(format!("{log_name}.stderr"));
        let mut child = command(dir, envs)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let copy_to = stdout_path.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(copy_to).unwrap();
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(file, "{line}");
                if !sent
                    && let Some(addr) = line
                        .split("listening on ")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|url| url.split_once("://").map(|(_, addr)| addr))
                {
                    let _ = tx.send(addr.to_owned());
                    sent = true;
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "keyward did not start: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        Self {
            child,
            base,
            stdout_path,
            stderr_path,
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill(mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// A management API call to this process; returns status and JSON body (or Null).
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("http://{}{path}", self.base);
        json_call(&reqwest::Client::new(), url, token, method, body).await
    }

    pub fn output(&self) -> String {
        format!(
            "{}{}",
            std::fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
        )
    }
}

/// Creates a management token with the CLI in `dir`.
pub fn cli_token(dir: &Path, envs: &[(&str, &str)]) -> String {
    let out = command(dir, envs)
        .args(["token", "create", "--name", "test", "--role", "owner"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

//! Backups through the real binary: `keyward backup create` on a running vault, `verify`,
//! and `restore` into a fresh SQLite and a fresh PostgreSQL database, compared table by
//! table with what the backup holds and key by key with the values put in; every kind of
//! damaged or foreign backup refused with its reason and nothing restored.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use keyward_app::vault::MasterKeySource;
use keyward_core::backup::{Cell, ChunkSink, Manifest, TableChunk};
use keyward_core::key::SealContext;
use keyward_crypto::backup::{BackupReader, BackupWriter, Unlock};
use keyward_store::testing::TestDatabase;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::helpers::{Backend, TestApp, command};

/// Key values that must never appear outside the sealed store.
fn canaries() -> Vec<String> {
    (0..3)
        .map(|i| {
            format!("sk-proj-CANARY{i}backupZZ0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCD")
        })
        .collect()
}

/// A vault with something of everything: keys (one with two versions, one deleted), an app
/// token, a user, an approval policy, and the audit trail all that wrote.
async fn seeded_vault() -> TestApp {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let values = canaries();
    let first = app
        .create_key("openai", "production", "main", &values[0])
        .await;
    let id = first["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{id}/versions"),
            Some(json!({"secret": values[1], "force": true})),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let gone = app.create_key("openai", "staging", "old", &values[2]).await;
    let (status, body) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/keys/{}", gone["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(status.is_success(), "{body}");
    app.app_token(
        json!({"name": "stockpulse", "services": ["openai"], "environments": ["production"]}),
    )
    .await;
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "alice", "password": "correct horse battery staple", "role": "key_manager"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .call(
            Method::PUT,
            "/api/v1/policies/approvals",
            Some(json!({"rules": [{"actions": ["reveal"], "approvals": 1, "approver_roles": ["owner"]}], "ttl_hours": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app
}

fn run_ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The one line a refused command prints, checked to name `reason`.
fn refused(output: &std::process::Output, reason: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(reason), "expected `{reason}` in: {stderr}");
}

/// An age identity file and its recipient, made by `keyward backup keygen`.
fn identity(app: &TestApp, dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = run_ok(&app.cli(&["backup", "keygen", "--out", path.to_str().unwrap()]));
    (path, out.trim().to_owned())
}

/// A fresh place to restore into: a data directory holding only the vault's master key
/// file (restored from wherever the operator keeps it) and an empty database.
struct Target {
    dir: tempfile::TempDir,
    db: TestDatabase,
}

impl Target {
    async fn new(backend: Backend, master_key: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(master_key, dir.path().join("master.key")).unwrap();
        let db = match backend {
            Backend::Sqlite => TestDatabase::sqlite(),
            Backend::Postgres => TestDatabase::postgres().await.unwrap(),
        };
        Self { dir, db }
    }

    fn cli(&self, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
        let data_dir = self.dir.path().display().to_string();
        let mut all = vec![
            ("KEYWARD_DATA_DIR", data_dir.as_str()),
            ("KEYWARD_DATABASE_URL", self.db.url()),
        ];
        all.extend_from_slice(envs);
        command(self.dir.path(), &all).args(args).output().unwrap()
    }

    async fn holds_a_vault(&self) -> bool {
        let store = keyward_store::open(self.db.url()).await.unwrap();
        let holds = store.holds_a_vault().await.unwrap();
        store.close().await;
        holds
    }
}

#[derive(Default)]
struct Collect(Vec<TableChunk>);

#[async_trait]
impl ChunkSink for Collect {
    async fn put(&mut self, chunk: TableChunk) -> keyward_core::Result<()> {
        self.0.push(chunk);
        Ok(())
    }
}

/// Rows per table, each row as text (columns named, so column order does not matter),
/// sorted.
fn by_table(chunks: Vec<TableChunk>) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut tables = std::collections::BTreeMap::<String, Vec<String>>::new();
    for chunk in chunks {
        let rows = tables.entry(chunk.table.clone()).or_default();
        for row in chunk.rows {
            let mut named: Vec<(String, Cell)> = chunk.columns.iter().cloned().zip(row).collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            rows.push(format!("{named:?}"));
        }
    }
    for rows in tables.values_mut() {
        rows.sort();
    }
    tables
}

fn read_backup(path: &Path, unlock: &Unlock) -> (Vec<TableChunk>, Manifest) {
    let mut reader = BackupReader::open(std::fs::File::open(path).unwrap(), unlock).unwrap();
    let mut chunks = Vec::new();
    while let Some(chunk) = reader.next_chunk().unwrap() {
        chunks.push(chunk);
    }
    (chunks, reader.finish().unwrap().manifest)
}

fn unlock_with(identity: &Path) -> Unlock {
    Unlock::identity_file(&SecretString::from(
        std::fs::read_to_string(identity).unwrap(),
    ))
    .unwrap()
}

/// Every key version's value, opened with the master key file.
async fn values_in(url: &str, master_key: &Path) -> Vec<String> {
    let store = keyward_store::open(url).await.unwrap();
    let vault = keyward_app::vault::open_store(
        store,
        &MasterKeySource::File {
            path: master_key.to_owned(),
            hsm: None,
        },
        &keyward_crypto::OsRandomness,
        &keyward_core::SystemClock,
    )
    .await
    .unwrap();
    let mut values = Vec::new();
    for usage in vault.store.kek_usage().await.unwrap() {
        for version in vault
            .store
            .versions_wrapped_by(&usage.kek_id, u32::MAX)
            .await
            .unwrap()
        {
            let context = SealContext::key_secret(&version.key_id, version.version);
            values.push(
                vault
                    .keyring
                    .unseal(&version.sealed, &context)
                    .unwrap()
                    .expose_secret()
                    .to_owned(),
            );
        }
    }
    vault.store.close().await;
    values.sort();
    values
}

async fn export(url: &str) -> Vec<TableChunk> {
    let store = keyward_store::open(url).await.unwrap();
    let mut all = Collect::default();
    store.export_tables(true, &mut all).await.unwrap();
    store.close().await;
    all.0
}

#[tokio::test]
async fn a_backup_restores_into_fresh_sqlite_and_postgres_with_everything_identical() {
    let app = seeded_vault().await;
    let work = tempfile::tempdir().unwrap();
    let (id_file, recipient) = identity(&app, work.path(), "backup.identity");
    let file = work.path().join("vault.kwbackup");
    let out = run_ok(&app.cli(&[
        "backup",
        "create",
        "--to",
        file.to_str().unwrap(),
        "--recipient",
        &recipient,
    ]));
    assert!(out.contains("signed by audit key"), "{out}");

    // The file holds no value, sealed or not, in any form a reader could take it from.
    let bytes = std::fs::read(&file).unwrap();
    let unlock = unlock_with(&id_file);
    let (chunks, manifest) = read_backup(&file, &unlock);
    let plain = format!("{chunks:?}");
    for canary in canaries() {
        assert!(!bytes.windows(canary.len()).any(|w| w == canary.as_bytes()));
        assert!(!plain.contains(&canary), "a value in the backup's payload");
    }
    assert!(manifest.tables["key_versions"] >= 3, "{manifest:?}");
    assert!(manifest.audit_head.is_some() && manifest.audit_checkpoint.is_some());
    assert_eq!(
        manifest.audit_checkpoint,
        manifest.audit_head.as_ref().map(|h| h.seq)
    );
    assert!(!manifest.tables.contains_key("sessions"));

    // The backup is the source, table by table, for everything nothing changes behind our
    // back (the audit trail and job-written tables go on after it).
    let source = by_table(export(app.db().url()).await);
    let backed_up = by_table(chunks.clone());
    for table in [
        "keys",
        "key_versions",
        "key_tags",
        "users",
        "management_tokens",
        "app_tokens",
        "vault_settings",
        "master_keys",
        "categories",
        "environments",
        "approvals",
    ] {
        assert_eq!(source.get(table), backed_up.get(table), "{table}");
    }

    let verified = run_ok(&app.cli(&[
        "backup",
        "verify",
        file.to_str().unwrap(),
        "--identity",
        id_file.to_str().unwrap(),
    ]));
    assert!(
        verified.contains("a whole backup of this vault"),
        "{verified}"
    );

    let master_key = app.data_dir().join("master.key");
    let mut expected_values = canaries();
    expected_values.sort();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let target = Target::new(backend, &master_key).await;
        let out = run_ok(&target.cli(
            &[
                "backup",
                "restore",
                file.to_str().unwrap(),
                "--identity",
                id_file.to_str().unwrap(),
            ],
            &[],
        ));
        assert!(
            out.contains("drill: 3 key version(s) opened"),
            "{backend:?}: {out}"
        );

        // Every table as the backup holds it; the trail has one more entry: the restore.
        let mut restored = by_table(export(target.db.url()).await);
        let mut expected = backed_up.clone();
        let trail = restored.remove("audit_events").unwrap();
        let before = expected.remove("audit_events").unwrap();
        restored.remove("audit_chain_head");
        expected.remove("audit_chain_head");
        assert_eq!(restored, expected, "{backend:?}");
        assert_eq!(trail.len(), before.len() + 1);
        assert!(before.iter().all(|row| trail.contains(row)), "{backend:?}");
        assert!(trail.iter().any(|row| row.contains("backup.restore")));

        // Every value opens with the master key and is the one put in.
        assert_eq!(
            values_in(target.db.url(), &target.dir.path().join("master.key")).await,
            expected_values
        );

        // The restored vault serves: the audit chain verifies through the binary too.
        let audit = run_ok(&target.cli(&["audit", "verify"], &[]));
        assert!(audit.contains("audit trail intact"), "{audit}");
    }
}

/// Runs the binary on `app`'s vault with further environment variables.
fn cli_with(app: &TestApp, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let data_dir = app.data_dir().display().to_string();
    let mut all = vec![
        ("KEYWARD_DATA_DIR", data_dir.as_str()),
        ("KEYWARD_DATABASE_URL", app.db().url()),
    ];
    all.extend_from_slice(envs);
    command(app.data_dir(), &all).args(args).output().unwrap()
}

/// The vault's own audit keys, as only its master key opens them.
async fn audit_keys_of(app: &TestApp) -> keyward_crypto::audit::AuditKeys {
    let store = keyward_store::open(app.db().url()).await.unwrap();
    let vault = keyward_app::vault::open_store(
        store,
        &MasterKeySource::File {
            path: app.data_dir().join("master.key"),
            hsm: None,
        },
        &keyward_crypto::OsRandomness,
        &keyward_core::SystemClock,
    )
    .await
    .unwrap();
    vault.store.close().await;
    vault.audit_keys
}

/// Writes `chunks` as a new backup to `recipient`, with `manifest` signed by `keys`.
fn forge(
    out: &Path,
    recipient: &str,
    chunks: Vec<TableChunk>,
    manifest: Manifest,
    keys: &keyward_crypto::audit::AuditKeys,
) {
    let protection =
        keyward_crypto::backup::Protection::recipients(&[recipient.to_owned()]).unwrap();
    let mut writer = BackupWriter::new(std::fs::File::create(out).unwrap(), &protection).unwrap();
    for chunk in chunks {
        writer.write_chunk(chunk).unwrap();
    }
    writer.finish(manifest, keys).unwrap();
}

#[tokio::test]
async fn every_damaged_or_foreign_backup_is_refused_with_its_reason_and_nothing_is_restored() {
    let app = seeded_vault().await;
    let work = tempfile::tempdir().unwrap();
    let (id_file, recipient) = identity(&app, work.path(), "a.identity");
    let id_arg = id_file.to_str().unwrap().to_owned();
    let file = work.path().join("a.kwbackup");
    run_ok(&app.cli(&[
        "backup",
        "create",
        "--to",
        file.to_str().unwrap(),
        "--recipient",
        &recipient,
    ]));
    let bytes = std::fs::read(&file).unwrap();
    let (chunks, manifest) = read_backup(&file, &unlock_with(&id_file));
    let target = Target::new(Backend::Sqlite, &app.data_dir().join("master.key")).await;
    let write = |name: &str, bytes: &[u8]| {
        let path = work.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let restore = |path: &Path, id: &str| {
        target.cli(
            &[
                "backup",
                "restore",
                path.to_str().unwrap(),
                "--identity",
                id,
            ],
            &[],
        )
    };

    // Truncated, at any length.
    for keep in [bytes.len() - 1, bytes.len() / 2, 40] {
        let cut = write("cut.kwbackup", &bytes[..keep]);
        refused(&restore(&cut, &id_arg), "damaged");
    }
    // One bit edited in the encrypted payload.
    let mut edited = bytes.clone();
    let middle = edited.len() / 2;
    edited[middle] ^= 0x01;
    refused(
        &restore(&write("edited.kwbackup", &edited), &id_arg),
        "damaged or truncated",
    );

    // Encrypted to someone else.
    let (other_id, _) = identity(&app, work.path(), "b.identity");
    refused(
        &restore(&file, other_id.to_str().unwrap()),
        "encrypted to another recipient",
    );

    // Decrypted, edited and encrypted again to the same recipient (anyone holding the
    // recipient can): the manifest no longer matches.
    let mut plain = Vec::new();
    {
        use std::io::Read;
        let Unlock::Identities(ids) = unlock_with(&id_file) else {
            unreachable!()
        };
        age::Decryptor::new(bytes.as_slice())
            .unwrap()
            .decrypt(ids.iter().map(|i| i as &dyn age::Identity))
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
    }
    let text = String::from_utf8(plain)
        .unwrap()
        .replacen("\"alice\"", "\"mallory\"", 1);
    let mut rewrapped = Vec::new();
    {
        use std::io::Write;
        let to: age::x25519::Recipient = recipient.parse().unwrap();
        let mut out = age::Encryptor::with_recipients(std::iter::once(&to as &dyn age::Recipient))
            .unwrap()
            .wrap_output(&mut rewrapped)
            .unwrap();
        out.write_all(text.as_bytes()).unwrap();
        out.finish().unwrap();
    }
    refused(
        &restore(&write("rewrapped.kwbackup", &rewrapped), &id_arg),
        "was edited",
    );

    // Consistent, but signed by another vault's key.
    let stranger =
        keyward_crypto::audit::AuditKeys::generate(&keyward_crypto::OsRandomness).unwrap();
    let resigned = work.path().join("resigned.kwbackup");
    forge(
        &resigned,
        &recipient,
        chunks.clone(),
        manifest.clone(),
        &stranger,
    );
    refused(
        &restore(&resigned, &id_arg),
        "not signed by this vault's audit key",
    );

    // Signed by this vault, but from a newer schema.
    let keys = audit_keys_of(&app).await;
    let newer = work.path().join("newer.kwbackup");
    forge(
        &newer,
        &recipient,
        chunks.clone(),
        Manifest {
            schema_version: keyward_store::SCHEMA_VERSION + 1,
            ..manifest.clone()
        },
        &keys,
    );
    refused(&restore(&newer, &id_arg), "newer than this Keyward");
    let verify = target.cli(
        &[
            "backup",
            "verify",
            newer.to_str().unwrap(),
            "--identity",
            &id_arg,
        ],
        &[],
    );
    refused(&verify, "newer than this Keyward");

    // A whole backup of another vault: this master key does not open it.
    let other = seeded_vault().await;
    let foreign = work.path().join("foreign.kwbackup");
    run_ok(&other.cli(&[
        "backup",
        "create",
        "--to",
        foreign.to_str().unwrap(),
        "--recipient",
        &recipient,
    ]));
    refused(&restore(&foreign, &id_arg), "another vault's backup");

    // A passphrase backup with the wrong passphrase.
    let sealed = work.path().join("passphrase.kwbackup");
    run_ok(&cli_with(
        &app,
        &["backup", "create", "--to", sealed.to_str().unwrap()],
        &[("KEYWARD_BACKUP_PASSPHRASE", "a long backup passphrase")],
    ));
    let wrong = target.cli(
        &["backup", "restore", sealed.to_str().unwrap()],
        &[("KEYWARD_BACKUP_PASSPHRASE", "not the passphrase")],
    );
    refused(&wrong, "passphrase does not open this backup");
    assert!(!target.holds_a_vault().await, "something was restored");

    // The right one restores; a second restore over it needs --force naming the database.
    let good = [("KEYWARD_BACKUP_PASSPHRASE", "a long backup passphrase")];
    run_ok(&target.cli(&["backup", "restore", sealed.to_str().unwrap()], &good));
    assert!(target.holds_a_vault().await);
    refused(
        &target.cli(&["backup", "restore", sealed.to_str().unwrap()], &good),
        "already holds a vault",
    );
    refused(
        &target.cli(
            &[
                "backup",
                "restore",
                sealed.to_str().unwrap(),
                "--force",
                "sqlite://elsewhere.db",
            ],
            &good,
        ),
        "name the database to replace",
    );
    let out = run_ok(&target.cli(
        &[
            "backup",
            "restore",
            sealed.to_str().unwrap(),
            "--force",
            target.db.url(),
        ],
        &good,
    ));
    assert!(out.contains("drill: 3 key version(s) opened"), "{out}");
}

#[tokio::test]
async fn an_owner_downloads_a_backup_through_the_api_and_admins_cannot() {
    let app = seeded_vault().await;
    let download = |token: String, body: serde_json::Value| {
        let client = app.client.clone();
        let url = format!("{}/api/v1/backups", app.base);
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let passphrase = "a long download passphrase";
    let response = download(app.token.clone(), json!({"passphrase": passphrase})).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"keyward-")
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let bytes = response.bytes().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("download.kwbackup");
    std::fs::write(&file, &bytes).unwrap();
    let (chunks, manifest) = read_backup(&file, &Unlock::Passphrase(passphrase.into()));
    assert!(manifest.tables["keys"] >= 2);
    assert_eq!(manifest.signer, audit_keys_of(&app).await.key_id());
    let plain = format!("{chunks:?}");
    assert!(canaries().iter().all(|c| !plain.contains(c.as_str())));

    // Its own entry is in the trail it carries, and in the vault's.
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=backup.create", None)
        .await;
    assert_eq!(trail["events"].as_array().unwrap().len(), 1, "{trail}");
    assert_eq!(trail["events"][0]["details"]["encrypted_to"], "passphrase");
    assert!(plain.contains("backup.create"));

    // Admins hold everything but this; bad requests are refused with a reason.
    let admin = app.token_with_role(keyward_core::access::Role::Admin).await;
    let refused = download(admin, json!({"passphrase": passphrase})).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    for (body, code) in [
        (
            json!({"passphrase": "short"}),
            "backup_passphrase_too_short",
        ),
        (json!({}), "backup_no_recipient"),
        (
            json!({"recipients": ["age1notarecipient"]}),
            "backup_bad_recipient",
        ),
    ] {
        let response = download(app.token.clone(), body).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{error}");
    }

    // An approval policy covering exports covers backups.
    let (status, body) = app
        .call(
            Method::PUT,
            "/api/v1/policies/approvals",
            Some(json!({"rules": [{"actions": ["export"], "approvals": 1, "approver_roles": ["owner"]}], "ttl_hours": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let gated = download(app.token.clone(), json!({"passphrase": passphrase})).await;
    assert_eq!(gated.status(), StatusCode::FORBIDDEN);
    let error: serde_json::Value = gated.json().await.unwrap();
    assert_eq!(error["error"]["code"], "approval_required", "{error}");
}

#[tokio::test]
async fn scheduled_backups_run_once_per_slot_across_instances_and_show_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let settings = || keyward_server::config::RawSettings {
        backup_schedule: Some("24h".into()),
        backup_dir: Some(dir.path().to_owned()),
        backup_passphrase: Some("a long schedule passphrase".into()),
        ..Default::default()
    };
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, settings()).await else {
        return;
    };
    let second = app.sibling_with(settings()).await;
    let backups = || -> Vec<PathBuf> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "kwbackup"))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while backups().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Both instances ran their first tick at start; one won the slot.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let written = backups();
    assert_eq!(written.len(), 1, "{written:?}");
    let (_, manifest) = read_backup(
        &written[0],
        &Unlock::Passphrase("a long schedule passphrase".into()),
    );
    assert!(manifest.rows() > 0);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&written[0]).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, "a backup is readable by its owner only");

    // Every instance shows the vault's last backup (whichever wrote it).
    for base in [&app.base, &second.base] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let metrics = app
                .client
                .get(format!("{base}/metrics"))
                .bearer_auth(&app.token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let success = metrics
                .lines()
                .find(|l| l.starts_with("keyward_backup_last_success_timestamp_seconds "))
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|v| v.parse::<f64>().ok());
            if success.is_some_and(|s| s > 1.0e9) {
                assert!(
                    metrics.contains("keyward_backup_last_failed 0"),
                    "{metrics}"
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{metrics}");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// Posts the settings page's backup form as `b`; the answer's status, location and bytes.
async fn post_backup_form(
    app: &TestApp,
    b: &crate::browser::Browser,
    fields: &[(&str, &str)],
) -> (StatusCode, String, Vec<u8>, String) {
    let mut all = vec![("csrf", b.csrf.as_str())];
    all.extend_from_slice(fields);
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/settings/backup", app.base))
        .header("cookie", &b.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(all)
                .finish(),
        )
        .send()
        .await
        .unwrap();
    let status = response.status();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (location, kind) = (header("location"), header("content-type"));
    (
        status,
        location,
        response.bytes().await.unwrap().to_vec(),
        kind,
    )
}

#[tokio::test]
async fn an_owner_downloads_a_backup_from_the_settings_page_under_an_approval() {
    use crate::browser::enrolled_user;
    use crate::ui::{approval_id, get_page, post_form};
    use keyward_core::access::Role;
    let app = seeded_vault().await;
    let (_, otto, _) = enrolled_user(&app, "otto", Role::Owner).await;
    let (_, olga, _) = enrolled_user(&app, "olga", Role::Owner).await;
    let (_, ada, _) = enrolled_user(&app, "ada", Role::Admin).await;

    // Owners get the form; admins see the schedule but no button.
    let (_, _, page) = get_page(&app, &otto.cookie, "/settings").await;
    assert!(page.contains("action=\"/settings/backup\""), "{page}");
    assert!(page.contains("No scheduled backups"), "{page}");
    let (_, _, page) = get_page(&app, &ada.cookie, "/settings").await;
    assert!(page.contains("id=\"backup-title\""));
    assert!(!page.contains("action=\"/settings/backup\""));
    let (status, _, _, _) =
        post_backup_form(&app, &ada, &[("passphrase", "a long page passphrase")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A refusal keeps the page, saying why.
    let (status, _, body, _) = post_backup_form(&app, &otto, &[("passphrase", "short")]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(String::from_utf8_lossy(&body).contains("at least 12 characters"));

    // Under a policy for exports: requested, approved by another owner, downloaded once.
    let (status, body) = app
        .call(
            Method::PUT,
            "/api/v1/policies/approvals",
            Some(json!({"rules": [{"actions": ["export"], "approvals": 1, "approver_roles": ["owner"]}], "ttl_hours": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let passphrase = ("passphrase", "a long page passphrase");
    let (status, _, body, _) = post_backup_form(&app, &otto, &[passphrase]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("name=\"approval\" value=\"request\""));
    let (status, location, _, _) = post_backup_form(
        &app,
        &otto,
        &[
            passphrase,
            ("reason", "monthly offsite copy"),
            ("approval", "request"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, "/approvals?view=mine");
    let (_, _, inbox) = get_page(&app, &olga.cookie, "/approvals").await;
    let apr = approval_id(&inbox).expect("the request is in the inbox");
    let (status, _, html) = post_form(
        &app,
        &olga,
        &format!("/approvals/{apr}/decide"),
        &[("comment", "ok"), ("decision", "approve")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    let (_, _, mine) = get_page(&app, &otto.cookie, "/approvals?view=mine").await;
    assert!(
        mine.contains(&format!("/settings?approval={apr}#backup")),
        "{mine}"
    );

    let (status, _, bytes, kind) =
        post_backup_form(&app, &otto, &[passphrase, ("approval", apr.as_str())]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kind, "application/octet-stream");
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("page.kwbackup");
    std::fs::write(&file, &bytes).unwrap();
    let (_, manifest) = read_backup(&file, &Unlock::Passphrase("a long page passphrase".into()));
    assert!(manifest.tables["users"] >= 4);
    let (status, _, _, _) =
        post_backup_form(&app, &otto, &[passphrase, ("approval", apr.as_str())]).await;
    assert_ne!(status, StatusCode::OK, "an approval is used once");

    // The trail names who took it.
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=backup.create", None)
        .await;
    let events = trail["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["actor"]["name"] == "otto" && e["outcome"] == "success"),
        "{trail}"
    );
}

#[tokio::test]
async fn a_backup_from_an_older_schema_is_loaded_at_its_version_then_migrated() {
    let app = seeded_vault().await;
    let work = tempfile::tempdir().unwrap();
    let (id_file, recipient) = identity(&app, work.path(), "id");
    let file = work.path().join("now.kwbackup");
    run_ok(&app.cli(&[
        "backup",
        "create",
        "--to",
        file.to_str().unwrap(),
        "--recipient",
        &recipient,
    ]));
    let (chunks, manifest) = read_backup(&file, &unlock_with(&id_file));
    // Schema 24 had every table this backup holds (25 added the instance reports, which
    // backups leave out): the same rows, as an older Keyward would have written them.
    let older = work.path().join("older.kwbackup");
    forge(
        &older,
        &recipient,
        chunks,
        Manifest {
            schema_version: keyward_store::SCHEMA_VERSION - 1,
            ..manifest
        },
        &audit_keys_of(&app).await,
    );
    let target = Target::new(Backend::Sqlite, &app.data_dir().join("master.key")).await;
    let id = id_file.to_str().unwrap();
    let out = run_ok(&target.cli(
        &[
            "backup",
            "restore",
            older.to_str().unwrap(),
            "--identity",
            id,
        ],
        &[],
    ));
    assert!(
        out.contains(&format!("schema {}", keyward_store::SCHEMA_VERSION - 1)),
        "{out}"
    );
    // Over a vault already at the newest schema, when forced.
    let out = run_ok(&target.cli(
        &[
            "backup",
            "restore",
            older.to_str().unwrap(),
            "--identity",
            id,
            "--force",
            target.db.url(),
        ],
        &[],
    ));
    assert!(out.contains("drill: 3 key version(s) opened"), "{out}");
    assert!(run_ok(&target.cli(&["audit", "verify"], &[])).contains("audit trail intact"));
}

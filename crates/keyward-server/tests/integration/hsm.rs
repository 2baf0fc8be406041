//! The PKCS#11 master-key source against SoftHSM2 (Debian's `softhsm2`): each test gets its
//! own token directory through `SOFTHSM2_CONF`, and runs the real binary, so the token is
//! opened the way an operator's would be. Creating a vault, proxying, a tampered wrapped
//! key, a wrong PIN, a missing token or module, and a rotation from a key file to the
//! token and back, with servers running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fake_llm::FakeLlm;
use crate::helpers::{OPENAI_KEY, Process, cli_token, command};
use crate::online_rotation::status;
use crate::softhsm;
const TOKEN: &str = "keyward-test";
const PIN: &str = "4872-1190-5563";
const SO_PIN: &str = "so-9911-2277";

/// A fresh SoftHSM2 token in `dir/softhsm`, and the settings that point Keyward at it.
struct SoftHsm {
    conf: String,
    pin_file: String,
}

impl SoftHsm {
    /// `None` (after a loud notice) when SoftHSM2 is not installed and services are not
    /// required; `.ci/run` installs it.
    fn new(dir: &Path) -> Option<Self> {
        if !softhsm::installed() {
            keyward_store::testing::service_missing(
                "SoftHSM2",
                "apt-get install -y softhsm2 (the module and softhsm2-util)",
            );
            return None;
        }
        let conf = softhsm::init_token(dir, TOKEN, SO_PIN, PIN);
        // The PIN comes from a file, as from a Docker or systemd secret.
        let pin_file = dir.join("softhsm/pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        Some(Self {
            conf: path_text(&conf),
            pin_file: path_text(&pin_file),
        })
    }

    /// The settings of the pkcs11 source (`source`: "pkcs11", or "file" still holding the
    /// token's keys).
    fn envs<'a>(&'a self, source: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("SOFTHSM2_CONF", self.conf.as_str()),
            ("KEYWARD_MASTER_KEY_SOURCE", source),
            ("KEYWARD_PKCS11_TOKEN_LABEL", TOKEN),
            ("KEYWARD_PKCS11_PIN_FILE", self.pin_file.as_str()),
        ]
    }
}

fn path_text(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

fn run(dir: &Path, envs: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let out = command(dir, envs).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary expecting it to exit soon (a refusal); a process still running after
/// 30 s (a `serve` that started) is killed and reported as a success.
fn run_briefly(dir: &Path, envs: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let mut child = command(dir, envs)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if let Some(exit) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (exit.success(), err);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    (true, "still running after 30 s".into())
}

/// The fake upstream, an OpenAI key and an app token for it, through `server`.
async fn key_and_token(server: &Process, admin: &str, fake_base: &str) -> (String, String) {
    let (status_code, body) = server
        .call(
            admin,
            Method::PATCH,
            "/api/v1/services/openai",
            Some(json!({"base_url": fake_base})),
        )
        .await;
    assert_eq!(status_code, StatusCode::OK, "{body}");
    let (status_code, key) = server
        .call(admin, Method::POST, "/api/v1/keys", Some(json!({
            "service": "openai", "environment": "production", "alias": "main", "secret": OPENAI_KEY, "force": true
        })))
        .await;
    assert_eq!(status_code, StatusCode::CREATED, "{key}");
    let (status_code, token) = server
        .call(
            admin,
            Method::POST,
            "/api/v1/app-tokens",
            Some(json!({"name": "app", "services": ["openai"], "environments": ["production"]})),
        )
        .await;
    assert_eq!(status_code, StatusCode::CREATED, "{token}");
    (
        key["id"].as_str().unwrap().to_owned(),
        token["token"].as_str().unwrap().to_owned(),
    )
}

/// One proxied chat completion; the fake answers 200 only to the real key.
async fn proxied(server: &Process, app_token: &str) -> (StatusCode, Value) {
    let answer = reqwest::Client::new()
        .post(format!(
            "http://{}/proxy/openai/v1/chat/completions",
            server.base
        ))
        .bearer_auth(app_token)
        .json(&json!({"model": "gpt-5.4-mini", "messages": []}))
        .send()
        .await
        .unwrap();
    let status_code = answer.status();
    (status_code, answer.json().await.unwrap_or_default())
}

/// `keyward_hsm_operations_total{operation=…}` and the cache hits, from `/metrics`.
async fn hsm_counts(server: &Process) -> (u64, u64) {
    let text = reqwest::get(format!("http://{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |prefix: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|rest| rest.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}"))
    };
    (
        value(r#"keyward_hsm_operations_total{operation="decrypt"}"#),
        value("keyward_hsm_data_key_cache_hits_total"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_holds_the_master_key_serves_the_proxy_and_refuses_a_tampered_wrapped_key() {
    let dir = tempfile::tempdir().unwrap();
    let Some(hsm) = SoftHsm::new(dir.path()) else {
        return;
    };
    let envs = hsm.envs("pkcs11");
    let admin = cli_token(dir.path(), &envs);
    assert!(
        !dir.path().join("data/master.key").exists(),
        "the pkcs11 source writes no key file"
    );
    let (ok, out, _) = run(dir.path(), &envs, &["master-key", "status"]);
    assert!(
        ok && out.contains("current") && out.contains(&format!("on PKCS#11 token '{TOKEN}'")),
        "{out}"
    );
    let (kek, _) = status(dir.path(), &envs);

    let server = Process::serve(dir.path(), &envs, "hsm");
    let ready: Value = reqwest::get(format!("http://{}/readyz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["master_key"], "token", "{ready}");
    let (fake, fake_base) = FakeLlm::start().await;
    let (key_id, app_token) = key_and_token(&server, &admin, &fake_base).await;
    let (decrypts_before, hits_before) = hsm_counts(&server).await;
    for _ in 0..40 {
        let (status_code, body) = proxied(&server, &app_token).await;
        assert_eq!(status_code, StatusCode::OK, "{body}");
    }
    assert_eq!(
        fake.completions.load(std::sync::atomic::Ordering::SeqCst),
        40,
        "every call reached the provider with the real key"
    );
    let (decrypts, hits) = hsm_counts(&server).await;
    assert!(
        decrypts - decrypts_before <= 1 && hits - hits_before >= 39,
        "the proxy unwraps the data key on the token once, then from memory: {} token decrypts, {} cache hits for 40 calls",
        decrypts - decrypts_before,
        hits - hits_before
    );
    server.stop();
    let (ok, out, err) = run(dir.path(), &envs, &["master-key", "verify"]);
    assert!(
        ok && out.contains("1 key version(s) readable"),
        "{out}{err}"
    );
    // A backup of a vault whose master key is on the token opens (and is proved) with it.
    let identity = path_text(&dir.path().join("backup.identity"));
    let (ok, recipient, err) = run(dir.path(), &envs, &["backup", "keygen", "--out", &identity]);
    assert!(ok, "{err}");
    let backup = path_text(&dir.path().join("vault.kwbackup"));
    let (ok, _, err) = run(
        dir.path(),
        &envs,
        &[
            "backup",
            "create",
            "--to",
            &backup,
            "--recipient",
            recipient.trim(),
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = run(
        dir.path(),
        &envs,
        &["backup", "verify", &backup, "--identity", &identity],
    );
    assert!(ok, "{out}{err}");

    // One flipped bit in the wrapped data key, written behind Keyward's back.
    let url = format!("sqlite://{}", dir.path().join("data/keyward.db").display());
    let store = keyward_store::open(&url).await.unwrap();
    let original = store.versions_wrapped_by(&kek, 10).await.unwrap();
    assert_eq!(original.len(), 1);
    let version = &original[0];
    let mut tampered = version.sealed.clone();
    tampered.wrapped_dek[20] ^= 0x01;
    assert!(
        store
            .rewrap_version(&version.key_id, version.version, &kek, &tampered)
            .await
            .unwrap()
    );
    store.close().await;

    let server = Process::serve(dir.path(), &envs, "tampered");
    let before = fake.requests();
    let (status_code, body) = proxied(&server, &app_token).await;
    assert_eq!(
        (status_code, body["error"]["code"].as_str()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("sealed_value_unreadable")
        ),
        "{body}"
    );
    assert!(
        !body.to_string().contains(OPENAI_KEY),
        "no key material in the refusal"
    );
    assert_eq!(
        fake.requests(),
        before,
        "nothing was sent upstream with a key that did not open"
    );
    let (status_code, _) = server
        .call(&admin, Method::GET, &format!("/api/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(status_code, StatusCode::OK, "the vault goes on serving");
    server.stop();
    let (ok, out, err) = run(dir.path(), &envs, &["master-key", "verify"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("0 key version(s) readable, 1 unreadable")
            && err.contains("integrity check failed"),
        "{out}{err}"
    );

    // Nothing was lost: the original bytes open again.
    let store = keyward_store::open(&url).await.unwrap();
    assert!(
        store
            .rewrap_version(&version.key_id, version.version, &kek, &version.sealed)
            .await
            .unwrap()
    );
    store.close().await;
    let server = Process::serve(dir.path(), &envs, "restored");
    let (status_code, body) = proxied(&server, &app_token).await;
    assert_eq!(status_code, StatusCode::OK, "{body}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_pin_a_missing_token_or_module_is_refused_in_one_line_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(hsm) = SoftHsm::new(dir.path()) else {
        return;
    };
    let envs = hsm.envs("pkcs11");
    cli_token(dir.path(), &envs);
    let (kek, _) = status(dir.path(), &envs);
    let db = dir.path().join("data/keyward.db");
    let fingerprint = std::fs::read(&db).unwrap();

    let wrong_pin = dir.path().join("wrong-pin");
    std::fs::write(&wrong_pin, "0000-0000-0000").unwrap();
    let wrong_pin = path_text(&wrong_pin);
    let with = |name: &'static str, value: &'static str| {
        let mut envs = hsm.envs("pkcs11");
        envs.retain(|(k, _)| *k != name);
        envs.push((name, value));
        envs
    };
    let mut wrong_pin_envs = hsm.envs("pkcs11");
    wrong_pin_envs.retain(|(k, _)| *k != "KEYWARD_PKCS11_PIN_FILE");
    wrong_pin_envs.push(("KEYWARD_PKCS11_PIN_FILE", wrong_pin.as_str()));
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            wrong_pin_envs,
            "the PKCS#11 PIN for token 'keyward-test' is wrong",
        ),
        (
            with("KEYWARD_PKCS11_TOKEN_LABEL", "missing-token"),
            "no token labelled 'missing-token' in PKCS#11 module /usr/lib/softhsm/libsofthsm2.so (tokens there: 'keyward-test')",
        ),
        (
            with("KEYWARD_PKCS11_MODULE", "/nonexistent/libpkcs11.so"),
            "cannot load the PKCS#11 module /nonexistent/libpkcs11.so",
        ),
        (
            with("KEYWARD_PKCS11_KEY_LABEL", "another-label"),
            "holds no key labelled 'another-label', but this vault is sealed with master key",
        ),
    ];
    for (envs, expected) in &cases {
        for args in [
            &["master-key", "status"][..],
            &["serve", "--listen", "127.0.0.1:0"][..],
        ] {
            let (ok, err) = run_briefly(dir.path(), envs, args);
            assert!(!ok, "{args:?} with {expected}");
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "one line: {err}");
            assert!(lines[0].contains(expected), "{expected}: {err}");
            assert!(!err.contains(PIN) && !err.contains("0000-0000"), "{err}");
        }
    }
    let (ok, _, err) = run(
        dir.path(),
        &[
            ("SOFTHSM2_CONF", hsm.conf.as_str()),
            ("KEYWARD_MASTER_KEY_SOURCE", "pkcs11"),
            ("KEYWARD_PKCS11_TOKEN_LABEL", TOKEN),
        ],
        &["master-key", "status"],
    );
    assert!(!ok && err.contains("needs pkcs11_pin"), "{err}");

    assert_eq!(
        std::fs::read(&db).unwrap(),
        fingerprint,
        "no refusal wrote anything"
    );
    let (current, wraps) = status(dir.path(), &envs);
    assert_eq!(current, kek);
    assert_eq!(wraps.len(), 1, "no key was generated for another label");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vault_moves_from_a_key_file_to_the_token_and_back_while_a_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let Some(hsm) = SoftHsm::new(dir.path()) else {
        return;
    };
    let key_file: PathBuf = dir.path().join("data/master.key");
    let file_only: Vec<(&str, &str)> = vec![("SOFTHSM2_CONF", hsm.conf.as_str())];
    let admin = cli_token(dir.path(), &file_only);
    let (file_kek, _) = status(dir.path(), &file_only);
    let server = Process::serve(dir.path(), &file_only, "file");
    let (fake, fake_base) = FakeLlm::start().await;
    let (_, app_token) = key_and_token(&server, &admin, &fake_base).await;
    assert_eq!(proxied(&server, &app_token).await.0, StatusCode::OK);
    server.stop();

    // File → token: the server restarts on the pkcs11 source holding the file's key, the
    // rotation generates the token's key, the running server finds it there.
    let to_token = hsm.envs("pkcs11");
    let server = Process::serve(dir.path(), &to_token, "to-token");
    assert_eq!(proxied(&server, &app_token).await.0, StatusCode::OK);
    let (ok, out, err) = run(
        dir.path(),
        &to_token,
        &["master-key", "rotate", "--wait-seconds", "30"],
    );
    assert!(ok, "{out}{err}");
    let (token_kek, wraps) = status(dir.path(), &to_token);
    assert_ne!(token_kek, file_kek);
    let of = |list: &[(String, u64)], kek: &str| {
        list.iter().find(|(k, _)| k == kek).map_or(0, |(_, n)| *n)
    };
    assert_eq!(of(&wraps, &file_kek), 0, "{wraps:?}");
    assert_eq!(of(&wraps, &token_kek), 1, "{wraps:?}");
    let (_, out, _) = run(dir.path(), &to_token, &["master-key", "status"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&token_kek) && l.contains(TOKEN)),
        "{out}"
    );
    assert_eq!(proxied(&server, &app_token).await.0, StatusCode::OK);
    // The server follows within seconds; then the file key can go.
    let retired = retire_when_released(dir.path(), &to_token, &file_kek).await;
    assert!(
        retired.contains("now holds only the retired key"),
        "{retired}"
    );
    server.stop();
    std::fs::remove_file(&key_file).unwrap();
    let (ok, out, err) = run(dir.path(), &to_token, &["master-key", "verify"]);
    assert!(
        ok && out.contains("1 key version(s) readable, 0 unreadable"),
        "everything opens with the token alone: {out}{err}"
    );
    let server = Process::serve(dir.path(), &to_token, "token-only");
    assert_eq!(proxied(&server, &app_token).await.0, StatusCode::OK);
    server.stop();

    // Token → file: the server restarts on the file source still holding the token's keys
    // (it creates the new key file), the rotation makes that file key current.
    let to_file = hsm.envs("file");
    let server = Process::serve(dir.path(), &to_file, "to-file");
    assert!(key_file.exists(), "the file source made its key");
    assert_eq!(proxied(&server, &app_token).await.0, StatusCode::OK);
    let (ok, out, err) = run(
        dir.path(),
        &to_file,
        &["master-key", "rotate", "--wait-seconds", "30"],
    );
    assert!(ok, "{out}{err}");
    let (new_file_kek, wraps) = status(dir.path(), &to_file);
    assert_ne!(new_file_kek, token_kek);
    assert_eq!(of(&wraps, &token_kek), 0, "{wraps:?}");
    assert_eq!(of(&wraps, &new_file_kek), 1, "{wraps:?}");
    let retired = retire_when_released(dir.path(), &to_file, &token_kek).await;
    assert!(retired.contains("stays on PKCS#11 token"), "{retired}");
    server.stop();

    // The token is no longer needed.
    let server = Process::serve(dir.path(), &file_only, "file-again");
    assert_eq!(proxied(&server, &app_token).await.0, StatusCode::OK);
    server.stop();
    let (ok, out, err) = run(dir.path(), &file_only, &["master-key", "verify"]);
    assert!(
        ok && out.contains("1 key version(s) readable, 0 unreadable"),
        "{out}{err}"
    );

    // Onto the token again: the retired token key (still on the token) is not reused.
    let server = Process::serve(dir.path(), &to_token, "token-again");
    let (ok, out, err) = run(
        dir.path(),
        &to_token,
        &["master-key", "rotate", "--wait-seconds", "30"],
    );
    assert!(ok, "{out}{err}");
    let (again, _) = status(dir.path(), &to_token);
    assert!(
        again != token_kek && again != new_file_kek,
        "a new token key: {again}"
    );
    assert_eq!(proxied(&server, &app_token).await.0, StatusCode::OK);
    server.stop();
    assert_eq!(
        fake.completions.load(std::sync::atomic::Ordering::SeqCst),
        7
    );
}

/// Retires `kek` once no running instance wraps new data keys with it (they follow a
/// rotation within seconds); returns what the CLI said.
async fn retire_when_released(dir: &Path, envs: &[(&str, &str)], kek: &str) -> String {
    let mut last = String::new();
    for _ in 0..20 {
        let (ok, out, err) = run(dir, envs, &["master-key", "retire", kek]);
        if ok {
            return out;
        }
        last = err;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{kek} was never released: {last}");
}

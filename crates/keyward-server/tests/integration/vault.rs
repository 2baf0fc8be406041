//! The vault across restarts: persistence, the wrong or missing master key (refused, data
//! untouched), master-key rotation with every provider, and start-up failures.

use std::path::Path;

use sha2_free_hash::digest;

use crate::helpers::{OPENAI_KEY, Process, cli_token, command};

/// A dependency-free content fingerprint (FNV-1a) for "the file did not change".
mod sha2_free_hash {
    pub fn digest(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    }
}

fn run(dir: &Path, envs: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let out = command(dir, envs).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn get(base: &str, token: &str, path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("http://{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn post(base: &str, token: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(format!("http://{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

async fn add_keys(base: &str, token: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let key = post(base, token, "/api/v1/keys", serde_json::json!({
            "service": "openai", "environment": "production", "alias": format!("k{i}"), "secret": OPENAI_KEY
        }))
        .await;
        let id = key["id"].as_str().unwrap().to_owned();
        post(
            base,
            token,
            &format!("/api/v1/keys/{id}/versions"),
            serde_json::json!({"secret": OPENAI_KEY.replace("WXYZ", "VVVV")}),
        )
        .await;
        ids.push(id);
    }
    ids
}

fn db_fingerprint(dir: &Path) -> u64 {
    digest(&std::fs::read(dir.join("data/keyward.db")).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_everything_and_a_wrong_or_missing_master_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, token, err) = run(
        dir.path(),
        &[],
        &["token", "create", "--name", "t", "--role", "owner"],
    );
    assert!(
        ok && err.contains("LOSING THIS FILE MAKES EVERY STORED KEY"),
        "the first run warns about the new key file: {err}"
    );
    let token = token.trim().to_owned();
    let server = Process::serve(dir.path(), &[], "first");
    let ids = add_keys(&server.base, &token, 3).await;
    let before = get(&server.base, &token, "/api/v1/keys").await;
    let versions_before = get(
        &server.base,
        &token,
        &format!("/api/v1/keys/{}/versions", ids[0]),
    )
    .await;
    server.stop();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("data/master.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let server = Process::serve(dir.path(), &[], "second");
    assert!(
        !server.output().contains("LOSING THIS FILE"),
        "no new key on restart"
    );
    assert_eq!(
        get(&server.base, &token, "/api/v1/keys").await,
        before,
        "every key survives a restart"
    );
    assert_eq!(
        get(
            &server.base,
            &token,
            &format!("/api/v1/keys/{}/versions", ids[0])
        )
        .await,
        versions_before
    );
    server.stop();
    let (ok, out, _) = run(dir.path(), &[], &["master-key", "verify"]);
    assert!(ok && out.contains("6 key version(s) readable"), "{out}");

    // Wrong master key (a different key file): refuses, names both keys, changes nothing.
    let original = std::fs::read(dir.path().join("data/master.key")).unwrap();
    let fingerprint = db_fingerprint(dir.path());
    std::fs::remove_file(dir.path().join("data/master.key")).unwrap();
    let (_, other_key, _) = run(dir.path(), &[], &["master-key", "generate"]);
    std::fs::write(
        dir.path().join("data/master.key"),
        format!("{}\n", other_key.trim()),
    )
    .unwrap();
    let (ok, _, err) = run(dir.path(), &[], &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(
        err.contains("is not the key this vault is sealed with") && err.contains("changed nothing"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        db_fingerprint(dir.path()),
        fingerprint,
        "the database is untouched"
    );

    // The same through the environment provider.
    let (ok, _, err) = run(
        dir.path(),
        &[("KEYWARD_MASTER_KEY", other_key.trim())],
        &["serve", "--listen", "127.0.0.1:0"],
    );
    assert!(!ok && err.contains("KEYWARD_MASTER_KEY"), "{err}");
    assert_eq!(db_fingerprint(dir.path()), fingerprint);

    // Missing key file next to an existing vault: refuses, does not generate a new key.
    std::fs::remove_file(dir.path().join("data/master.key")).unwrap();
    let (ok, _, err) = run(dir.path(), &[], &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!ok && err.contains("is missing"), "{err}");
    assert!(
        !dir.path().join("data/master.key").exists(),
        "no replacement key was created"
    );
    assert_eq!(db_fingerprint(dir.path()), fingerprint);

    // Restoring the original key brings everything back.
    std::fs::write(dir.path().join("data/master.key"), original).unwrap();
    let server = Process::serve(dir.path(), &[], "restored");
    assert_eq!(get(&server.base, &token, "/api/v1/keys").await, before);
    server.stop();
}

const MFA_PASSWORD: &str = "tangerine violin orbit";

/// Creates user `ada` and enrols her in TOTP over HTTP; returns her phone.
async fn enrol_over_http(base: &str, token: &str) -> keyward_crypto::totp::TotpSecret {
    post(
        base,
        token,
        "/api/v1/users",
        serde_json::json!({"username": "ada", "password": MFA_PASSWORD, "role": "viewer"}),
    )
    .await;
    let client = reqwest::Client::new();
    let login = client
        .post(format!("http://{base}/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "ada", "password": MFA_PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let body: serde_json::Value = login.json().await.unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let send = |path: &str, body: serde_json::Value| {
        client
            .post(format!("http://{base}{path}"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&body)
            .send()
    };
    let setup: serde_json::Value = send("/api/v1/auth/mfa/enroll", serde_json::json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let phone =
        keyward_crypto::totp::TotpSecret::from_base32(setup["secret"].as_str().unwrap()).unwrap();
    let now = jiff::Timestamp::now().as_second().try_into().unwrap();
    let confirmed = send(
        "/api/v1/auth/mfa/confirm",
        serde_json::json!({"code": phone.code_at(now).unwrap()}),
    )
    .await
    .unwrap();
    assert_eq!(confirmed.status(), reqwest::StatusCode::OK);
    phone
}

/// Signs `ada` in with the code of the next time step (accepted: one step of drift), which
/// cannot be one used before.
async fn sign_in_with_code(
    base: &str,
    phone: &keyward_crypto::totp::TotpSecret,
) -> reqwest::StatusCode {
    let next: u64 = (jiff::Timestamp::now().as_second() + 30)
        .try_into()
        .unwrap();
    reqwest::Client::new()
        .post(format!("http://{base}/api/v1/auth/login"))
        .json(
            &serde_json::json!({"username": "ada", "password": MFA_PASSWORD,
                                  "code": phone.code_at(next).unwrap()}),
        )
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread")]
async fn key_file_rotation_rewraps_everything_and_retires_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let token = cli_token(dir.path(), &[]);
    let server = Process::serve(dir.path(), &[], "pre-rotation");
    let ids = add_keys(&server.base, &token, 4).await;
    let phone = enrol_over_http(&server.base, &token).await;
    let old_kek = get(
        &server.base,
        &token,
        &format!("/api/v1/keys/{}/versions", ids[0]),
    )
    .await[0]["kek_id"]
        .as_str()
        .unwrap()
        .to_owned();
    server.stop();

    let (ok, out, err) = run(dir.path(), &[], &["master-key", "rotate"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("8 data key(s) to rewrap") && out.contains("rewrapped 8/8"),
        "{out}"
    );
    assert!(
        out.contains(&format!("master-key retire {old_kek}")),
        "{out}"
    );
    let (ok, _, err) = run(dir.path(), &[], &["master-key", "retire", &old_kek]);
    assert!(ok, "{err}");
    let keyring = std::fs::read_to_string(dir.path().join("data/master.key")).unwrap();
    assert_eq!(
        keyring
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count(),
        1,
        "the old key left the file"
    );
    let (ok, out, _) = run(dir.path(), &[], &["master-key", "verify"]);
    assert!(
        ok && out.contains("8 key version(s) readable, 0 unreadable"),
        "{out}"
    );

    let server = Process::serve(dir.path(), &[], "post-rotation");
    let versions = get(
        &server.base,
        &token,
        &format!("/api/v1/keys/{}/versions", ids[0]),
    )
    .await;
    assert!(
        versions
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["kek_id"] != old_kek.as_str())
    );
    assert_eq!(
        sign_in_with_code(&server.base, &phone).await,
        reqwest::StatusCode::OK,
        "the TOTP secret moved to the new master key too"
    );
    server.stop();

    // Running rotate again is safe (a new key, nothing left behind).
    let (ok, out, _) = run(dir.path(), &[], &["master-key", "rotate"]);
    assert!(ok && out.contains("rewrapped 8/8"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn env_and_passphrase_sources_rotate_and_refuse_wrong_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key_a, _) = run(dir.path(), &[], &["master-key", "generate"]);
    let (_, key_b, _) = run(dir.path(), &[], &["master-key", "generate"]);
    let (key_a, key_b) = (key_a.trim().to_owned(), key_b.trim().to_owned());
    let a = [("KEYWARD_MASTER_KEY", key_a.as_str())];
    let token = cli_token(dir.path(), &a);
    assert!(
        !dir.path().join("data/master.key").exists(),
        "the env source writes no key file"
    );
    let server = Process::serve(dir.path(), &a, "env-a");
    add_keys(&server.base, &token, 2).await;
    server.stop();

    let (ok, _, err) = run(dir.path(), &a, &["master-key", "rotate"]);
    assert!(
        !ok && err.contains("KEYWARD_MASTER_KEY_PREVIOUS"),
        "rotate explains what to configure: {err}"
    );
    let b_with_a = [
        ("KEYWARD_MASTER_KEY", key_b.as_str()),
        ("KEYWARD_MASTER_KEY_PREVIOUS", key_a.as_str()),
    ];
    let (ok, out, err) = run(dir.path(), &b_with_a, &["master-key", "rotate"]);
    assert!(ok && out.contains("rewrapped 4/4"), "{out}{err}");
    let b = [("KEYWARD_MASTER_KEY", key_b.as_str())];
    let (ok, out, _) = run(dir.path(), &b, &["master-key", "verify"]);
    assert!(ok && out.contains("4 key version(s) readable"), "{out}");
    let (ok, _, err) = run(dir.path(), &a, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(
        !ok && err.contains("not the key this vault is sealed with"),
        "the old key alone no longer opens the vault: {err}"
    );

    // Passphrase source, in a second vault.
    let dir = tempfile::tempdir().unwrap();
    let pass = [(
        "KEYWARD_MASTER_PASSPHRASE",
        "correct horse battery staple 42",
    )];
    let token = cli_token(dir.path(), &pass);
    let server = Process::serve(dir.path(), &pass, "pass");
    add_keys(&server.base, &token, 1).await;
    server.stop();
    let wrong = [(
        "KEYWARD_MASTER_PASSPHRASE",
        "incorrect horse battery staple",
    )];
    let (ok, _, err) = run(dir.path(), &wrong, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!ok && err.contains("KEYWARD_MASTER_PASSPHRASE"), "{err}");
    let (ok, out, _) = run(dir.path(), &pass, &["master-key", "verify"]);
    assert!(ok && out.contains("2 key version(s) readable"), "{out}");
}

#[test]
fn startup_failures_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(
        dir.path(),
        &[],
        &[
            "serve",
            "--database-url",
            "postgres://keyward:hunter2@127.0.0.1:1/keyward",
        ],
    );
    assert!(!ok);
    assert!(err.starts_with("error: cannot open the database"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password is not printed: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let (ok, _, err) = run(
        dir.path(),
        &[("KEYWARD_RECOVERY_WINDOW_DAYS", "3")],
        &["serve"],
    );
    assert!(
        !ok && err.contains("recovery window must be 7–90 days"),
        "{err}"
    );
    let (ok, _, err) = run(
        dir.path(),
        &[
            ("KEYWARD_MASTER_KEY", "x"),
            ("KEYWARD_MASTER_KEY_FILE", "/nonexistent"),
        ],
        &["serve"],
    );
    assert!(!ok && err.contains("use one"), "{err}");
    let (ok, _, err) = run(dir.path(), &[], &["--config", "/nonexistent.toml", "serve"]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    std::fs::write(dir.path().join("keyward.toml"), "lisen = \"127.0.0.1:1\"\n").unwrap();
    let (ok, _, err) = run(dir.path(), &[], &["serve"]);
    assert!(!ok && err.contains("unknown setting `lisen`"), "{err}");
    std::fs::remove_file(dir.path().join("keyward.toml")).unwrap();
    let (ok, _, err) = run(
        dir.path(),
        &[],
        &["token", "create", "--name", "x", "--role", "god"],
    );
    assert!(!ok && err.contains("not a role"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_layers_file_variants_and_unknown_variables() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key, _) = run(dir.path(), &[], &["master-key", "generate"]);
    let key_file = dir.path().join("master-key.secret");
    std::fs::write(&key_file, format!("{}\n", key.trim())).unwrap();
    std::fs::write(
        dir.path().join("keyward.toml"),
        "data_dir = \"vault-data\"\nrecovery_window_days = 14\n",
    )
    .unwrap();
    let envs = [
        ("KEYWARD_MASTER_KEY_FILE", key_file.to_str().unwrap()),
        ("KEYWARD_DATABSE_URL", "typo"),
    ];
    let token = cli_token(dir.path(), &envs);
    let server = Process::serve(dir.path(), &envs, "layers");
    assert!(
        dir.path().join("vault-data/keyward.db").exists(),
        "data_dir from keyward.toml"
    );
    assert!(
        server
            .output()
            .contains("ignoring unknown environment variable KEYWARD_DATABSE_URL"),
        "{}",
        server.output()
    );
    let key = post(
        &server.base,
        &token,
        "/api/v1/keys",
        serde_json::json!({
            "service": "openai", "environment": "staging", "alias": "x", "secret": OPENAI_KEY
        }),
    )
    .await;
    let id = key["id"].as_str().unwrap();
    let deleted = reqwest::Client::new()
        .delete(format!("http://{}/api/v1/keys/{id}", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let deleted: serde_json::Value = deleted.json().await.unwrap();
    let deleted_at: jiff::Timestamp = deleted["deleted_at"].as_str().unwrap().parse().unwrap();
    let purge_after: jiff::Timestamp = deleted["purge_after"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        purge_after.duration_since(deleted_at).as_hours(),
        14 * 24,
        "recovery window from keyward.toml"
    );
    server.stop();
}

#[test]
fn admin_create_reads_the_password_from_stdin_and_checks_it() {
    use std::io::Write;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let create = |name: &str, password: &str| {
        let mut child = command(dir.path(), &[])
            .args(["admin", "create", "--username", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = create("alice", "a sufficiently long passphrase");
    assert!(
        ok && out.contains("created user alice") && out.contains("owner"),
        "{out}{err}"
    );
    let (ok, _, err) = create("bob", "too short");
    assert!(!ok && err.contains("at least 12 characters"), "{err}");
    let (ok, _, err) = create("ALICE", "another long passphrase");
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = create("carol", "qwerty123456");
    assert!(!ok && err.contains("too common"), "{err}");
    let (ok, _, err) = create("bad name!", "a sufficiently long passphrase");
    assert!(!ok && err.contains("username"), "{err}");
    let db = std::fs::read(dir.path().join("data/keyward.db")).unwrap();
    assert!(
        !db.windows(10).any(|w| w == b"sufficient"),
        "only the Argon2id hash is stored"
    );
}

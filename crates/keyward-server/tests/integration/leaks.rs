//! A canary secret added through the API must appear nowhere but the encrypted store:
//! not in the SQLite file or its WAL, not in stdout/stderr (even at trace level), not in any
//! API response, not in a pg_dump.

use std::path::Path;
use std::process::Command;

use keyward_store::testing::TestDatabase;
use serde_json::json;

use crate::helpers::{Process, cli_token};

fn canary() -> (String, String) {
    let nonce = format!(
        "{:016x}",
        u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xC0FFEE
    );
    let secret = format!("sk-proj-CANARY{nonce}{}WXYZ", "q".repeat(48));
    // A distinctive middle part, so a leak of a fragment is caught too.
    let fragment = format!("CANARY{nonce}");
    (secret, fragment)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn exercise(base: &str, token: &str, secret: &str, second: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut responses = Vec::new();
    let send = |request: reqwest::RequestBuilder| {
        let request = request.bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            format!(
                "{:?}\n{}",
                response.headers().clone(),
                response.text().await.unwrap()
            )
        }
    };
    let created = send(client.post(format!("http://{base}/api/v1/keys")).json(&json!({
        "service": "openai", "environment": "production", "alias": "canary", "secret": secret
    })))
    .await;
    let id = created
        .split("\"id\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    responses.push(created);
    responses.push(
        send(
            client
                .post(format!("http://{base}/api/v1/keys/{id}/versions"))
                .json(&json!({"secret": second})),
        )
        .await,
    );
    // Secrets in places where they are wrong must not be echoed back either.
    responses.push(
        send(
            client
                .post(format!("http://{base}/api/v1/keys"))
                .json(&json!({"service": "openai", "force": secret})),
        )
        .await,
    );
    responses.push(send(client.post(format!("http://{base}/api/v1/keys")).json(&json!({
        "service": "openai", "environment": "production", "alias": "canary", "secret": secret
    })))
    .await);
    responses.push(send(client.post(format!("http://{base}/api/v1/keys")).json(&json!({
        "service": "finnhub", "environment": "production", "alias": "wrong-format", "secret": secret
    })))
    .await);
    responses
        .push(send(client.get(format!("http://{base}/api/v1/keys/{id}?apikey={secret}"))).await);
    for path in [
        "/api/v1/keys",
        &format!("/api/v1/keys/{id}"),
        &format!("/api/v1/keys/{id}/versions"),
    ] {
        responses.push(send(client.get(format!("http://{base}{path}"))).await);
    }
    responses.push(send(client.delete(format!("http://{base}/api/v1/keys/{id}"))).await);
    responses.push(send(client.get(format!("http://{base}/api/v1/deleted-keys"))).await);
    responses.push(send(client.post(format!("http://{base}/api/v1/keys/{id}/restore"))).await);
    responses
}

/// Proxies a market-data call whose key goes in the query string (so the upstream URL holds
/// the real key) to a local fake; returns the key and the app token used.
async fn exercise_proxy(base: &str, token: &str) -> (String, String, Vec<String>) {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_base = format!("http://{}", upstream.local_addr().unwrap());
    let fake = axum::Router::new().fallback(|| async { axum::Json(json!({"Global Quote": {}})) });
    tokio::spawn(async move { axum::serve(upstream, fake).await });
    let client = reqwest::Client::new();
    let api = |path: &str| format!("http://{base}/api/v1/{path}");
    let av_secret = format!(
        "CANARYQ{:09}",
        u64::from(std::process::id()) % 1_000_000_000
    );
    client
        .patch(api("services/alpha-vantage"))
        .bearer_auth(token)
        .json(&json!({"base_url": upstream_base}))
        .send()
        .await
        .unwrap();
    let key = client
        .post(api("keys"))
        .bearer_auth(token)
        .json(&json!({"service": "alpha-vantage", "environment": "production", "alias": "av", "secret": av_secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(key.status(), 201);
    let created: serde_json::Value = client
        .post(api("app-tokens"))
        .bearer_auth(token)
        .json(&json!({"name": "leak-check", "services": ["alpha-vantage"], "environments": ["production"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let app_token = created["token"].as_str().unwrap().to_owned();
    let mut responses = Vec::new();
    for query in [
        format!("function=GLOBAL_QUOTE&symbol=IBM&apikey={app_token}"),
        "function=GLOBAL_QUOTE&apikey=kwp_bad_token".to_owned(),
    ] {
        let response = client
            .get(format!("http://{base}/proxy/alpha-vantage/query?{query}"))
            .send()
            .await
            .unwrap();
        responses.push(format!(
            "{:?}\n{}",
            response.headers().clone(),
            response.text().await.unwrap()
        ));
    }
    (av_secret, app_token, responses)
}

fn assert_clean(what: &str, bytes: &[u8], secrets: &[&str]) {
    for s in secrets {
        assert!(!contains(bytes, s), "canary `{s}` leaked into {what}");
    }
}

fn sqlite_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    ["keyward.db", "keyward.db-wal", "keyward.db-shm"]
        .iter()
        .filter_map(|f| {
            std::fs::read(dir.join("data").join(f))
                .ok()
                .map(|b| ((*f).to_owned(), b))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_secret_never_leaves_the_encrypted_store_sqlite() {
    let (secret, fragment) = canary();
    let second = secret.replace("CANARY", "CANARX");
    let second_fragment = fragment.replace("CANARY", "CANARX");
    let secrets = [
        secret.as_str(),
        fragment.as_str(),
        second.as_str(),
        second_fragment.as_str(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let envs = [("KEYWARD_LOG", "trace")];
    let token = cli_token(dir.path(), &envs);
    let server = Process::serve(dir.path(), &envs, "canary");
    let mut responses = exercise(&server.base, &token, &secret, &second).await;
    assert!(
        responses[0].contains("sk-proj-…WXYZ"),
        "the hint is shown instead: {}",
        responses[0]
    );
    // The proxy, with the real key in the upstream URL's query string.
    let (av_secret, app_token, proxied) = exercise_proxy(&server.base, &token).await;
    assert!(
        proxied[0].contains("Global Quote"),
        "the proxied call went through: {}",
        proxied[0]
    );
    responses.extend(proxied);
    let secrets = [
        secrets.as_slice(),
        &[av_secret.as_str(), app_token.as_str()],
    ]
    .concat();
    for (i, r) in responses.iter().enumerate() {
        assert_clean(&format!("API response {i}"), r.as_bytes(), &secrets);
    }
    let while_running = sqlite_files(dir.path());
    assert!(
        while_running
            .iter()
            .any(|(f, b)| f == "keyward.db-wal" && !b.is_empty()),
        "the WAL is checked while it holds data"
    );
    for (file, bytes) in &while_running {
        assert_clean(file, bytes, &secrets);
    }
    let output = server.output();
    server.stop();
    assert!(
        output.contains("TRACE") || output.contains("DEBUG"),
        "logs were captured at trace level"
    );
    assert_clean("server output", output.as_bytes(), &secrets);
    for (file, bytes) in sqlite_files(dir.path()) {
        assert_clean(&format!("{file} after shutdown"), &bytes, &secrets);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_secret_never_leaves_the_encrypted_store_postgres() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let (secret, fragment) = canary();
    let second = secret.replace("CANARY", "CANARX");
    let secrets = [secret.as_str(), fragment.as_str(), second.as_str()];
    let dir = tempfile::tempdir().unwrap();
    let envs = [("KEYWARD_LOG", "trace"), ("KEYWARD_DATABASE_URL", db.url())];
    let token = cli_token(dir.path(), &envs);
    let server = Process::serve(dir.path(), &envs, "canary-pg");
    let responses = exercise(&server.base, &token, &secret, &second).await;
    for (i, r) in responses.iter().enumerate() {
        assert_clean(&format!("API response {i}"), r.as_bytes(), &secrets);
    }
    let dump = Command::new("pg_dump")
        .args(["--no-owner", db.url()])
        .output()
        .expect("pg_dump is installed");
    assert!(
        dump.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(
        contains(&dump.stdout, "key_versions"),
        "the dump holds the vault"
    );
    assert_clean("pg_dump", &dump.stdout, &secrets);
    let output = server.output();
    server.stop();
    assert_clean("server output", output.as_bytes(), &secrets);
}

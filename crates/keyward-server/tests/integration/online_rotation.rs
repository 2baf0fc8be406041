//! Master-key rotation while servers run: two `keyward serve` processes on PostgreSQL keep
//! serving proxied calls through `keyward master-key rotate`, follow the new current key
//! without a restart (new data keys are wrapped with it everywhere), and the CLI refuses
//! to make a key current that a running instance lacks, or to retire one a running
//! instance still wraps new data with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use keyward_core::master_key::InstanceReport;
use serde_json::{Value, json};

use crate::fake_llm::FakeLlm;
use crate::helpers::{OPENAI_KEY, Process, cli_token, command};

/// The current KEK and how many versions each KEK wraps, from `keyward master-key status`.
pub(crate) fn status(dir: &std::path::Path, envs: &[(&str, &str)]) -> (String, Vec<(String, u64)>) {
    let out = command(dir, envs)
        .args(["master-key", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut current = String::new();
    let mut wraps = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(kek) = words.next().filter(|w| w.starts_with("kek_")) else {
            continue;
        };
        if line.contains("current") {
            current = kek.to_owned();
        }
        let count = line
            .split("wraps ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        wraps.push((kek.to_owned(), count));
    }
    (current, wraps)
}

fn fake_instance(id: &str, current: &str, keks: &[&str]) -> InstanceReport {
    let now = keyward_core::Timestamp::now();
    InstanceReport {
        id: id.to_owned(),
        current_kek: current.to_owned(),
        keks: keks.iter().map(|k| (*k).to_owned()).collect(),
        version: "test".into(),
        started_at: now,
        seen_at: now,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn running_servers_follow_a_master_key_rotation_without_a_restart() {
    let Some(db) = keyward_store::testing::TestDatabase::postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let envs = [("KEYWARD_DATABASE_URL", db.url())];
    let admin = cli_token(dir.path(), &envs);
    let servers = [
        Process::serve(dir.path(), &envs, "a"),
        Process::serve(dir.path(), &envs, "b"),
    ];
    let (fake, base) = FakeLlm::start().await;
    let client = reqwest::Client::new();
    let api = |server: usize, method: reqwest::Method, path: &str, body: Value| {
        let request = client
            .request(
                method,
                format!("http://{}/api/v1{path}", servers[server].base),
            )
            .bearer_auth(&admin)
            .json(&body);
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status();
            (status, answer.json::<Value>().await.unwrap_or_default())
        }
    };
    api(
        0,
        reqwest::Method::PATCH,
        "/services/openai",
        json!({"base_url": base}),
    )
    .await;
    let (_, key) = api(0, reqwest::Method::POST, "/keys",
        json!({"service": "openai", "environment": "production", "alias": "main", "secret": OPENAI_KEY, "force": true})).await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let (_, token) = api(
        0,
        reqwest::Method::POST,
        "/app-tokens",
        json!({"name": "load", "services": ["openai"], "environments": ["production"]}),
    )
    .await;
    let token = token["token"].as_str().unwrap().to_owned();
    let (old, _) = status(dir.path(), &envs);
    assert!(old.starts_with("kek_"), "no current key in the status");
    let store = db.store().await;

    // A running instance that lacks the new key: the rotation waits, then refuses.
    store
        .report_instance(&fake_instance("laggard", &old, &[&old]))
        .await
        .unwrap();
    let refused = command(dir.path(), &envs)
        .args(["master-key", "rotate", "--wait-seconds", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("laggard") && stderr.contains("do not hold the new master key"),
        "{stderr}"
    );
    assert_eq!(status(dir.path(), &envs).0, old, "nothing was made current");
    store
        .forget_instance("laggard", keyward_core::Timestamp::UNIX_EPOCH)
        .await
        .unwrap();

    // Load on both servers through the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (stop, ok, failed, client, base, token) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            client.clone(),
            servers[c % 2].base.clone(),
            token.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = client
                    .post(format!("http://{base}/proxy/openai/v1/chat/completions"))
                    .bearer_auth(&token)
                    .json(&json!({"model": "gpt-5.4-mini", "messages": []}))
                    .send()
                    .await;
                match answer {
                    Ok(a) if a.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rotated = command(dir.path(), &envs)
        .args(["master-key", "rotate", "--wait-seconds", "20"])
        .output()
        .unwrap();
    assert!(
        rotated.status.success(),
        "{}{}",
        String::from_utf8_lossy(&rotated.stdout),
        String::from_utf8_lossy(&rotated.stderr)
    );
    let (new, wraps) = status(dir.path(), &envs);
    assert_ne!(new, old);
    // The servers follow within seconds: new versions, through either, are wrapped with it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for server in 0..2 {
        let (status_code, body) = api(
            server,
            reqwest::Method::POST,
            &format!("/keys/{key_id}/versions"),
            json!({"secret": OPENAI_KEY, "force": true}),
        )
        .await;
        assert!(status_code.is_success(), "{body}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (_, wraps_after) = status(dir.path(), &envs);
    let of = |list: &[(String, u64)], kek: &str| {
        list.iter().find(|(k, _)| k == kek).map_or(0, |(_, n)| *n)
    };
    assert_eq!(
        of(&wraps_after, &old),
        0,
        "a server still wraps with the old key: {wraps_after:?}"
    );
    assert_eq!(of(&wraps_after, &new), of(&wraps, &new) + 2);
    eprintln!(
        "online rotation {old} -> {new}: {} proxied calls succeeded through it, {} failed; both servers wrap with the new key",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 10);
    assert!(fake.completions.load(Ordering::SeqCst) > 10);

    // An instance that still wraps with the old key holds its retirement back.
    store
        .report_instance(&fake_instance("behind", &old, &[&old, &new]))
        .await
        .unwrap();
    let refused = command(dir.path(), &envs)
        .args(["master-key", "retire", &old])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("behind") && stderr.contains("wrap new data keys with"),
        "{stderr}"
    );
    store
        .forget_instance("behind", keyward_core::Timestamp::UNIX_EPOCH)
        .await
        .unwrap();
    let retired = command(dir.path(), &envs)
        .args(["master-key", "retire", &old])
        .output()
        .unwrap();
    assert!(
        retired.status.success(),
        "{}",
        String::from_utf8_lossy(&retired.stderr)
    );
    store.close().await;
    for server in servers {
        server.stop();
    }
}

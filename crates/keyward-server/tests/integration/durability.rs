//! Nothing acknowledged is lost: the server is SIGKILLed in the middle of a stream of key
//! writes and restarted; every write that got a 201 must be there.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_store::testing::TestDatabase;
use serde_json::json;

use crate::helpers::{Process, cli_token};

const WRITERS: usize = 4;
const KILL_AFTER: usize = 60;

async fn acknowledged_writes_survive_sigkill(db: Option<TestDatabase>) {
    let dir = tempfile::tempdir().unwrap();
    let url = db.as_ref().map(|d| d.url().to_owned());
    let envs: Vec<(&str, &str)> = url
        .iter()
        .map(|u| ("KEYWARD_DATABASE_URL", u.as_str()))
        .collect();
    let token = cli_token(dir.path(), &envs);
    let server = Process::serve(dir.path(), &envs, "before-kill");

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (acked, client, token, base) = (
            acked.clone(),
            client.clone(),
            token.clone(),
            server.base.clone(),
        );
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let body = json!({"service": "finnhub", "environment": "production", "alias": format!("w{w}-{n}"),
                    "secret": "abcdefghij0123456789", "tags": ["durability"]});
                let response = client.post(format!("http://{base}/api/v1/keys")).bearer_auth(&token).json(&body).send().await;
                match response {
                    Ok(r) if r.status() == 201 => {
                        let key: serde_json::Value = match r.json().await {
                            Ok(k) => k,
                            Err(_) => break, // the body was cut by the kill: not acknowledged
                        };
                        acked.lock().unwrap().push(key["id"].as_str().unwrap().to_owned());
                    }
                    Ok(r) => {
                        eprintln!("writer {w} stopped: HTTP {}", r.status());
                        break;
                    }
                    Err(_) => break, // the server is gone
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < KILL_AFTER {
        assert!(
            !writers.iter().all(|w| w.is_finished()),
            "all writers stopped before the kill: {}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();

    let server = Process::serve(dir.path(), &envs, "after-kill");
    let mut stored = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let page: serde_json::Value = client
            .get(format!(
                "http://{}/api/v1/keys?tag=durability&limit=200{cursor}",
                server.base
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stored.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    server.stop();
    let lost: Vec<_> = acked.difference(&stored).collect();
    println!(
        "acknowledged {}, found after restart {}, lost {}",
        acked.len(),
        stored.len(),
        lost.len()
    );
    assert!(acked.len() >= KILL_AFTER);
    assert!(
        lost.is_empty(),
        "acknowledged writes lost after SIGKILL: {lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_loses_no_acknowledged_write_on_sigkill() {
    acknowledged_writes_survive_sigkill(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_loses_no_acknowledged_write_on_sigkill() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    acknowledged_writes_survive_sigkill(Some(db)).await;
}

//! Stale means closed: an instance that cannot confirm its view of the vault is current for
//! longer than `max_snapshot_staleness` refuses proxied calls (`503 store_unavailable`)
//! rather than inject with a view that may still hold a revoked key, says so on `/readyz`
//! and `/metrics`, and recovers by itself when the database answers again.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, OPENAI_KEY, TestApp};
use crate::validation::Provider;

/// Polls `call` until it answers `want`, returning how long that took (panics after `limit`).
async fn until<F, Fut>(what: &str, limit: Duration, want: u16, call: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (u16, Value)>,
{
    let started = Instant::now();
    loop {
        let (status, body) = call().await;
        if status == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: still {status} {body} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_its_database_stops_injecting_and_recovers_by_itself() {
    let Some(app) = TestApp::spawn_with(
        Backend::Postgres,
        keyward_server::config::RawSettings {
            max_snapshot_staleness_seconds: Some("2".into()),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let (_provider, base) = Provider::start().await;
    app.point_service("openai", &base).await;
    app.create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let created = app
        .app_token(json!({"name": "cut", "services": ["openai"], "environments": ["production"]}))
        .await;
    let token = created["token"].as_str().unwrap().to_owned();
    let proxied = || {
        let request = app
            .client
            .get(format!("{}/proxy/openai/v1/models", app.base))
            .bearer_auth(&token);
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let get = |path: &'static str| {
        let request = app.client.get(format!("{}{path}", app.base));
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            (
                status,
                Value::String(answer.text().await.unwrap_or_default()),
            )
        }
    };
    assert_eq!(proxied().await.0, 200);
    assert!(
        get("/metrics")
            .await
            .1
            .to_string()
            .contains("keyward_snapshot_stale 0")
    );

    // Cut the database off: no new connections, every open one closed.
    app.db().set_reachable(false).await;
    let refused_after = until("refusing", Duration::from_secs(10), 503, proxied).await;
    let (_, refusal) = proxied().await;
    assert_eq!(refusal["error"]["code"], "store_unavailable", "{refusal}");
    // It kept serving from its snapshot until the limit (two seconds), never much past it.
    assert!(
        refused_after >= Duration::from_millis(1500),
        "refused after {refused_after:?}: sooner than max_snapshot_staleness allows"
    );
    let (ready, _) = get("/readyz").await;
    assert_eq!(ready, 503);
    assert!(
        get("/metrics")
            .await
            .1
            .to_string()
            .contains("keyward_snapshot_stale 1")
    );

    // The database comes back: the instance recovers without a restart.
    app.db().set_reachable(true).await;
    let recovered_after = until("recovering", Duration::from_secs(15), 200, proxied).await;
    assert_eq!(get("/readyz").await.0, 200);
    eprintln!(
        "stale means closed: refused {} ms after the database was cut off (limit 2 s); serving again {} ms after it came back",
        refused_after.as_millis(),
        recovered_after.as_millis()
    );
}

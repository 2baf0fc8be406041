//! Limits shared through Redis: two instances on one database and one Redis behave as one —
//! a 25-a-day quota lets 25 calls through in total, a token's rate is counted once, a money
//! budget is overshot by at most one call's maximum under 1,000 concurrent calls spread
//! over both. An outage is explicit: rates fall back to this instance's share, quotas and
//! budgets refuse (or count locally when configured), `/readyz` and `/metrics` say so, and
//! Redis answering again ends it without a restart. Holds of a dead instance expire;
//! seeding a counter never adds twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_server::config::RawSettings;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_llm::FakeLlm;
use crate::helpers::{Backend, OPENAI_KEY, TestApp};

/// Settings for Redis at `url` under a prefix no other test uses.
fn shared(url: &str, prefix: &str) -> RawSettings {
    RawSettings {
        redis_url: Some(url.to_owned()),
        redis_prefix: Some(prefix.to_owned()),
        ..Default::default()
    }
}

fn fresh_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("kwtest:{nanos}:")
}

/// Two instances sharing a SQLite file and Redis, a fake OpenAI, a key and a token.
struct Pair {
    app: TestApp,
    other: crate::helpers::Sibling,
    fake: FakeLlm,
    key: String,
}

impl Pair {
    async fn start(redis: &str) -> Self {
        let prefix = fresh_prefix();
        let app = TestApp::spawn_with(Backend::Sqlite, shared(redis, &prefix))
            .await
            .unwrap();
        let other = app.sibling_with(shared(redis, &prefix)).await;
        let (fake, base) = FakeLlm::start().await;
        app.point_service("openai", &base).await;
        let key = app
            .create_key("openai", "production", "main", OPENAI_KEY)
            .await;
        Self {
            app,
            other,
            fake,
            key: key["id"].as_str().unwrap().to_owned(),
        }
    }

    async fn token(&self, extra: Value) -> String {
        let mut request =
            json!({"name": "shared", "services": ["openai"], "environments": ["production"]});
        for (k, v) in extra.as_object().unwrap() {
            request[k] = v.clone();
        }
        self.app.app_token(request).await["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A chat call through instance `which` (0 or 1): status and error code.
    async fn chat(&self, which: usize, token: &str) -> (StatusCode, String) {
        let base = if which.is_multiple_of(2) {
            &self.app.base
        } else {
            &self.other.base
        };
        let answer = self
            .app
            .client
            .post(format!("{base}/proxy/openai/v1/chat/completions"))
            .bearer_auth(token)
            .json(&json!({"model": "gpt-5.4-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "NVDA?"}]}))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or_default();
        (
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }
}

fn tally(results: &[(StatusCode, String)]) -> (usize, Vec<String>) {
    let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let refused = results
        .iter()
        .filter(|(s, _)| *s != StatusCode::OK)
        .map(|(_, code)| code.clone())
        .collect();
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_count_one_quota_one_rate_and_one_budget() {
    let Some(redis) = keyward_store::testing::redis_url() else {
        return;
    };
    let pair = Pair::start(&redis).await;

    // A 25-a-day quota: 40 calls alternating between the instances, 25 served in total.
    let (status, body) = pair
        .app
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/keys/{}", pair.key),
            Some(json!({"limits": [{"max": 25, "unit": "requests", "window_seconds": 86400}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let plain = pair.token(json!({})).await;
    // Both instances see the new limit (the change feed) before the load starts.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut results = Vec::new();
    for i in 0..40 {
        results.push(pair.chat(i, &plain).await);
    }
    let (served, refused) = tally(&results);
    assert_eq!(served, 25, "{results:?}");
    assert!(
        refused.iter().all(|c| c == "quota_exhausted"),
        "{refused:?}"
    );
    assert_eq!(
        pair.fake
            .completions
            .load(std::sync::atomic::Ordering::SeqCst),
        25,
        "the provider saw 25 calls"
    );
    eprintln!("shared quota: 40 calls over two instances, {served} served (limit 25)");

    // The limit lifted, a token allowed 20 calls a minute: 60 calls, 20 served.
    pair.app
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/keys/{}", pair.key),
            Some(json!({"limits": []})),
        )
        .await;
    let limited = pair
        .token(json!({"rate_limit": {"requests": 20, "per_seconds": 60}}))
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut results = Vec::new();
    for i in 0..60 {
        results.push(pair.chat(i, &limited).await);
    }
    let (served, refused) = tally(&results);
    assert_eq!(served, 20, "{results:?}");
    assert!(refused.iter().all(|c| c == "rate_limited"), "{refused:?}");
    eprintln!("shared rate: 60 calls over two instances, {served} served (limit 20 a minute)");

    // A budget: 1,000 concurrent calls spread over both instances.
    const BUDGET_USD: f64 = 0.005;
    let metered = pair
        .token(json!({"budget": {"limit_usd": BUDGET_USD, "period": "day"}}))
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = pair
        .fake
        .completions
        .load(std::sync::atomic::Ordering::SeqCst);
    let calls = (0..1000).map(|i| {
        let (pair, metered) = (&pair, &metered);
        async move { pair.chat(i, metered).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let (served, refused) = tally(&results);
    assert!(
        refused.iter().all(|c| c == "budget_exceeded"),
        "{refused:?}"
    );
    let body = json!({"model": "gpt-5.4-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "NVDA?"}]});
    let max_cost = (serde_json::to_vec(&body).unwrap().len() as f64 * 0.75 + 100.0 * 4.50) / 1e6;
    let actual = (5.0 * 0.75 + 100.0 * 4.50) / 1e6;
    let spent = served as f64 * actual;
    assert!(served >= 1);
    assert!(
        spent <= BUDGET_USD + max_cost,
        "{served} calls spent ${spent}: over ${BUDGET_USD} + one call's maximum ${max_cost}"
    );
    assert_eq!(
        pair.fake
            .completions
            .load(std::sync::atomic::Ordering::SeqCst)
            - before,
        served
    );
    eprintln!(
        "shared budget: 1000 concurrent calls over two instances, {served} served, ${spent:.6} spent of ${BUDGET_USD} (overshoot ${:.6}, one call at most ${max_cost:.6})",
        (spent - BUDGET_USD).max(0.0)
    );
}

/// Starts `redis-server` on `port` (nothing persisted); stopped when dropped.
struct PrivateRedis(std::process::Child);

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn readyz_limits(app: &TestApp) -> String {
    let body: Value = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["limits"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_explicit_and_ends_without_a_restart() {
    if keyward_store::testing::redis_url().is_none() {
        return;
    }
    // Nothing listens on the port yet: the start is not refused.
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let app = TestApp::spawn_with(Backend::Sqlite, shared(&url, &fresh_prefix()))
        .await
        .unwrap();
    let (fake, base) = FakeLlm::start().await;
    app.point_service("openai", &base).await;
    let quota_key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    app.call(
        reqwest::Method::PATCH,
        &format!("/api/v1/keys/{}", quota_key["id"].as_str().unwrap()),
        Some(json!({"limits": [{"max": 100, "unit": "requests", "window_seconds": 86400}]})),
    )
    .await;
    let token = app
        .app_token(json!({"name": "t", "services": ["openai"], "environments": ["production"]}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let chat = || {
        app.client
            .post(format!("{}/proxy/openai/v1/chat/completions", app.base))
            .bearer_auth(&token)
            .json(&json!({"model": "gpt-5.4-mini", "messages": []}))
            .send()
    };
    assert_eq!(readyz_limits(&app).await, "redis_unreachable");
    let refused = chat().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "limits_unavailable", "{body}");
    assert_eq!(
        fake.completions.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("keyward_redis_up 0"), "{metrics}");

    // Redis comes up: within the heartbeat the limits are shared again, no restart.
    let redis = PrivateRedis::start(port);
    let started = Instant::now();
    while readyz_limits(&app).await != "shared" {
        assert!(started.elapsed() < Duration::from_secs(10), "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "redis outage: shared again {} ms after Redis came up",
        started.elapsed().as_millis()
    );
    assert_eq!(chat().await.unwrap().status(), StatusCode::OK);

    // It goes away mid-run: the next metered call is refused, not let through uncounted.
    drop(redis);
    let started = Instant::now();
    loop {
        let status = chat().await.unwrap().status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(5), "still served");
    }
    assert_eq!(readyz_limits(&app).await, "redis_unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_rates_fall_back_to_a_share_and_local_quotas_count_here() {
    if keyward_store::testing::redis_url().is_none() {
        return;
    }
    // A Redis that accepts connections and never answers: a timeout is an outage too.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in silent.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        RawSettings {
            limits_on_redis_outage: Some("local".into()),
            ..shared(&url, &fresh_prefix())
        },
    )
    .await
    .unwrap();
    let (_fake, base) = FakeLlm::start().await;
    app.point_service("openai", &base).await;
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    app.call(
        reqwest::Method::PATCH,
        &format!("/api/v1/keys/{}", key["id"].as_str().unwrap()),
        Some(json!({"limits": [{"max": 3, "unit": "requests", "window_seconds": 86400}]})),
    )
    .await;
    let token = app
        .app_token(json!({"name": "t", "services": ["openai"], "environments": ["production"], "rate_limit": {"requests": 2, "per_seconds": 60}}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(readyz_limits(&app).await, "redis_unreachable");
    let mut codes = Vec::new();
    for _ in 0..3 {
        let answer = app
            .client
            .post(format!("{}/proxy/openai/v1/chat/completions", app.base))
            .bearer_auth(&token)
            .json(&json!({"model": "gpt-5.4-mini", "messages": []}))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap_or_default();
        codes.push((
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    // One instance seen alive: its share is the whole rate (2), the quota counted here.
    assert_eq!(codes[0].0, 200, "{codes:?}");
    assert_eq!(codes[1].0, 200, "{codes:?}");
    assert_eq!(codes[2], (429, "rate_limited".to_owned()), "{codes:?}");
}

#[tokio::test]
async fn seeding_never_adds_twice_and_a_dead_instance_releases_its_holds() {
    use keyward_core::app_token::{AppToken, Budget, BudgetPeriod};
    use keyward_core::id::{AppTokenId, KeyId};
    use keyward_core::service::{Limit, LimitUnit, QuotaCalendar};
    use keyward_core::usage::{HourlyUse, Subject};
    use keyward_proxy::shared::{Decision, KeyPart, OutagePolicy, SharedLimits, TokenPart};

    let Some(redis) = keyward_store::testing::redis_url() else {
        return;
    };
    let prefix = fresh_prefix();
    let instance = |name: &str| {
        Arc::new(
            SharedLimits::new(
                &redis,
                None,
                &prefix,
                name.to_owned(),
                OutagePolicy::Closed,
                1,
            )
            .unwrap(),
        )
    };
    let (a, b) = (instance("a"), instance("b"));
    a.heartbeat().await;
    b.heartbeat().await;
    let now = keyward_core::Timestamp::now();
    let key = KeyId::generate(now, &keyward_crypto::OsRandomness);
    let limits = [Limit {
        max: 12,
        unit: LimitUnit::Requests,
        window_seconds: 86_400,
    }];
    let calendar = QuotaCalendar::Rolling;
    // Instance a restored 10 calls from the store, b 20 (say, it read later): the counter
    // starts from whichever seeded it first, never from both.
    let seeded = |requests: u64| {
        let meters = keyward_proxy::Meters::default();
        meters.seed(vec![HourlyUse {
            subject: Subject::Key(key.clone()),
            hour: keyward_core::Timestamp::from_millisecond(
                now.as_millisecond() / 3_600_000 * 3_600_000,
            )
            .unwrap(),
            requests,
            credits: 0,
            tokens: 0,
            cost_nanos: 0,
        }]);
        meters
    };
    let (meters_a, meters_b) = (seeded(10), seeded(20));
    let parts = [KeyPart {
        id: &key,
        limits: &limits,
        budget: None,
    }];
    let spend = keyward_proxy::Spend {
        requests: 1,
        credits: 0,
    };
    let mut admitted = 0;
    for (shared, meters) in [
        (&a, &meters_a),
        (&b, &meters_b),
        (&a, &meters_a),
        (&b, &meters_b),
    ] {
        match shared
            .decide(0, None, &parts, spend, 0, Some((meters, &calendar, now)))
            .await
            .expect("Redis decides")
        {
            Decision::Admitted { .. } => admitted += 1,
            Decision::Refused(e) => assert_eq!(e.code, "quota_exhausted"),
        }
    }
    assert_eq!(admitted, 2, "seeded once at 10: room for two more of 12");

    // A budget held whole by `a`, which then dies (no more heartbeats).
    let token = AppToken {
        id: AppTokenId::generate(now, &keyward_crypto::OsRandomness),
        public_id: "sharedtoken1".into(),
        name: "t".into(),
        secret_hash: vec![0],
        services: vec!["openai".into()],
        environments: vec!["production".into()],
        key_ids: vec![],
        allowed_networks: vec![],
        rate_limit: None,
        budget: Some(Budget {
            limit_micros: 1000,
            period: BudgetPeriod::Day,
        }),
        created_by: "t".into(),
        created_at: now,
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    };
    let whole = 1_000_000; // nano-dollars: the whole budget
    let held = a
        .decide(
            0,
            Some(TokenPart { token: &token }),
            &[],
            spend,
            whole,
            None,
        )
        .await
        .expect("decides");
    assert!(matches!(held, Decision::Admitted { .. }));
    let refused = b
        .decide(
            0,
            Some(TokenPart { token: &token }),
            &[],
            spend,
            whole,
            None,
        )
        .await
        .expect("decides");
    assert!(matches!(refused, Decision::Refused(ref e) if e.code == "budget_exceeded"));
    std::mem::forget(held); // `a` dies holding it: no settlement ever comes
    let started = Instant::now();
    loop {
        b.heartbeat().await;
        match b
            .decide(
                0,
                Some(TokenPart { token: &token }),
                &[],
                spend,
                whole,
                None,
            )
            .await
            .expect("decides")
        {
            Decision::Admitted { .. } => break,
            Decision::Refused(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "the hold never expired"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    eprintln!(
        "a dead instance's budget hold expired after {} ms (dead after {:?})",
        started.elapsed().as_millis(),
        keyward_proxy::shared::DEAD_AFTER
    );
}

/// Script calls Redis has served (`EVALSHA` and `EVAL`), from `INFO commandstats`.
fn script_calls(port: u16) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "commandstats"])
        .output()
        .expect("redis-cli is installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counted_call_costs_one_round_trip_and_an_uncounted_one_none() {
    if keyward_store::testing::redis_url().is_none() {
        return;
    }
    let port = free_port();
    let _redis = PrivateRedis::start(port);
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        shared(&format!("redis://127.0.0.1:{port}"), "kw:"),
    )
    .await
    .unwrap();
    let (_fake, base) = FakeLlm::start().await;
    app.point_service("openai", &base).await;
    app.create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let free = app
        .app_token(json!({"name": "free", "services": ["openai"], "environments": ["production"]}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let counted = app
        .app_token(
            json!({"name": "counted", "services": ["openai"], "environments": ["production"],
                          "rate_limit": {"requests": 100000, "per_seconds": 60},
                          "budget": {"limit_usd": 1000.0, "period": "day"}}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = |token: String| {
        let app = &app;
        async move {
            for _ in 0..200 {
                let status = app
                    .client
                    .post(format!("{}/proxy/openai/v1/chat/completions", app.base))
                    .bearer_auth(&token)
                    .json(&json!({"model": "gpt-5.4-mini", "max_tokens": 10, "messages": []}))
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, StatusCode::OK);
            }
        }
    };
    let started = Instant::now();
    let before = script_calls(port);
    run(free).await;
    let free_calls = script_calls(port) - before;
    // The once-a-second heartbeat and circuit exchange are the only scripts meanwhile.
    let seconds = started.elapsed().as_secs() + 1;
    assert!(
        free_calls <= 2 * seconds,
        "{free_calls} scripts for 200 calls that count nothing in {seconds} s"
    );
    let started = Instant::now();
    let before = script_calls(port);
    run(counted).await;
    // Let the last settlements go out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counted_calls = script_calls(port) - before;
    // Heartbeats and circuit exchanges (2 a second) and settlement batches (10 a second).
    let overhead = started.elapsed().as_secs() * 12 + 12;
    assert!(
        counted_calls >= 200 && counted_calls <= 200 + overhead,
        "{counted_calls} scripts for 200 counted calls (settlements and heartbeats at most {overhead})"
    );
    eprintln!(
        "redis round trips: 200 uncounted calls {free_calls} scripts (heartbeats, circuits); 200 counted calls {counted_calls} scripts (one decision each + batched settlements + heartbeats)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_counted_once_across_instances() {
    let Some(redis) = keyward_store::testing::redis_url() else {
        return;
    };
    let prefix = fresh_prefix();
    let app = TestApp::spawn_with(Backend::Sqlite, shared(&redis, &prefix))
        .await
        .unwrap();
    let other = app.sibling_with(shared(&redis, &prefix)).await;
    let login = |base: String| {
        let client = app.client.clone();
        async move {
            client
                .post(format!("{base}/api/v1/auth/login"))
                .json(&json!({"username": "Mallory", "password": "not the password at all"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Five free failures, spread over both instances (the account's limit, not each one's).
    for i in 0..5 {
        let base = if i % 2 == 0 {
            app.base.clone()
        } else {
            other.base.clone()
        };
        assert_eq!(login(base).await, StatusCode::UNAUTHORIZED);
    }
    // The sixth failure sets a delay that both instances enforce.
    assert_eq!(login(app.base.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        login(other.base.clone()).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(login(app.base.clone()).await, StatusCode::TOO_MANY_REQUESTS);
    // Admins on either instance see it and can lift it for both.
    let (status, lockouts) = app
        .call(reqwest::Method::GET, "/api/v1/auth/lockouts", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(lockouts.to_string().contains("mallory"), "{lockouts}");
    let lifted = app
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/lockouts/lift",
            Some(json!({"kind": "account", "value": "mallory"})),
        )
        .await;
    assert!(lifted.0.is_success(), "{lifted:?}");
    assert_eq!(login(other.base.clone()).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_opened_on_one_instance_keeps_the_key_out_on_the_other() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let Some(redis) = keyward_store::testing::redis_url() else {
        return;
    };
    let prefix = fresh_prefix();
    let app = TestApp::spawn_with(Backend::Sqlite, shared(&redis, &prefix))
        .await
        .unwrap();
    let other = app.sibling_with(shared(&redis, &prefix)).await;
    let (outage, calls) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicUsize::new(0)),
    );
    let base = crate::health::openai(outage.clone(), calls.clone()).await;
    app.point_service("openai", &base).await;
    app.create_key("openai", "production", "only", OPENAI_KEY)
        .await;
    let token = app
        .app_token(json!({"name": "t", "services": ["openai"], "environments": ["production"]}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let call = |base: String| {
        let (client, token) = (app.client.clone(), token.clone());
        async move {
            let answer = client
                .get(format!("{base}/proxy/openai/v1/models"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let body: Value = answer.json().await.unwrap_or_default();
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    // The provider fails: five failures through the first instance open its circuit.
    let mut opened = false;
    for _ in 0..6 {
        if call(app.base.clone()).await == "circuit_open" {
            opened = true;
            break;
        }
    }
    assert!(opened, "the circuit never opened");
    let sent = calls.load(Ordering::SeqCst);
    // The other instance never saw a failure itself, yet stops sending within a couple of
    // heartbeats.
    let started = Instant::now();
    loop {
        let code = call(other.base.clone()).await;
        if code == "circuit_open" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still sending: {code}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(call(other.base.clone()).await, "circuit_open");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "no traffic while open anywhere"
    );
    eprintln!(
        "shared circuit: open on the other instance {} ms later ({} provider calls in all)",
        started.elapsed().as_millis(),
        before.max(sent)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_is_verified_and_garbage_is_an_outage() {
    if keyward_store::testing::redis_url().is_none() {
        return;
    }
    // A CA, and a Redis serving TLS only, with a certificate for 127.0.0.1 signed by it.
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let file = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_file = file("ca.pem", ca.pem());
    let cert_file = file("redis.crt", server.pem());
    let key_file = file("redis.key", server_key.serialize_pem());
    let port = free_port();
    let mut child = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(&cert_file)
        .arg("--tls-key-file")
        .arg(&key_file)
        .arg("--tls-ca-cert-file")
        .arg(&ca_file)
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server (TLS) did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("rediss://127.0.0.1:{port}");
    // Verified against the CA: limits are shared.
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        RawSettings {
            redis_ca_file: Some(ca_file.clone()),
            ..shared(&url, &fresh_prefix())
        },
    )
    .await
    .unwrap();
    assert_eq!(readyz_limits(&app).await, "shared");
    // Without the CA the server's certificate is not trusted: an outage, not a silent
    // downgrade.
    let untrusting = TestApp::spawn_with(Backend::Sqlite, shared(&url, &fresh_prefix()))
        .await
        .unwrap();
    assert_eq!(readyz_limits(&untrusting).await, "redis_unreachable");
    let _ = child.kill();
    let _ = child.wait();

    // Something that answers, but not as Redis does: counted and treated as an outage.
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage_url = format!("redis://{}", garbage.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::Write;
        for mut stream in garbage.incoming().flatten() {
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let confused = TestApp::spawn_with(Backend::Sqlite, shared(&garbage_url, &fresh_prefix()))
        .await
        .unwrap();
    assert_eq!(readyz_limits(&confused).await, "redis_unreachable");
    let metrics = confused
        .client
        .get(format!("{}/metrics", confused.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("keyward_redis_errors_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_answer_is_shared_when_the_shared_cache_is_on() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let Some(redis) = keyward_store::testing::redis_url() else {
        return;
    };
    let prefix = fresh_prefix();
    let settings = || RawSettings {
        shared_cache_mib: Some("8".into()),
        ..shared(&redis, &prefix)
    };
    let app = TestApp::spawn_with(Backend::Sqlite, settings())
        .await
        .unwrap();
    let other = app.sibling_with(settings()).await;
    // A Finnhub that counts its calls and echoes the key it was given in the answer.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let finnhub = crate::helpers::serve_fake(axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let key = headers
                    .get("x-finnhub-token")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                axum::Json(json!({"c": 123.45, "t": 1_764_000_000, "debug": key}))
            }
        },
    ))
    .await;
    const SECRET: &str = "finnhubsecret0123456789";
    app.point_service("finnhub", &finnhub).await;
    app.create_key("finnhub", "production", "main", SECRET)
        .await;
    let token = app
        .app_token(json!({"name": "t", "services": ["finnhub"], "environments": ["production"]}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let quote = |base: String| {
        let (client, token) = (app.client.clone(), token.clone());
        async move {
            let answer = client
                .get(format!("{base}/proxy/finnhub/api/v1/quote?symbol=AAPL"))
                .header("X-Finnhub-Token", &token)
                .send()
                .await
                .unwrap();
            let cache = answer
                .headers()
                .get("x-keyward-cache")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (answer.status(), cache, answer.text().await.unwrap())
        }
    };
    let (status, cache, first) = quote(app.base.clone()).await;
    assert_eq!(
        (status, cache.as_str()),
        (StatusCode::OK, "miss"),
        "{first}"
    );
    assert!(!first.contains(SECRET), "the key is masked: {first}");
    // The entry reaches Redis just after the answer (stored off its path)…
    let started = Instant::now();
    loop {
        let count = std::process::Command::new("redis-cli")
            .args(["-u", &redis, "zcard", &format!("{prefix}cache-index")])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&count.stdout).trim() == "1" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never stored in Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …and then the other instance answers from it: the provider is not called again.
    let (status, cache, body) = quote(other.base.clone()).await;
    assert_eq!((status, cache.as_str()), (StatusCode::OK, "hit"));
    assert_eq!(body, first);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one provider call for both instances"
    );
    // What Redis holds is the masked answer, never the key (read through the index: the
    // entry's name holds the cache key's separators).
    let value = std::process::Command::new("redis-cli")
        .args([
            "-u",
            &redis,
            "eval",
            "return redis.call('GET', redis.call('ZRANGE', KEYS[1], 0, 0)[1])",
            "1",
            &format!("{prefix}cache-index"),
        ])
        .output()
        .unwrap();
    let value = String::from_utf8_lossy(&value.stdout).into_owned();
    assert!(
        value.contains("123.45") && !value.contains(SECRET),
        "{value}"
    );
}

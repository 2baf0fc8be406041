//! The analytics benchmark: how fast the pages that read usage answer with a big vault.
//!
//! ```text
//! cargo run --release -p keyward-server --example analytics_bench -- \
//!     [--database-url URL] [--records 10000000] [--keys 1000] [--days 60] [--samples 30]
//!     [--data-dir DIR [--measure-only [--settle SECONDS]]]
//! ```
//!
//! `--data-dir` keeps the vault (its master key, and the SQLite database unless
//! `--database-url` names another) in DIR instead of a temporary directory; a later run with
//! the same DIR (and URL) and `--measure-only` measures that seeded vault again without
//! setting it up or seeding it — for figures taken on a quiet machine after a long seed —
//! after waiting `--settle` seconds (default 60) for the start-up work (quota counters
//! restored, the detectors' replay of the minute rollups) to finish.
//!
//! Starts the real server on a fresh database (SQLite in a temporary directory by default,
//! or the PostgreSQL URL given — it must be an empty database), adds `--keys` Finnhub and
//! OpenAI keys (a tenth with a daily quota, so forecasts run), 50 app tokens and a viewer,
//! and measures each page and API call first on the empty vault (the baseline), then again
//! after `--records` usage records spread over the last `--days` days have been written
//! through the store's own batch path (records plus their minute/hour/day/week/month
//! rollups, as the proxy's writer does). Prints the median and p95 of `--samples` requests
//! each, and the ratio to the empty vault. The targets: the key page's 30-day view and the
//! dashboard's totals in at most 100 ms (median).
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    reason = "a benchmark program: its output is the report, a failure ends it"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use keyward_app::Actor;
use keyward_core::access::Role;
use keyward_core::answer::AnswerClass;
use keyward_core::usage::{CacheOutcome, Outcome, TokenUsage, UsageRecord};
use keyward_server::config::{RawSettings, resolve};
use keyward_server::server;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

struct Args {
    database_url: Option<String>,
    records: u64,
    keys: usize,
    days: i64,
    samples: usize,
    data_dir: Option<std::path::PathBuf>,
    measure_only: bool,
    settle_seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        database_url: None,
        records: 10_000_000,
        keys: 1_000,
        days: 60,
        samples: 30,
        data_dir: None,
        measure_only: false,
        settle_seconds: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--measure-only" {
            a.measure_only = true;
            continue;
        }
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--data-dir" => a.data_dir = Some(value.into()),
            "--settle" => a.settle_seconds = value.parse().expect("--settle SECONDS"),
            "--database-url" => a.database_url = Some(value),
            "--records" => a.records = value.parse().expect("--records N"),
            "--keys" => a.keys = value.parse().expect("--keys N"),
            "--days" => a.days = value.parse().expect("--days N"),
            "--samples" => a.samples = value.parse().expect("--samples N"),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// A tiny deterministic generator (xorshift), so every run seeds the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What to measure: a name and a path (pages with the viewer's session, API calls too).
fn probes(key: &str, now: Timestamp) -> Vec<(&'static str, String)> {
    let from = now - SignedDuration::from_hours(24 * 30);
    vec![
        ("key page (30-day view)", format!("/keys/{key}")),
        ("dashboard", "/".to_owned()),
        ("analytics page, month", "/usage?view=month".to_owned()),
        (
            "API: one key, 30 days by day",
            format!("/api/v1/usage?key={key}&from={from}&to={now}&granularity=day"),
        ),
        (
            "API: vault totals, 30 days by day",
            format!("/api/v1/usage?from={from}&to={now}&granularity=day"),
        ),
        ("API: forecasts", "/api/v1/forecasts".to_owned()),
    ]
}

/// Median and 95th percentile of `samples` GETs (after two warm-ups), in milliseconds.
async fn measure(client: &reqwest::Client, url: &str, cookie: &str, samples: usize) -> (f64, f64) {
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + 2 {
        let started = Instant::now();
        let answer = client
            .get(url)
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let _ = answer.bytes().await.unwrap();
        assert!(status.is_success(), "{url}: {status}");
        if i >= 2 {
            times.push(started.elapsed().as_secs_f64() * 1_000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.95))
}

/// The viewer's session cookie.
async fn sign_in(client: &reqwest::Client, base: &str) -> String {
    let login = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "vera", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::main]
async fn main() {
    let a = args();
    // `RUST_LOG=sqlx::query=info` shows each statement with its time: where a page's time goes.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    assert!(
        !a.measure_only || a.data_dir.is_some(),
        "--measure-only needs the --data-dir of a seeded run"
    );
    let temporary = tempfile::tempdir().unwrap();
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| temporary.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let raw = RawSettings {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.clone()),
        database_url: a.database_url.clone(),
        ..Default::default()
    };
    let settings = resolve(raw).unwrap();
    let started = server::start_with_clock(&settings, Arc::new(keyward_core::SystemClock))
        .await
        .unwrap();
    let app = started.app.clone();
    let base = format!("http://{}", started.addr);
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(started.run(async {
        let _ = stopped.await;
    }));
    let backend = if a
        .database_url
        .as_deref()
        .is_some_and(|u| u.starts_with("postgres"))
    {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!(
        "analytics benchmark on {backend}: {} keys, {} records over {} days",
        a.keys, a.records, a.days
    );
    let client = reqwest::Client::new();
    let measured_key = dir.join("bench-key");
    if a.measure_only {
        let key = std::fs::read_to_string(&measured_key).expect("a seeded --data-dir");
        tokio::time::sleep(Duration::from_secs(a.settle_seconds)).await;
        let cookie = sign_in(&client, &base).await;
        println!("\n{:<36} {:>22}", "measured (seeded vault)", "p50 / p95");
        for (name, path) in probes(&key, Timestamp::now()) {
            let (p50, p95) = measure(&client, &format!("{base}{path}"), &cookie, a.samples).await;
            println!("{name:<36} {p50:>12.1} / {p95:>6.1} ms");
        }
        return;
    }

    // The vault: keys, tokens, a viewer to look with.
    let system = Actor::system("bench");
    let (_, owner) = app
        .issue_token(&system, "bench-owner", Role::Owner, None)
        .await
        .unwrap();
    let call = |method: reqwest::Method, path: String, body: Value| {
        client
            .request(method, format!("{base}{path}"))
            .bearer_auth(owner.expose_secret())
            .json(&body)
            .send()
    };
    let t = Instant::now();
    let mut keys: Vec<(String, String)> = Vec::new();
    for i in 0..a.keys {
        let (service, secret) = if i % 4 == 0 {
            (
                "openai",
                format!(
                    "sk-proj-{i:08}abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz"
                ),
            )
        } else {
            ("finnhub", format!("bench{i:015}"))
        };
        let mut body = json!({"service": service, "environment": "production",
            "alias": format!("key-{i:04}"), "secret": secret, "force": true});
        if i % 10 == 0 {
            body["limits"] = json!([{"max": 50_000, "unit": "requests", "window_seconds": 86_400}]);
        }
        let answer = call(reqwest::Method::POST, "/api/v1/keys".into(), body)
            .await
            .unwrap();
        let status = answer.status();
        let created: Value = answer.json().await.unwrap();
        assert!(status.is_success(), "{created}");
        keys.push((
            created["id"].as_str().unwrap().to_owned(),
            service.to_owned(),
        ));
    }
    let mut tokens = Vec::new();
    for i in 0..50 {
        let answer = call(
            reqwest::Method::POST,
            "/api/v1/app-tokens".into(),
            json!({"name": format!("app-{i}"), "services": ["finnhub", "openai"],
                   "environments": ["production"]}),
        )
        .await
        .unwrap();
        let created: Value = answer.json().await.unwrap();
        tokens.push(created["id"].as_str().unwrap().to_owned());
    }
    println!("vault set up in {:.1} s", t.elapsed().as_secs_f64());
    app.add_user(
        &system,
        "vera",
        SecretString::from("correct horse battery staple"),
        Role::Viewer,
    )
    .await
    .unwrap();
    let cookie = sign_in(&client, &base).await;

    let now = Timestamp::now();
    // The busiest key: the one the key page is measured on.
    let key = keys[1].0.clone();
    std::fs::write(&measured_key, &key).unwrap();
    let mut empty = Vec::new();
    for (name, path) in probes(&key, now) {
        empty.push((
            name,
            measure(&client, &format!("{base}{path}"), &cookie, a.samples).await,
        ));
    }

    // Records, written in the proxy writer's way: batches through `record_usage`.
    let store = keyward_store::open(settings.database_url.expose_secret())
        .await
        .unwrap();
    let t = Instant::now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let span_ms = a.days * 86_400_000;
    let start = now.as_millisecond() - span_ms;
    const BATCH: u64 = 5_000;
    let mut written = 0;
    // In time order, as the proxy's writer sees calls: each batch covers the next slice of
    // the period. Each key is used by one of the tokens (a token uses every 50th key), and
    // each token calls from its two networks: the dimensions a real vault's rollups have.
    let batches = a.records.div_ceil(BATCH);
    let slice = span_ms / batches.max(1) as i64;
    while written < a.records {
        let n = BATCH.min(a.records - written);
        let slice_start = start + slice * (written / BATCH) as i64;
        let mut batch = Vec::with_capacity(n as usize);
        for _ in 0..n {
            // A skewed pick: a few keys carry most of the traffic, as in a real vault.
            let pick = (rng.below(a.keys as u64) * rng.below(a.keys as u64)) / a.keys as u64;
            let (key_id, service) = &keys[pick as usize];
            let token = pick as usize % tokens.len();
            let network = if rng.below(3) == 0 {
                "198.51.100"
            } else {
                "203.0.113"
            };
            let at =
                Timestamp::from_millisecond(slice_start + rng.below(slice.max(1) as u64) as i64)
                    .unwrap();
            let llm = service == "openai";
            let failed = rng.below(50) == 0;
            batch.push(UsageRecord {
                at,
                token_id: Some(tokens[token].parse().unwrap()),
                key_id: Some(key_id.parse().unwrap()),
                service_id: service.clone(),
                environment: Some("production".into()),
                method: if llm { "POST" } else { "GET" }.into(),
                endpoint: if llm {
                    "/v1/chat/completions"
                } else {
                    "/api/v1/quote"
                }
                .into(),
                status: if failed { 500 } else { 200 },
                outcome: if failed {
                    Outcome::UpstreamError
                } else {
                    Outcome::Success
                },
                error_code: None,
                latency_ms: 20 + rng.below(400) as u32,
                request_bytes: 200,
                response_bytes: 900,
                cache: if rng.below(10) == 0 {
                    CacheOutcome::Hit
                } else {
                    CacheOutcome::Miss
                },
                retries: 0,
                model: llm.then(|| "gpt-4o-mini".to_owned()),
                tokens: if llm {
                    TokenUsage {
                        input: 300 + rng.below(900),
                        output: 50 + rng.below(400),
                        ..TokenUsage::default()
                    }
                } else {
                    TokenUsage::default()
                },
                credits: 1,
                cost_nanos: if llm { 150_000 + rng.below(300_000) } else { 0 },
                answer: Some(if failed {
                    AnswerClass::Outage
                } else {
                    AnswerClass::Success
                }),
                unpriced: false,
                source: Some(format!("{network}.{}", token % 200).parse().unwrap()),
                saved_credits: 0,
            });
        }
        store.record_usage(&batch).await.unwrap();
        written += n;
        if written % 1_000_000 == 0 {
            println!("  {written} records in {:.0} s", t.elapsed().as_secs_f64());
        }
    }
    // Minute rollups are kept 8 days, records 90: what the hourly prune leaves.
    app.prune_usage().await.unwrap();
    // And the hourly housekeeping (ANALYZE on PostgreSQL, where autovacuum may be off, as
    // on the machine these figures come from): a server has run it within the hour after a
    // bulk load. Without it PostgreSQL plans against the empty tables' statistics.
    app.maintain_store().await.unwrap();
    // A long seed outlasts the viewer's idle session: sign in again.
    let cookie = sign_in(&client, &base).await;
    println!(
        "seeded {} records in {:.1} s ({:.0} records/s)",
        a.records,
        t.elapsed().as_secs_f64(),
        a.records as f64 / t.elapsed().as_secs_f64()
    );

    println!(
        "\n{:<36} {:>18} {:>22} {:>8}",
        "measured", "empty p50 / p95", "seeded p50 / p95", "ratio"
    );
    for ((name, path), (_, (e50, e95))) in probes(&key, now).into_iter().zip(empty) {
        let (s50, s95) = measure(&client, &format!("{base}{path}"), &cookie, a.samples).await;
        println!(
            "{name:<36} {e50:>8.1} / {e95:>6.1} ms {s50:>10.1} / {s95:>6.1} ms {:>7.1}×",
            s50 / e50.max(0.001)
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

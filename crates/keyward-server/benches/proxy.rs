//! The proxy under load, side by side in one run (issue 3's targets):
//!
//! - **direct**: the client calls the fake upstream itself, with the real key;
//! - **keyward**: the real `keyward` binary (release build, default settings: SQLite, access
//!   log on) with an app token — token check, limits, budgets and metering all on;
//! - **kw+redis** (when Redis answers at `KEYWARD_BENCH_REDIS_URL`, default the local one):
//!   the same vault with the token's rate and budget and the key's quotas and budget
//!   decided in Redis (one script per call), with the Redis scripts per request counted;
//! - **kw+hsm** (when SoftHSM2 is installed): the same vault with its master key on a
//!   SoftHSM2 token (the `pkcs11` source, default data-key cache), and **kw+hsm0** with the
//!   cache off (`pkcs11_dek_cache_seconds = 0`: one token decrypt per call), with the token
//!   operations per request counted from `/metrics`;
//! - **nginx** (when installed): 2 workers, upstream keepalive, setting `Authorization`.
//!
//! The upstream is a local fake that answers like OpenAI's chat completions (with usage).
//! Two measurements per target: requests/s at a fixed concurrency (`wrk`, when installed)
//! and latency percentiles at a fixed, open-loop rate (our own generator: a request is sent
//! every 1/rate s whatever the answers do). Keyward's peak resident memory and the CPU time
//! Keyward and nginx spend per request (all threads and processes, user + system, during
//! the throughput rounds) come from `/proc` — the steadier figure on shared cores. Results are printed as a table with ratios to direct and to nginx.
//!
//! `cargo bench -p keyward-server --bench proxy`; tune with `KEYWARD_BENCH_SECONDS`
//! (default 10 per measurement), `KEYWARD_BENCH_ROUNDS` (3 interleaved throughput rounds,
//! median reported), `KEYWARD_BENCH_CONNECTIONS` (64), `KEYWARD_BENCH_RATE` (2000),
//! `KEYWARD_BENCH_TARGETS` (e.g. `keyward,nginx`), `KEYWARD_BENCH_LOG` (Keyward's log filter),
//! `KEYWARD_BENCH_SERVE_ONLY` (set up, print the addresses, wait: for profiling). Needs `wrk` and `nginx` on the PATH for the full comparison (Debian: `wrk`,
//! `nginx-light`); without them the missing columns say so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    reason = "a benchmark program"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const REAL_KEY: &str =
    "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_-0123456789WXYZ";
const BODY: &str =
    r#"{"model":"gpt-5.4-mini","messages":[{"role":"user","content":"Is AAPL a buy?"}]}"#;
const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1764000000,"model":"gpt-5.4-mini-2026-03-17","choices":[{"index":0,"message":{"role":"assistant","content":"Bullish"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fake provider: checks the key like OpenAI would, answers a fixed completion.
async fn upstream(headers: HeaderMap, body: Bytes) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(REAL_KEY);
    if !authorized {
        return (StatusCode::UNAUTHORIZED, "bad key").into_response();
    }
    if body.is_empty() {
        return (StatusCode::BAD_REQUEST, "no body").into_response();
    }
    ([("content-type", "application/json")], ANSWER).into_response()
}

fn start_upstream() -> (tokio::runtime::Runtime, String) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    runtime.spawn(async move {
        let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(upstream));
        axum::serve(listener, app).await
    });
    (runtime, addr)
}

struct Keyward {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Keyward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keyward_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
    cmd.current_dir(dir);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("KEYWARD_")) {
        cmd.env_remove(k);
    }
    // Default settings, except a log filter for experiments (`KEYWARD_BENCH_LOG=warn`).
    if let Ok(filter) = std::env::var("KEYWARD_BENCH_LOG") {
        cmd.env("KEYWARD_LOG", filter);
    }
    cmd
}

#[path = "../tests/integration/softhsm.rs"]
mod softhsm;

/// A SoftHSM2 token of its own in `dir` and the settings of the `pkcs11` source for it, or
/// `None` when SoftHSM2 is not installed.
fn softhsm_settings(dir: &Path, cache_seconds: u64) -> Option<Vec<(String, String)>> {
    if !softhsm::installed() {
        return None;
    }
    let conf = softhsm::init_token(dir, "bench", "bench-so-pin", "bench-pin");
    Some(vec![
        ("SOFTHSM2_CONF".to_owned(), conf.display().to_string()),
        ("KEYWARD_MASTER_KEY_SOURCE".to_owned(), "pkcs11".to_owned()),
        (
            "KEYWARD_PKCS11_MODULE".to_owned(),
            softhsm::MODULE.to_owned(),
        ),
        ("KEYWARD_PKCS11_TOKEN_LABEL".to_owned(), "bench".to_owned()),
        ("KEYWARD_PKCS11_PIN".to_owned(), "bench-pin".to_owned()),
        (
            "KEYWARD_PKCS11_DEK_CACHE_SECONDS".to_owned(),
            cache_seconds.to_string(),
        ),
    ])
}

/// The token decrypts Keyward reports in `/metrics` (`None` without a token).
fn hsm_decrypts(addr: &str) -> Option<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let text = runtime.block_on(async {
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix(r#"keyward_hsm_operations_total{operation="decrypt"}"#))
        .and_then(|v| v.trim().parse().ok())
}

/// Starts the real binary on a fresh vault (limits shared through `redis`, if given;
/// `settings` for both the set-up and the server, e.g. the master-key source); returns it
/// and an app token for the upstream.
fn start_keyward(
    upstream: &str,
    redis: Option<&str>,
    settings: &[(String, String)],
) -> (Keyward, String) {
    let dir = tempfile::tempdir().unwrap();
    let with_settings = |mut cmd: Command| {
        cmd.envs(settings.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    };
    let out = with_settings(keyward_command(dir.path()))
        .args(["token", "create", "--name", "bench", "--role", "owner"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let log = std::fs::File::create(dir.path().join("keyward.log")).unwrap();
    let mut serve = with_settings(keyward_command(dir.path()));
    if let Some(url) = redis {
        let prefix = format!("kwbench:{}:", std::process::id());
        serve
            .env("KEYWARD_REDIS_URL", url)
            .env("KEYWARD_REDIS_PREFIX", prefix);
    }
    let mut child = serve
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("keyward exited").unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let keyward = Keyward {
        child,
        addr,
        _dir: dir,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    let api = |method: reqwest::Method, path: &str, body: Value| -> Value {
        let url = format!("http://{}/api/v1{path}", keyward.addr);
        runtime.block_on(async {
            let response = client
                .request(method, url)
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            assert!(status.is_success(), "{path}: {status} {body}");
            body
        })
    };
    api(
        reqwest::Method::PATCH,
        "/services/openai",
        json!({"base_url": format!("http://{upstream}")}),
    );
    // Limits and budgets generous enough never to refuse: they are checked on every call.
    api(
        reqwest::Method::POST,
        "/keys",
        json!({"service": "openai", "environment": "production", "alias": "bench", "secret": REAL_KEY, "force": true,
               "limits": [{"max": 100_000_000, "unit": "requests", "window_seconds": 86_400},
                          {"max": 100_000_000, "unit": "tokens", "window_seconds": 60}],
               "budget": {"limit_usd": 1_000_000.0, "period": "month"}}),
    );
    let token = api(
        reqwest::Method::POST,
        "/app-tokens",
        json!({"name": "bench", "services": ["openai"], "environments": ["production"],
               "rate_limit": {"requests": 1_000_000, "per_seconds": 1},
               "budget": {"limit_usd": 1_000_000.0, "period": "month"}}),
    );
    (keyward, token["token"].as_str().unwrap().to_owned())
}

struct Nginx {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nginx(upstream: &str) -> Option<Nginx> {
    if !on_path("nginx") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let prefix = dir.path().display();
    let config = format!(
        "worker_processes 2;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log {prefix}/access.log;\n  client_body_temp_path {prefix}/body;\n\
           proxy_temp_path {prefix}/proxy;\n\
           upstream provider {{ server {upstream}; keepalive 64; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
               proxy_pass http://provider;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
               proxy_set_header Authorization \"Bearer {REAL_KEY}\";\n    }}\n  }}\n}}\n"
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, config).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&addr).is_err() {
        if Instant::now() > deadline {
            eprintln!("nginx did not start; skipping it");
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Nginx {
        child,
        addr,
        _dir: dir,
    })
}

/// One target: where to send the request and with which credential.
struct Target {
    name: &'static str,
    url: String,
    bearer: String,
    /// The processes doing the proxying, whose CPU time is measured (none for direct).
    processes: Vec<u32>,
}

/// CPU time (user + system, every thread) the processes have used so far, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // Linux reports these in USER_HZ ticks, which are 1/100 s on every architecture.
    const TICKS_PER_SECOND: f64 = 100.0;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the command name, which is in parentheses and may hold spaces:
            // state is the first, utime the 12th, stime the 13th.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            (ticks(11) + ticks(12)) / TICKS_PER_SECOND
        })
        .sum()
}

/// A process and its children (nginx's master and workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(pid) {
            pids.push(child);
        }
    }
    pids
}

/// One throughput round: requests/s, and the proxy's CPU time per request.
struct Round {
    rps: f64,
    cpu_per_request: Option<Duration>,
}

/// Requests/s at a fixed concurrency, measured by `wrk`, and what the proxy spent on each.
fn throughput(target: &Target, seconds: u64, connections: u64, scratch: &Path) -> Option<Round> {
    if !on_path("wrk") {
        return None;
    }
    let script = scratch.join(format!("{}.lua", target.name));
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Authorization\"] = \"Bearer {}\"\n\
             done = function(summary, latency, requests)\n  io.write(string.format(\"non2xx %d\\n\", summary.errors.status))\nend\n",
            target.bearer
        ),
    )
    .unwrap();
    let cpu_before = cpu_seconds(&target.processes);
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .arg("-s")
        .arg(&script)
        .arg(&target.url)
        .output()
        .unwrap();
    let cpu = cpu_seconds(&target.processes) - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    let non2xx: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("non2xx "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(
        non2xx, 0,
        "{}: answers that were not 2xx:\n{text}",
        target.name
    );
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|n| n.trim().parse().ok())?;
    // "  123456 requests in 10.00s, 45.67MB read"
    let requests: f64 = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())?;
    let cpu_per_request = (!target.processes.is_empty() && requests > 0.0)
        .then(|| Duration::from_secs_f64(cpu / requests));
    Some(Round {
        rps,
        cpu_per_request,
    })
}

struct Latency {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
    sent: usize,
}

/// Open loop: a request every `1/rate` s for `seconds`, whatever the answers do; the time of
/// each is from its scheduled start, so a stall counts against every request it delays.
fn latency(target: &Target, rate: u64, seconds: u64) -> Latency {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .tcp_nodelay(true)
            .build()
            .unwrap();
        let total = usize::try_from(rate * seconds).unwrap();
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let samples = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total)));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(total);
        for n in 0..total {
            let scheduled = start + interval * u32::try_from(n).unwrap();
            tokio::time::sleep_until(scheduled.into()).await;
            let (client, samples) = (client.clone(), samples.clone());
            let (url, bearer) = (target.url.clone(), target.bearer.clone());
            tasks.push(tokio::spawn(async move {
                let response = client
                    .post(url)
                    .bearer_auth(bearer)
                    .header("content-type", "application/json")
                    .body(BODY)
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                response.bytes().await.unwrap();
                samples.lock().unwrap().push(scheduled.elapsed());
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let mut samples = std::mem::take(&mut *samples.lock().unwrap());
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: *samples.last().unwrap(),
            sent: samples.len(),
        }
    })
}

/// Peak and current resident memory of a process, in MiB, from `/proc`.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Scripts Redis has served (`EVALSHA` + `EVAL`), from `redis-cli info commandstats`.
fn redis_scripts(port: u16) -> Option<u64> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "commandstats"])
        .output()
        .ok()?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)
                    .and_then(|r| r.split(',').next())
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .sum(),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing: only run
    // when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds = setting("KEYWARD_BENCH_SECONDS", 10);
    let connections = setting("KEYWARD_BENCH_CONNECTIONS", 64);
    let rate = setting("KEYWARD_BENCH_RATE", 2000);
    let scratch = tempfile::tempdir().unwrap();
    let (_upstream_runtime, upstream) = start_upstream();
    let (keyward, token) = start_keyward(&upstream, None, &[]);
    // The same vault setup with limits, quotas and budgets in Redis (skipped, loudly,
    // without one): `KEYWARD_BENCH_REDIS_URL`, default the local one.
    let redis_url = std::env::var("KEYWARD_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let redis_port = redis_url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .unwrap_or(6379);
    let shared = if std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_ok() {
        Some(start_keyward(&upstream, Some(&redis_url), &[]))
    } else {
        eprintln!("!!!!!!!! Redis not reachable at {redis_url}: no keyward+redis column");
        None
    };
    // The same vault with its master key on a SoftHSM2 token, with the default data-key
    // cache and without it (skipped, loudly, without SoftHSM2).
    let hsm_dir = tempfile::tempdir().unwrap();
    let hsm: Vec<(&'static str, Keyward, String)> = [("kw+hsm", 60), ("kw+hsm0", 0)]
        .into_iter()
        .filter_map(|(name, cache)| {
            let settings = softhsm_settings(&hsm_dir.path().join(name), cache)?;
            let (keyward, token) = start_keyward(&upstream, None, &settings);
            Some((name, keyward, token))
        })
        .collect();
    if hsm.is_empty() {
        eprintln!("!!!!!!!! SoftHSM2 not installed: no kw+hsm columns (apt install softhsm2)");
    }
    // `KEYWARD_BENCH_SERVE_ONLY=1`: set everything up, print where it is, and wait (an
    // hour) instead of measuring, for profiling the server under a load of one's own.
    if std::env::var("KEYWARD_BENCH_SERVE_ONLY").is_ok() {
        println!(
            "upstream {upstream} keyward {} token {token} pid {}",
            keyward.addr,
            keyward.child.id()
        );
        std::thread::sleep(Duration::from_secs(3600));
        return;
    }
    let nginx = start_nginx(&upstream);

    let mut targets = vec![
        Target {
            name: "direct",
            url: format!("http://{upstream}/v1/chat/completions"),
            bearer: REAL_KEY.to_owned(),
            processes: Vec::new(),
        },
        Target {
            name: "keyward",
            url: format!("http://{}/proxy/openai/v1/chat/completions", keyward.addr),
            bearer: token,
            processes: vec![keyward.child.id()],
        },
    ];
    if let Some((shared, token)) = &shared {
        targets.push(Target {
            name: "kw+redis",
            url: format!("http://{}/proxy/openai/v1/chat/completions", shared.addr),
            bearer: token.clone(),
            processes: vec![shared.child.id()],
        });
    }
    for (name, keyward, token) in &hsm {
        targets.push(Target {
            name,
            url: format!("http://{}/proxy/openai/v1/chat/completions", keyward.addr),
            bearer: token.clone(),
            processes: vec![keyward.child.id()],
        });
    }
    match &nginx {
        Some(nginx) => targets.push(Target {
            name: "nginx",
            url: format!("http://{}/v1/chat/completions", nginx.addr),
            bearer: "ignored-by-nginx".to_owned(),
            processes: with_children(nginx.child.id()),
        }),
        None => eprintln!("!!!!!!!! nginx not found: no nginx column (apt install nginx-light)"),
    }
    if !on_path("wrk") {
        eprintln!("!!!!!!!! wrk not found: no throughput figures (apt install wrk)");
    }

    println!(
        "proxy benchmark: {seconds}s per measurement, {connections} connections, {rate} req/s open loop, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // `KEYWARD_BENCH_TARGETS=keyward,nginx` measures only those.
    if let Ok(only) = std::env::var("KEYWARD_BENCH_TARGETS") {
        targets.retain(|t| only.split(',').any(|o| o == t.name));
    }
    // Throughput rounds interleave the targets and report each one's median, so a noisy
    // moment on the shared cores does not decide a ratio.
    for target in &targets {
        // Warm connections, pools and caches.
        let _ = throughput(target, 2, connections, scratch.path());
    }
    let mut rounds: Vec<Vec<Round>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..setting("KEYWARD_BENCH_ROUNDS", 3) {
        for (target, seen) in targets.iter().zip(&mut rounds) {
            seen.extend(throughput(target, seconds, connections, scratch.path()));
        }
    }
    let mut results = Vec::new();
    for (target, mut seen) in targets.iter().zip(rounds) {
        seen.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let median = seen.get(seen.len() / 2);
        let rps = median.map(|r| r.rps);
        let cpu = median.and_then(|r| r.cpu_per_request);
        let scripts_before = redis_scripts(redis_port);
        let hsm_addr = hsm
            .iter()
            .find(|(name, _, _)| *name == target.name)
            .map(|(_, keyward, _)| keyward.addr.clone());
        let decrypts_before = hsm_addr.as_deref().and_then(hsm_decrypts);
        let lat = latency(target, rate, seconds);
        if let (Some(addr), Some(before)) = (&hsm_addr, decrypts_before)
            && let Some(after) = hsm_decrypts(addr)
        {
            println!(
                "{}: {} token decrypts for {} requests at {rate} req/s = {:.4} per request",
                target.name,
                after - before,
                lat.sent,
                (after - before) as f64 / lat.sent.max(1) as f64
            );
        }
        if target.name == "kw+redis"
            && let (Some(before), Some(after)) = (scripts_before, redis_scripts(redis_port))
        {
            let per = (after - before) as f64 / lat.sent.max(1) as f64;
            println!(
                "kw+redis: {} Redis scripts for {} requests at {rate} req/s = {per:.3} per request (one decision each, settlements batched, heartbeats)",
                after - before,
                lat.sent
            );
        }
        results.push((target.name, rps, cpu, lat));
    }
    let (peak, now) = memory_mib(keyward.child.id());
    let rps_of = |name: &str| {
        results
            .iter()
            .find(|(n, _, _, _)| *n == name)
            .and_then(|(_, rps, _, _)| *rps)
    };
    let p99_of = |name: &str| {
        results
            .iter()
            .find(|(n, _, _, _)| *n == name)
            .map(|(_, _, _, l)| l.p99)
    };
    println!(
        "\n{:<8} {:>10} {:>8} {:>8} {:>9} | {:>8} {:>8} {:>8} {:>8} {:>7}",
        "target",
        "req/s",
        "×direct",
        "×nginx",
        "CPU µs/r",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "sent"
    );
    for (name, rps, cpu, lat) in &results {
        let ratio = |base: Option<f64>| match (rps, base) {
            (Some(r), Some(b)) => format!("{:.2}", r / b),
            _ => "—".to_owned(),
        };
        println!(
            "{:<8} {:>10} {:>8} {:>8} {:>9} | {:>8} {:>8} {:>8} {:>8} {:>7}",
            name,
            rps.map_or("—".to_owned(), |r| format!("{r:.0}")),
            ratio(rps_of("direct")),
            ratio(rps_of("nginx")),
            cpu.map_or("—".to_owned(), |c| format!(
                "{:.1}",
                c.as_secs_f64() * 1e6
            )),
            ms(lat.p50),
            ms(lat.p90),
            ms(lat.p99),
            ms(lat.max),
            lat.sent
        );
    }
    if let (Some(k), Some(d)) = (p99_of("keyward"), p99_of("direct")) {
        println!(
            "\nkeyward p99 − direct p99 at {rate} req/s: {:+.3} ms (target ≤ +0.5 ms)",
            (k.as_secs_f64() - d.as_secs_f64()) * 1000.0
        );
    }
    if let (Some(k), Some(n)) = (rps_of("keyward"), rps_of("nginx")) {
        println!("keyward throughput ÷ nginx: {:.2} (target ≥ 1.00)", k / n);
    }
    println!("keyward resident memory: peak {peak:.1} MiB, now {now:.1} MiB (target < 100 MiB)");
    if let Some((shared, _)) = &shared {
        let (peak, now) = memory_mib(shared.child.id());
        println!("keyward+redis resident memory: peak {peak:.1} MiB, now {now:.1} MiB");
    }
    for (name, keyward, _) in &hsm {
        let (peak, now) = memory_mib(keyward.child.id());
        println!("{name} resident memory: peak {peak:.1} MiB, now {now:.1} MiB");
    }
    drop(nginx);
    drop(keyward);
    drop(shared);
    drop(hsm);
}

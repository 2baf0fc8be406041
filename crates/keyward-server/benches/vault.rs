//! Vault operations with 100,000 keys in the store, on SQLite and PostgreSQL:
//! creating a key (validate, seal, durable insert), listing one filtered page of 50, and
//! fetching one key — each beside a baseline measured in the same run (`SELECT 1`, the
//! cheapest possible round trip through the same pool), so results read as ratios.
//!
//! Run: `cargo bench -p keyward-server --bench vault` (PostgreSQL part needs a server; see
//! README). Seeding uses the store's batch import; the measured paths are the real ones.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "benchmark"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyward_app::vault::Vault;
use keyward_app::{Actor, App, AppOptions, NewKey};
use keyward_core::id::KeyId;
use keyward_core::key::{
    Criticality, Key, KeyDraftInput, KeyFilter, KeyStatus, KeyVersion, PageRequest, RecoveryWindow,
    SealContext, VersionState,
};
use keyward_core::{SystemClock, Timestamp};
use keyward_crypto::{Keyring, MasterKey, OsRandomness};
use keyward_store::testing::TestDatabase;
use secrecy::SecretString;

const KEYS: usize = 100_000;
const SERVICES: [&str; 6] = [
    "openai",
    "anthropic",
    "alpha-vantage",
    "finnhub",
    "polygon",
    "twelve-data",
];
const ENVIRONMENTS: [&str; 3] = ["development", "staging", "production"];

fn seed(rt: &tokio::runtime::Runtime, db: &TestDatabase) -> (Arc<App>, KeyId) {
    let store = rt.block_on(db.store());
    let keyring = Keyring::new(vec![MasterKey::generate(&OsRandomness)]).unwrap();
    let secret = SecretString::from("abcdefghij0123456789".to_owned());
    let start = Timestamp::now();
    let mut probe = None;
    for chunk in 0..KEYS / 5_000 {
        let batch: Vec<(Key, KeyVersion)> = (0..5_000)
            .map(|i| {
                let n = chunk * 5_000 + i;
                let id = KeyId::generate(start, &OsRandomness);
                let sealed = keyring
                    .seal(&OsRandomness, &secret, &SealContext::key_secret(&id, 1))
                    .unwrap();
                let key = Key {
                    id: id.clone(),
                    service_id: SERVICES[n % SERVICES.len()].into(),
                    environment: ENVIRONMENTS[n % ENVIRONMENTS.len()].into(),
                    alias: format!("key {n}"),
                    description: Some(format!("seeded key number {n}")),
                    owner: Some(format!("team-{}", n % 17)),
                    tags: vec![
                        format!("team-{}", n % 17),
                        if n % 10 == 0 {
                            "earnings".into()
                        } else {
                            "bulk".into()
                        },
                    ],
                    criticality: Criticality::Medium,
                    enabled: n % 50 != 0,
                    expires_at: None,
                    current_version: 1,
                    current_hint: "…6789".into(),
                    created_by: "bench".into(),
                    created_at: start,
                    updated_at: start,
                    last_used_at: None,
                    deleted_at: None,
                    deleted_by: None,
                    revoked: None,
                    rotated_at: start,
                    rotation_rule: None,
                    limits: vec![],
                    budget: None,
                };
                let version = KeyVersion {
                    key_id: id,
                    version: 1,
                    state: VersionState::Current,
                    hint: "…6789".into(),
                    sealed,
                    created_by: "bench".into(),
                    created_at: start,
                };
                (key, version)
            })
            .collect();
        probe.get_or_insert_with(|| batch[2_500].0.id.clone());
        rt.block_on(store.insert_keys(&batch)).unwrap();
    }
    rt.block_on(store.maintain()).unwrap();
    let audit_keys = rt
        .block_on(keyward_app::audit::load_keys(
            &*store,
            &keyring,
            &OsRandomness,
        ))
        .unwrap();
    let vault = Vault {
        store,
        keyring,
        audit_keys,
        created_key_file: None,
        key_file: None,
        hsm: None,
    };
    let options = AppOptions {
        recovery_window: RecoveryWindow::default(),
        usage_retention_days: keyward_server::config::USAGE_RETENTION_DAYS_DEFAULT,
        pricing: keyward_core::usage::PricingTable::default(),
        ..AppOptions::default()
    };
    let app = App::new(
        vault,
        Arc::new(SystemClock),
        Arc::new(OsRandomness),
        options,
    )
    .unwrap();
    (Arc::new(app), probe.unwrap())
}

fn bench_backend(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, db: &TestDatabase) {
    let (app, probe) = seed(rt, db);
    let owner = Actor::system("bench");
    let mut group = c.benchmark_group(format!("{name} with 100k keys"));
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));

    group.bench_function("baseline: SELECT 1 round trip", |b| {
        b.to_async(rt).iter(|| app.ready())
    });
    group.bench_function("get one key", |b| {
        b.to_async(rt).iter(|| app.key(&owner, &probe))
    });
    group.bench_function("filtered page of 50 (service+environment+active)", |b| {
        b.to_async(rt).iter(|| {
            let filter = KeyFilter {
                service_ids: Some(vec!["openai".into()]),
                environment: Some("production".into()),
                status: Some(KeyStatus::Active),
                ..Default::default()
            };
            app.list_keys(
                &owner,
                filter,
                None,
                PageRequest::new(None, Some(50)).unwrap(),
            )
        })
    });
    group.bench_function("filtered page of 50 (category+tag)", |b| {
        b.to_async(rt).iter(|| {
            let filter = KeyFilter {
                tag: Some("earnings".into()),
                ..Default::default()
            };
            app.list_keys(
                &owner,
                filter,
                Some("financial-data"),
                PageRequest::new(None, Some(50)).unwrap(),
            )
        })
    });
    let actor = Actor::system("bench");
    let counter = AtomicU64::new(0);
    group.bench_function("create key (validate, seal, durable commit)", |b| {
        b.to_async(rt).iter(|| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let new = NewKey {
                draft: KeyDraftInput {
                    service_id: "finnhub".into(),
                    environment: "production".into(),
                    alias: format!("created {n}"),
                    ..Default::default()
                },
                secret: SecretString::from("abcdefghij0123456789".to_owned()),
                force: false,
            };
            let (app, actor) = (app.clone(), actor.clone());
            async move { app.create_key(&actor, new).await.unwrap() }
        })
    });
    group.finish();
    rt.block_on(app.close());
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    bench_backend(c, &rt, "sqlite", &TestDatabase::sqlite());
    match rt.block_on(TestDatabase::postgres()) {
        Some(db) => bench_backend(c, &rt, "postgres", &db),
        None => eprintln!("PostgreSQL benchmarks skipped (see the notice above)"),
    }
}

criterion_group!(vault, benches);
criterion_main!(vault);

//! One conformance suite, run against every backend: each case below becomes a test in
//! `sqlite::` and in `postgres::` (a fresh database per test).

use std::collections::BTreeSet;
use std::sync::Arc;

use keyward_core::access::{CustomRole, Grant, Permission, PermissionSet, Role, RoleRef, Scope};
use keyward_core::app_token::{Budget, BudgetPeriod};
use keyward_core::audit::{
    ActorKind, AuditDraft, AuditFilter, AuditOutcome, BreakKind, ChainBreak, ChainVerifier,
    VerifyReport,
};
use keyward_core::guided_rotation::{Advance, Probe, ProbeRecord, Rotation, RotationTraffic};
use keyward_core::id::{AppTokenId, ApprovalId, GrantId, KeyId, RotationId, TokenId, UserId};
use keyward_core::key::{
    Criticality, Key, KeyArea, KeyFilter, KeyStatus, KeyVersion, PageRequest, SealedSecret,
    VersionState,
};
use keyward_core::master_key::MasterKeyRecord;
use keyward_core::mfa::MfaEnrolment;
use keyward_core::ports::Store;
use keyward_core::service::{Category, Environment};
use keyward_core::service::{Limit, LimitUnit};
use keyward_core::session::Session;
use keyward_core::token::ManagementToken;
use keyward_core::usage::{
    CacheOutcome, Granularity, HourlyUse, KeyFlag, KeyFlagKind, Outcome, PoolSetting, PoolStrategy,
    Subject, TokenUsage, UsageGrouping, UsageQuery, UsageRecord, UsageTotals,
};
use keyward_core::user::User;
use keyward_core::{ErrorKind, Randomness, Timestamp};
use keyward_store::testing::TestDatabase;

#[derive(Debug)]
struct Counter(std::sync::atomic::AtomicU64);
impl Randomness for Counter {
    fn fill(&self, dest: &mut [u8]) {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (i, b) in dest.iter_mut().enumerate() {
            *b = n.to_le_bytes()[i % 8] ^ (i as u8);
        }
    }
}

fn rng() -> Counter {
    Counter(std::sync::atomic::AtomicU64::new(1))
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).expect("timestamp")
}

fn sealed(kek: &str, marker: u8) -> SealedSecret {
    SealedSecret {
        algorithm: "test-alg".into(),
        kek_id: kek.into(),
        wrapped_dek: vec![0, marker, 255, 0],
        nonce: vec![marker; 12],
        ciphertext: vec![0, 1, 2, marker, 0],
    }
}

fn new_key(id: KeyId, service: &str, env: &str, alias: &str, at: i64) -> (Key, KeyVersion) {
    let key = Key {
        id: id.clone(),
        service_id: service.into(),
        environment: env.into(),
        alias: alias.into(),
        description: Some(format!("{alias} description")),
        owner: Some("team-data".into()),
        tags: vec!["prod".into(), "team:data".into()],
        criticality: Criticality::High,
        enabled: true,
        expires_at: None,
        current_version: 1,
        current_hint: "sk-…0001".into(),
        created_by: "tester".into(),
        created_at: ts(at),
        updated_at: ts(at),
        last_used_at: None,
        deleted_at: None,
        deleted_by: None,
        revoked: None,
        rotated_at: ts(at),
        rotation_rule: None,
        limits: vec![],
        budget: None,
    };
    let version = KeyVersion {
        key_id: id,
        version: 1,
        state: VersionState::Current,
        hint: "sk-…0001".into(),
        sealed: sealed("kek_a", 1),
        created_by: "tester".into(),
        created_at: ts(at),
    };
    (key, version)
}

async fn add(
    store: &Arc<dyn Store>,
    r: &Counter,
    service: &str,
    env: &str,
    alias: &str,
    at: i64,
) -> Key {
    let (key, version) = new_key(KeyId::generate(ts(at), r), service, env, alias, at);
    store.insert_key(&key, &version).await.expect("insert");
    key
}

async fn key_flags_and_pool_strategies(store: Arc<dyn Store>) {
    let r = rng();
    let a = add(&store, &r, "alpha-vantage", "production", "a", 1_000).await;
    let b = add(&store, &r, "alpha-vantage", "production", "b", 2_000).await;
    let before = store.change_marker().await.expect("marker");
    let flag = |key: &Key, kind, until| KeyFlag {
        key_id: key.id.clone(),
        kind,
        reason: "HTTP 200 with a Note".into(),
        since: ts(5_000),
        until,
    };
    store
        .set_key_flags(&[
            flag(&a, KeyFlagKind::QuotaLimited, Some(ts(9_000))),
            flag(&b, KeyFlagKind::Rejected, None),
        ])
        .await
        .expect("flag");
    let marked = store.change_marker().await.expect("marker");
    assert_ne!(before, marked, "flags reach other instances' snapshots");
    store
        .set_key_flags(&[flag(&a, KeyFlagKind::QuotaLimited, Some(ts(12_000)))])
        .await
        .expect("re-flag");
    let flags = store.key_flags().await.expect("flags");
    assert_eq!(flags.len(), 2);
    assert_eq!(
        flags[0].until,
        Some(ts(12_000)),
        "a flag is replaced, not duplicated"
    );
    assert!(store.clear_key_flag(&b.id).await.expect("clear"));
    assert!(!store.clear_key_flag(&b.id).await.expect("clear twice"));
    store.purge_key(&a.id).await.expect("purge");
    assert!(
        store.key_flags().await.expect("flags").is_empty(),
        "purge removes flags"
    );

    let setting = PoolSetting {
        service_id: "openai".into(),
        environment: "production".into(),
        strategy: PoolStrategy::LeastUsed,
    };
    let before = store.change_marker().await.expect("marker");
    store.set_pool_strategy(&setting, ts(1)).await.expect("set");
    store
        .set_pool_strategy(
            &PoolSetting {
                strategy: PoolStrategy::QuotaAware,
                ..setting.clone()
            },
            ts(2),
        )
        .await
        .expect("replace");
    assert_eq!(
        store.pool_settings().await.expect("pools"),
        vec![PoolSetting {
            strategy: PoolStrategy::QuotaAware,
            ..setting
        }]
    );
    assert_ne!(before, store.change_marker().await.expect("marker"));
}

fn usage(
    at: i64,
    key: Option<&KeyId>,
    token: Option<&AppTokenId>,
    outcome: Outcome,
) -> UsageRecord {
    UsageRecord {
        at: ts(at),
        token_id: token.cloned(),
        key_id: key.cloned(),
        service_id: "openai".into(),
        environment: Some("production".into()),
        method: "POST".into(),
        endpoint: "/v1/chat/completions".into(),
        status: 200,
        outcome,
        error_code: None,
        latency_ms: 12,
        request_bytes: 100,
        response_bytes: 900,
        cache: CacheOutcome::None,
        retries: 0,
        model: Some("gpt-5.4-mini".into()),
        tokens: TokenUsage {
            input: 10,
            cached_input: 5,
            cache_write: 1,
            output: 20,
        },
        credits: 1,
        cost_nanos: 1_500,
    }
}

async fn usage_is_recorded_summed_and_queried(store: Arc<dyn Store>) {
    let r = rng();
    let key = KeyId::generate(ts(1), &r);
    let token = AppTokenId::generate(ts(1), &r);
    const HOUR: i64 = 3_600_000;
    let base = 1_764_028_800_000; // 2025-11-25T00:00:00Z
    let records = [
        usage(base + 1_000, Some(&key), Some(&token), Outcome::Success),
        usage(
            base + 61_000,
            Some(&key),
            Some(&token),
            Outcome::UpstreamError,
        ),
        usage(base + HOUR + 5, Some(&key), Some(&token), Outcome::Success),
        usage(base + HOUR + 6, None, None, Outcome::Refused),
    ];
    store.record_usage(&records[..2]).await.expect("batch 1");
    store.record_usage(&records[2..]).await.expect("batch 2");
    store.record_usage(&[]).await.expect("empty batch");

    let query = |g, key: Option<&KeyId>| {
        UsageQuery::new(ts(base), ts(base + 2 * HOUR), g, key.cloned(), None, None).expect("query")
    };
    let minutes = store
        .usage(&query(Granularity::Minute, None))
        .await
        .expect("minutes");
    assert_eq!(
        minutes
            .iter()
            .map(|b| (b.start, b.totals.requests, b.totals.errors))
            .collect::<Vec<_>>(),
        vec![
            (ts(base), 1, 0),
            (ts(base + 60_000), 1, 1),
            (ts(base + HOUR), 2, 1)
        ]
    );
    let hours = store
        .usage(&query(Granularity::Hour, Some(&key)))
        .await
        .expect("hours");
    assert_eq!(hours.len(), 2);
    assert_eq!(
        hours[0].totals,
        UsageTotals {
            requests: 2,
            errors: 1,
            cache_hits: 0,
            input_tokens: 22,
            cached_tokens: 10,
            output_tokens: 40,
            credits: 2,
            cost_nanos: 3_000,
        },
        "cache-write tokens count as input in the hourly sums"
    );
    let days = store
        .usage(&query(Granularity::Day, None))
        .await
        .expect("days");
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].totals.requests, 4);
    let by_token = store
        .usage(
            &UsageQuery::new(
                ts(base),
                ts(base + 2 * HOUR),
                Granularity::Day,
                None,
                Some(token.clone()),
                None,
            )
            .expect("q"),
        )
        .await
        .expect("by token");
    assert_eq!(by_token[0].totals.requests, 3);

    let mut restored = store
        .hourly_use_since(ts(base + HOUR))
        .await
        .expect("hourly");
    restored.sort_by_key(|h| matches!(h.subject, Subject::Token(_)));
    assert_eq!(
        restored,
        vec![
            HourlyUse {
                subject: Subject::Key(key.clone()),
                hour: ts(base + HOUR),
                requests: 1,
                credits: 1,
                tokens: 36,
                cost_nanos: 1_500
            },
            HourlyUse {
                subject: Subject::Token(token.clone()),
                hour: ts(base + HOUR),
                requests: 1,
                credits: 1,
                tokens: 36,
                cost_nanos: 1_500
            },
        ]
    );

    assert_eq!(store.prune_usage(ts(base + HOUR)).await.expect("prune"), 2);
    let minutes = store
        .usage(&query(Granularity::Minute, None))
        .await
        .expect("minutes");
    assert_eq!(minutes.len(), 1, "pruning removes old records");
    let hours = store
        .usage(&query(Granularity::Hour, None))
        .await
        .expect("hours");
    assert_eq!(hours.len(), 2, "hourly sums outlive the records");

    // Big batches go in fixed-size chunks plus a remainder: every row arrives, in every
    // batch size (the statements for odd sizes are not cached, so memory stays flat).
    let later = base + 10 * HOUR;
    for size in [250, 251, 100, 37] {
        let batch: Vec<_> = (0..size)
            .map(|n| usage(later + n, Some(&key), None, Outcome::Success))
            .collect();
        store.record_usage(&batch).await.expect("big batch");
    }
    let big = store
        .usage(
            &UsageQuery::new(
                ts(later),
                ts(later + HOUR),
                Granularity::Hour,
                None,
                None,
                None,
            )
            .expect("q"),
        )
        .await
        .expect("big batches");
    assert_eq!(big[0].totals.requests, 250 + 251 + 100 + 37);

    // Split by key: the refusal without a key is left out; by service it counts. (Minutes
    // come from the records, pruned above before the second hour.)
    let second = KeyId::generate(ts(2), &r);
    store
        .record_usage(&[usage(base + 2_000, Some(&second), None, Outcome::Success)])
        .await
        .expect("batch 3");
    for (granularity, first_key) in [(Granularity::Hour, 3), (Granularity::Minute, 1)] {
        let by_key = store
            .usage_grouped(&query(granularity, None), UsageGrouping::Key)
            .await
            .expect("by key");
        let mut per_key: std::collections::BTreeMap<String, u64> = Default::default();
        for (id, bucket) in &by_key {
            *per_key.entry(id.clone()).or_default() += bucket.totals.requests;
        }
        assert_eq!(
            per_key,
            [(key.to_string(), first_key), (second.to_string(), 1)]
                .into_iter()
                .collect(),
            "{granularity:?}"
        );
    }
    let by_service = store
        .usage_grouped(&query(Granularity::Hour, None), UsageGrouping::Service)
        .await
        .expect("by service");
    assert_eq!(
        by_service
            .iter()
            .map(|(s, b)| (s.as_str(), b.start, b.totals.requests))
            .collect::<Vec<_>>(),
        vec![("openai", ts(base), 3), ("openai", ts(base + HOUR), 2)]
    );
}

async fn migrations_are_idempotent(store: Arc<dyn Store>) {
    assert!(store.initialized().await.expect("initialized"));
    store.migrate().await.expect("second migrate is a no-op");
    store.ping().await.expect("ping");
    store.maintain().await.expect("maintain");
}

async fn keys_round_trip_with_their_first_version(store: Arc<dyn Store>) {
    let r = rng();
    let (mut key, version) = new_key(
        KeyId::generate(ts(1_000), &r),
        "openai",
        "production",
        "Main",
        1_000,
    );
    key.expires_at = Some(ts(9_999_999));
    key.limits = vec![Limit {
        max: 25,
        unit: LimitUnit::Requests,
        window_seconds: 86_400,
    }];
    key.budget = Some(Budget {
        limit_micros: 5_000_000,
        period: BudgetPeriod::Month,
    });
    store.insert_key(&key, &version).await.expect("insert");
    assert_eq!(store.key(&key.id).await.expect("get"), Some(key.clone()));
    assert_eq!(
        store.versions(&key.id).await.expect("versions"),
        vec![version]
    );
    let missing = KeyId::generate(ts(1), &r);
    assert_eq!(store.key(&missing).await.expect("get"), None);
}

async fn aliases_are_unique_per_service_and_environment_among_live_keys(store: Arc<dyn Store>) {
    let r = rng();
    let first = add(&store, &r, "openai", "production", "Main", 1).await;
    let (dup, v) = new_key(
        KeyId::generate(ts(2), &r),
        "openai",
        "production",
        "main",
        2,
    );
    let err = store
        .insert_key(&dup, &v)
        .await
        .expect_err("duplicate alias");
    assert_eq!((err.kind, err.code), (ErrorKind::Conflict, "alias_taken"));
    assert_eq!(
        store.key(&dup.id).await.expect("get"),
        None,
        "a refused insert leaves nothing"
    );
    add(&store, &r, "openai", "staging", "main", 3).await;
    add(&store, &r, "anthropic", "production", "main", 4).await;

    let mut deleted = first.clone();
    deleted.deleted_at = Some(ts(5));
    deleted.deleted_by = Some("tester".into());
    deleted.updated_at = ts(5);
    store
        .update_key(&deleted, first.updated_at)
        .await
        .expect("soft delete");
    add(&store, &r, "openai", "production", "main", 6).await;

    // Restoring the deleted key now collides with the new live one.
    let mut restored = deleted.clone();
    restored.deleted_at = None;
    restored.updated_at = ts(7);
    let err = store
        .update_key(&restored, deleted.updated_at)
        .await
        .expect_err("collides");
    assert_eq!(err.code, "alias_taken");
}

async fn batch_inserts_are_all_or_nothing(store: Arc<dyn Store>) {
    let r = rng();
    let batch: Vec<_> = (0..50)
        .map(|i| {
            new_key(
                KeyId::generate(ts(i), &r),
                "openai",
                "production",
                &format!("k{i}"),
                i,
            )
        })
        .collect();
    store.insert_keys(&batch).await.expect("batch insert");
    let count = |store: Arc<dyn Store>| async move {
        let page = PageRequest::new(None, Some(200)).expect("page");
        store
            .list_keys(&KeyFilter::default(), &page, ts(0))
            .await
            .expect("list")
            .items
            .len()
    };
    assert_eq!(count(store.clone()).await, 50);
    let mut bad: Vec<_> = (50..60)
        .map(|i| {
            new_key(
                KeyId::generate(ts(i), &r),
                "openai",
                "production",
                &format!("k{i}"),
                i,
            )
        })
        .collect();
    bad.push(new_key(
        KeyId::generate(ts(99), &r),
        "openai",
        "production",
        "K3",
        99,
    ));
    let err = store
        .insert_keys(&bad)
        .await
        .expect_err("duplicate alias in batch");
    assert_eq!(err.code, "alias_taken");
    assert_eq!(
        count(store.clone()).await,
        50,
        "a failed batch stores nothing"
    );
}

async fn listings_filter_and_paginate(store: Arc<dyn Store>) {
    let r = rng();
    let now = 1_000_000;
    let mut all = Vec::new();
    for i in 0..23 {
        let service = ["openai", "alpha-vantage", "finnhub"][i % 3];
        let env = ["production", "staging"][i % 2];
        all.push(
            add(
                &store,
                &r,
                service,
                env,
                &format!("key {i}"),
                1_000 + i as i64,
            )
            .await,
        );
    }
    // One disabled, one expired, one deleted, one with a special tag and text.
    let mut disabled = all[0].clone();
    disabled.enabled = false;
    store
        .update_key(&disabled, all[0].updated_at)
        .await
        .expect("disable");
    let mut expired = all[1].clone();
    expired.expires_at = Some(ts(now - 1));
    store
        .update_key(&expired, all[1].updated_at)
        .await
        .expect("expire");
    let mut deleted = all[2].clone();
    deleted.deleted_at = Some(ts(now - 5));
    store
        .update_key(&deleted, all[2].updated_at)
        .await
        .expect("delete");
    let mut special = all[3].clone();
    special.tags = vec!["earnings".into()];
    special.description = Some("100% for the_summariser".into());
    store
        .update_key(&special, all[3].updated_at)
        .await
        .expect("tag");

    let list = |filter: KeyFilter, after: Option<KeyId>, limit: u32| {
        let store = store.clone();
        async move {
            store
                .list_keys(
                    &filter,
                    &PageRequest::new(after, Some(limit)).expect("page"),
                    ts(now),
                )
                .await
                .expect("list")
        }
    };

    // Pagination visits every live key exactly once, newest first.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = list(KeyFilter::default(), after, 5).await;
        seen.extend(page.items.iter().map(|k| k.id.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<KeyId> = all
        .iter()
        .filter(|k| k.id != deleted.id)
        .map(|k| k.id.clone())
        .collect();
    expected.sort();
    expected.reverse();
    assert_eq!(seen, expected);

    let ids = |keys: &[Key]| keys.iter().map(|k| k.id.clone()).collect::<BTreeSet<_>>();
    let statuses = [
        (KeyStatus::Disabled, vec![disabled.id.clone()]),
        (KeyStatus::Expired, vec![expired.id.clone()]),
        (KeyStatus::Deleted, vec![deleted.id.clone()]),
    ];
    for (status, want) in statuses {
        let page = list(
            KeyFilter {
                status: Some(status),
                ..Default::default()
            },
            None,
            50,
        )
        .await;
        assert_eq!(ids(&page.items), want.into_iter().collect(), "{status}");
    }
    let active = list(
        KeyFilter {
            status: Some(KeyStatus::Active),
            ..Default::default()
        },
        None,
        50,
    )
    .await;
    assert_eq!(active.items.len(), 20);

    let by_service = list(
        KeyFilter {
            service_ids: Some(vec!["openai".into(), "finnhub".into()]),
            environment: Some("production".into()),
            ..Default::default()
        },
        None,
        50,
    )
    .await;
    assert!(
        by_service
            .items
            .iter()
            .all(|k| k.service_id != "alpha-vantage" && k.environment == "production")
    );
    assert!(!by_service.items.is_empty());
    // Areas (what grants reach) are OR-ed; the same keys as the plain filter above.
    let area = |services: Option<Vec<&str>>, environments: Option<Vec<&str>>| KeyArea {
        service_ids: services.map(|s| s.into_iter().map(String::from).collect()),
        environments: environments.map(|e| e.into_iter().map(String::from).collect()),
    };
    let by_area = list(
        KeyFilter {
            areas: Some(vec![
                area(Some(vec!["openai"]), Some(vec!["production"])),
                area(Some(vec!["finnhub"]), Some(vec!["production"])),
            ]),
            ..Default::default()
        },
        None,
        50,
    )
    .await;
    assert_eq!(ids(&by_area.items), ids(&by_service.items));
    for nothing in [vec![], vec![area(Some(vec![]), None)]] {
        let empty = list(
            KeyFilter {
                areas: Some(nothing),
                ..Default::default()
            },
            None,
            50,
        )
        .await;
        assert!(empty.items.is_empty());
    }
    let everything = list(
        KeyFilter {
            areas: Some(vec![area(None, None)]),
            ..Default::default()
        },
        None,
        50,
    )
    .await;
    let unfiltered = list(KeyFilter::default(), None, 50).await;
    assert_eq!(ids(&everything.items), ids(&unfiltered.items));
    let none = list(
        KeyFilter {
            service_ids: Some(vec![]),
            ..Default::default()
        },
        None,
        50,
    )
    .await;
    assert!(none.items.is_empty());

    let tagged = list(
        KeyFilter {
            tag: Some("earnings".into()),
            ..Default::default()
        },
        None,
        50,
    )
    .await;
    assert_eq!(
        ids(&tagged.items),
        [special.id.clone()].into_iter().collect()
    );
    // LIKE wildcards in the search text are literal.
    let text = list(
        KeyFilter {
            text: Some("100%".into()),
            ..Default::default()
        },
        None,
        50,
    )
    .await;
    assert_eq!(ids(&text.items), [special.id.clone()].into_iter().collect());
    let underscore = list(
        KeyFilter {
            text: Some("the_s".into()),
            ..Default::default()
        },
        None,
        50,
    )
    .await;
    assert_eq!(underscore.items.len(), 1);
    let wildcard = list(
        KeyFilter {
            text: Some("_".into()),
            ..Default::default()
        },
        None,
        50,
    )
    .await;
    assert_eq!(
        wildcard.items.len(),
        1,
        "`_` must not match every character"
    );
    let by_alias = list(
        KeyFilter {
            text: Some("KEY 1".into()),
            ..Default::default()
        },
        None,
        50,
    )
    .await;
    assert!(by_alias.items.len() >= 10, "case-insensitive alias search");
}

async fn live_keys_come_with_their_current_version(store: Arc<dyn Store>) {
    let r = rng();
    let a = add(&store, &r, "openai", "production", "a", 1).await;
    let b = add(&store, &r, "finnhub", "staging", "b", 2).await;
    let gone = add(&store, &r, "openai", "production", "gone", 3).await;
    let mut deleted = gone.clone();
    deleted.deleted_at = Some(ts(4));
    store
        .update_key(&deleted, gone.updated_at)
        .await
        .expect("delete");
    let v2 = KeyVersion {
        key_id: a.id.clone(),
        version: 2,
        state: VersionState::Current,
        hint: "sk-…0002".into(),
        sealed: sealed("kek_a", 2),
        created_by: "tester".into(),
        created_at: ts(5),
    };
    store.add_version(&v2, ts(5)).await.expect("v2");
    let live = store.live_keys().await.expect("live keys");
    let summary: Vec<(KeyId, u32)> = live
        .iter()
        .map(|(k, v)| (k.id.clone(), v.version))
        .collect();
    let mut expected = vec![(a.id.clone(), 2), (b.id.clone(), 1)];
    expected.sort();
    assert_eq!(
        summary, expected,
        "deleted keys are left out; each key comes with its current version"
    );
    assert!(
        live.iter()
            .all(|(k, v)| k.id == v.key_id && v.state == VersionState::Current)
    );
    assert_eq!(
        live.iter()
            .find(|(k, _)| k.id == a.id)
            .map(|(_, v)| v.sealed.clone()),
        Some(sealed("kek_a", 2))
    );
}

async fn the_change_marker_moves_with_every_change_the_proxy_cares_about(store: Arc<dyn Store>) {
    use keyward_core::app_token::AppToken;
    use keyward_core::id::AppTokenId;
    let r = rng();
    let mut last = store.change_marker().await.expect("marker");
    let mut expect_change = |what: &str, marker: Vec<i64>| {
        assert_ne!(marker, last, "{what} did not change the marker");
        last = marker;
    };
    let key = add(&store, &r, "openai", "production", "a", 1).await;
    expect_change("insert", store.change_marker().await.expect("marker"));
    let mut disabled = key.clone();
    disabled.enabled = false;
    disabled.updated_at = ts(2);
    store
        .update_key(&disabled, key.updated_at)
        .await
        .expect("update");
    expect_change("update", store.change_marker().await.expect("marker"));
    let v2 = KeyVersion {
        version: 2,
        created_at: ts(3),
        ..store.versions(&key.id).await.expect("v")[0].clone()
    };
    store
        .add_version(
            &KeyVersion {
                state: VersionState::Pending,
                ..v2
            },
            ts(3),
        )
        .await
        .expect("version");
    expect_change(
        "pending version",
        store.change_marker().await.expect("marker"),
    );
    let token = AppToken {
        id: AppTokenId::generate(ts(4), &r),
        public_id: "markermarker".into(),
        name: "t".into(),
        secret_hash: vec![1],
        services: vec!["openai".into()],
        environments: vec!["production".into()],
        key_ids: vec![],
        allowed_networks: vec![],
        rate_limit: None,
        budget: None,
        created_by: "t".into(),
        created_at: ts(4),
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    };
    store.insert_app_token(&token).await.expect("token");
    expect_change("app token", store.change_marker().await.expect("marker"));
    store
        .revoke_app_token(&token.id, ts(5))
        .await
        .expect("revoke");
    expect_change("revocation", store.change_marker().await.expect("marker"));
    store
        .set_base_url_override("openai", Some("http://127.0.0.1:1"), ts(6))
        .await
        .expect("override");
    expect_change("override", store.change_marker().await.expect("marker"));
    store
        .set_base_url_override("openai", Some("http://127.0.0.1:2"), ts(7))
        .await
        .expect("override");
    expect_change(
        "override change",
        store.change_marker().await.expect("marker"),
    );
    store.purge_key(&key.id).await.expect("purge");
    expect_change("purge", store.change_marker().await.expect("marker"));
    let same = store.change_marker().await.expect("marker");
    assert_eq!(same, last, "no change, same marker");
}

async fn key_use_only_moves_forward_and_survives_metadata_updates(store: Arc<dyn Store>) {
    let r = rng();
    let key = add(&store, &r, "openai", "production", "a", 1).await;
    store
        .record_key_use(&[(key.id.clone(), ts(100)), (key.id.clone(), ts(50))])
        .await
        .expect("use");
    assert_eq!(
        store
            .key(&key.id)
            .await
            .expect("get")
            .expect("key")
            .last_used_at,
        Some(ts(100))
    );
    // A metadata update made from a copy loaded before the use does not erase it.
    let mut stale = key.clone();
    stale.alias = "renamed".into();
    stale.updated_at = ts(200);
    store
        .update_key(&stale, key.updated_at)
        .await
        .expect("update");
    assert_eq!(
        store
            .key(&key.id)
            .await
            .expect("get")
            .expect("key")
            .last_used_at,
        Some(ts(100))
    );
    let marker = store.change_marker().await.expect("marker");
    store
        .record_key_use(&[(key.id.clone(), ts(300))])
        .await
        .expect("use");
    assert_eq!(
        store.change_marker().await.expect("marker"),
        marker,
        "use is not a change the snapshot needs"
    );
}

async fn updates_are_optimistic(store: Arc<dyn Store>) {
    let r = rng();
    let key = add(&store, &r, "openai", "production", "main", 1).await;
    let mut a = key.clone();
    a.alias = "renamed".into();
    a.updated_at = ts(2);
    store
        .update_key(&a, key.updated_at)
        .await
        .expect("first writer wins");
    let mut b = key.clone();
    b.owner = None;
    b.updated_at = ts(3);
    let err = store
        .update_key(&b, key.updated_at)
        .await
        .expect_err("second writer loses");
    assert_eq!(err.code, "concurrent_update");
    assert_eq!(
        store.key(&key.id).await.expect("get").map(|k| k.alias),
        Some("renamed".into())
    );
}

async fn revocations_round_trip_and_listings_see_them(store: Arc<dyn Store>) {
    let r = rng();
    let key = add(&store, &r, "openai", "production", "main", 1).await;
    let other = add(&store, &r, "openai", "production", "spare", 1).await;
    let mut revoked = key.clone();
    revoked.revoked = Some(keyward_core::key::Revocation {
        at: ts(5),
        by: "olga".into(),
        reason: "leaked".into(),
    });
    revoked.updated_at = ts(5);
    store
        .update_key(&revoked, key.updated_at)
        .await
        .expect("revoke");
    let read = store.key(&key.id).await.expect("get").expect("exists");
    assert_eq!(read.revoked, revoked.revoked);
    assert_eq!(read.status(ts(6)), KeyStatus::Revoked);
    let listed = |status| {
        let store = store.clone();
        async move {
            store
                .list_keys(
                    &KeyFilter {
                        status: Some(status),
                        ..KeyFilter::default()
                    },
                    &PageRequest::new(None, Some(50)).expect("page"),
                    ts(6),
                )
                .await
                .expect("list")
                .items
                .into_iter()
                .map(|k| k.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(KeyStatus::Revoked).await, vec![key.id.clone()]);
    assert_eq!(listed(KeyStatus::Active).await, vec![other.id.clone()]);
}

async fn new_current_versions_demote_older_ones(store: Arc<dyn Store>) {
    let r = rng();
    use VersionState::*;
    let key = add(&store, &r, "openai", "production", "main", 1).await;
    for n in 2..=4u32 {
        let v = KeyVersion {
            key_id: key.id.clone(),
            version: n,
            state: Current,
            hint: format!("sk-…000{n}"),
            sealed: sealed("kek_a", n as u8),
            created_by: "tester".into(),
            created_at: ts(i64::from(n)),
        };
        store
            .add_version(&v, ts(i64::from(n)))
            .await
            .expect("add version");
    }
    let pending = KeyVersion {
        key_id: key.id.clone(),
        version: 5,
        state: Pending,
        hint: "sk-…0005".into(),
        sealed: sealed("kek_a", 5),
        created_by: "tester".into(),
        created_at: ts(5),
    };
    store.add_version(&pending, ts(5)).await.expect("pending");
    let read = store.key(&key.id).await.expect("get").expect("exists");
    assert_eq!(
        read.rotated_at,
        ts(4),
        "a current version restarts the rotation clock; a pending one does not"
    );
    let states: Vec<(u32, VersionState)> = store
        .versions(&key.id)
        .await
        .expect("versions")
        .iter()
        .map(|v| (v.version, v.state))
        .collect();
    assert_eq!(
        states,
        vec![
            (5, Pending),
            (4, Current),
            (3, Previous),
            (2, Retired),
            (1, Retired)
        ]
    );
    let stored = store.key(&key.id).await.expect("get").expect("exists");
    assert_eq!(
        (stored.current_version, stored.current_hint.as_str()),
        (4, "sk-…0004")
    );
    let err = store
        .add_version(&pending, ts(6))
        .await
        .expect_err("number taken");
    assert_eq!(err.code, "concurrent_update");
}

async fn purging_destroys_keys_and_versions(store: Arc<dyn Store>) {
    let r = rng();
    let old = add(&store, &r, "openai", "production", "old", 1).await;
    let recent = add(&store, &r, "openai", "production", "recent", 2).await;
    let live = add(&store, &r, "openai", "production", "live", 3).await;
    for (key, at) in [(&old, 100), (&recent, 900)] {
        let mut k = key.clone();
        k.deleted_at = Some(ts(at));
        store.update_key(&k, key.updated_at).await.expect("delete");
    }
    let purged = store.purge_deleted_before(ts(500)).await.expect("purge");
    assert_eq!(purged, vec![old.id.clone()]);
    assert_eq!(store.key(&old.id).await.expect("get"), None);
    assert!(store.versions(&old.id).await.expect("versions").is_empty());
    assert!(store.key(&recent.id).await.expect("get").is_some());
    assert!(store.purge_key(&recent.id).await.expect("purge"));
    assert!(!store.purge_key(&recent.id).await.expect("purge twice"));
    assert!(store.key(&live.id).await.expect("get").is_some());
}

async fn catalog_labels_services_and_overrides(store: Arc<dyn Store>) {
    let envs: Vec<String> = store
        .environments()
        .await
        .expect("envs")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(envs, vec!["development", "staging", "production"]);
    let qa = Environment {
        id: "qa".into(),
        name: "QA".into(),
        builtin: false,
    };
    store
        .insert_environment(&qa, ts(1))
        .await
        .expect("insert env");
    assert_eq!(
        store
            .insert_environment(&qa, ts(2))
            .await
            .map_err(|e| e.code),
        Err("environment_exists")
    );
    assert!(store.environments().await.expect("envs").contains(&qa));

    assert_eq!(store.categories().await.expect("cats").len(), 3);
    let crypto = Category {
        id: "crypto".into(),
        name: "Crypto data".into(),
        builtin: false,
    };
    store
        .insert_category(&crypto, ts(1))
        .await
        .expect("insert cat");
    assert_eq!(
        store
            .insert_category(&crypto, ts(1))
            .await
            .map_err(|e| e.code),
        Err("category_exists")
    );

    let mut service = keyward_core::catalog::builtin_services().expect("catalog")[0].clone();
    service.id = "my-llm".into();
    service.builtin = false;
    store
        .insert_custom_service(&service, ts(1))
        .await
        .expect("insert service");
    assert_eq!(
        store
            .insert_custom_service(&service, ts(1))
            .await
            .map_err(|e| e.code),
        Err("service_exists")
    );
    assert_eq!(
        store.custom_services().await.expect("services"),
        vec![service]
    );

    store
        .set_base_url_override("openai", Some("http://127.0.0.1:1"), ts(1))
        .await
        .expect("override");
    store
        .set_base_url_override("openai", Some("http://127.0.0.1:2"), ts(2))
        .await
        .expect("override again");
    let overrides = store.base_url_overrides().await.expect("overrides");
    assert_eq!(overrides.len(), 1);
    assert_eq!(overrides[0].base_url, "http://127.0.0.1:2");
    store
        .set_base_url_override("openai", None, ts(3))
        .await
        .expect("clear");
    assert!(
        store
            .base_url_overrides()
            .await
            .expect("overrides")
            .is_empty()
    );
}

async fn tokens_and_users(store: Arc<dyn Store>) {
    let r = rng();
    let token = ManagementToken {
        id: TokenId::generate(ts(1), &r),
        public_id: "abcdefghijkl".into(),
        name: "ci".into(),
        role: Role::KeyManager,
        secret_hash: vec![1, 2, 3, 0, 255],
        created_by: "cli".into(),
        created_by_id: Some("usr_01JCREATOR0000000000000000".into()),
        created_at: ts(1),
        expires_at: Some(ts(100)),
        last_used_at: None,
        revoked_at: None,
        scope: Scope {
            categories: Some(["llm".to_string()].into()),
            environments: None,
        },
        allowed_networks: vec!["10.0.0.0/8".parse().expect("net")],
    };
    store.insert_token(&token).await.expect("insert token");
    assert_eq!(
        store.token_by_public_id("abcdefghijkl").await.expect("get"),
        Some(token.clone())
    );
    assert_eq!(store.token_by_public_id("nope").await.expect("get"), None);
    store.touch_token(&token.id, ts(50)).await.expect("touch");
    let touched = store
        .token_by_public_id("abcdefghijkl")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(touched.last_used_at, Some(ts(50)));

    assert_eq!(store.count_users().await.expect("count"), 0);
    let user = User {
        id: UserId::generate(ts(1), &r),
        username: "Alice".into(),
        password_hash: "$argon2id$v=19$…".into(),
        role: Role::Owner,
        disabled: false,
        created_at: ts(1),
        created_by_id: Some("tok_01JCREATOR0000000000000000".into()),
        mfa_enabled: false,
        allowed_networks: vec![],
    };
    store.insert_user(&user).await.expect("insert user");
    let dup = User {
        id: UserId::generate(ts(2), &r),
        username: "alice".into(),
        ..user.clone()
    };
    assert_eq!(
        store.insert_user(&dup).await.map_err(|e| e.code),
        Err("username_taken")
    );
    assert_eq!(
        store.user_by_username("ALICE").await.expect("get"),
        Some(user.clone())
    );
    assert_eq!(store.count_users().await.expect("count"), 1);
    assert_eq!(store.users().await.expect("list"), vec![user.clone()]);
    assert!(
        store
            .set_user_disabled(&user.id, true)
            .await
            .expect("disable")
    );
    let disabled = store.user(&user.id).await.expect("get").expect("exists");
    assert!(disabled.disabled);
    let nobody = UserId::generate(ts(3), &r);
    assert!(!store.set_user_disabled(&nobody, true).await.expect("none"));
    assert_eq!(store.user(&nobody).await.expect("get"), None);
}

async fn app_tokens_round_trip_and_revoke_once(store: Arc<dyn Store>) {
    use keyward_core::app_token::{AppToken, Budget, BudgetPeriod, RateLimit, parse_network};
    use keyward_core::id::AppTokenId;
    let r = rng();
    let key = add(&store, &r, "openai", "production", "main", 1).await;
    let token = AppToken {
        id: AppTokenId::generate(ts(1), &r),
        public_id: "pubidpubid01".into(),
        name: "summariser".into(),
        secret_hash: vec![0, 1, 2, 255],
        services: vec!["openai".into(), "anthropic".into()],
        environments: vec!["production".into()],
        key_ids: vec![key.id.clone()],
        allowed_networks: vec![
            parse_network("10.0.0.0/8").expect("net"),
            parse_network("::1").expect("net"),
        ],
        rate_limit: Some(RateLimit {
            requests: 10,
            per_seconds: 60,
        }),
        budget: Some(Budget {
            limit_micros: 25_000_000,
            period: BudgetPeriod::Month,
        }),
        created_by: "tester".into(),
        created_at: ts(1),
        expires_at: Some(ts(1_000_000)),
        last_used_at: None,
        revoked_at: None,
    };
    store.insert_app_token(&token).await.expect("insert");
    assert_eq!(
        store.app_token(&token.id).await.expect("get"),
        Some(token.clone())
    );
    assert_eq!(
        store
            .app_token_by_public_id("pubidpubid01")
            .await
            .expect("get"),
        Some(token.clone())
    );
    assert_eq!(
        store.app_token_by_public_id("nope").await.expect("get"),
        None
    );
    let dup = AppToken {
        id: AppTokenId::generate(ts(2), &r),
        ..token.clone()
    };
    assert_eq!(
        store.insert_app_token(&dup).await.map_err(|e| e.code),
        Err("app_token_exists")
    );
    let second = AppToken {
        id: AppTokenId::generate(ts(3), &r),
        public_id: "pubidpubid02".into(),
        rate_limit: None,
        budget: None,
        ..token.clone()
    };
    store
        .insert_app_token(&second)
        .await
        .expect("insert second");
    let listed: Vec<_> = store
        .app_tokens()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(
        listed,
        vec![second.id.clone(), token.id.clone()],
        "newest first"
    );

    store
        .record_app_token_use(&[(token.id.clone(), ts(50))])
        .await
        .expect("use");
    store
        .record_app_token_use(&[(token.id.clone(), ts(40))])
        .await
        .expect("older use");
    assert!(
        store
            .revoke_app_token(&token.id, ts(60))
            .await
            .expect("revoke")
    );
    assert!(
        !store
            .revoke_app_token(&token.id, ts(70))
            .await
            .expect("revoke twice")
    );
    let stored = store
        .app_token(&token.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (stored.last_used_at, stored.revoked_at),
        (Some(ts(50)), Some(ts(60)))
    );
}

async fn master_keys_rewrap_and_retire(store: Arc<dyn Store>) {
    let r = rng();
    let record = |id: &str, current: bool| MasterKeyRecord {
        kek_id: id.into(),
        current,
        verifier: vec![9, 0, 9],
        created_at: ts(1),
    };
    store
        .register_master_key(&record("kek_a", true))
        .await
        .expect("register a");
    let key = add(&store, &r, "openai", "production", "main", 1).await;
    store
        .register_master_key(&record("kek_b", true))
        .await
        .expect("register b");
    let current: Vec<(String, bool)> = store
        .master_keys()
        .await
        .expect("keys")
        .into_iter()
        .map(|k| (k.kek_id, k.current))
        .collect();
    assert_eq!(
        current,
        vec![("kek_a".into(), false), ("kek_b".into(), true)]
    );

    let usage = store.kek_usage().await.expect("usage");
    assert_eq!(
        usage
            .iter()
            .map(|u| (u.kek_id.as_str(), u.versions))
            .collect::<Vec<_>>(),
        vec![("kek_a", 1), ("kek_b", 0)]
    );
    assert_eq!(
        store.remove_master_key("kek_a").await.map_err(|e| e.code),
        Err("kek_in_use")
    );
    assert_eq!(
        store.remove_master_key("kek_b").await.map_err(|e| e.code),
        Err("kek_current")
    );

    let pending = store
        .versions_wrapped_by("kek_a", 10)
        .await
        .expect("wrapped by a");
    assert_eq!(pending.len(), 1);
    let rewrapped = SealedSecret {
        kek_id: "kek_b".into(),
        wrapped_dek: vec![7; 60],
        ..pending[0].sealed.clone()
    };
    assert!(
        store
            .rewrap_version(&key.id, 1, "kek_a", &rewrapped)
            .await
            .expect("rewrap")
    );
    assert!(
        !store
            .rewrap_version(&key.id, 1, "kek_a", &rewrapped)
            .await
            .expect("rewrap twice is a no-op")
    );
    let versions = store.versions(&key.id).await.expect("versions");
    assert_eq!(versions[0].sealed, rewrapped);
    assert!(
        store
            .versions_wrapped_by("kek_a", 10)
            .await
            .expect("none left")
            .is_empty()
    );
    store.remove_master_key("kek_a").await.expect("retire a");
    assert_eq!(
        store.remove_master_key("kek_a").await.map_err(|e| e.code),
        Err("kek_not_found")
    );

    store
        .make_master_key_current("kek_b")
        .await
        .expect("current");
    assert_eq!(
        store
            .make_master_key_current("kek_zzz")
            .await
            .map_err(|e| e.code),
        Err("kek_not_found")
    );

    assert_eq!(store.setting("salt").await.expect("setting"), None);
    assert_eq!(
        store
            .setting_or_insert("salt", "one")
            .await
            .expect("insert"),
        "one"
    );
    assert_eq!(
        store.setting_or_insert("salt", "two").await.expect("keep"),
        "one"
    );
    assert!(
        !store
            .replace_setting("salt", "two", "three")
            .await
            .expect("cas")
    );
    assert!(
        store
            .replace_setting("salt", "one", "three")
            .await
            .expect("cas")
    );
    assert_eq!(
        store.setting("salt").await.expect("read").as_deref(),
        Some("three")
    );
}

fn audit_entry(n: u64) -> AuditDraft {
    AuditDraft {
        at: ts(1_764_000_000_000 + i64::try_from(n).unwrap_or(0)),
        actor_kind: if n.is_multiple_of(2) {
            ActorKind::User
        } else {
            ActorKind::Token
        },
        actor_id: format!("actor{}", n % 3),
        actor_name: format!("name{}", n % 3),
        source: Some("192.0.2.7".into()),
        action: if n.is_multiple_of(2) {
            "key.update".into()
        } else {
            "key.create".into()
        },
        target: Some(format!("key:k{}", n % 4)),
        outcome: AuditOutcome::Success,
        details: format!("{{\"n\":{n}}}"),
    }
}

async fn verify_stored(store: &dyn Store) -> VerifyReport {
    let mut verifier = ChainVerifier::new([]);
    let mut after = 0;
    loop {
        let page = store
            .audit_events(&AuditFilter {
                after_seq: Some(after),
                limit: 4,
                ..AuditFilter::default()
            })
            .await
            .expect("read");
        let Some(last) = page.last() else { break };
        after = last.seq;
        page.iter().for_each(|e| verifier.push(e));
    }
    let head = store.audit_head().await.expect("head").map_or(0, |h| h.0);
    verifier.finish(head)
}

async fn audit_appends_are_numbered_chained_and_filtered(store: Arc<dyn Store>) {
    assert_eq!(store.audit_head().await.expect("head"), None);
    // Concurrent appends get distinct, gap-free numbers and one valid chain.
    let tasks: Vec<_> = (1..=24)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.append_audit(&audit_entry(n)).await })
        })
        .collect();
    let mut seqs = BTreeSet::new();
    for task in tasks {
        seqs.insert(task.await.expect("join").expect("append").seq);
    }
    assert_eq!(seqs, (1..=24).collect());
    let report = verify_stored(store.as_ref()).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.last_seq, 24);
    let head = store.audit_head().await.expect("head").expect("some");
    assert_eq!(head.0, 24);

    let all = AuditFilter {
        limit: 100,
        ..AuditFilter::default()
    };
    let by_action = store
        .audit_events(&AuditFilter {
            action: Some("key.create".into()),
            ..all.clone()
        })
        .await
        .expect("filter");
    assert_eq!(by_action.len(), 12);
    let by_prefix = store
        .audit_events(&AuditFilter {
            action: Some("key".into()),
            ..all.clone()
        })
        .await
        .expect("filter");
    assert_eq!(by_prefix.len(), 24);
    let by_target_and_actor = store
        .audit_events(&AuditFilter {
            target: Some("key:k1".into()),
            actor: Some("name1".into()),
            ..all.clone()
        })
        .await
        .expect("filter");
    assert!(
        by_target_and_actor
            .iter()
            .all(|e| e.entry.target.as_deref() == Some("key:k1") && e.entry.actor_name == "name1")
    );
    assert!(!by_target_and_actor.is_empty());
    let window = store
        .audit_events(&AuditFilter {
            from: Some(ts(1_764_000_000_005)),
            until: Some(ts(1_764_000_000_010)),
            ..all.clone()
        })
        .await
        .expect("filter");
    assert_eq!(window.len(), 5);
    // What was stored is returned byte for byte (the hash covers it).
    let first = store
        .audit_events(&AuditFilter {
            limit: 1,
            ..AuditFilter::default()
        })
        .await
        .expect("first");
    assert_eq!(first[0].seq, 1);
    assert!(first[0].entry.details.starts_with("{\"n\":"));
    assert_eq!(
        store
            .audit_action_counts("key.create")
            .await
            .expect("counts"),
        vec![
            ("key:k1".to_owned(), 6, ts(1_764_000_000_021)),
            ("key:k3".to_owned(), 6, ts(1_764_000_000_023)),
        ]
    );
    assert!(
        store
            .audit_action_counts("key.reveal")
            .await
            .expect("none")
            .is_empty()
    );
}

/// Edits, reorderings, deletions and a cut tail made directly in the database are found, at
/// the right sequence number; a broken audit table refuses appends without moving the head.
async fn audit_tampering_is_found(db: &TestDatabase, store: Arc<dyn Store>) {
    for n in 1..=10 {
        store.append_audit(&audit_entry(n)).await.expect("append");
    }
    assert!(verify_stored(store.as_ref()).await.ok);
    let broken = |seq, kind| Some(ChainBreak { seq, kind });

    db.execute_raw("UPDATE audit_events SET actor_name = 'mallory' WHERE seq = 4")
        .await;
    assert_eq!(
        verify_stored(store.as_ref()).await.first_broken,
        broken(4, BreakKind::Altered)
    );
    db.execute_raw("UPDATE audit_events SET actor_name = 'name1' WHERE seq = 4")
        .await;
    assert!(verify_stored(store.as_ref()).await.ok, "edit undone");

    db.execute_raw("UPDATE audit_events SET details = '{\"n\":70}' WHERE seq = 7")
        .await;
    assert_eq!(
        verify_stored(store.as_ref()).await.first_broken,
        broken(7, BreakKind::Altered)
    );
    db.execute_raw("UPDATE audit_events SET details = '{\"n\":7}' WHERE seq = 7")
        .await;

    // Reordering: rows 2 and 8 swap places (and back).
    let swap = "UPDATE audit_events SET seq = 1000 WHERE seq = 2; \
                UPDATE audit_events SET seq = 2 WHERE seq = 8; \
                UPDATE audit_events SET seq = 8 WHERE seq = 1000";
    db.execute_raw(swap).await;
    assert_eq!(
        verify_stored(store.as_ref()).await.first_broken,
        broken(2, BreakKind::Altered)
    );
    db.execute_raw(swap).await;
    assert!(verify_stored(store.as_ref()).await.ok, "order restored");

    db.execute_raw("DELETE FROM audit_events WHERE seq = 10")
        .await;
    assert_eq!(
        verify_stored(store.as_ref()).await.first_broken,
        broken(10, BreakKind::Truncated)
    );
    db.execute_raw("DELETE FROM audit_events WHERE seq = 6")
        .await;
    assert_eq!(
        verify_stored(store.as_ref()).await.first_broken,
        broken(6, BreakKind::Missing)
    );

    db.execute_raw(db.break_audit_writes_sql()).await;
    let head = store.audit_head().await.expect("head");
    assert!(store.append_audit(&audit_entry(11)).await.is_err());
    assert_eq!(
        store.audit_head().await.expect("head"),
        head,
        "nothing moved"
    );
}

async fn sessions_round_trip_touch_forward_and_end(store: Arc<dyn Store>) {
    let r = rng();
    let user = User {
        id: UserId::generate(ts(1), &r),
        username: "kim".into(),
        password_hash: "$argon2id$…".into(),
        role: Role::Viewer,
        disabled: false,
        created_at: ts(1),
        created_by_id: None,
        mfa_enabled: false,
        allowed_networks: vec![],
    };
    store.insert_user(&user).await.expect("user");
    let session = |id: &str, expires: i64| Session {
        public_id: id.into(),
        secret_hash: vec![1, 2, 3],
        csrf_hash: vec![4, 5, 6],
        user_id: user.id.clone(),
        created_at: ts(10),
        last_seen_at: ts(10),
        expires_at: ts(expires),
        mfa_at: None,
        source: Some("192.0.2.1".into()),
    };
    store
        .insert_session(&session("aaa", 1_000))
        .await
        .expect("a");
    store
        .insert_session(&session("bbb", 2_000))
        .await
        .expect("b");
    assert_eq!(
        store.session("aaa").await.expect("get"),
        Some(session("aaa", 1_000))
    );
    store.touch_session("aaa", ts(50)).await.expect("touch");
    store
        .touch_session("aaa", ts(20))
        .await
        .expect("touch back");
    let a = store.session("aaa").await.expect("get").expect("some");
    assert_eq!(a.last_seen_at, ts(50));
    // After an MFA check the session is swapped for one with a new id, in one step.
    let mut renewed = session("aaa2", 1_000);
    renewed.mfa_at = Some(ts(55));
    assert!(
        store
            .replace_session("aaa", &renewed)
            .await
            .expect("replace")
    );
    assert_eq!(store.session("aaa").await.expect("get"), None);
    assert_eq!(
        store
            .session("aaa2")
            .await
            .expect("get")
            .and_then(|s| s.mfa_at),
        Some(ts(55))
    );
    let mut again = session("aaa3", 1_000);
    again.mfa_at = Some(ts(56));
    assert!(
        !store
            .replace_session("aaa", &again)
            .await
            .expect("replace gone"),
        "an ended session cannot be renewed"
    );
    assert_eq!(store.session("aaa3").await.expect("get"), None);
    let live: Vec<String> = store
        .sessions(ts(1_500))
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.public_id)
        .collect();
    assert_eq!(live, ["bbb"]);
    // Pruned: past its absolute end, or idle since before the cut-off.
    assert_eq!(
        store.prune_sessions(ts(1_500), ts(0)).await.expect("prune"),
        1
    );
    assert!(store.delete_session("bbb").await.expect("delete"));
    assert!(!store.delete_session("bbb").await.expect("again"));
    store
        .insert_session(&session("ccc", 3_000))
        .await
        .expect("c");
    store
        .insert_session(&session("ddd", 3_000))
        .await
        .expect("d");
    assert_eq!(store.delete_user_sessions(&user.id).await.expect("all"), 2);
    assert_eq!(store.session("ccc").await.expect("get"), None);
}

async fn custom_roles_grants_networks_and_token_revocation(store: Arc<dyn Store>) {
    let r = rng();
    let user = User {
        id: UserId::generate(ts(1), &r),
        username: "kim".into(),
        password_hash: "$argon2id$…".into(),
        role: Role::Viewer,
        disabled: false,
        created_at: ts(1),
        created_by_id: None,
        mfa_enabled: false,
        allowed_networks: vec!["192.0.2.0/24".parse().expect("net")],
    };
    store.insert_user(&user).await.expect("user");
    assert_eq!(store.user(&user.id).await.expect("get"), Some(user.clone()));
    assert!(
        store
            .set_user_role(&user.id, Role::Auditor)
            .await
            .expect("role")
    );
    assert!(store.set_user_networks(&user.id, &[]).await.expect("nets"));
    let back = store.user(&user.id).await.expect("get").expect("some");
    assert_eq!((back.role, back.allowed_networks.len()), (Role::Auditor, 0));

    let role = CustomRole {
        id: "market-data-operator".into(),
        description: "rotates market data keys".into(),
        permissions: [Permission::KeysRead, Permission::KeysWrite]
            .into_iter()
            .collect(),
        created_at: ts(2),
        updated_at: ts(2),
    };
    store.insert_custom_role(&role).await.expect("role");
    assert_eq!(
        store.insert_custom_role(&role).await.map_err(|e| e.code),
        Err("role_exists")
    );
    let mut edited = role.clone();
    edited.permissions = PermissionSet::default();
    edited.updated_at = ts(3);
    assert!(store.update_custom_role(&edited).await.expect("update"));
    assert_eq!(
        store.custom_roles().await.expect("list"),
        vec![edited.clone()]
    );

    let g1 = GrantId::generate(ts(4), &r);
    let g2 = GrantId::generate(ts(5), &r);
    let g3 = GrantId::generate(ts(4), &r);
    let grant = |id: &GrantId, role: RoleRef| Grant {
        id: id.clone(),
        user_id: user.id.clone(),
        role,
        scope: Scope {
            categories: Some(["financial-data".to_string()].into()),
            environments: Some(["production".to_string()].into()),
        },
        created_by: "ada".into(),
        created_at: ts(4),
    };
    store
        .insert_grant(&grant(&g1, RoleRef::Custom("market-data-operator".into())))
        .await
        .expect("grant");
    store
        .insert_grant(&grant(&g2, RoleRef::Builtin(Role::KeyManager)))
        .await
        .expect("grant");
    assert_eq!(
        store
            .insert_grant(&grant(&g3, RoleRef::Custom("nope".into())))
            .await
            .map_err(|e| e.code),
        Err("unknown_role")
    );
    assert_eq!(
        store.grants(&user.id).await.expect("grants"),
        vec![
            grant(&g1, RoleRef::Custom("market-data-operator".into())),
            grant(&g2, RoleRef::Builtin(Role::KeyManager)),
        ]
    );
    assert_eq!(
        store
            .delete_custom_role("market-data-operator")
            .await
            .map_err(|e| e.code),
        Err("role_in_use")
    );
    assert!(store.delete_grant(&user.id, &g1).await.expect("delete"));
    assert!(!store.delete_grant(&user.id, &g1).await.expect("again"));
    assert!(
        store
            .delete_custom_role("market-data-operator")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_custom_role("market-data-operator")
            .await
            .expect("again")
    );

    let office: ipnet::IpNet = "203.0.113.0/24".parse().expect("net");
    store
        .set_role_networks("admin", &[office])
        .await
        .expect("set");
    assert_eq!(
        store.role_networks().await.expect("get"),
        vec![("admin".to_string(), vec![office])]
    );
    store.set_role_networks("admin", &[]).await.expect("clear");
    assert!(store.role_networks().await.expect("get").is_empty());

    let listed = store.tokens().await.expect("tokens");
    for t in &listed {
        assert!(store.revoke_token(&t.id, ts(9)).await.expect("revoke"));
        assert!(!store.revoke_token(&t.id, ts(10)).await.expect("twice"));
    }
    assert!(
        store
            .tokens()
            .await
            .expect("tokens")
            .iter()
            .all(|t| t.revoked_at == Some(ts(9)))
    );
}

async fn approvals_round_trip_and_change_by_compare_and_set(store: Arc<dyn Store>) {
    use keyward_core::approval::{
        ApprovalAction, ApprovalRequest, ApprovalStatus, Operation, Participant, Requirement,
    };
    let r = rng();
    let requester = Participant {
        id: "usr_a".into(),
        name: "kim".into(),
        role: Role::KeyManager,
    };
    let open = |at: i64| {
        ApprovalRequest::open(
            ApprovalId::generate(ts(at), &r),
            Operation {
                action: ApprovalAction::Delete,
                target: "key:k".into(),
                payload: serde_json::json!({"version": 2}),
            },
            "cleanup".into(),
            requester.clone(),
            Requirement {
                approvals: 1,
                approver_roles: vec![Role::Admin],
            },
            ts(at),
            jiff::SignedDuration::from_hours(1),
        )
    };
    let first = open(1);
    let second = open(2);
    store.insert_approval(&first).await.expect("insert");
    store.insert_approval(&second).await.expect("insert");
    assert_eq!(
        store.approval(&first.id).await.expect("get"),
        Some(first.clone())
    );
    let mut approved = first.clone();
    approved
        .decide(
            Participant {
                id: "usr_b".into(),
                name: "ada".into(),
                role: Role::Admin,
            },
            true,
            "fine".into(),
            ts(3),
        )
        .expect("decide");
    assert!(store.update_approval(&approved, 0).await.expect("cas"));
    assert!(
        !store.update_approval(&approved, 0).await.expect("stale"),
        "a second writer from the same revision loses"
    );
    assert_eq!(
        store.approval(&first.id).await.expect("get"),
        Some(approved)
    );
    let pending = store
        .approvals(Some(ApprovalStatus::Pending), None, 10)
        .await
        .expect("list");
    assert_eq!(
        pending.iter().map(|a| &a.id).collect::<Vec<_>>(),
        [&second.id]
    );
    let mine = store
        .approvals(None, Some("usr_a"), 10)
        .await
        .expect("mine");
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0].id, second.id, "newest first");
    assert!(
        store
            .approvals(None, Some("usr_z"), 10)
            .await
            .expect("none")
            .is_empty()
    );
}

async fn mfa_steps_and_recovery_codes_are_used_once(store: Arc<dyn Store>) {
    let r = rng();
    let user = User {
        id: UserId::generate(ts(1), &r),
        username: "mia".into(),
        password_hash: "$argon2id$…".into(),
        role: Role::Admin,
        disabled: false,
        created_at: ts(1),
        created_by_id: None,
        mfa_enabled: false,
        allowed_networks: vec![],
    };
    store.insert_user(&user).await.expect("user");
    let pending = |secret: &str| MfaEnrolment {
        user_id: user.id.clone(),
        sealed_secret: secret.into(),
        kek_id: "kek-a".into(),
        created_at: ts(5),
        confirmed_at: None,
        last_step: None,
    };
    assert_eq!(store.mfa_enrolment(&user.id).await.expect("get"), None);
    store
        .put_pending_mfa(&pending("s1"))
        .await
        .expect("pending");
    // A second start replaces the pending one.
    store
        .put_pending_mfa(&pending("s2"))
        .await
        .expect("pending again");
    assert_eq!(
        store.mfa_enrolment(&user.id).await.expect("get"),
        Some(pending("s2"))
    );
    assert!(!store.use_totp_step(&user.id, 7).await.expect("unconfirmed"));
    assert!(
        !store
            .user(&user.id)
            .await
            .expect("u")
            .expect("u")
            .mfa_enabled
    );
    let hashes = vec![vec![1u8; 32], vec![2u8; 32]];
    assert!(
        store
            .confirm_mfa(&user.id, 100, ts(6), &hashes)
            .await
            .expect("confirm")
    );
    assert!(
        !store
            .confirm_mfa(&user.id, 101, ts(6), &hashes)
            .await
            .expect("twice"),
        "confirmed once"
    );
    assert!(
        store
            .user(&user.id)
            .await
            .expect("u")
            .expect("u")
            .mfa_enabled
    );
    assert!(
        store
            .user_by_username("mia")
            .await
            .expect("u")
            .expect("u")
            .mfa_enabled
    );
    assert_eq!(
        store
            .put_pending_mfa(&pending("s3"))
            .await
            .map_err(|e| e.code),
        Err("mfa_already_enrolled")
    );
    // Steps only move forward.
    assert!(!store.use_totp_step(&user.id, 100).await.expect("replay"));
    assert!(!store.use_totp_step(&user.id, 99).await.expect("older"));
    assert!(store.use_totp_step(&user.id, 101).await.expect("next"));
    assert!(!store.use_totp_step(&user.id, 101).await.expect("replay"));
    let e = store
        .mfa_enrolment(&user.id)
        .await
        .expect("get")
        .expect("some");
    assert_eq!((e.last_step, e.confirmed_at), (Some(101), Some(ts(6))));
    // Recovery codes: each once.
    assert_eq!(store.unused_recovery_codes(&user.id).await.expect("n"), 2);
    assert!(
        store
            .use_recovery_code(&user.id, &[1u8; 32], ts(7))
            .await
            .expect("use")
    );
    assert!(
        !store
            .use_recovery_code(&user.id, &[1u8; 32], ts(8))
            .await
            .expect("reuse")
    );
    assert!(
        !store
            .use_recovery_code(&user.id, &[9u8; 32], ts(8))
            .await
            .expect("unknown")
    );
    assert_eq!(store.unused_recovery_codes(&user.id).await.expect("n"), 1);
    store
        .replace_recovery_codes(&user.id, &[vec![3u8; 32]])
        .await
        .expect("replace");
    assert!(
        !store
            .use_recovery_code(&user.id, &[2u8; 32], ts(8))
            .await
            .expect("old")
    );
    assert_eq!(store.unused_recovery_codes(&user.id).await.expect("n"), 1);
    // Rotation moves the sealed secret by compare-and-set.
    assert_eq!(store.mfa_wrapped_by("kek-a").await.expect("by").len(), 1);
    assert!(
        !store
            .rewrap_mfa(&user.id, "stale", "s4", "kek-b")
            .await
            .expect("cas")
    );
    assert!(
        store
            .rewrap_mfa(&user.id, "s2", "s4", "kek-b")
            .await
            .expect("cas")
    );
    assert!(store.mfa_wrapped_by("kek-a").await.expect("by").is_empty());
    assert_eq!(store.mfa_wrapped_by("kek-b").await.expect("by").len(), 1);
    assert!(store.delete_mfa(&user.id).await.expect("reset"));
    assert!(!store.delete_mfa(&user.id).await.expect("again"));
    assert_eq!(store.unused_recovery_codes(&user.id).await.expect("n"), 0);
    assert!(
        !store
            .user(&user.id)
            .await
            .expect("u")
            .expect("u")
            .mfa_enabled
    );
    store
        .put_pending_mfa(&pending("s5"))
        .await
        .expect("enrol again after reset");
}

fn version(key: &Key, n: u32, state: VersionState) -> KeyVersion {
    KeyVersion {
        key_id: key.id.clone(),
        version: n,
        state,
        hint: format!("sk-…000{n}"),
        sealed: sealed("kek_a", n as u8),
        created_by: "tester".into(),
        created_at: ts(i64::from(n) * 10),
    }
}

/// Applies one core step through the store; `false` if the compare-and-set lost.
async fn step(
    store: &Arc<dyn Store>,
    from: &Rotation,
    advance: Result<Advance, keyward_core::Error>,
    pending: Option<&KeyVersion>,
    now: i64,
) -> (Rotation, bool) {
    let Advance::Changed(next, moves) = advance.expect("step allowed") else {
        panic!("expected a change from {}", from.step)
    };
    let stored = store
        .advance_rotation(&next, from.revision, pending, moves, ts(now))
        .await
        .expect("advance");
    (*next, stored)
}

async fn guided_rotations_step_by_compare_and_set(store: Arc<dyn Store>) {
    use VersionState::*;
    let r = rng();
    let key = add(&store, &r, "openai", "production", "main", 1).await;
    let states = |store: Arc<dyn Store>, id: KeyId| async move {
        store
            .versions(&id)
            .await
            .expect("versions")
            .iter()
            .map(|v| (v.version, v.state))
            .collect::<Vec<_>>()
    };
    let start = Rotation::start(
        RotationId::generate(ts(5), &r),
        &key,
        2,
        None,
        jiff::SignedDuration::from_hours(1),
        "tester",
        ts(5),
    )
    .expect("start");
    store
        .insert_rotation(&start, Some(&version(&key, 2, Pending)))
        .await
        .expect("insert");
    assert_eq!(
        store.rotation(&start.id).await.expect("read"),
        Some(start.clone())
    );

    // One active rotation per key, and it owns the key's versions.
    let second = Rotation {
        id: RotationId::generate(ts(6), &r),
        ..start.clone()
    };
    let refused = store
        .insert_rotation(&second, None)
        .await
        .expect_err("second rotation");
    assert_eq!(refused.code, "rotation_in_progress");
    let refused = store
        .add_version(&version(&key, 3, Current), ts(6))
        .await
        .expect_err("direct rotation");
    assert_eq!(refused.code, "rotation_in_progress");
    assert_eq!(
        states(store.clone(), key.id.clone()).await,
        vec![(2, Pending), (1, Current)]
    );

    let marker = store.change_marker().await.expect("marker");
    let record = |probe, at| ProbeRecord {
        probe,
        verdict: "valid".into(),
        status: Some(200),
        at: ts(at),
    };
    let (validated, ok) = step(
        &store,
        &start,
        start.validated(record(Probe::Accepted, 7)),
        None,
        7,
    )
    .await;
    assert!(ok);
    assert_ne!(
        store.change_marker().await.expect("marker"),
        marker,
        "a step moves the marker"
    );
    // The same step again from the old revision loses, and changes nothing.
    let (_, ok) = step(
        &store,
        &start,
        start.validated(record(Probe::Rejected, 8)),
        None,
        8,
    )
    .await;
    assert!(!ok, "a stale revision must not win");
    assert_eq!(
        store.rotation(&start.id).await.expect("read"),
        Some(validated.clone())
    );

    let (promoted, ok) = step(&store, &validated, validated.promote(ts(10)), None, 10).await;
    assert!(ok);
    assert_eq!(
        states(store.clone(), key.id.clone()).await,
        vec![(2, Current), (1, Previous)]
    );
    let read = store.key(&key.id).await.expect("key").expect("exists");
    assert_eq!(
        (
            read.current_version,
            read.current_hint.as_str(),
            read.rotated_at
        ),
        (2, "sk-…0002", ts(10))
    );

    // Traffic adds up, keeps the latest rejection, and is not part of the compare-and-set.
    for (served, at) in [(3, Some(20)), (2, Some(15)), (1, None)] {
        store
            .add_rotation_traffic(&[(
                key.id.clone(),
                RotationTraffic {
                    fallback_served: served,
                    new_rejected_at: at.map(ts),
                    ..RotationTraffic::default()
                },
            )])
            .await
            .expect("traffic");
    }
    let read = store
        .rotation(&start.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        (read.traffic.fallback_served, read.traffic.new_rejected_at),
        (6, Some(ts(20)))
    );
    assert_eq!(read.revision, promoted.revision);
    assert_eq!(store.active_rotations().await.expect("active").len(), 1);

    let (_, ok) = step(&store, &read, read.retire(true, ts(30)), None, 30).await;
    assert!(ok);
    assert_eq!(
        states(store.clone(), key.id.clone()).await,
        vec![(2, Current), (1, Retired)]
    );
    assert!(store.active_rotations().await.expect("active").is_empty());

    // Once finished, the key may rotate again; a promotion of a key deleted meanwhile
    // fails as a whole.
    let again = Rotation::start(
        RotationId::generate(ts(40), &r),
        &store.key(&key.id).await.expect("key").expect("exists"),
        3,
        None,
        jiff::SignedDuration::from_hours(1),
        "tester",
        ts(40),
    )
    .expect("start");
    store
        .insert_rotation(&again, Some(&version(&key, 3, Pending)))
        .await
        .expect("insert again");
    let (valid, _) = step(
        &store,
        &again,
        again.validated(record(Probe::Accepted, 41)),
        None,
        41,
    )
    .await;
    let mut deleted = store.key(&key.id).await.expect("key").expect("exists");
    let before = deleted.updated_at;
    deleted.deleted_at = Some(ts(42));
    deleted.updated_at = ts(42);
    store.update_key(&deleted, before).await.expect("delete");
    let Ok(Advance::Changed(next, moves)) = valid.promote(ts(43)) else {
        panic!("promote")
    };
    let refused = store
        .advance_rotation(&next, valid.revision, None, moves, ts(43))
        .await
        .expect_err("deleted key");
    assert_eq!(refused.code, "key_not_found");
    assert_eq!(store.rotation(&again.id).await.expect("read"), Some(valid));
    assert_eq!(
        states(store.clone(), key.id.clone()).await,
        vec![(3, Pending), (2, Current), (1, Retired)]
    );
    assert!(store.purge_key(&key.id).await.expect("purge"));
    assert_eq!(store.rotation(&again.id).await.expect("read"), None);
}

async fn probes_are_claimed_once_per_interval(store: Arc<dyn Store>) {
    let r = rng();
    let key = add(&store, &r, "alpha-vantage", "production", "quotes", 1).await;
    let day = 86_400_000;
    assert!(
        store
            .claim_probe(&key.id, ts(10), ts(10 - day))
            .await
            .expect("first")
    );
    assert!(
        !store
            .claim_probe(&key.id, ts(20), ts(20 - day))
            .await
            .expect("too soon")
    );
    store
        .set_probe_verdict(&key.id, "valid")
        .await
        .expect("verdict");
    assert_eq!(
        store.probes().await.expect("probes"),
        vec![(key.id.clone(), ts(10), Some("valid".into()))]
    );
    assert!(
        store
            .claim_probe(&key.id, ts(10 + day), ts(10))
            .await
            .expect("a day later")
    );
    assert_eq!(
        store.probes().await.expect("probes"),
        vec![(key.id.clone(), ts(10 + day), None)]
    );
    assert!(store.purge_key(&key.id).await.expect("purge"));
    assert!(store.probes().await.expect("probes").is_empty());
}

async fn recent_calls_count_upstream_failures_and_health_states_change_once(store: Arc<dyn Store>) {
    use keyward_core::health::{CallStats, HealthState, HealthStatus, KeyCalls};
    let r = rng();
    let key = add(&store, &r, "openai", "production", "health", 1).await;
    let base = 1_764_028_800_000;
    let failed = |at, status, outcome| UsageRecord {
        status,
        latency_ms: 100,
        ..usage(at, Some(&key.id), None, outcome)
    };
    let cached = UsageRecord {
        cache: CacheOutcome::Hit,
        ..usage(base + 5, Some(&key.id), None, Outcome::Success)
    };
    store
        .record_usage(&[
            usage(base - 1, Some(&key.id), None, Outcome::UpstreamError),
            usage(base, Some(&key.id), None, Outcome::Success),
            failed(base + 1, 503, Outcome::UpstreamError),
            failed(base + 2, 0, Outcome::Failed),
            failed(base + 3, 401, Outcome::UpstreamError),
            failed(base + 4, 0, Outcome::Refused),
            cached,
            usage(base + 6, None, None, Outcome::Success),
        ])
        .await
        .expect("usage");
    assert_eq!(
        store.recent_calls(ts(base)).await.expect("calls"),
        vec![KeyCalls {
            key_id: key.id.clone(),
            service_id: "openai".into(),
            stats: CallStats {
                calls: 4,
                failures: 2,
                latency_ms_total: 12 + 100 * 3,
            },
        }],
        "refusals, cache hits and older calls are not counted; 401 is not a failure"
    );

    let subject = format!("key:{}", key.id);
    let state = |status, since| HealthState {
        subject: subject.clone(),
        status,
        disruption: false,
        since: ts(since),
    };
    assert!(
        store
            .set_health_state(&state(HealthStatus::Healthy, 1), None)
            .await
            .expect("first")
    );
    assert!(
        !store
            .set_health_state(&state(HealthStatus::Down, 2), None)
            .await
            .expect("a second first"),
        "already recorded"
    );
    let expected = Some((HealthStatus::Healthy, false));
    assert!(
        store
            .set_health_state(&state(HealthStatus::Down, 3), expected)
            .await
            .expect("change")
    );
    assert!(
        !store
            .set_health_state(&state(HealthStatus::Degraded, 4), expected)
            .await
            .expect("stale"),
        "another instance announced the change first"
    );
    assert_eq!(
        store.health_states().await.expect("states"),
        vec![state(HealthStatus::Down, 3)]
    );
    assert!(store.purge_key(&key.id).await.expect("purge"));
    assert!(store.health_states().await.expect("states").is_empty());
}

async fn notifications_queue_once_and_lease_to_one_instance(store: Arc<dyn Store>) {
    use keyward_core::id::{DeliveryId, WebhookId};
    use keyward_core::notification::{Delivery, DeliveryStatus, NotificationKind, Webhook};
    let r = rng();
    let hook = Webhook {
        id: WebhookId::generate(ts(1), &r),
        url: "https://hooks.example.com/k".into(),
        owner: None,
        kinds: vec![NotificationKind::KeyRevoked],
        categories: vec!["llm-providers".into()],
        allow_private_network: true,
        created_by: "ada".into(),
        created_at: ts(1),
    };
    store.insert_webhook(&hook).await.expect("insert");
    assert_eq!(store.webhooks().await.expect("list"), vec![hook.clone()]);

    // A person's subscription: one per owner, replaced as a whole.
    let ada: UserId = UserId::generate(ts(1), &r);
    let mine = |n: i64, address: &str| Webhook {
        id: WebhookId::generate(ts(n), &r),
        url: format!("mailto:{address}"),
        owner: Some(ada.clone()),
        kinds: vec![],
        categories: vec![],
        allow_private_network: false,
        created_by: "ada".into(),
        created_at: ts(n),
    };
    let first = mine(2, "ada@example.com");
    store.put_subscription(&first).await.expect("subscribe");
    let second = mine(3, "ada@example.org");
    store.put_subscription(&second).await.expect("replace");
    assert_eq!(
        store.webhooks().await.expect("list"),
        vec![hook.clone(), second.clone()]
    );
    let duplicate = Webhook {
        id: WebhookId::generate(ts(4), &r),
        ..second.clone()
    };
    assert!(
        store.insert_webhook(&duplicate).await.is_err(),
        "one subscription per owner"
    );
    assert!(store.delete_webhook(&second.id).await.expect("delete"));
    let delivery = |dedupe: &str, at: i64| {
        Delivery::new(
            DeliveryId::generate(ts(at), &r),
            hook.id.clone(),
            NotificationKind::KeyRevoked,
            dedupe.into(),
            "{\"kind\":\"key_revoked\"}".into(),
            ts(at),
        )
    };
    let first = delivery("key_revoked:key_a", 10);
    let queued = store
        .enqueue_deliveries(&[
            first.clone(),
            delivery("key_revoked:key_a", 11),
            delivery("key_revoked:key_b", 12),
        ])
        .await
        .expect("enqueue");
    assert_eq!(queued, 2, "the same event is queued once per webhook");
    assert_eq!(
        store
            .enqueue_deliveries(&[delivery("key_revoked:key_a", 13)])
            .await
            .expect("again"),
        0
    );

    let claimed = store
        .claim_due_deliveries(ts(20), ts(50), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    assert!(
        store
            .claim_due_deliveries(ts(21), ts(50), 10)
            .await
            .expect("claim")
            .is_empty(),
        "leased"
    );
    let retried = claimed[0].after_attempt(Ok(503), ts(22));
    store.save_delivery(&retried).await.expect("save");
    // Released, but not due until its backoff has passed.
    assert!(
        store
            .claim_due_deliveries(ts(23), ts(60), 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let again = store
        .claim_due_deliveries(ts(22 + 10_000), ts(99_000), 10)
        .await
        .expect("claim");
    // Both are due now: the retried one, and the other whose lease has lapsed.
    assert_eq!(again.len(), 2, "{again:?}");
    let again: Vec<_> = again.into_iter().filter(|d| d.id == retried.id).collect();
    assert_eq!(again[0].attempts, 1);
    let delivered = again[0].after_attempt(Ok(200), ts(10_030));
    store.save_delivery(&delivered).await.expect("save");
    let log = store.deliveries(&hook.id, 10).await.expect("log");
    let stored = log
        .iter()
        .find(|d| d.id == delivered.id)
        .expect("in the log");
    assert_eq!(
        (stored.attempts, stored.status, stored.last_status),
        (2, DeliveryStatus::Delivered, Some(200))
    );
    assert_eq!(stored, &delivered);
    // Delivered ones are never claimed again; a lapsed lease is.
    let lapsed = store
        .claim_due_deliveries(ts(99_001), ts(99_100), 10)
        .await
        .expect("claim");
    assert_eq!(lapsed.len(), 1);
    assert_ne!(lapsed[0].id, delivered.id);
    assert!(store.delete_webhook(&hook.id).await.expect("delete"));
    assert!(
        store
            .deliveries(&hook.id, 10)
            .await
            .expect("log")
            .is_empty()
    );
    assert!(!store.delete_webhook(&hook.id).await.expect("delete"));
}

macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::TestDatabase::sqlite();
                    super::$case(db.store().await).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(db) = super::TestDatabase::postgres().await else { return };
                    let store = db.store().await;
                    super::$case(store.clone()).await;
                    store.close().await;
                }
            )+
        }
    };
}

/// Cases that also need the database itself (to tamper with it behind the store's back).
macro_rules! conformance_with_db {
    ($($case:ident),+ $(,)?) => {
        mod sqlite_raw {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::TestDatabase::sqlite();
                    super::$case(&db, db.store().await).await;
                }
            )+
        }
        mod postgres_raw {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(db) = super::TestDatabase::postgres().await else { return };
                    let store = db.store().await;
                    super::$case(&db, store.clone()).await;
                    store.close().await;
                }
            )+
        }
    };
}

conformance_with_db!(audit_tampering_is_found);

conformance!(
    probes_are_claimed_once_per_interval,
    recent_calls_count_upstream_failures_and_health_states_change_once,
    notifications_queue_once_and_lease_to_one_instance,
    guided_rotations_step_by_compare_and_set,
    audit_appends_are_numbered_chained_and_filtered,
    sessions_round_trip_touch_forward_and_end,
    mfa_steps_and_recovery_codes_are_used_once,
    custom_roles_grants_networks_and_token_revocation,
    approvals_round_trip_and_change_by_compare_and_set,
    migrations_are_idempotent,
    keys_round_trip_with_their_first_version,
    batch_inserts_are_all_or_nothing,
    aliases_are_unique_per_service_and_environment_among_live_keys,
    listings_filter_and_paginate,
    live_keys_come_with_their_current_version,
    key_use_only_moves_forward_and_survives_metadata_updates,
    the_change_marker_moves_with_every_change_the_proxy_cares_about,
    updates_are_optimistic,
    revocations_round_trip_and_listings_see_them,
    new_current_versions_demote_older_ones,
    purging_destroys_keys_and_versions,
    catalog_labels_services_and_overrides,
    tokens_and_users,
    app_tokens_round_trip_and_revoke_once,
    master_keys_rewrap_and_retire,
    key_flags_and_pool_strategies,
    usage_is_recorded_summed_and_queried,
);

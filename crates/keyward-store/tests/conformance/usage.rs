//! Pools, flags and usage: records, sums and queries.

use super::*;

async fn key_flags_and_pool_strategies(store: Arc<dyn Store>) {
    let r = rng();
    let a = add(&store, &r, "alpha-vantage", "production", "a", 1_000).await;
    let b = add(&store, &r, "alpha-vantage", "production", "b", 2_000).await;
    let before = store.change_number().await.expect("change number");
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
    let marked = store.change_number().await.expect("change number");
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
    let before = store.change_number().await.expect("change number");
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
    assert_ne!(before, store.change_number().await.expect("change number"));
}

async fn usage_is_recorded_summed_and_queried(store: Arc<dyn Store>) {
    let r = rng();
    let key = KeyId::generate(ts(1), &r);
    let token = AppTokenId::generate(ts(1), &r);
    const HOUR: i64 = 3_600_000;
    let base = 1_764_028_800_000; // 2025-11-25T00:00:00Z
    let records = [
        UsageRecord {
            unpriced: true,
            source: Some("203.0.113.40".parse().expect("ip")),
            answer: Some(keyward_core::answer::AnswerClass::Success),
            latency_ms: 180,
            ..usage(base + 1_000, Some(&key), Some(&token), Outcome::Success)
        },
        UsageRecord {
            answer: Some(keyward_core::answer::AnswerClass::Rejected),
            ..usage(
                base + 61_000,
                Some(&key),
                Some(&token),
                Outcome::UpstreamError,
            )
        },
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
    let mut latency = keyward_core::usage::LatencyHistogram::default();
    latency.add(180);
    latency.add(12);
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
            unpriced: 1,
            rejected: 1,
            throttled: 0,
            outages: 0,
            saved_credits: 0,
            cache_misses: 0,
            latency_ms_sum: 192,
            latency,
        },
        "cache-write tokens count as input in the hourly sums; latency merges as a histogram"
    );
    assert_eq!(
        minutes
            .iter()
            .map(|b| b.totals.unpriced)
            .collect::<Vec<_>>(),
        vec![1, 0, 0],
        "unpriced calls are counted by minute too"
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
    // The key-level rows (a key's own sums) and the full rows (here narrowed by model, which
    // every call of the key has) hold the same figures, measure for measure.
    for granularity in [Granularity::Minute, Granularity::Hour, Granularity::Month] {
        let mut by_model = query(granularity, Some(&key));
        by_model.model = Some("gpt-5.4-mini".into());
        assert_eq!(
            store
                .usage(&query(granularity, Some(&key)))
                .await
                .expect("key level"),
            store.usage(&by_model).await.expect("full rows"),
            "{granularity:?}"
        );
    }

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

    // Week and month buckets: 2025-11-25 is a Tuesday, in the week from Monday the 24th.
    for (granularity, start) in [
        (Granularity::Week, "2025-11-24T00:00:00Z"),
        (Granularity::Month, "2025-11-01T00:00:00Z"),
    ] {
        let long = store
            .usage(&query(granularity, None))
            .await
            .expect("long buckets");
        assert_eq!(long.len(), 1, "{granularity:?}");
        assert_eq!(long[0].start.to_string(), start);
        assert_eq!(long[0].totals.requests, 4);
    }
    // The other dimensions: the first call's network, every call's model and environment.
    let by_network = store
        .usage_grouped(&query(Granularity::Day, None), UsageGrouping::Network)
        .await
        .expect("by network");
    assert_eq!(
        by_network
            .iter()
            .map(|(n, b)| (n.as_str(), b.totals.requests))
            .collect::<Vec<_>>(),
        vec![("203.0.113.0/24", 1)]
    );
    let by_model = store
        .usage_grouped(&query(Granularity::Day, None), UsageGrouping::Model)
        .await
        .expect("by model");
    assert_eq!(by_model.len(), 1);
    assert_eq!(by_model[0].0, "gpt-5.4-mini");
    let mut narrowed = query(Granularity::Hour, None);
    narrowed.environment = Some("staging".into());
    assert!(store.usage(&narrowed).await.expect("staging").is_empty());
    narrowed.environment = Some("production".into());
    narrowed.network = Some("203.0.113.0/24".into());
    assert_eq!(
        store.usage(&narrowed).await.expect("network")[0]
            .totals
            .requests,
        1
    );

    assert_eq!(
        store
            .prune_usage(ts(base + HOUR), ts(base + HOUR), None)
            .await
            .expect("prune"),
        (2, 0)
    );
    let minutes = store
        .usage(&query(Granularity::Minute, None))
        .await
        .expect("minutes");
    assert_eq!(minutes.len(), 1, "pruning removes old minute rollups");
    let hours = store
        .usage(&query(Granularity::Hour, None))
        .await
        .expect("hours");
    assert_eq!(hours.len(), 2, "hourly rollups outlive the records");

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

    // Split by key: the refusal without a key is left out; by service it counts. (Minute
    // rollups were pruned above before the second hour.)
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
        // The headline figures are the same sums, row for row.
        let headlines = store
            .usage_headlines(&query(granularity, None), UsageGrouping::Key)
            .await
            .expect("headlines by key");
        assert_eq!(
            headlines
                .iter()
                .map(|(id, h)| (
                    id.clone(),
                    h.start,
                    h.requests,
                    h.errors,
                    h.cost_nanos,
                    h.unpriced
                ))
                .collect::<Vec<_>>(),
            by_key
                .iter()
                .map(|(id, b)| {
                    let t = b.totals;
                    (
                        id.clone(),
                        b.start,
                        t.requests,
                        t.errors,
                        t.cost_nanos,
                        t.unpriced,
                    )
                })
                .collect::<Vec<_>>(),
            "{granularity:?}"
        );
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

conformance!(
    key_flags_and_pool_strategies,
    usage_is_recorded_summed_and_queried,
);

/// Migration 0018 turns `usage_hourly` into hour/day/week/month rollups and the last eight
/// days of records into minute rollups: replayed here against a recreated old table.
async fn hourly_sums_and_recent_records_become_rollups(db: &TestDatabase, store: Arc<dyn Store>) {
    let migration = match db {
        TestDatabase::Sqlite { .. } => {
            include_str!("../../migrations/sqlite/0018_usage_rollups.sql")
        }
        TestDatabase::Postgres { .. } => {
            include_str!("../../migrations/postgres/0018_usage_rollups.sql")
        }
    };
    let (_, backfill) = migration
        .split_once("CREATE INDEX usage_rollups_token ON usage_rollups (token_id, grain, bucket);")
        .expect("the migration creates the table, then backfills");
    let base = 1_764_028_800_000_i64; // 2025-11-25T00:00:00Z, a Tuesday
    db.execute_raw(&format!(
        "CREATE TABLE usage_hourly (hour BIGINT NOT NULL, service_id TEXT NOT NULL, key_id TEXT NOT NULL, \
         token_id TEXT NOT NULL, requests BIGINT NOT NULL, errors BIGINT NOT NULL, cache_hits BIGINT NOT NULL, \
         input_tokens BIGINT NOT NULL, cached_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, \
         credits BIGINT NOT NULL, cost_nanos BIGINT NOT NULL, unpriced INTEGER NOT NULL DEFAULT 0); \
         INSERT INTO usage_hourly VALUES ({a}, 'openai', 'key_a', '', 3, 1, 0, 10, 0, 5, 3, 900, 1); \
         INSERT INTO usage_hourly VALUES ({b}, 'openai', 'key_a', '', 2, 0, 1, 10, 0, 5, 2, 100, 0); \
         INSERT INTO usage_records (at, token_id, key_id, service_id, environment, method, endpoint, status, outcome, \
         error_code, latency_ms, request_bytes, response_bytes, cache, retries, model, input_tokens, cached_tokens, \
         cache_write_tokens, output_tokens, credits, cost_nanos, answer, unpriced) VALUES \
         ({b}, NULL, 'key_a', 'openai', 'production', 'POST', '/v1/chat', 401, 'upstream_error', NULL, 70, 1, 1, \
         'none', 0, 'gpt-4o', 1, 0, 0, 0, 1, 0, 'rejected', 0)",
        a = base + 3_600_000,
        b = base + 8 * 86_400_000,
    ))
    .await;
    db.execute_raw(backfill).await;
    // Then 0023's: the key-level rollups from the full ones (what unfiltered sums read).
    let key_level = match db {
        TestDatabase::Sqlite { .. } => {
            include_str!("../../migrations/sqlite/0023_usage_key_rollups.sql")
        }
        TestDatabase::Postgres { .. } => {
            include_str!("../../migrations/postgres/0023_usage_key_rollups.sql")
        }
    };
    let (_, key_backfill) = key_level
        .split_once(
            "CREATE INDEX usage_key_rollups_key ON usage_key_rollups (key_id, grain, bucket);",
        )
        .expect("the migration creates the table, then backfills");
    db.execute_raw(key_backfill).await;
    let query = |g| {
        UsageQuery::new(
            ts(base - 86_400_000 * 40),
            ts(base + 86_400_000 * 40),
            g,
            None,
            None,
            None,
        )
        .expect("query")
    };
    let sums = |buckets: Vec<keyward_core::usage::UsageBucket>| {
        buckets
            .iter()
            .map(|b| (b.start.to_string(), b.totals.requests, b.totals.cost_nanos))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        sums(store.usage(&query(Granularity::Week)).await.expect("weeks")),
        vec![
            ("2025-11-24T00:00:00Z".to_owned(), 3, 900),
            ("2025-12-01T00:00:00Z".to_owned(), 2, 100)
        ]
    );
    assert_eq!(
        sums(
            store
                .usage(&query(Granularity::Month))
                .await
                .expect("months")
        ),
        vec![
            ("2025-11-01T00:00:00Z".to_owned(), 3, 900),
            ("2025-12-01T00:00:00Z".to_owned(), 2, 100)
        ]
    );
    let hours = store
        .usage(
            &UsageQuery::new(
                ts(base),
                ts(base + 9 * 86_400_000),
                Granularity::Hour,
                None,
                None,
                None,
            )
            .expect("query"),
        )
        .await
        .expect("hours");
    assert_eq!(hours.len(), 2);
    let recent = store
        .usage(
            &UsageQuery::new(
                ts(base + 8 * 86_400_000),
                ts(base + 8 * 86_400_000 + 60_000),
                Granularity::Minute,
                None,
                None,
                None,
            )
            .expect("query"),
        )
        .await
        .expect("minutes");
    assert_eq!(recent.len(), 1, "the recent record became a minute rollup");
    assert_eq!(
        (recent[0].totals.rejected, recent[0].totals.latency.count()),
        (1, 1)
    );
}

conformance_with_db!(hourly_sums_and_recent_records_become_rollups);

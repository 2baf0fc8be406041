//! Probes claimed once, call counts and health states.

use super::*;

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
    use keyward_core::answer::AnswerClass;
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
            UsageRecord {
                answer: Some(AnswerClass::Unclassified),
                ..failed(base + 7, 418, Outcome::UpstreamError)
            },
            UsageRecord {
                answer: Some(AnswerClass::Outage),
                ..failed(base + 8, 200, Outcome::SoftError)
            },
            UsageRecord {
                answer: Some(AnswerClass::Failed),
                ..failed(base + 9, 503, Outcome::UpstreamError)
            },
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
                calls: 7,
                failures: 3,
                unclassified: 1,
                latency_ms_total: 12 + 100 * 6,
            },
        }],
        "refusals, cache hits and older calls are not counted; 401 is not a failure; \
         an outage the rules found counts whatever its status, a 503 the rules call failed does not"
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

conformance!(
    probes_are_claimed_once_per_interval,
    recent_calls_count_upstream_failures_and_health_states_change_once,
);

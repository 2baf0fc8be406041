//! Guided rotations stepped by compare-and-set.

use super::*;

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

    let marker = store.change_number().await.expect("change number");
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
        store.change_number().await.expect("change number"),
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

conformance!(guided_rotations_step_by_compare_and_set,);

//! Master-key records: rewrap and retire.

use super::*;

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

async fn instances_report_refresh_list_and_are_forgotten(store: Arc<dyn Store>) {
    use keyward_core::master_key::InstanceReport;
    let report = |id: &str, current: &str, seen: i64| InstanceReport {
        id: id.into(),
        current_kek: current.into(),
        keks: vec!["kek_a".into(), "kek_b".into()],
        version: "0.1.0".into(),
        started_at: ts(1),
        seen_at: ts(seen),
    };
    store
        .report_instance(&report("one", "kek_a", 100))
        .await
        .expect("report");
    store
        .report_instance(&report("two", "kek_a", 200))
        .await
        .expect("report");
    // A later report replaces the earlier one (the start time stays).
    store
        .report_instance(&report("one", "kek_b", 300))
        .await
        .expect("report");
    let live = store.instances_seen_since(ts(150)).await.expect("list");
    assert_eq!(live.len(), 2);
    assert_eq!(live[0].id, "one");
    assert_eq!(live[0].current_kek, "kek_b");
    assert_eq!(live[0].keks, ["kek_a", "kek_b"]);
    assert_eq!(live[1].id, "two");
    assert_eq!(
        store
            .instances_seen_since(ts(250))
            .await
            .expect("list")
            .len(),
        1
    );
    store.forget_instance("one", ts(0)).await.expect("forget");
    let left = store.instances_seen_since(ts(0)).await.expect("list");
    assert_eq!(
        left.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["two"]
    );
    // Reports older than the horizon go with any forget.
    store
        .forget_instance("nobody", ts(250))
        .await
        .expect("forget");
    assert!(
        store
            .instances_seen_since(ts(0))
            .await
            .expect("list")
            .is_empty()
    );
}

conformance!(
    master_keys_rewrap_and_retire,
    instances_report_refresh_list_and_are_forgotten,
);

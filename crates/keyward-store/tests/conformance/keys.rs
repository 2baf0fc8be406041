//! Keys and versions: migrations, round trips, uniqueness, batches, listings, the change number, optimistic updates, revocation, purge.

use super::*;

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

async fn the_change_number_grows_with_every_change_the_proxy_cares_about(store: Arc<dyn Store>) {
    use keyward_core::app_token::AppToken;
    use keyward_core::id::AppTokenId;
    let r = rng();
    let mut last = store.change_number().await.expect("change number");
    let mut expect_change = |what: &str, number: i64| {
        assert!(
            number > last,
            "{what} did not move the change number past {last}: {number}"
        );
        last = number;
    };
    let key = add(&store, &r, "openai", "production", "a", 1).await;
    expect_change(
        "insert",
        store.change_number().await.expect("change number"),
    );
    let mut disabled = key.clone();
    disabled.enabled = false;
    disabled.updated_at = ts(2);
    store
        .update_key(&disabled, key.updated_at)
        .await
        .expect("update");
    expect_change(
        "update",
        store.change_number().await.expect("change number"),
    );
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
        store.change_number().await.expect("change number"),
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
    expect_change(
        "app token",
        store.change_number().await.expect("change number"),
    );
    store
        .revoke_app_token(&token.id, ts(5))
        .await
        .expect("revoke");
    expect_change(
        "revocation",
        store.change_number().await.expect("change number"),
    );
    store
        .set_base_url_override("openai", Some("http://127.0.0.1:1"), ts(6))
        .await
        .expect("override");
    expect_change(
        "override",
        store.change_number().await.expect("change number"),
    );
    store
        .set_base_url_override("openai", Some("http://127.0.0.1:2"), ts(7))
        .await
        .expect("override");
    expect_change(
        "override change",
        store.change_number().await.expect("change number"),
    );
    store.purge_key(&key.id).await.expect("purge");
    expect_change("purge", store.change_number().await.expect("change number"));
    store
        .record_app_token_use(&[(token.id.clone(), ts(8))])
        .await
        .expect("token use");
    let same = store.change_number().await.expect("change number");
    assert_eq!(
        same, last,
        "no change (a token's last use is none), same number"
    );
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
    let marker = store.change_number().await.expect("change number");
    store
        .record_key_use(&[(key.id.clone(), ts(300))])
        .await
        .expect("use");
    assert_eq!(
        store.change_number().await.expect("change number"),
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
        check: Some(keyward_core::key::RevocationCheck {
            outcome: keyward_core::key::RevocationOutcome::StillLive,
            status: Some(200),
            at: ts(5),
        }),
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

conformance!(
    migrations_are_idempotent,
    keys_round_trip_with_their_first_version,
    aliases_are_unique_per_service_and_environment_among_live_keys,
    batch_inserts_are_all_or_nothing,
    listings_filter_and_paginate,
    live_keys_come_with_their_current_version,
    the_change_number_grows_with_every_change_the_proxy_cares_about,
    key_use_only_moves_forward_and_survives_metadata_updates,
    updates_are_optimistic,
    revocations_round_trip_and_listings_see_them,
    new_current_versions_demote_older_ones,
    purging_destroys_keys_and_versions,
);

/// PostgreSQL announces each commit that moves the change number (none for a last-use
/// stamp) and says when its listener lost the connection; SQLite has no listener.
async fn a_listener_hears_every_change_and_says_when_its_connection_was_lost(
    db: &TestDatabase,
    store: Arc<dyn Store>,
) {
    use keyward_core::ports::ChangeSignal;
    use std::time::Duration;
    let Some(mut listener) = store.change_listener().await.expect("listener") else {
        assert_eq!(store.backend(), "sqlite", "only SQLite polls");
        return;
    };
    let r = rng();
    let before = store.change_number().await.expect("change number");
    let key = add(&store, &r, "openai", "production", "a", 1).await;
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.next())
        .await
        .expect("announced within 5 s")
        .expect("signal");
    assert_eq!(heard, ChangeSignal::Changed);
    // A key and its first version in one transaction: one step.
    assert_eq!(store.change_number().await.expect("number"), before + 1);
    store
        .record_key_use(&[(key.id.clone(), ts(50))])
        .await
        .expect("use");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.next())
            .await
            .is_err(),
        "a last-use stamp is not announced"
    );
    db.execute_raw(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .await;
    let lost = tokio::time::timeout(Duration::from_secs(5), listener.next())
        .await
        .expect("the loss is noticed")
        .expect("signal");
    assert_eq!(lost, ChangeSignal::Lost);
    // Listening again, on a new connection: the next change is heard.
    let mut disabled = key.clone();
    disabled.enabled = false;
    disabled.updated_at = ts(2);
    let wait =
        tokio::spawn(
            async move { tokio::time::timeout(Duration::from_secs(5), listener.next()).await },
        );
    // The listener reconnects inside `next`; give it the moment it needs before the change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    store
        .update_key(&disabled, key.updated_at)
        .await
        .expect("update");
    let heard = wait
        .await
        .expect("task")
        .expect("announced after reconnecting")
        .expect("signal");
    assert_eq!(heard, ChangeSignal::Changed);
    assert_eq!(store.change_number().await.expect("number"), before + 2);
}

conformance_with_db!(a_listener_hears_every_change_and_says_when_its_connection_was_lost);

//! Sessions: round trip, touch, end.

use super::*;

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

conformance!(sessions_round_trip_touch_forward_and_end,);

//! Management tokens, users and app tokens.

use super::*;

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

conformance!(tokens_and_users, app_tokens_round_trip_and_revoke_once,);

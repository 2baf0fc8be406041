//! TOTP steps and recovery codes, each used once.

use super::*;

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

conformance!(mfa_steps_and_recovery_codes_are_used_once,);

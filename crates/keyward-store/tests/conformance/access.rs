//! Custom roles, grants, networks and token revocation.

use super::*;

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

conformance!(custom_roles_grants_networks_and_token_revocation,);

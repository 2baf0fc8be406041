//! Categories, environments, custom services and base-URL overrides.

use super::*;

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

conformance!(catalog_labels_services_and_overrides,);

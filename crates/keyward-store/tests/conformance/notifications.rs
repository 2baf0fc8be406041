//! Notification deliveries queued once and leased to one instance.

use super::*;

async fn notifications_queue_once_and_lease_to_one_instance(store: Arc<dyn Store>) {
    use keyward_core::id::{DeliveryId, WebhookId};
    use keyward_core::notification::{Delivery, DeliveryStatus, NotificationKind, Webhook};
    let r = rng();
    let hook = Webhook {
        id: WebhookId::generate(ts(1), &r),
        url: "https://hooks.example.com/k".into(),
        owner: None,
        kinds: vec![NotificationKind::KeyRevoked],
        categories: vec!["llm-providers".into()],
        allow_private_network: true,
        created_by: "ada".into(),
        created_at: ts(1),
    };
    store.insert_webhook(&hook).await.expect("insert");
    assert_eq!(store.webhooks().await.expect("list"), vec![hook.clone()]);

    // A person's subscription: one per owner, replaced as a whole.
    let ada: UserId = UserId::generate(ts(1), &r);
    let mine = |n: i64, address: &str| Webhook {
        id: WebhookId::generate(ts(n), &r),
        url: format!("mailto:{address}"),
        owner: Some(ada.clone()),
        kinds: vec![],
        categories: vec![],
        allow_private_network: false,
        created_by: "ada".into(),
        created_at: ts(n),
    };
    let first = mine(2, "ada@example.com");
    store.put_subscription(&first).await.expect("subscribe");
    let second = mine(3, "ada@example.org");
    store.put_subscription(&second).await.expect("replace");
    assert_eq!(
        store.webhooks().await.expect("list"),
        vec![hook.clone(), second.clone()]
    );
    let duplicate = Webhook {
        id: WebhookId::generate(ts(4), &r),
        ..second.clone()
    };
    assert!(
        store.insert_webhook(&duplicate).await.is_err(),
        "one subscription per owner"
    );
    assert!(store.delete_webhook(&second.id).await.expect("delete"));
    let delivery = |dedupe: &str, at: i64| {
        Delivery::new(
            DeliveryId::generate(ts(at), &r),
            hook.id.clone(),
            NotificationKind::KeyRevoked,
            dedupe.into(),
            "{\"kind\":\"key_revoked\"}".into(),
            ts(at),
        )
    };
    let first = delivery("key_revoked:key_a", 10);
    let queued = store
        .enqueue_deliveries(&[
            first.clone(),
            delivery("key_revoked:key_a", 11),
            delivery("key_revoked:key_b", 12),
        ])
        .await
        .expect("enqueue");
    assert_eq!(queued, 2, "the same event is queued once per webhook");
    assert_eq!(
        store
            .enqueue_deliveries(&[delivery("key_revoked:key_a", 13)])
            .await
            .expect("again"),
        0
    );

    let claimed = store
        .claim_due_deliveries(ts(20), ts(50), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    assert!(
        store
            .claim_due_deliveries(ts(21), ts(50), 10)
            .await
            .expect("claim")
            .is_empty(),
        "leased"
    );
    let retried = claimed[0].after_attempt(Ok(503), ts(22));
    store.save_delivery(&retried).await.expect("save");
    // Released, but not due until its backoff has passed.
    assert!(
        store
            .claim_due_deliveries(ts(23), ts(60), 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let again = store
        .claim_due_deliveries(ts(22 + 10_000), ts(99_000), 10)
        .await
        .expect("claim");
    // Both are due now: the retried one, and the other whose lease has lapsed.
    assert_eq!(again.len(), 2, "{again:?}");
    let again: Vec<_> = again.into_iter().filter(|d| d.id == retried.id).collect();
    assert_eq!(again[0].attempts, 1);
    let delivered = again[0].after_attempt(Ok(200), ts(10_030));
    store.save_delivery(&delivered).await.expect("save");
    let log = store.deliveries(&hook.id, 10).await.expect("log");
    let stored = log
        .iter()
        .find(|d| d.id == delivered.id)
        .expect("in the log");
    assert_eq!(
        (stored.attempts, stored.status, stored.last_status),
        (2, DeliveryStatus::Delivered, Some(200))
    );
    assert_eq!(stored, &delivered);
    // Delivered ones are never claimed again; a lapsed lease is.
    let lapsed = store
        .claim_due_deliveries(ts(99_001), ts(99_100), 10)
        .await
        .expect("claim");
    assert_eq!(lapsed.len(), 1);
    assert_ne!(lapsed[0].id, delivered.id);
    // Retention: finished deliveries go once old enough; a pending one stays at any age.
    assert_eq!(store.prune_deliveries(ts(10_030)).await.expect("prune"), 0);
    assert_eq!(store.prune_deliveries(ts(10_031)).await.expect("prune"), 1);
    let log = store.deliveries(&hook.id, 10).await.expect("log");
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].status, DeliveryStatus::Pending);
    assert!(store.delete_webhook(&hook.id).await.expect("delete"));
    assert!(
        store
            .deliveries(&hook.id, 10)
            .await
            .expect("log")
            .is_empty()
    );
    assert!(!store.delete_webhook(&hook.id).await.expect("delete"));
}

conformance!(notifications_queue_once_and_lease_to_one_instance,);

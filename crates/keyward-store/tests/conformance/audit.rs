//! The audit chain: appends, filters, tampering found.

use super::*;

fn audit_entry(n: u64) -> AuditDraft {
    AuditDraft {
        at: ts(1_764_000_000_000 + i64::try_from(n).unwrap_or(0)),
        actor_kind: if n.is_multiple_of(2) {
            ActorKind::User
        } else {
            ActorKind::Token
        },
        actor_id: format!("actor{}", n % 3),
        actor_name: format!("name{}", n % 3),
        source: Some("192.0.2.7".into()),
        action: if n.is_multiple_of(2) {
            "key.update".into()
        } else {
            "key.create".into()
        },
        target: Some(format!("key:k{}", n % 4)),
        outcome: AuditOutcome::Success,
        details: format!("{{\"n\":{n}}}"),
    }
}

async fn verify_stored(store: &dyn Store) -> VerifyReport {
    let mut verifier = ChainVerifier::new([]);
    let mut after = 0;
    loop {
        let page = store
            .audit_events(&AuditFilter {
                after_seq: Some(after),
                limit: 4,
                ..AuditFilter::default()
            })
            .await
            .expect("read");
        let Some(last) = page.last() else { break };
        after = last.seq;
        page.iter().for_each(|e| verifier.push(e));
    }
    let head = store.audit_head().await.expect("head").map_or(0, |h| h.0);
    verifier.finish(head)
}

async fn audit_appends_are_numbered_chained_and_filtered(store: Arc<dyn Store>) {
    assert_eq!(store.audit_head().await.expect("head"), None);
    // Concurrent appends get distinct, gap-free numbers and one valid chain.
    let tasks: Vec<_> = (1..=24)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.append_audit(&audit_entry(n)).await })
        })
        .collect();
    let mut seqs = BTreeSet::new();
    for task in tasks {
        seqs.insert(task.await.expect("join").expect("append").seq);
    }
    assert_eq!(seqs, (1..=24).collect());
    let report = verify_stored(store.as_ref()).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.last_seq, 24);
    let head = store.audit_head().await.expect("head").expect("some");
    assert_eq!(head.0, 24);

    let all = AuditFilter {
        limit: 100,
        ..AuditFilter::default()
    };
    let by_action = store
        .audit_events(&AuditFilter {
            action: Some("key.create".into()),
            ..all.clone()
        })
        .await
        .expect("filter");
    assert_eq!(by_action.len(), 12);
    let by_prefix = store
        .audit_events(&AuditFilter {
            action: Some("key".into()),
            ..all.clone()
        })
        .await
        .expect("filter");
    assert_eq!(by_prefix.len(), 24);
    let by_target_and_actor = store
        .audit_events(&AuditFilter {
            target: Some("key:k1".into()),
            actor: Some("name1".into()),
            ..all.clone()
        })
        .await
        .expect("filter");
    assert!(
        by_target_and_actor
            .iter()
            .all(|e| e.entry.target.as_deref() == Some("key:k1") && e.entry.actor_name == "name1")
    );
    assert!(!by_target_and_actor.is_empty());
    let window = store
        .audit_events(&AuditFilter {
            from: Some(ts(1_764_000_000_005)),
            until: Some(ts(1_764_000_000_010)),
            ..all.clone()
        })
        .await
        .expect("filter");
    assert_eq!(window.len(), 5);
    // What was stored is returned byte for byte (the hash covers it).
    let first = store
        .audit_events(&AuditFilter {
            limit: 1,
            ..AuditFilter::default()
        })
        .await
        .expect("first");
    assert_eq!(first[0].seq, 1);
    assert!(first[0].entry.details.starts_with("{\"n\":"));
    assert_eq!(
        store
            .audit_action_counts("key.create")
            .await
            .expect("counts"),
        vec![
            ("key:k1".to_owned(), 6, ts(1_764_000_000_021)),
            ("key:k3".to_owned(), 6, ts(1_764_000_000_023)),
        ]
    );
    assert!(
        store
            .audit_action_counts("key.reveal")
            .await
            .expect("none")
            .is_empty()
    );
}

/// Edits, reorderings, deletions and a cut tail made directly in the database are found, at
/// the right sequence number; a broken audit table refuses appends without moving the head.
async fn audit_tampering_is_found(db: &TestDatabase, store: Arc<dyn Store>) {
    for n in 1..=10 {
        store.append_audit(&audit_entry(n)).await.expect("append");
    }
    assert!(verify_stored(store.as_ref()).await.ok);
    let broken = |seq, kind| Some(ChainBreak { seq, kind });

    db.execute_raw("UPDATE audit_events SET actor_name = 'mallory' WHERE seq = 4")
        .await;
    assert_eq!(
        verify_stored(store.as_ref()).await.first_broken,
        broken(4, BreakKind::Altered)
    );
    db.execute_raw("UPDATE audit_events SET actor_name = 'name1' WHERE seq = 4")
        .await;
    assert!(verify_stored(store.as_ref()).await.ok, "edit undone");

    db.execute_raw("UPDATE audit_events SET details = '{\"n\":70}' WHERE seq = 7")
        .await;
    assert_eq!(
        verify_stored(store.as_ref()).await.first_broken,
        broken(7, BreakKind::Altered)
    );
    db.execute_raw("UPDATE audit_events SET details = '{\"n\":7}' WHERE seq = 7")
        .await;

    // Reordering: rows 2 and 8 swap places (and back).
    let swap = "UPDATE audit_events SET seq = 1000 WHERE seq = 2; \
                UPDATE audit_events SET seq = 2 WHERE seq = 8; \
                UPDATE audit_events SET seq = 8 WHERE seq = 1000";
    db.execute_raw(swap).await;
    assert_eq!(
        verify_stored(store.as_ref()).await.first_broken,
        broken(2, BreakKind::Altered)
    );
    db.execute_raw(swap).await;
    assert!(verify_stored(store.as_ref()).await.ok, "order restored");

    db.execute_raw("DELETE FROM audit_events WHERE seq = 10")
        .await;
    assert_eq!(
        verify_stored(store.as_ref()).await.first_broken,
        broken(10, BreakKind::Truncated)
    );
    db.execute_raw("DELETE FROM audit_events WHERE seq = 6")
        .await;
    assert_eq!(
        verify_stored(store.as_ref()).await.first_broken,
        broken(6, BreakKind::Missing)
    );

    db.execute_raw(db.break_audit_writes_sql()).await;
    let head = store.audit_head().await.expect("head");
    assert!(store.append_audit(&audit_entry(11)).await.is_err());
    assert_eq!(
        store.audit_head().await.expect("head"),
        head,
        "nothing moved"
    );
}

conformance!(audit_appends_are_numbered_chained_and_filtered,);

conformance_with_db!(audit_tampering_is_found);

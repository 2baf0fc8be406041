//! Approval requests changed by compare-and-set.

use super::*;

async fn approvals_round_trip_and_change_by_compare_and_set(store: Arc<dyn Store>) {
    use keyward_core::approval::{
        ApprovalAction, ApprovalRequest, ApprovalStatus, Operation, Participant, Requirement,
    };
    let r = rng();
    let requester = Participant {
        id: "usr_a".into(),
        name: "kim".into(),
        role: Role::KeyManager,
    };
    let open = |at: i64| {
        ApprovalRequest::open(
            ApprovalId::generate(ts(at), &r),
            Operation {
                action: ApprovalAction::Delete,
                target: "key:k".into(),
                payload: serde_json::json!({"version": 2}),
            },
            "cleanup".into(),
            requester.clone(),
            Requirement {
                approvals: 1,
                approver_roles: vec![Role::Admin],
            },
            ts(at),
            jiff::SignedDuration::from_hours(1),
        )
    };
    let first = open(1);
    let second = open(2);
    store.insert_approval(&first).await.expect("insert");
    store.insert_approval(&second).await.expect("insert");
    assert_eq!(
        store.approval(&first.id).await.expect("get"),
        Some(first.clone())
    );
    let mut approved = first.clone();
    approved
        .decide(
            Participant {
                id: "usr_b".into(),
                name: "ada".into(),
                role: Role::Admin,
            },
            true,
            "fine".into(),
            ts(3),
        )
        .expect("decide");
    assert!(store.update_approval(&approved, 0).await.expect("cas"));
    assert!(
        !store.update_approval(&approved, 0).await.expect("stale"),
        "a second writer from the same revision loses"
    );
    assert_eq!(
        store.approval(&first.id).await.expect("get"),
        Some(approved)
    );
    let pending = store
        .approvals(Some(ApprovalStatus::Pending), None, 10)
        .await
        .expect("list");
    assert_eq!(
        pending.iter().map(|a| &a.id).collect::<Vec<_>>(),
        [&second.id]
    );
    let mine = store
        .approvals(None, Some("usr_a"), 10)
        .await
        .expect("mine");
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0].id, second.id, "newest first");
    assert!(
        store
            .approvals(None, Some("usr_z"), 10)
            .await
            .expect("none")
            .is_empty()
    );
}

conformance!(approvals_round_trip_and_change_by_compare_and_set,);

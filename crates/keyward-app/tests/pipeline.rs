//! The change pipeline without HTTP: its steps run in their order (reach → step-up →
//! approval gate → audit entry → write → proxy refresh → notification), and a refusal at
//! any step comes before anything is written. On SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};

use keyward_app::approvals::ApprovalUse;
use keyward_app::pipeline::{Change, Notice, Subject};
use keyward_app::{Actor, App, NewKey};
use keyward_core::Error;
use keyward_core::access::{Permission, Role};
use keyward_core::approval::ApprovalAction;
use keyward_core::key::KeyDraftInput;
use keyward_core::mfa::MfaStanding;
use keyward_core::notification::NotificationKind;
use keyward_store::testing::TestDatabase;
use secrecy::SecretString;
use serde_json::json;
use support::{app_on, entries, person, require_one_approval};

/// A custom service the proxy knows only once its snapshot was rebuilt.
fn probe_service() -> keyward_core::service::ServiceDefinition {
    let mut service = keyward_core::catalog::builtin_services()
        .unwrap()
        .into_iter()
        .find(|s| s.id == "openai")
        .unwrap();
    service.id = "pipeline-probe".into();
    service.name = "Pipeline probe".into();
    service.builtin = false;
    service
}

async fn steps_run_in_order(db: TestDatabase) {
    let app = app_on(&db).await;
    // The test's own view of the database (the use cases keep theirs to themselves).
    let store = db.store().await;
    let owner = Actor::system("test");
    let (webhook, _) = app
        .create_webhook(
            &owner,
            "http://127.0.0.1:9/hook",
            vec![NotificationKind::KeyRevoked],
            Vec::new(),
            true,
        )
        .await
        .unwrap();
    let change = Change::new(
        "pipeline.test",
        Subject::vault("test:1"),
        Permission::CatalogWrite,
        json!({"why": "order"}),
    )
    .refreshes_proxy()
    .notifies(Notice {
        kind: NotificationKind::KeyRevoked,
        dedupe: "pipeline-test".into(),
        data: json!({}),
    });
    let wrote = AtomicBool::new(false);
    let write = async {
        // The audit entry is already there; the refresh and the notification are not.
        assert_eq!(
            entries(&app, "pipeline.test").await,
            1,
            "audit before write"
        );
        assert!(!app.proxy.knows_service("pipeline-probe"));
        assert!(store.deliveries(&webhook.id, 10).await?.is_empty());
        store
            .insert_custom_service(&probe_service(), app.now())
            .await?;
        wrote.store(true, Ordering::SeqCst);
        Ok::<_, Error>(())
    };
    app.apply(&owner, change, write).await.unwrap();
    assert!(wrote.load(Ordering::SeqCst));
    assert!(
        app.proxy.knows_service("pipeline-probe"),
        "the proxy sees the write before the caller hears of it"
    );
    assert_eq!(
        store.deliveries(&webhook.id, 10).await.unwrap().len(),
        1,
        "the notification is queued after the write"
    );
}

/// Runs a change that must be refused with `code` and checks that its write never ran and
/// its audit entry was never written.
async fn refused_before_writing(app: &App, actor: &Actor, change: Change, code: &str) {
    let action = change.action;
    let wrote = AtomicBool::new(false);
    let err = app
        .apply(actor, change, async {
            wrote.store(true, Ordering::SeqCst);
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, code, "{err:?}");
    assert!(!wrote.load(Ordering::SeqCst), "{code}: the write ran");
    assert_eq!(
        entries(app, action).await,
        0,
        "{code}: an entry was written"
    );
}

async fn each_refusal_comes_before_any_write(db: TestDatabase) {
    let app = app_on(&db).await;
    let access_change = || {
        Change::new(
            "pipeline.access",
            Subject::vault("policy:test"),
            Permission::AccessWrite,
            json!({}),
        )
        .access_change("policy:test", json!({"set": 1}))
    };
    // Reach: a viewer does not hold access_write.
    let viewer = person("vic", Role::Viewer, MfaStanding::Fresh);
    refused_before_writing(&app, &viewer, access_change(), "forbidden").await;
    // Step-up: an admin without a recent MFA check, and one who never enrolled.
    let stale = person("ada", Role::Admin, MfaStanding::Stale { enrolled: true });
    refused_before_writing(&app, &stale, access_change(), "step_up_required").await;
    let unenrolled = person("ada", Role::Admin, MfaStanding::Stale { enrolled: false });
    refused_before_writing(&app, &unenrolled, access_change(), "mfa_enrolment_required").await;
    // The approval gate: the policy covers access changes.
    require_one_approval(
        &app,
        &[ApprovalAction::AccessChange],
        &[Role::Owner, Role::Admin],
    )
    .await;
    let admin = person("ada", Role::Admin, MfaStanding::Fresh);
    refused_before_writing(&app, &admin, access_change(), "approval_required").await;
    let mut asking = admin.clone();
    asking.approval = Some(ApprovalUse::Request("needed for the test".into()));
    refused_before_writing(&app, &asking, access_change(), "approval_requested").await;
    // The audit entry: when it cannot be written, nothing is done (fail closed).
    db.execute_raw(db.break_audit_writes_sql()).await;
    let system = Actor::system("test");
    let wrote = AtomicBool::new(false);
    let result = app
        .apply(
            &system,
            Change::new(
                "pipeline.audit",
                Subject::vault("test:2"),
                Permission::CatalogWrite,
                json!({}),
            ),
            async {
                wrote.store(true, Ordering::SeqCst);
                Ok::<_, Error>(())
            },
        )
        .await;
    assert!(result.is_err());
    assert!(
        !wrote.load(Ordering::SeqCst),
        "wrote without an audit entry"
    );
}

async fn use_cases_refuse_a_missing_step_up_themselves(db: TestDatabase) {
    let app = app_on(&db).await;
    // The test's own view of the database (the use cases keep theirs to themselves).
    let store = db.store().await;
    let key = app
        .create_key(
            &Actor::system("test"),
            NewKey {
                draft: KeyDraftInput {
                    service_id: "openai".into(),
                    environment: "production".into(),
                    alias: "main".into(),
                    ..KeyDraftInput::default()
                },
                secret: SecretString::from(format!("sk-proj-{}", "a1B2c3D4".repeat(6))),
                force: false,
            },
        )
        .await
        .unwrap();
    let stale = person("kim", Role::Admin, MfaStanding::Stale { enrolled: true });
    let err = app
        .reveal_key(&stale, &key.id, None, "checking the value")
        .await
        .unwrap_err();
    assert_eq!(err.code, "step_up_required");
    assert_eq!(entries(&app, "key.reveal").await, 0);
    let err = app.delete_key(&stale, &key.id).await.unwrap_err();
    assert_eq!(err.code, "step_up_required");
    assert!(
        store
            .key(&key.id)
            .await
            .unwrap()
            .unwrap()
            .deleted_at
            .is_none()
    );
    // A token is bound by its role and scope instead; the CLI operator is not asked.
    let fresh = person("kim", Role::Admin, MfaStanding::Fresh);
    let (_, value) = app
        .reveal_key(&fresh, &key.id, None, "checking the value")
        .await
        .unwrap();
    assert!(secrecy::ExposeSecret::expose_secret(&value).starts_with("sk-proj-"));
}

both_backends!(
    steps_run_in_order,
    each_refusal_comes_before_any_write,
    use_cases_refuse_a_missing_step_up_themselves,
);

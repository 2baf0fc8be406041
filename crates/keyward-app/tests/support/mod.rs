//! What the use-case tests share: a fresh use-case layer per database, actors, audit
//! counts, and running a case on both backends.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use keyward_app::vault::MasterKeySource;
use keyward_app::{Actor, App, AppOptions};
use keyward_core::SystemClock;
use keyward_core::access::{Access, Role};
use keyward_core::approval::{ApprovalAction, ApprovalPolicy, ApprovalRule};
use keyward_core::audit::{ActorKind, AuditFilter};
use keyward_core::mfa::MfaStanding;
use keyward_crypto::OsRandomness;
use keyward_store::testing::TestDatabase;
use secrecy::SecretString;

/// A use-case layer over a fresh database, with its own master key.
pub async fn app_on(db: &TestDatabase) -> App {
    let random = Arc::new(OsRandomness);
    let clock = Arc::new(SystemClock);
    let key = hex::encode(std::array::from_fn::<u8, 32, _>(|i| i as u8 ^ 0x5a));
    let vault = keyward_app::vault::open_store(
        db.store().await,
        &MasterKeySource::Env {
            current: SecretString::from(key),
            previous: Vec::new(),
        },
        &*random,
        &*clock,
    )
    .await
    .unwrap();
    let app = App::new(vault, clock, random, AppOptions::default()).unwrap();
    app.refresh_proxy().await.unwrap();
    app
}

/// A signed-in person with `role` everywhere and MFA standing `mfa`.
pub fn person(name: &str, role: Role, mfa: MfaStanding) -> Actor {
    Actor {
        kind: ActorKind::User,
        id: format!("usr_{name}"),
        name: name.to_owned(),
        role,
        source: None,
        access: Access::of_role(role),
        approval: None,
        mfa,
    }
}

/// How many audit entries record `action`.
pub async fn entries(app: &App, action: &str) -> usize {
    app.audit_events(
        &Actor::system("test"),
        &AuditFilter {
            action: Some(action.to_owned()),
            limit: 1_000,
            ..AuditFilter::default()
        },
    )
    .await
    .unwrap()
    .len()
}

/// An approval policy: one approval from `roles` for each of `actions`.
pub async fn require_one_approval(app: &App, actions: &[ApprovalAction], roles: &[Role]) {
    app.set_approval_policy(
        &Actor::system("test"),
        ApprovalPolicy {
            rules: vec![ApprovalRule {
                actions: actions.to_vec(),
                categories: None,
                criticalities: None,
                approvals: 1,
                approver_roles: roles.to_vec(),
            }],
            ttl_hours: 24,
        },
    )
    .await
    .unwrap();
}

/// Runs each case against a fresh SQLite database and a fresh PostgreSQL one.
macro_rules! both_backends {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(keyward_store::testing::TestDatabase::sqlite()).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(db) = keyward_store::testing::TestDatabase::postgres().await else {
                        return;
                    };
                    super::$case(db).await;
                }
            )+
        }
    };
}

//! Four eyes means two people: an approval decided by the requester under another
//! credential — a token they minted, an account they created while the request was open, a
//! token minted by such an account — is refused (`self_approval`); someone else's approval
//! lets the requester run the operation once. Creating users and minting tokens are access
//! changes. On SQLite and PostgreSQL, without HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use keyward_app::approvals::ApprovalUse;
use keyward_app::{Actor, App, NewKey, TokenLimits};
use keyward_core::access::{Access, Role};
use keyward_core::approval::ApprovalAction;
use keyward_core::audit::ActorKind;
use keyward_core::id::ApprovalId;
use keyward_core::key::KeyDraftInput;
use keyward_core::mfa::MfaStanding;
use keyward_core::user::User;
use keyward_store::testing::TestDatabase;
use secrecy::SecretString;
use support::{app_on, require_one_approval};

const PASSWORD: &str = "correct horse battery staple 42";

/// A signed-in user with a recent MFA check.
fn acting_as(user: &User) -> Actor {
    let mut actor = Actor::for_user(user, None);
    actor.mfa = MfaStanding::Fresh;
    actor
}

/// A management token acting.
fn token_actor(token: &keyward_core::token::ManagementToken) -> Actor {
    Actor {
        kind: ActorKind::Token,
        id: token.id.to_string(),
        name: token.name.clone(),
        role: token.role,
        source: None,
        access: Access::of_role(token.role),
        approval: None,
        mfa: MfaStanding::NotApplicable,
    }
}

async fn user(app: &App, by: &Actor, name: &str, role: Role) -> User {
    app.add_user(by, name, SecretString::from(PASSWORD), role)
        .await
        .unwrap()
}

async fn mint(app: &App, by: &Actor, name: &str) -> keyward_core::token::ManagementToken {
    app.create_token(by, name, Role::Admin, None, TokenLimits::default())
        .await
        .unwrap()
        .0
}

async fn decide(app: &App, actor: &Actor, id: &ApprovalId) -> Result<(), &'static str> {
    app.decide_approval(actor, id, true, "looks right")
        .await
        .map(drop)
        .map_err(|e| e.code)
}

async fn approvals_across_people(db: TestDatabase) {
    let app = app_on(&db).await;
    // The test's own view of the database (the use cases keep theirs to themselves).
    let store = db.store().await;
    require_one_approval(&app, &[ApprovalAction::Delete], &[Role::Owner, Role::Admin]).await;
    let system = Actor::system("test");
    let rita = acting_as(&user(&app, &system, "rita", Role::Admin).await);
    // Made by Rita before she asks: her token is still her; her earlier hire is a person.
    let early_token = mint(&app, &rita, "rita-early").await;
    let early_hire = acting_as(&user(&app, &rita, "eve", Role::Admin).await);
    let key = app
        .create_key(
            &system,
            NewKey {
                draft: KeyDraftInput {
                    service_id: "openai".into(),
                    environment: "production".into(),
                    alias: "main".into(),
                    ..KeyDraftInput::default()
                },
                secret: SecretString::from(format!("sk-proj-{}", "Zx9Yw8Vu".repeat(6))),
                force: false,
            },
        )
        .await
        .unwrap();
    let mut asking = rita.clone();
    asking.approval = Some(ApprovalUse::Request("rotating this key out".into()));
    let filed = app.delete_key(&asking, &key.id).await.unwrap_err();
    assert_eq!(filed.code, "approval_requested");
    let request: ApprovalId = filed.reference.unwrap().parse().unwrap();

    // While it is open, Rita makes a second account and a token, and a token from that account.
    let sock = user(&app, &rita, "sock", Role::Admin).await;
    let sock_actor = acting_as(&sock);
    let token = mint(&app, &rita, "rita-bot").await;
    let sock_token = mint(&app, &sock_actor, "sock-bot").await;
    for (who, actor) in [
        ("Rita herself", rita.clone()),
        ("an account Rita created", sock_actor.clone()),
        ("a token Rita minted", token_actor(&token)),
        (
            "a token Rita minted before asking",
            token_actor(&early_token),
        ),
        (
            "a token of an account Rita created",
            token_actor(&sock_token),
        ),
    ] {
        assert_eq!(
            decide(&app, &actor, &request).await,
            Err("self_approval"),
            "{who} must not approve"
        );
    }
    assert!(
        store
            .key(&key.id)
            .await
            .unwrap()
            .unwrap()
            .deleted_at
            .is_none()
    );

    // Someone who existed before the request is another person, even if Rita hired them.
    assert_eq!(decide(&app, &early_hire, &request).await, Ok(()));
    let mut using = rita.clone();
    using.approval = Some(ApprovalUse::Use(request.clone()));
    let deleted = app.delete_key(&using, &key.id).await.unwrap();
    assert!(deleted.deleted_at.is_some());
    // Once only.
    let again = app.restore_key(&rita, &key.id).await.unwrap();
    assert!(again.deleted_at.is_none());
    assert_eq!(
        app.delete_key(&using, &key.id).await.unwrap_err().code,
        "approval_used"
    );
}

async fn creating_users_and_minting_tokens_are_access_changes(db: TestDatabase) {
    let app = app_on(&db).await;
    // The test's own view of the database (the use cases keep theirs to themselves).
    let store = db.store().await;
    let system = Actor::system("test");
    let owner = user(&app, &system, "olga", Role::Owner).await;
    // Step-up: a stale session neither adds users nor mints tokens.
    let mut stale = acting_as(&owner);
    stale.mfa = MfaStanding::Stale { enrolled: true };
    let err = app
        .add_user(&stale, "newbie", SecretString::from(PASSWORD), Role::Viewer)
        .await
        .unwrap_err();
    assert_eq!(err.code, "step_up_required");
    let err = app
        .create_token(&stale, "bot", Role::Admin, None, TokenLimits::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, "step_up_required");
    // The gate: a policy on access changes holds both.
    require_one_approval(&app, &[ApprovalAction::AccessChange], &[Role::Owner]).await;
    let olga = acting_as(&owner);
    let err = app
        .add_user(&olga, "newbie", SecretString::from(PASSWORD), Role::Viewer)
        .await
        .unwrap_err();
    assert_eq!(err.code, "approval_required");
    let err = app
        .create_token(&olga, "bot", Role::Admin, None, TokenLimits::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, "approval_required");
    assert!(store.user_by_username("newbie").await.unwrap().is_none());
    assert!(store.tokens().await.unwrap().is_empty());
}

both_backends!(
    approvals_across_people,
    creating_users_and_minting_tokens_are_access_changes,
);

//! TOTP second factors end to end, on a clock the test moves: enrolment with a QR code,
//! sign-in with a code or a recovery code, replays refused, step-up for sensitive
//! operations, wrong codes throttled, admins resetting a lost factor, and the policy.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use keyward_core::ManualClock;
use keyward_core::access::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::browser::{
    Browser, PASSWORD, add_user, browse, code_now, enrol, enrolled_user, renew, sign_in,
    sign_in_with, whoami,
};
use crate::helpers::{Backend, TestApp, assert_error, audit_actions};

/// A clock at the start of a TOTP step, so a test's few requests stay inside one step
/// unless it moves the clock.
async fn spawn(backend: Backend) -> Option<(TestApp, Arc<ManualClock>)> {
    let start = Timestamp::from_second(1_796_000_010).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let app = TestApp::spawn_with_clock(backend, Default::default(), clock.clone()).await?;
    Some((app, clock))
}

fn next_step(clock: &ManualClock) {
    clock.advance(SignedDuration::from_secs(30));
}

async fn post(app: &TestApp, b: &Browser, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    browse(app, b, Method::POST, path, body, Some(&b.csrf), None).await
}

async fn trail_reasons(app: &TestApp, action: &str) -> Vec<String> {
    let (_, trail) = app
        .call(Method::GET, &format!("/api/v1/audit?action={action}"), None)
        .await;
    trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["details"]["reason"].as_str().map(str::to_owned))
        .collect()
}

async fn enrolment_sign_in_and_replays(backend: Backend) {
    let Some((app, clock)) = spawn(backend).await else {
        return;
    };
    add_user(&app, "ada", Role::Admin).await;
    // An admin without a second factor may enrol, and nothing else.
    let first = sign_in(&app, "ada", PASSWORD).await.unwrap();
    assert_eq!(whoami(&app, &first).await.1["mfa"], "enrolment_required");
    let refused = browse(&app, &first, Method::GET, "/api/v1/keys", None, None, None).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "mfa_enrolment_required");

    let (status, setup) = post(&app, &first, "/api/v1/auth/mfa/enroll", None).await;
    assert_eq!(status, StatusCode::OK, "{setup}");
    let secret = setup["secret"].as_str().unwrap();
    let uri = setup["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/Keyward:ada?") && uri.contains(secret));
    let svg = setup["qr_svg"].as_str().unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<path"), "{svg}");
    let phone = keyward_crypto::totp::TotpSecret::from_base32(secret).unwrap();

    let wrong = renew(
        &app,
        &first,
        "/api/v1/auth/mfa/confirm",
        json!({"code": "000000"}),
    )
    .await
    .err()
    .unwrap();
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "invalid_mfa_code");
    let code = code_now(&app, &phone);
    let (fresh, body) = renew(
        &app,
        &first,
        "/api/v1/auth/mfa/confirm",
        json!({"code": code}),
    )
    .await
    .unwrap();
    let recovery: Vec<String> = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    assert_eq!(body["user"]["mfa_enabled"], true);
    // A new session id on MFA: the cookie from before it opens nothing now.
    assert_ne!(fresh.session_id, first.session_id);
    assert_ne!(fresh.csrf, first.csrf);
    assert_eq!(whoami(&app, &first).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(whoami(&app, &fresh).await.1["mfa"], "fresh");
    let listed = browse(&app, &fresh, Method::GET, "/api/v1/keys", None, None, None).await;
    assert_eq!(listed.0, StatusCode::OK);

    // The code that confirmed enrolment cannot be used again, not even for step-up.
    let replay = renew(
        &app,
        &fresh,
        "/api/v1/auth/mfa/verify",
        json!({"code": code}),
    )
    .await
    .err()
    .unwrap();
    assert_error(&replay, StatusCode::UNAUTHORIZED, "invalid_mfa_code");

    // Signing in now takes a code; the used one is refused, the next step's works.
    let password_only = sign_in(&app, "ada", PASSWORD).await.err().unwrap();
    assert_error(&password_only, StatusCode::UNAUTHORIZED, "mfa_required");
    let login = |code: &str| json!({"username": "ada", "password": PASSWORD, "code": code});
    let replayed = sign_in_with(&app, login(&code)).await.err().unwrap();
    assert_error(&replayed, StatusCode::UNAUTHORIZED, "invalid_mfa_code");
    next_step(&clock);
    let code = code_now(&app, &phone);
    let with_code = sign_in_with(&app, login(&code)).await.unwrap();
    assert_eq!(whoami(&app, &with_code).await.1["mfa"], "fresh");
    // Twice in one step: the second is a replay.
    let twice = sign_in_with(&app, login(&code)).await.err().unwrap();
    assert_error(&twice, StatusCode::UNAUTHORIZED, "invalid_mfa_code");

    // Recovery codes: any case and spacing, each once.
    let by_recovery = json!({"username": "ada", "password": PASSWORD,
                             "recovery_code": recovery[3].to_uppercase()});
    sign_in_with(&app, by_recovery.clone()).await.unwrap();
    let reused = sign_in_with(&app, by_recovery).await.err().unwrap();
    assert_error(&reused, StatusCode::UNAUTHORIZED, "invalid_mfa_code");
    let both = sign_in_with(
        &app,
        json!({"username": "ada", "password": PASSWORD, "code": "1", "recovery_code": "2"}),
    )
    .await
    .err()
    .unwrap();
    assert_error(&both, StatusCode::UNPROCESSABLE_ENTITY, "one_second_factor");
    let (_, status) = browse(
        &app,
        &with_code,
        Method::GET,
        "/api/v1/auth/mfa",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(status["unused_recovery_codes"], 9);

    let reasons = trail_reasons(&app, "auth.mfa").await;
    for reason in [
        "wrong_code",
        "replayed_code",
        "code_missing",
        "wrong_recovery_code",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} in {reasons:?}"
        );
    }
    let trail = app.call(Method::GET, "/api/v1/audit", None).await.1;
    let text = trail.to_string();
    assert!(
        !text.contains(secret),
        "the TOTP secret is never in the trail"
    );
    assert!(!text.contains(&recovery[0]), "nor a recovery code");
    let actions = audit_actions(&trail);
    for action in ["mfa.enrol.start", "mfa.enrol.confirm", "session.renew"] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
}

#[tokio::test]
async fn enrolment_sign_in_and_replays_sqlite() {
    enrolment_sign_in_and_replays(Backend::Sqlite).await;
}

#[tokio::test]
async fn enrolment_sign_in_and_replays_postgres() {
    enrolment_sign_in_and_replays(Backend::Postgres).await;
}

/// Deleting, purging and exporting need an MFA check within the policy's window; a step-up
/// renews the session; management tokens are not people and are not asked.
#[tokio::test]
async fn sensitive_operations_need_a_recent_mfa_check() {
    let (app, clock) = spawn(Backend::Sqlite).await.unwrap();
    let (_, fresh, phone) = enrolled_user(&app, "ada", Role::Admin).await;
    let first = app
        .create_key("openai", "production", "one", crate::helpers::OPENAI_KEY)
        .await;
    let second = app
        .create_key("openai", "staging", "two", crate::helpers::OPENAI_KEY)
        .await;
    let delete = |b: &Browser, key: &Value| {
        let path = format!("/api/v1/keys/{}", key["id"].as_str().unwrap());
        let b = b.clone();
        let app = &app;
        async move { browse(app, &b, Method::DELETE, &path, None, Some(&b.csrf), None).await }
    };
    assert_eq!(delete(&fresh, &first).await.0, StatusCode::OK);

    clock.advance(SignedDuration::from_mins(5));
    assert_eq!(whoami(&app, &fresh).await.1["mfa"], "stale");
    let stale = delete(&fresh, &second).await;
    assert_error(&stale, StatusCode::FORBIDDEN, "step_up_required");
    let export = browse(
        &app,
        &fresh,
        Method::GET,
        "/api/v1/audit/export",
        None,
        None,
        None,
    )
    .await;
    assert_error(&export, StatusCode::FORBIDDEN, "step_up_required");
    // Reading needs no step-up.
    let listed = browse(&app, &fresh, Method::GET, "/api/v1/keys", None, None, None).await;
    assert_eq!(listed.0, StatusCode::OK);

    let (stepped, _) = renew(
        &app,
        &fresh,
        "/api/v1/auth/mfa/verify",
        json!({"code": code_now(&app, &phone)}),
    )
    .await
    .unwrap();
    assert_ne!(stepped.session_id, fresh.session_id);
    assert_eq!(whoami(&app, &fresh).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(delete(&stepped, &second).await.0, StatusCode::OK);

    // A management token is not asked for a second factor.
    let third = app
        .create_key("openai", "development", "three", crate::helpers::OPENAI_KEY)
        .await;
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/keys/{}", third["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        trail_reasons(&app, "access.denied")
            .await
            .iter()
            .any(|r| r == "step_up_required"),
        "refusals are audited"
    );
    // New recovery codes need a fresh check too.
    clock.advance(SignedDuration::from_mins(6));
    let stale = post(&app, &stepped, "/api/v1/auth/mfa/recovery-codes", None).await;
    assert_error(&stale, StatusCode::FORBIDDEN, "step_up_required");
}

/// Wrong codes count like wrong passwords: after five, each try waits, and a correct code
/// is refused while the delay lasts. Knowing the password does not reset the count.
#[tokio::test]
async fn wrong_codes_are_throttled_even_with_the_right_password() {
    let (app, clock) = spawn(Backend::Sqlite).await.unwrap();
    let (_, _, phone) = enrolled_user(&app, "ada", Role::Admin).await;
    next_step(&clock);
    let login = |code: &str| json!({"username": "ada", "password": PASSWORD, "code": code});
    for _ in 0..6 {
        let refused = sign_in_with(&app, login("123456")).await.err().unwrap();
        assert_eq!(refused.0, StatusCode::UNAUTHORIZED, "{refused:?}");
    }
    let right = code_now(&app, &phone);
    let held = sign_in_with(&app, login(&right)).await.err().unwrap();
    assert_error(&held, StatusCode::TOO_MANY_REQUESTS, "too_many_attempts");
    clock.advance(SignedDuration::from_secs(2));
    sign_in_with(&app, login(&code_now(&app, &phone)))
        .await
        .unwrap();
}

/// A lost phone: an admin (with a fresh check) resets the factor, the user's sessions end,
/// and they sign in with the password and must enrol again. Only an owner resets an owner.
#[tokio::test]
async fn admins_reset_a_lost_factor_and_the_users_sessions_end() {
    let (app, clock) = spawn(Backend::Sqlite).await.unwrap();
    let (_, admin, _) = enrolled_user(&app, "ada", Role::Admin).await;
    let (kim, kim_browser, _) = enrolled_user(&app, "kim", Role::KeyManager).await;
    let (owner, _, _) = enrolled_user(&app, "olga", Role::Owner).await;
    let reset = |b: &Browser, id: &str| {
        let path = format!("/api/v1/users/{id}/mfa");
        let b = b.clone();
        let app = &app;
        async move { browse(app, &b, Method::DELETE, &path, None, Some(&b.csrf), None).await }
    };
    let refused = reset(&admin, &owner).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "owner_required");
    assert_eq!(reset(&admin, &kim).await.0, StatusCode::NO_CONTENT);
    assert_eq!(whoami(&app, &kim_browser).await.0, StatusCode::UNAUTHORIZED);
    let missing = reset(&admin, &kim).await;
    assert_error(&missing, StatusCode::NOT_FOUND, "mfa_not_enrolled");
    next_step(&clock);
    let again = sign_in(&app, "kim", PASSWORD).await.unwrap();
    assert_eq!(whoami(&app, &again).await.1["mfa"], "enrolment_required");
    let (renewed, _, _) = enrol(&app, &again).await;
    assert_eq!(whoami(&app, &renewed).await.1["mfa"], "fresh");
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=mfa.reset", None)
        .await;
    assert_eq!(audit_actions(&trail).len(), 3, "two resets and one refused");
}

/// The policy: who must enrol and how long a check lasts; changing it is a step-up
/// operation for owners and admins; bad values are refused and change nothing.
#[tokio::test]
async fn the_mfa_policy_decides_who_enrols_and_how_long_step_up_lasts() {
    let (app, clock) = spawn(Backend::Sqlite).await.unwrap();
    let (_, admin, _) = enrolled_user(&app, "ada", Role::Admin).await;
    let (status, policy) = app.call(Method::GET, "/api/v1/policies/mfa", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        policy,
        json!({"required_roles": ["owner", "admin", "key_manager"], "step_up_minutes": 5})
    );
    let bad = browse(
        &app,
        &admin,
        Method::PUT,
        "/api/v1/policies/mfa",
        Some(json!({"required_roles": ["owner"], "step_up_minutes": 0})),
        Some(&admin.csrf),
        None,
    )
    .await;
    assert_error(
        &bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_step_up_minutes",
    );
    let (status, changed) = browse(
        &app,
        &admin,
        Method::PUT,
        "/api/v1/policies/mfa",
        Some(json!({"required_roles": ["owner", "admin", "key_manager", "viewer"], "step_up_minutes": 15})),
        Some(&admin.csrf),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    add_user(&app, "vic", Role::Viewer).await;
    let viewer = sign_in(&app, "vic", PASSWORD).await.unwrap();
    assert_eq!(whoami(&app, &viewer).await.1["mfa"], "enrolment_required");
    // Fifteen minutes now.
    clock.advance(SignedDuration::from_mins(10));
    assert_eq!(whoami(&app, &admin).await.1["mfa"], "fresh");
    // A viewer may not change the policy.
    let (viewer, _, _) = enrol(&app, &viewer).await;
    let denied = browse(
        &app,
        &viewer,
        Method::PUT,
        "/api/v1/policies/mfa",
        Some(json!({"required_roles": [], "step_up_minutes": 5})),
        Some(&viewer.csrf),
        None,
    )
    .await;
    assert_error(&denied, StatusCode::FORBIDDEN, "forbidden");
    let (_, policy) = app.call(Method::GET, "/api/v1/policies/mfa", None).await;
    assert_eq!(policy["step_up_minutes"], 15);
}

//! Signing in with a password: the cookie, CSRF protection on every state-changing
//! request, signing out here and everywhere, admins ending sessions, and disabled users.

use keyward_core::access::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::browser::{PASSWORD, add_user, browse, enrol, sign_in, whoami};
use crate::helpers::{Backend, TestApp, assert_error, audit_actions};

#[tokio::test]
async fn a_session_cookie_works_only_with_its_csrf_token_from_this_site() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    add_user(&app, "kim", Role::KeyManager).await;
    let wrong = sign_in(&app, "kim", "not the password at all")
        .await
        .err()
        .unwrap();
    let unknown = sign_in(&app, "nobody", "not the password at all")
        .await
        .err()
        .unwrap();
    assert_eq!(wrong, unknown, "same status and body for both");
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "invalid_credentials");

    let b = sign_in(&app, "kim", PASSWORD).await.unwrap();
    // Key managers must have a second factor before anything else (the default policy).
    let (b, _, _) = enrol(&app, &b).await;
    let (status, me) = browse(
        &app,
        &b,
        Method::GET,
        "/api/v1/auth/session",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (me["kind"].as_str(), me["name"].as_str()),
        (Some("user"), Some("kim"))
    );
    // Reading needs no CSRF token; changing does.
    let (status, _) = browse(&app, &b, Method::GET, "/api/v1/keys", None, None, None).await;
    assert_eq!(status, StatusCode::OK);
    let env = json!({"id": "qa", "name": "QA"});
    let cases = [
        (None, Some("same-origin")),
        (Some("forged-token"), Some("same-origin")),
        (Some(b.csrf.as_str()), Some("cross-site")),
    ];
    for (csrf, site) in cases {
        let refused = browse(
            &app,
            &b,
            Method::POST,
            "/api/v1/app-tokens",
            Some(json!({"name": "x", "services": ["openai"], "environments": ["production"]})),
            csrf,
            site,
        )
        .await;
        assert_error(&refused, StatusCode::FORBIDDEN, "csrf_failed");
    }
    let (_, tokens) = app.call(Method::GET, "/api/v1/app-tokens", None).await;
    assert_eq!(tokens.as_array().unwrap().len(), 0, "nothing was created");
    let (status, created) = browse(
        &app,
        &b,
        Method::POST,
        "/api/v1/app-tokens",
        Some(json!({"name": "x", "services": ["openai"], "environments": ["production"]})),
        Some(&b.csrf),
        Some("same-origin"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    // The role still decides: a key manager may not add environments.
    let denied = browse(
        &app,
        &b,
        Method::POST,
        "/api/v1/environments",
        Some(env),
        Some(&b.csrf),
        None,
    )
    .await;
    assert_error(&denied, StatusCode::FORBIDDEN, "forbidden");
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=access.csrf", None)
        .await;
    assert_eq!(
        trail["events"].as_array().unwrap().len(),
        3,
        "each refusal is audited"
    );
    assert_eq!(trail["events"][0]["actor"]["name"], "kim");
}

#[tokio::test]
async fn sign_out_here_everywhere_by_an_admin_and_by_disabling() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let kim = add_user(&app, "kim", Role::Viewer).await;
    let phone = sign_in(&app, "kim", PASSWORD).await.unwrap();
    let laptop = sign_in(&app, "kim", PASSWORD).await.unwrap();
    assert_ne!(
        phone.session_id, laptop.session_id,
        "a new session for every sign-in"
    );

    let (status, _) = browse(
        &app,
        &phone,
        Method::POST,
        "/api/v1/auth/logout",
        None,
        Some(&phone.csrf),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(whoami(&app, &phone).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(whoami(&app, &laptop).await.0, StatusCode::OK);

    let desk = sign_in(&app, "kim", PASSWORD).await.unwrap();
    let (status, ended) = browse(
        &app,
        &desk,
        Method::POST,
        "/api/v1/auth/logout-all",
        None,
        Some(&desk.csrf),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ended["ended"], 2);
    assert_eq!(whoami(&app, &laptop).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(whoami(&app, &desk).await.0, StatusCode::UNAUTHORIZED);

    // Admins see sessions and end one.
    let tablet = sign_in(&app, "kim", PASSWORD).await.unwrap();
    let (_, sessions) = app.call(Method::GET, "/api/v1/sessions", None).await;
    let listed: Vec<&str> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(listed, [tablet.session_id.as_str()]);
    assert!(!sessions.to_string().contains("hash"));
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/sessions/{}", tablet.session_id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(whoami(&app, &tablet).await.0, StatusCode::UNAUTHORIZED);

    // Disabling a user ends their sessions at once.
    let again = sign_in(&app, "kim", PASSWORD).await.unwrap();
    let (status, _) = app
        .call(Method::POST, &format!("/api/v1/users/{kim}/disable"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(whoami(&app, &again).await.0, StatusCode::UNAUTHORIZED);
    assert!(sign_in(&app, "kim", PASSWORD).await.is_err());
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=session", None)
        .await;
    let actions = audit_actions(&trail);
    assert!(
        actions.iter().any(|a| a == "session.end_all")
            && actions.iter().any(|a| a == "session.create"),
        "{actions:?}"
    );
}

/// Repeated wrong passwords for one account are delayed, then locked (429 with
/// `Retry-After`, before the password is even checked); admins see and lift the lock;
/// everything is in the trail. The timing rules themselves are unit-tested with explicit
/// times (`keyward_core::throttle`); this checks the wiring.
#[tokio::test]
async fn failed_sign_ins_are_delayed_then_locked_and_admins_lift_the_lock() {
    // A clock that stands still: the one-second delay cannot run out mid-test.
    let clock = std::sync::Arc::new(keyward_core::ManualClock::new(jiff::Timestamp::now()));
    let app = TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock)
        .await
        .unwrap();
    add_user(&app, "kim", Role::Viewer).await;
    for _ in 0..5 {
        let (status, _) = sign_in(&app, "kim", "wrong guess number one")
            .await
            .err()
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // The sixth failure sets a one-second delay: the next try is refused outright,
    // even with the right password.
    assert!(
        sign_in(&app, "kim", "wrong guess number one")
            .await
            .is_err()
    );
    let response = app
        .client
        .post(format!("{}/api/v1/auth/login", app.base))
        .json(&json!({"username": "KIM", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_attempts");

    let (_, lockouts) = app.call(Method::GET, "/api/v1/auth/lockouts", None).await;
    let kim = lockouts
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "account" && l["value"] == "kim")
        .cloned()
        .unwrap();
    assert_eq!(kim["failures"], 6);
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/auth/lockouts/lift",
            Some(json!({"kind": "account", "value": "kim"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(sign_in(&app, "kim", PASSWORD).await.is_ok(), "lifted");
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=auth.lockout", None)
        .await;
    assert_eq!(trail["events"][0]["action"], "auth.lockout.lift");
    let (_, denied) = app
        .call(
            Method::GET,
            "/api/v1/audit?action=auth.login&outcome=denied",
            None,
        )
        .await;
    assert!(
        denied["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["details"]["reason"] == "delayed")
    );
}

/// Idle and absolute limits, end to end on a clock the test moves: a session unused for
/// the idle limit ends; one kept busy still ends at the absolute limit.
#[tokio::test]
async fn sessions_end_when_idle_and_at_their_absolute_limit() {
    use jiff::SignedDuration;
    use keyward_core::ManualClock;
    let clock = std::sync::Arc::new(ManualClock::new(jiff::Timestamp::now()));
    let app = TestApp::spawn_with_clock(
        Backend::Sqlite,
        keyward_server::config::RawSettings {
            session_idle_minutes: Some("30".into()),
            session_absolute_hours: Some("2".into()),
            ..Default::default()
        },
        clock.clone(),
    )
    .await
    .unwrap();
    add_user(&app, "kim", Role::Viewer).await;

    let idle = sign_in(&app, "kim", PASSWORD).await.unwrap();
    clock.advance(SignedDuration::from_mins(29));
    assert_eq!(
        whoami(&app, &idle).await.0,
        StatusCode::OK,
        "29 minutes idle"
    );
    clock.advance(SignedDuration::from_mins(30));
    assert_error(
        &whoami(&app, &idle).await,
        StatusCode::UNAUTHORIZED,
        "session_expired",
    );

    let busy = sign_in(&app, "kim", PASSWORD).await.unwrap();
    for _ in 0..7 {
        clock.advance(SignedDuration::from_mins(17));
        assert_eq!(whoami(&app, &busy).await.0, StatusCode::OK, "kept busy");
    }
    clock.advance(SignedDuration::from_mins(2 * 60 - 7 * 17));
    assert_error(
        &whoami(&app, &busy).await,
        StatusCode::UNAUTHORIZED,
        "session_expired",
    );
    // An ended session is gone, not merely refused.
    let (_, sessions) = app.call(Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(sessions.as_array().unwrap().len(), 0);
}

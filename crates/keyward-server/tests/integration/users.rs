//! Users: the password policy at the API, who may create whom, disabling, and sign-in
//! checks that answer an unknown user exactly like a wrong password.

use std::time::Instant;

use keyward_core::access::Role;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{Backend, TestApp, assert_error, audit_actions};

const GOOD: &str = "tangerine violin orbit";

#[tokio::test]
async fn users_are_created_under_the_password_policy_and_disabled_with_a_trail() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let create = |name: &str, password: &str, role: &str| json!({"username": name, "password": password, "role": role});
    let (status, alice) = app
        .call(
            Method::POST,
            "/api/v1/users",
            Some(create("alice", GOOD, "key_manager")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{alice}");
    assert_eq!(alice["role"], "key_manager");
    assert!(alice.get("password_hash").is_none());
    for (password, code) in [
        ("short one", "password_too_short"),
        ("qwerty123456", "password_common"),
        ("Password1234!", "password_common"),
        ("bob loves his garden", "password_contains_name"),
    ] {
        assert_error(
            &app.call(
                Method::POST,
                "/api/v1/users",
                Some(create("bob", password, "viewer")),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
        );
    }
    assert_error(
        &app.call(
            Method::POST,
            "/api/v1/users",
            Some(create("ALICE", GOOD, "viewer")),
        )
        .await,
        StatusCode::CONFLICT,
        "username_taken",
    );
    let admin = app.token_with_role(Role::Admin).await;
    assert_error(
        &app.call_as(
            &admin,
            Method::POST,
            "/api/v1/users",
            Some(create("eve", GOOD, "owner")),
        )
        .await,
        StatusCode::FORBIDDEN,
        "owner_required",
    );
    let viewer = app.token_with_role(Role::Viewer).await;
    assert_error(
        &app.call_as(
            &viewer,
            Method::POST,
            "/api/v1/users",
            Some(create("eve", GOOD, "viewer")),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, list) = app.call(Method::GET, "/api/v1/users", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(
        !list.to_string().contains("argon2"),
        "no hashes leave the server"
    );

    let id = alice["id"].as_str().unwrap();
    let (status, disabled) = app
        .call(Method::POST, &format!("/api/v1/users/{id}/disable"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(disabled["disabled"], true);
    let refused = app
        .app
        .check_sign_in("alice", SecretString::from(GOOD), None)
        .await
        .unwrap_err();
    assert_eq!(
        refused.code, "invalid_credentials",
        "disabled users cannot sign in"
    );
    let (_, trail) = app
        .call(
            Method::GET,
            &format!("/api/v1/audit?target=user:{id}"),
            None,
        )
        .await;
    assert_eq!(
        audit_actions(&trail),
        ["user.create", "user.disable", "session.end_all"]
    );
    assert!(
        !trail.to_string().contains(GOOD),
        "no password in the trail"
    );
}

fn quartiles(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.25), at(0.5), at(0.75))
}

/// Unknown user and wrong password, over HTTP against the real server: same status and
/// body, and response times from the same distribution (an unknown name is checked against
/// a dummy hash). Samples alternate so machine noise hits both alike; the interquartile
/// ranges must overlap.
#[tokio::test]
async fn unknown_users_and_wrong_passwords_are_answered_alike_in_the_same_time() {
    const SAMPLES: usize = 200;
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    app.app
        .add_user(
            &keyward_app::Actor::system("test"),
            "alice",
            SecretString::from(GOOD),
            Role::Viewer,
        )
        .await
        .unwrap();
    let ok = app
        .app
        .check_sign_in("alice", SecretString::from(GOOD), None)
        .await
        .unwrap();
    assert_eq!(ok.username, "alice");
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    // Each pair in a random order (a fixed-seed LCG), so that nothing periodic on the
    // machine (which blocking thread runs the hash, whose memory is warm) lines up with
    // one kind of attempt.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut order = Vec::with_capacity(SAMPLES * 2);
    for _ in 0..SAMPLES {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        order.extend(if seed >> 63 == 0 {
            [true, false]
        } else {
            [false, true]
        });
    }
    for is_unknown in order {
        let (name, into) = if is_unknown {
            ("mallory", &mut unknown)
        } else {
            ("alice", &mut wrong)
        };
        let started = Instant::now();
        let response = app
            .client
            .post(format!("{}/api/v1/auth/login", app.base))
            .json(&json!({"username": name, "password": "not the password at all"}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.bytes().await.unwrap();
        into.push(started.elapsed().as_secs_f64() * 1000.0);
        // Brute-force delays would end the experiment early; they are tested elsewhere.
        app.app.with_attempts(|a| {
            a.clear(&keyward_core::throttle::Subject::Account(name.to_owned()));
            a.clear(&keyward_core::throttle::Subject::Source(
                "127.0.0.1".to_owned(),
            ));
        });
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            &body[..],
            br#"{"error":{"code":"invalid_credentials","message":"the username or password is wrong"}}"#,
            "byte for byte the same body"
        );
    }
    let (u1, um, u3) = quartiles(unknown);
    let (w1, wm, w3) = quartiles(wrong);
    eprintln!(
        "sign-in timing over {SAMPLES} samples each (ms): unknown user q1 {u1:.2} median {um:.2} q3 {u3:.2}; wrong password q1 {w1:.2} median {wm:.2} q3 {w3:.2}"
    );
    assert!(u1 <= w3 && w1 <= u3, "interquartile ranges overlap");
    let (_, denied) = app
        .call(
            Method::GET,
            "/api/v1/audit?action=auth.login&outcome=denied&limit=1000",
            None,
        )
        .await;
    assert_eq!(denied["events"].as_array().unwrap().len(), SAMPLES * 2);
}

/// First run: a one-time setup token creates the first owner; a wrong token, or any token
/// once an owner exists, is refused; a refused password does not spend the token.
#[tokio::test]
async fn the_setup_token_creates_the_first_owner_once() {
    use secrecy::ExposeSecret;
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let token = app.app.issue_setup_token().await.unwrap().unwrap();
    let token = token.expose_secret().to_owned();
    assert!(token.starts_with("kwsetup_"));
    let setup = |token: String, password: &'static str| {
        let app = &app;
        async move {
            let response = app
                .client
                .post(format!("{}/api/v1/setup", app.base))
                .json(&json!({"setup_token": token, "username": "olga", "password": password}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let wrong = setup("kwsetup_nope".into(), GOOD).await;
    assert_error(&wrong, StatusCode::FORBIDDEN, "setup_refused");
    let weak = setup(token.clone(), "password1234").await;
    assert_eq!(weak.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", weak.1);
    let (status, owner) = setup(token.clone(), GOOD).await;
    assert_eq!(status, StatusCode::CREATED, "{owner}");
    assert_eq!(owner["role"], "owner");
    let again = setup(token, GOOD).await;
    assert_error(&again, StatusCode::FORBIDDEN, "setup_refused");
    assert!(app.app.issue_setup_token().await.unwrap().is_none());
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=setup", None)
        .await;
    assert_eq!(
        audit_actions(&trail),
        ["setup", "setup"],
        "both refusals audited"
    );
}

//! The web UI over HTTP (the browser tests drive the same pages in Chromium): the CSP and
//! security headers on every page, no inline code, forms that work without JavaScript,
//! text that stays text, and sign-in/out with the session's CSRF token.

use keyward_core::access::Role;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::browser::{PASSWORD, add_user};
use crate::helpers::{Backend, OPENAI_KEY, TestApp};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn form(fields: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// Pages carry the strict CSP and load only our own hashed static files; no inline
/// script or style anywhere.
fn assert_clean_page(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(!html.contains("style="), "no inline style attribute");
    assert!(!html.contains("<style"), "no style block");
    for script in html.split("<script").skip(1) {
        assert!(
            script
                .trim_start()
                .starts_with("type=\"module\" src=\"/static/app."),
            "{script}"
        );
    }
}

#[tokio::test]
async fn pages_are_strict_forms_work_without_javascript_and_text_stays_text() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let client = no_redirects();
    let url = |path: &str| format!("{}{path}", app.base);

    // Signed out: the dashboard sends you to sign in.
    let home = client.get(url("/")).send().await.unwrap();
    assert_eq!(home.status(), StatusCode::SEE_OTHER);
    assert_eq!(home.headers()[LOCATION], "/login");

    let login = client.get(url("/login")).send().await.unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    assert_eq!(
        login.headers()[CONTENT_SECURITY_POLICY],
        keyward_server::ui::CONTENT_SECURITY_POLICY
    );
    assert_eq!(login.headers()["x-frame-options"], "DENY");
    let html = login.text().await.unwrap();
    assert_clean_page(&html);
    // The hashed static files are served, cached for good, and have the CSP too.
    let css = html
        .split("href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let asset = client.get(url(&css)).send().await.unwrap();
    assert_eq!(asset.status(), StatusCode::OK);
    assert!(
        asset.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(
        client
            .get(url("/static/app.0000.css"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    // A wrong password: the form comes back with the username, never the password.
    add_user(&app, "vera", Role::Viewer).await;
    let post = |body: String| {
        client
            .post(url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let wrong = post(form(&[
        ("username", "vera"),
        ("password", "hunter2 is wrong"),
        ("code", ""),
    ]))
    .await
    .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    let html = wrong.text().await.unwrap();
    assert!(html.contains("The username or password is wrong.") && html.contains("value=\"vera\""));
    assert!(!html.contains("hunter2"), "the password is never sent back");
    let cross = client
        .post(url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .body(form(&[("username", "vera"), ("password", PASSWORD)]))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);

    // HTML in a description is shown as text.
    let key = app
        .call(
            Method::POST,
            "/api/v1/keys",
            Some(
                json!({"service": "openai", "environment": "production", "alias": "llm",
                        "description": "<script>alert(1)</script><img src=x onerror=alert(2)>",
                        "secret": OPENAI_KEY}),
            ),
        )
        .await;
    assert_eq!(key.0, StatusCode::CREATED, "{}", key.1);

    let signed = post(form(&[
        ("username", "vera"),
        ("password", PASSWORD),
        ("code", ""),
    ]))
    .await
    .unwrap();
    assert_eq!(
        signed.status(),
        StatusCode::SEE_OTHER,
        "{:?}",
        signed.text().await
    );
    // (status checked above; read the cookie from a second sign-in to keep the borrow simple)
    let signed = post(form(&[
        ("username", "vera"),
        ("password", PASSWORD),
        ("code", ""),
    ]))
    .await
    .unwrap();
    let cookie = signed.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let dashboard = client
        .get(url("/"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(dashboard.status(), StatusCode::OK);
    assert_eq!(dashboard.headers()["cache-control"], "no-store");
    let html = dashboard.text().await.unwrap();
    assert_clean_page(&html);
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "escaped"
    );
    assert!(!html.contains("<script>alert") && !html.contains("<img src=x"));
    let hint = key.1["hint"].as_str().unwrap();
    assert!(html.contains(hint), "the key appears as its hint {hint}");
    assert!(!html.contains(OPENAI_KEY), "never the value");

    // Signing out is a form post with the session's CSRF token; without it, refused.
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let logout = |body: String| {
        client
            .post(url("/logout"))
            .header(COOKIE, &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    assert_eq!(
        logout(String::new()).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        logout(form(&[("csrf", "forged")])).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let out = logout(form(&[("csrf", &csrf)])).await.unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(out.headers()[LOCATION], "/login?notice=signed_out");
    let after = client
        .get(url("/"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::SEE_OTHER, "the session is gone");
}

/// `/setup` creates the first owner with the token `serve` prints.
#[tokio::test]
async fn the_setup_page_creates_the_first_owner() {
    use secrecy::ExposeSecret;
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let token = app.app.issue_setup_token().await.unwrap().unwrap();
    let client = no_redirects();
    let page = client
        .get(format!("{}/setup", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_clean_page(&page.text().await.unwrap());
    let send = |token: &str| {
        client
            .post(format!("{}/setup", app.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("setup_token", token),
                ("username", "olga"),
                ("password", PASSWORD),
            ]))
            .send()
    };
    let wrong = send("kwsetup_wrong").await.unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let html = wrong.text().await.unwrap();
    assert!(html.contains("value=\"olga\"") && !html.contains("kwsetup_wrong"));
    let done = send(token.expose_secret()).await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(done.headers()[LOCATION], "/login?notice=set_up");
}

/// GETs a page with a session cookie, without following redirects.
pub(crate) async fn get_page(
    app: &TestApp,
    cookie: &str,
    path: &str,
) -> (StatusCode, String, String) {
    let response = no_redirects()
        .get(format!("{}{path}", app.base))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let csp = response
        .headers()
        .get(CONTENT_SECURITY_POLICY)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, csp, response.text().await.unwrap())
}

/// The forms inside `<main>` (the top bar's sign-out is outside it), by their action.
fn main_form_actions(html: &str) -> Vec<String> {
    let main = html.split("<main").nth(1).unwrap_or_default();
    main.split("<form method=\"post\" action=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn every_page_carries_the_csp_and_a_viewer_is_offered_no_action() {
    use crate::browser::enrolled_user;
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (status, key) = app
        .call(
            Method::POST,
            "/api/v1/keys",
            Some(
                json!({"service": "openai", "environment": "production", "alias": "bold",
                        "description": "<b>bold</b>", "secret": OPENAI_KEY}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let id = key["id"].as_str().unwrap();
    let (_, admin, _) = enrolled_user(&app, "ada", Role::Admin).await;
    let pages = [
        "/".to_owned(),
        "/?q=bold&status=active&category=llm-providers".into(),
        "/keys/new".into(),
        format!("/keys/{id}"),
        format!("/keys/{id}/reveal"),
        format!("/keys/{id}/delete"),
        format!("/keys/{id}/revoke"),
        format!("/keys/{id}/disable"),
        "/keys/deleted".into(),
        "/app-tokens".into(),
        "/usage?days=90".into(),
        "/alerts".into(),
        "/alerts?view=all".into(),
        "/approvals".into(),
        "/approvals?view=decided".into(),
        "/audit?action=key".into(),
        "/audit?verify=1".into(),
        "/users".into(),
        "/settings".into(),
        "/mfa/verify?next=/usage".into(),
    ];
    for path in &pages {
        let (status, csp, html) = get_page(&app, &admin.cookie, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {html}");
        assert_eq!(csp, keyward_server::ui::CONTENT_SECURITY_POLICY, "{path}");
        assert_clean_page(&html);
        assert!(
            !html.contains("<b>bold</b>"),
            "{path}: the description is text"
        );
        assert!(!html.contains(OPENAI_KEY), "{path}: never the value");
    }
    let (_, _, audit) = get_page(&app, &admin.cookie, "/audit?verify=1").await;
    assert!(audit.contains("data-verified=\"ok\""), "{audit}");
    let (_, _, detail) = get_page(&app, &admin.cookie, &format!("/keys/{id}")).await;
    let actions = main_form_actions(&detail);
    assert!(
        detail.contains(&format!("href=\"/keys/{id}/disable\""))
            && detail.contains("data-impact")
            && actions.iter().any(|a| a.ends_with("/edit")),
        "an admin may act: {actions:?}"
    );
    let (_, _, confirm) = get_page(&app, &admin.cookie, &format!("/keys/{id}/disable")).await;
    assert!(
        confirm.contains("Impact")
            && main_form_actions(&confirm)
                .iter()
                .any(|a| a.ends_with("/disable")),
        "disabling is confirmed after the impact: {confirm}"
    );

    // A viewer reads, and is offered nothing to do but sign out everywhere.
    add_user(&app, "vera", Role::Viewer).await;
    let viewer = crate::browser::sign_in(&app, "vera", PASSWORD)
        .await
        .unwrap();
    for path in [
        "/".to_owned(),
        format!("/keys/{id}"),
        "/keys/deleted".into(),
        "/app-tokens".into(),
        "/usage".into(),
        "/approvals".into(),
        "/settings".into(),
    ] {
        let (status, csp, html) = get_page(&app, &viewer.cookie, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {html}");
        assert_eq!(csp, keyward_server::ui::CONTENT_SECURITY_POLICY, "{path}");
        let actions: Vec<String> = main_form_actions(&html)
            .into_iter()
            .filter(|a| a != "/logout/everywhere")
            .collect();
        assert!(actions.is_empty(), "{path}: {actions:?}");
        for offered in [
            "href=\"/keys/new\"",
            "/reveal\"",
            "/delete\"",
            "/revoke\"",
            "/disable\"",
            "#rotate\"",
            "href=\"/audit\"",
            "href=\"/users\"",
        ] {
            assert!(!html.contains(offered), "{path}: {offered}");
        }
    }
    // Sections and pages of actions the viewer's role does not have are refused.
    for path in [
        "/keys/new".to_owned(),
        "/audit".into(),
        "/users".into(),
        format!("/keys/{id}/disable"),
    ] {
        let (status, csp, _) = get_page(&app, &viewer.cookie, &path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(csp, keyward_server::ui::CONTENT_SECURITY_POLICY, "{path}");
    }
    // And the server refuses the action anyway, whatever the page showed.
    let csrf = viewer.csrf.clone();
    let refused = no_redirects()
        .post(format!("{}/keys/{id}/disable", app.base))
        .header(COOKIE, &viewer.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", &csrf)]))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let (_, after) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(after["enabled"], true);
}

/// Posts a form with the session cookie and its CSRF token, without following redirects.
pub(crate) async fn post_form(
    app: &TestApp,
    b: &crate::browser::Browser,
    path: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, String, String) {
    let mut all = vec![("csrf", b.csrf.as_str())];
    all.extend_from_slice(fields);
    let response = no_redirects()
        .post(format!("{}{path}", app.base))
        .header(COOKIE, &b.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&all))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, location, response.text().await.unwrap())
}

#[tokio::test]
async fn key_forms_keep_what_was_typed_and_rotation_asks_the_provider_first() {
    use crate::browser::enrolled_user;
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (_provider, base) = crate::validation::Provider::start().await;
    app.point_service("openai", &base).await;
    let old_value = OPENAI_KEY.replace("WXYZ", "BBBB");
    let key = app
        .create_key("openai", "production", "main", &old_value)
        .await;
    let id = key["id"].as_str().unwrap();
    let (_, admin, _) = enrolled_user(&app, "ada", Role::Admin).await;

    // A refused edit comes back with everything typed and the error by its field.
    let (status, _, html) = post_form(
        &app,
        &admin,
        &format!("/keys/{id}/edit"),
        &[
            ("alias", "no <good>"),
            ("description", "kept text"),
            ("owner", "data team"),
            ("tags", "batch"),
            ("criticality", "high"),
            ("expires", ""),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    assert!(html.contains(">kept text</textarea>"), "{html}");
    assert!(html.contains("value=\"data team\""), "{html}");
    assert!(
        html.contains("value=\"no &lt;good&gt;\""),
        "typed alias kept, escaped"
    );
    assert!(html.contains("<option value=\"high\" selected"), "{html}");
    assert!(html.contains("class=\"error\" role=\"alert\""), "{html}");
    let (_, unchanged) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(unchanged["alias"], "main", "nothing changed");

    // Rotation: a new value the provider rejects is not stored; one it accepts becomes
    // the current version.
    let rejected = OPENAI_KEY.replace("WXYZ", "QQQQ");
    let (status, _, html) = post_form(
        &app,
        &admin,
        &format!("/keys/{id}/rotate"),
        &[("secret", &rejected)],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    assert!(
        html.contains("Not rotated") && html.contains("rejected"),
        "{html}"
    );
    assert!(
        !html.contains(&rejected),
        "the typed value is not sent back"
    );
    let (_, versions) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}/versions"), None)
        .await;
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions}");
    let (status, location, _) = post_form(
        &app,
        &admin,
        &format!("/keys/{id}/rotate"),
        &[("secret", OPENAI_KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, format!("/keys/{id}?notice=rotated"));
    let (_, after) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(after["current_version"], 2, "{after}");

    // The MFA policy form; a viewer may not post it.
    let (status, location, html) = post_form(
        &app,
        &admin,
        "/settings/mfa",
        &[
            ("required", "owner"),
            ("required", "admin"),
            ("step_up_minutes", "10"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    assert_eq!(location, "/settings");
    let (_, policy) = app.call(Method::GET, "/api/v1/policies/mfa", None).await;
    assert_eq!(policy["step_up_minutes"], 10, "{policy}");
    add_user(&app, "vera", Role::Viewer).await;
    let viewer = crate::browser::sign_in(&app, "vera", PASSWORD)
        .await
        .unwrap();
    let (status, _, _) = post_form(
        &app,
        &viewer,
        "/settings/mfa",
        &[("required", "owner"), ("step_up_minutes", "60")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// The first `apr_…` id in a page.
pub(crate) fn approval_id(html: &str) -> Option<String> {
    let start = html.find("apr_")?;
    Some(
        html[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect(),
    )
}

#[tokio::test]
async fn a_reveal_that_needs_approval_is_requested_approved_and_used_once_through_the_pages() {
    use crate::browser::enrolled_user;
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (status, policy) = app
        .call(
            Method::PUT,
            "/api/v1/policies/approvals",
            Some(json!({"rules": [{"actions": ["reveal"], "approvals": 1,
                                   "approver_roles": ["admin", "owner"]}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap();
    let (_, ada, _) = enrolled_user(&app, "ada", Role::Admin).await;
    let (_, otto, _) = enrolled_user(&app, "otto", Role::Owner).await;
    let reason = [("reason", "configure the fallback")];

    // Refused for want of approval: the page offers to ask for it, keeping the reason.
    let (status, _, html) = post_form(&app, &ada, &format!("/keys/{id}/reveal"), &reason).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
    assert!(
        html.contains("name=\"approval\" value=\"request\""),
        "{html}"
    );
    assert!(html.contains("value=\"configure the fallback\""), "{html}");
    assert!(!html.contains(OPENAI_KEY));
    let (status, location, _) = post_form(
        &app,
        &ada,
        &format!("/keys/{id}/reveal"),
        &[
            ("reason", "configure the fallback"),
            ("approval", "request"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, format!("/keys/{id}?notice=approval_requested"));

    // The requester cannot decide their own request; the owner approves it in the inbox.
    let (_, _, mine) = get_page(&app, &ada.cookie, "/approvals").await;
    assert!(
        !mine.contains("/decide\""),
        "no approve button on one's own request"
    );
    let (_, _, inbox) = get_page(&app, &otto.cookie, "/approvals").await;
    let apr = approval_id(&inbox).expect("the request is in the inbox");
    let (status, _, html) = post_form(
        &app,
        &otto,
        &format!("/approvals/{apr}/decide"),
        &[("comment", "ok for the migration"), ("decision", "approve")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");

    // The requester continues from "mine", once.
    let (_, _, mine) = get_page(&app, &ada.cookie, "/approvals?view=mine").await;
    let continue_at = format!("/keys/{id}/reveal?approval={apr}");
    assert!(mine.contains(&continue_at), "{mine}");
    let (status, _, form_page) = get_page(&app, &ada.cookie, &continue_at).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        form_page.contains(&format!("name=\"approval\" value=\"{apr}\"")),
        "{form_page}"
    );
    let under = [
        ("reason", "configure the fallback"),
        ("approval", apr.as_str()),
    ];
    let (status, _, shown) = post_form(&app, &ada, &format!("/keys/{id}/reveal"), &under).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert!(shown.contains(OPENAI_KEY), "revealed under the approval");
    let (status, _, again) = post_form(&app, &ada, &format!("/keys/{id}/reveal"), &under).await;
    assert_ne!(status, StatusCode::OK, "an approval is used once");
    assert!(!again.contains(OPENAI_KEY));
}

#[tokio::test]
async fn users_are_added_and_disabled_from_the_users_page_by_those_who_may() {
    use crate::browser::enrolled_user;
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (_, ada, _) = enrolled_user(&app, "ada", Role::Admin).await;
    let (status, _, html) = post_form(
        &app,
        &ada,
        "/users",
        &[
            ("username", "kim"),
            ("password", "short"),
            ("role", "key_manager"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    assert!(html.contains("value=\"kim\""), "the username is kept");
    assert!(
        html.contains("<option value=\"key_manager\" selected"),
        "and the role"
    );
    assert!(!html.contains("value=\"short\""), "never the password");
    let (status, location, _) = post_form(
        &app,
        &ada,
        "/users",
        &[
            ("username", "kim"),
            ("password", PASSWORD),
            ("role", "key_manager"),
        ],
    )
    .await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, "/users")
    );
    let (_, users) = app.call(Method::GET, "/api/v1/users", None).await;
    let kim = users["users"]
        .as_array()
        .or(users.as_array())
        .unwrap()
        .iter()
        .find(|u| u["username"] == "kim")
        .cloned()
        .unwrap();
    assert_eq!(kim["role"], "key_manager");
    let kim_id = kim["id"].as_str().unwrap();
    let (status, _, _) = post_form(&app, &ada, &format!("/users/{kim_id}/disable"), &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        crate::browser::sign_in(&app, "kim", PASSWORD)
            .await
            .is_err(),
        "disabled"
    );

    // A viewer's role may not add users, whatever it posts.
    add_user(&app, "vera", Role::Viewer).await;
    let viewer = crate::browser::sign_in(&app, "vera", PASSWORD)
        .await
        .unwrap();
    let (status, _, _) = post_form(
        &app,
        &viewer,
        "/users",
        &[
            ("username", "mallory"),
            ("password", PASSWORD),
            ("role", "owner"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, users) = app.call(Method::GET, "/api/v1/users", None).await;
    assert!(!users.to_string().contains("mallory"));
}

#[tokio::test]
async fn pages_refuse_step_up_actions_to_someone_without_a_second_factor() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    // Admins need not enrol under this policy, but reveal still needs a fresh check.
    let (status, policy) = app
        .call(
            Method::PUT,
            "/api/v1/policies/mfa",
            Some(json!({"required_roles": ["owner"], "step_up_minutes": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap();
    add_user(&app, "ada", Role::Admin).await;
    let ada = crate::browser::sign_in(&app, "ada", PASSWORD)
        .await
        .unwrap();
    for (path, fields) in [
        (
            format!("/keys/{id}/reveal"),
            vec![("reason", "just looking")],
        ),
        (format!("/keys/{id}/delete"), vec![]),
        (format!("/keys/{id}/rotate"), vec![("secret", OPENAI_KEY)]),
        (
            format!("/keys/{id}/rotations"),
            vec![("secret", OPENAI_KEY)],
        ),
    ] {
        let (status, _, html) = post_form(&app, &ada, &path, &fields).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {html}");
        assert!(!html.contains(OPENAI_KEY), "{path}");
    }
    let (_, after) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert!(
        after["deleted_at"].is_null() && after["current_version"] == 1,
        "{after}"
    );
}

#[tokio::test]
async fn a_key_is_revoked_from_its_page_after_seeing_what_depends_on_it() {
    use crate::browser::enrolled_user;
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap();
    app.app_token(
        json!({"name": "stockpulse-web", "services": ["openai"], "environments": ["production"]}),
    )
    .await;
    let (_, ada, _) = enrolled_user(&app, "ada", Role::Admin).await;
    let (status, _, page) = get_page(&app, &ada.cookie, &format!("/keys/{id}/revoke")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("stockpulse-web"),
        "the impact names the token"
    );
    let (status, _, html) =
        post_form(&app, &ada, &format!("/keys/{id}/revoke"), &[("reason", "")]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    let (status, location, _) = post_form(
        &app,
        &ada,
        &format!("/keys/{id}/revoke"),
        &[("reason", "pasted in a chat")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, format!("/keys/{id}?notice=revoked"));
    let (_, after) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(after["status"], "revoked");
    let (_, _, detail) = get_page(&app, &ada.cookie, &format!("/keys/{id}")).await;
    assert!(
        detail.contains("pasted in a chat") && !detail.contains("/revoke\""),
        "{detail}"
    );
    assert!(detail.contains("data-revocation=\"unchecked\""), "{detail}");

    // Asking the provider from the page (here it cannot be reached: nothing is proven).
    app.point_service("openai", "http://127.0.0.1:9").await;
    let (status, location, _) =
        post_form(&app, &ada, &format!("/keys/{id}/revocation/verify"), &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, format!("/keys/{id}?notice=revocation_checked"));
    let (_, _, detail) = get_page(&app, &ada.cookie, &format!("/keys/{id}")).await;
    assert!(
        detail.contains("data-revocation=\"inconclusive\""),
        "{detail}"
    );
}

#[tokio::test]
async fn a_guided_rotation_is_walked_from_the_key_page() {
    use crate::browser::enrolled_user;
    use crate::guided_rotation::{KeyedProvider, NEW_KEY};
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (provider, base) = KeyedProvider::start(&[OPENAI_KEY, NEW_KEY]).await;
    app.point_service("openai", &base).await;
    let key = app
        .create_key("openai", "production", "main", OPENAI_KEY)
        .await;
    let id = key["id"].as_str().unwrap();
    let (_, ada, _) = enrolled_user(&app, "ada", Role::Admin).await;
    let (_, _, page) = get_page(&app, &ada.cookie, &format!("/keys/{id}")).await;
    assert!(page.contains("Start a rotation"), "{page}");
    assert!(
        page.contains("name=\"admin_key\""),
        "OpenAI offers a managed rotation"
    );

    // Both a value and an admin key: refused, nothing stored.
    let (status, _, html) = post_form(
        &app,
        &ada,
        &format!("/keys/{id}/rotations"),
        &[
            ("secret", NEW_KEY),
            ("admin_key", id),
            ("project", "proj_1"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    assert!(!html.contains(NEW_KEY));
    let (status, location, _) = post_form(
        &app,
        &ada,
        &format!("/keys/{id}/rotations"),
        &[("secret", NEW_KEY), ("window_minutes", "30")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, format!("/keys/{id}#rotation"));
    let (_, rotations) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}/rotations"), None)
        .await;
    let rid = rotations[0]["id"].as_str().unwrap().to_owned();

    // Each step from the page, checking what the page offers next.
    for (action, fields, shown) in [
        ("validate", vec![], "data-rotation-step=\"validated\""),
        ("canary", vec![("percent", "20")], "20% · "),
        ("promote", vec![], "data-rotation-step=\"promoted\""),
        ("retire", vec![("confirm", "yes")], "Old key still live"),
    ] {
        if action == "retire" {
            // Inside the window, not without the confirmation box.
            let (status, _, html) =
                post_form(&app, &ada, &format!("/rotations/{rid}/retire"), &[]).await;
            assert_eq!(status, StatusCode::CONFLICT, "{html}");
            assert!(html.contains("confirm"), "{html}");
        }
        let (_, _, before) = get_page(&app, &ada.cookie, &format!("/keys/{id}")).await;
        assert!(
            before.contains(&format!("action=\"/rotations/{rid}/{action}\"")),
            "{action} offered: {before}"
        );
        let (status, location, html) =
            post_form(&app, &ada, &format!("/rotations/{rid}/{action}"), &fields).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{action}: {html}");
        assert_eq!(location, format!("/keys/{id}#rotation"));
        let (_, _, after) = get_page(&app, &ada.cookie, &format!("/keys/{id}")).await;
        assert!(after.contains(shown), "after {action}: {after}");
        assert!(!after.contains(NEW_KEY) && !after.contains(OPENAI_KEY));
    }
    // The provider's page is linked while the old key lives.
    let (_, _, page) = get_page(&app, &ada.cookie, &format!("/keys/{id}")).await;
    assert!(
        page.contains("https://platform.openai.com/api-keys"),
        "{page}"
    );
    provider.revoke(OPENAI_KEY);
    let (status, _, _) = post_form(&app, &ada, &format!("/rotations/{rid}/verify"), &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, page) = get_page(&app, &ada.cookie, &format!("/keys/{id}")).await;
    assert!(
        page.contains("data-rotation-step=\"revoked_verified\""),
        "{page}"
    );
    assert!(
        page.contains("Start a rotation"),
        "a finished rotation allows the next one"
    );
    let (status, _, html) = post_form(&app, &ada, &format!("/rotations/{rid}/bogus"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{html}");
}

#[tokio::test]
async fn a_role_that_may_only_rotate_rotates_from_the_page_with_the_provider_asked_first() {
    use crate::browser::enrolled_user;
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (_provider, base) = crate::validation::Provider::start().await;
    app.point_service("openai", &base).await;
    let key = app
        .create_key(
            "openai",
            "production",
            "main",
            &OPENAI_KEY.replace("WXYZ", "BBBB"),
        )
        .await;
    let id = key["id"].as_str().unwrap();
    let (status, role) = app
        .call(
            Method::POST,
            "/api/v1/roles",
            Some(json!({"id": "rotator", "permissions": ["keys_read", "keys_rotate"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{role}");
    let (rory_id, rory, _) = enrolled_user(&app, "rory", Role::Viewer).await;
    let (status, grant) = app
        .call(
            Method::POST,
            &format!("/api/v1/users/{rory_id}/grants"),
            Some(json!({"role": "rotator"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{grant}");
    // Validation is part of rotating, under keys_rotate: a rejected value is refused...
    let rejected = OPENAI_KEY.replace("WXYZ", "QQQQ");
    let (status, _, html) = post_form(
        &app,
        &rory,
        &format!("/keys/{id}/rotate"),
        &[("secret", &rejected)],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    assert!(html.contains("rejected"), "{html}");
    // ...and a good one becomes current, without keys_write.
    let (status, location, html) = post_form(
        &app,
        &rory,
        &format!("/keys/{id}/rotate"),
        &[("secret", OPENAI_KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    assert_eq!(location, format!("/keys/{id}?notice=rotated"));
    // The API offers the same check as an option of the same use case.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{id}/versions"),
            Some(json!({"secret": rejected, "validate": true})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "new_value_rejected", "{body}");
    let (_, after) = app
        .call(Method::GET, &format!("/api/v1/keys/{id}"), None)
        .await;
    assert_eq!(after["current_version"], 2, "{after}");
}

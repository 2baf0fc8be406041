//! The web UI in a real browser (Debian's headless Chromium): first-run setup, sign-in,
//! MFA enrolment with the QR page, the dashboard at 1280 px and at phone width — with the
//! CSP on and no violations in the console, and HTML in a description shown as text; the
//! add-key wizard with Validate against a fake provider; reveal after a step-up, gone after
//! 30 s; an app token and a proxied call that moves the dashboard; delete with its impact
//! assessment and restore; and a viewer who sees no button they cannot use.

use fantoccini::Locator;
use keyward_crypto::totp::TotpSecret;
use reqwest::Method;
use serde_json::json;

use std::sync::Arc;
use std::time::Duration;

use keyward_core::access::Role;

use crate::browser::{PASSWORD, add_user};
use crate::chrome::Chrome;
use crate::helpers::{Backend, OPENAI_KEY, TestApp};
use crate::validation::Provider;

const OTHER_KEY: &str =
    "sk-proj-Zyxwvutsrqponmlkjihgfedcba9876543210ZYXWVUTSRQPONMLKJIHGFEDCBA_-9876543210ABCD";
const XSS: &str = "<img src=x onerror=alert(1)><script>alert(2)</script>";

async fn fill(chrome: &Chrome, id: &str, value: &str) {
    chrome
        .client
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .send_keys(value)
        .await
        .unwrap();
}

async fn submit(chrome: &Chrome) {
    chrome
        .client
        .find(Locator::Css(
            "main form button[type=submit]:not([data-validate])",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Waits (up to 10 s) until the browser is at `want`, and says where it is.
async fn at(chrome: &Chrome, want: &str) -> String {
    let mut current = String::new();
    for _ in 0..100 {
        current = chrome.client.current_url().await.unwrap().path().to_owned();
        if current == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    current
}

/// Clicks the link with this text.
async fn follow(chrome: &Chrome, text: &str) {
    chrome
        .client
        .find(Locator::LinkText(text))
        .await
        .unwrap_or_else(|e| panic!("link {text:?}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn main_text(chrome: &Chrome) -> String {
    chrome
        .client
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Nothing the page did was refused by the CSP (the console since the last look).
async fn assert_no_csp_violations(chrome: &Chrome) {
    let violations: Vec<String> = chrome
        .console()
        .await
        .into_iter()
        .filter(|m| m.contains("Content Security Policy") || m.contains("Refused to"))
        .collect();
    assert!(violations.is_empty(), "CSP violations: {violations:?}");
}

/// Fills the add-key form for an OpenAI key with `alias` and submits it.
async fn add_key(chrome: &Chrome, alias: &str) {
    let c = &chrome.client;
    c.find(Locator::Css("#service option[value=openai]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    fill(chrome, "secret", OTHER_KEY).await;
    let field = c.find(Locator::Id("alias")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(alias).await.unwrap();
    submit(chrome).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_sign_in_enrol_and_see_the_dashboard_in_chromium() {
    let Some(chrome) = Chrome::start(1280, 900).await else {
        return;
    };
    // The server's clock is the test's, so the step-up window can pass without waiting.
    let clock = Arc::new(keyward_core::clock::ManualClock::new(jiff::Timestamp::now()));
    let app = TestApp::spawn_with_clock(Backend::Sqlite, Default::default(), clock.clone())
        .await
        .unwrap();
    let (provider, provider_base) = Provider::start().await;
    app.point_service("openai", &provider_base).await;
    let created = app
        .call(
            Method::POST,
            "/api/v1/keys",
            Some(
                json!({"service": "openai", "environment": "production", "alias": "summariser",
                        "description": XSS, "secret": OPENAI_KEY}),
            ),
        )
        .await;
    let hint = created.1["hint"].as_str().unwrap().to_owned();
    let token = {
        use secrecy::ExposeSecret;
        app.app
            .issue_setup_token()
            .await
            .unwrap()
            .unwrap()
            .expose_secret()
            .to_owned()
    };
    let c = &chrome.client;

    // Setup → sign-in page with a notice.
    c.goto(&format!("{}/setup", app.base)).await.unwrap();
    fill(&chrome, "setup_token", &token).await;
    fill(&chrome, "username", "olga").await;
    fill(&chrome, "password", PASSWORD).await;
    submit(&chrome).await;
    assert_eq!(at(&chrome, "/login").await, "/login");
    let notice = c
        .find(Locator::Css(".flash"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(notice.contains("set up"), "{notice}");

    // The password field is masked, with a working show/hide toggle.
    let password = c.find(Locator::Id("password")).await.unwrap();
    assert_eq!(
        password.attr("type").await.unwrap().as_deref(),
        Some("password")
    );
    let toggle = c
        .find(Locator::Css("[data-toggle-secret=password]"))
        .await
        .unwrap();
    toggle.click().await.unwrap();
    assert_eq!(
        password.attr("type").await.unwrap().as_deref(),
        Some("text")
    );
    toggle.click().await.unwrap();
    assert_eq!(
        password.attr("type").await.unwrap().as_deref(),
        Some("password")
    );

    // An owner must enrol before anything else.
    fill(&chrome, "username", "olga").await;
    fill(&chrome, "password", PASSWORD).await;
    submit(&chrome).await;
    assert_eq!(at(&chrome, "/mfa/enroll").await, "/mfa/enroll");
    submit(&chrome).await;
    let Ok(qr) = c.wait().for_element(Locator::Css("img.qr")).await else {
        panic!("no QR code on: {}", c.source().await.unwrap_or_default());
    };
    assert!(
        qr.attr("src")
            .await
            .unwrap()
            .unwrap()
            .starts_with("data:image/svg+xml;base64,")
    );
    let secret = c
        .find(Locator::Id("totp-secret"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let phone = TotpSecret::from_base32(&secret).unwrap();
    fill(&chrome, "code", &crate::browser::code_now(&app, &phone)).await;
    submit(&chrome).await;
    c.wait()
        .for_element(Locator::Css("ul.recovery"))
        .await
        .unwrap_or_else(|_| panic!("no recovery codes on the page"));
    let codes = c.find_all(Locator::Css("ul.recovery li")).await.unwrap();
    assert_eq!(codes.len(), 10, "{}", c.source().await.unwrap_or_default());
    c.find(Locator::LinkText("Continue to Keyward"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The dashboard: the key by its hint, the description as text, no script ran.
    assert_eq!(at(&chrome, "/").await, "/");
    let body = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("summariser") && body.contains(&hint),
        "{body}"
    );
    assert!(body.contains(XSS), "the description is shown as text");
    assert!(!body.contains(OPENAI_KEY));
    let alerted = c.get_alert_text().await;
    assert!(alerted.is_err(), "no alert() ran: {alerted:?}");
    let wide = chrome.screenshot("dashboard-1280").await;
    c.set_window_size(390, 844).await.unwrap();
    let narrow = chrome.screenshot("dashboard-390").await;
    eprintln!("screenshots: {} {}", wide.display(), narrow.display());

    assert_no_csp_violations(&chrome).await;

    // Add a key through the wizard: masked secret, an alias already taken is refused with
    // the typed values kept (never the secret), then a new alias works.
    c.set_window_size(1280, 900).await.unwrap();
    c.find(Locator::LinkText("Add a key"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(at(&chrome, "/keys/new").await, "/keys/new");
    let secret = c.find(Locator::Id("secret")).await.unwrap();
    assert_eq!(
        secret.attr("type").await.unwrap().as_deref(),
        Some("password")
    );
    chrome.screenshot("add-key-1280").await;
    c.set_window_size(390, 844).await.unwrap();
    chrome.screenshot("add-key-390").await;
    c.set_window_size(1280, 900).await.unwrap();

    // Validate sends the service's check request through Keyward to the (fake) provider,
    // which refuses this key; the typed key stays in its field.
    c.find(Locator::Css("#service option[value=openai]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    fill(&chrome, "secret", OTHER_KEY).await;
    c.find(Locator::Css("[data-validate]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let mut verdict = String::new();
    for _ in 0..50 {
        verdict = c
            .find(Locator::Id("validation"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if verdict.contains("rejected") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(verdict.contains("rejected this key"), "{verdict}");
    let checked = provider.seen();
    assert_eq!(checked.last().unwrap().path, "/v1/models");
    assert_eq!(
        checked.last().unwrap().authorization.as_deref(),
        Some(format!("Bearer {OTHER_KEY}").as_str())
    );
    let typed = c
        .find(Locator::Id("secret"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(typed.as_deref(), Some(OTHER_KEY), "the typed key stays");
    c.find(Locator::Id("secret"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    add_key(&chrome, "summariser").await;
    c.wait()
        .for_element(Locator::Css(".flash.error"))
        .await
        .unwrap();
    let page = c.source().await.unwrap();
    assert!(
        page.contains("value=\"summariser\""),
        "the alias typed is kept"
    );
    assert!(!page.contains(OTHER_KEY), "the secret is not sent back");
    add_key(&chrome, "backup").await;
    assert_eq!(at(&chrome, "/").await, "/");
    let body = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("Key added") && body.contains("backup"),
        "{body}"
    );
    assert!(!body.contains(OTHER_KEY));
    assert_no_csp_violations(&chrome).await;

    let summariser = created.1["id"].as_str().unwrap().to_owned();
    reveal_after_step_up(&chrome, &app, &clock, &phone, &summariser).await;
    let token = create_app_token(&chrome).await;
    proxied_call_moves_the_dashboard(&chrome, &app, &token, &summariser).await;
    delete_and_restore(&chrome, &summariser).await;
    assert_no_csp_violations(&chrome).await;

    // Signing out returns to the sign-in page; the dashboard asks to sign in again.
    c.find(Locator::Css("form[action='/logout'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(at(&chrome, "/login").await, "/login");
    c.goto(&format!("{}/", app.base)).await.unwrap();
    assert_eq!(at(&chrome, "/login").await, "/login");

    viewer_sees_no_mutating_buttons(&chrome, &app, &summariser).await;
    chrome.close().await;
}

/// Reveal: the step-up window has passed, so Keyward asks for a fresh code first; the value
/// shows, then is gone from the page after 30 s.
async fn reveal_after_step_up(
    chrome: &Chrome,
    app: &TestApp,
    clock: &keyward_core::clock::ManualClock,
    phone: &TotpSecret,
    key: &str,
) {
    let c = &chrome.client;
    clock.advance(jiff::SignedDuration::from_mins(6));
    c.goto(&format!("{}/keys/{key}", app.base)).await.unwrap();
    assert_eq!(
        at(chrome, &format!("/keys/{key}")).await,
        format!("/keys/{key}")
    );
    let detail = main_text(chrome).await;
    assert!(detail.contains("App tokens that can use it"), "{detail}");
    assert!(!detail.contains(OPENAI_KEY));
    chrome.screenshot("key-detail-1280").await;
    c.set_window_size(390, 844).await.unwrap();
    chrome.screenshot("key-detail-390").await;
    c.set_window_size(1280, 900).await.unwrap();
    follow(chrome, "Reveal…").await;
    assert_eq!(
        at(chrome, "/mfa/verify").await,
        "/mfa/verify",
        "step-up first"
    );
    fill(chrome, "code", &crate::browser::code_now(app, phone)).await;
    submit(chrome).await;
    assert_eq!(
        at(chrome, &format!("/keys/{key}/reveal")).await,
        format!("/keys/{key}/reveal")
    );
    fill(chrome, "reason", "configure the batch job").await;
    submit(chrome).await;
    let shown = c
        .wait()
        .for_element(Locator::Id("revealed"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(shown, OPENAI_KEY);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let page = c.source().await.unwrap();
    assert!(!page.contains(OPENAI_KEY), "the value is gone after 30 s");
    // Our script clears it and says so; the page's Refresh header (for browsers without
    // JavaScript) then loads the key's page. Either way the value is gone.
    let path = c.current_url().await.unwrap().path().to_owned();
    assert!(
        page.contains("cleared") || path == format!("/keys/{key}"),
        "{path}"
    );
    let (_, trail) = app
        .call(Method::GET, "/api/v1/audit?action=key.reveal", None)
        .await;
    assert!(
        trail.to_string().contains("configure the batch job"),
        "{trail}"
    );
}

/// Creates an app token for OpenAI in production; returns the token, shown once with
/// snippets that carry it.
async fn create_app_token(chrome: &Chrome) -> String {
    let c = &chrome.client;
    follow(chrome, "App tokens").await;
    assert_eq!(at(chrome, "/app-tokens").await, "/app-tokens");
    fill(chrome, "name", "stockpulse-web").await;
    c.find(Locator::Css("#services option[value=openai]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    submit(chrome).await;
    let token = c
        .wait()
        .for_element(Locator::Id("new-token"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(token.starts_with("kwa_") || token.len() > 20, "{token}");
    let snippets = c.find_all(Locator::Css("pre.snippet")).await.unwrap();
    assert!(snippets.len() >= 2, "curl and the OpenAI SDK");
    let sdk = snippets[1].text().await.unwrap();
    assert!(
        sdk.contains("/proxy/openai/v1") && sdk.contains(&token),
        "{sdk}"
    );
    token
}

/// A call through the proxy with the token: the dashboard then shows the key as used and
/// its 7-day sparkline counts the call.
async fn proxied_call_moves_the_dashboard(chrome: &Chrome, app: &TestApp, token: &str, key: &str) {
    let c = &chrome.client;
    let answer = app
        .client
        .get(format!("{}/proxy/openai/v1/models", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    let row = format!("tr[data-key='{key}']");
    let mut last = (String::new(), String::new());
    for _ in 0..50 {
        c.goto(&format!("{}/", app.base)).await.unwrap();
        let found = c.find(Locator::Css(&row)).await.unwrap();
        let used = found
            .find(Locator::Css("td.last-used"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let total = found
            .find(Locator::Css("svg.spark"))
            .await
            .unwrap()
            .attr("data-total")
            .await
            .unwrap()
            .unwrap_or_default();
        last = (used, total);
        if last.0 != "never" && last.1 != "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last.0 != "never" && last.1 == "1", "{last:?}");
    chrome.screenshot("dashboard-after-call-1280").await;
    c.goto(&format!("{}/usage?days=7", app.base)).await.unwrap();
    let usage = main_text(chrome).await;
    assert!(
        usage.contains("By key") && usage.contains("summariser"),
        "{usage}"
    );
    chrome.screenshot("usage-1280").await;
    c.set_window_size(390, 844).await.unwrap();
    chrome.screenshot("usage-390").await;
    c.set_window_size(1280, 900).await.unwrap();
}

/// Delete shows what depends on the key first; the key then waits in Deleted keys and
/// comes back with Restore.
async fn delete_and_restore(chrome: &Chrome, key: &str) {
    let c = &chrome.client;
    c.goto(&format!(
        "{}/keys/{key}",
        c.current_url()
            .await
            .unwrap()
            .origin()
            .ascii_serialization()
    ))
    .await
    .unwrap();
    follow(chrome, "Delete…").await;
    assert_eq!(
        at(chrome, &format!("/keys/{key}/delete")).await,
        format!("/keys/{key}/delete")
    );
    let impact = main_text(chrome).await;
    assert!(
        impact.contains("stockpulse-web"),
        "the token that uses it: {impact}"
    );
    let requests = c
        .find(Locator::Css("[data-requests-7d]"))
        .await
        .unwrap()
        .attr("data-requests-7d")
        .await
        .unwrap();
    assert_eq!(requests.as_deref(), Some("1"), "{impact}");
    submit(chrome).await;
    assert_eq!(at(chrome, "/keys/deleted").await, "/keys/deleted");
    let deleted = main_text(chrome).await;
    assert!(deleted.contains("summariser"), "{deleted}");
    c.find(Locator::Css("form[action$='/restore'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        at(chrome, &format!("/keys/{key}")).await,
        format!("/keys/{key}")
    );
    assert!(main_text(chrome).await.contains("Key restored"));
}

/// A viewer reads everything but is offered no action: no add, enable/disable, validate,
/// reveal, delete, token creation or revocation.
async fn viewer_sees_no_mutating_buttons(chrome: &Chrome, app: &TestApp, key: &str) {
    let c = &chrome.client;
    add_user(app, "vera", Role::Viewer).await;
    c.goto(&format!("{}/login", app.base)).await.unwrap();
    fill(chrome, "username", "vera").await;
    fill(chrome, "password", PASSWORD).await;
    submit(chrome).await;
    assert_eq!(at(chrome, "/").await, "/");
    for path in [
        "/".to_owned(),
        format!("/keys/{key}"),
        "/app-tokens".into(),
        "/keys/deleted".into(),
        "/usage".into(),
    ] {
        c.goto(&format!("{}{path}", app.base)).await.unwrap();
        let page = c.source().await.unwrap();
        assert!(page.contains("vera"), "{path}: signed in as the viewer");
        let mutating = c
            .find_all(Locator::Css("main form[method=post], main a[href$='/reveal'], main a[href$='/delete'], a[href='/keys/new']"))
            .await
            .unwrap();
        assert!(
            mutating.is_empty(),
            "{path}: {} mutating controls",
            mutating.len()
        );
    }
    assert_no_csp_violations(chrome).await;
}

//! The web UI in a real browser (Debian's headless Chromium): first-run setup, sign-in,
//! MFA enrolment with the QR page, the dashboard at 1280 px and at phone width — with the
//! CSP on and no violations in the console, and HTML in a description shown as text.

use fantoccini::Locator;
use keyward_crypto::totp::TotpSecret;
use reqwest::Method;
use serde_json::json;

use crate::browser::PASSWORD;
use crate::chrome::Chrome;
use crate::helpers::{Backend, OPENAI_KEY, TestApp};

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
        .find(Locator::Css("main form button[type=submit]"))
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
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
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
    let now = u64::try_from(jiff::Timestamp::now().as_second()).unwrap();
    fill(&chrome, "code", &phone.code_at(now).unwrap()).await;
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
    chrome.close().await;
}

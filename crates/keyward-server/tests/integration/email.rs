//! Personal e-mail subscriptions: a person subscribes through the API (by kind and
//! category; only keys they may read), and the message arrives at a fake SMTP server (the outside world) with
//! its subject, recipient and no secret; bad input and a server without SMTP are refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_core::access::Role;
use keyward_server::config::RawSettings;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::browser::{Browser, PASSWORD, add_user, browse, sign_in};
use crate::helpers::{Backend, OPENAI_KEY, TestApp, assert_error};
use crate::validation::AV_KEY;

/// One message as the SMTP server received it.
#[derive(Debug, Clone)]
struct Mail {
    recipients: Vec<String>,
    data: String,
}

/// A minimal SMTP server: accepts every message and keeps it.
#[derive(Clone, Default)]
struct SmtpServer {
    mail: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpServer {
    async fn start() -> (Self, u16) {
        let server = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mail = server.mail.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(session(socket, mail.clone()));
            }
        });
        (server, port)
    }

    fn mail(&self) -> Vec<Mail> {
        self.mail.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Mail> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.mail();
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} messages: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn session(socket: tokio::net::TcpStream, mail: Arc<Mutex<Vec<Mail>>>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 fake.example ESMTP\r\n").await;
    let mut recipients = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let verb = line.to_ascii_uppercase();
        let answer: &[u8] = if verb.starts_with("EHLO") {
            b"250-fake.example\r\n250 8BITMIME\r\n"
        } else if verb.starts_with("RCPT TO:") {
            recipients.push(
                line[8..]
                    .trim()
                    .trim_matches(|c| c == '<' || c == '>')
                    .to_owned(),
            );
            b"250 OK\r\n"
        } else if verb == "DATA" {
            let _ = write.write_all(b"354 go ahead\r\n").await;
            let mut data = String::new();
            while let Ok(Some(l)) = lines.next_line().await {
                if l == "." {
                    break;
                }
                data.push_str(&l);
                data.push('\n');
            }
            mail.lock().unwrap().push(Mail {
                recipients: std::mem::take(&mut recipients),
                data,
            });
            b"250 queued\r\n"
        } else if verb == "QUIT" {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 OK\r\n"
        };
        if write.write_all(answer).await.is_err() {
            return;
        }
    }
}

async fn subscribe(app: &TestApp, b: &Browser, body: Value) -> (StatusCode, Value) {
    browse(
        app,
        b,
        Method::PUT,
        "/api/v1/me/subscription",
        Some(body),
        Some(&b.csrf),
        None,
    )
    .await
}

async fn revoke(app: &TestApp, id: &str) {
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/v1/keys/{id}/revoke"),
            Some(json!({"reason": "leaked in a log"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn people_hear_by_email_of_the_kinds_and_categories_they_chose() {
    let (smtp, port) = SmtpServer::start().await;
    let Some(app) = TestApp::spawn_with(
        Backend::Sqlite,
        RawSettings {
            smtp_url: Some(format!("smtp://127.0.0.1:{port}")),
            smtp_from: Some("Keyward <keyward@example.com>".into()),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    add_user(&app, "ada", Role::Viewer).await;
    add_user(&app, "lee", Role::Viewer).await;
    let ada = sign_in(&app, "ada", PASSWORD).await.unwrap();
    let lee = sign_in(&app, "lee", PASSWORD).await.unwrap();

    // Bad input is refused and changes nothing.
    assert_error(
        &subscribe(&app, &ada, json!({"email": "ada at example"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_email",
    );
    assert_error(
        &subscribe(
            &app,
            &ada,
            json!({"email": "ada@example.com", "kinds": ["gossip"]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_notification_kind",
    );
    assert_error(
        &subscribe(
            &app,
            &ada,
            json!({"email": "ada@example.com", "categories": ["nope"]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_category",
    );
    assert_error(
        &app.call(
            Method::PUT,
            "/api/v1/me/subscription",
            Some(json!({"email": "ops@example.com"})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "user_required",
    );
    let (status, _) = browse(
        &app,
        &ada,
        Method::GET,
        "/api/v1/me/subscription",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, mine) = subscribe(
        &app,
        &ada,
        json!({"email": "ada@example.com", "kinds": ["key_revoked"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(mine["email"], "ada@example.com");
    let (status, _) = subscribe(
        &app,
        &lee,
        json!({"email": "lee@example.com", "categories": ["financial-data"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let llm = app
        .create_key("openai", "production", "chat", OPENAI_KEY)
        .await;
    revoke(&app, llm["id"].as_str().unwrap()).await;
    let quotes = app
        .create_key("alpha-vantage", "production", "quotes", AV_KEY)
        .await;
    revoke(&app, quotes["id"].as_str().unwrap()).await;

    let mail = smtp.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mail = if smtp.mail().len() > mail.len() {
        smtp.mail()
    } else {
        mail
    };
    let to = |who: &str| -> Vec<&Mail> {
        mail.iter()
            .filter(|m| m.recipients.iter().any(|r| r == who))
            .collect()
    };
    assert_eq!(to("ada@example.com").len(), 2, "{mail:?}");
    let lees = to("lee@example.com");
    assert_eq!(lees.len(), 1, "Lee wants market data only: {mail:?}");
    assert!(
        lees[0]
            .data
            .contains("Subject: [Keyward] key revoked: quotes (alpha-vantage, production)")
            && lees[0].data.contains("To: lee@example.com")
            && lees[0].data.contains("leaked in a log"),
        "{}",
        lees[0].data
    );
    for m in &mail {
        assert!(
            m.data.contains("From: Keyward <keyward@example.com>"),
            "{}",
            m.data
        );
        assert!(
            !m.data.contains(OPENAI_KEY) && !m.data.contains(AV_KEY),
            "no value in a message"
        );
    }

    // The person's delivery log shows the server's acceptance.
    let (_, mine) = browse(
        &app,
        &ada,
        Method::GET,
        "/api/v1/me/subscription",
        None,
        None,
        None,
    )
    .await;
    let deliveries = mine["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2, "{mine}");
    assert!(
        deliveries
            .iter()
            .all(|d| d["status"] == "delivered" && d["last_status"] == 250),
        "{mine}"
    );
    let (status, _) = browse(
        &app,
        &ada,
        Method::DELETE,
        "/api/v1/me/subscription",
        None,
        Some(&ada.csrf),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // The settings page does the same: a refusal keeps what was typed.
    let (status, _, html) = crate::ui::post_form(
        &app,
        &ada,
        "/settings/notifications",
        &[("email", "ada-at-example"), ("kind", "key_expiring")],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        html.contains("value=\"ada-at-example\"")
            && html.contains("value=\"key_expiring\" checked"),
        "{html}"
    );
    let (status, location, _) = crate::ui::post_form(
        &app,
        &ada,
        "/settings/notifications",
        &[
            ("email", "ada@example.com"),
            ("kind", "key_expiring"),
            ("category", "llm-providers"),
        ],
    )
    .await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, "/settings#notifications")
    );
    let (_, mine) = browse(
        &app,
        &ada,
        Method::GET,
        "/api/v1/me/subscription",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(
        (&mine["kinds"], &mine["categories"]),
        (&json!(["key_expiring"]), &json!(["llm-providers"]))
    );
    let (_, _, settings) = crate::ui::get_page(&app, &ada.cookie, "/settings").await;
    assert!(settings.contains("Unsubscribe"), "{settings}");
}

#[tokio::test]
async fn without_smtp_a_subscription_is_refused() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    add_user(&app, "ada", Role::Viewer).await;
    let ada = sign_in(&app, "ada", PASSWORD).await.unwrap();
    assert_error(
        &subscribe(&app, &ada, json!({"email": "ada@example.com"})).await,
        StatusCode::CONFLICT,
        "email_not_configured",
    );
}

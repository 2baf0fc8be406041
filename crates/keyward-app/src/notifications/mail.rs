//! Notification e-mail: the SMTP server and sender ([`Smtp`]) and the transport
//! ([`Mailer`], lettre over rustls).

use std::time::Duration;

use secrecy::SecretString;

use keyward_core::Error;

/// The SMTP server notification e-mail goes through, and its sender.
#[derive(Debug, Clone)]
pub struct Smtp {
    /// Carries the server's credentials: secret.
    pub url: SecretString,
    pub from: lettre::message::Mailbox,
}

/// Sends notification e-mail through the configured SMTP server.
#[derive(Clone)]
pub struct Mailer {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl std::fmt::Debug for Mailer {
    /// The transport holds the server's credentials: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from).finish()
    }
}

impl Mailer {
    pub fn new(smtp: &Smtp) -> Result<Self, Error> {
        use secrecy::ExposeSecret;
        let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(
            smtp.url.expose_secret(),
        )
        .map_err(|_| Error::invalid("invalid_smtp_url", "smtp_url is not a usable SMTP URL"))?
        .timeout(Some(Duration::from_secs(20)))
        .build();
        Ok(Self {
            transport,
            from: smtp.from.clone(),
        })
    }

    /// Sends one message; `Ok(250)` once the server accepted it.
    pub(crate) async fn send(&self, to: &str, subject: &str, body: String) -> Result<u16, String> {
        use lettre::AsyncTransport;
        let to: lettre::message::Mailbox = to
            .parse()
            .map_err(|_| "the subscription's address is not valid".to_owned())?;
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| format!("could not build the message: {e}"))?;
        match self.transport.send(message).await {
            Ok(response) => Ok(u16::from(response.code())),
            Err(e) => Err(match e.status() {
                Some(code) => format!("the SMTP server refused: {code}"),
                None => "the SMTP server could not be reached".to_owned(),
            }),
        }
    }
}

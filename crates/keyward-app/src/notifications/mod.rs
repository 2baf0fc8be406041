//! Notifications (`impl App`): webhooks (create, list, delete, delivery log), personal
//! e-mail subscriptions (one per user, only for keys the user may read), queuing an event
//! for every subscriber that wants it, delivering due deliveries (webhooks signed with their
//! secret, e-mail through the configured SMTP server), and the periodic scan for rotation
//! and expiry reminders.
//!
//! Webhooks are vault configuration that makes Keyward call out, so managing them needs
//! `access_write` everywhere (owner, admin). An address is resolved when the webhook is
//! created and again before every delivery; loopback and private-network addresses are
//! refused unless the webhook was created with `allow_private_network`.

pub mod about;
pub mod mail;

use std::net::IpAddr;

use keyward_core::access::Permission;
use keyward_core::audit::ActorKind;
use keyward_core::id::{DeliveryId, WebhookId};
use keyward_core::key::{Key, KeyStatus};
use keyward_core::notification::{Delivery, NotificationKind, Webhook, ensure_reachable};
use keyward_core::rotation::RotationState;
use keyward_core::{Error, ErrorKind, label};
use secrecy::SecretString;
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::{Change, Subject};

pub use about::About;
pub use mail::{Mailer, Smtp};

/// The subject and plain-text body of a notification e-mail.
fn email_text(delivery: &keyward_core::notification::Delivery) -> (String, String) {
    let body: serde_json::Value = serde_json::from_str(&delivery.body).unwrap_or_default();
    let data = &body["data"];
    let about = data["alias"]
        .as_str()
        .map(|alias| {
            format!(
                ": {alias} ({}, {})",
                data["service"].as_str().unwrap_or_default(),
                data["environment"].as_str().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    let subject = format!(
        "[Keyward] {}{about}",
        delivery.kind.as_str().replace('_', " ")
    );
    let details = serde_json::to_string_pretty(data).unwrap_or_default();
    let text = format!(
        "{subject}\n\nEvent: {}\nAt: {}\n\n{details}\n\nYou get this because of your notification subscription in Keyward; change it on the settings page.\n",
        body["event"].as_str().unwrap_or_default(),
        body["at"].as_str().unwrap_or_default(),
    );
    (subject, text)
}

/// The user behind a request: personal subscriptions belong to people, not tokens.
fn person(actor: &Actor) -> Result<keyward_core::id::UserId, Error> {
    if actor.kind != ActorKind::User {
        return Err(Error::new(
            ErrorKind::Forbidden,
            "user_required",
            "subscriptions belong to people: sign in as a user",
        ));
    }
    actor
        .id
        .parse()
        .map_err(|_| Error::internal("a signed-in user without a user id"))
}

/// An e-mail address as accepted for a subscription.
fn parse_email(text: &str) -> Result<String, Error> {
    let address: lettre::Address = text.trim().parse().map_err(|_| {
        Error::invalid(
            "invalid_email",
            format!("`{}` is not an e-mail address", label::printable(text)),
        )
    })?;
    Ok(address.to_string())
}

/// How long a claimed delivery is held by the instance that claimed it.
const LEASE: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);
/// Keys expiring within this many days are reported as expiring.
pub const EXPIRY_REMINDER_DAYS: i64 = 7;

/// A webhook URL as accepted: http(s), a host, no credentials in it.
fn parse_url(text: &str) -> Result<url::Url, Error> {
    let bad = |why: &str| Error::invalid("invalid_webhook_url", format!("the webhook URL {why}"));
    let url = url::Url::parse(text.trim()).map_err(|_| bad("is not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must use http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "may not carry credentials; the signature authenticates Keyward",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if text.len() > 2_000 {
        return Err(bad("is longer than 2000 characters"));
    }
    Ok(url)
}

/// Every address the URL's host resolves to now.
async fn resolve(url: &url::Url) -> Result<Vec<IpAddr>, Error> {
    let host = url
        .host_str()
        .ok_or_else(|| Error::invalid("invalid_webhook_url", "the webhook URL has no host"))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let found = tokio::net::lookup_host((host, port)).await.map_err(|_| {
        Error::invalid("invalid_webhook_url", "the webhook's host does not resolve")
    })?;
    Ok(found.map(|a| a.ip()).collect())
}

impl App {
    /// Whether e-mail can be sent (SMTP is configured): subscriptions are offered only then.
    pub fn sends_email(&self) -> bool {
        self.mailer.is_some()
    }
}

impl App {
    /// Registers a webhook; returns it with its signing secret (shown once).
    pub async fn create_webhook(
        &self,
        actor: &Actor,
        url: &str,
        kinds: Vec<NotificationKind>,
        categories: Vec<String>,
        allow_private_network: bool,
    ) -> Result<(Webhook, SecretString), Error> {
        App::require_everywhere(actor, Permission::AccessWrite)?;
        let parsed = parse_url(url)?;
        self.ensure_categories(&categories).await?;
        ensure_reachable(&resolve(&parsed).await?, allow_private_network)?;
        let now = self.now();
        let webhook = Webhook {
            id: WebhookId::generate(now, &*self.random),
            url: parsed.to_string(),
            owner: None,
            kinds,
            categories,
            allow_private_network,
            created_by: actor.name.clone(),
            created_at: now,
        };
        self.apply(actor, Change::new("webhook.create", Subject::vault(format!("webhook:{}", webhook.id)), Permission::AccessWrite, json!({"host": parsed.host_str(), "kinds": webhook.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                   "categories": webhook.categories, "allow_private_network": allow_private_network})), self.store.insert_webhook(&webhook))
        .await?;
        let secret = self.audit.webhook_secret(webhook.id.as_str());
        Ok((webhook, secret))
    }

    pub async fn webhooks(&self, actor: &Actor) -> Result<Vec<Webhook>, Error> {
        App::require_everywhere(actor, Permission::AccessWrite)?;
        self.store.webhooks().await
    }

    pub async fn delete_webhook(&self, actor: &Actor, id: &WebhookId) -> Result<(), Error> {
        let deleted = self
            .apply(
                actor,
                Change::new(
                    "webhook.delete",
                    Subject::vault(format!("webhook:{id}")),
                    Permission::AccessWrite,
                    json!({}),
                ),
                self.store.delete_webhook(id),
            )
            .await?;
        if deleted {
            Ok(())
        } else {
            Err(Error::not_found(
                "webhook_not_found",
                format!("there is no webhook {id}"),
            ))
        }
    }

    /// A webhook's delivery log, newest first.
    pub async fn webhook_deliveries(
        &self,
        actor: &Actor,
        id: &WebhookId,
    ) -> Result<Vec<Delivery>, Error> {
        App::require_everywhere(actor, Permission::AccessWrite)?;
        if !self.store.webhooks().await?.iter().any(|w| w.id == *id) {
            return Err(Error::not_found(
                "webhook_not_found",
                format!("there is no webhook {id}"),
            ));
        }
        self.store.deliveries(id, 100).await
    }

    /// Queues an event for every webhook that wants it. Best effort: a failure is logged,
    /// never the caller's failure (the operation that caused the event has happened).
    /// `dedupe` names the event so it is queued once per webhook however often it is seen.
    pub async fn notify(
        &self,
        kind: NotificationKind,
        about: About<'_>,
        dedupe: String,
        data: serde_json::Value,
    ) {
        if let Err(e) = self.try_notify(kind, about, dedupe, data).await {
            tracing::warn!(error = %e, kind = kind.as_str(), "could not queue a notification");
        }
    }

    async fn try_notify(
        &self,
        kind: NotificationKind,
        about: About<'_>,
        dedupe: String,
        data: serde_json::Value,
    ) -> Result<u64, Error> {
        let now = self.now();
        let category = about.category;
        let mut deliveries = Vec::new();
        for w in self.store.webhooks().await? {
            if !w.wants(kind, category) {
                continue;
            }
            if let Some(owner) = &w.owner
                && !self.may_hear(owner, about).await?
            {
                continue;
            }
            let id = DeliveryId::generate(now, &*self.random);
            let body = json!({"id": id.as_str(), "kind": kind.as_str(), "event": dedupe,
                              "at": now.to_string(), "category": category, "data": data});
            deliveries.push(Delivery::new(
                id,
                w.id,
                kind,
                dedupe.clone(),
                body.to_string(),
                now,
            ));
        }
        self.store.enqueue_deliveries(&deliveries).await
    }

    /// Whether a person may hear of an event: an enabled user who may read keys where it
    /// happened (events about no key: who may read keys everywhere).
    async fn may_hear(
        &self,
        owner: &keyward_core::id::UserId,
        about: About<'_>,
    ) -> Result<bool, Error> {
        let Some(user) = self.store.user(owner).await? else {
            return Ok(false);
        };
        if user.disabled {
            return Ok(false);
        }
        let reach = self
            .user_access(&user, None)
            .await?
            .reach(Permission::KeysRead);
        Ok(match (about.category, about.environment) {
            (Some(category), Some(environment)) => reach.covers(category, environment),
            _ => reach.is_everywhere(),
        })
    }

    /// The caller's own e-mail subscription, if any.
    pub async fn my_subscription(&self, actor: &Actor) -> Result<Option<Webhook>, Error> {
        let owner = person(actor)?;
        Ok(self
            .store
            .webhooks()
            .await?
            .into_iter()
            .find(|w| w.owner.as_ref() == Some(&owner)))
    }

    /// The latest deliveries to the caller's own subscription `subscription`, newest first.
    pub async fn subscription_deliveries(
        &self,
        actor: &Actor,
        subscription: &Webhook,
    ) -> Result<Vec<Delivery>, Error> {
        if subscription.owner.as_ref() != Some(&person(actor)?) {
            return Err(Error::not_found(
                "subscription_not_found",
                "you have no e-mail subscription",
            ));
        }
        self.store.deliveries(&subscription.id, 20).await
    }

    /// Subscribes the caller by e-mail to `kinds` (empty: all) about keys in `categories`
    /// (empty: all they may read), replacing their earlier subscription.
    pub async fn subscribe(
        &self,
        actor: &Actor,
        email: &str,
        kinds: Vec<NotificationKind>,
        categories: Vec<String>,
    ) -> Result<Webhook, Error> {
        let owner = person(actor)?;
        if self.mailer.is_none() {
            return Err(Error::new(
                ErrorKind::Conflict,
                "email_not_configured",
                "this Keyward sends no e-mail: an administrator must set smtp_url and smtp_from first",
            ));
        }
        let address = parse_email(email)?;
        self.ensure_categories(&categories).await?;
        let now = self.now();
        let subscription = Webhook {
            id: WebhookId::generate(now, &*self.random),
            url: format!("mailto:{address}"),
            owner: Some(owner),
            kinds,
            categories,
            allow_private_network: false,
            created_by: actor.name.clone(),
            created_at: now,
        };
        self.apply(
            actor,
            Change::own(
                "subscription.set",
                format!("user:{}", actor.id),
                json!({"kinds": subscription.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                   "categories": subscription.categories}),
            ),
            self.store.put_subscription(&subscription),
        )
        .await?;
        Ok(subscription)
    }

    /// Ends the caller's e-mail subscription.
    pub async fn unsubscribe(&self, actor: &Actor) -> Result<(), Error> {
        let Some(mine) = self.my_subscription(actor).await? else {
            return Err(Error::not_found(
                "subscription_not_found",
                "you have no e-mail subscription",
            ));
        };
        self.apply(
            actor,
            Change::own(
                "subscription.delete",
                format!("user:{}", actor.id),
                json!({}),
            ),
            self.store.delete_webhook(&mine.id),
        )
        .await?;
        Ok(())
    }

    /// Refuses the first name that is not a category (`unknown_category`).
    pub(crate) async fn ensure_categories(&self, categories: &[String]) -> Result<(), Error> {
        let known: Vec<String> = self
            .store
            .categories()
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        match categories.iter().find(|c| !known.contains(c)) {
            Some(unknown) => Err(Error::invalid(
                "unknown_category",
                format!("there is no category `{}`", label::printable(unknown)),
            )),
            None => Ok(()),
        }
    }

    /// The category of a key's service (for subscriptions by category).
    pub(crate) async fn category_of(&self, key: &Key) -> Option<String> {
        self.catalog()
            .await
            .ok()
            .and_then(|c| c.get(&key.service_id).map(|s| s.category.clone()))
    }

    /// Sends every due delivery once (leased, so another instance does not send it too),
    /// signed; records the outcome. Returns how many were attempted.
    pub async fn deliver_notifications(
        &self,
        client: &keyward_proxy::Outbound,
    ) -> Result<usize, Error> {
        let now = self.now();
        let due = self
            .store
            .claim_due_deliveries(now, now.saturating_add(LEASE).unwrap_or(now), 50)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let webhooks = self.store.webhooks().await?;
        for delivery in &due {
            let outcome = match webhooks.iter().find(|w| w.id == delivery.webhook_id) {
                Some(webhook) => self.send(client, webhook, delivery).await,
                None => Err("the webhook was deleted".to_owned()),
            };
            let next = delivery.after_attempt(outcome, self.now());
            self.store.save_delivery(&next).await?;
        }
        Ok(due.len())
    }

    async fn send(
        &self,
        client: &keyward_proxy::Outbound,
        webhook: &Webhook,
        delivery: &Delivery,
    ) -> Result<u16, String> {
        if let Some(address) = webhook.email() {
            let mailer = self
                .mailer
                .as_ref()
                .ok_or_else(|| "e-mail is not configured (smtp_url)".to_owned())?;
            let (subject, text) = email_text(delivery);
            return mailer.send(address, &subject, text).await;
        }
        let url = parse_url(&webhook.url).map_err(|e| e.message)?;
        // Resolved again: a name may point somewhere else since the webhook was created.
        let addresses = resolve(&url).await.map_err(|e| e.message)?;
        ensure_reachable(&addresses, webhook.allow_private_network).map_err(|e| e.message)?;
        let secret = self.audit.webhook_secret(webhook.id.as_str());
        let signature = keyward_crypto::audit::webhook_signature(
            &secret,
            self.now().as_second(),
            delivery.body.as_bytes(),
        );
        client
            .post(
                url.as_str(),
                "application/json",
                &[
                    ("x-keyward-signature", signature),
                    ("x-keyward-event", delivery.kind.as_str().to_owned()),
                    ("x-keyward-delivery", delivery.id.to_string()),
                ],
                delivery.body.clone().into(),
            )
            .await
    }

    /// Queues reminders for keys whose rotation is due or overdue, or that expire within
    /// [`EXPIRY_REMINDER_DAYS`] or have expired. Each is queued once per key and due date.
    pub async fn scan_reminders(&self) -> Result<u64, Error> {
        if self.store.webhooks().await?.is_empty() {
            return Ok(0);
        }
        let now = self.now();
        let context = self.rotation_context().await?;
        let catalog = self.catalog().await?;
        let mut queued = 0;
        for (key, _) in self.store.live_keys().await? {
            if key.revoked.is_some() {
                continue;
            }
            let category = catalog.get(&key.service_id).map(|s| s.category.clone());
            let about = json!({"key": key.id.as_str(), "alias": key.alias, "service": key.service_id,
                               "environment": key.environment});
            let rotation = context.status(&key);
            let reminder = match (rotation.state, rotation.due_at) {
                (RotationState::Due, Some(due)) => Some((NotificationKind::RotationDue, due)),
                (RotationState::Overdue, Some(due)) => {
                    Some((NotificationKind::RotationOverdue, due))
                }
                _ => None,
            };
            if let Some((kind, due)) = reminder {
                let mut data = about.clone();
                data["due_at"] = due.to_string().into();
                queued += self
                    .try_notify(
                        kind,
                        About::key(category.as_deref(), &key.environment),
                        format!("{kind}:{}:{}", key.id, due.as_millisecond()),
                        data,
                    )
                    .await?;
            }
            if let Some(expires) = key.expires_at {
                let kind = if key.status(now) == KeyStatus::Expired {
                    Some(NotificationKind::KeyExpired)
                } else if expires.duration_since(now)
                    <= jiff::SignedDuration::from_hours(24 * EXPIRY_REMINDER_DAYS)
                {
                    Some(NotificationKind::KeyExpiring)
                } else {
                    None
                };
                if let Some(kind) = kind {
                    let mut data = about.clone();
                    data["expires_at"] = expires.to_string().into();
                    queued += self
                        .try_notify(
                            kind,
                            About::key(category.as_deref(), &key.environment),
                            format!("{kind}:{}:{}", key.id, expires.as_millisecond()),
                            data,
                        )
                        .await?;
                }
            }
        }
        Ok(queued)
    }
}

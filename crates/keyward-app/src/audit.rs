//! The audit trail as the server keeps it: entries written before the operation they
//! describe (fail closed), signed checkpoints, verification, and the webhook stream.
//!
//! The chain itself is `keyward_core::audit`; the keys are `keyward_crypto::audit`.

use std::sync::Arc;

use keyward_core::audit::{
    AuditCheckpoint, AuditDraft, AuditEvent, AuditFilter, AuditOutcome, BreakKind, ChainVerifier,
    VerifyReport, parse_hash,
};
use keyward_core::ports::Store;
use keyward_core::{Clock, Error, ErrorKind, Randomness, Timestamp};
use keyward_crypto::Keyring;
use keyward_crypto::audit::AuditKeys;
use secrecy::SecretString;

/// Where the sealed audit keys live in the vault's settings.
const AUDIT_KEYS_SETTING: &str = "audit_keys";

/// How many entries verification reads per query.
const VERIFY_PAGE: u32 = 1_000;

#[derive(Debug)]
pub struct AuditLog {
    store: Arc<dyn Store>,
    keys: AuditKeys,
    clock: Arc<dyn Clock>,
}

/// Loads the vault's audit keys, creating them on first use. Two instances starting at once
/// agree: the first stored value wins and both use it.
pub async fn load_keys(
    store: &dyn Store,
    keyring: &Keyring,
    random: &dyn Randomness,
) -> Result<AuditKeys, Error> {
    let sealed = match store.setting(AUDIT_KEYS_SETTING).await? {
        Some(sealed) => sealed,
        None => {
            let (keys, material) = AuditKeys::generate_with_material(random)?;
            let sealed = keys.seal(keyring, random, &material)?;
            store.setting_or_insert(AUDIT_KEYS_SETTING, &sealed).await?
        }
    };
    Ok(AuditKeys::unseal(keyring, &sealed)?)
}

/// Rewraps the sealed audit keys under the keyring's current master key (master key
/// rotation); a no-op when they already are.
pub async fn rewrap_keys(
    store: &dyn Store,
    keyring: &Keyring,
    random: &dyn Randomness,
) -> Result<(), Error> {
    let Some(sealed) = store.setting(AUDIT_KEYS_SETTING).await? else {
        return Ok(());
    };
    if AuditKeys::sealed_by(&sealed)? == keyring.current_id() {
        return Ok(());
    }
    let rewrapped = AuditKeys::rewrap(keyring, random, &sealed)?;
    if !store
        .replace_setting(AUDIT_KEYS_SETTING, &sealed, &rewrapped)
        .await?
    {
        return Err(Error::conflict(
            "audit_keys_changed",
            "the audit keys changed during the rotation; run it again",
        ));
    }
    Ok(())
}

/// Which master key wraps the audit keys (`None` before they exist).
pub async fn keys_sealed_by(store: &dyn Store) -> Result<Option<String>, Error> {
    match store.setting(AUDIT_KEYS_SETTING).await? {
        Some(sealed) => Ok(Some(AuditKeys::sealed_by(&sealed)?)),
        None => Ok(None),
    }
}

impl AuditLog {
    pub fn new(store: Arc<dyn Store>, keys: AuditKeys, clock: Arc<dyn Clock>) -> Self {
        Self { store, keys, clock }
    }

    /// Appends an entry. A failure here is `audit_unavailable`: callers must not go on to
    /// perform what the entry describes.
    pub async fn record(&self, entry: &AuditDraft) -> Result<AuditEvent, Error> {
        self.store.append_audit(entry).await.map_err(|e| {
            tracing::error!(error = %e, action = %entry.action, "audit entry could not be written; refusing the operation");
            Error::new(
                ErrorKind::Unavailable,
                "audit_unavailable",
                "the audit trail cannot be written, so the operation was not carried out",
            )
        })
    }

    /// A keyed fingerprint of a secret for entries that must identify one.
    pub fn fingerprint(&self, secret: &SecretString) -> String {
        self.keys.fingerprint(secret)
    }

    /// A notification webhook's signing secret (see `AuditKeys::webhook_secret`).
    pub fn webhook_secret(&self, webhook_id: &str) -> SecretString {
        self.keys.webhook_secret(webhook_id)
    }

    /// The CSRF token that belongs to a session cookie (see `AuditKeys::session_csrf`).
    pub fn session_csrf(&self, session_token: &SecretString) -> SecretString {
        self.keys.session_csrf(session_token)
    }

    /// Signs the chain's head if it moved since the last checkpoint; returns the new one.
    pub async fn checkpoint(&self) -> Result<Option<AuditCheckpoint>, Error> {
        let Some((seq, hash)) = self.store.audit_head().await? else {
            return Ok(None);
        };
        let checkpoints = self.store.audit_checkpoints().await?;
        if checkpoints.last().is_some_and(|c| c.seq >= seq) {
            return Ok(None);
        }
        let at = self.clock.now();
        let at = Timestamp::from_millisecond(at.as_millisecond()).unwrap_or(at);
        let checkpoint = AuditCheckpoint {
            seq,
            signature: self
                .keys
                .sign(&AuditCheckpoint::signed_message(seq, &hash, at)),
            hash,
            at,
            key_id: self.keys.key_id().to_owned(),
        };
        match self.store.insert_audit_checkpoint(&checkpoint).await {
            Ok(()) => Ok(Some(checkpoint)),
            // Another instance signed the same head first.
            Err(e) if e.kind == ErrorKind::Conflict => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Walks the whole chain and every checkpoint; names the first entry that cannot be
    /// trusted.
    pub async fn verify(&self) -> Result<VerifyReport, Error> {
        let checkpoints = self.store.audit_checkpoints().await?;
        let mut bad_signature = None;
        let mut trusted = Vec::new();
        for c in &checkpoints {
            let signed = AuditCheckpoint::signed_message(c.seq, &c.hash, c.at);
            match parse_hash(&c.hash) {
                Some(hash)
                    if c.key_id == self.keys.key_id()
                        && self.keys.verify(&signed, &c.signature) =>
                {
                    trusted.push((c.seq, hash));
                }
                _ => {
                    bad_signature.get_or_insert(c.seq);
                }
            }
        }
        let mut verifier = ChainVerifier::new(trusted);
        if let Some(seq) = bad_signature {
            verifier.break_at(seq, BreakKind::BadCheckpoint);
        }
        let mut after = 0;
        loop {
            let page = self
                .store
                .audit_events(&AuditFilter {
                    after_seq: Some(after),
                    limit: VERIFY_PAGE,
                    ..AuditFilter::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for event in &page {
                verifier.push(event);
            }
            if verifier.is_broken() {
                break;
            }
        }
        let head = self.store.audit_head().await?.map_or(0, |(seq, _)| seq);
        Ok(verifier.finish(head))
    }

    pub async fn events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, Error> {
        self.store.audit_events(filter).await
    }
}

/// Where the webhook's progress is kept: the last sequence number a receiver accepted.
const WEBHOOK_CURSOR_SETTING: &str = "audit_webhook_cursor";
/// Entries per webhook call.
const WEBHOOK_BATCH: u32 = 500;

/// Sends the audit webhook its next batch; `Ok(true)` if one was delivered, `Ok(false)` if there was nothing.
pub async fn deliver_webhook_batch(
    app: &crate::app::App,
    client: &keyward_proxy::Outbound,
    url: &str,
) -> Result<bool, String> {
    let cursor_text = app
        .store
        .setting_or_insert(WEBHOOK_CURSOR_SETTING, "0")
        .await
        .map_err(|e| e.message)?;
    let cursor: u64 = cursor_text.parse().unwrap_or(0);
    let events = app
        .audit
        .events(&AuditFilter {
            after_seq: Some(cursor),
            limit: WEBHOOK_BATCH,
            ..AuditFilter::default()
        })
        .await
        .map_err(|e| e.message)?;
    let Some(last) = events.last().map(|e| e.seq) else {
        return Ok(false);
    };
    let mut body = String::new();
    for event in events {
        body.push_str(&event_line(event)?);
        body.push('\n');
    }
    let status = client
        .post(
            url,
            "application/x-ndjson",
            &[("x-keyward-audit-last-seq", last.to_string())],
            body.into(),
        )
        .await?;
    if !(200..300).contains(&status) {
        return Err(format!("the receiver answered {status}"));
    }
    // Another instance may have moved the cursor meanwhile; then its value stands.
    app.store
        .replace_setting(WEBHOOK_CURSOR_SETTING, &cursor_text, &last.to_string())
        .await
        .map_err(|e| e.message)?;
    Ok(true)
}

/// One entry as the API, exports and the webhook show it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEventBody {
    pub seq: u64,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub actor: AuditActorBody,
    pub source: Option<String>,
    pub action: String,
    pub target: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// Further facts; a secret appears only as an `hmac:` fingerprint.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// This entry's link in the hash chain.
    pub hash: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditActorBody {
    /// `user`, `token`, `system` or `anonymous`.
    pub kind: String,
    pub id: String,
    pub name: String,
}

impl From<AuditEvent> for AuditEventBody {
    fn from(e: AuditEvent) -> Self {
        let entry = e.entry;
        Self {
            seq: e.seq,
            at: entry.at,
            actor: AuditActorBody {
                kind: entry.actor_kind.as_str().to_owned(),
                id: entry.actor_id,
                name: entry.actor_name,
            },
            source: entry.source,
            action: entry.action,
            target: entry.target,
            outcome: entry.outcome.as_str().to_owned(),
            // Stored by us as a JSON object; a row edited into something else shows as null.
            details: serde_json::from_str(&entry.details).unwrap_or(serde_json::Value::Null),
            hash: e.hash,
        }
    }
}

/// One entry as a JSON Lines line (without the newline).
pub fn event_line(e: AuditEvent) -> Result<String, String> {
    serde_json::to_string(&AuditEventBody::from(e))
        .map_err(|e| format!("cannot encode an entry: {e}"))
}

/// The outcome of an operation as the trail records it.
impl crate::app::App {
    /// A bulk export of the trail: passes the approval gate as `export` (bound to the
    /// filter), is itself audited, then reads the entries.
    pub async fn export_audit(
        &self,
        actor: &crate::app::Actor,
        filter: &keyward_core::audit::AuditFilter,
    ) -> Result<Vec<keyward_core::audit::AuditEvent>, Error> {
        let details = serde_json::json!({
            "actor": filter.actor, "action": filter.action, "target": filter.target,
            "after": filter.after_seq, "limit": filter.limit,
        });
        let change = crate::pipeline::Change::new(
            "audit.export",
            crate::pipeline::Subject::vault("audit"),
            keyward_core::access::Permission::AuditExport,
            details.clone(),
        )
        .approval(keyward_core::approval::ApprovalAction::Export, details);
        self.apply(actor, change, self.audit.events(filter)).await
    }
}

pub fn outcome_of<T>(result: &Result<T, Error>) -> AuditOutcome {
    match result {
        Ok(_) => AuditOutcome::Success,
        Err(e) if matches!(e.kind, ErrorKind::Unauthenticated | ErrorKind::Forbidden) => {
            AuditOutcome::Denied
        }
        Err(_) => AuditOutcome::Failure,
    }
}

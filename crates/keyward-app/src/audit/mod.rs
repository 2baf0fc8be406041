//! The audit trail as users meet it: exports (through the approval gate), the webhook
//! stream, and the JSON form of an entry the API, exports and the webhook share. The log
//! itself — appends, checkpoints, verification, keys — is [`log`].

pub mod log;

use keyward_core::audit::{AuditEvent, AuditFilter};
use keyward_core::{Error, Timestamp};

pub use log::{AuditLog, load_keys, outcome_of};

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

impl crate::app::App {
    /// Entries of the trail, for those who may read it everywhere.
    pub async fn audit_events(
        &self,
        actor: &crate::actor::Actor,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEvent>, Error> {
        Self::require_everywhere(actor, keyward_core::access::Permission::AuditRead)?;
        self.audit.events(filter).await
    }

    /// Checks the whole chain and every checkpoint's signature.
    pub async fn verify_audit(
        &self,
        actor: &crate::actor::Actor,
    ) -> Result<keyward_core::audit::VerifyReport, Error> {
        Self::require_everywhere(actor, keyward_core::access::Permission::AuditRead)?;
        self.audit.verify().await
    }

    /// A bulk export of the trail: passes the approval gate as `export` (bound to the
    /// filter), is itself audited, then reads the entries.
    pub async fn export_audit(
        &self,
        actor: &crate::actor::Actor,
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

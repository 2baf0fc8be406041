//! Retention: how long the audit trail is kept, and its pruning — exported first, then
//! removed only up to a signed checkpoint, so the kept trail still verifies from its first
//! entry. Every retention run that removes something is audited.

use jiff::{SignedDuration, Timestamp};
use keyward_core::access::Permission;
use keyward_core::audit::{AuditCheckpoint, AuditFilter, PRUNE_ACTION};
use keyward_core::{Error, ErrorKind};

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::{Change, Subject};

pub use keyward_core::audit::AUDIT_RETENTION_FLOOR_DAYS;

/// Entries read per page while exporting.
const EXPORT_PAGE: u32 = 1_000;

/// Where pruned audit entries go before they are removed: one JSON line per entry (as
/// `GET /api/v1/audit/export` writes them). Pruning goes on only once `commit` has made
/// them durable.
pub trait AuditArchive: Send {
    fn write_line(&mut self, line: &str) -> std::io::Result<()>;
    fn commit(&mut self) -> std::io::Result<()>;
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPrune {
    /// The first and last entries exported and removed.
    pub from: u64,
    pub through: u64,
}

impl App {
    /// Exports to `archive`, then removes, the audit entries older than `before` — up to
    /// the newest signed checkpoint older than it, so the kept trail is chained to a
    /// signature. Refused for a `before` inside the configured minimum
    /// (`audit_retention_min_days`). `None` when nothing is old enough (and nothing is
    /// written). The prune is itself an entry (`audit.prune`, naming the last entry removed),
    /// covered by a checkpoint signed before anything is removed.
    pub async fn prune_audit(
        &self,
        actor: &Actor,
        before: Timestamp,
        archive: &mut dyn AuditArchive,
    ) -> Result<Option<AuditPrune>, Error> {
        let floor = self
            .now()
            .saturating_sub(SignedDuration::from_hours(
                24 * i64::from(self.audit_retention_min_days),
            ))
            .unwrap_or(Timestamp::MIN);
        if before > floor {
            return Err(Error::invalid(
                "audit_retention_too_short",
                format!(
                    "audit entries younger than {} days are kept (audit_retention_min_days); prune only what is older",
                    self.audit_retention_min_days
                ),
            ));
        }
        let Some(from) = self.audit.first_seq().await? else {
            return Ok(None);
        };
        let boundary = self
            .store
            .audit_checkpoints()
            .await?
            .into_iter()
            .filter(|c| c.at < before && c.seq >= from)
            .filter(|c| self.signed_by_this_vault(c))
            .map(|c| c.seq)
            .max();
        let Some(through) = boundary else {
            return Ok(None);
        };
        let change = Change::new(
            PRUNE_ACTION,
            Subject::vault("audit"),
            Permission::AuditExport,
            serde_json::json!({
                "from": from, "through": through, "before": before.to_string(),
            }),
        );
        self.apply(actor, change, async {
            self.export_audit_range(from, through, archive).await?;
            // The prune entry is signed before anything goes: the kept trail vouches for it.
            self.audit.checkpoint().await?;
            self.store.prune_audit_through(through).await?;
            Ok(AuditPrune { from, through })
        })
        .await
        .map(Some)
    }

    fn signed_by_this_vault(&self, checkpoint: &AuditCheckpoint) -> bool {
        checkpoint.key_id == self.audit.keys().key_id()
            && self.audit.keys().verify(
                &AuditCheckpoint::signed_message(checkpoint.seq, &checkpoint.hash, checkpoint.at),
                &checkpoint.signature,
            )
    }

    async fn export_audit_range(
        &self,
        from: u64,
        through: u64,
        archive: &mut dyn AuditArchive,
    ) -> Result<(), Error> {
        let failed = |e: std::io::Error| {
            Error::new(
                ErrorKind::Unavailable,
                "audit_archive_failed",
                format!("the audit archive could not be written, so nothing was pruned: {e}"),
            )
        };
        let mut after = from - 1;
        while after < through {
            let page = self
                .store
                .audit_events(&AuditFilter {
                    after_seq: Some(after),
                    limit: EXPORT_PAGE,
                    ..AuditFilter::default()
                })
                .await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            for event in page.into_iter().take_while(|e| e.seq <= through) {
                let line = crate::audit::event_line(event).map_err(Error::internal)?;
                archive.write_line(&line).map_err(failed)?;
            }
            after = last;
        }
        archive.commit().map_err(failed)
    }
}

impl App {
    /// Deletes finished webhook and e-mail deliveries past `notification_log_retention_days`
    /// (pending ones stay); audited (`notifications.prune`) when something went.
    pub async fn prune_notification_logs(&self) -> Result<u64, Error> {
        let Some(days) = self.notification_log_retention_days else {
            return Ok(0);
        };
        let before = self
            .now()
            .saturating_sub(SignedDuration::from_hours(24 * i64::from(days)))
            .unwrap_or(Timestamp::MIN);
        let removed = self.store.prune_deliveries(before).await?;
        if removed > 0 {
            self.record_retention(
                "notifications.prune",
                "notifications",
                serde_json::json!({ "deliveries": removed, "before": before.to_string() }),
            )
            .await?;
        }
        Ok(removed)
    }

    /// The audit entry of a retention run that removed something (by the system, after the
    /// fact: what went is in the details).
    pub(crate) async fn record_retention(
        &self,
        action: &str,
        target: &str,
        details: serde_json::Value,
    ) -> Result<(), Error> {
        self.record_audit(
            &Actor::system("retention"),
            action,
            Some(target.to_owned()),
            keyward_core::audit::AuditOutcome::Success,
            details,
        )
        .await
    }
}

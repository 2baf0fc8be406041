//! The trail's own machinery, free of the use cases: entries written before the operation
//! they describe (fail closed), signed checkpoints, verification, the sealed audit keys, and
//! how an outcome is recorded. The chain itself is `keyward_core::audit`; the keys are
//! `keyward_crypto::audit`.

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

    /// The vault's audit keys (a backup's manifest is signed with the checkpoint key).
    pub(crate) fn keys(&self) -> &AuditKeys {
        &self.keys
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
        // A pruned trail starts after a signed checkpoint, and a prune entry that a later
        // signed checkpoint covers must say it removed exactly the entries before it.
        let first_kept = self.first_seq().await?.unwrap_or(1);
        let pruned = first_kept.saturating_sub(1);
        let last_signed = trusted.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
        let mut verifier = ChainVerifier::resuming_after(pruned, trusted);
        if let Some(seq) = bad_signature {
            verifier.break_at(seq, BreakKind::BadCheckpoint);
        }
        let mut vouched = pruned == 0;
        let mut after = pruned;
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
                vouched |= event.seq <= last_signed
                    && keyward_core::audit::pruned_through(event) == Some(pruned);
            }
            if verifier.is_broken() {
                break;
            }
        }
        if !vouched {
            verifier.break_at(1, BreakKind::Missing);
        }
        let head = self.store.audit_head().await?.map_or(0, |(seq, _)| seq);
        Ok(verifier.finish(head))
    }

    /// The first entry kept (1 unless the trail was pruned); `None` for an empty trail.
    pub async fn first_seq(&self) -> Result<Option<u64>, Error> {
        Ok(self
            .store
            .audit_events(&AuditFilter {
                after_seq: Some(0),
                limit: 1,
                ..AuditFilter::default()
            })
            .await?
            .first()
            .map(|e| e.seq))
    }

    pub async fn events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, Error> {
        self.store.audit_events(filter).await
    }
}

/// The outcome of an operation as the trail records it.
pub fn outcome_of<T>(result: &Result<T, Error>) -> AuditOutcome {
    match result {
        Ok(_) => AuditOutcome::Success,
        Err(e) if matches!(e.kind, ErrorKind::Unauthenticated | ErrorKind::Forbidden) => {
            AuditOutcome::Denied
        }
        Err(_) => AuditOutcome::Failure,
    }
}

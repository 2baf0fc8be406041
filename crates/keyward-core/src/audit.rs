//! The audit trail: who did what to which target, from where, with what outcome.
//!
//! Entries form a hash chain: each entry's hash covers its own fields and the previous
//! entry's hash, so editing, deleting or reordering any stored row changes every hash after
//! it. [`ChainVerifier`] walks the chain and names the first sequence number that does not
//! fit; signed checkpoints (made and checked by `keyward-crypto`) catch a chain that was
//! rewritten wholesale. Entries never hold a secret: where one must be identified, it appears
//! as a keyed fingerprint.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// The hash before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    User,
    /// A management API token.
    Token,
    /// Keyward itself (start-up, background jobs, the CLI on the server's machine).
    System,
    /// Nobody authenticated (failed logins, refused requests).
    Anonymous,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Token => "token",
            ActorKind::System => "system",
            ActorKind::Anonymous => "anonymous",
        }
    }
}

impl std::str::FromStr for ActorKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        [
            ActorKind::User,
            ActorKind::Token,
            ActorKind::System,
            ActorKind::Anonymous,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| Error::invalid("invalid_actor_kind", "unknown actor kind"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Success,
    /// Attempted and failed (the operation's own error).
    Failure,
    /// Refused by authentication or authorization.
    Denied,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Failure => "failure",
            AuditOutcome::Denied => "denied",
        }
    }
}

impl std::str::FromStr for AuditOutcome {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        [
            AuditOutcome::Success,
            AuditOutcome::Failure,
            AuditOutcome::Denied,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| Error::invalid("invalid_outcome", "unknown outcome"))
    }
}

/// An entry before the store numbers and chains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDraft {
    pub at: Timestamp,
    pub actor_kind: ActorKind,
    /// The user's or token's id; empty for system and anonymous actors.
    pub actor_id: String,
    /// A readable name (username, token name, or the name someone tried to log in as).
    pub actor_name: String,
    /// The client's address as Keyward saw it (after trusted-proxy resolution).
    pub source: Option<String>,
    /// Dotted verb, e.g. `key.create`, `auth.login`, `access.denied`.
    pub action: String,
    /// What it was done to, e.g. `key:01J…`.
    pub target: Option<String>,
    pub outcome: AuditOutcome,
    /// A JSON object of further facts, as text: the text is what the hash covers, so it is
    /// stored and returned byte for byte.
    pub details: String,
}

impl AuditDraft {
    /// `details` must be a JSON object without secrets; anything else is a programming error
    /// reported as `internal`.
    pub fn details_from(value: &serde_json::Value) -> Result<String, Error> {
        if !value.is_object() {
            return Err(Error::internal("audit details must be a JSON object"));
        }
        serde_json::to_string(value)
            .map_err(|e| Error::internal(format!("cannot encode audit details: {e}")))
    }
}

/// A stored, numbered, chained entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub seq: u64,
    pub entry: AuditDraft,
    /// Hex SHA-256 over the entry and the previous hash.
    pub hash: String,
}

/// The hash of entry `seq` with fields `entry`, chained to `prev`.
pub fn chain_hash(prev: &[u8; 32], seq: u64, entry: &AuditDraft) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"keyward-audit-v1");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(entry.at.as_millisecond().to_be_bytes());
    let fields = [
        entry.actor_kind.as_str(),
        &entry.actor_id,
        &entry.actor_name,
        entry.source.as_deref().unwrap_or("\u{0}none"),
        &entry.action,
        entry.target.as_deref().unwrap_or("\u{0}none"),
        entry.outcome.as_str(),
        &entry.details,
    ];
    for field in fields {
        // Length-prefixed, so no two different field lists hash alike.
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

pub fn hash_hex(hash: &[u8; 32]) -> String {
    use std::fmt::Write;
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A signed statement that the chain's entry `seq` had hash `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditCheckpoint {
    pub seq: u64,
    pub hash: String,
    pub at: Timestamp,
    /// Which signing key made it (hex fingerprint of the public key).
    pub key_id: String,
    /// Ed25519 signature over [`AuditCheckpoint::signed_message`], hex.
    pub signature: String,
}

impl AuditCheckpoint {
    /// The bytes a checkpoint signature covers.
    pub fn signed_message(seq: u64, hash: &str, at: Timestamp) -> Vec<u8> {
        format!(
            "keyward-audit-checkpoint-v1|{seq}|{hash}|{}",
            at.as_millisecond()
        )
        .into_bytes()
    }
}

/// Filters for reading the trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<AuditOutcome>,
    pub from: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Only entries after this sequence number (paging and tailing).
    pub after_seq: Option<u64>,
    pub limit: u32,
}

/// Why verification stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// The entry with this number is gone.
    Missing,
    /// The entry's content or position does not match its hash.
    Altered,
    /// The chain up to a signed checkpoint was recomputed: something at or before it changed.
    Rewritten,
    /// A checkpoint's signature does not verify.
    BadCheckpoint,
    /// Entries at the end were removed.
    Truncated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    /// The first sequence number that cannot be trusted.
    pub seq: u64,
    pub kind: BreakKind,
}

/// The outcome of walking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Entries checked before the first break (all of them when `ok`).
    pub verified: u64,
    pub last_seq: u64,
    pub checkpoints: u64,
    pub first_broken: Option<ChainBreak>,
}

/// No configuration prunes audit entries younger than this many days.
pub const AUDIT_RETENTION_FLOOR_DAYS: u32 = 30;

/// The action of the entry that records a prune of the trail; its details say
/// `through` (the last entry removed), which must match where the kept trail starts.
pub const PRUNE_ACTION: &str = "audit.prune";

/// The last entry a prune entry says it removed.
pub fn pruned_through(event: &AuditEvent) -> Option<u64> {
    if event.entry.action != PRUNE_ACTION || event.entry.outcome != AuditOutcome::Success {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(&event.entry.details)
        .ok()?
        .get("through")?
        .as_u64()
}

/// Walks entries in sequence order, page by page, and reports the first break.
#[derive(Debug)]
pub struct ChainVerifier {
    expected: u64,
    prev: [u8; 32],
    /// Checkpoints whose signatures were verified, by sequence number.
    checkpoints: BTreeMap<u64, [u8; 32]>,
    /// The last checkpoint the chain matched: a rewrite is somewhere after it.
    last_matched_checkpoint: u64,
    broken: Option<ChainBreak>,
}

impl ChainVerifier {
    /// `checkpoints`: (seq, hash) of checkpoints whose signatures already verified; a bad
    /// signature is reported by the caller with [`ChainVerifier::break_at`].
    pub fn new(checkpoints: impl IntoIterator<Item = (u64, [u8; 32])>) -> Self {
        Self {
            expected: 1,
            prev: GENESIS,
            checkpoints: checkpoints.into_iter().collect(),
            last_matched_checkpoint: 0,
            broken: None,
        }
    }

    /// A verifier for a trail whose entries up to `pruned_through` were exported and pruned:
    /// the walk starts after it, chained to the signed checkpoint there. Without a verified
    /// checkpoint at exactly that entry the pruned prefix cannot be vouched for, and the
    /// trail is broken at its first entry.
    pub fn resuming_after(
        pruned_through: u64,
        checkpoints: impl IntoIterator<Item = (u64, [u8; 32])>,
    ) -> Self {
        let mut verifier = Self::new(checkpoints);
        if pruned_through == 0 {
            return verifier;
        }
        match verifier.checkpoints.get(&pruned_through) {
            Some(hash) => {
                verifier.prev = *hash;
                verifier.expected = pruned_through + 1;
                verifier.last_matched_checkpoint = pruned_through;
            }
            None => verifier.break_at(1, BreakKind::Missing),
        }
        verifier
    }

    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Records a break found outside the chain walk (keeps the earliest).
    pub fn break_at(&mut self, seq: u64, kind: BreakKind) {
        if self.broken.is_none_or(|b| seq < b.seq) {
            self.broken = Some(ChainBreak { seq, kind });
        }
    }

    /// Checks the next entry. Once broken, later entries are not examined.
    pub fn push(&mut self, event: &AuditEvent) {
        if self.broken.is_some() {
            return;
        }
        if event.seq != self.expected {
            let kind = if event.seq > self.expected {
                BreakKind::Missing
            } else {
                BreakKind::Altered
            };
            self.break_at(self.expected.min(event.seq), kind);
            return;
        }
        let computed = chain_hash(&self.prev, event.seq, &event.entry);
        if parse_hash(&event.hash) != Some(computed) {
            self.break_at(event.seq, BreakKind::Altered);
            return;
        }
        if let Some(signed) = self.checkpoints.get(&event.seq) {
            if *signed != computed {
                self.break_at(self.last_matched_checkpoint + 1, BreakKind::Rewritten);
                return;
            }
            self.last_matched_checkpoint = event.seq;
        }
        self.prev = computed;
        self.expected += 1;
    }

    /// Ends the walk. `head_seq` is the store's record of the last number handed out; it, or
    /// a checkpoint, beyond the last entry means the tail was cut off.
    pub fn finish(mut self, head_seq: u64) -> VerifyReport {
        let last_seq = self.expected - 1;
        let furthest = self
            .checkpoints
            .last_key_value()
            .map_or(0, |(&seq, _)| seq)
            .max(head_seq);
        if furthest > last_seq && self.broken.is_none() {
            self.break_at(last_seq + 1, BreakKind::Truncated);
        }
        let verified = match self.broken {
            Some(b) => b.seq.saturating_sub(1).min(last_seq),
            None => last_seq,
        };
        VerifyReport {
            ok: self.broken.is_none(),
            verified,
            last_seq,
            checkpoints: self.checkpoints.len() as u64,
            first_broken: self.broken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(action: &str) -> AuditDraft {
        AuditDraft {
            at: Timestamp::from_second(1_764_000_000).expect("time"),
            actor_kind: ActorKind::User,
            actor_id: "u1".into(),
            actor_name: "alice".into(),
            source: Some("10.0.0.1".into()),
            action: action.into(),
            target: Some("key:k1".into()),
            outcome: AuditOutcome::Success,
            details: "{}".into(),
        }
    }

    fn chain(n: u64) -> Vec<AuditEvent> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let entry = draft(&format!("key.update.{seq}"));
                let hash = chain_hash(&prev, seq, &entry);
                prev = hash;
                AuditEvent {
                    seq,
                    entry,
                    hash: hash_hex(&hash),
                }
            })
            .collect()
    }

    #[test]
    fn a_pruned_prefix_verifies_only_from_a_signed_checkpoint_at_its_end() {
        let events = chain(10);
        let at = |seq: u64| parse_hash(&events[seq as usize - 1].hash).expect("hash");
        let kept = &events[4..];
        let mut v = ChainVerifier::resuming_after(4, [(4, at(4)), (8, at(8))]);
        for e in kept {
            v.push(e);
        }
        assert!(v.finish(10).ok);
        // No checkpoint at the boundary: nothing vouches for what came before.
        let mut v = ChainVerifier::resuming_after(4, [(8, at(8))]);
        for e in kept {
            v.push(e);
        }
        let report = v.finish(10);
        assert_eq!(
            report.first_broken,
            Some(ChainBreak {
                seq: 1,
                kind: BreakKind::Missing
            })
        );
        // More removed than the boundary says.
        let mut v = ChainVerifier::resuming_after(4, [(4, at(4)), (8, at(8))]);
        for e in &events[6..] {
            v.push(e);
        }
        assert_eq!(v.finish(10).first_broken.map(|b| b.seq), Some(5));
    }

    fn verify(events: &[AuditEvent], checkpoints: &[(u64, [u8; 32])]) -> VerifyReport {
        let mut v = ChainVerifier::new(checkpoints.iter().copied());
        for e in events {
            v.push(e);
        }
        v.finish(0)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let report = verify(&chain(5), &[]);
        assert!(report.ok);
        assert_eq!((report.verified, report.last_seq), (5, 5));
    }

    #[test]
    fn an_edit_is_found_at_its_sequence_number() {
        let mut events = chain(6);
        events[3].entry.actor_name = "mallory".into();
        let report = verify(&events, &[]);
        assert_eq!(
            report.first_broken,
            Some(ChainBreak {
                seq: 4,
                kind: BreakKind::Altered
            })
        );
        assert_eq!(report.verified, 3);
    }

    #[test]
    fn a_deletion_and_a_reordering_are_found() {
        let mut events = chain(6);
        events.remove(2);
        assert_eq!(
            verify(&events, &[]).first_broken,
            Some(ChainBreak {
                seq: 3,
                kind: BreakKind::Missing
            })
        );
        // Swapping two rows' contents while keeping the numbering.
        let mut events = chain(6);
        let (a, b) = (events[1].clone(), events[4].clone());
        events[1] = AuditEvent { seq: 2, ..b };
        events[4] = AuditEvent { seq: 5, ..a };
        assert_eq!(verify(&events, &[]).first_broken.map(|b| b.seq), Some(2));
    }

    #[test]
    fn a_recomputed_chain_is_caught_by_a_checkpoint_and_a_cut_tail_too() {
        let original = chain(6);
        let checkpoint = (4, parse_hash(&original[3].hash).expect("hash"));
        // The attacker edits entry 3 and recomputes every hash after it.
        let mut prev = GENESIS;
        let rewritten: Vec<AuditEvent> = original
            .iter()
            .map(|e| {
                let mut entry = e.entry.clone();
                if e.seq == 3 {
                    entry.outcome = AuditOutcome::Denied;
                }
                let hash = chain_hash(&prev, e.seq, &entry);
                prev = hash;
                AuditEvent {
                    seq: e.seq,
                    entry,
                    hash: hash_hex(&hash),
                }
            })
            .collect();
        assert_eq!(
            verify(&rewritten, &[checkpoint]).first_broken,
            Some(ChainBreak {
                seq: 1,
                kind: BreakKind::Rewritten
            })
        );
        assert_eq!(
            verify(&original[..3], &[checkpoint]).first_broken,
            Some(ChainBreak {
                seq: 4,
                kind: BreakKind::Truncated
            })
        );
        assert!(verify(&original, &[checkpoint]).ok);
        let mut v = ChainVerifier::new([]);
        original[..5].iter().for_each(|e| v.push(e));
        assert_eq!(
            v.finish(6).first_broken,
            Some(ChainBreak {
                seq: 6,
                kind: BreakKind::Truncated
            })
        );
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = chain_hash(&GENESIS, 1, &draft("x"));
        assert_eq!(parse_hash(&hash_hex(&h)), Some(h));
        assert_eq!(parse_hash("zz"), None);
    }
}

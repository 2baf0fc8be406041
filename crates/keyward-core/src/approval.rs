//! Approvals: which sensitive operations need how many approvals from whom (the policy),
//! and the life of one request (a pure state machine; the store persists it by
//! compare-and-set on `revision`).
//!
//! A request is bound to the SHA-256 of the exact operation — action, target and payload,
//! e.g. the fingerprint of a new key value — so what executes is what the approvers saw.
//! The requester can never approve it, each approver decides once, a denial ends it, and an
//! approved request executes at most once, by its requester, before it expires.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access::Role;
use crate::key::Criticality;
use crate::{Error, ErrorKind};

/// The operations a policy can put behind approvals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalAction {
    Reveal,
    Delete,
    Purge,
    Rotate,
    Disable,
    /// Emergency revocation: never waits for approval (it must stop a leak now); always
    /// filed for review afterwards.
    Revoke,
    Export,
    AccessChange,
    /// Lifting a freeze the graduated response (or a person) put on a key or app token:
    /// always needs an approval, one from an owner or admin when no rule says more.
    Unfreeze,
}

string_enum!(ApprovalAction {
    Reveal = "reveal",
    Delete = "delete",
    Purge = "purge",
    Rotate = "rotate",
    Disable = "disable",
    Revoke = "revoke",
    Export = "export",
    AccessChange = "access_change",
    Unfreeze = "unfreeze",
}, "invalid_action", "approval action");

/// Exactly what would execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub action: ApprovalAction,
    /// `key:<id>`, `user:<id>`, `audit`, …
    pub target: String,
    /// The parameters that make it this operation and no other (never a secret; a new
    /// value appears as its fingerprint).
    pub payload: serde_json::Value,
}

impl Operation {
    /// SHA-256 over the action, target and payload (serde_json writes object keys in
    /// order, so equal payloads hash equally), hex.
    pub fn hash(&self) -> String {
        let payload = self.payload.to_string();
        let digest = Sha256::new()
            .chain_update(b"keyward-approval/v1|")
            .chain_update(self.action.as_str().as_bytes())
            .chain_update(b"|")
            .chain_update(self.target.as_bytes())
            .chain_update(b"|")
            .chain_update(payload.as_bytes())
            .finalize();
        crate::audit::hash_hex(&digest.into())
    }
}

/// One rule of the policy: these actions, on keys of these categories and criticalities,
/// need `approvals` approvals from holders of `approver_roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    pub actions: Vec<ApprovalAction>,
    /// `None`: every category (and operations on no key, e.g. export).
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    #[serde(default)]
    pub criticalities: Option<Vec<Criticality>>,
    pub approvals: u8,
    pub approver_roles: Vec<Role>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    pub rules: Vec<ApprovalRule>,
    /// How long a request (and the approval it earns) stays usable.
    #[serde(default = "default_ttl_hours")]
    pub ttl_hours: u16,
}

fn default_ttl_hours() -> u16 {
    24
}

pub const APPROVALS_MAX: u8 = 5;

/// What the policy asks of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub approvals: u8,
    pub approver_roles: Vec<Role>,
}

impl ApprovalPolicy {
    pub fn validate(self) -> Result<Self, Error> {
        if !(1..=720).contains(&self.ttl_hours) {
            return Err(Error::invalid("invalid_ttl", "ttl_hours is 1–720"));
        }
        for rule in &self.rules {
            if rule.actions.is_empty()
                || rule.approver_roles.is_empty()
                || !(1..=APPROVALS_MAX).contains(&rule.approvals)
            {
                return Err(Error::invalid(
                    "invalid_rule",
                    format!(
                        "a rule names at least one action and approver role, and needs 1–{APPROVALS_MAX} approvals"
                    ),
                ));
            }
        }
        Ok(self)
    }

    /// The strictest rule matching `action` on a key of `category` and `criticality`
    /// (`None` for operations on no key, which only rules without conditions match).
    pub fn requirement(
        &self,
        action: ApprovalAction,
        category: Option<&str>,
        criticality: Option<Criticality>,
    ) -> Option<Requirement> {
        self.rules
            .iter()
            .filter(|r| r.actions.contains(&action))
            .filter(|r| match (&r.categories, category) {
                (None, _) => true,
                (Some(list), Some(c)) => list.iter().any(|x| x == c),
                (Some(_), None) => false,
            })
            .filter(|r| match (&r.criticalities, criticality) {
                (None, _) => true,
                (Some(list), Some(c)) => list.contains(&c),
                (Some(_), None) => false,
            })
            .max_by_key(|r| r.approvals)
            .map(|r| Requirement {
                approvals: r.approvals,
                approver_roles: r.approver_roles.clone(),
            })
            .or_else(|| {
                // A freeze is lifted by four eyes even where no rule asks for it.
                (action == ApprovalAction::Unfreeze).then(|| Requirement {
                    approvals: 1,
                    approver_roles: vec![Role::Owner, Role::Admin],
                })
            })
    }

    pub fn ttl(&self) -> SignedDuration {
        SignedDuration::from_hours(i64::from(self.ttl_hours))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    Executed,
    Cancelled,
    /// A break-glass action that skipped approval and waits for someone to review it.
    ReviewRequired,
    Reviewed,
}

string_enum!(ApprovalStatus {
    Pending = "pending",
    Approved = "approved",
    Denied = "denied",
    Executed = "executed",
    Cancelled = "cancelled",
    ReviewRequired = "review_required",
    Reviewed = "reviewed",
}, "invalid_status", "approval status");

/// Someone taking part: the requester, an approver, the executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub id: String,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: Participant,
    pub approve: bool,
    pub comment: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    /// `apr_…`.
    pub id: crate::id::ApprovalId,
    pub operation: Operation,
    pub operation_hash: String,
    pub reason: String,
    pub requested_by: Participant,
    pub required: u8,
    pub approver_roles: Vec<Role>,
    pub decisions: Vec<Decision>,
    pub status: ApprovalStatus,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub executed_at: Option<Timestamp>,
    /// Bumped by every change; the store writes only over the revision it read.
    pub revision: u32,
}

fn refused(code: &'static str, message: &str) -> Error {
    Error::new(ErrorKind::Forbidden, code, message)
}

impl ApprovalRequest {
    pub fn open(
        id: crate::id::ApprovalId,
        operation: Operation,
        reason: String,
        requested_by: Participant,
        requirement: Requirement,
        now: Timestamp,
        ttl: SignedDuration,
    ) -> Self {
        Self {
            id,
            operation_hash: operation.hash(),
            operation,
            reason,
            requested_by,
            required: requirement.approvals,
            approver_roles: requirement.approver_roles,
            decisions: Vec::new(),
            status: ApprovalStatus::Pending,
            created_at: now,
            expires_at: now.checked_add(ttl).unwrap_or(Timestamp::MAX),
            executed_at: None,
            revision: 0,
        }
    }

    /// A record that a break-glass action happened without approval, for review.
    pub fn break_glass(
        id: crate::id::ApprovalId,
        operation: Operation,
        reason: String,
        by: Participant,
        now: Timestamp,
    ) -> Self {
        Self {
            status: ApprovalStatus::ReviewRequired,
            executed_at: Some(now),
            // Reviews do not expire; ten years is "never" and stays a normal timestamp.
            expires_at: now
                .checked_add(SignedDuration::from_hours(24 * 3_650))
                .unwrap_or(now),
            ..Self::open(
                id,
                operation,
                reason,
                by,
                Requirement {
                    approvals: 1,
                    approver_roles: vec![Role::Owner, Role::Admin],
                },
                now,
                SignedDuration::ZERO,
            )
        }
    }

    pub fn approvals(&self) -> usize {
        self.decisions.iter().filter(|d| d.approve).count()
    }

    pub fn expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at
    }

    /// An approver approves or denies. Never the requester; only the policy's roles; once
    /// per person; not after the request ended or expired.
    pub fn decide(
        &mut self,
        by: Participant,
        approve: bool,
        comment: String,
        now: Timestamp,
    ) -> Result<(), Error> {
        if self.status == ApprovalStatus::ReviewRequired {
            if by.id == self.requested_by.id {
                return Err(refused(
                    "self_approval",
                    "you cannot review your own break-glass action",
                ));
            }
            if !self.approver_roles.contains(&by.role) {
                return Err(refused("not_an_approver", "your role cannot review this"));
            }
            self.decisions.push(Decision {
                by,
                approve,
                comment,
                at: now,
            });
            self.status = ApprovalStatus::Reviewed;
            self.revision += 1;
            return Ok(());
        }
        if self.status != ApprovalStatus::Pending {
            return Err(Error::conflict(
                "approval_closed",
                format!(
                    "this request is {} and takes no more decisions",
                    self.status
                ),
            ));
        }
        if self.expired(now) {
            return Err(Error::conflict(
                "approval_expired",
                "this request has expired",
            ));
        }
        if by.id == self.requested_by.id {
            return Err(refused(
                "self_approval",
                "you cannot approve your own request",
            ));
        }
        if !self.approver_roles.contains(&by.role) {
            return Err(refused(
                "not_an_approver",
                "the policy does not let your role decide this request",
            ));
        }
        if self.decisions.iter().any(|d| d.by.id == by.id) {
            return Err(Error::conflict(
                "already_decided",
                "you already decided this request",
            ));
        }
        self.decisions.push(Decision {
            by,
            approve,
            comment,
            at: now,
        });
        if !approve {
            self.status = ApprovalStatus::Denied;
        } else if self.approvals() >= usize::from(self.required) {
            self.status = ApprovalStatus::Approved;
        }
        self.revision += 1;
        Ok(())
    }

    /// Uses the approval for `operation`: only the requester, only the approved operation
    /// (same hash), only once, only before it expires.
    pub fn execute(
        &mut self,
        by: &Participant,
        operation: &Operation,
        now: Timestamp,
    ) -> Result<(), Error> {
        if by.id != self.requested_by.id {
            return Err(refused(
                "not_the_requester",
                "only the requester can use this approval",
            ));
        }
        match self.status {
            ApprovalStatus::Approved => {}
            ApprovalStatus::Executed => {
                return Err(Error::conflict(
                    "approval_used",
                    "this approval was already used",
                ));
            }
            ApprovalStatus::Pending => {
                return Err(refused(
                    "approval_pending",
                    "this request is not approved yet",
                ));
            }
            other => {
                return Err(Error::conflict(
                    "approval_closed",
                    format!("this request is {other}"),
                ));
            }
        }
        if self.expired(now) {
            return Err(Error::conflict(
                "approval_expired",
                "this approval has expired",
            ));
        }
        if operation.hash() != self.operation_hash {
            return Err(refused(
                "approval_mismatch",
                "this is not the operation that was approved",
            ));
        }
        self.status = ApprovalStatus::Executed;
        self.executed_at = Some(now);
        self.revision += 1;
        Ok(())
    }

    /// The requester withdraws a request that is not used yet.
    pub fn cancel(&mut self, by: &Participant) -> Result<(), Error> {
        if by.id != self.requested_by.id {
            return Err(refused(
                "not_the_requester",
                "only the requester can cancel",
            ));
        }
        if !matches!(
            self.status,
            ApprovalStatus::Pending | ApprovalStatus::Approved
        ) {
            return Err(Error::conflict("approval_closed", "this request is closed"));
        }
        self.status = ApprovalStatus::Cancelled;
        self.revision += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug)]
    struct Fixed;
    impl crate::Randomness for Fixed {
        fn fill(&self, dest: &mut [u8]) {
            dest.fill(7);
        }
    }

    fn person(n: u8, role: Role) -> Participant {
        Participant {
            id: format!("usr_{n}"),
            name: format!("p{n}"),
            role,
        }
    }

    fn delete(target: &str) -> Operation {
        Operation {
            action: ApprovalAction::Delete,
            target: target.into(),
            payload: serde_json::json!({}),
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn request(required: u8) -> ApprovalRequest {
        ApprovalRequest::open(
            crate::id::ApprovalId::generate(t(0), &Fixed),
            delete("key:a"),
            "cleanup".into(),
            person(0, Role::KeyManager),
            Requirement {
                approvals: required,
                approver_roles: vec![Role::Admin, Role::Owner],
            },
            t(0),
            SignedDuration::from_hours(1),
        )
    }

    #[test]
    fn lifting_a_freeze_needs_an_approval_even_without_a_rule() {
        let none = ApprovalPolicy::default();
        assert_eq!(
            none.requirement(ApprovalAction::Unfreeze, None, None),
            Some(Requirement {
                approvals: 1,
                approver_roles: vec![Role::Owner, Role::Admin],
            })
        );
        assert_eq!(none.requirement(ApprovalAction::Delete, None, None), None);
        let stricter = ApprovalPolicy {
            rules: vec![ApprovalRule {
                actions: vec![ApprovalAction::Unfreeze],
                categories: None,
                criticalities: None,
                approvals: 2,
                approver_roles: vec![Role::Owner],
            }],
            ttl_hours: 24,
        };
        assert_eq!(
            stricter
                .requirement(ApprovalAction::Unfreeze, None, None)
                .map(|r| r.approvals),
            Some(2)
        );
    }

    #[test]
    fn the_strictest_matching_rule_wins() {
        let policy = ApprovalPolicy {
            rules: vec![
                ApprovalRule {
                    actions: vec![ApprovalAction::Delete, ApprovalAction::Purge],
                    categories: None,
                    criticalities: None,
                    approvals: 1,
                    approver_roles: vec![Role::Admin],
                },
                ApprovalRule {
                    actions: vec![ApprovalAction::Purge],
                    categories: Some(vec!["financial-data".into()]),
                    criticalities: Some(vec![Criticality::Critical]),
                    approvals: 2,
                    approver_roles: vec![Role::Owner],
                },
            ],
            ttl_hours: 24,
        };
        let req = |a, c, k| policy.requirement(a, c, k).map(|r| r.approvals);
        assert_eq!(
            req(
                ApprovalAction::Purge,
                Some("financial-data"),
                Some(Criticality::Critical)
            ),
            Some(2)
        );
        assert_eq!(
            req(
                ApprovalAction::Purge,
                Some("financial-data"),
                Some(Criticality::Low)
            ),
            Some(1)
        );
        assert_eq!(
            req(ApprovalAction::Reveal, Some("financial-data"), None),
            None
        );
        assert_eq!(req(ApprovalAction::Delete, None, None), Some(1));
        assert!(
            ApprovalPolicy {
                rules: vec![],
                ttl_hours: 0
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn the_hash_binds_every_part_of_the_operation() {
        let a = delete("key:a");
        assert_eq!(a.hash(), delete("key:a").hash());
        assert_ne!(a.hash(), delete("key:b").hash());
        let mut other_action = a.clone();
        other_action.action = ApprovalAction::Purge;
        assert_ne!(a.hash(), other_action.hash());
        let mut other_payload = a.clone();
        other_payload.payload = serde_json::json!({"version": 2});
        assert_ne!(a.hash(), other_payload.hash());
    }

    #[test]
    fn two_approvals_then_one_use_of_the_same_operation() {
        let mut r = request(2);
        let requester = person(0, Role::KeyManager);
        let code = |e: Result<(), Error>| e.err().map(|e| e.code);
        assert_eq!(
            code(r.decide(requester.clone(), true, String::new(), t(1))),
            Some("self_approval")
        );
        assert_eq!(
            code(r.decide(person(9, Role::Viewer), true, String::new(), t(1))),
            Some("not_an_approver")
        );
        r.decide(person(1, Role::Admin), true, "ok".into(), t(1))
            .expect("first");
        assert_eq!(
            code(r.decide(person(1, Role::Admin), true, String::new(), t(1))),
            Some("already_decided")
        );
        assert_eq!(
            code(r.execute(&requester, &delete("key:a"), t(2))),
            Some("approval_pending")
        );
        r.decide(person(3, Role::Owner), true, String::new(), t(2))
            .expect("second");
        assert_eq!(r.status, ApprovalStatus::Approved);
        assert_eq!(
            code(r.execute(&person(1, Role::Admin), &delete("key:a"), t(3))),
            Some("not_the_requester")
        );
        assert_eq!(
            code(r.execute(&requester, &delete("key:b"), t(3))),
            Some("approval_mismatch")
        );
        r.execute(&requester, &delete("key:a"), t(3))
            .expect("execute");
        assert_eq!(
            code(r.execute(&requester, &delete("key:a"), t(4))),
            Some("approval_used")
        );
        let mut late = request(1);
        late.decide(person(1, Role::Admin), true, String::new(), t(1))
            .expect("approve");
        assert_eq!(
            code(late.execute(&requester, &delete("key:a"), t(3_600))),
            Some("approval_expired")
        );
        let mut denied = request(1);
        denied
            .decide(person(2, Role::Admin), false, "no".into(), t(1))
            .expect("deny");
        assert_eq!(denied.status, ApprovalStatus::Denied);
        assert_eq!(
            code(denied.execute(&requester, &delete("key:a"), t(2))),
            Some("approval_closed")
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Decide { who: u8, approve: bool },
        Execute { who: u8, tampered: bool },
        Cancel { who: u8 },
        Wait { secs: i64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..5, any::<bool>()).prop_map(|(who, approve)| Step::Decide { who, approve }),
            (0u8..5, any::<bool>()).prop_map(|(who, tampered)| Step::Execute { who, tampered }),
            (0u8..5).prop_map(|who| Step::Cancel { who }),
            (0i64..2_000).prop_map(|secs| Step::Wait { secs }),
        ]
    }

    /// Person 0 is the requester (a key manager), 1–2 are admins, 3 an owner, 4 a viewer.
    fn who(n: u8) -> Participant {
        let role = match n {
            0 => Role::KeyManager,
            1 | 2 => Role::Admin,
            3 => Role::Owner,
            _ => Role::Viewer,
        };
        person(n, role)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Over random sequences of decisions, uses, cancellations and waiting: nobody
        /// approves their own request, nothing executes twice, a changed operation never
        /// executes, and an execution always had enough distinct eligible approvals, no
        /// denial, its requester and an unexpired approval.
        #[test]
        fn approvals_hold_their_invariants(required in 1u8..=3, steps in proptest::collection::vec(step(), 0..40)) {
            let mut r = request(required);
            let original = r.operation.clone();
            let mut now = t(0);
            let mut executions = 0;
            for s in steps {
                match s {
                    Step::Wait { secs } => now += SignedDuration::from_secs(secs),
                    Step::Decide { who: n, approve } => {
                        let before = r.clone();
                        if r.decide(who(n), approve, String::new(), now).is_ok() {
                            prop_assert_ne!(n, 0, "the requester decided");
                            prop_assert!(matches!(who(n).role, Role::Admin | Role::Owner));
                            prop_assert!(!before.expired(now));
                            prop_assert!(!before.decisions.iter().any(|d| d.by.id == who(n).id));
                        } else {
                            prop_assert_eq!(&r, &before, "a refused decision changes nothing");
                        }
                    }
                    Step::Execute { who: n, tampered } => {
                        let op = if tampered { delete("key:b") } else { original.clone() };
                        let before = r.clone();
                        if r.execute(&who(n), &op, now).is_ok() {
                            executions += 1;
                            prop_assert_eq!(n, 0);
                            prop_assert!(!tampered, "a changed operation executed");
                            prop_assert!(!before.expired(now));
                            prop_assert!(before.approvals() >= usize::from(required));
                            prop_assert!(before.decisions.iter().all(|d| d.approve));
                            let mut approvers: Vec<_> = before.decisions.iter().map(|d| d.by.id.clone()).collect();
                            approvers.sort();
                            approvers.dedup();
                            prop_assert_eq!(approvers.len(), before.decisions.len());
                        } else {
                            prop_assert_eq!(&r, &before, "a refused use changes nothing");
                        }
                    }
                    Step::Cancel { who: n } => {
                        let _ = r.cancel(&who(n));
                    }
                }
            }
            prop_assert!(executions <= 1, "executed {} times", executions);
        }
    }
}

//! The change pipeline: every sensitive change is described once as a [`Change`] — what it
//! touches, which permission it needs, which approval action it is, what the audit trail
//! says — and run by [`App::apply`], which takes the same steps in the same order for the
//! API, the web UI and the CLI:
//!
//! 1. **reach** — the actor holds the permission where the change lands (a key's category
//!    and environment, or the whole vault);
//! 2. **step-up** — a permission that needs a recent MFA check gets one (the actor carries
//!    its [`MfaStanding`]);
//! 3. **approval gate** — an operation the policy covers is refused, filed as a request, or
//!    run under the actor's approval for exactly it;
//! 4. **audit entry** — written before the change, and the change does not happen if it
//!    cannot be (fail closed); a failed write adds a `failure` entry;
//! 5. **write** — the store;
//! 6. **proxy refresh** — this instance's snapshot sees the change before the caller hears
//!    of it;
//! 7. **notification** — queued for webhooks and subscribers, best effort.
//!
//! A refusal at any step comes before anything is written. Use cases validate their input
//! and load what they change (`App::key_for` refuses a key the actor cannot see), then hand
//! the rest to [`App::apply`] — or to [`App::admit`] and [`App::commit`] when something must
//! happen between the gate and the audit entry; none of them places these steps by hand:
//! the gate (`gate.rs`), the fail-closed audit write (`audited`) and the proxy refresh
//! (`changed`) are private to this module, so the compiler refuses a use case that tries.
//! (The gate's own records — a filed request, a used approval, a break-glass record — are
//! written by the gate itself.)
//!
//! [`MfaStanding`]: keyward_core::mfa::MfaStanding

use keyward_core::access::Permission;
use keyward_core::approval::{ApprovalAction, Operation};
use keyward_core::key::{Criticality, Key};
use keyward_core::notification::NotificationKind;
use keyward_core::{Error, ErrorKind, label};

use crate::actor::Actor;
use crate::app::App;
use crate::audit::log::outcome_of;
use crate::notifications::about::About;
use gate::GateFacts;
use keyward_core::audit::AuditOutcome;

pub(crate) mod gate;

/// Where a change lands, for the reach check, the approval policy's conditions, the audit
/// target and who hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// One key (or a key about to exist): the permission must cover its category and
    /// environment.
    Key {
        /// The audit target (`key:…`, or `service:…` for a key not created yet).
        target: String,
        service_id: String,
        category: Option<String>,
        environment: String,
        criticality: Option<Criticality>,
    },
    /// Several key areas at once (an app token's services × environments): the permission
    /// must cover each of them.
    Areas { target: String, areas: Vec<Area> },
    /// Something of the whole vault (policies, access, catalog, users): the permission must
    /// hold everywhere.
    Vault { target: String },
    /// Something of the actor's own (their sessions, their MFA, their subscription): no
    /// reach beyond being who they are.
    Own { target: String },
}

impl Subject {
    /// An existing key; `category` is its service's (see [`App::subject_of`]).
    pub fn key(key: &Key, category: Option<String>) -> Self {
        Subject::Key {
            target: format!("key:{}", key.id),
            service_id: key.service_id.clone(),
            category,
            environment: key.environment.clone(),
            criticality: Some(key.criticality),
        }
    }

    /// Keys of `service_id` in `environment` (a new key, a pool): no criticality yet.
    pub fn area(
        target: String,
        service_id: &str,
        category: Option<String>,
        environment: &str,
    ) -> Self {
        Subject::Key {
            target,
            service_id: service_id.to_owned(),
            category,
            environment: environment.to_owned(),
            criticality: None,
        }
    }

    pub fn vault(target: impl Into<String>) -> Self {
        Subject::Vault {
            target: target.into(),
        }
    }

    /// The audit target.
    pub fn target(&self) -> &str {
        match self {
            Subject::Key { target, .. }
            | Subject::Areas { target, .. }
            | Subject::Vault { target }
            | Subject::Own { target } => target,
        }
    }

    fn facts(&self) -> GateFacts<'_> {
        match self {
            Subject::Key {
                category,
                environment,
                criticality,
                ..
            } => GateFacts {
                category: category.as_deref(),
                environment: Some(environment),
                criticality: *criticality,
            },
            Subject::Areas { .. } | Subject::Vault { .. } | Subject::Own { .. } => {
                GateFacts::default()
            }
        }
    }

    fn about(&self) -> About<'_> {
        let facts = self.facts();
        About {
            category: facts.category,
            environment: facts.environment,
        }
    }
}

/// Keys of one service in one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Area {
    pub service_id: String,
    pub category: Option<String>,
    pub environment: String,
}

/// A notification a change sends once it is done.
#[derive(Debug, Clone)]
pub struct Notice {
    pub kind: NotificationKind,
    /// One event per name and webhook (a retried change does not notify twice).
    pub dedupe: String,
    pub data: serde_json::Value,
}

/// The operation an approval is bound to (by its hash): an approval for one value, version
/// or grant does not cover another.
#[derive(Debug, Clone)]
pub struct ApprovalTerms {
    pub action: ApprovalAction,
    /// The operation's target when it is not the audit target — something that gets its id
    /// only when written (a new token, a new role), so a repeated request names the same
    /// operation.
    pub target: Option<String>,
    pub payload: serde_json::Value,
}

/// A sensitive change, described once.
#[derive(Debug, Clone)]
pub struct Change {
    /// The audit action, e.g. `key.delete`.
    pub action: &'static str,
    pub subject: Subject,
    /// `None` for the actor's own affairs ([`Change::own`]).
    pub permission: Option<Permission>,
    /// What an approval of this change is for, when the policy may cover it.
    pub approval: Option<ApprovalTerms>,
    /// What the audit entry says besides action, actor and target.
    pub details: serde_json::Value,
    /// Whether it needs a recent MFA check: the permission's own rule
    /// (`Permission::needs_step_up`), or more for access changes made under a broader
    /// permission (creating a user).
    pub step_up: bool,
    /// Whether the proxy's snapshot depends on what is written.
    pub refresh: bool,
    pub notice: Option<Notice>,
}

impl Change {
    /// Something of the actor's own (signing in or out, their second factor, their
    /// subscription): no permission, only the audit entry and the write.
    pub fn own(
        action: &'static str,
        target: impl Into<String>,
        details: serde_json::Value,
    ) -> Self {
        Self {
            action,
            subject: Subject::Own {
                target: target.into(),
            },
            permission: None,
            approval: None,
            details,
            step_up: false,
            refresh: false,
            notice: None,
        }
    }

    /// A change with no approval, no refresh and no notification; add them with the
    /// builders below.
    pub fn new(
        action: &'static str,
        subject: Subject,
        permission: Permission,
        details: serde_json::Value,
    ) -> Self {
        Self {
            action,
            subject,
            permission: Some(permission),
            approval: None,
            details,
            step_up: permission.needs_step_up(),
            refresh: false,
            notice: None,
        }
    }

    /// The approval policy may cover this change as `action`, bound to `payload`.
    #[must_use]
    pub fn approval(mut self, action: ApprovalAction, payload: serde_json::Value) -> Self {
        self.approval = Some(ApprovalTerms {
            action,
            target: None,
            payload,
        });
        self
    }

    /// An access change (roles, grants, allowlists, policies, tokens, users) the policy may
    /// cover as `access_change` on `target`.
    #[must_use]
    pub fn access_change(mut self, target: impl Into<String>, payload: serde_json::Value) -> Self {
        self.approval = Some(ApprovalTerms {
            action: ApprovalAction::AccessChange,
            target: Some(target.into()),
            payload,
        });
        self
    }

    /// The proxy must see the change before the caller hears of it.
    #[must_use]
    pub fn refreshes_proxy(mut self) -> Self {
        self.refresh = true;
        self
    }

    /// Needs a recent MFA check whatever the permission's own rule says.
    #[must_use]
    pub fn needs_step_up(mut self) -> Self {
        self.step_up = true;
        self
    }

    #[must_use]
    pub fn notifies(mut self, notice: Notice) -> Self {
        self.notice = Some(notice);
        self
    }
}

/// Readable, but outside the scope of the permission a change needs.
pub(crate) fn out_of_scope(service_id: &str, environment: &str) -> Error {
    Error::new(
        ErrorKind::Forbidden,
        "out_of_scope",
        format!(
            "your grants do not allow this for {} keys in {}",
            label::printable(service_id),
            label::printable(environment)
        ),
    )
}

/// Refuses `actor` unless `permission` reaches `subject`.
fn check_reach(
    actor: &Actor,
    permission: Option<Permission>,
    subject: &Subject,
) -> Result<(), Error> {
    let Some(permission) = permission else {
        return match subject {
            Subject::Own { .. } => Ok(()),
            _ => Err(Error::internal(
                "a change without a permission must be the actor's own",
            )),
        };
    };
    let reach = actor.access.reach(permission);
    let covered = match subject {
        Subject::Key {
            category,
            environment,
            ..
        } => {
            reach.is_everywhere()
                || reach.covers(category.as_deref().unwrap_or_default(), environment)
        }
        Subject::Areas { areas, .. } => areas.iter().all(|area| {
            reach.covers(
                area.category.as_deref().unwrap_or_default(),
                &area.environment,
            )
        }),
        Subject::Vault { .. } => reach.is_everywhere(),
        Subject::Own { .. } => true,
    };
    if covered {
        return Ok(());
    }
    let outside = match subject {
        Subject::Key {
            service_id,
            environment,
            ..
        } => Some((service_id.as_str(), environment.as_str())),
        Subject::Areas { areas, .. } => areas
            .iter()
            .find(|a| !reach.covers(a.category.as_deref().unwrap_or_default(), &a.environment))
            .map(|a| (a.service_id.as_str(), a.environment.as_str())),
        Subject::Vault { .. } | Subject::Own { .. } => None,
    };
    Err(match outside {
        Some((service_id, environment)) => out_of_scope(service_id, environment),
        None => Error::new(
            ErrorKind::Forbidden,
            "forbidden",
            format!("this needs the `{}` permission", permission.as_str()),
        ),
    })
}

/// A change that passed reach, step-up and the approval gate, ready for its audit entry
/// and write. Only [`App::admit`] makes one, so [`App::commit`] cannot run a change that
/// skipped a step.
#[derive(Debug)]
#[must_use = "an admitted change does nothing until it is committed"]
pub struct Admitted {
    change: Change,
}

impl Admitted {
    /// Adds a fact learnt after admission to the audit entry (e.g. the fingerprint of a
    /// value unsealed only once the actor was let through, or a break-glass review's id).
    pub fn detail(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        if let Some(details) = self.change.details.as_object_mut() {
            details.insert(name.to_owned(), value.into());
        }
        self
    }

    /// The proxy must see the change before the caller hears of it.
    pub(crate) fn refreshes_proxy(mut self) -> Self {
        self.change.refresh = true;
        self
    }
}

impl App {
    /// Runs `change`: reach → step-up → approval gate → audit entry → `write` → proxy
    /// refresh → notification (see the module doc). `write` is a future not yet polled: it
    /// runs only once every step before it let the change through.
    pub async fn apply<T>(
        &self,
        actor: &Actor,
        change: Change,
        write: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let admitted = self.admit(actor, change).await?;
        self.commit(actor, admitted, write).await
    }

    /// The first half of [`App::apply`]: reach, step-up and the approval gate. For a use
    /// case that must learn something between being let through and writing (reveal
    /// unseals the value only now).
    pub async fn admit(&self, actor: &Actor, change: Change) -> Result<Admitted, Error> {
        check_reach(actor, change.permission, &change.subject)?;
        // The actor's own affairs include enrolling a second factor: no MFA standing needed.
        if change.permission.is_some()
            && let Some(refusal) = actor.mfa.refusal(change.step_up)
        {
            return Err(refusal);
        }
        if let Some(terms) = &change.approval {
            let operation = Operation {
                action: terms.action,
                target: terms
                    .target
                    .clone()
                    .unwrap_or_else(|| change.subject.target().to_owned()),
                payload: terms.payload.clone(),
            };
            self.gate(actor, &operation, change.subject.facts()).await?;
        }
        Ok(Admitted { change })
    }

    /// The second half of [`App::apply`]: audit entry, write, proxy refresh, notification.
    pub async fn commit<T>(
        &self,
        actor: &Actor,
        admitted: Admitted,
        write: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let change = admitted.change;
        let done = self
            .audited(
                actor,
                change.action,
                change.subject.target().to_owned(),
                change.details,
                write,
            )
            .await?;
        if change.refresh {
            self.changed().await;
        }
        if let Some(notice) = change.notice {
            self.notify(
                notice.kind,
                change.subject.about(),
                notice.dedupe,
                notice.data,
            )
            .await;
        }
        Ok(done)
    }

    /// The areas `services` × `environments` cover (an app token's reach).
    pub async fn areas_of(
        &self,
        services: &[String],
        environments: &[String],
    ) -> Result<Vec<Area>, Error> {
        let catalog = self.catalog().await?;
        Ok(services
            .iter()
            .flat_map(|service| {
                let category = catalog.get(service).map(|s| s.category.clone());
                environments.iter().map(move |environment| Area {
                    service_id: service.clone(),
                    category: category.clone(),
                    environment: environment.clone(),
                })
            })
            .collect())
    }

    /// Where `key` lands for a [`Change`] (its service's category looked up once).
    pub async fn subject_of(&self, key: &Key) -> Result<Subject, Error> {
        let category = self
            .catalog()
            .await?
            .get(&key.service_id)
            .map(|s| s.category.clone());
        Ok(Subject::key(key, category))
    }

    /// Writes the audit entry for `action`, then runs `op`. If the entry cannot be written,
    /// `op` never runs (fail closed); if `op` fails, a failure entry with its error code
    /// follows (best effort: the operation did not happen either way).
    async fn audited<T>(
        &self,
        actor: &Actor,
        action: &str,
        target: String,
        details: serde_json::Value,
        op: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let entry = self.audit_entry(
            actor,
            action,
            Some(target.clone()),
            AuditOutcome::Success,
            &details,
        )?;
        self.audit.record(&entry).await?;
        let result = op.await;
        if let Err(e) = &result {
            let mut details = details;
            if let Some(map) = details.as_object_mut() {
                map.insert("error".into(), e.code.into());
            }
            let failed =
                self.audit_entry(actor, action, Some(target), outcome_of(&result), &details);
            if let Err(audit_error) = async { self.audit.record(&failed?).await }.await {
                tracing::error!(error = %audit_error, action, "could not record an operation's failure in the audit trail");
            }
        }
        result
    }

    /// After a write: the proxy must see it before the caller hears it succeeded (a revoked
    /// token or disabled key stops working at once). A failed refresh is logged; the
    /// write itself stands.
    async fn changed(&self) {
        if let Err(e) = self.refresh_proxy().await {
            tracing::error!(error = %e, "could not refresh the proxy snapshot after a change");
        }
    }
}

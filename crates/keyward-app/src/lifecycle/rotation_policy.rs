//! Rotation policies (`impl App`): the vault's default and per-category rules, stored as a
//! setting like the other policies, and where each key stands against its rule.

use std::collections::BTreeMap;

use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::key::Key;
use keyward_core::rotation::{RotationPolicy, RotationStatus};
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::{Change, Subject};

pub const ROTATION_POLICY_SETTING: &str = "rotation_policy";

/// What working out many keys' rotation status needs, read once.
#[derive(Debug, Clone)]
pub struct RotationContext {
    policy: RotationPolicy,
    /// Service id → category id.
    categories: BTreeMap<String, String>,
    now: jiff::Timestamp,
}

impl RotationContext {
    pub fn status(&self, key: &Key) -> RotationStatus {
        let category = self
            .categories
            .get(&key.service_id)
            .map(String::as_str)
            .unwrap_or_default();
        let rule = self.policy.rule_for(key.rotation_rule, category);
        keyward_core::rotation::status(rule, key.rotated_at, self.now)
    }
}

impl App {
    pub async fn rotation_policy(&self) -> Result<RotationPolicy, Error> {
        self.stored_policy(ROTATION_POLICY_SETTING, RotationPolicy::default())
            .await
    }

    /// Replaces the rotation policy (access_write; approval where the policy says).
    pub async fn set_rotation_policy(
        &self,
        actor: &Actor,
        policy: RotationPolicy,
    ) -> Result<RotationPolicy, Error> {
        let policy = policy.validate()?;
        let named: Vec<String> = policy.categories.keys().cloned().collect();
        self.ensure_categories(&named).await?;
        let details = serde_json::to_value(&policy)
            .map_err(|e| Error::internal(format!("cannot describe the rotation policy: {e}")))?;
        let text = details.to_string();
        let approval_target: String = "policy:rotation".into();
        let approval_payload = details.clone();
        self.apply(
            actor,
            Change::new(
                "policy.rotation.update",
                Subject::vault("policy:rotation"),
                Permission::AccessWrite,
                json!({ "policy": details }),
            )
            .access_change(approval_target, approval_payload),
            self.store_policy(ROTATION_POLICY_SETTING, &text),
        )
        .await?;
        Ok(policy)
    }

    pub async fn rotation_context(&self) -> Result<RotationContext, Error> {
        let catalog = self.catalog().await?;
        Ok(RotationContext {
            policy: self.rotation_policy().await?,
            categories: catalog
                .iter()
                .map(|s| (s.id.clone(), s.category.clone()))
                .collect(),
            now: self.now(),
        })
    }
}

//! Key strength and compliance (`impl App`): the checks of `keyward_core::compliance` for
//! every key a caller can read. The plaintext is looked at once per version — unsealed,
//! reduced to its traits (format match, entropy estimate, keyed fingerprint) and dropped —
//! and the traits are kept in memory by key and version, so the same value in two keys is
//! found by fingerprint and never by comparing plaintext.

use std::collections::HashMap;

use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::compliance::{Compliance, Evidence, SameValue, SecretTraits, assess};
use keyward_core::id::KeyId;
use keyward_core::key::{Key, KeyVersion, SealContext};

use crate::actor::Actor;
use crate::app::App;

/// Audit actions that put a key's value in someone's hands.
const EXPOSING_ACTIONS: [&str; 2] = ["key.reveal", "key.export"];

/// One key's compliance and the evidence behind it.
#[derive(Debug, Clone)]
pub struct KeyCompliance {
    pub key: Key,
    pub compliance: Compliance,
    pub traits: SecretTraits,
    pub exposures: u64,
    pub last_exposed_at: Option<jiff::Timestamp>,
    pub same_value: Vec<SameValue>,
}

impl App {
    /// Compliance of every live, unrevoked key the caller can read.
    pub async fn compliance(&self, actor: &Actor) -> Result<Vec<KeyCompliance>, Error> {
        self.compliance_where(actor, |_| true).await
    }

    /// One key's compliance.
    pub async fn key_compliance(&self, actor: &Actor, id: &KeyId) -> Result<KeyCompliance, Error> {
        let key = self.key_for(actor, Permission::KeysRead, id).await?;
        key.ensure_not_deleted()?;
        key.ensure_not_revoked()?;
        self.compliance_where(actor, |k| k.id == *id)
            .await?
            .pop()
            .ok_or_else(|| Error::internal("a key's compliance is missing"))
    }

    async fn compliance_where(
        &self,
        actor: &Actor,
        wanted: impl Fn(&Key) -> bool,
    ) -> Result<Vec<KeyCompliance>, Error> {
        let reach = actor.access.reach(Permission::KeysRead);
        let catalog = self.catalog().await?;
        let category = |k: &Key| {
            catalog
                .get(&k.service_id)
                .map(|s| s.category.clone())
                .unwrap_or_default()
        };
        let live: Vec<(Key, KeyVersion)> = self
            .store
            .live_keys()
            .await?
            .into_iter()
            .filter(|(k, _)| k.revoked.is_none())
            .collect();
        // Every live key's fingerprint (also those the caller cannot see: a copy outside
        // their scope is still a copy).
        let mut traits = HashMap::with_capacity(live.len());
        for (key, version) in &live {
            let service = catalog.get(&key.service_id);
            traits.insert(key.id.clone(), self.traits_of(key, version, service)?);
        }
        self.forget_traits_except(&live);
        let mut by_fingerprint: HashMap<&str, Vec<&Key>> = HashMap::new();
        for (key, _) in &live {
            if let Some(t) = traits.get(&key.id) {
                by_fingerprint
                    .entry(t.fingerprint.as_str())
                    .or_default()
                    .push(key);
            }
        }
        let mut exposures: HashMap<String, (u64, jiff::Timestamp)> = HashMap::new();
        for action in EXPOSING_ACTIONS {
            for (target, count, at) in self.store.audit_action_counts(action).await? {
                let entry = exposures.entry(target).or_insert((0, at));
                entry.0 += count;
                entry.1 = entry.1.max(at);
            }
        }
        let rotation = self.rotation_context().await?;
        let mut report = Vec::new();
        for (key, _) in &live {
            if !wanted(key) || !reach.covers(&category(key), &key.environment) {
                continue;
            }
            let Some(key_traits) = traits.get(&key.id) else {
                continue;
            };
            let same_value: Vec<SameValue> = by_fingerprint
                .get(key_traits.fingerprint.as_str())
                .into_iter()
                .flatten()
                .filter(|other| other.id != key.id)
                .map(|other| SameValue {
                    key_id: other.id.clone(),
                    alias: if reach.covers(&category(other), &other.environment) {
                        other.alias.clone()
                    } else {
                        "a key outside your scope".to_owned()
                    },
                    environment: other.environment.clone(),
                })
                .collect();
            let (count, last) = exposures
                .get(&format!("key:{}", key.id))
                .map_or((0, None), |(c, at)| (*c, Some(*at)));
            let status = rotation.status(key);
            let compliance = assess(
                key,
                &Evidence {
                    traits: key_traits,
                    rotation: &status,
                    exposures: count,
                    last_exposed_at: last,
                    same_value: &same_value,
                },
            );
            report.push(KeyCompliance {
                key: key.clone(),
                compliance,
                traits: key_traits.clone(),
                exposures: count,
                last_exposed_at: last,
                same_value,
            });
        }
        Ok(report)
    }

    /// The traits of a key's current value: from the cache, or unsealed once and reduced.
    fn traits_of(
        &self,
        key: &Key,
        version: &KeyVersion,
        service: Option<&keyward_core::service::ServiceDefinition>,
    ) -> Result<SecretTraits, Error> {
        let slot = (key.id.clone(), version.version);
        if let Some(known) = self.secret_traits.lock().get(&slot) {
            return Ok(known.clone());
        }
        let value = self.keyring.get().unseal(
            &version.sealed,
            &SealContext::key_secret(&key.id, version.version),
        )?;
        let traits = SecretTraits::of(service, &value, self.audit.fingerprint(&value));
        drop(value);
        self.secret_traits.lock().insert(slot, traits.clone());
        Ok(traits)
    }

    /// Drops cached traits of versions that are no longer some key's current one.
    fn forget_traits_except(&self, live: &[(Key, KeyVersion)]) {
        let keep: std::collections::HashSet<(&KeyId, u32)> =
            live.iter().map(|(k, v)| (&k.id, v.version)).collect();
        self.secret_traits
            .lock()
            .retain(|(id, version), _| keep.contains(&(id, *version)));
    }
}

//! Validation requests: asking the provider whether a value (new or stored) works, without
//! ever returning the provider's body.

use keyward_core::access::Permission;
use keyward_core::id::KeyId;
use keyward_core::service::ServiceDefinition;
use keyward_core::{Error, label, secret};
use secrecy::SecretString;
use serde_json::json;

use crate::audit::log::outcome_of;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::out_of_scope;

impl App {
    /// Sends `service_id`'s validation request with a value not stored yet (the add-key
    /// wizard's Validate button). Needs `keys_write` where the key would live; the format is
    /// checked first; audited with the value's fingerprint and the verdict.
    pub async fn validate_secret(
        &self,
        actor: &Actor,
        service_id: &str,
        environment: &str,
        secret: &SecretString,
    ) -> Result<keyward_proxy::Validation, Error> {
        let catalog = self.catalog().await?;
        let service = catalog.get(service_id).ok_or_else(|| {
            Error::invalid(
                "unknown_service",
                format!("there is no service `{}`", label::printable(service_id)),
            )
        })?;
        self.require_environment(environment).await?;
        self.ensure_reach(
            actor,
            Permission::KeysWrite,
            service_id,
            environment,
            || out_of_scope(service_id, environment),
        )
        .await?;
        let value = secret::normalize(secret)?;
        secret::check_format(service, &value, false)?;
        let fingerprint = self.audit.fingerprint(&value);
        self.validated(
            actor,
            format!("service:{service_id}"),
            service,
            &value,
            fingerprint,
        )
        .await
    }

    /// Sends the key's validation request with its current value: does the stored key
    /// still work? Needs `keys_write` on the key; audited.
    pub async fn validate_key(
        &self,
        actor: &Actor,
        id: &KeyId,
    ) -> Result<keyward_proxy::Validation, Error> {
        let key = self.key_for(actor, Permission::KeysWrite, id).await?;
        key.ensure_not_deleted()?;
        let catalog = self.catalog().await?;
        let service = catalog
            .get(&key.service_id)
            .ok_or_else(|| Error::internal(format!("key {id} names an unknown service")))?;
        let value = self.version_value(id, key.current_version).await?;
        let fingerprint = self.audit.fingerprint(&value);
        self.validated(actor, format!("key:{id}"), service, &value, fingerprint)
            .await
    }

    /// Runs a validation request and records it (`key.validate`) with its verdict.
    pub(crate) async fn validated(
        &self,
        actor: &Actor,
        target: String,
        service: &ServiceDefinition,
        value: &SecretString,
        fingerprint: String,
    ) -> Result<keyward_proxy::Validation, Error> {
        let result = self.proxy.validate(service, value).await;
        let details = match &result {
            Ok(v) => json!({"service": service.id, "fingerprint": fingerprint,
                            "verdict": v.verdict, "status": v.status}),
            Err(e) => json!({"service": service.id, "fingerprint": fingerprint, "error": e.code}),
        };
        let entry = self.audit_entry(
            actor,
            "key.validate",
            Some(target),
            outcome_of(&result),
            &details,
        )?;
        self.audit.record(&entry).await?;
        result
    }
}

//! Key pools: how the keys of one service and environment share traffic.

use keyward_core::access::Permission;
use keyward_core::usage::{PoolSetting, PoolStrategy};
use keyward_core::{Error, label};
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::{Change, Subject};

impl App {
    pub async fn pool_settings(&self) -> Result<Vec<PoolSetting>, Error> {
        self.store.pool_settings().await
    }

    /// Chooses how a service+environment pool shares traffic.
    pub async fn set_pool_strategy(
        &self,
        actor: &Actor,
        service_id: &str,
        environment: &str,
        strategy: PoolStrategy,
    ) -> Result<PoolSetting, Error> {
        let catalog = self.catalog().await?;
        if catalog.get(service_id).is_none() {
            return Err(Error::not_found(
                "service_not_found",
                format!("there is no service `{}`", label::printable(service_id)),
            ));
        }
        self.require_environment(environment).await?;
        let setting = PoolSetting {
            service_id: service_id.to_owned(),
            environment: environment.to_owned(),
            strategy,
        };
        let change = Change::new(
            "pool.set",
            Subject::area(
                format!("pool:{service_id}/{environment}"),
                service_id,
                catalog.get(service_id).map(|s| s.category.clone()),
                environment,
            ),
            Permission::KeysWrite,
            json!({"strategy": strategy.as_str()}),
        )
        .refreshes_proxy();
        self.apply(
            actor,
            change,
            self.store.set_pool_strategy(&setting, self.now()),
        )
        .await?;
        tracing::info!(service = service_id, environment, strategy = strategy.as_str(), actor = %actor.name, "pool strategy set");
        Ok(setting)
    }
}

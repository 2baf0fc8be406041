//! The service catalog as users shape it: built-in services merged with custom ones and
//! base-URL overrides (read per request, so every instance sees the same catalog), plus
//! custom services, environments and categories.

use keyward_core::catalog::ServiceCatalog;
use keyward_core::service::{Category, Environment, ServiceDefinition, validate_base_url};
use keyward_core::{Error, label};
use serde_json::json;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::{Change, Subject};
use keyward_core::access::Permission;

impl App {
    /// The catalog as stored now (built-ins + custom services + overrides). Read per request
    /// so every instance sharing the database sees the same catalog.
    pub async fn catalog(&self) -> Result<ServiceCatalog, Error> {
        let custom = self.store.custom_services().await?;
        let overrides = self.store.base_url_overrides().await?;
        Ok(ServiceCatalog::assemble(
            self.builtin.clone(),
            custom,
            &overrides,
        ))
    }

    pub(crate) async fn require_environment(&self, id: &str) -> Result<(), Error> {
        if self.store.environments().await?.iter().any(|e| e.id == id) {
            Ok(())
        } else {
            Err(Error::invalid(
                "unknown_environment",
                format!("there is no environment `{}`", label::printable(id)),
            ))
        }
    }

    pub async fn create_service(
        &self,
        actor: &Actor,
        mut service: ServiceDefinition,
    ) -> Result<ServiceDefinition, Error> {
        service.builtin = false;
        service.validate()?;
        if self.builtin.iter().any(|b| b.id == service.id) {
            return Err(Error::conflict(
                "service_exists",
                format!("`{}` is a built-in service", service.id),
            ));
        }
        if !self
            .store
            .categories()
            .await?
            .iter()
            .any(|c| c.id == service.category)
        {
            return Err(Error::invalid(
                "unknown_category",
                format!("there is no category `{}`", service.category),
            ));
        }
        self.apply(
            actor,
            Change::new(
                "service.create",
                Subject::vault(format!("service:{}", service.id)),
                Permission::CatalogWrite,
                json!({"base_url": service.base_url, "category": service.category}),
            )
            .refreshes_proxy(),
            self.store.insert_custom_service(&service, self.now()),
        )
        .await?;
        tracing::info!(service = %service.id, actor = %actor.name, "custom service added");
        Ok(service)
    }

    /// Overrides (or with `None` resets) a service's base URL.
    pub async fn set_base_url(
        &self,
        actor: &Actor,
        id: &str,
        base_url: Option<&str>,
    ) -> Result<ServiceDefinition, Error> {
        self.catalog().await?.require(id)?;
        if let Some(url) = base_url {
            validate_base_url(url)?;
        }
        self.apply(
            actor,
            Change::new(
                "service.base_url.set",
                Subject::vault(format!("service:{id}")),
                Permission::CatalogWrite,
                json!({"base_url": base_url}),
            )
            .refreshes_proxy(),
            self.store.set_base_url_override(id, base_url, self.now()),
        )
        .await?;
        tracing::info!(service = %id, actor = %actor.name, base_url = ?base_url, "service base URL changed");
        self.catalog().await?.require(id).cloned()
    }

    pub async fn create_environment(
        &self,
        actor: &Actor,
        id: &str,
        name: &str,
    ) -> Result<Environment, Error> {
        let env = Environment {
            id: label::slug("environment id", id)?,
            name: label::name("environment name", name)?,
            builtin: false,
        };
        self.apply(
            actor,
            Change::new(
                "environment.create",
                Subject::vault(format!("environment:{}", env.id)),
                Permission::CatalogWrite,
                json!({"name": env.name}),
            ),
            self.store.insert_environment(&env, self.now()),
        )
        .await?;
        Ok(env)
    }

    pub async fn create_category(
        &self,
        actor: &Actor,
        id: &str,
        name: &str,
    ) -> Result<Category, Error> {
        let category = Category {
            id: label::slug("category id", id)?,
            name: label::name("category name", name)?,
            builtin: false,
        };
        self.apply(
            actor,
            Change::new(
                "category.create",
                Subject::vault(format!("category:{}", category.id)),
                Permission::CatalogWrite,
                json!({"name": category.name}),
            ),
            self.store.insert_category(&category, self.now()),
        )
        .await?;
        Ok(category)
    }

    pub async fn environments(&self) -> Result<Vec<Environment>, Error> {
        self.store.environments().await
    }

    pub async fn categories(&self) -> Result<Vec<Category>, Error> {
        self.store.categories().await
    }
}

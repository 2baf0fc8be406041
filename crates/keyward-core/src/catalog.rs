//! The service catalog: built-in definitions (compiled in from `catalog/services.toml`)
//! merged with what users stored — custom services and base-URL overrides.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::Error;
use crate::service::ServiceDefinition;

const BUILTIN_TOML: &str = include_str!("../catalog/services.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    service: Vec<ServiceDefinition>,
}

/// Parses the compiled-in catalog. A test checks it parses and validates, so an error here
/// would mean a broken build rather than bad input.
pub fn builtin_services() -> Result<Vec<ServiceDefinition>, Error> {
    let file: CatalogFile = toml::from_str(BUILTIN_TOML)
        .map_err(|e| Error::internal(format!("the built-in service catalog is invalid: {e}")))?;
    Ok(file
        .service
        .into_iter()
        .map(|mut s| {
            s.builtin = true;
            s
        })
        .collect())
}

/// A base-URL override a user stored for a built-in service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrlOverride {
    pub service_id: String,
    pub base_url: String,
}

/// All services known to this vault, by id.
#[derive(Debug, Clone, Default)]
pub struct ServiceCatalog {
    services: BTreeMap<String, ServiceDefinition>,
}

impl ServiceCatalog {
    /// Merges built-ins, custom services (which may not shadow a built-in id) and overrides.
    pub fn assemble(
        builtin: Vec<ServiceDefinition>,
        custom: Vec<ServiceDefinition>,
        overrides: &[BaseUrlOverride],
    ) -> Self {
        let mut services: BTreeMap<_, _> = builtin.into_iter().map(|s| (s.id.clone(), s)).collect();
        for mut service in custom {
            service.builtin = false;
            services.entry(service.id.clone()).or_insert(service);
        }
        for o in overrides {
            if let Some(service) = services.get_mut(&o.service_id) {
                service.base_url.clone_from(&o.base_url);
            }
        }
        Self { services }
    }

    pub fn get(&self, id: &str) -> Option<&ServiceDefinition> {
        self.services.get(id)
    }

    /// Like [`get`](Self::get), but an unknown id is the documented `service_not_found` error.
    pub fn require(&self, id: &str) -> Result<&ServiceDefinition, Error> {
        self.get(id).ok_or_else(|| {
            Error::not_found(
                "service_not_found",
                format!("there is no service `{}`", crate::label::printable(id)),
            )
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &ServiceDefinition> {
        self.services.values()
    }

    pub fn ids_in_category(&self, category: &str) -> Vec<String> {
        self.iter()
            .filter(|s| s.category == category)
            .map(|s| s.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_credit_weights_count_per_endpoint_and_symbol() {
        let services = builtin_services().expect("catalog parses");
        let twelve = services
            .iter()
            .find(|s| s.id == "twelve-data")
            .expect("twelve-data");
        let query = |symbols: &str| vec![("symbol".to_owned(), symbols.to_owned())];
        assert_eq!(twelve.credits("/quote", &query("AAPL")), 1);
        assert_eq!(twelve.credits("/time_series", &query("AAPL,MSFT,IBM")), 3);
        assert_eq!(
            twelve.credits("/income_statement", &query("AAPL,MSFT")),
            200
        );
        assert_eq!(twelve.credits("/quote", &[]), 1, "no symbol counts once");
        for other in services.iter().filter(|s| s.credits.is_empty()) {
            assert_eq!(other.credits("/anything", &query("A,B")), 1, "{}", other.id);
        }
    }

    #[test]
    fn builtin_catalog_parses_and_every_entry_is_valid() {
        let services = builtin_services().expect("catalog parses");
        assert!(
            services.len() >= 14,
            "the catalog must have at least 14 services"
        );
        for service in &services {
            service
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", service.id));
            assert!(
                service.key_format.is_some(),
                "{} has no key format",
                service.id
            );
            assert!(
                service.validation.is_some(),
                "{} has no validation request",
                service.id
            );
            assert!(
                service.docs_url.is_some(),
                "{} has no docs link",
                service.id
            );
            assert!(
                !service.where_to_get.is_empty(),
                "{} says nowhere to get a key",
                service.id
            );
            assert!(
                !service.plans.is_empty(),
                "{} has no plan limits",
                service.id
            );
        }
        for required in [
            "openai",
            "anthropic",
            "gemini",
            "mistral",
            "groq",
            "cohere",
            "alpha-vantage",
            "polygon",
            "finnhub",
            "twelve-data",
            "fmp",
            "tiingo",
            "nasdaq-data-link",
            "marketstack",
        ] {
            assert!(
                services.iter().any(|s| s.id == required),
                "{required} missing"
            );
        }
    }

    #[test]
    fn custom_services_cannot_shadow_builtins_and_overrides_apply() {
        let builtin = builtin_services().expect("catalog parses");
        let mut fake = builtin[0].clone();
        fake.base_url = "https://evil.example".into();
        let catalog = ServiceCatalog::assemble(
            builtin,
            vec![fake],
            &[BaseUrlOverride {
                service_id: "anthropic".into(),
                base_url: "http://127.0.0.1:9999".into(),
            }],
        );
        assert_eq!(
            catalog.require("openai").map(|s| s.base_url.as_str()).ok(),
            Some("https://api.openai.com")
        );
        assert_eq!(
            catalog
                .require("anthropic")
                .map(|s| s.base_url.as_str())
                .ok(),
            Some("http://127.0.0.1:9999")
        );
        assert_eq!(
            catalog.require("nope").map(|_| ()).map_err(|e| e.code),
            Err("service_not_found")
        );
        assert!(
            catalog
                .ids_in_category("financial-data")
                .contains(&"alpha-vantage".to_owned())
        );
    }
}

//! App tokens: what applications present to the proxy instead of a provider key.
//!
//! A token is scoped (which services, environments and optionally which keys it may use),
//! may be restricted to source networks, and carries its own rate limit and money budget.
//! Like management tokens, only a hash of its secret is stored
//! (`kwp_<public id>_<secret>`).

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use crate::budget::{BUDGET_MAX_MICROS, Budget, BudgetPeriod, micros_to_usd, usd_to_micros};
use crate::id::{AppTokenId, KeyId};
use crate::{Error, label};

/// Requests per window, enforced with GCRA by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u32,
    pub per_seconds: u32,
}

/// At most this many entries in each scope list and in the network allowlist.
pub const SCOPE_MAX: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppToken {
    pub id: AppTokenId,
    pub public_id: String,
    pub name: String,
    pub secret_hash: Vec<u8>,
    /// Services the token may call (at least one).
    pub services: Vec<String>,
    /// Environments the token may use (at least one); the first is its default.
    pub environments: Vec<String>,
    /// If not empty, only these keys may be injected for this token.
    pub key_ids: Vec<KeyId>,
    /// If not empty, requests must come from one of these networks.
    pub allowed_networks: Vec<IpNet>,
    pub rate_limit: Option<RateLimit>,
    pub budget: Option<Budget>,
    pub created_by: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// The token's state as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppTokenStatus {
    Active,
    Expired,
    Revoked,
}

impl AppToken {
    pub fn status(&self, now: Timestamp) -> AppTokenStatus {
        if self.revoked_at.is_some() {
            AppTokenStatus::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            AppTokenStatus::Expired
        } else {
            AppTokenStatus::Active
        }
    }

    /// Whether the proxy would inject `key` for this token (if the token is active): the
    /// key's service and environment are in its scope, and its key list (if any) names it.
    pub fn may_use(&self, key: &crate::key::Key) -> bool {
        self.services.contains(&key.service_id)
            && self.environments.contains(&key.environment)
            && (self.key_ids.is_empty() || self.key_ids.contains(&key.id))
    }

    pub fn allows_address(&self, address: std::net::IpAddr) -> bool {
        self.allowed_networks.is_empty()
            || self.allowed_networks.iter().any(|n| n.contains(&address))
    }
}

/// Unvalidated scope and limits of a new token.
#[derive(Debug, Clone, Default)]
pub struct AppTokenDraft {
    pub name: String,
    pub services: Vec<String>,
    pub environments: Vec<String>,
    pub key_ids: Vec<String>,
    pub allowed_networks: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    pub budget_usd: Option<f64>,
    pub budget_period: Option<BudgetPeriod>,
    pub expires_at: Option<Timestamp>,
}

/// The validated draft; the caller checks that services, environments and keys exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAppTokenDraft {
    pub name: String,
    pub services: Vec<String>,
    pub environments: Vec<String>,
    pub key_ids: Vec<KeyId>,
    pub allowed_networks: Vec<IpNet>,
    pub rate_limit: Option<RateLimit>,
    pub budget: Option<Budget>,
    pub expires_at: Option<Timestamp>,
}

fn slugs(field: &'static str, values: &[String]) -> Result<Vec<String>, Error> {
    if values.is_empty() {
        return Err(Error::invalid(
            "scope_empty",
            format!("{field} must list at least one entry"),
        ));
    }
    if values.len() > SCOPE_MAX {
        return Err(Error::invalid(
            "scope_too_large",
            format!("{field} can list at most {SCOPE_MAX} entries"),
        ));
    }
    let mut out = values
        .iter()
        .map(|v| label::slug(field, v))
        .collect::<Result<Vec<_>, _>>()?;
    let first = out[0].clone();
    out.sort();
    out.dedup();
    // Keep the first-listed entry first: for environments it is the token's default.
    if let Some(pos) = out.iter().position(|v| *v == first) {
        let value = out.remove(pos);
        out.insert(0, value);
    }
    Ok(out)
}

impl AppTokenDraft {
    pub fn validate(self, now: Timestamp) -> Result<ValidAppTokenDraft, Error> {
        if self.key_ids.len() > SCOPE_MAX || self.allowed_networks.len() > SCOPE_MAX {
            return Err(Error::invalid(
                "scope_too_large",
                format!("key_ids and allowed_networks can list at most {SCOPE_MAX} entries"),
            ));
        }
        let key_ids = self
            .key_ids
            .iter()
            .map(|k| k.parse::<KeyId>())
            .collect::<Result<Vec<_>, _>>()?;
        let allowed_networks = self
            .allowed_networks
            .iter()
            .map(|n| parse_network(n))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(limit) = self.rate_limit
            && (limit.requests == 0 || limit.per_seconds == 0 || limit.per_seconds > 86_400)
        {
            return Err(Error::invalid(
                "invalid_rate_limit",
                "a rate limit needs requests ≥ 1 and per_seconds between 1 and 86,400",
            ));
        }
        let budget = match (self.budget_usd, self.budget_period) {
            (None, None) => None,
            (Some(usd), Some(period)) => Some(Budget {
                limit_micros: usd_to_micros(usd)?,
                period,
            }),
            _ => {
                return Err(Error::invalid(
                    "invalid_budget",
                    "a budget needs both budget_usd and budget_period (day or month)",
                ));
            }
        };
        if self.expires_at.is_some_and(|at| at <= now) {
            return Err(Error::invalid(
                "expires_at_in_past",
                "expires_at must be in the future",
            ));
        }
        Ok(ValidAppTokenDraft {
            name: label::name("token name", &self.name)?,
            services: slugs("services", &self.services)?,
            environments: slugs("environments", &self.environments)?,
            key_ids,
            allowed_networks,
            rate_limit: self.rate_limit,
            budget,
            expires_at: self.expires_at,
        })
    }
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address (`203.0.113.7`).
pub fn parse_network(text: &str) -> Result<IpNet, Error> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            Error::invalid(
                "invalid_network",
                format!(
                    "`{}` is not an IP address or CIDR block",
                    label::printable(text)
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> AppTokenDraft {
        AppTokenDraft {
            name: "summariser".into(),
            services: vec!["openai".into(), "anthropic".into(), "openai".into()],
            environments: vec!["production".into(), "development".into()],
            ..Default::default()
        }
    }

    #[test]
    fn scopes_are_normalised_and_the_first_environment_stays_first() {
        let valid = draft().validate(Timestamp::UNIX_EPOCH).expect("valid");
        assert_eq!(valid.services, vec!["openai", "anthropic"]);
        assert_eq!(valid.environments, vec!["production", "development"]);
    }

    #[test]
    fn bad_scopes_limits_and_budgets_are_refused() {
        let now = Timestamp::UNIX_EPOCH;
        let code = |d: AppTokenDraft| d.validate(now).map(|_| ()).map_err(|e| e.code);
        assert_eq!(
            code(AppTokenDraft {
                services: vec![],
                ..draft()
            }),
            Err("scope_empty")
        );
        assert_eq!(
            code(AppTokenDraft {
                environments: vec!["Prod".into()],
                ..draft()
            }),
            Err("invalid_slug")
        );
        assert_eq!(
            code(AppTokenDraft {
                key_ids: vec!["nope".into()],
                ..draft()
            }),
            Err("invalid_id")
        );
        assert_eq!(
            code(AppTokenDraft {
                allowed_networks: vec!["10.0.0.0/33".into()],
                ..draft()
            }),
            Err("invalid_network")
        );
        assert_eq!(
            code(AppTokenDraft {
                rate_limit: Some(RateLimit {
                    requests: 0,
                    per_seconds: 1
                }),
                ..draft()
            }),
            Err("invalid_rate_limit")
        );
        assert_eq!(
            code(AppTokenDraft {
                budget_usd: Some(5.0),
                ..draft()
            }),
            Err("invalid_budget")
        );
        assert_eq!(
            code(AppTokenDraft {
                budget_usd: Some(-1.0),
                budget_period: Some(BudgetPeriod::Day),
                ..draft()
            }),
            Err("invalid_budget")
        );
        assert_eq!(
            code(AppTokenDraft {
                budget_usd: Some(f64::NAN),
                budget_period: Some(BudgetPeriod::Day),
                ..draft()
            }),
            Err("invalid_budget")
        );
        assert_eq!(
            code(AppTokenDraft {
                name: String::new(),
                ..draft()
            }),
            Err("invalid_name")
        );
    }

    #[test]
    fn networks_and_money_convert_exactly() {
        assert!(parse_network("203.0.113.7").is_ok_and(|n| n.prefix_len() == 32));
        assert!(parse_network("2001:db8::/32").is_ok());
        assert_eq!(usd_to_micros(25.10).ok(), Some(25_100_000));
        assert_eq!(micros_to_usd(25_100_000), 25.1);
        let token = AppToken {
            allowed_networks: vec![parse_network("10.0.0.0/8").expect("net")],
            ..sample()
        };
        assert!(token.allows_address("10.1.2.3".parse().expect("ip")));
        assert!(!token.allows_address("192.168.0.1".parse().expect("ip")));
        assert!(sample().allows_address("192.168.0.1".parse().expect("ip")));
    }

    fn sample() -> AppToken {
        AppToken {
            id: "atk_01JD0000000000000000000000".parse().expect("id"),
            public_id: "abcdefghijkl".into(),
            name: "t".into(),
            secret_hash: vec![],
            services: vec!["openai".into()],
            environments: vec!["production".into()],
            key_ids: vec![],
            allowed_networks: vec![],
            rate_limit: None,
            budget: None,
            created_by: "t".into(),
            created_at: Timestamp::UNIX_EPOCH,
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        }
    }
}

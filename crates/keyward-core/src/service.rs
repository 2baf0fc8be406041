//! Services: the third-party APIs whose keys Keyward stores and injects.
//!
//! A [`ServiceDefinition`] says everything Keyward needs to know about a provider without
//! talking to it: where requests go, where the key goes, what a key looks like, how to check
//! one cheaply, and what limits a typical plan has. Built-in definitions come from the
//! compiled-in catalog (`catalog/services.toml`); users add custom ones and may override a
//! built-in's base URL (e.g. Azure OpenAI, a regional endpoint, or a test double).

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::label;

/// Built-in categories; users may add their own.
pub const BUILTIN_CATEGORIES: [(&str, &str); 3] = [
    ("financial-data", "Financial Data"),
    ("llm-providers", "LLM Providers"),
    ("other", "Other"),
];

/// Built-in environments; users may add their own.
pub const BUILTIN_ENVIRONMENTS: [(&str, &str); 3] = [
    ("development", "Development"),
    ("staging", "Staging"),
    ("production", "Production"),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    pub id: String,
    pub name: String,
    pub builtin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    pub id: String,
    pub name: String,
    pub builtin: bool,
}

/// Where the provider expects its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "in", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyPlacement {
    /// A request header, e.g. `authorization: Bearer <key>` or `x-api-key: <key>`.
    Header {
        name: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        prefix: String,
    },
    /// A query parameter, e.g. `?apikey=<key>`.
    Query { name: String },
}

/// A header or query parameter name the catalog may use: 1–64 letters, digits, `-`, `_`, `.`.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl KeyPlacement {
    fn validate(&self) -> Result<(), Error> {
        let name = match self {
            Self::Header { name, .. } | Self::Query { name } => name,
        };
        if plain_name(name) {
            Ok(())
        } else {
            Err(Error::invalid(
                "invalid_key_placement",
                "the key's header or query parameter name must be 1–64 characters of letters, digits, `-`, `_` and `.`",
            ))
        }
    }
}

/// A cheap request that proves a key works (and, for rotation, that an old one is dead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationRequest {
    #[serde(default = "default_get")]
    pub method: String,
    /// Path and query relative to the base URL, e.g. `/v1/models`.
    pub path: String,
    /// Extra headers the provider requires (e.g. `anthropic-version`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Whether this request spends quota (Alpha Vantage has no free "whoami" call).
    #[serde(default)]
    pub costs_quota: bool,
}

fn default_get() -> String {
    "GET".to_owned()
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitUnit {
    Requests,
    Credits,
    Tokens,
    Symbols,
}

impl LimitUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Credits => "credits",
            Self::Tokens => "tokens",
            Self::Symbols => "symbols",
        }
    }
}

/// One limit of a plan, e.g. 25 requests per 86,400 s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub max: u64,
    pub unit: LimitUnit,
    pub window_seconds: u64,
}

/// At most this many limits per key.
pub const LIMITS_MAX: usize = 10;

/// Checks the limits a key is held to: 1–10 of them, each with a positive maximum and a
/// window from one second to 31 days.
pub fn validate_limits(limits: Vec<Limit>) -> Result<Vec<Limit>, Error> {
    if limits.len() > LIMITS_MAX {
        return Err(Error::invalid(
            "invalid_limits",
            format!("a key can have at most {LIMITS_MAX} limits"),
        ));
    }
    if limits
        .iter()
        .any(|l| l.max == 0 || l.window_seconds == 0 || l.window_seconds > 31 * 86_400)
    {
        return Err(Error::invalid(
            "invalid_limits",
            "each limit needs max ≥ 1 and window_seconds between 1 and 2,678,400 (31 days)",
        ));
    }
    Ok(limits)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    pub plan: String,
    #[serde(default)]
    pub limits: Vec<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// When a provider's fixed-window quotas (per day, per month) start over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reset", rename_all = "snake_case", deny_unknown_fields)]
pub enum QuotaCalendar {
    /// Windows slide; nothing resets at a wall-clock time.
    Rolling,
    /// Daily windows reset at `time` (HH:MM) in the IANA `time_zone`.
    Daily { time: String, time_zone: String },
    /// Monthly windows reset on the first day of the month at 00:00 in `time_zone`.
    Monthly { time_zone: String },
    /// Monthly windows follow the account's billing cycle (unknown to Keyward).
    BillingCycle,
}

/// Everything Keyward knows about one provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDefinition {
    /// Stable slug used in URLs (`/proxy/{id}/…`).
    pub id: String,
    pub name: String,
    pub category: String,
    /// Scheme and host (plus a fixed path prefix if any); the proxy appends the client's path.
    pub base_url: String,
    pub auth: KeyPlacement,
    /// Other places the provider (and so the proxy) also accepts a key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternate_auth: Vec<KeyPlacement>,
    /// Regular expression a well-formed key matches in full; `None` accepts anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_format: Option<String>,
    /// The same rule in words, for error messages and the UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_format_description: Option<String>,
    /// Regular expression for the key's non-secret structural prefix (`sk-proj-`), shown in hints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationRequest>,
    #[serde(default)]
    pub plans: Vec<PlanLimits>,
    pub quota_calendar: QuotaCalendar,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs_url: Option<String>,
    /// Where in the provider's console to create a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_url: Option<String>,
    /// A short "where to get this key" text for the add-key wizard.
    #[serde(default)]
    pub where_to_get: String,
    /// `true` for catalog entries, `false` for services users added.
    #[serde(default)]
    pub builtin: bool,
    /// How to read LLM token usage (and the model) from responses, JSON or SSE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageFormat>,
    /// GET endpoints whose successful answers may be served from the proxy's cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<CacheRule>,
    /// What the provider's answers mean for the key (rejected, quota-limited, throttled,
    /// failed, outage), first match wins; see [`crate::answer`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<crate::answer::AnswerRule>,
    /// Legacy form of `answers` for HTTP 200 bodies, still read from stored custom services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub soft_errors: Vec<SoftErrorRule>,
    /// Where an error body says how long to wait (dot path, e.g. Gemini's
    /// `error.details.*.retryDelay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_field: Option<String>,
    /// The provider's rate-limit headers: a limit whose remaining count is 0 is spent until
    /// its reset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limit_headers: Vec<crate::answer::RateLimitHeaders>,
    /// Set when the provider's answers link to itself (Polygon's `next_url`): JSON and text
    /// bodies are then rewritten too, links to `base_url` and to these origins (e.g.
    /// `https://api.massive.com`) leading back through Keyward. `Link`/`Location` headers
    /// are rewritten for every service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_origins: Vec<String>,
    /// Provider credits a request spends when not 1 (e.g. Twelve Data's endpoint weights).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credits: Vec<CreditRule>,
    /// The provider's API for creating and revoking keys, if Keyward can use it: then a
    /// rotation creates the new key and revokes the old one itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_management: Option<KeyManagementApi>,
}

/// A provider API Keyward drives to create and revoke keys during a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyManagementApi {
    /// OpenAI's Administration API with an admin key (`sk-admin-…`): a project service
    /// account per key (`POST /v1/organization/projects/{project}/service_accounts`
    /// returns its API key once; deleting the account revokes the key).
    OpenaiServiceAccounts,
}

/// The response shape an LLM provider reports token usage in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageFormat {
    /// `usage.prompt_tokens`/`completion_tokens` (Chat Completions) or
    /// `usage.input_tokens`/`output_tokens` (Responses). Streams carry usage only when
    /// asked (`stream_options.include_usage`), so Keyward asks and strips the extra chunk.
    Openai,
    /// OpenAI's fields; streams end with a chunk holding `usage` without being asked.
    Mistral,
    /// OpenAI's fields; streams carry `x_groq.usage` on the final chunk unasked.
    Groq,
    /// `usage.billed_units.{input_tokens,output_tokens}` (what is charged), on the answer
    /// and on the stream's `message-end` event (`delta.usage`).
    Cohere,
    /// `usage` on the message, `message_start` and `message_delta` events.
    Anthropic,
    /// `usageMetadata`.
    Gemini,
}

pub use crate::pattern::PathPattern;

/// Which query parameters (and values) a rule requires; an empty list accepts any value.
pub type QueryMatch = std::collections::BTreeMap<String, Vec<String>>;

fn query_matches(rule: &QueryMatch, query: &[(String, String)]) -> bool {
    rule.iter().all(|(name, allowed)| {
        query
            .iter()
            .any(|(k, v)| k == name && (allowed.is_empty() || allowed.contains(v)))
    })
}

/// Successful GET answers to matching requests are cached for `ttl_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    pub path: PathPattern,
    #[serde(default, skip_serializing_if = "QueryMatch::is_empty")]
    pub query: QueryMatch,
    pub ttl_seconds: u32,
}

/// Longest cache lifetime a rule may ask for: one week.
pub const CACHE_TTL_MAX_SECONDS: u32 = 7 * 24 * 3600;

/// What a soft error means for the key that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SoftErrorKind {
    /// The provider refused for quota or rate: the key shows as quota-limited.
    Throttled,
    /// Any other failure wrapped in a 200 (bad parameters, premium-only endpoint).
    Failed,
}

/// An HTTP 200 JSON object with this top-level `key` (and, if given, this string value)
/// is an error, e.g. Alpha Vantage's `{"Note": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftErrorRule {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    pub means: SoftErrorKind,
}

impl SoftErrorRule {
    pub fn matches(&self, body: &serde_json::Map<String, serde_json::Value>) -> bool {
        match (body.get(&self.key), &self.equals) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(value), Some(expected)) => value.as_str() == Some(expected.as_str()),
        }
    }
}

/// Requests to matching paths spend `credits`, times the number of comma-separated values
/// of `per_symbol` (e.g. `symbol=AAPL,MSFT` counts twice) when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditRule {
    pub path: PathPattern,
    pub credits: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_symbol: Option<String>,
}

impl ServiceDefinition {
    /// How long a GET to `path` with `query` may be cached, if at all.
    pub fn cache_ttl(&self, path: &str, query: &[(String, String)]) -> Option<u32> {
        self.cache
            .iter()
            .find(|r| r.path.matches(path) && query_matches(&r.query, query))
            .map(|r| r.ttl_seconds)
    }

    /// Credits a request spends: the first matching rule's weight, else 1.
    pub fn credits(&self, path: &str, query: &[(String, String)]) -> u32 {
        let Some(rule) = self.credits.iter().find(|r| r.path.matches(path)) else {
            return 1;
        };
        let symbols = rule.per_symbol.as_ref().map_or(1, |param| {
            query
                .iter()
                .filter(|(k, _)| k == param)
                .map(|(_, v)| v.split(',').filter(|s| !s.trim().is_empty()).count())
                .sum::<usize>()
                .max(1)
        });
        rule.credits
            .saturating_mul(u32::try_from(symbols).unwrap_or(u32::MAX))
    }

    /// The first soft-error rule a 200 JSON object matches.
    pub fn soft_error(
        &self,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<SoftErrorKind> {
        self.soft_errors
            .iter()
            .find(|r| r.matches(body))
            .map(|r| r.means)
    }
}

impl ServiceDefinition {
    /// Whether judging an answer with `status` to a request for `path` needs its body.
    pub fn answer_reads_body(&self, status: u16, path: &str) -> bool {
        self.answers
            .iter()
            .any(|r| r.reads_body() && r.applies(status, path))
            || ((200..300).contains(&status) && !self.soft_errors.is_empty())
            || (self.retry_delay_field.is_some()
                && crate::answer::default_class(status) != crate::answer::AnswerClass::Success)
    }

    /// What an answer means: the first matching rule, then legacy soft errors, then HTTP.
    /// `body` is what was read of it (`None` when it was not read or was too large).
    pub fn classify(
        &self,
        status: u16,
        path: &str,
        body: Option<&[u8]>,
    ) -> crate::answer::Classification {
        let body = crate::answer::Body::new(body);
        if let Some(rule) = self.answers.iter().find(|r| r.matches(status, path, &body)) {
            let detail: Vec<String> = rule
                .json
                .iter()
                .map(crate::answer::JsonCondition::describe)
                .collect();
            let mut reason = format!("HTTP {status}");
            if !detail.is_empty() {
                reason = format!("{reason} ({})", detail.join(", "));
            } else if let Some(word) = rule.body_contains.first() {
                reason = format!("{reason} (“{word}”)");
            }
            return crate::answer::Classification {
                class: rule.means,
                lapses: rule.lapses,
                reason,
            };
        }
        if (200..300).contains(&status)
            && let Some(kind) = body
                .json()
                .and_then(serde_json::Value::as_object)
                .and_then(|object| self.soft_error(object))
        {
            return crate::answer::Classification {
                class: match kind {
                    SoftErrorKind::Throttled => crate::answer::AnswerClass::QuotaLimited,
                    SoftErrorKind::Failed => crate::answer::AnswerClass::Failed,
                },
                lapses: None,
                reason: format!("HTTP {status} with an error body"),
            };
        }
        let class = crate::answer::default_class(status);
        crate::answer::Classification {
            class,
            lapses: None,
            // No allocation for the common case: a success needs no reason.
            reason: if class == crate::answer::AnswerClass::Success {
                String::new()
            } else {
                format!("HTTP {status}")
            },
        }
    }

    /// The delay the body asks for (`retry_delay_field`, e.g. Gemini's
    /// `error.details.*.retryDelay` = `"26s"`).
    pub fn body_retry_delay(&self, body: &[u8]) -> Option<std::time::Duration> {
        let field = self.retry_delay_field.as_deref()?;
        let json: serde_json::Value = serde_json::from_slice(body).ok()?;
        let mut found = Vec::new();
        crate::answer::values_at(&json, field, &mut found);
        found.into_iter().find_map(|value| match value {
            serde_json::Value::String(text) => crate::answer::parse_go_duration(text),
            serde_json::Value::Number(n) => n.as_f64().and_then(crate::answer::seconds),
            _ => None,
        })
    }

    /// How long until a spent limit resets, from the rate-limit headers: the latest reset
    /// among the limits whose remaining count is 0.
    pub fn spent_until<'h>(
        &self,
        header: &dyn Fn(&str) -> Option<&'h str>,
        now: jiff::Timestamp,
    ) -> Option<std::time::Duration> {
        self.rate_limit_headers
            .iter()
            .filter(|h| {
                header(&h.remaining).is_some_and(|v| v.trim().parse::<f64>().ok() == Some(0.0))
            })
            .filter_map(|h| crate::answer::reset_wait(header(&h.reset)?, h.format, now))
            .max()
    }
}

impl ServiceDefinition {
    /// Checks every field; used for custom services and, in tests, for the whole catalog.
    pub fn validate(&self) -> Result<(), Error> {
        label::slug("service id", &self.id)?;
        label::name("service name", &self.name)?;
        label::slug("category", &self.category)?;
        validate_base_url(&self.base_url)?;
        self.auth.validate()?;
        for placement in &self.alternate_auth {
            placement.validate()?;
        }
        for (field, pattern) in [
            ("key_format", &self.key_format),
            ("public_prefix", &self.public_prefix),
        ] {
            if let Some(pattern) = pattern {
                compile_pattern(field, pattern)?;
            }
        }
        if let Some(validation) = &self.validation {
            if !validation.path.starts_with('/') {
                return Err(Error::invalid(
                    "invalid_validation_request",
                    "the validation request's path must start with `/`",
                ));
            }
            if !matches!(validation.method.as_str(), "GET" | "POST" | "HEAD") {
                return Err(Error::invalid(
                    "invalid_validation_request",
                    "the validation request's method must be GET, POST or HEAD",
                ));
            }
        }
        for url in [&self.docs_url, &self.key_url].into_iter().flatten() {
            validate_link(url)?;
        }
        for rule in &self.cache {
            rule.path.validate("cache")?;
            if rule.ttl_seconds == 0 || rule.ttl_seconds > CACHE_TTL_MAX_SECONDS {
                return Err(Error::invalid(
                    "invalid_cache_rule",
                    format!("a cache rule's ttl_seconds must be 1–{CACHE_TTL_MAX_SECONDS}"),
                ));
            }
        }
        for rule in &self.credits {
            rule.path.validate("credit")?;
            if rule.credits > 100_000 {
                return Err(Error::invalid(
                    "invalid_credit_rule",
                    "a credit rule's credits must be 0–100,000",
                ));
            }
        }
        if self
            .soft_errors
            .iter()
            .any(|r| r.key.is_empty() || r.key.len() > 128)
        {
            return Err(Error::invalid(
                "invalid_soft_error_rule",
                "a soft-error rule's key must be 1–128 characters",
            ));
        }
        for rule in &self.answers {
            rule.validate()?;
        }
        if self.answers.len() > 64 {
            return Err(Error::invalid(
                "invalid_answer_rule",
                "a service has at most 64 answer rules",
            ));
        }
        if self
            .retry_delay_field
            .as_ref()
            .is_some_and(|f| f.is_empty() || f.len() > 128)
        {
            return Err(Error::invalid(
                "invalid_answer_rule",
                "retry_delay_field must be a dot path of 1–128 characters",
            ));
        }
        for headers in &self.rate_limit_headers {
            for name in [&headers.remaining, &headers.reset] {
                if !plain_name(name) {
                    return Err(Error::invalid(
                        "invalid_rate_limit_header",
                        "rate-limit header names must be 1–64 characters of letters, digits, `-`, `_` and `.`",
                    ));
                }
            }
        }
        if self.link_origins.len() > 8 {
            return Err(Error::invalid(
                "invalid_url",
                "a service has at most 8 link origins",
            ));
        }
        for origin in &self.link_origins {
            validate_base_url(origin)?;
        }
        label::text(
            "where_to_get",
            Some(&self.where_to_get),
            label::DESCRIPTION_MAX,
        )?;
        Ok(())
    }

    /// Compiles this service's key-format rule. A definition is validated before it is
    /// stored, so a failure here means a corrupted store and is reported as such.
    pub fn key_format_regex(&self) -> Result<Option<Regex>, Error> {
        self.key_format
            .as_deref()
            .map(|p| compile_pattern("key_format", p))
            .transpose()
    }

    pub fn public_prefix_regex(&self) -> Result<Option<Regex>, Error> {
        self.public_prefix
            .as_deref()
            .map(|p| compile_pattern("public_prefix", p))
            .transpose()
    }
}

fn compile_pattern(field: &'static str, pattern: &str) -> Result<Regex, Error> {
    if pattern.len() > 512 {
        return Err(Error::invalid(
            "invalid_pattern",
            format!("{field} must be at most 512 characters"),
        ));
    }
    // Anchor so that a pattern always describes the whole key.
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        Error::invalid(
            "invalid_pattern",
            format!("{field} is not a valid regular expression: {e}"),
        )
    })
}

/// A documentation link: absolute http(s), no credentials (query and fragment allowed).
pub fn validate_link(value: &str) -> Result<(), Error> {
    let ok = value.len() <= 2048
        && url::Url::parse(value).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.has_host()
                && u.username().is_empty()
                && u.password().is_none()
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_url",
            format!("`{}` is not an http(s) link", label::printable(value)),
        ))
    }
}

/// A base URL must be absolute http(s) with a host, and carry no credentials, query or
/// fragment: the proxy builds upstream URLs from it and nothing else.
pub fn validate_base_url(value: &str) -> Result<(), Error> {
    let invalid = |why: &str| {
        Error::invalid(
            "invalid_url",
            format!("`{}` is not a usable URL: {why}", label::printable(value)),
        )
    };
    if value.len() > 2048 {
        return Err(invalid("longer than 2,048 characters"));
    }
    let url = url::Url::parse(value).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("it must not contain credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(rules: &str) -> ServiceDefinition {
        let text = format!(
            r#"id = "p"
name = "P"
category = "other"
base_url = "https://p.example"
auth = {{ in = "header", name = "authorization", prefix = "Bearer " }}
quota_calendar = {{ reset = "daily", time = "00:00", time_zone = "UTC" }}
retry_delay_field = "error.details.*.retryDelay"
{rules}"#
        );
        toml::from_str(&text).expect("service")
    }

    #[test]
    fn rules_match_status_json_and_text_and_fall_back_to_http() {
        let p = service(
            r#"answers = [
  { status = [429], json = [{ path = "error.code", equals = "insufficient_quota" }], means = "quota_limited", lapses = "next_day" },
  { status = [400], json = [{ path = "error.details.*.reason", equals = "API_KEY_INVALID" }], means = "rejected" },
  { status = [200], json = [{ path = "code", equals = 429 }, { path = "message", contains = ["current minute"] }], means = "throttled", lapses = "next_minute" },
  { status = ["2xx"], body_contains = ["You have run over"], means = "quota_limited", lapses = "next_month" },
]"#,
        );
        let class = |status, body: &str| p.classify(status, "/x", Some(body.as_bytes())).class;
        assert_eq!(
            class(429, r#"{"error":{"code":"insufficient_quota"}}"#),
            crate::answer::AnswerClass::QuotaLimited
        );
        assert_eq!(
            class(429, r#"{"error":{"code":"rate_limit_exceeded"}}"#),
            crate::answer::AnswerClass::Throttled,
            "HTTP semantics when no rule matches"
        );
        assert_eq!(
            class(
                400,
                r#"{"error":{"details":[{"x":1},{"reason":"API_KEY_INVALID"}]}}"#
            ),
            crate::answer::AnswerClass::Rejected
        );
        assert_eq!(
            class(400, r#"{"error":{}}"#),
            crate::answer::AnswerClass::Unclassified
        );
        assert_eq!(
            class(
                200,
                r#"{"code":429.0,"message":"You have run out of API credits for the Current Minute."}"#
            ),
            crate::answer::AnswerClass::Throttled
        );
        assert_eq!(
            class(200, "You have run over your 500 symbol look up"),
            crate::answer::AnswerClass::QuotaLimited
        );
        assert_eq!(
            class(200, "not json at all"),
            crate::answer::AnswerClass::Success
        );
        assert_eq!(class(503, ""), crate::answer::AnswerClass::Outage);
        assert_eq!(class(418, "{"), crate::answer::AnswerClass::Unclassified);
        assert!(p.answer_reads_body(429, "/x") && p.answer_reads_body(200, "/x"));
        let reason = p
            .classify(
                429,
                "/x",
                Some(br#"{"error":{"code":"insufficient_quota"}}"#),
            )
            .reason;
        assert_eq!(reason, "HTTP 429 (error.code insufficient_quota)");
        assert_eq!(
            p.body_retry_delay(br#"{"error":{"details":[{"retryDelay":"26s"}]}}"#),
            Some(std::time::Duration::from_secs(26))
        );
    }

    #[test]
    fn rate_limit_headers_say_when_a_spent_limit_resets() {
        let mut p = service("");
        p.rate_limit_headers = vec![
            crate::answer::RateLimitHeaders {
                remaining: "x-remaining-requests".into(),
                reset: "x-reset-requests".into(),
                format: crate::answer::ResetFormat::Duration,
            },
            crate::answer::RateLimitHeaders {
                remaining: "x-remaining-tokens".into(),
                reset: "x-reset-tokens".into(),
                format: crate::answer::ResetFormat::Rfc3339,
            },
        ];
        let now: jiff::Timestamp = "2026-12-06T08:00:00Z".parse().expect("ts");
        let header = |remaining_requests: &'static str| {
            move |name: &str| match name {
                "x-remaining-requests" => Some(remaining_requests),
                "x-reset-requests" => Some("6m0s"),
                "x-remaining-tokens" => Some("15"),
                "x-reset-tokens" => Some("2026-12-06T08:00:30Z"),
                _ => None,
            }
        };
        assert_eq!(
            p.spent_until(&header("0"), now),
            Some(std::time::Duration::from_secs(360))
        );
        assert_eq!(p.spent_until(&header("3"), now), None);
    }

    #[test]
    fn base_urls_must_be_plain_http() {
        assert!(validate_base_url("https://api.openai.com").is_ok());
        assert!(validate_base_url("http://127.0.0.1:9000/prefix").is_ok());
        assert!(validate_base_url("ftp://example.com").is_err());
        assert!(validate_base_url("https://user:pw@example.com").is_err());
        assert!(validate_base_url("https://example.com/?a=1").is_err());
        assert!(validate_base_url("/relative").is_err());
    }
}

//! Configuration: built-in defaults → `keyward.toml` (or `--config FILE`) → `KEYWARD_*`
//! environment variables (with `*_FILE` variants for secrets) → command-line flags.
//!
//! Raw layers are merged by figment into [`RawSettings`] (every field optional, unknown keys
//! in a file are an error), then resolved into [`Settings`] with defaults filled in and
//! every value checked, so the rest of the program never sees an invalid setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use keyward_app::AppOptions;
pub use keyward_app::notifications::Smtp;
pub use keyward_app::vault::MasterKeySource;
use keyward_core::key::RecoveryWindow;
use keyward_core::usage::PricingTable;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "KEYWARD_";

/// Settings that may come from a file, the environment or flags (lower-case names; the
/// environment variable is `KEYWARD_` + the upper-cased name).
const KNOWN_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "redis_url",
    "redis_prefix",
    "redis_ca_file",
    "shared_cache_mib",
    "limits_on_redis_outage",
    "master_key_source",
    "master_key_path",
    "master_key",
    "master_key_previous",
    "master_passphrase",
    "master_passphrase_previous",
    "pkcs11_module",
    "pkcs11_token_label",
    "pkcs11_pin",
    "pkcs11_key_label",
    "pkcs11_dek_cache_seconds",
    "recovery_window_days",
    "usage_retention_days",
    "expiry_grace_minutes",
    "forecast_lead_minutes",
    "max_snapshot_staleness_seconds",
    "audit_checkpoint_seconds",
    "audit_webhook_url",
    "audit_retention_days",
    "audit_retention_min_days",
    "audit_archive_dir",
    "usage_rollup_retention_days",
    "notification_log_retention_days",
    "smtp_url",
    "smtp_from",
    "session_idle_minutes",
    "session_absolute_hours",
    "secure_cookies",
    "tls",
    "tls_cert_file",
    "tls_key_file",
    "tls_redirect_listen",
    "health_probes",
    "trusted_proxies",
    "public_url",
    "pricing_file",
    "backup_dir",
    "backup_schedule",
    "backup_keep",
    "backup_recipients",
    "backup_passphrase",
    "backup_raw_usage",
    "log_format",
    "log",
];

/// Settings that hold secrets: each also accepts `KEYWARD_<NAME>_FILE` (the value is read
/// from that file, e.g. a Docker or systemd secret).
const SECRET_KEYS: &[&str] = &[
    "database_url",
    "redis_url",
    "audit_webhook_url",
    "smtp_url",
    "master_key",
    "master_key_previous",
    "master_passphrase",
    "master_passphrase_previous",
    "pkcs11_pin",
    "backup_passphrase",
];

/// Variables that are not settings but are still ours.
const OTHER_VARIABLES: &[&str] = &["KEYWARD_CONFIG"];

#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub database_url: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<PathBuf>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub shared_cache_mib: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits_on_redis_outage: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub master_key_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key_path: Option<PathBuf>,
    /// The PKCS#11 module of the `pkcs11` master-key source (default: SoftHSM2's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pkcs11_module: Option<PathBuf>,
    /// The token holding the master keys; with the `file` source, a token whose keys are
    /// still held (moving back from the HSM).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub pkcs11_token_label: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub pkcs11_pin: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub pkcs11_key_label: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub pkcs11_dek_cache_seconds: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub master_key: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub master_key_previous: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub master_passphrase: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub master_passphrase_previous: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub recovery_window_days: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub usage_retention_days: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub expiry_grace_minutes: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub forecast_lead_minutes: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub max_snapshot_staleness_seconds: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub audit_checkpoint_seconds: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_webhook_url: Option<String>,
    /// `smtps://user:pass@host[:465]` or `smtp://…[:587]?tls=required`: where notification
    /// e-mail is sent (personal subscriptions need it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_url: Option<String>,
    /// The sender of notification e-mail, e.g. `Keyward <keyward@example.com>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_from: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub session_idle_minutes: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub session_absolute_hours: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub secure_cookies: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub tls_redirect_listen: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub health_probes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<String>,
    /// Where clients reach Keyward (`https://keyward.example.com`, with a path prefix if a
    /// reverse proxy adds one): links in provider answers are rewritten to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// A TOML file of `[[price]]` entries laid over the built-in LLM price table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing_file: Option<PathBuf>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub audit_retention_days: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub audit_retention_min_days: Option<String>,
    /// Where pruned audit entries are exported (default `<data_dir>/audit-archive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_archive_dir: Option<PathBuf>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub usage_rollup_retention_days: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub notification_log_retention_days: Option<String>,
    /// Where scheduled backups are written (default `<data_dir>/backups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_dir: Option<PathBuf>,
    /// `off` (default), `hourly`, `daily`, `weekly` or a number of hours (`6h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_schedule: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub backup_keep: Option<String>,
    /// Comma-separated age recipients (`age1…`) backups are encrypted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_recipients: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub backup_passphrase: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub backup_raw_usage: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub log_format: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub log: Option<String>,
}

/// figment parses environment values (`123` becomes a number, `true` a boolean); a string
/// setting such as a passphrase must keep the text whatever it looks like.
fn scalar_as_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Scalar;
    impl serde::de::Visitor<'_> for Scalar {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i128<E>(self, v: i128) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u128<E>(self, v: u128) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_char<E>(self, v: char) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
    }
    d.deserialize_any(Scalar)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Resolved, validated settings.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; secret because it may carry a password.
    pub database_url: SecretString,
    /// Whether `database_url` is the default SQLite file in `data_dir`.
    pub database_is_default: bool,
    pub redis_url: Option<SecretString>,
    /// What every Redis key of this vault starts with (several vaults may share a Redis).
    pub redis_prefix: String,
    /// The CA (PEM) a `rediss://` server's certificate must chain to (read at start).
    pub redis_ca: Option<Vec<u8>>,
    /// MiB of cached answers shared through Redis (0: each instance caches alone).
    pub shared_cache_mib: u32,
    /// What quotas and budgets do while Redis cannot be reached.
    pub limits_on_redis_outage: keyward_proxy::shared::OutagePolicy,
    pub master_key: MasterKeySource,
    pub recovery_window: RecoveryWindow,
    /// Days usage records are kept (1–3650); minute rollups 8 days; longer rollups are kept regardless.
    pub usage_retention_days: u16,
    /// How long past `expires_at` the proxy still injects a key, with a warning (0–10080
    /// minutes; default 0: expired keys are refused at once).
    pub expiry_grace: std::time::Duration,
    /// How long before a quota or budget runs out (at the current pace) it is announced as
    /// `quota_forecast` / `budget_forecast` (0–10080 minutes; default 120; 0: never).
    pub forecast_lead: std::time::Duration,
    /// How long the proxy keeps injecting keys while it cannot confirm its view of the vault
    /// is current (the database unreachable): then it refuses calls `store_unavailable`
    /// until it can (1–3600 seconds; default 10).
    pub max_snapshot_staleness: std::time::Duration,
    /// How often the audit chain's head is signed (when it moved).
    pub audit_checkpoint_every: std::time::Duration,
    /// Where every audit entry is also POSTed, as JSON Lines (at least once, in order).
    pub audit_webhook_url: Option<SecretString>,
    /// Where and as whom notification e-mail is sent; `None`: no e-mail.
    pub smtp: Option<Smtp>,
    pub sessions: keyward_core::session::SessionPolicy,
    /// Mark the session cookie `Secure` (and name it `__Host-kw_session`): set when users
    /// reach Keyward over HTTPS (directly or through a TLS-terminating proxy); always with
    /// `tls`.
    pub secure_cookies: bool,
    /// Serve HTTPS on `listen` (with HSTS): certificate files or a self-signed certificate.
    pub tls: Option<crate::tls::TlsSource>,
    /// A plain-HTTP port that only redirects to the HTTPS listener.
    pub tls_redirect_listen: Option<SocketAddr>,
    /// Send active health probes to idle keys (within each key's probe budget).
    pub health_probes: bool,
    /// Reverse proxies whose `X-Forwarded-For` is believed (CIDRs); none by default.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Where clients reach Keyward, without a trailing `/`; `None`: the request's `Host`.
    pub public_url: Option<String>,
    /// LLM prices: the built-in table plus `pricing_file`.
    pub pricing: PricingTable,
    /// Backups: where scheduled ones go, how often, how many are kept, who can open them.
    pub backup: BackupSettings,
    /// How long the audit trail, usage rollups and notification logs are kept.
    pub retention: RetentionSettings,
    pub log_format: LogFormat,
    pub log: String,
}

/// What is kept how long beyond `usage_retention_days` (raw usage records).
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Audit entries older than this are exported to `audit_archive_dir` and pruned hourly
    /// (`None`: kept for ever).
    pub audit_days: Option<u32>,
    /// Audit entries younger than this are never pruned, by the job or by hand.
    pub audit_min_days: u32,
    pub audit_archive_dir: PathBuf,
    /// Hour and day usage rollups older than this are deleted (`None`: kept for ever;
    /// week and month rollups always are).
    pub rollup_days: Option<u32>,
    /// Finished webhook and e-mail deliveries older than this are deleted.
    pub notification_log_days: u32,
}

/// How backups are made (`keyward backup create` and the server's schedule).
#[derive(Debug, Clone)]
pub struct BackupSettings {
    pub dir: PathBuf,
    /// `None`: no scheduled backups.
    pub every: Option<std::time::Duration>,
    /// Scheduled backups kept in `dir` (the oldest beyond it are deleted).
    pub keep: u32,
    /// age recipients (`age1…`), checked when the settings load.
    pub recipients: Vec<String>,
    /// Used when there are no recipients.
    pub passphrase: Option<SecretString>,
    /// Include raw usage records (rollups are always included).
    pub raw_usage: bool,
}

impl BackupSettings {
    /// The schedule as pages show it (`None`: no scheduled backups).
    pub fn schedule(&self) -> Option<keyward_app::backup::BackupSchedule> {
        Some(keyward_app::backup::BackupSchedule {
            every: self.every?,
            keep: self.keep,
            dir: self.dir.display().to_string(),
            encrypted_to: if self.recipients.is_empty() {
                "a passphrase".to_owned()
            } else {
                format!("{} age recipient(s)", self.recipients.len())
            },
            raw_usage: self.raw_usage,
        })
    }

    /// Who a backup is encrypted to: the recipients, else the passphrase.
    pub fn protection(&self) -> Result<keyward_app::backup::Protection, String> {
        if !self.recipients.is_empty() {
            return keyward_app::backup::Protection::recipients(&self.recipients)
                .map_err(|e| e.message);
        }
        match &self.passphrase {
            Some(passphrase) => keyward_app::backup::Protection::passphrase(passphrase.clone())
                .map_err(|e| e.message),
            None => Err(
                "a backup must be encrypted: give --recipient age1… (or backup_recipients), or set KEYWARD_BACKUP_PASSPHRASE (or _FILE)"
                    .into(),
            ),
        }
    }
}

impl Settings {
    /// Where the vault is and how its master key is found.
    pub fn vault_location(&self) -> keyward_app::vault::Location<'_> {
        keyward_app::vault::Location {
            database_url: &self.database_url,
            data_dir: &self.data_dir,
            database_is_default: self.database_is_default,
            master_key: &self.master_key,
        }
    }

    /// The settings the use cases need.
    pub fn app_options(&self) -> AppOptions {
        AppOptions {
            recovery_window: self.recovery_window,
            usage_retention_days: self.usage_retention_days,
            expiry_grace: self.expiry_grace,
            forecast_lead: self.forecast_lead,
            max_snapshot_staleness: Some(self.max_snapshot_staleness),
            redis: self.redis_url.clone().map(|url| keyward_app::RedisOptions {
                url,
                ca_pem: self.redis_ca.clone(),
                cache_max_bytes: u64::from(self.shared_cache_mib) * 1024 * 1024,
                prefix: self.redis_prefix.clone(),
                on_outage: self.limits_on_redis_outage,
            }),
            pricing: self.pricing.clone(),
            sessions: self.sessions,
            secure_cookies: self.secure_cookies,
            trusted_proxies: self.trusted_proxies.clone(),
            public_url: self.public_url.clone(),
            health_probes: self.health_probes,
            smtp: self.smtp.clone(),
            backup_schedule: self.backup.schedule(),
            audit_retention_min_days: self.retention.audit_min_days,
            rollup_retention_days: self.retention.rollup_days,
            notification_log_retention_days: Some(self.retention.notification_log_days),
        }
    }
}

/// A whole number setting within `range`, or `default` when unset.
fn bounded<T>(
    name: &str,
    unit: &str,
    text: Option<&str>,
    range: std::ops::RangeInclusive<T>,
    default: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let Some(text) = text else {
        return Ok(default);
    };
    text.trim()
        .parse::<T>()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| {
            ConfigError(format!(
                "{name} must be a whole number of {unit} from {} to {}, not `{}`",
                range.start(),
                range.end(),
                keyward_core::label::printable(text)
            ))
        })
}

/// The PKCS#11 token settings, when a token is named (`pkcs11_token_label`).
fn pkcs11_config(
    module: Option<PathBuf>,
    token_label: Option<String>,
    pin: Option<String>,
    key_label: Option<String>,
    dek_cache_seconds: Option<&str>,
) -> Result<Option<keyward_crypto::hsm::Pkcs11Config>, ConfigError> {
    let Some(token_label) = token_label else {
        if pin.is_some() || module.is_some() || key_label.is_some() {
            return Err(ConfigError(
                "pkcs11_module, pkcs11_pin and pkcs11_key_label need pkcs11_token_label (the token's label)".into(),
            ));
        }
        return Ok(None);
    };
    let pin = pin.ok_or_else(|| {
        ConfigError(format!(
            "PKCS#11 token '{}' needs pkcs11_pin (KEYWARD_PKCS11_PIN or KEYWARD_PKCS11_PIN_FILE)",
            keyward_core::label::printable(&token_label)
        ))
    })?;
    let key_label = key_label.unwrap_or_else(|| keyward_crypto::hsm::DEFAULT_KEY_LABEL.to_owned());
    if key_label.trim().is_empty() || token_label.trim().is_empty() {
        return Err(ConfigError(
            "pkcs11_token_label and pkcs11_key_label must not be empty".into(),
        ));
    }
    let seconds = bounded(
        "pkcs11_dek_cache_seconds",
        "seconds",
        dek_cache_seconds,
        0..=3600,
        PKCS11_DEK_CACHE_SECONDS_DEFAULT,
    )?;
    Ok(Some(keyward_crypto::hsm::Pkcs11Config {
        module: module.unwrap_or_else(|| PathBuf::from(keyward_crypto::hsm::SOFTHSM2_MODULE)),
        token_label,
        pin: SecretString::from(pin),
        key_label,
        dek_cache: std::time::Duration::from_secs(seconds),
    }))
}

/// How long a data key unwrapped on the token stays in memory unless
/// `pkcs11_dek_cache_seconds` says otherwise: long enough that a busy key costs one token
/// call a minute, short enough that a revoked token login stops serving soon.
pub const PKCS11_DEK_CACHE_SECONDS_DEFAULT: u64 = 60;

/// How long usage records are kept unless `usage_retention_days` says otherwise.
pub const USAGE_RETENTION_DAYS_DEFAULT: u16 = 90;

/// A problem with the configuration, said in one sentence.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// Flags given on the command line (highest precedence).
#[derive(Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scalar_as_string"
    )]
    pub database_url: Option<String>,
}

/// Loads settings from every layer. `config_file` is `--config`; without it
/// `KEYWARD_CONFIG` or `./keyward.toml` (if present) is used. Returns the settings and
/// warnings to print (e.g. unknown `KEYWARD_*` variables).
pub fn load(
    config_file: Option<&Path>,
    flags: FlagOverrides,
) -> Result<(Settings, Vec<String>), ConfigError> {
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    let warnings = unknown_variables(&env);

    let explicit = config_file.map(Path::to_path_buf).or_else(|| {
        env.iter()
            .find(|(k, _)| k == "KEYWARD_CONFIG")
            .map(|(_, v)| PathBuf::from(v))
    });
    let mut figment = Figment::new();
    match explicit {
        Some(path) => {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        None if Path::new("keyward.toml").is_file() => {
            figment = figment.merge(Toml::file_exact("keyward.toml"));
        }
        None => {}
    }
    // Environment values are taken verbatim as strings (figment's own Env provider would
    // parse `0000111122223333` as a number and lose a passphrase's leading zeros).
    for (var, value) in &env {
        let key = var[ENV_PREFIX.len()..].to_lowercase();
        if let Some(known) = KNOWN_KEYS.iter().find(|k| **k == key) {
            figment = figment.merge(Serialized::default(known, value.clone()));
        }
    }
    for key in SECRET_KEYS {
        let var = format!("{ENV_PREFIX}{}_FILE", key.to_uppercase());
        let Some((_, path)) = env.iter().find(|(k, _)| *k == var) else {
            continue;
        };
        if env
            .iter()
            .any(|(k, _)| *k == format!("{ENV_PREFIX}{}", key.to_uppercase()))
        {
            return Err(ConfigError(format!(
                "both {ENV_PREFIX}{} and {var} are set; use one",
                key.to_uppercase()
            )));
        }
        let value = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {var} ({path}): {e}")))?;
        figment = figment.merge(Serialized::default(
            key,
            value.trim_end_matches(['\n', '\r']).to_owned(),
        ));
    }
    figment = figment.merge(Serialized::defaults(flags));
    let raw: RawSettings = figment
        .extract()
        .map_err(|e| ConfigError(clean_figment_error(&e)))?;
    let settings = resolve(raw)?;
    Ok((settings, warnings))
}

/// figment errors can quote values; never let a secret's value reach the terminal.
fn clean_figment_error(e: &figment::Error) -> String {
    let mut out = Vec::new();
    for error in e.clone() {
        let path = error.path.join(".");
        let what = match &error.kind {
            figment::error::Kind::InvalidType(actual, expected) => {
                format!("has the wrong type ({actual}; expected {expected})")
            }
            figment::error::Kind::UnknownField(field, _) => format!("unknown setting `{field}`"),
            figment::error::Kind::InvalidValue(_, expected) => {
                format!("has an invalid value (expected {expected})")
            }
            other => format!("{other}"),
        };
        let source = error
            .metadata
            .as_ref()
            .map(|m| format!(" (from {})", m.name))
            .unwrap_or_default();
        out.push(if path.is_empty() {
            format!("{what}{source}")
        } else {
            format!("`{path}` {what}{source}")
        });
    }
    out.join("; ")
}

/// Names of `KEYWARD_*` variables that are not settings (typos, stale settings).
pub fn unknown_variables(env: &[(String, String)]) -> Vec<String> {
    env.iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !k.starts_with("KEYWARD_TEST_") && !OTHER_VARIABLES.contains(k))
        .filter(|k| {
            let name = k[ENV_PREFIX.len()..].to_lowercase();
            let base = name
                .strip_suffix("_file")
                .filter(|b| SECRET_KEYS.contains(b));
            !KNOWN_KEYS.contains(&name.as_str()) && base.is_none()
        })
        .map(|k| {
            format!(
                "ignoring unknown environment variable {k} (known: {})",
                known_variable_list()
            )
        })
        .collect()
}

fn known_variable_list() -> String {
    KNOWN_KEYS
        .iter()
        .map(|k| format!("{ENV_PREFIX}{}", k.to_uppercase()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn secret_list(value: Option<String>) -> Vec<SecretString> {
    value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| SecretString::from(s.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn resolve(raw: RawSettings) -> Result<Settings, ConfigError> {
    let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        ConfigError(format!(
            "listen address `{listen_text}` is not HOST:PORT (e.g. 127.0.0.1:8080)"
        ))
    })?;
    let data_dir = raw.data_dir.unwrap_or_else(|| PathBuf::from("data"));
    let database_is_default = raw.database_url.is_none();
    let database_url = SecretString::from(
        raw.database_url
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("keyward.db").display())),
    );
    let url = database_url.expose_secret();
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        return Err(ConfigError(
            "KEYWARD_DATABASE_URL must start with sqlite:// or postgres://".into(),
        ));
    }
    let source = raw.master_key_source.clone().unwrap_or_else(|| {
        if raw.master_key.is_some() {
            "env".into()
        } else if raw.master_passphrase.is_some() {
            "passphrase".into()
        } else {
            "file".into()
        }
    });
    let missing = |var: &str| {
        ConfigError(format!(
            "master key source `{source}` needs {var} (or {var}_FILE)"
        ))
    };
    let key_file = raw
        .master_key_path
        .unwrap_or_else(|| data_dir.join("master.key"));
    let pkcs11 = pkcs11_config(
        raw.pkcs11_module,
        raw.pkcs11_token_label,
        raw.pkcs11_pin,
        raw.pkcs11_key_label,
        raw.pkcs11_dek_cache_seconds.as_deref(),
    )?;
    let master_key = match source.as_str() {
        "file" => MasterKeySource::File {
            path: key_file,
            hsm: pkcs11,
        },
        "pkcs11" => MasterKeySource::Pkcs11 {
            hsm: pkcs11.ok_or_else(|| {
                ConfigError(
                    "master key source `pkcs11` needs pkcs11_token_label and pkcs11_pin (or KEYWARD_PKCS11_PIN_FILE)".into(),
                )
            })?,
            key_file,
        },
        "env" => MasterKeySource::Env {
            current: SecretString::from(
                raw.master_key
                    .ok_or_else(|| missing("KEYWARD_MASTER_KEY"))?,
            ),
            previous: secret_list(raw.master_key_previous),
        },
        "passphrase" => MasterKeySource::Passphrase {
            current: SecretString::from(
                raw.master_passphrase
                    .ok_or_else(|| missing("KEYWARD_MASTER_PASSPHRASE"))?,
            ),
            previous: secret_list(raw.master_passphrase_previous),
        },
        other => {
            return Err(ConfigError(format!(
                "master_key_source must be file, env, passphrase or pkcs11, not `{}`",
                keyward_core::label::printable(other)
            )));
        }
    };
    let days = match raw.recovery_window_days.as_deref() {
        None => 30,
        Some(text) => text.trim().parse::<u16>().map_err(|_| {
            ConfigError(format!(
                "recovery_window_days must be a whole number of days, not `{}`",
                keyward_core::label::printable(text)
            ))
        })?,
    };
    let recovery_window = RecoveryWindow::days(days).map_err(|e| ConfigError(e.message))?;
    let usage_retention_days = bounded(
        "usage_retention_days",
        "days",
        raw.usage_retention_days.as_deref(),
        1..=3650,
        USAGE_RETENTION_DAYS_DEFAULT,
    )?;
    let expiry_grace = std::time::Duration::from_secs(
        60 * u64::from(bounded(
            "expiry_grace_minutes",
            "minutes",
            raw.expiry_grace_minutes.as_deref(),
            0..=10_080u32,
            0,
        )?),
    );
    let forecast_lead = std::time::Duration::from_secs(
        60 * u64::from(bounded(
            "forecast_lead_minutes",
            "minutes",
            raw.forecast_lead_minutes.as_deref(),
            0..=10_080u32,
            120,
        )?),
    );
    let redis_prefix = raw.redis_prefix.unwrap_or_else(|| "keyward:".to_owned());
    if redis_prefix.is_empty()
        || redis_prefix.len() > 64
        || !redis_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.'))
    {
        return Err(ConfigError(
            "redis_prefix must be 1–64 letters, digits, `:`, `_`, `-` or `.`".into(),
        ));
    }
    let redis_ca = match &raw.redis_ca_file {
        None => None,
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError(format!("cannot read redis_ca_file {}: {e}", path.display()))
            })?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(ConfigError(format!(
                    "redis_ca_file {} holds no PEM certificate",
                    path.display()
                )));
            }
            Some(pem)
        }
    };
    let shared_cache_mib = bounded(
        "shared_cache_mib",
        "MiB",
        raw.shared_cache_mib.as_deref(),
        0..=65_536u32,
        0,
    )?;
    if shared_cache_mib > 0 && raw.redis_url.is_none() {
        return Err(ConfigError(
            "shared_cache_mib shares cached answers through Redis: it needs redis_url".into(),
        ));
    }
    let limits_on_redis_outage = match raw.limits_on_redis_outage.as_deref().map(str::trim) {
        None | Some("closed") => keyward_proxy::shared::OutagePolicy::Closed,
        Some("local") => keyward_proxy::shared::OutagePolicy::Local,
        Some(other) => {
            return Err(ConfigError(format!(
                "limits_on_redis_outage must be closed or local, not `{}`",
                keyward_core::label::printable(other)
            )));
        }
    };
    if let Some(url) = &raw.redis_url
        && !(url.starts_with("redis://") || url.starts_with("rediss://"))
    {
        return Err(ConfigError(
            "redis_url must be a redis:// or rediss:// (TLS) URL".into(),
        ));
    }
    let max_snapshot_staleness = std::time::Duration::from_secs(u64::from(bounded(
        "max_snapshot_staleness_seconds",
        "seconds",
        raw.max_snapshot_staleness_seconds.as_deref(),
        1..=3600u32,
        10,
    )?));
    let audit_checkpoint_every = std::time::Duration::from_secs(u64::from(bounded(
        "audit_checkpoint_seconds",
        "seconds",
        raw.audit_checkpoint_seconds.as_deref(),
        1..=86_400u32,
        60,
    )?));
    let audit_webhook_url = match raw.audit_webhook_url {
        None => None,
        Some(url) => {
            let parsed = url::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"));
            if parsed.is_none() {
                return Err(ConfigError(
                    "audit_webhook_url must be an http:// or https:// URL".into(),
                ));
            }
            Some(SecretString::from(url))
        }
    };
    let smtp = match (raw.smtp_url, raw.smtp_from) {
        (None, None) => None,
        (Some(url), Some(from)) => {
            let parsed = url::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "smtp" | "smtps") && u.host_str().is_some());
            if parsed.is_none() {
                return Err(ConfigError(
                    "smtp_url must be an smtp:// or smtps:// URL with a host".into(),
                ));
            }
            let from: lettre::message::Mailbox = from.trim().parse().map_err(|_| {
                ConfigError(format!(
                    "smtp_from must be an e-mail address such as `Keyward <keyward@example.com>`, not `{}`",
                    keyward_core::label::printable(&from)
                ))
            })?;
            Some(Smtp {
                url: SecretString::from(url),
                from,
            })
        }
        (Some(_), None) => {
            return Err(ConfigError(
                "smtp_url needs smtp_from (the sender's address)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError(
                "smtp_from needs smtp_url (the server to send through)".into(),
            ));
        }
    };
    let sessions = keyward_core::session::SessionPolicy {
        idle: jiff::SignedDuration::from_mins(i64::from(bounded(
            "session_idle_minutes",
            "minutes",
            raw.session_idle_minutes.as_deref(),
            1..=1440u32,
            30,
        )?)),
        absolute: jiff::SignedDuration::from_hours(i64::from(bounded(
            "session_absolute_hours",
            "hours",
            raw.session_absolute_hours.as_deref(),
            1..=720u32,
            12,
        )?)),
    };
    let retention = retention_settings(
        RetentionRaw {
            audit_days: raw.audit_retention_days.as_deref(),
            audit_min_days: raw.audit_retention_min_days.as_deref(),
            audit_archive_dir: raw.audit_archive_dir.as_deref(),
            rollup_days: raw.usage_rollup_retention_days.as_deref(),
            notification_log_days: raw.notification_log_retention_days.as_deref(),
        },
        &data_dir,
    )?;
    let backup = backup_settings(
        BackupRaw {
            dir: raw.backup_dir,
            schedule: raw.backup_schedule,
            keep: raw.backup_keep,
            recipients: raw.backup_recipients,
            passphrase: raw.backup_passphrase,
            raw_usage: raw.backup_raw_usage,
        },
        &data_dir,
    )?;
    let tls = tls_source(&raw.tls, raw.tls_cert_file, raw.tls_key_file, listen)?;
    let tls_redirect_listen = match raw.tls_redirect_listen {
        None => None,
        Some(_) if tls.is_none() => {
            return Err(ConfigError(
                "tls_redirect_listen redirects to HTTPS: it needs tls_cert_file and tls_key_file, or tls = \"self-signed\"".into(),
            ));
        }
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
            ConfigError(format!(
                "tls_redirect_listen `{}` is not HOST:PORT (e.g. 0.0.0.0:80)",
                keyward_core::label::printable(&text)
            ))
        })?),
    };
    // Over HTTPS the cookie is always `Secure`.
    let secure_cookies =
        tls.is_some() || flag("secure_cookies", raw.secure_cookies.as_deref(), false)?;
    let public_url = raw
        .public_url
        .as_deref()
        .map(|url| {
            keyward_core::service::validate_base_url(url)
                .map(|()| url.trim_end_matches('/').to_owned())
                .map_err(|e| ConfigError(format!("public_url: {}", e.message)))
        })
        .transpose()?;
    let health_probes = flag("health_probes", raw.health_probes.as_deref(), true)?;
    let trusted_proxies = raw
        .trusted_proxies
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError(format!(
                        "trusted_proxies must be comma-separated addresses or CIDRs, not `{}`",
                        keyward_core::label::printable(s)
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pricing = PricingTable::builtin().map_err(|e| ConfigError(e.message))?;
    let pricing = match &raw.pricing_file {
        None => pricing,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("cannot read pricing_file {}: {e}", path.display()))
            })?;
            pricing.with_overrides(&text).map_err(|e| {
                ConfigError(format!("pricing_file {}: {}", path.display(), e.message))
            })?
        }
    };
    let log_format = match raw.log_format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(ConfigError(format!(
                "log_format must be text or json, not `{}`",
                keyward_core::label::printable(other)
            )));
        }
    };
    Ok(Settings {
        listen,
        data_dir,
        database_url,
        database_is_default,
        redis_url: raw.redis_url.map(SecretString::from),
        redis_prefix,
        redis_ca,
        shared_cache_mib,
        limits_on_redis_outage,
        master_key,
        recovery_window,
        usage_retention_days,
        expiry_grace,
        forecast_lead,
        max_snapshot_staleness,
        audit_checkpoint_every,
        audit_webhook_url,
        smtp,
        sessions,
        secure_cookies,
        tls,
        tls_redirect_listen,
        health_probes,
        backup,
        retention,
        trusted_proxies,
        public_url,
        pricing,
        log_format,
        log: raw.log.unwrap_or_else(|| "info".to_owned()),
    })
}

/// Where the listener's certificate comes from: `tls_cert_file` + `tls_key_file`, or
/// `tls = "self-signed"` (for the loopback names and the listen address), or neither.
fn tls_source(
    mode: &Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    listen: SocketAddr,
) -> Result<Option<crate::tls::TlsSource>, ConfigError> {
    let mode = mode.as_deref().map(str::trim);
    match (mode, cert, key) {
        (None | Some("off"), None, None) => Ok(None),
        (None | Some("files"), Some(cert), Some(key)) => {
            Ok(Some(crate::tls::TlsSource::Files { cert, key }))
        }
        (None | Some("files"), Some(_), None) => Err(ConfigError(
            "tls_cert_file needs tls_key_file (the certificate's private key)".into(),
        )),
        (None | Some("files"), None, Some(_)) => Err(ConfigError(
            "tls_key_file needs tls_cert_file (the certificate chain, leaf first)".into(),
        )),
        (Some("self-signed"), None, None) => {
            let mut names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            let ip = listen.ip();
            if !ip.is_unspecified() && !ip.is_loopback() {
                names.push(ip.to_string());
            }
            Ok(Some(crate::tls::TlsSource::SelfSigned { names }))
        }
        (Some("self-signed" | "off"), _, _) => Err(ConfigError(
            "tls_cert_file and tls_key_file are used without tls, or with tls = \"files\"".into(),
        )),
        (Some("files"), None, None) => Err(ConfigError(
            "tls = \"files\" needs tls_cert_file and tls_key_file".into(),
        )),
        (Some(other), _, _) => Err(ConfigError(format!(
            "tls must be off, files or self-signed, not `{}`",
            keyward_core::label::printable(other)
        ))),
    }
}

impl std::fmt::Debug for RawSettings {
    /// Raw settings hold secrets as plain text (master key, database and SMTP URLs):
    /// only the names of the settings that are set are printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: Vec<String> = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(fields)) => fields.keys().cloned().collect(),
            _ => Vec::new(),
        };
        f.debug_struct("RawSettings").field("set", &set).finish()
    }
}

/// A true/false setting.
/// Hour rollups feed monthly quota windows, budgets and two-week forecast paces.
const MIN_ROLLUP_RETENTION_DAYS: u32 = 62;

/// The retention settings as given.
struct RetentionRaw<'a> {
    audit_days: Option<&'a str>,
    audit_min_days: Option<&'a str>,
    audit_archive_dir: Option<&'a std::path::Path>,
    rollup_days: Option<&'a str>,
    notification_log_days: Option<&'a str>,
}

fn retention_settings(
    raw: RetentionRaw<'_>,
    data_dir: &std::path::Path,
) -> Result<RetentionSettings, ConfigError> {
    let optional_days = |name: &str, text: Option<&str>| -> Result<Option<u32>, ConfigError> {
        let days = bounded(name, "days (0: keep for ever)", text, 0..=36_500u32, 0)?;
        Ok((days > 0).then_some(days))
    };
    let audit_min_days = bounded(
        "audit_retention_min_days",
        "days",
        raw.audit_min_days,
        keyward_app::retention::AUDIT_RETENTION_FLOOR_DAYS..=36_500,
        365,
    )?;
    let audit_days = optional_days("audit_retention_days", raw.audit_days)?;
    if let Some(days) = audit_days.filter(|days| *days < audit_min_days) {
        return Err(ConfigError(format!(
            "audit_retention_days ({days}) is below audit_retention_min_days ({audit_min_days}): audit entries are kept at least that long"
        )));
    }
    let rollup_days = optional_days("usage_rollup_retention_days", raw.rollup_days)?;
    if let Some(days) = rollup_days.filter(|days| *days < MIN_ROLLUP_RETENTION_DAYS) {
        return Err(ConfigError(format!(
            "usage_rollup_retention_days ({days}) must be 0 or at least {MIN_ROLLUP_RETENTION_DAYS}: quotas, budgets and forecasts read a month of hourly rollups"
        )));
    }
    Ok(RetentionSettings {
        audit_days,
        audit_min_days,
        audit_archive_dir: raw
            .audit_archive_dir
            .map_or_else(|| data_dir.join("audit-archive"), std::path::Path::to_owned),
        rollup_days,
        notification_log_days: bounded(
            "notification_log_retention_days",
            "days",
            raw.notification_log_days,
            1..=36_500u32,
            90,
        )?,
    })
}

/// The backup settings as given, taken out of [`RawSettings`].
struct BackupRaw {
    dir: Option<PathBuf>,
    schedule: Option<String>,
    keep: Option<String>,
    recipients: Option<String>,
    passphrase: Option<String>,
    raw_usage: Option<String>,
}

fn backup_settings(
    raw: BackupRaw,
    data_dir: &std::path::Path,
) -> Result<BackupSettings, ConfigError> {
    let every = match raw.schedule.as_deref().map(str::trim) {
        None | Some("off" | "") => None,
        Some("hourly") => Some(3_600),
        Some("daily") => Some(86_400),
        Some("weekly") => Some(7 * 86_400),
        Some(text) => Some(
            text.strip_suffix('h')
                .and_then(|hours| hours.trim().parse::<u64>().ok())
                .filter(|hours| (1..=24 * 366).contains(hours))
                .map(|hours| hours * 3_600)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "backup_schedule must be off, hourly, daily, weekly or a number of hours such as 6h, not `{}`",
                        keyward_core::label::printable(text)
                    ))
                })?,
        ),
    }
    .map(std::time::Duration::from_secs);
    let recipients: Vec<String> = raw
        .recipients
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect();
    if !recipients.is_empty() {
        keyward_app::backup::Protection::recipients(&recipients)
            .map_err(|e| ConfigError(format!("backup_recipients: {}", e.message)))?;
    }
    let settings = BackupSettings {
        dir: raw.dir.unwrap_or_else(|| data_dir.join("backups")),
        every,
        keep: bounded(
            "backup_keep",
            "backups",
            raw.keep.as_deref(),
            1..=1000u32,
            7,
        )?,
        recipients,
        passphrase: raw.passphrase.map(SecretString::from),
        raw_usage: flag("backup_raw_usage", raw.raw_usage.as_deref(), false)?,
    };
    if settings.every.is_some() {
        settings
            .protection()
            .map_err(|e| ConfigError(format!("backup_schedule is set, but {e}")))?;
    }
    Ok(settings)
}

fn flag(name: &str, raw: Option<&str>, default: bool) -> Result<bool, ConfigError> {
    match raw.map(str::trim) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(ConfigError(format!(
            "{name} must be true or false, not `{}`",
            keyward_core::label::printable(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_contract() {
        let s = resolve(RawSettings::default()).expect("defaults resolve");
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.data_dir, PathBuf::from("data"));
        assert_eq!(s.database_url.expose_secret(), "sqlite://data/keyward.db");
        assert!(s.database_is_default);
        assert!(
            matches!(s.master_key, MasterKeySource::File { path: ref p, hsm: None } if p == Path::new("data/master.key"))
        );
        assert_eq!(s.recovery_window.in_days(), 30);
        assert_eq!(s.usage_retention_days, USAGE_RETENTION_DAYS_DEFAULT);
    }

    #[test]
    fn master_key_source_is_inferred_and_checked() {
        let env = resolve(RawSettings {
            master_key: Some("k".into()),
            master_key_previous: Some("a, b".into()),
            ..Default::default()
        })
        .expect("env source");
        assert!(
            matches!(env.master_key, MasterKeySource::Env { ref previous, .. } if previous.len() == 2)
        );
        let err = resolve(RawSettings {
            master_key_source: Some("passphrase".into()),
            ..Default::default()
        })
        .expect_err("missing passphrase");
        assert!(err.0.contains("KEYWARD_MASTER_PASSPHRASE"));
        assert!(
            resolve(RawSettings {
                master_key_source: Some("hsm".into()),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn pkcs11_settings_name_a_token_and_a_pin() {
        let token = || RawSettings {
            master_key_source: Some("pkcs11".into()),
            pkcs11_token_label: Some("vault".into()),
            pkcs11_pin: Some("1234".into()),
            ..Default::default()
        };
        let s = resolve(token()).expect("pkcs11 source");
        let MasterKeySource::Pkcs11 { hsm, key_file } = &s.master_key else {
            panic!("not the pkcs11 source: {:?}", s.master_key);
        };
        assert_eq!(hsm.module, Path::new(keyward_crypto::hsm::SOFTHSM2_MODULE));
        assert_eq!(hsm.key_label, keyward_crypto::hsm::DEFAULT_KEY_LABEL);
        assert_eq!(hsm.dek_cache.as_secs(), PKCS11_DEK_CACHE_SECONDS_DEFAULT);
        assert_eq!(key_file, Path::new("data/master.key"), "older keys, if any");
        assert!(
            !format!("{:?}", s.master_key).contains("1234"),
            "the PIN is not in debug output"
        );

        // The file source still holding a token's keys (moving back from the HSM).
        let back = resolve(RawSettings {
            master_key_source: Some("file".into()),
            ..token()
        })
        .expect("file source with a token");
        assert!(matches!(
            back.master_key,
            MasterKeySource::File { hsm: Some(_), .. }
        ));

        for (raw, expected) in [
            (
                RawSettings {
                    pkcs11_token_label: None,
                    ..token()
                },
                "need pkcs11_token_label",
            ),
            (
                RawSettings {
                    pkcs11_pin: None,
                    ..token()
                },
                "needs pkcs11_pin",
            ),
            (
                RawSettings {
                    pkcs11_dek_cache_seconds: Some("7200".into()),
                    ..token()
                },
                "pkcs11_dek_cache_seconds must be a whole number of seconds from 0 to 3600",
            ),
            (
                RawSettings {
                    pkcs11_key_label: Some(" ".into()),
                    ..token()
                },
                "must not be empty",
            ),
        ] {
            let err = resolve(raw).expect_err(expected);
            assert!(err.0.contains(expected), "{expected}: {}", err.0);
        }
    }

    #[test]
    fn redis_settings_are_checked() {
        let ok = resolve(RawSettings {
            redis_url: Some("rediss://:pw@redis.internal:6380/0".into()),
            limits_on_redis_outage: Some("local".into()),
            ..Default::default()
        })
        .expect("redis");
        assert_eq!(ok.redis_prefix, "keyward:");
        assert_eq!(
            ok.limits_on_redis_outage,
            keyward_proxy::shared::OutagePolicy::Local
        );
        for (raw, says) in [
            (
                RawSettings {
                    redis_url: Some("http://redis".into()),
                    ..Default::default()
                },
                "redis:// or rediss://",
            ),
            (
                RawSettings {
                    redis_prefix: Some("bad prefix!".into()),
                    ..Default::default()
                },
                "redis_prefix must be",
            ),
            (
                RawSettings {
                    limits_on_redis_outage: Some("open".into()),
                    ..Default::default()
                },
                "closed or local",
            ),
            (
                RawSettings {
                    redis_ca_file: Some("/nonexistent/ca.pem".into()),
                    ..Default::default()
                },
                "cannot read redis_ca_file /nonexistent/ca.pem",
            ),
        ] {
            let err = resolve(raw).expect_err(says);
            assert!(err.0.contains(says), "{}", err.0);
            assert!(!err.0.contains("pw@"), "no password in errors");
        }
    }

    #[test]
    fn tls_settings_pick_a_source_and_make_cookies_secure() {
        let files = resolve(RawSettings {
            tls_cert_file: Some("c.pem".into()),
            tls_key_file: Some("k.pem".into()),
            tls_redirect_listen: Some("127.0.0.1:8081".into()),
            ..Default::default()
        })
        .expect("files");
        assert!(matches!(
            files.tls,
            Some(crate::tls::TlsSource::Files { .. })
        ));
        assert!(files.secure_cookies, "HTTPS means Secure cookies");
        assert_eq!(files.tls_redirect_listen.map(|a| a.port()), Some(8081));
        let generated = resolve(RawSettings {
            tls: Some("self-signed".into()),
            listen: Some("10.0.0.5:8443".into()),
            ..Default::default()
        })
        .expect("self-signed");
        assert!(
            matches!(generated.tls, Some(crate::tls::TlsSource::SelfSigned { ref names }) if names.contains(&"10.0.0.5".to_owned()))
        );
        for (raw, says) in [
            (
                RawSettings {
                    tls_cert_file: Some("c.pem".into()),
                    ..Default::default()
                },
                "needs tls_key_file",
            ),
            (
                RawSettings {
                    tls: Some("self-signed".into()),
                    tls_key_file: Some("k.pem".into()),
                    ..Default::default()
                },
                "are used without tls",
            ),
            (
                RawSettings {
                    tls: Some("on".into()),
                    ..Default::default()
                },
                "tls must be off, files or self-signed",
            ),
            (
                RawSettings {
                    tls_redirect_listen: Some("127.0.0.1:80".into()),
                    ..Default::default()
                },
                "redirects to HTTPS",
            ),
        ] {
            let err = resolve(raw).expect_err(says);
            assert!(err.0.contains(says), "{}", err.0);
        }
        assert!(
            !resolve(RawSettings::default())
                .expect("plain")
                .secure_cookies
        );
    }

    #[test]
    fn bad_values_are_refused_with_a_sentence() {
        assert!(
            resolve(RawSettings {
                listen: Some("localhost".into()),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            resolve(RawSettings {
                recovery_window_days: Some("5".into()),
                ..Default::default()
            })
            .is_err()
        );
        for days in ["0", "3651", "ninety"] {
            assert!(
                resolve(RawSettings {
                    usage_retention_days: Some(days.into()),
                    ..Default::default()
                })
                .is_err(),
                "{days}"
            );
        }
        assert!(
            resolve(RawSettings {
                database_url: Some("mysql://x".into()),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            resolve(RawSettings {
                log_format: Some("xml".into()),
                ..Default::default()
            })
            .is_err()
        );
        for (url, from) in [
            (Some("smtps://mail.example.com"), None),
            (None, Some("keyward@example.com")),
            (
                Some("https://mail.example.com"),
                Some("keyward@example.com"),
            ),
            (Some("smtps://mail.example.com"), Some("not an address")),
        ] {
            let refused = resolve(RawSettings {
                smtp_url: url.map(str::to_owned),
                smtp_from: from.map(str::to_owned),
                ..Default::default()
            })
            .expect_err("refused");
            assert!(refused.0.contains("smtp_"), "{refused}");
        }
        let mail = resolve(RawSettings {
            smtp_url: Some("smtps://user:secret@mail.example.com".into()),
            smtp_from: Some("Keyward <keyward@example.com>".into()),
            ..Default::default()
        })
        .expect("valid");
        assert!(mail.smtp.is_some());
        let raw = RawSettings {
            smtp_url: Some("smtps://user:hunter2@mail.example.com".into()),
            master_key: Some("c2VjcmV0LWtleS1tYXRlcmlhbA".into()),
            ..Default::default()
        };
        let shown = format!("{raw:?}");
        assert!(
            shown.contains("smtp_url") && !shown.contains("hunter2") && !shown.contains("c2Vj"),
            "{shown}"
        );
        for flag in ["yes", "1"] {
            assert!(
                resolve(RawSettings {
                    health_probes: Some(flag.into()),
                    ..Default::default()
                })
                .is_err()
            );
        }
    }

    #[test]
    fn unknown_variables_are_reported_but_file_variants_and_test_knobs_are_not() {
        let env: Vec<(String, String)> = [
            "KEYWARD_LISTEN",
            "KEYWARD_DATABSE_URL",
            "KEYWARD_MASTER_KEY_FILE",
            "KEYWARD_LISTEN_FILE",
            "KEYWARD_TEST_REQUIRE_SERVICES",
            "KEYWARD_CONFIG",
        ]
        .iter()
        .map(|k| ((*k).to_owned(), String::new()))
        .collect();
        let warnings = unknown_variables(&env);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("KEYWARD_DATABSE_URL"));
        assert!(warnings[1].contains("KEYWARD_LISTEN_FILE"));
    }
}

//! The command line: `keyward serve`, `admin create`, `token create`, `master-key …`,
//! `keys revoke`, `audit verify`, `backup …`, `anomaly backtest`.
//!
//! Everything a command prints goes through this module; errors are one line on stderr and
//! a non-zero exit status.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "this module is the CLI's output"
)]

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use jiff::{SignedDuration, Timestamp};
use keyward_core::access::Role;
use keyward_core::user::validate_username;
use keyward_core::{Clock, SystemClock};
use keyward_crypto::{MasterKey, OsRandomness};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{self, FlagOverrides, LogFormat, Settings};
use crate::server;
use keyward_app::vault::{self, RotationProgress};
use keyward_app::{Actor, App};

#[derive(Debug, Parser)]
#[command(
    name = "keyward",
    version,
    about = "Self-hosted API key vault and key-injecting proxy.",
    long_about = "Self-hosted API key vault and key-injecting proxy.\n\n\
    Settings come from defaults, then keyward.toml (or --config), then KEYWARD_* environment variables, then flags.\n\
    See README.md for the list."
)]
pub struct Cli {
    /// Configuration file (default: ./keyward.toml if it exists, or $KEYWARD_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the server (API, and later the proxy and UI).
    Serve(ServeArgs),
    /// Manage human administrators.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Manage management API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Rotate and retire the master key that wraps every data key.
    #[command(subcommand, name = "master-key")]
    MasterKey(MasterKeyCommand),
    /// Check the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Act on stored keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The anomaly detector outside the server.
    #[command(subcommand)]
    Anomaly(AnomalyCommand),
    /// Encrypted, signed backups of the whole vault: create, verify, restore.
    #[command(subcommand)]
    Backup(BackupCommand),
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Write an encrypted, signed backup of the whole vault (keys stay sealed; tokens are
    /// hashes). Encrypted to --recipient (or backup_recipients), else to
    /// KEYWARD_BACKUP_PASSPHRASE. Audited as backup.create; an approval policy covering
    /// `export` covers it.
    Create {
        /// The file to write (default: backup_dir/keyward-<UTC time>.kwbackup). Never
        /// overwritten.
        #[arg(long, value_name = "FILE")]
        to: Option<PathBuf>,
        /// An age recipient (age1…) who can open the backup; repeat for several.
        #[arg(long = "recipient", value_name = "AGE_RECIPIENT")]
        recipients: Vec<String>,
        /// Include raw usage records (rollups are always included).
        #[arg(long)]
        raw_usage: bool,
    },
    /// Check a backup without restoring it: every byte decrypts and authenticates, the
    /// contents match the manifest, and the manifest is signed by the vault the configured
    /// master key opens.
    Verify {
        file: PathBuf,
        /// An age identity file (AGE-SECRET-KEY-1…); without it, KEYWARD_BACKUP_PASSPHRASE.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Restore a backup into the configured database, which must hold no vault; then
    /// drill: every key version is opened in memory with the configured master key and the
    /// audit chain is verified. SQLite and PostgreSQL backups restore into either.
    Restore {
        file: PathBuf,
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Replace the vault in a database that holds one: give that database's URL (as
        /// configured, or with its password shown as ***).
        #[arg(long, value_name = "DATABASE_URL")]
        force: Option<String>,
    },
    /// Make an age identity for backups: the secret goes to FILE (mode 0600, keep it apart
    /// from the backups), the recipient is printed for --recipient / backup_recipients.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AnomalyCommand {
    /// Run the detector over a series and print each alert; with labels, also precision,
    /// recall and detection delay.
    ///
    /// FILE is CSV: `timestamp,value[,label]` (RFC 3339 or Unix seconds; any regular step;
    /// a label other than empty, `0` or `normal` marks the step as part of an anomaly).
    /// Steps missing a whole number of steps count as zero; anything else irregular is an
    /// error naming the line.
    Backtest {
        file: PathBuf,
        /// What the values are: requests, errors, rejections or cost (USD).
        #[arg(long, default_value = "requests")]
        series: String,
        /// One JSON object per alert (`timestamp`, `signal`, `score`, `reason`), then one
        /// with the scores when the file is labelled.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Emergency revocation: stop every use of a key now (running servers within a
    /// second), without waiting for approvals; filed for review. Irreversible.
    Revoke {
        /// The key's id, e.g. key_01J….
        key_id: String,
        /// Why (recorded in the audit trail and the review).
        #[arg(long)]
        reason: String,
        /// The value was revoked at the provider too: ask the provider whether it now
        /// refuses it (within the key's probe budget) and say what it answered.
        #[arg(long)]
        at_provider: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the hash chain and its signed checkpoints; exit 1 naming the first entry that
    /// was edited, removed or moved.
    Verify,
    /// Export the entries older than N days to FILE (JSON Lines), then remove them — up to
    /// the newest signed checkpoint older than that, so the kept trail still verifies.
    /// Never inside audit_retention_min_days. Audited as audit.prune.
    Prune {
        #[arg(long, value_name = "DAYS")]
        older_than_days: u32,
        /// Where the removed entries go (a new file; never overwritten).
        #[arg(long, value_name = "FILE")]
        archive: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080; port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Data directory for the SQLite database and master key file (default ./data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a user; the password is read from standard input (12–256 characters).
    Create {
        #[arg(long)]
        username: String,
        /// owner, admin, key_manager, auditor or viewer.
        #[arg(long, default_value = "owner")]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a management API token and print it once.
    Create {
        /// A name that says what uses the token, e.g. "ci-deploy".
        #[arg(long)]
        name: String,
        /// owner, admin, key_manager, auditor or viewer.
        #[arg(long)]
        role: String,
        /// Expire the token after this many days (default: never).
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum MasterKeyCommand {
    /// Make a new master key current and rewrap every data key under it.
    ///
    /// Key-file source: a new key is generated and appended to the key file; running servers
    /// re-read it within seconds (copy the file to other machines). Env and passphrase
    /// sources: configure the new key as KEYWARD_MASTER_KEY (or KEYWARD_MASTER_PASSPHRASE)
    /// and the old one in the matching *_PREVIOUS variable first, here and on running
    /// servers (restart them with both). The new key becomes current only once every running
    /// server holds it; they follow it without a restart.
    Rotate {
        /// How long to wait for running servers to hold the new key before refusing.
        #[arg(long, default_value_t = 30)]
        wait_seconds: u64,
    },
    /// Forget an old master key that no longer wraps any data key.
    Retire {
        /// The key id shown by `status`, e.g. kek_3f9a0c1d2e4b5a6f.
        kek_id: String,
    },
    /// Show the master keys this vault knows and how many key versions each wraps.
    Status,
    /// Decrypt every stored key version in memory to prove the vault is readable.
    Verify,
    /// Print a new random master key (base64) for KEYWARD_MASTER_KEY.
    Generate,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load_settings(
    config_file: Option<&std::path::Path>,
    flags: FlagOverrides,
) -> Result<Settings, String> {
    let (settings, warnings) = config::load(config_file, flags).map_err(|e| e.to_string())?;
    init_tracing(&settings);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(settings)
}

fn init_tracing(settings: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(&settings.log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

async fn run(cli: Cli) -> Result<(), String> {
    let config_file = cli.config.as_deref();
    match cli.command {
        Command::Serve(args) => {
            let flags = FlagOverrides {
                listen: args.listen,
                data_dir: args.data_dir,
                database_url: args.database_url,
            };
            serve(load_settings(config_file, flags)?).await
        }
        Command::Admin(AdminCommand::Create { username, role }) => {
            let settings = load_settings(config_file, FlagOverrides::default())?;
            admin_create(&settings, &username, &role).await
        }
        Command::Token(TokenCommand::Create {
            name,
            role,
            expires_in_days,
        }) => {
            let settings = load_settings(config_file, FlagOverrides::default())?;
            token_create(&settings, &name, &role, expires_in_days).await
        }
        Command::Audit(AuditCommand::Verify) => {
            let settings = load_settings(config_file, FlagOverrides::default())?;
            audit_verify(&settings).await
        }
        Command::Audit(AuditCommand::Prune {
            older_than_days,
            archive,
        }) => {
            let settings = load_settings(config_file, FlagOverrides::default())?;
            audit_prune(&settings, older_than_days, archive).await
        }
        Command::MasterKey(command) => {
            let settings = load_settings(config_file, FlagOverrides::default())?;
            master_key(&settings, command).await
        }
        Command::Keys(KeysCommand::Revoke {
            key_id,
            reason,
            at_provider,
        }) => {
            let settings = load_settings(config_file, FlagOverrides::default())?;
            keys_revoke(&settings, &key_id, &reason, at_provider).await
        }
        Command::Anomaly(AnomalyCommand::Backtest { file, series, json }) => {
            anomaly_backtest(&file, &series, json)
        }
        Command::Backup(BackupCommand::Keygen { out }) => backup_keygen(&out),
        Command::Backup(command) => {
            let settings = load_settings(config_file, FlagOverrides::default())?;
            backup(&settings, command).await
        }
    }
}

fn backup_keygen(out: &std::path::Path) -> Result<(), String> {
    let (identity, recipient) = keyward_app::backup::generate_identity();
    let text = format!(
        "# Keyward backup identity: opens backups encrypted to {recipient}\n{}\n",
        identity.expose_secret()
    );
    crate::backups::write_private(out, &text)?;
    eprintln!(
        "wrote the identity to {} (keep it apart from the backups; without it they cannot be opened)",
        out.display()
    );
    println!("{recipient}");
    Ok(())
}

async fn backup(settings: &Settings, command: BackupCommand) -> Result<(), String> {
    match command {
        BackupCommand::Create {
            to,
            recipients,
            raw_usage,
        } => {
            let protection = if recipients.is_empty() {
                settings.backup.protection()?
            } else {
                keyward_app::backup::Protection::recipients(&recipients).map_err(|e| e.message)?
            };
            let app = open_app(settings).await?;
            let path =
                to.unwrap_or_else(|| crate::backups::default_path(&settings.backup.dir, app.now()));
            let written = crate::backups::write_file(
                &app,
                &Actor::system("cli"),
                protection,
                raw_usage || settings.backup.raw_usage,
                &path,
            )
            .await;
            app.close().await;
            let (manifest, size) = written?;
            println!(
                "wrote {} ({size} bytes): {} rows in {} tables, audit chain to #{}, signed by audit key {}",
                path.display(),
                manifest.rows(),
                manifest.tables.values().filter(|rows| **rows > 0).count(),
                manifest.audit_head.as_ref().map_or(0, |h| h.seq),
                manifest.signer
            );
            Ok(())
        }
        BackupCommand::Verify { file, identity } => {
            let unlock = backup_unlock(settings, identity.as_deref())?;
            let verified = keyward_app::backup::verify_backup(
                &file,
                unlock,
                &settings.master_key,
                keyward_app::backup::SCHEMA_VERSION,
            )
            .await
            .map_err(|e| e.message)?;
            let m = &verified.manifest;
            println!(
                "{}: a whole backup of this vault, signed by audit key {}",
                file.display(),
                verified.signer
            );
            println!(
                "  taken {} by Keyward {} from {} (schema {}), {} rows{}",
                jiff::Timestamp::from_millisecond(m.created_at)
                    .map_or_else(|_| m.created_at.to_string(), |t| t.to_string()),
                m.keyward_version,
                m.source_backend,
                m.schema_version,
                m.rows(),
                if m.raw_usage { " (with raw usage)" } else { "" }
            );
            if let Some(head) = &m.audit_head {
                println!(
                    "  audit chain to #{} ({}), signed checkpoint at #{}",
                    head.seq,
                    head.hash,
                    m.audit_checkpoint.unwrap_or(0)
                );
            }
            Ok(())
        }
        BackupCommand::Restore {
            file,
            identity,
            force,
        } => {
            let unlock = backup_unlock(settings, identity.as_deref())?;
            if let Some(named) = &force {
                let url = settings.database_url.expose_secret();
                if named != url && *named != keyward_store::redact_url(url) {
                    return Err(format!(
                        "--force names {}, but the configured database is {}; name the database to replace",
                        keyward_store::redact_url(named),
                        keyward_store::redact_url(url)
                    ));
                }
            }
            let store = vault::connect(settings.vault_location())
                .await
                .map_err(|e| e.to_string())?;
            let restored = keyward_app::backup::restore_backup(
                store.clone(),
                &file,
                unlock,
                &settings.master_key,
                force.is_some(),
                &OsRandomness,
                Arc::new(SystemClock),
            )
            .await;
            store.close().await;
            let report = restored.map_err(|e| e.message)?;
            println!(
                "restored {} rows from {} into {} ({} backup, schema {})",
                report.rows,
                file.display(),
                keyward_store::redact_url(settings.database_url.expose_secret()),
                report.manifest.source_backend,
                report.manifest.schema_version
            );
            println!(
                "drill: {} key version(s) opened with the master key; audit chain verified ({} entries, {} checkpoints)",
                report.versions_opened, report.chain.verified, report.chain.checkpoints
            );
            println!("sessions are not in backups: everyone signs in again");
            Ok(())
        }
        BackupCommand::Keygen { out } => backup_keygen(&out),
    }
}

/// What opens a backup: `--identity FILE`, else the backup passphrase setting.
fn backup_unlock(
    settings: &Settings,
    identity: Option<&std::path::Path>,
) -> Result<Arc<keyward_app::backup::Unlock>, String> {
    let unlock = match (identity, &settings.backup.passphrase) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the identity file {}: {e}", path.display()))?;
            keyward_app::backup::Unlock::identity_file(&SecretString::from(text))
                .map_err(|e| e.message)?
        }
        (None, Some(passphrase)) => keyward_app::backup::Unlock::Passphrase(passphrase.clone()),
        (None, None) => {
            return Err(
                "give --identity FILE (an age identity) or set KEYWARD_BACKUP_PASSPHRASE (or _FILE) to open the backup"
                    .into(),
            );
        }
    };
    Ok(Arc::new(unlock))
}

/// `keyward anomaly backtest`: needs no settings, vault or database.
fn anomaly_backtest(file: &std::path::Path, series: &str, json: bool) -> Result<(), String> {
    use keyward_core::anomaly::SeriesKind;
    use keyward_core::backtest::{Series, backtest};
    let kind: SeriesKind = series.parse().map_err(|e: keyward_core::Error| e.message)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let series = Series::parse(&text).map_err(|e| format!("{}: {}", file.display(), e.message))?;
    let calendar = keyward_core::market::MarketCalendar::nyse().map_err(|e| e.message)?;
    let result = backtest(&series, kind, Arc::new(calendar));
    if json {
        for alert in &result.alerts {
            println!(
                "{}",
                serde_json::to_string(&alert.finding).map_err(|e| e.to_string())?
            );
        }
        if let Some(scores) = &result.scores {
            println!(
                "{}",
                serde_json::json!({ "scores": scores, "steps": result.steps, "learning_steps": result.learning_steps })
            );
        }
        return Ok(());
    }
    for alert in &result.alerts {
        let mark = match (&result.scores, &alert.label) {
            (None, _) => String::new(),
            (Some(_), Some(label)) => format!("  [{label}]"),
            (Some(_), None) => "  [false alert]".to_owned(),
        };
        println!(
            "{}  {:<16} score {:>7.1}  {}{mark}",
            alert.finding.at, alert.finding.signal, alert.finding.score, alert.finding.reason
        );
    }
    println!(
        "{} alert{} over {} steps of {} s ({} learning{})",
        result.alerts.len(),
        if result.alerts.len() == 1 { "" } else { "s" },
        result.steps,
        series.step_ms / 1000,
        result.learning_steps,
        if series.filled > 0 {
            format!(", {} missing steps counted as zero", series.filled)
        } else {
            String::new()
        }
    );
    if let Some(s) = &result.scores {
        println!(
            "precision {:.3}  recall {:.3}  ({} of {} anomalies found; {} false alert{}, {:.2} per 30 days)",
            s.precision,
            s.recall,
            s.detected,
            s.windows,
            s.false_alerts,
            if s.false_alerts == 1 { "" } else { "s" },
            s.false_alerts_per_30_days
        );
        println!(
            "detection delay: mean {:.0} s, worst {:.0} s",
            s.mean_delay_seconds, s.worst_delay_seconds
        );
        for (label, (windows, found)) in &s.by_label {
            println!("  {label:<20} {found}/{windows}");
        }
    }
    Ok(())
}

async fn keys_revoke(
    settings: &Settings,
    key_id: &str,
    reason: &str,
    at_provider: bool,
) -> Result<(), String> {
    let id: keyward_core::id::KeyId = key_id.parse().map_err(|_| {
        format!(
            "`{}` is not a key id",
            keyward_core::label::printable(key_id)
        )
    })?;
    let app = open_app(settings).await?;
    let revoked = app
        .revoke_key(&Actor::system("cli"), &id, reason, at_provider)
        .await
        .map_err(|e| e.message);
    app.close().await;
    let key = revoked?;
    println!(
        "revoked key {} ({}, {} in {}); running servers stop using it within a second. \
         The act is filed for review in the approvals inbox.",
        key.id, key.alias, key.service_id, key.environment
    );
    if let Some(check) = key.revoked.as_ref().and_then(|r| r.check.as_ref()) {
        println!("at the provider: {}", check.outcome.as_str());
    }
    Ok(())
}

async fn serve(settings: Settings) -> Result<(), String> {
    let started = server::start(&settings).await.map_err(|e| e.to_string())?;
    if let Some(path) = &started.created_key_file {
        warn_new_master_key(path);
    }
    let scheme = if started.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!(
        "Keyward {} listening on {scheme}://{} (store: {})",
        env!("CARGO_PKG_VERSION"),
        started.addr,
        started.app.store_backend()
    );
    if let Some(tls) = &started.tls {
        println!(
            "TLS certificate {} — SHA-256 fingerprint {}",
            tls.cert_file.display(),
            tls.fingerprint
        );
    }
    if let Some(redirect) = started.redirect.as_ref().and_then(|r| r.local_addr().ok()) {
        println!("plain HTTP on {redirect} redirects to HTTPS");
    }
    if let Some(token) = started
        .app
        .issue_setup_token()
        .await
        .map_err(|e| e.to_string())?
    {
        use secrecy::ExposeSecret;
        let line = "=".repeat(78);
        println!(
            "\n{line}\nNo users yet. Create the first owner at {scheme}://{}/setup with this one-time\n\
             setup token (a new one is printed at every start until setup is done):\n\n    {}\n\n\
             Headless instead: keyward admin create --username NAME (password on stdin)\n{line}\n",
            started.addr,
            token.expose_secret()
        );
    }
    started
        .run(server::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

fn warn_new_master_key(path: &std::path::Path) {
    let line = "!".repeat(78);
    eprintln!(
        "\n{line}\n!! A new master key was created: {}\n\
         !! It encrypts every key in this vault. LOSING THIS FILE MAKES EVERY STORED KEY\n\
         !! UNREADABLE, and anyone holding it plus the database can read them all.\n\
         !! Back it up now, somewhere other than next to the database.\n{line}\n",
        path.display()
    );
}

/// Opens the vault (verifying the master key) for a one-shot command.
async fn open_app(settings: &Settings) -> Result<App, String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let vault = vault::open(settings.vault_location(), &OsRandomness, &*clock)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(path) = &vault.created_key_file {
        warn_new_master_key(path);
    }
    App::new(vault, clock, Arc::new(OsRandomness), settings.app_options()).map_err(|e| e.message)
}

fn read_password() -> Result<SecretString, String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        rpassword::prompt_password("Password (12–256 characters): ")
            .map_err(|e| format!("cannot read the password: {e}"))?
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    Ok(SecretString::from(password))
}

async fn admin_create(settings: &Settings, username: &str, role: &str) -> Result<(), String> {
    let username = validate_username(username).map_err(|e| e.message)?;
    let role: Role = role.parse().map_err(|e: keyward_core::Error| e.message)?;
    let password = read_password()?;
    let app = open_app(settings).await?;
    let user = app
        .add_user(&Actor::system("cli"), &username, password, role)
        .await
        .map_err(|e| e.message);
    app.close().await;
    let user = user?;
    println!(
        "created user {} ({}) with role {}",
        user.username, user.id, user.role
    );
    Ok(())
}

async fn audit_verify(settings: &Settings) -> Result<(), String> {
    let app = open_app(settings).await?;
    let report = app
        .verify_audit(&Actor::system("cli"))
        .await
        .map_err(|e| e.message);
    app.close().await;
    let report = report?;
    match report.first_broken {
        None => {
            println!(
                "audit trail intact: {} entries, {} signed checkpoints",
                report.last_seq, report.checkpoints
            );
            Ok(())
        }
        Some(broken) => Err(format!(
            "audit trail BROKEN at entry {} ({}); {} entries before it verified",
            broken.seq,
            serde_json::to_value(broken.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            report.verified
        )),
    }
}

async fn audit_prune(
    settings: &Settings,
    older_than_days: u32,
    archive: PathBuf,
) -> Result<(), String> {
    let app = open_app(settings).await?;
    let before = app
        .now()
        .saturating_sub(SignedDuration::from_hours(24 * i64::from(older_than_days)))
        .unwrap_or(Timestamp::MIN);
    let mut file = crate::backups::ArchiveFile::new(archive);
    let pruned = app
        .prune_audit(&Actor::system("cli"), before, &mut file)
        .await
        .map_err(|e| e.message);
    app.close().await;
    match pruned? {
        Some(p) => println!(
            "exported entries {}–{} to {} and pruned them; the trail verifies from the signed checkpoint at {}",
            p.from,
            p.through,
            file.path().display(),
            p.through
        ),
        None => println!(
            "nothing to prune: no signed checkpoint older than {older_than_days} days past what is already pruned"
        ),
    }
    Ok(())
}

async fn token_create(
    settings: &Settings,
    name: &str,
    role: &str,
    expires_in_days: Option<u32>,
) -> Result<(), String> {
    let role: Role = role.parse().map_err(|e: keyward_core::Error| e.message)?;
    let app = open_app(settings).await?;
    let expires_at = match expires_in_days {
        Some(days) => Some(
            app.now()
                .checked_add(SignedDuration::from_hours(i64::from(days) * 24))
                .map_err(|_| "--expires-in-days is too large".to_owned())?,
        ),
        None => None,
    };
    let (record, token) = app
        .issue_token(&Actor::system("cli"), name, role, expires_at)
        .await
        .map_err(|e| e.message)?;
    app.close().await;
    eprintln!(
        "Created management token {} \"{}\" with role {}. It is shown only this once:",
        record.id, record.name, record.role
    );
    println!("{}", token.expose_secret());
    Ok(())
}

struct PrintProgress {
    last: Option<Timestamp>,
}

impl RotationProgress for PrintProgress {
    fn started(&mut self, new_kek: &str, to_rewrap: u64) {
        println!("master key {new_kek} is now current; {to_rewrap} data key(s) to rewrap");
    }
    fn rewrapped(&mut self, done: u64, total: u64) {
        let now = Timestamp::now();
        let due = self
            .last
            .is_none_or(|at| now.duration_since(at) >= SignedDuration::from_secs(1));
        if due || done == total {
            println!("rewrapped {done}/{total}");
            self.last = Some(now);
        }
    }
}

async fn master_key(settings: &Settings, command: MasterKeyCommand) -> Result<(), String> {
    match command {
        MasterKeyCommand::Rotate { wait_seconds } => {
            let report = vault::rotate(
                settings.vault_location(),
                &OsRandomness,
                &SystemClock,
                &mut PrintProgress { last: None },
                std::time::Duration::from_secs(wait_seconds),
            )
            .await
            .map_err(|e| e.to_string())?;
            println!(
                "rotation complete: {} data key(s) rewrapped under {}",
                report.rewrapped, report.new_kek
            );
            for kek in report.retirable {
                println!(
                    "master key {kek} no longer wraps anything; retire it with `keyward master-key retire {kek}`"
                );
            }
            println!(
                "running Keyward servers wrap new data keys with {} from now on (they follow within seconds; no restart)",
                report.new_kek
            );
            Ok(())
        }
        MasterKeyCommand::Retire { kek_id } => {
            let report = vault::retire(
                settings.vault_location(),
                &kek_id,
                &OsRandomness,
                &SystemClock,
            )
            .await
            .map_err(|e| e.to_string())?;
            println!("master key {kek_id} retired");
            if let Some(note) = report.note {
                println!("{note}");
            }
            Ok(())
        }
        MasterKeyCommand::Status => {
            let app = open_app(settings).await?;
            let status = app.master_key_status().await.map_err(|e| e.message)?;
            for (record, versions, token) in status {
                println!(
                    "{} {:8} wraps {versions} key version(s), registered {}{}",
                    record.kek_id,
                    if record.current {
                        "current"
                    } else {
                        "previous"
                    },
                    record.created_at,
                    token.map_or_else(String::new, |t| format!(", on PKCS#11 token '{t}'"))
                );
            }
            app.close().await;
            Ok(())
        }
        MasterKeyCommand::Verify => {
            let report =
                vault::verify_readable(settings.vault_location(), &OsRandomness, &SystemClock)
                    .await
                    .map_err(|e| e.to_string())?;
            for problem in &report.unreadable {
                eprintln!("unreadable: {problem}");
            }
            println!(
                "{} key version(s) readable, {} unreadable",
                report.readable,
                report.unreadable.len()
            );
            if report.unreadable.is_empty() {
                Ok(())
            } else {
                Err("some key versions cannot be decrypted with the configured master keys".into())
            }
        }
        MasterKeyCommand::Generate => {
            let key = MasterKey::generate(&OsRandomness);
            eprintln!(
                "New master key {} (set it as KEYWARD_MASTER_KEY; store it like a password):",
                key.id()
            );
            println!(
                "{}",
                key.to_base64().map_err(|e| e.to_string())?.expose_secret()
            );
            Ok(())
        }
    }
}

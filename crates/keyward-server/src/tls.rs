//! Keyward's own HTTPS listener: a certificate and key from files — checked at start (they
//! must match, the certificate must be valid now; a failure names the file) and reloaded
//! when either file changes, without a restart — or, with `tls = "self-signed"`, a
//! certificate generated once into `<data_dir>/tls/` (so its fingerprint, printed at
//! start, stays the one clients pinned) and made again only when it is about to expire.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// Where the listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files: the certificate chain (leaf first) and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// Generated into `<data_dir>/tls/` for these names (DNS names or IP addresses).
    SelfSigned { names: Vec<String> },
}

/// A loaded certificate: what the listener serves, and how to tell it apart.
#[derive(Debug)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the leaf certificate (DER), colon-separated upper-case hex, as browsers
    /// and `openssl x509 -fingerprint -sha256` show it.
    pub fingerprint: String,
    /// The certificate file (for `--cacert` with a self-signed start).
    pub cert_file: PathBuf,
    certificate: Arc<Reloading>,
}

/// How long before its end a self-signed certificate is made again.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// A self-signed certificate's life (the most browsers accept).
const SELF_SIGNED_DAYS: i64 = 397;

impl ServerTls {
    /// Loads (or, self-signed, generates) the certificate; `Err` says which file and why.
    pub fn load(source: &TlsSource, data_dir: &Path, now: SystemTime) -> Result<Self, String> {
        let (cert, key) = match source {
            TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
            TlsSource::SelfSigned { names } => self_signed(&data_dir.join("tls"), names, now)?,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (certified, fingerprint, stamp) = load_pair(&cert, &key, &provider, now)?;
        let certificate = Arc::new(Reloading {
            cert_file: cert.clone(),
            key_file: key,
            provider: provider.clone(),
            current: RwLock::new(Arc::new(certified)),
            state: Mutex::new(ReloadState {
                stamp,
                fingerprint: fingerprint.clone(),
                last_error: None,
            }),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            fingerprint,
            cert_file: cert,
            certificate,
        })
    }

    /// Checks the files every `every` and serves a changed pair from the next handshake on;
    /// a pair that does not load (half written, mismatched, expired) is logged and the last
    /// good one kept. Runs until the listener stops.
    pub async fn watch(&self, every: Duration) {
        let certificate = self.certificate.clone();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            certificate.reload_if_changed(SystemTime::now());
        }
    }

    /// The fingerprint of the certificate served now (it changes when the files do).
    pub fn current_fingerprint(&self) -> String {
        self.certificate
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fingerprint
            .clone()
    }
}

/// The certificate served now, replaced when its files change.
#[derive(Debug)]
struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    state: Mutex<ReloadState>,
}

#[derive(Debug)]
struct ReloadState {
    /// The files' modification times and sizes when last loaded.
    stamp: FileStamp,
    fingerprint: String,
    /// The last failure logged, so a broken pair is reported once, not every tick.
    last_error: Option<String>,
}

type FileStamp = [(Option<SystemTime>, u64); 2];

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

impl Reloading {
    fn reload_if_changed(&self, now: SystemTime) {
        let stamp = stamp(&self.cert_file, &self.key_file);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.stamp == stamp {
            return;
        }
        match load_pair(&self.cert_file, &self.key_file, &self.provider, now) {
            Ok((certified, fingerprint, loaded)) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certified);
                tracing::info!(fingerprint = %fingerprint, file = %self.cert_file.display(), "TLS certificate reloaded");
                *state = ReloadState {
                    stamp: loaded,
                    fingerprint,
                    last_error: None,
                };
            }
            Err(e) => {
                if state.last_error.as_deref() != Some(e.as_str()) {
                    tracing::error!(error = %e, "the changed TLS files do not load; still serving the previous certificate");
                    state.last_error = Some(e);
                }
            }
        }
    }
}

fn stamp(cert: &Path, key: &Path) -> FileStamp {
    let one =
        |path: &Path| std::fs::metadata(path).map_or((None, 0), |m| (m.modified().ok(), m.len()));
    [one(cert), one(key)]
}

/// Reads and checks a certificate chain and its key: both files readable PEM, the key the
/// certificate's, the certificate valid at `now`. Errors name the file at fault.
fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &Arc<CryptoProvider>,
    now: SystemTime,
) -> Result<(CertifiedKey, String, FileStamp), String> {
    // The stamp is taken before reading, so a change made while reading is seen next time.
    let stamp = stamp(cert_file, key_file);
    let cert_pem = std::fs::read(cert_file)
        .map_err(|e| format!("cannot read tls_cert_file {}: {e}", cert_file.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls_cert_file {} is not PEM: {e}", cert_file.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "tls_cert_file {} holds no certificate",
            cert_file.display()
        ));
    };
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read(key_file)
            .map_err(|e| format!("cannot read tls_key_file {}: {e}", key_file.display()))?,
    );
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "tls_key_file {} holds no private key in PEM: {e}",
            key_file.display()
        )
    })?;
    check_validity(leaf, &chain, now).map_err(|e| {
        format!(
            "the certificate in tls_cert_file {} {e}",
            cert_file.display()
        )
    })?;
    let fingerprint = fingerprint(leaf);
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "tls_key_file {} is not the key of the certificate in tls_cert_file {}",
            key_file.display(),
            cert_file.display()
        ),
        other => format!(
            "tls_key_file {} cannot be used: {other}",
            key_file.display()
        ),
    })?;
    Ok((certified, fingerprint, stamp))
}

/// Refuses a leaf certificate that has expired or is not valid yet. The chain's last
/// certificate stands in as the trust anchor: whether clients trust it is theirs to decide,
/// only the dates are checked here (webpki checks the leaf's before anything else).
fn check_validity(
    leaf: &CertificateDer<'_>,
    chain: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<(), String> {
    let end_entity =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("cannot be parsed: {e}"))?;
    let Some(last) = chain.last() else {
        return Ok(());
    };
    let Ok(anchor) = webpki::anchor_from_trusted_cert(last) else {
        return Ok(());
    };
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    match end_entity.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        chain.get(1..).unwrap_or_default(),
        UnixTime::since_unix_epoch(since_epoch),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    ) {
        Err(webpki::Error::CertExpired { not_after, .. }) => Err(format!(
            "expired at {}",
            seconds_as_time(not_after.as_secs())
        )),
        Err(webpki::Error::CertNotValidYet { not_before, .. }) => Err(format!(
            "is not valid before {}",
            seconds_as_time(not_before.as_secs())
        )),
        _ => Ok(()),
    }
}

fn seconds_as_time(seconds: u64) -> String {
    i64::try_from(seconds)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| format!("{seconds} s after 1970"), |t| t.to_string())
}

fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The self-signed pair in `dir`, made (again) when missing, unreadable, about to expire,
/// or not covering `names`.
fn self_signed(
    dir: &Path,
    names: &[String],
    now: SystemTime,
) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join("self-signed.crt");
    let key = dir.join("self-signed.key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let soon = now.checked_add(RENEW_BEFORE).unwrap_or(now);
    let usable = load_pair(&cert, &key, &provider, soon).is_ok()
        && std::fs::read_to_string(dir.join("self-signed.names"))
            .is_ok_and(|n| n == names.join("\n"));
    if usable {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| format!("cannot make a certificate for {names:?}: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Keyward (self-signed)");
    let today = jiff::tz::TimeZone::UTC
        .to_datetime(jiff::Timestamp::try_from(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
        .date();
    let yesterday = today.yesterday().unwrap_or(today);
    let end = today
        .checked_add(jiff::Span::new().days(SELF_SIGNED_DAYS))
        .unwrap_or(today);
    let (y, m, d) = ymd(yesterday)?;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(end)?;
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let pair = rcgen::KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let made = params
        .self_signed(&pair)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    let key_pem = zeroize::Zeroizing::new(pair.serialize_pem());
    write_private(&key, key_pem.as_bytes())?;
    std::fs::write(&cert, made.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    std::fs::write(dir.join("self-signed.names"), names.join("\n"))
        .map_err(|e| format!("cannot write {}: {e}", dir.display()))?;
    Ok((cert, key))
}

fn ymd(date: jiff::civil::Date) -> Result<(i32, u8, u8), String> {
    let month = u8::try_from(date.month()).map_err(|e| e.to_string())?;
    let day = u8::try_from(date.day()).map_err(|e| e.to_string())?;
    Ok((i32::from(date.year()), month, day))
}

/// Writes a private key readable by its owner only (0600), replacing any older one.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let partial = path.with_extension("key.partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    std::fs::rename(&partial, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str], from: (i32, u8, u8), to: (i32, u8, u8)) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn files(dir: &Path, cert: &str, key: &str) -> TlsSource {
        std::fs::write(dir.join("c.pem"), cert).expect("write");
        std::fs::write(dir.join("k.pem"), key).expect("write");
        TlsSource::Files {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
        }
    }

    fn at(year: i16, month: i8, day: i8) -> SystemTime {
        let midnight = jiff::tz::TimeZone::UTC
            .to_timestamp(jiff::civil::date(year, month, day).at(0, 0, 0, 0))
            .expect("date");
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(midnight.as_second()).expect("after 1970"))
    }

    #[test]
    fn a_good_pair_loads_and_bad_ones_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = pair(&["localhost"], (2026, 1, 1), (2027, 1, 1));
        let (_, other_key) = pair(&["localhost"], (2026, 1, 1), (2027, 1, 1));
        let now = at(2026, 12, 6);
        let loaded =
            ServerTls::load(&files(dir.path(), &cert, &key), dir.path(), now).expect("loads");
        assert_eq!(loaded.fingerprint.len(), 32 * 3 - 1);

        let mismatch = ServerTls::load(&files(dir.path(), &cert, &other_key), dir.path(), now)
            .expect_err("mismatch");
        assert!(
            mismatch.contains("k.pem") && mismatch.contains("is not the key"),
            "{mismatch}"
        );

        let expired = ServerTls::load(&files(dir.path(), &cert, &key), dir.path(), at(2027, 2, 1))
            .expect_err("expired");
        assert!(
            expired.contains("c.pem") && expired.contains("expired at 2027-01-01"),
            "{expired}"
        );

        let early = ServerTls::load(&files(dir.path(), &cert, &key), dir.path(), at(2025, 2, 1))
            .expect_err("not yet valid");
        assert!(early.contains("is not valid before"), "{early}");

        let missing = ServerTls::load(
            &TlsSource::Files {
                cert: dir.path().join("nowhere.pem"),
                key: dir.path().join("k.pem"),
            },
            dir.path(),
            now,
        )
        .expect_err("missing");
        assert!(
            missing.contains("cannot read tls_cert_file") && missing.contains("nowhere.pem"),
            "{missing}"
        );

        let garbage = ServerTls::load(
            &files(dir.path(), "not a certificate", &key),
            dir.path(),
            now,
        )
        .expect_err("garbage");
        assert!(garbage.contains("holds no certificate"), "{garbage}");
        let no_key = ServerTls::load(&files(dir.path(), &cert, "nothing"), dir.path(), now)
            .expect_err("no key");
        assert!(
            no_key.contains("tls_key_file") && no_key.contains("no private key"),
            "{no_key}"
        );
    }

    #[test]
    fn a_changed_pair_is_served_from_the_next_handshake_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().expect("dir");
        let now = at(2026, 12, 6);
        let (cert, key) = pair(&["localhost"], (2026, 1, 1), (2027, 1, 1));
        let tls = ServerTls::load(&files(dir.path(), &cert, &key), dir.path(), now).expect("loads");
        let first = tls.current_fingerprint();
        // Half a change (a new certificate, the old key): refused, the old pair kept.
        let (cert2, key2) = pair(&["localhost"], (2026, 1, 1), (2027, 6, 1));
        std::fs::write(dir.path().join("c.pem"), &cert2).expect("write");
        tls.certificate.reload_if_changed(now);
        assert_eq!(tls.current_fingerprint(), first);
        std::fs::write(dir.path().join("k.pem"), &key2).expect("write");
        tls.certificate.reload_if_changed(now);
        assert_ne!(tls.current_fingerprint(), first);
    }

    #[test]
    fn a_self_signed_certificate_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let now = SystemTime::now();
        let source = TlsSource::SelfSigned { names };
        let first = ServerTls::load(&source, dir.path(), now).expect("made");
        let again = ServerTls::load(&source, dir.path(), now).expect("kept");
        assert_eq!(first.fingerprint, again.fingerprint);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("tls/self-signed.key"))
                .expect("key file")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Near its end it is made again.
        let later = now + Duration::from_secs(390 * 86_400);
        let renewed = ServerTls::load(&source, dir.path(), later).expect("renewed");
        assert_ne!(renewed.fingerprint, first.fingerprint);
    }
}

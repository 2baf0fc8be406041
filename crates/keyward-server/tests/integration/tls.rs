//! Keyward's own HTTPS listener, through the real binary and `curl`: certificate files
//! (trusted with `--cacert`, HSTS on every answer, reloaded when the files change, without
//! a restart), a plain-HTTP port that only redirects, a self-signed start whose printed
//! fingerprint is the served certificate's, and files that refuse the start, named.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::{Process, command};

/// A certificate authority and a way to sign server certificates with it.
struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Authority {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Keyward test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for loopback, valid between the two years; (cert PEM, key PEM).
    fn server(&self, from: i32, to: i32) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// `curl` with the given arguments: (exit code, stdout).
fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["--silent", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The SHA-256 fingerprint of the certificate `addr` serves, as `openssl x509` prints it.
fn served_fingerprint(addr: &str) -> String {
    let script = format!(
        "openssl s_client -connect {addr} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// What `keyward serve` printed after `marker` on some line (lines after the one `Process`
/// waits for may take a moment to arrive).
fn printed(server: &Process, marker: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(found) = server.output().lines().find_map(|l| {
            l.split(marker)
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        }) {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing printed after {marker:?}: {}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn printed_fingerprint(server: &Process) -> String {
    printed(server, "SHA-256 fingerprint ")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn https_from_files_is_trusted_with_its_ca_redirected_to_and_reloaded_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new();
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let (cert, key) = ca.server(2026, 2036);
    let cert_file = write(dir.path(), "server.crt", &cert);
    let key_file = write(dir.path(), "server.key", &key);
    let server = Process::serve(
        dir.path(),
        &[
            ("KEYWARD_TLS_CERT_FILE", &cert_file),
            ("KEYWARD_TLS_KEY_FILE", &key_file),
            ("KEYWARD_TLS_REDIRECT_LISTEN", "127.0.0.1:0"),
        ],
        "tls",
    );
    let url = format!("https://{}/healthz", server.base);
    let (code, answer) = curl(&["--cacert", &ca_file, "--include", &url]);
    assert_eq!(code, 0, "curl --cacert: {answer}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{answer}"
    );
    // Without the CA, curl refuses the certificate (exit 60); plain HTTP gets no answer.
    assert_eq!(curl(&[&url]).0, 60);
    assert_ne!(curl(&[&format!("http://{}/healthz", server.base)]).0, 0);
    assert_eq!(
        served_fingerprint(&server.base),
        printed_fingerprint(&server)
    );

    // The plain port answers every path with a redirect to the same path over HTTPS.
    let redirect = printed(&server, "plain HTTP on ");
    let (_, moved) = curl(&[
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code} %{redirect_url}",
        &format!("http://{redirect}/keys?service=openai"),
    ]);
    let port = server.base.rsplit(':').next().unwrap();
    assert_eq!(
        moved,
        format!("308 https://127.0.0.1:{port}/keys?service=openai")
    );

    // New files (key first, then certificate): served from a later handshake, no restart.
    let before = served_fingerprint(&server.base);
    let (cert2, key2) = ca.server(2026, 2037);
    write(dir.path(), "server.key", &key2);
    write(dir.path(), "server.crt", &cert2);
    let started = Instant::now();
    while served_fingerprint(&server.base) == before {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, _) = curl(&["--cacert", &ca_file, &url]);
    assert_eq!(code, 0);
    eprintln!(
        "certificate reloaded {} ms after the files changed",
        started.elapsed().as_millis()
    );
    server.stop();
}

#[tokio::test]
async fn a_self_signed_start_prints_the_fingerprint_of_the_certificate_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::serve(dir.path(), &[("KEYWARD_TLS", "self-signed")], "self-signed");
    let printed = printed_fingerprint(&server);
    assert_eq!(served_fingerprint(&server.base), printed);
    let cert = dir.path().join("data/tls/self-signed.crt");
    let (code, answer) = curl(&[
        "--cacert",
        &cert.display().to_string(),
        &format!("https://{}/readyz", server.base),
    ]);
    assert_eq!(code, 0, "{answer}");
    assert!(answer.contains("ready"), "{answer}");
    server.stop();
    // The same certificate after a restart: a pinned fingerprint stays valid.
    let again = Process::serve(dir.path(), &[("KEYWARD_TLS", "self-signed")], "again");
    assert_eq!(printed_fingerprint(&again), printed);
    again.stop();
}

#[test]
fn certificate_files_that_cannot_serve_refuse_the_start_and_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new();
    let (cert, key) = ca.server(2026, 2036);
    let (_, other_key) = ca.server(2026, 2036);
    let (expired, expired_key) = ca.server(2020, 2021);
    let cert_file = write(dir.path(), "server.crt", &cert);
    let key_file = write(dir.path(), "server.key", &key);
    let other_key_file = write(dir.path(), "other.key", &other_key);
    let expired_file = write(dir.path(), "expired.crt", &expired);
    let expired_key_file = write(dir.path(), "expired.key", &expired_key);
    let missing = dir.path().join("missing.crt").display().to_string();
    for (cert, key, named, says) in [
        (
            &cert_file,
            &other_key_file,
            "other.key",
            "is not the key of the certificate",
        ),
        (
            &expired_file,
            &expired_key_file,
            "expired.crt",
            "expired at 2021-01-01",
        ),
        (
            &missing,
            &key_file,
            "missing.crt",
            "cannot read tls_cert_file",
        ),
    ] {
        let out = command(
            dir.path(),
            &[
                ("KEYWARD_TLS_CERT_FILE", cert),
                ("KEYWARD_TLS_KEY_FILE", key),
            ],
        )
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{named}: started anyway");
        assert!(
            stderr.contains(named) && stderr.contains(says),
            "{named}: {stderr}"
        );
        assert!(
            !dir.path().join("data/keyward.db").exists(),
            "a refused start touches no vault"
        );
    }
}

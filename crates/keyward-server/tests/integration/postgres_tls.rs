//! PostgreSQL over TLS against a server of the test's own, with a certificate the test
//! generated: `verify-full` with that CA connects and stores, the same URL without the CA
//! or under a name the certificate does not carry is refused, and once the server stops
//! offering TLS a URL that asks for it is refused — never downgraded to plain text.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A throwaway PostgreSQL cluster (initdb) on a free port, run as the `postgres` user.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn bin(name: &str) -> String {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .expect("PostgreSQL server binaries under /usr/lib/postgresql");
        format!("/usr/lib/postgresql/{version}/bin/{name}")
    }

    fn as_postgres(args: &[&str]) -> std::process::Output {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .output()
            .expect("runuser")
    }

    fn start(cert: &str, key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let chown = |path: &Path| {
            Command::new("chown")
                .args(["-R", "postgres:postgres", &path.display().to_string()])
                .status()
                .unwrap();
        };
        chown(dir.path());
        let out = Self::as_postgres(&[
            &Self::bin("initdb"),
            "-D",
            &data.display().to_string(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // In the configuration file (not on the command line, which a reload cannot undo).
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\n");
        std::fs::write(&conf, text).unwrap();
        std::fs::write(data.join("server.crt"), cert).unwrap();
        std::fs::write(data.join("server.key"), key).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        chown(&data);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            dir.path().display()
        );
        let out = Self::as_postgres(&[
            &Self::bin("pg_ctl"),
            "-D",
            &data.display().to_string(),
            "-o",
            &options,
            "-l",
            &dir.path().join("log").display().to_string(),
            "-w",
            "start",
        ]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
        Self { dir, port }
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }

    /// Turns TLS off (a reload, as an operator's mistake would).
    fn stop_offering_tls(&self) {
        let psql = Command::new(Self::bin("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-c",
                "ALTER SYSTEM SET ssl = off",
                "-c",
                "SELECT pg_reload_conf()",
            ])
            .env("PGSSLMODE", "disable")
            .output()
            .unwrap();
        assert!(
            psql.status.success(),
            "{}",
            String::from_utf8_lossy(&psql.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Self::as_postgres(&[
            &Self::bin("pg_ctl"),
            "-D",
            &self.dir.path().join("data").display().to_string(),
            "-m",
            "immediate",
            "stop",
        ]);
    }
}

#[tokio::test]
async fn postgres_with_a_generated_certificate_is_verified_and_never_downgraded() {
    if keyward_store::testing::TestDatabase::postgres()
        .await
        .is_none()
    {
        return;
    }
    // A CA and a server certificate for `localhost`, made here.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Keyward test database CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let cluster = Cluster::start(&server.pem(), &server_key.serialize_pem());
    let ca_file = cluster.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let ca = ca_file.display().to_string();

    let verified = keyward_store::open(&cluster.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .expect("verify-full with the CA connects");
    verified.migrate().await.expect("a vault's schema over TLS");
    verified.ping().await.unwrap();
    verified.close().await;

    for (query, host, why) in [
        (
            "sslmode=verify-full".to_owned(),
            "localhost",
            "a CA the client does not trust",
        ),
        (
            format!("sslmode=verify-full&sslrootcert={ca}"),
            "127.0.0.1",
            "a name the certificate does not carry",
        ),
    ] {
        let error = keyward_store::open(&cluster.url(host, &query))
            .await
            .expect_err(why);
        assert_eq!(error.kind, keyward_core::ErrorKind::Unavailable, "{why}");
    }

    // The server stops offering TLS: a URL asking for it is refused, not downgraded.
    cluster.stop_offering_tls();
    let started = Instant::now();
    loop {
        match keyward_store::open(&cluster.url("127.0.0.1", "sslmode=require")).await {
            Err(error) => {
                assert_eq!(error.kind, keyward_core::ErrorKind::Unavailable);
                break;
            }
            Ok(store) => {
                // The reload takes a moment to reach new connections.
                store.close().await;
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "still accepted"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let plain = keyward_store::open(&cluster.url("127.0.0.1", "sslmode=disable"))
        .await
        .expect("the server itself is up");
    plain.close().await;
}

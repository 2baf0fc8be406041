//! PostgreSQL over TLS: `sslmode` in the URL is honoured (sqlx with rustls on aws-lc-rs).
//! Against the local server's generated certificate (Debian's snakeoil, `CN=localhost`):
//! `require` encrypts, `verify-full` with that certificate as the CA connects, and
//! `verify-full` without it, or for a name the certificate does not carry, is refused —
//! never downgraded to an unverified or plain connection.

use super::*;

const SERVER_CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// Whether every connection to `name` is encrypted (and there is at least one).
async fn encrypted(name: &str) -> bool {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&keyward_store::testing::postgres_admin_url())
        .await
        .expect("admin");
    let (all, count): (Option<bool>, i64) = sqlx::query_as(
        "SELECT bool_and(s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = $1",
    )
    .bind(name)
    .fetch_one(&mut admin)
    .await
    .expect("pg_stat_ssl");
    count > 0 && all == Some(true)
}

#[tokio::test]
async fn postgres_over_tls_is_verified_when_asked_and_never_downgraded() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    if !std::path::Path::new(SERVER_CERT).exists() {
        keyward_store::testing::service_missing(
            "PostgreSQL with TLS",
            &format!("{SERVER_CERT} is missing (Debian's ssl-cert package)"),
        );
        return;
    }
    let name = db.postgres_name().expect("postgres").to_owned();
    let required = keyward_store::open(&format!("{}?sslmode=require", db.url()))
        .await
        .expect("sslmode=require connects");
    required.migrate().await.expect("migrate over TLS");
    assert!(encrypted(&name).await, "sslmode=require encrypts");
    required.close().await;

    let by_name = db.url().replacen("@127.0.0.1", "@localhost", 1);
    let verified = keyward_store::open(&format!(
        "{by_name}?sslmode=verify-full&sslrootcert={SERVER_CERT}"
    ))
    .await
    .expect("verify-full with the server's CA connects");
    verified.ping().await.expect("ping");
    assert!(encrypted(&name).await);
    verified.close().await;

    // An unknown CA, or a certificate for another name: refused, not downgraded.
    for (url, why) in [
        (
            format!("{by_name}?sslmode=verify-full"),
            "a CA the client does not trust",
        ),
        (
            format!("{}?sslmode=verify-full&sslrootcert={SERVER_CERT}", db.url()),
            "a certificate for localhost reached as 127.0.0.1",
        ),
    ] {
        let refused = keyward_store::open(&url).await;
        let error = refused.expect_err(why);
        assert_eq!(error.kind, ErrorKind::Unavailable, "{why}: {error:?}");
        assert!(
            !error.message.contains("postgres@"),
            "no credentials in errors"
        );
    }
}

//! The server on a PostgreSQL that takes connections over TLS only: with `sslmode=verify-full`
//! and the cluster's CA in `sslrootcert` it stores over TLS (PostgreSQL's `pg_stat_ssl` says
//! so) and serves what it stored after a restart; a URL without TLS, or with TLS but no way to
//! trust the cluster's certificate, is refused at start, saying why.

mod support;

use std::path::Path;

use concord_server::{Server, ServerConfig, ServerError};
use support::postgres::TestPostgres;
use support::{SECRET, body, connect, create, open, start};

/// A CA: its key and its certificate.
type Authority = (rcgen::KeyPair, rcgen::Certificate);

/// A new CA.
fn new_ca() -> Authority {
    let key = rcgen::KeyPair::generate().expect("a CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "Concord test CA");
    let certificate = params.self_signed(&key).expect("the CA's certificate");
    (key, certificate)
}

/// A certificate for 127.0.0.1 and localhost signed by `ca`, and its key (PEM).
fn server_certificate((ca_key, ca): &Authority) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("a server key");
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let params = rcgen::CertificateParams::new(names).expect("server params");
    let certificate = params.signed_by(&key, ca, ca_key).expect("the server's certificate");
    (certificate.pem(), key.serialize_pem())
}

/// A client certificate for the user `concord` signed by `ca`, and its key (PEM).
fn client_certificate((ca_key, ca): &Authority) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("a client key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("client params");
    params.distinguished_name.push(rcgen::DnType::CommonName, "concord");
    let certificate = params.signed_by(&key, ca, ca_key).expect("the client's certificate");
    (certificate.pem(), key.serialize_pem())
}

/// Makes `cluster` take TLS only, with a server certificate from a new CA and client
/// certificates from another; returns both CAs.
fn require_tls(cluster: &TestPostgres) -> (Authority, Authority) {
    let (authority, clients) = (new_ca(), new_ca());
    let (certificate, key) = server_certificate(&authority);
    cluster.require_tls(certificate, key, clients.1.pem());
    (authority, clients)
}

/// Why a server on `url` does not start.
async fn refused(dir: &Path, url: &str) -> String {
    let mut config = ServerConfig::development(dir, SECRET);
    config.store = Some(url.into());
    match Server::bind(config).await {
        Err(ServerError::Store(error)) => error.to_string(),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a server started on {url}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_reached_over_verified_tls_and_nothing_less() -> anyhow::Result<()> {
    let Some(cluster) = support::postgres::private() else { return Ok(()) };
    let temp = tempfile::tempdir()?;
    let plain = cluster.url("tls");
    let (authority, _) = require_tls(&cluster);
    let ca = temp.path().join("ca.pem");
    std::fs::write(&ca, authority.1.pem())?;
    let data = temp.path().join("data");

    let why = refused(&data, &plain).await;
    assert!(why.contains("no encryption"), "without TLS: {why}");
    // The test CA is not among Mozilla's roots: there is no unverified TLS.
    let why = refused(&data, &format!("{plain}?sslmode=require")).await;
    assert!(why.contains("certificate"), "with TLS but not the CA: {why}");
    let other_ca = temp.path().join("other-ca.pem");
    std::fs::write(&other_ca, new_ca().1.pem())?;
    let url = format!("{plain}?sslmode=verify-full&sslrootcert={}", other_ca.display());
    let why = refused(&data, &url).await;
    assert!(why.contains("certificate"), "with another CA: {why}");

    let url = format!("{plain}?sslmode=verify-full&sslrootcert={}", ca.display());
    let server = start(&data, |config| config.store = Some(url.as_str().into())).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "stored over TLS").await?;
    let over_tls = cluster.sql(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE ssl AND application_name = 'concord'",
    );
    let plain_sessions = cluster.sql(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE NOT ssl AND application_name = 'concord'",
    );
    assert!(over_tls.parse::<u32>()? >= 1, "{over_tls} sessions over TLS");
    assert_eq!(plain_sessions, "0");
    drop(alice);
    server.stop().await?;

    let server = start(&data, |config| config.store = Some(url.as_str().into())).await?;
    let mut bob = connect(&server, "bob").await?;
    assert_eq!(body(&open(&mut bob, "doc").await?.data), "stored over TLS");
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_asks_for_a_client_certificate_gets_the_one_the_url_names()
-> anyhow::Result<()> {
    let Some(cluster) = support::postgres::private() else { return Ok(()) };
    let temp = tempfile::tempdir()?;
    let plain = cluster.url("certs");
    let (authority, clients) = require_tls(&cluster);
    let (client_cert, client_key) = client_certificate(&clients);
    let files = [("ca.pem", authority.1.pem()), ("me.pem", client_cert), ("me.key", client_key)];
    for (name, contents) in files {
        std::fs::write(temp.path().join(name), contents)?;
    }
    let at = |name: &str| temp.path().join(name).display().to_string();
    let verified = format!("{plain}?sslmode=verify-full&sslrootcert={}", at("ca.pem"));
    let data = temp.path().join("data");

    let why = refused(&data, &verified).await;
    assert!(why.contains("certificate"), "without a client certificate: {why}");
    let url = format!("{verified}&sslcert={}&sslkey={}", at("me.pem"), at("me.key"));
    let server = start(&data, |config| config.store = Some(url.as_str().into())).await?;
    let mut alice = connect(&server, "alice").await?;
    create(&mut alice, "doc", "stored as concord").await?;
    assert_eq!(body(&open(&mut alice, "doc").await?.data), "stored as concord");
    server.stop().await?;
    Ok(())
}

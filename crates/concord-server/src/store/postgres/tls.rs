//! TLS to PostgreSQL, as the store URL asks for it with libpq's `sslmode` and `sslrootcert`.
//!
//! `disable`, `allow` and `prefer` (and no `sslmode`) connect without TLS; `require`,
//! `verify-ca` and `verify-full` connect only over TLS and always verify the server's
//! certificate chain and name: against the CA certificates of `sslrootcert` (a PEM file) when
//! it is given, else against Mozilla's roots. libpq's `require` trusts any certificate; here
//! there is no unverified TLS, so a server with a private CA needs `sslrootcert`. `sslcert` and
//! `sslkey` (PEM files) give a client certificate, for `cert` authentication.

use std::path::Path;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// What tokio-postgres reads of `url`, and the TLS it asks for (`None`: none).
pub(super) fn connection(url: &str) -> Result<(String, Option<MakeRustlsConnect>), StoreError> {
    let (location, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut tls, mut kept) = (false, Vec::new());
    let (mut root_cert, mut client_cert, mut client_key) = (None, None, None);
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                tls = match decoded(key, value)?.as_str() {
                    "disable" | "allow" | "prefer" => false,
                    "require" | "verify-ca" | "verify-full" => true,
                    other => {
                        return Err(invalid(format!(
                            "sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
                        )));
                    }
                };
            }
            "sslrootcert" => root_cert = Some(decoded(key, value)?),
            "sslcert" => client_cert = Some(decoded(key, value)?),
            "sslkey" => client_key = Some(decoded(key, value)?),
            _ => kept.push(pair),
        }
    }
    kept.push(if tls { "sslmode=require" } else { "sslmode=disable" });
    let url = format!("{location}?{}", kept.join("&"));
    if !tls {
        let given =
            [("sslrootcert", &root_cert), ("sslcert", &client_cert), ("sslkey", &client_key)];
        return match given.iter().find(|(_, value)| value.is_some()) {
            Some((name, _)) => Err(invalid(format!(
                "{name} is given, but sslmode does not ask for TLS (use sslmode=verify-full)"
            ))),
            None => Ok((url, None)),
        };
    }
    let roots = match root_cert {
        Some(path) => roots_from(Path::new(&path))?,
        None => rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
    };
    // ring, deprecated by rustls for lacking post-quantum key exchange, builds with cc alone
    // (aws-lc-rs needs more of a C toolchain), and PostgreSQL's OpenSSL negotiates classical
    // key exchange with any client that offers it.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_error = |e: rustls::Error| StoreError::Backend(format!("TLS to PostgreSQL: {e}"));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_root_certificates(roots);
    let config = match (client_cert, client_key) {
        (None, None) => config.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates(Path::new(&cert), "sslcert")?;
            let key = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| unreadable("sslkey", Path::new(&key), e.to_string()))?;
            config.with_client_auth_cert(chain, key).map_err(tls_error)?
        }
        _ => return Err(invalid("sslcert and sslkey go together".into())),
    };
    Ok((url, Some(MakeRustlsConnect::new(config))))
}

fn decoded(key: &str, value: &str) -> Result<String, StoreError> {
    match percent_decode_str(value).decode_utf8() {
        Ok(value) => Ok(value.into_owned()),
        Err(_) => Err(invalid(format!("{key} is not UTF-8"))),
    }
}

fn invalid(why: String) -> StoreError {
    StoreError::Backend(format!("invalid PostgreSQL address: {why}"))
}

fn unreadable(name: &str, path: &Path, why: String) -> StoreError {
    StoreError::Backend(format!("cannot read {name} {}: {why}", path.display()))
}

/// The certificates in the PEM file at `path`, which the URL's `name` gave; at least one.
fn certificates(path: &Path, name: &str) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let unreadable = |why: String| unreadable(name, path, why);
    let certificates: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    if certificates.is_empty() {
        return Err(unreadable("it holds no certificate".into()));
    }
    Ok(certificates)
}

/// The CA certificates in the PEM file at `path`.
fn roots_from(path: &Path) -> Result<rustls::RootCertStore, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(path, "sslrootcert")? {
        roots.add(certificate).map_err(|e| unreadable("sslrootcert", path, e.to_string()))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_of(url: &str) -> Result<(String, bool), String> {
        connection(url).map(|(url, tls)| (url, tls.is_some())).map_err(|e| e.to_string())
    }

    #[test]
    fn sslmode_chooses_tls_and_the_rest_of_the_url_is_kept() {
        let plain = "postgres://u@h/db?sslmode=disable";
        assert_eq!(url_of("postgres://u@h/db"), Ok((plain.into(), false)));
        assert_eq!(url_of("postgres://u@h/db?sslmode=prefer"), Ok((plain.into(), false)));
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("postgres://u@h/db?application_name=x&sslmode={mode}");
            let tls = "postgres://u@h/db?application_name=x&sslmode=require".to_owned();
            assert_eq!(url_of(&url), Ok((tls, true)), "{mode}");
        }
    }

    #[test]
    fn a_bad_sslmode_or_sslrootcert_is_refused_with_why() {
        let refused = url_of("postgres://u@h/db?sslmode=verify").unwrap_err();
        assert!(refused.contains("sslmode \"verify\""), "{refused}");
        for param in ["sslrootcert", "sslcert", "sslkey"] {
            let refused = url_of(&format!("postgres://u@h/db?{param}=/a.pem")).unwrap_err();
            assert!(refused.contains(&format!("{param} is given")), "{refused}");
        }
        let refused = url_of("postgres://u@h/db?sslmode=require&sslcert=/c.pem").unwrap_err();
        assert!(refused.contains("go together"), "{refused}");
        let missing = "postgres://u@h/db?sslmode=verify-full&sslrootcert=/no%20such/ca.pem";
        let refused = url_of(missing).unwrap_err();
        assert!(refused.contains("cannot read sslrootcert /no such/ca.pem"), "{refused}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        let url =
            format!("postgres://u@h/db?sslmode=require&sslrootcert={}", empty.path().display());
        let refused = url_of(&url).unwrap_err();
        assert!(refused.contains("no certificate"), "{refused}");
    }
}

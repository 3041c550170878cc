//! TLS with libpq's `sslmode` semantics over one openssl `SslConnector` per pool.

use super::conninfo::{ConnInfo, SslMode};
use super::error::Error;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use postgres_openssl::MakeTlsConnector;
use std::path::PathBuf;

/// How a pool's TCP connections negotiate TLS.
#[derive(Clone)]
pub(crate) struct TlsPolicy {
    /// The sslmode tokio-postgres enforces: it only knows disable, prefer and require;
    /// verify-ca and verify-full are `Require` plus verification in the connector.
    pub(crate) mode: tokio_postgres::config::SslMode,
    /// `None` when TLS is disabled.
    pub(crate) connector: Option<MakeTlsConnector>,
}

/// What the certificate check covers, decided once per pool as libpq does per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verification {
    None,
    Chain,
    ChainAndHost,
}

impl TlsPolicy {
    /// Builds the policy for `info` (defaults already filled). `prefer` and `require` verify
    /// the chain only if a root certificate is available (libpq keeps this for backward
    /// compatibility); `verify-*` without one is a configuration error.
    pub(crate) fn for_conninfo(info: &ConnInfo) -> Result<TlsPolicy, Error> {
        use tokio_postgres::config::SslMode as Wire;
        let sslmode = info.sslmode.unwrap_or(SslMode::Prefer);
        if info.is_unix_socket() || sslmode == SslMode::Disable {
            return Ok(TlsPolicy {
                mode: Wire::Disable,
                connector: None,
            });
        }
        let root_cert = root_cert_path(info);
        let (mode, verification) = match sslmode {
            SslMode::Disable => unreachable!("handled above"),
            SslMode::Prefer | SslMode::Require => {
                let wire = if sslmode == SslMode::Prefer {
                    Wire::Prefer
                } else {
                    Wire::Require
                };
                let check = if root_cert.as_ref().is_some_and(|p| p.is_file()) {
                    Verification::Chain
                } else {
                    Verification::None
                };
                (wire, check)
            }
            SslMode::VerifyCa => (Wire::Require, Verification::Chain),
            SslMode::VerifyFull => (Wire::Require, Verification::ChainAndHost),
        };
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls_error)?;
        builder
            .set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(tls_error)?;
        if verification != Verification::None {
            let path = root_cert.filter(|p| p.is_file()).ok_or_else(|| {
                Error::Config(format!(
                    "sslmode={} needs a root certificate: set sslrootcert (or PGSSLROOTCERT) to \
                     the PEM of the CA that signed the server's certificate, or create \
                     ~/.postgresql/root.crt",
                    sslmode.as_str()
                ))
            })?;
            builder.set_cert_store(trust_only(&path)?);
        }
        let mut connector = MakeTlsConnector::new(builder.build());
        connector.set_callback(move |config, _domain| {
            config.set_verify_hostname(verification == Verification::ChainAndHost);
            if verification == Verification::None {
                config.set_verify(SslVerifyMode::NONE);
            }
            Ok(())
        });
        Ok(TlsPolicy {
            mode,
            connector: Some(connector),
        })
    }
}

/// `sslrootcert`, else libpq's default `~/.postgresql/root.crt`.
fn root_cert_path(info: &ConnInfo) -> Option<PathBuf> {
    if let Some(path) = &info.sslrootcert {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".postgresql/root.crt"))
}

/// A store holding only the certificates of `path`, so the system's CAs are not trusted
/// for the database (libpq trusts only sslrootcert).
fn trust_only(path: &std::path::Path) -> Result<openssl::x509::store::X509Store, Error> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read sslrootcert {}: {e}", path.display())))?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| {
        Error::Config(format!(
            "sslrootcert {} is not a PEM certificate file: {e}",
            path.display()
        ))
    })?;
    let mut store = X509StoreBuilder::new().map_err(tls_error)?;
    for cert in certs {
        store.add_cert(cert).map_err(tls_error)?;
    }
    Ok(store.build())
}

fn tls_error(error: openssl::error::ErrorStack) -> Error {
    Error::Config(format!("cannot set up TLS: {error}"))
}

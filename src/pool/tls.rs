//! TLS with libpq's `sslmode` semantics over one openssl `SslConnector` per pool.

use super::conninfo::{ConnInfo, SslMode};
use super::error::Error;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use postgres_openssl::MakeTlsConnector;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
        // The builder loaded the system's CAs (its default verify paths), which libpq never
        // trusts for the database: drop them, and give their memory back (~850 KiB of
        // private dirty pages per worker otherwise; DESIGN §3).
        builder.set_cert_store(X509StoreBuilder::new().map_err(tls_error)?.build());
        release_freed_memory();
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
        if let Some((cert, key)) = client_certificate(info, home().as_deref())? {
            builder
                .set_certificate_chain_file(&cert)
                .map_err(|e| client_cert_error("certificate", &cert, e))?;
            builder
                .set_private_key_file(&key, SslFiletype::PEM)
                .map_err(|e| client_cert_error("private key", &key, e))?;
            builder.check_private_key().map_err(|_| {
                Error::Config(format!(
                    "sslcert {} does not match private key file {}",
                    cert.display(),
                    key.display()
                ))
            })?;
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
    Some(home()?.join(".postgresql/root.crt"))
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// The client certificate and key to offer, if any: `sslcert` and `sslkey`, else libpq's
/// defaults in `home` (`~/.postgresql/postgresql.crt` and `.key`), used only if the
/// certificate file exists. A certificate named explicitly but missing is an error (libpq
/// would silently send none, and the server's refusal would not say why). The key must exist
/// and must not be readable by group or others (libpq's rule: 0600 or less if owned by us,
/// 0640 or less if owned by root).
fn client_certificate(
    info: &ConnInfo,
    home: Option<&Path>,
) -> Result<Option<(PathBuf, PathBuf)>, Error> {
    let default_dir = home.map(|h| h.join(".postgresql"));
    let cert = match (&info.sslcert, &default_dir) {
        (Some(path), _) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(Error::Config(format!(
                    "sslcert {} not found: name the client certificate's PEM file, or remove \
                     sslcert (PGSSLCERT) to send none",
                    path.display()
                )));
            }
            path
        }
        (None, Some(dir)) if dir.join("postgresql.crt").is_file() => dir.join("postgresql.crt"),
        (None, _) => return Ok(None),
    };
    let key = match (&info.sslkey, &default_dir) {
        (Some(path), _) => PathBuf::from(path),
        (None, Some(dir)) => dir.join("postgresql.key"),
        (None, None) => {
            return Err(Error::Config(format!(
                "certificate {} present, but no private key: set sslkey",
                cert.display()
            )))
        }
    };
    let metadata = std::fs::metadata(&key).map_err(|e| {
        Error::Config(format!(
            "certificate {} present, but not private key file {}: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    if !metadata.is_file() {
        return Err(Error::Config(format!(
            "private key file {} is not a regular file",
            key.display()
        )));
    }
    let mode = metadata.mode();
    let ours = metadata.uid() == nix::unistd::geteuid().as_raw();
    if (ours && mode & 0o077 != 0) || (metadata.uid() == 0 && mode & 0o037 != 0) {
        return Err(Error::Config(format!(
            "private key file {} has group or world access (mode {:o}); it must have \
             permissions u=rw (0600) or less if owned by the current user, or u=rw,g=r (0640) \
             or less if owned by root",
            key.display(),
            mode & 0o777
        )));
    }
    Ok(Some((cert, key)))
}

fn client_cert_error(what: &str, path: &Path, error: openssl::error::ErrorStack) -> Error {
    Error::Config(format!(
        "cannot load client {what} {}: {error}",
        path.display()
    ))
}

/// A store holding only the certificates of `path`, so the system's CAs are not trusted
/// for the database (libpq trusts only sslrootcert).
fn trust_only(path: &Path) -> Result<openssl::x509::store::X509Store, Error> {
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

/// Returns the heap's free pages to the system (`malloc_trim`): the CA store just dropped
/// was its largest allocation, made once per pool.
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn tls_error(error: openssl::error::ErrorStack) -> Error {
    Error::Config(format!("cannot set up TLS: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_default_client_certificate_is_used_only_if_present_with_a_private_key() {
        let home = tempfile::tempdir().unwrap();
        let info = ConnInfo::default();
        assert!(client_certificate(&info, Some(home.path()))
            .unwrap()
            .is_none());
        let dir = home.path().join(".postgresql");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("postgresql.crt"), "cert").unwrap();
        let error = client_certificate(&info, Some(home.path())).unwrap_err();
        assert!(
            error.to_string().contains("not private key file"),
            "{error}"
        );
        let key = dir.join("postgresql.key");
        std::fs::write(&key, "key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (cert, found_key) = client_certificate(&info, Some(home.path()))
            .unwrap()
            .unwrap();
        assert_eq!((cert, found_key), (dir.join("postgresql.crt"), key.clone()));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
        let error = client_certificate(&info, Some(home.path())).unwrap_err();
        assert!(
            error.to_string().contains("group or world access"),
            "{error}"
        );
    }
}

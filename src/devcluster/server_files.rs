//! The files a private cluster's server reads: authentication rules, settings, certificates.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::certs::{certificate_authority, server_certificate};
use super::installation::Installation;

/// Included from postgresql.conf; rewritten when the cluster starts on another port.
const SETTINGS_FILE: &str = "forkpool-cluster.conf";

/// Trust on the Unix socket (the superuser of the tests and of `forkpool dev`); a password
/// over TCP, with or without TLS, on both loopback addresses.
const PG_HBA: &str = "\
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
";

/// Where [`write_certificates`] put its files.
pub struct CertificateFiles {
    /// The CA that signed the server certificate.
    pub ca_cert: PathBuf,
    /// A CA unrelated to the server: verification against it must fail.
    pub other_ca_cert: PathBuf,
    /// The server's certificate.
    pub server_cert: PathBuf,
    /// The server's private key (mode 0600, the server user's).
    pub server_key: PathBuf,
}

impl CertificateFiles {
    /// The file names [`write_certificates`] uses in `dir`, whether or not they exist yet.
    pub fn in_dir(dir: &Path) -> CertificateFiles {
        CertificateFiles {
            ca_cert: dir.join("ca.crt"),
            other_ca_cert: dir.join("other-ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }
}

/// Replaces initdb's pg_hba.conf and makes postgresql.conf include [`SETTINGS_FILE`].
pub fn configure_data_dir(data_dir: &Path) -> Result<(), String> {
    let hba = data_dir.join("pg_hba.conf");
    fs::write(&hba, PG_HBA).map_err(|e| format!("writing {}: {e}", hba.display()))?;
    let conf = data_dir.join("postgresql.conf");
    fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut file| write!(file, "\ninclude '{SETTINGS_FILE}'\n"))
        .map_err(|e| format!("extending {}: {e}", conf.display()))
}

/// Writes the settings that depend on the port and the directory.
pub fn write_settings(
    data_dir: &Path,
    port: u16,
    socket_dir: &Path,
    certs: &CertificateFiles,
) -> Result<(), String> {
    let settings = format!(
        "\
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
ssl = on
ssl_cert_file = '{cert}'
ssl_key_file = '{key}'
# parallel tests each hold pools of connections (default 100)
max_connections = 200
shared_buffers = 16MB
# durability is irrelevant for a throwaway cluster; speed is not
fsync = off
synchronous_commit = off
full_page_writes = off
log_line_prefix = '%m [%p] %q%a '
log_connections = on
log_disconnections = on
",
        socket_dir = socket_dir.display(),
        cert = certs.server_cert.display(),
        key = certs.server_key.display(),
    );
    let path = data_dir.join(SETTINGS_FILE);
    fs::write(&path, settings).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The port [`write_settings`] last wrote into `data_dir`, if it did.
pub fn configured_port(data_dir: &Path) -> Option<u16> {
    let settings = fs::read_to_string(data_dir.join(SETTINGS_FILE)).ok()?;
    settings
        .lines()
        .find_map(|line| line.strip_prefix("port = "))
        .and_then(|port| port.trim().parse().ok())
}

/// A fresh CA, a server certificate it signs for `cert_hosts`, and an unrelated CA, written
/// into `dir`. The key is the server user's with mode 0600: the server refuses anything
/// looser.
pub fn write_certificates(
    install: &Installation,
    dir: &Path,
    cert_hosts: &[String],
) -> Result<CertificateFiles, String> {
    let made = (|| {
        let ca = certificate_authority("forkpool test CA")?;
        let other_ca = certificate_authority("unrelated test CA")?;
        let server = server_certificate(&ca, cert_hosts)?;
        Ok::<_, openssl::error::ErrorStack>([
            ca.cert_pem(),
            other_ca.cert_pem(),
            server.cert_pem(),
            server.key_pem(),
        ])
    })()
    .map_err(|e| format!("making certificates: {e}"))?;
    let files = CertificateFiles::in_dir(dir);
    let paths = [
        &files.ca_cert,
        &files.other_ca_cert,
        &files.server_cert,
        &files.server_key,
    ];
    for (path, contents) in paths.into_iter().zip(made) {
        // The key is never readable by others, not even for a moment (an old file keeps
        // its mode when rewritten, hence the chmod).
        let mode = if *path == files.server_key {
            0o600
        } else {
            0o644
        };
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .and_then(|mut file| file.write_all(&contents))
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        install.give_to_server_user(path)?;
    }
    Ok(files)
}

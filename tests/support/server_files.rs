//! The files a test cluster's server reads: authentication rules, settings, certificates.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::certs::{certificate_authority, server_certificate};
use super::installation::Installation;

/// Included from postgresql.conf; rewritten when a start is retried on another port.
const SETTINGS_FILE: &str = "forkpool-test.conf";

/// Trust on the Unix socket (the harness's superuser); a password over TCP, with or without
/// TLS, on both loopback addresses.
const PG_HBA: &str = "\
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
";

pub struct CertificateFiles {
    pub ca_cert: PathBuf,
    pub other_ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Replaces initdb's pg_hba.conf and makes postgresql.conf include [`SETTINGS_FILE`].
pub fn configure_data_dir(data_dir: &Path) {
    fs::write(data_dir.join("pg_hba.conf"), PG_HBA).expect("writing pg_hba.conf");
    let conf = data_dir.join("postgresql.conf");
    fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut file| write!(file, "\ninclude '{SETTINGS_FILE}'\n"))
        .unwrap_or_else(|e| panic!("extending {}: {e}", conf.display()));
}

/// Writes the settings that depend on the port and the directory.
pub fn write_settings(data_dir: &Path, port: u16, socket_dir: &Path, certs: &CertificateFiles) {
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
    fs::write(data_dir.join(SETTINGS_FILE), settings).expect("writing the test cluster settings");
}

/// A fresh CA, a server certificate it signs for `cert_hosts`, and an unrelated CA, written
/// into `dir`. The key is the server user's with mode 0600: the server refuses anything
/// looser.
pub fn write_certificates(
    install: &Installation,
    dir: &Path,
    cert_hosts: &[String],
) -> CertificateFiles {
    let ca = certificate_authority("forkpool test CA");
    let other_ca = certificate_authority("unrelated test CA");
    let server = server_certificate(&ca, cert_hosts);
    let files = CertificateFiles {
        ca_cert: dir.join("ca.crt"),
        other_ca_cert: dir.join("other-ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    for (path, contents) in [
        (&files.ca_cert, ca.cert_pem()),
        (&files.other_ca_cert, other_ca.cert_pem()),
        (&files.server_cert, server.cert_pem()),
        (&files.server_key, server.key_pem()),
    ] {
        fs::write(path, contents).expect("writing a test certificate");
        install.give_to_server_user(path);
    }
    fs::set_permissions(&files.server_key, fs::Permissions::from_mode(0o600))
        .expect("restricting the server key to its owner");
    files
}

//! The files a test cluster's server reads (`forkpool::devcluster::server_files`), whose
//! failures fail the test.

use std::path::Path;

use forkpool::devcluster::server_files as files;
pub use forkpool::devcluster::server_files::CertificateFiles;

use super::installation::Installation;

/// Replaces initdb's pg_hba.conf and makes postgresql.conf include the settings file.
pub fn configure_data_dir(data_dir: &Path) {
    files::configure_data_dir(data_dir).unwrap_or_else(|m| panic!("{m}"));
}

/// Writes the settings that depend on the port and the directory.
pub fn write_settings(data_dir: &Path, port: u16, socket_dir: &Path, certs: &CertificateFiles) {
    files::write_settings(data_dir, port, socket_dir, certs).unwrap_or_else(|m| panic!("{m}"));
}

/// A fresh CA, a server certificate it signs for `cert_hosts`, and an unrelated CA, written
/// into `dir`.
pub fn write_certificates(
    install: &Installation,
    dir: &Path,
    cert_hosts: &[String],
) -> CertificateFiles {
    files::write_certificates(install, dir, cert_hosts).unwrap_or_else(|m| panic!("{m}"))
}

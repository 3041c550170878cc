//! Certificate authentication on a test cluster: a role that may log in over TCP only with a
//! client certificate signed by a CA made for the test.

use std::fs;
use std::path::PathBuf;

use super::certs::{certificate_authority, client_certificate, CertifiedKey};
use super::Cluster;

/// The CA the server trusts for client certificates, after [`Cluster::require_client_cert`].
pub struct ClientCa {
    pub ca: CertifiedKey,
}

impl ClientCa {
    /// A certificate for `role` and its key, written into `dir` as `NAME.crt` and
    /// `NAME.key` (the key with mode 0600, as libpq requires).
    pub fn issue(&self, role: &str, dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let client = client_certificate(&self.ca, role);
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        fs::write(&cert, client.cert_pem()).expect("writing a client certificate");
        fs::write(&key, client.key_pem()).expect("writing a client key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
            .expect("restricting the client key to its owner");
        (cert, key)
    }
}

impl Cluster {
    /// Creates login role `role` (no password) and makes TCP logins of `role` need TLS and
    /// a client certificate whose CN is `role`, signed by a fresh CA (returned). Other roles
    /// keep their rules. Waits until the server has reloaded. Use a private cluster.
    pub fn require_client_cert(&self, role: &str) -> ClientCa {
        let ca = certificate_authority("forkpool test client CA");
        let ca_file = self.socket_dir().join("client-ca.crt");
        fs::write(&ca_file, ca.cert_pem()).expect("writing the client CA");
        let hba = self.data_dir().join("pg_hba.conf");
        let rules = fs::read_to_string(&hba).expect("reading pg_hba.conf");
        fs::write(
            &hba,
            format!("hostssl all {role} 127.0.0.1/32 cert\nhost all {role} 127.0.0.1/32 reject\n{rules}"),
        )
        .expect("writing pg_hba.conf");
        self.execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT ALL ON DATABASE app TO {role}"
        ));
        // Reloads the server (pg_hba.conf with it) and waits until new sessions see it.
        self.set("ssl_ca_file", &ca_file.display().to_string());
        ClientCa { ca }
    }
}

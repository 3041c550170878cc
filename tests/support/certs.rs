//! Test certificates made at run time (`forkpool::devcluster::certs`), so no private key
//! ever lives in the repository and the server certificate names exactly the hosts a test
//! connects to. These wrappers fail the test on an OpenSSL error.

use openssl::pkey::{PKey, Private};
use openssl::x509::{X509Builder, X509Name, X509NameRef};

use forkpool::devcluster::certs;
pub use forkpool::devcluster::certs::CertifiedKey;

/// A self-signed certificate authority named `common_name`.
pub fn certificate_authority(common_name: &str) -> CertifiedKey {
    certs::certificate_authority(common_name).expect("making a test CA")
}

/// A server certificate signed by `ca`, valid for every name in `hosts`.
pub fn server_certificate(ca: &CertifiedKey, hosts: &[String]) -> CertifiedKey {
    certs::server_certificate(ca, hosts).expect("making a test server certificate")
}

/// A client certificate signed by `ca` whose common name is `common_name`: the role a
/// server's `cert` authentication maps it to.
pub fn client_certificate(ca: &CertifiedKey, common_name: &str) -> CertifiedKey {
    certs::client_certificate(ca, common_name).expect("making a test client certificate")
}

fn new_key() -> PKey<Private> {
    certs::new_key().expect("making a test key")
}

fn subject(common_name: &str) -> X509Name {
    certs::subject(common_name).expect("making a certificate subject")
}

/// Version 3, a random serial, valid from an hour ago for 30 days.
fn base_builder(subject: &X509NameRef, issuer: &X509NameRef, key: &PKey<Private>) -> X509Builder {
    certs::base_builder(subject, issuer, key).expect("starting a test certificate")
}

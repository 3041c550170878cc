//! Test certificates made at run time, so no private key ever lives in the repository and
//! the server certificate names exactly the hosts a test connects to.
//!
//! P-256 keys: generating one takes microseconds, where 2048-bit RSA takes tens of
//! milliseconds per key and every cluster needs three.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509NameRef, X509};

/// A certificate and its private key, both PEM-encoded.
pub struct CertifiedKey {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl CertifiedKey {
    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().expect("encoding a certificate as PEM")
    }

    pub fn key_pem(&self) -> Vec<u8> {
        self.key
            .private_key_to_pem_pkcs8()
            .expect("encoding a private key as PEM")
    }
}

/// A self-signed certificate authority named `common_name`.
pub fn certificate_authority(common_name: &str) -> CertifiedKey {
    let key = new_key();
    let name = subject(common_name);
    let mut builder = base_builder(&name, &name, &key);
    builder
        .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    builder
        .append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
    let key_id = SubjectKeyIdentifier::new()
        .build(&builder.x509v3_context(None, None))
        .unwrap();
    builder.append_extension(key_id).unwrap();
    builder.sign(&key, MessageDigest::sha256()).unwrap();
    CertifiedKey {
        cert: builder.build(),
        key,
    }
}

/// A server certificate signed by `ca`, valid for every name in `hosts` (IP addresses become
/// IP subject alternative names, the rest DNS names: clients verify against the SAN, not the
/// common name).
pub fn server_certificate(ca: &CertifiedKey, hosts: &[String]) -> CertifiedKey {
    assert!(
        !hosts.is_empty(),
        "a server certificate needs at least one host name"
    );
    let key = new_key();
    let name = subject(&hosts[0]);
    let mut builder = base_builder(&name, ca.cert.subject_name(), &key);
    builder
        .append_extension(BasicConstraints::new().build().unwrap())
        .unwrap();
    builder
        .append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_agreement()
                .build()
                .unwrap(),
        )
        .unwrap();
    builder
        .append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
        .unwrap();
    let mut alt_names = SubjectAlternativeName::new();
    for host in hosts {
        match host.parse::<IpAddr>() {
            Ok(_) => alt_names.ip(host),
            Err(_) => alt_names.dns(host),
        };
    }
    let context = builder.x509v3_context(Some(&ca.cert), None);
    let alt_names = alt_names.build(&context).unwrap();
    let authority = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&context)
        .unwrap();
    builder.append_extension(alt_names).unwrap();
    builder.append_extension(authority).unwrap();
    builder.sign(&ca.key, MessageDigest::sha256()).unwrap();
    CertifiedKey {
        cert: builder.build(),
        key,
    }
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn subject(common_name: &str) -> X509Name {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "forkpool tests")
        .unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)
        .unwrap();
    name.build()
}

/// Version 3, a random serial (two certificates with the same issuer and serial confuse
/// OpenSSL), valid from an hour ago (tolerates clock skew between processes) for 30 days.
fn base_builder(subject: &X509NameRef, issuer: &X509NameRef, key: &PKey<Private>) -> X509Builder {
    let mut builder = X509Builder::new().unwrap();
    builder.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(127, MsbOption::MAYBE_ZERO, false).unwrap();
    builder
        .set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(subject).unwrap();
    builder.set_issuer_name(issuer).unwrap();
    builder.set_pubkey(key).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64;
    builder
        .set_not_before(&Asn1Time::from_unix(now - 3600).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    builder
}

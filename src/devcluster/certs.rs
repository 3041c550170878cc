//! Certificates for a private cluster, made when it is created, so no private key ever lives
//! in the repository and the server certificate names exactly the hosts clients connect to.
//!
//! P-256 keys: generating one takes microseconds, where 2048-bit RSA takes tens of
//! milliseconds per key and every cluster needs three.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Name, X509NameBuilder, X509NameRef, X509};

/// A certificate and its private key.
pub struct CertifiedKey {
    /// The certificate.
    pub cert: X509,
    /// Its private key.
    pub key: PKey<Private>,
}

impl CertifiedKey {
    /// The certificate, PEM-encoded. (Encoding what OpenSSL built fails only without
    /// memory, so it panics rather than burden every caller.)
    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().expect("encoding a certificate as PEM")
    }

    /// The private key, PEM-encoded (PKCS #8).
    pub fn key_pem(&self) -> Vec<u8> {
        self.key
            .private_key_to_pem_pkcs8()
            .expect("encoding a private key as PEM")
    }
}

/// A self-signed certificate authority named `common_name`.
pub fn certificate_authority(common_name: &str) -> Result<CertifiedKey, ErrorStack> {
    let key = new_key()?;
    let name = subject(common_name)?;
    let mut builder = base_builder(&name, &name, &key)?;
    builder.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    builder.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let key_id = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
    builder.append_extension(key_id)?;
    builder.sign(&key, MessageDigest::sha256())?;
    Ok(CertifiedKey {
        cert: builder.build(),
        key,
    })
}

/// A server certificate signed by `ca`, valid for every name in `hosts` (IP addresses become
/// IP subject alternative names, the rest DNS names: clients verify against the SAN, not the
/// common name).
pub fn server_certificate(ca: &CertifiedKey, hosts: &[String]) -> Result<CertifiedKey, ErrorStack> {
    assert!(
        !hosts.is_empty(),
        "a server certificate needs at least one host name"
    );
    let mut alt_names = SubjectAlternativeName::new();
    for host in hosts {
        match host.parse::<IpAddr>() {
            Ok(_) => alt_names.ip(host),
            Err(_) => alt_names.dns(host),
        };
    }
    leaf_certificate(
        ca,
        &hosts[0],
        ExtendedKeyUsage::new().server_auth(),
        Some(alt_names),
    )
}

/// A client certificate signed by `ca` whose common name is `common_name`: the role a
/// server's `cert` authentication maps it to.
pub fn client_certificate(
    ca: &CertifiedKey,
    common_name: &str,
) -> Result<CertifiedKey, ErrorStack> {
    leaf_certificate(ca, common_name, ExtendedKeyUsage::new().client_auth(), None)
}

/// A non-CA certificate signed by `ca` for `usage`, with `alt_names` if given.
fn leaf_certificate(
    ca: &CertifiedKey,
    common_name: &str,
    usage: &mut ExtendedKeyUsage,
    alt_names: Option<SubjectAlternativeName>,
) -> Result<CertifiedKey, ErrorStack> {
    let key = new_key()?;
    let name = subject(common_name)?;
    let mut builder = base_builder(&name, ca.cert.subject_name(), &key)?;
    builder.append_extension(BasicConstraints::new().build()?)?;
    builder.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_agreement()
            .build()?,
    )?;
    builder.append_extension(usage.build()?)?;
    let context = builder.x509v3_context(Some(&ca.cert), None);
    let alt_names = alt_names.map(|names| names.build(&context)).transpose()?;
    let authority = AuthorityKeyIdentifier::new().keyid(true).build(&context)?;
    if let Some(alt_names) = alt_names {
        builder.append_extension(alt_names)?;
    }
    builder.append_extension(authority)?;
    builder.sign(&ca.key, MessageDigest::sha256())?;
    Ok(CertifiedKey {
        cert: builder.build(),
        key,
    })
}

/// A new P-256 key.
pub fn new_key() -> Result<PKey<Private>, ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

/// The subject `O=forkpool tests, CN=common_name`.
pub fn subject(common_name: &str) -> Result<X509Name, ErrorStack> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "forkpool tests")?;
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    Ok(name.build())
}

/// Version 3, a random serial (two certificates with the same issuer and serial confuse
/// OpenSSL), valid from an hour ago (tolerates clock skew between processes) for 30 days.
pub fn base_builder(
    subject: &X509NameRef,
    issuer: &X509NameRef,
    key: &PKey<Private>,
) -> Result<X509Builder, ErrorStack> {
    let mut builder = X509Builder::new()?;
    builder.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(subject)?;
    builder.set_issuer_name(issuer)?;
    builder.set_pubkey(key)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64;
    let not_before = Asn1Time::from_unix(now - 3600)?;
    let not_after = Asn1Time::days_from_now(30)?;
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    Ok(builder)
}

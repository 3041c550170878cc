//! Every sslmode against a server whose certificate names `localhost` and one whose
//! certificate names another host: the same accept/reject table as libpq.

mod support;

use forkpool::pool::{ConnInfo, Error, Pool, PoolSettings};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;
use support::{Cluster, ClusterOptions};

/// A server whose certificate is signed by its CA but names only `db.elsewhere.example`.
fn other_host_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        Cluster::start_with(ClusterOptions {
            cert_hosts: vec!["db.elsewhere.example".to_string()],
        })
    })
}

/// Connects with `sslmode` (and `sslrootcert`, if given) and reports whether the session
/// is encrypted, or the error.
fn connect(cluster: &Cluster, sslmode: &str, root_cert: Option<&Path>) -> Result<bool, String> {
    let mut url = cluster.tcp_url(sslmode);
    if let Some(root_cert) = root_cert {
        url.push_str(&format!(" sslrootcert={}", root_cert.display()));
    }
    let info = ConnInfo::parse(&url).unwrap();
    let settings = PoolSettings::new().checkout_timeout(Duration::from_millis(500));
    let pool = Pool::new("tls", info, settings).map_err(|e| e.to_string())?;
    let mut connection = pool.checkout("tls-probe").map_err(|e| e.to_string())?;
    let rows = connection
        .query_sql(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .map_err(|e| e.to_string())?;
    Ok(rows[0].get(0))
}

fn assert_encrypted(cluster: &Cluster, sslmode: &str, root_cert: Option<&Path>) {
    assert_eq!(
        connect(cluster, sslmode, root_cert),
        Ok(true),
        "sslmode={sslmode} root_cert={root_cert:?}"
    );
}

fn assert_rejected(cluster: &Cluster, sslmode: &str, root_cert: Option<&Path>, why: &str) {
    let error = connect(cluster, sslmode, root_cert).expect_err(&format!(
        "sslmode={sslmode} root_cert={root_cert:?} must fail"
    ));
    assert!(error.contains(why), "sslmode={sslmode}: {error}");
}

#[test]
fn every_sslmode_connects_to_a_server_certified_for_localhost() {
    let cluster = Cluster::shared();
    let ca = Some(cluster.ca_cert());
    assert_eq!(connect(cluster, "disable", None), Ok(false));
    assert_encrypted(cluster, "prefer", None);
    assert_encrypted(cluster, "require", None);
    assert_encrypted(cluster, "verify-ca", ca);
    assert_encrypted(cluster, "verify-full", ca);
}

#[test]
fn only_verify_full_rejects_a_certificate_for_another_host() {
    let cluster = other_host_cluster();
    let ca = Some(cluster.ca_cert());
    assert_eq!(connect(cluster, "disable", None), Ok(false));
    assert_encrypted(cluster, "prefer", None);
    assert_encrypted(cluster, "require", None);
    assert_encrypted(cluster, "require", ca);
    assert_encrypted(cluster, "verify-ca", ca);
    assert_rejected(cluster, "verify-full", ca, "certificate verify failed");
}

#[test]
fn a_certificate_from_an_unrelated_ca_is_rejected_when_verifying() {
    let cluster = Cluster::shared();
    let other_ca = Some(cluster.other_ca_cert());
    assert_rejected(cluster, "verify-ca", other_ca, "certificate verify failed");
    assert_rejected(
        cluster,
        "verify-full",
        other_ca,
        "certificate verify failed",
    );
    // libpq: with a root certificate available, require verifies the chain too.
    assert_rejected(cluster, "require", other_ca, "certificate verify failed");
}

#[test]
fn verify_modes_without_a_root_certificate_are_a_configuration_error() {
    let cluster = Cluster::shared();
    let missing = cluster.socket_dir().join("no-such-root.crt");
    for sslmode in ["verify-ca", "verify-full"] {
        let url = format!(
            "{} sslrootcert={}",
            cluster.tcp_url(sslmode),
            missing.display()
        );
        let error = Pool::new("tls", ConnInfo::parse(&url).unwrap(), PoolSettings::new())
            .expect_err("no root certificate");
        assert!(matches!(error, Error::Config(_)), "{error:?}");
        assert!(error.to_string().contains("sslrootcert"), "{error}");
    }
}

#[test]
fn unix_socket_connections_never_use_tls() {
    let cluster = Cluster::shared();
    let url = format!("{} sslmode=require", cluster.socket_url());
    let pool = Pool::new(
        "socket",
        ConnInfo::parse(&url).unwrap(),
        PoolSettings::new(),
    )
    .unwrap();
    let mut connection = pool.checkout("socket-probe").unwrap();
    let rows = connection
        .query_sql(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap();
    assert!(!rows[0].get::<_, bool>(0));
}

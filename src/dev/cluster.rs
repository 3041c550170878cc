//! The private cluster of `forkpool dev`, from `crate::devcluster` (the tests' own): made
//! once in `.forkpool-dev/data`, started at each run with new certificates on its earlier
//! port if that is still free, and given the `forkpool` role and database.

use std::time::Duration;

use crate::devcluster::installation::{Installation, SUPERUSER};
use crate::devcluster::postmaster::{Postmaster, StartFailure, Tie};
use crate::devcluster::server_files::{
    configure_data_dir, configured_port, write_certificates, write_settings,
};
use crate::devcluster::{free_port, port_is_free};

use super::place::{Place, APP_ROLE};

/// A start (recovery after a crash included) on a busy laptop fits well within this.
const START_PATIENCE: Duration = Duration::from_secs(120);
/// Ports tried when another process takes the probed one before the server binds it.
const PORT_ATTEMPTS: usize = 5;
/// The names clients connect with; the configuration uses `localhost`.
const CERT_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// The running cluster.
pub(crate) struct DevCluster {
    pub(crate) postmaster: Postmaster,
    pub(crate) port: u16,
}

/// Makes the cluster if this is the first run (or after `--fresh`), starts it and makes sure
/// the `forkpool` role (with `place`'s password) and database exist.
pub(crate) fn start(install: &Installation, place: &Place) -> Result<DevCluster, String> {
    if !place.has_cluster() {
        if place.data_dir.exists() {
            return Err(format!(
                "{} holds no complete cluster (an interrupted first run?): \
                 `forkpool dev --fresh` starts over",
                place.data_dir.display()
            ));
        }
        println!(
            "forkpool dev: creating a PostgreSQL cluster in {} (initdb from {})",
            place.data_dir.display(),
            install.bindir().display()
        );
        install.init_data_dir(&place.data_dir)?;
        configure_data_dir(&place.data_dir)?;
    }
    let hosts: Vec<String> = CERT_HOSTS.iter().map(|h| h.to_string()).collect();
    let certs = write_certificates(install, &place.root, &hosts)?;
    let mut candidates = configured_port(&place.data_dir)
        .filter(|&port| port_is_free(port))
        .into_iter()
        .chain(std::iter::from_fn(|| free_port().ok()))
        .take(PORT_ATTEMPTS);
    let (postmaster, port) = loop {
        let Some(port) = candidates.next() else {
            return Err(format!(
                "PostgreSQL could not bind a port: {PORT_ATTEMPTS} free ports were taken \
                 before it could (see {})",
                place.log_file.display()
            ));
        };
        write_settings(&place.data_dir, port, &place.root, &certs)?;
        match Postmaster::start_tied(
            install,
            &place.data_dir,
            &place.log_file,
            START_PATIENCE,
            Tie::OwnGroupStopsWithUs,
        ) {
            Ok(postmaster) => break (postmaster, port),
            Err(StartFailure::PortTaken) => continue,
            Err(StartFailure::Other(reason)) => {
                return Err(format!(
                    "starting PostgreSQL failed (its log: {}): {reason}",
                    place.log_file.display()
                ))
            }
        }
    };
    let cluster = DevCluster { postmaster, port };
    if let Err(problem) = create_role_and_database(place, port) {
        cluster
            .postmaster
            .stop(crate::devcluster::postmaster::Shutdown::Fast);
        return Err(problem);
    }
    Ok(cluster)
}

/// As the superuser over the Unix socket (trusted): the `forkpool` login role with the
/// password of `place` (set at each start, so a lost password file is made good), and its
/// database. This process is not the service's master, so it may open a connection.
fn create_role_and_database(place: &Place, port: u16) -> Result<(), String> {
    let password = place.password()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime to set the cluster up: {e}"))?;
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(&place.root)
            .port(port)
            .user(SUPERUSER)
            .dbname("postgres")
            .application_name("forkpool dev")
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connecting to the new cluster as {SUPERUSER}: {e}"))?;
        let connection = tokio::spawn(connection);
        let setup = async {
            // The password has only letters and digits: a literal needs no escaping.
            client
                .batch_execute(&format!(
                    "DO $$ BEGIN
                       IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                         CREATE ROLE {APP_ROLE} LOGIN;
                       END IF;
                     END $$;
                     ALTER ROLE {APP_ROLE} PASSWORD '{password}'"
                ))
                .await?;
            let exists = client
                .query_opt("SELECT FROM pg_database WHERE datname = $1", &[&APP_ROLE])
                .await?
                .is_some();
            if !exists {
                // Alone: CREATE DATABASE refuses to run inside a multi-statement batch.
                client
                    .batch_execute(&format!("CREATE DATABASE {APP_ROLE} OWNER {APP_ROLE}"))
                    .await?;
            }
            Ok::<(), tokio_postgres::Error>(())
        };
        let done = setup
            .await
            .map_err(|e| format!("creating the {APP_ROLE} role and database: {e}"));
        drop(client);
        let _ = connection.await;
        done
    })
}

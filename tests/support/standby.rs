//! A hot standby of a test cluster: `pg_basebackup -R` from the primary over its Unix socket,
//! then a server of its own (own directory, port and socket), streaming from the primary
//! until [`Standby::promote`].
//!
//! Cleanup as for a cluster (see `cluster.rs`): `Drop` stops the server and removes the
//! directory; a guardian shell does it if the test process dies first. A standby is never
//! kept in a static.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

use postgres::NoTls;
use tempfile::TempDir;

use super::installation::{Installation, GUARDIAN_DISMISSED, SUPERUSER};
use super::postmaster::{Postmaster, Shutdown};
use super::{describe, Cluster, APP_DATABASE};

/// How long the standby may take to start and reach a consistent state.
const PATIENCE: Duration = Duration::from_secs(60);

pub struct Standby {
    install: Installation,
    root: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    postmaster: Mutex<Option<Postmaster>>,
    guardian: Option<Child>,
    temp_dir: Option<TempDir>,
}

impl Cluster {
    /// A hot standby of this cluster, accepting read-only connections when this returns.
    /// Lets the superuser replicate over the Unix socket (a `pg_hba.conf` line, reloaded).
    pub fn start_standby(&self) -> Standby {
        let hba = self.data_dir().join("pg_hba.conf");
        let rules = fs::read_to_string(&hba).expect("reading pg_hba.conf");
        if !rules.contains("local replication") {
            fs::write(
                &hba,
                format!("local replication {SUPERUSER} trust\n{rules}"),
            )
            .expect("writing pg_hba.conf");
            // Reloads (pg_hba.conf with it) and waits until new sessions see the reload;
            // the value is the default, so nothing else changes.
            self.set("wal_sender_timeout", "60s");
        }
        let install = Installation::find();
        let temp_dir = tempfile::Builder::new()
            .prefix("forkpool-sb-")
            .tempdir()
            .expect("creating a temporary directory for a standby");
        let root = temp_dir.path().to_path_buf();
        install.give_to_server_user(&root);
        let data_dir = root.join("data");
        let guardian = install.spawn_guardian(&data_dir, &root);
        let mut standby = Standby {
            install,
            log_file: root.join("server.log"),
            data_dir,
            root,
            port: free_port(),
            postmaster: Mutex::new(None),
            guardian: Some(guardian),
            temp_dir: Some(temp_dir),
        };
        // From here on a panic drops `standby`, which cleans up.
        let output = standby
            .install
            .command("pg_basebackup")
            .arg("-D")
            .arg(&standby.data_dir)
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port().to_string(), "-U", SUPERUSER])
            .args(["-R", "-X", "stream", "--no-sync", "--checkpoint=fast"])
            .output()
            .expect("running pg_basebackup");
        assert!(
            output.status.success(),
            "pg_basebackup failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        standby.own_port_and_socket();
        let postmaster = Postmaster::start(
            &standby.install,
            &standby.data_dir,
            &standby.log_file,
            PATIENCE,
        )
        .unwrap_or_else(|_| {
            panic!(
                "starting the standby failed\n{}",
                fs::read_to_string(&standby.log_file).unwrap_or_default()
            )
        });
        *standby.postmaster.get_mut().unwrap() = Some(postmaster);
        standby
    }
}

impl Standby {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Ends recovery (`pg_promote()`, which waits until it is done): the standby becomes
    /// a primary that accepts writes.
    pub fn promote(&self) {
        let promoted = self
            .superuser()
            .query_one("SELECT pg_promote(true, 60)", &[])
            .map(|row| row.get::<_, bool>(0))
            .unwrap_or_else(|error| panic!("pg_promote() failed: {}", describe(&error)));
        assert!(promoted, "the standby was not promoted within 60 s");
    }

    /// Whether the server is still a standby (`pg_is_in_recovery()`).
    pub fn in_recovery(&self) -> bool {
        self.superuser()
            .query_one("SELECT pg_is_in_recovery()", &[])
            .map(|row| row.get(0))
            .unwrap_or_else(|error| panic!("asking the standby failed: {}", describe(&error)))
    }

    fn superuser(&self) -> postgres::Client {
        postgres::Config::new()
            .host_path(&self.root)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(APP_DATABASE)
            .connect(NoTls)
            .unwrap_or_else(|error| {
                panic!("connecting to the standby failed: {}", describe(&error))
            })
    }

    /// The copied settings name the primary's port and socket directory: the standby's own
    /// replace them (a later line of the same setting wins).
    fn own_port_and_socket(&self) {
        let conf = self.data_dir.join("postgresql.auto.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .unwrap_or_else(|e| panic!("opening {}: {e}", conf.display()));
        writeln!(
            file,
            "port = {}\nunix_socket_directories = '{}'",
            self.port,
            self.root.display()
        )
        .expect("writing the standby's port");
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        if let Some(postmaster) = self
            .postmaster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            postmaster.stop(Shutdown::Immediate);
        }
        if let Some(mut guardian) = self.guardian.take() {
            if let Some(mut pipe) = guardian.stdin.take() {
                let _ = pipe.write_all(GUARDIAN_DISMISSED.as_bytes());
            }
            let _ = guardian.wait();
        }
        drop(self.temp_dir.take());
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding 127.0.0.1:0 to find a free port")
        .port()
}

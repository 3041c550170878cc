//! `./.forkpool-dev/`, everything `forkpool dev` keeps between runs: the cluster's data
//! directory and log, its certificates and Unix socket, the `forkpool` role's password, and
//! the configuration the service runs from (rewritten at each start, for the port).

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::devcluster::installation::Installation;
use crate::pool::conninfo::quote;

/// The directory's name, in the current directory.
pub(crate) const DIR_NAME: &str = ".forkpool-dev";

/// The role and database the service connects as and to; the superuser stays for setup.
pub(crate) const APP_ROLE: &str = "forkpool";

/// `sun_path` holds 107 bytes; the server's `/.s.PGSQL.<port>.lock` takes up to 21 of them.
const SOCKET_PATH_ROOM: usize = 107 - 21;

/// The paths under `./.forkpool-dev/`, all absolute.
pub(crate) struct Place {
    /// `.forkpool-dev` itself: the server's Unix socket and certificates are here.
    pub(crate) root: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) log_file: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) service_socket: PathBuf,
    password_file: PathBuf,
}

impl Place {
    /// The paths in the current directory; nothing is created.
    pub(crate) fn in_current_dir() -> Result<Place, String> {
        let cwd = std::env::current_dir()
            .map_err(|e| format!("cannot read the current directory: {e}"))?;
        let root = cwd.join(DIR_NAME);
        if root.as_os_str().len() > SOCKET_PATH_ROOM {
            return Err(format!(
                "{} is too long a path for PostgreSQL's Unix socket ({SOCKET_PATH_ROOM} bytes \
                 at most): run forkpool dev from a shorter directory",
                root.display()
            ));
        }
        Ok(Place {
            data_dir: root.join("data"),
            log_file: root.join("server.log"),
            config: root.join("forkpool.toml"),
            service_socket: root.join("forkpool.sock"),
            password_file: root.join("password"),
            root,
        })
    }

    /// Removes everything of an earlier run (`--fresh`).
    pub(crate) fn wipe(&self) -> Result<(), String> {
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", self.root.display())),
        }
    }

    /// Creates the directory (mode 0700: it holds a password and a private key) and, when
    /// the server runs as another user, gives it to that user after checking it can get
    /// there.
    pub(crate) fn create(&self, install: &Installation) -> Result<(), String> {
        fs::create_dir_all(&self.root)
            .and_then(|()| fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("creating {}: {e}", self.root.display()))?;
        if install.runs_as_other_user() {
            check_reachable_by_others(&self.root)?;
            install.give_to_server_user(&self.root)?;
        }
        Ok(())
    }

    /// Whether the data directory has been made by initdb (its version file is the last
    /// thing initdb's bootstrap needs; a half-made one is wiped by `--fresh`).
    pub(crate) fn has_cluster(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    /// The pid in `postmaster.pid` when that process is alive: a cluster already running from
    /// this directory (another `forkpool dev`), which must not be started twice or wiped.
    pub(crate) fn running_postmaster(&self) -> Option<i32> {
        let pid_file = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = pid_file.lines().next()?.trim().parse().ok()?;
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        alive.then_some(pid)
    }

    /// The `forkpool` role's password: made once (random, mode 0600), then kept.
    pub(crate) fn password(&self) -> Result<String, String> {
        if let Ok(password) = fs::read_to_string(&self.password_file) {
            if !password.trim().is_empty() {
                return Ok(password.trim().to_owned());
            }
        }
        let password: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(32)
            .collect();
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.password_file)
            .and_then(|mut file| std::io::Write::write_all(&mut file, password.as_bytes()))
            .map_err(|e| format!("writing {}: {e}", self.password_file.display()))?;
        Ok(password)
    }

    /// The service's configuration: this cluster on `port` over TLS (verified against the
    /// cluster's CA) as the `forkpool` role, the job files in `workers`, durable jobs on with
    /// the schema migrated at start. Rewritten at each start, since the port may change.
    pub(crate) fn write_config(&self, port: u16, workers: &Path) -> Result<(), String> {
        let url = format!(
            "host=localhost port={port} user={APP_ROLE} dbname={APP_ROLE} \
             sslmode=verify-full sslrootcert={}",
            quote(&self.root.join("ca.crt").to_string_lossy())
        );
        let mut service = toml::Table::new();
        service.insert("socket".into(), "forkpool.sock".into());
        service.insert("catalog".into(), workers.to_string_lossy().as_ref().into());
        let mut workers_table = toml::Table::new();
        // Two: a second job runs while a first one sleeps, without crowding a laptop.
        workers_table.insert("count".into(), 2.into());
        let mut main = toml::Table::new();
        main.insert("url".into(), url.into());
        main.insert("password_file".into(), "password".into());
        let mut databases = toml::Table::new();
        databases.insert("main".into(), main.into());
        let mut queue = toml::Table::new();
        queue.insert("database".into(), "main".into());
        queue.insert("migrate".into(), "auto".into());
        let mut config = toml::Table::new();
        config.insert("service".into(), service.into());
        config.insert("workers".into(), workers_table.into());
        config.insert("databases".into(), databases.into());
        config.insert("queue".into(), queue.into());
        let text = format!(
            "# Written by `forkpool dev` at each start (edits are lost): the service on the \
             private\n# cluster in this directory. Every other key has its default \
             (config/forkpool.toml).\n{}",
            toml::to_string(&config).map_err(|e| format!("writing the configuration: {e}"))?
        );
        fs::write(&self.config, text).map_err(|e| format!("writing {}: {e}", self.config.display()))
    }
}

/// As root the server runs as `postgres`, which must be able to pass through every directory
/// above `dir`; a home directory of mode 0700 stops it, with a message from initdb that
/// does not say so.
fn check_reachable_by_others(dir: &Path) -> Result<(), String> {
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(ancestor) else {
            continue;
        };
        if meta.mode() & 0o001 == 0 {
            return Err(format!(
                "the PostgreSQL server runs as the `postgres` OS user (forkpool dev runs as \
                 root), which cannot pass through {} (mode {:o}): run forkpool dev from \
                 another directory, `chmod o+x {}`, or run it as a normal user",
                ancestor.display(),
                meta.mode() & 0o7777,
                ancestor.display()
            ));
        }
    }
    Ok(())
}

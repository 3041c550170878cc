//! A private PostgreSQL cluster for integration tests.
//!
//! Each cluster lives in its own temporary directory (data, Unix socket, certificates, log),
//! listens on 127.0.0.1 at a free port with TLS on, and is removed when dropped. It never
//! touches the machine's own PostgreSQL: no port 5432, no /var/run/postgresql.
//!
//! Cleanup happens on three paths:
//! - `Drop` (also while a test panics) stops the server and removes the directory;
//! - a cluster still running at process exit — one kept in a `static`, which is never
//!   dropped, like the shared cluster — is shut down by a `libc::atexit` handler;
//! - a *guardian* shell process per cluster waits on a pipe whose only writer is the test
//!   process: when that process dies without cleaning up (SIGKILL, a killed CI job, Ctrl-C),
//!   the pipe closes and the guardian stops the server and removes the directory. The
//!   guardian ignores a terminal's Ctrl-C, which the server (our child, in our process
//!   group) answers with a fast shutdown.
//!
//! Remaining gaps: a process forked (without exec) from the test process inherits the
//! guardian's pipe, so the guardian also waits for that child to exit; SIGKILL of the
//! guardian itself leaves the server running if the test process dies too.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use postgres::{NoTls, SimpleQueryMessage};
use tempfile::TempDir;

use super::installation::{Installation, GUARDIAN_DISMISSED, SUPERUSER};
use super::postmaster::{Postmaster, Shutdown, StartFailure};
use super::server_files::{
    configure_data_dir, write_certificates, write_settings, CertificateFiles,
};

/// LOGIN role owning database "app": what the pool under test connects as.
pub const APP_USER: &str = "app";
/// The app role's password; TCP connections authenticate with scram-sha-256.
pub const APP_PASSWORD: &str = "app-Secret-7f3";
/// Database owned by [`APP_USER`], where the superuser helpers run their SQL too.
pub const APP_DATABASE: &str = "app";
/// `application_name` of the harness's own connections, so `backend_pids` and
/// `terminate_backends` for the application under test never count them.
pub const HARNESS_APPLICATION_NAME: &str = "forkpool-test-harness";
/// How long a start or a `wait until…` may take before the test fails. Generous because
/// two cores are shared by parallel test binaries.
const PATIENCE: Duration = Duration::from_secs(60);
/// `sun_path` of a Unix socket address holds 107 bytes and a terminating NUL…
const SOCKET_PATH_CAPACITY: usize = 107;
/// …of which the server's `/.s.PGSQL.<port>.lock` takes up to 21.
const SOCKET_NAME_LENGTH: usize = 21;
/// Attempts at finding a port nobody takes between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;

/// What varies between clusters.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Names the server certificate is valid for. Default: `localhost` and `127.0.0.1`, the
    /// names `tcp_url` connects with; drop one to test hostname verification failures.
    pub cert_hosts: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            cert_hosts: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        }
    }
}

/// A private PostgreSQL server. See the module documentation for cleanup.
pub struct Cluster {
    install: Installation,
    /// The temporary directory: data directory, Unix socket, certificates, log.
    root: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    certs: CertificateFiles,
    port: u16,
    /// Shared with the atexit handler, which shuts down what is still running at exit.
    processes: Arc<Processes>,
}

/// What shutting a cluster down stops and removes.
struct Processes {
    /// `None` while stopped. Mutexes because a cluster in a static is reached from every
    /// test thread, and every cluster from the atexit handler.
    postmaster: Mutex<Option<Postmaster>>,
    /// `None` once shut down.
    cleanup: Mutex<Option<Cleanup>>,
    /// The process that started the cluster. A child forked by a test inherits the cluster
    /// (and the atexit handler) and must not stop the parent's server when it exits.
    owner: u32,
}

/// What shutting down releases after the server: the guardian, then the directory.
struct Cleanup {
    guardian: Child,
    temp_dir: TempDir,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

/// Every cluster started by this process, for the atexit handler; a dropped one is gone.
static STARTED: Mutex<Vec<Weak<Processes>>> = Mutex::new(Vec::new());

impl Cluster {
    /// A private cluster with default options, for tests that stop, restart or break it.
    pub fn start() -> Cluster {
        Cluster::start_with(ClusterOptions::default())
    }

    pub fn start_with(options: ClusterOptions) -> Cluster {
        let install = Installation::find();
        let temp_dir = tempfile::Builder::new()
            .prefix("forkpool-pg-")
            .tempdir()
            .expect("creating a temporary directory for a test cluster");
        let root = temp_dir.path().to_path_buf();
        assert!(
            root.as_os_str().len() + SOCKET_NAME_LENGTH <= SOCKET_PATH_CAPACITY,
            "the temporary directory {} is too long to hold a Unix socket: set TMPDIR to a \
             short directory such as /tmp",
            root.display()
        );
        install.give_to_server_user(&root);
        let data_dir = root.join("data");
        let guardian = install.spawn_guardian(&data_dir, &root);
        let cluster = Cluster {
            certs: write_certificates(&install, &root, &options.cert_hosts),
            install,
            log_file: root.join("server.log"),
            data_dir,
            root,
            port: 0,
            processes: Arc::new(Processes {
                postmaster: Mutex::new(None),
                cleanup: Mutex::new(Some(Cleanup { guardian, temp_dir })),
                owner: std::process::id(),
            }),
        };
        shut_down_at_exit(&cluster.processes);
        // From here on a panic drops `cluster`, which cleans up.
        cluster.install.init_data_dir(&cluster.data_dir);
        configure_data_dir(&cluster.data_dir);
        let cluster = cluster.start_on_free_port();
        cluster.create_app_database();
        cluster
    }

    /// One cluster per test binary, started on first use and shut down at process exit. For
    /// tests that only connect and query; anything that stops or breaks the server must use
    /// a private [`Cluster::start`].
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(Cluster::start)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// PEM of the CA that signed the server certificate.
    pub fn ca_cert(&self) -> &Path {
        &self.certs.ca_cert
    }

    /// PEM of a CA unrelated to the server: verification against it must fail.
    pub fn other_ca_cert(&self) -> &Path {
        &self.certs.other_ca_cert
    }

    /// The data directory (`pg_hba.conf`, `postgresql.conf`, …).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log: the server's stdout and stderr.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// libpq key=value conninfo for the app role over TCP to `localhost`.
    pub fn tcp_url(&self, sslmode: &str) -> String {
        format!(
            "host=localhost port={} user={APP_USER} password={APP_PASSWORD} \
             dbname={APP_DATABASE} sslmode={sslmode}",
            self.port
        )
    }

    /// libpq key=value conninfo for the app role over the Unix socket (trusted, no TLS; the
    /// password is included so the string also works if authentication is tightened).
    pub fn socket_url(&self) -> String {
        format!(
            "host={} port={} user={APP_USER} password={APP_PASSWORD} dbname={APP_DATABASE}",
            self.root.display(),
            self.port
        )
    }

    /// A fresh superuser connection to database "app" over the Unix socket, without TLS.
    pub fn superuser(&self) -> postgres::Client {
        self.superuser_in(APP_DATABASE)
    }

    /// Runs `sql` (one or more statements) as superuser in database "app".
    pub fn execute(&self, sql: &str) {
        if let Err(error) = self.superuser().batch_execute(sql) {
            panic!("{} failed: {}", quote_sql(sql), describe(&error));
        }
    }

    /// Runs `sql` with the simple query protocol as superuser in database "app" and returns
    /// every row of every statement as text (`None` for NULL).
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let messages = self
            .superuser()
            .simple_query(sql)
            .unwrap_or_else(|error| panic!("{} failed: {}", quote_sql(sql), describe(&error)));
        messages
            .iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    /// The first column of the first row; `None` for NULL or no rows.
    pub fn query_value(&self, sql: &str) -> Option<String> {
        self.query(sql)
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten())
    }

    /// Stops the server like `pg_ctl stop -m fast` (clients are disconnected, a checkpoint
    /// is written) and waits until it has exited.
    pub fn stop(&self) {
        self.take_postmaster().stop(Shutdown::Fast);
    }

    /// Stops the server like `pg_ctl stop -m immediate`, as a crash would: no checkpoint,
    /// recovery at the next start. Waits until it has exited.
    pub fn stop_immediately(&self) {
        self.take_postmaster().stop(Shutdown::Immediate);
    }

    /// Starts the server again after a stop, on the same port, and waits until it accepts
    /// connections.
    pub fn start_again(&self) {
        let mut running = lock(&self.processes.postmaster);
        assert!(
            running.is_none(),
            "start_again: the test cluster is already running"
        );
        match Postmaster::start(&self.install, &self.data_dir, &self.log_file, PATIENCE) {
            Ok(postmaster) => *running = Some(postmaster),
            Err(StartFailure::PortTaken) => panic!(
                "starting the test cluster again failed: another process took port {} while \
                 the server was stopped",
                self.port
            ),
            Err(StartFailure::Other(reason)) => panic!(
                "starting the test cluster again failed: {reason}\n{}",
                self.log_tail()
            ),
        }
    }

    /// The postmaster's process id, `None` while stopped.
    pub fn postmaster_pid(&self) -> Option<i32> {
        lock(&self.processes.postmaster)
            .as_ref()
            .map(Postmaster::pid)
    }

    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// `ALTER SYSTEM SET name = 'value'` and makes it effective: reloads the configuration and
    /// waits until new connections see it, or restarts the server for settings that need it
    /// (`max_connections`, …). Existing sessions pick reloaded settings up before their next
    /// command, as PostgreSQL does. On [`Cluster::shared`] this changes the server for every
    /// test of the binary: use a private cluster.
    pub fn set(&self, name: &str, value: &str) {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'),
            "{name:?} is not a setting name"
        );
        let context = self
            .query_value(&format!(
                "SELECT context FROM pg_settings WHERE name = {}",
                literal(name)
            ))
            .unwrap_or_else(|| panic!("PostgreSQL has no setting named {name:?}"));
        self.execute(&format!("ALTER SYSTEM SET {name} = {}", literal(value)));
        if context == "postmaster" {
            self.restart();
            return;
        }
        let loaded_before = self.conf_load_time();
        self.execute("SELECT pg_reload_conf()");
        self.wait_until(&format!("the server reloads after setting {name}"), || {
            self.conf_load_time() != loaded_before
        });
    }

    /// Backend process ids of the connections whose `application_name` is the given one.
    pub fn backend_pids(&self, application_name: &str) -> Vec<i32> {
        self.superuser()
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid",
                &[&application_name],
            )
            .unwrap_or_else(|error| panic!("listing backends failed: {}", describe(&error)))
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Terminates every backend of `application_name` and waits until their processes are
    /// gone, so the client side sees a closed connection. Returns how many there were.
    /// A backend stopped with [`Cluster::sigstop`] cannot exit: `sigcont` it first.
    pub fn terminate_backends(&self, application_name: &str) -> usize {
        let pids = self.backend_pids(application_name);
        let mut client = self.superuser();
        for pid in &pids {
            client
                .execute("SELECT pg_terminate_backend($1)", &[pid])
                .unwrap_or_else(|error| {
                    panic!("terminating backend {pid} failed: {}", describe(&error))
                });
        }
        self.wait_until(
            &format!("backends {pids:?} of {application_name:?} exit"),
            || pids.iter().all(|&pid| !process_exists(pid)),
        );
        pids.len()
    }

    /// Freezes a backend process (SIGSTOP): its connection stays open and never answers.
    pub fn sigstop(&self, pid: i32) {
        signal_backend(pid, Signal::SIGSTOP);
    }

    /// Resumes a backend frozen by [`Cluster::sigstop`].
    pub fn sigcont(&self, pid: i32) {
        signal_backend(pid, Signal::SIGCONT);
    }

    /// The whole server log, for diagnosing a failure.
    pub fn log_contents(&self) -> String {
        fs::read_to_string(&self.log_file).unwrap_or_else(|error| {
            format!(
                "(could not read the server log {}: {error})",
                self.log_file.display()
            )
        })
    }

    /// Probes for a free port and starts there, again on another port if the server lost
    /// the race for it.
    fn start_on_free_port(mut self) -> Cluster {
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port();
            write_settings(&self.data_dir, self.port, &self.root, &self.certs);
            match Postmaster::start(&self.install, &self.data_dir, &self.log_file, PATIENCE) {
                Ok(postmaster) => {
                    *lock(&self.processes.postmaster) = Some(postmaster);
                    return self;
                }
                Err(StartFailure::PortTaken) => continue,
                Err(StartFailure::Other(reason)) => panic!(
                    "starting the test cluster failed: {reason}\n{}",
                    self.log_tail()
                ),
            }
        }
        panic!(
            "starting the test cluster failed: {PORT_ATTEMPTS} free ports were taken before \
             the server could bind them\n{}",
            self.log_tail()
        );
    }

    fn take_postmaster(&self) -> Postmaster {
        lock(&self.processes.postmaster)
            .take()
            .expect("the test cluster is not running")
    }

    fn create_app_database(&self) {
        let mut client = self.superuser_in("postgres");
        // Separate statements: CREATE DATABASE refuses to run inside a multi-statement batch.
        for sql in [
            format!(
                "CREATE ROLE {APP_USER} LOGIN PASSWORD {}",
                literal(APP_PASSWORD)
            ),
            format!("CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}"),
        ] {
            if let Err(error) = client.batch_execute(&sql) {
                panic!("{} failed: {}", quote_sql(&sql), describe(&error));
            }
        }
    }

    pub fn superuser_in(&self, database: &str) -> postgres::Client {
        postgres::Config::new()
            .host_path(&self.root)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(database)
            .application_name(HARNESS_APPLICATION_NAME)
            .connect(NoTls)
            .unwrap_or_else(|error| {
                panic!(
                    "connecting to the test cluster as superuser failed: {}\n{}",
                    describe(&error),
                    self.log_tail()
                )
            })
    }

    /// When the postmaster last read its configuration, as seen by a new backend (which
    /// inherits it from the postmaster).
    fn conf_load_time(&self) -> Option<String> {
        self.query_value("SELECT pg_conf_load_time()")
    }

    /// Polls `done` until it holds; panics after [`PATIENCE`] naming what was awaited. The
    /// conditions awaited here (a reload, a process exit) happen inside the server, which
    /// offers no notification for them.
    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done() {
            if Instant::now() > deadline {
                panic!("timed out waiting until {what}\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The end of the server log, to append to a panic message.
    fn log_tail(&self) -> String {
        let log = self.log_contents();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!(
            "--- end of the server log {} ---\n{}",
            self.log_file.display(),
            lines[start..].join("\n")
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.processes.shut_down();
    }
}

impl Processes {
    /// Stops the server immediately and removes its directory. Idempotent and never panics:
    /// it runs from `Drop` during unwinding and from the atexit handler.
    fn shut_down(&self) {
        if std::process::id() != self.owner {
            // The parent's server and directory: dropping the TempDir here would delete it.
            std::mem::forget(lock(&self.cleanup).take());
            return;
        }
        let Some(Cleanup {
            mut guardian,
            temp_dir,
        }) = lock(&self.cleanup).take()
        else {
            return;
        };
        if let Some(postmaster) = lock(&self.postmaster).take() {
            postmaster.stop(Shutdown::Immediate);
        }
        if let Some(mut pipe) = guardian.stdin.take() {
            let _ = pipe.write_all(GUARDIAN_DISMISSED.as_bytes());
        }
        let _ = guardian.wait();
        drop(temp_dir);
    }
}

/// Registers a cluster for [`shut_down_started_clusters`], installed on first use.
fn shut_down_at_exit(processes: &Arc<Processes>) {
    static INSTALL: Once = Once::new();
    // SAFETY: registers a plain function with no captured state.
    INSTALL.call_once(|| unsafe {
        libc::atexit(shut_down_started_clusters);
    });
    let mut started = lock(&STARTED);
    started.retain(|cluster| cluster.strong_count() > 0);
    started.push(Arc::downgrade(processes));
}

/// At exit: what `Drop` does, for the clusters never dropped (the shared cluster, and any
/// other kept in a static).
extern "C" fn shut_down_started_clusters() {
    let running: Vec<Arc<Processes>> = lock(&STARTED).iter().filter_map(Weak::upgrade).collect();
    for processes in running {
        processes.shut_down();
    }
}

/// Locks even a mutex poisoned by a panicking test: cleanup must still happen.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A port on 127.0.0.1 that was free a moment ago; the server may still lose a race for it.
fn free_port() -> u16 {
    forkpool::devcluster::free_port().expect("binding 127.0.0.1:0 to find a free port")
}

/// Whether a process exists (a zombie counts; the postmaster reaps its backends promptly).
fn process_exists(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

fn signal_backend(pid: i32, signal: Signal) {
    kill(Pid::from_raw(pid), signal)
        .unwrap_or_else(|e| panic!("sending {signal} to backend {pid}: {e}"));
}

/// A SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn quote_sql(sql: &str) -> String {
    format!("SQL `{sql}`")
}

/// The server's message with its SQLSTATE, detail and hint, or the client-side error.
pub fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => error.to_string(),
    }
}

//! The service configuration: where it is found, its keys and defaults, and how it is loaded.
//!
//! Three layers, later ones winning: the defaults below (the `Default` impls, the one place
//! they live), the TOML file, then `FORKPOOL_SECTION__KEY` environment variables. Loading
//! never stops at the first mistake: a person fixing a config file wants the whole list at
//! once, so every layer is walked key by key and every problem is collected.

mod database_keys;
mod layers;
mod load;
mod queue;
mod schedules;
mod search;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pool::ResetOnReturn;
pub use queue::{Migrate, QueueConfig};
pub use schedules::{parse_cron, parse_timezone, Every, ScheduleConfig};
pub use search::{CONFIG_PATH_VAR, DEFAULT_CONFIG_PATH, SYSTEM_CONFIG_DIR, SYSTEM_CONFIG_DIR_VAR};

/// The whole configuration, with relative paths already resolved against the file's
/// directory and `pool_size = 0` already replaced by `workers.threads`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file that was loaded (absolute), so a reload reads the same one.
    pub file: PathBuf,
    pub service: ServiceConfig,
    pub workers: WorkersConfig,
    /// One pool per entry, per worker. `main` is only a convention: a job names its database.
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// Durable jobs (DESIGN §12).
    pub queue: QueueConfig,
    /// Periodic durable jobs, by name (DESIGN §13).
    pub schedules: BTreeMap<String, ScheduleConfig>,
}

/// `[service]`: the socket clients talk to and the master's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// The Unix socket to create; absolute after loading. A socket passed by systemd is used
    /// instead.
    pub socket: PathBuf,
    /// Permission bits of the created socket, written as an octal string (`"0660"`).
    pub socket_mode: u32,
    /// Peer uids allowed to submit. With `allowed_gids` also empty, whoever can open the
    /// socket file; otherwise a peer in either list, and always the service's own uid.
    pub allowed_uids: Vec<u32>,
    /// Peer primary gids (`SO_PEERCRED`) allowed to submit, next to `allowed_uids`.
    pub allowed_gids: Vec<u32>,
    /// Peer uids allowed the operator's ops (`reload`, `stop`, `scale`) besides the
    /// service's own uid.
    pub admin_uids: Vec<u32>,
    /// Client connections held at once; one more is answered `too_many_clients` and closed.
    pub max_clients: usize,
    /// Close a client that sent nothing and awaits nothing for this long (`None`: never).
    pub client_idle_timeout: Option<Duration>,
    /// Jobs the master holds waiting for a worker before answering `queue_full`.
    pub queue_limit: usize,
    /// A request line longer than this is answered `too_large` and the connection closed.
    pub max_request_bytes: usize,
    /// How long a graceful stop (TERM) lets queued and running jobs finish.
    pub shutdown_timeout: Duration,
    /// The directory of job files; absolute after loading.
    pub catalog: PathBuf,
    /// Where the master answers `GET /metrics` and `GET /healthz` over HTTP (`None`: no
    /// listener). A TCP listening socket only: the master still opens no connection.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            // Next to the config file, so `run` and `submit` given the same file agree.
            socket: PathBuf::from("forkpool.sock"),
            // Owner and group: clients join the service's group instead of the world.
            socket_mode: 0o660,
            // The file mode is the access control unless a list is given.
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            // Stopping or reshaping the service is its operator's: the service's own uid
            // (root's only when the service runs as root), no one else unless listed.
            admin_uids: Vec::new(),
            // Far more than a pool of job submitters needs, and below the descriptor limit
            // the master raises itself to, so a flood is refused with an answer instead of
            // failing `accept` for everyone.
            max_clients: 1024,
            // Long enough for an interactive client between requests; short enough that
            // connections a client forgot (or a stalled half line) do not pile up.
            client_idle_timeout: Some(Duration::from_secs(300)),
            // Large enough to absorb a burst, small enough that memory stays bounded.
            queue_limit: 10_000,
            // 1 MiB: far more than any sane argument object, far less than a runaway client.
            max_request_bytes: 1_048_576,
            // gunicorn's graceful_timeout; longer than most jobs.
            shutdown_timeout: Duration::from_secs(30),
            // `config/../workers`: the repository layout puts job files beside `config/`.
            catalog: PathBuf::from("../workers"),
            // Off: a TCP port is the operator's choice (and firewall's), the socket's
            // `status --prometheus` works without one.
            metrics_listen: None,
        }
    }
}

/// `[workers]`: how many processes run jobs, and when they are recycled.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkersConfig {
    /// Workers started at boot, and the floor.
    pub count: usize,
    /// Ceiling for SIGTTIN and for growth under load.
    pub max: usize,
    /// Jobs one worker runs at once.
    pub threads: usize,
    /// Jobs each executor may hold at once, run pipelined on its one connection (1: one job
    /// per executor, today's guarantee that no job waits behind another). Above 1 a worker
    /// holds up to `threads × pipeline` jobs, `pipeline` per idle executor (DESIGN §2).
    pub pipeline: usize,
    /// Default job timeout; a job file may set its own.
    pub job_timeout: Duration,
    /// Recycle a worker after this many jobs (0: never) ...
    pub max_jobs: u64,
    /// ... plus a random 0..jitter, so workers do not recycle together.
    pub max_jobs_jitter: u64,
    /// Recycle a worker whose resident memory passes this many bytes (0: never).
    pub max_rss: u64,
    /// Dynamic size: while jobs wait and every worker is busy, grow toward `max`; a worker
    /// so grown retires after this long idle (`None`: fixed size, only TTIN/TTOU move it).
    pub idle_timeout: Option<Duration>,
    /// An idle worker silent this long (no heartbeat; one is sent every second) is hung:
    /// killed and replaced (`None`: never).
    pub heartbeat_timeout: Option<Duration>,
    /// No recycle before this; at most one worker recycles at a time.
    pub min_lifetime: Duration,
    /// A worker not ready by then is killed and counted as a crash.
    pub boot_timeout: Duration,
    /// Ceiling of the crash-loop restart backoff.
    pub restart_backoff_max: Duration,
    /// Consecutive crashes before the master exits non-zero (systemd restarts it).
    pub give_up_after: u32,
    /// One `forkpool::access` line at info per answered job (job, outcome, times, worker,
    /// client uid; never its arguments).
    pub log_jobs: bool,
    /// Warn once about a job still running after this long, naming job and worker (`None`:
    /// never), like PHP-FPM's `request_slowlog_timeout`.
    pub slow_job: Option<Duration>,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            // A few processes: parallelism on a small machine without crowding the database.
            count: 4,
            // Room to grow fourfold before the connection budget becomes the limit.
            max: 16,
            // One job per process: the prefork model's isolation, no shared pool contention.
            threads: 1,
            // No job waits behind another on a connection unless the operator trades that.
            pipeline: 1,
            // Long enough for reports, short enough that a stuck query frees its worker.
            job_timeout: Duration::from_secs(60),
            // Recycling is a remedy for leaks; none are known, so it is off.
            max_jobs: 0,
            max_jobs_jitter: 0,
            max_rss: 0,
            // Fixed size, as gunicorn's: workers grown under load would each hold their
            // pools' connections, so growing is the operator's choice.
            idle_timeout: None,
            // Ten missed beats: far past any pause of a healthy worker (its tick sends the
            // beat before pool maintenance), well before anyone waits on it.
            heartbeat_timeout: Some(Duration::from_secs(10)),
            // A crash-looping worker must not be mistaken for a recycled one.
            min_lifetime: Duration::from_secs(10),
            // Pools are lazy, so booting is fork + reset: seconds at most.
            boot_timeout: Duration::from_secs(30),
            // Restarts back off up to this, so a broken deploy does not spin the CPU.
            restart_backoff_max: Duration::from_secs(30),
            // Ten crashes in a row is not transient: let systemd see the failure.
            give_up_after: 10,
            // A line per job is a lot of journal for a busy service: on when wanted.
            log_jobs: false,
            // What is slow depends on the jobs; job_timeout already bounds them.
            slow_job: None,
        }
    }
}

/// `[databases.NAME]`: one connection pool per worker for this database. Its `Debug` (and so
/// [`Config`]'s) masks a password written in `url`.
#[derive(Clone, PartialEq)]
pub struct DatabaseConfig {
    /// libpq URL or `key=value` string; empty means libpq's defaults (local socket, OS user).
    pub url: String,
    /// A file holding the password, read at start and never logged; absolute after loading.
    pub password_file: Option<PathBuf>,
    /// Connections per worker; after loading never 0 (0 in the file means `workers.threads`).
    pub pool_size: usize,
    /// Idle connections the maintenance tick keeps open.
    pub min_idle: usize,
    /// How long a checkout waits for a connection before `db_unavailable`.
    pub checkout_timeout: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// Ping an idle connection before handing it out.
    pub pre_ping: bool,
    /// Skip the ping for connections used more recently than this.
    pub ping_after: Duration,
    /// Close connections older than this (`None`: no limit).
    pub max_lifetime: Option<Duration>,
    /// Up to this much is taken off each connection's lifetime, so they do not expire together.
    pub lifetime_jitter: Duration,
    /// Close connections idle longer than this (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// What checkin does so the next job starts clean.
    pub reset_on_return: ResetOnReturn,
    /// Warn about checkouts lasting longer than this (`None`: off).
    pub leak_threshold: Option<Duration>,
    /// PostgreSQL's `statement_timeout` for each connection (`None`: the server's setting).
    pub statement_timeout: Option<Duration>,
    /// Shown in `pg_stat_activity`, so a DBA can tell forkpool's connections apart.
    pub application_name: String,
    /// Refuse to start or scale past `workers.max × pool_size` above this (0: off).
    pub max_connections_budget: usize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        let pool = crate::pool::PoolSettings::new();
        DatabaseConfig {
            // libpq defaults: pools are lazy, so the service starts even when the database
            // is down.
            url: String::new(),
            password_file: None,
            // One connection per executor thread: a job never waits for its own worker.
            pool_size: 0,
            // Connections open on demand; a warm floor is an opt-in cost on the server.
            min_idle: 0,
            // The pool's own defaults, each explained on its setter in src/pool/settings.rs.
            checkout_timeout: pool.checkout_timeout,
            connect_timeout: pool.connect_timeout,
            pre_ping: pool.pre_ping,
            ping_after: pool.ping_after,
            max_lifetime: pool.max_lifetime,
            lifetime_jitter: pool.lifetime_jitter,
            idle_timeout: pool.idle_timeout,
            reset_on_return: pool.reset_on_return,
            leak_threshold: pool.leak_threshold,
            statement_timeout: pool.statement_timeout,
            application_name: pool.application_name,
            max_connections_budget: 0,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so a new field cannot be left out of the output unnoticed.
        let DatabaseConfig {
            url,
            password_file,
            pool_size,
            min_idle,
            checkout_timeout,
            connect_timeout,
            pre_ping,
            ping_after,
            max_lifetime,
            lifetime_jitter,
            idle_timeout,
            reset_on_return,
            leak_threshold,
            statement_timeout,
            application_name,
            max_connections_budget,
        } = self;
        f.debug_struct("DatabaseConfig")
            .field("url", &crate::pool::ConnInfo::masked(url))
            .field("password_file", password_file)
            .field("pool_size", pool_size)
            .field("min_idle", min_idle)
            .field("checkout_timeout", checkout_timeout)
            .field("connect_timeout", connect_timeout)
            .field("pre_ping", pre_ping)
            .field("ping_after", ping_after)
            .field("max_lifetime", max_lifetime)
            .field("lifetime_jitter", lifetime_jitter)
            .field("idle_timeout", idle_timeout)
            .field("reset_on_return", reset_on_return)
            .field("leak_threshold", leak_threshold)
            .field("statement_timeout", statement_timeout)
            .field("application_name", application_name)
            .field("max_connections_budget", max_connections_budget)
            .finish()
    }
}

/// Every problem found while loading, each line already naming where it came from: the
/// file (`config/forkpool.toml: workers.count = 0: ...`) or the environment variable
/// (`env FORKPOOL_WORKERS__COUNT = "x": ...`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors {
    /// The configuration file as it was named (by `--config`, `$FORKPOOL_CONFIG` or the
    /// default path).
    pub file: PathBuf,
    /// One line per problem, in the order found.
    pub problems: Vec<String>,
    /// The configuration with the defaults in place of every wrong value: enough to find and
    /// check the job catalog in the same run, so that every problem is reported at once.
    pub best_effort: Box<Config>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Find the file: `explicit` (`--config`), else `$FORKPOOL_CONFIG`, else
    /// `config/forkpool.toml` (relative to the current directory) if it exists, else
    /// `/etc/forkpool/forkpool.toml` (`$FORKPOOL_SYSTEM_CONFIG_DIR` replaces the directory).
    /// Defaults, then the file, then `FORKPOOL_SECTION__KEY` environment variables. Returns
    /// every problem at once; a file found nowhere names every place looked at.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigErrors> {
        let env: Vec<(String, String)> = std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .filter(|(k, _)| k.starts_with(layers::ENV_PREFIX))
            .collect();
        let (file, found_by) = search::find(explicit, &env);
        load::load(&file, &found_by, &env)
    }

    /// Why the file should not stay as it is: it holds a database password (in a `url`) and
    /// every user of the machine may read it. Group-readable is not warned about: that is how
    /// the service's own group is given the file. `None` when all is well or the file cannot
    /// be read now.
    pub fn exposed_password_warning(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&self.file).ok()?.permissions().mode() & 0o7777;
        if mode & 0o004 == 0 {
            return None;
        }
        let keys = load::keys_with_passwords(&std::fs::read_to_string(&self.file).ok()?);
        (!keys.is_empty()).then(|| {
            format!(
                "{} (mode {mode:04o}) is readable by every user and holds a password ({}): \
                 `chmod 600` it (640 to share it with the service's group), or move the \
                 password to password_file or the PGPASSWORD environment variable",
                self.file.display(),
                keys.join(", ")
            )
        })
    }

    /// Same as [`Config::load`], from an explicit file and an explicit environment (only the
    /// `FORKPOOL_` variables in it are read), so tests do not depend on the process's.
    pub fn load_from(file: &Path, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
        load::load(file, &search::FoundBy::Caller, env)
    }

    /// Same as [`Config::load_from`], from the file's text already read: `file` names it in
    /// messages and anchors relative paths, but is not read (the fuzz target's way in).
    pub fn from_text(
        file: &Path,
        text: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigErrors> {
        load::from_text(file, text, env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_a_password_in_a_database_url() {
        let mut config = Config {
            file: PathBuf::from("/etc/forkpool/forkpool.toml"),
            service: ServiceConfig::default(),
            workers: WorkersConfig::default(),
            databases: BTreeMap::new(),
            queue: QueueConfig::default(),
            schedules: BTreeMap::new(),
        };
        let urls = [
            "postgresql://app:hunter2-xyz@db/main",
            "host=db user=app password='hunter2-xyz'",
            "postgresql://app@db/main?password=hunter2-xyz",
            // Not a valid conninfo: shown not at all rather than half masked.
            "postgresql://app:hunter2-xyz@db1,db2/main",
        ];
        for (i, url) in urls.iter().enumerate() {
            config.databases.insert(
                format!("db{i}"),
                DatabaseConfig {
                    url: url.to_string(),
                    ..DatabaseConfig::default()
                },
            );
        }
        for (i, database) in config.databases.values().enumerate() {
            let text = format!("{database:?}");
            assert!(!text.contains("hunter2"), "{text}");
            assert!(
                text.contains("pool_size: 0"),
                "other fields are shown: {text}"
            );
            if i < 3 {
                assert!(text.contains("password=********"), "{text}");
            }
        }
        for text in [format!("{config:?}"), format!("{config:#?}")] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("host=db"), "{text}");
        }
    }
}

//! Applying the layers to the defaults key by key, then the checks that span keys, collecting
//! every problem instead of stopping at the first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use figment::value::Value;

use super::database_keys::set_database;
use super::layers::{self, Origin, Setting};
use super::queue::{check_database, set_queue, QUEUE_KEYS};
use super::schedules::{set_schedule, ScheduleConfig, SCHEDULE_KEYS};
use super::search::{missing, FoundBy};
use super::values;
use super::{Config, ConfigErrors, DatabaseConfig, QueueConfig, ServiceConfig, WorkersConfig};

const SECTIONS: &[&str] = &["service", "workers", "databases", "queue", "schedules"];

const SERVICE_KEYS: &[&str] = &[
    "socket",
    "socket_mode",
    "allowed_uids",
    "allowed_gids",
    "admin_uids",
    "max_clients",
    "client_idle_timeout",
    "queue_limit",
    "max_request_bytes",
    "shutdown_timeout",
    "catalog",
    "metrics_listen",
];

const WORKERS_KEYS: &[&str] = &[
    "count",
    "max",
    "threads",
    "pipeline",
    "job_timeout",
    "max_jobs",
    "max_jobs_jitter",
    "max_rss",
    "idle_timeout",
    "heartbeat_timeout",
    "min_lifetime",
    "boot_timeout",
    "restart_backoff_max",
    "give_up_after",
    "log_jobs",
    "slow_job",
];

/// Smallest `max_request_bytes` that still fits an ordinary request with its arguments.
const MIN_REQUEST_BYTES: usize = 1024;

/// Defaults, then the file, then the environment; then the cross-key checks.
pub fn load(
    file: &Path,
    found_by: &FoundBy,
    env: &[(String, String)],
) -> Result<Config, ConfigErrors> {
    let mut loader = Loader::new(file);
    match std::fs::read_to_string(file) {
        Ok(text) => return from_text(file, &text, env),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            loader.problems.push(missing(file, found_by));
        }
        Err(e) => loader.problem(&Origin::File, &format!("cannot read it: {e}")),
    }
    loader.finish_with(env)
}

/// [`load`] of a file's text already read: `file` is where it came from, named in messages
/// and the base of relative paths. The file itself is not read, so this is what the fuzz
/// target `config_file` runs (README "Fuzzing").
pub fn from_text(
    file: &Path,
    text: &str,
    env: &[(String, String)],
) -> Result<Config, ConfigErrors> {
    let mut loader = Loader::new(file);
    match layers::from_toml(text, key_depth) {
        Ok(settings) => settings.into_iter().for_each(|s| loader.apply(s)),
        Err(syntax) => loader.problem(&Origin::File, &syntax),
    }
    loader.finish_with(env)
}

/// The `databases.NAME.url` keys of a configuration file's text whose value carries a
/// password (`password=` in a key=value string, `user:password@` in a URL), for `check`'s
/// warning. The environment is not looked at: a password there is not in the file.
pub fn keys_with_passwords(text: &str) -> Vec<String> {
    let Ok(settings) = layers::from_toml(text, key_depth) else {
        return Vec::new();
    };
    settings
        .into_iter()
        .filter_map(|setting| match (setting.path.as_slice(), &setting.value) {
            ([section, _, key], Value::String(_, url))
                if section == "databases" && key == "url" =>
            {
                let info = crate::pool::ConnInfo::parse(url).ok()?;
                info.password.is_some().then(|| setting.path.join("."))
            }
            _ => None,
        })
        .collect()
}

/// How many levels a section's keys have: `databases.NAME.key`, `section.key`, and an
/// unknown section stops at its own name so it is reported once.
fn key_depth(section: &str) -> usize {
    match section {
        // `queue.limits.NAME`; the other `queue.KEY`s stop at two by themselves.
        "databases" | "queue" | "schedules" => 3,
        s if SECTIONS.contains(&s) => 2,
        _ => 1,
    }
}

/// Why one setting could not be applied.
pub(super) enum Fault {
    /// No such key; the closest known name, if one is close.
    Unknown(Option<&'static str>),
    /// The key exists; the value is wrong for the reason given.
    Bad(String),
}

impl From<String> for Fault {
    fn from(reason: String) -> Self {
        Fault::Bad(reason)
    }
}

/// The configuration being built, with what is needed to report on it.
struct Loader {
    /// The file as named, for prefixing messages.
    file: PathBuf,
    service: ServiceConfig,
    workers: WorkersConfig,
    databases: BTreeMap<String, DatabaseConfig>,
    queue: QueueConfig,
    schedules: BTreeMap<String, ScheduleConfig>,
    /// Where each key's current value came from, for the cross-key messages.
    origins: HashMap<String, Origin>,
    /// Keys whose value was wrong: cross-key checks skip them rather than report twice.
    failed: HashSet<String>,
    problems: Vec<String>,
}

impl Loader {
    fn new(file: &Path) -> Self {
        Loader {
            file: file.to_path_buf(),
            service: ServiceConfig::default(),
            workers: WorkersConfig::default(),
            databases: BTreeMap::new(),
            queue: QueueConfig::default(),
            schedules: BTreeMap::new(),
            origins: HashMap::new(),
            failed: HashSet::new(),
            problems: Vec::new(),
        }
    }

    /// Records a problem, prefixed with the file or the environment variable it came from.
    fn problem(&mut self, origin: &Origin, message: &str) {
        self.problems.push(match origin {
            Origin::File => format!("{}: {message}", self.file.display()),
            Origin::Env(var) => format!("env {var}: {message}"),
        });
    }

    fn apply(&mut self, setting: Setting) {
        let Setting {
            path,
            value,
            origin,
        } = setting;
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let result = match path.as_slice() {
            [section] if SECTIONS.contains(section) => expect_table(&value),
            ["service", key] => set_service(&mut self.service, key, &value),
            ["workers", key] => set_workers(&mut self.workers, key, &value),
            ["queue", "limits"] => expect_table(&value),
            ["queue", key] => set_queue(&mut self.queue, key, None, &value).map_err(|fault| {
                fault.map_or(Fault::Unknown(closest(key, QUEUE_KEYS)), Fault::Bad)
            }),
            ["schedules", name] => expect_table(&value).inspect(|()| {
                self.schedules.entry(name.to_string()).or_default();
            }),
            ["schedules", name, key] => set_schedule(
                self.schedules.entry(name.to_string()).or_default(),
                key,
                &value,
            )
            .map_err(|fault| fault.map_or(Fault::Unknown(closest(key, SCHEDULE_KEYS)), Fault::Bad)),
            ["queue", "limits", name] => set_queue(&mut self.queue, "limits", Some(name), &value)
                .map_err(|fault| fault.map_or(Fault::Unknown(None), Fault::Bad)),
            ["databases", name] => expect_table(&value).inspect(|()| {
                self.databases.entry(name.to_string()).or_default();
            }),
            ["databases", name, key] => set_database(
                self.databases.entry(name.to_string()).or_default(),
                key,
                &value,
            ),
            [section, ..] if !SECTIONS.contains(section) => {
                Err(Fault::Unknown(closest(section, SECTIONS)))
            }
            _ => Err(Fault::Unknown(None)),
        };
        // An unknown section is named alone: its keys are not the mistake.
        let key = match path.first() {
            Some(section) if !SECTIONS.contains(section) => section.to_string(),
            _ => path.join("."),
        };
        match result {
            Ok(()) => {
                self.failed.remove(&key);
                self.origins.insert(key, origin);
            }
            Err(fault) => {
                let message = match fault {
                    Fault::Unknown(hint) => format!("{key}: unknown key{}", did_you_mean(hint)),
                    Fault::Bad(reason) => format!("{key} = {}: {reason}", values::show(&value)),
                };
                self.problem(&origin, &message);
                self.failed.insert(key);
            }
        }
    }

    /// A check across keys, skipped when one of them was already reported as wrong; the
    /// message is prefixed with where `key` came from.
    fn check(&mut self, holds: bool, key: &str, others: &[&str], message: impl FnOnce() -> String) {
        let already_reported = std::iter::once(&key)
            .chain(others)
            .any(|k| self.failed.contains(*k));
        if !holds && !already_reported {
            let origin = self.origins.get(key).cloned().unwrap_or(Origin::File);
            self.problem(&origin, &message());
        }
    }

    fn check_workers(&mut self) {
        let w = self.workers.clone();
        self.check(w.count >= 1, "workers.count", &[], || {
            "workers.count = 0: at least one worker is needed".to_string()
        });
        self.check(w.max >= w.count, "workers.max", &["workers.count"], || {
            format!(
                "workers.max = {} is below workers.count = {} (max is the ceiling, count the floor)",
                w.max, w.count
            )
        });
        self.check(w.threads >= 1, "workers.threads", &[], || {
            "workers.threads = 0: a worker needs at least one thread to run jobs".to_string()
        });
        self.check(w.pipeline >= 1, "workers.pipeline", &[], || {
            "workers.pipeline = 0: each executor holds at least one job (1: no pipelining)"
                .to_string()
        });
    }

    fn check_service(&mut self) {
        let s = self.service.clone();
        self.check(s.queue_limit >= 1, "service.queue_limit", &[], || {
            "service.queue_limit = 0: the queue must hold at least one job".to_string()
        });
        self.check(s.max_clients >= 1, "service.max_clients", &[], || {
            "service.max_clients = 0: at least one client must be able to connect \
             (there is no unlimited: every client holds a descriptor and buffers)"
                .to_string()
        });
        self.check(
            s.max_request_bytes >= MIN_REQUEST_BYTES,
            "service.max_request_bytes",
            &[],
            || {
                format!(
                    "service.max_request_bytes = {}: too small for a request, use at least {MIN_REQUEST_BYTES}",
                    s.max_request_bytes
                )
            },
        );
    }

    /// Fills `pool_size = 0` from `workers.threads`, then checks `min_idle` against it.
    fn check_databases(&mut self) {
        let threads = self.workers.threads;
        let mut databases = std::mem::take(&mut self.databases);
        for (name, db) in &mut databases {
            if db.pool_size == 0 {
                db.pool_size = threads;
            }
            let min_idle = format!("databases.{name}.min_idle");
            let pool_size = format!("databases.{name}.pool_size");
            self.check(
                db.min_idle <= db.pool_size,
                &min_idle,
                &[&pool_size, "workers.threads"],
                || {
                    format!(
                        "{min_idle} = {} is above the pool size {} (pool_size 0 means workers.threads)",
                        db.min_idle, db.pool_size
                    )
                },
            );
            let checkout_timeout = format!("databases.{name}.checkout_timeout");
            self.check(
                !db.checkout_timeout.is_zero(),
                &checkout_timeout,
                &[],
                || {
                    format!(
                        "{checkout_timeout} = 0: it also bounds opening a connection, so no \
                     connection could ever be opened (use a short one, such as \"500ms\")"
                    )
                },
            );
        }
        self.databases = databases;
    }

    /// `queue.database` names a configured database (see [`check_database`]).
    fn check_queue(&mut self) {
        let known: Vec<String> = self.databases.keys().cloned().collect();
        let set = self.origins.contains_key("queue.database");
        let outcome = check_database(&mut self.queue, &known, set);
        self.check(outcome.is_ok(), "queue.database", &[], || {
            outcome.unwrap_err()
        });
        let (batch, limits) = (self.queue.batch, self.queue.limits.len());
        self.check(batch == 1 || limits == 0, "queue.batch", &[], || {
            format!(
                "queue.batch = {batch} with [queue.limits]: a cap is kept claim by claim, so \
                 batches need a queue without limits (set queue.batch = 1, or drop the limits)"
            )
        });
    }

    /// Each schedule names a job and when it ticks.
    fn check_schedules(&mut self) {
        let schedules = self.schedules.clone();
        for (name, schedule) in &schedules {
            let key = format!("schedules.{name}");
            self.check(!schedule.job.is_empty(), &format!("{key}.job"), &[], || {
                format!("{key}: `job` is missing: name the job each tick enqueues")
            });
            let when = [format!("{key}.cron"), format!("{key}.every")];
            self.check(
                schedule.every.is_some(),
                &key,
                &[&when[0], &when[1]],
                || format!("{key}: give `cron` (e.g. \"0 3 * * *\") or `every` (e.g. \"10m\")"),
            );
        }
    }

    /// Makes relative paths relative to the file's directory, so every command given the
    /// same file agrees on the socket and the catalog whatever its working directory. The
    /// directory is canonicalized (`..` and symlinked directories resolved by the system);
    /// the file name is kept, so a symlinked config file is still reloaded through its link.
    fn resolve_paths(&mut self) -> PathBuf {
        let file = match std::path::absolute(&self.file) {
            Ok(file) => file,
            Err(e) => {
                self.problem(
                    &Origin::File,
                    &format!("cannot make the path absolute: {e}"),
                );
                return self.file.clone();
            }
        };
        let (Some(parent), Some(name)) = (file.parent(), file.file_name()) else {
            return file;
        };
        let dir = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
        self.service.socket = dir.join(&self.service.socket);
        self.service.catalog = dir.join(&self.service.catalog);
        for db in self.databases.values_mut() {
            db.password_file = db.password_file.as_ref().map(|p| dir.join(p));
        }
        dir.join(name)
    }

    /// The environment's settings over the file's, then the checks across keys.
    fn finish_with(mut self, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
        layers::from_env(env)
            .into_iter()
            .for_each(|s| self.apply(s));
        self.finish()
    }

    fn finish(mut self) -> Result<Config, ConfigErrors> {
        self.check_service();
        self.check_workers();
        self.check_databases();
        self.check_queue();
        self.check_schedules();
        let file = self.resolve_paths();
        let config = Config {
            file,
            service: self.service,
            workers: self.workers,
            databases: self.databases,
            queue: self.queue,
            schedules: self.schedules,
        };
        if !self.problems.is_empty() {
            return Err(ConfigErrors {
                file: self.file,
                problems: self.problems,
                best_effort: Box::new(config),
            });
        }
        Ok(config)
    }
}

fn expect_table(value: &Value) -> Result<(), Fault> {
    match value {
        Value::Dict(..) => Ok(()),
        _ => Err(Fault::Bad("expected a table".to_string())),
    }
}

fn set_service(s: &mut ServiceConfig, key: &str, v: &Value) -> Result<(), Fault> {
    match key {
        "socket" => s.socket = values::path(v)?,
        "socket_mode" => s.socket_mode = values::octal_mode(v)?,
        "allowed_uids" => s.allowed_uids = values::id_list(v, "uids")?,
        "allowed_gids" => s.allowed_gids = values::id_list(v, "gids")?,
        "admin_uids" => s.admin_uids = values::id_list(v, "uids")?,
        "max_clients" => s.max_clients = values::whole_number(v)?,
        "client_idle_timeout" => s.client_idle_timeout = values::optional_duration(v)?,
        "queue_limit" => s.queue_limit = values::whole_number(v)?,
        "max_request_bytes" => s.max_request_bytes = values::whole_number(v)?,
        "shutdown_timeout" => s.shutdown_timeout = values::duration(v)?,
        "catalog" => s.catalog = values::path(v)?,
        "metrics_listen" => s.metrics_listen = values::optional_socket_address(v)?,
        _ => return Err(Fault::Unknown(closest(key, SERVICE_KEYS))),
    }
    Ok(())
}

fn set_workers(w: &mut WorkersConfig, key: &str, v: &Value) -> Result<(), Fault> {
    match key {
        "count" => w.count = values::whole_number(v)?,
        "max" => w.max = values::whole_number(v)?,
        "threads" => w.threads = values::whole_number(v)?,
        "pipeline" => w.pipeline = values::whole_number(v)?,
        "job_timeout" => w.job_timeout = values::duration(v)?,
        "max_jobs" => w.max_jobs = values::whole_number(v)?,
        "max_jobs_jitter" => w.max_jobs_jitter = values::whole_number(v)?,
        "max_rss" => w.max_rss = values::size(v)?,
        "idle_timeout" => w.idle_timeout = values::optional_duration(v)?,
        "heartbeat_timeout" => w.heartbeat_timeout = values::optional_duration(v)?,
        "min_lifetime" => w.min_lifetime = values::duration(v)?,
        "boot_timeout" => w.boot_timeout = values::duration(v)?,
        "restart_backoff_max" => w.restart_backoff_max = values::duration(v)?,
        "give_up_after" => w.give_up_after = values::whole_number(v)?,
        "log_jobs" => w.log_jobs = values::boolean(v)?,
        "slow_job" => w.slow_job = values::optional_duration(v)?,
        _ => return Err(Fault::Unknown(closest(key, WORKERS_KEYS))),
    }
    Ok(())
}

fn did_you_mean(hint: Option<&str>) -> String {
    hint.map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// The known name closest to a misspelt one, if it is close enough to be a typo (at most
/// two edits, transpositions counting as one).
pub(super) fn closest(typo: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (edit_distance(typo, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: Levenshtein plus adjacent transpositions.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests;

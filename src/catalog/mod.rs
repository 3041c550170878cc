//! The job catalog: the job files of DESIGN §7, loaded and checked once at start (and on
//! HUP), so that a request only has to bind its arguments and run prepared SQL; and the jobs
//! written in Rust, registered next to them.
//!
//! Loading reports every problem of every file at once, each naming its file and key, so an
//! operator fixes a broken catalog in one pass instead of one error per restart.

mod job_file;
mod numeric;
mod params;
mod rows;
mod types;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value as Json};
use tokio_postgres::types::{ToSql, Type};

pub use numeric::Numeric;
pub use params::{opens_transaction, rewrite, Rewritten};
pub use rows::row_to_json;
pub use types::{ParamType, SqlValue};

/// Every job, by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    jobs: BTreeMap<String, Arc<JobSpec>>,
}

/// One job: what every job has (name, description, timeout, retry policy), and what kind of
/// job it is.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The file's stem, or the name a handler was registered under.
    pub name: String,
    /// Default "": shown by the `jobs` op.
    pub description: String,
    /// Default: `workers.job_timeout`, passed to [`Catalog::load`].
    pub timeout: Duration,
    /// Default false: a job that is safe to run twice may be re-run once on another worker
    /// when its worker dies.
    pub retry_on_worker_lost: bool,
    /// How the job runs when it is enqueued as a durable job (DESIGN §12).
    pub durable: DurablePolicy,
    pub kind: JobKind,
}

/// A job's durable-run settings: the job file's `queue`, `priority`, `max_attempts`,
/// `retry_backoff` and `retry_backoff_max`.
#[derive(Debug, Clone, PartialEq)]
pub struct DurablePolicy {
    pub queue: String,
    /// Lower runs first.
    pub priority: i32,
    pub max_attempts: i32,
    /// The first retry's delay; each next one doubles, up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
}

impl Default for DurablePolicy {
    fn default() -> Self {
        DurablePolicy {
            queue: "default".to_string(),
            priority: 0,
            // River's and Oban's default (25 and 20): a day or more of retries with backoff,
            // enough to outlast an outage, not a poison job forever.
            max_attempts: 20,
            // Short enough that a blip costs a second; the doubling spaces out the rest.
            retry_backoff: Duration::from_secs(1),
            // An hour: past that, waiting longer rarely helps and delays the discard.
            retry_backoff_max: Duration::from_secs(3600),
        }
    }
}

/// A job file's statements, or a handler written in Rust.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    Sql(SqlJob),
    Rust(RustJob),
}

/// A job file's SQL, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlJob {
    /// Default "main": a key of the configuration's `[databases]`.
    pub database: String,
    /// Default true: all statements in one transaction. False for statements that cannot
    /// run in one (VACUUM, CREATE INDEX CONCURRENTLY).
    pub transaction: bool,
    /// Default 10000: rows beyond this are dropped and the answer says `"truncated": true`,
    /// so one careless query cannot make a worker hold a whole table in memory.
    pub max_rows: usize,
    /// In file order.
    pub params: Vec<ParamSpec>,
    /// At least one, run in order.
    pub statements: Vec<SqlStatement>,
}

/// A job written in Rust ([`crate::Service::handler`]): the worker calls it, and its
/// arguments are its own to check. The handler is held opaque: the catalog (and the master,
/// which reads the catalog) must not import the handler API, which opens connections; the
/// worker gets it back with `HandlerRef::of`.
#[derive(Clone)]
pub struct RustJob {
    pub(crate) handler: Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for RustJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RustJob(..)")
    }
}

impl PartialEq for RustJob {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.handler, &other.handler)
    }
}

/// How a handler job is listed and run, like the keys of a job file. The defaults: no
/// description, `workers.job_timeout`, no retry.
#[derive(Debug, Clone, Default)]
pub struct HandlerOptions {
    /// Shown by the `jobs` op.
    pub description: String,
    /// The timeout; `None` takes `workers.job_timeout`.
    pub timeout: Option<Duration>,
    /// Safe to run twice: re-run once on another worker if its worker dies.
    pub retry_on_worker_lost: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub ty: ParamType,
    /// Used when the request leaves the argument out; checked against `ty` at load.
    pub default: Option<Json>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SqlStatement {
    /// As written in the job file.
    pub source: String,
    /// With `:name` rewritten to `$1..$n`.
    pub sql: String,
    /// For `$1..$n`: the index into [`SqlJob::params`].
    pub params: Vec<usize>,
    /// The declared types of `$1..$n`, for `prepare_typed`.
    pub types: Vec<Type>,
    /// It opens a transaction block itself (`BEGIN`, `START TRANSACTION`), so the checkin
    /// after it must reset the connection.
    pub opens_transaction: bool,
}

impl Catalog {
    /// Every `*.toml` in `dir` (non-recursive, sorted); the file stem is the job name.
    /// All problems are reported at once, each naming the file (and key), e.g.
    /// "workers/add.toml: params.b: unknown type `int9` (expected one of bool, int2, ...)".
    pub fn load(dir: &Path, default_timeout: Duration) -> Result<Catalog, Vec<String>> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![format!(
                "{}: cannot read the job directory: {e}",
                dir.display()
            )]
        })?;
        let mut paths = Vec::new();
        let mut errors = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => paths.push(entry.path()),
                Err(e) => errors.push(format!(
                    "{}: cannot list the job directory: {e}",
                    dir.display()
                )),
            }
        }
        paths.retain(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file());
        paths.sort();
        let mut jobs = BTreeMap::new();
        for path in paths {
            let label = path.display();
            let Some(name) = path.file_stem().and_then(|stem| stem.to_str()) else {
                errors.push(format!(
                    "{label}: the file name is not UTF-8; rename the file"
                ));
                continue;
            };
            if !is_job_name(name) {
                errors.push(format!(
                    "{label}: the job name `{name}` may only contain letters, digits, `_`, `.` \
                     and `-`; rename the file"
                ));
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(format!("{label}: cannot read: {e}"));
                    continue;
                }
            };
            match JobSpec::from_toml(name, &text, default_timeout) {
                Ok(job) => {
                    jobs.insert(name.to_string(), Arc::new(job));
                }
                Err(problems) => {
                    errors.extend(problems.into_iter().map(|p| format!("{label}: {p}")))
                }
            }
        }
        if errors.is_empty() {
            Ok(Catalog { jobs })
        } else {
            Err(errors)
        }
    }

    /// Adds a job written in Rust; its name must not be taken by a job file or by another
    /// handler.
    pub(crate) fn add_handler(
        &mut self,
        name: &str,
        options: &HandlerOptions,
        handler: Arc<dyn std::any::Any + Send + Sync>,
        default_timeout: Duration,
    ) -> Result<(), String> {
        if let Some(taken) = self.jobs.get(name) {
            return Err(if matches!(taken.kind, JobKind::Rust(_)) {
                format!("handler `{name}`: registered twice; give each handler its own name")
            } else {
                format!("handler `{name}`: a job file of the catalog already has that name")
            });
        }
        let spec = JobSpec {
            name: name.to_string(),
            description: options.description.clone(),
            timeout: options.timeout.unwrap_or(default_timeout),
            retry_on_worker_lost: options.retry_on_worker_lost,
            durable: DurablePolicy::default(),
            kind: JobKind::Rust(RustJob { handler }),
        };
        self.jobs.insert(name.to_string(), Arc::new(spec));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<JobSpec>> {
        self.jobs.get(name)
    }

    /// Job names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.jobs.keys().map(String::as_str)
    }

    /// Jobs, sorted by name.
    pub fn jobs(&self) -> impl Iterator<Item = &Arc<JobSpec>> {
        self.jobs.values()
    }
}

/// Job names travel in requests and logs: `[A-Za-z0-9_.-]+` keeps them unambiguous there.
fn is_job_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl JobSpec {
    /// The SQL of a job file; `None` for a Rust job.
    pub fn sql(&self) -> Option<&SqlJob> {
        match &self.kind {
            JobKind::Sql(sql) => Some(sql),
            JobKind::Rust(_) => None,
        }
    }

    /// The configured database a job file runs on; "" for a Rust job, which picks its own
    /// (`ctx.db(..)`).
    pub fn database(&self) -> &str {
        self.sql().map_or("", |sql| sql.database.as_str())
    }

    /// The `jobs` answer's `kind`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            JobKind::Sql(_) => "sql",
            JobKind::Rust(_) => "rust",
        }
    }

    /// Checks a request's arguments before the job is queued, so bad ones never reach a
    /// worker (which binds them again). A Rust job's arguments are its own to check.
    pub fn check_args(&self, args: &Map<String, Json>) -> Result<(), String> {
        match &self.kind {
            JobKind::Sql(sql) => sql.bind(args).map(drop),
            JobKind::Rust(_) => Ok(()),
        }
    }
}

impl SqlJob {
    /// Checks and converts the request's args into one value per param (in `params` order).
    /// Errors are `invalid_args` messages naming the argument; several are joined by "; ".
    /// JSON null binds SQL NULL for any type; defaults apply when an argument is absent.
    pub fn bind(&self, args: &Map<String, Json>) -> Result<Vec<SqlValue>, String> {
        let mut errors = Vec::new();
        let mut values = Vec::with_capacity(self.params.len());
        for param in &self.params {
            match args.get(&param.name).or(param.default.as_ref()) {
                Some(json) => match SqlValue::from_json(&param.name, param.ty, json) {
                    Ok(value) => values.push(value),
                    Err(e) => errors.push(e),
                },
                None => errors.push(format!("missing argument `{}` ({})", param.name, param.ty)),
            }
        }
        for name in args.keys() {
            if !self.params.iter().any(|param| &param.name == name) {
                let takes: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
                errors.push(if takes.is_empty() {
                    format!("unknown argument `{name}` (this job takes no arguments)")
                } else {
                    format!(
                        "unknown argument `{name}` (this job takes: {})",
                        takes.join(", ")
                    )
                });
            }
        }
        if errors.is_empty() {
            Ok(values)
        } else {
            Err(errors.join("; "))
        }
    }
}

impl SqlStatement {
    /// The values for this statement in `$n` order.
    ///
    /// Panics if `values` is shorter than the job's params: pass what [`JobSpec::bind`] of
    /// the same job returned.
    pub fn args<'a>(&self, values: &'a [SqlValue]) -> Vec<&'a (dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|&index| &values[index] as &(dyn ToSql + Sync))
            .collect()
    }
}

#[cfg(test)]
mod tests;

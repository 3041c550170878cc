//! `[queue]`: durable jobs — where they live, how they are found, how many run at once.
//!
//! Its own file so the durable-jobs keys, their defaults and their reasons sit together;
//! the loader calls [`set_queue`] for `queue.KEY` and `queue.limits.NAME`.

use std::collections::BTreeMap;
use std::time::Duration;

use figment::value::Value;

use super::values;

/// The keys of `[queue]` (besides the `[queue.limits]` table).
pub const QUEUE_KEYS: &[&str] = &[
    "database",
    "migrate",
    "poll_interval",
    "concurrency",
    "retention",
    "discarded_retention",
    "lease",
    "host_id",
    "listen",
    "limits",
    "batch",
];

/// The largest `queue.batch`: a batch's jobs commit together, so one slow job holds back
/// this many; past a few dozen the claim and the commit are already a small share of a job.
pub const MAX_BATCH: usize = 64;

/// `queue.migrate`: who creates and upgrades the `forkpool` schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrate {
    /// The queue keeper migrates at start, under an advisory lock.
    Auto,
    /// Only `forkpool migrate`; a service finding an old schema says so and runs no durable job.
    Manual,
}

/// `[queue]`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// The `[databases.NAME]` holding `forkpool.jobs`; `None` turns durable jobs off.
    pub database: Option<String>,
    pub migrate: Migrate,
    /// How often idle slots look for work without a wake-up: it bounds how late a scheduled
    /// job, a retry or a job whose NOTIFY was lost starts.
    pub poll_interval: Duration,
    /// Durable jobs running at once on this host; `None`: every worker slot.
    pub concurrency: Option<usize>,
    /// Completed and cancelled jobs are kept this long.
    pub retention: Duration,
    /// Discarded jobs are kept this long: their errors are what someone will want to read.
    pub discarded_retention: Duration,
    /// How long a running job's claim holds without renewal before another host may rescue it.
    pub lease: Duration,
    /// This host's stable identity in `forkpool.jobs.host`; `None`: the host name and the
    /// socket path, so two services on one machine never take each other's jobs back.
    pub host_id: Option<String>,
    /// One session per host `LISTEN`s for new jobs; false falls back to polling alone
    /// (behind PgBouncer in transaction mode, where LISTEN does not work).
    pub listen: bool,
    /// Caps per named queue on this host (`[queue.limits] emails = 2`).
    pub limits: BTreeMap<String, usize>,
    /// Jobs one worker thread claims at once and runs in one transaction when they are
    /// exactly-once SQL jobs of one statement (DESIGN §12, Batches). 1, the default: one
    /// job per claim and per transaction, so no job waits behind another or commits with it.
    /// Above 1 only without `[queue.limits]` (a cap is kept claim by claim).
    pub batch: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            // On by default against `main`, so the quick start serves durable jobs.
            database: Some("main".to_string()),
            // A fresh machine should just work; operators who gate schema changes say manual.
            migrate: Migrate::Auto,
            // River's and Oban's fetch poll is 1 s: one cheap indexed query per idle slot.
            poll_interval: Duration::from_secs(1),
            concurrency: None,
            // A day of history to inspect, without the table growing without bound.
            retention: Duration::from_secs(24 * 3600),
            // A week: a failure found on Monday can still be read from Friday's rows.
            discarded_retention: Duration::from_secs(7 * 24 * 3600),
            // Long enough for a pause (GC, failover) not to cost a rescue; short enough that
            // a dead host's jobs come back within the minute.
            lease: Duration::from_secs(30),
            host_id: None,
            listen: true,
            limits: BTreeMap::new(),
            batch: 1,
        }
    }
}

/// Applies `queue.KEY = value`, or `queue.limits.NAME = value` when `limit` names a queue.
pub fn set_queue(
    q: &mut QueueConfig,
    key: &str,
    limit: Option<&str>,
    v: &Value,
) -> Result<(), Option<String>> {
    let bad = Some;
    match (key, limit) {
        ("limits", Some(name)) => {
            let cap: usize = values::whole_number(v).map_err(bad)?;
            if cap == 0 {
                return Err(bad(
                    "a queue's cap must be at least 1 (pause a queue to stop it instead)".into(),
                ));
            }
            q.limits.insert(name.to_string(), cap);
        }
        ("database", None) => {
            let name = values::text(v).map_err(bad)?;
            q.database = (!name.is_empty()).then_some(name);
        }
        ("migrate", None) => {
            q.migrate = match values::text(v).map_err(bad)?.as_str() {
                "auto" => Migrate::Auto,
                "manual" => Migrate::Manual,
                _ => return Err(bad("expected \"auto\" or \"manual\"".into())),
            }
        }
        ("poll_interval", None) => {
            let every = values::duration(v).map_err(bad)?;
            if every.is_zero() {
                return Err(bad(
                    "must be above 0 (it is how often idle slots look for work)".into(),
                ));
            }
            q.poll_interval = every;
        }
        ("concurrency", None) => {
            let n: usize = values::whole_number(v).map_err(bad)?;
            q.concurrency = (n > 0).then_some(n);
        }
        ("retention", None) => q.retention = values::duration(v).map_err(bad)?,
        ("discarded_retention", None) => {
            q.discarded_retention = values::duration(v).map_err(bad)?
        }
        ("lease", None) => {
            let lease = values::duration(v).map_err(bad)?;
            if lease < Duration::from_secs(1) {
                return Err(bad("must be at least 1s".into()));
            }
            q.lease = lease;
        }
        ("listen", None) => q.listen = values::boolean(v).map_err(bad)?,
        ("batch", None) => {
            let n: usize = values::whole_number(v).map_err(bad)?;
            if !(1..=MAX_BATCH).contains(&n) {
                return Err(bad(format!(
                    "must be from 1 to {MAX_BATCH} (jobs a worker thread claims at once)"
                )));
            }
            q.batch = n;
        }
        ("host_id", None) => {
            let id = values::text(v).map_err(bad)?;
            q.host_id = (!id.is_empty()).then_some(id);
        }
        _ => return Err(None),
    }
    Ok(())
}

/// Checks that `queue.database` names one of the `known` databases. Left at its default
/// (`main`, not `set` by the file or the environment) in a configuration without
/// `[databases.main]`, it turns durable jobs off instead, so a configuration that predates
/// them keeps loading.
pub fn check_database(q: &mut QueueConfig, known: &[String], set: bool) -> Result<(), String> {
    let Some(database) = q.database.clone() else {
        return Ok(());
    };
    if known.contains(&database) {
        return Ok(());
    }
    if !set {
        q.database = None;
        return Ok(());
    }
    let configured = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    Err(format!(
        "queue.database = {database:?} names no [databases.{database}] section (configured: \
         {configured}); set it to one of them, or to \"\" to turn durable jobs off"
    ))
}

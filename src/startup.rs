//! Start-up: loads the configuration, the job catalog and the databases, checks them
//! together (every problem at once, the connection budget among them) and starts the master
//! with what it cannot build itself: how a forked child becomes a worker. `forkpool run`,
//! `forkpool check` and [`crate::Service::run`] come through here, and the master's SIGHUP
//! calls the same check.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::databases::{self, Databases};
use crate::exit::EXIT_USAGE;
use crate::handler::Handlers;
use crate::keeper::{self, KeeperSetup};
use crate::master::{Generation, KeeperMain, Loader, Master, WorkerMain};
use crate::pool;
use crate::queue::claim::Holder;
use crate::worker::{self, DurableSetup, WorkerSetup};

/// Everything a service runs from, checked.
pub(crate) struct Loaded {
    pub(crate) config: Config,
    pub(crate) catalog: Catalog,
    pub(crate) databases: Databases,
}

impl Loaded {
    /// What the master holds: the configuration and catalog it reads itself, and the entries
    /// that carry the databases to the workers and the queue keeper (the master never sees
    /// them).
    fn into_generation(self) -> Generation {
        let catalog = Arc::new(self.catalog);
        let databases = Arc::new(self.databases);
        let config = Arc::new(self.config);
        let durable = durable_identity(&config);
        let threads = config.workers.threads;
        let pipeline = config.workers.pipeline;
        let worker_catalog = Arc::clone(&catalog);
        let worker_databases = Arc::clone(&databases);
        let lease = config.queue.lease;
        let record_backend = config.queue.listen;
        let worker_durable = durable.clone();
        let worker_main: WorkerMain = Arc::new(move |channel, master, slot, number| {
            let durable = worker_durable.as_ref().map(|(database, host, instance)| {
                Arc::new(DurableSetup {
                    holder: Holder {
                        host: host.clone(),
                        instance: *instance,
                        worker: number as i64,
                    },
                    database: database.clone(),
                    lease,
                    record_backend,
                    jobs: worker_catalog.names().map(str::to_string).collect(),
                })
            });
            let setup = WorkerSetup {
                slot,
                threads,
                pipeline,
                catalog: Arc::clone(&worker_catalog),
                databases: Arc::clone(&worker_databases),
                durable,
            };
            worker::run(channel, master, setup)
        });
        let keeper_main: Option<KeeperMain> = durable.map(|(database, host, instance)| {
            let catalog = Arc::clone(&catalog);
            let config = Arc::clone(&config);
            let main: KeeperMain = Arc::new(move |channel, master| {
                let setup = KeeperSetup {
                    catalog: Arc::clone(&catalog),
                    databases: Arc::clone(&databases),
                    queue: config.queue.clone(),
                    database: database.clone(),
                    host: host.clone(),
                    instance,
                    schedules: config
                        .schedules
                        .iter()
                        .map(|(name, s)| (name.clone(), s.clone()))
                        .collect(),
                };
                keeper::run(channel, master, setup)
            });
            main
        });
        Generation {
            config,
            catalog,
            worker_main,
            keeper_main,
        }
    }
}

/// Where durable jobs live and who this service is in their table: `queue.database`, the
/// host's stable identity and this process's instance; `None` when durable jobs are off.
fn durable_identity(config: &Config) -> Option<(String, String, i64)> {
    let database = config.queue.database.clone()?;
    let host = config.queue.host_id.clone().unwrap_or_else(|| {
        // The socket path tells apart two services on one machine; both are stable across
        // restarts, so a restarted service recognises the jobs its earlier instance held.
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string());
        format!("{hostname}:{}", config.service.socket.display())
    });
    Some((database, host, instance_id()))
}

/// This master process's instance number: drawn once per process (a reload keeps it), so the
/// jobs of an earlier, killed instance of the same host are told apart from this one's.
fn instance_id() -> i64 {
    static INSTANCE: OnceLock<i64> = OnceLock::new();
    *INSTANCE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mixed = fastrand::u64(..) ^ nanos ^ (u64::from(std::process::id()) << 40);
        (mixed & (i64::MAX as u64)) as i64
    })
}

/// Checks what the configuration names — its databases, the job files and the Rust handlers
/// registered with [`crate::Service`] — and reports every problem before anything starts.
pub(crate) fn check(config: Config, handlers: &Handlers) -> Result<Loaded, Vec<String>> {
    let catalog = Catalog::load(&config.service.catalog, config.workers.job_timeout);
    let databases = databases::from_config(&config);
    let mut problems = Vec::new();
    let mut catalog = catalog.map_err(|e| problems.extend(e)).ok();
    let databases = databases.map_err(|e| problems.extend(e)).ok();
    if let Some(catalog) = &mut catalog {
        for registration in handlers {
            let added = catalog.add_handler(
                &registration.name,
                &registration.options,
                Arc::new(registration.handler.clone()),
                config.workers.job_timeout,
            );
            problems.extend(added.err());
        }
        for (name, schedule) in &config.schedules {
            match catalog.get(&schedule.job) {
                None => problems.push(format!(
                    "schedules.{name}.job: no job named `{}` in the catalog",
                    schedule.job
                )),
                Some(spec) => problems.extend(
                    spec.check_args(&schedule.args)
                        .err()
                        .map(|e| format!("schedules.{name}.args: {e}")),
                ),
            }
            if config.queue.database.is_none() && !config.schedules.is_empty() {
                problems.push(format!(
                    "schedules.{name}: schedules enqueue durable jobs, which are off \
                     (queue.database = \"\")"
                ));
            }
        }
        for job in catalog.jobs() {
            let Some(sql) = job.sql() else { continue };
            if !config.databases.contains_key(&sql.database) {
                problems.push(format!(
                    "job `{}` uses database `{}`, which has no [databases.{}] section",
                    job.name, sql.database, sql.database
                ));
            }
        }
    }
    let pools: Vec<(&str, usize)> = config
        .databases
        .iter()
        .map(|(name, db)| (name.as_str(), db.pool_size))
        .collect();
    // The queue keeper's sessions on the queue's database: its requests' and its LISTEN's.
    let keeper_sessions = match &config.queue.database {
        Some(_) if config.queue.listen => 2,
        Some(_) => 1,
        None => 0,
    };
    for (name, db) in &config.databases {
        if db.max_connections_budget > 0 {
            let others = if config.queue.database.as_deref() == Some(name.as_str()) {
                keeper_sessions
            } else {
                0
            };
            let budget = db.max_connections_budget;
            if let Err(problem) =
                pool::check_connection_budget(config.workers.max, &pools, others, budget)
            {
                problems.push(format!(
                    "databases.{name}.max_connections_budget: {problem}"
                ));
            }
        }
    }
    match (catalog, databases) {
        (Some(catalog), Some(databases)) if problems.is_empty() => Ok(Loaded {
            config,
            catalog,
            databases,
        }),
        _ => Err(problems),
    }
}

/// Loads the configuration; on failure prints every problem — the job catalog's too, found
/// through the configuration's best effort, so one run shows everything to fix.
pub(crate) fn load_config(path: Option<&Path>) -> Result<Config, i32> {
    Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        let config = &errors.best_effort;
        // Without a file the catalog's place is a guess: its problems would only mislead.
        if !config.file.exists() {
            return EXIT_USAGE;
        }
        if let Err(problems) = Catalog::load(&config.service.catalog, config.workers.job_timeout) {
            for problem in problems {
                eprintln!("forkpool: {problem}");
            }
        }
        EXIT_USAGE
    })
}

/// The configuration, the catalog and the databases, or the exit code after every problem
/// was printed.
pub(crate) fn load(config: Option<&Path>, handlers: &Handlers) -> Result<Loaded, i32> {
    check(load_config(config)?, handlers).map_err(|problems| {
        for problem in problems {
            eprintln!("forkpool: {problem}");
        }
        EXIT_USAGE
    })
}

/// `forkpool run` and [`crate::Service::run`]: loads and checks everything, then serves until
/// stopped; the exit code.
pub(crate) fn run(config: Option<&Path>, handlers: &Handlers) -> i32 {
    let loaded = match load(config, handlers) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    raise_descriptor_limit();
    let handlers = handlers.clone();
    let reload: Loader = Box::new(move |file: &Path| {
        let config = Config::load(Some(file)).map_err(|errors| errors.problems.clone())?;
        check(config, &handlers).map(Loaded::into_generation)
    });
    match Master::start(loaded.into_generation(), reload) {
        Ok(master) => master.run(),
        Err(problem) => {
            eprintln!("forkpool: {problem}");
            EXIT_USAGE
        }
    }
}

/// Every client holds a descriptor in the master; the usual soft limit (1024) would cap the
/// service near a thousand clients although the hard limit allows far more.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

//! The `forkpool` command line (DESIGN §4).
//!
//! Exit codes: 0 success; 1 the job or request failed (the answer says why); 2 bad usage or
//! configuration; 3 the service could not be reached.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::client;
use crate::exit::{EXIT_FAILED, EXIT_OK};
use crate::service::Service;
use crate::startup::{self, Loaded};

#[derive(Parser)]
#[command(
    name = "forkpool",
    version,
    about = "A prefork job runner for PostgreSQL work"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service in the foreground.
    Run {
        /// The configuration file [default: $FORKPOOL_CONFIG, else config/forkpool.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run one job and print the answer as JSON.
    Submit {
        #[command(flatten)]
        target: Target,
        /// Shorten the job's timeout for this run (never lengthen it).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// The job's name (see `workers/*.toml`).
        job: String,
        /// The job's arguments as a JSON object, e.g. '{"a": 1, "b": 2}'.
        args: Option<String>,
    },
    /// Show workers, queue and pools.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the status as JSON.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print the status as Prometheus text exposition (for a textfile collector).
        #[arg(long)]
        prometheus: bool,
    },
    /// Store a durable job (DESIGN §12) and print its id; with --wait, its final result.
    Enqueue {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        job: client::durable::EnqueueArgs,
    },
    /// Print a durable job's state and result.
    Result {
        #[command(flatten)]
        target: Target,
        /// Wait until the job ends, at most this long ("30", "5m").
        #[arg(long, value_name = "SECONDS", value_parser = client::parse_duration)]
        wait: Option<std::time::Duration>,
        /// The job's id, as `enqueue` printed it.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
    /// Cancel a durable job: at once if it waits, its query if it runs.
    Cancel {
        #[command(flatten)]
        target: Target,
        /// The job's id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
    /// List the durable queues with their counts; pause or resume one on every host.
    Queue {
        #[command(flatten)]
        target: Target,
        /// Print the queues as JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<QueueAction>,
    },
    /// Create or upgrade the durable jobs' schema in queue.database.
    Migrate {
        /// The configuration file [default: $FORKPOOL_CONFIG, else config/forkpool.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load the service with one job from many clients: jobs/s and latency percentiles.
    Bench {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        options: client::bench::BenchOptions,
    },
    /// Try forkpool with one command: a private PostgreSQL in ./.forkpool-dev (kept between
    /// runs), the service on it with the job files, until Ctrl-C.
    Dev {
        /// The job files to serve.
        #[arg(long, value_name = "DIR", default_value = "workers")]
        workers: PathBuf,
        /// Wipe ./.forkpool-dev first: a new cluster, nothing kept.
        #[arg(long)]
        fresh: bool,
        /// Install the PostgreSQL server programs when they are missing
        /// (scripts/install-postgres.sh: apt-get, through sudo unless root).
        #[arg(long)]
        install: bool,
    },
    /// Validate the configuration and the job catalog.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also connect to each database and report its version, TLS and max_connections.
        #[arg(long)]
        db: bool,
    },
}

/// What `forkpool queue` does besides listing.
#[derive(Subcommand)]
enum QueueAction {
    /// Stop claiming the queue's jobs on every host (enqueueing goes on).
    Pause {
        /// The queue's name.
        queue: String,
    },
    /// Claim the queue's jobs again, on every host.
    Resume {
        /// The queue's name.
        queue: String,
    },
}

/// Where a client command finds the service. Global, so that `forkpool queue pause NAME
/// --socket PATH` reads as well as `forkpool queue --socket PATH pause NAME`.
#[derive(clap::Args)]
struct Target {
    /// The service's socket [default: $FORKPOOL_SOCKET, else the configured service.socket].
    #[arg(long, env = "FORKPOOL_SOCKET", global = true)]
    socket: Option<PathBuf>,
    /// The configuration whose service.socket to use.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

/// Parses the command line, runs the command, returns the exit code: the `forkpool` binary
/// (src/main.rs), which registers no handler.
#[doc(hidden)]
pub fn main() -> i32 {
    main_with(Service::new())
}

/// The `forkpool` command line for a program of your own that registers Rust handlers:
/// `run` serves them next to the job files, `check` checks them too, and `submit`, `status`,
/// `enqueue`, `result`, `cancel`, `queue` and `bench` talk to a running service as `forkpool` does. Parses the process's arguments
/// (exiting with usage on bad ones), sets up logging to stderr (`RUST_LOG`, journald-aware),
/// runs the command and returns the exit code for [`std::process::exit`]: 0 success, 1 the
/// job or request failed, 2 bad usage or configuration, 3 the service could not be reached.
///
/// ```no_run
/// use forkpool::handler::{JobContext, JobError};
/// use serde_json::{json, Map, Value};
///
/// fn ping(_ctx: &mut JobContext<'_>, _args: &Map<String, Value>) -> Result<Value, JobError> {
///     Ok(json!("pong"))
/// }
///
/// fn main() {
///     // `my-service run --config config/forkpool.toml`, `my-service submit ping`, ...
///     let service = forkpool::Service::new().handler("ping", ping);
///     std::process::exit(forkpool::cli::main_with(service));
/// }
/// ```
pub fn main_with(service: Service) -> i32 {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Run { config } => startup::run(config.as_deref(), service.handlers()),
        Command::Submit {
            target,
            timeout_ms,
            job,
            args,
        } => match socket_path(&target) {
            Ok(socket) => client::submit(&socket, &job, args.as_deref(), timeout_ms),
            Err(code) => code,
        },
        Command::Status {
            target,
            json,
            prometheus,
        } => match socket_path(&target) {
            Ok(socket) => client::status(&socket, json, prometheus),
            Err(code) => code,
        },
        Command::Enqueue { target, job } => match socket_path(&target) {
            Ok(socket) => client::durable::enqueue(&socket, &job),
            Err(code) => code,
        },
        Command::Result { target, wait, id } => match socket_path(&target) {
            Ok(socket) => client::durable::result(&socket, id, wait),
            Err(code) => code,
        },
        Command::Cancel { target, id } => match socket_path(&target) {
            Ok(socket) => client::durable::cancel(&socket, id),
            Err(code) => code,
        },
        Command::Queue {
            target,
            json,
            action,
        } => match socket_path(&target) {
            Ok(socket) => match action {
                None => client::queues::list(&socket, json),
                Some(QueueAction::Pause { queue }) => {
                    client::queues::set_paused(&socket, &queue, true)
                }
                Some(QueueAction::Resume { queue }) => {
                    client::queues::set_paused(&socket, &queue, false)
                }
            },
            Err(code) => code,
        },
        Command::Migrate { config } => match startup::load_config(config.as_deref()) {
            Ok(config) => client::migrate::migrate(&config),
            Err(code) => code,
        },
        Command::Check { config, db } => check(config.as_deref(), db, &service),
        Command::Dev {
            workers,
            fresh,
            install,
        } => crate::dev::run(&crate::dev::DevOptions {
            workers,
            fresh,
            install,
        }),
        Command::Bench { target, options } => match socket_path(&target) {
            Ok(socket) => client::bench::run(&socket, &options),
            Err(code) => code,
        },
    }
}

/// Logs go to stderr, one line per event. Under journald (`JOURNAL_STREAM` set, as systemd
/// does for a service whose stderr is the journal) each line starts with its syslog priority
/// `<N>` and carries no timestamp: journald parses the one and adds the other. Colour only
/// when stderr is a terminal, so files and pipes get plain text.
fn init_logging() {
    use std::io::IsTerminal;
    // tokio-postgres logs every server notice at info (a reset's "there is no transaction in
    // progress" among them); the pool reports what matters under `forkpool::pool`.
    let mut builder = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,tokio_postgres=warn"),
    );
    // tokio_postgres logs every query's bind parameters (job arguments) at debug: unless
    // RUST_LOG names it, it stays at warn whatever the level, so `RUST_LOG=debug` does not
    // put arguments in the journal.
    if !std::env::var("RUST_LOG").is_ok_and(|filter| filter.contains("tokio_postgres")) {
        builder.filter_module("tokio_postgres", log::LevelFilter::Warn);
    }
    builder.format_target(false);
    builder.write_style(if std::io::stderr().is_terminal() {
        env_logger::WriteStyle::Auto
    } else {
        env_logger::WriteStyle::Never
    });
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format(|out, record| {
            let message = record.args().to_string().replace('\n', " ");
            writeln!(out, "<{}>{message}", syslog_priority(record.level()))
        });
    }
    builder.init();
}

/// The syslog priority journald reads from a `<N>` line prefix (sd-daemon(3)).
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

fn check(config: Option<&Path>, db: bool, service: &Service) -> i32 {
    let Loaded {
        config,
        catalog,
        databases,
    } = match startup::load(config, service.handlers()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    println!("config {}: ok", config.file.display());
    if let Some(warning) = config.exposed_password_warning() {
        eprintln!("forkpool: warning: {warning}");
    }
    println!(
        "catalog {}: {} jobs ({})",
        config.service.catalog.display(),
        catalog.names().count(),
        catalog.names().collect::<Vec<_>>().join(", ")
    );
    let mut code = EXIT_OK;
    for (name, spec) in &databases {
        println!("database {name}: {}", spec.conninfo);
        if db {
            let may_open = config.workers.max * config.databases[name].pool_size;
            match crate::probe::probe(name, spec, may_open) {
                Ok(report) => println!("  {report}"),
                Err(problem) => {
                    println!("  unreachable: {problem}");
                    code = EXIT_FAILED;
                }
            }
        }
    }
    code
}

/// The socket a client command talks to.
fn socket_path(target: &Target) -> Result<PathBuf, i32> {
    if let Some(socket) = &target.socket {
        return Ok(socket.clone());
    }
    startup::load_config(target.config.as_deref()).map(|config| config.service.socket)
}

//! The `forkpool` command line (DESIGN §4).
//!
//! Exit codes: 0 success; 1 the job or request failed (the answer says why); 2 bad usage or
//! configuration; 3 the service could not be reached.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use crate::client;
use crate::exit::{EXIT_FAILED, EXIT_OK};
use crate::logging::{self, LogOptions};
use crate::service::Service;
use crate::startup::{self, Loaded};

/// The exit codes, shown under every command's `--help` (DESIGN §4, `crate::exit`).
macro_rules! exit_codes {
    () => {
        "Exit codes: 0 success; 1 the job or request failed (the answer says why); \
         2 bad usage or configuration; 3 the service could not be reached."
    };
}

/// A command's `--help` epilogue: one example, then the exit codes.
macro_rules! example {
    ($($line:literal),+ $(,)?) => {
        concat!("Example:\n", $("  ", $line, "\n",)+ "\n", exit_codes!())
    };
}

mod docs;

#[derive(Parser)]
#[command(
    name = "forkpool",
    version,
    about = "A prefork job runner for PostgreSQL work",
    after_help = concat!(
        "The configuration is -c/--config, else $FORKPOOL_CONFIG, else ./config/forkpool.toml, \
         else /etc/forkpool/forkpool.toml ($FORKPOOL_SYSTEM_CONFIG_DIR replaces /etc/forkpool). \
         Client commands talk to --socket, else $FORKPOOL_SOCKET, else the configuration's \
         service.socket.\n\n",
        exit_codes!()
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service in the foreground.
    #[command(after_help = example!("forkpool run -c /etc/forkpool/forkpool.toml"))]
    Run {
        #[command(flatten)]
        file: ConfigFile,
        #[command(flatten)]
        log: LogOptions,
    },
    /// Run one job and print the answer as JSON.
    #[command(after_help = example!(r#"forkpool submit add '{"a": 1, "b": 2}'"#))]
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
    #[command(after_help = example!("forkpool status --json"))]
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
    #[command(after_help = example!(r#"forkpool enqueue add '{"a": 1}' --in 5m --wait"#))]
    Enqueue {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        job: client::durable::EnqueueArgs,
    },
    /// Print a durable job's state and result.
    #[command(after_help = example!("forkpool result 42 --wait 30"))]
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
    #[command(after_help = example!("forkpool cancel 42"))]
    Cancel {
        #[command(flatten)]
        target: Target,
        /// The job's id.
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },
    /// List the durable queues with their counts; pause or resume one on every host.
    #[command(after_help = example!("forkpool queue pause reports"))]
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
    #[command(after_help = example!("forkpool migrate -c /etc/forkpool/forkpool.toml"))]
    Migrate {
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Load the service with one job from many clients: jobs/s and latency percentiles.
    #[command(after_help = example!("forkpool bench --job add --args '{\"a\": 1}' --duration 10"))]
    Bench {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        options: client::bench::BenchOptions,
    },
    /// Try forkpool with one command: a private PostgreSQL in ./.forkpool-dev (kept between
    /// runs), the service on it with the job files, until Ctrl-C.
    #[command(after_help = example!("forkpool dev", "forkpool dev --fresh --workers ./my-jobs"))]
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
    #[command(after_help = example!("forkpool check --db"))]
    Check {
        #[command(flatten)]
        file: ConfigFile,
        /// Also connect to each database and report its version, TLS and max_connections.
        #[arg(long)]
        db: bool,
    },
    /// Check that the service answers: the round trip to its master.
    #[command(after_help = example!("forkpool ping"))]
    Ping {
        #[command(flatten)]
        target: Target,
    },
    /// List the job catalog: each job's kind, database, timeout and parameters.
    #[command(after_help = example!("forkpool jobs --json"))]
    Jobs {
        #[command(flatten)]
        target: Target,
        /// Print the `jobs` answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reload the configuration and the catalog (as SIGHUP); returns once the new workers
    /// serve, or with every problem of a refused configuration.
    #[command(after_help = example!("forkpool reload --timeout 2m"))]
    Reload {
        #[command(flatten)]
        target: Target,
        /// Wait at most this long for the new generation to serve ("90", "5m").
        #[arg(long, value_name = "DURATION", default_value = "5m",
              value_parser = client::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Stop the service: gracefully as SIGTERM, or --fast as SIGINT.
    #[command(after_help = example!("forkpool stop --wait"))]
    Stop {
        #[command(flatten)]
        target: Target,
        /// Cancel running jobs and stop at once (answered shutting_down).
        #[arg(long)]
        fast: bool,
        /// Return only once the service has exited.
        #[arg(long)]
        wait: bool,
        /// With --wait, wait at most this long ("90", "5m").
        #[arg(long, value_name = "DURATION", default_value = "5m",
              value_parser = client::parse_duration, requires = "wait")]
        timeout: std::time::Duration,
    },
    /// Set how many workers serve (as SIGTTIN/SIGTTOU): +N more, -N fewer, or N exactly,
    /// within workers.count..=workers.max.
    #[command(after_help = example!("forkpool scale +2", "forkpool scale -1", "forkpool scale 4"))]
    Scale {
        #[command(flatten)]
        target: Target,
        /// +N, -N or N.
        #[arg(allow_hyphen_values = true, value_parser = client::admin::parse_scale)]
        workers: crate::protocol::Scale,
    },
    /// Print the shell completion script, e.g. `forkpool completions bash`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff); with --dir, write it and one page per subcommand there.
    Man {
        /// Write forkpool.1 and forkpool-SUBCOMMAND.1 into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The configuration file of a command that loads one.
#[derive(clap::Args)]
struct ConfigFile {
    /// The configuration file [default: ./config/forkpool.toml, else
    /// /etc/forkpool/forkpool.toml].
    #[arg(short = 'c', long, value_name = "PATH", env = "FORKPOOL_CONFIG",
          value_parser = config_path)]
    config: Option<PathBuf>,
}

impl ConfigFile {
    /// The file named, if any: an empty `FORKPOOL_CONFIG` names none (as before clap read it).
    fn path(&self) -> Option<&Path> {
        named(&self.config)
    }
}

/// Takes an empty value (an empty `FORKPOOL_CONFIG`), which [`named`] then ignores: clap's
/// own path parser would refuse it and stop every command.
fn config_path(text: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(text))
}

/// A configuration path given with a value that is not empty.
fn named(config: &Option<PathBuf>) -> Option<&Path> {
    config
        .as_deref()
        .filter(|path| !path.as_os_str().is_empty())
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
    /// The configuration whose service.socket to use [default: ./config/forkpool.toml, else
    /// /etc/forkpool/forkpool.toml].
    #[arg(short = 'c', long, value_name = "PATH", env = "FORKPOOL_CONFIG", global = true,
          value_parser = config_path)]
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
/// `enqueue`, `result`, `cancel`, `queue`, `bench`, `ping`, `jobs`, `reload`, `stop` and
/// `scale` talk to a running service as `forkpool` does. Parses the process's arguments
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
    let other_commands_log = LogOptions::default();
    logging::init(match &cli.command {
        Command::Run { log, .. } => log,
        _ => &other_commands_log,
    });
    match cli.command {
        Command::Run { file, .. } => startup::run(file.path(), service.handlers()),
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
        Command::Migrate { file } => match startup::load_config(file.path()) {
            Ok(config) => client::migrate::migrate(&config),
            Err(code) => code,
        },
        Command::Check { file, db } => check(file.path(), db, &service),
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
        Command::Ping { target } => match socket_path(&target) {
            Ok(socket) => client::admin::ping(&socket),
            Err(code) => code,
        },
        Command::Jobs { target, json } => match socket_path(&target) {
            Ok(socket) => client::admin::jobs(&socket, json),
            Err(code) => code,
        },
        Command::Reload { target, timeout } => match socket_path(&target) {
            Ok(socket) => client::admin::reload(&socket, timeout),
            Err(code) => code,
        },
        Command::Stop {
            target,
            fast,
            wait,
            timeout,
        } => match socket_path(&target) {
            Ok(socket) => client::admin::stop(&socket, fast, wait, timeout),
            Err(code) => code,
        },
        Command::Scale { target, workers } => match socket_path(&target) {
            Ok(socket) => client::admin::scale(&socket, workers),
            Err(code) => code,
        },
        Command::Completions { shell } => docs::completions(Cli::command(), shell),
        Command::Man { dir } => docs::man(Cli::command(), dir.as_deref()),
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
    startup::load_config(named(&target.config)).map(|config| config.service.socket)
}

//! `forkpool dev`: forkpool tried with one command. A private PostgreSQL cluster in
//! `./.forkpool-dev/` (the one the tests start, from `crate::devcluster`), a configuration
//! pointing at it, and the service on the repository's job files in the foreground, until
//! Ctrl-C or SIGTERM stops the service and then the cluster.
//!
//! - `place.rs`: `.forkpool-dev/`, its paths, the password and the generated configuration;
//! - `cluster.rs`: initdb once, start (on the earlier port when free), role and database;
//! - `service_child.rs`: `forkpool run` as a child, its readiness, the signals passed on;
//! - `install.rs`: `--install`, the repository's installer script.

mod cluster;
mod install;
mod place;
mod service_child;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::devcluster::installation::Installation;
use crate::devcluster::postmaster::Shutdown;
use crate::exit::{EXIT_FAILED, EXIT_OK};

use cluster::DevCluster;
use place::{Place, DIR_NAME};

/// Until the service answers with durable jobs ready: workers boot and the keeper migrates
/// an empty schema in well under this, even on a loaded machine.
const READY_PATIENCE: Duration = Duration::from_secs(120);
/// How often the start is checked on: a person waits for it, 50 ms is below notice.
const READY_POLL: Duration = Duration::from_millis(50);

/// What `forkpool dev` was asked for.
pub(crate) struct DevOptions {
    /// The job files to serve (`--workers`, default `./workers`).
    pub(crate) workers: PathBuf,
    /// Wipe `.forkpool-dev` first.
    pub(crate) fresh: bool,
    /// Install the server programs when they are missing.
    pub(crate) install: bool,
}

/// Runs `forkpool dev`; the exit code (the service's, 0 after a stop by signal; 1 when the
/// cluster or the service could not start, with the reason on stderr).
pub(crate) fn run(options: &DevOptions) -> i32 {
    match run_dev(options) {
        Ok(code) => code,
        Err(problem) => {
            eprintln!("forkpool dev: {problem}");
            EXIT_FAILED
        }
    }
}

fn run_dev(options: &DevOptions) -> Result<i32, String> {
    // Before any child exists, so no stop signal and no child's exit is missed.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGCHLD])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    let workers = job_files(&options.workers)?;
    let place = Place::in_current_dir()?;
    if let Some(pid) = place.running_postmaster() {
        return Err(format!(
            "a PostgreSQL server from {} is already running (pid {pid}): another forkpool dev \
             uses this directory; stop it first",
            place.root.display()
        ));
    }
    let install = find_installation(options.install)?;
    if options.fresh {
        place.wipe()?;
        println!("forkpool dev: removed {} (--fresh)", place.root.display());
    }
    place.create(&install)?;
    let mut cluster = cluster::start(&install, &place)?;
    let served = serve(&place, &workers, &mut cluster, &mut signals);
    cluster.postmaster.stop(Shutdown::Fast);
    println!(
        "forkpool dev: PostgreSQL stopped; the data stays in {DIR_NAME}/ \
         (`forkpool dev --fresh` starts over)"
    );
    served
}

/// The job directory, absolute, or why it will not do.
fn job_files(dir: &Path) -> Result<PathBuf, String> {
    if !dir.is_dir() {
        return Err(format!(
            "no job files: {} is not a directory (run forkpool dev in the forkpool repository, \
             whose workers/ holds the examples, or give --workers DIR)",
            dir.display()
        ));
    }
    std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// The server programs; with `install`, installed first when missing.
fn find_installation(install: bool) -> Result<Installation, String> {
    match Installation::find() {
        Ok(found) => Ok(found),
        Err(_) if install => {
            install::install_server_programs()?;
            Installation::find()
        }
        Err(problem) => Err(problem),
    }
}

/// Writes the configuration, runs the service until it exits, passing stop signals on;
/// its exit code.
fn serve(
    place: &Place,
    workers: &Path,
    cluster: &mut DevCluster,
    signals: &mut Signals,
) -> Result<i32, String> {
    place.write_config(cluster.port, workers)?;
    if signals.pending().any(|s| s == SIGINT || s == SIGTERM) {
        return Ok(EXIT_OK);
    }
    let mut child = service_child::spawn(&place.config)?;
    let deadline = Instant::now() + READY_PATIENCE;
    let mut ready = false;
    loop {
        let arrived: Vec<i32> = if ready {
            signals.wait().collect()
        } else {
            signals.pending().collect()
        };
        for signal in arrived {
            if let (SIGINT | SIGTERM, Ok(signal)) = (signal, Signal::try_from(signal)) {
                service_child::forward(&child, signal);
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            if !ready {
                eprintln!("forkpool dev: the service exited before it was ready ({status})");
            }
            return Ok(service_child::exit_code(status));
        }
        if cluster.postmaster.has_exited() {
            stop_service(&mut child);
            return Err(format!(
                "PostgreSQL exited on its own; its log is {}",
                place.log_file.display()
            ));
        }
        if !ready {
            if service_child::is_ready(&place.service_socket) {
                ready = true;
                print_banner(place, cluster.port, workers);
            } else if Instant::now() > deadline {
                stop_service(&mut child);
                return Err(format!(
                    "the service was not ready within {READY_PATIENCE:?}; its log is above"
                ));
            } else {
                std::thread::sleep(READY_POLL);
            }
        }
    }
}

/// Stops the service fast and waits for it.
fn stop_service(child: &mut Child) {
    service_child::forward(child, Signal::SIGINT);
    let _ = child.wait();
}

/// What a newcomer reads: where everything is and three commands to try.
fn print_banner(place: &Place, port: u16, workers: &Path) {
    let socket = Path::new(DIR_NAME).join("forkpool.sock");
    let socket = socket.display();
    println!(
        "forkpool dev: ready. PostgreSQL on 127.0.0.1:{port} with TLS, data in {DIR_NAME}/, \
         jobs from {}, configuration {}
Try, from another terminal in this directory:
  forkpool submit --socket {socket} add '{{\"a\": 1, \"b\": 2}}'
  forkpool enqueue --socket {socket} add '{{\"a\": 2, \"b\": 40}}' --wait 30
  forkpool status --socket {socket}
The database: psql 'host=localhost port={port} user={role} dbname={role} sslmode=verify-full \
sslrootcert={DIR_NAME}/ca.crt' (password in {DIR_NAME}/password).
Ctrl-C stops the service, then PostgreSQL.",
        workers.display(),
        place.config.display(),
        role = place::APP_ROLE,
    );
}

//! A worker process: takes jobs from its channel, runs them on its own pools, answers.
//!
//! Threads, all started after the atfork reset:
//! - `workers.threads` executors take turns reading the job channel (leader/follower), run
//!   the job they read and write its outcome back on the channel;
//! - a signal waiter turns TERM / INT / QUIT into a stop;
//! - the main thread ticks: pool maintenance and a heartbeat to the master, until told to stop.

mod durable_batch;
mod durable_job;
mod pipelined;
pub(crate) mod reset;
mod rust_job;
mod sql_job;

pub use durable_job::DurableSetup;

use std::fmt::Write as _;
use std::io::{BufReader, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, unbounded, Sender};
use log::{debug, error, info};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::catalog::{Catalog, JobKind, JobSpec};
use crate::databases::Databases;
use crate::ipc::{self, FromWorker, ToWorker};
use crate::pool::PooledConnection;
use crate::pools::Pools;
use crate::protocol::{ErrorBody, ErrorKind};

/// How often a worker maintains its pools and reports to the master. The master's liveness
/// check allows several missed beats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// What the worker was forked with: everything is read-only and shared by its threads.
pub struct WorkerSetup {
    pub slot: usize,
    pub threads: usize,
    /// Jobs an executor takes at once and runs pipelined (`workers.pipeline`; 1: one).
    pub pipeline: usize,
    pub catalog: Arc<Catalog>,
    pub databases: Arc<Databases>,
    /// Set when durable jobs are on (`queue.database`): who this worker is in the job
    /// table, and where the table is.
    pub durable: Option<Arc<DurableSetup>>,
}

/// The job channel's read half, shared by the executors: an idle executor takes the lock and
/// reads the next frame itself, so a job goes from the socket to the thread that runs it with
/// no hand-off between threads (one wake-up per job instead of two). `None` once the channel
/// said stop or closed: executors then finish the job they hold and return.
type Inbox = Mutex<Option<BufReader<UnixStream>>>;

/// What an executor takes from the channel.
enum Work {
    /// A `run` job, answered with `Done`.
    Run(Job),
    /// Durable claims (DESIGN §12), each answered with `Claimed`, then `Settled`.
    Claim {
        claim_ids: Vec<u64>,
        excluded_queues: Vec<String>,
    },
}

/// One job taken from the channel.
struct Job {
    id: u64,
    name: String,
    args: Box<RawValue>,
    timeout: Duration,
    received: Instant,
}

/// Why the main thread stops ticking.
enum Stop {
    /// Told to stop (frame or TERM): finish the jobs already received.
    Graceful,
    /// Told to stop fast (INT or QUIT, from the master or anyone): cancel running queries and
    /// exit now; the master answers what is left.
    Fast,
    /// The channel closed: the master is gone. Finish the current jobs, then exit.
    MasterGone,
}

/// The worker's entry point, called in the child right after `fork()`. Never returns.
pub fn run(channel: UnixStream, master: Pid, setup: WorkerSetup) -> ! {
    OWN_PID.store(std::process::id(), Ordering::Relaxed);
    let name = format!("forkpool-w{}", setup.slot);
    if let Err(problem) = reset::atfork_child_reset(channel.as_raw_fd(), master, &name) {
        error!("worker {}: atfork reset failed: {problem}", setup.slot);
        std::process::exit(70);
    }
    std::process::exit(serve(channel, setup))
}

fn serve(channel: UnixStream, setup: WorkerSetup) -> i32 {
    // Blocked here, the stop signals stay blocked in every thread started below and are
    // taken only by the signal waiter (sigwait), so no handler ever runs inside a query.
    let stop_signals = stop_signal_set();
    if let Err(e) = stop_signals.thread_block() {
        error!("worker {}: blocking stop signals: {e}", setup.slot);
        return 70;
    }
    let writer = match channel.try_clone() {
        Ok(writer) => Arc::new(Mutex::new(writer)),
        Err(e) => {
            error!("worker {}: cloning the job channel: {e}", setup.slot);
            return 70;
        }
    };
    let pools = Arc::new(Pools::new(Arc::clone(&setup.databases)));
    let (stop_tx, stop_rx) = unbounded::<Stop>();
    let inbox: Arc<Inbox> = Arc::new(Mutex::new(Some(BufReader::with_capacity(
        64 * 1024,
        channel,
    ))));
    let stopping = Arc::new(AtomicBool::new(false));
    let executors: Vec<_> = (0..setup.threads.max(1))
        .map(|_| {
            let executor = Executor {
                slot: setup.slot,
                pipeline: setup.pipeline.max(1),
                inbox: Arc::clone(&inbox),
                stop: stop_tx.clone(),
                writer: Arc::clone(&writer),
                pools: Arc::clone(&pools),
                catalog: Arc::clone(&setup.catalog),
                durable: setup.durable.clone(),
                stopping: Arc::clone(&stopping),
            };
            thread::spawn(move || executor.execute_jobs())
        })
        .collect();
    {
        let stop_tx = stop_tx.clone();
        thread::spawn(move || wait_for_stop_signal(stop_signals, &stop_tx));
    }
    drop(stop_tx);

    if send(&writer, &FromWorker::Ready).is_err() {
        return 0;
    }
    debug!("worker {} ready", setup.slot);
    let ticker = tick(HEARTBEAT_INTERVAL);
    let stop = loop {
        select! {
            recv(stop_rx) -> stop => break stop.unwrap_or(Stop::MasterGone),
            recv(ticker) -> _ => {
                // The beat goes first: maintenance may wait on a slow server (bounded by
                // connect_timeout), which must not look like a hung worker to the master.
                let beat = FromWorker::Heartbeat { rss_bytes: resident_bytes(), pools: pools.stats() };
                if send(&writer, &beat).is_err() {
                    break Stop::MasterGone;
                }
                pools.maintain();
            }
        }
    };
    match stop {
        Stop::Fast => {
            info!(
                "worker {} stopping now; cancelling running queries",
                setup.slot
            );
            // Before the cancel: a durable job that fails now was interrupted, not broken.
            stopping.store(true, Ordering::SeqCst);
            pools.cancel_running();
            return 0;
        }
        Stop::Graceful => info!("worker {} stopping after its current jobs", setup.slot),
        Stop::MasterGone => info!(
            "worker {}: the master is gone; finishing current jobs",
            setup.slot
        ),
    }
    // Each executor finishes the job it holds and returns at its next read. One already
    // blocked reading is woken by shutting the channel's read side: it then takes the frames
    // the master sent before that (jobs it was promised) and, after them, end of file.
    let _ = writer
        .lock()
        .expect("channel writer lock")
        .shutdown(Shutdown::Read);
    for executor in executors {
        let _ = executor.join();
    }
    pools.close();
    0
}

fn stop_signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
        set.add(signal);
    }
    set
}

fn wait_for_stop_signal(signals: SigSet, stop: &Sender<Stop>) {
    // The set is blocked in this thread too (inherited), which is what sigwait requires.
    match signals.wait() {
        Ok(Signal::SIGTERM) => {
            let _ = stop.send(Stop::Graceful);
        }
        Ok(_) => {
            let _ = stop.send(Stop::Fast);
        }
        Err(e) => error!("waiting for signals: {e}"),
    }
}

/// One executor thread and what it shares with the others.
struct Executor {
    slot: usize,
    pipeline: usize,
    inbox: Arc<Inbox>,
    stop: Sender<Stop>,
    writer: Arc<Mutex<UnixStream>>,
    pools: Arc<Pools>,
    catalog: Arc<Catalog>,
    durable: Option<Arc<DurableSetup>>,
    stopping: Arc<AtomicBool>,
}

impl Executor {
    /// Reads work, does it, answers; until the channel says stop or closes. With
    /// `workers.pipeline` above 1, the `run` jobs that arrived together (up to that many) are
    /// taken together and run pipelined ([`pipelined`]).
    fn execute_jobs(&self) {
        while let Some(mut work) = next_work(&self.inbox, &self.stop, self.pipeline) {
            let answered = match (work.len(), work.pop()) {
                (1, Some(Work::Run(job))) => self.run(&job),
                (
                    1,
                    Some(Work::Claim {
                        claim_ids,
                        excluded_queues,
                    }),
                ) => self.claim(&claim_ids, &excluded_queues),
                (_, last) => {
                    work.extend(last);
                    let jobs = work.into_iter().filter_map(|work| match work {
                        Work::Run(job) => Some(job),
                        Work::Claim { .. } => None, // a batch holds only `run` jobs
                    });
                    pipelined::run_batch(self, jobs.collect())
                }
            };
            if !answered {
                return;
            }
        }
    }

    /// A `run` job; false when the master is gone.
    fn run(&self, job: &Job) -> bool {
        let mut held = None;
        let (ok, body) = match run_job(self.slot, job, &self.pools, &self.catalog, &mut held) {
            Ok(result) => (true, result),
            Err(error) => (false, error.to_json()),
        };
        let body = RawValue::from_string(body).expect("outcomes are JSON");
        let done = FromWorker::Done {
            job_id: job.id,
            ok,
            body,
        };
        let sent = send(&self.writer, &done).is_ok();
        // Checkin (and its reset) after the answer is on its way.
        drop(held);
        sent
    }

    /// Durable claims: one job, or a batch (`queue.batch`); false when the master is gone.
    fn claim(&self, claim_ids: &[u64], excluded_queues: &[String]) -> bool {
        let Some(setup) = &self.durable else {
            // The master sends claims only when durable jobs are on; answer anyway.
            let nothing: Vec<FromWorker> = claim_ids
                .iter()
                .map(|&claim_id| FromWorker::Claimed {
                    claim_id,
                    job: None,
                    error: Some("durable jobs are off in this worker".into()),
                })
                .collect();
            return send_all(&self.writer, &nothing);
        };
        let run = durable_job::DurableRun {
            slot: self.slot,
            setup,
            catalog: &self.catalog,
            pools: &self.pools,
            stopping: &self.stopping,
        };
        let sent = std::cell::Cell::new(true);
        if let [claim_id] = claim_ids {
            run.claim_and_run(*claim_id, excluded_queues, |frame| {
                if send(&self.writer, frame).is_err() {
                    sent.set(false);
                }
            });
        } else {
            durable_batch::claim_and_run(&run, claim_ids, excluded_queues, |frames| {
                if !send_all(&self.writer, frames) {
                    sent.set(false);
                }
            });
        }
        sent.get()
    }
}

/// The next work, read from the channel by this executor while the others wait their turn:
/// one frame, and after a `run` job up to `pipeline − 1` more `run` jobs whose frames were
/// already read (the master writes the jobs it hands over in one turn in one write; this
/// never waits for more). Empty never; `None` once the channel said stop or closed: the main
/// thread is told which.
fn next_work(inbox: &Inbox, stop: &Sender<Stop>, pipeline: usize) -> Option<Vec<Work>> {
    let mut inbox = inbox.lock().expect("inbox lock");
    let reader = inbox.as_mut()?;
    let why = match ipc::read_frame::<ToWorker>(reader) {
        Ok(Some(ToWorker::Run {
            job_id,
            job,
            args,
            timeout_ms,
        })) => {
            let mut batch = vec![Work::Run(Job::received(job_id, job, args, timeout_ms))];
            while batch.len() < pipeline {
                match ipc::buffered_frame(reader, |f| matches!(f, ToWorker::Run { .. })) {
                    Some(ToWorker::Run {
                        job_id,
                        job,
                        args,
                        timeout_ms,
                    }) => batch.push(Work::Run(Job::received(job_id, job, args, timeout_ms))),
                    _ => break,
                }
            }
            return Some(batch);
        }
        Ok(Some(ToWorker::Claim {
            claim_ids,
            excluded_queues,
        })) => {
            return Some(vec![Work::Claim {
                claim_ids,
                excluded_queues,
            }])
        }
        Ok(Some(ToWorker::Stop)) => Stop::Graceful,
        Ok(None) => Stop::MasterGone,
        Err(e) => {
            error!("job channel: {e}");
            Stop::MasterGone
        }
    };
    *inbox = None;
    let _ = stop.send(why);
    None
}

impl Job {
    fn received(id: u64, name: String, args: Box<RawValue>, timeout_ms: u64) -> Job {
        Job {
            id,
            name,
            args,
            timeout: Duration::from_millis(timeout_ms),
            received: Instant::now(),
        }
    }
}

/// Runs one `run` job; the result object as JSON text, or the error. A SQL job's
/// connection is left in `held` for the caller to return after answering.
fn run_job(
    slot: usize,
    job: &Job,
    pools: &Pools,
    catalog: &Catalog,
    held: &mut Option<PooledConnection>,
) -> Result<String, ErrorBody> {
    let spec = catalog.get(&job.name).ok_or_else(|| {
        ErrorBody::new(
            ErrorKind::Internal,
            format!("job `{}` is not in this worker's catalog", job.name),
        )
    })?;
    let args: Map<String, Value> = serde_json::from_str(job.args.get())
        .map_err(|e| ErrorBody::new(ErrorKind::BadRequest, format!("args: {e}")))?;
    let deadline = job.received + job.timeout;
    run_spec(
        slot,
        job.id,
        spec,
        &args,
        deadline,
        job.received,
        pools,
        held,
    )
}

/// Runs a job of the catalog as a `run` job runs it (a durable job that is not exactly-once
/// too): the result object with this worker's fields, as JSON text.
#[allow(clippy::too_many_arguments)]
fn run_spec(
    slot: usize,
    job_id: u64,
    spec: &JobSpec,
    args: &Map<String, Value>,
    deadline: Instant,
    started: Instant,
    pools: &Pools,
    held: &mut Option<PooledConnection>,
) -> Result<String, ErrorBody> {
    let result = match &spec.kind {
        JobKind::Rust(rust) => {
            let value = rust_job::run(rust, job_id, &spec.name, args, deadline, pools, None)?;
            json!({ "value": value })
        }
        JobKind::Sql(sql) => {
            let pool = pools.get(&sql.database)?;
            let label = format!("job {job_id}");
            sql_job::run(&pool, &spec.name, sql, args, deadline, &label, held)?.to_result()
        }
    };
    Ok(with_worker_fields(result, slot, started))
}

/// A `run` result object with the fields every worker adds, as JSON text: appended to the
/// object's text, not inserted into its map (no key allocated, no map rebuilt per job).
fn with_worker_fields(result: Value, slot: usize, started: Instant) -> String {
    debug_assert!(result.is_object(), "a result is an object");
    let elapsed_ms = json!(started.elapsed().as_secs_f64() * 1000.0);
    let mut text = result.to_string();
    text.pop(); // the object's closing brace
    if text.len() > 1 {
        text.push(',');
    }
    let pid = own_pid();
    let _ = write!(
        text,
        "\"worker\":{slot},\"pid\":{pid},\"elapsed_ms\":{elapsed_ms}}}"
    );
    text
}

/// This worker's pid, set by [`run`] right after the fork: glibc no longer caches `getpid`,
/// and a system call per job showed in the worker's profile (about 4% of its time with
/// `workers.pipeline = 8`). Not a `OnceLock`: a value set before a fork would be the
/// parent's in every child.
static OWN_PID: AtomicU32 = AtomicU32::new(0);

fn own_pid() -> u32 {
    match OWN_PID.load(Ordering::Relaxed) {
        0 => std::process::id(),
        pid => pid,
    }
}

fn send(writer: &Mutex<UnixStream>, message: &FromWorker) -> std::io::Result<()> {
    let mut channel = writer.lock().expect("channel writer lock");
    ipc::write_frame(&mut *channel, message)
}

/// Several frames in one write (a batch's claims or settlings: the master reads them in one
/// turn); false when the master is gone.
fn send_all(writer: &Mutex<UnixStream>, messages: &[FromWorker]) -> bool {
    let mut frames = Vec::new();
    for message in messages {
        ipc::encode_into(&mut frames, message);
    }
    send_encoded(writer, &frames).is_ok()
}

/// Writes frames already encoded (several answers in one write).
fn send_encoded(writer: &Mutex<UnixStream>, frames: &[u8]) -> std::io::Result<()> {
    let mut channel = writer.lock().expect("channel writer lock");
    channel.write_all(frames)
}

/// Resident set size from /proc/self/statm (pages × page size); 0 if unreadable.
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

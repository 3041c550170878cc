//! The queue keeper: a child of the master that does this host's durable-job chores, so the
//! master never opens a database connection (DESIGN §12).
//!
//! It owns:
//! 1. the schema: it migrates (`queue.migrate = "auto"`) or checks it, publishes the
//!    catalog's defaults and takes back what earlier instances of this host held (a master
//!    killed with SIGKILL), then tells the master `Ready`;
//! 2. the master's requests: enqueue (in batches: every frame already waiting is one
//!    statement), `result` reads (batched the same way), `cancel`, and the rescue of a dead
//!    worker's jobs;
//! 3. wake-ups: one session `LISTEN`s on `forkpool_jobs` (see [`listen`]) and each
//!    notification becomes a `Wake` for the master, which hands idle slots a claim;
//! 4. the counts `status` shows, every [`COUNTS_EVERY`].
//!
//! Threads (after the atfork reset, like a worker): the main one serves the master's frames
//! and the chores above; one more listens. Every database wait has a deadline.

mod listen;
mod requests;
mod schedules;

use std::io::{BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use crate::catalog::Catalog;
use crate::config::QueueConfig;
use crate::databases::Databases;
use crate::ipc::{self, FromKeeper, ToKeeper};
use crate::pool::{Pool, PooledConnection};
use crate::queue::keeping::{self, JobDefaults, Rescue};
use crate::queue::leases;
use crate::queue::schema;

/// How long one chore's statements may take before they are cancelled and retried later.
pub const STATEMENT_DEADLINE: Duration = Duration::from_secs(10);

/// How often the keeper counts jobs by queue and state for `status`.
pub const COUNTS_EVERY: Duration = Duration::from_secs(2);

/// How often it tells the master it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Retry of the start-up chores while the database is unreachable: from 0.5 s, doubling, to 10 s.
const PREPARE_RETRY_MIN: Duration = Duration::from_millis(500);
const PREPARE_RETRY_MAX: Duration = Duration::from_secs(10);

/// How often finished jobs past their retention are pruned (by one host at a time).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per pruning transaction, and the time one pruning round may take: small
/// batches, so a large backlog never holds a long lock.
const PRUNE_BATCH: i64 = 500;
const PRUNE_BUDGET: Duration = Duration::from_secs(2);

/// Frames taken in one batch at most: bounds one enqueue statement.
const BATCH: usize = 1000;

/// How long after a worker's death its jobs are taken back a second time. A claim its
/// session had sent goes on without it and can commit after the first rescue, which could not
/// see it; the claim never waits on a lock (`SKIP LOCKED`), so it has landed by then.
const RESCUE_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// What the keeper was forked with.
pub struct KeeperSetup {
    pub catalog: Arc<Catalog>,
    pub databases: Arc<Databases>,
    pub queue: QueueConfig,
    /// The `[databases]` name of the queue's database (`queue.database`, known to be set).
    pub database: String,
    /// This host's stable identity and this instance's number (DESIGN §12).
    pub host: String,
    pub instance: i64,
    /// `[schedules]`, checked at load.
    pub schedules: Vec<(String, crate::config::ScheduleConfig)>,
}

/// The keeper's entry point, called in the child right after `fork()`. Never returns.
pub fn run(channel: UnixStream, master: Pid, setup: KeeperSetup) -> ! {
    if let Err(problem) =
        crate::worker::reset::atfork_child_reset(channel.as_raw_fd(), master, "forkpool-queue")
    {
        error!("queue keeper: atfork reset failed: {problem}");
        std::process::exit(70);
    }
    std::process::exit(serve(channel, master.as_raw(), setup))
}

/// The keeper's state: its pool, whether the schema is ready, and its timers.
struct Keeper {
    setup: KeeperSetup,
    pool: Pool,
    writer: Arc<Mutex<UnixStream>>,
    /// Answers encoded while a batch of frames is handled, written to the master in one
    /// write at its end ([`Keeper::flush_answers`]): one syscall, and one wake-up of the
    /// master, per batch instead of per request.
    answers: std::cell::RefCell<Vec<u8>>,
    ready: bool,
    next_prepare: Instant,
    prepare_retry: Duration,
    next_counts: Instant,
    next_heartbeat: Instant,
    /// When lapsed leases (of any host) are next looked for: every poll interval.
    next_lapsed_rescue: Instant,
    /// This machine's name and the master's pid, for the hosts table.
    hostname: String,
    master: i32,
    schedules: Vec<schedules::Schedule>,
    next_prune: Instant,
    /// The last start-up problem, logged once until it changes.
    last_problem: Option<String>,
    /// Dead workers whose jobs are taken back once more, when, and why they died.
    rescue_again: Vec<(Instant, i64, String)>,
}

fn serve(channel: UnixStream, master: i32, setup: KeeperSetup) -> i32 {
    let Some(spec) = setup.databases.get(&setup.database).cloned() else {
        error!(
            "queue keeper: queue.database {:?} is not configured",
            setup.database
        );
        return 70;
    };
    // Two sessions at most: the requests' and the listener's own (built in `listen`).
    let settings = spec.settings.clone().pool_size(1).min_idle(0);
    let pool = match Pool::new(&setup.database, spec.conninfo.clone(), settings) {
        Ok(pool) => pool,
        Err(e) => {
            error!("queue keeper: database `{}`: {e}", setup.database);
            return 70;
        }
    };
    let writer = match channel.try_clone() {
        Ok(writer) => Arc::new(Mutex::new(writer)),
        Err(e) => {
            error!("queue keeper: cloning its channel: {e}");
            return 70;
        }
    };
    if setup.queue.listen {
        let writer = Arc::clone(&writer);
        let spec = spec.clone();
        let database = setup.database.clone();
        thread::spawn(move || listen::wake_master_on_notify(&database, spec, &writer));
    }
    let schedules = setup
        .schedules
        .iter()
        .filter_map(|(name, config)| schedules::Schedule::from_config(name, config))
        .collect();
    let now = Instant::now();
    let mut keeper = Keeper {
        setup,
        pool,
        writer,
        answers: std::cell::RefCell::new(Vec::new()),
        ready: false,
        next_prepare: now,
        prepare_retry: PREPARE_RETRY_MIN,
        next_counts: now,
        next_heartbeat: now,
        next_lapsed_rescue: now,
        schedules,
        next_prune: now + PRUNE_EVERY / 4,
        master,
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string()),
        last_problem: None,
        rescue_again: Vec::new(),
    };
    let mut reader = BufReader::with_capacity(64 * 1024, channel);
    loop {
        keeper.do_chores_due();
        match keeper.wait_for_frames(&mut reader) {
            Ok(frames) => {
                if let Some(code) = keeper.handle(frames) {
                    return code;
                }
            }
            Err(code) => return code,
        }
    }
}

impl Keeper {
    /// Start-up chores until they succeed; counts and heartbeat on their timers.
    fn do_chores_due(&mut self) {
        let now = Instant::now();
        if !self.ready && now >= self.next_prepare {
            self.prepare();
        }
        if now >= self.next_heartbeat {
            self.send(&FromKeeper::Heartbeat {
                rss_bytes: crate::worker::resident_bytes(),
            });
            self.next_heartbeat = now + HEARTBEAT_EVERY;
        }
        if self.ready && now >= self.next_lapsed_rescue {
            self.next_lapsed_rescue = now + self.setup.queue.poll_interval;
            let rescued = self.autocommit(leases::rescue_lapsed);
            match rescued {
                Ok(0) => {}
                Ok(n) => {
                    warn!(target: "forkpool::queue", "took back {n} jobs whose host's lease lapsed (host_lost)");
                    self.send(&FromKeeper::Rescued { count: n });
                    self.send(&FromKeeper::Wake);
                }
                Err(e) => warn!(target: "forkpool::queue", "looking for lapsed leases: {e}"),
            }
        }
        if self.ready {
            self.enqueue_due_ticks();
        }
        if self.ready && now >= self.next_prune {
            self.next_prune = now + PRUNE_EVERY;
            self.prune();
        }
        if self.rescue_again.iter().any(|(at, ..)| now >= *at) {
            let (due, later) = std::mem::take(&mut self.rescue_again)
                .into_iter()
                .partition(|(at, ..)| now >= *at);
            self.rescue_again = later;
            for (_, worker, why) in due {
                self.take_back(
                    worker,
                    &format!("{why}; a claim that landed after its death"),
                );
            }
        }
        if self.ready && now >= self.next_counts {
            self.next_counts = now + COUNTS_EVERY;
            let counted = self.autocommit(|conn| {
                let queues = keeping::queue_counts(conn)?;
                let hosts = leases::hosts(conn, 3 * self.setup.queue.lease)?;
                Ok((queues, hosts))
            });
            match counted {
                Ok((queues, hosts)) => {
                    let schedules: Vec<_> = self.schedules.iter().map(|s| s.status()).collect();
                    self.send(&FromKeeper::Counts {
                        queues: serde_json::to_value(queues).unwrap_or_default(),
                        hosts: serde_json::to_value(hosts).unwrap_or_default(),
                        schedules: serde_json::to_value(schedules).unwrap_or_default(),
                    })
                }
                Err(e) => warn!(target: "forkpool::queue", "counting jobs: {e}"),
            }
        }
    }

    /// The schema, the catalog's defaults, and the jobs earlier instances of this host held.
    fn prepare(&mut self) {
        let outcome = (|| -> Result<i32, String> {
            let mut conn = self.checkout().map_err(|e| e.to_string())?;
            let migrate = self.setup.queue.migrate == crate::config::Migrate::Auto;
            schema::ensure(&mut conn, migrate).map_err(|e| e.to_string())?;
            keeping::publish_defaults(&mut conn, &self.catalog_defaults())
                .map_err(|e| format!("publishing the catalog's defaults: {e}"))?;
            let earlier = Rescue::EarlierInstances {
                host: &self.setup.host,
                instance: self.setup.instance,
            };
            let rescued = keeping::rescue(&mut conn, earlier, "the service was restarted")
                .map_err(|e| format!("rescuing earlier instances' jobs: {e}"))?;
            let (host, instance) = (&self.setup.host, self.setup.instance);
            leases::heartbeat(&mut conn, host, instance, &self.hostname, self.master)
                .map_err(|e| format!("registering this host: {e}"))?;
            if rescued > 0 {
                info!(target: "forkpool::queue", "rescued {rescued} jobs an earlier instance of this host held");
            }
            Ok(schema::SCHEMA_VERSION)
        })();
        match outcome {
            Ok(version) => {
                self.ready = true;
                self.last_problem = None;
                info!(target: "forkpool::queue", "queue ready: schema version {version} in database `{}`", self.setup.database);
                self.send(&FromKeeper::Ready {
                    schema_version: version,
                });
            }
            Err(why) => {
                if self.last_problem.as_deref() != Some(why.as_str()) {
                    warn!(target: "forkpool::queue", "durable jobs wait: {why}; retrying");
                    self.send(&FromKeeper::Unready { why: why.clone() });
                    self.last_problem = Some(why);
                }
                self.next_prepare = Instant::now() + self.prepare_retry;
                self.prepare_retry = (self.prepare_retry * 2).min(PREPARE_RETRY_MAX);
            }
        }
    }

    fn catalog_defaults(&self) -> Vec<JobDefaults> {
        self.setup
            .catalog
            .jobs()
            .map(|spec| JobDefaults {
                job: spec.name.clone(),
                queue: spec.durable.queue.clone(),
                priority: spec.durable.priority,
                max_attempts: spec.durable.max_attempts,
            })
            .collect()
    }

    /// A session for one chore, its statements bounded by [`STATEMENT_DEADLINE`].
    fn checkout(&self) -> Result<PooledConnection, crate::pool::Error> {
        let mut conn = self.pool.checkout("queue keeper")?;
        conn.set_deadline(Some(Instant::now() + STATEMENT_DEADLINE));
        Ok(conn)
    }

    /// Runs `statements` — each in autocommit, none opening a transaction it leaves open — on
    /// a session, which goes back to the pool without its `ROLLBACK` (one round trip less
    /// per enqueue batch, per `result` read, per lapsed-lease look and per count). A session
    /// whose statement timed out is still reset at checkin.
    fn autocommit<T>(
        &self,
        statements: impl FnOnce(&mut PooledConnection) -> Result<T, crate::pool::Error>,
    ) -> Result<T, crate::pool::Error> {
        let mut conn = self.checkout()?;
        let done = statements(&mut conn);
        conn.known_idle();
        done
    }

    /// Waits for the master's frames until the next chore is due, then takes every frame
    /// already sent (up to [`BATCH`]). `Err(exit code)` when the master is gone.
    fn wait_for_frames(&self, reader: &mut BufReader<UnixStream>) -> Result<Vec<ToKeeper>, i32> {
        let mut due = self.next_heartbeat;
        if let Some(again) = self.rescue_again.iter().map(|(at, ..)| *at).min() {
            due = due.min(again);
        }
        if self.ready {
            due = due
                .min(self.next_counts)
                .min(self.next_lapsed_rescue)
                .min(self.next_prune);
            if let Some(tick) = self.next_tick() {
                due = due.min(tick);
            }
        } else {
            due = due.min(self.next_prepare);
        }
        let wait = due.saturating_duration_since(Instant::now());
        if reader.buffer().is_empty() && !readable(reader.get_ref(), wait) {
            return Ok(Vec::new());
        }
        let mut frames = Vec::new();
        loop {
            match ipc::read_frame::<ToKeeper>(reader) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    info!(target: "forkpool::queue", "queue keeper: the master is gone; exiting");
                    return Err(0);
                }
                Err(e) => {
                    error!("queue keeper: channel: {e}");
                    return Err(70);
                }
            }
            let more = !reader.buffer().is_empty() || readable(reader.get_ref(), Duration::ZERO);
            if !more || frames.len() >= BATCH {
                return Ok(frames);
            }
        }
    }

    /// Enqueues the schedules' ticks that are due (each once across all hosts).
    fn enqueue_due_ticks(&mut self) {
        let now = chrono::Utc::now();
        if !self
            .schedules
            .iter()
            .any(|s| s.next().is_none_or(|at| at <= now))
        {
            return;
        }
        let Ok(mut conn) = self.checkout() else {
            return;
        };
        let enqueued: u64 = self
            .schedules
            .iter_mut()
            .map(|schedule| schedule.enqueue_due(&mut conn, now))
            .sum();
        drop(conn);
        if enqueued > 0 {
            self.send(&FromKeeper::Wake);
        }
    }

    /// When the earliest schedule's next tick is due, as an instant of this clock.
    fn next_tick(&self) -> Option<Instant> {
        let next = self.schedules.iter().filter_map(|s| s.next()).min()?;
        let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
        Some(Instant::now() + wait)
    }

    /// Deletes finished jobs past their retention, when no other host is at it.
    fn prune(&mut self) {
        let retention = crate::queue::admin::Retention {
            finished: self.setup.queue.retention,
            discarded: self.setup.queue.discarded_retention,
        };
        let pruned = self.checkout().and_then(|mut conn| {
            crate::queue::admin::prune(&mut conn, retention, PRUNE_BATCH, PRUNE_BUDGET)
        });
        match pruned {
            Ok(Some(0)) => {}
            Ok(Some(n)) => {
                info!(target: "forkpool::queue", "pruned {n} finished jobs past their retention")
            }
            Ok(None) => debug!(target: "forkpool::queue", "another host is pruning"),
            Err(e) => warn!(target: "forkpool::queue", "pruning: {e}"),
        }
    }

    fn send(&self, message: &FromKeeper) {
        self.write(&ipc::encode(message));
    }

    /// Queues one answer; it leaves with the batch's others at [`Keeper::flush_answers`].
    fn queue_answer(&self, message: &FromKeeper) {
        ipc::encode_into(&mut self.answers.borrow_mut(), message);
    }

    /// Writes the answers queued since the last flush, in one write.
    fn flush_answers(&self) {
        let answers = std::mem::take(&mut *self.answers.borrow_mut());
        if !answers.is_empty() {
            self.write(&answers);
        }
    }

    fn write(&self, frames: &[u8]) {
        let mut channel = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = channel.write_all(frames) {
            // The master is gone: the next read sees it and the keeper exits.
            log::debug!(target: "forkpool::queue", "writing to the master: {e}");
        }
    }
}

/// Whether `socket` has something to read within `wait`.
fn readable(socket: &UnixStream, wait: Duration) -> bool {
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    let timeout =
        PollTimeout::try_from(wait.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}

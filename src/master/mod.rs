//! The master: one thread, one poll loop, never a database connection (DESIGN §2).
//!
//! The loop reads like gunicorn's arbiter: the housekeeping every turn — reap dead workers,
//! kill the ones past their deadline, bring the worker count to its target, hand queued jobs
//! to idle workers — then wait for events and react to each. Each concern is a room of its
//! own, with its state and its deadlines; `next_timer` asks every room for its next one.
//!
//! | event                    | reaction                                            | room       |
//! |--------------------------|-----------------------------------------------------|------------|
//! | SIGTERM                  | `handle_term`: graceful stop                        | control    |
//! | SIGINT, SIGQUIT          | `handle_int`: fast stop                             | control    |
//! | SIGHUP                   | `handle_hup`: reload, replace workers one by one    | control    |
//! | SIGTTIN / SIGTTOU        | `handle_ttin` / `handle_ttou`: one worker more/less | scaling    |
//! | `reload`/`stop`/`scale`  | `accept_admin`: the same actions, uid checked       | admin_requests |
//! | SIGCHLD                  | (every turn) `reap_workers`                         | supervisor |
//! | listener readable        | `accept_clients`: admitted, or refused and closed   | requests   |
//! | client readable          | `read_requests`                                     | requests   |
//! | worker channel readable  | `read_worker`: ready, job done, heartbeat           | supervisor |
//! | timer                    | `murder_overdue_workers`: job past timeout + grace, | supervisor |
//! |                          | boot past boot_timeout, idle worker without beats   |            |
//! | timer                    | `close_idle_clients`                                | requests   |
//! | timer                    | `warn_slow_jobs`: once per job past slow_job        | job_log    |
//! | scrape listener readable | `accept_scrapers`: up to MAX_SCRAPERS, else 503     | metrics_http |
//! | scraper readable         | `read_scrape`: answer /metrics, /healthz, errors    | metrics_http |
//! | scraper writable         | `flush_scrape`, then linger until it closes         | metrics_http |
//! | timer                    | `close_stale_scrapers`: past CONNECTION_DEADLINE    | metrics_http |
//! | (every turn)             | `scale_to_load`: grow while jobs wait, shrink idle  | scaling    |
//! | (every turn)             | `manage_workers`: spawn, replace stale, retire      | supervisor |
//! | (every turn)             | `dispatch_jobs`                                     | dispatch   |
//! | (every turn)             | `progress_stop`: the stop's next step when due      | control    |
//! | (every turn)             | `answer_reloads`: once the new generation serves    | control    |
//! | (every turn)             | `notify_systemd`: READY, STATUS, WATCHDOG when due  | status     |
//! | (every turn, last)       | `flush_answers`: one write per client answered      | requests   |

mod admin_requests;
mod admission;
mod channel;
mod clients;
mod control;
mod dispatch;
mod durable;
mod durable_requests;
mod job_log;
mod job_stats;
mod jobs;
mod keeper;
mod listener;
mod metrics_http;
mod requests;
mod scaling;
mod signals;
mod status;
mod supervisor;
mod workers;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::systemd::{self, Notifier};
use clients::{ClientId, Clients};
use control::Control;
use durable::Durable;
use durable_requests::DurableRequests;
use job_log::SlowJobs;
use job_stats::JobStats;
use jobs::Jobs;
use listener::Listener;
use metrics_http::{MetricsHttp, ScraperId};
use scaling::Size;
use signals::SignalPipe;
use supervisor::Supervisor;
use workers::WorkerTable;

/// The longest the loop sleeps: timers are checked at least this often.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What a forked child runs as its worker: given its end of the job channel, the master's pid,
/// its slot and its number (never reused within this master's life: durable jobs name their
/// worker by it), it never returns (the exit code is for the type). The layer above the
/// master supplies it, so the master imports neither the worker nor the pool.
pub type WorkerMain = Arc<dyn Fn(UnixStream, Pid, usize, u64) -> i32>;

/// What a forked child runs as the queue keeper (DESIGN §12), given its channel and the
/// master's pid; `None` in a [`Generation`] when durable jobs are off.
pub type KeeperMain = Arc<dyn Fn(UnixStream, Pid) -> i32>;

/// Loads and checks a configuration file as at start (SIGHUP calls it), every problem listed.
pub type Loader = Box<dyn Fn(&Path) -> Result<Generation, Vec<String>>>;

/// One configuration generation: what the master reads itself, and what its workers run.
pub struct Generation {
    pub config: Arc<Config>,
    pub catalog: Arc<Catalog>,
    pub worker_main: WorkerMain,
    pub keeper_main: Option<KeeperMain>,
}

/// What woke the loop.
enum Event {
    Signal(Signal),
    ClientConnecting,
    ClientReadable(ClientId),
    ClientWritable(ClientId),
    WorkerReadable(usize),
    WorkerWritable(usize),
    KeeperReadable,
    KeeperWritable,
    ScraperConnecting,
    ScraperReadable(ScraperId),
    ScraperWritable(ScraperId),
}

pub struct Master {
    config: Arc<Config>,
    catalog: Arc<Catalog>,
    worker_main: WorkerMain,
    keeper_main: Option<KeeperMain>,
    load: Loader,
    /// The configuration generation (a reload starts a new one).
    generation: u64,
    signals: SignalPipe,
    listener: Option<Listener>,
    clients: Clients,
    workers: WorkerTable,
    jobs: Jobs,
    supervisor: Supervisor,
    control: Control,
    size: Size,
    durable: Durable,
    durable_requests: DurableRequests,
    started: Instant,
    totals: status::Totals,
    /// Answers by job and outcome, run time and queue wait, for `/metrics`.
    job_stats: JobStats,
    slow_jobs: SlowJobs,
    /// The HTTP scrape endpoint (`service.metrics_listen`; idle when off).
    metrics_http: MetricsHttp,
    /// What systemd is told (nothing when not started by systemd).
    systemd: Notifier,
    /// The one buffer every client and channel read goes through: allocated once, so a
    /// read costs no allocation and no 64 KiB of zeroing.
    scratch: Box<[u8]>,
}

/// The size of [`Master::scratch`]: larger than a typical burst of requests or answers.
const READ_BUFFER: usize = 64 * 1024;

impl Master {
    /// Binds the socket (or takes the one systemd passed) and installs the signal handlers;
    /// forks nothing yet.
    pub fn start(current: Generation, load: Loader) -> Result<Master, String> {
        let Generation {
            config,
            catalog,
            worker_main,
            keeper_main,
        } = current;
        let listener = match systemd::take_listener()? {
            Some(socket) => Listener::inherited(socket)?,
            None => Listener::bind(&config.service.socket, config.service.socket_mode)?,
        };
        let metrics_http = MetricsHttp::listen(config.service.metrics_listen)?;
        let job_stats = JobStats::for_jobs(catalog.names());
        let notifier = Notifier::from_env();
        let signals =
            SignalPipe::install().map_err(|e| format!("installing signal handlers: {e}"))?;
        info!(
            "forkpool master {} serving on {} with {} workers, catalog {} ({} jobs)",
            std::process::id(),
            listener.path().display(),
            config.workers.count,
            config.service.catalog.display(),
            catalog.names().count()
        );
        if let Some(address) = config.service.metrics_listen {
            info!("metrics on http://{address}/metrics");
        }
        Ok(Master {
            size: Size::new(config.workers.count),
            config,
            catalog,
            worker_main,
            keeper_main,
            load,
            generation: 1,
            signals,
            listener: Some(listener),
            clients: Clients::default(),
            workers: WorkerTable::default(),
            jobs: Jobs::default(),
            supervisor: Supervisor::default(),
            control: Control::default(),
            durable: Durable::default(),
            durable_requests: DurableRequests::default(),
            started: Instant::now(),
            totals: status::Totals::default(),
            job_stats,
            slow_jobs: SlowJobs::default(),
            metrics_http,
            systemd: notifier,
            scratch: vec![0; READ_BUFFER].into_boxed_slice(),
        })
    }

    /// The loop. Returns the process exit code.
    ///
    /// Each turn does its chores first and then waits: the first turn starts the workers at
    /// once instead of after a wait for events that nothing would send yet.
    pub fn run(mut self) -> i32 {
        loop {
            self.reap_workers();
            self.murder_overdue_workers();
            self.close_idle_clients();
            self.warn_slow_jobs();
            self.close_stale_scrapers();
            self.scale_to_load();
            self.manage_workers();
            self.tend_queue();
            self.dispatch_jobs();
            self.dispatch_claims();
            self.end_due_result_waits();
            self.progress_stop();
            self.answer_reloads();
            self.notify_systemd();
            self.flush_answers();
            if let Some(code) = self.finished() {
                return code;
            }
            for event in self.wait_for_events() {
                self.react(event);
            }
        }
    }

    fn react(&mut self, event: Event) {
        match event {
            Event::Signal(Signal::SIGTERM) => self.handle_term(),
            Event::Signal(Signal::SIGINT | Signal::SIGQUIT) => self.handle_int(),
            Event::Signal(Signal::SIGHUP) => self.handle_hup(),
            Event::Signal(Signal::SIGTTIN) => self.handle_ttin(),
            Event::Signal(Signal::SIGTTOU) => self.handle_ttou(),
            Event::Signal(_) => {} // SIGCHLD: reap_workers runs every turn
            Event::ClientConnecting => self.accept_clients(),
            Event::ClientReadable(id) => self.read_requests(id),
            Event::ClientWritable(id) => self.flush_client(id),
            Event::WorkerReadable(slot) => self.read_worker(slot),
            Event::WorkerWritable(slot) => self.flush_worker(slot),
            Event::KeeperReadable => self.read_keeper(),
            Event::KeeperWritable => self.flush_keeper(),
            Event::ScraperConnecting => self.accept_scrapers(),
            Event::ScraperReadable(id) => self.read_scrape(id),
            Event::ScraperWritable(id) => self.flush_scrape(id),
        }
    }

    // ---- waiting -------------------------------------------------------------------------

    /// Polls every descriptor the master owns, up to the next timer.
    fn wait_for_events(&mut self) -> Vec<Event> {
        enum Source {
            Signals,
            Listener,
            Client(ClientId),
            Worker(usize),
            Keeper,
            ScraperListener,
            Scraper(ScraperId),
        }
        let timeout = self.next_timer().saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(timeout.min(MAX_WAIT)).unwrap_or(PollTimeout::ZERO);
        let mut sources = Vec::with_capacity(2 + self.clients.len() + self.workers.iter().count());
        let mut fds = Vec::with_capacity(sources.capacity());
        fds.push(PollFd::new(self.signals.fd(), PollFlags::POLLIN));
        sources.push(Source::Signals);
        if let Some(listener) = &self.listener {
            fds.push(PollFd::new(listener.socket.as_fd(), PollFlags::POLLIN));
            sources.push(Source::Listener);
        }
        for (id, client) in self.clients.iter() {
            let mut flags = PollFlags::empty();
            if client.wants_read() {
                flags |= PollFlags::POLLIN;
            }
            if client.wants_write() {
                flags |= PollFlags::POLLOUT;
            }
            if flags.is_empty() {
                continue;
            }
            fds.push(PollFd::new(client.stream.as_fd(), flags));
            sources.push(Source::Client(id));
        }
        for worker in self.workers.iter() {
            let mut flags = PollFlags::POLLIN;
            if worker.wants_write() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(worker.channel.stream.as_fd(), flags));
            sources.push(Source::Worker(worker.slot));
        }
        if let Some(keeper) = &self.durable.keeper.process {
            let mut flags = PollFlags::POLLIN;
            if keeper.wants_write() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(keeper.channel.stream.as_fd(), flags));
            sources.push(Source::Keeper);
        }
        if let Some(listener) = self.metrics_http.listener() {
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            sources.push(Source::ScraperListener);
        }
        for (id, stream, writing) in self.metrics_http.connections() {
            let flags = if writing {
                PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            fds.push(PollFd::new(stream.as_fd(), flags));
            sources.push(Source::Scraper(id));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => {} // a signal: its byte is in the pipe, seen next turn
            Err(e) => {
                error!("poll: {e}");
                return Vec::new();
            }
        }
        let mut events = Vec::new();
        let mut signals_ready = false;
        for (fd, source) in fds.iter().zip(&sources) {
            let revents = fd.revents().unwrap_or(PollFlags::empty());
            let readable =
                revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR);
            let writable = revents.contains(PollFlags::POLLOUT);
            match source {
                Source::Signals if readable => signals_ready = true,
                Source::Listener if readable => events.push(Event::ClientConnecting),
                Source::Client(id) => {
                    if writable {
                        events.push(Event::ClientWritable(*id));
                    }
                    if readable {
                        events.push(Event::ClientReadable(*id));
                    }
                }
                Source::Worker(slot) => {
                    if writable {
                        events.push(Event::WorkerWritable(*slot));
                    }
                    if readable {
                        events.push(Event::WorkerReadable(*slot));
                    }
                }
                Source::Keeper => {
                    if writable {
                        events.push(Event::KeeperWritable);
                    }
                    if readable {
                        events.push(Event::KeeperReadable);
                    }
                }
                Source::ScraperListener if readable => events.push(Event::ScraperConnecting),
                Source::Scraper(id) => {
                    if writable {
                        events.push(Event::ScraperWritable(*id));
                    }
                    if readable {
                        events.push(Event::ScraperReadable(*id));
                    }
                }
                _ => {}
            }
        }
        drop(fds);
        if signals_ready {
            let signals = self.signals.take();
            let mut with_signals: Vec<Event> = signals.into_iter().map(Event::Signal).collect();
            with_signals.append(&mut events);
            return with_signals;
        }
        events
    }

    /// The earliest instant something must happen without an event: each room's next
    /// deadline. Instants already past were acted on this turn (and wait for a SIGCHLD now),
    /// so they do not count.
    fn next_timer(&self) -> Instant {
        let now = Instant::now();
        let config = &self.config;
        [
            self.supervisor
                .next_deadline(now, &self.workers, &self.jobs, &config.workers),
            self.clients
                .next_deadline(now, config.service.client_idle_timeout),
            self.size.next_deadline(now, &self.workers, &config.workers),
            self.control.next_deadline(now, &config.service),
            self.durable.next_deadline(now, supervisor::KILL_GRACE),
            earliest_after(now, self.durable_requests.next_deadline()),
            earliest_after(now, self.systemd.next_deadline()),
            self.slow_jobs
                .next_deadline(&self.workers, &self.jobs, config.workers.slow_job),
            self.metrics_http.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .fold(now + MAX_WAIT, Instant::min)
    }

    /// The exit code once a stop is complete: no worker left and every answer written.
    fn finished(&mut self) -> Option<i32> {
        let exit_code = self.control.exit_code()?;
        if !self.workers.is_empty() || !self.durable.keeper.is_gone() {
            return None;
        }
        for client in self.clients.values_mut() {
            let _ = client.stream.set_nonblocking(false);
            let _ = client
                .stream
                .set_write_timeout(Some(Duration::from_secs(1)));
            let _ = client.flush();
        }
        info!("stopped");
        Some(exit_code)
    }
}

/// The earliest of `deadlines` after `now`: what a room answers to `next_timer`.
fn earliest_after(now: Instant, deadlines: impl IntoIterator<Item = Instant>) -> Option<Instant> {
    deadlines.into_iter().filter(|at| *at > now).min()
}

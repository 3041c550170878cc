//! The master: one thread, one poll loop, never a database connection (DESIGN §2).
//!
//! The loop reads like gunicorn's arbiter: the housekeeping every turn — reap dead workers,
//! kill the ones past their deadline, bring the worker count to its target, hand queued jobs
//! to idle workers — then wait for events and react to each.
//!
//! | event                    | reaction                                            |
//! |--------------------------|-----------------------------------------------------|
//! | SIGTERM                  | `handle_term`: graceful stop                        |
//! | SIGINT, SIGQUIT          | `handle_int`: fast stop                             |
//! | SIGHUP                   | `handle_hup`: reload, replace workers one by one    |
//! | SIGTTIN / SIGTTOU        | `handle_ttin` / `handle_ttou`: one worker more/less |
//! | SIGCHLD                  | (every turn) `reap_workers`                         |
//! | listener readable        | `accept_clients`: admitted, or refused and closed   |
//! | client readable          | `read_requests`                                     |
//! | worker channel readable  | `read_worker`: ready, job done, heartbeat           |
//! | timer                    | `murder_overdue_workers`: job past timeout + grace, |
//! |                          | boot past boot_timeout, idle worker without beats   |
//! | timer                    | `close_idle_clients`                                |
//! | (every turn)             | `scale_to_load`: grow while jobs wait, shrink idle  |
//! | (every turn)             | `manage_workers`: spawn, replace stale, retire      |
//! | (every turn)             | `dispatch_jobs`, `progress_stop`                    |
//! | (every turn)             | `notify_systemd`: READY, STATUS, WATCHDOG when due  |

mod admission;
mod clients;
mod jobs;
mod listener;
mod signals;
mod status;
mod workers;

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{geteuid, Pid};
use serde_json::value::RawValue;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::ipc::{FromWorker, ToWorker};
use crate::protocol::{self, ErrorBody, ErrorKind, Op, Request};
use crate::systemd::{self, Notifier, Snapshot};
use clients::{Client, ClientId};
use jobs::{Job, Jobs, Running};
use listener::Listener;
use signals::SignalPipe;
use workers::{Lifecycle, Worker};

/// How long after a job's timeout its worker may still answer `timeout` itself (it cancels
/// the query and rolls back) before the master kills it and answers for it.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long workers told to stop fast may take before they are killed.
const FAST_STOP_GRACE: Duration = Duration::from_secs(2);
/// The longest the loop sleeps: timers are checked at least this often.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// First crash-loop delay; it doubles per consecutive crash up to `restart_backoff_max`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What a forked child runs as its worker: given its end of the job channel, the master's pid
/// and its slot, it never returns (the exit code is for the type). The layer above the master
/// supplies it, so the master imports neither the worker nor the pool.
pub type WorkerMain = Arc<dyn Fn(UnixStream, Pid, usize) -> i32>;

/// Loads and checks a configuration file as at start (SIGHUP calls it), every problem listed.
pub type Loader = Box<dyn Fn(&Path) -> Result<Generation, Vec<String>>>;

/// One configuration generation: what the master reads itself, and what its workers run.
pub struct Generation {
    pub config: Arc<Config>,
    pub catalog: Arc<Catalog>,
    pub worker_main: WorkerMain,
}

/// What woke the loop.
enum Event {
    Signal(Signal),
    ClientConnecting,
    ClientReadable(ClientId),
    ClientWritable(ClientId),
    WorkerReadable(usize),
    WorkerWritable(usize),
}

/// A stop in progress.
struct Stopping {
    /// Past this, whatever is left is answered `shutting_down` and the workers stopped fast.
    deadline: Instant,
    /// Stop frames sent; workers killed if still alive at this instant.
    workers_told: Option<Instant>,
    exit_code: i32,
}

/// Crash-loop accounting (DESIGN §6 `restart_backoff_max`, `give_up_after`).
#[derive(Default)]
struct CrashLoop {
    consecutive: u32,
    next_spawn: Option<Instant>,
}

pub struct Master {
    config: Arc<Config>,
    catalog: Arc<Catalog>,
    worker_main: WorkerMain,
    load: Loader,
    generation: u64,
    signals: SignalPipe,
    listener: Option<Listener>,
    clients: HashMap<ClientId, Client>,
    next_client: ClientId,
    /// Worker slots; a slot's number is its index + 1.
    workers: Vec<Option<Worker>>,
    /// Restarts per slot, for `status`.
    restarts: Vec<u32>,
    /// How many workers should be serving (`workers.count`, moved by TTIN/TTOU).
    target: usize,
    /// Workers added above `target` under load (`workers.idle_timeout`), retired when idle.
    grown: usize,
    jobs: Jobs,
    /// Jobs whose worker the master killed for running past `timeout + KILL_GRACE`.
    killed_for_timeout: HashMap<Pid, Vec<u64>>,
    crash_loop: CrashLoop,
    stopping: Option<Stopping>,
    started: Instant,
    totals: status::Totals,
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
        } = current;
        let listener = match systemd::take_listener()? {
            Some(socket) => Listener::inherited(socket)?,
            None => Listener::bind(&config.service.socket, config.service.socket_mode)?,
        };
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
        let target = config.workers.count;
        Ok(Master {
            config,
            catalog,
            worker_main,
            load,
            generation: 1,
            signals,
            listener: Some(listener),
            clients: HashMap::new(),
            next_client: 0,
            workers: Vec::new(),
            restarts: Vec::new(),
            target,
            grown: 0,
            jobs: Jobs::default(),
            killed_for_timeout: HashMap::new(),
            crash_loop: CrashLoop::default(),
            stopping: None,
            started: Instant::now(),
            totals: status::Totals::default(),
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
            self.scale_to_load();
            self.manage_workers();
            self.dispatch_jobs();
            self.progress_stop();
            self.notify_systemd();
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
        }
        let timeout = self.next_timer().saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(timeout.min(MAX_WAIT)).unwrap_or(PollTimeout::ZERO);
        let mut sources = Vec::with_capacity(2 + self.clients.len() + self.workers.len());
        let mut fds = Vec::with_capacity(sources.capacity());
        fds.push(PollFd::new(self.signals.fd(), PollFlags::POLLIN));
        sources.push(Source::Signals);
        if let Some(listener) = &self.listener {
            fds.push(PollFd::new(listener.socket.as_fd(), PollFlags::POLLIN));
            sources.push(Source::Listener);
        }
        for (id, client) in &self.clients {
            let mut flags = PollFlags::POLLIN;
            if client.wants_write() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(client.stream.as_fd(), flags));
            sources.push(Source::Client(*id));
        }
        for worker in self.workers.iter().flatten() {
            let mut flags = PollFlags::POLLIN;
            if worker.wants_write() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(worker.channel.as_fd(), flags));
            sources.push(Source::Worker(worker.slot));
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

    /// The earliest instant something must happen without an event. Instants already past
    /// were acted on this turn (and wait for a SIGCHLD now), so they do not count.
    fn next_timer(&self) -> Instant {
        let now = Instant::now();
        let running = self.jobs.table.values().filter_map(|job| {
            let running = job.running.as_ref()?;
            Some(running.started + job.timeout + KILL_GRACE)
        });
        let booting = self
            .workers
            .iter()
            .flatten()
            .filter(|w| w.lifecycle == Lifecycle::Booting)
            .map(|w| w.forked + self.config.workers.boot_timeout);
        let stop = self.stopping.as_ref().map(|s| s.deadline);
        // A client with a job in flight may wake the loop once for nothing; the sweep then
        // skips it, and its deadline, now past, no longer counts.
        let idle = self
            .config
            .service
            .client_idle_timeout
            .into_iter()
            .flat_map(|timeout| {
                self.clients
                    .values()
                    .filter_map(move |c| c.idle_deadline(timeout))
            });
        let silent = self.config.workers.heartbeat_timeout.map(|silence| {
            self.workers
                .iter()
                .flatten()
                .filter(|w| w.is_hung_candidate())
                .map(move |w| w.last_heard + silence)
        });
        let grown_idle = self
            .config
            .workers
            .idle_timeout
            .filter(|_| self.grown > 0)
            .map(|idle| {
                self.workers
                    .iter()
                    .flatten()
                    .filter_map(move |w| Some(w.idle_since? + idle))
            });
        running
            .chain(booting)
            .chain(idle)
            .chain(silent.into_iter().flatten())
            .chain(grown_idle.into_iter().flatten())
            .chain(self.crash_loop.next_spawn)
            .chain(stop)
            .chain(self.systemd.next_deadline())
            .filter(|at| *at > now)
            .fold(now + MAX_WAIT, Instant::min)
    }

    // ---- signals -------------------------------------------------------------------------

    /// Graceful stop: no new connections or jobs; what is queued and running may finish
    /// until `shutdown_timeout`.
    fn handle_term(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        info!(
            "SIGTERM: graceful stop (at most {})",
            humantime::format_duration(self.config.service.shutdown_timeout)
        );
        self.listener = None;
        self.systemd.stopping();
        self.stopping = Some(Stopping {
            deadline: Instant::now() + self.config.service.shutdown_timeout,
            workers_told: None,
            exit_code: 0,
        });
    }

    /// Fast stop: answer everything `shutting_down` now and stop the workers at once.
    fn handle_int(&mut self) {
        info!("SIGINT/SIGQUIT: fast stop");
        self.begin_fast_stop(0);
    }

    fn begin_fast_stop(&mut self, exit_code: i32) {
        self.listener = None;
        let now = Instant::now();
        match &mut self.stopping {
            Some(stopping) => {
                stopping.deadline = now;
                stopping.exit_code = stopping.exit_code.max(exit_code);
            }
            None => {
                self.systemd.stopping();
                self.stopping = Some(Stopping {
                    deadline: now,
                    workers_told: None,
                    exit_code,
                })
            }
        }
    }

    /// Reload: re-read the configuration and the catalog; if valid, every worker is replaced
    /// one at a time (the new one first, the old one drains). If not, the old configuration
    /// stays and every problem is logged.
    fn handle_hup(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        info!("SIGHUP: reloading {}", self.config.file.display());
        self.systemd.reloading();
        let reloaded = (self.load)(&self.config.file);
        match reloaded {
            Err(problems) => {
                for problem in problems {
                    error!("reload refused, keeping the running configuration: {problem}");
                }
            }
            Ok(Generation {
                config,
                catalog,
                worker_main,
            }) => {
                if config.service.socket != self.config.service.socket {
                    warn!("service.socket changed: a restart is needed to move the socket");
                }
                self.target = config.workers.count;
                // The new generation starts at its floor; load grows it again if need be.
                self.grown = 0;
                self.config = config;
                self.catalog = catalog;
                self.worker_main = worker_main;
                self.generation += 1;
                info!(
                    "reload accepted (generation {}); replacing workers one by one",
                    self.generation
                );
            }
        }
    }

    fn handle_ttin(&mut self) {
        if self.target < self.config.workers.max {
            self.target += 1;
            if self.target + self.grown > self.config.workers.max {
                // A worker grown under load becomes one of the operator's.
                self.grown -= 1;
            }
            info!("SIGTTIN: {} workers", self.target);
        } else {
            warn!(
                "SIGTTIN: already at workers.max = {}",
                self.config.workers.max
            );
        }
    }

    fn handle_ttou(&mut self) {
        if self.target > self.config.workers.count {
            self.target -= 1;
            info!("SIGTTOU: {} workers", self.target);
        } else {
            warn!(
                "SIGTTOU: already at workers.count = {}",
                self.config.workers.count
            );
        }
    }

    // ---- clients -------------------------------------------------------------------------

    fn accept_clients(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            let stream = match listener.socket.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("accept: {e}");
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let peer = getsockopt(&stream, PeerCredentials)
                .ok()
                .map(|creds| admission::Peer {
                    pid: creds.pid(),
                    uid: creds.uid(),
                    gid: creds.gid(),
                });
            let mut client = Client::new(stream, peer);
            let admitted = admission::admit(
                &self.config.service,
                geteuid().as_raw(),
                peer,
                self.clients.len(),
            );
            if let Err(body) = admitted {
                warn!("refused {client}: {}", body.message);
                client.send(&protocol::error_line(&protocol::null_id(), &body.to_json()));
                client.close_after_flush = true;
                if client.finished() {
                    // Answered in full: dropping it closes it now, so the refused peer sees
                    // EOF right after the answer and holds no slot.
                    continue;
                }
            }
            self.next_client += 1;
            self.clients.insert(self.next_client, client);
        }
    }

    /// Closes clients that sent nothing for `service.client_idle_timeout` and await nothing:
    /// no answer waiting to be written, no job in flight (an accepted job always gets its
    /// answer). A stalled half line counts as nothing sent since its last byte.
    fn close_idle_clients(&mut self) {
        let Some(timeout) = self.config.service.client_idle_timeout else {
            return;
        };
        let now = Instant::now();
        let mut idle: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.idle_deadline(timeout).is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        if idle.is_empty() {
            return;
        }
        let awaiting: HashSet<ClientId> = self.jobs.table.values().map(|j| j.client).collect();
        idle.retain(|id| !awaiting.contains(id));
        for id in idle {
            if let Some(client) = self.clients.remove(&id) {
                info!(
                    "closing {client}: nothing received for {} (service.client_idle_timeout)",
                    humantime::format_duration(timeout)
                );
            }
        }
    }

    fn read_requests(&mut self, id: ClientId) {
        let max = self.config.service.max_request_bytes;
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let input = client.read_lines(max, &mut self.scratch);
        for line in input.lines {
            self.handle_request(id, &line);
        }
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if input.too_large {
            let body = ErrorBody::new(
                ErrorKind::TooLarge,
                format!("request line longer than service.max_request_bytes = {max}; closing"),
            );
            client.send(&protocol::error_line(&protocol::null_id(), &body.to_json()));
            client.close_after_flush = true;
        }
        if input.closed || client.finished() {
            self.clients.remove(&id);
        }
    }

    fn flush_client(&mut self, id: ClientId) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if client.flush().is_err() || client.finished() {
            self.clients.remove(&id);
        }
    }

    fn answer(&mut self, client: ClientId, line: &[u8]) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.send(line);
            if c.finished() {
                self.clients.remove(&client);
            }
        }
    }

    fn answer_error(&mut self, client: ClientId, id: &RawValue, body: &ErrorBody) {
        self.answer(client, &protocol::error_line(id, &body.to_json()));
    }

    fn handle_request(&mut self, client: ClientId, line: &[u8]) {
        let Request { id, op } = match protocol::parse_request(line) {
            Ok(request) => request,
            Err(rejection) => {
                return self.answer_error(client, &rejection.id, &rejection.body);
            }
        };
        match op {
            Op::Ping => {
                let pong = format!("{{\"pong\":true,\"pid\":{}}}", std::process::id());
                self.answer(client, &protocol::ok_line(&id, &pong));
            }
            Op::Status => {
                let status = status::build(self).to_string();
                self.answer(client, &protocol::ok_line(&id, &status));
            }
            Op::Jobs => {
                let jobs = status::catalog(&self.catalog).to_string();
                self.answer(client, &protocol::ok_line(&id, &jobs));
            }
            Op::Run {
                job,
                args,
                timeout_ms,
            } => self.accept_job(client, id, &job, args, timeout_ms),
        }
    }

    /// Checks a `run` request and queues it; from here on it gets exactly one answer.
    fn accept_job(
        &mut self,
        client: ClientId,
        id: Box<RawValue>,
        name: &str,
        args: Box<RawValue>,
        timeout_ms: Option<u64>,
    ) {
        if self.stopping.is_some() {
            let body = ErrorBody::new(ErrorKind::ShuttingDown, "the service is stopping");
            return self.answer_error(client, &id, &body);
        }
        let Some(spec) = self.catalog.get(name).cloned() else {
            let known: Vec<&str> = self.catalog.names().collect();
            let body = ErrorBody::new(
                ErrorKind::UnknownJob,
                format!("no job named `{name}` (jobs: {})", known.join(", ")),
            );
            return self.answer_error(client, &id, &body);
        };
        // Checked here so bad arguments never reach a worker; the worker binds them again.
        let checked = serde_json::from_str(args.get())
            .map_err(|e| e.to_string())
            .and_then(|object| spec.check_args(&object));
        if let Err(message) = checked {
            let body = ErrorBody::new(ErrorKind::InvalidArgs, message);
            return self.answer_error(client, &id, &body);
        }
        if self.jobs.queue.len() >= self.config.service.queue_limit {
            let body = ErrorBody::new(
                ErrorKind::QueueFull,
                format!(
                    "the queue holds service.queue_limit = {} jobs; try again later",
                    self.config.service.queue_limit
                ),
            );
            return self.answer_error(client, &id, &body);
        }
        let timeout = match timeout_ms {
            Some(ms) => spec.timeout.min(Duration::from_millis(ms)),
            None => spec.timeout,
        };
        let job_id = self.jobs.next_id();
        self.totals.accepted += 1;
        self.jobs.enqueue(Job {
            id: job_id,
            client,
            request_id: id,
            spec,
            args,
            timeout,
            running: None,
            retried: false,
        });
    }

    /// Answers an accepted job and forgets it. The one place a job leaves the master.
    fn finish_job(&mut self, job_id: u64, ok: bool, body: &str) {
        let Some(job) = self.jobs.table.remove(&job_id) else {
            return;
        };
        if job.running.is_none() {
            self.jobs.queue.retain(|queued| *queued != job_id);
        }
        if ok {
            self.totals.succeeded += 1;
            self.answer(job.client, &protocol::ok_line(&job.request_id, body));
        } else {
            self.totals.failed += 1;
            self.answer(job.client, &protocol::error_line(&job.request_id, body));
        }
    }

    fn fail_job(&mut self, job_id: u64, body: ErrorBody) {
        self.finish_job(job_id, false, &body.to_json());
    }

    // ---- workers -------------------------------------------------------------------------

    fn worker_mut(&mut self, slot: usize) -> Option<&mut Worker> {
        self.workers.get_mut(slot - 1)?.as_mut()
    }

    fn read_worker(&mut self, slot: usize) {
        let Some(worker) = self.workers.get_mut(slot - 1).and_then(Option::as_mut) else {
            return;
        };
        for frame in worker.read_frames(&mut self.scratch) {
            self.on_worker_frame(slot, frame);
        }
    }

    fn flush_worker(&mut self, slot: usize) {
        if let Some(worker) = self.worker_mut(slot) {
            let _ = worker.flush();
        }
    }

    fn on_worker_frame(&mut self, slot: usize, frame: FromWorker) {
        let Some(worker) = self.worker_mut(slot) else {
            return;
        };
        match frame {
            FromWorker::Ready => {
                worker.mark_ready();
                info!("worker {slot} (pid {}) ready", worker.pid);
            }
            FromWorker::Heartbeat { rss_bytes, pools } => {
                worker.rss_bytes = rss_bytes;
                worker.pools = pools;
            }
            FromWorker::Done { job_id, ok, body } => {
                worker.complete(job_id);
                self.finish_job(job_id, ok, body.get());
            }
        }
    }

    /// Waits for every exited worker; answers its jobs and schedules its replacement.
    fn reap_workers(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    error!("waitpid: {e}");
                    return;
                }
                Ok(status) => status,
            };
            let (pid, how) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exited with code {code}")),
                WaitStatus::Signaled(pid, signal, _) => (pid, format!("was killed by {signal}")),
                _ => continue,
            };
            let Some(index) = self
                .workers
                .iter()
                .position(|w| w.as_ref().is_some_and(|w| w.pid == pid))
            else {
                continue;
            };
            let worker = self.workers[index].take().expect("found above");
            self.on_worker_exit(worker, &how);
        }
    }

    fn on_worker_exit(&mut self, worker: Worker, how: &str) {
        let slot = worker.slot;
        let timed_out = self
            .killed_for_timeout
            .remove(&worker.pid)
            .unwrap_or_default();
        for job_id in &worker.running {
            if timed_out.contains(job_id) {
                let body = self.timeout_body(*job_id);
                self.fail_job(*job_id, body);
            } else if self.may_retry(*job_id) {
                warn!(
                    "worker {slot} (pid {}) {how}; job {job_id} is retried once \
                     (retry_on_worker_lost)",
                    worker.pid
                );
                self.jobs.requeue_first(*job_id);
            } else {
                self.totals.worker_lost += 1;
                let body = ErrorBody::new(
                    ErrorKind::WorkerLost,
                    format!(
                        "worker {slot} (pid {}) {how} while running the job",
                        worker.pid
                    ),
                );
                self.fail_job(*job_id, body);
            }
        }
        let expected = matches!(worker.lifecycle, Lifecycle::Retiring | Lifecycle::Stopping)
            || !timed_out.is_empty();
        if expected {
            info!("worker {slot} (pid {}) {how}", worker.pid);
            return;
        }
        warn!("worker {slot} (pid {}) {how}", worker.pid);
        if let Some(restarts) = self.restarts.get_mut(slot - 1) {
            *restarts += 1;
        }
        let crashed = !worker.ready || worker.forked.elapsed() < self.config.workers.min_lifetime;
        if !crashed {
            self.crash_loop = CrashLoop::default();
            return;
        }
        self.crash_loop.consecutive += 1;
        let crashes = self.crash_loop.consecutive;
        if crashes >= self.config.workers.give_up_after {
            error!(
                "{crashes} consecutive worker crashes (workers.give_up_after = {}); the last {how} \
                 — giving up so the service manager can restart forkpool",
                self.config.workers.give_up_after
            );
            self.begin_fast_stop(1);
            return;
        }
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (crashes - 1).min(16))
            .min(self.config.workers.restart_backoff_max);
        warn!(
            "worker crash {crashes} in a row; next start in {}",
            humantime::format_duration(backoff)
        );
        self.crash_loop.next_spawn = Some(Instant::now() + backoff);
    }

    /// An idempotent job (`retry_on_worker_lost = true`) gets one more run on another worker.
    fn may_retry(&self, job_id: u64) -> bool {
        self.stopping.is_none()
            && self
                .jobs
                .table
                .get(&job_id)
                .is_some_and(|job| job.spec.retry_on_worker_lost && !job.retried)
    }

    fn timeout_body(&self, job_id: u64) -> ErrorBody {
        let (name, timeout) = self
            .jobs
            .table
            .get(&job_id)
            .map(|job| (job.spec.name.clone(), job.timeout))
            .unwrap_or_default();
        ErrorBody::new(
            ErrorKind::Timeout,
            format!(
                "job `{name}` ran past its timeout of {} and its worker did not stop it; \
                 the worker was killed (its transaction dies with its session)",
                humantime::format_duration(timeout)
            ),
        )
    }

    /// Kills workers that outlived a deadline: a job past `timeout + KILL_GRACE` (the worker
    /// did not cancel it itself: a silent server, a stuck handler), a boot past
    /// `boot_timeout`, an idle worker without a heartbeat for `heartbeat_timeout` (hung: a
    /// busy one is bounded by its job's timeout instead). Their exit is then handled by
    /// `reap_workers`.
    fn murder_overdue_workers(&mut self) {
        let now = Instant::now();
        let mut overdue: Vec<(Pid, u64)> = Vec::new();
        for job in self.jobs.table.values() {
            if let Some(Running { slot, started }) = &job.running {
                if now >= *started + job.timeout + KILL_GRACE {
                    if let Some(Some(worker)) = self.workers.get(slot - 1) {
                        overdue.push((worker.pid, job.id));
                    }
                }
            }
        }
        for (pid, job_id) in overdue {
            let jobs = self.killed_for_timeout.entry(pid).or_default();
            if !jobs.contains(&job_id) {
                warn!("job {job_id} ran past its timeout and grace; killing worker pid {pid}");
                jobs.push(job_id);
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        let boot_timeout = self.config.workers.boot_timeout;
        let heartbeat_timeout = self.config.workers.heartbeat_timeout;
        for worker in self.workers.iter().flatten() {
            if let Some(silence) = heartbeat_timeout.filter(|_| worker.is_hung_candidate()) {
                if now >= worker.last_heard + silence {
                    warn!(
                        "worker {} (pid {}) idle and silent for {} (workers.heartbeat_timeout); \
                         killing it as hung",
                        worker.slot,
                        worker.pid,
                        humantime::format_duration(silence)
                    );
                    let _ = kill(worker.pid, Signal::SIGKILL);
                    continue;
                }
            }
            if worker.lifecycle == Lifecycle::Booting && now >= worker.forked + boot_timeout {
                warn!(
                    "worker {} (pid {}) not ready after workers.boot_timeout = {}; killing it",
                    worker.slot,
                    worker.pid,
                    humantime::format_duration(boot_timeout)
                );
                let _ = kill(worker.pid, Signal::SIGKILL);
            }
        }
    }

    /// Dynamic size, on when `workers.idle_timeout` is set. Grows by one worker while jobs
    /// wait and no worker has room, up to `workers.max`, one boot at a time (which bounds
    /// the spawn rate to what the machine can fork); retires a grown worker once it has been
    /// idle for `idle_timeout`, the longest idle first. `workers.max` never passes
    /// `max_connections_budget`: the configuration is refused at start or reload if it would.
    fn scale_to_load(&mut self) {
        let Some(idle_timeout) = self.config.workers.idle_timeout else {
            return;
        };
        if self.stopping.is_some() {
            return;
        }
        let threads = self.config.workers.threads;
        let wanted = self.target + self.grown;
        let serving = || {
            self.workers
                .iter()
                .flatten()
                .filter(|w| matches!(w.lifecycle, Lifecycle::Booting | Lifecycle::Serving))
        };
        let booting = serving().any(|w| w.lifecycle == Lifecycle::Booting);
        let busy = !serving().any(|w| w.has_room(threads));
        if !self.jobs.queue.is_empty()
            && busy
            && !booting
            && serving().count() >= wanted
            && wanted < self.config.workers.max
        {
            self.grown += 1;
            info!(
                "{} job(s) waiting and every worker busy: growing to {} workers",
                self.jobs.queue.len(),
                wanted + 1
            );
            return;
        }
        if self.grown == 0 {
            return;
        }
        let now = Instant::now();
        let longest_idle = serving()
            .filter(|w| w.lifecycle == Lifecycle::Serving)
            .filter_map(|w| Some((w.idle_since?, w.slot)))
            .filter(|(since, _)| now >= *since + idle_timeout)
            .min();
        if let Some((_, slot)) = longest_idle {
            self.grown -= 1;
            info!(
                "worker {slot} idle for {} (workers.idle_timeout): shrinking to {} workers",
                humantime::format_duration(idle_timeout),
                wanted - 1
            );
            if let Some(worker) = self.worker_mut(slot) {
                worker.lifecycle = Lifecycle::Retiring;
            }
        }
    }

    /// Brings the serving workers to the target: spawns what is missing (unless a crash loop
    /// says wait), replaces workers of an older configuration one at a time (a new one boots,
    /// then an old one drains and leaves), and retires the extra ones.
    fn manage_workers(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let wanted = self.target + self.grown;
        let serving: Vec<&Worker> = self
            .workers
            .iter()
            .flatten()
            .filter(|w| matches!(w.lifecycle, Lifecycle::Booting | Lifecycle::Serving))
            .collect();
        let booting = serving.iter().any(|w| w.lifecycle == Lifecycle::Booting);
        // Replaced one at a time, new first: workers of an older configuration, and workers
        // due for recycling.
        let stale = serving
            .iter()
            .filter(|w| {
                w.generation < self.generation || w.recycle_reason(&self.config.workers).is_some()
            })
            .map(|w| w.slot)
            .min();
        let newest = serving.iter().map(|w| w.slot).max();
        let count = serving.len();
        let crash_wait = self
            .crash_loop
            .next_spawn
            .is_some_and(|at| Instant::now() < at);
        match stale {
            Some(_) if booting => {}
            Some(slot) if count > wanted => self.retire_worker(slot),
            Some(_) if !crash_wait => self.spawn_worker(),
            Some(_) => {}
            None if count < wanted && !crash_wait => {
                for _ in count..wanted {
                    self.spawn_worker();
                }
            }
            None if count > wanted => {
                if let Some(slot) = newest {
                    self.retire_worker(slot);
                }
            }
            None => {}
        }
        for worker in self.workers.iter_mut().flatten() {
            if worker.lifecycle == Lifecycle::Retiring && worker.running.is_empty() {
                worker.send(&ToWorker::Stop);
                worker.lifecycle = Lifecycle::Stopping;
            }
        }
    }

    fn retire_worker(&mut self, slot: usize) {
        let generation = self.generation;
        let config = Arc::clone(&self.config);
        if let Some(worker) = self.worker_mut(slot) {
            let why = match worker.recycle_reason(&config.workers) {
                Some(reason) => format!("recycled: {reason}"),
                None if worker.generation < generation => "replaced after a reload".to_string(),
                None => "one worker too many".to_string(),
            };
            info!("retiring worker {slot} (pid {}): {why}", worker.pid);
            worker.lifecycle = Lifecycle::Retiring;
        }
    }

    fn spawn_worker(&mut self) {
        let index = match self.workers.iter().position(Option::is_none) {
            Some(index) => index,
            None => {
                self.workers.push(None);
                self.restarts.push(0);
                self.workers.len() - 1
            }
        };
        let workers = &self.config.workers;
        let recycle_after = (workers.max_jobs > 0)
            .then(|| workers.max_jobs + fastrand::u64(0..=workers.max_jobs_jitter));
        match Worker::spawn(index + 1, self.generation, recycle_after, &self.worker_main) {
            Ok(worker) => {
                info!("worker {} started (pid {})", index + 1, worker.pid);
                self.workers[index] = Some(worker);
            }
            Err(e) => {
                error!("fork: {e}");
                self.crash_loop.next_spawn = Some(Instant::now() + FIRST_BACKOFF);
            }
        }
    }

    /// Hands queued jobs to workers with room, the least busy first.
    fn dispatch_jobs(&mut self) {
        let threads = self.config.workers.threads;
        while let Some(&job_id) = self.jobs.queue.front() {
            let Some(worker) = self
                .workers
                .iter_mut()
                .flatten()
                .filter(|w| w.has_room(threads))
                .min_by_key(|w| w.running.len())
            else {
                return;
            };
            self.jobs.queue.pop_front();
            let job = self
                .jobs
                .table
                .get_mut(&job_id)
                .expect("queued jobs are in the table");
            job.running = Some(Running {
                slot: worker.slot,
                started: Instant::now(),
            });
            worker.assign(job_id);
            worker.send(&ToWorker::Run {
                job_id,
                job: job.spec.name.clone(),
                args: job.args.clone(),
                timeout_ms: job.timeout.as_millis() as u64,
            });
        }
    }

    // ---- stopping ------------------------------------------------------------------------

    /// Moves a stop along: at the deadline (at once for a fast stop) everything left is
    /// answered `shutting_down`; once no job is left the workers are told to stop; workers
    /// that do not go within the grace are killed.
    fn progress_stop(&mut self) {
        let Some(stopping) = &self.stopping else {
            return;
        };
        let now = Instant::now();
        let deadline_passed = now >= stopping.deadline;
        if deadline_passed && !self.jobs.is_empty() {
            let left: Vec<u64> = self.jobs.table.keys().copied().collect();
            for job_id in left {
                let body = ErrorBody::new(
                    ErrorKind::ShuttingDown,
                    "the service stopped before this job finished",
                );
                self.fail_job(job_id, body);
            }
        }
        let Some(stopping) = &mut self.stopping else {
            return;
        };
        if stopping.workers_told.is_none() && (self.jobs.is_empty() || deadline_passed) {
            stopping.workers_told = Some(now);
            for worker in self.workers.iter_mut().flatten() {
                if deadline_passed {
                    // A signal, not a frame: an executor busy with a long query reads no
                    // frame until it ends. The worker takes it with sigwait, outside any
                    // query, and cancels its running queries.
                    let _ = kill(worker.pid, Signal::SIGINT);
                } else {
                    worker.send(&ToWorker::Stop);
                }
                worker.lifecycle = Lifecycle::Stopping;
            }
        }
        let told = stopping.workers_told;
        if let Some(told) = told {
            let grace = if deadline_passed {
                FAST_STOP_GRACE
            } else {
                self.config.service.shutdown_timeout.max(FAST_STOP_GRACE)
            };
            if now >= told + grace {
                for worker in self.workers.iter().flatten() {
                    warn!(
                        "worker {} (pid {}) did not stop; killing it",
                        worker.slot, worker.pid
                    );
                    let _ = kill(worker.pid, Signal::SIGKILL);
                }
            }
        }
    }

    // ---- systemd -------------------------------------------------------------------------

    /// Tells systemd what is due this turn: WATCHDOG=1 (only a loop that turns sends it),
    /// READY=1 once the current generation's workers all serve (at start, after a reload),
    /// STATUS= every few seconds.
    fn notify_systemd(&mut self) {
        let serving_current = self
            .workers
            .iter()
            .flatten()
            .filter(|w| w.lifecycle == Lifecycle::Serving && w.generation == self.generation)
            .count();
        let snapshot = Snapshot {
            serving_current,
            target: self.target + self.grown,
            queue_depth: self.jobs.queue.len(),
            finished_jobs: self.totals.succeeded + self.totals.failed,
            stopping: self.stopping.is_some(),
        };
        self.systemd.tick(Instant::now(), &snapshot);
    }

    /// The exit code once a stop is complete: no worker left and every answer written.
    fn finished(&mut self) -> Option<i32> {
        let stopping = self.stopping.as_ref()?;
        if self.workers.iter().any(Option::is_some) {
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
        Some(stopping.exit_code)
    }
}

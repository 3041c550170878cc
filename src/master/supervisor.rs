//! The supervisor: forks workers, hears what they say, reaps them when they exit (answering
//! their jobs), keeps the crash loop's backoff, kills the ones past a deadline, and brings
//! the serving workers to the wanted size — replacing stale ones one at a time, retiring
//! the extra ones.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::earliest_after;
use super::jobs::{Job, Jobs};
use super::workers::{Lifecycle, Worker, WorkerTable};
use super::Master;
use crate::config::WorkersConfig;
use crate::ipc::{FromWorker, ToWorker};
use crate::protocol::{ErrorBody, ErrorKind};

/// How long after a job's timeout its worker may still answer `timeout` itself (it cancels
/// the query and rolls back) before the master kills it and answers for it.
pub(super) const KILL_GRACE: Duration = Duration::from_secs(5);
/// First crash-loop delay; it doubles per consecutive crash up to `restart_backoff_max`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The supervisor's own state: the crash loop, and the workers it killed for a job's timeout.
#[derive(Default)]
pub struct Supervisor {
    crash_loop: CrashLoop,
    /// Jobs whose worker the master killed for running past `timeout + KILL_GRACE`.
    killed_for_timeout: HashMap<Pid, Vec<u64>>,
    /// Workers forked so far: the next one's number.
    forked: u64,
}

/// Crash-loop accounting (DESIGN §6 `restart_backoff_max`, `give_up_after`).
#[derive(Default)]
struct CrashLoop {
    consecutive: u32,
    next_spawn: Option<Instant>,
}

/// The delay before the next spawn after `crashes` consecutive crashes: 100 ms doubling, at
/// most `max`.
fn backoff(crashes: u32, max: Duration) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << crashes.saturating_sub(1).min(16))
        .min(max)
}

/// When the master kills the worker of a running job that its worker did not stop itself
/// (a silent server, a stuck handler).
fn kill_deadline(job: &Job) -> Option<Instant> {
    Some(job.running.as_ref()?.started + job.timeout + KILL_GRACE)
}

/// When a booting worker counts as failed to boot.
fn boot_deadline(worker: &Worker, config: &WorkersConfig) -> Option<Instant> {
    (worker.lifecycle == Lifecycle::Booting).then(|| worker.forked + config.boot_timeout)
}

/// When an idle worker without a heartbeat counts as hung (a busy one is bounded by its
/// job's timeout instead).
fn silence_deadline(worker: &Worker, config: &WorkersConfig) -> Option<Instant> {
    let silence = config.heartbeat_timeout?;
    worker
        .is_hung_candidate()
        .then(|| worker.channel.last_heard + silence)
}

impl Supervisor {
    pub fn next_deadline(
        &self,
        now: Instant,
        workers: &WorkerTable,
        jobs: &Jobs,
        config: &WorkersConfig,
    ) -> Option<Instant> {
        let overdue_jobs = jobs.iter().filter_map(kill_deadline);
        let booting = workers.iter().filter_map(|w| boot_deadline(w, config));
        let silent = workers.iter().filter_map(|w| silence_deadline(w, config));
        earliest_after(
            now,
            overdue_jobs
                .chain(booting)
                .chain(silent)
                .chain(self.crash_loop.next_spawn),
        )
    }
}

impl Master {
    pub(super) fn read_worker(&mut self, slot: usize) {
        let Some(worker) = self.workers.get_mut(slot) else {
            return;
        };
        for frame in worker.read_frames(&mut self.scratch) {
            self.on_worker_frame(slot, frame);
        }
    }

    pub(super) fn flush_worker(&mut self, slot: usize) {
        if let Some(worker) = self.workers.get_mut(slot) {
            let _ = worker.flush();
        }
    }

    fn on_worker_frame(&mut self, slot: usize, frame: FromWorker) {
        let Some(worker) = self.workers.get_mut(slot) else {
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
            FromWorker::Claimed {
                claim_id,
                job,
                error,
            } => self.on_claimed(slot, claim_id, job, error),
            FromWorker::Settled {
                claim_id,
                job_id,
                outcome,
            } => self.on_settled(slot, claim_id, job_id, &outcome),
        }
    }

    /// Waits for every exited worker; answers its jobs and schedules its replacement.
    pub(super) fn reap_workers(&mut self) {
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
            if let Some(worker) = self.workers.take_pid(pid) {
                self.on_worker_exit(worker, &how);
            } else if self.durable.keeper.reap(pid, &how) {
                self.on_keeper_exit();
            }
        }
    }

    /// Answers the jobs of a worker that exited (`timeout` if the master killed it for one,
    /// a retry if the job allows it, else `worker_lost`), and counts a crash if it was one.
    fn on_worker_exit(&mut self, worker: Worker, how: &str) {
        let slot = worker.slot;
        let timed_out = self
            .supervisor
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
        self.rescue_worker_jobs(slot, worker.number, worker.ever_claimed, how);
        let expected = matches!(worker.lifecycle, Lifecycle::Retiring | Lifecycle::Stopping)
            || !timed_out.is_empty();
        if expected {
            info!("worker {slot} (pid {}) {how}", worker.pid);
            return;
        }
        warn!("worker {slot} (pid {}) {how}", worker.pid);
        self.workers.count_restart(slot);
        let crashed = !worker.ready || worker.forked.elapsed() < self.config.workers.min_lifetime;
        if crashed {
            self.count_crash(how);
        } else {
            self.supervisor.crash_loop = CrashLoop::default();
        }
    }

    /// One more crash in a row: the next spawn waits longer, or the master gives up after
    /// `give_up_after` so the service manager can restart it.
    fn count_crash(&mut self, how: &str) {
        let crash_loop = &mut self.supervisor.crash_loop;
        crash_loop.consecutive += 1;
        let crashes = crash_loop.consecutive;
        let config = &self.config.workers;
        if crashes >= config.give_up_after {
            error!(
                "{crashes} consecutive worker crashes (workers.give_up_after = {}); the last {how} \
                 — giving up so the service manager can restart forkpool",
                config.give_up_after
            );
            self.begin_fast_stop(1);
            return;
        }
        let delay = backoff(crashes, config.restart_backoff_max);
        warn!(
            "worker crash {crashes} in a row; next start in {}",
            humantime::format_duration(delay)
        );
        crash_loop.next_spawn = Some(Instant::now() + delay);
    }

    /// An idempotent job (`retry_on_worker_lost = true`) gets one more run on another worker.
    fn may_retry(&self, job_id: u64) -> bool {
        !self.control.stopping()
            && self
                .jobs
                .get(job_id)
                .is_some_and(|job| job.spec.retry_on_worker_lost && !job.retried)
    }

    fn timeout_body(&self, job_id: u64) -> ErrorBody {
        let (name, timeout) = self
            .jobs
            .get(job_id)
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

    /// Kills workers that outlived a deadline: a job past `timeout + KILL_GRACE`, a boot past
    /// `boot_timeout`, an idle worker without a heartbeat for `heartbeat_timeout`. Their exit
    /// is then handled by `reap_workers`.
    pub(super) fn murder_overdue_workers(&mut self) {
        let now = Instant::now();
        let overdue: Vec<(Pid, u64)> = self
            .jobs
            .iter()
            .filter(|job| kill_deadline(job).is_some_and(|at| now >= at))
            .filter_map(|job| {
                let worker = self.workers.get(job.running.as_ref()?.slot)?;
                Some((worker.pid, job.id))
            })
            .collect();
        for (pid, job_id) in overdue {
            let jobs = self.supervisor.killed_for_timeout.entry(pid).or_default();
            if !jobs.contains(&job_id) {
                warn!("job {job_id} ran past its timeout and grace; killing worker pid {pid}");
                jobs.push(job_id);
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        for slot in self.overdue_claim_slots(now, KILL_GRACE) {
            if let Some(worker) = self.workers.get(slot) {
                if self
                    .supervisor
                    .killed_for_timeout
                    .insert(worker.pid, Vec::new())
                    .is_none()
                {
                    warn!(
                        "worker {slot} (pid {}): its durable job ran past its timeout and grace; \
                         killing it",
                        worker.pid
                    );
                    let _ = kill(worker.pid, Signal::SIGKILL);
                }
            }
        }
        let config = &self.config.workers;
        for worker in self.workers.iter() {
            if silence_deadline(worker, config).is_some_and(|at| now >= at) {
                warn!(
                    "worker {} (pid {}) idle and silent for {} (workers.heartbeat_timeout); \
                     killing it as hung",
                    worker.slot,
                    worker.pid,
                    humantime::format_duration(config.heartbeat_timeout.unwrap_or_default())
                );
                let _ = kill(worker.pid, Signal::SIGKILL);
            } else if boot_deadline(worker, config).is_some_and(|at| now >= at) {
                warn!(
                    "worker {} (pid {}) not ready after workers.boot_timeout = {}; killing it",
                    worker.slot,
                    worker.pid,
                    humantime::format_duration(config.boot_timeout)
                );
                let _ = kill(worker.pid, Signal::SIGKILL);
            }
        }
    }

    /// Brings the serving workers to the wanted size: spawns what is missing (unless a crash
    /// loop says wait), replaces workers of an older configuration or due for recycling one
    /// at a time (a new one boots, then an old one drains and leaves), and retires the extra
    /// ones.
    pub(super) fn manage_workers(&mut self) {
        if self.control.stopping() {
            return;
        }
        let wanted = self.size.wanted();
        let booting = self.workers.any_booting();
        let stale = self
            .workers
            .serving()
            .filter(|w| {
                w.generation < self.generation || w.recycle_reason(&self.config.workers).is_some()
            })
            .map(|w| w.slot)
            .min();
        let newest = self.workers.serving().map(|w| w.slot).max();
        let count = self.workers.serving().count();
        let crash_wait = self
            .supervisor
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
        for worker in self.workers.iter_mut() {
            if worker.lifecycle == Lifecycle::Retiring && worker.holds_nothing() {
                worker.send(&ToWorker::Stop);
                worker.lifecycle = Lifecycle::Stopping;
            }
        }
    }

    /// Takes no new job on `slot`; it is told to stop once idle.
    pub(super) fn retire_worker(&mut self, slot: usize) {
        let generation = self.generation;
        let config = &self.config.workers;
        if let Some(worker) = self.workers.get_mut(slot) {
            let why = match worker.recycle_reason(config) {
                Some(reason) => format!("recycled: {reason}"),
                None if worker.generation < generation => "replaced after a reload".to_string(),
                None => "one worker too many".to_string(),
            };
            info!("retiring worker {slot} (pid {}): {why}", worker.pid);
            worker.lifecycle = Lifecycle::Retiring;
        }
    }

    fn spawn_worker(&mut self) {
        let slot = self.workers.free_slot();
        let workers = &self.config.workers;
        let recycle_after = (workers.max_jobs > 0)
            .then(|| workers.max_jobs + fastrand::u64(0..=workers.max_jobs_jitter));
        self.supervisor.forked += 1;
        let number = self.supervisor.forked;
        match Worker::spawn(
            slot,
            number,
            self.generation,
            recycle_after,
            &self.worker_main,
        ) {
            Ok(worker) => {
                info!("worker {slot} started (pid {})", worker.pid);
                self.workers.insert(worker);
            }
            Err(e) => {
                error!("fork: {e}");
                self.supervisor.crash_loop.next_spawn = Some(Instant::now() + FIRST_BACKOFF);
            }
        }
    }

    /// Tells every worker to stop: a stop frame, or for a fast stop SIGINT — a signal, not a
    /// frame, since an executor busy with a long query reads no frame until it ends; the
    /// worker takes it with sigwait, outside any query, and cancels its running queries.
    pub(super) fn stop_workers(&mut self, fast: bool) {
        for worker in self.workers.iter_mut() {
            if fast {
                let _ = kill(worker.pid, Signal::SIGINT);
            } else {
                worker.send(&ToWorker::Stop);
            }
            worker.lifecycle = Lifecycle::Stopping;
        }
    }

    /// The last rung of a stop: SIGKILL for every worker still alive.
    pub(super) fn kill_remaining_workers(&mut self) {
        for worker in self.workers.iter() {
            warn!(
                "worker {} (pid {}) did not stop; killing it",
                worker.slot, worker.pid
            );
            let _ = kill(worker.pid, Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_backoff_doubles_from_100ms_up_to_its_ceiling() {
        let max = Duration::from_secs(30);
        let delays: Vec<u128> = (1..=11).map(|n| backoff(n, max).as_millis()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        assert_eq!(backoff(1000, max), max, "no overflow after many crashes");
    }
}

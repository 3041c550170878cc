//! The master's view of its worker processes: one [`Worker`] per process (its channel, its
//! lifecycle, what it runs, forking it) and the [`WorkerTable`] of slots that holds them.

use std::io;
use std::time::{Instant, SystemTime};

use nix::unistd::Pid;

use serde::Serialize;
use serde_json::Value;

use super::channel::{fork_child, Channel};
use super::WorkerMain;
use crate::config::WorkersConfig;
use crate::ipc::{FromWorker, ToWorker};

/// Where a worker is in its life, as the master sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Forked, not yet `Ready`.
    Booting,
    /// Takes jobs.
    Serving,
    /// Replaced (reload, recycle) or one too many: takes no new job, told to stop once idle.
    Retiring,
    /// Told to stop; waiting for it to exit.
    Stopping,
}

pub struct Worker {
    pub slot: usize,
    /// Never reused within this master's life: durable jobs name their worker by it.
    pub number: u64,
    pub pid: Pid,
    /// Its job channel; `last_heard` there (a heartbeat at least every second) is the
    /// liveness check's (`workers.heartbeat_timeout`).
    pub channel: Channel,
    pub lifecycle: Lifecycle,
    /// The configuration generation it was forked with (a reload starts a new one).
    pub generation: u64,
    pub forked: Instant,
    pub forked_at: SystemTime,
    pub ready: bool,
    pub jobs_done: u64,
    /// Jobs it holds now, in the order they were sent.
    pub running: Vec<u64>,
    /// The same jobs by the turn that handed them over (one write each): each batch is one
    /// executor's, which takes the frames of one write together (`workers.pipeline`). An
    /// executor is free again when every job of its batch is answered.
    batches: Vec<Vec<u64>>,
    /// The last batch is this turn's and may take more jobs (see [`Worker::seal_batch`]).
    filling: bool,
    /// Durable claims it holds now (DESIGN §12), as they were sent, one frame each: each
    /// frame takes an executor like a job (one claim per frame, or up to `queue.batch`),
    /// until all its claims are answered.
    claim_frames: Vec<Vec<u64>>,
    /// It was sent a claim at least once: when it dies, the keeper takes back what it held.
    pub ever_claimed: bool,
    /// Since when it has been ready with no job (`None`: booting or busy), for retiring
    /// workers grown under load (`workers.idle_timeout`).
    pub idle_since: Option<Instant>,
    pub rss_bytes: u64,
    pub pools: Value,
    /// Recycle after this many jobs: `max_jobs` plus its own random share of
    /// `max_jobs_jitter`, drawn at fork so workers started together do not recycle together.
    pub recycle_after: Option<u64>,
}

impl Worker {
    /// Forks a worker for `slot` (see [`fork_child`]).
    pub fn spawn(
        slot: usize,
        number: u64,
        generation: u64,
        recycle_after: Option<u64>,
        worker_main: &WorkerMain,
    ) -> io::Result<Worker> {
        let (pid, channel) =
            fork_child(|channel, master| worker_main(channel, master, slot, number))?;
        Ok(Worker {
            slot,
            number,
            pid,
            channel,
            lifecycle: Lifecycle::Booting,
            generation,
            forked: Instant::now(),
            forked_at: SystemTime::now(),
            ready: false,
            jobs_done: 0,
            running: Vec::new(),
            batches: Vec::new(),
            filling: false,
            claim_frames: Vec::new(),
            ever_claimed: false,
            idle_since: None,
            rss_bytes: 0,
            pools: Value::Null,
            recycle_after,
        })
    }

    /// Queues a frame and writes what the channel takes now.
    pub fn send(&mut self, message: &ToWorker) {
        self.channel.send(message);
    }

    /// Queues a frame for the next [`Worker::flush`].
    pub fn queue<T: Serialize>(&mut self, message: &T) {
        self.channel.queue(message);
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.channel.flush()
    }

    pub fn wants_write(&self) -> bool {
        self.channel.wants_write()
    }

    /// The whole frames it sent since the last read (see [`Channel::read_frames`]).
    pub fn read_frames(&mut self, scratch: &mut [u8]) -> Vec<FromWorker> {
        let slot = self.slot;
        self.channel
            .read_frames(scratch, format_args!("worker {slot}"))
    }

    /// Ready (its `Ready` frame arrived): from now on it takes jobs.
    pub fn mark_ready(&mut self) {
        self.ready = true;
        if self.lifecycle == Lifecycle::Booting {
            self.lifecycle = Lifecycle::Serving;
        }
        self.idle_since = Some(Instant::now());
    }

    /// A job handed to it: into this turn's batch if one is open, else a new one.
    pub fn assign(&mut self, job_id: u64) {
        self.running.push(job_id);
        match self.batches.last_mut() {
            Some(batch) if self.filling => batch.push(job_id),
            _ => {
                self.batches.push(vec![job_id]);
                self.filling = true;
            }
        }
        self.idle_since = None;
    }

    /// Ends this turn's batch: the jobs handed over are written; the next go to a new one.
    pub fn seal_batch(&mut self) {
        self.filling = false;
    }

    /// A job it answered.
    pub fn complete(&mut self, job_id: u64) {
        self.running.retain(|running| *running != job_id);
        for batch in &mut self.batches {
            batch.retain(|running| *running != job_id);
        }
        self.batches.retain(|batch| !batch.is_empty());
        self.jobs_done += 1;
        self.note_if_idle();
    }

    /// Durable claims sent to it in one frame (one executor takes them all).
    pub fn assign_claims(&mut self, claim_ids: &[u64]) {
        self.claim_frames.push(claim_ids.to_vec());
        self.ever_claimed = true;
        self.idle_since = None;
    }

    /// The durable claims it holds, over all their frames.
    fn claim_count(&self) -> usize {
        self.claim_frames.iter().map(Vec::len).sum()
    }

    /// A claim it answered: empty, or its job settled (`ran`).
    pub fn release_claim(&mut self, claim_id: u64, ran: bool) {
        for frame in &mut self.claim_frames {
            frame.retain(|claim| *claim != claim_id);
        }
        self.claim_frames.retain(|frame| !frame.is_empty());
        if ran {
            self.jobs_done += 1;
        }
        self.note_if_idle();
    }

    /// Holds nothing: no job, no claim.
    pub fn holds_nothing(&self) -> bool {
        self.running.is_empty() && self.claim_frames.is_empty()
    }

    fn note_if_idle(&mut self) {
        if self.holds_nothing() && self.idle_since.is_none() {
            self.idle_since = Some(Instant::now());
        }
    }

    /// Watched for a hang by its heartbeats: ready, holding no job (a busy worker is bounded
    /// by its jobs' timeouts), and not on its way out.
    pub fn is_hung_candidate(&self) -> bool {
        matches!(self.lifecycle, Lifecycle::Serving | Lifecycle::Retiring) && self.holds_nothing()
    }

    /// Takes a frame of durable claims: ready, not retiring or stopping, and holding fewer
    /// than `threads` jobs and claim frames together.
    pub fn has_room(&self, threads: usize) -> bool {
        self.lifecycle == Lifecycle::Serving
            && self.running.len() + self.claim_frames.len() < threads
    }

    /// Takes a `run` job it can start now (no prefetch): into this turn's batch while it
    /// holds fewer than `pipeline` jobs, else as the first of a new batch while an executor
    /// is free (fewer than `threads` batches and claim frames). With `pipeline = 1`, exactly
    /// [`Worker::has_room`].
    pub fn has_room_for_job(&self, threads: usize, pipeline: usize) -> bool {
        if self.lifecycle != Lifecycle::Serving {
            return false;
        }
        let open = self.filling && self.batches.last().is_some_and(|b| b.len() < pipeline);
        open || self.batches.len() + self.claim_frames.len() < threads
    }

    /// Why this worker should be replaced now (after `max_jobs` jobs, or past `max_rss`), if
    /// it should; never before `min_lifetime`.
    pub fn recycle_reason(&self, config: &WorkersConfig) -> Option<String> {
        if self.lifecycle != Lifecycle::Serving || self.forked.elapsed() < config.min_lifetime {
            return None;
        }
        if let Some(limit) = self.recycle_after.filter(|limit| self.jobs_done >= *limit) {
            return Some(format!("ran {} jobs (limit {limit})", self.jobs_done));
        }
        if config.max_rss > 0 && self.rss_bytes > config.max_rss {
            return Some(format!(
                "resident memory {} B passed workers.max_rss = {} B",
                self.rss_bytes, config.max_rss
            ));
        }
        None
    }

    /// The state `status` shows.
    pub fn state_name(&self) -> &'static str {
        match self.lifecycle {
            Lifecycle::Booting => "booting",
            Lifecycle::Serving if self.holds_nothing() => "idle",
            Lifecycle::Serving => "busy",
            Lifecycle::Retiring => "retiring",
            Lifecycle::Stopping => "stopping",
        }
    }
}

/// The worker slots. A slot's number is its index + 1; a slot keeps its number and its
/// restart count across the processes that fill it.
#[derive(Default)]
pub struct WorkerTable {
    slots: Vec<Option<Worker>>,
    /// Restarts per slot, for `status`.
    restarts: Vec<u32>,
}

impl WorkerTable {
    pub fn get(&self, slot: usize) -> Option<&Worker> {
        self.slots.get(slot.checked_sub(1)?)?.as_ref()
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Worker> {
        self.slots.get_mut(slot.checked_sub(1)?)?.as_mut()
    }

    /// Every worker process, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &Worker> {
        self.slots.iter().flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        self.slots.iter_mut().flatten()
    }

    /// The workers that count toward the size: booting or serving (not retiring or stopping).
    pub fn serving(&self) -> impl Iterator<Item = &Worker> {
        self.iter()
            .filter(|w| matches!(w.lifecycle, Lifecycle::Booting | Lifecycle::Serving))
    }

    /// Whether a worker is booting: growth and replacement wait for it, one boot at a time.
    pub fn any_booting(&self) -> bool {
        self.iter().any(|w| w.lifecycle == Lifecycle::Booting)
    }

    /// Serving workers forked with configuration `generation` (READY=1 waits for them all).
    pub fn serving_in(&self, generation: u64) -> usize {
        self.iter()
            .filter(|w| w.lifecycle == Lifecycle::Serving && w.generation == generation)
            .count()
    }

    /// No worker process is left.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The least busy worker with room for one more claim (the lowest slot among equals).
    pub fn least_busy_with_room(&self, threads: usize) -> Option<usize> {
        self.least_busy(|w| w.has_room(threads))
    }

    /// The least busy worker that can start one more `run` job now.
    pub fn least_busy_for_job(&self, config: &WorkersConfig) -> Option<usize> {
        self.least_busy(|w| w.has_room_for_job(config.threads, config.pipeline))
    }

    fn least_busy(&self, room: impl Fn(&Worker) -> bool) -> Option<usize> {
        self.iter()
            .filter(|w| room(w))
            .min_by_key(|w| w.running.len() + w.claim_count())
            .map(|w| w.slot)
    }

    /// The lowest empty slot, a new one if every slot is taken.
    pub fn free_slot(&mut self) -> usize {
        match self.slots.iter().position(Option::is_none) {
            Some(index) => index + 1,
            None => {
                self.slots.push(None);
                self.restarts.push(0);
                self.slots.len()
            }
        }
    }

    /// Puts a forked worker in its slot (from [`WorkerTable::free_slot`]).
    pub fn insert(&mut self, worker: Worker) {
        let index = worker.slot - 1;
        self.slots[index] = Some(worker);
    }

    /// Takes the worker of process `pid` out of its slot (it exited).
    pub fn take_pid(&mut self, pid: Pid) -> Option<Worker> {
        self.slots
            .iter_mut()
            .find(|w| w.as_ref().is_some_and(|w| w.pid == pid))?
            .take()
    }

    pub fn count_restart(&mut self, slot: usize) {
        if let Some(restarts) = self.restarts.get_mut(slot - 1) {
            *restarts += 1;
        }
    }

    pub fn restarts(&self, slot: usize) -> u32 {
        self.restarts.get(slot - 1).copied().unwrap_or(0)
    }
}

//! Durable jobs as the master runs them (DESIGN §12): when idle slots claim, what each claim
//! took, and what the keeper says — without a statement of its own.
//!
//! - **Wake-ups.** `maybe_work` says jobs may wait: set by a socket enqueue, the keeper's
//!   `Wake` (a NOTIFY, a rescue), a settled job when `[queue.limits]` caps a queue (its cap
//!   may have room now), and every `queue.poll_interval`; cleared by
//!   a claim that came back empty — unless a wake-up came after that claim was sent (the
//!   wake generation), so a NOTIFY racing an empty claim is never lost.
//! - **Seekers.** A claim that has not found a job yet is a seeker, and only `seekers` of
//!   them go out at once: a wake-up allows one (an enqueue answered over the socket one per
//!   job it announces), and each claim that finds a job allows one more, so a backlog fans
//!   out to every free slot in a few round trips (1, 2, 4, …) while one new job costs one or
//!   two claim statements instead of one per idle slot. An idle host's poll is one claim per
//!   interval.
//! - **Claims.** Each free slot gets at most one claim at a time (no prefetch); `run` jobs
//!   waiting for a client go first; `queue.concurrency` and `[queue.limits]` cap them.
//! - **Rescue.** A worker that dies has its jobs taken back by the keeper at once (it knows
//!   them by the worker's number, even a claim whose answer never arrived).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use serde_json::{json, Value};

use super::earliest_after;
use super::keeper::KeeperSlot;
use super::Master;
use crate::config::QueueConfig;
use crate::ipc::{ClaimedJob, FromKeeper, ToKeeper, ToWorker};

/// How long a worker may take to answer a claim (its statement is bounded by 10 s) before
/// the master treats it as hung and kills it.
pub const CLAIM_ANSWER_DEADLINE: Duration = Duration::from_secs(15);

/// A bound on [`Durable::seekers`]: far above any host's slots, so it never limits a fan-out,
/// while a burst of enqueues cannot grow the count without end.
const MAX_SEEKERS: usize = 1 << 16;

/// One claim sent to a worker slot.
pub struct ClaimInFlight {
    pub slot: usize,
    pub sent: Instant,
    /// The wake-up generation it was sent in.
    wake_generation: u64,
    /// Queues it may not take (at their cap when it was sent).
    excluded: Vec<String>,
    /// What it took, once the worker said.
    pub job: Option<(ClaimedJob, Instant)>,
}

/// Counters since start, by outcome.
#[derive(Default, Clone, Copy)]
pub struct DurableTotals {
    pub enqueued: u64,
    pub claimed: u64,
    pub completed: u64,
    pub retried: u64,
    pub discarded: u64,
    pub cancelled: u64,
    pub released: u64,
    pub lost: u64,
    pub rescued: u64,
    /// Claims that came back without a job (and without an error): the statements the
    /// wake-ups cost beyond the jobs they found.
    pub empty_claims: u64,
}

/// The durable room's state.
#[derive(Default)]
pub struct Durable {
    pub keeper: KeeperSlot,
    pub ready: bool,
    pub unready_why: Option<String>,
    maybe_work: bool,
    /// How many claims that have not found a job yet may be out at once (see the module
    /// doc); 0 once a claim came back empty.
    seekers: usize,
    wake_generation: u64,
    next_poll: Option<Instant>,
    next_claim_id: u64,
    pub claims: HashMap<u64, ClaimInFlight>,
    /// The keeper's last counts by queue and state, for `status`.
    pub counts: Value,
    /// The hosts sharing the queue, as the keeper last saw them.
    pub hosts: Value,
    /// Each schedule's next tick.
    pub schedules: Value,
    /// When the leases of this host's running jobs are next renewed.
    next_renewal: Option<Instant>,
    pub totals: DurableTotals,
}

impl Durable {
    /// Jobs may be waiting: `jobs` more claims may seek them (at least one).
    pub fn wake(&mut self, jobs: usize) {
        self.maybe_work = true;
        self.seekers = self.seekers.saturating_add(jobs.max(1)).min(MAX_SEEKERS);
        self.wake_generation += 1;
    }

    /// The poll's wake-up: one claim, unless work is already known to wait.
    fn poll(&mut self) {
        if !self.maybe_work {
            self.maybe_work = true;
            self.seekers = 1;
            self.wake_generation += 1;
        }
    }

    /// Claims sent and durable jobs running on this host.
    pub fn in_flight(&self) -> usize {
        self.claims.len()
    }

    /// Durable jobs running here now (claims that took a job).
    pub fn running(&self) -> usize {
        self.claims.values().filter(|c| c.job.is_some()).count()
    }

    /// Whether another claim should go out now.
    fn wants_claim(&self, queue: &QueueConfig) -> bool {
        let seeking = self.claims.values().filter(|c| c.job.is_none()).count();
        self.ready
            && self.maybe_work
            && seeking < self.seekers
            && !self.keeper.is_gone()
            && self.in_flight() < queue.concurrency.unwrap_or(usize::MAX)
    }

    /// The queues a new claim must not take: those whose running jobs plus the claims that
    /// could still land in them reach their cap. `None` when nothing may be claimed at all
    /// is not needed: a claim excluding every capped queue can still take the others.
    fn excluded_queues(&self, queue: &QueueConfig) -> Vec<String> {
        queue
            .limits
            .iter()
            .filter(|(name, cap)| {
                let taken = self
                    .claims
                    .values()
                    .filter(|c| match &c.job {
                        Some((job, _)) => &job.queue == *name,
                        None => !c.excluded.contains(name),
                    })
                    .count();
                taken >= **cap
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn next_deadline(&self, now: Instant, timeouts_grace: Duration) -> Option<Instant> {
        let overdue = self
            .claims
            .values()
            .map(|c| claim_deadline(c, timeouts_grace));
        earliest_after(
            now,
            overdue
                .chain(self.next_poll)
                .chain(self.next_renewal)
                .chain(self.keeper.next_deadline(now)),
        )
    }
}

/// When a claim's worker is overdue: its job past timeout plus the grace, or a claim
/// unanswered past [`CLAIM_ANSWER_DEADLINE`].
pub fn claim_deadline(claim: &ClaimInFlight, grace: Duration) -> Instant {
    match &claim.job {
        Some((job, started)) => *started + Duration::from_millis(job.timeout_ms) + grace,
        None => claim.sent + CLAIM_ANSWER_DEADLINE,
    }
}

impl Master {
    /// Whether durable jobs are on in this configuration.
    pub(super) fn durable_enabled(&self) -> bool {
        self.keeper_main.is_some()
    }

    /// Keeps the keeper running while the service serves; every `poll_interval`, a wake-up.
    pub(super) fn tend_queue(&mut self) {
        let Some(main) = &self.keeper_main else {
            return;
        };
        self.durable.keeper.murder_if_overdue();
        if !self.control.stopping() {
            self.durable.keeper.ensure_running(main);
        }
        let now = Instant::now();
        let due = self.durable.next_poll.is_none_or(|at| now >= at);
        if due {
            self.durable.poll();
            self.durable.next_poll = Some(now + self.config.queue.poll_interval);
            self.reread_parked_results();
        }
        // A third of the lease: two renewals may fail (a slow database) before it lapses.
        if self.durable.ready && self.durable.next_renewal.is_none_or(|at| now >= at) {
            self.durable.next_renewal = Some(now + self.config.queue.lease / 3);
            let job_ids = self
                .durable
                .claims
                .values()
                .filter_map(|claim| Some(claim.job.as_ref()?.0.job_id))
                .collect();
            self.durable.keeper.send(&ToKeeper::Renew { job_ids });
        }
    }

    /// Hands free slots claims while work may wait (after the `run` jobs had theirs): one
    /// claim per frame, or with `queue.batch` above 1 up to that many in one frame, taken
    /// by one executor as one batch.
    pub(super) fn dispatch_claims(&mut self) {
        if self.control.stopping() || !self.durable_enabled() {
            return;
        }
        let threads = self.config.workers.threads;
        let batch = self.config.queue.batch.max(1);
        while self.durable.wants_claim(&self.config.queue) {
            let Some(slot) = self.workers.least_busy_with_room(threads) else {
                return;
            };
            let excluded = self.durable.excluded_queues(&self.config.queue);
            let mut claim_ids = Vec::with_capacity(batch);
            while claim_ids.len() < batch
                && (claim_ids.is_empty() || self.durable.wants_claim(&self.config.queue))
            {
                let claim_id = self.durable.next_claim_id;
                self.durable.next_claim_id += 1;
                self.durable.claims.insert(
                    claim_id,
                    ClaimInFlight {
                        slot,
                        sent: Instant::now(),
                        wake_generation: self.durable.wake_generation,
                        excluded: excluded.clone(),
                        job: None,
                    },
                );
                claim_ids.push(claim_id);
            }
            let Some(worker) = self.workers.get_mut(slot) else {
                return;
            };
            worker.assign_claims(&claim_ids);
            worker.send(&ToWorker::Claim {
                claim_ids,
                excluded_queues: excluded,
            });
        }
    }

    /// A worker's answer to a claim: the job it took, or none.
    pub(super) fn on_claimed(
        &mut self,
        slot: usize,
        claim_id: u64,
        job: Option<ClaimedJob>,
        error: Option<String>,
    ) {
        match job {
            Some(job) => {
                self.durable.totals.claimed += 1;
                // Found work: one more claim may seek (the fan-out doubles per round trip).
                self.durable.seekers = (self.durable.seekers + 1).min(MAX_SEEKERS);
                if let Some(claim) = self.durable.claims.get_mut(&claim_id) {
                    claim.job = Some((job, Instant::now()));
                }
            }
            None => {
                match &error {
                    Some(error) => {
                        debug!(target: "forkpool::queue", "worker {slot}: claim failed: {error}")
                    }
                    None => self.durable.totals.empty_claims += 1,
                }
                if let Some(claim) = self.durable.claims.remove(&claim_id) {
                    if claim.wake_generation == self.durable.wake_generation || error.is_some() {
                        self.durable.maybe_work = false;
                        self.durable.seekers = 0;
                    }
                }
                if let Some(worker) = self.workers.get_mut(slot) {
                    worker.release_claim(claim_id, false);
                }
            }
        }
    }

    /// A claimed job was settled: its slot is free, `result` waits on it are re-read.
    pub(super) fn on_settled(&mut self, slot: usize, claim_id: u64, job_id: i64, outcome: &str) {
        self.durable.claims.remove(&claim_id);
        if let Some(worker) = self.workers.get_mut(slot) {
            worker.release_claim(claim_id, true);
        }
        let totals = &mut self.durable.totals;
        match outcome {
            "completed" => totals.completed += 1,
            "retry" => totals.retried += 1,
            "discarded" => totals.discarded += 1,
            "cancelled" => totals.cancelled += 1,
            "released" => totals.released += 1,
            _ => totals.lost += 1,
        }
        // A queue at its cap may have room now: jobs left waiting behind the cap (an empty
        // claim that excluded it cleared `maybe_work`) are sought again. Without caps, a
        // settled job says nothing new: whatever came since the last empty claim woke us.
        if !self.config.queue.limits.is_empty() {
            self.durable.wake(1);
        }
        self.reread_results_of(job_id);
    }

    /// A worker exited: its claims are void, and the keeper takes back what it held.
    pub(super) fn rescue_worker_jobs(
        &mut self,
        slot: usize,
        number: u64,
        claimed: bool,
        how: &str,
    ) {
        let held: Vec<u64> = self
            .durable
            .claims
            .iter()
            .filter(|(_, claim)| claim.slot == slot)
            .map(|(id, _)| *id)
            .collect();
        for claim_id in &held {
            self.durable.claims.remove(claim_id);
        }
        // In a stop, what the worker held was interrupted by the stop: once every worker is
        // gone the keeper puts it back without spending its attempt (`ToKeeper::Stop`). A
        // rescue now would count the attempt and record `worker_lost`.
        if !claimed || !self.durable_enabled() || self.control.stopping() {
            return;
        }
        let why = format!("worker {slot} {how}");
        if !self.durable.keeper.send(&ToKeeper::RescueWorker {
            worker: number as i64,
            why: why.clone(),
        }) {
            warn!(target: "forkpool::queue", "{why}; no queue keeper runs to take its jobs back now: the next start of this host takes them back");
        }
    }

    /// Slots of workers whose durable job (or unanswered claim) is past its deadline.
    pub(super) fn overdue_claim_slots(&self, now: Instant, grace: Duration) -> Vec<usize> {
        self.durable
            .claims
            .values()
            .filter(|claim| now >= claim_deadline(claim, grace))
            .map(|claim| claim.slot)
            .collect()
    }

    pub(super) fn read_keeper(&mut self) {
        for frame in self.durable.keeper.read_frames(&mut self.scratch) {
            match frame {
                FromKeeper::Ready { schema_version } => {
                    info!(target: "forkpool::queue", "durable jobs ready (schema version {schema_version})");
                    self.durable.ready = true;
                    self.durable.unready_why = None;
                    self.durable.wake(1);
                }
                FromKeeper::Unready { why } => {
                    self.durable.ready = false;
                    self.durable.unready_why = Some(why);
                }
                FromKeeper::Answer {
                    request,
                    ok,
                    body,
                    finished,
                } => self.on_keeper_answer(request, ok, body.get(), finished),
                FromKeeper::Wake => self.durable.wake(1),
                FromKeeper::Rescued { count } => {
                    self.durable.totals.rescued += count;
                }
                FromKeeper::Counts {
                    queues,
                    hosts,
                    schedules,
                } => {
                    self.durable.counts = queues;
                    self.durable.hosts = hosts;
                    self.durable.schedules = schedules;
                }
                FromKeeper::Heartbeat { .. } => self.durable.keeper.heard_healthy(),
            }
        }
    }

    pub(super) fn flush_keeper(&mut self) {
        self.durable.keeper.flush();
    }

    /// The keeper exited: what it was asked and has not answered is answered now.
    pub(super) fn on_keeper_exit(&mut self) {
        self.durable.ready = false;
        self.durable.unready_why = Some("the queue keeper is restarting".to_string());
        self.answer_keeper_requests_unavailable();
    }

    /// The `durable` part of `status`.
    pub(super) fn durable_status(&self) -> Value {
        if !self.durable_enabled() {
            return Value::Null;
        }
        let t = self.durable.totals;
        json!({
            "ready": self.durable.ready,
            "why_not_ready": self.durable.unready_why,
            "database": self.config.queue.database,
            "running": self.durable.running(),
            "claiming": self.durable.in_flight() - self.durable.running(),
            "queues": self.durable.counts,
            "hosts": self.durable.hosts,
            "schedules": self.durable.schedules,
            "totals": {
                "enqueued": t.enqueued, "claimed": t.claimed, "completed": t.completed,
                "retried": t.retried, "discarded": t.discarded, "cancelled": t.cancelled,
                "released": t.released, "lost": t.lost, "rescued": t.rescued,
                "empty_claims": t.empty_claims,
            },
        })
    }
}

//! Jobs the master holds: waiting in the queue, or running on a worker. The table and the
//! queue are private: a job enters by [`Jobs::enqueue`], starts by [`Jobs::start`] and leaves
//! by [`Jobs::remove`], so the two can never disagree.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::clients::ClientId;
use crate::catalog::JobSpec;

/// An accepted job: it gets exactly one answer, whatever happens to its worker.
pub struct Job {
    pub id: u64,
    pub client: ClientId,
    /// The request's `id`, echoed in the answer.
    pub request_id: Box<RawValue>,
    pub spec: Arc<JobSpec>,
    pub args: Box<RawValue>,
    pub timeout: Duration,
    /// When it was accepted: its queue wait and its time in the service count from here.
    pub accepted: Instant,
    /// Set while a worker runs it.
    pub running: Option<Running>,
    /// Already run once on a worker that died (`retry_on_worker_lost` allows one more run).
    pub retried: bool,
}

pub struct Running {
    pub slot: usize,
    pub started: Instant,
}

#[derive(Default)]
pub struct Jobs {
    next_id: u64,
    queue: VecDeque<u64>,
    table: HashMap<u64, Job>,
}

impl Jobs {
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn enqueue(&mut self, job: Job) {
        self.queue.push_back(job.id);
        self.table.insert(job.id, job);
    }

    /// The job at the head of the queue, taken off it (it stays in the table until
    /// [`Jobs::start`] and then [`Jobs::remove`]).
    pub fn pop_queued(&mut self) -> Option<u64> {
        self.queue.pop_front()
    }

    /// Marks a job taken off the queue as running on `slot` from now.
    pub fn start(&mut self, job_id: u64, slot: usize) -> Option<&Job> {
        let job = self.table.get_mut(&job_id)?;
        job.running = Some(Running {
            slot,
            started: Instant::now(),
        });
        Some(job)
    }

    /// Puts a job whose worker died back at the head of the queue, for its one retry.
    pub fn requeue_first(&mut self, job_id: u64) {
        if let Some(job) = self.table.get_mut(&job_id) {
            job.running = None;
            job.retried = true;
            self.queue.push_front(job_id);
        }
    }

    /// Forgets a job, queued or running.
    pub fn remove(&mut self, job_id: u64) -> Option<Job> {
        let job = self.table.remove(&job_id)?;
        if job.running.is_none() {
            self.queue.retain(|queued| *queued != job_id);
        }
        Some(job)
    }

    pub fn get(&self, job_id: u64) -> Option<&Job> {
        self.table.get(&job_id)
    }

    /// Every job, queued or running, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Job> {
        self.table.values()
    }

    /// Every job's id, queued or running.
    pub fn ids(&self) -> Vec<u64> {
        self.table.keys().copied().collect()
    }

    /// Clients that wait for an answer to a job.
    pub fn awaiting_clients(&self) -> HashSet<ClientId> {
        self.table.values().map(|job| job.client).collect()
    }

    pub fn queued_count(&self) -> usize {
        self.queue.len()
    }

    pub fn running_count(&self) -> usize {
        self.table.len() - self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

//! Jobs the master holds: waiting in the queue, or running on a worker.

use std::collections::{HashMap, VecDeque};
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
    pub queue: VecDeque<u64>,
    pub table: HashMap<u64, Job>,
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

    /// Puts a job whose worker died back at the head of the queue, for its one retry.
    pub fn requeue_first(&mut self, job_id: u64) {
        if let Some(job) = self.table.get_mut(&job_id) {
            job.running = None;
            job.retried = true;
            self.queue.push_front(job_id);
        }
    }

    pub fn running_count(&self) -> usize {
        self.table.len() - self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

//! Dispatch: accepted jobs queue here, go to a worker with room, and leave with exactly one
//! answer. The next job for a free slot is chosen in one place, [`Master::next_job_for`],
//! where a second source of work can plug in.

use std::time::{Duration, Instant};

use std::sync::Arc;

use serde_json::value::RawValue;

use super::clients::ClientId;
use super::jobs::Job;
use super::Master;
use crate::catalog::JobSpec;
use crate::ipc::ToWorkerRef;
use crate::protocol::{self, Args, ErrorBody, ErrorKind};

impl Master {
    /// Checks a `run` request and queues it; from here on it gets exactly one answer.
    pub(super) fn accept_job(
        &mut self,
        client: ClientId,
        id: Box<RawValue>,
        name: &str,
        args: Args,
        timeout_ms: Option<u64>,
    ) {
        if self.control.stopping() {
            let body = ErrorBody::new(ErrorKind::ShuttingDown, "the service is stopping");
            return self.answer_error(client, &id, &body);
        }
        let spec = match self.checked_job(name, &args) {
            Ok(spec) => spec,
            Err(body) => return self.answer_error(client, &id, &body),
        };
        if self.jobs.queued_count() >= self.config.service.queue_limit {
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
            args: args.raw,
            timeout,
            accepted: Instant::now(),
            running: None,
            retried: false,
        });
    }

    /// The catalog's job `name` with `args` checked against it, as `run` and `enqueue` both
    /// need: bad arguments never reach a worker (which binds them again) or the job table.
    /// The members were read once with the request; the raw text is not read again.
    pub(super) fn checked_job(&self, name: &str, args: &Args) -> Result<Arc<JobSpec>, ErrorBody> {
        let Some(spec) = self.catalog.get(name).cloned() else {
            let known: Vec<&str> = self.catalog.names().collect();
            return Err(ErrorBody::new(
                ErrorKind::UnknownJob,
                format!("no job named `{name}` (jobs: {})", known.join(", ")),
            ));
        };
        spec.check_args(&args.values)
            .map_err(|message| ErrorBody::new(ErrorKind::InvalidArgs, message))?;
        Ok(spec)
    }

    /// Answers an accepted job and forgets it. The one place a job leaves the master.
    pub(super) fn finish_job(&mut self, job_id: u64, ok: bool, body: &str) {
        let Some(job) = self.jobs.remove(job_id) else {
            return;
        };
        self.record_answer(&job, ok, body);
        if ok {
            self.totals.succeeded += 1;
            self.answer(job.client, &protocol::ok_line(&job.request_id, body));
        } else {
            self.totals.failed += 1;
            self.answer(job.client, &protocol::error_line(&job.request_id, body));
        }
    }

    pub(super) fn fail_job(&mut self, job_id: u64, body: ErrorBody) {
        self.finish_job(job_id, false, &body.to_json());
    }

    /// Hands queued jobs to workers with room, the least busy first. The jobs a worker gets
    /// in one turn leave in one write, and its idle executor takes them together; a worker
    /// is only given jobs it can start now (no prefetch): up to `workers.pipeline` to an
    /// idle executor, none to an executor still busy with its batch.
    pub(super) fn dispatch_jobs(&mut self) {
        let mut handed = false;
        while let Some(slot) = self.workers.least_busy_for_job(&self.config.workers) {
            let Some(job_id) = self.next_job_for(slot) else {
                break;
            };
            self.send_job(slot, job_id);
            handed = true;
        }
        if handed {
            for worker in self.workers.iter_mut() {
                worker.seal_batch();
                if worker.wants_write() {
                    let _ = worker.flush();
                }
            }
        }
    }

    /// The next job for a worker slot with room: the head of the queue.
    fn next_job_for(&mut self, _slot: usize) -> Option<u64> {
        self.jobs.pop_queued()
    }

    /// Starts a job taken off the queue on `slot`; its frame waits for the turn's one write.
    fn send_job(&mut self, slot: usize, job_id: u64) {
        let (Some(job), Some(worker)) = (self.jobs.start(job_id, slot), self.workers.get_mut(slot))
        else {
            return;
        };
        worker.assign(job_id);
        worker.queue(&ToWorkerRef::Run {
            job_id,
            job: &job.spec.name,
            args: &job.args,
            timeout_ms: job.timeout.as_millis() as u64,
        });
    }
}

//! The master's requests to the keeper, each answered once: enqueue and the reads for
//! `result` (each batched: one statement for the frames that arrived together), cancel,
//! rescue of a dead worker's jobs, and the stop.

use std::collections::HashMap;

use log::{debug, info, warn};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::Keeper;
use crate::catalog::JobSpec;
use crate::ipc::{EnqueueOptions, FromKeeper, ToKeeper};
use crate::pools::pool_error_body;
use crate::protocol::{ErrorBody, ErrorKind};
use crate::queue::enqueue::{self, Enqueued, NewJob};
use crate::queue::keeping::{self, Cancelled, Rescue};
use crate::queue::{admin, leases};

/// The job states after which nothing more happens to a job.
pub const FINISHED_STATES: [&str; 3] = ["completed", "discarded", "cancelled"];

impl Keeper {
    /// Handles one batch of frames; `Some(exit code)` once told to stop.
    pub(super) fn handle(&mut self, frames: Vec<ToKeeper>) -> Option<i32> {
        let mut enqueues = Vec::new();
        let mut reads = Vec::new();
        let mut stop = false;
        let mut exit = false;
        for frame in frames {
            match frame {
                ToKeeper::Enqueue {
                    request,
                    job,
                    args,
                    options,
                } => enqueues.push((request, job, args, options)),
                ToKeeper::Read { request, job_id } => reads.push((request, job_id)),
                ToKeeper::Cancel { request, job_id } => self.cancel(request, job_id),
                ToKeeper::RescueWorker { worker, why } => self.rescue_worker(worker, why),
                ToKeeper::Renew { job_ids } => self.renew(&job_ids),
                ToKeeper::Queues { request } => self.list_queues(request),
                ToKeeper::Pause { request, queue } => self.pause(request, &queue, true),
                ToKeeper::Resume { request, queue } => self.pause(request, &queue, false),
                ToKeeper::Stop => stop = true,
                ToKeeper::Exit => exit = true,
            }
        }
        // After the frames handled in order: a read sees at least what they changed.
        if !reads.is_empty() {
            self.read(reads);
        }
        if !enqueues.is_empty() {
            self.enqueue(enqueues);
        }
        self.flush_answers();
        if stop {
            return Some(self.stop());
        }
        if exit {
            self.pool.close();
            return Some(0);
        }
        None
    }

    /// Queues the answer to `request`; the batch's answers leave together when it is done.
    fn answer(&self, request: u64, outcome: Result<Value, ErrorBody>, finished: bool) {
        let (ok, text) = match outcome {
            Ok(value) => (true, value.to_string()),
            Err(error) => (false, error.to_json()),
        };
        self.answer_text(request, ok, text, finished);
    }

    fn answer_text(&self, request: u64, ok: bool, text: String, finished: bool) {
        self.queue_answer(&FromKeeper::Answer {
            request,
            ok,
            body: RawValue::from_string(text).expect("answers are JSON"),
            finished,
        });
    }

    fn not_ready(&self) -> ErrorBody {
        ErrorBody::new(
            ErrorKind::DbUnavailable,
            format!(
                "durable jobs are not ready: {}",
                self.last_problem
                    .as_deref()
                    .unwrap_or("the queue's database has not been reached yet")
            ),
        )
    }

    /// Checks each request against the catalog (like `run`: nothing is stored for a bad one),
    /// then stores the good ones in one statement; one at a time if that statement fails, so
    /// one bad request cannot fail the others.
    fn enqueue(&mut self, requests: Vec<(u64, String, Box<RawValue>, EnqueueOptions)>) {
        let (mut ids, mut jobs) = (Vec::with_capacity(requests.len()), Vec::new());
        jobs.reserve(requests.len());
        for (request, job, args, options) in requests {
            if !self.ready {
                self.answer(request, Err(self.not_ready()), false);
                continue;
            }
            match self.check_enqueue(job, &args, options) {
                Ok(new_job) => {
                    ids.push(request);
                    jobs.push(new_job);
                }
                Err(error) => self.answer(request, Err(error), false),
            }
        }
        if jobs.is_empty() {
            return;
        }
        let batch = self.autocommit(|conn| enqueue::enqueue_batch(conn, &jobs));
        match batch {
            Ok(stored) => {
                for ((request, job), stored) in ids.iter().zip(&jobs).zip(stored) {
                    self.answer_enqueued(*request, job, stored);
                }
            }
            Err(error) if jobs.len() == 1 => {
                let body = pool_error_body(error, &self.setup.database);
                self.answer(ids[0], Err(body), false);
            }
            Err(error) => {
                // The statement is atomic: nothing of the batch was stored.
                debug!(target: "forkpool::queue", "a batch of {} enqueues failed ({error}); one at a time", jobs.len());
                for (request, job) in ids.into_iter().zip(jobs) {
                    let one = self.autocommit(|conn| enqueue::enqueue_one(conn, &job));
                    self.answer_enqueued(request, &job, one);
                }
            }
        }
    }

    fn answer_enqueued(
        &self,
        request: u64,
        job: &NewJob,
        stored: Result<Enqueued, crate::pool::Error>,
    ) {
        match stored {
            Ok(stored) => {
                debug!(target: "forkpool::queue", "enqueued job {} ({}), duplicate: {}", stored.job_id, job.job, stored.duplicate);
                // Written straight from the struct: no `Value` tree per job.
                let text = serde_json::to_string(&stored).expect("an answer serializes");
                self.answer_text(request, true, text, false);
            }
            Err(error) => {
                let body = pool_error_body(error, &self.setup.database);
                self.answer(request, Err(body), false);
            }
        }
    }

    fn check_enqueue(
        &self,
        job: String,
        args: &RawValue,
        options: EnqueueOptions,
    ) -> Result<NewJob, ErrorBody> {
        let spec = self.setup.catalog.get(&job).ok_or_else(|| {
            ErrorBody::new(ErrorKind::UnknownJob, format!("no job named `{job}`"))
        })?;
        let args: Map<String, Value> = serde_json::from_str(args.get()).map_err(|e| {
            ErrorBody::new(
                ErrorKind::InvalidArgs,
                format!("args must be an object: {e}"),
            )
        })?;
        check_args(spec, &args)?;
        let run_at = match &options.run_at {
            None => None,
            Some(text) => Some(
                chrono::DateTime::parse_from_rfc3339(text)
                    .map_err(|e| {
                        ErrorBody::new(
                            ErrorKind::BadRequest,
                            format!("run_at {text:?} is not an RFC 3339 time: {e}"),
                        )
                    })?
                    .to_rfc3339(),
            ),
        };
        Ok(NewJob {
            job,
            args: Value::Object(args),
            queue: options.queue,
            priority: options.priority,
            run_at,
            delay_ms: options.delay_ms,
            max_attempts: options.max_attempts,
            unique_key: options.unique_key,
        })
    }

    /// The `result` reads of one batch, in one statement: each job as it is now; `finished`
    /// tells the master whether to wait on.
    fn read(&self, reads: Vec<(u64, i64)>) {
        if !self.ready {
            for (request, _) in reads {
                self.answer(request, Err(self.not_ready()), false);
            }
            return;
        }
        let ids: Vec<i64> = reads.iter().map(|(_, job_id)| *job_id).collect();
        let rows = match self.autocommit(|conn| keeping::read_jobs(conn, &ids)) {
            Ok(rows) => rows,
            Err(error) => {
                let body = pool_error_body(error, &self.setup.database);
                for (request, _) in reads {
                    self.answer(request, Err(body.clone()), false);
                }
                return;
            }
        };
        let jobs: HashMap<i64, (String, String)> = rows
            .into_iter()
            .map(|(job_id, state, body)| (job_id, (state, body)))
            .collect();
        for (request, job_id) in reads {
            match jobs.get(&job_id) {
                Some((state, body)) => {
                    let finished = FINISHED_STATES.contains(&state.as_str());
                    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                    self.answer(request, Ok(body), finished)
                }
                None => self.answer(request, Err(not_found(job_id)), true),
            }
        }
    }

    fn cancel(&self, request: u64, job_id: i64) {
        if !self.ready {
            return self.answer(request, Err(self.not_ready()), false);
        }
        let cancelled = self
            .checkout()
            .and_then(|mut conn| keeping::cancel(&mut conn, job_id));
        let outcome = match cancelled {
            Ok(Cancelled::NotFound) => Err(not_found(job_id)),
            Ok(Cancelled::Now) => {
                debug!(target: "forkpool::queue", "job {job_id} cancelled before it ran");
                Ok(json!({"job_id": job_id, "state": "cancelled", "cancelled": true}))
            }
            Ok(Cancelled::Requested) => {
                debug!(target: "forkpool::queue", "job {job_id} running: its query was sent a cancel");
                Ok(json!({"job_id": job_id, "state": "running", "cancelled": true}))
            }
            Ok(Cancelled::AlreadyFinished(state)) => {
                Ok(json!({"job_id": job_id, "state": state, "cancelled": false}))
            }
            Err(error) => Err(pool_error_body(error, &self.setup.database)),
        };
        self.answer(request, outcome, true);
    }

    /// A worker of this instance died: its jobs run again now, the attempt counted; and once
    /// more a little later, for a claim that was still on its way (`RESCUE_AGAIN_AFTER`).
    fn rescue_worker(&mut self, worker: i64, why: String) {
        self.take_back(worker, &why);
        let again = std::time::Instant::now() + super::RESCUE_AGAIN_AFTER;
        self.rescue_again.push((again, worker, why));
    }

    /// Makes the jobs dead worker `worker` holds runnable again, `why` recorded.
    pub(super) fn take_back(&self, worker: i64, why: &str) {
        let which = Rescue::Worker {
            host: &self.setup.host,
            instance: self.setup.instance,
            worker,
        };
        let rescued = self
            .checkout()
            .and_then(|mut conn| keeping::rescue(&mut conn, which, why));
        match rescued {
            Ok(0) => {}
            Ok(n) => {
                info!(target: "forkpool::queue", "rescued {n} jobs of worker {worker} ({why})");
                self.send(&FromKeeper::Wake);
                self.send(&FromKeeper::Rescued { count: n });
            }
            // The jobs stay `running` under a dead holder: the next start of this host, or
            // another host once the lease lapses, takes them back.
            Err(e) => warn!(target: "forkpool::queue", "rescuing worker {worker}'s jobs: {e}"),
        }
    }

    /// `queues`: every queue with its counts and whether it is paused.
    fn list_queues(&self, request: u64) {
        if !self.ready {
            return self.answer(request, Err(self.not_ready()), false);
        }
        let listed = self
            .checkout()
            .and_then(|mut conn| admin::queues(&mut conn));
        let outcome = match listed {
            Ok(rows) => Ok(json!({ "queues": rows })),
            Err(error) => Err(pool_error_body(error, &self.setup.database)),
        };
        self.answer(request, outcome, true);
    }

    /// `pause` / `resume`: stored in the database, so every host sees it at its next claim.
    fn pause(&self, request: u64, queue: &str, paused: bool) {
        if !self.ready {
            return self.answer(request, Err(self.not_ready()), false);
        }
        let changed = self.checkout().and_then(|mut conn| {
            if paused {
                admin::pause(&mut conn, queue)
            } else {
                admin::resume(&mut conn, queue)
            }
        });
        let outcome = match changed {
            Ok(()) => {
                info!(target: "forkpool::queue", "queue {queue} {}", if paused { "paused" } else { "resumed" });
                Ok(json!({ "queue": queue, "paused": paused }))
            }
            Err(error) => Err(pool_error_body(error, &self.setup.database)),
        };
        self.answer(request, outcome, true);
    }

    /// Renews this host's leases, and its heartbeat with them.
    fn renew(&mut self, job_ids: &[i64]) {
        if !self.ready {
            return;
        }
        let renewed = self.checkout().and_then(|mut conn| {
            let (host, instance) = (&self.setup.host, self.setup.instance);
            leases::heartbeat(&mut conn, host, instance, &self.hostname, self.master)?;
            leases::renew(&mut conn, host, instance, job_ids, self.setup.queue.lease)
        });
        match renewed {
            Ok(n) => debug!(target: "forkpool::queue", "renewed {n} leases"),
            // Not renewed, the leases lapse and other hosts take the jobs back: that is the
            // contract when this host cannot reach the database.
            Err(e) => warn!(target: "forkpool::queue", "renewing leases: {e}"),
        }
    }

    /// The end of a graceful stop: every worker is gone, so what this instance still holds
    /// was interrupted by the stop and goes back without spending its attempt.
    fn stop(&mut self) -> i32 {
        if self.ready {
            let released = self.checkout().and_then(|mut conn| {
                keeping::release_instance(&mut conn, &self.setup.host, self.setup.instance)
            });
            match released {
                Ok(0) => {}
                Ok(n) => {
                    info!(target: "forkpool::queue", "put {n} interrupted jobs back, attempts not spent")
                }
                Err(e) => warn!(target: "forkpool::queue", "putting interrupted jobs back: {e}"),
            }
        }
        self.pool.close();
        0
    }
}

/// A SQL job's arguments are bound now, so a bad one is refused before anything is stored;
/// a Rust handler checks its own when it runs.
fn check_args(spec: &JobSpec, args: &Map<String, Value>) -> Result<(), ErrorBody> {
    spec.check_args(args)
        .map_err(|message| ErrorBody::new(ErrorKind::InvalidArgs, message))
}

fn not_found(job_id: i64) -> ErrorBody {
    ErrorBody::new(
        ErrorKind::NotFound,
        format!("no durable job has id {job_id}"),
    )
}

//! A durable job's life in a worker (DESIGN §12): claim one, run it, settle it exactly one
//! way, each settling statement fenced by the claim.
//!
//! 1. The claim is an autocommit statement on the queue's database, so the job is visibly
//!    `running` under this worker before it starts: if the worker dies from here on, the
//!    master's rescue finds it by (host, instance, worker).
//! 2. A SQL job on the queue's database with `transaction = true` is **exactly-once**: its
//!    statements and its completion commit in one transaction on the claim's own session;
//!    a lost fence rolls both back.
//! 3. Any other job (another database, `transaction = false`, a Rust handler) runs as a
//!    `run` job would, then is completed in a statement of its own: at-least-once.
//! 4. A failure is recorded and retried after the backoff, or discarded; a job interrupted
//!    by a stop is put back without spending its attempt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use serde_json::{json, Map, Value};

use super::sql_job;
use crate::catalog::{Catalog, JobKind, JobSpec, SqlJob};
use crate::handler::DurableRun as HandlerRun;
use crate::ipc::{ClaimedJob as ClaimedFrame, FromWorker};
use crate::pool::{self, PooledConnection};
use crate::pools::{pool_error_body, Pools};
use crate::protocol::{ErrorBody, ErrorKind};
use crate::queue::backoff::retry_delay;
use crate::queue::claim::{self, ClaimedJob, Failure, Holder, Settled};

/// How long the claim and each settling statement may take: they are short, indexed
/// statements; a server that does not answer in this time is treated as unavailable.
const BOOKKEEPING_DEADLINE: Duration = Duration::from_secs(10);

/// What every durable run of this worker shares.
pub struct DurableSetup {
    pub holder: Holder,
    /// `queue.database`.
    pub database: String,
    pub lease: Duration,
    /// Record the claiming backend for `cancel` (off with `queue.listen = false`, the
    /// transaction-mode pooler setting).
    pub record_backend: bool,
    /// The catalog's job names: only those are claimed.
    pub jobs: Vec<String>,
}

/// One executor's view of the worker, for a durable run.
pub struct DurableRun<'a> {
    pub slot: usize,
    pub setup: &'a DurableSetup,
    pub catalog: &'a Catalog,
    pub pools: &'a Pools,
    /// Set when the worker was told to stop fast: a job failing now was interrupted, not
    /// broken, and goes back without spending its attempt.
    pub stopping: &'a Arc<AtomicBool>,
}

impl DurableRun<'_> {
    /// Claims at most one job and runs it; tells the master what was claimed at once (so it
    /// can time the job) and how it was settled. `send` failing means the master is gone.
    pub fn claim_and_run(&self, claim_id: u64, excluded: &[String], send: impl Fn(&FromWorker)) {
        let mut conn = match self.bookkeeping_session() {
            Ok(conn) => conn,
            Err(error) => return send(&claim_failed(claim_id, &error.to_string())),
        };
        let claimed = claim::claim(
            &mut conn,
            &self.setup.jobs,
            excluded,
            1,
            &self.setup.holder,
            self.setup.lease,
            self.setup.record_backend,
        );
        let job = match claimed {
            Ok(mut jobs) if !jobs.is_empty() => jobs.remove(0),
            Ok(_) => {
                conn.known_idle();
                return send(&FromWorker::Claimed {
                    claim_id,
                    job: None,
                    error: None,
                });
            }
            Err(error) => return send(&claim_failed(claim_id, &error.to_string())),
        };
        conn.known_idle();
        let spec = self.catalog.get(&job.job).cloned();
        send(&FromWorker::Claimed {
            claim_id,
            job: Some(ClaimedFrame {
                job_id: job.claim.id,
                job: job.job.clone(),
                queue: job.queue.clone(),
                attempt: job.attempt,
                timeout_ms: spec.as_ref().map_or(0, |s| s.timeout.as_millis() as u64),
            }),
            error: None,
        });
        debug!(target: "forkpool::queue", "worker {} claimed job {} ({}), attempt {}", self.slot, job.claim.id, job.job, job.attempt);
        let settled = self.run_claimed(conn, &job, spec.as_deref());
        send(&FromWorker::Settled {
            claim_id,
            job_id: job.claim.id,
            outcome: settled.to_string(),
        });
    }

    /// Runs a claimed job and settles it; `conn` is a session on the queue's database (the
    /// claim's own, for an exactly-once job). `spec` is `None` for a job this catalog lacks.
    pub(super) fn run_claimed(
        &self,
        conn: PooledConnection,
        job: &ClaimedJob,
        spec: Option<&JobSpec>,
    ) -> Outcome {
        match spec {
            Some(spec) => self.run(conn, job, spec),
            // Claims name only this catalog's jobs; a reload between can still drop one.
            None => {
                let error = ErrorBody::new(
                    ErrorKind::UnknownJob,
                    format!("job `{}` is not in this worker's catalog", job.job),
                );
                self.settle_failure(Some(conn), job, None, &error)
            }
        }
    }

    /// Runs the claimed job; `conn` is the claim's session on the queue's database.
    fn run(&self, mut conn: PooledConnection, job: &ClaimedJob, spec: &JobSpec) -> Outcome {
        let started = Instant::now();
        let deadline = started + spec.timeout;
        let args: Map<String, Value> = match serde_json::from_str(&job.args) {
            Ok(args) => args,
            Err(e) => {
                let error = ErrorBody::new(
                    ErrorKind::InvalidArgs,
                    format!("args must be a JSON object: {e}"),
                );
                return self.settle_failure(Some(conn), job, Some(spec), &error);
            }
        };
        match &spec.kind {
            JobKind::Sql(sql) if sql.database == self.setup.database && sql.transaction => {
                self.run_exactly_once(conn, job, spec, sql, &args, deadline, started)
            }
            JobKind::Sql(sql) if sql.database == self.setup.database => {
                // transaction = false: on the claim's session (the pool may hold only one).
                let outcome = self.run_on(&mut conn, spec, sql, &args, deadline, started);
                self.settle_at_least_once(Some(conn), job, spec, outcome)
            }
            JobKind::Rust(rust) => {
                // The handler may use the queue's database itself: give the claim's session
                // back while it runs. It may complete the job in its own transaction.
                drop(conn);
                let mut run = HandlerRun {
                    claim: job.claim,
                    database: self.setup.database.clone(),
                    slot: self.slot,
                    started,
                    completed: false,
                };
                let outcome = super::rust_job::run(
                    rust,
                    job.claim.id as u64,
                    &spec.name,
                    &args,
                    deadline,
                    self.pools,
                    Some(&mut run),
                );
                if run.completed {
                    debug!(target: "forkpool::queue", "job {} completed by its handler (exactly once)", job.claim.id);
                    return Outcome::Completed;
                }
                let outcome = outcome.map(|value| {
                    self.result_object(serde_json::json!({ "value": value }), started)
                });
                self.settle_at_least_once(None, job, spec, outcome)
            }
            JobKind::Sql(_) => {
                // Another database: give the claim's session back while the job runs.
                drop(conn);
                let mut held = None;
                let outcome = super::run_spec(
                    self.slot,
                    job.claim.id as u64,
                    spec,
                    &args,
                    deadline,
                    started,
                    self.pools,
                    &mut held,
                );
                drop(held);
                self.settle_at_least_once(None, job, spec, outcome)
            }
        }
    }

    /// The job's statements and its fenced completion in one transaction.
    #[allow(clippy::too_many_arguments)]
    fn run_exactly_once(
        &self,
        mut conn: PooledConnection,
        job: &ClaimedJob,
        spec: &JobSpec,
        sql: &SqlJob,
        args: &Map<String, Value>,
        deadline: Instant,
        started: Instant,
    ) -> Outcome {
        let values = match sql_job::bind(sql, args) {
            Ok(values) => values,
            Err(error) => return self.settle_failure(Some(conn), job, Some(spec), &error),
        };
        conn.set_deadline(Some(deadline));
        let committed = (|| -> Result<bool, pool::Error> {
            let ran = sql_job::execute_statements(&mut conn, sql, &values, true)?;
            let result = match ran.into_output(&spec.name, sql) {
                Ok(output) => self.result_object(output.to_result(), started),
                Err(error) => return Err(pool::Error::Config(error.message)),
            };
            // The completion and COMMIT in one round trip; a failed fence rolls back.
            claim::complete_and_commit(&mut conn, job.claim, &result)
        })();
        match committed {
            Ok(true) => {
                conn.known_idle();
                debug!(target: "forkpool::queue", "job {} completed (exactly once)", job.claim.id);
                Outcome::Completed
            }
            Ok(false) => {
                conn.known_idle();
                self.settle_fenced_off(conn, job)
            }
            Err(error) => {
                // A session that rolled back records the failure itself; a broken one goes
                // back to the pool first (discarded there), so the record gets a fresh one.
                let rolled_back = !matches!(error, pool::Error::Timeout { .. })
                    && conn.batch_execute("ROLLBACK").is_ok();
                let conn = if rolled_back {
                    conn.known_idle();
                    Some(conn)
                } else {
                    drop(conn);
                    None
                };
                let body = match error {
                    pool::Error::Config(message) => ErrorBody::new(ErrorKind::Internal, message),
                    error => pool_error_body(error, &sql.database),
                };
                self.settle_failure(conn, job, Some(spec), &body)
            }
        }
    }

    /// The completion's fence failed and the job's transaction was rolled back: either the
    /// claim was taken back meanwhile, or a cancel was asked when the query cancel found
    /// nothing to interrupt (between two statements). Recording the failure tells them
    /// apart: it matches only a claim still ours, whose cancel is requested, so it ends
    /// `cancelled` now rather than `running` until its lease lapses.
    fn settle_fenced_off(&self, mut conn: PooledConnection, job: &ClaimedJob) -> Outcome {
        conn.set_deadline(Some(Instant::now() + BOOKKEEPING_DEADLINE));
        let failure = Failure {
            kind: ErrorKind::DbError.as_str(),
            message: "cancelled between its statements; its transaction was rolled back",
            sqlstate: Some("57014"),
        };
        match claim::fail(&mut conn, job.claim, failure, None) {
            Ok(Settled::Cancelled) => {
                debug!(target: "forkpool::queue", "job {} ({}) cancelled between its statements", job.claim.id, job.job);
                Outcome::Cancelled
            }
            Ok(Settled::Lost) => {
                warn!(target: "forkpool::queue", "job {} ({}): this worker lost the lease of its claim (the job was taken back meanwhile); its transaction was rolled back", job.claim.id, job.job);
                Outcome::Lost
            }
            // Not reached: a claim still ours whose completion was fenced off has its cancel
            // requested (nothing clears it while the job runs).
            Ok(Settled::Retry) => Outcome::Retry,
            Ok(Settled::Discarded) => Outcome::Discarded,
            Err(e) => {
                warn!(target: "forkpool::queue", "job {} ({}): its completion was fenced off, and recording why failed: {e}", job.claim.id, job.job);
                Outcome::Lost
            }
        }
    }

    /// A `transaction = false` job on the claim's session: its statements, each in its own.
    fn run_on(
        &self,
        conn: &mut PooledConnection,
        spec: &JobSpec,
        sql: &SqlJob,
        args: &Map<String, Value>,
        deadline: Instant,
        started: Instant,
    ) -> Result<String, ErrorBody> {
        let values = sql_job::bind(sql, args)?;
        conn.set_deadline(Some(deadline));
        let ran = sql_job::execute_statements(conn, sql, &values, false)
            .map_err(|e| pool_error_body(e, &sql.database))?;
        let output = ran.into_output(&spec.name, sql)?;
        Ok(self.result_object(output.to_result(), started))
    }

    /// Completes an at-least-once job whose work is done, or records its failure.
    fn settle_at_least_once(
        &self,
        conn: Option<PooledConnection>,
        job: &ClaimedJob,
        spec: &JobSpec,
        outcome: Result<String, ErrorBody>,
    ) -> Outcome {
        let result = match outcome {
            Ok(result) => result,
            Err(error) => return self.settle_failure(conn, job, Some(spec), &error),
        };
        let completed = self
            .reuse_or_checkout(conn)
            .and_then(|mut conn| claim::complete(&mut conn, job.claim, &result, false));
        match completed {
            Ok(true) => Outcome::Completed,
            Ok(false) => {
                warn!(target: "forkpool::queue", "job {} ({}): done, but this worker lost the lease of its claim meanwhile; it may run again", job.claim.id, job.job);
                Outcome::Lost
            }
            Err(error) => {
                // The job stays `running` under this worker; it is taken back when this
                // worker or instance is seen dead, or its lease lapses.
                warn!(target: "forkpool::queue", "job {} ({}): done, but recording it failed: {error}", job.claim.id, job.job);
                Outcome::Lost
            }
        }
    }

    /// Records a failed attempt: retried after the backoff, discarded, or — when the worker
    /// is stopping fast — put back with its attempt given back.
    fn settle_failure(
        &self,
        conn: Option<PooledConnection>,
        job: &ClaimedJob,
        spec: Option<&JobSpec>,
        error: &ErrorBody,
    ) -> Outcome {
        // A session that timed out or broke is reset (or discarded) by checkin first.
        let conn =
            conn.filter(|_| !matches!(error.kind, ErrorKind::Timeout | ErrorKind::DbUnavailable));
        let mut conn = match self.reuse_or_checkout(conn) {
            Ok(conn) => conn,
            Err(e) => {
                warn!(target: "forkpool::queue", "job {} ({}) failed ({}), and recording it failed too: {e}", job.claim.id, job.job, error.message);
                return Outcome::Lost;
            }
        };
        if self.stopping.load(Ordering::SeqCst) {
            return match claim::release(&mut conn, job.claim) {
                Ok(true) => Outcome::Released,
                _ => Outcome::Lost,
            };
        }
        let policy = spec.map(|s| s.durable.clone()).unwrap_or_default();
        let retry_after = retryable(error.kind).then(|| {
            retry_delay(
                job.attempt.max(1) as u32,
                policy.retry_backoff,
                policy.retry_backoff_max,
                fastrand::f64(),
            )
        });
        let sqlstate = error.extra.get("sqlstate").and_then(Value::as_str);
        let failure = Failure {
            kind: error.kind.as_str(),
            message: &error.message,
            sqlstate,
        };
        match claim::fail(&mut conn, job.claim, failure, retry_after) {
            Ok(Settled::Retry) => {
                debug!(target: "forkpool::queue", "job {} ({}) failed ({}: {}); retrying", job.claim.id, job.job, failure.kind, failure.message);
                Outcome::Retry
            }
            Ok(Settled::Discarded) => {
                warn!(target: "forkpool::queue", "job {} ({}) discarded after attempt {} of {}: {}: {}", job.claim.id, job.job, job.attempt, job.max_attempts, failure.kind, failure.message);
                Outcome::Discarded
            }
            Ok(Settled::Cancelled) => Outcome::Cancelled,
            Ok(Settled::Lost) => Outcome::Lost,
            Err(e) => {
                warn!(target: "forkpool::queue", "job {} ({}): recording its failure failed: {e}", job.claim.id, job.job);
                Outcome::Lost
            }
        }
    }

    /// The `run` result object with this worker's fields (DESIGN §5), as JSON text.
    pub(super) fn result_object(&self, mut result: Value, started: Instant) -> String {
        result["worker"] = json!(self.slot);
        result["pid"] = json!(super::own_pid());
        result["elapsed_ms"] = json!(started.elapsed().as_secs_f64() * 1000.0);
        result.to_string()
    }

    pub(super) fn reuse_or_checkout(
        &self,
        conn: Option<PooledConnection>,
    ) -> Result<PooledConnection, pool::Error> {
        let mut conn = match conn {
            Some(conn) => conn,
            None => return self.bookkeeping_session(),
        };
        conn.set_deadline(Some(Instant::now() + BOOKKEEPING_DEADLINE));
        Ok(conn)
    }

    pub(super) fn bookkeeping_session(&self) -> Result<PooledConnection, pool::Error> {
        let pool = self
            .pools
            .get(&self.setup.database)
            .map_err(|body| pool::Error::Config(body.message))?;
        let mut conn = pool.checkout("durable job")?;
        conn.set_deadline(Some(Instant::now() + BOOKKEEPING_DEADLINE));
        Ok(conn)
    }
}

/// How a claimed job ended, as the master's `Settled` frame names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Retry,
    Discarded,
    Cancelled,
    Released,
    Lost,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Completed => "completed",
            Outcome::Retry => "retry",
            Outcome::Discarded => "discarded",
            Outcome::Cancelled => "cancelled",
            Outcome::Released => "released",
            Outcome::Lost => "lost",
        })
    }
}

/// Whether a failure is worth another attempt: the job may succeed later. Bad arguments, a
/// job this catalog lacks, a malformed request never will.
fn retryable(kind: ErrorKind) -> bool {
    !matches!(
        kind,
        ErrorKind::InvalidArgs | ErrorKind::UnknownJob | ErrorKind::BadRequest
    )
}

pub(super) fn claim_failed(claim_id: u64, why: &str) -> FromWorker {
    debug!(target: "forkpool::queue", "claim failed: {why}");
    FromWorker::Claimed {
        claim_id,
        job: None,
        error: Some(why.to_string()),
    }
}

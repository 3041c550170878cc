//! A worker's side of a durable job: claim it, then settle it exactly one way — completed,
//! failed (retried, discarded or cancelled), or put back by a graceful stop.
//!
//! Every settling statement is fenced by the claim it answers (`id` and `claim_count`, the
//! [`Claim`]): when the job was rescued meanwhile (the worker was thought dead, the host's
//! lease lapsed) the statement matches no row and changes nothing. For an exactly-once job
//! the completion runs inside the job's own transaction, so a lost fence rolls back the job's
//! effects with it (the caller sees `Ok(false)` and rolls back).

use std::time::Duration;

use futures_util::future::{join, join3};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use crate::pool::{self, PooledConnection};

/// Who claims: the host's stable identity, this service instance, and the worker (a number
/// the master gives each worker it forks, never reused within an instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub instance: i64,
    pub worker: i64,
}

/// A claimed job, as the claim statement returned it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub claim: Claim,
    pub job: String,
    /// The `args` object as JSON text, handed to the job like a socket request's.
    pub args: String,
    pub queue: String,
    pub attempt: i32,
    pub max_attempts: i32,
}

/// The fence of one claim: a settling statement matches only this claim of this job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub id: i64,
    pub claim_count: i32,
}

/// One failed attempt, recorded in the job's `errors`.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// An error kind of the protocol (`db_error`, `timeout`, `worker_lost`, ...).
    pub kind: &'a str,
    pub message: &'a str,
    pub sqlstate: Option<&'a str>,
}

/// What became of a failed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// It runs again after the backoff.
    Retry,
    /// Failed for good (attempts spent, or an error not worth retrying).
    Discarded,
    /// `cancel` asked for it while it ran.
    Cancelled,
    /// The claim was no longer ours (rescued meanwhile): nothing changed.
    Lost,
}

/// The claim: one statement that picks, locks (`SKIP LOCKED`: claimers never wait for each
/// other) and marks the jobs running with their attempt counted — never select-then-update,
/// which would let two workers take one job. Only `jobs` (this catalog's names) are picked,
/// so hosts with different catalogs share one table; queues in `excluded` are at their cap,
/// paused queues are skipped (`NOT IN` a hashed subplan, read once per claim).
///
/// The only good plan walks the claim index (`jobs_claim_order`) to the first runnable jobs;
/// [`CLAIM_PLANNER`] makes it the only plan. Without it, with 20,000 jobs waiting, the
/// planner sorted every one of them at each claim (15–26 ms a claim, so eight slots claimed
/// about 250 jobs a second): on a table not analyzed yet (a fresh queue: autovacuum analyzes
/// it a minute later at the earliest) its default estimates find a handful of rows, and on an
/// analyzed table with one queue the exclusion of an unknown list of queues looked like it
/// left no row at all.
pub const CLAIM: &str = "\
WITH picked AS (
    SELECT id FROM forkpool.jobs
     WHERE state = 'available' AND run_at <= now()
       AND job = ANY($1)
       AND queue <> ALL($2)
       AND queue NOT IN (SELECT queue FROM forkpool.paused_queues)
     ORDER BY priority, run_at, id
     LIMIT $3
     FOR UPDATE SKIP LOCKED)
UPDATE forkpool.jobs j
   SET state = 'running', attempt = j.attempt + 1, claim_count = j.claim_count + 1,
       attempted_at = now(), host = $4, instance = $5, worker = $6,
       backend_pid = CASE WHEN $8 THEN pg_backend_pid() END,
       lease_until = now() + make_interval(secs => $7),
       cancel_requested = false
  FROM picked
 WHERE j.id = picked.id
RETURNING j.id, j.claim_count, j.job, j.args::text, j.queue, j.attempt, j.max_attempts";

/// The claim's parameter types: it is prepared once per session.
pub const CLAIM_TYPES: [Type; 8] = [
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::FLOAT8,
    Type::BOOL,
];

/// The claim runs in a transaction of its own with sorts and whole-table scans off, so the
/// walk of the claim index (and the update by primary key) is the only plan left, whatever
/// the statistics say — including the generic plan of the prepared statement, which saves
/// planning it at every claim. Sent with the claim and `COMMIT`: one round trip.
pub const CLAIM_PLANNER: &str =
    "BEGIN; SET LOCAL enable_sort = off; SET LOCAL enable_seqscan = off";

/// Claims up to `limit` runnable jobs for `holder`, committed before it returns: the claim is
/// visible, and rescuable, before a job starts. `record_backend` records the session's
/// backend for `cancel`; off behind a transaction-mode pooler, where a later statement may
/// run on another backend and signalling the recorded one could cancel someone else's query.
pub fn claim(
    conn: &mut PooledConnection,
    jobs: &[String],
    excluded_queues: &[String],
    limit: i64,
    holder: &Holder,
    lease: Duration,
    record_backend: bool,
) -> Result<Vec<ClaimedJob>, pool::Error> {
    let statement = conn.prepare_typed(CLAIM, &CLAIM_TYPES)?;
    let lease = lease.as_secs_f64();
    let params: [&(dyn ToSql + Sync); 8] = [
        &jobs,
        &excluded_queues,
        &limit,
        &holder.host,
        &holder.instance,
        &holder.worker,
        &lease,
        &record_backend,
    ];
    let rows = conn.pipelined(|client| async move {
        let (begun, claimed, committed) = join3(
            client.batch_execute(CLAIM_PLANNER),
            client.query(&statement, &params),
            client.batch_execute("COMMIT"),
        )
        .await;
        begun?;
        let rows = claimed?;
        committed?;
        Ok(rows)
    })?;
    Ok(rows
        .iter()
        .map(|row| ClaimedJob {
            claim: Claim {
                id: row.get(0),
                claim_count: row.get(1),
            },
            job: row.get(2),
            args: row.get(3),
            queue: row.get(4),
            attempt: row.get(5),
            max_attempts: row.get(6),
        })
        .collect())
}

/// The completion: the claimed job `completed` with its `run` result, fenced by the claim
/// (and, with `$4`, by a cancel requested meanwhile). A macro, so that both statements below
/// are one literal each.
macro_rules! completion {
    () => {
        "UPDATE forkpool.jobs
            SET state = 'completed', finished_at = now(), result = $3::text::jsonb,
                lease_until = NULL, backend_pid = NULL
          WHERE id = $1 AND claim_count = $2 AND state = 'running'
            AND NOT (cancel_requested AND $4)
         RETURNING id"
    };
}

/// The completion, answering the completed job's id (none when the fence failed).
const COMPLETE: &str = completion!();

/// The completion as a statement that fails when its fence does (a division by zero,
/// SQLSTATE 22012, when no row matched), so the `COMMIT` sent right behind it rolls the
/// whole transaction back: completion and commit in one round trip.
const COMPLETE_OR_FAIL: &str = concat!(
    "WITH done AS (",
    completion!(),
    ") SELECT 1 / count(*) FROM done"
);

/// The completion's parameters with their types: sent with `query_typed`, an unnamed
/// statement planned with its values (a generic plan made on a small table kept scanning it)
/// in the same round trip as its execution.
fn completion_params<'a>(
    claim: &'a Claim,
    result: &'a &'a str,
    honor_cancel: &'a bool,
) -> [(&'a (dyn ToSql + Sync), Type); 4] {
    [
        (&claim.id, Type::INT8),
        (&claim.claim_count, Type::INT4),
        (result, Type::TEXT),
        (honor_cancel, Type::BOOL),
    ]
}

/// Marks the job completed with its `run` result (JSON text). Inside the job's transaction
/// for exactly-once jobs; `Ok(false)` when the fence failed — the caller must then roll back.
/// With `honor_cancel` a cancel requested meanwhile also fails the fence, so a cancelled
/// exactly-once job leaves no effect; an at-least-once job whose work is done completes.
pub fn complete(
    conn: &mut PooledConnection,
    claim: Claim,
    result: &str,
    honor_cancel: bool,
) -> Result<bool, pool::Error> {
    let updated = conn.pipelined(|client| async move {
        client
            .query_typed(COMPLETE, &completion_params(&claim, &result, &honor_cancel))
            .await
    })?;
    Ok(!updated.is_empty())
}

/// An exactly-once job's last step, inside the transaction that ran its statements: the
/// fenced completion (a cancel requested meanwhile fails it too) and `COMMIT`, pipelined.
/// `Ok(true)`: committed. `Ok(false)`: the fence failed and the transaction was rolled back.
/// `Err`: the completion or the commit failed, and the transaction is rolled back too.
pub fn complete_and_commit(
    conn: &mut PooledConnection,
    claim: Claim,
    result: &str,
) -> Result<bool, pool::Error> {
    let honor_cancel = true;
    let committed = conn.pipelined(|client| async move {
        let params = completion_params(&claim, &result, &honor_cancel);
        let (completed, committed) = join(
            client.query_typed(COMPLETE_OR_FAIL, &params),
            client.batch_execute("COMMIT"),
        )
        .await;
        match completed {
            Ok(_) => committed.map(|()| true),
            // The fence failed; the COMMIT behind it found the transaction failed and
            // rolled it back.
            Err(e) if e.code() == Some(&SqlState::DIVISION_BY_ZERO) => committed.map(|()| false),
            Err(e) => Err(e),
        }
    })?;
    Ok(committed)
}

/// The SQL of what a failure appends to `errors` (over the row's own `attempt`), with the
/// kind, message and SQLSTATE taken from the statement's parameters named.
pub(crate) fn error_object(kind: &str, message: &str, sqlstate: &str) -> String {
    format!(
        "jsonb_build_array(jsonb_strip_nulls(jsonb_build_object('attempt', attempt, \
         'at', now(), 'kind', {kind}::text, 'message', {message}::text, \
         'sqlstate', {sqlstate}::text)))"
    )
}

/// Records a failed attempt. `retry_after` is the backoff when the error is worth retrying
/// (`None`: discard now, as for `invalid_args`); a job out of attempts is discarded, one whose
/// cancel was requested is cancelled.
pub fn fail(
    conn: &mut PooledConnection,
    claim: Claim,
    failure: Failure<'_>,
    retry_after: Option<Duration>,
) -> Result<Settled, pool::Error> {
    let retry = retry_after.is_some();
    let delay = retry_after.unwrap_or_default().as_secs_f64();
    let sql = format!(
        "UPDATE forkpool.jobs SET \
            state = CASE WHEN cancel_requested THEN 'cancelled' \
                         WHEN $6 AND attempt < max_attempts THEN 'available' \
                         ELSE 'discarded' END, \
            run_at = CASE WHEN NOT cancel_requested AND $6 AND attempt < max_attempts \
                          THEN now() + make_interval(secs => $7) ELSE run_at END, \
            finished_at = CASE WHEN NOT cancel_requested AND $6 AND attempt < max_attempts \
                               THEN NULL ELSE now() END, \
            errors = errors || {error}, \
            host = NULL, instance = NULL, worker = NULL, backend_pid = NULL, lease_until = NULL \
          WHERE id = $1 AND claim_count = $2 AND state = 'running' \
         RETURNING state",
        error = error_object("$3", "$4", "$5")
    );
    let rows = super::query(
        conn,
        &sql,
        &[
            &claim.id,
            &claim.claim_count,
            &failure.kind,
            &failure.message,
            &failure.sqlstate,
            &retry,
            &delay,
        ],
    )?;
    Ok(match rows.first().map(|row| row.get::<_, String>(0)) {
        None => Settled::Lost,
        Some(state) if state == "available" => Settled::Retry,
        Some(state) if state == "cancelled" => Settled::Cancelled,
        Some(_) => Settled::Discarded,
    })
}

/// Puts a job back without spending its attempt: a graceful stop interrupted it, which says
/// nothing about the job. `Ok(false)` when the claim was no longer ours.
pub fn release(conn: &mut PooledConnection, claim: Claim) -> Result<bool, pool::Error> {
    let rows = super::query(
        conn,
        "UPDATE forkpool.jobs SET \
            state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'available' END, \
            finished_at = CASE WHEN cancel_requested THEN now() END, \
            attempt = attempt - 1, \
            host = NULL, instance = NULL, worker = NULL, backend_pid = NULL, lease_until = NULL \
          WHERE id = $1 AND claim_count = $2 AND state = 'running' \
         RETURNING id",
        &[&claim.id, &claim.claim_count],
    )?;
    Ok(!rows.is_empty())
}

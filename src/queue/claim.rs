//! A worker's side of a durable job: claim it, then settle it exactly one way — completed,
//! failed (retried, discarded or cancelled), or put back by a graceful stop.
//!
//! Every settling statement is fenced by the claim it answers (`id` and `claim_count`, the
//! [`Claim`]): when the job was rescued meanwhile (the worker was thought dead, the host's
//! lease lapsed) the statement matches no row and changes nothing. For an exactly-once job
//! the completion runs inside the job's own transaction, so a lost fence rolls back the job's
//! effects with it (the caller sees `Ok(false)` and rolls back).

use std::future::Future;
use std::time::Duration;

use futures_util::future::join;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

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

/// The claim: `forkpool.claim_jobs` (schema version 2; its comment says why its planner
/// settings are attached) — one statement that picks, locks with `SKIP LOCKED` and marks the
/// jobs running, in an implicit transaction of its own: committed, so visible and rescuable,
/// before the caller starts a job. Prepared once per session; the function keeps its plan.
pub const CLAIM: &str = "\
SELECT id, claim_count, job, args, queue, attempt, max_attempts
  FROM forkpool.claim_jobs($1, $2, $3, $4, $5, $6, $7, $8)";

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
    let statement = conn.prepare_typed(CLAIM, &[])?;
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
    let rows = conn.query(&statement, &params)?;
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

/// The completion: `forkpool.complete_job` (schema version 2) marks the claimed job
/// `completed` with its `run` result, fenced by the claim (and, with `$4`, by a cancel
/// requested meanwhile). With `$5` a failed fence raises [`FENCE_LOST`] instead of answering
/// false, so the `COMMIT` sent right behind it rolls the whole transaction back: an
/// exactly-once job's completion and commit in one round trip. Prepared once per session.
const COMPLETE: &str = "SELECT forkpool.complete_job($1, $2, $3, $4, $5)";

/// The SQLSTATE `forkpool.complete_job` raises when the fence failed and it was asked to.
const FENCE_LOST: &str = "FP001";

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
    let statement = conn.prepare_typed(COMPLETE, &[])?;
    let rows = conn.query(
        &statement,
        &[
            &claim.id,
            &claim.claim_count,
            &result,
            &honor_cancel,
            &false,
        ],
    )?;
    Ok(rows.first().is_some_and(|row| row.get::<_, bool>(0)))
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
    let statement = conn.prepare_typed(COMPLETE, &[])?;
    conn.pipelined(|client| async move {
        let (honor_cancel, or_fail) = (true, true);
        let params: [&(dyn ToSql + Sync); 5] = [
            &claim.id,
            &claim.claim_count,
            &result,
            &honor_cancel,
            &or_fail,
        ];
        commit_behind(client, client.query(&statement, &params)).await
    })
}

/// Sends `COMMIT` right behind a fenced completion (one round trip for both): `Ok(true)`
/// committed; `Ok(false)` when the completion raised [`FENCE_LOST`] — the `COMMIT` behind it
/// found the transaction failed and rolled it back.
async fn commit_behind(
    client: &Client,
    completion: impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>>,
) -> Result<bool, tokio_postgres::Error> {
    let (completed, committed) = join(completion, client.batch_execute("COMMIT")).await;
    match completed {
        Ok(_) => committed.map(|()| true),
        Err(e) if e.code().map(|code| code.code()) == Some(FENCE_LOST) => committed.map(|()| false),
        Err(e) => Err(e),
    }
}

/// A batch's completions: `forkpool.complete_jobs` (schema version 3), every job fenced by
/// its claim and a cancel honoured; raises [`FENCE_LOST`] when any fence fails.
const COMPLETE_ALL: &str = "SELECT forkpool.complete_jobs($1, $2, $3)";

/// A batch's last step, inside the transaction that ran its jobs: every job completed with
/// its result, then `COMMIT`, pipelined. `Ok(true)`: committed. `Ok(false)`: a fence failed
/// (a job rescued or cancelled meanwhile) and the whole batch was rolled back. `Err`: the
/// completions or the commit failed; nothing was committed either.
pub fn complete_all_and_commit(
    conn: &mut PooledConnection,
    completions: &[(Claim, String)],
) -> Result<bool, pool::Error> {
    let statement = conn.prepare_typed(COMPLETE_ALL, &[])?;
    let ids: Vec<i64> = completions.iter().map(|(claim, _)| claim.id).collect();
    let claim_counts: Vec<i32> = completions.iter().map(|(c, _)| c.claim_count).collect();
    let results: Vec<&str> = completions.iter().map(|(_, r)| r.as_str()).collect();
    conn.pipelined(|client| async move {
        let params: [&(dyn ToSql + Sync); 3] = [&ids, &claim_counts, &results];
        commit_behind(client, client.query(&statement, &params)).await
    })
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

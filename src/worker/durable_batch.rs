//! A batch of durable jobs (`queue.batch` above 1; DESIGN §12, Batches): one claim statement
//! for the executor's claims, the exactly-once SQL jobs among them run pipelined in one
//! transaction and completed together, so a job costs a share of one claim, one round trip
//! and one commit instead of each of its own.
//!
//! Exactly-once holds as for one job: the batch's statements and every job's fenced
//! completion commit together or not at all. Anything other than a clean run — a statement's
//! error, a timeout, a fence that failed (a job cancelled or taken back meanwhile) — rolls
//! the whole batch back, and its jobs then run one at a time exactly as with `batch = 1`,
//! each settled by its own fence with its own error. A failing job therefore runs twice (the
//! first time rolled back): nothing it did is committed twice.
//!
//! Jobs that cannot share the transaction (several statements or one opening a transaction,
//! another database, `transaction = false`, Rust handlers, a job this catalog lacks) run
//! after the batch, one at a time, as with `batch = 1`.

use std::time::{Duration, Instant};

use futures_util::future::{join, join_all};
use log::{debug, warn};
use serde_json::{Map, Value};

use super::durable_job::{claim_failed, DurableRun, Outcome};
use super::sql_job::{self, Ran};
use crate::catalog::{JobKind, JobSpec, SqlJob, SqlValue};
use crate::ipc::{ClaimedJob as ClaimedFrame, FromWorker};
use crate::pool::{self, run_prepared, PooledConnection};
use crate::queue::claim::{self, ClaimedJob};

/// A claimed job that goes into the batch's transaction, with its statement's values.
struct Member<'a> {
    claim_id: u64,
    job: &'a ClaimedJob,
    spec: &'a JobSpec,
    sql: &'a SqlJob,
    values: Vec<SqlValue>,
}

/// Claims up to one job per id in `claim_ids` and runs them; tells the master what was
/// claimed at once (one write) and how each job was settled.
pub(super) fn claim_and_run(
    run: &DurableRun,
    claim_ids: &[u64],
    excluded: &[String],
    send: impl Fn(&[FromWorker]),
) {
    let claimed = run.bookkeeping_session().and_then(|mut conn| {
        let setup = run.setup;
        let jobs = claim::claim(
            &mut conn,
            &setup.jobs,
            excluded,
            claim_ids.len() as i64,
            &setup.holder,
            setup.lease,
            setup.record_backend,
        )?;
        conn.known_idle();
        Ok((conn, jobs))
    });
    let (conn, jobs) = match claimed {
        Ok(claimed) => claimed,
        Err(error) => {
            let why = error.to_string();
            let frames: Vec<FromWorker> = claim_ids
                .iter()
                .map(|&claim_id| claim_failed(claim_id, &why))
                .collect();
            return send(&frames);
        }
    };
    let held: Vec<(u64, &ClaimedJob, Option<&JobSpec>)> = claim_ids
        .iter()
        .zip(&jobs)
        .map(|(&claim_id, job)| (claim_id, job, run.catalog.get(&job.job).map(|s| &**s)))
        .collect();
    send(&claimed_frames(claim_ids, &held));
    let mut members = Vec::new();
    let mut one_by_one = Vec::new();
    for &(claim_id, job, spec) in &held {
        match spec.and_then(|spec| member(run, claim_id, job, spec)) {
            Some(member) => members.push(member),
            None => one_by_one.push((claim_id, job, spec)),
        }
    }
    let mut conn = Some(conn);
    if members.len() > 1 {
        let (committed, back) =
            run_together(run, conn.take().expect("the claim's session"), &members);
        if committed {
            let settled: Vec<FromWorker> = members
                .iter()
                .map(|m| settled(m.claim_id, m.job, Outcome::Completed))
                .collect();
            send(&settled);
            members.clear();
        }
        conn = back;
    }
    let rest = members
        .iter()
        .map(|m| (m.claim_id, m.job, Some(m.spec)))
        .chain(one_by_one);
    for (claim_id, job, spec) in rest {
        let outcome = match run.reuse_or_checkout(conn.take()) {
            Ok(session) => run.run_claimed(session, job, spec),
            Err(error) => {
                // Still `running` under this worker: taken back once its lease lapses.
                warn!(target: "forkpool::queue", "job {} ({}): no session to run it on: {error}", job.claim.id, job.job);
                Outcome::Lost
            }
        };
        send(&[settled(claim_id, job, outcome)]);
    }
}

/// The `Claimed` frames: each id's job, or none. Each job's timeout as the master counts it
/// covers the batch's try, then its own run and those of the jobs before it one at a time.
fn claimed_frames(
    claim_ids: &[u64],
    held: &[(u64, &ClaimedJob, Option<&JobSpec>)],
) -> Vec<FromWorker> {
    let timeout = |spec: Option<&JobSpec>| spec.map_or(Duration::ZERO, |s| s.timeout);
    let first_try = held
        .iter()
        .map(|(_, _, spec)| timeout(*spec))
        .min()
        .unwrap_or_default();
    let mut waited = first_try;
    let mut frames: Vec<FromWorker> = held
        .iter()
        .map(|(claim_id, job, spec)| {
            waited += timeout(*spec);
            FromWorker::Claimed {
                claim_id: *claim_id,
                job: Some(ClaimedFrame {
                    job_id: job.claim.id,
                    job: job.job.clone(),
                    queue: job.queue.clone(),
                    attempt: job.attempt,
                    timeout_ms: waited.as_millis() as u64,
                }),
                error: None,
            }
        })
        .collect();
    frames.extend(
        claim_ids[held.len()..]
            .iter()
            .map(|&claim_id| FromWorker::Claimed {
                claim_id,
                job: None,
                error: None,
            }),
    );
    frames
}

/// `Some` when the job can share the batch's transaction: an exactly-once SQL job of one
/// statement that opens no transaction, whose arguments bind (a job whose arguments do not
/// runs alone, where that failure is recorded).
fn member<'a>(
    run: &DurableRun,
    claim_id: u64,
    job: &'a ClaimedJob,
    spec: &'a JobSpec,
) -> Option<Member<'a>> {
    let JobKind::Sql(sql) = &spec.kind else {
        return None;
    };
    let [statement] = sql.statements.as_slice() else {
        return None;
    };
    if !sql.transaction || statement.opens_transaction || sql.database != run.setup.database {
        return None;
    }
    let args: Map<String, Value> = serde_json::from_str(&job.args).ok()?;
    let values = sql_job::bind(sql, &args).ok()?;
    Some(Member {
        claim_id,
        job,
        spec,
        sql,
        values,
    })
}

/// The members' statements pipelined after `BEGIN`, then their completions and `COMMIT`:
/// two round trips. Whether the batch committed, and the session when it is still usable.
fn run_together(
    run: &DurableRun,
    mut conn: PooledConnection,
    members: &[Member],
) -> (bool, Option<PooledConnection>) {
    let started = Instant::now();
    let first_deadline = members
        .iter()
        .map(|m| started + m.spec.timeout)
        .min()
        .expect("a batch");
    conn.set_deadline(Some(first_deadline));
    let ran = (|| -> Result<Option<Vec<(claim::Claim, String)>>, pool::Error> {
        let mut statements = Vec::with_capacity(members.len());
        for m in members {
            let statement = &m.sql.statements[0];
            statements.push(conn.prepare_typed(&statement.sql, &statement.types)?);
        }
        let params: Vec<_> = members
            .iter()
            .map(|m| m.sql.statements[0].args(&m.values))
            .collect();
        let returned = conn.pipelined(|client| async move {
            let queries = statements
                .iter()
                .zip(&params)
                .map(|(statement, params)| run_prepared(client, statement, params));
            let (begun, returned) = join(client.batch_execute("BEGIN"), join_all(queries)).await;
            begun.map(|()| returned)
        })?;
        let mut completions = Vec::with_capacity(members.len());
        for (m, returned) in members.iter().zip(returned) {
            let Ok(returned) = returned else {
                return Ok(None); // the transaction failed: roll back, run one at a time
            };
            let Ok(output) = Ran::of_one(returned).into_output(&m.spec.name, m.sql) else {
                return Ok(None);
            };
            let result = run.result_object(output.to_result(), started);
            completions.push((m.job.claim, result));
        }
        Ok(Some(completions))
    })();
    let committed = match ran {
        Ok(Some(completions)) => claim::complete_all_and_commit(&mut conn, &completions),
        Ok(None) => Ok(false),
        Err(error) => Err(error),
    };
    match committed {
        Ok(true) => {
            conn.known_idle();
            debug!(target: "forkpool::queue", "worker {}: {} jobs completed in one transaction (exactly once)", run.slot, members.len());
            (true, Some(conn))
        }
        Ok(false) | Err(_) => {
            // A failed statement, a failed fence or a failed commit: nothing is committed.
            // A session that answers ROLLBACK is used again; a timed-out or broken one is
            // dropped (checkin resets or discards it).
            debug!(target: "forkpool::queue", "worker {}: a batch of {} jobs rolled back ({committed:?}); running them one at a time", run.slot, members.len());
            let usable = !matches!(committed, Err(pool::Error::Timeout { .. }))
                && conn.batch_execute("ROLLBACK").is_ok();
            if usable {
                conn.known_idle();
                (false, Some(conn))
            } else {
                (false, None)
            }
        }
    }
}

fn settled(claim_id: u64, job: &ClaimedJob, outcome: Outcome) -> FromWorker {
    FromWorker::Settled {
        claim_id,
        job_id: job.claim.id,
        outcome: outcome.to_string(),
    }
}

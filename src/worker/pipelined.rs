//! `run` jobs taken together (`workers.pipeline` above 1) and run pipelined on one
//! connection: one checkout, every query sent before the first answer is read, and the
//! answers that come back together written to the master in one write.
//!
//! Only jobs of one statement that opens no transaction of its own go on the pipeline (the
//! common short query): each is Bind/Execute/Sync of its own, so it commits or fails alone,
//! and an error or a timeout answers that job only. Any other job of the batch — several
//! statements, a Rust handler, another database — runs after them one at a time, exactly as
//! with `pipeline = 1`. Each job keeps its own deadline, counted from when the worker read
//! it, as without pipelining; what it gives up is not waiting behind a slower job sent before
//! it on the same connection (see [`crate::pool::PipelinedQuery`]).

use std::time::Instant;

use serde_json::{Map, Value};

use super::sql_job::{self, Ran};
use super::{send_encoded, with_worker_fields, Executor, Job};
use crate::catalog::{JobKind, SqlJob, SqlValue};
use crate::ipc::{self, FromWorker};
use crate::pool::{PipelineEvent, PipelinedQuery};
use crate::pools::pool_error_body;
use crate::protocol::{ErrorBody, ErrorKind};

/// A job of the batch that goes on the pipeline: its statement's bound values.
struct Queued<'a> {
    job: &'a Job,
    sql: &'a SqlJob,
    values: Vec<SqlValue>,
}

/// Runs `jobs` (read together from the channel) and answers each once; false when the
/// master is gone.
pub(super) fn run_batch(executor: &Executor, jobs: Vec<Job>) -> bool {
    let mut answers = Vec::new();
    let mut queued: Vec<Queued> = Vec::new();
    let mut one_by_one: Vec<&Job> = Vec::new();
    for job in &jobs {
        match pipelinable(
            executor,
            job,
            queued.first().map(|q| q.sql.database.as_str()),
        ) {
            Some(Ok((sql, values))) => queued.push(Queued { job, sql, values }),
            Some(Err(error)) => encode_outcome(&mut answers, job.id, Err(error)),
            None => one_by_one.push(job),
        }
    }
    let mut sent = true;
    if !queued.is_empty() {
        sent = run_pipelined(executor, &queued, &mut answers);
    }
    if !answers.is_empty() {
        sent &= send_encoded(&executor.writer, &answers).is_ok();
    }
    for job in one_by_one {
        sent &= executor.run(job);
    }
    sent
}

/// `Some(Ok)` with its statement's values when `job` goes on the pipeline (a SQL job of one
/// statement that opens no transaction, on `database` if one is set); `Some(Err)` when its
/// arguments do not bind (answered at once); `None` when it runs on its own.
fn pipelinable<'a>(
    executor: &'a Executor,
    job: &Job,
    database: Option<&str>,
) -> Option<Result<(&'a SqlJob, Vec<SqlValue>), ErrorBody>> {
    let spec = executor.catalog.get(&job.name)?;
    let JobKind::Sql(sql) = &spec.kind else {
        return None;
    };
    let [statement] = sql.statements.as_slice() else {
        return None;
    };
    if statement.opens_transaction || database.is_some_and(|db| db != sql.database) {
        return None;
    }
    let bound = serde_json::from_str::<Map<String, Value>>(job.args.get())
        .map_err(|e| ErrorBody::new(ErrorKind::BadRequest, format!("args: {e}")))
        .and_then(|args| sql_job::bind(sql, &args));
    Some(bound.map(|values| (sql, values)))
}

/// Checks out one connection and runs `queued` on it pipelined, encoding each answer into
/// `answers` and writing them whenever nothing more is ready; false when the master is gone.
fn run_pipelined(executor: &Executor, queued: &[Queued], answers: &mut Vec<u8>) -> bool {
    let database = &queued[0].sql.database;
    let label = format!("jobs {}..", queued[0].job.id);
    let checked_out = executor.pools.get(database).and_then(|pool| {
        pool.checkout(&label)
            .map_err(|e| pool_error_body(e, database))
    });
    let mut conn = match checked_out {
        Ok(conn) => conn,
        Err(error) => {
            for q in queued {
                encode_outcome(answers, q.job.id, Err(error.clone()));
            }
            return true;
        }
    };
    // Statements are prepared once per connection (cached); bounded by the latest deadline.
    let latest = queued.iter().map(deadline).max().expect("a batch");
    conn.set_deadline(Some(latest));
    let mut statements = Vec::with_capacity(queued.len());
    for q in queued {
        let statement = &q.sql.statements[0];
        match conn.prepare_typed(&statement.sql, &statement.types) {
            Ok(prepared) => statements.push(prepared),
            Err(error) => {
                let error = pool_error_body(error, database);
                for q in queued {
                    encode_outcome(answers, q.job.id, Err(error.clone()));
                }
                return true;
            }
        }
    }
    conn.set_deadline(None);
    let queries: Vec<PipelinedQuery> = queued
        .iter()
        .zip(&statements)
        .map(|(q, statement)| PipelinedQuery {
            statement,
            params: q.sql.statements[0].args(&q.values),
            deadline: deadline(q),
            since: q.job.received,
        })
        .collect();
    let mut sent = true;
    conn.query_pipelined(&queries, |event| match event {
        PipelineEvent::Done(index, rows) => {
            let q = &queued[index];
            let outcome = rows
                .map_err(|error| pool_error_body(error, database))
                .and_then(|rows| {
                    Ran::of_one(rows)
                        .into_output(&q.job.name, q.sql)
                        .map(|output| output.to_result())
                })
                .map(|result| with_worker_fields(result, executor.slot, q.job.received));
            encode_outcome(answers, q.job.id, outcome);
        }
        PipelineEvent::Waiting if !answers.is_empty() => {
            sent &= send_encoded(&executor.writer, answers).is_ok();
            answers.clear();
        }
        PipelineEvent::Waiting => {}
    });
    // One statement that opens no transaction: none can be open (a timed-out query leaves
    // the session interrupted, which checkin still resets).
    conn.known_idle();
    sent
}

fn deadline(q: &Queued) -> Instant {
    q.job.received + q.job.timeout
}

/// Appends the `Done` frame of one job to `answers`.
fn encode_outcome(answers: &mut Vec<u8>, job_id: u64, outcome: Result<String, ErrorBody>) {
    let (ok, body) = match outcome {
        Ok(result) => (true, result),
        Err(error) => (false, error.to_json()),
    };
    let body = serde_json::value::RawValue::from_string(body).expect("outcomes are JSON");
    ipc::encode_into(answers, &FromWorker::Done { job_id, ok, body });
}

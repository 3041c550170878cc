//! The statements of the queue keeper (the child that owns this host's queue chores): read
//! jobs for `result`, cancel, rescue what dead workers and earlier instances held, publish
//! the catalog's defaults, count jobs for `status`. Enqueue has its own module
//! ([`super::enqueue`]).

use serde::Serialize;

use super::claim::error_object;
use crate::pool::{self, PooledConnection};

/// The `result` answer of each job in `ids` that exists, as JSON text, keyed by id.
pub fn read_jobs(
    conn: &mut PooledConnection,
    ids: &[i64],
) -> Result<Vec<(i64, String, String)>, pool::Error> {
    let rows = super::query(
        conn,
        "SELECT id, state, jsonb_build_object('job_id', id, 'job', job, 'state', state, \
                'attempt', attempt, 'max_attempts', max_attempts, 'queue', queue, \
                'run_at', run_at, 'created_at', created_at, 'attempted_at', attempted_at, \
                'finished_at', finished_at, \
                'result', result, 'errors', errors)::text \
           FROM forkpool.jobs WHERE id = ANY($1)",
        &[&ids],
    )?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect())
}

/// What `cancel` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// No job has that id.
    NotFound,
    /// It was waiting, and is cancelled now.
    Now,
    /// It is running: its cancel is requested and its query (on the queue's database) was
    /// sent a cancel; it ends `cancelled` when its worker settles it.
    Requested,
    /// It had already ended in this state; nothing changed.
    AlreadyFinished(String),
}

/// Cancels a job. The row stays locked while the running job's backend is sent a cancel, so
/// the backend cannot have moved on to another job in between: its completion waits on this
/// lock, and then sees `cancel_requested`. The backend must also have started before the
/// claim, so a pid reused by an unrelated session is never signalled.
pub fn cancel(conn: &mut PooledConnection, id: i64) -> Result<Cancelled, pool::Error> {
    super::in_transaction(conn, |conn| {
        let before = conn.query_sql(
            "SELECT state, backend_pid, attempted_at FROM forkpool.jobs WHERE id = $1 FOR UPDATE",
            &[&id],
        )?;
        let Some(row) = before.first() else {
            return Ok(Cancelled::NotFound);
        };
        let state: String = row.get(0);
        let backend: Option<i32> = row.get(1);
        let claimed_at: Option<chrono::DateTime<chrono::Utc>> = row.get(2);
        match state.as_str() {
            "available" => {
                conn.query_sql(
                    "UPDATE forkpool.jobs SET state = 'cancelled', finished_at = now() \
                      WHERE id = $1",
                    &[&id],
                )?;
                Ok(Cancelled::Now)
            }
            "running" => {
                conn.query_sql(
                    "UPDATE forkpool.jobs SET cancel_requested = true WHERE id = $1",
                    &[&id],
                )?;
                if let (Some(pid), Some(claimed_at)) = (backend, claimed_at) {
                    conn.query_sql(
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
                          WHERE pid = $1 AND backend_start <= $2",
                        &[&pid, &claimed_at],
                    )?;
                }
                Ok(Cancelled::Requested)
            }
            _ => Ok(Cancelled::AlreadyFinished(state)),
        }
    })
}

/// Which running jobs a rescue takes back.
#[derive(Debug, Clone, Copy)]
pub enum Rescue<'a> {
    /// One worker of this instance died (SIGCHLD): `worker_lost`.
    Worker {
        host: &'a str,
        instance: i64,
        worker: i64,
    },
    /// Earlier instances of this host (the master was killed): `worker_lost`.
    EarlierInstances { host: &'a str, instance: i64 },
}

/// Makes the jobs a dead holder had runnable again now, counting their attempt and
/// recording `kind` (out of attempts: discarded; cancel requested: cancelled). Other hosts
/// are told with one NOTIFY per queue. Returns how many jobs were taken back.
pub fn rescue(
    conn: &mut PooledConnection,
    which: Rescue<'_>,
    message: &str,
) -> Result<u64, pool::Error> {
    let kind = "worker_lost";
    let no_sqlstate: Option<&str> = None;
    let (filter, host, instance, worker) = match which {
        Rescue::Worker {
            host,
            instance,
            worker,
        } => (
            "host = $1 AND instance = $2 AND worker = $6",
            host,
            instance,
            Some(worker),
        ),
        Rescue::EarlierInstances { host, instance } => {
            ("host = $1 AND instance <> $2", host, instance, None)
        }
    };
    let sql = rescue_sql(
        &format!("WHERE state = 'running' AND {filter}"),
        &error_object("$3", "$4", "$5"),
    );
    let rows = match &worker {
        Some(worker) => conn.query_sql(
            &sql,
            &[&host, &instance, &kind, &message, &no_sqlstate, worker],
        )?,
        None => conn.query_sql(&sql, &[&host, &instance, &kind, &message, &no_sqlstate])?,
    };
    Ok(rows[0].get::<_, i64>(0) as u64)
}

/// The statement of every rescue: the running jobs `selection` picks (a `FROM ... WHERE`
/// tail of the `UPDATE`) become runnable again — keeping their `run_at`, so their place in
/// line — the attempt counted and `error` (an [`error_object`]) appended; out of attempts:
/// discarded; cancel requested: cancelled. Other hosts are woken with one NOTIFY per queue.
/// It answers (jobs taken back, notifications).
pub(crate) fn rescue_sql(selection: &str, error: &str) -> String {
    format!(
        "WITH rescued AS ( \
           UPDATE forkpool.jobs SET \
              state = CASE WHEN cancel_requested THEN 'cancelled' \
                           WHEN attempt < max_attempts THEN 'available' ELSE 'discarded' END, \
              finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts \
                                 THEN now() END, \
              errors = errors || {error}, \
              host = NULL, instance = NULL, worker = NULL, backend_pid = NULL, \
              lease_until = NULL \
            {selection} \
           RETURNING queue, state), \
         notified AS ( \
           SELECT pg_notify('forkpool_jobs', q.queue) \
             FROM (SELECT DISTINCT queue FROM rescued WHERE state = 'available') q) \
         SELECT (SELECT count(*) FROM rescued), (SELECT count(*) FROM notified)"
    )
}

/// At the end of a graceful stop: whatever this instance still holds was interrupted by the
/// stop (its workers are gone), so it goes back without spending its attempt.
pub fn release_instance(
    conn: &mut PooledConnection,
    host: &str,
    instance: i64,
) -> Result<u64, pool::Error> {
    let rows = conn.query_sql(
        "WITH released AS ( \
           UPDATE forkpool.jobs SET \
              state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'available' END, \
              finished_at = CASE WHEN cancel_requested THEN now() END, \
              attempt = attempt - 1, \
              host = NULL, instance = NULL, worker = NULL, backend_pid = NULL, \
              lease_until = NULL \
            WHERE state = 'running' AND host = $1 AND instance = $2 RETURNING 1) \
         SELECT count(*) FROM released",
        &[&host, &instance],
    )?;
    Ok(rows[0].get::<_, i64>(0) as u64)
}

/// What a job file says about its durable runs, published so that `forkpool.enqueue()`
/// called from SQL uses the same defaults as the socket.
#[derive(Debug, Clone)]
pub struct JobDefaults {
    pub job: String,
    pub queue: String,
    pub priority: i32,
    pub max_attempts: i32,
}

/// Writes the catalog's defaults; rows already equal are left alone, so hosts sharing a
/// catalog do not rewrite each other's rows at every start.
pub fn publish_defaults(
    conn: &mut PooledConnection,
    defaults: &[JobDefaults],
) -> Result<(), pool::Error> {
    let jobs: Vec<&str> = defaults.iter().map(|d| d.job.as_str()).collect();
    let queues: Vec<&str> = defaults.iter().map(|d| d.queue.as_str()).collect();
    let priorities: Vec<i32> = defaults.iter().map(|d| d.priority).collect();
    let attempts: Vec<i32> = defaults.iter().map(|d| d.max_attempts).collect();
    conn.query_sql(
        "INSERT INTO forkpool.job_defaults AS d (job, queue, priority, max_attempts) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int[]) \
         ON CONFLICT (job) DO UPDATE \
            SET queue = excluded.queue, priority = excluded.priority, \
                max_attempts = excluded.max_attempts, updated_at = now() \
          WHERE (d.queue, d.priority, d.max_attempts) \
                IS DISTINCT FROM (excluded.queue, excluded.priority, excluded.max_attempts)",
        &[&jobs, &queues, &priorities, &attempts],
    )?;
    Ok(())
}

/// One queue's counts for `status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueCounts {
    pub queue: String,
    /// Runnable now.
    pub available: i64,
    /// Waiting for a `run_at` in the future (scheduled, or a retry's backoff).
    pub scheduled: i64,
    pub running: i64,
    pub completed: i64,
    pub discarded: i64,
    pub cancelled: i64,
    /// Seconds the oldest runnable job has waited past its `run_at` (0 when none waits).
    pub oldest_available_seconds: f64,
}

/// Counts jobs by queue and state, in one pass over the table (it reads every job; no index
/// would spare that, which is why schema version 4 keeps none for it).
pub fn queue_counts(conn: &mut PooledConnection) -> Result<Vec<QueueCounts>, pool::Error> {
    let rows = conn.query_sql(
        "SELECT queue, \
                count(*) FILTER (WHERE state = 'available' AND run_at <= now()), \
                count(*) FILTER (WHERE state = 'available' AND run_at > now()), \
                count(*) FILTER (WHERE state = 'running'), \
                count(*) FILTER (WHERE state = 'completed'), \
                count(*) FILTER (WHERE state = 'discarded'), \
                count(*) FILTER (WHERE state = 'cancelled'), \
                coalesce(extract(epoch FROM now() - min(run_at) \
                         FILTER (WHERE state = 'available' AND run_at <= now())), 0)::float8 \
           FROM forkpool.jobs GROUP BY queue ORDER BY queue",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|row| QueueCounts {
            queue: row.get(0),
            available: row.get(1),
            scheduled: row.get(2),
            running: row.get(3),
            completed: row.get(4),
            discarded: row.get(5),
            cancelled: row.get(6),
            oldest_available_seconds: row.get(7),
        })
        .collect())
}

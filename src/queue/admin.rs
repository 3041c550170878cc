//! Queue control and upkeep: pausing and resuming a queue, listing queues, pruning finished
//! jobs in small batches, and recording schedule ticks once across all hosts.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::keeping::{queue_counts, QueueCounts};
use crate::pool::{self, PooledConnection};

/// The advisory lock of pruning: one host prunes at a time (a transaction-scoped try-lock,
/// so a host that finds it taken just skips its turn).
const PRUNE_LOCK: i64 = 0x666f_726b_7072_756e; // "forkprun"

/// Pauses `queue` on every host: claims skip it from the next one on, and its waiting jobs
/// leave the claim index (`forkpool.pause_queue`, schema version 3). Idempotent.
pub fn pause(conn: &mut PooledConnection, queue: &str) -> Result<(), pool::Error> {
    conn.query_sql("SELECT forkpool.pause_queue($1)", &[&queue])?;
    Ok(())
}

/// Resumes `queue` and wakes every host (its jobs may be waiting); `forkpool.resume_queue`
/// waits for transactions still storing jobs into the paused queue, so none is left out of
/// the claim index. Idempotent.
pub fn resume(conn: &mut PooledConnection, queue: &str) -> Result<(), pool::Error> {
    conn.query_sql("SELECT forkpool.resume_queue($1)", &[&queue])?;
    Ok(())
}

/// One queue for `forkpool queue`: its counts and whether it is paused.
#[derive(Debug, Clone, Serialize)]
pub struct QueueRow {
    #[serde(flatten)]
    pub counts: QueueCounts,
    pub paused: bool,
}

/// Every queue that has jobs or is paused, by name.
pub fn queues(conn: &mut PooledConnection) -> Result<Vec<QueueRow>, pool::Error> {
    let paused: Vec<String> = conn
        .query_sql(
            "SELECT queue FROM forkpool.paused_queues ORDER BY queue",
            &[],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut rows: Vec<QueueRow> = queue_counts(conn)?
        .into_iter()
        .map(|counts| QueueRow {
            paused: paused.contains(&counts.queue),
            counts,
        })
        .collect();
    for queue in paused {
        if !rows.iter().any(|row| row.counts.queue == queue) {
            rows.push(QueueRow {
                counts: QueueCounts {
                    queue,
                    ..QueueCounts::default()
                },
                paused: true,
            });
        }
    }
    rows.sort_by(|a, b| a.counts.queue.cmp(&b.counts.queue));
    Ok(rows)
}

/// How long finished jobs are kept, by how they finished.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// `completed` and `cancelled`.
    pub finished: Duration,
    pub discarded: Duration,
}

/// Deletes finished jobs older than their retention, `batch` rows per transaction so no lock
/// is held long on a large backlog, until none is left or `budget` is spent. One host at a
/// time: `None` when another host holds the prune lock. Old schedule ticks go too.
pub fn prune(
    conn: &mut PooledConnection,
    retention: Retention,
    batch: i64,
    budget: Duration,
) -> Result<Option<u64>, pool::Error> {
    let started = Instant::now();
    let mut total = 0;
    loop {
        let deleted = super::in_transaction(conn, |conn| -> Result<Option<u64>, pool::Error> {
            let locked: bool =
                conn.query_sql("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])?[0].get(0);
            if !locked {
                return Ok(None);
            }
            let rows = conn.query_sql(
                "WITH old AS ( \
                   SELECT id FROM forkpool.jobs \
                    WHERE (state IN ('completed', 'cancelled') \
                           AND finished_at < now() - make_interval(secs => $1)) \
                       OR (state = 'discarded' AND finished_at < now() - make_interval(secs => $2)) \
                    LIMIT $3 FOR UPDATE SKIP LOCKED), \
                 deleted AS (DELETE FROM forkpool.jobs j USING old WHERE j.id = old.id RETURNING 1) \
                 SELECT count(*) FROM deleted",
                &[
                    &retention.finished.as_secs_f64(),
                    &retention.discarded.as_secs_f64(),
                    &batch,
                ],
            )?;
            Ok(Some(rows[0].get::<_, i64>(0) as u64))
        })?;
        let Some(deleted) = deleted else {
            return Ok(None);
        };
        total += deleted;
        if (deleted as i64) < batch || started.elapsed() >= budget {
            break;
        }
    }
    conn.query_sql(
        "DELETE FROM forkpool.schedule_ticks WHERE tick < now() - make_interval(secs => $1)",
        &[&retention
            .discarded
            .max(Duration::from_secs(86_400))
            .as_secs_f64()],
    )?;
    Ok(Some(total))
}

/// Records `tick` of `schedule` and enqueues its job, in one transaction: only the host whose
/// insert of the tick succeeds enqueues, so each tick runs once across all hosts. Returns the
/// job's id when this call enqueued it.
pub fn enqueue_tick(
    conn: &mut PooledConnection,
    schedule: &str,
    tick: chrono::DateTime<chrono::Utc>,
    job: &str,
    args: &serde_json::Value,
) -> Result<Option<i64>, pool::Error> {
    super::in_transaction(conn, |conn| -> Result<Option<i64>, pool::Error> {
        let recorded = conn.query_sql(
            "INSERT INTO forkpool.schedule_ticks (schedule, tick) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING RETURNING tick",
            &[&schedule, &tick],
        )?;
        if recorded.is_empty() {
            return Ok(None);
        }
        let args = args.to_string();
        let unique_key = format!("schedule:{schedule}:{}", tick.to_rfc3339());
        let rows = conn.query_sql(
            "SELECT job_id FROM forkpool.insert_job($1, $2::text::jsonb, NULL, NULL, NULL, NULL, $3)",
            &[&job, &args, &unique_key],
        )?;
        let id: i64 = rows[0].get(0);
        conn.query_sql(
            "UPDATE forkpool.schedule_ticks SET job_id = $3 WHERE schedule = $1 AND tick = $2",
            &[&schedule, &tick, &id],
        )?;
        Ok(Some(id))
    })
}

/// The last tick of `schedule` any host recorded, if any.
pub fn last_tick(
    conn: &mut PooledConnection,
    schedule: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, pool::Error> {
    let rows = conn.query_sql(
        "SELECT max(tick) FROM forkpool.schedule_ticks WHERE schedule = $1",
        &[&schedule],
    )?;
    Ok(rows[0].get(0))
}

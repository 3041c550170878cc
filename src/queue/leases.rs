//! Many hosts, one queue: each host's heartbeat row, the leases of its running jobs, and the
//! rescue of jobs whose lease lapsed (a host killed, frozen or cut off). Every host runs the
//! rescue; the row lock and the re-checked `WHERE` of one `UPDATE` make each job rescued once.

use std::time::Duration;

use serde::Serialize;

use super::claim::error_object;
use super::keeping::rescue_sql;
use crate::pool::{self, PooledConnection};

/// Registers this host instance, or refreshes its heartbeat; `pid` is its master's.
pub fn heartbeat(
    conn: &mut PooledConnection,
    host: &str,
    instance: i64,
    hostname: &str,
    pid: i32,
) -> Result<(), pool::Error> {
    conn.query_sql(
        "INSERT INTO forkpool.hosts (host, instance, hostname, pid) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (host, instance) DO UPDATE SET last_seen = now()",
        &[&host, &instance, &hostname, &pid],
    )?;
    Ok(())
}

/// Renews the leases of the jobs this host runs (`ids`, as its master knows them): one
/// statement per host per renewal, whatever the number of jobs. A job this host holds but
/// no longer runs (its settling failed) is left to lapse, and another host takes it back.
pub fn renew(
    conn: &mut PooledConnection,
    host: &str,
    instance: i64,
    ids: &[i64],
    lease: Duration,
) -> Result<u64, pool::Error> {
    let rows = conn.query_sql(
        "WITH renewed AS ( \
           UPDATE forkpool.jobs SET lease_until = now() + make_interval(secs => $4) \
            WHERE state = 'running' AND host = $1 AND instance = $2 AND id = ANY($3) \
           RETURNING 1) \
         SELECT count(*) FROM renewed",
        &[&host, &instance, &ids, &lease.as_secs_f64()],
    )?;
    Ok(rows[0].get::<_, i64>(0) as u64)
}

/// Takes back every running job whose lease lapsed, on whichever host: runnable again now,
/// the attempt counted, `host_lost` recorded (out of attempts: discarded; cancel requested:
/// cancelled). Returns how many. A job whose row is locked is skipped: a frozen host may be
/// inside its completion, which may still commit when it wakes; it is looked at again at
/// the next poll, and no host's keeper waits on another host's lock.
pub fn rescue_lapsed(conn: &mut PooledConnection) -> Result<u64, pool::Error> {
    let sql = rescue_sql(
        "FROM (SELECT id FROM forkpool.jobs \
                WHERE state = 'running' AND lease_until < now() \
                FOR UPDATE SKIP LOCKED) lapsed \
          WHERE jobs.id = lapsed.id",
        &error_object("$1", "$2", "NULL"),
    );
    let kind = "host_lost";
    let message = "its host stopped renewing its lease (killed, frozen or cut off)";
    let rows = conn.query_sql(&sql, &[&kind, &message])?;
    Ok(rows[0].get::<_, i64>(0) as u64)
}

/// A host sharing the queue, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct HostRow {
    pub host: String,
    pub instance: i64,
    pub hostname: String,
    pub pid: i32,
    pub started_at: String,
    pub last_seen: String,
    pub seen_seconds_ago: f64,
}

/// The hosts seen within `window`, most recently seen first; older rows are deleted.
pub fn hosts(conn: &mut PooledConnection, window: Duration) -> Result<Vec<HostRow>, pool::Error> {
    conn.query_sql(
        "DELETE FROM forkpool.hosts WHERE last_seen < now() - interval '1 day'",
        &[],
    )?;
    let rows = conn.query_sql(
        "SELECT host, instance, hostname, pid, started_at::text, last_seen::text, \
                extract(epoch FROM now() - last_seen)::float8 \
           FROM forkpool.hosts WHERE last_seen > now() - make_interval(secs => $1) \
          ORDER BY last_seen DESC",
        &[&window.as_secs_f64()],
    )?;
    Ok(rows
        .iter()
        .map(|row| HostRow {
            host: row.get(0),
            instance: row.get(1),
            hostname: row.get(2),
            pid: row.get(3),
            started_at: row.get(4),
            last_seen: row.get(5),
            seen_seconds_ago: row.get(6),
        })
        .collect())
}

//! Durable jobs in PostgreSQL: the `forkpool` schema and every statement that reads or
//! writes it. Worker-side only: the master never imports this module (it opens no database
//! connection); it sends workers and the queue keeper frames, and they run these.
//!
//! - [`schema`]: versions and the migration (`forkpool migrate`, `queue.migrate = "auto"`);
//! - [`claim`]: a worker claims a job and settles it once, fenced by its claim;
//! - [`enqueue`]: the socket's enqueue, every waiting job in one statement;
//! - [`keeping`]: the keeper's other statements (result, cancel, rescue, counts);
//! - [`leases`]: hosts' heartbeats, leases, and the rescue of jobs whose lease lapsed;
//! - [`admin`]: pausing queues, listing them, pruning, schedule ticks;
//! - [`backoff`]: when a failed job runs again.

pub mod admin;
pub mod backoff;
pub mod claim;
pub mod enqueue;
pub mod keeping;
pub mod leases;
pub mod schema;

use crate::pool::{self, PooledConnection};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// Runs a statement planned for its values at each call. *Not* prepared once per session: a
/// session's first executions run on a small table (a fresh queue), where a scan beats the
/// index, and PostgreSQL may then keep that as the statement's generic plan. (The slow first
/// drain of issue #15 was the claim's sort, not this: see `claim::CLAIM`; the claim and the
/// completion are functions whose kept plans cannot sort or scan, prepared once.)
pub(crate) fn query(
    conn: &mut PooledConnection,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, pool::Error> {
    conn.query_sql(sql, params)
}

/// Runs `body` in a transaction: committed when it returns `Ok`, rolled back otherwise.
pub(crate) fn in_transaction<T, E: From<pool::Error>>(
    conn: &mut PooledConnection,
    body: impl FnOnce(&mut PooledConnection) -> Result<T, E>,
) -> Result<T, E> {
    conn.batch_execute("BEGIN")?;
    match body(conn) {
        Ok(value) => {
            conn.batch_execute("COMMIT")?;
            Ok(value)
        }
        Err(error) => {
            // The error that made us roll back is the one worth reporting.
            let _ = conn.batch_execute("ROLLBACK");
            Err(error)
        }
    }
}

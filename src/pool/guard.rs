//! The checkout guard: a connection lent by a pool, given back by its `Drop` — the one
//! place a connection goes back, so the reset on return cannot be skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::{getpid, Pid};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Statement};

use super::connection::{Connection, RunError};
use super::endpoint::Endpoint;
use super::error::Error;
use super::notifications::Notification;
use super::pipeline::{PipelineEvent, PipelinedQuery};
use super::pool::{round_ms, Shared};

/// A checked-out connection. Dropping it is the one way a connection goes back to the pool,
/// so the reset on return cannot be skipped.
pub struct PooledConnection {
    /// `None` only during Drop.
    connection: Option<Connection>,
    shared: Arc<Shared>,
    /// The process that checked it out: in any other (a forked child) Drop forgets it.
    owner: Pid,
    checkout_id: u64,
    /// (when it was set, the deadline itself), to report how long the job had.
    deadline: Option<(Instant, Instant)>,
    /// The caller vouched that no transaction is open ([`PooledConnection::known_idle`]);
    /// any later operation withdraws it.
    idle_known: bool,
}

impl PooledConnection {
    pub(super) fn new(
        connection: Connection,
        shared: Arc<Shared>,
        owner: Pid,
        checkout_id: u64,
    ) -> PooledConnection {
        PooledConnection {
            connection: Some(connection),
            shared,
            owner,
            checkout_id,
            deadline: None,
            idle_known: false,
        }
    }

    /// Tells checkin that no transaction is open on this connection — every statement the
    /// caller ran was in autocommit, or its transaction was committed or rolled back — so
    /// `reset_on_return = "rollback"` can skip its `ROLLBACK`. (`discard` still runs `DISCARD
    /// ALL`; an interrupted connection is still rolled back.) Any later operation withdraws
    /// this; call it last.
    pub fn known_idle(&mut self) {
        self.idle_known = true;
    }

    /// Bounds every later operation: past `deadline` the running query is cancelled (a
    /// PostgreSQL cancel request) and `Error::Timeout` returned; the connection is then
    /// reset (or discarded) at checkin. `None` removes the bound.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline.map(|d| (Instant::now(), d));
    }

    /// Prepares `sql` once per connection; later calls return the cached statement.
    pub fn prepare_typed(&mut self, sql: &str, types: &[Type]) -> Result<Statement, Error> {
        let limit = self.limit()?;
        let (connection, endpoint) = self.parts();
        let result = connection.prepare_cached(endpoint, limit, sql, types);
        self.finish(result)
    }

    /// Runs a prepared statement and returns all its rows, bounded by the deadline (see
    /// [`PooledConnection::set_deadline`]). A broken connection is discarded at checkin.
    pub fn query(
        &mut self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let limit = self.limit()?;
        let (connection, endpoint) = self.parts();
        let result = connection.run(endpoint, limit, |c| c.query(statement, params));
        self.finish(result)
    }

    /// Runs prepared queries pipelined on this one session, each bounded by its own deadline
    /// (not the one of [`PooledConnection::set_deadline`]); `each` hears every query's rows
    /// or error once, as it ends, and [`PipelineEvent::Waiting`] whenever nothing more is
    /// ready. One query's error or timeout does not end the others.
    pub fn query_pipelined(
        &mut self,
        queries: &[PipelinedQuery<'_>],
        mut each: impl FnMut(PipelineEvent),
    ) {
        if let Err(refused) = self.limit() {
            // Crossed a fork: nothing may be sent; every query gets the refusal.
            for index in 0..queries.len() {
                let error = match &refused {
                    Error::Connection(why) => Error::Connection(why.clone()),
                    _ => Error::Connection("the connection cannot be used".into()),
                };
                each(PipelineEvent::Done(index, Err(error)));
            }
            return;
        }
        let (connection, endpoint) = self.parts();
        connection.run_pipelined(endpoint, queries, &mut each);
    }

    /// Runs a prepared statement that returns no rows; the count of rows it affected.
    /// Bounded like [`PooledConnection::query`].
    pub fn execute(
        &mut self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        let limit = self.limit()?;
        let (connection, endpoint) = self.parts();
        let result = connection.run(endpoint, limit, |c| c.execute(statement, params));
        self.finish(result)
    }

    /// Prepares (unnamed, not cached) and runs `sql`: for one-off statements.
    pub fn query_sql(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let limit = self.limit()?;
        let (connection, endpoint) = self.parts();
        let result = connection.run(endpoint, limit, |c| c.query(sql, params));
        self.finish(result)
    }

    /// Runs `operation` against the session's client, bounded like
    /// [`PooledConnection::query`]: for requests sent together. tokio-postgres writes the
    /// requests of futures polled together without waiting for each answer (pipelining), so
    /// `BEGIN`, a statement and `COMMIT` joined cost one round trip.
    pub fn pipelined<'a, T, F>(
        &'a mut self,
        operation: impl FnOnce(&'a tokio_postgres::Client) -> F,
    ) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, tokio_postgres::Error>> + 'a,
    {
        let limit = self.limit()?;
        let deadline = self.deadline;
        let (connection, endpoint) = self.parts();
        let result = connection.run(endpoint, limit, operation);
        result.map_err(|error| run_error(error, deadline))
    }

    /// Runs one or more statements with the simple query protocol.
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        let limit = self.limit()?;
        let (connection, endpoint) = self.parts();
        let result = connection.run(endpoint, limit, |c| c.batch_execute(sql));
        self.finish(result)
    }

    /// The notifications this session received (after `LISTEN`); if none yet, waits for one
    /// at most `limit` (bounded also by the deadline, if set). Empty: none came in time.
    pub fn wait_for_notifications(&mut self, limit: Duration) -> Result<Vec<Notification>, Error> {
        let limit = self.limit()?.map_or(limit, |left| left.min(limit));
        let (connection, _) = self.parts();
        connection.wait_for_notifications(limit)
    }

    /// The server process serving this connection (`pg_backend_pid()`).
    pub fn backend_pid(&self) -> i32 {
        self.connection.as_ref().map_or(0, |c| c.backend_pid)
    }

    /// Time left before the deadline; `Err(Timeout)` if it already passed (nothing sent).
    /// Refuses a checkout that crossed a fork: its session belongs to the parent, and a
    /// byte from this process would corrupt the parent's TLS stream.
    fn limit(&self) -> Result<Option<Duration>, Error> {
        if getpid() != self.owner {
            return Err(Error::Connection(format!(
                "this connection was checked out by process {} before a fork; check out a \
                 new one in this process",
                self.owner
            )));
        }
        match self.deadline {
            None => Ok(None),
            Some((set_at, deadline)) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    Err(Error::Timeout {
                        after: round_ms(set_at.elapsed()),
                    })
                } else {
                    Ok(Some(remaining))
                }
            }
        }
    }

    fn parts(&mut self) -> (&mut Connection, &Endpoint) {
        self.idle_known = false;
        let connection = self
            .connection
            .as_mut()
            .expect("a PooledConnection holds its connection until Drop");
        (connection, &self.shared.endpoint)
    }

    fn finish<T>(&self, result: Result<T, RunError>) -> Result<T, Error> {
        result.map_err(|error| run_error(error, self.deadline))
    }
}

/// The error of an operation run under `deadline` (when it was set, the deadline).
fn run_error(error: RunError, deadline: Option<(Instant, Instant)>) -> Error {
    match error {
        RunError::Failed(error) => error,
        RunError::TimedOut => Error::Timeout {
            after: round_ms(deadline.map_or(Duration::ZERO, |(set_at, _)| set_at.elapsed())),
        },
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        if getpid() != self.owner {
            // Checked out before a fork: the session belongs to the parent.
            connection.forget();
            return;
        }
        self.shared
            .checkin(connection, self.checkout_id, self.idle_known);
    }
}

impl std::fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConnection")
            .field("pool", &self.shared.name)
            .field("backend_pid", &self.backend_pid())
            .finish()
    }
}

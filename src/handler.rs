//! Jobs written in Rust: the [`Handler`] trait, the [`JobContext`] a handler receives, and
//! [`JobError`], what it answers when it fails.
//!
//! A handler runs on a worker's executor thread with the same supervision, pools, timeouts
//! and protocol as a SQL job. Its connections come from the worker's pools and go back
//! through the same checkin, so a handler that forgets to commit cannot leak a transaction
//! to the next job. A handler that panics answers `internal` with the panic message, and its
//! worker carries on (forkpool holds none of its own locks while a handler runs, and the
//! job's connections are checked in and reset during the unwind).
//!
//! The database types a handler touches are re-exported here: [`PooledConnection`] (what
//! [`JobContext::db`] lends), the [`PoolError`] its methods return (with the server's
//! [`DbError`] inside), and the `tokio-postgres` types its methods take and return
//! ([`Row`], [`Statement`], [`ToSql`], [`Type`]), so a handler needs no `tokio-postgres`
//! dependency of its own.
//!
//! ```no_run
//! use forkpool::handler::{JobContext, JobError};
//! use serde_json::{json, Map, Value};
//!
//! fn count_items(ctx: &mut JobContext<'_>, args: &Map<String, Value>) -> Result<Value, JobError> {
//!     let parent = args.get("parent_id").and_then(Value::as_i64)
//!         .ok_or_else(|| JobError::invalid_args("`parent_id` must be an integer"))?;
//!     let rows = ctx.db("main")?
//!         .query_sql("SELECT count(*) FROM items WHERE parent_id = $1", &[&parent])?;
//!     Ok(json!({ "count": rows[0].get::<_, i64>(0) }))
//! }
//!
//! fn main() {
//!     let service = forkpool::Service::new().handler("count_items", count_items);
//!     std::process::exit(forkpool::cli::main_with(service));
//! }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::catalog::RustJob;
use crate::queue::claim::Claim;

use crate::pools::{pool_error_body, Pools};
use crate::protocol::{ErrorBody, ErrorKind};

// What a handler's connection takes and returns, so a handler needs no import from
// tokio-postgres or from the (internal) pool module.
pub use crate::pool::{DbError, Error as PoolError, PooledConnection};
pub use tokio_postgres::types::{ToSql, Type};
pub use tokio_postgres::{Row, Statement};

/// A job written in Rust. Handlers are shared by a worker's executor threads, hence `Sync`;
/// they are synchronous, and should watch [`JobContext::deadline`] in long loops.
///
/// A function or closure with the signature of [`Handler::run`] is a handler; implement the
/// trait on a type of your own when the handler carries state (a client, a setting):
///
/// ```
/// use forkpool::handler::{Handler, JobContext, JobError};
/// use serde_json::{json, Map, Value};
///
/// /// Answers with a greeting set when the service was built.
/// struct Greeter {
///     greeting: String,
/// }
///
/// impl Handler for Greeter {
///     fn run(&self, _ctx: &mut JobContext<'_>, args: &Map<String, Value>) -> Result<Value, JobError> {
///         let name = args.get("name").and_then(Value::as_str)
///             .ok_or_else(|| JobError::invalid_args("`name` must be a string"))?;
///         Ok(json!(format!("{}, {name}", self.greeting)))
///     }
/// }
///
/// let service = forkpool::Service::new()
///     .handler("greet", Greeter { greeting: "Hello".into() })
///     .handler("ping", |_: &mut JobContext<'_>, _: &Map<String, Value>| Ok(json!("pong")));
/// # drop(service);
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Runs the job: `args` is the request's `args` object, unchecked (a handler validates
    /// its own arguments and answers [`JobError::invalid_args`]). The returned value is the
    /// answer's `result.value`.
    fn run(&self, ctx: &mut JobContext<'_>, args: &Map<String, Value>) -> Result<Value, JobError>;
}

impl<F> Handler for F
where
    F: Fn(&mut JobContext<'_>, &Map<String, Value>) -> Result<Value, JobError>
        + Send
        + Sync
        + 'static,
{
    fn run(&self, ctx: &mut JobContext<'_>, args: &Map<String, Value>) -> Result<Value, JobError> {
        self(ctx, args)
    }
}

/// A registered handler as the catalog holds it: compared by identity, printed by name.
#[derive(Clone)]
pub(crate) struct HandlerRef(pub(crate) Arc<dyn Handler>);

impl fmt::Debug for HandlerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerRef(..)")
    }
}

impl PartialEq for HandlerRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One Rust handler, registered by name next to the job files.
#[derive(Clone)]
pub(crate) struct Registration {
    pub(crate) name: String,
    pub(crate) options: HandlerOptions,
    pub(crate) handler: HandlerRef,
}

/// The handlers a service registers.
pub(crate) type Handlers = Vec<Registration>;

pub use crate::catalog::HandlerOptions;

impl HandlerRef {
    /// The handler of a Rust job of the catalog, which holds it opaque (so the catalog, and
    /// the master that reads it, import nothing that opens a connection).
    pub(crate) fn of(job: &RustJob) -> Option<&HandlerRef> {
        job.handler.downcast_ref::<HandlerRef>()
    }
}

/// Why a handler job failed: a kind from the protocol's closed set and a message for a
/// person. `?` converts pool errors (`db_error` with its SQLSTATE, `timeout`,
/// `db_unavailable`).
///
/// ```
/// use forkpool::handler::JobError;
///
/// let error = JobError::failed("the object store answered 503");
/// assert_eq!(error.kind(), "job_failed");
/// assert_eq!(error.to_string(), "job_failed: the object store answered 503");
/// assert_eq!(JobError::invalid_args("`name` is missing").kind(), "invalid_args");
/// ```
#[derive(Debug, Clone)]
pub struct JobError(pub(crate) ErrorBody);

impl JobError {
    /// `job_failed`: the handler could not do its work (an external call failed, ...).
    pub fn failed(message: impl Into<String>) -> JobError {
        JobError(ErrorBody::new(ErrorKind::JobFailed, message))
    }

    /// `invalid_args`: the arguments are wrong; say which one.
    pub fn invalid_args(message: impl Into<String>) -> JobError {
        JobError(ErrorBody::new(ErrorKind::InvalidArgs, message))
    }

    /// The kind on the wire (`db_error`, `job_failed`, ...).
    pub fn kind(&self) -> &'static str {
        self.0.kind.as_str()
    }

    /// The message for a person (the answer's `error.message`).
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for JobError {}

impl From<crate::pool::Error> for JobError {
    fn from(error: crate::pool::Error) -> JobError {
        JobError(pool_error_body(error, "a handler's database"))
    }
}

/// What a handler gets besides its arguments: the job's identity and deadline, and pooled
/// connections — one per database per job, checked out on first use and checked in (and
/// reset) when the job ends, whatever way it ends.
pub struct JobContext<'a> {
    job_id: u64,
    job: &'a str,
    deadline: Instant,
    pools: &'a Pools,
    connections: HashMap<String, PooledConnection>,
    /// Set when the job runs as a durable job (DESIGN §12).
    durable: Option<&'a mut DurableRun>,
}

/// A durable run of a handler: the claim it answers, and whether the handler completed the
/// job itself ([`JobContext::transaction_completing`]).
pub(crate) struct DurableRun {
    pub claim: Claim,
    /// `queue.database`: only a transaction there can carry the completion.
    pub database: String,
    pub slot: usize,
    pub started: Instant,
    pub completed: bool,
}

impl<'a> JobContext<'a> {
    pub(crate) fn new(
        job_id: u64,
        job: &'a str,
        deadline: Instant,
        pools: &'a Pools,
        durable: Option<&'a mut DurableRun>,
    ) -> Self {
        JobContext {
            job_id,
            job,
            deadline,
            pools,
            connections: HashMap::new(),
            durable,
        }
    }

    /// Whether the job runs as a durable job (enqueued), not as a `run` job.
    pub fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// The master's id for this job (it names the job in logs and leak warnings).
    pub fn job_id(&self) -> u64 {
        self.job_id
    }

    /// The job's name.
    pub fn job(&self) -> &str {
        self.job
    }

    /// When the job times out. Every database call made through [`JobContext::db`] is
    /// already bounded by it; work of the handler's own should check it too.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline (zero once past it).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// A connection to the configured database `database` (`[databases.<name>]`), the same
    /// one for the whole job. Its calls are bounded by the job's deadline.
    pub fn db(&mut self, database: &str) -> Result<&mut PooledConnection, JobError> {
        if !self.connections.contains_key(database) {
            let pool = self.pools.get(database).map_err(JobError)?;
            let mut conn = pool
                .checkout(&format!("job {} ({})", self.job_id, self.job))
                .map_err(|e| JobError(pool_error_body(e, database)))?;
            conn.set_deadline(Some(self.deadline));
            self.connections.insert(database.to_string(), conn);
        }
        Ok(self
            .connections
            .get_mut(database)
            .expect("inserted just above"))
    }

    /// Runs `work` in a transaction on `database`: committed if it returns `Ok`, rolled back
    /// if it returns `Err` or panics (the panic then goes on, and the job answers
    /// `internal`). The rollback is the helper's own, whatever the database's
    /// `reset_on_return`.
    ///
    /// ```no_run
    /// # use forkpool::handler::{JobContext, JobError};
    /// # use serde_json::{json, Map, Value};
    /// fn add_child(ctx: &mut JobContext<'_>, args: &Map<String, Value>) -> Result<Value, JobError> {
    ///     let parent = args.get("parent_id").and_then(Value::as_i64)
    ///         .ok_or_else(|| JobError::invalid_args("`parent_id` must be an integer"))?;
    ///     // Both statements or neither.
    ///     let id: i64 = ctx.transaction("main", |db| {
    ///         let rows = db.query_sql(
    ///             "INSERT INTO items (parent_id) VALUES ($1) RETURNING id", &[&parent])?;
    ///         db.query_sql(
    ///             "UPDATE parents SET child_count = child_count + 1 WHERE id = $1", &[&parent])?;
    ///         Ok(rows[0].get(0))
    ///     })?;
    ///     Ok(json!({ "id": id }))
    /// }
    /// ```
    pub fn transaction<T>(
        &mut self,
        database: &str,
        work: impl FnOnce(&mut PooledConnection) -> Result<T, JobError>,
    ) -> Result<T, JobError> {
        let conn = self.db(database)?;
        conn.batch_execute("BEGIN")?;
        let mut open = OpenTransaction { conn, open: true };
        let value = work(open.conn)?;
        open.conn.batch_execute("COMMIT")?;
        open.open = false;
        Ok(value)
    }

    /// Like [`JobContext::transaction`], and when the job runs as a durable job on the
    /// queue's database (`queue.database`), the job's completion — `state = 'completed'`
    /// with `{"value": <what work returned>, ...}` as its result — commits in the same
    /// transaction: the handler's effects and the completion happen together or not at
    /// all, so the job is **exactly-once**. If the job was taken back meanwhile (its worker
    /// was thought dead), the transaction rolls back and this answers `job_failed`. For a
    /// `run` job, or another database, it is a plain transaction (at-least-once, as a
    /// handler's durable run otherwise is). Return its value from the handler.
    ///
    /// ```no_run
    /// # use forkpool::handler::{JobContext, JobError};
    /// # use serde_json::{json, Map, Value};
    /// fn charge(ctx: &mut JobContext<'_>, args: &Map<String, Value>) -> Result<Value, JobError> {
    ///     let order = args.get("order").and_then(Value::as_i64)
    ///         .ok_or_else(|| JobError::invalid_args("`order` must be an integer"))?;
    ///     ctx.transaction_completing("main", |db| {
    ///         db.query_sql("INSERT INTO charges (order_id) VALUES ($1)", &[&order])?;
    ///         Ok(json!({ "charged": order }))
    ///     })
    /// }
    /// ```
    pub fn transaction_completing(
        &mut self,
        database: &str,
        work: impl FnOnce(&mut PooledConnection) -> Result<Value, JobError>,
    ) -> Result<Value, JobError> {
        let completing = self
            .durable
            .as_deref()
            .filter(|run| run.database == database && !run.completed)
            .map(|run| (run.claim, run.slot, run.started));
        let Some((claim, slot, started)) = completing else {
            return self.transaction(database, work);
        };
        let conn = self.db(database)?;
        conn.batch_execute("BEGIN")?;
        let mut open = OpenTransaction { conn, open: true };
        let value = work(open.conn)?;
        let result = serde_json::json!({
            "value": value,
            "worker": slot,
            "pid": std::process::id(),
            "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
        });
        if !crate::queue::claim::complete(open.conn, claim, &result.to_string(), true)? {
            return Err(JobError::failed(
                "this worker lost the job's claim (it was taken back meanwhile); its \
                 transaction was rolled back",
            ));
        }
        open.conn.batch_execute("COMMIT")?;
        open.open = false;
        drop(open);
        if let Some(run) = self.durable.as_deref_mut() {
            run.completed = true;
        }
        Ok(value)
    }
}

/// Rolls back on the way out of [`JobContext::transaction`] unless it committed, so an error
/// or a panic inside the work never leaves a transaction open — whatever `reset_on_return`
/// says.
struct OpenTransaction<'c> {
    conn: &'c mut PooledConnection,
    open: bool,
}

impl Drop for OpenTransaction<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.batch_execute("ROLLBACK");
        }
    }
}

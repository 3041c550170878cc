//! Runs one SQL job from the catalog on a pooled connection.

use std::time::Instant;

use serde_json::{Map, Value};

use crate::catalog::{row_to_json, SqlJob, SqlValue};
use crate::pool::{self, run_prepared, Pool, PooledConnection, Returned};
use crate::pools::pool_error_body;
use crate::protocol::{ErrorBody, ErrorKind};
use futures_util::future::join;
use tokio_postgres::Row;

/// What a SQL job produced: the rows of the last statement that returned rows, and the count
/// of rows each statement affected (or returned).
pub struct SqlOutput {
    pub rows: Vec<Value>,
    pub rows_affected: Vec<u64>,
    pub truncated: bool,
}

/// Binds `args`, checks out a connection, runs the job's statements (in one transaction when
/// the job has several and `transaction` is on) and converts the rows.
///
/// A single statement runs without `BEGIN`/`COMMIT`: PostgreSQL already runs it atomically in
/// its own implicit transaction, and the two round trips would double a trivial job's latency.
/// The connection is left in `held`: the caller answers first and then drops it, so the
/// pool's checkin — which resets it (`reset_on_return`), so even a job that times out
/// mid-transaction leaves nothing open for the next one — is not part of the job's latency.
/// The outcome is final before that: a transaction is committed or rolled back here.
pub fn run(
    pool: &Pool,
    name: &str,
    job: &SqlJob,
    args: &Map<String, Value>,
    deadline: Instant,
    label: &str,
    held: &mut Option<PooledConnection>,
) -> Result<SqlOutput, ErrorBody> {
    let values = bind(job, args)?;
    let conn = held.insert(
        pool.checkout(label)
            .map_err(|e| pool_error_body(e, &job.database))?,
    );
    conn.set_deadline(Some(deadline));
    let explicit_transaction = job.transaction && job.statements.len() > 1;
    let outcome = execute_statements(conn, job, &values, explicit_transaction).and_then(|ran| {
        if explicit_transaction {
            conn.batch_execute("COMMIT")?;
        }
        Ok(ran)
    });
    // Whether the job can have left a transaction open, so checkin knows if its reset has
    // anything to do: not when every statement ran in autocommit (or in our committed or
    // rolled-back transaction) and none of them opened one itself.
    let opens_own = job.statements.iter().any(|s| s.opens_transaction);
    let ran = match outcome {
        Ok(ran) => ran,
        Err(error) => {
            let db_error = matches!(error, pool::Error::Db(_));
            let rolled_back =
                explicit_transaction && db_error && conn.batch_execute("ROLLBACK").is_ok();
            if (rolled_back || (db_error && !explicit_transaction)) && !opens_own {
                conn.known_idle();
            }
            return Err(pool_error_body(error, &job.database));
        }
    };
    if !opens_own {
        conn.known_idle();
    }
    ran.into_output(name, job)
}

/// The request's arguments as one bound value per parameter; `invalid_args` naming the bad one.
pub fn bind(job: &SqlJob, args: &Map<String, Value>) -> Result<Vec<SqlValue>, ErrorBody> {
    job.bind(args)
        .map_err(|message| ErrorBody::new(ErrorKind::InvalidArgs, message))
}

/// What the statements returned, before the rows are converted.
pub struct Ran {
    rows_affected: Vec<u64>,
    last_rows: Option<Vec<Row>>,
}

/// Runs the job's statements in order on `conn`, in whatever transaction the caller opened
/// (none: each in its own); stops at the first error. With `begin` it opens the transaction
/// itself: `BEGIN` goes out with the first statement, one round trip for both.
pub fn execute_statements(
    conn: &mut PooledConnection,
    job: &SqlJob,
    values: &[SqlValue],
    begin: bool,
) -> Result<Ran, pool::Error> {
    let mut ran = Ran {
        rows_affected: Vec::with_capacity(job.statements.len()),
        last_rows: None,
    };
    if begin && job.statements.is_empty() {
        conn.batch_execute("BEGIN")?;
    }
    for (index, statement) in job.statements.iter().enumerate() {
        let prepared = conn.prepare_typed(&statement.sql, &statement.types)?;
        let params = statement.args(values);
        let begin_here = begin && index == 0;
        let returned = conn.pipelined(|client| async move {
            if !begin_here {
                return run_prepared(client, &prepared, &params).await;
            }
            let (begun, returned) = join(
                client.batch_execute("BEGIN"),
                run_prepared(client, &prepared, &params),
            )
            .await;
            begun?;
            returned
        })?;
        ran.record(returned);
    }
    Ok(ran)
}

impl Ran {
    /// What one statement ran on a pipeline returned (see [`execute_statements`]).
    pub fn of_one(returned: Returned) -> Ran {
        let mut ran = Ran {
            rows_affected: Vec::with_capacity(1),
            last_rows: None,
        };
        ran.record(returned);
        ran
    }

    /// Adds what one more statement returned: its count, and its rows as the last rows.
    fn record(&mut self, returned: Returned) {
        match returned {
            Returned::Rows(rows) => {
                self.rows_affected.push(rows.len() as u64);
                self.last_rows = Some(rows);
            }
            Returned::Affected(count) => self.rows_affected.push(count),
        }
    }

    /// The rows of the last statement that returned rows, as JSON, cut at `max_rows`.
    pub fn into_output(self, name: &str, job: &SqlJob) -> Result<SqlOutput, ErrorBody> {
        let rows = self.last_rows.unwrap_or_default();
        let truncated = rows.len() > job.max_rows;
        let rows = rows
            .iter()
            .take(job.max_rows)
            .map(|row| row_to_json(row).map(Value::Object))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| {
                ErrorBody::new(ErrorKind::Internal, format!("job `{name}`: {message}"))
            })?;
        Ok(SqlOutput {
            rows,
            rows_affected: self.rows_affected,
            truncated,
        })
    }
}

impl SqlOutput {
    /// The `run` result object of DESIGN §5, without the worker's own fields.
    pub fn to_result(&self) -> Value {
        let mut result =
            serde_json::json!({ "rows": self.rows, "rows_affected": self.rows_affected });
        if self.truncated {
            result["truncated"] = Value::Bool(true);
        }
        result
    }
}

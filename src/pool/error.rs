//! What can go wrong when using a pool, worded so a person knows what to do next.

use std::fmt;
use std::time::Duration;

/// A server error as PostgreSQL reported it (from `tokio_postgres::Error::as_db_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    /// The five-character SQLSTATE, e.g. `42P01`.
    pub sqlstate: String,
    /// The primary message, as the server's `ERROR:` line has it.
    pub message: String,
    /// The server's `DETAIL:`, when it sent one (e.g. the key a unique violation hit).
    pub detail: Option<String>,
    /// The server's `HINT:`, when it sent one.
    pub hint: Option<String>,
}

/// Every failure the pool reports. `Display` never says just "db error" or "timed out":
/// it names the server's message and SQLSTATE, the database, or the limit that was hit.
#[derive(Debug)]
pub enum Error {
    /// The server rejected a statement.
    Db(DbError),
    /// The caller's deadline passed; the running query was cancelled.
    Timeout {
        /// How long the operation had run since the deadline was set
        /// ([`PooledConnection::set_deadline`](crate::pool::PooledConnection::set_deadline)).
        after: Duration,
    },
    /// No connection could be checked out within `checkout_timeout`. `reason` is the last
    /// connect error (with its SQLSTATE or OS error) or "all N connections in use for 5s".
    Unavailable {
        /// The database name the pool connects to.
        database: String,
        /// Why no connection could be had.
        reason: String,
    },
    /// The connection broke during an operation (server restart, network cut, backend killed).
    Connection(String),
    /// Bad connection settings or TLS files.
    Config(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Db(db) => fmt::Display::fmt(db, f),
            Error::Timeout { after } => write!(
                f,
                "query cancelled: the job's deadline passed after {}",
                humantime::format_duration(*after)
            ),
            Error::Unavailable { database, reason } => {
                write!(f, "database {database:?} unavailable: {reason}")
            }
            Error::Connection(why) => write!(f, "database connection lost: {why}"),
            Error::Config(why) => write!(f, "bad database settings: {why}"),
        }
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server error {}: {}", self.sqlstate, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<tokio_postgres::Error> for Error {
    /// A server error keeps its SQLSTATE and text; anything else means the connection is
    /// no longer usable, so it becomes `Connection` with the underlying cause spelled out.
    fn from(error: tokio_postgres::Error) -> Error {
        match error.as_db_error() {
            Some(db) => Error::Db(DbError {
                sqlstate: db.code().code().to_string(),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
            }),
            None => Error::Connection(describe(&error)),
        }
    }
}

/// The error with its whole source chain, because tokio-postgres's own Display often stops
/// at "error connecting to server" and hides the OS error or TLS reason behind it.
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

//! The fork-safe connection pool every worker owns (one per database per process).
//!
//! Build a [`Pool`] (it opens nothing), then [`Pool::checkout`] a [`PooledConnection`] per
//! job; dropping it gives the connection back, reset. A pool used in a process other than
//! the one that opened its connections (after `fork()`) forgets them without writing a byte
//! to their sockets and starts afresh.

mod budget;
mod connection;
pub(crate) mod conninfo;
mod endpoint;
mod error;
mod guard;
mod notifications;
mod passfile;
mod pipeline;
#[allow(clippy::module_inception)]
mod pool;
mod service_file;
mod settings;
mod state;
mod stats;
mod tls;

pub use budget::check_connection_budget;
pub use conninfo::{ConnInfo, SslMode, TargetSessionAttrs};
pub use error::{DbError, Error};
pub use guard::PooledConnection;
pub use notifications::Notification;
pub use pipeline::{run_prepared, PipelineEvent, PipelinedQuery, Returned};
pub use pool::Pool;
pub use settings::{PoolSettings, ResetOnReturn};
pub use stats::PoolStats;

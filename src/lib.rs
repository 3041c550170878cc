//! forkpool: a prefork job runner for PostgreSQL work.
//!
//! A master process loads its configuration once and forks worker processes; each worker
//! builds its own connection pools after the fork. See `DESIGN.md` for the contract.
//!
//! As a library, forkpool runs jobs written in Rust next to the SQL job files, under the same
//! master, pools, timeouts and socket protocol. The public surface is small:
//!
//! - [`Service`]: the handlers to register, then [`Service::run`] or [`cli::main_with`];
//! - [`handler`]: the [`Handler`](handler::Handler) trait, the
//!   [`JobContext`](handler::JobContext) a handler receives (`ctx.db("main")`,
//!   `ctx.transaction(..)`, the job id and deadline), [`JobError`](handler::JobError), and
//!   the database types a handler touches ([`PooledConnection`](handler::PooledConnection)
//!   and what its methods take and return);
//! - [`cli`]: the whole `forkpool` command line for a program of your own.
//!
//! ```no_run
//! use forkpool::handler::{JobContext, JobError};
//! use serde_json::{json, Map, Value};
//!
//! fn add_note(ctx: &mut JobContext<'_>, args: &Map<String, Value>) -> Result<Value, JobError> {
//!     let note = args.get("note").and_then(Value::as_str)
//!         .ok_or_else(|| JobError::invalid_args("`note` must be a string"))?;
//!     let id: i64 = ctx.transaction("main", |db| {
//!         let rows = db.query_sql("INSERT INTO notes (note) VALUES ($1) RETURNING id", &[&note])?;
//!         Ok(rows[0].get(0))
//!     })?;
//!     Ok(json!({ "id": id }))
//! }
//!
//! fn main() {
//!     let service = forkpool::Service::new().handler("add_note", add_note);
//!     std::process::exit(forkpool::cli::main_with(service));
//! }
//! ```
#![deny(missing_docs)]

// Internal modules. Those marked `#[doc(hidden)] pub` are reachable only for the integration
// tests (tests/) and the binary, not part of the library's API: they may change without
// notice. (`missing_docs` skips hidden items.)
#[doc(hidden)]
pub mod catalog;
pub mod cli;
mod client;
#[doc(hidden)]
pub mod config;
pub(crate) mod databases;
mod dev;
// The private PostgreSQL cluster of `forkpool dev`, public only for the integration tests'
// clusters (tests/support), which are the same code.
#[doc(hidden)]
pub mod devcluster;
mod durations;
mod exit;
// The parsers that take outside input, for the fuzz targets (fuzz/); not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod handler;
// Reachable (hidden) through `fuzzing`; its fields are documented where it matters.
#[allow(missing_docs)]
pub(crate) mod ipc;
pub(crate) mod keeper;
mod logging;
pub(crate) mod master;
// The scrape request parser is public for a fuzz target; the rest for the client and master.
#[doc(hidden)]
pub mod metrics;
// The pool's types a handler touches are re-exported from `handler`, where they are part of
// the API; a few of their methods and fields still lack docs in src/pool (issue 8's note
// lists them), and the lint does not see them through the re-export.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod pool;
mod pools;
mod probe;
// Durable jobs' statements: public only for the integration tests, like `pool`.
#[doc(hidden)]
pub mod protocol;
#[doc(hidden)]
#[allow(missing_docs)]
pub mod queue;
mod service;
mod startup;
pub(crate) mod systemd;
pub(crate) mod worker;

pub use service::Service;

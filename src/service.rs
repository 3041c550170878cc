//! forkpool as a library: a [`Service`] is the job catalog plus jobs written in Rust, run
//! exactly like `forkpool run`.

use std::path::Path;
use std::sync::Arc;

use crate::handler::{Handler, HandlerOptions, HandlerRef, Handlers, Registration};

/// The service: SQL jobs from `workers/*.toml` and Rust handlers, under one master.
///
/// A `Service` holds the handlers only; the configuration is loaded when it runs —
/// from `--config` under [`cli::main_with`](crate::cli::main_with), from the path given to
/// [`Service::run`] — exactly as `forkpool run` loads it, and re-read from the same file on
/// SIGHUP (the handlers are registered again with every reloaded catalog). A service built
/// from a configuration loaded beforehand would hold a copy that the command line's
/// `--config` and the first reload both replace; holding none leaves one source of truth,
/// the file.
///
/// With the `forkpool` command line (run, submit, status, check, bench):
///
/// ```no_run
/// use forkpool::handler::{JobContext, JobError};
/// use serde_json::{json, Map, Value};
///
/// fn hello(_ctx: &mut JobContext<'_>, args: &Map<String, Value>) -> Result<Value, JobError> {
///     Ok(json!({ "hello": args.get("name").cloned().unwrap_or(Value::Null) }))
/// }
///
/// // `run` serves `hello` among the jobs of the catalog; `check` checks it too.
/// std::process::exit(forkpool::cli::main_with(forkpool::Service::new().handler("hello", hello)));
/// ```
///
/// Or run in the foreground from a program with a command line of its own:
///
/// ```no_run
/// # use forkpool::handler::{JobContext, JobError};
/// # use serde_json::{json, Map, Value};
/// # fn hello(_: &mut JobContext<'_>, _: &Map<String, Value>) -> Result<Value, JobError> { Ok(Value::Null) }
/// let service = forkpool::Service::new().handler("hello", hello);
/// std::process::exit(service.run(Some("/etc/forkpool/forkpool.toml".as_ref())));
/// ```
#[derive(Clone, Default)]
pub struct Service {
    handlers: Handlers,
}

impl Service {
    /// A service with the job files only.
    pub fn new() -> Service {
        Service::default()
    }

    /// Registers `handler` as the job `name`, with the default [`HandlerOptions`]. A name
    /// taken by a job file, or registered twice, stops the service at start with the name.
    pub fn handler(self, name: &str, handler: impl Handler) -> Service {
        self.handler_with(name, HandlerOptions::default(), handler)
    }

    /// Registers `handler` as the job `name` with its description, timeout and retry policy.
    ///
    /// ```
    /// use std::time::Duration;
    /// use forkpool::handler::{HandlerOptions, JobContext, JobError};
    /// use serde_json::{Map, Value};
    ///
    /// fn reindex(_: &mut JobContext<'_>, _: &Map<String, Value>) -> Result<Value, JobError> {
    ///     Ok(Value::Null)
    /// }
    ///
    /// let service = forkpool::Service::new().handler_with(
    ///     "reindex",
    ///     HandlerOptions {
    ///         description: "Rebuild the search index".into(),
    ///         timeout: Some(Duration::from_secs(300)),
    ///         retry_on_worker_lost: true,
    ///     },
    ///     reindex,
    /// );
    /// # drop(service);
    /// ```
    pub fn handler_with(
        mut self,
        name: &str,
        options: HandlerOptions,
        handler: impl Handler,
    ) -> Service {
        self.handlers.push(Registration {
            name: name.to_string(),
            options,
            handler: HandlerRef(Arc::new(handler)),
        });
        self
    }

    /// Runs the service in the foreground like `forkpool run --config <config>`: loads the
    /// configuration (found as `forkpool run` finds it when `config` is `None`:
    /// `$FORKPOOL_CONFIG`, else `config/forkpool.toml`) and the job files, registers the
    /// handlers, and serves until stopped; returns the process exit code, as `forkpool run`
    /// does (2 when the configuration, the catalog or a handler's name is refused, every
    /// problem printed first). Logging is not set up here; [`cli::main_with`] does it.
    ///
    /// [`cli::main_with`]: crate::cli::main_with
    pub fn run(self, config: Option<&Path>) -> i32 {
        crate::startup::run(config, &self.handlers)
    }

    pub(crate) fn handlers(&self) -> &Handlers {
        &self.handlers
    }
}

//! forkpool as a library: a [`Service`] is the job catalog plus jobs written in Rust, run
//! exactly like `forkpool run`.

use std::path::Path;
use std::sync::Arc;

use crate::handler::{Handler, HandlerOptions, HandlerRef};

/// One Rust handler, registered by name next to the job files.
#[derive(Clone)]
pub struct Registration {
    pub name: String,
    pub options: HandlerOptions,
    pub handler: HandlerRef,
}

/// The handlers a service registers.
pub type Handlers = Vec<Registration>;

/// The service: SQL jobs from `workers/*.toml` and Rust handlers, under one master.
///
/// ```no_run
/// use forkpool::handler::{JobContext, JobError};
/// use serde_json::{json, Map, Value};
///
/// fn hello(_ctx: &mut JobContext<'_>, args: &Map<String, Value>) -> Result<Value, JobError> {
///     Ok(json!({ "hello": args.get("name").cloned().unwrap_or(Value::Null) }))
/// }
///
/// // The whole `forkpool` command line (run, submit, status, check, bench), with `hello`
/// // among the jobs that `run` serves:
/// std::process::exit(forkpool::cli::main_with(forkpool::Service::new().handler("hello", hello)));
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

    /// Runs the service in the foreground like `forkpool run --config <config>` (the
    /// configuration is found as `forkpool run` finds it when `config` is `None`); returns
    /// the process exit code.
    pub fn run(self, config: Option<&Path>) -> i32 {
        crate::cli::run(config, &self)
    }

    pub(crate) fn handlers(&self) -> &Handlers {
        &self.handlers
    }
}

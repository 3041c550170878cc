//! Runs one job of a Rust [`Handler`](crate::handler::Handler).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use serde_json::{Map, Value};

use crate::catalog::RustJob;
use crate::handler::{DurableRun, HandlerRef, JobContext};
use crate::pools::Pools;
use crate::protocol::{ErrorBody, ErrorKind};

/// Calls the handler with a fresh context. A panic is answered `internal` with its message,
/// and the worker carries on: forkpool holds no lock of its own while a handler runs, and the
/// job's connections are checked in (and reset) as the context drops during the unwind, so
/// nothing of forkpool's is left poisoned. A handler that keeps state of its own behind a
/// lock must expect to find it poisoned after a panic.
pub fn run(
    rust: &RustJob,
    job_id: u64,
    job: &str,
    args: &Map<String, Value>,
    deadline: Instant,
    pools: &Pools,
    durable: Option<&mut DurableRun>,
) -> Result<Value, ErrorBody> {
    let Some(handler) = HandlerRef::of(rust) else {
        return Err(ErrorBody::new(
            ErrorKind::Internal,
            format!("job `{job}` holds no Rust handler"),
        ));
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut ctx = JobContext::new(job_id, job, deadline, pools, durable);
        handler.0.run(&mut ctx, args)
    }));
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.0),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            log::error!("job {job_id} ({job}): the handler panicked: {message}");
            Err(ErrorBody::new(
                ErrorKind::Internal,
                format!("the handler of job `{job}` panicked: {message}"),
            ))
        }
    }
}

//! A SQL job file (DESIGN §7) as `Catalog::load` reads each one: `JobSpec::from_toml` on
//! the file's text. Never a panic; a job that loads is one the master and workers can use:
//! its statements' parameters point into its params, and its durations fit the deadline
//! arithmetic the master does with them.
#![no_main]

use std::time::{Duration, Instant};

use forkpool::catalog::JobSpec;
use libfuzzer_sys::fuzz_target;

fn fits_a_deadline(what: &str, duration: Duration) {
    assert!(
        Instant::now().checked_add(duration).is_some(),
        "{what} = {duration:?} overflows a deadline"
    );
    assert!(
        u64::try_from(duration.as_millis()).is_ok(),
        "{what} = {duration:?} does not fit the job channel's timeout_ms"
    );
}

fuzz_target!(|text: &str| {
    let Ok(job) = JobSpec::from_toml("fuzzed", text, Duration::from_secs(30)) else {
        return;
    };
    fits_a_deadline("timeout", job.timeout);
    fits_a_deadline("retry_backoff_max", job.durable.retry_backoff_max);
    assert!(job.durable.retry_backoff <= job.durable.retry_backoff_max);
    assert!(job.durable.max_attempts >= 1);
    let sql = job.sql().expect("a job file is SQL");
    assert!(sql.max_rows >= 1);
    assert!(!sql.statements.is_empty());
    for statement in &sql.statements {
        assert_eq!(statement.params.len(), statement.types.len());
        for &index in &statement.params {
            assert!(index < sql.params.len());
        }
    }
    // Every param's default binds, so a request that leaves them out is checked as usual.
    let _ = sql.bind(&serde_json::Map::new());
});

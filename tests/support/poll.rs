//! Waiting for what gives no notification (a row in pg_stat_activity, a status count, a
//! connection the server closed), and running the binary as a one-shot command.

use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use super::EVENT_TIMEOUT;

/// How often a condition is looked at again: the pace of the polling, not a wait in itself.
const POLL: Duration = Duration::from_millis(10);

/// Polls `done` until it holds, failing the test after [`EVENT_TIMEOUT`].
pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_until_within(what, EVENT_TIMEOUT, done);
}

/// Polls `done` until it holds, failing the test after `patience`.
pub fn wait_until_within(what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
    poll_until(what, patience, || done().then_some(()), String::new);
}

/// Asks `check` until it answers, every [`POLL`]; after `patience` fails the test naming
/// `what`, with what `explain` tells then (the service's logs, the rows that are left).
pub fn poll_until<T>(
    what: &str,
    patience: Duration,
    mut check: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("waited {patience:?} until {what}\n{}", explain());
        }
        thread::sleep(POLL);
    }
}

/// Runs the binary with `args`, with no socket or config from the environment.
pub fn forkpool_command(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .args(args)
        .env_remove("FORKPOOL_SOCKET")
        .env_remove("FORKPOOL_CONFIG")
        .output()
        .expect("running the forkpool binary")
}

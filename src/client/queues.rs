//! `forkpool queue`: the durable queues (DESIGN §12 "Queue control") with their counts and
//! whether each is paused, and pausing or resuming one on every host.

use std::path::Path;

use serde_json::{json, Value};

use super::durable::ANSWER_GRACE;
use super::{print_with_exit_code, status_table, Connection};
use crate::exit::{EXIT_FAILED, EXIT_OK};

/// `forkpool queue [--json]`: exit 0 with the queues as a table (or the `queues` result as
/// JSON), 1 when the service refuses (durable jobs off, the keeper not ready).
pub(crate) fn list(socket: &Path, as_json: bool) -> i32 {
    let answer = match ask(socket, json!({"id": 1, "op": "queues"})) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    if answer["ok"] != json!(true) {
        eprintln!("{answer}");
        return EXIT_FAILED;
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer["result"]).expect("JSON")
        );
    } else {
        let empty = Vec::new();
        let queues = answer["result"]["queues"].as_array().unwrap_or(&empty);
        print!("{}", status_table::queue_table(queues, true));
    }
    EXIT_OK
}

/// `forkpool queue pause|resume NAME`: prints the answer (`{"queue", "paused"}`); exit 0
/// when it is ok, 1 when refused. Both are idempotent, so pausing a paused queue is ok.
pub(crate) fn set_paused(socket: &Path, queue: &str, paused: bool) -> i32 {
    let op = if paused { "pause" } else { "resume" };
    print_with_exit_code(ask(socket, json!({"id": 1, "op": op, "queue": queue})))
}

/// One request on a connection of its own, its answer awaited at most [`ANSWER_GRACE`]: the
/// keeper answers these, and a stuck keeper should not hang the command.
fn ask(socket: &Path, request: Value) -> Result<Value, i32> {
    Connection::open(socket)?.ask(&request, Some(ANSWER_GRACE))
}

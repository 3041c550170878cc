//! The durable ops' fields (DESIGN §12, §13): `enqueue`, `result`, `cancel`, `queues`,
//! `pause`, `resume`. Each mistake is named by its field, like the rest of the protocol.

use serde::de::DeserializeOwned;

use super::{job_and_args, string_field, Fields, Op};
use crate::ipc::EnqueueOptions;

/// Parses the fields of op `op` (one of the durable ops above).
pub(super) fn parse(op: &str, fields: &Fields) -> Result<Op, String> {
    match op {
        "enqueue" => {
            let (job, args) = job_and_args(fields, "enqueue")?;
            let options = EnqueueOptions {
                queue: non_empty(fields, "queue")?,
                priority: number(fields, "priority", "an integer")?,
                run_at: string_field(fields, "run_at")?,
                delay_ms: number(fields, "delay_ms", "a whole number of milliseconds")?,
                max_attempts: number::<i32>(fields, "max_attempts", "an integer of at least 1")?,
                unique_key: non_empty(fields, "unique_key")?,
            };
            if options.run_at.is_some() && options.delay_ms.is_some() {
                return Err("give `run_at` or `delay_ms`, not both".to_string());
            }
            if options.max_attempts.is_some_and(|n| n < 1) {
                return Err("field `max_attempts` must be an integer of at least 1".to_string());
            }
            Ok(Op::Enqueue { job, args, options })
        }
        "queues" => Ok(Op::Queues),
        "pause" | "resume" => Ok(Op::Pause {
            queue: non_empty(fields, "queue")?
                .ok_or_else(|| format!("op {op} needs field `queue`, the queue's name"))?,
            paused: op == "pause",
        }),
        "result" => Ok(Op::Result {
            job_id: job_id(fields, "result")?,
            wait_ms: number(fields, "wait_ms", "a whole number of milliseconds")?,
        }),
        _ => Ok(Op::Cancel {
            job_id: job_id(fields, "cancel")?,
        }),
    }
}

fn job_id(fields: &Fields, op: &str) -> Result<i64, String> {
    number(fields, "job_id", "a positive integer")?
        .filter(|id| *id > 0)
        .ok_or_else(|| format!("op {op} needs field `job_id`, a positive integer"))
}

/// An optional number field; `what` says what it must be when it is not.
fn number<T: DeserializeOwned>(
    fields: &Fields,
    name: &str,
    what: &str,
) -> Result<Option<T>, String> {
    match fields.get(name) {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<T>(raw.get())
            .map(Some)
            .map_err(|_| format!("field `{name}` must be {what}")),
    }
}

fn non_empty(fields: &Fields, name: &str) -> Result<Option<String>, String> {
    match string_field(fields, name)? {
        Some(text) if text.is_empty() => Err(format!("field `{name}` must not be empty")),
        other => Ok(other),
    }
}

//! `forkpool enqueue`, `result` and `cancel`: the durable ops of DESIGN §12 from the command
//! line, each on one connection, every answer awaited with a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{parse_args, parse_duration, print_answer, Connection};
use crate::exit::{EXIT_FAILED, EXIT_OK};

/// The longest one `result` request waits: a longer wait is several requests in turn, so
/// each has a read deadline and a vanished service is noticed.
const WAIT_CHUNK: Duration = Duration::from_secs(30);

/// How long an answer may take beyond the wait it asked for: the keeper's statements are
/// cancelled after 10 s (`keeper::STATEMENT_DEADLINE`), so 30 s means the service is stuck.
pub(super) const ANSWER_GRACE: Duration = Duration::from_secs(30);

/// The states a durable job does not leave.
const FINAL_STATES: [&str; 3] = ["completed", "discarded", "cancelled"];

/// `forkpool enqueue`: what to store.
#[derive(clap::Args)]
pub struct EnqueueArgs {
    /// The job's name (see `workers/*.toml`).
    job: String,
    /// The job's arguments as a JSON object, e.g. '{"a": 1, "b": 2}'.
    args: Option<String>,
    /// The queue [default: the job file's `queue`, else "default"].
    #[arg(long)]
    queue: Option<String>,
    /// Lower runs first [default: the job file's `priority`, else 0].
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i32>,
    /// Run no earlier than this RFC 3339 time, e.g. 2030-01-31T12:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    at: Option<String>,
    /// Run no earlier than this long from now ("90s", "5m", "1h"), by the database's clock.
    #[arg(long = "in", value_name = "DURATION", value_parser = parse_duration, conflicts_with = "at")]
    delay: Option<Duration>,
    /// Attempts before the job is discarded [default: the job file's, else 20].
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    max_attempts: Option<i32>,
    /// No second job with this key while one is available or running (its id is returned).
    #[arg(long)]
    unique_key: Option<String>,
    /// Wait until the job ends and print its result: at most SECONDS ("30", "5m"), or
    /// without limit when no value is given.
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration)]
    wait: Option<Option<Duration>>,
}

fn parse_rfc3339(text: &str) -> Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("{e} (write e.g. 2030-01-31T12:00:00Z)"))
}

/// `forkpool enqueue`: exit 0 when stored (with `--wait`: when completed), 1 when refused,
/// discarded, cancelled or not ended within the wait.
pub(crate) fn enqueue(socket: &Path, options: &EnqueueArgs) -> i32 {
    match enqueue_and_wait(socket, options) {
        Ok(code) | Err(code) => code,
    }
}

fn enqueue_and_wait(socket: &Path, options: &EnqueueArgs) -> Result<i32, i32> {
    let args = parse_args("ARGS_JSON", options.args.as_deref())?;
    let mut body = json!({"id": 1, "op": "enqueue", "job": options.job, "args": args});
    let fields = [
        ("queue", options.queue.as_ref().map(|q| json!(q))),
        ("priority", options.priority.map(|p| json!(p))),
        ("run_at", options.at.as_ref().map(|at| json!(at))),
        (
            "delay_ms",
            options.delay.map(|d| json!(d.as_millis() as u64)),
        ),
        ("max_attempts", options.max_attempts.map(|n| json!(n))),
        ("unique_key", options.unique_key.as_ref().map(|k| json!(k))),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            body[name] = value;
        }
    }
    let mut connection = Connection::open(socket)?;
    let answer = connection.ask(&body, Some(ANSWER_GRACE))?;
    let (Some(wait), true) = (options.wait, answer["ok"] == json!(true)) else {
        print_answer(&answer);
        return Ok(if answer["ok"] == json!(true) {
            EXIT_OK
        } else {
            EXIT_FAILED
        });
    };
    let Some(job_id) = answer["result"]["job_id"].as_i64() else {
        print_answer(&answer);
        eprintln!("forkpool: the enqueue answer has no job_id");
        return Ok(EXIT_FAILED);
    };
    // Stdout gets one JSON document, the final answer; the id goes to stderr so a person who
    // stops the wait can still ask `forkpool result ID`.
    eprintln!("forkpool: enqueued job {job_id}: {}", answer["result"]);
    let last = wait_for_end(&mut connection, job_id, wait)?;
    print_answer(&last);
    let state = last["result"]["state"].as_str().unwrap_or_default();
    if last["ok"] == json!(true) && !FINAL_STATES.contains(&state) {
        eprintln!("forkpool: job {job_id} is still {state}: the wait ended first");
    }
    Ok(if state == "completed" {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

/// `forkpool result`: exit 0 when the job exists and is not discarded or cancelled (it may
/// still be waiting or running), 1 otherwise.
pub(crate) fn result(socket: &Path, job_id: i64, wait: Option<Duration>) -> i32 {
    let answer = Connection::open(socket).and_then(|mut connection| match wait {
        Some(wait) => wait_for_end(&mut connection, job_id, Some(wait)),
        None => connection.ask(
            &json!({"id": 1, "op": "result", "job_id": job_id}),
            Some(ANSWER_GRACE),
        ),
    });
    let answer = match answer {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    print_answer(&answer);
    let state = answer["result"]["state"].as_str().unwrap_or_default();
    if answer["ok"] == json!(true) && state != "discarded" && state != "cancelled" {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// `forkpool cancel`: exit 0 when the answer says `cancelled` (now, or asked of the running
/// job), 1 otherwise (already ended, no such job, refused).
pub(crate) fn cancel(socket: &Path, job_id: i64) -> i32 {
    let request = json!({"id": 1, "op": "cancel", "job_id": job_id});
    match Connection::open(socket).and_then(|mut c| c.ask(&request, Some(ANSWER_GRACE))) {
        Ok(answer) => {
            print_answer(&answer);
            if answer["result"]["cancelled"] == json!(true) {
                EXIT_OK
            } else {
                EXIT_FAILED
            }
        }
        Err(code) => code,
    }
}

/// Asks for the job's result until it ends or `wait` has passed (`None`: without limit), in
/// requests of at most [`WAIT_CHUNK`]; returns the last answer (an error answer at once).
pub(super) fn wait_for_end(
    connection: &mut Connection,
    job_id: i64,
    wait: Option<Duration>,
) -> Result<Value, i32> {
    let deadline = wait.map(|wait| Instant::now() + wait);
    loop {
        let chunk = deadline.map_or(WAIT_CHUNK, |deadline| {
            deadline
                .saturating_duration_since(Instant::now())
                .min(WAIT_CHUNK)
        });
        let request = json!({
            "id": 1, "op": "result", "job_id": job_id, "wait_ms": chunk.as_millis() as u64,
        });
        let answer = connection.ask(&request, Some(chunk + ANSWER_GRACE))?;
        let state = answer["result"]["state"].as_str().unwrap_or_default();
        let time_is_up = deadline.is_some_and(|deadline| Instant::now() >= deadline);
        if answer["ok"] != json!(true) || FINAL_STATES.contains(&state) || time_is_up {
            return Ok(answer);
        }
    }
}

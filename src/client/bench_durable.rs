//! `forkpool bench --durable`: what durable jobs (DESIGN §12) cost, through the socket.
//!
//! 1. **Enqueue**: N `enqueue` requests into a fresh queue, pipelined like the `run` bench;
//!    jobs/s from the first request to the last answer.
//! 2. **Burn-down**: `status` every [`STATUS_POLL`] until the queue has nothing waiting or
//!    running and N jobs ended. The figure itself comes from the jobs' own timestamps (the
//!    first `created_at` to the last `finished_at`, the database's clock), since the counts
//!    `status` shows are refreshed by the keeper only every couple of seconds.
//! 3. **Enqueue-to-start** under that load: every job's `result` (pipelined), `attempted_at −
//!    created_at`.
//! 4. `--durable-latency K`: K jobs one at a time, each awaited before the next, so a worker
//!    is idle when each arrives: `attempted_at − created_at`, and the client's round trip
//!    from sending `enqueue` to reading the completed `result`.
//!
//! Every wait is bounded by `--deadline`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset};
use serde_json::{json, Value};

use super::bench::{checked_args, BenchOptions, DEFAULT_JOBS};
use super::durable::wait_for_end;
use super::load::{connect_all, drive_all, nearest_rank, CONNECTION_LOST};
use super::Connection;
use crate::exit::{EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE};

/// How often the burn-down asks `status`: often enough not to add to a run of seconds,
/// rarely enough that the status answers cost the master little.
const STATUS_POLL: Duration = Duration::from_millis(20);

/// How long one answer may take (an enqueue waits for the keeper's batch; its statements
/// are cancelled after 10 s).
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// The figures of a durable run, as JSON (`--json`) and text.
struct Figures {
    report: serde_json::Map<String, Value>,
    text: String,
    failed: bool,
}

/// Runs the durable bench; the exit code (0 only if every job was stored and completed).
pub(super) fn run(socket: &Path, options: &BenchOptions) -> i32 {
    let args = match checked_args(options) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let queue = options.queue.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("bench-{}-{now}", std::process::id())
    });
    let mut figures = Figures {
        report: serde_json::Map::new(),
        text: format!(
            "durable job {} into queue {queue}: {} clients, pipeline {}\n",
            options.job, options.clients, options.pipeline
        ),
        failed: false,
    };
    for (key, value) in [
        ("mode", json!("durable")),
        ("job", json!(options.job)),
        ("queue", json!(queue)),
        ("clients", json!(options.clients)),
        ("pipeline", json!(options.pipeline)),
    ] {
        figures.report.insert(key.to_string(), value);
    }
    let request = json!({"op": "enqueue", "job": options.job, "args": args, "queue": queue});
    let outcome = if options.durable {
        burn_down(socket, options, &request, &mut figures)
    } else {
        Ok(())
    };
    let outcome = outcome.and_then(|()| match options.durable_latency {
        Some(count) if count > 0 => idle_latency(socket, options, &request, count, &mut figures),
        _ => Ok(()),
    });
    if let Err(code) = outcome {
        if code == EXIT_UNREACHABLE {
            return code;
        }
        figures.failed = true;
    }
    figures
        .report
        .insert("failed".into(), json!(figures.failed));
    if options.json {
        println!("{}", Value::Object(figures.report));
    } else {
        print!("{}", figures.text);
    }
    if figures.failed {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// Enqueue N pipelined, wait for the queue to drain, read every result.
fn burn_down(
    socket: &Path,
    options: &BenchOptions,
    request: &Value,
    figures: &mut Figures,
) -> Result<(), i32> {
    let total = options.jobs.unwrap_or(DEFAULT_JOBS);
    let queue = request["queue"].as_str().unwrap_or_default();
    let streams = connect_all(socket, options.clients, Some(ANSWER_DEADLINE))?;
    let mut status = Connection::open(socket)?;
    // `{"id":N` + this: the load driver numbers the requests.
    let tail = format!(",{}\n", &request.to_string()[1..]);
    if options.drain {
        hold_queue(&mut status, queue, "pause")?;
    }
    let started = Instant::now();
    let deadline = started + options.deadline;
    let tallies = drive_all(
        streams,
        &tail,
        options.pipeline,
        Some(total),
        Some(deadline),
    );
    let enqueue_seconds = started.elapsed().as_secs_f64();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut job_ids = Vec::with_capacity(total as usize);
    for tally in tallies {
        job_ids.extend(tally.job_ids);
        for (kind, count) in tally.errors {
            *errors.entry(kind).or_default() += count;
        }
        if let Some(why) = tally.broken {
            figures.text += &format!("broken        {why}\n");
        }
    }
    let stored = job_ids.len() as u64;
    figures.report.insert(
        "enqueue".into(),
        json!({
            "jobs": total, "stored": stored, "seconds": enqueue_seconds,
            "jobs_per_second": stored as f64 / enqueue_seconds, "errors": errors,
        }),
    );
    figures.text += &format!(
        "enqueue       {stored} of {total} stored in {enqueue_seconds:.3} s: {:.0} jobs/s{}\n",
        stored as f64 / enqueue_seconds,
        if errors.is_empty() {
            String::new()
        } else {
            format!(" (refused: {errors:?})")
        }
    );
    if !errors.is_empty() {
        figures.failed = true;
    }
    if options.drain {
        hold_queue(&mut status, queue, "resume")?;
    }
    let drained = wait_until_drained(&mut status, queue, stored, deadline);
    let observed_seconds = started.elapsed().as_secs_f64();
    if let Err(why) = &drained {
        figures.text += &format!("burn-down     {why}\n");
        figures.report.insert("burn_down_error".into(), json!(why));
        // An unreachable service is worth its own exit code; the rest is a failed run.
        return Err(
            match status.ask(&json!({"id": 0, "op": "ping"}), Some(ANSWER_DEADLINE)) {
                Err(code) => code,
                Ok(_) => EXIT_FAILED,
            },
        );
    }
    let results = read_results(socket, &job_ids, options.clients, options.pipeline)?;
    let jobs = Timestamps::of(&results);
    let burn_down_seconds = jobs.span_seconds(options.drain);
    let from = if options.drain {
        "first attempted_at"
    } else {
        "first created_at"
    };
    let latency = jobs.start_latency_ms();
    figures.report.insert(
        "burn_down".into(),
        json!({
            "jobs": stored, "seconds": burn_down_seconds,
            "jobs_per_second": stored as f64 / burn_down_seconds,
            "observed_seconds": observed_seconds, "from": from,
        }),
    );
    figures
        .report
        .insert("states".into(), json!(jobs.states.clone()));
    figures
        .report
        .insert("start_latency_ms".into(), latency.clone());
    figures.text += &format!(
        "burn-down     {burn_down_seconds:.3} s: {:.0} jobs/s ({from} to last finished_at; \
         status saw it after {observed_seconds:.1} s)\n\
         states        {:?}\n\
         start         p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         (attempted_at − created_at)\n",
        stored as f64 / burn_down_seconds,
        jobs.states,
        latency["p50"].as_f64().unwrap_or_default(),
        latency["p90"].as_f64().unwrap_or_default(),
        latency["p99"].as_f64().unwrap_or_default(),
        latency["max"].as_f64().unwrap_or_default(),
    );
    if jobs.states.get("completed").copied().unwrap_or(0) != stored {
        figures.failed = true;
    }
    Ok(())
}

/// Pauses or resumes `queue` (`op`), for `--drain`; `Err` with the exit code when refused.
fn hold_queue(status: &mut Connection, queue: &str, op: &str) -> Result<(), i32> {
    let answer = status.ask(
        &json!({"id": 0, "op": op, "queue": queue}),
        Some(ANSWER_DEADLINE),
    )?;
    if answer["ok"] == true {
        Ok(())
    } else {
        eprintln!("forkpool bench: {op} of queue {queue} refused: {answer}");
        Err(EXIT_FAILED)
    }
}

/// Polls `status` until `queue` has nothing available, scheduled or running and `stored`
/// jobs ended; `Err` says what was left at the deadline, or what went wrong.
fn wait_until_drained(
    status: &mut Connection,
    queue: &str,
    stored: u64,
    deadline: Instant,
) -> Result<(), String> {
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let answer = status
            .ask(&json!({"id": 1, "op": "status"}), Some(ANSWER_DEADLINE))
            .map_err(|_| "status could not be asked".to_string())?;
        let durable = &answer["result"]["durable"];
        if durable.is_null() {
            return Err("the service runs without durable jobs (queue.database is \"\")".into());
        }
        let empty = Vec::new();
        let queues = durable["queues"].as_array().unwrap_or(&empty);
        if let Some(counts) = queues.iter().find(|q| q["queue"] == json!(queue)) {
            let count = |state: &str| counts[state].as_u64().unwrap_or(0);
            let waiting = count("available") + count("scheduled") + count("running");
            let ended = count("completed") + count("discarded") + count("cancelled");
            if waiting == 0 && ended >= stored {
                return Ok(());
            }
            last = counts.clone();
        }
        std::thread::sleep(STATUS_POLL);
    }
    Err(format!(
        "not drained by the deadline (--deadline); the queue's last counts: {last}"
    ))
}

/// The `result` of each job in `ids`, over `clients` connections keeping `depth` in flight.
fn read_results(
    socket: &Path,
    ids: &[i64],
    clients: usize,
    depth: usize,
) -> Result<Vec<Value>, i32> {
    let streams = connect_all(socket, clients, Some(ANSWER_DEADLINE))?;
    let chunk = ids.len().div_ceil(clients).max(1);
    let readers: Vec<_> = streams
        .into_iter()
        .zip(ids.chunks(chunk).map(<[i64]>::to_vec))
        .map(|(stream, ids)| std::thread::spawn(move || read_some(stream, &ids, depth)))
        .collect();
    let mut results = Vec::with_capacity(ids.len());
    for reader in readers {
        match reader.join() {
            Ok(Ok(some)) => results.extend(some),
            Ok(Err(why)) => {
                eprintln!("reading the jobs' results: {why}");
                return Err(EXIT_FAILED);
            }
            Err(_) => return Err(EXIT_FAILED),
        }
    }
    Ok(results)
}

/// One connection's share of [`read_results`]: the `result` objects, in any order.
fn read_some(stream: UnixStream, ids: &[i64], depth: usize) -> Result<Vec<Value>, String> {
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let (mut sent, mut results, mut line) = (0, Vec::with_capacity(ids.len()), String::new());
    while results.len() < ids.len() {
        let mut batch = String::new();
        while sent < ids.len() && sent - results.len() < depth {
            batch += &format!(
                "{{\"id\":{sent},\"op\":\"result\",\"job_id\":{}}}\n",
                ids[sent]
            );
            sent += 1;
        }
        writer
            .write_all(batch.as_bytes())
            .map_err(|e| format!("sending: {e}"))?;
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(format!("{CONNECTION_LOST}: the service closed it")),
            Ok(_) => {}
            Err(e) => return Err(format!("reading: {e}")),
        }
        let mut answer: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        if answer["ok"] != json!(true) {
            return Err(format!("a result was refused: {line}"));
        }
        results.push(answer["result"].take());
    }
    Ok(results)
}

/// K jobs one at a time: each enqueued when the one before has completed.
fn idle_latency(
    socket: &Path,
    options: &BenchOptions,
    request: &Value,
    count: u64,
    figures: &mut Figures,
) -> Result<(), i32> {
    let mut connection = Connection::open(socket)?;
    let deadline = Instant::now() + options.deadline;
    let mut request = request.clone();
    request["id"] = json!(1);
    let (mut results, mut round_trips_us) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let sent = Instant::now();
        let answer = connection.ask(&request, Some(ANSWER_DEADLINE))?;
        let Some(job_id) = answer["result"]["job_id"].as_i64() else {
            figures.text += &format!("idle start    enqueue refused: {answer}\n");
            return Err(EXIT_FAILED);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let last = wait_for_end(&mut connection, job_id, Some(left))?;
        round_trips_us.push(sent.elapsed().as_micros() as u64);
        if last["result"]["state"] != json!("completed") {
            figures.text += &format!("idle start    job {job_id} did not complete: {last}\n");
            return Err(EXIT_FAILED);
        }
        results.push(last["result"].clone());
    }
    round_trips_us.sort_unstable();
    let latency = Timestamps::of(&results).start_latency_ms();
    let round_trip_ms = |f| nearest_rank(&round_trips_us, f) as f64 / 1000.0;
    figures.report.insert(
        "idle".into(),
        json!({
            "jobs": count, "start_latency_ms": latency,
            "round_trip_ms": {"p50": round_trip_ms(0.5), "p99": round_trip_ms(0.99)},
        }),
    );
    figures.text += &format!(
        "idle start    p50 {:.2} ms, p99 {:.2} ms over {count} jobs one at a time \
         (round trip enqueue → completed result: p50 {:.2} ms, p99 {:.2} ms)\n",
        latency["p50"].as_f64().unwrap_or_default(),
        latency["p99"].as_f64().unwrap_or_default(),
        round_trip_ms(0.5),
        round_trip_ms(0.99),
    );
    Ok(())
}

/// What the jobs' own timestamps say (the database's clock).
struct Timestamps {
    states: BTreeMap<String, u64>,
    /// `attempted_at − created_at` of each started job, µs, sorted.
    start_us: Vec<u64>,
    first_created: Option<DateTime<FixedOffset>>,
    first_attempted: Option<DateTime<FixedOffset>>,
    last_finished: Option<DateTime<FixedOffset>>,
}

impl Timestamps {
    fn of(results: &[Value]) -> Timestamps {
        let time = |result: &Value, key: &str| {
            result[key]
                .as_str()
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        };
        let mut jobs = Timestamps {
            states: BTreeMap::new(),
            start_us: Vec::with_capacity(results.len()),
            first_created: None,
            first_attempted: None,
            last_finished: None,
        };
        for result in results {
            let state = result["state"].as_str().unwrap_or("?").to_string();
            *jobs.states.entry(state).or_default() += 1;
            let created = time(result, "created_at");
            if let (Some(created), Some(attempted)) = (created, time(result, "attempted_at")) {
                let micros = (attempted - created).num_microseconds().unwrap_or(0);
                jobs.start_us.push(micros.max(0) as u64);
            }
            if let Some(created) = created {
                jobs.first_created = Some(jobs.first_created.map_or(created, |t| t.min(created)));
            }
            if let Some(attempted) = time(result, "attempted_at") {
                jobs.first_attempted =
                    Some(jobs.first_attempted.map_or(attempted, |t| t.min(attempted)));
            }
            jobs.last_finished = jobs.last_finished.max(time(result, "finished_at"));
        }
        jobs.start_us.sort_unstable();
        jobs
    }

    /// The first `created_at` (with `drain`, `attempted_at`) to the last `finished_at`, in
    /// seconds.
    fn span_seconds(&self, drain: bool) -> f64 {
        let first = if drain {
            self.first_attempted
        } else {
            self.first_created
        };
        match (first, self.last_finished) {
            (Some(first), Some(last)) => {
                (last - first).num_microseconds().unwrap_or(0) as f64 / 1e6
            }
            _ => 0.0,
        }
    }

    fn start_latency_ms(&self) -> Value {
        let ms = |fraction| nearest_rank(&self.start_us, fraction) as f64 / 1000.0;
        json!({"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": ms(1.0)})
    }
}

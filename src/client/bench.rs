//! `forkpool bench`: a load generator that measures jobs/s and latency through the socket.
//!
//! It is a client like any other: `clients` connections, one thread each (blocking sockets;
//! the load generator is not the master and may use threads), each keeping up to `pipeline`
//! requests in flight. Every answer is counted: a failed job is an error of its kind, a
//! connection the service closed with requests in flight is `connection_lost` for each of
//! them. Nothing is retried or hidden, and the exit code is 0 only when every job succeeded.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::exit::{EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE};

/// Jobs run when neither `--jobs` nor `--duration` is given: a few seconds on a laptop.
const DEFAULT_JOBS: u64 = 10_000;

/// How often the progress line on a terminal is rewritten.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The error kind counted for each request in flight on a connection that broke (closed by
/// the service, a read or write error, an answer that is not ours).
const CONNECTION_LOST: &str = "connection_lost";

/// What `forkpool bench` runs.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchOptions {
    /// The job to run (see `workers/*.toml`).
    #[arg(long)]
    pub job: String,
    /// The job's arguments as a JSON object, the same for every run [default: {}].
    #[arg(long)]
    pub args: Option<String>,
    /// Client connections, one thread each.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Jobs in total [default: 10000, or unlimited with --duration].
    #[arg(long)]
    pub jobs: Option<u64>,
    /// Requests each connection keeps in flight (1: wait for each answer before the next).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Stop sending after this long ("10s", "500ms"; a bare number is seconds).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds > 0.0 {
            return Ok(Duration::from_secs_f64(seconds));
        }
        return Err("the duration must be positive".to_string());
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. \"10s\" or \"500ms\")"))
}

/// When the clients stop taking new jobs.
struct Budget {
    /// Jobs handed out so far (may overshoot `total` by one per client: those are not sent).
    issued: AtomicU64,
    total: Option<u64>,
    deadline: Option<Instant>,
}

impl Budget {
    /// Claims one job; false once the count or the time is used up.
    fn take(&self) -> bool {
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return false;
        }
        match self.total {
            Some(total) => self.issued.fetch_add(1, Ordering::Relaxed) < total,
            None => true,
        }
    }
}

/// What one client connection measured.
#[derive(Default)]
struct Tally {
    /// Nanoseconds from sending a request to reading its answer, failed ones included.
    latencies_ns: Vec<u64>,
    errors: BTreeMap<String, u64>,
    /// Why the connection broke, if it did (the first such reason only).
    broken: Option<String>,
}

impl Tally {
    fn error(&mut self, kind: &str, count: u64) {
        *self.errors.entry(kind.to_string()).or_default() += count;
    }
}

/// The part of an answer line the bench reads; `result` is skipped unparsed.
#[derive(Deserialize)]
struct Answer {
    id: Option<u64>,
    ok: bool,
    error: Option<AnswerError>,
}

#[derive(Deserialize)]
struct AnswerError {
    kind: String,
}

/// Runs the bench against the service at `socket`; returns the exit code.
pub fn run(socket: &Path, options: &BenchOptions) -> i32 {
    let args: Value = match options
        .args
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
    {
        Ok(None) => json!({}),
        Ok(Some(args @ Value::Object(_))) => args,
        Ok(Some(_)) => {
            eprintln!("--args must be a JSON object, e.g. '{{\"a\": 1}}'");
            return EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("--args is not JSON: {e}");
            return EXIT_USAGE;
        }
    };
    if options.clients == 0 || options.pipeline == 0 {
        eprintln!("--clients and --pipeline must be at least 1");
        return EXIT_USAGE;
    }
    // Every connection is opened before the clock starts, so an unreachable service is
    // reported once, plainly, and connection set-up is not part of the figures.
    let mut streams = Vec::with_capacity(options.clients);
    for _ in 0..options.clients {
        match UnixStream::connect(socket) {
            Ok(stream) => streams.push(stream),
            Err(e) => {
                eprintln!(
                    "cannot reach forkpool at {}: {e} — is the service running?",
                    socket.display()
                );
                return EXIT_UNREACHABLE;
            }
        }
    }
    let request_tail = format!(
        ",\"op\":\"run\",\"job\":{},\"args\":{args}}}\n",
        Value::String(options.job.clone())
    );
    let started = Instant::now();
    let budget = Arc::new(Budget {
        issued: AtomicU64::new(0),
        total: options
            .jobs
            .or(options.duration.is_none().then_some(DEFAULT_JOBS)),
        deadline: options.duration.map(|duration| started + duration),
    });
    let answered = Arc::new(AtomicU64::new(0));
    let (finished, tallies) = mpsc::channel();
    for stream in streams {
        let (budget, answered, finished) =
            (Arc::clone(&budget), Arc::clone(&answered), finished.clone());
        let (tail, depth) = (request_tail.clone(), options.pipeline);
        std::thread::spawn(move || {
            let tally = drive_connection(stream, &tail, depth, &budget, &answered);
            let _ = finished.send(tally);
        });
    }
    drop(finished);
    let tallies = collect(tallies, options.clients, &answered, started);
    let elapsed = started.elapsed();
    let report = Report::from_tallies(tallies, elapsed);
    if options.json {
        println!("{}", report.to_json(options));
    } else {
        print!("{}", report.to_text(options));
    }
    if report.failed() == 0 {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// Waits for every client's tally; on a terminal, rewrites a progress line meanwhile.
fn collect(
    tallies: mpsc::Receiver<Tally>,
    clients: usize,
    answered: &AtomicU64,
    started: Instant,
) -> Vec<Tally> {
    let progress = std::io::stderr().is_terminal();
    let mut done = Vec::with_capacity(clients);
    loop {
        match tallies.recv_timeout(PROGRESS_EVERY) {
            Ok(tally) => done.push(tally),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if progress {
            let jobs = answered.load(Ordering::Relaxed);
            let seconds = started.elapsed().as_secs_f64();
            eprint!(
                "\r{jobs} jobs in {seconds:.0} s ({:.0} jobs/s)   ",
                jobs as f64 / seconds
            );
        }
    }
    if progress {
        eprintln!();
    }
    done
}

/// One client: keeps up to `depth` requests in flight until the budget is spent and every
/// request sent has its answer (or the connection breaks).
fn drive_connection(
    stream: UnixStream,
    request_tail: &str,
    depth: usize,
    budget: &Budget,
    answered: &AtomicU64,
) -> Tally {
    let mut tally = Tally {
        latencies_ns: Vec::with_capacity(4096),
        ..Tally::default()
    };
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(e) => {
            tally.broken = Some(format!("cannot duplicate the socket: {e}"));
            return tally;
        }
    };
    let mut reader = BufReader::new(stream);
    let mut in_flight: HashMap<u64, Instant> = HashMap::with_capacity(depth);
    let mut next_id: u64 = 0;
    let mut batch = Vec::with_capacity(depth * (request_tail.len() + 24));
    let mut line = String::new();
    loop {
        // Top up to `depth` in one write: a pipelined client pays one syscall per batch.
        batch.clear();
        let now = Instant::now();
        while in_flight.len() < depth && budget.take() {
            next_id += 1;
            batch.extend_from_slice(b"{\"id\":");
            batch.extend_from_slice(next_id.to_string().as_bytes());
            batch.extend_from_slice(request_tail.as_bytes());
            in_flight.insert(next_id, now);
        }
        if in_flight.is_empty() {
            return tally;
        }
        if !batch.is_empty() {
            if let Err(e) = writer.write_all(&batch) {
                return broken(tally, &in_flight, format!("sending requests: {e}"));
            }
        }
        // Read one answer (blocking), then every further answer already buffered.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => {
                    let why = "the service closed the connection".to_string();
                    return broken(tally, &in_flight, why);
                }
                Ok(_) => {}
                Err(e) => return broken(tally, &in_flight, format!("reading answers: {e}")),
            }
            let answer = match serde_json::from_str::<Answer>(&line) {
                Ok(answer) => answer,
                Err(e) => {
                    let why = format!("an answer is not what the protocol says ({e}): {line}");
                    return broken(tally, &in_flight, why);
                }
            };
            let Some(sent) = answer.id.and_then(|id| in_flight.remove(&id)) else {
                let why = format!("an answer to no request in flight: {line}");
                return broken(tally, &in_flight, why);
            };
            tally.latencies_ns.push(sent.elapsed().as_nanos() as u64);
            answered.fetch_add(1, Ordering::Relaxed);
            if !answer.ok {
                let kind = answer
                    .error
                    .map_or_else(|| "unknown".to_string(), |e| e.kind);
                tally.error(&kind, 1);
            }
            if !reader.buffer().contains(&b'\n') {
                break;
            }
        }
    }
}

/// Counts every request still in flight as lost and notes why.
fn broken(mut tally: Tally, in_flight: &HashMap<u64, Instant>, why: String) -> Tally {
    tally.error(CONNECTION_LOST, in_flight.len() as u64);
    tally.broken = Some(why);
    tally
}

/// The figures of a whole run.
struct Report {
    /// Requests answered or lost.
    jobs: u64,
    seconds: f64,
    /// Sorted, in nanoseconds.
    latencies_ns: Vec<u64>,
    errors: BTreeMap<String, u64>,
    broken: Vec<String>,
}

impl Report {
    fn from_tallies(tallies: Vec<Tally>, elapsed: Duration) -> Report {
        let mut report = Report {
            jobs: 0,
            seconds: elapsed.as_secs_f64(),
            latencies_ns: Vec::new(),
            errors: BTreeMap::new(),
            broken: Vec::new(),
        };
        for tally in tallies {
            report.latencies_ns.extend(tally.latencies_ns);
            for (kind, count) in tally.errors {
                *report.errors.entry(kind).or_default() += count;
            }
            report.broken.extend(tally.broken);
        }
        report.latencies_ns.sort_unstable();
        report.jobs = report.latencies_ns.len() as u64
            + report.errors.get(CONNECTION_LOST).copied().unwrap_or(0);
        report
    }

    fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    fn jobs_per_second(&self) -> f64 {
        self.jobs as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// The latency below which `fraction` of the answers came, in microseconds (nearest rank).
    fn percentile_us(&self, fraction: f64) -> f64 {
        if self.latencies_ns.is_empty() {
            return 0.0;
        }
        let rank = (fraction * self.latencies_ns.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies_ns.len()) - 1;
        self.latencies_ns[index] as f64 / 1000.0
    }

    fn to_json(&self, options: &BenchOptions) -> String {
        json!({
            "job": options.job,
            "clients": options.clients,
            "pipeline": options.pipeline,
            "jobs": self.jobs,
            "failed": self.failed(),
            "seconds": self.seconds,
            "jobs_per_second": self.jobs_per_second(),
            "latency_us": {
                "p50": self.percentile_us(0.50),
                "p90": self.percentile_us(0.90),
                "p99": self.percentile_us(0.99),
                "max": self.percentile_us(1.0),
            },
            "errors": self.errors,
            "connections_broken": self.broken,
        })
        .to_string()
    }

    fn to_text(&self, options: &BenchOptions) -> String {
        let mut text = format!(
            "job {}: {} clients, pipeline {}\n\
             jobs      {} ({} failed)\n\
             seconds   {:.3}\n\
             jobs/s    {:.0}\n\
             latency   p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs\n",
            options.job,
            options.clients,
            options.pipeline,
            self.jobs,
            self.failed(),
            self.seconds,
            self.jobs_per_second(),
            self.percentile_us(0.50),
            self.percentile_us(0.90),
            self.percentile_us(0.99),
            self.percentile_us(1.0),
        );
        if self.errors.is_empty() {
            text += "errors    none\n";
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            text += &format!("errors    {}\n", kinds.join(", "));
        }
        for why in &self.broken {
            text += &format!("broken    {why}\n");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(latencies_us: &[u64]) -> Report {
        let tally = Tally {
            latencies_ns: latencies_us.iter().map(|us| us * 1000).collect(),
            ..Tally::default()
        };
        Report::from_tallies(vec![tally], Duration::from_secs(1))
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let report = report(&(1..=100).rev().collect::<Vec<_>>());
        assert_eq!(report.percentile_us(0.50), 50.0);
        assert_eq!(report.percentile_us(0.99), 99.0);
        assert_eq!(report.percentile_us(1.0), 100.0);
        assert_eq!(report.jobs, 100);
    }

    #[test]
    fn lost_requests_count_as_jobs_and_failures() {
        let mut tally = Tally::default();
        tally.latencies_ns.push(1000);
        tally.error("db_error", 1);
        tally.error(CONNECTION_LOST, 3);
        let report = Report::from_tallies(vec![tally], Duration::from_secs(1));
        assert_eq!((report.jobs, report.failed()), (4, 4));
    }

    #[test]
    fn durations_take_seconds_or_humantime() {
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("0").is_err());
    }
}

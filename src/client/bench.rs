//! `forkpool bench`: a load generator that measures jobs/s and latency through the socket.
//!
//! It is a client like any other ([`super::load`]: many connections, each pipelining).
//! Every answer is counted: a failed job is an error of its kind, a connection the service
//! closed with requests in flight is `connection_lost` for each of them. Nothing is retried
//! or hidden, and the exit code is 0 only when every job succeeded. `--durable` measures
//! durable jobs instead ([`super::bench_durable`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::load::{connect_all, drive_all, nearest_rank, Tally, CONNECTION_LOST};
use super::parse_duration;
use crate::exit::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};

/// Jobs run when neither `--jobs` nor `--duration` is given: a few seconds on a laptop.
pub(super) const DEFAULT_JOBS: u64 = 10_000;

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
    /// Durable jobs (DESIGN §12): enqueue the jobs into a fresh queue, then report the
    /// enqueue rate, the burn-down rate (first enqueue to last completion) and the
    /// enqueue-to-start latency.
    #[arg(long, conflicts_with = "duration")]
    pub durable: bool,
    /// With --durable: pause the queue while enqueueing, then resume it, so the burn-down is
    /// the drain of a stored backlog alone (first attempted_at to last finished_at), not
    /// bounded by the enqueue's rate.
    #[arg(long, requires = "durable")]
    pub drain: bool,
    /// The queue of the durable jobs [default: bench-<pid>-<unix time>, a fresh one].
    #[arg(long)]
    pub queue: Option<String>,
    /// Also enqueue K durable jobs one at a time, each awaited before the next, and report
    /// their enqueue-to-start latency (with idle workers; alone: only this).
    #[arg(long, value_name = "K", conflicts_with = "duration")]
    pub durable_latency: Option<u64>,
    /// How long the durable bench waits for its jobs to end before it gives up.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub deadline: Duration,
}

/// Runs the bench against the service at `socket`; returns the exit code.
pub fn run(socket: &Path, options: &BenchOptions) -> i32 {
    if options.durable || options.durable_latency.is_some() {
        return super::bench_durable::run(socket, options);
    }
    let args = match checked_args(options) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let streams = match connect_all(socket, options.clients, None) {
        Ok(streams) => streams,
        Err(code) => return code,
    };
    let request_tail = format!(
        ",\"op\":\"run\",\"job\":{},\"args\":{args}}}\n",
        Value::String(options.job.clone())
    );
    let started = Instant::now();
    let total = options
        .jobs
        .or(options.duration.is_none().then_some(DEFAULT_JOBS));
    let deadline = options.duration.map(|duration| started + duration);
    let tallies = drive_all(streams, &request_tail, options.pipeline, total, deadline);
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

/// `--args` as a JSON object, and the client counts checked.
pub(super) fn checked_args(options: &BenchOptions) -> Result<Value, i32> {
    let args = super::parse_args("--args", options.args.as_deref())?;
    if options.clients == 0 || options.pipeline == 0 {
        eprintln!("--clients and --pipeline must be at least 1");
        return Err(EXIT_USAGE);
    }
    Ok(args)
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
        nearest_rank(&self.latencies_ns, fraction) as f64 / 1000.0
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

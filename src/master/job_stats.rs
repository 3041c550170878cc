//! Per-job figures for the scrape endpoint: answers by outcome, time on a worker and time
//! in the queue, as counters and fixed-bucket histograms.
//!
//! Recording is on the answer's path, so it allocates nothing: each catalog job has an
//! entry made when the master starts (one more only when a reload adds a job), found by
//! name, whose counters are plain arrays indexed by outcome and bucket.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::jobs::Job;
use super::Master;
use crate::metrics::exposition::Family;
use crate::protocol::ErrorKind;

/// Bucket bounds in seconds: Prometheus' default buckets (5 ms to 10 s) and three more up
/// to five minutes, as jobs run for reports as well as for lookups. The same for both
/// histograms, so run time and queue wait compare bucket by bucket.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// `ok`, then each error kind in [`ErrorKind::ALL`]'s order.
const OUTCOMES: usize = 1 + ErrorKind::ALL.len();

/// Observations in fixed buckets, not cumulative (the exposition adds them up).
#[derive(Default)]
struct Histogram {
    /// `counts[i]`: at or below `BUCKETS[i]` and above the bound before; the last: `+Inf`.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum += seconds;
    }
}

/// Which of an entry's histograms a family shows.
type HistogramOf = fn(&Entry) -> &Histogram;

/// One job's figures.
struct Entry {
    name: String,
    answers: [u64; OUTCOMES],
    /// Time on a worker (the last run, for a job retried after its worker died).
    duration: Histogram,
    /// Accepted to started on a worker.
    queue_wait: Histogram,
}

#[derive(Default)]
pub struct JobStats {
    by_name: HashMap<String, usize>,
    entries: Vec<Entry>,
}

impl JobStats {
    /// Entries for every job named, made now so that recording never allocates.
    pub fn for_jobs<'a>(names: impl Iterator<Item = &'a str>) -> JobStats {
        let mut stats = JobStats::default();
        names.for_each(|name| {
            stats.entry(name);
        });
        stats
    }

    /// The entry of `name`, made on first sight (a job a reload added).
    fn entry(&mut self, name: &str) -> &mut Entry {
        let index = match self.by_name.get(name) {
            Some(index) => *index,
            None => {
                self.by_name.insert(name.to_string(), self.entries.len());
                self.entries.push(Entry {
                    name: name.to_string(),
                    answers: [0; OUTCOMES],
                    duration: Histogram::default(),
                    queue_wait: Histogram::default(),
                });
                self.entries.len() - 1
            }
        };
        &mut self.entries[index]
    }

    /// Counts one answer of job `name`; `ran` is (queue wait, time on the worker) when a
    /// worker started it.
    fn record(&mut self, name: &str, outcome: usize, ran: Option<(Duration, Duration)>) {
        let entry = self.entry(name);
        entry.answers[outcome] += 1;
        if let Some((wait, duration)) = ran {
            entry.queue_wait.observe(wait);
            entry.duration.observe(duration);
        }
    }

    /// The per-job series, every catalog job included (at zero until it runs) and those a
    /// reload removed kept, so no counter goes back.
    pub fn render<'a>(&mut self, out: &mut String, catalog: impl Iterator<Item = &'a str>) {
        catalog.for_each(|name| {
            self.entry(name);
        });
        let mut family = Family::new(
            out,
            "forkpool_jobs_total",
            "counter",
            "Jobs answered since start, by job and outcome (ok or the error kind; kinds \
             not seen yet are left out).",
        );
        for entry in &self.entries {
            for (outcome, count) in entry.answers.iter().enumerate() {
                if outcome == 0 || *count > 0 {
                    let labels = [
                        ("job", entry.name.as_str()),
                        ("outcome", outcome_name(outcome)),
                    ];
                    family.sample(&labels, *count as f64);
                }
            }
        }
        let histograms: [(&str, &str, HistogramOf); 2] = [
            (
                "forkpool_job_duration_seconds",
                "Time jobs ran on a worker, by job.",
                |entry| &entry.duration,
            ),
            (
                "forkpool_job_queue_wait_seconds",
                "Time jobs waited in the queue before a worker started them, by job.",
                |entry| &entry.queue_wait,
            ),
        ];
        for (name, help, histogram_of) in histograms {
            let mut family = Family::new(out, name, "histogram", help);
            for entry in &self.entries {
                let histogram = histogram_of(entry);
                family.histogram(
                    &[("job", &entry.name)],
                    &BUCKETS,
                    &histogram.counts,
                    histogram.sum,
                );
            }
        }
    }
}

/// The `outcome` label of an index into `Entry::answers`.
fn outcome_name(outcome: usize) -> &'static str {
    match outcome.checked_sub(1) {
        None => "ok",
        Some(kind) => ErrorKind::ALL[kind].as_str(),
    }
}

/// The outcome index of an answer: `ok`, or the `kind` of its error body (`internal` if a
/// body somehow has none). Reads the body in place, borrowing the kind: no allocation.
fn outcome_of(ok: bool, body: &str) -> usize {
    #[derive(Deserialize)]
    struct Kind<'a> {
        kind: &'a str,
    }
    if ok {
        return 0;
    }
    let kind = serde_json::from_str::<Kind>(body).map_or("internal", |k| k.kind);
    let position = |name: &str| ErrorKind::ALL.iter().position(|k| k.as_str() == name);
    1 + position(kind)
        .or_else(|| position(ErrorKind::Internal.as_str()))
        .unwrap_or_default()
}

impl Master {
    /// What the master notes of a job it answers: its counters, its access line when
    /// `workers.log_jobs` is on, and that it is no longer a slow job to warn about.
    pub(super) fn record_answer(&mut self, job: &Job, ok: bool, body: &str) {
        let now = Instant::now();
        let outcome = outcome_of(ok, body);
        let ran = job
            .running
            .as_ref()
            .map(|run| (run.started - job.accepted, now - run.started));
        self.job_stats.record(&job.spec.name, outcome, ran);
        self.slow_jobs.forget(job.id);
        if self.config.workers.log_jobs {
            let uid = self
                .clients
                .get_mut(job.client)
                .and_then(|client| client.peer.map(|peer| peer.uid));
            super::job_log::access_line(job, outcome_name(outcome), now, uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answer_counts_under_its_kind_and_an_unknown_one_as_internal() {
        assert_eq!(outcome_name(outcome_of(true, "{\"rows\":[]}")), "ok");
        let db_error = r#"{"kind":"db_error","message":"x","sqlstate":"42P01"}"#;
        assert_eq!(outcome_name(outcome_of(false, db_error)), "db_error");
        let late_kind = r#"{"message":"x","kind":"timeout"}"#;
        assert_eq!(outcome_name(outcome_of(false, late_kind)), "timeout");
        assert_eq!(
            outcome_name(outcome_of(false, r#"{"kind":"odd"}"#)),
            "internal"
        );
        assert_eq!(outcome_name(outcome_of(false, "not json")), "internal");
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut histogram = Histogram::default();
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_millis(6));
        histogram.observe(Duration::from_secs(1000));
        assert_eq!(histogram.counts[0], 1);
        assert_eq!(histogram.counts[1], 1);
        assert_eq!(histogram.counts[BUCKETS.len()], 1);
        assert!((histogram.sum - 1000.011).abs() < 1e-9);
    }

    #[test]
    fn every_catalog_job_has_series_and_a_job_a_reload_removed_keeps_them() {
        let mut stats = JobStats::for_jobs(["a", "gone"].into_iter());
        stats.record(
            "a",
            outcome_of(true, ""),
            Some((Duration::ZERO, Duration::from_millis(20))),
        );
        stats.record("a", outcome_of(false, r#"{"kind":"timeout"}"#), None);
        stats.record("gone", 0, None);
        let mut out = String::new();
        stats.render(&mut out, ["a", "b"].into_iter());
        for expected in [
            "forkpool_jobs_total{job=\"a\",outcome=\"ok\"} 1\n",
            "forkpool_jobs_total{job=\"a\",outcome=\"timeout\"} 1\n",
            "forkpool_jobs_total{job=\"b\",outcome=\"ok\"} 0\n",
            "forkpool_jobs_total{job=\"gone\",outcome=\"ok\"} 1\n",
            "forkpool_job_duration_seconds_bucket{job=\"a\",le=\"0.025\"} 1\n",
            "forkpool_job_duration_seconds_count{job=\"a\"} 1\n",
            "forkpool_job_queue_wait_seconds_count{job=\"b\"} 0\n",
        ] {
            assert!(out.contains(expected), "{expected:?} missing:\n{out}");
        }
        assert!(!out.contains("job=\"b\",outcome=\"timeout\""), "{out}");
    }
}

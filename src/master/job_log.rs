//! What the master logs about jobs beyond errors: an access line per answered job
//! (`workers.log_jobs`) and a warning for a job running past `workers.slow_job`, once per
//! job, like PHP-FPM's `request_slowlog_timeout`. Never a job's arguments: they may hold
//! what the journal must not.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::jobs::{Job, Jobs};
use super::workers::WorkerTable;
use super::Master;

/// The log target of access lines, so a filter (`RUST_LOG=forkpool::access=off`) or a log
/// shipper can pick them out.
pub const ACCESS_TARGET: &str = "forkpool::access";

/// One answered job, as `key=value` pairs a person and a parser both read. `uid`: the
/// client's, when the kernel told it.
pub fn access_line(job: &Job, outcome: &str, now: Instant, uid: Option<u32>) {
    let elapsed = now - job.accepted;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (worker, wait, run) = match &job.running {
        Some(run) => (
            run.slot.to_string(),
            ms(run.started - job.accepted),
            ms(now - run.started),
        ),
        None => ("-".to_string(), ms(elapsed), 0.0),
    };
    let uid = uid.map_or("-".to_string(), |uid| uid.to_string());
    info!(
        target: ACCESS_TARGET,
        "job={} id={} outcome={outcome} elapsed_ms={:.1} wait_ms={wait:.1} run_ms={run:.1} \
         worker={worker} uid={uid}",
        job.spec.name,
        job.id,
        ms(elapsed),
    );
}

/// The running jobs already warned about as slow, so each is warned about once.
#[derive(Default)]
pub struct SlowJobs {
    warned: HashSet<u64>,
}

impl SlowJobs {
    /// Forgets an answered job.
    pub fn forget(&mut self, job_id: u64) {
        self.warned.remove(&job_id);
    }

    /// When the next running job not yet warned about turns slow.
    pub fn next_deadline(
        &self,
        workers: &WorkerTable,
        jobs: &Jobs,
        threshold: Option<Duration>,
    ) -> Option<Instant> {
        let threshold = threshold?;
        running_jobs(workers, jobs)
            .filter(|(id, _, _)| !self.warned.contains(id))
            .map(|(_, _, started)| started + threshold)
            .min()
    }
}

/// (job id, slot, started) of every job a worker runs now: what is looked at is the
/// workers' few slots, never the whole queue.
fn running_jobs<'a>(
    workers: &'a WorkerTable,
    jobs: &'a Jobs,
) -> impl Iterator<Item = (u64, usize, Instant)> + 'a {
    workers.iter().flat_map(move |worker| {
        worker.running.iter().filter_map(move |id| {
            let run = jobs.get(*id)?.running.as_ref()?;
            Some((*id, run.slot, run.started))
        })
    })
}

impl Master {
    /// Warns about each job that has run past `workers.slow_job`, once, naming the job, its
    /// worker and how long it has run.
    pub(super) fn warn_slow_jobs(&mut self) {
        let Some(threshold) = self.config.workers.slow_job else {
            return;
        };
        let now = Instant::now();
        for (id, slot, started) in running_jobs(&self.workers, &self.jobs) {
            if now - started < threshold || !self.slow_jobs.warned.insert(id) {
                continue;
            }
            let (Some(job), Some(worker)) = (self.jobs.get(id), self.workers.get(slot)) else {
                continue;
            };
            warn!(
                "slow job: {} (id {id}) has run for {} on worker {slot} (pid {}), past \
                 workers.slow_job = {}",
                job.spec.name,
                humantime::format_duration(round_to_millis(now - started)),
                worker.pid,
                humantime::format_duration(threshold),
            );
        }
    }
}

/// Milliseconds are enough in a log line (humantime would print nanoseconds).
fn round_to_millis(elapsed: Duration) -> Duration {
    Duration::from_millis(elapsed.as_millis() as u64)
}

//! What the master tells about itself: the `status` and `jobs` answers, built from its own
//! tables, and the same figures for systemd (READY, STATUS, WATCHDOG).

use std::time::SystemTime;

use serde_json::{json, Value};

use super::Master;
use crate::catalog::Catalog;
use crate::systemd::Snapshot;

/// Counters since start.
#[derive(Default)]
pub struct Totals {
    pub accepted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub worker_lost: u64,
}

pub fn build(master: &Master) -> Value {
    let now = std::time::Instant::now();
    let workers: Vec<Value> = master
        .workers
        .iter()
        .map(|worker| {
            let current: Vec<Value> = worker
                .running
                .iter()
                .filter_map(|id| master.jobs.get(*id))
                .map(|job| {
                    let for_ms = job
                        .running
                        .as_ref()
                        .map(|r| now.duration_since(r.started).as_secs_f64() * 1000.0)
                        .unwrap_or(0.0);
                    json!({"id": job.id, "job": job.spec.name, "for_ms": for_ms})
                })
                .collect();
            json!({
                "slot": worker.slot,
                "pid": worker.pid.as_raw(),
                "state": worker.state_name(),
                "generation": worker.generation,
                "jobs_done": worker.jobs_done,
                "current": current,
                "rss_bytes": worker.rss_bytes,
                "started_at": rfc3339(worker.forked_at),
                "restarts": master.workers.restarts(worker.slot),
                "recycle_after": worker.recycle_after,
                "pools": worker.pools,
            })
        })
        .collect();
    json!({
        "pid": std::process::id(),
        "uptime_s": master.started.elapsed().as_secs_f64(),
        "stopping": master.control.stopping(),
        "generation": master.generation,
        "workers": workers,
        "target_workers": master.size.target(),
        "queue": {"depth": master.jobs.queued_count(), "limit": master.config.service.queue_limit},
        "running": master.jobs.running_count(),
        // An average since start; for a windowed rate, scrape `--prometheus` and let
        // `rate()` work on the counters.
        "jobs_per_second": (master.totals.succeeded + master.totals.failed) as f64
            / master.started.elapsed().as_secs_f64().max(1e-3),
        "durable": master.durable_status(),
        "totals": {
            "accepted": master.totals.accepted,
            "succeeded": master.totals.succeeded,
            "failed": master.totals.failed,
            "worker_lost": master.totals.worker_lost,
        },
    })
}

/// The `jobs` answer: every job with its parameters, so a client can discover the catalog.
pub fn catalog(catalog: &Catalog) -> Value {
    let jobs: Vec<Value> = catalog
        .jobs()
        .map(|job| {
            let params: Vec<Value> = job
                .sql()
                .map(|sql| sql.params.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|p| json!({"name": p.name, "type": p.ty.name(), "default": p.default}))
                .collect();
            json!({
                "name": job.name,
                "kind": job.kind_name(),
                "description": job.description,
                "database": job.database(),
                "timeout_ms": job.timeout.as_millis() as u64,
                "params": params,
            })
        })
        .collect();
    json!({ "jobs": jobs })
}

fn rfc3339(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Master {
    /// Tells systemd what is due this turn: WATCHDOG=1 (only a loop that turns sends it),
    /// READY=1 once the current generation's workers all serve (at start, after a reload),
    /// STATUS= every few seconds.
    pub(super) fn notify_systemd(&mut self) {
        let snapshot = Snapshot {
            serving_current: self.workers.serving_in(self.generation),
            target: self.size.wanted(),
            queue_depth: self.jobs.queued_count(),
            finished_jobs: self.totals.succeeded + self.totals.failed,
            stopping: self.control.stopping(),
        };
        self.systemd.tick(std::time::Instant::now(), &snapshot);
    }
}

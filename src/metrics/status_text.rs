//! The `status` answer in the Prometheus text exposition format: what `forkpool status
//! --prometheus` prints (for a node_exporter textfile collector) and the first part of the
//! master's own `/metrics` answer.
//!
//! Names follow Prometheus conventions: a `forkpool_` prefix, units in the name (`_bytes`,
//! `_seconds`), `_total` on counters. Per-worker series are labelled by `slot` (stable across
//! replacements, unlike a pid), pool series by `slot` and `database`. A worker's counters
//! restart at zero when its slot gets a new process; Prometheus' `rate()` treats that as a
//! counter reset. Durable series (when durable jobs are on) are labelled by `queue` and
//! `state`, or by `outcome`; the queue figures are the whole table's, shared by every host.

use serde_json::Value;

use super::exposition::Family;
use super::{DURABLE_OUTCOMES, QUEUE_STATES};

/// The worker states `status` reports; each gets a series, zero included, so a state that
/// empties shows as 0 rather than vanishing.
const WORKER_STATES: [&str; 5] = ["booting", "idle", "busy", "retiring", "stopping"];

fn number(value: &Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

/// Every series the `status` answer holds, as exposition text.
pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let workers = status["workers"].as_array().unwrap_or(&empty);

    let gauges: [(&str, &str, &Value); 6] = [
        (
            "forkpool_uptime_seconds",
            "Seconds since the master started.",
            &status["uptime_s"],
        ),
        (
            "forkpool_generation",
            "Configuration generation (1 at start, +1 per accepted reload).",
            &status["generation"],
        ),
        (
            "forkpool_target_workers",
            "Workers the master keeps serving (workers.count, moved by TTIN/TTOU).",
            &status["target_workers"],
        ),
        (
            "forkpool_queue_depth",
            "Jobs waiting for a worker.",
            &status["queue"]["depth"],
        ),
        (
            "forkpool_queue_limit",
            "service.queue_limit: queued jobs beyond it are refused.",
            &status["queue"]["limit"],
        ),
        (
            "forkpool_jobs_running",
            "Jobs running now.",
            &status["running"],
        ),
    ];
    for (name, help, value) in gauges {
        Family::new(&mut out, name, "gauge", help).sample(&[], number(value));
    }
    let stopping = if status["stopping"] == Value::Bool(true) {
        1.0
    } else {
        0.0
    };
    Family::new(
        &mut out,
        "forkpool_stopping",
        "gauge",
        "1 while the service is stopping.",
    )
    .sample(&[], stopping);

    let totals: [(&str, &str, &str); 4] = [
        (
            "forkpool_jobs_accepted_total",
            "Jobs accepted into the queue since start.",
            "accepted",
        ),
        (
            "forkpool_jobs_succeeded_total",
            "Jobs answered ok since start.",
            "succeeded",
        ),
        (
            "forkpool_jobs_failed_total",
            "Jobs answered with an error since start (worker_lost included).",
            "failed",
        ),
        (
            "forkpool_jobs_worker_lost_total",
            "Jobs whose worker died while running them.",
            "worker_lost",
        ),
    ];
    for (name, help, key) in totals {
        Family::new(&mut out, name, "counter", help).sample(&[], number(&status["totals"][key]));
    }

    let mut family = Family::new(
        &mut out,
        "forkpool_workers",
        "gauge",
        "Worker processes by state.",
    );
    for state in WORKER_STATES {
        let count = workers.iter().filter(|w| w["state"] == state).count();
        family.sample(&[("state", state)], count as f64);
    }

    let per_worker: [(&str, &str, &str, &str); 3] = [
        (
            "forkpool_worker_jobs_done_total",
            "counter",
            "Jobs this slot's current process finished.",
            "jobs_done",
        ),
        (
            "forkpool_worker_rss_bytes",
            "gauge",
            "Resident memory of this slot's process at its last heartbeat.",
            "rss_bytes",
        ),
        (
            "forkpool_worker_restarts_total",
            "counter",
            "Unexpected exits of this slot's processes since start.",
            "restarts",
        ),
    ];
    for (name, kind, help, key) in per_worker {
        let mut family = Family::new(&mut out, name, kind, help);
        for worker in workers {
            let slot = worker["slot"].to_string();
            family.sample(&[("slot", &slot)], number(&worker[key]));
        }
    }

    render_pools(&mut out, workers);
    if !status["durable"].is_null() {
        render_durable(&mut out, &status["durable"]);
    }
    out
}

/// Durable-job series (DESIGN §12 "Visibility"): readiness, the hosts sharing the queue, the
/// jobs of each queue by state and its oldest runnable job's wait (both counted by the keeper
/// every 2 s), and this instance's outcome counters (reset at each start).
fn render_durable(out: &mut String, durable: &Value) {
    let ready = if durable["ready"] == Value::Bool(true) {
        1.0
    } else {
        0.0
    };
    Family::new(
        out,
        "forkpool_durable_ready",
        "gauge",
        "1 when durable jobs can be enqueued and claimed (schema usable, keeper running).",
    )
    .sample(&[], ready);
    let hosts = durable["hosts"].as_array().map_or(0, Vec::len);
    Family::new(
        out,
        "forkpool_queue_hosts",
        "gauge",
        "Hosts sharing the durable queue, seen within three leases.",
    )
    .sample(&[], hosts as f64);

    let empty = Vec::new();
    let queues = durable["queues"].as_array().unwrap_or(&empty);
    let mut family = Family::new(
        out,
        "forkpool_queue_jobs",
        "gauge",
        "Durable jobs by queue and state (scheduled: available with a future run_at).",
    );
    for queue in queues {
        let name = queue["queue"].as_str().unwrap_or_default();
        for state in QUEUE_STATES {
            family.sample(&[("queue", name), ("state", state)], number(&queue[state]));
        }
    }
    let mut family = Family::new(
        out,
        "forkpool_queue_oldest_available_seconds",
        "gauge",
        "Seconds the oldest runnable job of the queue has waited past its run_at (0: none).",
    );
    for queue in queues {
        let name = queue["queue"].as_str().unwrap_or_default();
        family.sample(
            &[("queue", name)],
            number(&queue["oldest_available_seconds"]),
        );
    }

    let mut family = Family::new(
        out,
        "forkpool_durable_jobs_total",
        "counter",
        "Durable jobs this instance enqueued, claimed, settled, put back or took back, by outcome.",
    );
    for outcome in DURABLE_OUTCOMES {
        family.sample(&[("outcome", outcome)], number(&durable["totals"][outcome]));
    }

    let mut family = Family::new(
        out,
        "forkpool_durable_empty_claims_total",
        "counter",
        "Claims that came back without a job: what wake-ups cost beyond the jobs they found.",
    );
    family.sample(&[], number(&durable["totals"]["empty_claims"]));
}

/// Pool series, from each worker's last heartbeat (`PoolStats` per database).
fn render_pools(out: &mut String, workers: &[Value]) {
    let pools: Vec<(String, &String, &Value)> = workers
        .iter()
        .flat_map(|worker| {
            let slot = worker["slot"].to_string();
            worker["pools"]
                .as_object()
                .into_iter()
                .flatten()
                .map(move |(database, pool)| (slot.clone(), database, pool))
        })
        .collect();
    let series: [(&str, &str, &str, &str, f64); 10] = [
        (
            "forkpool_pool_connections",
            "gauge",
            "Connections open (idle + in use).",
            "size",
            1.0,
        ),
        (
            "forkpool_pool_idle_connections",
            "gauge",
            "Connections open and idle.",
            "idle",
            1.0,
        ),
        (
            "forkpool_pool_in_use_connections",
            "gauge",
            "Connections checked out by jobs.",
            "in_use",
            1.0,
        ),
        (
            "forkpool_pool_waiting_checkouts",
            "gauge",
            "Checkouts waiting for a connection.",
            "waiting",
            1.0,
        ),
        (
            "forkpool_pool_connections_created_total",
            "counter",
            "Connections opened.",
            "created",
            1.0,
        ),
        (
            "forkpool_pool_pings_total",
            "counter",
            "Pre-use pings sent (a round trip each).",
            "pings",
            1.0,
        ),
        (
            "forkpool_pool_ping_failures_total",
            "counter",
            "Pre-use pings that failed (the connection was replaced).",
            "ping_failures",
            1.0,
        ),
        (
            "forkpool_pool_checkout_timeouts_total",
            "counter",
            "Checkouts that gave up after checkout_timeout.",
            "checkout_timeouts",
            1.0,
        ),
        (
            "forkpool_pool_checkouts_total",
            "counter",
            "Connections checked out.",
            "checkouts",
            1.0,
        ),
        (
            "forkpool_pool_checkout_wait_seconds_total",
            "counter",
            "Time checkouts spent waiting for a connection.",
            "checkout_wait_ms_total",
            0.001,
        ),
    ];
    for (name, kind, help, key, scale) in series {
        let mut family = Family::new(out, name, kind, help);
        for (slot, database, pool) in &pools {
            family.sample(
                &[("slot", slot), ("database", database)],
                number(&pool[key]) * scale,
            );
        }
    }
    let mut family = Family::new(
        out,
        "forkpool_pool_connections_closed_total",
        "counter",
        "Connections closed, by reason (lifetime, idle, broken, invalidated, ping, reset, ...).",
    );
    for (slot, database, pool) in &pools {
        for (reason, count) in pool["closed_by_reason"].as_object().into_iter().flatten() {
            family.sample(
                &[("slot", slot), ("database", database), ("reason", reason)],
                number(count),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_help_type_and_labelled_samples() {
        let status = json!({
            "uptime_s": 1.5, "generation": 1, "target_workers": 1, "stopping": false,
            "queue": {"depth": 0, "limit": 10}, "running": 0,
            "totals": {"accepted": 3, "succeeded": 2, "failed": 1, "worker_lost": 0},
            "workers": [{
                "slot": 1, "state": "idle", "jobs_done": 3, "rss_bytes": 1024, "restarts": 0,
                "pools": {"ma\"in": {"size": 1, "idle": 1, "in_use": 0, "waiting": 0,
                    "created": 1, "closed_by_reason": {"idle": 2}, "ping_failures": 0,
                    "checkout_timeouts": 0, "checkouts": 3, "checkout_wait_ms_total": 1500}}
            }]
        });
        let text = render(&status);
        assert!(text.contains("# TYPE forkpool_jobs_succeeded_total counter\n"));
        assert!(text.contains("forkpool_jobs_succeeded_total 2\n"));
        assert!(text.contains("forkpool_workers{state=\"idle\"} 1\n"));
        assert!(text.contains("forkpool_workers{state=\"busy\"} 0\n"));
        assert!(text.contains("forkpool_worker_jobs_done_total{slot=\"1\"} 3\n"));
        assert!(text.contains(
            "forkpool_pool_checkout_wait_seconds_total{slot=\"1\",database=\"ma\\\"in\"} 1.5\n"
        ));
        assert!(text.contains(
            "forkpool_pool_connections_closed_total{slot=\"1\",database=\"ma\\\"in\",reason=\"idle\"} 2\n"
        ));
    }

    #[test]
    fn renders_durable_series_by_queue_state_and_outcome() {
        let status = json!({
            "workers": [],
            "durable": {
                "ready": true, "database": "main", "running": 1,
                "queues": [{"queue": "emails", "available": 3, "scheduled": 1, "running": 1,
                    "completed": 40, "discarded": 2, "cancelled": 0,
                    "oldest_available_seconds": 1.5}],
                "hosts": [{"host": "a"}, {"host": "b"}],
                "schedules": [],
                "totals": {"enqueued": 46, "claimed": 44, "completed": 40, "retried": 2,
                    "discarded": 2, "cancelled": 0, "released": 0, "lost": 0, "rescued": 1,
                    "empty_claims": 7}
            }
        });
        let text = render(&status);
        for expected in [
            "# TYPE forkpool_durable_ready gauge\nforkpool_durable_ready 1\n",
            "# TYPE forkpool_queue_hosts gauge\nforkpool_queue_hosts 2\n",
            "# TYPE forkpool_queue_jobs gauge\n",
            "forkpool_queue_jobs{queue=\"emails\",state=\"available\"} 3\n",
            "forkpool_queue_jobs{queue=\"emails\",state=\"scheduled\"} 1\n",
            "forkpool_queue_jobs{queue=\"emails\",state=\"cancelled\"} 0\n",
            "forkpool_queue_oldest_available_seconds{queue=\"emails\"} 1.5\n",
            "# TYPE forkpool_durable_jobs_total counter\n",
            "forkpool_durable_jobs_total{outcome=\"enqueued\"} 46\n",
            "forkpool_durable_jobs_total{outcome=\"rescued\"} 1\n",
            "# TYPE forkpool_durable_empty_claims_total counter\n\
             forkpool_durable_empty_claims_total 7\n",
        ] {
            assert!(text.contains(expected), "{expected:?} missing:\n{text}");
        }
        let samples = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(samples("forkpool_queue_jobs{"), 6, "{text}");
        assert_eq!(samples("forkpool_durable_jobs_total{"), 9, "{text}");
    }

    #[test]
    fn no_durable_series_when_durable_jobs_are_off() {
        let text = render(&json!({"workers": [], "durable": null}));
        assert!(!text.contains("durable"), "{text}");
        assert!(!text.contains("forkpool_queue_jobs"), "{text}");
        assert!(!text.contains("forkpool_queue_hosts"), "{text}");
    }
}

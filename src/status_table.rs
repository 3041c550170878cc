//! `forkpool status` for a person: the `status` answer as a few aligned tables.

use std::fmt::Write;

use serde_json::Value;

pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "master pid {}  up {:.0}s  generation {}{}",
        status["pid"],
        status["uptime_s"].as_f64().unwrap_or(0.0),
        status["generation"],
        if status["stopping"] == Value::Bool(true) {
            "  STOPPING"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "queue {}/{}  running {}  accepted {}  succeeded {}  failed {}  worker_lost {}  {:.1} jobs/s",
        status["queue"]["depth"],
        status["queue"]["limit"],
        status["running"],
        status["totals"]["accepted"],
        status["totals"]["succeeded"],
        status["totals"]["failed"],
        status["totals"]["worker_lost"],
        status["jobs_per_second"].as_f64().unwrap_or(0.0),
    );
    let _ = writeln!(
        out,
        "\n{:>4}  {:>8}  {:<9}  {:>9}  {:>9}  {:>8}  current",
        "slot", "pid", "state", "jobs done", "rss MiB", "restarts"
    );
    let empty = Vec::new();
    let workers = status["workers"].as_array().unwrap_or(&empty);
    for worker in workers {
        let current: Vec<String> = worker["current"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|job| {
                format!(
                    "{} ({:.0} ms)",
                    job["job"].as_str().unwrap_or("?"),
                    job["for_ms"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "{:>4}  {:>8}  {:<9}  {:>9}  {:>9.1}  {:>8}  {}",
            text(&worker["slot"]),
            text(&worker["pid"]),
            worker["state"].as_str().unwrap_or("?"),
            text(&worker["jobs_done"]),
            worker["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            text(&worker["restarts"]),
            current.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\n{:>4}  {:<12}  {:>4}  {:>4}  {:>6}  {:>7}  {:>7}  {:>6}  {:>9}",
        "slot", "database", "size", "idle", "in use", "waiting", "created", "closed", "ping fail"
    );
    for worker in workers {
        let Some(pools) = worker["pools"].as_object() else {
            continue;
        };
        for (database, pool) in pools {
            let closed: u64 = pool["closed_by_reason"]
                .as_object()
                .map(|reasons| reasons.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "{:>4}  {:<12}  {:>4}  {:>4}  {:>6}  {:>7}  {:>7}  {:>6}  {:>9}",
                text(&worker["slot"]),
                database,
                text(&pool["size"]),
                text(&pool["idle"]),
                text(&pool["in_use"]),
                text(&pool["waiting"]),
                text(&pool["created"]),
                closed,
                text(&pool["ping_failures"]),
            );
        }
    }
    out
}

/// A JSON value as plain text, so that width and alignment apply (`Value`'s own Display
/// ignores them).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

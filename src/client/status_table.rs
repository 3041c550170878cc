//! `forkpool status` for a person: the `status` answer as a few aligned tables that fit in
//! 120 columns — the service, one line per worker, one line per pool of each worker.

use std::fmt::Write;

use serde_json::Value;

pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let workers = status["workers"].as_array().unwrap_or(&empty);
    render_service(&mut out, status);
    out.push('\n');
    render_workers(&mut out, workers);
    out.push('\n');
    render_pools(&mut out, workers);
    out
}

fn render_service(out: &mut String, status: &Value) {
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
}

fn render_workers(out: &mut String, workers: &[Value]) {
    let _ = writeln!(
        out,
        "{:>4}  {:>8}  {:<8}  {:>9}  {:>7}  {:>8}  {:<19}  current",
        "slot", "pid", "state", "jobs done", "rss MiB", "restarts", "started at (UTC)"
    );
    for worker in workers {
        let current: Vec<String> = worker["current"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|job| {
                format!(
                    "{} ({:.0} ms)",
                    job["job"].as_str().unwrap_or("?"),
                    job["for_ms"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        let line = format!(
            "{:>4}  {:>8}  {:<8}  {:>9}  {:>7.1}  {:>8}  {:<19}  {}",
            text(&worker["slot"]),
            text(&worker["pid"]),
            worker["state"].as_str().unwrap_or("?"),
            text(&worker["jobs_done"]),
            worker["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            text(&worker["restarts"]),
            started_at(&worker["started_at"]),
            current.join(", ")
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// Pools are a section of their own: a worker has one per database it has used, and the
/// closed-by-reason breakdown needs the room.
fn render_pools(out: &mut String, workers: &[Value]) {
    let pools: Vec<(&Value, &String, &Value)> = workers
        .iter()
        .flat_map(|worker| {
            worker["pools"]
                .as_object()
                .into_iter()
                .flatten()
                .map(move |(database, pool)| (&worker["slot"], database, pool))
        })
        .collect();
    if pools.is_empty() {
        let _ = writeln!(
            out,
            "no pools yet: a worker builds one on its first job for a database"
        );
        return;
    }
    let _ = writeln!(
        out,
        "{:>4}  {:<12}  {:>4}  {:>4}  {:>6}  {:>7}  {:>7}  {:>9}  {:>17}  closed by reason",
        "slot",
        "database",
        "size",
        "idle",
        "in use",
        "waiting",
        "created",
        "ping fail",
        "checkout timeouts"
    );
    for (slot, database, pool) in pools {
        let _ = writeln!(
            out,
            "{:>4}  {:<12}  {:>4}  {:>4}  {:>6}  {:>7}  {:>7}  {:>9}  {:>17}  {}",
            text(slot),
            database,
            text(&pool["size"]),
            text(&pool["idle"]),
            text(&pool["in_use"]),
            text(&pool["waiting"]),
            text(&pool["created"]),
            text(&pool["ping_failures"]),
            text(&pool["checkout_timeouts"]),
            closed_by_reason(&pool["closed_by_reason"]),
        );
    }
}

/// `2026-11-21T10:11:12.345Z` as `2026-11-21 10:11:12`: the second is enough to tell a
/// replacement from the original, and the header says the zone.
fn started_at(value: &Value) -> String {
    let Some(at) = value.as_str() else {
        return "?".to_string();
    };
    match chrono::DateTime::parse_from_rfc3339(at) {
        Ok(at) => at.to_utc().format("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => at.to_string(),
    }
}

/// `idle 2, ping 1`, or `none`.
fn closed_by_reason(value: &Value) -> String {
    let reasons: Vec<String> = value
        .as_object()
        .into_iter()
        .flatten()
        .map(|(reason, count)| format!("{reason} {}", text(count)))
        .collect();
    if reasons.is_empty() {
        "none".to_string()
    } else {
        reasons.join(", ")
    }
}

/// A JSON value as plain text, so that width and alignment apply (`Value`'s own Display
/// ignores them).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_service_workers_and_pools_in_120_columns() {
        let status = json!({
            "pid": 4242, "uptime_s": 61.2, "generation": 2, "stopping": false,
            "queue": {"depth": 1, "limit": 1000}, "running": 2, "jobs_per_second": 0.5,
            "totals": {"accepted": 6, "succeeded": 3, "failed": 0, "worker_lost": 0},
            "workers": [
                {"slot": 1, "pid": 4301, "state": "busy", "jobs_done": 3, "rss_bytes": 13107200,
                 "restarts": 0, "started_at": "2026-11-21T10:11:12.345Z",
                 "current": [{"id": 7, "job": "hold", "for_ms": 1520.4}],
                 "pools": {"main": {"size": 2, "idle": 1, "in_use": 1, "waiting": 0,
                     "created": 4, "closed_by_reason": {"idle": 1, "ping": 1},
                     "ping_failures": 1, "checkout_timeouts": 3}}},
                {"slot": 2, "pid": 4302, "state": "idle", "jobs_done": 0, "rss_bytes": 0,
                 "restarts": 1, "started_at": "2026-11-21T10:12:00.000Z", "current": [],
                 "pools": {}}
            ]
        });
        let expected = "\
master pid 4242  up 61s  generation 2
queue 1/1000  running 2  accepted 6  succeeded 3  failed 0  worker_lost 0  0.5 jobs/s

slot       pid  state     jobs done  rss MiB  restarts  started at (UTC)     current
   1      4301  busy              3     12.5         0  2026-11-21 10:11:12  hold (1520 ms)
   2      4302  idle              0      0.0         1  2026-11-21 10:12:00

slot  database      size  idle  in use  waiting  created  ping fail  checkout timeouts  closed by reason
   1  main             2     1       1        0        4          1                  3  idle 1, ping 1
";
        let table = render(&status);
        assert_eq!(table, expected, "\n{table}");
        for line in table.lines() {
            assert!(line.len() <= 120, "{} columns: {line}", line.len());
        }
    }

    #[test]
    fn says_so_when_no_worker_has_a_pool_yet() {
        let status = json!({"workers": [{"slot": 1, "pools": {}}]});
        assert!(render(&status)
            .ends_with("no pools yet: a worker builds one on its first job for a database\n"));
    }
}
